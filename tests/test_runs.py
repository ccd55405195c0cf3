"""The run record (meli.runs), the CLI convention (meli.cli) and the one metric (meli.metrics)."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from meli import runs
from meli.cli import MeliError, entry_point
from meli.metrics import balanced_accuracy

RECORD = {"family": "mlp", "combo": "emb-w2v", "params": {"embedding": "w2v"}, "val_bacc": 0.5}


def test_record_round_trip_and_one_finished_at_format(tmp_path: Path):
    run = tmp_path / "results" / "runs" / "mlp" / "emb-w2v"
    run.mkdir(parents=True)
    stamp = runs.finished_at()
    assert datetime.fromisoformat(stamp).tzinfo is not None and len(stamp.split(".")[1]) == 6 + 6  # us + offset
    runs.write_metrics(run, {**RECORD, "finished_at": stamp})
    assert runs.read_metrics(run)["finished_at"] == stamp
    assert not list(run.glob("*.tmp*"))  # written atomically
    assert runs.results_root(run) == (tmp_path / "results").resolve()
    with pytest.raises(ValueError, match="lacks"):
        runs.write_metrics(run, RECORD)  # a trainer forgetting finished_at is a bug


@pytest.mark.parametrize(("content", "match"), [
    (None, "did not finish"),
    ("{", "not valid JSON"),
    ("[1]", "JSON object"),
    (json.dumps({**RECORD, "finished_at": "x", "val_bacc": float("nan")}), "finite"),
    (json.dumps({**RECORD, "finished_at": "x", "params": [1]}), "params"),
    (json.dumps(RECORD), r"missing key\(s\) \['finished_at'\]"),
])
def test_bad_records_name_the_file_and_the_problem(tmp_path: Path, content, match):
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(runs.RunError, match=match) as info:
        runs.read_metrics(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert isinstance(info.value, MeliError)


def test_history_columns_are_checked(tmp_path: Path):
    (tmp_path / "history.csv").write_text("epoch,val_bacc\n1,0.5\n")
    with pytest.raises(runs.RunError, match="missing column"):
        runs.read_history(tmp_path)


def test_run_dirs_in_selection_resolve_from_the_workflow_root(tmp_path: Path, monkeypatch):
    run = tmp_path / "results" / "runs" / "cnn" / "c1"
    run.mkdir(parents=True)
    selection = tmp_path / "results" / "tables" / "selection.json"
    monkeypatch.chdir(tmp_path.parent)
    assert runs.resolve_run_dir("results/runs/cnn/c1", selection) == tmp_path.resolve() / "results/runs/cnn/c1"
    assert runs.resolve_run_dir("nowhere", selection) == Path("nowhere")


def test_entry_point_turns_user_errors_into_a_message_and_exit_code(capsys):
    class Bad(MeliError):
        exit_code = 3

    @entry_point
    def main(argv=None):
        if argv == ["bug"]:
            raise KeyError("a bug keeps its traceback")
        if argv:
            raise Bad("results/x.json: key `y` missing; rerun z")
        return None

    assert main([]) == 0
    assert main(["x"]) == 3
    assert "error: results/x.json: key `y` missing; rerun z" in capsys.readouterr().err
    with pytest.raises(KeyError):
        main(["bug"])


def test_balanced_accuracy_is_sklearns_and_empty_is_nan():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 200)
    pred = np.where(rng.random(200) < 0.5, y, rng.integers(0, 7, 200))
    with pytest.warns(UserWarning):
        assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert np.isnan(balanced_accuracy(np.array([], int), np.array([], int)))
