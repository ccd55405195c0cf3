# Embedding stage: vocabulary (train only), fixed-width token-id matrices, and one embedding
# matrix per configured embedding (pretrained word2vec-format vectors, or trained with gensim).
localrules:
    download_vectors,


rule features:
    """Vocabulary from the train split only; every split as an int32 [rows, max_len] matrix."""
    input:
        splits=expand(f"{DATA}/{{split}}.parquet", split=SPLITS),
    output:
        vocab=f"{FEATURES}/vocab.tsv",
        labels=f"{FEATURES}/labels.json",
        stats=report(f"{FEATURES}/stats.json", category="Dataset", caption="../report/features.rst"),
        ids=expand(f"{FEATURES}/{{split}}_ids.npy", split=SPLITS),
        y=expand(f"{FEATURES}/{{split}}_labels.npy", split=SPLITS),
    log:
        "results/logs/features.log",
    benchmark:
        "results/benchmarks/features.tsv"
    params:
        cfg=as_arg(config["vocab"]),
        data_dir=lambda wc, input: os.path.dirname(input.splits[0]),
        out_dir=lambda wc, output: os.path.dirname(output.vocab),
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.embeddings.features --data-dir {params.data_dir:q} --out-dir {params.out_dir:q}"
        " --config {params.cfg} > {log:q} 2>&1"


rule tfidf_features:
    """One shared sparse TF-IDF matrix per split (word + char_wb n-grams, fitted on train), built once."""
    input:
        splits=expand(f"{DATA}/{{split}}.parquet", split=SPLITS),
    output:
        x=expand(f"{TFIDF}/{{split}}.npz", split=SPLITS),
        vectorizer=f"{TFIDF}/vectorizer.joblib",
        stats=f"{TFIDF}/stats.json",
    log:
        "results/logs/tfidf_features.log",
    benchmark:
        "results/benchmarks/tfidf_features.tsv"
    params:
        cfg=as_arg(config["tfidf_features"]),
        data_dir=lambda wc, input: os.path.dirname(input.splits[0]),
        out_dir=lambda wc, output: os.path.dirname(output.stats),
    # Chunks of titles are hashed in parallel threads (engine hashed): the training jobs' threads.
    threads: lambda wc: config["train"]["resources"]["threads"]
    # Hashed engine: measured at the course's size (4.9M train titles, 2 threads): peak 7.2-7.35 GB
    # (the 5.5 GB output + bucket tables + chunks), 3.6 min wall on 2 cores (24 min when they were
    # loaded 5x; benchmarks/README.md, bench_course.py): 16 GB and 60 min leave 2x headroom.
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.embeddings.tfidf --data-dir {params.data_dir:q} --out-dir {params.out_dir:q}"
        " --config {params.cfg} --threads {threads} > {log:q} 2>&1"


rule download_vectors:
    output:
        "results/embeddings/{emb}/source/{filename}",
    log:
        "results/logs/download_vectors/{emb}/{filename}.log",
    benchmark:
        "results/benchmarks/download_vectors/{emb}/{filename}.tsv"
    params:
        url=lambda wc: config["embeddings"][wc.emb]["source"],
        sha=lambda wc: config["embeddings"][wc.emb].get("sha256") or "",
    resources:  # not params: see download_dataset
        runtime=lambda wc, attempt: 240 * attempt,
        retries=config["dataset"]["download_retries"],
        timeout_s=str(config["dataset"]["download_timeout_s"]),
    conda:
        CONDA_ENV
    shell:
        "python -m meli.data.fetch {params.url:q} --out {output:q} --sha256 '{params.sha}'"
        " --retries {resources.retries} --timeout {resources.timeout_s} > {log:q} 2>&1"


rule embedding_matrix:
    """[vocab, dim] float32: pretrained vectors for known words, seeded noise for the rest, PAD=0."""
    input:
        unpack(embedding_inputs),
    output:
        matrix="results/embeddings/{emb}/matrix.npy",
        coverage=report(
            "results/embeddings/{emb}/coverage.json",
            category="Embeddings",
            caption="../report/embeddings.rst",
        ),
    log:
        "results/logs/embedding_matrix/{emb}.log",
    benchmark:
        "results/benchmarks/embedding_matrix/{emb}.tsv"
    params:
        spec=lambda wc: as_arg({**config["embeddings"][wc.emb], "name": wc.emb}),
        source=lambda wc, input: input.get("vectors") or input.get("train"),
        out_dir=lambda wc, output: os.path.dirname(output.matrix),
    threads: lambda wc: config["embeddings"][wc.emb].get("workers", 1)
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.embeddings.matrix --vocab {input.vocab:q} --source {params.source:q}"
        " --spec {params.spec} --out-dir {params.out_dir:q} > {log:q} 2>&1"
