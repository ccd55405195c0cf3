"""The report's sections: what each reads from results/ (Results) and the HTML it returns.

One ``section_<id>(r: Results) -> str`` per entry of render.SECTIONS; a new section is a
function here plus its line in SECTIONS.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import shlex
import socket
from html import escape
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from meli.io import git_output
from meli.redact import redact_config, redact_config_text
from meli.report import charts, restarts
from meli import search
from meli.report.aggregate import hyperparameters, pruned, swept
from meli.report.html import (
    COLUMN_LABELS,
    DASH,
    Keyed,
    family_name,
    fmt,
    fmt_param,
    keyed,
    kv_list,
    kv_table,
    pct,
    plural,
    scalar,
    signed,
    table,
)

LOG = logging.getLogger("meli.report.sections")
PACKAGES = ("snakemake", "snakemake-executor-plugin-slurm", "torch", "numpy", "pandas", "pyarrow", "scipy",
            "scikit-learn", "gensim", "mlflow")


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


def git_info(cwd: Path, configfiles: Iterable[str] = ()) -> dict[str, str]:
    """Commit and dirty state of the workflow checkout; dashes outside git (a copied workflow).

    A config file that git does not track (or ignores) is an uncommitted change too: the commit
    alone cannot reproduce this sweep."""
    commit = git_output(cwd, "rev-parse", "HEAD")
    if not commit:
        return {"commit": DASH, "describe": "not a git checkout", "dirty": DASH}
    status = git_output(cwd, "status", "--porcelain", "--untracked-files=no")
    untracked = [f for f in configfiles if (cwd / f).exists() and git_output(cwd, "ls-files", "--error-unmatch", "--",
                                                                              f) is None]
    if status is None:
        dirty = DASH
    elif untracked:
        dirty = "yes: config file not committed: " + ", ".join(untracked) + (" (and tracked files changed)"
                                                                              if status else "")
    else:
        dirty = "yes: uncommitted changes" if status else "no"
    return {"commit": commit, "describe": git_output(cwd, "describe", "--always", "--dirty") or DASH, "dirty": dirty}


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
        details = read_json_or_none(tables / "test_details.json") or {}
        self.details = details.get("families", {})
        self.comparisons = details.get("comparisons", [])
        self.correction = details.get("correction")
        self.recommendation = details.get("recommendation")
        self.statistics = read_json_or_none(tables / "statistics.json") or {}
        self.ensembles = read_json_or_none(tables / "ensembles.json") or {}
        self.summary = read_json_or_none(self.root / "data" / "summary.json") or {}
        self.stats = read_json_or_none(self.root / "features" / "stats.json") or {}
        # Only what the current runs use: results/ may still hold a removed embedding's files or
        # another dataset's download (leftovers of an earlier config), never shown as current.
        used = set(self.runs["embedding"].dropna().astype(str)) if "embedding" in self.runs else None
        self.coverage = [c for p in sorted((self.root / "embeddings").glob("*/coverage.json"))
                         if (used is None or p.parent.name in used) and (c := read_json_or_none(p)) is not None]
        self.histories = {d: self._history(d) for d in self.runs["run_dir"]}
        self.benchmarks = {d: read_benchmark(self._benchmark_path(d)) for d in self.runs["run_dir"]}
        self.stage_benchmarks = {
            key: b for p in sorted((self.root / "benchmarks").glob("**/*.tsv"))
            if self._current_stage(key := str(p.relative_to(self.root / "benchmarks").with_suffix("")), used)
            and (b := read_benchmark(p))
        }

    def _current_stage(self, key: str, used: set[str] | None) -> bool:
        """Whether a stage benchmark belongs to the current config (not train/: those are per run)."""
        parts = key.split("/")
        source = str((self.summary.get("source") or {}).get("path", "")) if isinstance(self.summary.get("source"),
                                                                                      dict) else ""
        if parts[0] in ("train", "pack"):  # per run; packed jobs: meli.report.packs
            return False
        if parts[0] in ("embedding_matrix", "download_vectors") and len(parts) > 1:
            return used is None or parts[1] in used
        if parts[0] == "download_dataset" and len(parts) > 1:
            return not source or Path(source).name == parts[1]
        if parts[0] == "demo_dataset":
            return not source or Path(source).name == "demo.csv.gz"
        return True

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
PREDICT_EXAMPLE = "Funda silicona para iPhone 13 pro negra"


def predict_command(run_dir: str) -> str:
    """The ready-to-run command that classifies new titles with one run's model."""
    return f"meli-predict --run {shlex.quote(str(run_dir))} --top-k 3 {shlex.quote(PREDICT_EXAMPLE)}"


