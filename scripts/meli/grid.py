"""Hyperparameter grids -> one job per combination, with stable readable ids.

The Snakefile calls :func:`expand_family` at parse time; every combination becomes the
directory ``results/runs/{family}/{combo_id}/``. Ids are a pure function of the parameter
values, so adding a value to a grid adds only the new jobs and leaves finished runs alone.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Iterable

from meli import models

# Short aliases in a fixed key order (each family's, merged): ids stay readable and stable
# across Python/dict orders. KEY_ORDER is also the column order of runs.csv.
ALIASES: dict[str, str] = models.id_aliases()
KEY_ORDER = list(ALIASES)

FAMILIES = models.names()
NEURAL_FAMILIES = models.neural_names()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return "x".join(_fmt(v) for v in value) if value else "none"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def combo_id(params: dict[str, Any]) -> str:
    """Readable, stable id, e.g. ``emb-w2v_frz-0_h-256x128_do-0.3_bs-128_..._seed-0``."""
    unknown = sorted(set(params) - set(ALIASES))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; known: {KEY_ORDER}")
    parts = [f"{ALIASES[k]}-{_fmt(params[k])}" for k in KEY_ORDER if k in params]
    cid = "_".join(parts)
    if "/" in cid or not cid:
        raise ValueError(f"invalid combination id {cid!r} from {params}")
    return cid


def _normalise(params: dict[str, Any]) -> dict[str, Any]:
    """Lists inside values (hidden, kernel_sizes) as plain lists of ints; ints stay ints."""
    out = {}
    for k, v in params.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def cartesian(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Cartesian product of a ``{name: [values...]}`` grid, in key order."""
    keys = [k for k in KEY_ORDER if k in grid] + sorted(k for k in grid if k not in ALIASES)
    if not keys:
        return []
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ValueError(f"grid value for {k!r} must be a non-empty list, got {grid[k]!r}")
    return [_normalise(dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]


def expand_family(
    family_cfg: dict[str, Any],
    *,
    defaults: dict[str, Any] | None = None,
    embeddings: Iterable[str] = (),
    family: str | None = None,
) -> dict[str, dict[str, Any]]:
    """All combinations of one family: ``{combo_id: params}``, in a stable order.

    ``family_cfg`` is ``config["train"][family]``: ``grid`` (lists), optional explicit
    ``combinations`` (each completed from the grid's first values / ``defaults``), and optional
    ``sample`` (train a seeded random sample of N combinations). Given ``family``, its ``prune``
    drops keys that do not apply to a combination (an MLP with ``input: tfidf`` has no
    ``embedding``), so combinations that differ only in such a key are one job.
    """
    prune = models.get(family).prune if family else None
    grid = dict(family_cfg.get("grid") or {})
    embeddings = list(embeddings)
    if embeddings and "embedding" not in grid and defaults is not None and "embedding" in defaults:
        grid["embedding"] = embeddings
    combos = cartesian(grid)
    base = {k: v[0] for k, v in grid.items()}
    if defaults:
        base = {**{k: v[0] if isinstance(v, list) else v for k, v in defaults.items()}, **base}
    for extra in family_cfg.get("combinations") or []:
        combos.append(_normalise({**base, **extra}))
    sample = family_cfg.get("sample")
    if sample is not None and sample < len(combos):
        rng = random.Random(0)  # fixed: the same N combinations on every parse
        combos = rng.sample(combos, sample)
    out: dict[str, dict[str, Any]] = {}
    for params in combos:
        if prune is not None:
            params = prune(params)
        if embeddings and "embedding" in params and params["embedding"] not in embeddings:
            raise ValueError(
                f"combination uses embedding {params['embedding']!r}, which is not configured "
                f"under `embeddings` (have: {embeddings})"
            )
        out.setdefault(combo_id(params), params)
    return out


def check_job_count(combos: dict[str, dict[str, Any]], train_cfg: dict[str, Any], limit: int) -> None:
    """Stop before submitting more than ``limit`` training jobs: thousands are more often a
    mistyped grid (``lr: [0.0001, 0.0002, ...]`` instead of two values) than a plan."""
    total = sum(len(c) for c in combos.values())
    if total <= limit:
        return
    parts = []
    for family, family_combos in combos.items():
        grid = (train_cfg.get(family) or {}).get("grid") or {}
        sizes = " x ".join(f"{len(v)} {k}" for k, v in grid.items() if isinstance(v, list) and len(v) > 1)
        extra = len((train_cfg.get(family) or {}).get("combinations") or [])
        parts.append(f"{family} {len(family_combos):,}" + (f" ({sizes}{f' + {extra} explicit' if extra else ''})"
                                                          if sizes or extra else ""))
    raise ValueError(
        f"{total:,} training jobs ({'; '.join(parts)}), over train.max_combinations={limit:,}. Each combination is "
        "its own (GPU) job: check the grids for a typo, train a random sample with train.<family>.sample: N, "
        "or raise train.max_combinations if you mean it")


PACK_PREFIX = "pack-"


def pack_combos(combos: Iterable[str], size: int, key=None) -> dict[str, list[str]]:
    """Split a family's combinations into packs of at most ``size`` (``train.pack``): ``{pack id:
    [combo ids]}``, ids ``pack-000``, ``pack-001``, ... Combinations with the same ``key`` (what they
    read: an embedding, or TF-IDF) are kept together, so that a pack loads as few inputs as it can;
    otherwise the grid's order. The same grid always gives the same packs."""
    if size < 1:
        raise ValueError(f"pack size must be >= 1, got {size}")
    combos = list(combos)
    if key is not None:
        first = {}
        for c in combos:
            first.setdefault(key(c), len(first))
        combos.sort(key=lambda c: first[key(c)])  # stable: the grid's order within a group
    return {f"{PACK_PREFIX}{i // size:03d}": combos[i:i + size] for i in range(0, len(combos), size)}
