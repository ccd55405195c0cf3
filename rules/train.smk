# Training fan-out: one job per MLP/CNN hyperparameter combination (one SLURM GPU job each on
# a cluster). Every job writes its own records; MLflow gets them via rules/tracking.smk.


rule train_neural:
    """One MLP or CNN combination: early stopping on validation bacc, resumable per epoch."""
    input:
        unpack(neural_inputs),
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
    threads: lambda wc: family_resources(wc.neural)["threads"]
    resources:
        **NEURAL_JOB_RESOURCES,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.jobstatus --status {params.status:q} --log {log:q} --"
        " python -m meli.train.neural --family {wildcards.neural} --params {params.hp} --combo {wildcards.combo}"
        " --features {params.features} {params.source} --out-dir {params.run_dir:q}"
        " --checkpoint-dir {params.checkpoint_dir:q}"
        " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb} > {log:q} 2>&1"


# Successive halving (train.search.strategy: halving; meli/search.py): rung jobs per combination,
# a checkpoint per rung that keeps the best 1/eta, and the survivors' final runs. Which
# combinations enter rung r > 0 is only known once select_rung has ranked rung r - 1, so
# `snakemake -n` lists rung 0 and Snakemake re-evaluates the DAG after each select_rung.
if HALVING:

    localrules:
        select_rung,
        search_done,

    rule train_rung:
        """One combination for one rung's epoch budget, continuing from its state after the rung before."""
        input:
            unpack(rung_inputs),
        output:
            metrics="results/search/{neural}/rung-{rung}/{combo}/metrics.json",
            history="results/search/{neural}/rung-{rung}/{combo}/history.csv",
            state=f"results/search/{{neural}}/rung-{{rung}}/{{combo}}/{search.SNAPSHOT}",
        log:
            "results/logs/search/{neural}/rung-{rung}/{combo}.log",
        benchmark:
            "results/benchmarks/search/{neural}/rung-{rung}/{combo}.tsv"
        params:
            **NEURAL_JOB_PARAMS,
            until=lambda wc: PLANS[wc.neural].epochs(int(wc.rung)),
            start=lambda wc, input: f"--start-from {shlex.quote(input.state)}" if "state" in input.keys() else "",
        threads: lambda wc: family_resources(wc.neural)["threads"]
        resources:
            **NEURAL_JOB_RESOURCES,
        conda:
            CONDA_ENV
        shell:
            "python -m meli.jobstatus --status {params.status:q} --log {log:q} --"
            " python -m meli.train.neural --family {wildcards.neural} --params {params.hp} --combo {wildcards.combo}"
            " --features {params.features} {params.source} --out-dir {params.run_dir:q}"
            " --checkpoint-dir {params.checkpoint_dir:q}"
            " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb}"
            " --until-epoch {params.until} {params.start} --snapshot {output.state:q} --rung {wildcards.rung}"
            " > {log:q} 2>&1"

    checkpoint select_rung:
        """Rank a rung on validation; keep the best 1/eta for the next rung, record the pruned runs."""
        input:
            rung_records,
        output:
            selection="results/search/{neural}/rung-{rung}/selection.json",
            pruned=directory("results/search/{neural}/rung-{rung}/pruned"),
        log:
            "results/logs/search/{neural}/rung-{rung}/select.log",
        benchmark:
            "results/benchmarks/search/{neural}/rung-{rung}/select.tsv"
        params:
            keep=lambda wc: PLANS[wc.neural].keep(int(wc.rung)),
            epochs=lambda wc: PLANS[wc.neural].epochs(int(wc.rung)),
            runs=lambda wc, input: " ".join(shlex.quote(os.path.dirname(m)) for m in input),
        resources:
            runtime=lambda wc, attempt: 10 * attempt,
        conda:
            CONDA_ENV
        shell:
            "python -m meli.search select --family {wildcards.neural} --rung {wildcards.rung}"
            " --keep {params.keep} --epochs {params.epochs} --selection {output.selection:q}"
            " --pruned-dir {output.pruned:q} {params.runs} > {log:q} 2>&1"

    rule search_done:
        """The search's outcome: its final and pruned run directories (what the tables, report and MLflow read)."""
        input:
            search_inputs,
        output:
            "results/search/{neural}/search.json",
        log:
            "results/logs/search/{neural}/search_done.log",
        benchmark:
            "results/benchmarks/search/{neural}/search_done.tsv"
        params:
            selections=lambda wc, input: " ".join(shlex.quote(f) for f in input if f.endswith(search.SELECTION)),
            runs_dir=lambda wc: f"results/runs/{wc.neural}",
        resources:
            runtime=lambda wc, attempt: 10 * attempt,
        conda:
            CONDA_ENV
        shell:
            "python -m meli.search summary --family {wildcards.neural} --runs-dir {params.runs_dir:q}"
            " --out {output:q} {params.selections} > {log:q} 2>&1"

    # The final runs land where grid runs do (results/runs/), so the tables, the report, MLflow
    # and meli-predict treat them alike; train_neural stays as it is for grid families.
    ruleorder: train_final > train_neural

    rule train_final:
        """A survivor of the last rung, trained to its configured epochs with early stopping."""
        input:
            unpack(final_inputs),
        output:
            metrics="results/runs/{neural}/{combo}/metrics.json",
            history="results/runs/{neural}/{combo}/history.csv",
            model="results/runs/{neural}/{combo}/model.pt",
            predictions="results/runs/{neural}/{combo}/val_predictions.parquet",
        log:
            "results/logs/train/{neural}/{combo}.log",
        benchmark:
            "results/benchmarks/train/{neural}/{combo}.tsv"
        wildcard_constraints:
            neural="|".join(HALVING),
        params:
            **NEURAL_JOB_PARAMS,
            rung=lambda wc: PLANS[wc.neural].final,
        threads: lambda wc: family_resources(wc.neural)["threads"]
        resources:
            **NEURAL_JOB_RESOURCES,
        conda:
            CONDA_ENV
        shell:
            "python -m meli.jobstatus --status {params.status:q} --log {log:q} --"
            " python -m meli.train.neural --family {wildcards.neural} --params {params.hp} --combo {wildcards.combo}"
            " --features {params.features} {params.source} --out-dir {params.run_dir:q}"
            " --checkpoint-dir {params.checkpoint_dir:q}"
            " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb}"
            " --start-from {input.state:q} --rung {params.rung} > {log:q} 2>&1"