def comparison_sentence(c: dict[str, Any]) -> str:
    """One paired test comparison in words: better, worse or not distinguishable, and by how much."""
    a, b = escape(family_name(c["a"])), escape(family_name(c["b"]))
    head = {"better": f"<strong>{a} is better than {b}</strong> on test",
            "worse": f"<strong>{a} is worse than {b}</strong> on test"}.get(
        c.get("verdict"), f"<strong>{a} and {b} are not distinguishable</strong> on test")
    level = round(100 * (c.get("level") or 0.95))
    holm = (f"; p {c['p_holm']:.3g} after Holm's correction" if c.get("p_holm") is not None
            and c.get("p_holm") != c.get("p") else "")
    return (f"{head}: {signed(c.get('diff'))} balanced accuracy ({level}% CI {signed(c.get('ci_low'))} to "
            f"{signed(c.get('ci_high'))}; paired bootstrap over the same {fmt(c.get('n_rows'))} test rows{holm}).")


def ties_note(family: str, chosen: dict[str, Any]) -> str:
    """Which of the family's next best combinations are statistically tied with the selected run
    on validation, the runner-up, and what that means for the choice (HTML)."""
    ties = chosen.get("validation_ties") or {}
    compared = ties.get("compared") or []
    runner = chosen.get("runner_up")
    if not compared:
        return (f"Runner-up: <code>{escape(runner['combo'])}</code> (validation {fmt(runner['val_bacc'], 4)})."
                if runner else "")
    tied = [c for c in compared if c["tied"]]
    first = compared[0]
    out = [f"Runner-up: <code>{escape(first['combo'])}</code>, validation {fmt(first['val_bacc'], 4)} "
           f"({signed(first['diff'])} behind, 95% CI {signed(first['ci_low'])} to {signed(first['ci_high'])})."]
    if tied:
        out.append(f"<strong>{plural(len(tied), 'other combination')} statistically tied with the selected run on "
                   f"validation</strong> ({escape(ties['method'])}): the ranking among them is noise, and any of them "
                   "is as good a choice on this evidence.")
    else:
        out.append(f"The selected run is ahead of the next {plural(len(compared), 'combination')} beyond noise "
                   f"({escape(ties['method'])}).")
    rec = ties.get("recommendation")
    if rec:
        out.append(f"Recommended instead ({escape(rec['reason'])}): <code>{escape(rec['combo'])}</code>, "
                   f"{escape(rec['why'])}.")
    return " ".join(out)


def drop_note(family: str, d: dict[str, Any] | None) -> str:
    drop = (d or {}).get("val_test_drop")
    if not drop:
        return ""
    return (f'<p class="warn"><strong>{escape(family_name(family))}: validation {fmt(drop["val_bacc"], 4)} → test '
            f'{fmt(drop["test_bacc"], 4)}</strong> ({signed(-drop["drop"])}, beyond the test interval). The best of '
            "many runs on validation is partly lucky (the winner's curse), or validation and test differ: trust the "
            "test figure, not the validation one.</p>")


def _seed_note(chosen: dict) -> str:
    """', mean 0.9351 ± 0.0015 over 2 seeds' when the selected combination was repeated over seeds."""
    n = chosen.get("n_seeds") or 1
    if n < 2 or chosen.get("val_bacc_sd") is None:
        return ""
    return (f"; mean {fmt(chosen['val_bacc_mean'], 4)} ± {fmt(chosen['val_bacc_sd'], 4)} over {n} seeds "
            "(selected on the mean)")


