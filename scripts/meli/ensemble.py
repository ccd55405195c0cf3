"""Ensembles of finished runs: the average of their calibrated class probabilities (issue 24).

    python -m meli.ensemble --selection results/tables/selection.json --runs results/tables/runs.csv \\
        --data-dir results/data --features results/features --config '{"top_k": 3}' \\
        --out-dir results/ensembles --out results/tables/ensembles.json

After a sweep the members already exist, so an ensemble costs only their predictions. Candidates:

* ``<family>/seeds``: the runs of the family's selected seed group (when it has 2+ seeds);
* ``<family>/top-<k>``: the family's ``k`` best runs on validation (trained to the end);
* ``all/best-of-families``: each family's selected run;
* ``all/top-<k>``: the ``k`` best runs on validation whatever their family.

Each member's probabilities are first calibrated on validation with one temperature (``p**(1/T)``
renormalised, ``T`` minimising the validation log-loss over a grid): the TF-IDF LinearSVC's
probabilities are a softmax of its margins with no scale of their own, and an over-confident
member would otherwise outvote the others. The ensemble is the plain average of the calibrated
members (equal weights). Candidates are compared on **validation only**; the best one enters
``meli.report.evaluate`` as the ``ensemble`` entry, scored on test like any selected run and
paired against the best single run.

Writes ``results/ensembles/<scope>/<name>/``: ``ensemble.json`` (members as run directories
relative to the workflow root, their temperatures, weights, method), ``metrics.json`` (validation
bacc and loss) and ``val_predictions.parquet``; and ``ensembles.json`` (every candidate, the one
chosen). ``meli-predict --run results/ensembles/<scope>/<name>`` averages its members the same way.

:func:`member_proba` is the one place that asks a run's model for probabilities (meli.inference).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from meli.cli import MeliError, entry_point
from meli.io import atomic_path, read_json, setup_logging, write_json
from meli.metrics import balanced_accuracy

LOG = logging.getLogger("meli.ensemble")
DEFAULTS = {"enabled": True, "top_k": 3, "cross_family": True, "greedy": {}}
# Greedy forward selection (Caruana et al. 2004): the library is the best `library` runs on validation.
GREEDY_DEFAULTS = {"library": 12, "rounds": 20, "folds": 5, "seed": 0, "metric": "bacc"}
GREEDY_METRICS = ("bacc", "log_loss")
ENSEMBLE_FILE = "ensemble.json"
GREEDY = "all/greedy"
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
EPS = 1e-7


class EnsembleError(MeliError, ValueError):
    """Members that cannot be combined (other categories, other rows)."""


# ------------------------------------------------------------------ the one coupling to inference
def member_proba(run_dir: str | Path, data_dir: str | Path, features: str | Path, device: str = "auto",
                 split: str | None = None, titles: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """One run's float32 ``[n, classes]`` probabilities for a prepared split or for raw titles,
    and its categories (meli.inference's predictor; the only call into it from here)."""
    from meli.inference import load_predictor as load_run

    predictor = load_run(run_dir, data_dir, features, device)
    proba = predictor.predict_proba_split(split) if split is not None else predictor.predict_proba(list(titles))
    return np.asarray(proba, dtype=np.float32), list(predictor.categories)


# ------------------------------------------------------------------------------- calibration
def tempered(proba: np.ndarray, t: float) -> np.ndarray:
    """``softmax(log p / T)``: the same argmax, sharper (T < 1) or flatter (T > 1)."""
    logp = np.log(np.clip(proba, EPS, 1.0)) / t
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    seen = y >= 0
    return float(-np.log(np.clip(proba[seen, y[seen]], EPS, 1.0)).mean())


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the validation log-loss (grid search; the loss is smooth in log T)."""
    return float(min(TEMPERATURES, key=lambda t: log_loss(tempered(proba, t), y)))


def val_bacc(proba: np.ndarray, y: np.ndarray) -> float:
    seen = y >= 0
    return balanced_accuracy(y[seen], proba[seen].argmax(axis=1))


# -------------------------------------------------------------------------------- candidates
def candidates(selection: dict[str, Any], runs: pd.DataFrame, cfg: dict[str, Any]) -> dict[str, list[str]]:
    """name -> member run directories (each candidate has 2+ members, no two alike)."""
    final = runs[runs["pruned_at_rung"].isna()] if "pruned_at_rung" in runs else runs
    out: dict[str, list[str]] = {}
    for family, chosen in selection.get("families", {}).items():
        if len(chosen.get("seed_runs") or {}) > 1:
            group = final[(final["family"] == family) & (final["seed_group"] == chosen["seed_group"])]
            out[f"{family}/seeds"] = list(group["run_dir"])
        k = int(cfg.get("top_k") or 0)
        top = final[final["family"] == family].sort_values("val_bacc", ascending=False, kind="stable").head(k)
        if k >= 2 and len(top) >= 2:
            out[f"{family}/top-{len(top)}"] = list(top["run_dir"])
    fams = selection.get("families", {})
    if cfg.get("cross_family", True) and len(fams) >= 2:
        out["all/best-of-families"] = [f["run_dir"] for f in fams.values()]
        k = int(cfg.get("top_k") or 0)
        top = final.sort_values("val_bacc", ascending=False, kind="stable").head(k)
        if k >= 2 and top["family"].nunique() > 1:
            out[f"all/top-{len(top)}"] = list(top["run_dir"])
    unique: dict[tuple, str] = {}
    for name, members in out.items():  # the same members under two names: keep the first
        unique.setdefault(tuple(sorted(members)), name)
    return {name: out[name] for name in unique.values()}


# ------------------------------------------------------------ weighted: greedy forward selection
def greedy_counts(probas: Sequence[np.ndarray], y: np.ndarray, rounds: int, metric: str = "bacc") -> np.ndarray:
    """Caruana et al. (2004), forward selection with replacement: start from the best member on
    ``y``, then ``rounds - 1`` times add the member (again, if it is the best) whose addition to the
    running mean scores best. Returns how often each member was picked: its weight is that count /
    ``rounds``. ``metric``: ``bacc`` (the balanced accuracy the runs are selected on; ties go to the
    member listed first) or ``log_loss`` (smooth, but it under-weighs a member that is right often
    with flat probabilities, as the LinearSVC's are)."""
    if metric not in GREEDY_METRICS:
        raise EnsembleError(f"report.ensemble.greedy.metric: {metric!r} is not one of {GREEDY_METRICS}")
    seen = y >= 0
    probas = [p[seen] for p in probas]
    y = y[seen]
    counts = np.zeros(len(probas), dtype=np.int64)
    total = np.zeros_like(probas[0], dtype=np.float64)
    for _ in range(max(1, int(rounds))):
        if metric == "bacc":
            scores = [balanced_accuracy(y, (total + p).argmax(axis=1)) for p in probas]
        else:  # the running mean's log-loss needs only each member's probability of the true class
            right = total[np.arange(len(y)), y]
            scores = [np.log(np.clip((right + p[np.arange(len(y)), y]) / (counts.sum() + 1), EPS, 1.0)).mean()
                      for p in probas]
        best = int(np.argmax(scores))
        counts[best] += 1
        total += probas[best]
    return counts


def weighted_mean(probas: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return sum(float(w) * p for w, p in zip(weights, probas) if w > 0).astype(np.float32)


def cross_fitted(probas: Sequence[np.ndarray], y: np.ndarray, rounds: int, folds: int, seed: int = 0,
                 metric: str = "bacc") -> np.ndarray:
    """Out-of-fold probabilities of the greedy ensemble: the validation rows in ``folds`` random
    folds, each fold averaged with the weights selected on the other folds. Their score is an
    honest validation score of the *method* (weights chosen on the same rows they are scored on
    would look better than they are), comparable with the equal-weight candidates'."""
    fold = np.random.default_rng(seed).permutation(len(y)) % max(2, int(folds))
    out = np.empty_like(probas[0])
    for f in np.unique(fold):
        held = fold == f
        counts = greedy_counts([p[~held] for p in probas], y[~held], rounds, metric)
        out[held] = weighted_mean([p[held] for p in probas], counts)
    return out


def library(runs: pd.DataFrame, size: int) -> list[str]:
    """The greedy selection's candidates: the ``size`` best runs on validation trained to the end, any family."""
    final = runs[runs["pruned_at_rung"].isna()] if "pruned_at_rung" in runs else runs
    return list(final.sort_values("val_bacc", ascending=False, kind="stable").head(int(size))["run_dir"])


class _Members:
    """Validation probabilities of every member, computed once and calibrated once."""

    def __init__(self, root: Path, data_dir: Path, features: Path, device: str, y_val: np.ndarray):
        self.root, self.data_dir, self.features, self.device, self.y = root, data_dir, features, device, y_val
        self.proba: dict[str, np.ndarray] = {}
        self.temperature: dict[str, float] = {}
        self.categories: list[str] | None = None

    def get(self, run_dir: str) -> np.ndarray:
        if run_dir not in self.proba:
            path = Path(run_dir) if Path(run_dir).is_absolute() else self.root / run_dir
            proba, cats = member_proba(path, self.data_dir, self.features, self.device, split="validation")
            if self.categories is not None and cats != self.categories:
                raise EnsembleError(f"{run_dir}: its categories differ from the other members'")
            if proba.shape[0] != len(self.y):
                raise EnsembleError(f"{run_dir}: {proba.shape[0]} validation rows, expected {len(self.y)}")
            self.categories = cats
            t = fit_temperature(proba, self.y)
            self.temperature[run_dir], self.proba[run_dir] = t, tempered(proba, t)
            LOG.info("%s: validation bacc %.4f, temperature %.3g", run_dir, val_bacc(proba, self.y), t)
        return self.proba[run_dir]


def build(selection_path: str | Path, runs_csv: str | Path, data_dir: str | Path, features: str | Path,
          cfg: dict[str, Any], device: str, out_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Every candidate ensemble on validation; writes their folders and ensembles.json."""
    cfg = {**DEFAULTS, **(cfg or {})}
    selection_path, out_dir = Path(selection_path), Path(out_dir)
    root = selection_path.resolve().parents[2]  # run dirs are recorded relative to the workflow root
    selection = read_json(selection_path)
    y = np.load(Path(features) / "validation_labels.npy")
    result: dict[str, Any] = {"method": "mean of member probabilities, each calibrated on validation by one "
                              "temperature (all/greedy: weighted by greedy forward selection on validation, "
                              "scored on validation by cross-fitting); candidates compared on validation only",
                              "candidates": {}, "chosen": None}
    if cfg["enabled"]:
        members = _Members(root, Path(data_dir), Path(features), device, y)
        runs = pd.read_csv(runs_csv)
        for name, dirs in candidates(selection, runs, cfg).items():
            t0 = time.perf_counter()
            proba = np.mean([members.get(d) for d in dirs], axis=0)
            result["candidates"][name] = write_ensemble(out_dir / name, name, {d: 1 / len(dirs) for d in dirs},
                                                        members, proba, y, root,
                                                        {"combine_s": time.perf_counter() - t0})
        greedy = {**GREEDY_DEFAULTS, **(cfg.get("greedy") or {})}
        dirs = library(runs, greedy["library"])
        if len(dirs) >= 2 and greedy["rounds"] >= 2:
            result["candidates"][GREEDY] = greedy_candidate(out_dir / GREEDY, dirs, members, y, greedy, root)
        if result["candidates"]:
            best = max(result["candidates"].items(), key=lambda kv: (kv[1]["val_bacc"], -kv[1]["val_loss"]))
            result["chosen"] = best[0]
    write_json(out, result)
    return result


def greedy_candidate(folder: Path, dirs: list[str], members: _Members, y: np.ndarray, greedy: dict[str, Any],
                     root: Path) -> dict[str, Any]:
    """``all/greedy``: the library's members weighted by greedy forward selection on all validation
    rows (what meli-predict and the test score use); its validation score and predictions are the
    cross-fitted ones, so it competes fairly with the equal-weight candidates."""
    t0 = time.perf_counter()
    probas = [members.get(d) for d in dirs]
    counts = greedy_counts(probas, y, greedy["rounds"], greedy["metric"])
    oof = cross_fitted(probas, y, greedy["rounds"], greedy["folds"], greedy["seed"], greedy["metric"])
    chosen = [(d, int(c)) for d, c in zip(dirs, counts) if c > 0]
    in_sample = weighted_mean(probas, counts)
    weights = {d: c / int(counts.sum()) for d, c in chosen}
    extra = {"val_bacc_in_sample": val_bacc(in_sample, y), "library": len(dirs), "rounds": int(greedy["rounds"]),
             "folds": int(greedy["folds"]), "metric": greedy["metric"], "val_scored_by": "cross-fitting", "combine_s": time.perf_counter() - t0}
    LOG.info("greedy selection over %d runs: %s; cross-fitted validation bacc %.4f (in-sample %.4f)", len(dirs),
             ", ".join(f"{_relative(d, root)} x{c}" for d, c in chosen), val_bacc(oof, y), extra["val_bacc_in_sample"])
    return write_ensemble(folder, GREEDY, weights, members, oof, y, root, extra)


def write_ensemble(folder: Path, name: str, weights: dict[str, float], members: _Members, proba: np.ndarray,
                   y: np.ndarray, root: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """``weights``: member run dir -> weight; ``proba``: the validation probabilities its score and
    val_predictions.parquet come from; ``extra``: more metrics (``combine_s``, ...)."""
    seen = y >= 0
    dirs = list(weights)
    record = {"name": name, "members": [{"run_dir": _relative(d, root), "temperature": members.temperature[d],
                                         "weight": weights[d],
                                         "val_bacc": val_bacc(members.proba[d], y)} for d in dirs],
              "combine": "weighted mean of tempered probabilities" if name == GREEDY else "mean of tempered probabilities",
              "categories": len(members.categories or [])}
    metrics = {"family": "ensemble", "combo": name.replace("/", "-"), "run_dir": str(folder), "params": {
        "members": [m["run_dir"] for m in record["members"]]}, "val_bacc": val_bacc(proba, y),
        "val_loss": log_loss(proba, y), "n_val": int(seen.sum()), "n_members": len(dirs), **extra}
    write_json(folder / ENSEMBLE_FILE, record)
    with atomic_path(folder / "val_predictions.parquet") as tmp:
        pd.DataFrame({"label": y, "pred": proba.argmax(axis=1), "prob": proba.max(axis=1)}).to_parquet(tmp)
    write_json(folder / "metrics.json", metrics)
    LOG.info("ensemble %s (%d members): validation bacc %.4f, log-loss %.4f", name, len(dirs), metrics["val_bacc"],
             metrics["val_loss"])
    return {**metrics, "members": record["members"]}


def _relative(run_dir: str, root: Path) -> str:
    path = Path(run_dir)
    if path.is_absolute():
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(path)
    return str(path)


# ------------------------------------------------------------------------------- predicting
class EnsemblePredictor:
    """meli.inference's ``Predictor`` protocol for an ensemble folder: each member's tempered
    probabilities averaged (members are loaded one at a time: memory holds one model)."""

    def __init__(self, folder: str | Path, data_dir: str | Path, features: str | Path, device: str = "auto"):
        self.folder = Path(folder)
        self.record = read_json(self.folder / ENSEMBLE_FILE)
        self.root = self.folder.resolve().parents[3]  # results/ensembles/<scope>/<name> -> the workflow root
        self.data_dir, self.features, self.device = data_dir, features, device
        self.categories: list[str] = []

    def member_dirs(self) -> list[Path]:
        return [p if (p := Path(m["run_dir"])).is_absolute() else self.root / p for m in self.record["members"]]

    def _average(self, **what) -> np.ndarray:
        total = None
        for member, path in zip(self.record["members"], self.member_dirs()):
            proba, cats = member_proba(path, self.data_dir, self.features, self.device, **what)
            if self.categories and cats != self.categories:
                raise EnsembleError(f"{path}: its categories differ from the other members'")
            self.categories = cats
            part = tempered(proba, member["temperature"]) * float(member["weight"])
            total = part if total is None else total + part
        return total

    def predict_proba_split(self, split: str) -> np.ndarray:
        return self._average(split=split)

    def predict_split(self, split: str, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(int64 label, float32 its probability); not streamed: one rows x classes sum in memory."""
        proba = self.predict_proba_split(split)
        return proba.argmax(axis=1).astype(np.int64), proba.max(axis=1)

    def predict_proba(self, titles: Sequence[str]) -> np.ndarray:
        return self._average(titles=list(titles))

    def predict(self, titles: Sequence[str]) -> np.ndarray:
        return self.predict_proba(titles).argmax(axis=1)


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).exists()


def load_predictor(run_dir: str | os.PathLike, data_dir: str | os.PathLike, features: str | os.PathLike,
                   device: str = "auto"):
    """A predictor for a run directory or an ensemble folder."""
    if is_ensemble(run_dir):
        return EnsemblePredictor(run_dir, data_dir, features, device)
    from meli.inference import load_predictor as load_run

    return load_run(run_dir, data_dir, features, device)


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selection", required=True, help="selection.json of meli.report.aggregate")
    ap.add_argument("--runs", required=True, help="runs.csv of meli.report.aggregate")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--config", default="{}", help="the report.ensemble config section as JSON")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", required=True, help="results/ensembles")
    ap.add_argument("--out", required=True, help="results/tables/ensembles.json")
    args = ap.parse_args(argv)
    setup_logging("meli.ensemble")
    result = build(args.selection, args.runs, args.data_dir, args.features, json.loads(args.config), args.device,
                   args.out_dir, args.out)
    LOG.info("%d candidate ensembles; chosen on validation: %s", len(result["candidates"]), result["chosen"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
