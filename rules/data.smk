# Data stage: get the source file (generated demo, download, or a local path), then read,
# clean, tokenize and split it, stratified, into Parquet.
localrules:
    download_dataset,


rule demo_dataset:
    """The embedded default: a deterministic generated Spanish title set in the official CSV format."""
    output:
        f"{DATA}/source/demo.csv.gz",
    log:
        "results/logs/demo_dataset.log",
    benchmark:
        "results/benchmarks/demo_dataset.tsv"
    params:
        rows=config["dataset"]["demo_rows"],
        categories=config["dataset"]["demo_categories"],
        seed=config["split"]["seed"],
    resources:
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.data.demo --rows {params.rows} --categories {params.categories}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule download_dataset:
    """Streamed, retried, sha256-checked, atomic. Runs on the submit host (compute nodes may be offline)."""
    output:
        f"{DATA}/source/{{filename}}",
    log:
        "results/logs/download_dataset/{filename}.log",
    benchmark:
        "results/benchmarks/download_dataset/{filename}.tsv"
    params:
        url=config["dataset"]["source"],
        sha=config["dataset"]["sha256"] or "",
    # Retries and timeout are how hard to try, not what arrives: resources, which (unlike params)
    # never make snakemake redo the download and everything after it when they change.
    resources:
        runtime=lambda wc, attempt: 120 * attempt,
        retries=config["dataset"]["download_retries"],
        timeout_s=str(config["dataset"]["download_timeout_s"]),
    conda:
        CONDA_ENV
    shell:
        "python -m meli.data.fetch {params.url:q} --out {output:q} --sha256 '{params.sha}'"
        " --retries {resources.retries} --timeout {resources.timeout_s} > {log:q} 2>&1"


rule prepare_data:
    """Read every format in chunks, drop/count bad rows, clean + tokenize, stratified split."""
    input:
        source=lambda wc: dataset_source(),
    output:
        splits=expand(f"{DATA}/{{split}}.parquet", split=SPLITS),
        summary=report(f"{DATA}/summary.json", category="Dataset", caption="../report/dataset.rst"),
    log:
        "results/logs/prepare_data.log",
    benchmark:
        "results/benchmarks/prepare_data.tsv"
    params:
        cfg=lambda wc: as_arg(stage_config(config, "prepare")),  # a function: Snakemake reads no wildcard in its value (a path with { })
        out_dir=lambda wc, output: os.path.dirname(output.summary),
    threads: 2
    # How much to read at once and at most: resources, not params (see download_dataset).
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
        chunk_rows=config["preprocess"]["chunk_rows"],
        max_line_bytes=config["dataset"]["max_line_bytes"],
        max_source_bytes=config["dataset"]["max_source_bytes"],
    conda:
        CONDA_ENV
    shell:
        "python -m meli.data.prepare --source {input.source:q} --out-dir {params.out_dir} --config {params.cfg}"
        " --threads {threads} --chunk-rows {resources.chunk_rows} --max-line-bytes {resources.max_line_bytes}"
        " --max-source-bytes {resources.max_source_bytes} > {log:q} 2>&1"
