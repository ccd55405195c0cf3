"""Successive halving (``train.search.strategy: halving``): one ladder over all of a family's combinations.

Rung 0 trains every combination for ``min_epochs`` epochs; each following rung keeps the best
``1/eta`` of the previous one (validation bacc, then lower validation loss, then combination id)
and trains them up to ``eta`` times more epochs, continuing from the previous rung's training
state; the last rung trains the survivors to their configured ``epochs`` with early stopping.
Stages: ``results/search/{family}/rung-{r}/``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from meli.search.base import Ladder, Strategy
from meli.search.ladder import plan


class Halving(Strategy):
    name = "halving"
    title = "successive halving"
    intro = ("Successive halving (<code>train.search</code>): every combination trains for a few epochs, the "
             "best 1/eta by validation balanced accuracy continue from their state for eta times longer, and the "
             "last rung trains the survivors to their configured epochs. One job per combination and rung.")

    def ladders(self, combos: Sequence[str], cfg: Mapping[str, Any], max_epochs: int) -> tuple[Ladder, ...]:
        p = plan(len(combos), int(cfg.get("eta", 3)), int(cfg.get("min_epochs", 1)), max_epochs)
        return (Ladder(None, tuple(combos), p),)


HALVING = Halving()
