"""One shared sparse TF-IDF matrix per split: what the TF-IDF family and the MLP's ``input: tfidf`` read.

    python -m meli.embeddings.tfidf --data-dir results/data --out-dir results/features/tfidf --config '{...}'

Word n-grams (tokens are the data stage's cleaned, space-separated ``text``) and ``char_wb``
n-grams, each its own block (``min_df``, ``max_features``, sublinear tf, smooth idf, l2 per
block, float32: sklearn's ``TfidfVectorizer`` formula), stacked side by side. Fitted on train
only; built once per workflow (config section ``tfidf_features``) instead of once per training
job. ``engine: hashed`` (default) hashes the n-grams of chunks of titles with numpy
(meli.embeddings.ngrams: the same n-grams as sklearn, no Python per title) in ``--threads``
threads; ``engine: sklearn`` is the former per-title ``TfidfVectorizer`` path.

Outputs (docs/design.md): ``{train,validation,test}.npz`` (scipy CSR float32, row order = the
split's Parquet row order, sorted indices), ``vectorizer.joblib`` (the fitted
:class:`TitleVectorizer`, for predicting new titles), ``stats.json`` (features per block,
non-zeros per row, seconds).
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from meli.cli import MeliError, entry_point
from meli.io import atomic_path, peak_rss_mb, setup_logging, write_json

SPLITS = ("train", "validation", "test")
ENGINES = ("hashed", "sklearn")
# The defaults of config/schema.yaml's tfidf_features (the issue-12 reference features).
DEFAULTS: dict[str, Any] = {"word_ngrams": [1, 2], "char_ngrams": [2, 5], "min_df": 2, "max_features": 262144,
                            "sublinear_tf": True, "engine": "hashed", "hash_bits": 24}
CHUNK_ROWS = 50_000  # titles hashed at once: bounds the per-chunk n-gram arrays (~150 n-grams x 12 B per title)
KEEP_COUNTS_ROWS = 1_000_000  # fit_transform hashes once up to here (counts kept: ~1 kB per title), twice beyond
_SUM_LOCK = threading.Lock()


class TfidfFeatureError(MeliError, ValueError):
    """Bad input to the sparse-feature stage; the message names the file or key."""


class HashedBlock:
    """One analyzer's TF-IDF block over hashed n-gram buckets (meli.embeddings.ngrams), sklearn's formula.

    ``fit`` keeps the buckets in at least ``min_df`` train titles, the ``max_features`` most frequent
    of them (total count, as sklearn's ``max_features``), as columns in bucket order; idf is
    sklearn's smooth idf ``ln((1 + n) / (1 + df)) + 1``; a row is (1 + log) tf x idf, l2-normalised.
    """

    def __init__(self, kind: str, ngrams: Sequence[int], cfg: dict[str, Any]):
        self.kind, self.ngrams = kind, (int(ngrams[0]), int(ngrams[1]))
        self.bits, self.min_df = int(cfg["hash_bits"]), int(cfg["min_df"])
        self.max_features, self.sublinear = cfg["max_features"], bool(cfg["sublinear_tf"])
        self.buckets_: np.ndarray | None = None  # int32, sorted: column j is bucket buckets_[j]
        self.idf_: np.ndarray | None = None
        self._lookup: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lookup": None}  # rebuilt on use: 4 B x 2**bits, not worth pickling

    @property
    def n_features(self) -> int:
        return 0 if self.buckets_ is None else int(self.buckets_.size)

    def counts(self, chunk):
        """Float32 CSR ``[rows, 2**bits]`` of n-gram counts per bucket (meli.embeddings.ngrams.Chunk)."""
        from meli.embeddings.ngrams import bucket_counts

        lo, hi = self.ngrams
        rows, cols = chunk.words(lo, hi, self.bits) if self.kind == "word" else chunk.chars_wb(lo, hi, self.bits)
        return bucket_counts(rows, cols, chunk.n_rows, self.bits)

    def fit(self, df: np.ndarray, tf: np.ndarray, n_docs: int) -> None:
        keep = np.flatnonzero(df >= self.min_df)
        if self.max_features is not None and keep.size > self.max_features:
            # Most frequent first, ties by bucket (deterministic); then back to bucket order.
            keep = np.sort(keep[np.argsort(-tf[keep], kind="stable")[: int(self.max_features)]])
        if keep.size == 0:
            raise TfidfFeatureError(f"tfidf_features: no {self.kind} n-gram is in min_df={self.min_df} train titles "
                                    "or more; lower min_df")
        self.buckets_ = keep.astype(np.int32)
        self.idf_ = (np.log((1.0 + n_docs) / (1.0 + df[keep])) + 1.0).astype(np.float32)
        self._lookup = None

    def weigh(self, counts):
        """Bucket counts -> this block's float32 TF-IDF CSR (columns = kept buckets; rows l2-normalised)."""
        import scipy.sparse as sp

        if self._lookup is None:
            lookup = np.full(1 << self.bits, -1, dtype=np.int32)
            lookup[self.buckets_] = np.arange(self.buckets_.size, dtype=np.int32)
            self._lookup = lookup
        col = self._lookup[counts.indices]
        kept = col >= 0
        col, tf = col[kept], counts.data[kept]
        row_nnz = np.bincount(np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))[kept],
                              minlength=counts.shape[0])
        indptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(row_nnz, out=indptr[1:])
        val = (np.log(tf) + 1.0 if self.sublinear else tf).astype(np.float32) * self.idf_[col]
        sq = np.zeros(val.size + 1, dtype=np.float64)
        np.cumsum(np.square(val, dtype=np.float64), out=sq[1:])
        norm = np.sqrt(sq[indptr[1:]] - sq[indptr[:-1]])
        val /= np.repeat(np.where(norm > 0, norm, 1.0), row_nnz).astype(np.float32)
        # The lookup is increasing in the bucket, so each row's columns stay sorted.
        return sp.csr_matrix((val, col, indptr), shape=(counts.shape[0], self.n_features))


