"""The report's "Search" section: what a successive-halving search (meli.search) did.

Per halving family: the rungs (combinations trained, epoch budget, pruned), the epochs spent
against a full grid, where each combination stopped, and the learning curves with the pruned
runs greyed. Reads runs.csv (``rung``/``pruned_at_rung`` columns) and the rungs' selection.json.
Kept apart from sections.py so the report's layout can change around it.
"""
from __future__ import annotations

import json
from html import escape

import pandas as pd

from meli.report import charts
from meli.report.html import DASH, family_name, fmt, plural, table


def _rung_budgets(r, family: str) -> dict[int, int | None]:
    budgets = {}
    for path in sorted((r.root / "search" / family).glob("rung-*/selection.json")):
        try:
            sel = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        budgets[int(sel["rung"])] = sel.get("epochs")
    return budgets


def _family_search(r, family: str, sub: pd.DataFrame) -> str:
    pruned = sub["pruned_at_rung"].notna()
    final_rung = int(sub.loc[~pruned, "rung"].max()) if (~pruned).any() else None
    stop = sub["pruned_at_rung"].where(pruned, final_rung)
    budgets = _rung_budgets(r, family)
    n = len(sub)
    rung_rows = []
    for rung in range(int(stop.max()) + 1 if len(stop.dropna()) else 0):
        reached = int((stop >= rung).sum())
        stopped = int((sub["pruned_at_rung"] == rung).sum())
        epochs = "configured (early stopping)" if rung == final_rung else budgets.get(rung, DASH)
        rung_rows.append([rung, reached, epochs, stopped if rung != final_rung else DASH,
                          reached if rung == final_rung else reached - stopped])
    spent = int(pd.to_numeric(sub["epochs_run"], errors="coerce").fillna(0).sum())
    configured = pd.to_numeric(sub["epochs"], errors="coerce") if "epochs" in sub else pd.Series(dtype=float)
    grid_bound = int(configured.sum()) if configured.notna().all() and len(configured) else None
    cost = (f"{spent:,} epochs trained in all (each over the same training rows), against at most "
            f"{grid_bound:,} for the full grid ({n} combinations × their configured epochs; early stopping "
            f"would lower that): <b>{100 * spent / grid_bound:.0f}%</b>." if grid_bound
            else f"{spent:,} epochs trained in all.")
    per_combo = sub.assign(_stop=stop).sort_values(["_stop", "val_bacc"], ascending=[False, False])
    combo_rows = [[row["combo"], "final" if pd.isna(row["pruned_at_rung"]) else f"pruned at rung {int(row['pruned_at_rung'])}",
                   row["epochs_run"], row["val_bacc"]] for _, row in per_combo.iterrows()]
    chosen = r.selected(family)
    flags = [row["combo"] == chosen for _, row in per_combo.iterrows()]

    # final runs coloured and labelled by their rank on validation; pruned ones stay grey
    finals = sub[~pruned].sort_values("val_bacc", ascending=False)["combo"].tolist()
    ranks = {c: i for i, c in enumerate(finals, start=1)}
    histories = [(row["combo"], r.histories.get(row["run_dir"])) for _, row in sub.iterrows()]
    series = [charts.Series(c, h["epoch"], h["val_bacc"], rank=ranks.get(c)) for c, h in histories
              if h is not None and not h.empty and "val_bacc" in h]
    curves = charts.line_chart(series, f"{family_name(family)}: validation balanced accuracy", "epoch",
                               "validation balanced accuracy") if series else ""
    return (
        f"<h3>{escape(family_name(family))}: successive halving over {plural(n, 'combination')}</h3>"
        f"<p>{cost}</p>"
        + table(["rung", "combinations trained", "epochs by its end", "pruned here", "kept"], rung_rows,
                [False] * len(rung_rows))
        + f'<div class="charts">{curves}</div>'
        f'<p class="note">Grey: pruned runs, stopped at their rung; coloured and numbered by rank: '
        f"the runs trained to the end, the only candidates for selection (<code>{escape(chosen or DASH)}</code>).</p>"
        f"<details><summary>Where each of the {n} combinations stopped</summary>"
        + table(["combination", "stopped", "epochs", "val bacc"],
                [[c, s, e, fmt(b)] for c, s, e, b in combo_rows], flags)
        + "</details>"
    )


def section_search(r) -> str:
    runs = r.runs
    if "pruned_at_rung" not in runs.columns or "rung" not in runs.columns:
        return ("<p>Grid search: every combination trained to its configured epochs with early stopping "
                "(<code>train.search.strategy: grid</code>; <code>halving</code> prunes the weak ones early).</p>")
    out = ["<p>Successive halving (<code>train.search</code>): every combination trains for a few epochs, the "
           "best 1/eta by validation balanced accuracy continue from their state for eta times longer, and the "
           "last rung trains the survivors to their configured epochs. One job per combination and rung.</p>"]
    for family in r.families():
        sub = runs[runs["family"] == family]
        if sub["rung"].notna().any():
            out.append(_family_search(r, family, sub))
    return "\n".join(out)
