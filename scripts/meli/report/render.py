"""results/report.html: one self-contained page (inline CSS and SVG, no script, no external URL).

    python -m meli.report.render --results results --config '<full config JSON>' \\
        --configfiles config/config.yaml --out results/report.html

Answers "which model and which hyperparameters, how sure are we, and why": dataset, embedding
coverage, comparison tables, learning curves, hyperparameter effects, the selected models' test
scores with confidence intervals, cost per run, and provenance. Optional inputs (benchmarks,
coverage, stats) may be missing; they show as "—".
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import socket
import subprocess
from html import escape
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from meli import models
from meli.cli import entry_point
from meli.io import atomic_path, setup_logging
from meli.report import charts
from meli.report.aggregate import METRIC_COLUMNS, hyperparameters, swept

LOG = logging.getLogger("meli.report.render")
DASH = "—"
TOP_RUNS = 15  # rows of a family's runs table shown before "All N runs"
PACKAGES = ("snakemake", "snakemake-executor-plugin-slurm", "torch", "numpy", "pandas", "pyarrow", "scipy",
            "scikit-learn", "gensim", "mlflow")
SECTIONS = (
    ("summary", "Answer"),
    ("dataset", "Dataset"),
    ("embeddings", "Embedding coverage"),
    ("comparison", "Comparison"),
    ("curves", "Learning curves"),
    ("effects", "Hyperparameter effects"),
    ("test", "Test results"),
    ("cost", "Cost"),
    ("provenance", "Provenance"),
)

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --accent:#d9480f; --bg:#fff; --soft:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--ink); background:var(--bg); }
main { max-width:1180px; margin:0 auto; padding:1.5rem 1.25rem 4rem; }
header h1 { font-size:1.6rem; margin:.2rem 0; }
header p { color:var(--muted); margin:.2rem 0; }
nav { position:sticky; top:0; background:rgba(255,255,255,.96); border-bottom:1px solid var(--line);
      padding:.45rem 1.25rem; z-index:1; font-size:.9rem; overflow-x:auto; white-space:nowrap; }
nav a { color:var(--ink); text-decoration:none; margin-right:1rem; white-space:nowrap; }
nav a:hover { color:var(--accent); }
section { margin-top:2.2rem; }
h2 { font-size:1.3rem; border-bottom:2px solid var(--line); padding-bottom:.25rem; }
h3 { font-size:1.05rem; margin:1.4rem 0 .4rem; }
p.note, .note { color:var(--muted); font-size:.88rem; }
.table-wrap { overflow-x:auto; margin:.5rem 0 1rem; border:1px solid var(--line); border-radius:6px;
              width:fit-content; max-width:100%; }
table { border-collapse:collapse; font-size:.86rem; font-variant-numeric:tabular-nums; }
.pair { display:grid; grid-template-columns:repeat(auto-fit,minmax(440px,1fr)); gap:0 1.2rem; align-items:start; }
.blocks { display:grid; grid-template-columns:repeat(auto-fit,minmax(260px,1fr)); gap:0 1.2rem; align-items:start; }
th, td { padding:.35rem .6rem; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { background:var(--soft); font-weight:600; position:sticky; top:0; }
td.num, th.num { text-align:right; }
td.wrap { white-space:normal; overflow-wrap:anywhere; min-width:20rem; max-width:30rem; }
tr.selected td { background:#fff4e6; font-weight:600; }
tr:last-child td { border-bottom:none; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(250px,1fr)); gap:.8rem; }
.card { border:1px solid var(--line); border-radius:8px; padding:.8rem 1rem; background:var(--soft); }
.card .big { font-size:1.5rem; font-weight:700; }
.card .label { color:var(--muted); font-size:.85rem; }
.charts { display:grid; grid-template-columns:repeat(auto-fill,minmax(320px,1fr)); gap:1rem; align-items:start; }
svg.chart { width:100%; height:auto; background:#fff; }
details { margin:.4rem 0 1rem; }
summary { cursor:pointer; color:var(--accent); }
pre { background:var(--soft); padding:.8rem; border-radius:6px; overflow-x:auto; font-size:.8rem; }
code { font-size:.85em; }
.legend-accent { color:var(--accent); font-weight:600; }
@media (max-width:640px) { main { padding:1rem .6rem 3rem; } body { font-size:14px; } }
@media print { nav { display:none; } }
"""


