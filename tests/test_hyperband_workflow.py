"""train.search.strategy: hyperband through the real workflow: the dry run shows every bracket's rung 0
(and the straight bracket's runs), a stage job killed mid-rung resumes, the partial report mid-search
shows what is there, every bracket's survivors land in results/runs/, and a rerun does nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY_CONFIG, snakemake
from meli.search import family_plan
from test_workflow import job_counts

pytestmark = pytest.mark.workflow

LRS = [0.03, 0.01, 0.003, 0.001, 0.02, 0.005]
SEARCH = {"strategy": "hyperband", "eta": 2, "min_epochs": 1}


def hyperband_config(tmp_path: Path) -> Path:
    """tiny.yaml with 6 MLP combinations up to 6 epochs in 3 brackets of 2: starting at 1 epoch
    (2 -> 1), at 3 epochs (2 -> 1), and trained straight (2)."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["search"] = SEARCH
    cfg["train"]["mlp"]["grid"].update(lr=LRS, epochs=[6], patience=[6])
    path = tmp_path / "hyperband.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def brackets_of(wf: Path) -> dict[int, list[str]]:
    """The plan's brackets by combination id (as the Snakefile makes it, from the manifest's combinations)."""
    manifest = json.loads((wf / "results" / "sweep" / "manifest.json").read_text())
    plan = family_plan("mlp", manifest["combinations"]["mlp"], SEARCH)
    return {lad.bracket: list(lad.combos) for lad in plan.ladders}


def test_dry_run_lists_every_brackets_first_stage(workflow_dir, tmp_path):
    out = snakemake(workflow_dir, "-n", "-p", "--configfile", str(hyperband_config(tmp_path))).stdout
    counts = job_counts(out)
    assert counts["train_rung"] == 4 and counts["select_rung"] == 2  # bracket 2 and 1: rung 0, both at once
    assert counts["train_neural"] == 4  # bracket 0's two straight runs, the single CNN and RNN combinations
    assert out.count("--until-epoch 1 ") == 2 and out.count("--until-epoch 3 ") == 2
    assert out.count("results/search/mlp/bracket-2/rung-0/") and out.count("results/search/mlp/bracket-1/rung-0/")
    assert "checkpoint jobs, which will result in alteration of the DAG" in out


@pytest.fixture(scope="module")
def hyperband_run(tiny_run, tmp_path_factory):
    """The tiny workflow switched to Hyperband; the first call's jobs die after epoch 2 (mid-rung in
    bracket 1, whose rung 0 runs to epoch 3). Starts from a copy of the grid run, its MLP runs removed."""
    tmp = tmp_path_factory.mktemp("hyperband")
    wf = tmp / "wf"
    shutil.copytree(tiny_run[0], wf, symlinks=True)
    shutil.rmtree(wf / "results" / "runs" / "mlp")
    config = hyperband_config(tmp)
    killed = snakemake(wf, "--cores", "2", "--keep-going", "--configfile", str(config), check=False,
                       env={"MELI_KILL_AFTER_EPOCH": "2"})
    partial = {"report": (wf / "results" / "report.html").read_text(),
               "runs": pd.read_csv(wf / "results" / "tables" / "runs.csv"),
               "selection": json.loads((wf / "results" / "tables" / "selection.json").read_text())}
    resumed = snakemake(wf, "--cores", "2", "--configfile", str(config))
    return wf, config, killed, resumed, partial


def test_killed_stage_job_resumes_mid_rung(hyperband_run):
    wf, _, killed, *_ = hyperband_run
    assert killed.returncode != 0
    jobs = job_counts(killed.stdout + killed.stderr)
    assert jobs["train_rung"] == 4 and not {"train_tfidf", "embedding_matrix", "prepare_data"} & set(jobs)
    rung0 = sorted((wf / "results" / "search" / "mlp" / "bracket-1" / "rung-0").glob("*/metrics.json"))
    assert len(rung0) == 2
    for path in rung0:
        record = json.loads(path.read_text())
        # epochs 1-2 before the kill (its checkpoint), epoch 3 after
        assert record["rung"] == 0 and record["epochs_run"] == 3 and record["resumed_from_epoch"] == 2


