"""Checks of the whole config at parse time, before any job: short messages naming the key.

rules/common.smk calls :func:`check_config` before snakemake's own schema validation (which
fills the defaults, but reports an error with the whole schema printed after it) and
:func:`check_after_defaults` once the defaults are in. What the schema alone cannot say is
checked here too: each explicit `train.<family>.combinations` entry against the grid's value
schema, and that every dataset/vectors source is something the workflow can get (a path that
exists, http(s):// or file://, never ftp:// or s3://).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import jsonschema

from meli.cli import MeliError
from meli.io import UnsupportedSource, local_path
from meli.overrides import command_line_form
from meli.redact import redact_url


class ConfigError(MeliError, ValueError):
    """The config cannot run; the message names the key and what to do."""


def _key(path) -> str:
    """jsonschema's error path as the config key: train.mlp.grid.dropout[0]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list", str: "the string", type(None): "nothing (null)"}.get(type(value))
    return f"{kind} {value!r}" if kind == "the string" else kind or f"{type(value).__name__} {value!r}"


def check_schema(config: Any, schema: Mapping) -> None:
    """The first schema violation, in one line with its key (the deepest, most specific error)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"Error validating config: the config must be a mapping of sections "
                          f"(dataset:, train:, ...), got {_describe(config)}")
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if not errors:
        return
    error = min(errors, key=lambda e: (len(e.path) == 0, -len(e.path), str(e.path)))
    if error.context:  # anyOf/oneOf: the branch that got furthest says the most
        error = max(error.context, key=lambda e: len(e.path))
    key = _key(error.absolute_path)
    hint = ""
    if error.validator == "type" and "object" in (error.validator_value if isinstance(error.validator_value, list)
                                                 else [error.validator_value]):
        hint = " (a section is a mapping of keys, e.g. `dataset:` then indented `name: ...` lines)"
    elif error.validator in ("type", "enum", "minimum", "maximum") and all(isinstance(k, str) for k in error.absolute_path):
        # a value typed on the command line: show the form Snakemake accepts (never `a.b.c=x`)
        example = error.schema.get("default", (error.schema.get("enum") or [None])[0])
        if example is not None:
            hint = f" (on the command line: {command_line_form(list(error.absolute_path), example)})"
    raise ConfigError(f"Error validating config: {key}: {error.message}{hint}; config/schema.yaml documents "
                      "every key")


def _grid_properties(schema: Mapping, family: str) -> Mapping:
    return schema["properties"]["train"]["properties"][family]["properties"]["grid"]["properties"]


def check_combinations(config: Mapping, schema: Mapping) -> None:
    """Each `train.<family>.combinations` entry: known keys, and every value valid as one grid value."""
    for family, section in (config.get("train") or {}).items():
        if not isinstance(section, Mapping) or "grid" not in schema["properties"]["train"]["properties"].get(
                family, {}).get("properties", {}):
            continue
        properties = _grid_properties(schema, family)
        for i, combination in enumerate(section.get("combinations") or []):
            where = f"train.{family}.combinations[{i}]"
            unknown = sorted(set(combination) - set(properties))
            if unknown:
                raise ConfigError(f"Error validating config: {where}: unknown key(s) {unknown}; "
                                  f"{family} knows {sorted(properties)}")
            for key, value in combination.items():
                try:
                    jsonschema.validate(value, properties[key].get("items", {}), jsonschema.Draft202012Validator)
                except jsonschema.ValidationError as err:
                    raise ConfigError(f"Error validating config: {where}.{key}: {err.message} "
                                      f"(the same limits as train.{family}.grid.{key})") from None


def check_source(key: str, source: str, workdir: str | os.PathLike = ".") -> None:
    """A source the workflow can get: http(s)://, file:// or an existing local path."""
    try:
        path = local_path(source)
    except UnsupportedSource as err:
        raise ConfigError(f"config {key}: {err}") from None
    if path is None:
        return
    if not (Path(workdir) / path).exists():
        hint = " (did you mean `demo`, the embedded dataset?)" if source.strip().lower() == "demo" else ""
        raise ConfigError(f"config {key}: {source!r}: no such file or directory (relative paths are relative to "
                          f"{Path(workdir).resolve()}){hint}")


# Formats whose loading runs Python code from the file (pickle): gensim KeyedVectors (.kv, .model),
# joblib/pickle files. Fine from your own disk; from the network only when pinned by sha256.
PICKLED_SUFFIXES = (".kv", ".model", ".pkl", ".pickle", ".joblib")


def check_pickled_download(key: str, source: str, sha256: str | None) -> None:
    """A pickled file from an http(s) URL needs its sha256: loading it runs whatever code it holds."""
    url = urlparse(source)
    if url.scheme in ("http", "https") and url.path.lower().endswith(PICKLED_SUFFIXES) and not sha256:
        name = os.path.basename(url.path)
        raise ConfigError(
            f"config {key}: {name} is a pickle (gensim/joblib format): loading it runs any code it contains, and "
            f"it comes from the network ({redact_url(source)}); give its sha256 in the sibling `sha256` key (from a "
            "source you trust), or use the word2vec text/binary format (.txt, .vec, .bin), which is only parsed")


def check_sources(config: Mapping, workdir: str | os.PathLike = ".") -> None:
    source = config["dataset"]["source"]
    if source != "demo":
        check_source("dataset.source", source, workdir)
        check_pickled_download("dataset.source", source, config["dataset"].get("sha256"))
    for name, spec in config["embeddings"].items():
        if spec.get("kind") == "pretrained" and spec.get("source"):
            check_source(f"embeddings.{name}.source", spec["source"], workdir)
            check_pickled_download(f"embeddings.{name}.source", spec["source"], spec.get("sha256"))


# Keys that change how a stage runs or how results are labelled, never what it computes. They are
# kept out of the stage's params (a params change makes snakemake redo the job and everything
# after it): renaming the dataset or raising a timeout must not retrain every model.
OPERATIONAL_KEYS = {
    "dataset": {"name", "download_retries", "download_timeout_s", "demo_rows", "demo_categories",
                "max_line_bytes", "max_source_bytes"},
    "preprocess": {"chunk_rows"},
}
STAGE_SECTIONS = {"prepare": ("dataset", "preprocess", "split")}


def stage_config(config: Mapping, stage: str) -> dict[str, Any]:
    """The config sections a stage reads, without the keys that cannot change its output."""
    return {section: {k: v for k, v in config[section].items() if k not in OPERATIONAL_KEYS.get(section, ())}
            for section in STAGE_SECTIONS[stage]}


def check_config(config: Any, schema: Mapping) -> None:
    """Before snakemake's validation: the schema (one line) and the combinations."""
    check_schema(config, schema)
    check_combinations(config, schema)


def check_after_defaults(config: Mapping, workdir: str | os.PathLike = ".") -> None:
    """After the defaults are filled in: the sources."""
    check_sources(config, workdir)
