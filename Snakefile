# MeLi 2019 product-title classification: MLP and CNN over word embeddings, against a TF-IDF
# baseline, one job per hyperparameter combination, compared in results/report.html.
#
#   snakemake --cores 2                                   # offline demo (config/config.yaml)
#   snakemake --profile profiles/slurm                    # the full dataset on a SLURM cluster
#   snakemake -n --configfile config/meli2019.yaml        # dry run of the full grid

# A --configfile given on the command line replaces the default instead of being deep-merged
# into it (otherwise the demo's grid values and embeddings would leak into the full run).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/embeddings.smk"
include: "rules/train.smk"
include: "rules/baseline.smk"
include: "rules/tracking.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        "results/report.html",
        "results/mlflow/imported.json",
        "results/mlflow/selected.json",
        # Every run's declared outputs, so that a deleted model.pt or run folder is retrained
        # (Snakemake ignores a missing intermediate file while everything after it is up to date).
        run_outputs(),


onstart:
    # What this sweep is meant to produce, for `make report` and the partial report on failure.
    from meli.sweep import write_manifest

    # the outputs of the jobs this run executes: a run record among them that predates this
    # start is outdated, not done (make report, partial report)
    try:
        planned = [str(f) for job in workflow.dag.needrun_jobs() for f in job.output]
    except Exception as err:  # Snakemake internals: without them, outdated runs are not recognised
        print(f"onstart: planned jobs unknown ({err})", file=sys.stderr)
        planned = None
    write_manifest("results", COMBOS, config, [str(f) for f in workflow.configfiles], planned)
    # a grid job (no start state) whose run directory holds a search's final run of the same
    # combination reuses it
    from meli.sweep import stash_equivalent_runs

    try:
        stash_equivalent_runs("results", [(str(job.output.metrics), [str(f) for f in job.input])
                                          for job in workflow.dag.needrun_jobs()
                                          if job.rule.name == "train_neural" and "state" not in job.input.keys()])
    except Exception as err:  # Snakemake internals: without them, such a job trains again
        print(f"onstart: equivalent runs not looked for ({err})", file=sys.stderr)


onerror:
    # Some job failed (with keep-going, after every other job ran): tables, report and MLflow
    # import from the combinations that finished, marked partial and dated 1970 so that the next
    # run rebuilds them. Snakemake still exits non-zero.
    try:
        shell("python -m meli.sweep report --final --mlflow")
    except Exception as err:  # never hide the original failure behind this one
        print(f"partial report failed: {err}", file=sys.stderr)
