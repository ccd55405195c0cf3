"""meli.predict: top-k categories for new titles, from a run directory or a family's selection."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from meli import predict
from meli.report import aggregate
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


# --------------------------------------------------------------- a real (tiny) trained model
@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    """results/ with a really trained MLP (the training tests' toy features), no fakes."""
    toy = pytest.importorskip("tests.test_train", reason="training tests' toy-feature factory not available")
    from meli.train.neural import run as train_run

    root = tmp_path_factory.mktemp("real")
    results = root / "results"
    features, matrix = toy.make_features(results)
    run_dir = results / "runs" / "mlp" / "toy-mlp"
    train_run("mlp", {**toy.MLP, "epochs": 3}, features, matrix, run_dir, "cpu", 1)
    (results / "data").mkdir()
    (results / "data" / "summary.json").write_text(json.dumps({"preprocess": {"lowercase": True,
                                                                              "strip_punctuation": True}}))
    n_test = len(np.load(features / "test_labels.npy"))
    import pandas as pd

    pd.DataFrame({"title": ["t"] * n_test, "label_quality": ["reliable", "unreliable"] * (n_test // 2)}
                 ).to_parquet(results / "data" / "test.parquet")
    return root, run_dir, toy


def test_predict_with_a_real_model(real_results, capsys):
    pytest.importorskip("meli.embeddings.features")
    root, run_dir, toy = real_results
    # A title made of class c's words must come out as CAT_c (the toy task is learnable).
    titles = [" ".join(toy.token(c, j).upper() for j in range(5)) for c in range(4)]
    assert predict.main(["--run", str(run_dir), "--device", "cpu", "--json", "--top-k", "4", *titles]) == 0
    out = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["top"][0]["category"] for p in out] == [f"CAT_{c}" for c in range(4)]
    for p in out:
        assert sum(t["probability"] for t in p["top"]) == pytest.approx(1.0, abs=1e-4)


def test_evaluate_cli_with_a_real_model(real_results):
    from meli.report import evaluate

    root, run_dir, _ = real_results
    results = root / "results"
    aggregate.aggregate([run_dir], results / "tables")
    assert evaluate.main(["--selection", str(results / "tables" / "selection.json"), "--data-dir",
                          str(results / "data"), "--features", str(results / "features"), "--config",
                          json.dumps({"bootstrap": 100}), "--device", "cpu", "--out-dir", str(results / "tables")]) == 0
    import pandas as pd

    test = pd.read_csv(results / "tables" / "test.csv")
    y = np.load(results / "features" / "test_labels.npy")
    assert list(test["family"]) == ["mlp"] and test.loc[0, "n_unseen_category"] == int((y < 0).sum())
    assert 0.5 < test.loc[0, "test_bacc"] <= 1 and test.loc[0, "bacc_ci_low"] <= test.loc[0, "test_bacc"]
    assert {"bacc_reliable", "bacc_unreliable"} <= set(test.columns)
