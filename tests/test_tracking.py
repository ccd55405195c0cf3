"""MLflow import: concurrent jobs write records, one importer loads them; nothing lost or duplicated."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meli import tracking
from meli.grid import combo_id
from meli.io import atomic_path, write_json

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "tiny-test"


def write_run(run_dir: str, epochs: int, seed: int, finished: str | None = None) -> None:
    """What a training job leaves behind (docs/design.md contract), written atomically."""
    rng = np.random.default_rng(seed)
    run = Path(run_dir)
    family = run.parent.name
    params = {"hidden": [32, 16], "dropout": 0.2, "lr": 0.01, "seed": seed}
    history = pd.DataFrame({
        "epoch": np.arange(1, epochs + 1),
        "train_loss": np.sort(rng.random(epochs))[::-1] + 1,
        "val_loss": np.sort(rng.random(epochs))[::-1] + 1,
        "val_bacc": np.sort(rng.random(epochs)),
        "samples_per_s": rng.random(epochs) * 1e5,
        "elapsed_s": np.arange(1, epochs + 1) * 2.0,
    })
    with atomic_path(run / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    with atomic_path(run / "val_predictions.parquet") as tmp:
        pd.DataFrame({"label": [0, 1], "pred": [0, 0], "prob": [0.9, 0.6]}).to_parquet(tmp)
    (run / "model.pt").write_bytes(b"weights")
    best = int(history["val_bacc"].idxmax())
    write_json(run / "metrics.json", {
        "family": family, "combo": run.name, "params": params, "epochs_run": epochs, "best_epoch": best + 1,
        "val_bacc": float(history["val_bacc"][best]), "val_loss": float(history["val_loss"][best]),
        "final_train_loss": float(history["train_loss"].iloc[-1]), "train_time_s": 2.0 * epochs,
        "samples_per_s": 5e4, "peak_mem_mb": 300.0, "device": "cpu", "n_train": 100, "n_val": 20,
        "n_classes": 4, "stopped_early": False,
        "finished_at": finished or datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    })


def _job(args: tuple[str, int, int]) -> str:
    write_run(*args)
    return args[0]


def make_runs(root: Path, n: int, epochs: int) -> list[str]:
    """``n`` run directories written by ``n`` concurrent processes."""
    jobs = [
        (str(root / ("mlp" if i % 2 else "cnn") / combo_id({"dropout": 0.1 * (i + 1), "seed": i})), epochs + i, i)
        for i in range(n)
    ]
    # spawn, not fork: forking a pytest process whose earlier tests started threads (MLflow, torch)
    # can copy a held lock into a worker, which then hangs forever (seen once under load).
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        return pool.map_async(_job, jobs).get(timeout=300)


def client_for(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking.default_uri(store))


def active_runs(store: Path) -> list:
    client = client_for(store)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_concurrent_jobs_then_import_is_complete_and_idempotent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray default store would land here, not in the checkout
    store, out = tmp_path / "mlflow", tmp_path / "mlflow" / "imported.json"
    runs = make_runs(tmp_path / "runs", n=6, epochs=3)

    first = tracking.import_runs(runs, EXPERIMENT, "", store, out, dataset="tiny")
    assert sorted(first["imported"]) == sorted(runs) and first["skipped"] == []
    assert json.loads(out.read_text()) == first
    assert first["ui"] == f"mlflow ui --backend-store-uri sqlite:///{(store / 'mlflow.db').resolve()}"

    # What `mlflow ui` shows: a fresh client on the same store.
    client = client_for(store)
    experiments = client.search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", EXPERIMENT]
    assert client.search_runs(["0"]) == []  # nothing filed under Default
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.artifact_location == (store / "artifacts").resolve().as_uri()
    found = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(found) == 6
    for run_dir in runs:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        run = client.get_run(first["runs"][run_dir])
        # the family first: MLP and CNN runs differ even where the UI truncates the name
        assert run.info.run_name == f"{metrics['family']} · {metrics['combo']}" and run.info.status == "FINISHED"
        assert run.data.tags["family"] == metrics["family"] and run.data.tags["dataset"] == "tiny"
        assert run.data.tags["finished_at"] == metrics["finished_at"]
        assert run.data.params["hidden"] == "[32, 16]" and run.data.params["dropout"] == str(metrics["params"]["dropout"])
        # val_bacc in the runs table is the best epoch's (what selection uses), not the last epoch's
        history = pd.read_csv(Path(run_dir) / "history.csv")
        assert run.data.metrics["val_bacc"] == pytest.approx(metrics["val_bacc"]) == pytest.approx(
            history["val_bacc"].max())
        assert run.data.metrics["best_val_bacc"] == pytest.approx(metrics["val_bacc"])
        for name in ("train_loss", "val_loss", "val_bacc", "samples_per_s"):
            series = client.get_metric_history(run.info.run_id, f"epoch/{name}")
            assert sorted(m.step for m in series) == list(history["epoch"])
            assert sorted(m.value for m in series) == pytest.approx(sorted(history[name]))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"metrics.json", "history.csv", "val_predictions.parquet"}  # no model by default

    # Rerunning adds nothing.
    second = tracking.import_runs(runs, EXPERIMENT, "", store, out)
    assert second["imported"] == [] and sorted(second["skipped"]) == sorted(runs)
    assert second["runs"] == first["runs"] and len(active_runs(store)) == 6

    # Re-training one run re-imports only that one and retires the old record.
    retrained = runs[2]
    write_run(retrained, epochs=7, seed=99)
    third = tracking.import_runs(runs, EXPERIMENT, "", store, out, log_models=True)
    assert third["imported"] == [retrained] and len(third["skipped"]) == 5
    assert third["replaced"] == [first["runs"][retrained]]
    assert len(active_runs(store)) == 6
    new_id = third["runs"][retrained]
    assert len(client.get_metric_history(new_id, "epoch/val_bacc")) == 7
    assert "model.pt" in {a.path for a in client.list_artifacts(new_id)}
    assert client.get_run(first["runs"][retrained]).info.lifecycle_stage == "deleted"


def test_interrupted_import_is_redone(tmp_path):
    store, out = tmp_path / "mlflow", tmp_path / "imported.json"
    [run_dir] = make_runs(tmp_path / "runs", n=1, epochs=2)
    client = client_for(store)
    exp_id = tracking.get_or_create_experiment(client, EXPERIMENT, None)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    # A half-written run from a killed importer: tagged (with this results/'s id and the dataset, as
    # create_run gets them), but without the final finished_at tag.
    partial = client.create_run(exp_id, tags={"family": metrics["family"], "combo": metrics["combo"],
                                              tracking.WORKFLOW_TAG: tracking.workflow_id(store.parent),
                                              tracking.DATASET_SHA_TAG: "unknown"})
    result = tracking.import_runs([run_dir], EXPERIMENT, "", store, out)
    assert result["imported"] == [run_dir] and result["replaced"] == [partial.info.run_id]
    assert [r.info.run_id for r in active_runs(store)] == [result["runs"][run_dir]]


def test_bad_run_directory_is_named(tmp_path):
    [run_dir] = make_runs(tmp_path / "runs", n=1, epochs=2)
    (Path(run_dir) / "history.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(ValueError, match=r"history\.csv: missing column"):
        tracking.import_runs([run_dir], EXPERIMENT, "", tmp_path / "mlflow", tmp_path / "i.json")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        tracking.import_runs([tmp_path / "nope"], EXPERIMENT, "", tmp_path / "mlflow", tmp_path / "i.json")
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()  # nothing touched before the records are checked


def test_two_imports_racing_on_a_fresh_store(tmp_path):
    """Two workflows launched at once: the lock serialises them; one experiment, no duplicates."""
    store = tmp_path / "mlflow"
    runs = make_runs(tmp_path / "runs", n=3, epochs=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "meli.tracking", "import", "--experiment", EXPERIMENT, "--tracking-uri=",  # as the rule passes it
             "--store-dir", str(store), "--out", str(tmp_path / f"imported{i}.json"), *runs],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    # Generous: each importer loads MLflow (10-40 s on a loaded 2-core runner) and the second
    # waits for the first; this checks serialisation, not speed.
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    logs = "".join(err for _, err in outputs)
    assert f"mlflow ui --backend-store-uri sqlite:///{(store / 'mlflow.db').resolve()}" in logs
    results = [json.loads((tmp_path / f"imported{i}.json").read_text()) for i in range(2)]
    assert sorted(len(r["imported"]) for r in results) == [0, 3]
    assert results[0]["runs"] == results[1]["runs"]
    client = client_for(store)
    assert sorted(e.name for e in client.search_experiments()) == ["Default", EXPERIMENT]
    assert len(active_runs(store)) == 3
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


SUMMARY = {"source": {"path": "results/data/source/demo.csv.gz", "sha256": "ab" * 32},
           "rows": {"train": 100, "validation": 20, "test": 20}, "categories": {"count": 4}}


def test_experiment_opens_on_runs_with_dataset_and_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = tmp_path / "data" / "summary.json"
    write_json(summary, SUMMARY)
    runs = make_runs(tmp_path / "runs", n=2, epochs=2)
    root_commit = tracking.git_commit(ROOT)
    if (ROOT / ".git").exists() and root_commit:
        assert len(root_commit.removesuffix("-dirty")) == 40
    assert tracking.git_commit(tmp_path) is None  # a copied workflow: no tag rather than a wrong one
    monkeypatch.setattr(tracking, "git_commit", lambda cwd=".": "f" * 40)
    result = tracking.import_runs(runs, EXPERIMENT, "", tmp_path / "mlflow", tmp_path / "mlflow" / "i.json",
                                  dataset="tiny", summary=summary)
    client = client_for(tmp_path / "mlflow")
    exp = client.get_experiment(result["experiment_id"])
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI landing page
    for run_id in result["runs"].values():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.source.git.commit"] == "f" * 40
        [inp] = run.inputs.dataset_inputs
        assert inp.dataset.name == "tiny" and inp.dataset.digest == ("ab" * 32)[:32]
        assert json.loads(inp.dataset.profile)["rows"] == SUMMARY["rows"]
        assert {(t.key, t.value) for t in inp.tags} == {("mlflow.data.context", "training")}


def test_mark_selected_is_idempotent_and_follows_the_selection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = tmp_path / "data" / "summary.json"
    write_json(summary, SUMMARY)
    runs = make_runs(tmp_path / "runs", n=4, epochs=2)
    store = tmp_path / "mlflow"
    imported = tracking.import_runs(runs, EXPERIMENT, "", store, store / "imported.json", summary=summary)
    mlp = [r for r in runs if "/mlp/" in r]
    cnn = [r for r in runs if "/cnn/" in r]

    def details(mlp_dir: str, cnn_dir: str, bacc: float = 0.8) -> Path:
        path = tmp_path / "tables" / "test_details.json"
        write_json(path, {"selection_split": "validation", "families": {
            "mlp": {"run_dir": mlp_dir, "bacc": bacc, "bacc_ci_low": bacc - 0.05, "bacc_ci_high": bacc + 0.05,
                    "accuracy": 0.9, "macro_f1": 0.7},
            "cnn": {"run_dir": cnn_dir, "bacc": 0.6, "bacc_ci_low": 0.55, "bacc_ci_high": 0.65, "accuracy": 0.7,
                    "macro_f1": 0.5}}})
        return path

    out = store / "selected.json"
    first = tracking.mark_selected(store / "imported.json", details(mlp[0], cnn[0]), out, summary)
    client = client_for(store)
    chosen = imported["runs"][mlp[0]]
    assert first["selected"]["mlp"]["run_id"] == chosen and json.loads(out.read_text()) == first
    run = client.get_run(chosen)
    assert run.data.tags["selected"] == "true"
    assert run.data.metrics["test_bacc"] == 0.8 and run.data.metrics["test_bacc_ci_low"] == pytest.approx(0.75)
    assert run.data.metrics["test_accuracy"] == 0.9 and run.data.metrics["test_macro_f1"] == 0.7
    assert "model.pt" in {a.path for a in client.list_artifacts(chosen)}  # the selected model is downloadable
    assert {t.value for i in run.inputs.dataset_inputs for t in i.tags} == {"training", "test"}
    unselected = client.get_run(imported["runs"][mlp[1]])
    assert "selected" not in unselected.data.tags and "model.pt" not in {
        a.path for a in client.list_artifacts(unselected.info.run_id)}

    # A rerun adds nothing: one metric point, one test input, one model file.
    again = tracking.mark_selected(store / "imported.json", details(mlp[0], cnn[0]), out, summary)
    assert again["selected"]["mlp"]["metrics"] == "unchanged" and again["unselected"] == []
    assert len(client.get_metric_history(chosen, "test_bacc")) == 1
    assert len(client.get_run(chosen).inputs.dataset_inputs) == 2

    # Another selection (a grid change): the old run is unselected, the new one selected.
    third = tracking.mark_selected(store / "imported.json", details(mlp[1], cnn[0], bacc=0.85), out, summary)
    assert third["unselected"] == [chosen]
    assert client.get_run(chosen).data.tags["selected"] == "false"
    assert client.get_run(imported["runs"][mlp[1]]).data.tags["selected"] == "true"
    selected = client.search_runs([imported["experiment_id"]], filter_string="tags.selected = 'true'")
    assert sorted(r.info.run_id for r in selected) == sorted([imported["runs"][mlp[1]], imported["runs"][cnn[0]]])

    # The ensemble (meli.ensemble) is no MLflow run: recorded in selected.json, nothing tagged.
    path = details(mlp[1], cnn[0], bacc=0.85)
    with_ens = json.loads(path.read_text())
    with_ens["families"]["ensemble"] = {"run_dir": "results/ensembles/mlp/seeds", "combo": "mlp/seeds", "bacc": 0.9,
                                        "members": [mlp[0], mlp[1]]}
    write_json(path, with_ens)
    ens = tracking.mark_selected(store / "imported.json", path, out, summary)
    assert ens["ensemble"] == {"name": "mlp/seeds", "members": [mlp[0], mlp[1]], "test_bacc": 0.9}
    assert "ensemble" not in ens["selected"]

    # A selected run missing from the import is a clear error naming it.
    with pytest.raises(KeyError, match="rerun the mlflow_import rule"):
        tracking.mark_selected(store / "imported.json", details(str(tmp_path / "nope"), cnn[0]), out)


def test_mlflow_agrees_with_the_report_records_failures_and_survives_a_copy(tmp_path, monkeypatch):
    """Issue 24.7: val_bacc is the best epoch's, the commit shows with its source tags, a failed
    combination is a FAILED run with its reason, and a copied store still shows its artifacts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "git_commit", lambda cwd=".": "e" * 40)
    runs = make_runs(tmp_path / "results" / "runs", n=2, epochs=3)
    run = Path(runs[0])  # the best epoch is not the last one
    pd.read_csv(run / "history.csv").assign(val_bacc=[0.5, 0.9, 0.7]).to_csv(run / "history.csv", index=False)
    metrics = json.loads((run / "metrics.json").read_text())
    write_json(run / "metrics.json", {**metrics, "val_bacc": 0.9, "best_epoch": 2})
    reason = "training diverged: mean train loss 1e19 over 3 x max(start, log(classes)) for 2 epochs; " * 4 + \
        "Lower the learning rate (lr=10.0, set in train.mlp.grid.lr)"
    failed = [tracking.FailedRun("mlp", "lr-10_seed-0", "diverged", reason, 1, "results/logs/train/mlp/lr-10_seed-0.log",
                                 {"lr": 10.0, "hidden": [64]})]
    store = tmp_path / "results" / "mlflow"
    first = tracking.import_runs([*runs, *failed], EXPERIMENT, "", store, store / "imported.json")
    client = client_for(store)
    best = client.get_run(first["runs"][runs[0]])
    assert best.data.metrics["val_bacc"] == pytest.approx(0.9)  # MLflow's runs table sorts as selection does
    assert best.data.tags["mlflow.source.git.commit"] == "e" * 40
    assert best.data.tags["mlflow.source.name"] == "Snakefile" and best.data.tags["mlflow.source.type"] == "PROJECT"
    assert best.data.tags["run_dir"] == str(Path("results/runs") / run.parent.name / run.name)  # relative
    [failed_id] = first["failed"].values()
    bad = client.get_run(failed_id)
    assert bad.info.status == "FAILED" and bad.data.tags["meli.state"] == "diverged"
    assert bad.data.tags["meli.failure"].endswith("Lower the learning rate (lr=10.0, set in train.mlp.grid.lr)")
    assert bad.data.params["lr"] == "10.0" and bad.info.run_name == "mlp · lr-10_seed-0"
    again = tracking.import_runs([*runs, *failed], EXPERIMENT, "", store, store / "imported.json")
    assert again["failed"] == first["failed"] and again["replaced"] == []  # idempotent
    # The combination finishes later: its FAILED run is replaced by the finished one.
    later = tmp_path / "results" / "runs" / "mlp" / "lr-10_seed-0"
    write_run(str(later), epochs=2, seed=5)
    third = tracking.import_runs([*runs, str(later)], EXPERIMENT, "", store, store / "imported.json")
    assert failed_id in third["replaced"] and client.get_run(failed_id).info.lifecycle_stage == "deleted"

    # results/ moved to another machine: the copy's artifacts resolve after `relocate` (or any import).
    moved = tmp_path / "elsewhere" / "results"
    moved.parent.mkdir()
    (tmp_path / "results").rename(moved)
    copy = client_for(moved / "mlflow")
    artifact_dir = copy.get_run(first["runs"][runs[0]]).info.artifact_uri
    assert str(moved) not in artifact_dir  # MLflow's absolute path of the old place
    assert tracking.main(["relocate", "--store-dir", str(moved / "mlflow")]) == 0
    copy = client_for(moved / "mlflow")
    assert copy.get_run(first["runs"][runs[0]]).info.artifact_uri.startswith((moved / "mlflow").resolve().as_uri())
    got = copy.download_artifacts(first["runs"][runs[0]], "metrics.json", str(tmp_path))
    assert json.loads(Path(got).read_text())["val_bacc"] == 0.9
