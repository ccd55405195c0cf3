"""Hyperparameter values in their natural order (issue 24): numbers by value, lists element-wise.

A runs.csv cell holds ``64``, ``0.003``, ``3e-05``, ``true``, ``w2v`` or a compact JSON list
(``[256,128]``). Sorted as text, ``[128] [16] [64]`` and ``0.5 10 2`` come out wrong; every table,
chart and effect list of the report orders them with :func:`value_key` instead.
"""
from __future__ import annotations

import json
import math
from typing import Any

# Numbers (and lists of numbers) first, then text, then missing values.
_NUMBER, _TEXT, _MISSING = 0, 1, 2


def parse(value: Any) -> Any:
    """A table cell as a plain value: NaN -> None, compact JSON lists -> lists, numeric text -> number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str):
        text = value.strip()
        if text[:1] == "[":
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return value
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        try:
            return float(text) if any(c in text for c in ".eE") or not text.lstrip("-").isdigit() else int(text)
        except ValueError:
            return value
    return value


def numbers(value: Any) -> tuple[float, ...] | None:
    """The value as a tuple of numbers (a scalar as one), or None when it is not numeric."""
    value = parse(value)
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append(float(item))
        elif isinstance(item, (int, float)) and math.isfinite(float(item)):
            out.append(float(item))
        else:
            return None
    return tuple(out)


def value_key(value: Any) -> tuple:
    """Sort key: numbers by value, lists element-wise (``[16] < [64] < [128] < [128, 64]``),
    then text, then missing values."""
    parsed = parse(value)
    if parsed is None:
        return (_MISSING,)
    nums = numbers(parsed)
    if nums is not None:
        return (_NUMBER, nums)
    return (_TEXT, str(parsed))


def sorted_values(values) -> list:
    """Distinct values in :func:`value_key` order (compared by their key, so 1 and 1.0 are one value)."""
    seen: dict[tuple, Any] = {}
    for v in values:
        seen.setdefault(value_key(v), v)
    return [seen[k] for k in sorted(seen)]
