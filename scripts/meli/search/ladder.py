"""Rung arithmetic of one successive-halving ladder (used by halving, and by each Hyperband bracket).

A ladder trains ``n_0`` combinations for ``min_epochs`` epochs, keeps the best ``1/eta`` for
``eta`` times more epochs, and so on; its last rung trains the survivors to their configured
epochs with early stopping. Pure and known when the Snakefile is parsed.
"""
from __future__ import annotations

from dataclasses import dataclass

from meli.cli import MeliError


class SearchError(MeliError, ValueError):
    """A bad search setting or stage record."""


@dataclass(frozen=True)
class Rung:
    index: int
    combinations: int  # how many combinations this rung trains
    epochs: int | None  # epochs trained (since epoch 1) by the end of the rung; None: the configured epochs


@dataclass(frozen=True)
class Plan:
    rungs: tuple[Rung, ...]
    eta: int

    @property
    def final(self) -> int:
        """Index of the last rung (0: nothing to prune, the ladder is the grid)."""
        return len(self.rungs) - 1

    def keep(self, rung: int) -> int:
        """Combinations promoted out of ``rung`` (not defined for the last rung)."""
        if not 0 <= rung < self.final:
            raise SearchError(f"rung {rung} promotes nothing: rungs 0..{self.final - 1} do (the last is {self.final})")
        return self.rungs[rung + 1].combinations

    def epochs(self, rung: int) -> int | None:
        return self.rungs[rung].epochs

    def max_epochs_trained(self, max_epochs: int) -> int:
        """Upper bound of epochs trained by the whole ladder (early stopping only lowers it)."""
        total, before = 0, 0
        for rung in self.rungs:
            until = max_epochs if rung.epochs is None else min(rung.epochs, max_epochs)
            total += rung.combinations * max(until - before, 0)
            before = until
        return total


def check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SearchError(f"train.search: {name} must be an integer >= {low}, got {value!r}")


def plan(n_combinations: int, eta: int, min_epochs: int, max_epochs: int) -> Plan:
    """The rungs of a successive-halving ladder over ``n_combinations``.

    Rung ``r`` trains ``n_r`` combinations up to ``min_epochs * eta**r`` epochs, with ``n_0 = n`` and
    ``n_{r+1} = max(1, n_r // eta)``. A rung is the last -- trained to the configured epochs -- as
    soon as it has one combination or its budget reaches ``max_epochs`` (the largest configured
    ``epochs``): training further in rungs would only repeat the grid.
    """
    for name, value, low in (("n_combinations", n_combinations, 1), ("eta", eta, 2),
                             ("min_epochs", min_epochs, 1), ("max_epochs", max_epochs, 1)):
        check_int(name, value, low)
    rungs: list[Rung] = []
    n, epochs = n_combinations, min_epochs
    while n > 1 and epochs < max_epochs:
        rungs.append(Rung(len(rungs), n, epochs))
        n, epochs = max(1, n // eta), epochs * eta
    rungs.append(Rung(len(rungs), n, None))
    return Plan(tuple(rungs), eta)
