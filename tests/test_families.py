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
# Issue 21 added the rnn family's own keys (between the CNN's and the shared tail: no id changes).
# Issue 25 added the TF-IDF family's solver (and softmax's batch_size/lr/epochs/weight_decay/
# sparse_optimizer) and the MLP's sparse_optimizer/sparse_lr_scale, absent unless set.
ID_KEY_ORDER = [
    "input", "embedding", "freeze_embeddings", "hidden", "tfidf_view", "filters", "kernel_sizes", "cell", "hidden_size", "layers",
    "bidirectional", "pooling", "dropout", "batch_size", "lr",
    "weight_decay", "optimizer", "epochs", "patience", "class_weights", "lr_schedule", "label_smoothing", "C",
    "seed", "solver", "sparse_optimizer", "sparse_lr_scale",
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
    assert set(models.names()) == set(train) - {"device", "resources", "max_combinations", "search",
                                                "checkpoint_minutes", "stop_signal_s", "pack"}  # issue 23: operational keys


def test_merged_id_order_is_unchanged_and_keeps_each_family_order():
    assert grid.KEY_ORDER == ID_KEY_ORDER
    for family in models.REGISTRY.values():
        own = list(family.aliases)
        assert [k for k in grid.KEY_ORDER if k in family.aliases] == own, family.name
        assert all(grid.ALIASES[k] == a for k, a in family.aliases.items()), family.name


def test_registry_lists_neural_families_with_networks():
    assert models.names() == ("mlp", "cnn", "rnn", "tfidf")
    assert models.neural_names() == ("mlp", "cnn", "rnn")
    assert [models.display_name(n) for n in models.names()] == ["MLP", "CNN", "BiLSTM/GRU", "TF-IDF baseline"]
    assert models.display_name("gbm") == "gbm"  # a run of an unregistered family keeps its key
    with pytest.raises(ValueError, match="unknown model family 'gbm'"):
        models.get("gbm")


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
    # A neural family without its own memory estimate is refused, never estimated as the MLP.
    with pytest.raises(ValueError, match="memory"):
        Family(name="x", display_name="X", params=P, aliases={"a": "a", "b": "b"}, neural=True, model_file="m",
               build=lambda *a: None)
    with pytest.raises(ValueError, match="module:callable"):
        Family(name="x", display_name="X", params=P, aliases={"a": "a", "b": "b"}, neural=False, model_file="m",
               predictor="nowhere")


def test_training_defaults_come_from_the_definitions():
    from meli.train import baseline, neural

    assert neural.DEFAULTS == {name: models.get(name).defaults() for name in ("mlp", "cnn", "rnn")}
    assert baseline.DEFAULTS == models.get("tfidf").defaults()


@pytest.mark.parametrize("name", models.neural_names())
def test_every_neural_family_declares_its_inputs_memory_and_predictor(name):
    import importlib

    from meli.models.family import INPUT_KINDS, Shapes

    family = models.get(name)
    params = {**family.defaults(), "embedding": "w2v"}
    assert family.inputs(params) in INPUT_KINDS
    est = family.memory(params, Shapes(rows=1000, max_len=20, vocab_size=500, dim=16, n_classes=10))
    assert est.weights > 0 and est.per_row > 0
    module, _, attr = family.predictor.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


@pytest.mark.parametrize("name", models.names())
def test_every_family_default_is_the_validated_configs_default(name):
    """The validated config is the one source of defaults: a config that leaves the family's grid to
    the schema trains exactly the family's defaults (keys without a schema default stay out)."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny.yaml").read_text())
    cfg["train"].pop(name, None)
    validate(cfg, str(ROOT / "config" / "schema.yaml"))
    filled = cfg["train"][name]["grid"]
    defaults = models.get(name).defaults()
    assert {k: v[0] for k, v in filled.items()} == {k: v for k, v in defaults.items() if k in filled}
    documented = set(defaults) - set(filled)
    # Issue 25: the TF-IDF family's solver and softmax-only keys are absent from ids unless set.
    tfidf_later = {"solver", "batch_size", "lr", "epochs", "weight_decay", "sparse_optimizer"} if name == "tfidf" else set()
    mlp_later = {"sparse_optimizer", "sparse_lr_scale"} if name == "mlp" else set()
    # Issue 24: the MLP's tfidf_view is absent from ids unless set to a single block.
    assert documented <= {"input", "lr_schedule", "label_smoothing", "tfidf_view"} | tfidf_later | mlp_later, documented


def _schema_defaults(*path: str) -> dict:
    node = SCHEMA["properties"]
    for key in path[:-1]:
        node = node[key]["properties"]
    props = node[path[-1]]
    props = props["patternProperties"][next(iter(props["patternProperties"]))] if "patternProperties" in props else props
    return {k: v["default"] for k, v in props["properties"].items() if "default" in v}


@pytest.mark.parametrize("module, name, section", [
    ("meli.data.text", "DEFAULTS", ("preprocess",)),
    ("meli.embeddings.features", "DEFAULTS", ("vocab",)),
    ("meli.embeddings.tfidf", "DEFAULTS", ("tfidf_features",)),
    ("meli.embeddings.matrix", "SPEC_DEFAULTS", ("embeddings",)),
    ("meli.report.evaluate", "DEFAULTS", ("report",)),
])
def test_stage_defaults_restated_in_code_equal_the_schema(module, name, section):
    """Stages called outside the workflow (tests, benchmarks, meli-predict) complete a config section
    with these; the validated config is the source, so they must never drift from it."""
    import importlib

    restated = getattr(importlib.import_module(module), name)
    schema = _schema_defaults(*section)
    assert {k: v for k, v in restated.items() if k in schema} == {k: schema[k] for k in restated if k in schema}
    assert set(restated) - set(schema) <= {"source"}, set(restated) - set(schema)  # source: no default, required