class TitleVectorizer:
    """Word and char_wb TF-IDF blocks, hstacked into one float32 CSR matrix (columns: word block first).

    ``engine: hashed`` (the default): vectorized n-gram hashing over chunks of titles, chunks in
    parallel threads (numpy and scipy release the GIL), sklearn's n-grams and TF-IDF formula.
    ``engine: sklearn``: one ``TfidfVectorizer`` per block (the code before issue 25: ~8k titles/s
    on one core, memory growing with the distinct n-grams); vectorizers pickled before the engine
    existed load as this engine.
    """

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = {**DEFAULTS, **(config or {})}
        unknown = sorted(set(cfg) - set(DEFAULTS))
        if unknown:
            raise TfidfFeatureError(f"tfidf_features: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
        if not cfg["word_ngrams"] and not cfg["char_ngrams"]:
            raise TfidfFeatureError("tfidf_features: word_ngrams and char_ngrams are both off; enable one")
        if cfg["engine"] not in ENGINES:
            raise TfidfFeatureError(f"tfidf_features.engine: {cfg['engine']!r} is not one of {list(ENGINES)}")
        if not 8 <= int(cfg["hash_bits"]) <= 30:
            raise TfidfFeatureError(f"tfidf_features.hash_bits: {cfg['hash_bits']} is not in [8, 30]")
        self.config = cfg
        self.blocks: list[tuple[str, Any]] = []
        if cfg["engine"] == "hashed":
            for name, key in (("word", "word_ngrams"), ("char_wb", "char_ngrams")):
                if cfg[key]:
                    self.blocks.append((name, HashedBlock(name, cfg[key], cfg)))
            return
        from sklearn.feature_extraction.text import TfidfVectorizer

        common = dict(min_df=cfg["min_df"], sublinear_tf=cfg["sublinear_tf"], dtype=np.float32,
                      max_features=cfg["max_features"])
        if cfg["word_ngrams"]:
            # The data stage already cleaned and tokenised: split on spaces, keep every token.
            self.blocks.append(("word", TfidfVectorizer(token_pattern=r"\S+", lowercase=False,
                                                        ngram_range=tuple(cfg["word_ngrams"]), **common)))
        if cfg["char_ngrams"]:
            self.blocks.append(("char_wb", TfidfVectorizer(analyzer="char_wb", lowercase=False,
                                                           ngram_range=tuple(cfg["char_ngrams"]), **common)))

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["config"] = {"engine": "sklearn", **state["config"]}  # pickled before engines existed
        self.__dict__.update(state)

    @property
    def engine(self) -> str:
        return self.config.get("engine", "sklearn")

    def fit_transform(self, texts: Sequence[str], threads: int = 1):
        if self.engine == "sklearn":
            return self._stack([vec.fit_transform(texts) for _, vec in self.blocks])
        chunks = _chunks(texts)
        # Up to KEEP_COUNTS_ROWS titles the chunks' counts are kept for the weighing pass (one hashing
        # pass); beyond, they are dropped once summed and recounted chunk by chunk when weighed: peak
        # memory is then the output matrix plus one chunk per thread, not the output plus all counts.
        keep = len(texts) <= KEEP_COUNTS_ROWS
        sizes = [1 << block.bits for _, block in self.blocks]
        df = [np.zeros(size, dtype=np.int64) for size in sizes]
        tf = [np.zeros(size, dtype=np.float64) for size in sizes]

        def count(ch):
            parts = self._counts(ch)
            with _SUM_LOCK:
                for b, part in enumerate(parts):  # one row has a bucket at most once: its count is one document
                    df[b] += np.bincount(part.indices, minlength=sizes[b])
                    tf[b] += np.bincount(part.indices, weights=part.data, minlength=sizes[b])
            return parts if keep else None

        counts = _map(threads, count, chunks)
        for b, (_, block) in enumerate(self.blocks):
            block.fit(df[b], tf[b], len(texts))
        if keep:
            return self._weigh_all(counts, threads)
        return self.transform(texts, threads)

    def transform(self, texts: Sequence[str], threads: int = 1):
        if self.engine == "sklearn":
            return self._stack([vec.transform(texts) for _, vec in self.blocks])
        if not self.blocks or self.blocks[0][1].buckets_ is None:
            raise TfidfFeatureError("TitleVectorizer.transform before fit_transform")
        return _stack_stream(threads, lambda ch: self._stack([blk.weigh(c) for (_, blk), c in
                                                              zip(self.blocks, self._counts(ch))]),
                             _chunks(texts), len(texts))

    def _counts(self, texts: Sequence[str]) -> list:
        from meli.embeddings.ngrams import Chunk

        chunk = Chunk(texts)
        return [block.counts(chunk) for _, block in self.blocks]

    def _weigh_all(self, counts: list, threads: int):
        def weigh(i: int):
            parts, counts[i] = counts[i], None  # free each chunk's counts once weighed
            return self._stack([blk.weigh(c) for (_, blk), c in zip(self.blocks, parts)])

        return _vstack_freeing(_map(threads, weigh, list(range(len(counts)))))

    @property
    def n_features(self) -> int:
        return sum(self.block_sizes().values())

    def block_sizes(self) -> dict[str, int]:
        if self.engine == "sklearn":
            return {name: len(vec.vocabulary_) for name, vec in self.blocks}
        return {name: block.n_features for name, block in self.blocks}

    @staticmethod
    def _stack(parts, vertical: bool = False):
        import scipy.sparse as sp

        if len(parts) == 1:
            out = parts[0].tocsr()
        else:
            out = (sp.vstack if vertical else sp.hstack)(parts, format="csr", dtype=np.float32)
        out.sort_indices()
        return out.astype(np.float32, copy=False)


def _vstack_freeing(parts: list):
    """The chunks' CSR matrices one under the other, each chunk freed once copied: memory stays at
    about the output matrix plus one chunk (scipy's vstack holds the chunks and the output)."""
    import scipy.sparse as sp

    n_rows = sum(p.shape[0] for p in parts)
    nnz = sum(p.nnz for p in parts)
    data, indices = np.empty(nnz, dtype=np.float32), np.empty(nnz, dtype=np.int32)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    n_cols, row, pos = parts[0].shape[1], 0, 0
    for i, part in enumerate(parts):
        k, r = part.nnz, part.shape[0]
        data[pos : pos + k], indices[pos : pos + k] = part.data, part.indices
        indptr[row + 1 : row + r + 1] = part.indptr[1:] + pos
        row, pos, parts[i] = row + r, pos + k, None
    out = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))
    out.has_sorted_indices = True  # each chunk's rows are
    return out