# ---------------------------------------------------------------------------------- formatting
def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return isinstance(v, float) and math.isnan(v) or v is pd.NA
    except TypeError:
        return False


def fmt(v: Any, digits: int = 4) -> str:
    """A cell: numbers rounded for reading, missing values as a dash."""
    if _missing(v):
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
        return f"{int(v):,}"
    if isinstance(v, float) or hasattr(v, "dtype"):
        v = float(v)
        if abs(v) >= 1000 or v.is_integer():
            return f"{v:,.0f}"
        return f"{v:,.{digits}f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def pct(v: Any) -> str:
    return DASH if _missing(v) else f"{100 * float(v):.1f}%"


def _is_num(v: Any) -> bool:
    if isinstance(v, str):
        return v.endswith("%")  # shares shown as percentages still align as numbers
    return not isinstance(v, (bool, str)) and isinstance(v, (int, float)) or hasattr(v, "dtype")


def _cell_class(value: Any, numeric: bool) -> str:
    if numeric:
        return " class=num"
    # Long ids (combination names, hashes) wrap instead of pushing the numbers off screen.
    return " class=wrap" if isinstance(value, str) and len(value) > 40 else ""


def table(header: list[str], rows: Iterable[list[Any]], selected: Iterable[bool] | None = None,
          raw: bool = False) -> str:
    """An HTML table in a horizontally scrolling wrapper; ``raw`` cells are trusted HTML."""
    rows = list(rows)
    flags = list(selected) if selected is not None else [False] * len(rows)
    numeric = [bool(rows) and all(_is_num(r[i]) or _missing(r[i]) for r in rows) and
               any(_is_num(r[i]) for r in rows) for i in range(len(header))]
    head = "".join(f'<th{" class=num" if numeric[i] else ""}>{escape(h)}</th>' for i, h in enumerate(header))
    body = []
    for row, flag in zip(rows, flags):
        cells = "".join(
            f"<td{_cell_class(c, numeric[i])}>{c if raw and isinstance(c, str) else escape(fmt(c))}</td>"
            for i, c in enumerate(row)
        )
        body.append(f'<tr{" class=selected" if flag else ""}>{cells}</tr>')
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def kv_table(items: dict[str, Any]) -> str:
    return table(["", "value"], [[k, _scalar(v, k)] for k, v in items.items()])


SHARE_SUFFIXES = ("_share", "coverage", "_fraction")


def _scalar(v: Any, key: str = "") -> Any:
    """A JSON value as a cell: shares as percentages, nested values as compact JSON."""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    if str(key).endswith(SHARE_SUFFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool):
        return pct(v)
    return v


COLUMN_LABELS = {
    "epochs_run": "epochs", "best_epoch": "best epoch", "val_bacc": "val bacc", "val_loss": "val loss",
    "final_train_loss": "final train loss", "train_time_s": "train time (s)", "samples_per_s": "samples/s",
    "peak_mem_mb": "peak memory (MB)", "stopped_early": "stopped early",
}


def fmt_param(v: Any) -> str:
    """A hyperparameter value as written in a config (0.3, 64, 10, true): no padding digits."""
    if _missing(v):
        return DASH
    if isinstance(v, float) or hasattr(v, "dtype"):
        return format(float(v), "g")
    return str(v)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def family_name(family: str) -> str:
    return models.display_name(family)


# ------------------------------------------------------------------------------------- inputs
def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def read_benchmark(path: Path) -> dict[str, float] | None:
    """First row of a Snakemake benchmark TSV (s, max_rss in MB, cpu_time, ...)."""
    try:
        df = pd.read_csv(path, sep="\t")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    if df.empty:
        return None
    row = df.iloc[0]
    return {k: pd.to_numeric(row.get(k), errors="coerce") for k in ("s", "max_rss", "cpu_time", "mean_load")}


def git_info(cwd: Path) -> dict[str, str]:
    """Commit and dirty state of the workflow checkout; dashes outside git (a copied workflow)."""
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if not commit:
        return {"commit": DASH, "describe": "not a git checkout", "dirty": DASH}
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "describe": run("describe", "--always", "--dirty") or DASH,
            "dirty": DASH if status is None else ("yes: uncommitted changes" if status else "no")}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = DASH
    return out


