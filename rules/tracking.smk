# MLflow: training jobs never write to the tracking store; this one local job imports them.


localrules:
    mlflow_import,
    mlflow_selected,


rule mlflow_import:
    """Import every finished run into the tracking store (idempotent: runs already there are skipped)."""
    input:
        metrics=run_metrics(),
        summary=f"{DATA}/summary.json",
        search=search_summaries(),
    output:
        "results/mlflow/imported.json",
    log:
        "results/logs/mlflow_import.log",
    benchmark:
        "results/benchmarks/mlflow_import.tsv"
    params:
        uri=config["mlflow"]["tracking_uri"] or "",
        experiment=config["mlflow"]["experiment"] or config["dataset"]["name"],
        dataset=config["dataset"]["name"],
        models="--log-models" if config["mlflow"]["log_models"] else "",
        runs=lambda wc, input: all_run_dirs(input.search),
        partial=PARTIAL_STAMP,  # a partial import written since the last run: redo it
    resources:
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.tracking import --experiment {params.experiment:q}"
        " --tracking-uri={params.uri:q} --store-dir results/mlflow --out {output:q}"
        " --dataset {params.dataset:q} --summary {input.summary:q} {params.models} {params.runs} > {log:q} 2>&1"


rule mlflow_selected:
    """After the test scores: test metrics, `selected` tag, test input and model file on each family's selected run."""
    input:
        imported="results/mlflow/imported.json",
        details="results/tables/test_details.json",
        summary=f"{DATA}/summary.json",
    output:
        "results/mlflow/selected.json",
    log:
        "results/logs/mlflow_selected.log",
    benchmark:
        "results/benchmarks/mlflow_selected.tsv"
    resources:
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.tracking mark-selected --imported {input.imported:q} --test-details {input.details:q}"
        " --summary {input.summary:q} --out {output:q} > {log:q} 2>&1"