def _stack_stream(threads: int, fn, items: list, n_rows: int):
    """``[fn(x) for x in items]`` (CSR parts of ``n_rows`` rows in all) as one CSR matrix, made
    ``threads`` parts at a time and each copied into the output and freed before the next ones are
    made: memory is the output plus ``threads`` parts (making all parts first, then stacking them,
    held both: 11 GB for the course's 4.9M train titles, issue 25). The output's arrays are sized
    from the first part's density with a margin (pages never written cost no memory) and grow if
    short."""
    import scipy.sparse as sp

    data = indices = None
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    n_cols, row, pos, step = 0, 0, 0, max(int(threads), 1)
    for start in range(0, len(items), step):
        for part in _map(threads, fn, items[start : start + step]):
            k, r = part.nnz, part.shape[0]
            if data is None:
                n_cols = part.shape[1]
                cap = int(k / max(r, 1) * n_rows * 1.25) + 4096
                data, indices = np.empty(cap, dtype=np.float32), np.empty(cap, dtype=np.int32)
            if pos + k > data.size:  # the first part was sparser than the rest: grow (a copy)
                cap = max(int(data.size * 1.5), pos + k)
                data = np.concatenate([data[:pos], np.empty(cap - pos, dtype=np.float32)])
                indices = np.concatenate([indices[:pos], np.empty(cap - pos, dtype=np.int32)])
            data[pos : pos + k], indices[pos : pos + k] = part.data, part.indices
            indptr[row + 1 : row + r + 1] = part.indptr[1:] + pos
            row, pos = row + r, pos + k
    out = sp.csr_matrix((data[:pos], indices[:pos], indptr), shape=(n_rows, n_cols))
    out.has_sorted_indices = True  # each part's rows are
    return out


