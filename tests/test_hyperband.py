"""Hyperband (meli/search/hyperband.py) and the strategy interface: bracket arithmetic, the
partition of a finite grid into brackets, stages and inputs, summary, progress and tags."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meli import search
from meli.search import REGISTRY, Rung, SearchError, family_plan
from meli.search.hyperband import brackets, hash_order, partition

HB = {"strategy": "hyperband", "eta": 3, "min_epochs": 1}


def combos(n, epochs=20):
    return {f"c{i:02d}": {"lr": i, "epochs": epochs} for i in range(n)}


# ---------------------------------------------------------------------------- bracket arithmetic
def test_brackets_of_the_course_regime():
    """R = 20 epochs, eta 3, from 1 epoch: s_max = 2 (1 * 3**2 <= 20 < 3**3); brackets start at
    20 // 9 = 2, 20 // 3 = 6 and 20 epochs, sized ceil(3 / (s + 1) * 3**s) = 9, 5, 3."""
    assert brackets(3, 1, 20) == [(2, 2, 9), (1, 6, 5), (0, 20, 3)]
    assert brackets(2, 1, 6) == [(2, 1, 4), (1, 3, 3), (0, 6, 3)]
    # min_epochs is the floor of every starting budget
    assert brackets(3, 4, 20) == [(1, 6, 3), (0, 20, 2)]
    assert brackets(3, 20, 20) == [(0, 20, 1)]
    with pytest.raises(SearchError, match="eta"):
        brackets(1, 1, 20)


def test_partition_is_proportional_exact_and_deterministic():
    assert partition(27, [9, 5, 3]) == [14, 8, 5]  # 14.29, 7.94, 4.76: the two largest remainders round up
    assert partition(6, [4, 3, 3]) == [2, 2, 2]
    assert partition(2, [9, 5, 3]) == [1, 1, 0]
    for n in range(1, 60):
        counts = partition(n, [9, 5, 3])
        assert sum(counts) == n and all(abs(c - n * w / 17) < 1 for c, w in zip(counts, [9, 5, 3]))


def test_course_grid_plan_every_combination_in_one_bracket():
    cs = combos(27)
    p = family_plan("mlp", cs, HB)
    assert p.strategy is REGISTRY["hyperband"] and p.bracketed
    assert [(lad.bracket, len(lad.combos)) for lad in p.ladders] == [(2, 14), (1, 8), (0, 5)]
    assert sorted(p.combos) == sorted(cs) and len(set(p.combos)) == 27
    assert p.ladders[0].plan.rungs == (Rung(0, 14, 2), Rung(1, 4, 6), Rung(2, 1, None))
    assert p.ladders[1].plan.rungs == (Rung(0, 8, 6), Rung(1, 2, 18), Rung(2, 1, None))
    assert p.ladders[2].plan.rungs == (Rung(0, 5, None),)  # bracket 0: trained straight, as in a grid
    assert [s.key for s in p.stages()] == ["bracket-2/rung-0", "bracket-2/rung-1", "bracket-1/rung-0",
                                          "bracket-1/rung-1"]
    # upper bound: 14x2 + 4x4 + 1x14, 8x6 + 2x12 + 1x2, 5x20
    assert p.max_epochs_trained(20) == 58 + 74 + 100
    # which bracket: the grid ordered by sha256 of the ids, the most aggressive bracket first
    order = hash_order(list(cs))
    assert set(p.ladders[0].combos) == set(order[:14]) and set(p.ladders[2].combos) == set(order[22:])
    assert list(p.ladders[0].combos) == sorted(p.ladders[0].combos)  # configuration order within a bracket
    assert family_plan("mlp", dict(reversed(list(cs.items()))), HB).ladders[1].combos == tuple(
        reversed(p.ladders[1].combos))  # the same brackets whatever the configuration order


def test_stages_inputs_and_finals():
    p = family_plan("mlp", combos(27), HB)
    stage = p.stage("bracket-1/rung-1")
    assert (stage.bracket, stage.rung, stage.epochs, stage.combinations, stage.keep) == (1, 1, 18, 2, 1)
    assert stage.previous == "bracket-1/rung-0" and p.stage("bracket-2/rung-0").previous is None
    kept = {"bracket-2/rung-0": ["a", "b", "c", "d"], "bracket-2/rung-1": ["a"], "bracket-1/rung-0": ["x", "y"],
            "bracket-1/rung-1": ["y"]}
    assert p.entering("bracket-2/rung-0", kept.__getitem__) == list(p.ladders[0].combos)
    assert p.entering("bracket-2/rung-1", kept.__getitem__) == ["a", "b", "c", "d"]
    assert p.finals(kept.__getitem__) == ["a", "y", *p.ladders[2].combos]
    straight, aggressive = p.ladders[2].combos[0], p.ladders[0].combos[0]
    assert p.final_start(straight) is None and p.final_rung(straight) == 0
    assert p.final_start(aggressive) == "bracket-2/rung-1" and p.final_rung(aggressive) == 2
    with pytest.raises(SearchError, match="no stage 'bracket-0/rung-0'"):
        p.stage("bracket-0/rung-0")
    with pytest.raises(SearchError, match="not a combination"):
        p.ladder_of("zz")


