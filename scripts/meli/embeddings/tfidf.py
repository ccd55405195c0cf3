"""One shared sparse TF-IDF matrix per split: what the TF-IDF family and the MLP's ``input: tfidf`` read.

    python -m meli.embeddings.tfidf --data-dir results/data --out-dir results/features/tfidf --config '{...}'

Word n-grams (tokens are the data stage's cleaned, space-separated ``text``) and ``char_wb``
n-grams, each its own ``TfidfVectorizer`` (``min_df``, sublinear tf, l2 per block, float32),
stacked side by side. Fitted on train only; built once per workflow (config section
``tfidf_features``) instead of once per training job.

Outputs (docs/design.md): ``{train,validation,test}.npz`` (scipy CSR float32, row order = the
split's Parquet row order, sorted indices), ``vectorizer.joblib`` (the fitted
:class:`TitleVectorizer`, for predicting new titles), ``stats.json`` (features per block,
non-zeros per row, seconds).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from meli.cli import MeliError, entry_point
from meli.io import atomic_path, peak_rss_mb, setup_logging, write_json

SPLITS = ("train", "validation", "test")
# The defaults of config/schema.yaml's tfidf_features (the issue-12 reference features).
DEFAULTS: dict[str, Any] = {"word_ngrams": [1, 2], "char_ngrams": [2, 5], "min_df": 2, "max_features": 262144,
                            "sublinear_tf": True}


class TfidfFeatureError(MeliError, ValueError):
    """Bad input to the sparse-feature stage; the message names the file or key."""


class TitleVectorizer:
    """Word and char_wb TF-IDF blocks, hstacked into one float32 CSR matrix (columns: word block first)."""

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = {**DEFAULTS, **(config or {})}
        unknown = sorted(set(cfg) - set(DEFAULTS))
        if unknown:
            raise TfidfFeatureError(f"tfidf_features: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
        if not cfg["word_ngrams"] and not cfg["char_ngrams"]:
            raise TfidfFeatureError("tfidf_features: word_ngrams and char_ngrams are both off; enable one")
        self.config = cfg
        self.blocks: list[tuple[str, Any]] = []
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

    def fit_transform(self, texts: Sequence[str]):
        return self._stack([vec.fit_transform(texts) for _, vec in self.blocks])

    def transform(self, texts: Sequence[str]):
        return self._stack([vec.transform(texts) for _, vec in self.blocks])

    @property
    def n_features(self) -> int:
        return sum(len(vec.vocabulary_) for _, vec in self.blocks)

    def block_sizes(self) -> dict[str, int]:
        return {name: len(vec.vocabulary_) for name, vec in self.blocks}

    @staticmethod
    def _stack(parts):
        import scipy.sparse as sp

        out = sp.hstack(parts, format="csr", dtype=np.float32)
        out.sort_indices()
        return out


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


def build(data_dir: str | Path, out_dir: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit on train, transform every split, write the outputs; returns stats.json's content."""
    import pandas as pd

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    log = setup_logging("meli.embeddings.tfidf")
    start = time.monotonic()
    vec = TitleVectorizer(config)
    stats: dict[str, Any] = {"config": vec.config, "splits": {}}
    for split in SPLITS:
        path = data_dir / f"{split}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: split {split!r} not found (rule prepare_data writes it)")
        texts = pd.read_parquet(path, columns=["text"])["text"]
        if texts.isna().any():
            raise TfidfFeatureError(f"{path}: column 'text' has {int(texts.isna().sum())} missing value(s)")
        t0 = time.monotonic()
        x = vec.fit_transform(texts) if split == "train" else vec.transform(texts)
        save_csr(out_dir / f"{split}.npz", x)
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
    args = ap.parse_args(argv)
    # Through the package, not __main__: the pickled vectorizer must name meli.embeddings.tfidf.TitleVectorizer.
    from meli.embeddings import tfidf

    tfidf.build(args.data_dir, args.out_dir, json.loads(args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
