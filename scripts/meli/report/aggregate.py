"""Comparison tables of every finished run, and the per-family selection **on validation only**.

    python -m meli.report.aggregate --out-dir results/tables results/runs/mlp/<combo> ...

Writes ``runs.csv``/``runs.md`` (one row per run, every hyperparameter a column, sorted by
validation bacc within each family), ``effects.csv`` (validation bacc grouped by the value of
each hyperparameter that varies within a family) and ``selection.json`` (the best run of each
family). Test data is never read here: selection must not see it.

Seeds: runs that differ only in ``seed`` are one *seed group* (``seed_group``: the combination id
without its ``seed-N`` part). Every row carries its group's ``n_seeds``, ``val_bacc_mean`` and
``val_bacc_sd`` (sample sd; empty for one seed); selection takes the group with the best mean,
and within it the seed with the best validation bacc as the model to test and serve.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from meli import search
from meli.cli import entry_point
from meli.grid import FAMILIES, KEY_ORDER
from meli.io import atomic_path, dir_lock, setup_logging, write_json
from meli.report import order
from meli.runs import TABLE_KEYS, RunError, RunNotFinished, archive_damaged, check_record, read_metrics

# The run-level columns of runs.csv, after family/combo and the hyperparameters.
METRIC_COLUMNS = (
    "epochs_run",
    "best_epoch",
    "val_bacc",
    "val_loss",
    "final_train_loss",
    "train_time_s",
    "samples_per_s",
    "peak_mem_mb",
    "device",
    "stopped_early",
)
# Columns of whole numbers (a family without them makes pandas store them as floats).
COUNT_COLUMNS = ("epochs_run", "best_epoch", "n_seeds", "rung", "pruned_at_rung", "bracket")
SEED_COLUMNS = ("seed_group", "n_seeds", "val_bacc_mean", "val_bacc_sd")
SELECTION_RULE = ("highest validation balanced accuracy, averaged over seeds (runs that differ only in seed); "
                  "within the chosen group its best seed; ties: lower validation loss, then combination id")


def seed_group(combo: str) -> str:
    """The combination id without its seed: runs sharing it differ only in ``seed``."""
    return re.sub(r"(^|_)seed-[^_]*", "", combo) or "(seed only)"
# A search in stages (meli.search): the rung a record comes from, where a pruned run stopped, and
# (Hyperband) its bracket. Columns only when some run has them (a grid search's tables are
# unchanged, a halving search's have no bracket column). Pruned runs stay in
# the tables but are never selected: they were not trained to the end. Their best-so-far bacc is
# at most that of the runs kept at their rung, which only grows later, so this changes the
# selection only in exact ties.
SEARCH_COLUMNS = ("rung", "pruned_at_rung")


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """metrics.json of one run, checked; ``combo`` is the directory name (the workflow's id)."""
    metrics = search.annotate(run_dir, read_metrics(run_dir, required=TABLE_KEYS))
    return {**metrics, "combo": Path(run_dir).name, "run_dir": str(run_dir)}


def param_value(value: Any) -> Any:
    """A hyperparameter value as one table cell: lists (layer sizes, kernels) as compact JSON."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _param_order(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    return [k for k in KEY_ORDER if k in keys] + sorted(keys - set(KEY_ORDER))


def _family_rank(family: str) -> int:
    return FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)


def runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: family, combo, every hyperparameter, the run metrics, run_dir.

    Sorted by family (mlp, cnn, tfidf, then others), then validation bacc (best first), then
    validation loss, then combo -- so the first row of each family is its selection.
    """
    if not runs:
        raise RunError("no runs given")
    params = _param_order(k for r in runs for k in r["params"])
    rows = []
    searched = any("rung" in r for r in runs)
    bracketed = any(r.get("bracket") is not None for r in runs)
    for r in runs:
        row = {"family": r["family"], "combo": r["combo"]}
        row.update({k: param_value(r["params"].get(k)) for k in params})
        row.update({k: r.get(k) for k in METRIC_COLUMNS})
        row["seed_group"] = seed_group(r["combo"])
        if searched:
            row.update({k: r.get(k) for k in SEARCH_COLUMNS})
            if bracketed:
                row["bracket"] = r.get("bracket")
        row["run_dir"] = r["run_dir"]
        rows.append(row)
    df = pd.DataFrame(rows)
    # Seed statistics over comparable runs: a halving search's pruned runs (stopped early) are
    # not averaged with the same group's final runs.
    df["_pruned"] = pruned(df)
    by_group = df.groupby(["family", "seed_group", "_pruned"])["val_bacc"]
    df["n_seeds"] = by_group.transform("count").astype(int)
    df["val_bacc_mean"] = by_group.transform("mean")
    df["val_bacc_sd"] = by_group.transform("std")  # NaN for one seed
    df = df[[c for c in df.columns if c != "run_dir"] + ["run_dir"]]
    df["_rank"] = df["family"].map(_family_rank)
    df["_loss"] = pd.to_numeric(df["val_loss"], errors="coerce").fillna(math.inf)
    df["_group_loss"] = df.groupby(["family", "seed_group", "_pruned"])["_loss"].transform("mean")
    df = df.sort_values(["_rank", "family", "val_bacc_mean", "_group_loss", "seed_group", "_pruned", "val_bacc",
                         "_loss", "combo"], ascending=[True, True, False, True, True, True, False, True, True])
    df = df.drop(columns=["_rank", "_loss", "_group_loss", "_pruned"]).reset_index(drop=True)
    df.attrs["params"] = params
    return df


def hyperparameters(df: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of a runs table (between combo and the metric columns)."""
    cols = list(df.columns)
    return cols[cols.index("combo") + 1 : cols.index(METRIC_COLUMNS[0])]


def swept(df: pd.DataFrame, family: str) -> list[str]:
    """Hyperparameters taking more than one value among a family's runs."""
    sub = df[df["family"] == family]
    return [p for p in hyperparameters(df) if sub[p].dropna().astype(str).nunique() > 1]


def pruned(df: pd.DataFrame) -> pd.Series:
    """True for the runs a search stopped at a stage (never selected, never ranked or coloured)."""
    if "pruned_at_rung" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["pruned_at_rung"].notna()


def select(df: pd.DataFrame) -> dict[str, Any]:
    """The best run of each family on validation (``df`` comes sorted from :func:`runs_table`):
    the best seed of the seed group with the best mean validation bacc."""
    families = {}
    stopped = pruned(df)
    for family, all_runs in df.groupby("family", sort=False):
        sub = all_runs[~stopped[all_runs.index]]
        if sub.empty:  # a search under way (partial report): none trained to the end yet, nothing to select
            continue
        best = sub.iloc[0]
        group = sub[sub["seed_group"] == best["seed_group"]]
        others = sub[sub["seed_group"] != best["seed_group"]]
        families[family] = {
            "combo": best["combo"],
            "run_dir": best["run_dir"],
            "val_bacc": float(best["val_bacc"]),
            "val_loss": _float_or_none(best["val_loss"]),
            "params": {p: _plain(best[p]) for p in hyperparameters(df) if not _missing(best[p])},
            "n_runs": int(len(sub)),
            "seed_group": best["seed_group"],
            "n_seeds": int(best["n_seeds"]),
            "val_bacc_mean": float(best["val_bacc_mean"]),
            "val_bacc_sd": _float_or_none(best["val_bacc_sd"]),
            "seed_runs": {row["combo"]: float(row["val_bacc"]) for _, row in group.iterrows()},
            "runner_up": None if others.empty else {
                "combo": others.iloc[0]["combo"], "val_bacc": float(others.iloc[0]["val_bacc"]),
                "val_bacc_mean": float(others.iloc[0]["val_bacc_mean"]), "n_seeds": int(others.iloc[0]["n_seeds"])},
            **({"n_pruned": int(len(all_runs) - len(sub))} if len(all_runs) > len(sub) else {}),
            "validation_ties": validation_ties(sub),
        }
    return {"criterion": SELECTION_RULE, "split": "validation", "families": families}


TIE_CANDIDATES = 5  # the selected run against the best run of each of the next 4 combinations (seed groups)
VAL_BOOTSTRAP = 1000


def _val_predictions(run_dir: str) -> np.ndarray | None:
    try:
        return pq.read_table(Path(run_dir) / "val_predictions.parquet", columns=["label", "pred"]).to_pandas() \
            .to_numpy(dtype=np.int64)
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def validation_ties(sub: pd.DataFrame, k: int = TIE_CANDIDATES, n_boot: int = VAL_BOOTSTRAP,
                    seed: int = 0) -> dict[str, Any] | None:
    """Which of a family's next best combinations are statistically tied with the selected run on
    validation: paired bootstrap of the bacc difference on the same validation rows (each run's
    val_predictions.parquet), Holm-corrected over the comparisons. ``sub``: the family's runs
    trained to the end, in selection order. Also a recommendation among the tied runs: the
    cheapest to train (and, with seeds, the most stable), stated as such."""
    from meli.report import evaluate, stats

    best = sub.iloc[0]
    others = sub[sub["seed_group"] != best["seed_group"]].drop_duplicates("seed_group").head(k - 1)
    if others.empty:
        return None
    base = _val_predictions(best["run_dir"])
    rows = [(row, _val_predictions(row["run_dir"])) for _, row in others.iterrows()]
    rows = [(row, v) for row, v in rows if v is not None and base is not None and len(v) == len(base)
            and np.array_equal(v[:, 0], base[:, 0])]
    if not rows:
        return None
    y = base[:, 0]
    seen = y >= 0
    samples = evaluate.bootstrap_baccs(y[seen], [base[seen, 1], *(v[seen, 1] for _, v in rows)], n_boot, seed)
    compared = []
    for j, (row, v) in enumerate(rows, start=1):
        diff = samples[0] - samples[j]
        low, high = evaluate.confidence_interval(diff)
        compared.append({"combo": row["combo"], "val_bacc": float(row["val_bacc"]),
                         "val_bacc_mean": float(row["val_bacc_mean"]), "n_seeds": int(row["n_seeds"]),
                         "train_time_s": _float_or_none(row.get("train_time_s")),
                         "val_bacc_sd": _float_or_none(row.get("val_bacc_sd")),
                         "diff": float(best["val_bacc"] - row["val_bacc"]), "ci_low": low, "ci_high": high,
                         "p": stats.bootstrap_p(diff)})
    for c, p_adj in zip(compared, stats.holm([c["p"] for c in compared])):
        c["p_holm"] = p_adj
        c["tied"] = p_adj is None or p_adj >= stats.ALPHA
    return {"method": f"paired bootstrap ({n_boot} resamples) over the same {int(seen.sum())} validation rows, "
                      f"Holm-corrected over {len(compared)} comparisons",
            "n_rows": int(seen.sum()), "compared": compared,
            "recommendation": _recommend(best, [c for c in compared if c["tied"]])}


def _recommend(best: pd.Series, tied: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Among runs tied with the selected one: a cheaper one (under 2/3 of its training time), else a
    more stable one (smaller sd over seeds); None when the selected run is also the sensible choice."""
    cost = _float_or_none(best.get("train_time_s"))
    cheaper = [c for c in tied if cost and c["train_time_s"] is not None and c["train_time_s"] < 2 / 3 * cost]
    if cheaper:
        c = min(cheaper, key=lambda c: c["train_time_s"])
        return {"combo": c["combo"], "reason": "cheaper", "why": f"statistically tied with the selected run on "
                f"validation and trains in {c['train_time_s'] / cost:.0%} of its time"}
    sd = _float_or_none(best.get("val_bacc_sd"))
    stable = [c for c in tied if sd is not None and c["val_bacc_sd"] is not None and c["n_seeds"] > 1
              and c["val_bacc_sd"] < sd / 2]
    if stable:
        c = min(stable, key=lambda c: c["val_bacc_sd"])
        return {"combo": c["combo"], "reason": "more stable", "why": f"statistically tied with the selected run on "
                f"validation with a seed sd of {c['val_bacc_sd']:.4f} against {sd:.4f}"}
    return None


def statistics(df: pd.DataFrame) -> dict[str, Any]:
    """statistics.json: per family, the expected best validation bacc after n combinations (Dodge et
    al. 2019) and the hyperparameter importance (meli.report.stats)."""
    from meli.report import stats

    out: dict[str, Any] = {"expected_max": {}, "importance": {}}
    final = df[~pruned(df)]
    for family, sub in final.groupby("family", sort=False):
        # one score per combination: a seed group counts once, at its mean
        scores = sub.drop_duplicates("seed_group")["val_bacc_mean"].tolist()
        out["expected_max"][family] = stats.expected_max(scores).to_dict("records")
        imp = stats.importance(sub, [p for p in swept(df, family) if p != "seed"])
        if imp:
            out["importance"][family] = imp
    out["expected_max_method"] = ("expected maximum validation bacc of n combinations drawn with replacement from "
                                  "the family's observed ones (Dodge et al., 2019, 'Show your work'); a seed group "
                                  "counts once, at its mean")
    return out


def effects(df: pd.DataFrame) -> pd.DataFrame:
    """For each family and each swept hyperparameter: validation bacc grouped by its value."""
    rows = []
    df = df[~pruned(df)]  # like with like: pruned runs trained fewer epochs
    for family in df["family"].unique():
        sub = df[df["family"] == family]
        for param in swept(df, family):
            groups = sub.assign(_value=sub[param].astype(str)).groupby("_value", sort=False)["val_bacc"]
            stats = groups.agg(["count", "mean", "std", "min", "max"])
            for value, s in stats.iterrows():
                rows.append({
                    "family": family, "hyperparameter": param, "value": value, "n": int(s["count"]),
                    "mean_val_bacc": s["mean"], "std_val_bacc": s["std"], "min_val_bacc": s["min"],
                    "max_val_bacc": s["max"],
                })
    out = pd.DataFrame(rows, columns=["family", "hyperparameter", "value", "n", "mean_val_bacc", "std_val_bacc",
                                      "min_val_bacc", "max_val_bacc"])
    if out.empty:
        return out
    # Values in their natural order ([16] < [64] < [128]; 3e-05 < 0.001), not as text.
    keys = [(_family_rank(f), f, h, order.value_key(v)) for f, h, v in zip(out["family"], out["hyperparameter"],
                                                                            out["value"])]
    return out.iloc[sorted(range(len(out)), key=keys.__getitem__)].reset_index(drop=True)


def markdown(df: pd.DataFrame, selection: dict[str, Any]) -> str:
    """runs.md: one table per family, the selected run in bold."""
    out = ["# Runs", "", f"Selection: {selection['criterion']} (validation split only).", ""]
    for family, sub in df.groupby("family", sort=False):
        cols = ["combo", *swept(df, family), *[c for c in METRIC_COLUMNS + SEARCH_COLUMNS
                                               if c in sub and sub[c].notna().any()]]
        if (sub["n_seeds"] > 1).any():  # mean ± sd over the seeds of each row's group
            cols.insert(cols.index("val_bacc") + 1, "val_bacc_mean_sd")
            sub = sub.assign(val_bacc_mean_sd=[mean_sd(m, sd, n) for m, sd, n in
                                               zip(sub["val_bacc_mean"], sub["val_bacc_sd"], sub["n_seeds"])])
        out += [f"## {family} ({len(sub)} runs)", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        chosen = selection["families"].get(family, {}).get("combo")
        counts = {c for c in cols if c in COUNT_COLUMNS or c in hyperparameters(df)}
        whole = {c for c in counts if _integral(sub[c])}  # e.g. epochs 5, not 5.0000 (NaN made the column float)
        for _, row in sub.iterrows():
            cells = [_md_cell(row[c], integer=c in whole) for c in cols]
            if row["combo"] == chosen:
                cells = [f"**{c}**" for c in cells]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def mean_sd(mean: float, sd: float | None, n: int) -> str:
    """``0.9351 ± 0.0015 (2 seeds)``; one seed has no sd."""
    if n < 2 or _missing(sd):
        return f"{mean:.4f} (1 seed)"
    return f"{mean:.4f} ± {sd:.4f} ({n} seeds)"


def _integral(column: pd.Series) -> bool:
    values = pd.to_numeric(column.dropna(), errors="coerce")
    return len(values) > 0 and bool(values.notna().all()) and bool((values % 1 == 0).all())


def _md_cell(value: Any, integer: bool = False) -> str:
    if _missing(value):
        return "—"
    if integer and isinstance(value, float):
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value).replace("|", "\\|")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _float_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _plain(value: Any) -> Any:
    """numpy scalars -> Python, compact JSON lists back to lists."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    return value


def aggregate(run_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    runs = [load_run(d) for d in run_dirs]
    df = runs_table(runs)
    selection = select(df)
    with atomic_path(out_dir / "runs.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out_dir / "runs.md") as tmp:
        tmp.write_text(markdown(df, selection))
    with atomic_path(out_dir / "effects.csv") as tmp:
        effects(df).to_csv(tmp, index=False)
    write_json(out_dir / "statistics.json", statistics(df))
    write_json(out_dir / "selection.json", selection)
    return selection


def check_runs(run_dirs: list[str | Path]) -> None:
    """Every run record checked in full (metrics.json against history.csv) before any table is
    written. A damaged final run (results/runs/...) is moved aside into results/archive/damaged/, so
    that its outputs are missing and the next snakemake retrains it (Snakemake's metadata would
    otherwise still call it complete); any other damaged record is named with what to delete."""
    problems = []
    for d in run_dirs:
        try:
            check_record(d)
        except RunNotFinished:
            raise
        except RunError as err:
            d = Path(d)
            if d.parent.parent.name == "runs" and (d / "metrics.json").exists():
                moved = archive_damaged(d, str(err))
                problems.append(f"{err} -- moved {d} to {moved}: the next snakemake retrains it")
            else:
                problems.append(f"{err} -- delete {d.parent if d.parent.name == 'pruned' else d} "
                                "and run snakemake again to redo it")
    if problems:
        raise RunError(f"{len(problems)} damaged run record(s): " + "; ".join(problems))


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True, help="where runs.csv, runs.md, effects.csv, selection.json go")
    ap.add_argument("runs", nargs="+", help="run directories (results/runs/{family}/{combo})")
    args = ap.parse_args(argv)
    log = setup_logging("meli.report.aggregate")
    # meli.sweep writes partial tables under the same lock: a `make report` started before the
    # last run finished can never overwrite these final tables.
    with dir_lock(args.out_dir):
        check_runs(args.runs)
        selection = aggregate(args.runs, args.out_dir)
    log.info("aggregated %d runs into %s", len(args.runs), args.out_dir)
    for family, best in selection["families"].items():
        log.info("selected %s: %s (val bacc %.4f; its seed group %s, %d runs)", family, best["combo"],
                 best["val_bacc"], mean_sd(best["val_bacc_mean"], best["val_bacc_sd"], best["n_seeds"]), best["n_runs"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
