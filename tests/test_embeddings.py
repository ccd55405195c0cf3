"""Embedding matrices: pretrained vectors in every format, coverage, gensim determinism, bad input,
and the stage end to end inside the workflow."""
from __future__ import annotations

import bz2
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TINY_CONFIG, snakemake
from meli.embeddings.matrix import EmbeddingError, run, stable_hash
from meli.io import setup_logging

LOG = setup_logging("test")
DIM = 3
# counts sum to 100 train tokens: 10 of them are [UNK] (outside the vocabulary)
VOCAB = [("[PAD]", 0), ("[UNK]", 10), ("casa", 40), ("camion", 20), ("perro", 15), ("gato", 10), ("raro", 5)]
VECTORS = {  # what the handmade file holds, in file order
    "casa": [1.0, 2.0, 3.0],
    "Camión": [7.0, 7.0, 7.0],  # matches "camion" only after lowercasing + accent stripping
    "zzz": [9.0, 9.0, 9.0],  # not in the vocabulary
    "perro": [-1.5, 0.25, 4e-1],
}
SPEC = {"name": "handmade", "kind": "pretrained", "dim": DIM, "seed": 3}


def vector_text(vectors: dict[str, list[float]], header: str | None = None, trailing_blank: bool = True) -> str:
    head = header if header is not None else f"{len(vectors)} {DIM}"
    tail = " " if trailing_blank else ""
    return head + "\n" + "".join(f"{w} {' '.join(map(str, v))}{tail}\n" for w, v in vectors.items())