def test_partial_report_mid_search(hyperband_run):
    """After the kill only bracket 2's rung 0 was through: its pruned run is tabled, nothing selected."""
    wf, *_, partial = hyperband_run
    mlp = partial["runs"][partial["runs"]["family"] == "mlp"]
    assert len(mlp) == 1 and (mlp["pruned_at_rung"] == 0).all() and (mlp["bracket"] == 2).all()
    assert "mlp" not in partial["selection"]["families"]
    html = partial["report"]
    assert "partial" in html.lower() and "pruned at bracket 2, rung 0" in html
    assert ", 1 pruned by the search;" in html
    sweep = html[html.index('<section id="sweep">'):]
    sweep = sweep[: sweep.index("</section>")]
    pruned = mlp["combo"].iloc[0]
    assert pruned not in sweep  # pruned: finished, not missing
    others = [c for combos in brackets_of(wf).values() for c in combos if c != pruned]
    assert len(others) == 5 and all(c in sweep for c in others)  # killed: listed with their log


def test_every_brackets_survivors_are_final_runs(hyperband_run):
    wf, *_ = hyperband_run
    res = wf / "results"
    brackets = brackets_of(wf)
    assert sorted(len(c) for c in brackets.values()) == [2, 2, 2]
    kept = {}
    for b in (2, 1):
        sel = json.loads((res / "search" / "mlp" / f"bracket-{b}" / "rung-0" / "selection.json").read_text())
        assert sel["bracket"] == b and sorted(sel["kept"] + sel["pruned"]) == sorted(brackets[b])
        assert len(sel["kept"]) == 1 and sel["epochs"] == {2: 1, 1: 3}[b]
        kept[b] = sel["kept"][0]
        record = json.loads((res / "search" / "mlp" / f"bracket-{b}" / "rung-0" / "pruned" / sel["pruned"][0]
                             / "metrics.json").read_text())
        assert record["bracket"] == b and record["pruned_at_rung"] == 0
    finals = {p.parent.name: json.loads(p.read_text()) for p in (res / "runs" / "mlp").glob("*/metrics.json")}
    assert set(finals) == {kept[2], kept[1], *brackets[0]}
    assert finals[kept[2]]["resumed_from_epoch"] == 2 and finals[kept[1]]["resumed_from_epoch"] == 3
    for combo, m in finals.items():
        assert m["epochs_run"] == 6 and m["pruned_at_rung"] is None
        assert m["rung"] == (0 if combo in brackets[0] else 1)
    summary = json.loads((res / "search" / "mlp" / "search.json").read_text())
    assert len(summary["final"]) == 4 and len(summary["pruned"]) == 2
    # tables: every combination once, selection among the four final runs
    runs = pd.read_csv(res / "tables" / "runs.csv")
    mlp = runs[runs["family"] == "mlp"].set_index("combo")
    assert len(mlp) == 6 and mlp["pruned_at_rung"].isna().sum() == 4
    assert {int(mlp.loc[c, "bracket"]) for c in brackets[0]} == {0}
    selection = json.loads((res / "tables" / "selection.json").read_text())["families"]["mlp"]
    assert selection["combo"] in finals and selection["n_runs"] == 4 and selection["n_pruned"] == 2
    html = (res / "report.html").read_text()
    search = html[html.index('<section id="search">'):]
    search = search[: search.index("</section>")]
    assert "Hyperband over 6 combinations in 3 brackets" in search
    assert "pruned at bracket 2, rung 0" in search and "pruned at bracket 1, rung 0" in search
    spent = 1 + 3 + 4 * 6
    assert f"{spent:,} epochs trained in all" in search and "against at most 36 for the full grid" in search
    # MLflow: one run per combination, the bracket on every one of them
    imported = json.loads((res / "mlflow" / "imported.json").read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=imported["tracking_uri"])
    mlp_runs = client.search_runs([imported["experiment_id"]], "tags.family = 'mlp'")
    tags = {r.data.tags["combo"]: r.data.tags for r in mlp_runs}
    assert len(tags) == 6 and all(tags[c]["bracket"] == "0" and tags[c]["search"] == "final" for c in brackets[0])
    assert {t["search"] for t in tags.values()} == {"final", "pruned"}
    line = client.get_experiment(imported["experiment_id"]).tags["search.mlp"]
    assert line.startswith("Hyperband over 6 combinations in 3 brackets: 4 trained to the end, 2 pruned")


def test_hyperband_rerun_does_nothing(hyperband_run):
    wf, config, *_ = hyperband_run
    proc = snakemake(wf, "--cores", "2", "--configfile", str(config))
    assert "Nothing to be done" in proc.stdout + proc.stderr
