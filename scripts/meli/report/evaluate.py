"""Test scores of the selected runs only (one per family, chosen on validation by meli.report.aggregate).

    python -m meli.report.evaluate --selection results/tables/selection.json --data-dir results/data \\
        --features results/features --config '{"bootstrap": 1000}' --device auto --out-dir results/tables

Per selected run: balanced accuracy with a bootstrap 95% CI, accuracy, macro F1, recall of every
category (the worst listed), the most confused category pairs, and bacc per ``label_quality``.
Test rows whose category never occurs in train (label -1) cannot be predicted by any model: they
are counted and excluded. Pairs of selected models are compared on the same test rows: the
difference of their balanced accuracies with a paired bootstrap interval and a verdict (better,
worse, not distinguishable). Writes ``test.csv`` (one row per family) and ``test_details.json``
(``families``: the details; ``comparisons``: the pairs, the headline one first).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from meli import models
from meli.cli import MeliError, entry_point
from meli.io import atomic_path, read_json, setup_logging, write_json
from meli.metrics import balanced_accuracy
from meli.runs import resolve_run_dir

LOG = logging.getLogger("meli.report.evaluate")
DEFAULTS = {"bootstrap": 1000, "worst_categories": 10, "top_confusions": 10, "seed": 0}
# Indices drawn per bootstrap chunk: bounds memory (~16M int64 = 128 MB) whatever the test size.
CHUNK_INDICES = 1 << 24


class EvaluateError(MeliError, ValueError):
    """Inputs that do not fit together (selection, test split, labels, a run's predictions)."""


def bootstrap_bacc(y: np.ndarray, pred: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """Balanced accuracy of ``n_boot`` resamples (rows drawn with replacement), vectorized."""
    return bootstrap_baccs(y, [pred], n_boot, seed)[0]


def bootstrap_baccs(y: np.ndarray, preds: list[np.ndarray], n_boot: int, seed: int = 0) -> np.ndarray:
    """``[models, n_boot]`` balanced accuracies, every model scored on the same resampled rows.

    Scoring several models on identical resamples is what makes their difference *paired*: the
    per-resample differences cancel the luck of the draw shared by both models. Each resample's
    per-class support and hits come from one ``bincount`` over ``resample * n_classes + class``;
    classes absent from a resample are left out of its mean, as they would be by computing bacc
    on that resample directly.
    """
    y = np.asarray(y)
    n = len(y)
    if n == 0 or n_boot <= 0:
        return np.empty((len(preds), 0))
    _, yi = np.unique(y, return_inverse=True)
    k = int(yi.max()) + 1
    correct = [(y == np.asarray(p)).astype(np.float64) for p in preds]
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_INDICES // n)
    out = np.empty((len(preds), n_boot))
    for start in range(0, n_boot, per_chunk):
        b = min(per_chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        cell = (yi[idx] + (np.arange(b) * k)[:, None]).ravel()
        support = np.bincount(cell, minlength=b * k).reshape(b, k)
        present = support > 0
        for m, c in enumerate(correct):
            hits = np.bincount(cell, weights=c[idx].ravel(), minlength=b * k).reshape(b, k)
            recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
            out[m, start : start + b] = recall.sum(axis=1) / present.sum(axis=1)
    return out


def confidence_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap samples."""
    if len(samples) == 0:
        return None, None
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def score(
    y: np.ndarray,
    pred: np.ndarray,
    categories: list[str],
    label_quality: np.ndarray | None = None,
    cfg: dict[str, Any] | None = None,
    samples: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every test metric of one model. ``y`` may hold -1 (category unseen in train): excluded.

    ``samples``: this model's bootstrap baccs when already drawn with the other models'
    (:func:`bootstrap_baccs` on the scored rows), so that its interval and the paired
    differences come from the same resamples.
    """
    cfg = {**DEFAULTS, **(cfg or {})}
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if y.shape != pred.shape:
        raise EvaluateError(f"{len(y)} labels but {len(pred)} predictions")
    seen = y >= 0
    n_unseen = int((~seen).sum())
    y, pred = y[seen], pred[seen]
    if label_quality is not None:
        label_quality = np.asarray(label_quality, dtype=object)[seen]
    if len(y) == 0:
        raise EvaluateError("no test row has a category seen in train")
    k = len(categories)
    if y.max() >= k or pred.max() >= k or pred.min() < 0:
        raise EvaluateError(f"label or prediction outside 0..{k - 1} (labels.json has {k} categories)")

    support = np.bincount(y, minlength=k)
    predicted = np.bincount(pred, minlength=k)
    hits = np.bincount(y[y == pred], minlength=k)
    present = support > 0
    recall = np.divide(hits, support, out=np.full(k, np.nan), where=present)
    precision = np.divide(hits, predicted, out=np.full(k, np.nan), where=predicted > 0)
    # Macro F1 over the classes in y or pred, F1 = 0 where undefined (sklearn's convention).
    denom = support + predicted
    f1 = np.divide(2 * hits, denom, out=np.zeros(k), where=denom > 0)
    macro_f1 = float(f1[denom > 0].mean())

    if samples is None:
        samples = bootstrap_bacc(y, pred, cfg["bootstrap"], cfg["seed"])
    ci_low, ci_high = confidence_interval(samples)

    per_category = pd.DataFrame({
        "category": categories, "support": support, "recall": recall, "precision": precision, "f1": f1,
    })[present]
    worst = per_category.sort_values(["recall", "support", "category"], ascending=[True, False, True])
    wrong = y != pred
    pairs, counts = np.unique(y[wrong] * k + pred[wrong], return_counts=True)
    top = np.lexsort((pairs, -counts))[: cfg["top_confusions"]]
    confusions = [
        {"true": categories[p // k], "predicted": categories[p % k], "count": int(c),
         "share_of_true": float(c / support[p // k])}
        for p, c in zip(pairs[top], counts[top])
    ]

    by_quality = {}
    if label_quality is not None:
        for quality in sorted(set(label_quality) - {None, "unknown"}):
            mask = label_quality == quality
            by_quality[str(quality)] = {"n": int(mask.sum()), "bacc": balanced_accuracy(y[mask], pred[mask]),
                                        "accuracy": float((y[mask] == pred[mask]).mean())}
    return {
        "n_test": int(len(seen)),
        "n_scored": int(len(y)),
        "n_unseen_category": n_unseen,
        "bacc": float(recall[present].mean()),
        "bacc_ci_low": ci_low,
        "bacc_ci_high": ci_high,
        "bootstrap": {"resamples": int(cfg["bootstrap"]), "seed": int(cfg["seed"]), "level": 0.95},
        "accuracy": float((y == pred).mean()),
        "macro_f1": macro_f1,
        "label_quality": by_quality,
        "worst_categories": _records(worst.head(cfg["worst_categories"])),
        "confusions": confusions,
        "per_category": _records(per_category.sort_values("category")),
    }


def paired_difference(samples_a: np.ndarray, samples_b: np.ndarray, bacc_a: float, bacc_b: float,
                      level: float = 0.95) -> dict[str, Any]:
    """bacc(a) - bacc(b) on the same test rows, with the percentile interval of the paired
    bootstrap differences (both models scored on each resample) and a verdict: ``better`` or
    ``worse`` when the interval excludes 0, else ``not distinguishable``."""
    diff = np.asarray(samples_a) - np.asarray(samples_b)
    low, high = confidence_interval(diff, level)
    if low is None or high is None:
        verdict = "not distinguishable"
    else:
        verdict = "better" if low > 0 else "worse" if high < 0 else "not distinguishable"
    return {"diff": float(bacc_a - bacc_b), "ci_low": low, "ci_high": high, "level": level, "verdict": verdict,
            "share_a_higher": float((diff > 0).mean()) if len(diff) else None}


def comparison_pairs(selection: dict[str, Any]) -> list[tuple[str, str]]:
    """Which selected models to compare, ``(a, b)`` with ``a`` the one expected to be stronger.

    Families are ordered neural first, then by validation bacc (the order selection would rank
    them in); every pair is compared. The first pair whose ``b`` is a baseline (not neural) has
    ``a`` = the best neural model on validation: the headline comparison of the report.
    """
    fams = {f: v for f, v in selection["families"].items() if f != ENSEMBLE}
    order = sorted(fams, key=lambda f: (not _is_neural(f), -(fams[f].get("val_bacc") or 0.0)))
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    head = next(((a, b) for a, b in pairs if a == order[0] and not _is_neural(b) and _is_neural(a)), None)
    # The ensemble (meli.ensemble) against the best single run on validation, right after the headline.
    single = max(fams, key=lambda f: fams[f].get("val_bacc") or 0.0) if fams else None
    extra = [(ENSEMBLE, single)] if ENSEMBLE in selection["families"] and single else []
    return ([head] if head else []) + extra + [p for p in pairs if p != head]


ENSEMBLE = "ensemble"


def with_ensemble(selection: dict[str, Any], ensembles: dict[str, Any] | None) -> dict[str, Any]:
    """The selection plus the ensemble chosen on validation (ensembles.json of meli.ensemble) as
    one more candidate, ``ensemble``, scored on test like the families' selected runs."""
    chosen = (ensembles or {}).get("chosen")
    if not chosen:
        return selection
    c = ensembles["candidates"][chosen]
    entry = {"combo": chosen, "run_dir": c["run_dir"], "val_bacc": c["val_bacc"], "val_loss": c.get("val_loss"),
             "members": [m["run_dir"] for m in c["members"]], "n_runs": len(ensembles["candidates"])}
    return {**selection, "families": {**selection["families"], ENSEMBLE: entry}}


CORRECTION = "Holm (family-wise error rate 5% over every pair compared)"
DROP = 0.01  # a validation->test drop smaller than this is not worth a flag, whatever the CI


def compare(selection: dict[str, Any], samples: dict[str, np.ndarray], details: dict[str, Any], n_rows: int,
            resamples: int) -> list[dict[str, Any]]:
    """Every pair of selected models on the same test rows; the verdicts are Holm-corrected over the
    pairs (``verdict``), the uncorrected ones kept as ``verdict_unadjusted``."""
    from meli.report import stats

    comparisons = []
    for a, b in comparison_pairs(selection):
        c = {"a": a, "b": b, "n_rows": n_rows, "resamples": resamples,
             **paired_difference(samples[a], samples[b], details[a]["bacc"], details[b]["bacc"])}
        c["p"] = stats.bootstrap_p(np.asarray(samples[a]) - np.asarray(samples[b]))
        comparisons.append(c)
    for c, p_adj in zip(comparisons, stats.holm([c["p"] for c in comparisons])):
        c["verdict_unadjusted"], c["p_holm"] = c["verdict"], p_adj
        c["verdict"] = stats.verdict(c["diff"], p_adj) if len(comparisons) > 1 else c["verdict"]
        LOG.info("%s - %s: %+.4f [%+.4f, %+.4f], p %.3g (Holm %.3g) -> %s", c["a"], c["b"], c["diff"],
                 c["ci_low"] or float("nan"), c["ci_high"] or float("nan"), c["p"] or float("nan"),
                 p_adj or float("nan"), c["verdict"])
    return comparisons


def val_test_drop(d: dict[str, Any]) -> dict[str, Any] | None:
    """A selected run whose validation score lies above its test interval by at least DROP: the
    best of many on validation is partly luck (winner's curse), or validation and test differ."""
    val, test, high = d.get("val_bacc"), d.get("bacc"), d.get("bacc_ci_high")
    if val is None or test is None or high is None or val <= high or val - test < DROP:
        return None
    return {"val_bacc": val, "test_bacc": test, "drop": val - test}


def recommend(details: dict[str, Any], comparisons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """When no selected model is distinguishable from another on test: the cheapest to serve
    (measured prediction time on the test split), said to be chosen for that reason."""
    if len(details) < 2 or any(c["verdict"] != "not distinguishable" for c in comparisons):
        return None
    family = min(details, key=lambda f: (details[f].get("predict_s") or math.inf, f))
    return {"family": family, "reason": "cheapest", "why": "no selected model is distinguishable from another on "
            f"test; {family} predicts the test split fastest ({details[family].get('predict_s') or 0:.1f} s)"}


def _is_neural(family: str) -> bool:
    try:
        return models.get(family).neural
    except (KeyError, ValueError):
        return False


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in json.loads(df.to_json(orient="records"))]


def _test_labels(data_dir: Path, features: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Test labels (-1: category unseen in train) and label_quality, checked against each other."""
    y = np.load(features / "test_labels.npy")
    test_file = pq.ParquetFile(data_dir / "test.parquet")
    if test_file.metadata.num_rows != len(y):
        raise EvaluateError(f"{data_dir / 'test.parquet'} has {test_file.metadata.num_rows} rows but "
                            f"{features / 'test_labels.npy'} has {len(y)}")
    quality = None
    if "label_quality" in test_file.schema_arrow.names:
        quality = test_file.read(columns=["label_quality"]).column(0).to_numpy(zero_copy_only=False)
    return y, quality


def _predict_test(predictor: Any, run_dir: Path, n: int, categories: list[str],
                  features: Path) -> tuple[np.ndarray, float]:
    """A model's test predictions (checked) and the seconds they took."""
    t1 = time.perf_counter()
    # Streamed: only the argmax is scored, so never hold test rows x classes probabilities.
    pred, _ = predictor.predict_split("test")
    predict_s = time.perf_counter() - t1
    if np.shape(pred) != (n,):
        raise EvaluateError(f"{run_dir}: {np.shape(pred)} test predictions, expected ({n},) from {features}")
    if list(getattr(predictor, "categories", categories)) != list(categories):
        raise EvaluateError(f"{run_dir}: the model's categories differ from {features / 'labels.json'}")
    return np.asarray(pred, dtype=np.int64), predict_s


def evaluate(
    selection_path: str | Path, data_dir: str | Path, features: str | Path, cfg: dict[str, Any], device: str,
    out_dir: str | Path, load_predictor=None, ensembles: str | Path | None = None,
) -> pd.DataFrame:
    """Score every selected run (and the chosen ensemble) on the test split; writes test.csv and
    test_details.json."""
    if load_predictor is None:
        from meli.ensemble import load_predictor  # torch and the models: only when really scoring
    selection_path, data_dir, features = Path(selection_path), Path(data_dir), Path(features)
    selection = read_json(selection_path)
    if ensembles and Path(ensembles).exists():
        selection = with_ensemble(selection, read_json(ensembles))
    if not selection.get("families"):
        raise EvaluateError(f"{selection_path}: no selected run under 'families'")
    categories = read_json(features / "labels.json")["categories"]
    y, quality = _test_labels(data_dir, features)
    preds, timings = {}, {}
    for family, chosen in selection["families"].items():
        run_dir = resolve_run_dir(chosen["run_dir"], selection_path)
        t0 = time.perf_counter()
        predictor = load_predictor(run_dir, data_dir, features, device)
        load_s = time.perf_counter() - t0
        preds[family], predict_s = _predict_test(predictor, run_dir, len(y), categories, features)
        timings[family] = (load_s, predict_s)

    # One bootstrap for all models on the same resampled rows: each model's interval and every
    # paired difference come from it (the indices are those a single model's bootstrap draws).
    cfg = {**DEFAULTS, **cfg}
    seen = y >= 0
    samples = dict(zip(preds, bootstrap_baccs(y[seen], [p[seen] for p in preds.values()], cfg["bootstrap"],
                                              cfg["seed"])))
    rows, details = [], {}
    for family, chosen in selection["families"].items():
        result = score(y, preds[family], categories, quality, cfg, samples=samples[family])
        load_s, predict_s = timings[family]
        LOG.info("%s %s: test bacc %.4f [%.4f, %.4f] on %d rows (%d unseen-category rows excluded), "
                 "load %.1fs, predict %.1fs", family, chosen["combo"], result["bacc"],
                 result["bacc_ci_low"] or float("nan"), result["bacc_ci_high"] or float("nan"), result["n_scored"],
                 result["n_unseen_category"], load_s, predict_s)
        details[family] = {"combo": chosen["combo"], "run_dir": str(chosen["run_dir"]),
                           **({"members": chosen["members"]} if "members" in chosen else {}),
                           "val_bacc": chosen.get("val_bacc"), "load_s": load_s, "predict_s": predict_s, **result}
        row = {"family": family, "combo": chosen["combo"], "val_bacc": chosen.get("val_bacc"),
               **{k: result[k] for k in ("bacc", "bacc_ci_low", "bacc_ci_high", "accuracy", "macro_f1")},
               **{f"bacc_{q}": v["bacc"] for q, v in result["label_quality"].items()},
               **{k: result[k] for k in ("n_test", "n_scored", "n_unseen_category")}, "load_s": load_s,
               "predict_s": predict_s}
        rows.append(row)
    comparisons = compare(selection, samples, details, int(seen.sum()), int(cfg["bootstrap"]))
    for family, d in details.items():
        d["val_test_drop"] = val_test_drop(d)
    table = pd.DataFrame(rows).rename(columns={"bacc": "test_bacc"})
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "test.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json(out_dir / "test_details.json", {"selection_split": selection.get("split", "validation"),
                                               "families": details, "comparisons": comparisons,
                                               "correction": CORRECTION if len(comparisons) > 1 else None,
                                               "recommendation": recommend(details, comparisons)})
    return table


def evaluate_families(selection_path: str | Path, data_dir: str | Path, features: str | Path, families: list[str],
                      cfg: dict[str, Any], device: str, out_dir: str | Path, load_predictor=None) -> pd.DataFrame | None:
    """Test scores of some families only: a partial sweep's families whose every combination has
    finished (their selection is final), while another family still misses a combination."""
    selection_path = Path(selection_path)
    selection = read_json(selection_path)
    chosen = {f: v for f, v in selection.get("families", {}).items() if f in families}
    if not chosen:
        return None
    subset = selection_path.with_name(".selection.complete-families.json")
    write_json(subset, {**selection, "families": chosen, "complete_families_only": True})
    try:
        return evaluate(subset, data_dir, features, cfg, device, out_dir, load_predictor=load_predictor)
    finally:
        subset.unlink(missing_ok=True)


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selection", required=True, help="selection.json from meli.report.aggregate")
    ap.add_argument("--data-dir", required=True, help="directory with test.parquet")
    ap.add_argument("--features", required=True, help="directory with test_labels.npy, labels.json")
    ap.add_argument("--config", default="{}", help="the `report` config section as JSON")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ensembles", help="ensembles.json of meli.ensemble: its chosen ensemble is scored too")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    setup_logging("meli.report.evaluate")
    evaluate(args.selection, args.data_dir, args.features, json.loads(args.config), args.device, args.out_dir,
             ensembles=args.ensembles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