@pytest.fixture
def vocab_path(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.tsv"
    path.write_text("".join(f"{w}\t{c}\n" for w, c in VOCAB))
    return path


def build(vocab_path: Path, source: Path, out: Path, **spec) -> tuple[np.ndarray, dict]:
    coverage = run(vocab_path, source, {**SPEC, **spec}, out, LOG)
    assert json.loads((out / "coverage.json").read_text()) == coverage
    return np.load(out / "matrix.npy"), coverage


def test_coverage_of_a_handmade_file(vocab_path: Path, tmp_path: Path):
    source = tmp_path / "vectors.txt"
    source.write_text(vector_text(VECTORS))
    matrix, cov = build(vocab_path, source, tmp_path / "out")
    assert matrix.dtype == np.float32 and matrix.shape == (7, DIM)
    assert (matrix[0] == 0).all()  # PAD
    assert matrix[2].tolist() == [1.0, 2.0, 3.0]
    assert matrix[3].tolist() == [7.0, 7.0, 7.0]  # camion <- Camión
    assert np.allclose(matrix[4], [-1.5, 0.25, 0.4])
    assert cov["found"] == 3 and cov["found_exact"] == 2 and cov["found_normalized"] == 1
    assert cov["random_init"] == 3  # [UNK], gato, raro
    assert cov["words"] == 5 and cov["vocab_size"] == 7 and cov["source_vectors"] == 4
    assert cov["vocab_coverage"] == pytest.approx(3 / 5)
    assert cov["token_coverage"] == pytest.approx((40 + 20 + 15) / 100)
    assert cov["most_frequent_missing"] == [["gato", 10], ["raro", 5]]
    found = np.stack([matrix[2], matrix[3], matrix[4]])
    assert cov["random_init_std"] == pytest.approx(float(found.std()), rel=1e-6)
    # the noise is seeded: same seed, same rows; another seed, other rows
    again, _ = build(vocab_path, source, tmp_path / "again")
    other, _ = build(vocab_path, source, tmp_path / "other", seed=4)
    assert (again == matrix).all() and not np.allclose(other[5:], matrix[5:]) and (other[2:5] == matrix[2:5]).all()
    # without normalisation only exact words match
    _, exact = build(vocab_path, source, tmp_path / "exact", normalize_words=False)
    assert exact["found"] == 2 and exact["token_coverage"] == pytest.approx(0.55)


def test_exact_match_wins_and_duplicates_keep_the_first(vocab_path: Path, tmp_path: Path):
    source = tmp_path / "vectors.txt"
    lines = [("CASA", [5, 5, 5]), ("Camión", [7, 7, 7]), ("camion", [1, 1, 1]), ("camion", [2, 2, 2]), ("casa", [3, 3, 3])]
    source.write_text(f"{len(lines)} {DIM}\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in lines))
    matrix, cov = build(vocab_path, source, tmp_path / "out")
    assert matrix[2].tolist() == [3, 3, 3] and matrix[3].tolist() == [1, 1, 1]
    assert cov["found_exact"] == 2 and cov["found_normalized"] == 0


@pytest.mark.parametrize("fmt", ["gz", "bz2", "binary", "binary-gz", "kv"])
def test_every_format_gives_the_same_vectors(fmt: str, vocab_path: Path, tmp_path: Path):
    from gensim.models import KeyedVectors

    text = vector_text(VECTORS, trailing_blank=False)
    plain = tmp_path / "vectors.txt"
    plain.write_text(text)
    expected, expected_cov = build(vocab_path, plain, tmp_path / "plain")
    kv = KeyedVectors(DIM)
    kv.add_vectors(list(VECTORS), np.array(list(VECTORS.values()), np.float32))
    spec = {}
    if fmt == "gz":
        source = tmp_path / "vectors.txt.gz"
        source.write_bytes(gzip.compress(text.encode()))
    elif fmt == "bz2":
        source = tmp_path / "vectors.txt.bz2"
        source.write_bytes(bz2.compress(text.encode()))
    elif fmt.startswith("binary"):
        source = tmp_path / ("vectors.bin.gz" if fmt == "binary-gz" else "vectors.bin")
        kv.save_word2vec_format(str(source), binary=True)
        spec = {"binary": True}
    else:
        source = tmp_path / "vectors.kv"
        kv.save(str(source))
    matrix, cov = build(vocab_path, source, tmp_path / fmt, **spec)
    assert np.array_equal(matrix, expected)
    assert {k: v for k, v in cov.items() if k not in ("source", "elapsed_s", "peak_rss_mb")} == {
        k: v for k, v in expected_cov.items() if k not in ("source", "elapsed_s", "peak_rss_mb")
    }


def expect_error(vocab_path: Path, source: Path, out: Path, pattern: str, **spec) -> None:
    with pytest.raises(EmbeddingError, match=pattern):
        run(vocab_path, source, {**SPEC, **spec}, out, LOG)
    assert not out.exists() or not any(out.iterdir()), "partial output left behind"


def test_bad_vectors_files_name_file_and_line(vocab_path: Path, tmp_path: Path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.txt"
    bad.write_text(vector_text(VECTORS).replace(f"4 {DIM}", "4 300"))
    expect_error(vocab_path, bad, out, r"bad\.txt, line 1: the vectors have dimension 300, the config says dim: 3")
    bad.write_text(vector_text({**VECTORS, "gato": [1.0, 2.0]}, header=f"5 {DIM}"))
    expect_error(vocab_path, bad, out, r"bad\.txt, line 6: expected a word and 3 values, got 2")
    # a word outside the vocabulary is checked too (field count)
    bad.write_text(vector_text({"yyy": [1.0], **VECTORS}, header=f"5 {DIM}"))
    expect_error(vocab_path, bad, out, r"bad\.txt, line 2: expected a word and 3 values")
    bad.write_text(vector_text({**VECTORS, "gato": ["1.0", "dos", "3"]}, header=f"5 {DIM}"))
    expect_error(vocab_path, bad, out, r"bad\.txt, line 6: not a number")
    bad.write_text(vector_text(VECTORS, header=f"9 {DIM}"))
    expect_error(vocab_path, bad, out, r"bad\.txt: the header announces 9 vectors, the file has 4")
    bad.write_text("casa uno dos tres\n")
    expect_error(vocab_path, bad, out, r"bad\.txt, line 1: expected a word2vec header 'count dim' or \(GloVe")
    bad.write_text("casa 1 2 3 4\nperro 1 2 3 4\n")  # GloVe-style (no header), but 4-dimensional
    expect_error(vocab_path, bad, out, r"bad\.txt, line 1: a vector of dimension 4 without a header \(GloVe")
    bad.write_text(vector_text(VECTORS).split("\n", 1)[1] + "gato 1 2\n")
    expect_error(vocab_path, bad, out, r"bad\.txt, line 5: expected a word and 3 values, got 2")  # no header: line 5
    bad.write_text(vector_text({"zzz": [1, 2, 3]}))
    expect_error(vocab_path, bad, out, r"none of the 5 vocabulary words has a vector")
    expect_error(vocab_path, tmp_path / "nope.txt", out, r"nope\.txt: no such file")


def test_glove_text_without_header_reads_like_word2vec_text(vocab_path: Path, tmp_path: Path):
    """GloVe's files are word2vec text without the 'count dim' line: same matrix, compressed or not."""
    with_header = tmp_path / "w2v.txt"
    with_header.write_text(vector_text(VECTORS))
    glove = tmp_path / "glove.txt.gz"
    glove.write_bytes(gzip.compress(vector_text(VECTORS).split("\n", 1)[1].encode()))
    m1, cov1 = build(vocab_path, with_header, tmp_path / "a")
    m2, cov2 = build(vocab_path, glove, tmp_path / "b")
    assert np.array_equal(m1, m2) and cov1["found"] == cov2["found"] == 3


@pytest.mark.parametrize("codec", [gzip, bz2], ids=["gz", "bz2"])
def test_truncated_compressed_files(codec, vocab_path: Path, tmp_path: Path):
    """Errors of the background decompression thread reach the parser, naming the file."""
    many = {f"w{i}": [float(i)] * DIM for i in range(3000)} | VECTORS
    data = codec.compress(vector_text(many).encode())
    bad = tmp_path / f"cut.txt.{codec.__name__}"
    bad.write_bytes(data[: len(data) // 2])
    expect_error(vocab_path, bad, tmp_path / "out", rf"cut\.txt\.{codec.__name__}.*(truncated|ends inside|line \d+)")
    # cut right after a complete line: only the end-of-stream check can tell
    whole = tmp_path / f"whole.txt.{codec.__name__}"
    whole.write_bytes(codec.compress(vector_text(VECTORS).encode()))
    _, cov = build(vocab_path, whole, tmp_path / "whole")
    assert cov["found"] == 3
    bad.write_bytes(whole.read_bytes()[:-4])  # gzip: CRC/size trailer gone; bz2: stream end gone
    expect_error(vocab_path, bad, tmp_path / "out", rf"cut\.txt\.{codec.__name__}.*corrupt or truncated")


def test_truncated_binary_and_empty_vocabulary(vocab_path: Path, tmp_path: Path):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(DIM)
    kv.add_vectors(list(VECTORS), np.array(list(VECTORS.values()), np.float32))
    source = tmp_path / "v.bin"
    kv.save_word2vec_format(str(source), binary=True)
    source.write_bytes(source.read_bytes()[:-5])
    expect_error(vocab_path, source, tmp_path / "out", r"v\.bin: ends inside vector 4 of 4", binary=True)
    empty = tmp_path / "empty_vocab.tsv"
    empty.write_text("[PAD]\t0\n[UNK]\t7\n")
    text = tmp_path / "v.txt"
    text.write_text(vector_text(VECTORS))
    expect_error(empty, text, tmp_path / "out", r"empty_vocab\.tsv: empty vocabulary")
    expect_error(vocab_path, text, tmp_path / "out", r"dim: expected a positive integer", dim="3")
    expect_error(vocab_path, text, tmp_path / "out", r"oov_init: fasttext needs FastText vectors", oov_init="fasttext")


# --------------------------------------------------------------------------------------------
# Trained here


@pytest.fixture
def train_parquet(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = np.array(["casa", "camion", "perro", "gato", "rojo", "azul", "grande", "nuevo", "usado", "negro"])
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(300)]
    texts.append("raro")  # once: below min_count 2, FastText fills it from subwords
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": texts, "category": "A"}).to_parquet(path)
    return path


def trained_vocab(tmp_path: Path) -> Path:
    path = tmp_path / "trained_vocab.tsv"
    words = ["casa", "camion", "perro", "gato", "rojo", "azul", "grande", "nuevo", "usado", "negro", "raro"]
    path.write_text("[PAD]\t0\n[UNK]\t0\n" + "".join(f"{w}\t1\n" for w in words))
    return path


def train_in_subprocesses(vocab: Path, source: Path, spec: dict, outs: dict[str, Path]) -> list[np.ndarray]:
    """Build the matrix once per {PYTHONHASHSEED: out_dir}, in parallel processes."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "meli.embeddings.matrix", "--vocab", str(vocab), "--source", str(source),
             "--spec", json.dumps(spec), "--out-dir", str(out)],
            env={**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT / "scripts")},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for hashseed, out in outs.items()
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    return [np.load(out / "matrix.npy") for out in outs.values()]


@pytest.mark.parametrize("kind", ["word2vec", "fasttext"])
def test_gensim_training_is_deterministic_across_hash_seeds(kind: str, train_parquet: Path, tmp_path: Path):
    vocab = trained_vocab(tmp_path)
    spec = {"name": "t", "kind": kind, "dim": 8, "epochs": 2, "min_count": 2, "seed": 5, "workers": 1}
    a, b = train_in_subprocesses(vocab, train_parquet, spec, {"1": tmp_path / "a", "2": tmp_path / "b"})
    assert a.shape == (13, 8) and np.array_equal(a, b)
    assert (a[0] == 0).all() and np.abs(a[2:12]).sum() > 0
    cov = json.loads((tmp_path / "a" / "coverage.json").read_text())
    assert cov["found"] == 10 and cov["random_init"] == 2  # [UNK] and "raro" (below min_count)
    assert stable_hash("casa") == stable_hash("casa") != stable_hash("casb")


def test_fasttext_fills_oov_words_from_subwords(train_parquet: Path, tmp_path: Path):
    vocab = trained_vocab(tmp_path)
    spec = {"name": "ft", "kind": "fasttext", "dim": 8, "epochs": 1, "min_count": 2, "oov_init": "fasttext"}
    cov = run(vocab, train_parquet, spec, tmp_path / "ft", LOG)
    assert cov["found"] == 10 and cov["filled_subword"] == 1 and cov["random_init"] == 1  # [UNK] only
    assert cov["token_coverage"] == pytest.approx(10 / 11)
    with pytest.raises(EmbeddingError, match="oov_init: fasttext needs kind: fasttext"):
        run(vocab, train_parquet, {**spec, "kind": "word2vec"}, tmp_path / "w", LOG)


# --------------------------------------------------------------------------------------------
# The workflow


@pytest.mark.workflow
@pytest.mark.skipif(
    not (ROOT / "scripts" / "meli" / "data" / "prepare.py").exists(), reason="the data stage (meli.data.prepare) is not in yet"
)
def test_stage_end_to_end_in_the_workflow(workflow_dir: Path):
    # targets before --configfile, which takes several values
    snakemake(workflow_dir, "results/embeddings/w2v/matrix.npy", "results/features/stats.json",
              "--cores", "1", "--configfile", str(TINY_CONFIG))
    features, emb = workflow_dir / "results" / "features", workflow_dir / "results" / "embeddings" / "w2v"
    stats = json.loads((features / "stats.json").read_text())
    vocab_size = stats["vocab_size"]
    for split in ("train", "validation", "test"):
        rows = len(pd.read_parquet(workflow_dir / "results" / "data" / f"{split}.parquet"))
        ids = np.load(features / f"{split}_ids.npy", mmap_mode="r")
        assert ids.shape == (rows, 16) and stats["splits"][split]["rows"] == rows
        assert 0 <= ids.min() and ids.max() < vocab_size
        assert (np.load(features / f"{split}_labels.npy") < 8).all()
    matrix = np.load(emb / "matrix.npy")
    coverage = json.loads((emb / "coverage.json").read_text())
    assert matrix.shape == (vocab_size, 16) and (matrix[0] == 0).all()
    # min_count 1 everywhere: gensim trains every vocabulary word
    assert coverage["vocab_coverage"] == 1.0 and coverage["random_init"] == 1
    assert "words found" in (workflow_dir / "results" / "logs" / "embedding_matrix" / "w2v.log").read_text()


@pytest.mark.parametrize("block", [1, 7, 1 << 22])
def test_prefetched_reader_reads_exactly_like_the_file(tmp_path: Path, block: int):
    from meli.embeddings.matrix import _Prefetched

    payload = b"".join(b"line %d with some text\n" % i for i in range(2000)) + b"no newline at the end"
    path = tmp_path / "p.gz"
    path.write_bytes(gzip.compress(payload))
    reader = _Prefetched(gzip.open(path, "rb"), block=block, depth=2)
    try:
        assert reader.readline() == b"line 0 with some text\n"
        assert reader.read(5) == b"line "
        rest = reader.read()
        assert reader.read(10) == b"" and reader.readline() == b""
    finally:
        reader.close()
    assert b"line 0 with some text\nline " + rest == payload


def test_prefetched_reader_closes_early_without_hanging(tmp_path: Path):
    from meli.embeddings.matrix import _Prefetched

    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(b"x" * (1 << 24)))
    reader = _Prefetched(gzip.open(path, "rb"), block=1 << 16, depth=2)
    assert reader.read(3) == b"xxx"
    reader.close()  # the producer is blocked on a full queue: close must still return
    assert not reader._thread.is_alive()
