"""Repeated titles: counted within and across splits, and optionally kept in one split.

Marketplace titles repeat (sellers relist the same product): a test title that is also in train
measures memory, not generalisation. ``count`` says how much of each split repeats, exactly (the
raw title) and after cleaning (the ``text`` the models see), and how many copies disagree on the
category; ``summary.json`` keeps it as ``duplicates`` and the report shows it beside the test
scores. ``group_split`` is the stratified split with every copy of a title in one split
(``split.keep_duplicates_together``).

Titles are compared by a 64-bit hash (pandas' vectorized siphash): with 20M titles the chance
that two different titles collide anywhere is ~1e-5, far below what the counts are read for.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2


def hash_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """uint64 hash per row (equal strings, equal hashes), one chunk at a time."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [pd.util.hash_array(np.asarray(c.to_numpy(zero_copy_only=False), dtype=object), categorize=False)
             for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def count(keys: np.ndarray, assign: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """Copies of the same key: within each split (rows beyond a key's first in that split), across
    splits (validation/test rows whose key is in train; test rows whose key is in train or
    validation), and keys kept with more than one category."""
    by_split = {name: keys[assign == index] for index, name in enumerate(SPLITS)}
    unique = {name: np.unique(k) for name, k in by_split.items()}
    seen = np.union1d(unique["train"], unique["validation"])
    kept = assign >= 0
    pairs = np.unique(np.stack([keys[kept], codes[kept].astype(np.uint64)], axis=1), axis=0) if kept.any() \
        else np.zeros((0, 2), np.uint64)
    conflicting_keys = pairs[:-1, 0][pairs[1:, 0] == pairs[:-1, 0]] if len(pairs) > 1 else pairs[:0, 0]
    conflicting_keys = np.unique(conflicting_keys)
    n_test = len(by_split["test"])
    test_seen = int(np.isin(by_split["test"], seen).sum())
    return {
        "within": {name: int(len(k) - len(unique[name])) for name, k in by_split.items()},
        "validation_in_train": int(np.isin(by_split["validation"], unique["train"]).sum()),
        "test_in_train": int(np.isin(by_split["test"], unique["train"]).sum()),
        "test_in_train_or_validation": test_seen,
        "test_share_seen": round(test_seen / n_test, 4) if n_test else 0.0,
        "conflicting_categories": {"titles": int(len(conflicting_keys)),
                                   "rows": int(np.isin(keys[kept], conflicting_keys).sum())},
    }


def group_split(keys: np.ndarray, codes: np.ndarray, split: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """``split`` (the stratified split, over category codes) applied to groups of equal keys: each
    group takes the category of its first row and all its rows go to the group's split."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    group_assign, rare = split(codes[first])
    return group_assign[inverse.reshape(-1)], rare
