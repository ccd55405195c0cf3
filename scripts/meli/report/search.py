"""The report's "Search" section: what a search in stages (meli.search: halving, Hyperband) did.

Per searched family: each ladder's rungs (combinations trained, epoch budget, pruned; one table
per Hyperband bracket), the epochs spent against a full grid, where each combination stopped, and
the learning curves with the pruned runs greyed. Reads runs.csv (``rung``/``pruned_at_rung``/
``bracket`` columns) and the stages' selection.json. The strategy's own words (intro, heading)
come from meli.search.
"""
from __future__ import annotations

import json
from html import escape

import pandas as pd

from meli import search
from meli.report import charts
from meli.report.aggregate import pruned
from meli.report.html import DASH, family_name, fmt, table


def _stage_budgets(r, family: str) -> dict[tuple[int | None, int], int | None]:
    budgets = {}
    root = r.root / "search" / family
    for path in sorted(root.glob(f"rung-*/{search.SELECTION}")) + sorted(root.glob(f"bracket-*/rung-*/{search.SELECTION}")):
        try:
            sel = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        budgets[(sel.get("bracket"), int(sel["rung"]))] = sel.get("epochs")
    return budgets


def _brackets(sub: pd.DataFrame) -> pd.Series:
    """Each run's bracket as an int, None outside brackets (halving)."""
    values = sub["bracket"] if "bracket" in sub.columns else pd.Series(float("nan"), index=sub.index)
    return pd.Series([None if pd.isna(v) else int(v) for v in values], index=sub.index, dtype=object)


def _rung_rows(sub: pd.DataFrame, bracket, budgets, bracketed: bool) -> list[list]:
    """One ladder's rungs: combinations trained, budget, pruned there, kept (``bracketed``: a
    first cell with the bracket; a final run whose bracket is not known yet gets a dash)."""
    stopped = pruned(sub)
    final_rung = int(sub.loc[~stopped, "rung"].max()) if (~stopped).any() else None
    stop = sub["pruned_at_rung"].where(stopped, final_rung)
    rows = []
    for rung in range(int(stop.max()) + 1 if len(stop.dropna()) else 0):
        reached = int((stop >= rung).sum())
        at = int((sub["pruned_at_rung"] == rung).sum())
        epochs = "configured (early stopping)" if rung == final_rung else budgets.get((bracket, rung), DASH)
        rows.append([*([DASH if bracket is None else bracket] if bracketed else []), rung, reached, epochs,
                     at if rung != final_rung else DASH, reached if rung == final_rung else reached - at])
    return rows


def _cost(sub: pd.DataFrame) -> str:
    spent = int(pd.to_numeric(sub["epochs_run"], errors="coerce").fillna(0).sum())
    configured = pd.to_numeric(sub["epochs"], errors="coerce") if "epochs" in sub else pd.Series(dtype=float)
    grid_bound = int(configured.sum()) if configured.notna().all() and len(configured) else None
    return (f"{spent:,} epochs trained in all (each over the same training rows), against at most "
            f"{grid_bound:,} for the full grid ({len(sub)} combinations × their configured epochs; early stopping "
            f"would lower that): <b>{100 * spent / grid_bound:.0f}%</b>." if grid_bound
            else f"{spent:,} epochs trained in all.")


def _family_search(r, family: str, sub: pd.DataFrame, strategy: search.Strategy) -> str:
    stopped = pruned(sub)
    brackets = _brackets(sub)
    budgets = _stage_budgets(r, family)
    ladders = sorted(set(brackets), key=lambda b: -1 if b is None else -int(b))  # Hyperband: most aggressive first
    bracketed = any(b is not None for b in ladders)
    rung_rows = [row for b in ladders
                 for row in _rung_rows(sub[brackets.map(lambda x, b=b: x == b)], b, budgets, bracketed)]
    stop = sub["pruned_at_rung"].where(stopped, sub["rung"])
    per_combo = sub.assign(_stop=stop).sort_values(["_stop", "val_bacc"], ascending=[False, False])
    combo_rows = [[row["combo"], search.stop_label(row["pruned_at_rung"], row.get("bracket")),
                   row["epochs_run"], row["val_bacc"]] for _, row in per_combo.iterrows()]
    chosen = r.selected(family)
    flags = [row["combo"] == chosen for _, row in per_combo.iterrows()]

    # final runs coloured and labelled by their rank on validation; pruned ones stay grey
    finals = sub[~stopped].sort_values("val_bacc", ascending=False)["combo"].tolist()
    ranks = {c: i for i, c in enumerate(finals, start=1)}
    histories = [(row["combo"], r.histories.get(row["run_dir"])) for _, row in sub.iterrows()]
    series = [charts.Series(c, h["epoch"], h["val_bacc"], rank=ranks.get(c)) for c, h in histories
              if h is not None and not h.empty and "val_bacc" in h]
    curves = charts.line_chart(series, f"{family_name(family)}: validation balanced accuracy", "epoch",
                               "validation balanced accuracy") if series else ""
    head = ["bracket"] if bracketed else []
    n_ladders = len([b for b in ladders if b is not None]) or 1
    return (
        f"<h3>{escape(family_name(family))}: {escape(strategy.heading(len(sub), n_ladders))}</h3>"
        f"<p>{_cost(sub)}</p>"
        + table([*head, "rung", "combinations trained", "epochs by its end", "pruned here", "kept"], rung_rows,
                [False] * len(rung_rows))
        + f'<div class="charts">{curves}</div>'
        f'<p class="note">Grey: pruned runs, stopped at their rung; coloured and numbered by rank: '
        f"the runs trained to the end, the only candidates for selection (<code>{escape(chosen or DASH)}</code>).</p>"
        f"<details><summary>Where each of the {len(sub)} combinations stopped</summary>"
        + table(["combination", "stopped", "epochs", "val bacc"],
                [[c, s, e, fmt(b)] for c, s, e, b in combo_rows], flags)
        + "</details>"
    )


def section_search(r) -> str:
    runs = r.runs
    if "pruned_at_rung" not in runs.columns or "rung" not in runs.columns:
        return f"<p>{search.REGISTRY['grid'].intro}</p>"
    searched = [f for f in r.families() if runs.loc[runs["family"] == f, "rung"].notna().any()]
    strategies = {f: search.strategy_of(runs[runs["family"] == f].to_dict("records")) for f in searched}
    out = [f"<p>{s.intro}</p>" for s in dict.fromkeys(strategies.values())]
    out += [_family_search(r, f, runs[runs["family"] == f], strategies[f]) for f in searched]
    return "\n".join(out)
