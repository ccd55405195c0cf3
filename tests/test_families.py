"""The family registry (meli/models/): one definition per family, and config/schema.yaml agrees with it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from meli import grid, models
from meli.models.family import Family

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())

# The id spelling and runs.csv column order before the registry existed: ids name run
# directories, so a change here would orphan every finished run.
# Issue 12 added input, lr_schedule and label_smoothing (absent from an id unless set, so old ids
# stand) and moved the TF-IDF family's ngram_max/max_features to the tfidf_features section.
ID_KEY_ORDER = [
    "input", "embedding", "freeze_embeddings", "hidden", "filters", "kernel_sizes", "dropout", "batch_size", "lr",
    "weight_decay", "optimizer", "epochs", "patience", "class_weights", "lr_schedule", "label_smoothing", "C",
    "seed",
]


def _schema_grid(family: str) -> dict:
    return SCHEMA["properties"]["train"]["properties"][family]["properties"]["grid"]["properties"]


@pytest.mark.parametrize("name", models.names())
def test_schema_grid_lists_exactly_the_family_parameters(name):
    assert set(_schema_grid(name)) == set(models.get(name).parameters)


@pytest.mark.parametrize("name", models.names())
def test_schema_defaults_are_the_family_defaults(name):
    family, grid_schema = models.get(name), _schema_grid(name)
    defaults = family.defaults()
    for key, prop in grid_schema.items():
        if key in defaults and "default" not in prop:  # a key added later: absent from ids unless set
            assert "default" in prop.get("description", ""), f"train.{name}.grid.{key} must document its default"
        elif key in defaults:
            assert prop.get("default") == [defaults[key]], f"train.{name}.grid.{key}"
        else:
            assert "default" not in prop, f"train.{name}.grid.{key} has a schema default but no family default"


def test_every_family_has_a_config_section_and_nothing_else_does():
    train = SCHEMA["properties"]["train"]["properties"]
    assert set(models.names()) == set(train) - {"device", "resources", "max_combinations", "search"}


def test_merged_id_order_is_unchanged_and_keeps_each_family_order():
    assert grid.KEY_ORDER == ID_KEY_ORDER
    for family in models.REGISTRY.values():
        own = list(family.aliases)
        assert [k for k in grid.KEY_ORDER if k in family.aliases] == own, family.name
        assert all(grid.ALIASES[k] == a for k, a in family.aliases.items()), family.name


def test_registry_lists_neural_families_with_networks():
    assert models.names() == ("mlp", "cnn", "tfidf")
    assert models.neural_names() == ("mlp", "cnn")
    assert [models.display_name(n) for n in models.names()] == ["MLP", "CNN", "TF-IDF baseline"]
    assert models.display_name("rnn") == "rnn"  # a run of an unregistered family keeps its key
    with pytest.raises(ValueError, match="unknown model family 'rnn'"):
        models.get("rnn")


def test_defaults_are_fresh_copies():
    a = models.get("cnn").defaults()
    a["kernel_sizes"].append(9)
    assert models.get("cnn").defaults()["kernel_sizes"] == [2, 3, 4]


def test_a_definition_whose_aliases_miss_a_parameter_fails():
    @dataclasses.dataclass
    class P:
        a: int = 1
        b: int = 2

    with pytest.raises(ValueError, match="aliases"):
        Family(name="x", display_name="X", params=P, aliases={"a": "a"}, neural=False, model_file="m")
    with pytest.raises(ValueError, match="build"):
        Family(name="x", display_name="X", params=P, aliases={"a": "a", "b": "b"}, neural=True, model_file="m")


def test_training_defaults_come_from_the_definitions():
    from meli.train import baseline, neural

    assert neural.DEFAULTS == {"mlp": models.get("mlp").defaults(), "cnn": models.get("cnn").defaults()}
    assert baseline.DEFAULTS == models.get("tfidf").defaults()
