"""Balanced accuracy, the workflow's metric: one implementation for training, the baseline and test scoring."""
from __future__ import annotations

from typing import Any

import numpy as np


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition); NaN when empty.

    A predicted class that never occurs in ``y_true`` costs recall but adds no term, as in
    ``sklearn.metrics.balanced_accuracy_score`` (tests check they agree). Takes numpy arrays or
    CPU tensors of integer labels.
    """
    y, pred = np.asarray(y_true), np.asarray(y_pred)
    if y.size == 0:
        return float("nan")
    classes, yi = np.unique(y, return_inverse=True)
    support = np.bincount(yi, minlength=len(classes))
    hits = np.bincount(yi, weights=(y == pred), minlength=len(classes))
    return float(np.mean(hits / support))