def section_summary(r: Results) -> str:
    cards = []
    families = r.selection.get("families", {})
    test = r.test.set_index("family") if r.test is not None else None
    for family, chosen in families.items():
        t = test.loc[family] if test is not None and family in test.index else None
        ci = (f"95% CI [{fmt(t['bacc_ci_low'], 4)}, {fmt(t['bacc_ci_high'], 4)}]" if t is not None
              else "not evaluated")
        run_dir = chosen.get("run_dir") or f"results/runs/{family}/{chosen.get('combo', '')}"
        pool = plural(chosen["n_runs"], "run") if "n_runs" in chosen else DASH
        if chosen.get("n_pruned"):  # a halving search: the candidates are the runs trained to the end
            pool = f"{pool} trained to the end ({chosen['n_pruned']} pruned)"
        cards.append(
            f'<div class="card"><div class="label">{escape(family_name(family))} · best of '
            f'{escape(pool)} on validation</div>'
            f'<div class="big">{escape(fmt(t["test_bacc"], 4) if t is not None else DASH)}</div>'
            f'<div class="label">test balanced accuracy, {escape(ci)} · validation '
            f'{escape(fmt(chosen.get("val_bacc"), 4))}{escape(_seed_note(chosen))}</div>'
            + drop_note(family, r.details.get(family))
            + (f'<div class="label">{note}</div>' if (note := ties_note(family, chosen)) else "")
            + kv_list(chosen.get("params") or {}) +
            f'<div class="label">Classify new titles with it:</div><pre class="cmd">'
            f"{escape(predict_command(run_dir))}</pre></div>"
        )
    cards += _ensemble_card(r, test)
    best = max(families.items(), key=lambda kv: (kv[1].get("val_bacc") or -1), default=None)
    out = [f"<p>Best on validation overall: <strong>{escape(family_name(best[0]))}</strong> "
           f"(validation balanced accuracy {fmt(best[1]['val_bacc'], 4)}).</p>" if best else "<p>No run selected.</p>"]
    if r.comparisons:
        head, *rest = r.comparisons
        out.append(f'<p class="verdict">{comparison_sentence(head)}</p>')
        if rest:
            out.append('<ul class="note">' + "".join(f"<li>{comparison_sentence(c)}</li>" for c in rest) + "</ul>")
        if r.correction:
            out.append(f'<p class="note">{len(r.comparisons)} pairs are {len(r.comparisons)} tests: verdicts are '
                       f"corrected for multiple comparisons ({escape(r.correction)}).</p>")
        if r.recommendation:
            out.append(f'<p class="verdict">Recommendation: <strong>{escape(family_name(r.recommendation["family"]))}'
                       f'</strong>, chosen because it is the {escape(r.recommendation["reason"])}: '
                       f'{escape(r.recommendation["why"])}.</p>')
    elif r.test is not None:
        out.append('<p class="note">No paired comparison in test_details.json (rerun evaluate_test).</p>')
    out.append(f'<div class="cards">{"".join(cards)}</div>')
    out.append(f'<p class="note">Selection: {escape(r.selection.get("criterion", "validation balanced accuracy"))}. '
               "Test scores are computed once, for the selected run of each family only; a difference is called "
               "better or worse only when its 95% interval excludes zero.</p>")
    return "\n".join(out)


