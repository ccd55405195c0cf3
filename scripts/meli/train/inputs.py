"""A training job's inputs: the train/validation rows of its family's input kind, checked, and where they live.

``tokens`` (meli.models.family.TOKENS): ``{split}_ids.npy`` int32 ``[rows, max_len]`` + the
embedding ``matrix.npy``; ``tfidf``: the shared sparse TF-IDF rows (``tfidf/{split}.npz``,
:class:`meli.train.sparse.CsrRows`). Both with ``{split}_labels.npy`` and ``labels.json`` of the
embedding stage. Rows whose category train never saw (label -1) are counted, not trained on.
The matrices are loaded once (onto the GPU when they fit, :func:`place`) and batches are
gathered by index: no per-sample Python, no DataLoader.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meli.io import read_json
from meli.models.family import TFIDF
from meli.models.runtime import EVAL_BATCH
from meli.train import memory
from meli.train.sparse import CsrRows

log = logging.getLogger("meli.train.inputs")

LABEL_FILES = ("labels.json", "train_labels.npy", "validation_labels.npy")


@dataclass
class Split:
    ids: torch.Tensor | CsrRows  # int32 [rows, max_len] token ids, or sparse TF-IDF rows; known labels only
    labels: torch.Tensor  # int64 [rows]
    unseen: int  # rows dropped because their category is absent from train (label -1)


@dataclass
class Data:
    train: Split
    validation: Split
    val_ids_all: np.ndarray | CsrRows  # every validation row, for val_predictions in row order
    val_labels_all: np.ndarray
    categories: list[str]
    matrix: torch.Tensor | None  # the embedding matrix; None for TF-IDF rows
    n_features: int = 0  # TF-IDF columns (input tfidf)

    @property
    def n_classes(self) -> int:
        return len(self.categories)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(vocab_size, dim) the network is built with: (TF-IDF columns, 0) for sparse rows."""
        return tuple(self.matrix.shape) if self.matrix is not None else (self.n_features, 0)

    @property
    def max_len(self) -> int:
        return 0 if isinstance(self.val_ids_all, CsrRows) else int(self.val_ids_all.shape[1])


@dataclass(frozen=True)
class Sources:
    """Where a job's inputs are: the features directory and the embedding matrix or TF-IDF directory."""

    features: Path
    matrix: Path | None = None  # token input
    tfidf: Path | None = None  # TF-IDF input; default features/tfidf

    def files(self, kind: str) -> list[Path]:
        """The input files of ``kind`` (what a checkpoint's fingerprint pins)."""
        labels = [self.features / f for f in LABEL_FILES]
        if kind == TFIDF:
            return labels + [self.tfidf_dir / "train.npz", self.tfidf_dir / "validation.npz"]
        if self.matrix is None:
            raise ValueError("token input needs --matrix (the embedding matrix.npy)")
        return [labels[0], self.features / "train_ids.npy", labels[1], self.features / "validation_ids.npy",
                labels[2], self.matrix]

    @property
    def tfidf_dir(self) -> Path:
        return self.tfidf if self.tfidf is not None else self.features / "tfidf"

    def columns(self, kind: str, params: dict[str, Any], family: str) -> slice | None:
        """For TFIDF input, the columns ``family``'s combination ``params`` reads (None: all)."""
        if kind != TFIDF:
            return None
        from meli import models

        spec = models.get(family)
        return spec.columns(params, tfidf_block_sizes(self.tfidf_dir)) if spec.input_columns else None

    def load(self, kind: str, columns: slice | None = None) -> Data:
        """The inputs; for TFIDF only ``columns`` of the shared matrix (all by default)."""
        if kind != TFIDF:
            return load_data(self.features, self.matrix)
        return load_sparse_data(self.features, self.tfidf_dir, columns)


