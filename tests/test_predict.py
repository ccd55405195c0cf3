"""meli.predict: top-k categories for new titles, from a run directory or a family's selection."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from meli import aggregate, predict
from tests.test_aggregate import CATEGORIES, FakePredictor, make_runs


def test_top_k_order_and_ties():
    proba = np.array([[0.1, 0.5, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]])
    ranked = predict.top_k(proba, ["a", "b", "c", "d"], 3)
    assert ranked[0] == [("b", 0.5), ("c", 0.2), ("d", 0.2)]
    assert [c for c, _ in ranked[1]] == ["a", "b", "c"]
    assert len(predict.top_k(proba, ["a", "b", "c", "d"], 10)[0]) == 4
    with pytest.raises(ValueError, match="4 categories"):
        predict.top_k(proba[:, :3], ["a", "b", "c", "d"], 2)


def test_format_text_is_aligned():
    text = predict.format_text(["t1", "t2"], [[("CELULARES", 0.9), ("AUDIO", 0.05)], [("MOTOS", 0.5), ("X", 0.25)]])
    lines = [line for line in text.splitlines() if line.startswith("  ")]
    assert lines[0] == "  1. CELULARES   90.00%"
    assert len({line.index("%") for line in lines}) == 1, "probabilities in one column"


@pytest.fixture
def runs(tmp_path, monkeypatch):
    results = tmp_path / "results"
    dirs = make_runs(results)
    monkeypatch.chdir(tmp_path)
    aggregate.aggregate([str(d.relative_to(tmp_path)) for d in dirs], "results/tables")
    return results


def test_family_uses_the_selected_run_and_json(runs, capsys):
    assert predict.main(["--family", "cnn", "--json", "--top-k", "2", "Celular Samsung", "Taladro"],
                        load_predictor=FakePredictor) == 0
    out = json.loads(capsys.readouterr().out)
    selected = json.loads((runs / "tables" / "selection.json").read_text())["families"]["cnn"]["combo"]
    assert out["run"].endswith(selected)
    assert [p["title"] for p in out["predictions"]] == ["Celular Samsung", "Taladro"]
    for p in out["predictions"]:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True)
        assert all(t["category"] in CATEGORIES for t in p["top"])


def test_file_and_stdin(runs, tmp_path, capsys, monkeypatch):
    run = next((runs / "runs" / "mlp").iterdir())
    titles = tmp_path / "titles.txt"
    titles.write_text("uno dos\n\n  tres cuatro  \n")
    assert predict.main(["--run", str(run), "--file", str(titles), "--top-k", "3"], load_predictor=FakePredictor) == 0
    out = capsys.readouterr().out
    assert "uno dos\n  1. " in out and "tres cuatro\n" in out and out.count("%") == 6
    monkeypatch.setattr(sys, "stdin", io.StringIO("cinco\n"))
    assert predict.main(["--run", str(run), "--file", "-"], load_predictor=FakePredictor) == 0
    assert capsys.readouterr().out.count("%") == 5


def test_clear_errors(runs, capsys):
    assert predict.main(["--family", "svm", "x"], load_predictor=FakePredictor) == 2
    assert "no selected run for family 'svm'" in capsys.readouterr().err
    assert predict.main(["--run", "results/runs/mlp/nope", "x"], load_predictor=FakePredictor) == 2
    assert "does not exist" in capsys.readouterr().err
    assert predict.main(["--family", "mlp"], load_predictor=FakePredictor) == 2
    assert "no titles" in capsys.readouterr().err
