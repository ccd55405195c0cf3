"""Hyperband (``train.search.strategy: hyperband``): several successive-halving brackets, each
starting at another epoch budget, so no single ``min_epochs`` has to be guessed.

With ``R`` the largest configured ``epochs``, ``r`` = ``train.search.min_epochs`` (the smallest
starting budget) and ``eta``: ``s_max`` is the largest ``s`` with ``r * eta**s <= R``. Bracket
``s = s_max .. 0`` starts its combinations at ``max(r, R // eta**s)`` epochs (bracket 0: the full
epochs, i.e. plain grid runs) and runs successive halving from there (meli.search.ladder.plan:
keep the best 1/eta, eta times more epochs, the last rung to the configured epochs with early
stopping). Li et al. (2018) draw ``n_s = ceil((s_max + 1) / (s + 1) * eta**s)`` fresh
configurations per bracket; a grid is finite, so it is *partitioned* instead:

- bracket ``s`` gets a share of the grid proportional to ``n_s`` (largest remainder, ties to the
  more aggressive bracket), every combination exactly one bracket;
- which combinations: the grid ordered by the sha256 of their ids (a fixed pseudo-random order, so
  no bracket gets all of one learning rate), bracket s_max taking the first ones, then s_max - 1 ...

Stages: ``results/search/{family}/bracket-{s}/rung-{i}/``; every bracket's survivors are final runs
in ``results/runs/{family}/{combo}/``, and selection is among all of them (all trained to the end).
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping, Sequence

from meli.search.base import Ladder, Strategy
from meli.search.ladder import check_int, plan


def brackets(eta: int, min_epochs: int, max_epochs: int) -> list[tuple[int, int, int]]:
    """``(s, starting epochs, n_s)`` for ``s = s_max .. 0`` (see the module's docstring)."""
    for name, value, low in (("eta", eta, 2), ("min_epochs", min_epochs, 1), ("max_epochs", max_epochs, 1)):
        check_int(name, value, low)
    s_max = 0
    while min_epochs * eta ** (s_max + 1) <= max_epochs:
        s_max += 1
    return [(s, max(min_epochs, max_epochs // eta**s), math.ceil((s_max + 1) * eta**s / (s + 1)))
            for s in range(s_max, -1, -1)]


def partition(n: int, weights: Sequence[int]) -> list[int]:
    """``n`` split in proportion to ``weights`` (largest remainder; ties go to the earlier weight)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def hash_order(combos: Sequence[str]) -> list[str]:
    return sorted(combos, key=lambda c: hashlib.sha256(c.encode()).hexdigest())


class Hyperband(Strategy):
    name = "hyperband"
    title = "Hyperband"
    intro = ("Hyperband (<code>train.search.strategy: hyperband</code>): the grid is split into brackets, each a "
             "successive-halving search that starts at another epoch budget -- from a few epochs (many "
             "combinations, pruned hard) to the configured epochs (a few combinations, trained straight) -- so "
             "a slow starter is not lost to a single early rung. Every bracket's survivors are trained to the "
             "end and compared on validation.")

    def ladders(self, combos: Sequence[str], cfg: Mapping[str, Any], max_epochs: int) -> tuple[Ladder, ...]:
        eta = int(cfg.get("eta", 3))
        plan_of = brackets(eta, int(cfg.get("min_epochs", 1)), max_epochs)
        counts = partition(len(combos), [n for *_, n in plan_of])
        ordered, position = hash_order(combos), {c: i for i, c in enumerate(combos)}
        ladders, start = [], 0
        for (s, epochs, _), k in zip(plan_of, counts):
            if k:
                chunk = sorted(ordered[start:start + k], key=position.__getitem__)  # configuration order within
                ladders.append(Ladder(s, tuple(chunk), plan(k, eta, epochs, max_epochs)))
                start += k
        return tuple(ladders)

    def heading(self, combinations: int, ladders: int) -> str:
        return f"Hyperband over {combinations} combinations in {ladders} brackets"


HYPERBAND = Hyperband()