@pytest.mark.parametrize("cfg, n, epochs", [(HB | {"min_epochs": 20}, 27, 20), (HB, 1, 20),
                                            ({"strategy": "halving", "min_epochs": 5}, 4, 5)])
def test_a_search_that_prunes_nothing_is_the_grid_and_says_so(cfg, n, epochs, caplog):
    assert family_plan("mlp", combos(n, epochs), cfg) is None
    assert not caplog.records
    assert family_plan("mlp", combos(n, epochs), cfg, warn=True) is None
    assert "prunes nothing for mlp" in caplog.text and "plain grid" in caplog.text


def test_registry_is_the_schema_enum_and_unknown_strategies_are_named():
    schema = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())
    enum = schema["properties"]["train"]["properties"]["search"]["properties"]["strategy"]["enum"]
    assert enum == list(REGISTRY) == list(search.STRATEGIES)
    with pytest.raises(SearchError, match="unknown strategy 'bohb'"):
        family_plan("mlp", combos(3), {"strategy": "bohb"})
    assert family_plan("tfidf", {"c": {"C": 1.0}}, HB) is None  # only neural families are searched


# ---------------------------------------------------------------------- selection and summary
def test_bracket_selection_summary_states_and_tags(tmp_path):
    from test_search import write_rung_record

    results = tmp_path / "results"
    p = family_plan("mlp", combos(6, epochs=6), {"strategy": "hyperband", "eta": 2, "min_epochs": 1})
    assert [(lad.bracket, len(lad.combos), len(lad.plan.rungs)) for lad in p.ladders] == [(2, 2, 2), (1, 2, 2),
                                                                                         (0, 2, 1)]
    (b2a, b2b), (b1a, b1b), (s1, s2) = (lad.combos for lad in p.ladders)
    stage = p.stage("bracket-2/rung-0")
    root = results / "search" / "mlp" / stage.key
    for combo, bacc in ((b2a, 0.3), (b2b, 0.6)):
        write_rung_record(root / combo, combo, bacc, 1.0)
    sel = search.select_rung([root / b2a, root / b2b], "mlp", 0, stage.keep, root / "selection.json",
                             root / "pruned", stage.epochs, stage.bracket)
    assert sel["bracket"] == 2 and sel["kept"] == [b2b] and sel["pruned"] == [b2a]
    pruned = json.loads((root / "pruned" / b2a / "metrics.json").read_text())
    assert pruned["bracket"] == 2 and pruned["pruned_at_rung"] == 0
    write_rung_record(results / "search" / "mlp" / "bracket-1" / "rung-0" / b1a, b1a, 0.5, 1.0)

    states = search.combination_states(results, "mlp", p.combos, p)
    assert states[b2a] == {"state": "pruned", "rung": 0, "bracket": 2}
    assert states[b2b] == {"state": "in search", "rung": 0, "bracket": 2}
    assert states[b1a] == {"state": "in search", "rung": 0, "bracket": 1}
    assert states[s1] == {"state": "in search", "rung": -1, "bracket": 0}

    # search.json: each bracket's survivors and the straight runs are final, with their bracket
    sel1 = results / "search" / "mlp" / "bracket-1" / "rung-0" / "selection.json"
    sel1.write_text(json.dumps({"family": "mlp", "bracket": 1, "rung": 0, "kept": [b1a], "pruned": [b1b]}))
    out = results / "search" / "mlp" / "search.json"
    summary = search.summarize("mlp", [sel1, root / "selection.json"], results / "runs" / "mlp", out,
                               {s1: 0, s2: 0})
    runs_dir = (results / "runs" / "mlp").as_posix()
    assert summary["final"] == [f"{runs_dir}/{c}" for c in (b1a, b2b, s1, s2)]
    assert [(Path(q["run_dir"]).name, q["bracket"], q["pruned_at_rung"]) for q in summary["pruned"]] == [
        (b1b, 1, 0), (b2a, 2, 0)]
    assert summary["final_brackets"][f"{runs_dir}/{s1}"] == 0
    # a final run's record gets its bracket from search.json (the trainer writes rung only)
    final = {"family": "mlp", "rung": 1, "pruned_at_rung": None}
    assert search.annotate(results / "runs" / "mlp" / b2b, final)["bracket"] == 2
    assert search.annotate(results / "runs" / "mlp" / "other", final) == final
    assert search.run_tags({**final, "bracket": 2}) == {"search": "final", "rung": "1", "bracket": "2"}
    assert search.run_tags(pruned) == {"search": "pruned", "rung": "0", "bracket": "2", "pruned_at_rung": "0"}
    assert search.stop_label(0, 2) == "pruned at bracket 2, rung 0" and search.stop_label(float("nan")) == "final"
    # a gap in a bracket's rungs is refused, naming the bracket
    with pytest.raises(SearchError, match="of bracket 1"):
        sel1.write_text(json.dumps({"family": "mlp", "bracket": 1, "rung": 1, "kept": [b1a], "pruned": []}))
        search.summarize("mlp", [sel1], results / "runs" / "mlp", out)


