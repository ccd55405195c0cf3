"""The report's statistics beyond one interval (issue 24): ties, multiple comparisons, search effort,
hyperparameter importance. Pure functions of arrays and tables; nothing reads files here.

* **Paired bootstrap p-values** (:func:`bootstrap_p`): the share of paired resamples on the other
  side of zero, two-sided, with the +1 correction (never exactly 0).
* **Holm's step-down correction** (:func:`holm`): several paired differences are several tests;
  Holm controls the family-wise error rate at 5% without assuming independence (Holm 1979).
* **Expected best validation score after n combinations** (:func:`expected_max`, Dodge et al. 2019,
  "Show your work"): the expected maximum of ``n`` draws with replacement from a family's observed
  validation scores. A family that won only because it was searched more has a curve that is lower
  than the others' at the same ``n``.
* **Hyperparameter importance** (:func:`importance`): a random-forest surrogate of validation bacc
  from the hyperparameters (each as the rank of its value), refitted on bootstrap resamples of the
  runs; importance is the drop of the surrogate's R² on the runs left out of each resample when
  one hyperparameter's column is permuted. Reported as the median and a 90% interval over the
  resamples, with the surrogate's out-of-sample R² (an importance from a surrogate that predicts
  nothing means nothing).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from meli.report import order

ALPHA = 0.05


def bootstrap_p(diff_samples: np.ndarray) -> float | None:
    """Two-sided p-value of a paired bootstrap difference being 0 (None without resamples)."""
    d = np.asarray(diff_samples, dtype=float)
    if d.size == 0:
        return None
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (d.size + 1)))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (same order; None stays None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def verdict(diff: float, p_adjusted: float | None) -> str:
    if p_adjusted is None or p_adjusted >= ALPHA:
        return "not distinguishable"
    return "better" if diff > 0 else "worse"


def expected_max(scores: Sequence[float], n_max: int | None = None) -> pd.DataFrame:
    """Expected best score (and its sd) of ``n = 1..n_max`` combinations drawn with replacement
    from ``scores`` (Dodge et al., 2019): P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n."""
    v = np.sort(np.asarray([s for s in scores if s is not None and math.isfinite(s)], dtype=float))
    big_n = len(v)
    if big_n == 0:
        return pd.DataFrame(columns=["n", "expected_max", "sd"])
    i = np.arange(1, big_n + 1)
    rows = []
    for n in range(1, (n_max or big_n) + 1):
        w = (i / big_n) ** n - ((i - 1) / big_n) ** n
        mean = float((w * v).sum())
        rows.append({"n": n, "expected_max": mean, "sd": float(math.sqrt(max(0.0, (w * v * v).sum() - mean ** 2)))})
    return pd.DataFrame(rows)


def encode(df: pd.DataFrame, params: Sequence[str]) -> np.ndarray:
    """Each hyperparameter as the rank of its value in natural order (lists element-wise); a missing
    value as -1 (a tree splits it off)."""
    cols = []
    for p in params:
        keys = [order.value_key(v) for v in df[p]]
        ranks = {k: r for r, k in enumerate(sorted(set(k for k in keys if k[0] != 2)))}
        cols.append([ranks.get(k, -1) for k in keys])
    return np.asarray(cols, dtype=float).T


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else float("nan")


def importance(df: pd.DataFrame, params: Sequence[str], target: str = "val_bacc", resamples: int = 20,
               seed: int = 0, min_runs: int = 8) -> dict[str, Any] | None:
    """Permutation importance of each hyperparameter for a random-forest surrogate of ``target``,
    out of bag over bootstrap refits (see the module docstring); None with too few runs."""
    from sklearn.ensemble import RandomForestRegressor

    data = df.dropna(subset=[target])
    params = [p for p in params if data[p].astype(str).nunique() > 1]
    if len(data) < min_runs or not params:
        return None
    x, y = encode(data, params), data[target].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    drops = {p: [] for p in params}
    r2s = []
    for b in range(resamples):
        fit = rng.integers(0, len(y), len(y))
        out = np.setdiff1d(np.arange(len(y)), fit)
        if len(out) < 2:
            continue
        model = RandomForestRegressor(n_estimators=30, min_samples_leaf=2, random_state=b, n_jobs=1)
        model.fit(x[fit], y[fit])
        base = _r2(y[out], model.predict(x[out]))
        r2s.append(base)
        for j, p in enumerate(params):
            xp = x[out].copy()
            xp[:, j] = rng.permutation(xp[:, j])
            drops[p].append(base - _r2(y[out], model.predict(xp)))
    if not r2s:
        return None
    rows = [{"hyperparameter": p, "importance": float(np.nanmedian(d)), "low": float(np.nanquantile(d, 0.05)),
             "high": float(np.nanquantile(d, 0.95))} for p, d in drops.items()]
    rows.sort(key=lambda r: -r["importance"])
    return {"method": "permutation importance (drop in out-of-bag R²) of a random-forest surrogate, "
                      f"{len(r2s)} bootstrap refits; median and 90% interval",
            "n_runs": int(len(y)), "surrogate_r2": float(np.nanmedian(r2s)),
            "surrogate_r2_low": float(np.nanquantile(r2s, 0.05)), "surrogate_r2_high": float(np.nanquantile(r2s, 0.95)),
            "hyperparameters": rows}
