"""Grid expansion and combination ids: stable, readable, one job per combination."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from meli.grid import combo_id, expand_family

ROOT = Path(__file__).resolve().parents[1]
MLP_GRID = {
    "embedding": ["sbwce"],
    "freeze_embeddings": [True, False],
    "hidden": [[256, 128], [512, 256, 256, 128]],
    "dropout": [0.3, 0.7],
    "batch_size": [128, 256],
    "lr": [0.001],
    "seed": [0],
}


def test_cartesian_product_with_readable_unique_ids():
    combos = expand_family({"grid": MLP_GRID}, embeddings=["sbwce"])
    assert len(combos) == 16
    assert "emb-sbwce_frz-1_h-512x256x256x128_do-0.7_bs-256_lr-0.001_seed-0" in combos
    for cid, params in combos.items():
        assert re.fullmatch(r"[A-Za-z0-9._x-]+", cid), cid  # a safe directory name
        assert combo_id(params) == cid
        assert isinstance(params["hidden"], list)
    assert len({tuple(sorted((k, str(v)) for k, v in p.items())) for p in combos.values()}) == 16


def test_ids_do_not_depend_on_dict_order():
    params = {"lr": 0.001, "embedding": "w2v", "hidden": [128], "dropout": 0.3, "seed": 2}
    reordered = dict(reversed(list(params.items())))
    assert combo_id(params) == combo_id(reordered) == "emb-w2v_h-128_do-0.3_lr-0.001_seed-2"
    grid_reordered = dict(reversed(list(MLP_GRID.items())))
    assert list(expand_family({"grid": grid_reordered})) == list(expand_family({"grid": MLP_GRID}))


def test_adding_a_value_adds_only_new_jobs():
    before = expand_family({"grid": MLP_GRID})
    after = expand_family({"grid": {**MLP_GRID, "dropout": [0.3, 0.7, 0.5]}})
    assert set(before) < set(after)
    new = set(after) - set(before)
    assert len(new) == 8 and all("_do-0.5_" in cid for cid in new)
    assert all(after[cid] == before[cid] for cid in before)


def test_seed_repeats_and_explicit_combinations():
    combos = expand_family(
        {"grid": {"hidden": [[64]], "seed": [0, 1, 2]}, "combinations": [{"hidden": [32, 16], "dropout": 0.5}]},
        defaults={"embedding": ["w2v"]},
        embeddings=["w2v"],
    )
    assert len(combos) == 4
    assert sorted(p["seed"] for p in combos.values() if p["hidden"] == [64]) == [0, 1, 2]
    extra = next(p for p in combos.values() if p["hidden"] == [32, 16])
    assert extra == {"embedding": "w2v", "hidden": [32, 16], "seed": 0, "dropout": 0.5}


def test_seeded_sample_is_stable_subset():
    full = expand_family({"grid": MLP_GRID})
    a = expand_family({"grid": MLP_GRID, "sample": 5})
    b = expand_family({"grid": MLP_GRID, "sample": 5})
    assert list(a) == list(b) and len(a) == 5 and set(a) <= set(full)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        combo_id({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="non-empty list"):
        expand_family({"grid": {"dropout": []}})
    with pytest.raises(ValueError, match="not configured"):
        expand_family({"grid": {"embedding": ["glove"]}}, defaults={"embedding": ["w2v"]}, embeddings=["w2v"])


# meli2019: the seeds' 16 MLP grid combinations + the input-tfidf MLP (issue 12).
@pytest.mark.parametrize("config, mlp, cnn", [("config/meli2019.yaml", 17, 32), ("config/config.yaml", 2, 1),
                                              ("config/meli2019-sample.yaml", 3, 1)])
def test_shipped_grids_cover_the_seeds(config, mlp, cnn):
    cfg = yaml.safe_load((ROOT / config).read_text())
    embeddings = sorted(cfg["embeddings"])
    counts = {f: len(expand_family(cfg["train"][f], defaults={"embedding": embeddings}, embeddings=embeddings,
                                   family=f)) for f in ("mlp", "cnn")}
    assert counts == {"mlp": mlp, "cnn": cnn}


def test_a_tfidf_input_mlp_has_no_embedding_in_its_id_or_grid():
    """input: tfidf does not use an embedding: one job (not one per embedding), no emb-/frz- in its id."""
    cfg = {"grid": {"input": ["embedding", "tfidf"], "hidden": [[64]], "freeze_embeddings": [False, True]}}
    combos = expand_family(cfg, defaults={"embedding": ["a", "b"]}, embeddings=["a", "b"], family="mlp")
    tfidf = [c for c, p in combos.items() if p["input"] == "tfidf"]
    assert tfidf == ["in-tfidf_h-64"]
    assert len(combos) == 1 + 2 * 2  # the embedding input still sweeps embedding x freeze
    assert all("emb-" in c for c, p in combos.items() if p["input"] == "embedding")
