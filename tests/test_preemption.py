"""Preemption-safe training (issue 23): a stop signal within an epoch saves the state at the next
batch boundary, the job exits 75 (meli.jobstatus: interrupted; Snakemake retries it) and the next
attempt resumes there, ending bit for bit like an uninterrupted run (CPU)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from meli import jobstatus
from meli.jobstatus import INTERRUPTED_EXIT
from meli.train import checkpoint, neural
from meli.train.checkpoint import CHECKPOINT_MINUTES_ENV, KILL_SIGNAL_ENV, SIGNAL_AT_ENV
from tests.test_sparse_mlp import PARAMS as SPARSE
from tests.test_sparse_mlp import sparse_data as _sparse_data
from tests.test_train import MLP, make_features

sparse_data = _sparse_data  # the fixture, under its own name here

ROOT = Path(__file__).resolve().parents[1]
# 300 train rows / batch 32: 10 batches an epoch. Dropout and a cosine schedule: the RNG state and
# the position in the schedule must both come back exactly.
PARAMS = {**MLP, "epochs": 3, "patience": 3, "lr_schedule": "cosine"}
# The sparse TF-IDF MLP's LazyAdam state must come back too (meli.train.sparse).
COLS = ["epoch", "train_loss", "val_loss", "val_bacc"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return make_features(tmp_path_factory.mktemp("preempt"), n_train=300, n_val=80)


def train(toy, out: Path, env: dict | None = None, params: dict | None = None, extra: tuple = (),
          status: Path | None = None) -> subprocess.CompletedProcess:
    """``meli.train.neural`` (through ``meli.jobstatus`` with ``status``, as rules/common.smk's
    TRAIN_SHELL runs it); ``toy``: (features, matrix), or (features, None) for TF-IDF input."""
    features, matrix = toy
    source = ["--matrix", str(matrix)] if matrix is not None else ["--tfidf", str(features / "tfidf")]
    cmd = [sys.executable, "-m", "meli.train.neural", "--family", "mlp", "--params", json.dumps(params or PARAMS),
           "--features", str(features), *source, "--out-dir", str(out), "--device", "cpu", "--threads", "1", *extra]
    if status is not None:
        cmd = [sys.executable, "-m", "meli.jobstatus", "--status", str(status), "--log", "train.log", "--", *cmd]
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "scripts"), **(env or {})},
                          capture_output=True, text=True, timeout=120)


def train_here(toy, out: Path, env: dict | None = None, params: dict | None = None, **options) -> int:
    """The same job in this process (pytest's main thread, so the signal handlers are installed):
    0, or the exit code of the Terminated it raised. Quicker than a subprocess (no imports)."""
    features, matrix = toy
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        neural.run("mlp", params or PARAMS, features, matrix, out, "cpu", 1,
                   tfidf_dir=features / "tfidf" if matrix is None else None, **options)
        return 0
    except checkpoint.Terminated as stop:
        return int(stop.code)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def straight(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "runs" / "mlp" / "straight"
    assert train_here(toy, out) == 0
    return out


def assert_identical(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for key in ("val_bacc", "val_loss", "final_train_loss", "best_epoch", "epochs_run", "stopped_early", "params"):
        assert ma[key] == mb[key], key
    pd.testing.assert_frame_equal(pd.read_csv(a / "history.csv")[COLS], pd.read_csv(b / "history.csv")[COLS],
                                  check_exact=True)
    wa, wb = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    pa, pb = (pd.read_parquet(d / "val_predictions.parquet") for d in (a, b))
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)


def test_a_stop_signal_mid_epoch_saves_there_and_the_retry_ends_identical(toy, straight, tmp_path):
    out, status = tmp_path / "runs" / "mlp" / "c", tmp_path / "status.json"
    ckpt = tmp_path / "checkpoints" / "mlp" / "c" / checkpoint.CHECKPOINT
    # attempt 1: SIGTERM after batch 4 of epoch 2 (SLURM's time limit)
    first = train(toy, out, {SIGNAL_AT_ENV: "2:4,2:7", KILL_SIGNAL_ENV: "TERM"}, status=status)
    assert first.returncode == INTERRUPTED_EXIT, first.stderr[-3000:]
    assert "received SIGTERM" in first.stderr and "within epoch 2 after batch 4" in first.stderr
    state = torch.load(ckpt, weights_only=True)["state"]
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 2 and state["partial"]["batch"] == 4
    record = json.loads(status.read_text())
    assert record["state"] == "interrupted" and "resumes" in record["detail"] and record["seconds"] > 0
    assert not (out / "metrics.json").exists()
    # attempt 2: resumes after batch 4; SIGUSR1 (the early warning) after batch 7 of the same epoch
    second = train(toy, out, {SIGNAL_AT_ENV: "2:4,2:7", KILL_SIGNAL_ENV: "USR1"}, status=status)
    assert second.returncode == INTERRUPTED_EXIT, second.stderr[-3000:]
    assert "within epoch 2, after batch 4" in second.stderr and "received SIGUSR1" in second.stderr
    assert torch.load(ckpt, weights_only=True)["state"]["partial"]["batch"] == 7
    record = json.loads(status.read_text())
    assert record["state"] == "interrupted" and record["attempt"] == 2
    assert [a["state"] for a in record["attempts"]] == ["interrupted"] and record["attempts"][0]["seconds"] > 0
    # attempt 3 finishes (here: quicker than a third subprocess)
    assert train_here(toy, out, {SIGNAL_AT_ENV: "2:4,2:7"}, checkpoint_dir=ckpt.parent) == 0
    assert_identical(straight, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["attempts"] == 3 and metrics["resumed_at"] == [[2, 4], [2, 7]]
    assert metrics["restart_startup_s"] > 0 and metrics["resumed_elapsed_s"] > 0
    assert not ckpt.parent.exists()


def test_a_signal_during_validation_saves_the_finished_epoch(toy, straight, tmp_path, caplog):
    out = tmp_path / "runs" / "mlp" / "v"
    with caplog.at_level(logging.INFO, logger="meli.train"):
        assert train_here(toy, out, {SIGNAL_AT_ENV: "1:val"}) == INTERRUPTED_EXIT
    assert "stopping after epoch 1" in caplog.text and "received SIGTERM" in caplog.text
    state = torch.load(tmp_path / "checkpoints" / "mlp" / "v" / checkpoint.CHECKPOINT, weights_only=True)["state"]
    assert state["epoch"] == 1 and state["partial"] is None and len(state["history"]) == 1
    assert train_here(toy, out) == 0
    assert_identical(straight, out)


def test_the_periodic_checkpoint_within_an_epoch_survives_a_sigkill(toy, straight, tmp_path):
    """--checkpoint-minutes: a state within the epoch on disk, so a SIGKILL loses at most that much."""
    out = tmp_path / "runs" / "mlp" / "k"
    # every ~0 minutes: a checkpoint after every batch; SIGKILL after batch 5 of epoch 2
    # (as the rules pass train.checkpoint_minutes: in the environment, see rules/common.smk)
    killed = train(toy, out, {SIGNAL_AT_ENV: "2:5", KILL_SIGNAL_ENV: "KILL", CHECKPOINT_MINUTES_ENV: "1e-9"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    part = torch.load(tmp_path / "checkpoints" / "mlp" / "k" / checkpoint.CHECKPOINT, weights_only=True)["state"]["partial"]
    assert (part["epoch"], part["batch"]) == (2, 4)  # the last boundary saved before the kill
    assert train_here(toy, out) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_at"] == [[2, 4]]
    assert_identical(straight, out)


def test_the_sparse_tfidf_mlp_resumes_its_lazy_adam_state_mid_epoch(sparse_data, tmp_path):
    """Two optimizers (LazyAdam for the sparse bag, Adam for the rest) and a cosine schedule."""
    _, features = sparse_data
    params = {**SPARSE, "epochs": 2, "lr_schedule": "cosine"}
    runs = tmp_path / "runs" / "mlp"
    assert train_here((features, None), runs / "a", params=params) == 0
    assert train_here((features, None), runs / "b", {SIGNAL_AT_ENV: "1:3"}, params=params) == INTERRUPTED_EXIT
    assert train_here((features, None), runs / "b", params=params) == 0
    assert json.loads((runs / "b" / "metrics.json").read_text())["resumed_at"] == [[1, 3]]
    assert_identical(runs / "a", runs / "b")


def test_a_checkpoint_from_before_mid_epoch_state_still_resumes(toy, straight, tmp_path, caplog):
    """Checkpoints written before issue 23 have no ``partial``/``restarts``: an epoch's state."""
    out = tmp_path / "runs" / "mlp" / "old"
    assert train_here(toy, out, {SIGNAL_AT_ENV: "1:val"}) == INTERRUPTED_EXIT  # the checkpoint of epoch 1
    path = tmp_path / "checkpoints" / "mlp" / "old" / checkpoint.CHECKPOINT
    ckpt = torch.load(path, weights_only=True)
    for key in ("partial", "restarts"):
        del ckpt["state"][key]
    torch.save(ckpt, path)
    with caplog.at_level(logging.INFO, logger="meli.train"):
        assert train_here(toy, out) == 0
    assert "after epoch 1" in caplog.text
    assert_identical(straight, out)


def test_jobstatus_records_an_interruption_apart_from_a_crash():
    assert jobstatus.outcome(INTERRUPTED_EXIT)[0] == "interrupted"
    assert jobstatus.outcome(1)[0] == "failed" and jobstatus.outcome(-9)[0] == "killed"


def test_attempts_and_time_lost_to_restarts_in_progress_and_report(tmp_path):
    """`make report`'s progress and the report's cost section count restarts (issue 23)."""
    import pandas as pd

    from meli import sweep
    from meli.io import write_json
    from meli.report import restarts
    from tests.test_sweep import _finish, _record, _results

    results = _results(tmp_path, {"mlp": ["twice", "once", "stopped"]})
    for combo in ("twice", "once"):
        _finish(results, "mlp", combo, seconds=40)
    # "twice": attempt 1 ran 30 s and was interrupted; the run kept 25 s of it, attempt 2 took 4 s to resume
    _record(results, "mlp", "twice", state="finished", attempt=2, started_at="2026-01-01T00:00:00+00:00",
            ended_at="2026-01-01T00:00:40+00:00",
            attempts=[{"attempt": 1, "state": "interrupted", "seconds": 30.0}])
    metrics = results / "runs" / "mlp" / "twice" / "metrics.json"
    write_json(metrics, {**json.loads(metrics.read_text()), "attempts": 2, "restart_startup_s": 4.0,
                         "resumed_elapsed_s": 25.0, "resumed_at": [[3, 120]]})
    _record(results, "mlp", "stopped", state="interrupted", detail=jobstatus.outcome(INTERRUPTED_EXIT)[1])
    assert jobstatus.restart_cost(json.loads(sweep.status_path(results, "mlp", "twice").read_text()),
                                  json.loads(metrics.read_text()))["lost_s"] == pytest.approx(9.0)

    scanned = sweep.scan(results, final=True)
    text = sweep.progress_text(scanned)
    assert "restarts: 1 combination took more than one attempt (1 restarts) · ~0m09s lost to restarts" in text, text
    assert "interrupted       mlp/stopped, 1 attempt" in text and scanned.counts["failed"] == 1, text

    runs = pd.DataFrame({"family": ["mlp", "mlp"], "combo": ["twice", "once"],
                         "run_dir": [str(results / "runs" / "mlp" / c) for c in ("twice", "once")]})
    html = restarts.section(results, runs)
    assert "1 of 2 runs took more than one attempt (1 restarts in all); about 9 s were lost" in html, html
    assert "<td>2</td>" in html.replace(' class="num"', "") or ">2<" in html
    assert "first attempt" in restarts.section(results, runs.iloc[1:])


def test_a_signal_in_a_rungs_last_validation_finishes_the_rung(toy, tmp_path):
    """A rung job (successive halving) at its epoch budget has nothing left to resume: it writes
    its record and state instead of exiting to be retried."""
    out = tmp_path / "search" / "mlp" / "rung-0" / "c"
    snapshot = out / "state.pt"
    assert train_here(toy, out, {SIGNAL_AT_ENV: "1:val"}, until_epoch=1, snapshot=snapshot, rung=0) == 0
    assert snapshot.exists() and json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


def test_the_jobs_bash_outlives_the_step_signal_and_exits_with_the_trainers_code(tmp_path):
    """SLURM signals every process of the job step: with the rules' prefix (trap) bash waits for
    the wrapper instead of dying, also around STAGE_SHELL's `( ... ) ||`, and exits 75."""
    import re
    import signal
    import time

    prefix = re.search(r'"(export MELI_CHECKPOINT_MINUTES=%s; trap : TERM USR1; )"',
                       (ROOT / "rules" / "common.smk").read_text()).group(1) % 10.0
    child = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); "
             f"open({str(tmp_path / 'ready')!r}, 'w').write(os.environ['MELI_CHECKPOINT_MINUTES']); time.sleep(30)")
    script = f"set -euo pipefail; {prefix}( {sys.executable} -c {child!r} > {tmp_path / 'log'} 2>&1 ) || exit $?"
    proc = subprocess.Popen(["bash", "-c", script])
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "ready").read_text() == "10.0"
    tree = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in [proc.pid, *map(int, tree)]:  # every process, as slurmstepd does
        os.kill(pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == INTERRUPTED_EXIT