def _ensemble_card(r: Results, test: pd.DataFrame | None) -> list[str]:
    """The ensemble chosen on validation (meli.ensemble), as a card beside the families' runs."""
    chosen = r.ensembles.get("chosen")
    if not chosen:
        return []
    c = r.ensembles["candidates"][chosen]
    t = test.loc["ensemble"] if test is not None and "ensemble" in test.index else None
    ci = (f"95% CI [{fmt(t['bacc_ci_low'], 4)}, {fmt(t['bacc_ci_high'], 4)}]" if t is not None else "not evaluated")
    vs = next((x for x in r.comparisons if x["a"] == "ensemble"), None)
    others = ", ".join(f"{n} {fmt(v['val_bacc'], 4)}" for n, v in r.ensembles["candidates"].items() if n != chosen)
    members = "".join(f"<li><code>{escape(m['run_dir'])}</code> (val {fmt(m['val_bacc'], 4)}, "
                      f"temperature {m['temperature']:.3g}, weight {m['weight']:.3g})</li>" for m in c["members"])
    how = (f"Weighted mean of {len(c['members'])} runs' probabilities (greedy forward selection on validation "
           f"{escape(str(c.get('metric', 'bacc')))}, {c['rounds']} picks from the {c['library']} best runs; its "
           f"validation score is cross-fitted over {c['folds']} folds, in-sample {fmt(c['val_bacc_in_sample'], 4)}), "
           if "rounds" in c else f"Mean of {len(c['members'])} runs' probabilities, ")
    return [f'<div class="card"><div class="label">Ensemble <code>{escape(chosen)}</code> · best of '
            f'{plural(len(r.ensembles["candidates"]), "ensemble")} on validation</div>'
            f'<div class="big">{escape(fmt(t["test_bacc"], 4) if t is not None else DASH)}</div>'
            f'<div class="label">test balanced accuracy, {escape(ci)} · validation {fmt(c["val_bacc"], 4)}'
            + (f" · other candidates: {escape(others)}" if others else "") + "</div>"
            + (f'<div class="label">{comparison_sentence(vs)}</div>' if vs else "")
            + f'<div class="label">{how}each calibrated on validation '
            f'by one temperature:</div><ul class="note">{members}</ul>'
            f'<div class="label">Classify new titles with it:</div><pre class="cmd">'
            f"{escape(predict_command(c['run_dir']))}</pre></div>"]


def _split_table(per_split: dict[str, Any], value_name: str) -> str:
    """``{split: number}`` or ``{split: {key: number}}`` as one table, splits as rows."""
    if not isinstance(per_split, dict) or not per_split:
        return f"<p>{DASH}</p>"
    if all(isinstance(v, dict) for v in per_split.values()):
        keys = list(dict.fromkeys(
            k for v in per_split.values() for k, x in v.items() if not isinstance(x, (dict, list))))
        return table(["split", *keys], [[s, *(scalar(v.get(k), k) for k in keys)] for s, v in per_split.items()])
    return table(["split", value_name], [[k, scalar(v, value_name)] for k, v in per_split.items()])


def section_dataset(r: Results) -> str:
    s = r.summary
    if not s:
        return f"<p>{DASH} (results/data/summary.json missing)</p>"
    src = s.get("source") if isinstance(s.get("source"), dict) else {}
    blocks = _known_blocks(s) + _other_blocks(s)
    if isinstance(s.get("preprocess"), dict):
        blocks.append(("Cleaning (also applied to new titles by predict)", kv_table(s["preprocess"])))
    out = [kv_table({f"source {k}": v for k, v in src.items()}) if src else "",
           '<div class="blocks">' + "".join(f"<div><h3>{escape(t)}</h3>{b}</div>" for t, b in blocks) + "</div>"]
    if r.stats:
        out.append("<h3>Token ids (vocabulary from train only)</h3>" + _stats_table(r.stats))
    return "\n".join(out)


SUMMARY_SHOWN = {"source", "rows", "categories", "label_quality", "token_length_quantiles", "dropped",
                 "rare_categories", "preprocess"}


def _known_blocks(s: dict[str, Any]) -> list[tuple[str, str]]:
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
    return blocks


