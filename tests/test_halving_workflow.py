"""train.search.strategy: halving through the real workflow: the dry run shows rung 0 only, a rung
job killed mid-rung resumes, the final runs land in results/runs/, pruned runs are tabled,
reported and imported into MLflow as pruned, and a rerun does nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY_CONFIG, snakemake
from meli.search import plan
from test_workflow import job_counts

pytestmark = pytest.mark.workflow

LRS = [0.03, 0.01, 0.003, 0.001]


def halving_config(tmp_path: Path) -> Path:
    """tiny.yaml with 4 MLP combinations searched in rungs: 4 x 2 epochs, 2 x 4 epochs, 1 x 6 epochs."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["search"] = {"strategy": "halving", "eta": 2, "min_epochs": 2}
    cfg["train"]["mlp"]["grid"].update(lr=LRS, epochs=[6], patience=[6])
    path = tmp_path / "halving.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_rung_plan_of_the_test_config():
    p = plan(len(LRS), eta=2, min_epochs=2, max_epochs=6)
    assert [(r.combinations, r.epochs) for r in p.rungs] == [(4, 2), (2, 4), (1, None)]


def test_dry_run_lists_rung_0_and_says_later_rungs_depend_on_results(workflow_dir, tmp_path):
    out = snakemake(workflow_dir, "-n", "-p", "--configfile", str(halving_config(tmp_path))).stdout
    counts = job_counts(out)
    assert counts["train_rung"] == 4  # rung 0: every MLP combination, 2 epochs each
    assert counts["select_rung"] >= 1 and "train_final" not in counts
    assert counts["train_neural"] == 2  # the single CNN and RNN combinations: nothing to prune, trained as in a grid
    assert out.count("--until-epoch 2 ") == 4
    assert "checkpoint jobs, which will result in alteration of the DAG" in out
    # the default (grid) has no search jobs
    grid = job_counts(snakemake(workflow_dir, "-n", "--configfile", str(TINY_CONFIG)).stdout)
    assert "train_rung" not in grid and "select_rung" not in grid and grid["train_neural"] == 3


@pytest.fixture(scope="module")
def halving_run(tiny_run, tmp_path_factory):
    """The tiny workflow switched to halving; the first call's jobs die after epoch 3 (mid-rung 1).

    Starts from a copy of the grid run (data, embeddings, CNN and TF-IDF runs up to date, its MLP
    run removed), so only the search and what reads its results run: the suite stays short."""
    tmp = tmp_path_factory.mktemp("halving")
    wf = tmp / "wf"
    shutil.copytree(tiny_run[0], wf, symlinks=True)
    shutil.rmtree(wf / "results" / "runs" / "mlp")
    config = halving_config(tmp)
    # --keep-going: the CNN job dies too (at its epoch 3); the MLP's rungs must still go on to rung 1
    killed = snakemake(wf, "--cores", "2", "--keep-going", "--configfile", str(config), check=False,
                       env={"MELI_KILL_AFTER_EPOCH": "3"})
    # what the Snakefile's onerror wrote mid-search (the resumed run replaces it)
    partial = {"report": (wf / "results" / "report.html").read_text(),
               "runs": pd.read_csv(wf / "results" / "tables" / "runs.csv"),
               "selection": json.loads((wf / "results" / "tables" / "selection.json").read_text())}
    resumed = snakemake(wf, "--cores", "2", "--configfile", str(config))
    return wf, config, killed, resumed, partial


def test_killed_rung_job_resumes_mid_rung(halving_run):
    wf, _, killed, *_ = halving_run
    assert killed.returncode != 0
    jobs = job_counts(killed.stdout + killed.stderr)  # only the search and its readers: the rest was up to date
    assert jobs["train_rung"] == 4 and not {"train_neural", "train_tfidf", "embedding_matrix", "prepare_data"} & set(jobs)
    rung1 = sorted((wf / "results" / "search" / "mlp" / "rung-1").glob("*/metrics.json"))
    assert len(rung1) == 2
    for path in rung1:
        record = json.loads(path.read_text())
        # epochs 1-2 came from rung 0's state, epoch 3 from the killed job's checkpoint
        assert record["rung"] == 1 and record["epochs_run"] == 4 and record["resumed_from_epoch"] == 3
        assert list(pd.read_csv(path.with_name("history.csv"))["epoch"]) == [1, 2, 3, 4]


def test_partial_report_mid_search(halving_run):
    """The kill left rung 1 unfinished: the partial report shows what the search has so far (the
    pruned rung-0 runs, the TF-IDF run) and selects no MLP, since none was trained to the end."""
    wf, *_, partial = halving_run
    mlp = partial["runs"][partial["runs"]["family"] == "mlp"]
    assert len(mlp) == 2 and (mlp["pruned_at_rung"] == 0).all()
    assert "mlp" not in partial["selection"]["families"] and "tfidf" in partial["selection"]["families"]
    html = partial["report"]
    assert "partial" in html.lower() and "pruned at rung 0" in html
    assert ", 2 pruned by the search;" in html  # the banner
    sweep = html[html.index('<section id="sweep">'):]
    sweep = sweep[: sweep.index("</section>")]
    for combo in mlp["combo"]:  # the pruned are finished, not missing
        assert combo not in sweep
    survivors = set(json.loads((wf / "results" / "search" / "mlp" / "rung-0" / "selection.json").read_text())["kept"])
    assert all(combo in sweep for combo in survivors)  # killed in rung 1: listed with their log


