# The TF-IDF + linear baseline: one job per combination of train.tfidf.grid, over the shared
# sparse TF-IDF matrix (rule tfidf_features in rules/embeddings.smk): LinearSVC (liblinear, CPU)
# or a torch solver (squared_hinge, softmax; GPU when the family's resources ask for one).


rule train_tfidf:
    """The reference a practitioner tries first: word + char n-gram TF-IDF + one-vs-rest LinearSVC."""
    input:
        train=f"{DATA}/train.parquet",
        validation=f"{DATA}/validation.parquet",
        labels=f"{FEATURES}/labels.json",
        tfidf=expand(f"{TFIDF}/{{split}}.npz", split=("train", "validation")),
        vectorizer=f"{TFIDF}/vectorizer.joblib",
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
        data_dir=lambda wc, input: os.path.dirname(input.train),
        features=lambda wc, input: os.path.dirname(input.labels),
        status=lambda wc: f"results/sweep/jobs/tfidf/{wc.combo}.json",  # see rules/train.smk
        tfidf=lambda wc, input: os.path.dirname(input.vectorizer),
    threads: lambda wc: family_resources("tfidf")["threads"]
    resources:
        mem_mb=lambda wc, attempt: family_resources("tfidf")["mem_mb"] * attempt,
        runtime=lambda wc, attempt: family_resources("tfidf")["runtime"] * attempt,
        gpu=lambda wc: tfidf_resources(wc)["gpu"],
        gpu_model=lambda wc: gpu_model(tfidf_resources(wc)),
    conda:
        CONDA_ENV
    shell:
        "python -m meli.jobstatus --status {params.status:q} --log {log:q} --"
        " python -m meli.train.baseline --params {params.hp} --combo {wildcards.combo} --data-dir {params.data_dir} --features {params.features}"
        " --tfidf {params.tfidf:q} --out-dir {params.run_dir:q} --threads {threads} > {log:q} 2>&1"
