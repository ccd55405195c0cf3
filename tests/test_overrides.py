"""Command-line config values (strings from Snakemake's --config) typed by config/schema.yaml."""
from __future__ import annotations

from pathlib import Path

import yaml
from snakemake.utils import validate

from meli.overrides import coerce

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


def test_strings_become_what_the_schema_expects():
    schema = yaml.safe_load(SCHEMA.read_text())
    given = {
        "dataset": {"name": "x", "source": "demo", "demo_rows": "500"},
        "split": {"subsample": "0.1", "seed": "3"},
        "vocab": {"max_len": "32"},
        "train": {"resources": {"gpu": "1", "gpu_model": "null", "mem_mb": "2000"},
                  "mlp": {"grid": {"lr": ["1e-3", "0.5"], "hidden": [["64", "32"]], "class_weights": ["true"]},
                          "sample": "4"}},
        "mlflow": {"experiment": "123"},  # a string in the schema: stays a string
    }
    got = coerce(given, schema)
    assert got["split"] == {"subsample": 0.1, "seed": 3}
    assert got["dataset"]["demo_rows"] == 500 and got["vocab"]["max_len"] == 32
    assert got["train"]["resources"] == {"gpu": 1, "gpu_model": None, "mem_mb": 2000}
    grid = got["train"]["mlp"]["grid"]
    assert grid == {"lr": [0.001, 0.5], "hidden": [[64, 32]], "class_weights": [True]}
    assert got["train"]["mlp"]["sample"] == 4 and got["mlflow"]["experiment"] == "123"
    assert given["split"]["subsample"] == "0.1", "the input is not modified"
    embeddings = coerce({"embeddings": {"w2v": {"kind": "word2vec", "dim": "16", "epochs": "2"}}}, schema)
    assert embeddings == {"embeddings": {"w2v": {"kind": "word2vec", "dim": 16, "epochs": 2}}}
    validate({**got, **embeddings}, str(SCHEMA))


def test_what_is_not_a_number_is_left_for_validation_to_name():
    schema = yaml.safe_load(SCHEMA.read_text())
    got = coerce({"split": {"subsample": "lots", "seed": "nan"}, "train": {"resources": {"gpu": "true"}}}, schema)
    assert got["split"] == {"subsample": "lots", "seed": "nan"}
    assert got["train"]["resources"]["gpu"] == "true", "a boolean is not an integer"
