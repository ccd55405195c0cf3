# Training fan-out: one job per hyperparameter combination (one SLURM GPU job each on a
# cluster). Every job writes its own records; MLflow gets them through one local import job,
# so hundreds of concurrent jobs never write to the tracking store at once.


def neural_inputs(wc):
    params = COMBOS[wc.neural][wc.combo]
    return {
        "ids": expand(f"{FEATURES}/{{split}}_ids.npy", split=("train", "validation")),
        "y": expand(f"{FEATURES}/{{split}}_labels.npy", split=("train", "validation")),
        "labels": f"{FEATURES}/labels.json",
        "matrix": f"results/embeddings/{params['embedding']}/matrix.npy",
    }


def _res(family, key, scale=False):
    if scale:  # memory and runtime grow with each retry (--retries / the profile's retries)
        return lambda wc, attempt: family_resources(family)[key] * attempt
    return lambda wc: family_resources(family)[key]


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
        hp=lambda wc: as_arg(COMBOS[wc.neural][wc.combo]),
        device=config["train"]["device"],
        run_dir=lambda wc: f"results/runs/{wc.neural}/{wc.combo}",
    threads: lambda wc: family_resources(wc.neural)["threads"]
    resources:
        mem_mb=lambda wc, attempt: family_resources(wc.neural)["mem_mb"] * attempt,
        runtime=lambda wc, attempt: family_resources(wc.neural)["runtime"] * attempt,
        gpu=lambda wc: family_resources(wc.neural)["gpu"],
        gpu_model=lambda wc: family_resources(wc.neural).get("gpu_model") or "",
    shell:
        "python -m meli.train --family {wildcards.neural} --params {params.hp}"
        " --features {FEATURES} --matrix {input.matrix:q} --out-dir {params.run_dir:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule train_tfidf:
    """The reference a practitioner tries first: TF-IDF word n-grams + a linear model."""
    input:
        train=f"{DATA}/train.parquet",
        validation=f"{DATA}/validation.parquet",
        labels=f"{FEATURES}/labels.json",
    output:
        metrics="results/runs/tfidf/{combo}/metrics.json",
        history="results/runs/tfidf/{combo}/history.csv",
        model="results/runs/tfidf/{combo}/model.joblib",
        predictions="results/runs/tfidf/{combo}/val_predictions.parquet",
    log:
        "results/logs/train/tfidf/{combo}.log",
    benchmark:
        "results/benchmarks/train/tfidf/{combo}.tsv"
    params:
        hp=lambda wc: as_arg(COMBOS["tfidf"][wc.combo]),
        run_dir=lambda wc: f"results/runs/tfidf/{wc.combo}",
    threads: lambda wc: family_resources("tfidf")["threads"]
    resources:
        mem_mb=lambda wc, attempt: family_resources("tfidf")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: family_resources("tfidf")["runtime"] * attempt,
    shell:
        "python -m meli.baseline --params {params.hp} --data-dir {DATA} --features {FEATURES}"
        " --out-dir {params.run_dir:q} --threads {threads} > {log:q} 2>&1"


localrules:
    mlflow_import,


rule mlflow_import:
    """Import every finished run into the tracking store (idempotent: runs already there are skipped)."""
    input:
        metrics=run_metrics(),
    output:
        "results/mlflow/imported.json",
    log:
        "results/logs/mlflow_import.log",
    params:
        uri=config["mlflow"]["tracking_uri"] or "",
        experiment=config["mlflow"]["experiment"] or config["dataset"]["name"],
        runs=lambda wc, input: " ".join(shlex.quote(os.path.dirname(m)) for m in input.metrics),
    shell:
        "python -m meli.tracking import --experiment {params.experiment:q}"
        " --tracking-uri '{params.uri}' --store-dir results/mlflow --out {output:q}"
        " {params.runs} > {log:q} 2>&1"
