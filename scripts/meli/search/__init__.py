"""Budget-aware search over a neural family's combinations: strategies behind one interface.

``train.search.strategy`` names a registered :class:`~meli.search.base.Strategy` (``REGISTRY``):
``grid`` (every combination one complete run), ``halving`` (meli/search/halving.py: successive
halving, one ladder of rungs) and ``hyperband`` (meli/search/hyperband.py: several ladders, the
brackets). :func:`family_plan` is the one place a family's :class:`~meli.search.base.SearchPlan`
is made (the Snakefile, ``make report``'s progress and the report call it); the rules
(rules/train.smk: ``train_rung``, ``select_rung``, ``search_done``, ``train_neural``) read their
stages, budgets and inputs from it. Files (docs/design.md, "Search"):

- ``results/search/{family}/{stage}/{combo}/``: a stage's record (``metrics.json`` with ``rung``,
  ``history.csv`` since epoch 1) and ``checkpoint.pt``, the training state the next rung continues
  from; ``{stage}`` is ``rung-{r}`` (halving) or ``bracket-{s}/rung-{r}`` (Hyperband);
- ``results/search/{family}/{stage}/selection.json``: the stage's ranking, ``kept`` and ``pruned``;
- ``results/search/{family}/{stage}/pruned/{combo}/``: the record of a combination pruned there
  (``pruned_at_rung``, and ``bracket``) -- a run directory like any other for the tables, the
  report and MLflow; its training state is deleted (nothing continues from it);
- ``results/search/{family}/search.json``: the final and pruned run directories (rule search_done);
- ``results/runs/{family}/{combo}/``: the final runs (``rung``, ``pruned_at_rung: null``). Selection
  on validation is among these only.
"""
from __future__ import annotations

import logging
from typing import Any

from meli.search.base import (CRITERION, PRUNED, SELECTION, SNAPSHOT, SUMMARY, Ladder, SearchPlan, Stage,
                              Strategy, annotate, combination_states, current_states, rank, read_selection, read_summary, select,
                              select_rung, stage_key, stage_label, summarize)
from meli.search.describe import experiment_lines, run_tags, stop_label, strategy_of
from meli.search.grid import GRID
from meli.search.halving import HALVING
from meli.search.hyperband import HYPERBAND
from meli.search.ladder import Plan, Rung, SearchError, plan

log = logging.getLogger("meli.search")

REGISTRY: dict[str, Strategy] = {s.name: s for s in (GRID, HALVING, HYPERBAND)}
STRATEGIES = tuple(REGISTRY)

__all__ = ["CRITERION", "PRUNED", "REGISTRY", "SELECTION", "SNAPSHOT", "STRATEGIES", "SUMMARY", "Ladder", "Plan",
           "Rung", "SearchError", "SearchPlan", "Stage", "Strategy", "annotate", "combination_states",
           "current_states",
           "experiment_lines", "family_plan", "get", "plan", "rank", "read_selection", "read_summary", "run_tags",
           "select", "select_rung", "stage_key", "stage_label", "stop_label", "strategy_of", "summarize"]


def get(name: str) -> Strategy:
    try:
        return REGISTRY[name]
    except KeyError:
        raise SearchError(f"train.search.strategy: unknown strategy {name!r} (one of {', '.join(REGISTRY)})") from None


def family_plan(family: str, combos: dict[str, dict[str, Any]], search_cfg: dict[str, Any],
                warn: bool = False) -> SearchPlan | None:
    """The search plan of one family under ``train.search`` (None: the family trains as a grid).

    ``warn``: log when a staged strategy prunes nothing here (one combination, or ``min_epochs``
    reaching the configured epochs), so it silently trains the plain grid (the Snakefile, once)."""
    from meli import models

    strategy = get((search_cfg or {}).get("strategy", "grid"))
    strategy.check(search_cfg or {})
    if strategy is GRID or not combos:
        return None
    fam = models.get(family)
    if not fam.neural:
        return None
    default_epochs = fam.defaults()["epochs"]
    max_epochs = max(int(p.get("epochs", default_epochs)) for p in combos.values())
    ladders = strategy.ladders(list(combos), search_cfg or {}, max_epochs)
    if not any(ladder.plan.final for ladder in ladders):
        if warn:
            log.warning("train.search.strategy %s prunes nothing for %s (%d combination(s), min_epochs %s, "
                        "epochs up to %d): it trains the plain grid", strategy.name, family, len(combos),
                        (search_cfg or {}).get("min_epochs", 1), max_epochs)
        return None
    return SearchPlan(strategy, family, ladders)
