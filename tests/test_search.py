"""Successive halving: the rung arithmetic, the selection, a rung's records, and training continued
rung by rung (which must end exactly like one uninterrupted run)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from meli import runs, search
from meli.search import Rung, SearchError, plan, rank, select, select_rung
from meli.train.neural import StartStateError, run
from test_train import MLP, make_features


# ---------------------------------------------------------------------------- rung arithmetic
def test_plan_27_combinations_eta_3():
    p = plan(27, eta=3, min_epochs=1, max_epochs=20)
    assert p.rungs == (Rung(0, 27, 1), Rung(1, 9, 3), Rung(2, 3, 9), Rung(3, 1, None))
    assert p.final == 3 and [p.keep(r) for r in range(3)] == [9, 3, 1]
    # 27 x 1 + 9 x 2 + 3 x 6 + 1 x 11 epochs, against 27 x 20 for the grid
    assert p.max_epochs_trained(20) == 27 + 18 + 18 + 11 == 74
    with pytest.raises(SearchError, match="promotes nothing"):
        p.keep(3)


def test_plan_stops_at_the_configured_epochs_and_floors_survivors():
    # budget 9 >= 5 epochs: the third rung is the last, 3 survivors trained to 5 epochs
    assert plan(27, 3, 1, 5).rungs == (Rung(0, 27, 1), Rung(1, 9, 3), Rung(2, 3, None))
    # 16 -> 5 -> 1 (floor), at least one survivor: 4 // 3 = 1, 2 // 3 -> 1
    assert [r.combinations for r in plan(16, 3, 1, 100).rungs] == [16, 5, 1]
    assert [r.combinations for r in plan(2, 3, 1, 100).rungs] == [2, 1]
    assert plan(8, 2, 2, 100).rungs == (Rung(0, 8, 2), Rung(1, 4, 4), Rung(2, 2, 8), Rung(3, 1, None))


@pytest.mark.parametrize("n, min_epochs, max_epochs", [(1, 1, 10), (5, 10, 10), (5, 12, 10)])
def test_plan_degenerates_to_the_grid(n, min_epochs, max_epochs):
    """One combination, or a first rung as long as the training: one rung, the grid."""
    p = plan(n, 3, min_epochs, max_epochs)
    assert p.final == 0 and p.rungs == (Rung(0, n, None),)
    assert p.max_epochs_trained(max_epochs) == n * max_epochs


@pytest.mark.parametrize("kwargs", [dict(eta=1), dict(min_epochs=0), dict(n_combinations=0), dict(eta=2.5)])
def test_plan_rejects_bad_settings(kwargs):
    args = {"n_combinations": 9, "eta": 3, "min_epochs": 1, "max_epochs": 10, **kwargs}
    with pytest.raises(SearchError, match=next(iter(kwargs))):
        plan(**args)


# -------------------------------------------------------------------------------- selection
def rec(combo, bacc, loss=1.0):
    return {"combo": combo, "val_bacc": bacc, "val_loss": loss}


def test_rank_by_bacc_then_lower_loss_then_combination_id():
    records = [rec("b", 0.5, 1.0), rec("a", 0.5, 1.0), rec("c", 0.5, 0.9), rec("d", 0.6, 5.0),
               rec("e", float("nan")), rec("f", 0.5, None)]
    assert [r["combo"] for r in rank(records)] == ["d", "c", "a", "b", "f", "e"]
    kept, pruned = select(records, 2)
    assert [r["combo"] for r in kept] == ["d", "c"] and [r["combo"] for r in pruned] == ["a", "b", "f", "e"]
    assert select(records[:1], 3) == (records[:1], [])
    with pytest.raises(SearchError, match="twice"):
        select([rec("a", 0.1), rec("a", 0.2)], 1)
    with pytest.raises(SearchError):
        select(records, 0)


def write_rung_record(run_dir, combo, bacc, loss, rung=0, family="mlp"):
    run_dir.mkdir(parents=True)
    pd.DataFrame({c: [1] for c in runs.HISTORY_COLUMNS}).to_csv(run_dir / runs.HISTORY, index=False)
    (run_dir / search.SNAPSHOT).write_bytes(b"state")
    runs.write_metrics(run_dir, {"family": family, "combo": combo, "params": {"lr": bacc}, "val_bacc": bacc,
                                 "val_loss": loss, "rung": rung, "epochs_run": 1, "finished_at": "t"})


def test_select_rung_records_the_pruned_and_frees_their_state(tmp_path):
    rung_dir = tmp_path / "search" / "mlp" / "rung-0"
    values = {"c1": (0.4, 1.0), "c2": (0.7, 1.0), "c3": (0.7, 0.8), "c4": (0.1, 2.0)}
    for combo, (bacc, loss) in values.items():
        write_rung_record(rung_dir / combo, combo, bacc, loss)
    sel = select_rung([rung_dir / c for c in values], "mlp", 0, 2, rung_dir / "selection.json", rung_dir / "pruned", 1)
    assert sel["kept"] == ["c3", "c2"] and sel["pruned"] == ["c1", "c4"]
    assert json.loads((rung_dir / "selection.json").read_text()) == sel
    assert [r["kept"] for r in sel["ranking"]] == [True, True, False, False]
    for combo in ("c1", "c4"):
        record = runs.read_metrics(rung_dir / "pruned" / combo)
        assert record["pruned_at_rung"] == 0 and record["val_bacc"] == values[combo][0]
        assert (rung_dir / "pruned" / combo / runs.HISTORY).exists()
        assert not (rung_dir / combo / search.SNAPSHOT).exists()
    assert all((rung_dir / c / search.SNAPSHOT).exists() for c in ("c2", "c3"))
    assert sorted(p.name for p in rung_dir.iterdir()) == ["c1", "c2", "c3", "c4", "pruned", "selection.json"]
    # a record of another rung is refused, naming the file
    write_rung_record(tmp_path / "x", "x", 0.5, 1.0, rung=1)
    with pytest.raises(SearchError, match="x/metrics.json"):
        select_rung([tmp_path / "x"], "mlp", 0, 1, tmp_path / "s.json", tmp_path / "p")


def test_combination_states_pruned_is_not_missing(tmp_path):
    p = plan(4, 2, 1, 10)  # 4 -> 2 -> 1
    results = tmp_path / "results"
    for combo in ("a", "b", "c", "d"):
        write_rung_record(results / "search" / "mlp" / "rung-0" / combo, combo, 0.5, 1.0)
    (results / "search" / "mlp" / "rung-0" / "selection.json").write_text(
        json.dumps({"family": "mlp", "rung": 0, "kept": ["a", "b"], "pruned": ["c", "d"]}))
    write_rung_record(results / "search" / "mlp" / "rung-1" / "a", "a", 0.5, 1.0, rung=1)
    states = search.combination_states(results, "mlp", ["a", "b", "c", "d", "e"], p)
    assert states == {"a": {"state": "in search", "rung": 1}, "b": {"state": "in search", "rung": 0},
                      "c": {"state": "pruned", "rung": 0}, "d": {"state": "pruned", "rung": 0},
                      "e": {"state": "in search", "rung": -1}}
    (results / "runs" / "mlp" / "a").mkdir(parents=True)
    (results / "runs" / "mlp" / "a" / "metrics.json").write_text("{}")
    assert search.combination_states(results, "mlp", ["a"], p)["a"] == {"state": "final", "rung": 2}


# ------------------------------------------------------------------ training continued by rung
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_features(tmp_path_factory.mktemp("toy"))


def test_rungs_continue_from_the_previous_state_and_end_like_one_run(toy, tmp_path):
    """Rung 0 (1 epoch), rung 1 (to epoch 3), last rung (to 5): the same run as 5 epochs in one job."""
    features, matrix = toy
    params = {**MLP, "epochs": 5, "patience": 5}
    straight = run("mlp", params, features, matrix, tmp_path / "runs" / "mlp" / "straight", "cpu", 1)

    r0, r1 = (tmp_path / "search" / "mlp" / f"rung-{r}" / "c" for r in (0, 1))
    m0 = run("mlp", params, features, matrix, r0, "cpu", 1, tmp_path / "ck", until_epoch=1,
             snapshot=r0 / "checkpoint.pt", rung=0)
    assert m0["epochs_run"] == 1 and m0["rung"] == 0 and "pruned_at_rung" not in m0
    assert sorted(p.name for p in r0.iterdir()) == ["checkpoint.pt", "history.csv", "metrics.json"]
    m1 = run("mlp", params, features, matrix, r1, "cpu", 1, tmp_path / "ck", until_epoch=3,
             start_from=r0 / "checkpoint.pt", snapshot=r1 / "checkpoint.pt", rung=1)
    assert m1["epochs_run"] == 3 and len(pd.read_csv(r1 / "history.csv")) == 3 and m1["resumed_from_epoch"] == 1
    final_dir = tmp_path / "runs" / "mlp" / "halved"
    final = run("mlp", params, features, matrix, final_dir, "cpu", 1, tmp_path / "ck", start_from=r1 / "checkpoint.pt",
                rung=2)
    assert final["rung"] == 2 and final["pruned_at_rung"] is None and final["resumed_from_epoch"] == 3
    for key in ("val_bacc", "val_loss", "final_train_loss", "best_epoch", "epochs_run", "stopped_early"):
        assert final[key] == straight[key], key
    cols = ["epoch", "train_loss", "val_loss", "val_bacc"]
    pd.testing.assert_frame_equal(pd.read_csv(final_dir / "history.csv")[cols],
                                  pd.read_csv(tmp_path / "runs" / "mlp" / "straight" / "history.csv")[cols])
    wa, wb = (torch.load(d / "model.pt", weights_only=True)["state_dict"]
              for d in (final_dir, tmp_path / "runs" / "mlp" / "straight"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (tmp_path / "ck").exists()

    # another combination's state is refused, naming the file
    with pytest.raises(StartStateError, match="rung-0/c/checkpoint.pt"):
        run("mlp", {**params, "lr": 0.02}, features, matrix, tmp_path / "o", "cpu", 1, tmp_path / "ck2",
            until_epoch=3, start_from=r0 / "checkpoint.pt", snapshot=tmp_path / "o" / "checkpoint.pt", rung=1)


def test_summary_lists_final_then_pruned_run_dirs(tmp_path):
    sels = []
    for rung, kept, pruned in ((0, ["a", "b"], ["c", "d"]), (1, ["a"], ["b"])):
        path = tmp_path / "search" / "mlp" / f"rung-{rung}" / "selection.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"family": "mlp", "rung": rung, "kept": kept, "pruned": pruned}))
        sels.append(path)
    out = tmp_path / "search" / "mlp" / "search.json"
    summary = search.summarize("mlp", sels[::-1], "results/runs/mlp", out)
    assert summary["final"] == ["results/runs/mlp/a"]
    assert [(p["run_dir"].split("search/")[1], p["pruned_at_rung"]) for p in summary["pruned"]] == [
        ("mlp/rung-0/pruned/c", 0), ("mlp/rung-0/pruned/d", 0), ("mlp/rung-1/pruned/b", 1)]
    assert search.read_summary(out)["run_dirs"][0] == "results/runs/mlp/a"
    with pytest.raises(SearchError, match="rungs 0..0"):
        search.summarize("mlp", sels[1:], "results/runs/mlp", out)


def test_mlflow_search_tags():
    from meli.tracking import search_tags

    assert search_tags({"val_bacc": 0.5}) == {}
    assert search_tags({"rung": 2, "pruned_at_rung": None}) == {"search": "final", "rung": "2"}
    assert search_tags({"rung": 0, "pruned_at_rung": 0}) == {"search": "pruned", "rung": "0", "pruned_at_rung": "0"}


def test_sweep_counts_pruned_combinations_as_finished_not_missing(tmp_path):
    """meli.sweep (make report, partial reports) under halving: pruned is not missing."""
    from meli import sweep

    results = tmp_path / "results"
    combos = {c: {"lr": i / 100, "epochs": 6} for i, c in enumerate("abcd", 1)}
    sweep.write_manifest(results, {"mlp": combos}, {"train": {"search": {"strategy": "halving", "eta": 2}}}, [])
    for combo in combos:
        write_rung_record(results / "search" / "mlp" / "rung-0" / combo, combo, 0.5, 1.0)
    sel = select_rung([results / "search" / "mlp" / "rung-0" / c for c in combos], "mlp", 0, 2,
                      results / "search" / "mlp" / "rung-0" / "selection.json",
                      results / "search" / "mlp" / "rung-0" / "pruned", 1)
    s = sweep.scan(results)
    states = {c.combo: c.state for c in s.combinations}
    assert {states[c] for c in sel["pruned"]} == {sweep.PRUNED}
    assert {states[c] for c in sel["kept"]} == {sweep.NOT_RUN}
    assert s.counts == {"done": 0, "running": 0, "failed": 0, "left": 2, "pruned": 2}
    assert sorted(c.combo for c in s.missing) == sorted(sel["kept"])
    assert "in the search: rung 0 done" in sweep.progress_text(s) and "pruned 2" in sweep.progress_text(s)


def test_mlflow_experiment_summary_of_a_search():
    """The experiment's ``search.<family>`` tag: where the pruned runs stopped, epochs against the grid."""
    from meli.tracking import search_summaries

    records = [
        {"family": "mlp", "rung": 2, "pruned_at_rung": None, "epochs_run": 6, "params": {"epochs": 6}},
        {"family": "mlp", "rung": 1, "pruned_at_rung": 1, "epochs_run": 4, "params": {"epochs": 6}},
        {"family": "mlp", "rung": 0, "pruned_at_rung": 0, "epochs_run": 2, "params": {"epochs": 6}},
        {"family": "mlp", "rung": 0, "pruned_at_rung": 0, "epochs_run": 2, "params": {"epochs": 6}},
        {"family": "cnn", "epochs_run": 3, "params": {"epochs": 3}},  # a grid family: no line
    ]
    assert search_summaries(records) == {"mlp": (
        "successive halving over 4 combinations: 1 trained to the end, 3 pruned (rung 0: 2, rung 1: 1); "
        "14 epochs trained against at most 24 for the full grid (58%)")}