def _other_blocks(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Whatever else the data stage records, shown as-is (the stage may add keys over time)."""
    blocks = []
    other = {k: v for k, v in s.items() if k not in SUMMARY_SHOWN and not isinstance(v, dict)}
    for key, value in s.items():
        if key not in SUMMARY_SHOWN and isinstance(value, dict) and value:
            nested = all(isinstance(v, dict) for v in value.values())
            blocks.append((key.replace("_", " ").capitalize(), _split_table(value, key) if nested else kv_table(value)))
    if other:
        blocks.append(("Reading", kv_table(other)))
    return blocks


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
    return (table(keys, [[scalar(c.get(k), k) for k in keys] for c in r.coverage]) +
            (f'<p class="note">Most frequent vocabulary words without a vector:</p><ul class="note">{missing}</ul>'
             if missing else "") +
            '<p class="note">Vocabulary coverage: share of vocabulary words with a vector; token coverage: share '
            "of train tokens whose word has a vector.</p>")


def _family_runs(r: Results, family: str) -> pd.DataFrame:
    """A family's runs in runs.csv's order, a halving search's pruned runs last."""
    sub = r.runs[r.runs["family"] == family]
    stopped = pruned(sub)
    return pd.concat([sub[~stopped], sub[stopped]]) if stopped.any() else sub


def _ranks(sub: pd.DataFrame, k: int = charts.TOP_K) -> list[int | None]:
    """Per row of :func:`_family_runs`: its rank among the runs trained to the end (top ``k``), else None."""
    out, rank = [], 0
    for stopped in pruned(sub):
        rank += not stopped
        out.append(rank if not stopped and rank <= k else None)
    return out


def _value(v: Any) -> Any:
    """A runs.csv cell as a plain value: NaN as None, compact JSON lists as lists."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str) and v[:1] == "[":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v.item() if hasattr(v, "item") else v


def _top_legend(sub: pd.DataFrame, varied: list[str], k: int = charts.TOP_K) -> str:
    """Rank -> hyperparameters and validation bacc of a family's top runs (colours as on the charts)."""
    items = []
    for rank, (_, row) in enumerate(sub[~pruned(sub)].head(k).iterrows(), start=1):
        what = " · ".join(f"{p} {fmt_param(_value(row[p]))}" for p in varied) or row["combo"]
        items.append(f'<li><span class="swatch" style="background:{charts.rank_colour(rank)}">{rank}</span>'
                     f"{escape(what)} — val bacc {fmt(row['val_bacc'], 4)}"
                     f"{' (selected)' if rank == 1 else ''}</li>")
    return f'<ol class="legend">{"".join(items)}</ol>'


def _family_row(r: Results, family: str) -> list[Any]:
    """Best/median/worst validation bacc over the runs trained to the end (a halving search's
    pruned runs stopped after a rung or two: their scores are not comparable)."""
    sub = _family_runs(r, family)
    stopped = pruned(sub)
    b, n_pruned = sub.loc[~stopped, "val_bacc"], int(stopped.sum())
    runs = f"{len(sub)} ({n_pruned} pruned, not counted)" if n_pruned else len(sub)
    return [family_name(family), runs, b.max(), b.median(), b.min(), r.selected(family) or DASH]


def _seeded(sub: pd.DataFrame) -> bool:
    return "n_seeds" in sub and bool((sub["n_seeds"] > 1).any())


def _group_cell(row: pd.Series) -> Keyed:
    """The seed group's mean ± sd (what selection ranks on), sortable by the mean."""
    mean, sd, n = row.get("val_bacc_mean"), row.get("val_bacc_sd"), int(row.get("n_seeds") or 1)
    text = fmt(mean, 4) + (f" ± {fmt(sd, 4)} ({n})" if n > 1 and not pd.isna(sd) else " (1)")
    return Keyed(text, None if pd.isna(mean) else (float(mean),))


def _comparison_table(r: Results, family: str, sub: pd.DataFrame, varied: list[str]) -> str:
    params = hyperparameters(r.runs)
    # Cost columns (samples/s, memory, device) are in the cost section: this table stays narrow.
    metric_cols = [c for c in ("val_loss", "best_epoch", "epochs_run", "stopped_early", "train_time_s")
                   if sub[c].notna().any()]
    seeded = _seeded(sub)
    # Key columns first (rank, the metric, what was swept); the long run id last, wrapped.
    searched = bool(pruned(sub).any()) or ("rung" in sub and sub["rung"].notna().any())
    header = ["#", "val bacc", *(["seed-group mean ± sd (seeds)"] if seeded else []), *varied,
              *(COLUMN_LABELS.get(c, c) for c in metric_cols), *(["search"] if searched else []), "run"]
    ranks = _ranks(sub, k=len(sub))  # the "#": rank among the runs trained to the end
    body = [[rank or DASH, row["val_bacc"], *([_group_cell(row)] if seeded else []),
             *(keyed(_value(row[p])) for p in varied), *(row[c] for c in metric_cols),
             *([search.stop_label(row["pruned_at_rung"], row.get("bracket"))] if searched else []), row["combo"]]
            for rank, (_, row) in zip(ranks, sub.iterrows())]
    sel = [row["combo"] == r.selected(family) for _, row in sub.iterrows()]
    filters = [" ".join([f"family={family}"] + [f"{p}={fmt_param(_value(row[p]))}".lower().replace(" ", "")
                                                for p in params if not pd.isna(row[p])])
               for _, row in sub.iterrows()]
    example = f"{varied[0]}={fmt_param(_value(sub[varied[0]].iloc[-1]))}" if varied else ""
    return table(header, body, sel, sortable=True, row_filters=filters, tall=len(body) > 15,
                 example=example.replace(" ", ""))


def section_comparison(r: Results) -> str:
    out = ["<h3>Per family</h3>" + table(
        ["family", "runs", "best val bacc", "median", "worst", "selected run"],
        [_family_row(r, family) for family in r.families()])]
    params = hyperparameters(r.runs)
    for family in r.families():
        sub = _family_runs(r, family)
        varied = swept(r.runs, family)
        fixed = {p: _value(sub[p].iloc[0]) for p in params if p not in varied and sub[p].notna().any()}
        fixed_txt = ", ".join(f"{k} = {fmt_param(v)}" for k, v in fixed.items()) or DASH
        name = family_name(family)
        out.append(f"<h3>{escape(name)}: {plural(len(sub), 'run')}</h3>"
                   f'<p class="note">Same in every run: {escape(fixed_txt)}</p>')
        if len(varied) > 1:  # one hyperparameter: the effects section's strip chart says it all
            axes = [charts.Axis(p, [_value(v) for v in sub[p]]) for p in varied]
            axes.append(charts.Axis("val bacc", list(sub["val_bacc"])))
            out.append('<div class="scroll-x">' + charts.parallel_coordinates(
                axes, list(sub["combo"]), _ranks(sub), f"{name}: hyperparameters → validation balanced accuracy")
                + "</div>")
            out.append(_top_legend(sub, varied))
        out.append(_comparison_table(r, family, sub, varied))
    out.append('<p class="note">Each family\'s runs, best on validation first (the selected run highlighted; '
               "with seeds, ordered by their seed group's mean, which selection ranks on). "
               "Click a column to sort (numbers by value, lists like <code>[256, 128]</code> element by element); "
               "type in the box above a table to filter (<code>lr=0.01</code> matches that value exactly, other "
               "words anywhere in the row). Parallel coordinates: one line per run from its hyperparameters to its "
               "validation balanced accuracy; the top runs in colour, numbered by rank.</p>")
    return "\n".join(out)


def section_curves(r: Results) -> str:
    out = []
    for family in r.families():
        sub = _family_runs(r, family)
        histories = [(row["combo"], r.histories.get(row["run_dir"])) for _, row in sub.iterrows()]
        ranked = {c: rank for (c, _), rank in zip(histories, _ranks(sub)) if rank is not None}
        n_pruned = int(pruned(sub).sum())
        histories = [(c, h) for c, h in histories if h is not None and not h.empty]
        name = family_name(family)
        if not histories:
            out.append(f"<h3>{escape(name)}</h3><p>{DASH} (no history.csv)</p>")
            continue
        if max(len(h) for _, h in histories) < 2:
            out.append(f"<h3>{escape(name)}</h3><p class=note>Trained in one pass (no epochs): "
                       "see the comparison table.</p>")
            continue
        charts_html = []
        for col, title in (("val_bacc", "validation balanced accuracy"), ("train_loss", "train loss"),
                           ("val_loss", "validation loss")):
            series = [charts.Series(c, h["epoch"], h[col], rank=ranked.get(c)) for c, h in histories if col in h]
            charts_html.append(charts.line_chart(series, f"{name}: {title}", "epoch", title))
        more = len(histories) - len(ranked)
        out.append(f"<h3>{escape(name)}: {plural(len(histories), 'run')}</h3>"
                   f'<div class="charts">{"".join(charts_html)}</div>'
                   + _top_legend(sub, swept(r.runs, family))
                   + (f'<p class="note">Grey: the other {plural(more, "run")}'
                      + (f" ({n_pruned} pruned by the search: see <a href=\"#search\">Search</a>)" if n_pruned else "")
                      + ".</p>" if more > 0 else ""))
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


def section_statistics(r: Results) -> str:
    """Search effort (expected best validation score after n combinations) and hyperparameter importance."""
    st = r.statistics
    if not st:
        return f"<p>{DASH} (results/tables/statistics.json missing)</p>"
    out = []
    em = {f: rows for f, rows in (st.get("expected_max") or {}).items() if rows}
    if em:
        series = [(family_name(f), [x["n"] for x in rows], [x["expected_max"] for x in rows], [x["sd"] for x in rows])
                  for f, rows in em.items()]
        chart = charts.band_chart(series, "Best val bacc expected after n combinations", "combinations tried",
                                  "expected best val bacc")
        common = min(len(rows) for rows in em.values())
        rows = [[family_name(f), len(v), v[0]["expected_max"], v[min(common, len(v)) - 1]["expected_max"],
                 v[-1]["expected_max"], v[-1]["sd"]] for f, v in em.items()]
        out.append("<h3>Did a family win by being better, or by being searched more?</h3>"
                   f'<div class="charts">{chart}</div>'
                   + table(["family", "combinations", "expected best of 1", f"expected best of {common}",
                            "expected best of all", "sd"], rows)
                   + f'<p class="note">{escape(st.get("expected_max_method", ""))}. Compare the families at the '
                   f"same number of combinations ({common}): a family ahead only at its own, larger n won by being "
                   "searched more.</p>")
    for family, imp in (st.get("importance") or {}).items():
        rows = [[h["hyperparameter"], h["importance"], f"[{fmt(h['low'], 3)}, {fmt(h['high'], 3)}]"]
                for h in imp["hyperparameters"]]
        weak = imp["surrogate_r2"] < 0.3
        out.append(f"<h3>{escape(family_name(family))}: hyperparameter importance</h3>"
                   + table(["hyperparameter", "importance (drop in R²)", "90% interval"], rows)
                   + f'<p class="note">{escape(imp["method"])}, over {imp["n_runs"]} runs. The surrogate explains '
                   f'{fmt(imp["surrogate_r2"], 2)} of the variance of validation bacc out of sample '
                   f'(90% interval {fmt(imp["surrogate_r2_low"], 2)} to {fmt(imp["surrogate_r2_high"], 2)})'
                   + ("; too little to read the importances as more than a hint." if weak else ".")
                   + " An interval that reaches 0 means the hyperparameter's effect is not resolved by these runs.</p>")
    if not st.get("importance"):
        out.append('<p class="note">Hyperparameter importance needs at least 8 runs trained to the end in a family '
                   "with a swept hyperparameter.</p>")
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
    rows = [[family_name(row["family"]), row["test_bacc"], f"[{fmt(row['bacc_ci_low'], 4)}, {fmt(row['bacc_ci_high'], 4)}]",
             row.get("val_bacc"), row.get("accuracy"), row.get("macro_f1"), *(row[c] for c in quality_cols),
             row.get("n_scored"), row.get("n_unseen_category"), row["combo"]]
            for _, row in t.iterrows()]
    header = ["family", "test bacc", "95% CI", "val bacc", "accuracy", "macro F1",
              *(f"bacc {c[5:]}" for c in quality_cols), "test rows scored", "unseen-category rows (excluded)", "run"]
    chart = charts.interval_chart(
        [(family_name(row["family"]), row["test_bacc"], row["bacc_ci_low"], row["bacc_ci_high"], row.get("val_bacc"))
         for _, row in t.iterrows()], "Test balanced accuracy, 95% bootstrap CI (◇ validation)", "balanced accuracy")
    pairs = ""
    if r.comparisons:
        pairs = "<h3>Paired differences (same test rows)</h3>" + table(
            ["model", "vs", "difference", "95% CI", "verdict", "resamples where the model is higher"],
            [[family_name(c["a"]), family_name(c["b"]), signed(c.get("diff")),
              f"[{signed(c.get('ci_low'))}, {signed(c.get('ci_high'))}]", c.get("verdict", DASH),
              pct(c.get("share_a_higher"))] for c in r.comparisons])
    boot = next(iter(r.details.values()), {}).get("bootstrap", {})
    out = [table(header, rows), f'<div class="charts">{chart}</div>', pairs,
           f'<p class="note">CI: percentile bootstrap over test rows ({fmt(boot.get("resamples"))} resamples); a '
           "paired difference scores both models on each resample, so luck shared by both cancels out. "
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


def section_duplicates(r: Results) -> str:
    """Repeated titles within and across splits (summary.json `duplicates`), shown beside the test
    scores: a test title also seen in train measures memory, not generalisation."""
    dupes = r.summary.get("duplicates")
    if not dupes:
        return ""
    rows_per_split = r.summary.get("rows") or {}
    rows = [[kind, f"{d['test_in_train_or_validation']:,} ({pct(d.get('test_share_seen'))})", d["test_in_train"],
             d["validation_in_train"], *(d["within"].get(s, 0) for s in ("train", "validation", "test")),
             f"{d['conflicting_categories']['titles']:,} ({d['conflicting_categories']['rows']:,} rows)"]
            for kind, d in dupes.items()]
    how = (r.summary.get("split") or {}).get("from", DASH)
    return ("<h3>Repeated titles (leakage check)</h3>"
            + table(["titles compared", "test rows seen in train/validation", "test rows in train",
                     "validation rows in train", "repeats within train", "within validation", "within test",
                     "titles with conflicting categories"], rows)
            + f'<p class="note">exact: the raw title; cleaned: the text the models see. Test rows: '
              f'{fmt(rows_per_split.get("test"))}; splits: {escape(str(how))}. Test scores on repeated titles '
              "partly measure memory; <code>split.keep_duplicates_together: cleaned</code> keeps every copy in one "
              "split.</p>")


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
        per_run.append([family_name(row["family"]), row.get("device"), row.get("epochs_run"),
                        row.get("train_time_s"), row.get("samples_per_s"), row.get("peak_mem_mb"), b.get("s"),
                        b.get("max_rss"), b.get("cpu_time"), row["combo"]])
    out.append(f"<details{' open' if len(per_run) <= 30 else ''}><summary>Every run ({len(per_run)})</summary>" + table(
        ["family", "device", "epochs", "train time (s)", "samples/s", "peak memory (MB)",
         "job wall time (s)", "job max RSS (MB)", "job CPU time (s)", "run"], per_run, sortable=True,
        tall=len(per_run) > 15) + "</details>")
    out.append('<p class="note">Train time, samples/s and peak memory: measured by the training script; '
               "job columns: Snakemake's benchmark of the whole job (loading included).</p>")
    out.append(restarts.section(r.root, r.runs))  # issue 23: attempts and time lost to restarts
    from meli.report import packs  # packed runs have no job of their own: their packs' jobs

    out.append(packs.section(r.root, r.runs))
    if r.stage_benchmarks:
        out.append("<h3>Other workflow jobs</h3>" + table(
            ["job", "wall time (s)", "max RSS (MB)", "CPU time (s)"],
            [[k, b.get("s"), b.get("max_rss"), b.get("cpu_time")] for k, b in r.stage_benchmarks.items()]))
    return "\n".join(out)


def section_provenance(r: Results, config: dict[str, Any], configfiles: list[str], workdir: Path) -> str:
    git = git_info(workdir, configfiles)
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
        text = redact_config_text(path.read_text()) if path.exists() else f"{DASH} ({f} not found)"
        out.append(f"<details><summary>Config file <code>{escape(f)}</code></summary>"
                   f"<pre>{escape(text)}</pre></details>")
    out.append("<details><summary>Effective configuration (after command-line overrides and schema defaults)"
               f"</summary><pre>{escape(json.dumps(redact_config(config), indent=2, sort_keys=True))}</pre></details>")
    return "\n".join(out)
