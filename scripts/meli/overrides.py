"""Command-line config overrides typed by the schema: ``--config split='{subsample: 0.1}'``.

Snakemake parses a nested ``--config`` value with YAML's BaseLoader, so every scalar inside it
arrives as a string (``'0.1'``, ``'true'``), and validation against config/schema.yaml would
refuse it. :func:`coerce` walks the config alongside the schema and converts a string wherever
the schema expects a number, integer, boolean or null and the string reads as one (by YAML's
rules, like a config file). Anything else is left for validation to report, naming the key.
"""
from __future__ import annotations

import math
import re
from typing import Any

import yaml

_TYPES = {"number": (int, float), "integer": (int,), "boolean": (bool,), "null": (type(None),)}


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _scalar(value: str, schema: dict[str, Any]) -> Any:
    wanted = _types(schema)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if parsed is None and "null" in wanted:  # gpu_model=null
        return None
    if "string" in wanted or not any(t in _TYPES for t in wanted):
        return value
    if isinstance(parsed, str) and "number" in wanted:  # YAML 1.1 reads 1e-3 (no dot) as text
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    for t in wanted:
        # bool is an int in Python, but `true` is not a number in the schema
        if t in _TYPES and isinstance(parsed, _TYPES[t]) and (t == "boolean" or not isinstance(parsed, bool)):
            return parsed
    return value


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def coerce(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """``value`` with schema-typed strings converted (a new object; ``value`` is not modified)."""
    root = root if root is not None else schema
    schema = _resolve(schema or {}, root)
    if isinstance(value, str):
        return _scalar(value, schema)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        patterns = schema.get("patternProperties", {})
        for key, item in value.items():
            sub = props.get(key) or next((p for rx, p in patterns.items() if re.search(rx, str(key))), None)
            out[key] = coerce(item, sub if sub is not None else extra if isinstance(extra, dict) else {}, root)
        return out
    if isinstance(value, list):
        items = schema.get("items", {})
        return [coerce(item, items if isinstance(items, dict) else {}, root) for item in value]
    return value


def command_line_form(path: list[Any] | tuple[Any, ...], example: Any) -> str:
    """How to set ``path`` (e.g. ``train.search.eta``) on the command line: Snakemake takes only
    ``key=value`` with a plain identifier as key (``train.search.eta=3`` stops in its own argument
    parser), and a nested value as YAML: ``--config 'train={search: {eta: 3}}'``."""
    keys = [str(k) for k in path if not isinstance(k, int)]
    if not keys:
        return ""
    value = yaml.safe_dump(example, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    for key in reversed(keys[1:]):
        value = f"{{{key}: {value}}}"
    return f"--config '{keys[0]}={value}'"