class Results:
    """Everything the report shows, read from ``results/`` (tolerant of optional files)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        tables = self.root / "tables"
        runs_csv = tables / "runs.csv"
        if not runs_csv.exists():
            raise FileNotFoundError(f"{runs_csv} missing: run meli.report.aggregate first")
        self.runs = pd.read_csv(runs_csv)
        effects_csv = tables / "effects.csv"
        self.effects = pd.read_csv(effects_csv) if effects_csv.exists() and effects_csv.stat().st_size else None
        self.selection = read_json_or_none(tables / "selection.json") or {"families": {}}
        self.test = pd.read_csv(tables / "test.csv") if (tables / "test.csv").exists() else None
        self.details = (read_json_or_none(tables / "test_details.json") or {}).get("families", {})
        self.summary = read_json_or_none(self.root / "data" / "summary.json") or {}
        self.stats = read_json_or_none(self.root / "features" / "stats.json") or {}
        self.coverage = [c for p in sorted((self.root / "embeddings").glob("*/coverage.json"))
                         if (c := read_json_or_none(p)) is not None]
        self.histories = {d: self._history(d) for d in self.runs["run_dir"]}
        self.benchmarks = {d: read_benchmark(self._benchmark_path(d)) for d in self.runs["run_dir"]}
        self.stage_benchmarks = {
            str(p.relative_to(self.root / "benchmarks").with_suffix("")): b
            for p in sorted((self.root / "benchmarks").glob("**/*.tsv"))
            if not str(p.relative_to(self.root / "benchmarks")).startswith("train/") and (b := read_benchmark(p))
        }

    def _path(self, run_dir: str) -> Path:
        """Run dirs are recorded relative to the workflow root (the parent of results/)."""
        p = Path(run_dir)
        return p if p.is_absolute() or p.exists() else self.root.parent / p

    def _history(self, run_dir: str) -> pd.DataFrame | None:
        path = self._path(run_dir) / "history.csv"
        return pd.read_csv(path) if path.exists() else None

    def _benchmark_path(self, run_dir: str) -> Path:
        family, combo = Path(run_dir).parts[-2:]
        return self.root / "benchmarks" / "train" / family / f"{combo}.tsv"

    def selected(self, family: str) -> str | None:
        return self.selection.get("families", {}).get(family, {}).get("combo")

    def families(self) -> list[str]:
        return list(dict.fromkeys(self.runs["family"]))


# ------------------------------------------------------------------------------------ sections
def section_summary(r: Results) -> str:
    cards = []
    families = r.selection.get("families", {})
    test = r.test.set_index("family") if r.test is not None else None
    for family, chosen in families.items():
        t = test.loc[family] if test is not None and family in test.index else None
        ci = (f"95% CI [{fmt(t['bacc_ci_low'])}, {fmt(t['bacc_ci_high'])}]" if t is not None else "not evaluated")
        cards.append(
            f'<div class="card"><div class="label">{escape(family_name(family))} · best of '
            f'{escape(plural(chosen["n_runs"], "run")) if "n_runs" in chosen else DASH} on validation</div>'
            f'<div class="big">{escape(fmt(t["test_bacc"]) if t is not None else DASH)}</div>'
            f'<div class="label">test balanced accuracy, {escape(ci)}</div>'
            f'<div class="label">validation {escape(fmt(chosen.get("val_bacc")))}</div>'
            f'<div><code>{escape(chosen.get("combo", DASH))}</code></div></div>'
        )
    best = max(families.items(), key=lambda kv: (kv[1].get("val_bacc") or -1), default=None)
    lead = (f"<p>Best on validation overall: <strong>{escape(family_name(best[0]))}</strong> "
            f"(<code>{escape(best[1]['combo'])}</code>, validation balanced accuracy {fmt(best[1]['val_bacc'])}).</p>"
            if best else "<p>No run selected.</p>")
    return (lead + f'<div class="cards">{"".join(cards)}</div>'
            f'<p class="note">Selection: {escape(r.selection.get("criterion", "validation balanced accuracy"))}. '
            "Test scores are computed once, for the selected run of each family only.</p>")


def _split_table(per_split: dict[str, Any], value_name: str) -> str:
    """``{split: number}`` or ``{split: {key: number}}`` as one table, splits as rows."""
    if not isinstance(per_split, dict) or not per_split:
        return f"<p>{DASH}</p>"
    if all(isinstance(v, dict) for v in per_split.values()):
        keys = list(dict.fromkeys(
            k for v in per_split.values() for k, x in v.items() if not isinstance(x, (dict, list))))
        return table(["split", *keys], [[s, *(_scalar(v.get(k), k) for k in keys)] for s, v in per_split.items()])
    return table(["split", value_name], [[k, _scalar(v, value_name)] for k, v in per_split.items()])


def section_dataset(r: Results) -> str:
    s = r.summary
    if not s:
        return f"<p>{DASH} (results/data/summary.json missing)</p>"
    src = s.get("source") if isinstance(s.get("source"), dict) else {}
    blocks = [("Rows per split", _split_table(s.get("rows"), "rows"))]
    cats = s.get("categories")
    if isinstance(cats, dict):
        scalars = {k: v for k, v in cats.items() if not isinstance(v, dict)}
        nested = "".join(_split_table(v, f"categories ({k})") for k, v in cats.items() if isinstance(v, dict))
        blocks.append(("Categories", (kv_table(scalars) if scalars else "") + nested))
    elif cats is not None:
        blocks.append(("Categories", f"<p>{escape(fmt(cats))}</p>"))
    if s.get("label_quality"):
        blocks.append(("Label quality", _split_table(s["label_quality"], "rows")))
    if s.get("token_length_quantiles"):
        blocks.append(("Title length (tokens after cleaning)", _split_table(s["token_length_quantiles"], "tokens")))
    dropped = s.get("dropped")
    blocks.append(("Dropped rows", kv_table(dropped) if isinstance(dropped, dict) and dropped else
                   f"<p>{escape(fmt(dropped)) if dropped not in (None, {}) else 'none'}</p>"))
    if isinstance(s.get("rare_categories"), dict):
        blocks.append(("Rare categories", kv_table(s["rare_categories"])))
    # Whatever else the data stage records, shown as-is (the stage may add keys over time).
    shown = {"source", "rows", "categories", "label_quality", "token_length_quantiles", "dropped", "rare_categories",
             "preprocess"}
    other = {k: v for k, v in s.items() if k not in shown and not isinstance(v, dict)}
    for key, value in s.items():
        if key not in shown and isinstance(value, dict) and value:
            nested = all(isinstance(v, dict) for v in value.values())
            blocks.append((key.replace("_", " ").capitalize(), _split_table(value, key) if nested else kv_table(value)))
    if other:
        blocks.append(("Reading", kv_table(other)))
    if isinstance(s.get("preprocess"), dict):
        blocks.append(("Cleaning (also applied to new titles by predict)", kv_table(s["preprocess"])))
    out = [kv_table({f"source {k}": v for k, v in src.items()}) if src else "",
           '<div class="blocks">' + "".join(f"<div><h3>{escape(t)}</h3>{b}</div>" for t, b in blocks) + "</div>"]
    if r.stats:
        out.append("<h3>Token ids (vocabulary from train only)</h3>" + _stats_table(r.stats))
    return "\n".join(out)


def _stats_table(stats: dict[str, Any]) -> str:
    per_split = stats.get("splits") if isinstance(stats.get("splits"), dict) else {
        k: v for k, v in stats.items() if isinstance(v, dict)}
    rest = {k: v for k, v in stats.items() if not isinstance(v, (dict, list))}
    return (_split_table(per_split, "value") if per_split else "") + (kv_table(rest) if rest else "")


def section_embeddings(r: Results) -> str:
    if not r.coverage:
        return f"<p>{DASH} (no results/embeddings/*/coverage.json)</p>"
    keys = list(dict.fromkeys(k for c in r.coverage for k, v in c.items() if not isinstance(v, (dict, list))))
    missing = "".join(
        f"<li><code>{escape(str(c.get('name')))}</code>: "
        + escape(", ".join(f"{w} ({n:,})" for w, n in c["most_frequent_missing"][:12]))
        + "</li>" for c in r.coverage if c.get("most_frequent_missing"))
    return (table(keys, [[_scalar(c.get(k), k) for k in keys] for c in r.coverage]) +
            (f'<p class="note">Most frequent vocabulary words without a vector:</p><ul class="note">{missing}</ul>'
             if missing else "") +
            '<p class="note">Vocabulary coverage: share of vocabulary words with a vector; token coverage: share '
            "of train tokens whose word has a vector.</p>")


def _family_runs(r: Results, family: str) -> pd.DataFrame:
    return r.runs[r.runs["family"] == family]


def section_comparison(r: Results) -> str:
    out = []
    rows, flags = [], []
    for family in r.families():
        sub = _family_runs(r, family)
        b = sub["val_bacc"]
        rows.append([family_name(family), len(sub), b.max(), b.median(), b.min(), r.selected(family) or DASH])
        flags.append(False)
    out.append("<h3>Per family</h3>" + table(
        ["family", "runs", "best val bacc", "median", "worst", "selected (best on validation)"], rows, flags))
    params = hyperparameters(r.runs)
    for family in r.families():
        sub = _family_runs(r, family)
        varied = swept(r.runs, family)
        fixed = {p: sub[p].iloc[0] for p in params if p not in varied and sub[p].notna().any()}
        metric_cols = [c for c in METRIC_COLUMNS if sub[c].notna().any()]
        header = ["#", "combination", *varied, *(COLUMN_LABELS.get(c, c) for c in metric_cols)]
        body = [[i, row["combo"], *(fmt_param(row[p]) for p in varied), *(row[c] for c in metric_cols)]
                for i, (_, row) in enumerate(sub.iterrows(), start=1)]
        sel = [row["combo"] == r.selected(family) for _, row in sub.iterrows()]
        fixed_txt = ", ".join(f"{k} = {fmt_param(v)}" for k, v in fixed.items()) or DASH
        top = TOP_RUNS if len(body) > TOP_RUNS + 10 else len(body)
        listing = table(header, body[:top], sel[:top])
        if top < len(body):
            listing += (f"<details><summary>All {len(body)} {escape(family_name(family))} runs</summary>"
                        f"{table(header, body, sel)}</details>")
        out.append(f"<h3>{escape(family_name(family))}: {plural(len(sub), 'run')}, by validation balanced accuracy</h3>"
                   f'<p class="note">Same in every run: {escape(fixed_txt)}'
                   f'{f"; the best {top} shown" if top < len(body) else ""}</p>' + listing)
    return "\n".join(out)


def section_curves(r: Results) -> str:
    out = []
    for family in r.families():
        sub = _family_runs(r, family)
        histories = [(row["combo"], r.histories.get(row["run_dir"])) for _, row in sub.iterrows()]
        histories = [(c, h) for c, h in histories if h is not None and not h.empty]
        if not histories:
            out.append(f"<h3>{escape(family_name(family))}</h3><p>{DASH} (no history.csv)</p>")
            continue
        if max(len(h) for _, h in histories) < 2:
            out.append(f"<h3>{escape(family_name(family))}</h3><p class=note>Trained in one pass (no epochs): "
                       "see the comparison table.</p>")
            continue
        best = r.selected(family)
        charts_html = []
        for col, title in (("val_bacc", "validation balanced accuracy"), ("train_loss", "train loss"),
                           ("val_loss", "validation loss")):
            series = [charts.Series(c, h["epoch"], h[col], highlight=(c == best)) for c, h in histories if col in h]
            charts_html.append(charts.line_chart(series, f"{family_name(family)}: {title}", "epoch", title))
        out.append(f"<h3>{escape(family_name(family))}: {plural(len(histories), 'run')}</h3>"
                   f'<div class="charts">{"".join(charts_html)}</div>'
                   f'<p class="note"><span class="legend-accent">Orange</span>: the selected run '
                   f"(<code>{escape(best or DASH)}</code>); grey: every other run (hover a line for its id).</p>")
    return "\n".join(out)


def section_effects(r: Results) -> str:
    if r.effects is None or r.effects.empty:
        return "<p>No hyperparameter takes more than one value within a family: nothing to compare.</p>"
    out = ['<p class="note">For each hyperparameter that varies within a family: validation balanced accuracy '
           "of every run (points) grouped by its value, mean as a bar; the selected run in orange. "
           "Other hyperparameters vary too, so a difference of means is a hint, not a controlled effect.</p>"]
    for family, fam_eff in r.effects.groupby("family", sort=False):
        sub = _family_runs(r, family)
        best = r.selected(family)
        chart_html = []
        for param, eff in fam_eff.groupby("hyperparameter", sort=False):
            groups = []
            for value in eff["value"].astype(str):
                runs = sub[sub[param].astype(str) == value]
                groups.append((fmt_param(_num_or_str(value)), list(zip(runs["combo"], runs["val_bacc"]))))
            chart_html.append(charts.strip_chart(groups, f"{family_name(family)}: {param}", param,
                                                 "validation bacc", best=best))
        tbl = table(["hyperparameter", "value", "runs", "mean", "std", "min", "max"],
                    [[row["hyperparameter"], fmt_param(_num_or_str(row["value"])), row["n"], row["mean_val_bacc"],
                      row["std_val_bacc"],
                      row["min_val_bacc"], row["max_val_bacc"]] for _, row in fam_eff.iterrows()])
        out.append(f"<h3>{escape(family_name(family))}</h3><div class=charts>{''.join(chart_html)}</div>"
                   f"<details><summary>Table of {escape(family_name(family))} effects</summary>{tbl}</details>")
    return "\n".join(out)


def _num_or_str(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def section_test(r: Results) -> str:
    if r.test is None or r.test.empty:
        return f"<p>{DASH} (results/tables/test.csv missing)</p>"
    t = r.test
    quality_cols = [c for c in t.columns if c.startswith("bacc_") and c not in ("bacc_ci_low", "bacc_ci_high")]
    rows = [[family_name(row["family"]), row["combo"], row.get("val_bacc"), row["test_bacc"],
             f"[{fmt(row['bacc_ci_low'])}, {fmt(row['bacc_ci_high'])}]", row.get("accuracy"), row.get("macro_f1"),
             *(row[c] for c in quality_cols), row.get("n_scored"), row.get("n_unseen_category")]
            for _, row in t.iterrows()]
    header = ["family", "combination", "val bacc", "test bacc", "95% CI", "accuracy", "macro F1",
              *(f"bacc {c[5:]}" for c in quality_cols), "test rows scored", "unseen-category rows (excluded)"]
    chart = charts.interval_chart(
        [(family_name(row["family"]), row["test_bacc"], row["bacc_ci_low"], row["bacc_ci_high"], row.get("val_bacc"))
         for _, row in t.iterrows()], "Test balanced accuracy, 95% bootstrap CI (◇ validation)", "balanced accuracy")
    boot = next(iter(r.details.values()), {}).get("bootstrap", {})
    out = [table(header, rows), f'<div class="charts">{chart}</div>',
           f'<p class="note">CI: percentile bootstrap over test rows ({fmt(boot.get("resamples"))} resamples). '
           "Test rows whose category never occurs in train cannot be predicted by any model; they are counted "
           "and excluded from every score.</p>"]
    for family, d in r.details.items():
        worst = table(["category", "test rows", "recall", "precision", "F1"],
                      [[c.get("category"), c.get("support"), c.get("recall"), c.get("precision"), c.get("f1")]
                       for c in d.get("worst_categories", [])])
        conf = table(["true category", "predicted as", "rows", "share of the true category"],
                     [[c.get("true"), c.get("predicted"), c.get("count"), pct(c.get("share_of_true"))]
                      for c in d.get("confusions", [])])
        full = table(["category", "test rows", "recall", "precision", "F1"],
                     [[c.get("category"), c.get("support"), c.get("recall"), c.get("precision"), c.get("f1")]
                      for c in d.get("per_category", [])])
        lq = d.get("label_quality") or {}
        lq_html = table(["label quality", "rows", "bacc", "accuracy"],
                        [[q, v.get("n"), v.get("bacc"), v.get("accuracy")] for q, v in lq.items()]) if lq else ""
        out.append(f"<h3>{escape(family_name(family))} (<code>{escape(d.get('combo', DASH))}</code>)</h3>"
                   f"{lq_html}<div class=pair><div><h4>Worst categories by recall</h4>{worst}</div>"
                   f"<div><h4>Most confused pairs</h4>{conf}</div></div>"
                   f"<details><summary>Recall of all {len(d.get('per_category', []))} categories</summary>"
                   f"{full}</details>")
    return "\n".join(out)


def section_cost(r: Results) -> str:
    rows = []
    for family in r.families():
        sub = _family_runs(r, family)
        rows.append([family_name(family), len(sub), sub["train_time_s"].sum(min_count=1), sub["train_time_s"].median(),
                     sub["samples_per_s"].median(), sub["peak_mem_mb"].max()])
    out = [table(["family", "runs", "total train time (s)", "median per run (s)", "median samples/s",
                  "max peak memory (MB)"], rows)]
    per_run = []
    for _, row in r.runs.iterrows():
        b = r.benchmarks.get(row["run_dir"]) or {}
        per_run.append([family_name(row["family"]), row["combo"], row.get("device"), row.get("epochs_run"),
                        row.get("train_time_s"), row.get("samples_per_s"), row.get("peak_mem_mb"), b.get("s"),
                        b.get("max_rss"), b.get("cpu_time")])
    out.append(f"<details{' open' if len(per_run) <= 30 else ''}><summary>Every run ({len(per_run)})</summary>" + table(
        ["family", "combination", "device", "epochs", "train time (s)", "samples/s", "peak memory (MB)",
         "job wall time (s)", "job max RSS (MB)", "job CPU time (s)"], per_run) + "</details>")
    out.append('<p class="note">Train time, samples/s and peak memory: measured by the training script; '
               "job columns: Snakemake's benchmark of the whole job (loading included).</p>")
    if r.stage_benchmarks:
        out.append("<h3>Other workflow jobs</h3>" + table(
            ["job", "wall time (s)", "max RSS (MB)", "CPU time (s)"],
            [[k, b.get("s"), b.get("max_rss"), b.get("cpu_time")] for k, b in r.stage_benchmarks.items()]))
    return "\n".join(out)


def section_provenance(r: Results, config: dict[str, Any], configfiles: list[str], workdir: Path) -> str:
    git = git_info(workdir)
    src = r.summary.get("source") if isinstance(r.summary.get("source"), dict) else {}
    facts = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "SLURM cluster": os.environ.get("SLURM_CLUSTER_NAME") or DASH,
        "SLURM job": os.environ.get("SLURM_JOB_ID") or DASH,
        "platform": platform.platform(),
        "git commit": git["commit"],
        "git describe": git["describe"],
        "uncommitted changes": git["dirty"],
        "config files": ", ".join(configfiles) or DASH,
        "dataset": (config.get("dataset") or {}).get("name", DASH),
        "input": src.get("path", DASH),
        "input sha256": src.get("sha256", DASH),
    }
    for c in r.coverage:
        if c.get("sha256"):
            facts[f"embedding {c.get('name', '?')} sha256"] = c["sha256"]
    out = [kv_table(facts), "<h3>Package versions</h3>",
           table(["package", "version"], list(package_versions().items()))]
    for f in configfiles:
        path = workdir / f if not Path(f).is_absolute() else Path(f)
        text = path.read_text() if path.exists() else f"{DASH} ({f} not found)"
        out.append(f"<details><summary>Config file <code>{escape(f)}</code></summary>"
                   f"<pre>{escape(text)}</pre></details>")
    out.append("<details><summary>Effective configuration (after command-line overrides and schema defaults)"
               f"</summary><pre>{escape(json.dumps(config, indent=2, sort_keys=True))}</pre></details>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------- page
def render(results: str | Path, config: dict[str, Any], configfiles: list[str], workdir: str | Path = ".") -> str:
    r = Results(results)
    workdir = Path(workdir)
    name = (config.get("dataset") or {}).get("name") or "MeLi"
    bodies = {
        "summary": section_summary(r),
        "dataset": section_dataset(r),
        "embeddings": section_embeddings(r),
        "comparison": section_comparison(r),
        "curves": section_curves(r),
        "effects": section_effects(r),
        "test": section_test(r),
        "cost": section_cost(r),
        "provenance": section_provenance(r, config, configfiles, workdir),
    }
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
    sections = "\n".join(f'<section id="{sid}"><h2>{escape(title)}</h2>\n{bodies[sid]}\n</section>'
                         for sid, title in SECTIONS)
    n_runs = len(r.runs)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(name)}: MLP vs CNN vs TF-IDF product-title classification</title>
<style>{CSS}</style>
</head>
<body>
<nav>{nav}</nav>
<main>
<header><h1>{escape(name)}: which model, which hyperparameters, how sure</h1>
<p>{plural(n_runs, "run")} in {plural(len(r.families()), "family", "families")} · metric: balanced accuracy · selection on validation only</p></header>
{sections}
</main>
</body>
</html>
"""


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="the results/ directory")
    ap.add_argument("--config", default="{}", help="the full effective config as JSON")
    ap.add_argument("--configfiles", nargs="*", default=[], help="config files given to snakemake")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    setup_logging("meli.report.render")
    html = render(args.results, json.loads(args.config), args.configfiles, workdir=Path.cwd())
    with atomic_path(args.out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    LOG.info("wrote %s (%.0f kB)", args.out, len(html.encode()) / 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
