"""train.pack: several grid combinations in one job (meli.train.pack, rules train_pack/pack_member).

In-process and through the CLI on toy features (no cluster): a failed member costs none of the
others and a rerun trains only it; a pack killed midway resumes only its unfinished member;
packed results equal unpacked ones. A dry run shows the packs. (tests/test_slurm.py runs a
packed family through sbatch.)
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_CONFIG, copy_workflow, snakemake
from meli.grid import pack_combos
from meli.train import pack
from meli.train.neural import run
from test_train import MLP, make_features

FILES = ["metrics.json", "history.csv", "model.pt", "val_predictions.parquet"]


# ---------------------------------------------------------------------------------- packs
def test_packs_are_chunks_of_the_grid_grouped_by_input_and_stable():
    combos = ["a1", "b1", "a2", "b2", "a3"]
    packs = pack_combos(combos, 2, key=lambda c: c[0])
    assert packs == {"pack-000": ["a1", "a2"], "pack-001": ["a3", "b1"], "pack-002": ["b2"]}
    assert pack_combos(combos, 2, key=lambda c: c[0]) == packs  # the same grid, the same packs
    assert pack_combos(combos, 10) == {"pack-000": combos}
    assert pack_combos(combos, 1) == {f"pack-{i:03d}": [c] for i, c in enumerate(combos)}
    assert pack_combos([], 4) == {}
    with pytest.raises(ValueError, match="pack size"):
        pack_combos(combos, 0)


# ---------------------------------------------------------------------------------- adopt
def test_adopt_moves_the_staged_files_onto_the_outputs_metrics_last(tmp_path):
    staged = tmp_path / "packs" / "mlp" / "staged" / "c1"
    staged.mkdir(parents=True)
    for name in FILES:
        (staged / name).write_text(name)
    outs = [str(tmp_path / "runs" / "mlp" / "c1" / n) for n in FILES]
    order = []
    real_replace = os.replace
    os.replace = lambda a, b: (order.append(Path(b).name), real_replace(a, b))[1]
    try:
        pack.adopt(staged, outs)
    finally:
        os.replace = real_replace
    assert order[-1] == "metrics.json" and sorted(order) == sorted(FILES)
    assert all(Path(o).read_text() == Path(o).name for o in outs)
    assert not staged.exists()  # the staging folder is gone once adopted
    with pytest.raises(pack.PackError, match="did not finish this combination"):
        pack.adopt(staged, outs)
    assert pack.main(["adopt", "--staged", str(staged), *outs]) == 1  # one line, no traceback


# ------------------------------------------------------------------------ the pack's run
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_features(tmp_path_factory.mktemp("toy"), n_train=300, n_val=100)


def _member(root: Path, combo: str, params: dict, matrix: Path, features: Path) -> dict:
    return {
        "combo": combo, "params": params, "matrix": str(matrix),
        "run_dir": str(root / "runs" / "mlp" / combo), "staged_dir": str(root / "packs" / "mlp" / "staged" / combo),
        "checkpoint_dir": str(root / "checkpoints" / "mlp" / combo),
        "status": str(root / "sweep" / "jobs" / "mlp" / f"{combo}.json"),
        "log": str(root / "logs" / "train" / "mlp" / f"{combo}.log"),
        "inputs": [str(matrix), *(str(p) for p in sorted(features.iterdir()))],
    }


def _settings(features: Path) -> dict:
    return {"family": "mlp", "features": str(features), "device": "cpu", "threads": 1, "mem_mb": None,
            "pack": {"pack": "pack-000", "pack_size": 3, "pack_log": None}}


def _record(member: dict) -> dict:
    return json.loads(Path(member["status"]).read_text())


def test_a_failed_member_costs_none_of_the_others_and_the_rerun_trains_only_it(toy, tmp_path, caplog):
    caplog.set_level(logging.INFO)  # as the CLI's setup_logging: each member's log gets its INFO lines
    features, matrix = toy
    good = [{**MLP, "epochs": 2, "lr": lr} for lr in (0.01, 0.03)]
    members = [_member(tmp_path, "good0", good[0], matrix, features),
               _member(tmp_path, "bad", {**MLP, "epochs": 2, "optimizer": "nope"}, matrix, features),
               _member(tmp_path, "good1", good[1], matrix, features)]
    stamp = tmp_path / "packs" / "mlp" / "pack-000.json"
    states = pack.run_pack(_settings(features), members, FILES, stamp)
    assert states == {"good0": "finished", "bad": "failed", "good1": "finished"}
    assert not stamp.exists()  # written only when every member finished: Snakemake retries the pack
    for m in (members[0], members[2]):  # the others: their runs, staged copies, records and logs
        assert all((Path(m["run_dir"]) / f).is_file() for f in FILES)
        assert all((Path(m["staged_dir"]) / f).is_file() for f in FILES)
        rec = _record(m)
        assert rec["state"] == "finished" and rec["attempt"] == 1 and rec["pack"] == "pack-000"
        assert "done: best epoch" in Path(m["log"]).read_text()
    bad = _record(members[1])
    assert bad["state"] == "failed" and bad["attempt"] == 1
    assert "optimizer 'nope'" in Path(members[1]["log"]).read_text()
    assert not Path(members[1]["run_dir"]).exists()
    finished = {m["combo"]: (Path(m["run_dir"]) / "metrics.json").read_text() for m in (members[0], members[2])}

    # the retry (the config fixed): the finished members are not trained again, the failed one is
    members[1]["params"] = {**MLP, "epochs": 2, "lr": 0.02}
    states = pack.run_pack(_settings(features), members, FILES, stamp)
    assert set(states.values()) == {"finished"} and json.loads(stamp.read_text())["members"] == states
    for m in (members[0], members[2]):
        assert (Path(m["run_dir"]) / "metrics.json").read_text() == finished[m["combo"]]
        assert _record(m)["attempt"] == 1
    assert _record(members[1])["state"] == "finished" and _record(members[1])["attempt"] == 2

    # packed = unpacked: the same combination trained as its own job ends the same
    alone = run("mlp", good[1], features, matrix, tmp_path / "alone", "cpu", 1, tmp_path / "alone_ckpt")
    packed = json.loads((Path(members[2]["run_dir"]) / "metrics.json").read_text())
    for key in ("val_bacc", "val_loss", "final_train_loss", "best_epoch", "epochs_run", "params"):
        assert packed[key] == alone[key], key


def test_a_member_older_than_its_inputs_is_trained_again(toy, tmp_path):
    features, matrix = toy
    member = _member(tmp_path, "m", {**MLP, "epochs": 1}, matrix, features)
    pack.run_pack(_settings(features), [member], FILES, tmp_path / "stamp.json")
    first = json.loads((Path(member["run_dir"]) / "metrics.json").read_text())["finished_at"]
    newer = Path(member["run_dir"]).stat().st_mtime + 10
    fresh_input = tmp_path / "newer_input"
    fresh_input.write_text("x")
    os.utime(fresh_input, (newer, newer))
    pack.run_pack(_settings(features), [{**member, "inputs": [*member["inputs"], str(fresh_input)]}], FILES,
                  tmp_path / "stamp.json")
    assert json.loads((Path(member["run_dir"]) / "metrics.json").read_text())["finished_at"] != first


def _pack_cli(members: list[dict], features: Path, stamp: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "meli.train.pack", "run", "--family", "mlp", "--pack", "pack-000",
         "--members", json.dumps(members), "--files", *FILES, "--features", str(features), "--device", "cpu",
         "--stamp", str(stamp)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts"), **(env or {})},
        capture_output=True, text=True, timeout=300)


def test_a_pack_killed_midway_resumes_only_its_unfinished_member(toy, tmp_path):
    features, matrix = toy
    # the first member trains 1 epoch; the second gets SIGTERM (SLURM's time limit) after its epoch 2
    # is checkpointed: it saves its state and the pack exits 75 (interrupted, retried)
    members = [_member(tmp_path, "short", {**MLP, "epochs": 1}, matrix, features),
               _member(tmp_path, "long", {**MLP, "epochs": 3, "patience": 3}, matrix, features)]
    stamp = tmp_path / "packs" / "mlp" / "pack-000.json"
    killed = _pack_cli(members, features, stamp, {"MELI_KILL_AFTER_EPOCH": "2", "MELI_KILL_SIGNAL": "TERM"})
    assert killed.returncode == 75, killed.stderr[-3000:]
    assert not stamp.exists()
    assert _record(members[0])["state"] == "finished"
    long_rec = _record(members[1])
    assert long_rec["state"] == "interrupted" and long_rec["pack"] == "pack-000"
    assert (Path(members[1]["checkpoint_dir"]) / "checkpoint.pt").exists()
    short_metrics = (Path(members[0]["run_dir"]) / "metrics.json").read_text()

    again = _pack_cli(members, features, stamp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "short: finished before, not trained again" in again.stderr
    assert (Path(members[0]["run_dir"]) / "metrics.json").read_text() == short_metrics
    long_metrics = json.loads((Path(members[1]["run_dir"]) / "metrics.json").read_text())
    assert long_metrics["resumed_from_epoch"] == 2 and long_metrics["epochs_run"] == 3
    assert _record(members[1])["attempt"] == 2 and _record(members[0])["attempt"] == 1
    assert json.loads(stamp.read_text())["members"] == {"short": "finished", "long": "finished"}


def test_bad_members_argument_is_one_line(tmp_path, capsys):
    assert pack.main(["run", "--family", "mlp", "--pack", "pack-000", "--members", "[{}]", "--files", "metrics.json",
                      "--features", str(tmp_path), "--stamp", str(tmp_path / "s.json")]) == 1
    assert "lacks" in capsys.readouterr().err


# ------------------------------------------------------------------------------ dry run
def _dry_config(tmp_path: Path, mlp_pack: int | None = None, **train) -> Path:
    wf = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["train"]["mlp"]["grid"]["lr"] = [0.01, 0.03, 0.1]
    config["train"]["mlp"]["grid"]["dropout"] = [0.2, 0.3]
    config["train"].update(train)
    if mlp_pack is not None:
        config["train"]["mlp"]["pack"] = mlp_pack
    (wf / "pack.yaml").write_text(yaml.safe_dump(config))
    return wf


def _counts(out: str) -> dict[str, int]:
    stats = out.split("Job stats:")[1].split("total")[0]
    return {parts[0]: int(parts[1]) for parts in (line.split() for line in stats.splitlines()[3:]) if len(parts) == 2}


@pytest.mark.workflow
def test_dry_run_lists_packs_and_one_adoption_per_combination(tmp_path):
    wf = _dry_config(tmp_path, pack=4)
    out = snakemake(wf, "-n", "--cores", "1", "--configfile", "pack.yaml").stdout
    counts = _counts(out)
    # MLP 6 -> packs of 4 and 2; CNN and RNN (one each) -> one pack each; TF-IDF is never packed
    assert counts["train_pack"] == 4 and counts["pack_member"] == 8 and "train_neural" not in counts, counts
    assert counts["train_tfidf"] == 1
    block = next(b for b in out.split("\n\n") if "rule train_pack:" in b and "mlp/pack-000" in b)
    assert "runtime=40" in block  # 4 members x train.resources.runtime 10

    wf2 = _dry_config(tmp_path / "2", mlp_pack=3)
    counts = _counts(snakemake(wf2, "-n", "--cores", "1", "--configfile", "pack.yaml").stdout)
    # train.mlp.pack: 3 (train.pack 1, the default) packs the MLP only; the CNN and RNN stay one job each
    assert counts["train_pack"] == 2 and counts["pack_member"] == 6 and counts["train_neural"] == 2, counts


@pytest.mark.workflow
def test_pack_config_is_checked_and_a_searched_family_is_not_packed(tmp_path):
    wf = _dry_config(tmp_path, pack=0)
    bad = snakemake(wf, "-n", "--cores", "1", "--configfile", "pack.yaml", check=False)
    assert bad.returncode != 0 and "train.pack" in bad.stdout + bad.stderr
    wf = _dry_config(tmp_path / "s", pack=4, search={"strategy": "halving", "eta": 3, "min_epochs": 1})
    run_ = snakemake(wf, "-n", "--cores", "1", "--configfile", "pack.yaml")
    assert "mlp is searched in stages (halving): its stage jobs and final runs are not packed" in run_.stdout + run_.stderr
    counts = _counts(run_.stdout)
    assert counts["train_rung"] == 6 and counts["train_pack"] == 2, counts  # the CNN's and the RNN's packs


# ------------------------------------------------------------------- report and progress
def test_report_and_progress_show_the_packed_jobs(tmp_path):
    import pandas as pd

    from meli.jobstatus import write_status
    from meli.report import packs
    from meli.sweep import DONE, Combination, Sweep, progress_text

    root = tmp_path / "results"
    for combo, pack_id in (("a", "pack-000"), ("b", "pack-000"), ("c", "pack-001")):
        write_status(root / "sweep" / "jobs" / "mlp" / f"{combo}.json", {"state": "finished", "attempt": 1,
                                                                        "pack": pack_id, "pack_size": 2})
    write_status(root / "sweep" / "jobs" / "cnn" / "d.json", {"state": "finished", "attempt": 1})  # its own job
    bench = root / "benchmarks" / "pack" / "mlp" / "pack-000.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\tcpu_time\n12.0\t0:00:12\t300\t8.0\n")
    runs = pd.DataFrame({"family": ["mlp", "mlp", "mlp", "cnn"], "combo": ["a", "b", "c", "d"]})
    rows = packs.packed_jobs(root, runs)
    assert [(r["pack"], r["runs"], r["wall_s"], r["wall_per_run_s"]) for r in rows] == [
        ("pack-000", 2, 12.0, 6.0), ("pack-001", 1, None, None)]
    assert "3 runs were trained in 2 cluster jobs" in packs.section(root, runs)
    assert packs.section(root, runs[runs["family"] == "cnn"]) == ""

    combos = [Combination("mlp", c, DONE, pack=p) for c, p in (("a", "pack-000"), ("b", "pack-000"), ("c", "pack-001"))]
    text = progress_text(Sweep({"started_at": "now"}, [*combos, Combination("cnn", "d", DONE)]))
    assert "packed: 3 combinations in 2 jobs (train.pack)" in text
    assert "packed" not in progress_text(Sweep({}, [Combination("cnn", "d", DONE)]))


# ------------------------------------------------------------------ through the workflow
@pytest.mark.workflow
def test_a_packed_sweep_with_a_failing_member_keeps_the_other_and_the_rerun_trains_only_the_new(tiny_run,
                                                                                                tmp_path):
    """The finished tiny run, its MLP grid extended by a diverging learning rate and packed by 2:
    the pack job fails (keep-going), the finished member stays and shows in the partial report;
    the next run (the bad value replaced) trains only the new member; then nothing is left to do."""
    wf = tmp_path / "wf"
    shutil.copytree(tiny_run[0], wf, symlinks=True)
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["mlp"]["grid"]["lr"] = [0.01, 1.0e30]
    cfg["train"]["mlp"]["pack"] = 2
    (wf / "grid.yaml").write_text(yaml.safe_dump(cfg))
    failed = snakemake(wf, "--cores", "2", "--keep-going", "--configfile", "grid.yaml", check=False)
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "done 4 · running 0 · failed 1 · left 0" in out, out[-4000:]
    # the lr-0.01 run (trained by the tiny run) was found finished: only the failing member is packed
    assert "packed: 1 combination in 1 job (train.pack)" in out
    jobs = wf / "results" / "sweep" / "jobs" / "mlp"
    records = {p.stem: json.loads(p.read_text()) for p in jobs.glob("*.json")}
    bad = next(c for c in records if "lr-1e+30" in c)
    good = next(c for c in records if "lr-0.01" in c)
    assert records[bad]["state"] == "diverged" and records[bad]["pack"] == "pack-000"
    good_metrics = (wf / "results" / "runs" / "mlp" / good / "metrics.json").read_text()
    assert "Partial: 1 of 5 combinations missing" in (wf / "results" / "report.html").read_text()

    cfg["train"]["mlp"]["grid"]["lr"] = [0.01, 0.03]
    (wf / "grid.yaml").write_text(yaml.safe_dump(cfg))
    again = snakemake(wf, "--cores", "2", "--configfile", "grid.yaml")
    pack_log = (wf / "results" / "logs" / "pack" / "mlp" / "pack-000.log").read_text()
    assert f"{good}: finished before, not trained again" in pack_log and "1 of 2" not in pack_log
    assert (wf / "results" / "runs" / "mlp" / good / "metrics.json").read_text() == good_metrics
    new = next(p for p in (wf / "results" / "runs" / "mlp").iterdir() if "lr-0.03" in p.name)
    assert json.loads((new / "metrics.json").read_text())["combo"] == new.name
    assert not list((wf / "results" / "packs").glob("mlp/*.json"))  # the stamp is temp: gone once adopted
    assert again.returncode == 0 and "Nothing to be done" in snakemake(wf, "-n", "--configfile", "grid.yaml").stdout
