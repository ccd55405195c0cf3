"""The model families, one module each (mlp.py, cnn.py, rnn.py, tfidf.py), and the registry that lists them.

Everything that depends on which families exist reads this registry: the grid and the
Snakefile (which families, which are neural, how ids are spelled), meli.train.neural
(defaults, input kind, validation), meli.train.memory (each family's memory share),
meli.train.baseline (tfidf defaults), meli.models.nets.build_model (networks), meli.inference
(each family's predictor), aggregation and the report (order, display names), and the schema
test. Adding a family: docs/design.md, "Adding a model family".
"""
from __future__ import annotations

from meli.models import cnn, mlp, rnn, tfidf
from meli.models.family import Family

# Registration order is the order of tables, selection and report sections.
REGISTRY: dict[str, Family] = {f.name: f for f in (mlp.FAMILY, cnn.FAMILY, rnn.FAMILY, tfidf.FAMILY)}


def get(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; expected one of {names()}") from None


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def neural_names() -> tuple[str, ...]:
    return tuple(name for name, f in REGISTRY.items() if f.neural)


def display_name(name: str) -> str:
    """The report's name for a family; an unregistered one (an old run) keeps its key."""
    return REGISTRY[name].display_name if name in REGISTRY else name


def id_aliases() -> dict[str, str]:
    """Every family's id spelling merged into one ``{hyperparameter: alias}`` in id order.

    Each family's own order is kept: a key is placed just before the first of its family's
    later keys already placed (cnn's ``filters`` lands before ``dropout``), else at the end.
    tests/test_models.py checks that the families agree on shared keys and that the order
    (which is also the column order of runs.csv) does not move.
    """
    merged: dict[str, str] = {}
    order: list[str] = []
    for family in REGISTRY.values():
        keys = list(family.aliases)
        for i, key in enumerate(keys):
            alias = family.aliases[key]
            if key in merged:
                if merged[key] != alias:
                    raise ValueError(f"hyperparameter {key!r} is spelled {merged[key]!r} and {alias!r} in ids")
                continue
            later = [order.index(k) for k in keys[i + 1 :] if k in merged]
            order.insert(min(later) if later else len(order), key)
            merged[key] = alias
    return {key: merged[key] for key in order}
