"""Issue 22: yesterday's or broken numbers never shown as today's, and no partial state that lasts.

Unit-level on hand-made run directories (meli.runs, meli.report.aggregate, meli.sweep,
meli.jobstatus, meli.overrides); the cases where the bug is Snakemake's own behaviour run the real
workflow on a copy of the session's tiny run (marked ``workflow``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from meli import jobstatus, runs, sweep
from meli.io import write_json
from meli.report import aggregate
from test_aggregate import make_run as _make_run

MLP = dict(embedding="w2v", hidden=[32], dropout=0.2, batch_size=64, epochs=4, patience=4, seed=0)


def make_run(results: Path, family: str, params: dict, val_bacc: float, **kw) -> Path:
    """test_aggregate.make_run plus the model file: every declared output of a finished run."""
    run = _make_run(results, family, params, val_bacc, **kw)
    (run / sweep.run_files(family)[2]).write_bytes(b"model")
    return run


# ------------------------------------------------------------------ 1. a damaged run record
def _cut_history_mid_row(run: Path) -> None:
    lines = (run / "history.csv").read_text().splitlines()
    cut = lines[-1][: lines[-1].index(",", lines[-1].index(",") + 1) + 3]  # the last row: 2 fields and a bit
    (run / "history.csv").write_text("\n".join(lines[:-1] + [cut]))


@pytest.mark.parametrize("damage, match", [
    (lambda r: (r / "metrics.json").write_text((r / "metrics.json").read_text()[:40]), "not valid JSON"),
    (lambda r: (r / "metrics.json").write_text(json.dumps(
        {**json.loads((r / "metrics.json").read_text()), "val_bacc": "NaN"})), "finite number"),
    (_cut_history_mid_row, "empty values"),
    (lambda r: (r / "history.csv").write_text("\n".join((r / "history.csv").read_text().splitlines()[:3]) + "\n"),
     r"2 epoch row\(s\), but metrics.json says epochs_run=4"),
    (lambda r: (r / "metrics.json").write_text(json.dumps(
        {**json.loads((r / "metrics.json").read_text()), "val_bacc": 0.99})), "differs from history.csv"),
    (lambda r: (r / "metrics.json").write_text(json.dumps(
        {**json.loads((r / "metrics.json").read_text()), "best_epoch": 9})), "best_epoch=9"),
])
def test_a_record_is_checked_against_its_history(tmp_path, damage, match):
    run = make_run(tmp_path / "results", "mlp", MLP, 0.8)
    assert runs.check_record(run)["val_bacc"] == 0.8
    damage(run)
    with pytest.raises(runs.RunError, match=match):
        runs.check_record(run)


def test_aggregate_moves_a_damaged_run_aside_so_that_it_is_retrained(tmp_path, capsys):
    results = tmp_path / "results"
    good = make_run(results, "mlp", MLP, 0.8)
    bad = make_run(results, "mlp", {**MLP, "dropout": 0.5}, 0.7)
    _cut_history_mid_row(bad)
    assert aggregate.main(["--out-dir", str(results / "tables"), str(good), str(bad)]) != 0
    err = capsys.readouterr().err
    [moved] = (results / "archive" / "damaged" / "mlp").iterdir()
    assert not bad.exists() and moved.name.startswith(bad.name + "-") and (moved / "history.csv").exists()
    assert "empty values" in (moved / "why.txt").read_text()
    assert str(bad) in err and str(moved) in err and "the next snakemake retrains it" in err
    assert not (results / "tables" / "runs.csv").exists(), "no table from a sweep with a damaged record"
    assert runs.archived_damaged(results, "mlp", bad.name) == moved
    assert runs.archived_damaged(results, "mlp", bad.name[:-2]) is None  # another combination's prefix


def _sweep_with(results: Path, combos: dict[str, dict], config: dict | None = None, planned=None) -> None:
    sweep.write_manifest(results, combos, config or {}, ["x.yaml"], planned)


def test_the_partial_report_names_a_damaged_record_and_the_sweeps_end_moves_it(tmp_path):
    results = tmp_path / "results"
    good = make_run(results, "mlp", MLP, 0.8)
    bad = make_run(results, "mlp", {**MLP, "dropout": 0.5}, 0.7)
    _sweep_with(results, {"mlp": {good.name: MLP, bad.name: {**MLP, "dropout": 0.5}}})
    write_json(sweep.status_path(results, "mlp", bad.name), {"state": "finished", "attempt": 1,
                                                              "ended_at": "2026-01-01T00:00:00+00:00"})
    (bad / "metrics.json").write_text('{"family": "mlp", "val_bacc": ')
    # `make report` while a sweep may run: reported, nothing moved
    got = {c.combo: c for c in sweep.scan(results).combinations}
    assert got[bad.name].state == "damaged record" and "not valid JSON" in got[bad.name].detail
    assert sweep.scan(results).counts["failed"] == 1 and bad.exists()
    # the sweep's end (onerror): moved aside, so its outputs are missing and the next run retrains it
    got = {c.combo: c for c in sweep.scan(results, final=True).combinations}
    assert got[bad.name].state == "outputs missing" and not bad.exists()
    assert "retrains it" in got[bad.name].detail and "archive/damaged" in got[bad.name].detail
    again = {c.combo: c for c in sweep.scan(results).combinations}[bad.name]
    assert again.state == "outputs missing" and "was damaged and moved to" in again.detail


def test_each_partial_write_changes_the_stamp_the_table_rules_take_as_a_parameter(tmp_path):
    results = tmp_path / "results"
    assert sweep.partial_stamp(results) == ""
    sweep.write_partial_stamp(results)
    first = sweep.partial_stamp(results)
    time.sleep(0.001)
    sweep.write_partial_stamp(results)
    assert first and sweep.partial_stamp(results) not in ("", first)
    common = (Path(__file__).resolve().parents[1] / "rules" / "common.smk").read_text()
    assert 'PARTIAL_STAMP = partial_stamp("results")' in common
    for rules, rule in (("report.smk", "rule aggregate:"), ("tracking.smk", "rule mlflow_import:")):
        text = (Path(__file__).resolve().parents[1] / "rules" / rules).read_text()
        body = text[text.index(rule):]
        assert "partial=PARTIAL_STAMP" in body[: body.index("\nrule ") if "\nrule " in body else None], rule


# ------------------------------------------------------------------ 2. a previous search plan's runs
def _record_at(dest: Path, params: dict, val_bacc: float, epochs: int, **extra) -> Path:
    scratch = make_run(dest.parent / f".scratch-{dest.name}", "mlp", params, val_bacc, epochs=epochs, **extra)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(scratch, dest)
    shutil.rmtree(dest.parent / f".scratch-{dest.name}")
    return dest


def test_a_run_left_by_a_previous_search_plan_is_neither_done_nor_ranked(tmp_path):
    """eta 4 -> 2: the old survivor `a` (val 0.9027) is pruned at rung 0 now; the current final `b`
    (0.8713) is the one selected, and a TF-IDF combination failed in the same run."""
    results = tmp_path / "results"
    ids = {k: f"{k}_{MLP['embedding']}" for k in "abcd"}
    combos = {ids[k]: {**MLP, "lr": lr} for k, lr in zip("abcd", (0.1, 0.01, 0.001, 0.0001))}
    config = {"train": {"search": {"strategy": "halving", "eta": 2, "min_epochs": 1}}}
    _sweep_with(results, {"mlp": combos, "tfidf": {"C-1": {"C": 1.0}}}, config)
    search_dir = results / "search" / "mlp"
    old_final = _record_at(results / "runs" / "mlp" / ids["a"], combos[ids["a"]], 0.9027, 4, rung=1, pruned_at_rung=None)
    _record_at(results / "runs" / "mlp" / ids["b"], combos[ids["b"]], 0.8713, 4, rung=2, pruned_at_rung=None)
    for rung, keep, epochs, kept, pruned in ((0, 2, 1, "bc", "ad"), (1, 1, 2, "b", "c")):
        write_json(search_dir / f"rung-{rung}" / "selection.json", {
            "family": "mlp", "rung": rung, "keep": keep, "epochs": epochs,
            "kept": [ids[k] for k in kept], "pruned": [ids[k] for k in pruned]})
        for k in kept + pruned:
            _record_at(search_dir / f"rung-{rung}" / ids[k], combos[ids[k]], 0.5, epochs, rung=rung)
        for k in pruned:
            _record_at(search_dir / f"rung-{rung}" / "pruned" / ids[k], combos[ids[k]], 0.5, epochs, rung=rung,
                       pruned_at_rung=rung)
    write_json(sweep.status_path(results, "tfidf", "C-1"), {"state": "failed", "attempt": 1, "detail": "exit code 1"})

    s = sweep.scan(results, final=True)
    states = {c.combo: c.state for c in s.combinations}
    assert states == {ids["a"]: "pruned", ids["b"]: "done", ids["c"]: "pruned", ids["d"]: "pruned", "C-1": "failed"}
    assert s.counts == {"done": 1, "running": 0, "failed": 1, "left": 0, "pruned": 3}
    tabled = [c.run_dir for c in s.by_state(sweep.DONE, sweep.PRUNED)]
    assert str(old_final) not in tabled
    selection = aggregate.aggregate(tabled, tmp_path / "tables")
    assert selection["families"]["mlp"]["combo"] == ids["b"] and selection["families"]["mlp"]["val_bacc"] == 0.8713

    # mid-search under the new plan (rung 1 not selected yet): the old final run is ignored, not done
    (search_dir / "rung-1" / "selection.json").unlink()
    got = {c.combo: c for c in sweep.scan(results).combinations}
    assert got[ids["a"]].state == "pruned" and got[ids["b"]].state == "not run yet"
    assert "another search plan" in got[ids["b"]].detail  # not final until rung 1 has kept it
    # a rung-0 selection made for another eta does not count either
    sel0 = json.loads((search_dir / "rung-0" / "selection.json").read_text())
    write_json(search_dir / "rung-0" / "selection.json", {**sel0, "keep": 1, "kept": [ids["a"]],
                                                          "pruned": [ids[k] for k in "bcd"]})
    got = {c.combo: c for c in sweep.scan(results).combinations}
    assert got[ids["a"]].state == "not run yet" and "another search plan" in got[ids["a"]].detail
    assert sweep.scan(results).counts["done"] == 0


# ------------------------------------------------------------------ 3. outdated runs mid-re-sweep
def test_a_run_this_sweep_retrains_is_outdated_until_retrained(tmp_path):
    results = tmp_path / "results"
    old = make_run(results, "mlp", MLP, 0.8)
    new = make_run(results, "mlp", {**MLP, "dropout": 0.5}, 0.7)
    untouched = make_run(results, "tfidf", {"C": 1.0}, 0.6, epochs=1)
    planned = [f"{results}/runs/mlp/{d.name}/{f}" for d in (old, new) for f in ("metrics.json", "model.pt")]
    planned.append(f"{results}/features/vocab.tsv")
    combos = {"mlp": {old.name: MLP, new.name: {**MLP, "dropout": 0.5}}, "tfidf": {untouched.name: {"C": 1.0}}}
    for d in (old, new, untouched):  # all trained a day ago
        os.utime(d / "metrics.json", (time.time() - 86_400,) * 2)
    _sweep_with(results, combos, planned=planned)
    manifest = json.loads(sweep.manifest_path(results).read_text())
    assert manifest["planned"] == sorted(f"runs/mlp/{d.name}/metrics.json" for d in (old, new))
    os.utime(new / "metrics.json", (manifest["started_ts"] + 5,) * 2)  # retrained by this sweep
    s = sweep.scan(results)
    states = {c.combo: c.state for c in s.combinations}
    assert states == {old.name: "outdated", new.name: "done", untouched.name: "done"}
    assert s.counts == {"done": 2, "running": 0, "failed": 0, "left": 1}
    assert str(old) not in [c.run_dir for c in s.by_state(sweep.DONE, sweep.PRUNED)]
    assert "outdated" in sweep.progress_text(s) and "retrains it" in sweep.progress_text(s)
    # an older manifest without `planned` (or a Snakemake without the DAG in onstart): as before
    _sweep_with(results, combos)
    assert sweep.scan(results).counts["done"] == 3


# ------------------------------------------------------------------ 6. small edges
def test_a_rung_job_is_attempt_1_of_its_own(tmp_path):
    status = tmp_path / "jobs" / "mlp" / "c.json"
    ok = [sys.executable, "-c", "pass"]
    assert jobstatus.run(status, ok, log="logs/search/mlp/rung-0/c.log") == 0
    assert jobstatus.run(status, ok, log="logs/search/mlp/rung-1/c.log") == 0
    assert jobstatus.read_status(status)["attempt"] == 1
    assert jobstatus.run(status, [sys.executable, "-c", "raise SystemExit(1)"], log="logs/train/mlp/c.log") == 1
    assert jobstatus.run(status, ok, log="logs/train/mlp/c.log") == 0
    assert jobstatus.read_status(status)["attempt"] == 2  # the retry of the same job


def test_report_shots_cleanup_tolerates_files_chromium_still_writes():
    source = (Path(__file__).resolve().parent / "report_pages.py").read_text()
    assert "TemporaryDirectory(ignore_cleanup_errors=True)" in source


@pytest.fixture
def schema():
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "schema.yaml").read_text())


def test_a_wrong_override_value_says_which_form_is_accepted(schema):
    from meli.config import ConfigError, check_config

    cfg = {"train": {"search": {"strategy": "halving", "eta": "abc"}}}
    with pytest.raises(ConfigError) as info:
        check_config(cfg, schema)
    msg = str(info.value)
    assert "train.search.eta" in msg and "'abc'" in msg and "\n" not in msg
    assert "--config 'train={search: {eta: " in msg  # the nested form Snakemake accepts


def _truncate_metrics(run: Path) -> None:
    text = (run / "metrics.json").read_text()
    (run / "metrics.json").write_text(text[: len(text) // 2])


@pytest.mark.workflow
def test_a_damaged_record_is_retrained_by_the_next_snakemake(tiny_run, tmp_path):
    """A finished sweep, then one run's metrics.json truncated and another's history.csv cut mid-row
    (both cases in one sweep, to keep the suite short): snakemake stops naming each and where it
    moved it; the next snakemake retrains those combinations and writes the final report (it used to
    say "Nothing to be done" and keep the partial report forever; a cut history was accepted silently)."""
    from conftest import TINY_CONFIG, snakemake

    wf = tmp_path / "wf"
    shutil.copytree(tiny_run[0], wf, symlinks=True)
    damaged = {"mlp": (_truncate_metrics, "not valid JSON"), "cnn": (_cut_history_mid_row, "empty values")}
    runs_of = {family: next((wf / "results" / "runs" / family).iterdir()) for family in damaged}
    for family, (damage, _) in damaged.items():
        damage(runs_of[family])
    first = snakemake(wf, "--cores", "2", "--configfile", str(TINY_CONFIG), check=False)
    assert first.returncode != 0
    logged = (wf / "results" / "logs" / "aggregate.log").read_text()
    assert "the next snakemake retrains it" in logged
    for family, (_, why) in damaged.items():
        run = runs_of[family]
        assert why in logged and not run.exists()
        assert list((wf / "results" / "archive" / "damaged" / family).glob(f"{run.name}-*"))
    assert "Partial: 2 of 4" in (wf / "results" / "report.html").read_text()
    second = snakemake(wf, "--cores", "2", "--configfile", str(TINY_CONFIG))
    out = second.stdout + second.stderr
    assert "Nothing to be done" not in out and "train_neural" in out
    for run in runs_of.values():
        assert runs.check_record(run)["val_bacc"] > 0
    assert "Partial" not in (wf / "results" / "report.html").read_text()
    assert (wf / "results" / "tables" / "test.csv").exists()
    assert len(pd.read_csv(wf / "results" / "tables" / "runs.csv")) == 4  # mlp, cnn, rnn, tfidf


@pytest.mark.workflow
def test_a_source_path_with_braces_is_no_wildcard(workflow_dir, tmp_path):
    """dataset.source and a vectors source in a directory named with { } (was: WildcardError)."""
    from conftest import TINY_CONFIG, snakemake
    from test_workflow import job_counts

    data = tmp_path / "exp {v2}"
    data.mkdir()
    snakemake(workflow_dir, "results/data/source/demo.csv.gz", "--cores", "1", "--configfile", str(TINY_CONFIG))
    shutil.copy(workflow_dir / "results" / "data" / "source" / "demo.csv.gz", data / "titles {a}.csv.gz")
    (data / "v.txt").write_text("2 4\ncasa 0.1 0.2 0.3 0.4\nfunda 0.1 0.2 0.3 0.5\n")
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["dataset"]["source"] = str(data / "titles {a}.csv.gz")
    cfg["embeddings"]["pre"] = {"kind": "pretrained", "dim": 4, "source": str(data / "v.txt")}
    cfg["train"]["mlp"]["grid"]["embedding"] = ["pre"]
    configfile = tmp_path / "c.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    dry = snakemake(workflow_dir, "-n", "--configfile", str(configfile))
    assert job_counts(dry.stdout)["prepare_data"] == 1 and job_counts(dry.stdout)["embedding_matrix"] == 2
    snakemake(workflow_dir, "results/data/summary.json", "--cores", "1", "--configfile", str(configfile))
    summary = json.loads((workflow_dir / "results" / "data" / "summary.json").read_text())
    assert summary["rows"]["train"] > 0
    link = workflow_dir / "results" / ".linked" / "dataset" / "titles (a).csv.gz"
    assert link.is_symlink() and Path(os.readlink(link)) == data / "titles {a}.csv.gz"


# ------------------------------------------------------------------ 5. halving -> grid
@pytest.mark.workflow
def test_switching_from_halving_to_the_grid_reuses_the_final_run(tiny_run, tmp_path):
    """A finished halving search over 2 MLP combinations, then the plain grid: the survivor's final
    run is exactly what the grid job trains (checked against the tiny grid run of the same
    combination), so the grid job reuses it; only the pruned combination is trained."""
    from conftest import TINY_CONFIG, snakemake

    wf = tmp_path / "wf"
    shutil.copytree(tiny_run[0], wf, symlinks=True)
    [grid_run] = (wf / "results" / "runs" / "mlp").iterdir()
    grid_history = pd.read_csv(grid_run / "history.csv")
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["mlp"]["grid"]["lr"] = [0.01, 0.00001]  # the tiny combination, and one that learns nothing
    (wf / "grid.yaml").write_text(yaml.safe_dump(cfg))
    cfg["train"]["search"] = {"strategy": "halving", "eta": 2, "min_epochs": 1}
    (wf / "halving.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wf, "--cores", "2", "--configfile", "halving.yaml")
    final = json.loads((wf / "results" / "runs" / "mlp" / grid_run.name / "metrics.json").read_text())
    assert final["rung"] == 1 and final["pruned_at_rung"] is None
    # the premise: continued rung by rung, it ended exactly like the grid job
    pd.testing.assert_frame_equal(
        pd.read_csv(grid_run / "history.csv").drop(columns=["samples_per_s", "elapsed_s"]),
        grid_history.drop(columns=["samples_per_s", "elapsed_s"]))
    switched = snakemake(wf, "--cores", "2", "--configfile", "grid.yaml")
    out = switched.stdout + switched.stderr
    assert "train_neural" in out
    reused = json.loads((grid_run / "metrics.json").read_text())
    assert reused["finished_at"] == final["finished_at"] and reused["val_bacc"] == final["val_bacc"]
    assert reused["equivalent_of"] == {"search": "halving", "rung": 1} and "rung" not in reused
    log = (wf / "results" / "logs" / "train" / "mlp" / f"{grid_run.name}.log").read_text()
    assert "reused the successive-halving final run" in log and "epoch 1" not in log
    pruned = next(d for d in (wf / "results" / "runs" / "mlp").iterdir() if d != grid_run)
    assert json.loads((pruned / "metrics.json").read_text())["epochs_run"] >= 1  # trained for real
    assert not (wf / "results" / "checkpoints" / "mlp" / grid_run.name).exists()
    runs_csv = pd.read_csv(wf / "results" / "tables" / "runs.csv")
    assert len(runs_csv[runs_csv["family"] == "mlp"]) == 2 and "rung" not in runs_csv.columns
    again = snakemake(wf, "--cores", "2", "--configfile", "grid.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_diverged_search_record_is_not_damaged(tmp_path):
    """A search's diverged combination (issue 22.4) has no epoch and no best epoch: a complete record
    of its own kind, never mistaken for a damaged one (the aggregate job would refuse the sweep)."""
    from meli import runs
    from meli.search.__main__ import main

    stage = tmp_path / "search" / "mlp" / "rung-0"
    stage.mkdir(parents=True)
    log = stage / "x.log"
    log.write_text("meli.train.neural: training diverged: mean train loss 4.2e+19 at epoch 2\n")
    assert main(["diverged", "--code", "3", "--family", "mlp", "--rung", "0", "--params", '{"lr": 1000000.0}',
                 "--stage-dir", str(stage / "x"), "--snapshot", str(stage / "x" / "checkpoint.pt"),
                 "--log", str(log)]) == 0
    assert runs.check_record(stage / "x")["diverged"] is True
    (stage / "x" / "history.csv").write_text("epoch,train_loss\n1,")  # but a cut history still is damaged
    with pytest.raises(runs.RunError):
        runs.check_record(stage / "x")