def _chunks(texts: Sequence[str], rows: int = CHUNK_ROWS) -> list[list[str]]:
    texts = texts.tolist() if hasattr(texts, "tolist") else list(texts)
    return [texts[i : i + rows] for i in range(0, max(len(texts), 1), rows)]


def _map(threads: int, fn, items: list) -> list:
    """``[fn(x) for x in items]``, in order, over ``threads`` threads."""
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


def save_csr(path: str | Path, matrix) -> None:
    import scipy.sparse as sp

    with atomic_path(path, suffix=".npz") as tmp:
        sp.save_npz(tmp, matrix.tocsr(), compressed=False)


def load_csr(path: str | Path):
    """A split's float32 CSR matrix; a missing or foreign file names itself."""
    import scipy.sparse as sp

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: sparse TF-IDF features missing (rule tfidf_features writes them)")
    try:
        m = sp.load_npz(path).tocsr()
    except (ValueError, OSError, KeyError) as err:
        raise TfidfFeatureError(f"{path}: not a scipy sparse .npz ({err}); delete it and rerun") from None
    return m.astype(np.float32, copy=False)


def load_vectorizer(path: str | Path) -> TitleVectorizer:
    import joblib

    vec = joblib.load(path)
    if not isinstance(vec, TitleVectorizer):
        raise TfidfFeatureError(f"{path}: expected a meli TitleVectorizer, got {type(vec).__name__}")
    return vec


def build(data_dir: str | Path, out_dir: str | Path, config: dict[str, Any] | None = None,
          threads: int = 1) -> dict[str, Any]:
    """Fit on train, transform every split, write the outputs; returns stats.json's content.

    ``threads``: chunks of titles hashed in parallel (the hashed engine; sklearn's is one core).
    """
    import pandas as pd

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    log = setup_logging("meli.embeddings.tfidf")
    start = time.monotonic()
    vec = TitleVectorizer(config)
    stats: dict[str, Any] = {"config": vec.config, "threads": threads, "splits": {}}
    for split in SPLITS:
        path = data_dir / f"{split}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: split {split!r} not found (rule prepare_data writes it)")
        texts = pd.read_parquet(path, columns=["text"])["text"]
        if texts.isna().any():
            raise TfidfFeatureError(f"{path}: column 'text' has {int(texts.isna().sum())} missing value(s)")
        t0 = time.monotonic()
        x = vec.fit_transform(texts, threads) if split == "train" else vec.transform(texts, threads)
        save_csr(out_dir / f"{split}.npz", x)
        del texts
        stats["splits"][split] = {"rows": int(x.shape[0]), "nnz_per_row": round(x.nnz / max(x.shape[0], 1), 2),
                                  "empty_rows": int((np.diff(x.indptr) == 0).sum()),
                                  "seconds": round(time.monotonic() - t0, 2)}
        log.info("%s: %s rows x %s features, %.1f non-zeros per row (%.1f s)", split, f"{x.shape[0]:,}",
                 f"{x.shape[1]:,}", stats["splits"][split]["nnz_per_row"], time.monotonic() - t0)
    import joblib

    with atomic_path(out_dir / "vectorizer.joblib") as tmp:
        joblib.dump(vec, tmp)
    stats.update(n_features=vec.n_features, blocks=vec.block_sizes(), seconds=round(time.monotonic() - start, 2),
                 peak_mem_mb=round(peak_rss_mb(), 1))
    write_json(out_dir / "stats.json", stats)  # last: its presence marks complete outputs
    return stats


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, help="directory with {train,validation,test}.parquet")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--config", default="{}", help="the tfidf_features section as one JSON object")
    ap.add_argument("--threads", type=int, default=1, help="chunks of titles hashed in parallel (engine hashed)")
    args = ap.parse_args(argv)
    # Through the package, not __main__: the pickled vectorizer must name meli.embeddings.tfidf.TitleVectorizer.
    from meli.embeddings import tfidf

    tfidf.build(args.data_dir, args.out_dir, json.loads(args.config), max(1, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