def test_mlflow_experiment_line_of_a_hyperband_search():
    records = [
        {"family": "mlp", "rung": 1, "bracket": 2, "pruned_at_rung": None, "epochs_run": 6, "params": {"epochs": 6}},
        {"family": "mlp", "rung": 0, "bracket": 2, "pruned_at_rung": 0, "epochs_run": 1, "params": {"epochs": 6}},
        {"family": "mlp", "rung": 0, "bracket": 0, "pruned_at_rung": None, "epochs_run": 5, "params": {"epochs": 6}},
    ]
    assert search.experiment_lines(records) == {"mlp": (
        "Hyperband over 3 combinations in 2 brackets: 2 trained to the end, 1 pruned (bracket 2, rung 0: 1); "
        "12 epochs trained against at most 18 for the full grid (67%)")}


# ------------------------------------------------------------------------------ report section
def _record(d: Path, combo: str, bacc: float, rung: int, pruned_at=None, bracket=None, epochs_run=2) -> Path:
    import pandas as pd

    from meli import runs

    d.mkdir(parents=True)
    pd.DataFrame({"epoch": range(1, epochs_run + 1), "train_loss": 1.0, "val_loss": 1.0, "val_bacc": bacc,
                  "samples_per_s": 1.0, "elapsed_s": 1.0}).to_csv(d / runs.HISTORY, index=False)
    runs.write_metrics(d, {
        "family": "mlp", "combo": combo, "params": {"lr": bacc, "epochs": 6}, "val_bacc": bacc, "val_loss": 1.0,
        "epochs_run": epochs_run, "best_epoch": 1, "final_train_loss": 1.0, "train_time_s": 1.0,
        "samples_per_s": 1.0, "peak_mem_mb": 1, "device": "cpu", "n_train": 1, "n_val": 1, "n_classes": 2,
        "stopped_early": False, "finished_at": "2026-01-01T00:00:00.000001+00:00", "rung": rung,
        "pruned_at_rung": pruned_at, **({} if bracket is None else {"bracket": bracket})})
    return d


@pytest.mark.parametrize("strategy", ["halving", "hyperband"])
def test_report_search_section(tmp_path, strategy):
    """The Search section and the comparison's labels, from runs.csv, for either strategy (a Hyperband
    final run whose bracket is not known yet -- no search.json mid-search -- gets a dash)."""
    from meli.report import aggregate
    from meli.report.search import section_search
    from meli.report.sections import Results, section_comparison

    root = tmp_path / "results"
    if strategy == "halving":
        dirs = [_record(root / "search/mlp/rung-0/pruned/a", "a", 0.2, 0, 0),
                _record(root / "search/mlp/rung-1/pruned/b", "b", 0.4, 1, 1, epochs_run=4),
                _record(root / "runs/mlp/c", "c", 0.5, 2, epochs_run=6)]
    else:
        dirs = [_record(root / "search/mlp/bracket-1/rung-0/pruned/a", "a", 0.2, 0, 0, bracket=1),
                _record(root / "runs/mlp/b", "b", 0.4, 1, epochs_run=6),  # bracket 1's survivor: search.json says so
                _record(root / "runs/mlp/c", "c", 0.5, 0, epochs_run=6)]  # bracket 0: not in search.json yet
        (root / "search/mlp/search.json").write_text(json.dumps({"final_brackets": {"results/runs/mlp/b": 1}}))
    aggregate.aggregate([str(d) for d in dirs], root / "tables")
    r = Results(root)
    html, comparison = section_search(r), section_comparison(r)
    if strategy == "halving":
        assert "successive halving over 3 combinations" in html and "Hyperband" not in html
        assert "pruned at rung 0" in html and "pruned at rung 1" in comparison
    else:
        assert "Hyperband over 3 combinations in 1 brackets" in html and "pruned at bracket 1, rung 0" in comparison
        assert "<td>1</td>" in html  # the bracket column
    spent = 2 + 4 + 6 if strategy == "halving" else 2 + 6 + 6
    assert f"{spent} epochs trained in all" in html and "against at most 18 for the full grid" in html