def _load_split(features: Path, split: str, n_classes: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    ids_path = features / f"{split}_ids.npy"
    ids = np.load(ids_path)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{ids_path}: expected an integer [rows, max_len] matrix, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{ids_path}: token ids in [{ids.min()}, {ids.max()}], the matrix has {vocab_size} rows")
    return ids.astype(np.int32, copy=False), _load_labels(features, split, n_classes, ids.shape[0], ids_path)


def _load_labels(features: Path, split: str, n_classes: int, rows: int, what: Path) -> np.ndarray:
    y_path = features / f"{split}_labels.npy"
    y = np.load(y_path)
    if y.shape != (rows,):
        raise ValueError(f"{y_path}: {y.shape[0] if y.ndim else 0} labels for {rows} rows in {what}")
    if y.size and (y.min() < -1 or y.max() >= n_classes):
        raise ValueError(f"{y_path}: labels in [{y.min()}, {y.max()}], labels.json has {n_classes} categories")
    return y.astype(np.int64, copy=False)


def _known_splits(features: Path, raw: dict[str, tuple[Any, np.ndarray]], rows) -> dict[str, Split]:
    """Train and validation rows with a known label (``rows`` turns the kept input rows into
    tensors); rows whose category train never saw (label -1) are counted, not trained on."""
    splits = {}
    for split, (x, y) in raw.items():
        known = y >= 0
        splits[split] = Split(rows(x[known]), torch.from_numpy(y[known]), int((~known).sum()))
    if len(splits["train"].labels) == 0:
        raise ValueError(f"{features}/train_labels.npy: no training rows with a known label")
    return splits


def load_data(features: str | Path, matrix_path: str | Path) -> Data:
    """Token ids + labels of train and validation, and the embedding matrix (checked: shapes, ids, NaN)."""
    features = Path(features)
    categories = list(read_json(features / "labels.json")["categories"])
    matrix = np.load(matrix_path)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"{matrix_path}: expected a [vocab, dim] matrix, got shape {matrix.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"{matrix_path}: {bad_rows.size} row(s) contain NaN/inf (first: token id {bad_rows[0]})")
    raw = {split: _load_split(features, split, len(categories), matrix.shape[0]) for split in ("train", "validation")}
    splits = _known_splits(features, raw, torch.from_numpy)
    if raw["train"][0].shape[1] != raw["validation"][0].shape[1]:
        raise ValueError(f"{features}: train and validation ids have different max_len")
    return Data(train=splits["train"], validation=splits["validation"], val_ids_all=raw["validation"][0],
                val_labels_all=raw["validation"][1], categories=categories,
                matrix=torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)))


def tfidf_block_sizes(tfidf_dir: str | Path) -> dict[str, int]:
    """``{block: columns}`` of the shared TF-IDF matrix, in column order (its stats.json, else its vectorizer)."""
    stats = Path(tfidf_dir) / "stats.json"
    if stats.exists() and "blocks" in (s := read_json(stats)):
        return {k: int(v) for k, v in s["blocks"].items()}
    from meli.embeddings.tfidf import load_vectorizer

    return load_vectorizer(Path(tfidf_dir) / "vectorizer.joblib").block_sizes()


def select_columns(x, columns: slice | None):
    """A CSR matrix's columns ``columns`` (None: all of them, the matrix itself)."""
    return x if columns is None else x[:, columns].tocsr()


def load_sparse_data(features: str | Path, tfidf_dir: str | Path, columns: slice | None = None) -> Data:
    """The shared TF-IDF rows (rule tfidf_features) with the label ids of the embedding stage;
    ``columns``: only those columns (the MLP's tfidf_view, meli.models.mlp.view_columns)."""
    from meli.embeddings.tfidf import load_csr

    features, tfidf_dir = Path(features), Path(tfidf_dir)
    categories = list(read_json(features / "labels.json")["categories"])
    raw = {}
    for split in ("train", "validation"):
        path = tfidf_dir / f"{split}.npz"
        x = select_columns(load_csr(path), columns)
        raw[split] = (x, _load_labels(features, split, len(categories), x.shape[0], path))
    splits = _known_splits(features, raw, CsrRows.from_scipy)
    if raw["train"][0].shape[1] != raw["validation"][0].shape[1]:
        raise ValueError(f"{tfidf_dir}: train and validation have different numbers of columns")
    return Data(train=splits["train"], validation=splits["validation"],
                val_ids_all=CsrRows.from_scipy(raw["validation"][0]), val_labels_all=raw["validation"][1],
                categories=categories, matrix=None, n_features=int(raw["train"][0].shape[1]))


def place(split: Split, device: torch.device) -> Split:
    """The split's tensors on ``device`` when they fit comfortably, else pinned host memory."""
    if device.type != "cuda":
        return split
    need = split.ids.nbytes + split.labels.nbytes
    free, _ = torch.cuda.mem_get_info(device)
    if need < 0.4 * free:
        return Split(split.ids.to(device), split.labels.to(device), split.unseen)
    log.warning("token matrix (%.0f MB) kept in host memory: only %.0f MB free on %s", need / 1e6, free / 1e6, device)
    return Split(split.ids.pin_memory(), split.labels.pin_memory(), split.unseen)


def check_memory(family: str, params: dict[str, Any], features: Path, matrix_path: Path, mem_mb: int | None):
    """Estimate a token-input job's memory from its inputs' shapes (memory-mapped, nothing loaded)
    and fail early when it exceeds ``mem_mb``; returns the estimate."""
    ids = [np.load(features / f"{split}_ids.npy", mmap_mode="r") for split in ("train", "validation")]
    matrix = np.load(matrix_path, mmap_mode="r")
    n_classes = len(read_json(features / "labels.json")["categories"])
    if matrix.ndim != 2 or any(i.ndim != 2 for i in ids):
        return None  # load_data says what is wrong with the shapes
    est = memory.estimate(family, params, sum(i.shape[0] for i in ids), ids[0].shape[1], matrix.shape[0],
                          matrix.shape[1], n_classes, EVAL_BATCH)
    log.info("memory estimate: %s; mem_mb %s", est.describe(), f"{mem_mb:,}" if mem_mb else "not given")
    memory.check(est, mem_mb, family)
    return est
