# Embedding stage: vocabulary (train only), fixed-width token-id matrices, and one embedding
# matrix per configured embedding (pretrained word2vec-format vectors, or trained with gensim).
from urllib.parse import urlparse


def vectors_source(name):
    src = config["embeddings"][name].get("source")
    if not src:
        raise WorkflowError(f"config embeddings.{name}: kind: pretrained needs a `source`")
    scheme = urlparse(src).scheme
    if scheme in ("http", "https"):
        return f"results/embeddings/{name}/source/" + os.path.basename(urlparse(src).path)
    if scheme == "file":
        return urlparse(src).path
    return src


def embedding_inputs(wc):
    spec = config["embeddings"][wc.emb]
    inputs = {"vocab": f"{FEATURES}/vocab.tsv"}
    if spec["kind"] == "pretrained":
        inputs["vectors"] = vectors_source(wc.emb)
    else:
        inputs["train"] = f"{DATA}/train.parquet"
    return inputs


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
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.embeddings.features --data-dir {DATA} --out-dir {FEATURES} --config {params.cfg}"
        " > {log:q} 2>&1"


rule download_vectors:
    output:
        "results/embeddings/{emb}/source/{filename}",
    log:
        "results/logs/download_vectors/{emb}/{filename}.log",
    params:
        url=lambda wc: config["embeddings"][wc.emb]["source"],
        sha=lambda wc: config["embeddings"][wc.emb].get("sha256") or "",
        retries=config["dataset"]["download_retries"],
        timeout=config["dataset"]["download_timeout_s"],
    conda:
        CONDA_ENV
    shell:
        "python -m meli.data.fetch {params.url:q} --out {output:q} --sha256 '{params.sha}'"
        " --retries {params.retries} --timeout {params.timeout} > {log:q} 2>&1"


rule embedding_matrix:
    """[vocab, dim] float32: pretrained vectors for known words, seeded noise for the rest, PAD=0."""
    input:
        unpack(embedding_inputs),
    output:
        matrix=f"results/embeddings/{{emb}}/matrix.npy",
        coverage=report(
            "results/embeddings/{emb}/coverage.json",
            category="Embeddings",
            caption="../report/embeddings.rst",
        ),
    log:
        "results/embeddings/{emb}/build.log",
    benchmark:
        "results/benchmarks/embedding_matrix/{emb}.tsv"
    params:
        spec=lambda wc: as_arg({**config["embeddings"][wc.emb], "name": wc.emb}),
        source=lambda wc, input: input.get("vectors") or input.get("train"),
    threads: lambda wc: config["embeddings"][wc.emb].get("workers", 1)
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        CONDA_ENV
    shell:
        "python -m meli.embeddings.matrix --vocab {input.vocab:q} --source {params.source:q}"
        " --spec {params.spec} --out-dir results/embeddings/{wildcards.emb} > {log:q} 2>&1"
