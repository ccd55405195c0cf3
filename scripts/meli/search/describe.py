"""What the report, MLflow and ``make report`` say about a search (one place each).

A run record of a search carries ``rung`` (and ``pruned_at_rung``, and under Hyperband
``bracket``: :func:`meli.search.base.annotate` adds it to final runs from search.json); grid runs
carry neither. Which strategy described a family's runs is read from them: brackets are Hyperband's.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from meli.search.base import Strategy, stage_label
from meli.search.grid import GRID
from meli.search.halving import HALVING
from meli.search.hyperband import HYPERBAND


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def strategy_of(records: Iterable[dict[str, Any]]) -> Strategy:
    """The strategy whose runs these are (records or table rows): grid, halving, or Hyperband."""
    records = list(records)
    if not any(not _missing(r.get("rung")) for r in records):
        return GRID
    return HYPERBAND if any(not _missing(r.get("bracket")) for r in records) else HALVING


def stop_label(pruned_at: Any, bracket: Any = None) -> str:
    """Where a run of a search stopped: 'final', 'pruned at rung 1' or 'pruned at bracket 2, rung 1'."""
    if _missing(pruned_at):
        return "final"
    return f"pruned at {stage_label(None if _missing(bracket) else int(bracket), int(pruned_at))}"


def run_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """MLflow run tags of a search's run (``tags.search = 'pruned'``); nothing for a grid run."""
    if "rung" not in metrics:
        return {}
    pruned = metrics.get("pruned_at_rung") is not None
    return {"search": "pruned" if pruned else "final", "rung": str(metrics["rung"]),
            **({"bracket": str(metrics["bracket"])} if metrics.get("bracket") is not None else {}),
            **({"pruned_at_rung": str(metrics["pruned_at_rung"])} if pruned else {})}


def experiment_lines(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Per searched family, one line for the experiment's tags (``search.<family>``): the search,
    where the pruned ones stopped, epochs trained against the full grid's bound."""
    by_family: dict[str, list[dict[str, Any]]] = {}
    for m in records:
        if "rung" in m:
            by_family.setdefault(m["family"], []).append(m)
    out = {}
    for family, ms in sorted(by_family.items()):
        pruned = [(m.get("bracket"), m["pruned_at_rung"]) for m in ms if m.get("pruned_at_rung") is not None]
        spent = sum(int(m.get("epochs_run") or 0) for m in ms)
        bound = sum(int((m.get("params") or {}).get("epochs") or 0) for m in ms)
        at = ", ".join(f"{stage_label(b, r)}: {pruned.count((b, r))}"
                       for b, r in sorted(set(pruned), key=lambda br: (-1 if br[0] is None else br[0], br[1])))
        brackets = {m["bracket"] for m in ms if m.get("bracket") is not None}
        what = strategy_of(ms).heading(len(ms), len(brackets) or 1)
        out[family] = (f"{what}: {len(ms) - len(pruned)} trained to the end, "
                       f"{len(pruned)} pruned ({at or 'none'}); {spent} epochs trained"
                       + (f" against at most {bound} for the full grid ({100 * spent / bound:.0f}%)" if bound else ""))
    return out