def test_halving_final_and_pruned_runs(halving_run):
    wf, *_ = halving_run
    res = wf / "results"
    sel0 = json.loads((res / "search" / "mlp" / "rung-0" / "selection.json").read_text())
    sel1 = json.loads((res / "search" / "mlp" / "rung-1" / "selection.json").read_text())
    assert len(sel0["kept"]) == 2 and len(sel0["pruned"]) == 2 and sel1["kept"][0] in sel0["kept"]
    assert [r["val_bacc"] for r in sel0["ranking"]] == sorted((r["val_bacc"] for r in sel0["ranking"]), reverse=True)
    # the survivor's final run is where every run lands, continued from rung 1 (epochs 5-6 only)
    [final] = [p.parent for p in (res / "runs" / "mlp").glob("*/metrics.json")]
    assert final.name == sel1["kept"][0]
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["rung"] == 2 and metrics["pruned_at_rung"] is None and metrics["epochs_run"] == 6
    assert metrics["resumed_from_epoch"] == 4 and (final / "model.pt").exists()
    # pruned: a record at the rung they stopped, their training state freed; survivors' state kept
    for rung, sel in ((0, sel0), (1, sel1)):
        for combo in sel["pruned"]:
            record = json.loads((res / "search" / "mlp" / f"rung-{rung}" / "pruned" / combo / "metrics.json").read_text())
            assert record["pruned_at_rung"] == rung and record["epochs_run"] == 2 * (rung + 1)
            assert not (res / "search" / "mlp" / f"rung-{rung}" / combo / "checkpoint.pt").exists()
        for combo in sel["kept"]:
            assert (res / "search" / "mlp" / f"rung-{rung}" / combo / "checkpoint.pt").exists()
    summary = json.loads((res / "search" / "mlp" / "search.json").read_text())
    assert summary["final"] == [f"results/runs/mlp/{final.name}"] and len(summary["pruned"]) == 3
    # tables: every combination once, selection among the final runs only
    runs = pd.read_csv(res / "tables" / "runs.csv")
    mlp = runs[runs["family"] == "mlp"].set_index("combo")
    assert len(mlp) == 4 and mlp["pruned_at_rung"].isna().sum() == 1
    selection = json.loads((res / "tables" / "selection.json").read_text())["families"]["mlp"]
    assert selection["combo"] == final.name and selection["n_runs"] == 1 and selection["n_pruned"] == 3
    assert set(pd.read_csv(res / "tables" / "test.csv")["family"]) == {"mlp", "cnn", "rnn", "tfidf", "ensemble"}
    # the report's search section: every pruned combination with its rung, epochs against the grid
    html = (res / "report.html").read_text()
    search = html[html.index('<section id="search">'):]
    search = search[: search.index("</section>")]
    assert "successive halving over 4 combinations" in search
    assert search.count("pruned at rung 0") == 2 and search.count("pruned at rung 1") == 1
    spent = 2 * 2 + 1 * 4 + 6  # pruned at 0, pruned at 1, final
    assert f"{spent:,} epochs trained in all" in search and "against at most 24 for the full grid" in search
    # elsewhere in the report: pruned runs are counted, labelled and never ranked or coloured
    comparison = html[html.index('<section id="comparison">'):]
    comparison = comparison[: comparison.index("</section>")]
    assert "4 (3 pruned, not counted)" in comparison and comparison.count("pruned at rung ") == 3
    assert "best of 1 run trained to the end (3 pruned) on validation" in html
    curves = html[html.index('<section id="curves">'):]
    assert "3 pruned by the search" in curves[: curves.index("</section>")]
    # MLflow: one run per combination, the pruned ones tagged so
    imported = json.loads((res / "mlflow" / "imported.json").read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=imported["tracking_uri"])
    pruned = client.search_runs([imported["experiment_id"]], "tags.search = 'pruned'")
    assert sorted(r.data.tags["combo"] for r in pruned) == sorted(sel0["pruned"] + sel1["pruned"])
    assert {r.data.tags["pruned_at_rung"] for r in pruned} == {"0", "1"}
    tag = client.get_experiment(imported["experiment_id"]).tags["search.mlp"]
    assert "3 pruned (rung 0: 2, rung 1: 1)" in tag and f"{spent} epochs trained against at most 24" in tag


def test_halving_rerun_does_nothing(halving_run):
    wf, config, *_ = halving_run
    proc = snakemake(wf, "--cores", "2", "--configfile", str(config))
    assert "Nothing to be done" in proc.stdout + proc.stderr
