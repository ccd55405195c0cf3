# Training fan-out: one job per MLP/CNN hyperparameter combination (one SLURM GPU job each on
# a cluster). Every job writes its own records; MLflow gets them via rules/tracking.smk.


rule train_neural:
    """One MLP or CNN combination trained to the end (early stopping on validation bacc, resumable per
    epoch): a grid run, or a search's final run continuing from its last stage."""
    input:
        unpack(run_inputs),
    output:
        metrics="results/runs/{neural}/{combo}/metrics.json",
        history="results/runs/{neural}/{combo}/history.csv",
        model="results/runs/{neural}/{combo}/model.pt",
        predictions="results/runs/{neural}/{combo}/val_predictions.parquet",
    log:
        "results/logs/train/{neural}/{combo}.log",
    benchmark:
        "results/benchmarks/train/{neural}/{combo}.tsv"
    params:
        **NEURAL_JOB_PARAMS,
        stage=final_stage_args,
    threads: lambda wc: family_resources(wc.neural)["threads"]
    resources:
        **NEURAL_JOB_RESOURCES,
    wildcard_constraints:
        neural=UNPACKED_RE,  # a packed family's runs come from pack_member (below)
    conda:
        CONDA_ENV
    shell:
        TRAIN_SHELL


# A search in stages (train.search.strategy: halving, hyperband; meli/search/): one generic rule
# per stage kind, whatever the strategy -- stage jobs per combination, a checkpoint per stage that
# keeps the best, and the survivors' final runs (train_neural above). A stage ({stage}: rung-{r},
# or bracket-{b}/rung-{r}) after rung 0 only knows its combinations once select_rung has ranked the
# rung before, so `snakemake -n` lists every ladder's rung 0 and Snakemake re-evaluates the DAG
# after each select_rung.
if SEARCHED:

    localrules:
        select_rung,
        search_done,

    rule train_rung:
        """One combination for one stage's epoch budget, continuing from its state after the rung before
        (a diverged combination leaves a record that the stage's selection prunes)."""
        input:
            unpack(stage_inputs),
        output:
            metrics="results/search/{neural}/{stage}/{combo}/metrics.json",
            history="results/search/{neural}/{stage}/{combo}/history.csv",
            state=f"results/search/{{neural}}/{{stage}}/{{combo}}/{search.SNAPSHOT}",
        log:
            "results/logs/search/{neural}/{stage}/{combo}.log",
        benchmark:
            "results/benchmarks/search/{neural}/{stage}/{combo}.tsv"
        params:
            **NEURAL_JOB_PARAMS,
            stage=train_stage_args,
            select=stage_id_args,
        threads: lambda wc: family_resources(wc.neural)["threads"]
        resources:
            **NEURAL_JOB_RESOURCES,
        conda:
            CONDA_ENV
        shell:
            STAGE_SHELL

    checkpoint select_rung:
        """Rank a stage on validation; keep the best for the next rung, record the pruned runs."""
        input:
            stage_records,
        output:
            selection=f"results/search/{{neural}}/{{stage}}/{search.SELECTION}",
            pruned=directory(f"results/search/{{neural}}/{{stage}}/{search.PRUNED}"),
        log:
            "results/logs/search/{neural}/{stage}/select.log",
        benchmark:
            "results/benchmarks/search/{neural}/{stage}/select.tsv"
        params:
            stage=select_args,
            runs=lambda wc, input: " ".join(shlex.quote(os.path.dirname(m)) for m in input),
        resources:
            runtime=lambda wc, attempt: 10 * attempt,
        conda:
            CONDA_ENV
        shell:
            "python -m meli.search select --family {wildcards.neural} {params.stage} --selection {output.selection:q}"
            " --pruned-dir {output.pruned:q} {params.runs} > {log:q} 2>&1"

    rule search_done:
        """The search's outcome: its final and pruned run directories (what the tables, report and MLflow read)."""
        input:
            **{f"ladder{i}": partial(ladder_inputs, i) for i in range(LADDER_SLOTS)},
        output:
            f"results/search/{{neural}}/{search.SUMMARY}",
        log:
            "results/logs/search/{neural}/search_done.log",
        benchmark:
            "results/benchmarks/search/{neural}/search_done.tsv"
        params:
            selections=lambda wc, input: " ".join(shlex.quote(f) for f in input if f.endswith(search.SELECTION)),
            straight=lambda wc: straight_finals(wc.neural),
            runs_dir=lambda wc: f"results/runs/{wc.neural}",
        resources:
            runtime=lambda wc, attempt: 10 * attempt,
        conda:
            CONDA_ENV
        shell:
            "python -m meli.search summary --family {wildcards.neural} --runs-dir {params.runs_dir:q}"
            " --out {output:q} {params.straight} {params.selections} > {log:q} 2>&1"


# Packing (train.pack > 1; meli/train/pack.py, docs/design.md "Packing combinations"): one cluster
# job trains a pack of a grid family's combinations one after another, in one process, on one GPU.
# Its declared output is only a stamp (temp: gone once every member is adopted), written when every
# member finished, so a failed member never makes Snakemake delete the others' runs; each member's
# run files are the outputs of its own pack_member job (local: it moves the staged files into place),
# so `snakemake -n`, `rule all` (run_outputs), a deleted run and a changed input work per
# combination as for train_neural. A packed family's runs come from pack_member, the others' from
# train_neural (the `neural` wildcard of each is limited to its families).
if PACKED:

    localrules:
        pack_member,

    rule train_pack:
        """Several grid combinations of one family in one job: each with its own run, log, attempt record
        and checkpoints; those finished before are not trained again."""
        input:
            unpack(pack_inputs),
        output:
            temp("results/packs/{neural}/{pack}.json"),
        log:
            "results/logs/pack/{neural}/{pack}.log",
        benchmark:
            "results/benchmarks/pack/{neural}/{pack}.tsv"
        params:
            members=pack_members_arg,
            device=config["train"]["device"],
            features=lambda wc, input: os.path.dirname(input.labels[0]),
            files=" ".join(RUN_FILES),
        threads: lambda wc: family_resources(wc.neural)["threads"]
        resources:
            **PACK_JOB_RESOURCES,
        wildcard_constraints:
            neural="|".join(PACKED),
        conda:
            CONDA_ENV
        shell:
            "python -m meli.train.pack run --family {wildcards.neural} --pack {wildcards.pack}"
            " --members {params.members} --files {params.files} --features {params.features:q}"
            " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb} --log {log:q}"
            " --stamp {output:q} > {log:q} 2>&1"

    rule pack_member:
        """One packed combination's run: its files, trained by its pack's job, moved into the run directory."""
        input:
            unpack(neural_inputs),
            pack=pack_stamp,
        output:
            metrics="results/runs/{neural}/{combo}/metrics.json",
            history="results/runs/{neural}/{combo}/history.csv",
            model="results/runs/{neural}/{combo}/model.pt",
            predictions="results/runs/{neural}/{combo}/val_predictions.parquet",
        log:
            "results/logs/pack/{neural}/adopt/{combo}.log",
        benchmark:
            "results/benchmarks/pack/{neural}/adopt/{combo}.tsv"
        params:
            staged=lambda wc: staged_dir(wc.neural, wc.combo),
        resources:
            runtime=lambda wc, attempt: 10 * attempt,
        wildcard_constraints:
            neural="|".join(PACKED),
        conda:
            CONDA_ENV
        shell:
            "python -m meli.train.pack adopt --staged {params.staged:q} {output:q} > {log:q} 2>&1"
