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
        hp=lambda wc: as_arg(COMBOS[wc.neural][wc.combo]),
        device=config["train"]["device"],
        features=lambda wc, input: os.path.dirname(input.labels),
        source=neural_source_arg,
        run_dir=lambda wc: f"results/runs/{wc.neural}/{wc.combo}",
        # Per-epoch resume state: not an output, so a failed job's checkpoint survives the cleanup.
        checkpoint_dir=lambda wc: f"results/checkpoints/{wc.neural}/{wc.combo}",
        # Attempt record (running/failed/diverged/killed, attempts): outside the outputs, which
        # Snakemake deletes when the job fails; read by meli.sweep for partial reports.
        status=lambda wc: f"results/sweep/jobs/{wc.neural}/{wc.combo}.json",
    threads: lambda wc: family_resources(wc.neural)["threads"]
    resources:
        mem_mb=lambda wc, attempt: family_resources(wc.neural)["mem_mb"] * attempt,
        runtime=lambda wc, attempt: family_resources(wc.neural)["runtime"] * attempt,
        gpu=lambda wc: family_resources(wc.neural)["gpu"],
        gpu_model=lambda wc: gpu_model(family_resources(wc.neural)),
    conda:
        CONDA_ENV
    shell:
        "python -m meli.jobstatus --status {params.status:q} --log {log:q} --"
        " python -m meli.train.neural --family {wildcards.neural} --params {params.hp}"
        " --features {params.features} {params.source} --out-dir {params.run_dir:q}"
        " --checkpoint-dir {params.checkpoint_dir:q}"
        " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb} > {log:q} 2>&1"
