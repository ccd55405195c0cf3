"""meli.sweep and meli.jobstatus: every missing combination gets its state, attempts and log;
progress and ETA come from the finished ones. (The workflow-level behaviour -- partial report on
failure, retry of only the failed combinations -- is in test_workflow.py.)"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meli import jobstatus, sweep
from meli.io import write_json

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}


def _results(tmp_path: Path, combos: dict[str, list[str]]) -> Path:
    results = tmp_path / "results"
    sweep.write_manifest(results, {f: {c: {"seed": 0} for c in cs} for f, cs in combos.items()}, {}, ["x.yaml"])
    return results


def _finish(results: Path, family: str, combo: str, seconds: float | None = None) -> None:
    run = results / "runs" / family / combo
    run.mkdir(parents=True)
    for name in sweep.run_files(family):
        (run / name).write_text("x")
    write_json(run / "metrics.json", {"family": family, "params": {}, "val_bacc": 0.5, "elapsed_s": 1.0})
    if seconds is not None:
        write_json(sweep.status_path(results, family, combo), {
            "state": "finished", "attempt": 1, "started_at": "2026-01-01T00:00:00+00:00",
            "ended_at": f"2026-01-01T00:{int(seconds) // 60:02d}:{int(seconds) % 60:02d}+00:00"})


def _record(results: Path, family: str, combo: str, **fields) -> None:
    write_json(sweep.status_path(results, family, combo), {"attempt": 1, "host": socket.gethostname(), **fields})


def _slurm_log(results: Path, rel: str, text: str) -> Path:
    path = results / "logs" / "slurm" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


OOM = ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=812.batch. Some of your processes may "
       "have been killed by the cgroup out-of-memory handler.\n")
TIME = "slurmstepd: error: *** JOB 813 ON node7 CANCELLED AT 2026-01-01T03:00:00 DUE TO TIME LIMIT ***\n"


def test_every_state_with_attempts_detail_and_log(tmp_path):
    names = ["done", "failed", "diverged", "oom", "timeout", "array", "early_oom", "lost", "crashed", "never"]
    results = _results(tmp_path, {"mlp": names})
    _finish(results, "mlp", "done", seconds=90)
    log = sweep.train_log(results, "mlp", "failed")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch 1 ...\nOSError: [Errno 28] No space left on device: could not write results/runs/x/model.pt\n"
                   "meli.jobstatus: failed: exit code 1\n")
    _record(results, "mlp", "failed", state="failed", detail="exit code 1", attempt=3, log=str(log))
    _record(results, "mlp", "diverged", state="diverged", detail="the training loss diverged (exit code 3)")
    # killed on a compute node together with the wrapper: the record still says running
    _record(results, "mlp", "oom", state="running", host="node7", slurm_job_id="812", attempt=2)
    _slurm_log(results, "rule_train_neural/mlp_oom/812.log", OOM)
    _record(results, "mlp", "timeout", state="running", host="node7", slurm_job_id="813")
    _slurm_log(results, "rule_train_neural/mlp_timeout/813.log", TIME)
    _record(results, "mlp", "array", state="running", host="node7", slurm_job_id="901",
            slurm_array_job_id="900", slurm_array_task_id="4")
    _slurm_log(results, "rule_train_neural/900_4.log", TIME)
    _slurm_log(results, "rule_train_neural/mlp_early_oom/814.log", OOM)  # died before the wrapper ran
    _finish(results, "mlp", "lost")
    (results / "runs" / "mlp" / "lost" / "model.pt").unlink()
    _record(results, "mlp", "lost", state="finished", ended_at="2026-01-01T01:00:00+00:00")
    _record(results, "mlp", "crashed", state="running", pid=2**22 + 7)  # no such process here

    got = {c.combo: c for c in sweep.scan(results).combinations}
    states = {k: c.state for k, c in got.items()}
    assert states == {
        "done": "done", "failed": "failed", "diverged": "diverged", "oom": "killed for memory",
        "timeout": "timed out", "array": "timed out", "early_oom": "killed for memory", "lost": "outputs missing",
        "crashed": "killed", "never": "not run yet",
    }
    assert got["failed"].attempts == 3 and "No space left on device" in got["failed"].detail
    assert got["failed"].log == str(log)
    assert got["oom"].attempts == 2 and "812.log" in got["oom"].detail
    assert got["early_oom"].log.endswith("814.log")
    assert "retrains" in got["lost"].detail and "model.pt" in got["lost"].detail
    assert got["never"].log == str(sweep.train_log(results, "mlp", "never"))
    assert got["done"].duration_s == 90


def test_progress_and_eta_from_the_finished_jobs(tmp_path):
    results = _results(tmp_path, {"mlp": ["a", "b", "c", "d", "e"], "tfidf": ["t"]})
    _finish(results, "mlp", "a", seconds=100)
    _finish(results, "mlp", "b", seconds=200)
    _record(results, "mlp", "c", state="running", host="node1", started_at=time.strftime(
        "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 50)))
    _record(results, "tfidf", "t", state="failed", detail="exit code 1")
    s = sweep.scan(results)
    assert s.counts == {"done": 2, "running": 1, "failed": 1, "left": 2}
    # mean 150 s: the running one needs ~100 s more, the two left 300 s, one at a time
    assert s.eta_s() == pytest.approx(400, abs=3)
    text = sweep.progress_text(s)
    assert "done 2 · running 1 · failed 1 · left 2 · ETA ~6m" in text
    assert "tfidf/t" in text and "not run yet" in text
    # once the sweep is over (Snakemake's onerror), nothing is running any more
    assert [c.state for c in sweep.scan(results, final=True).by_state("killed")] == ["killed"]


def test_report_without_a_manifest_says_what_to_do(tmp_path):
    with pytest.raises(sweep.SweepError, match="no sweep has started here yet"):
        sweep.scan(tmp_path / "results")


def _wait_for(path: Path, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = jobstatus.read_status(path)
        if record and record.get("state") == state:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {state}: {jobstatus.read_status(path)}")


def test_wrapper_records_attempts_running_and_a_kill(tmp_path):
    results = _results(tmp_path, {"cnn": ["c"]})
    status = sweep.status_path(results, "cnn", "c")
    cmd = [sys.executable, "-m", "meli.jobstatus", "--status", str(status), "--"]
    # attempt 1: fails
    assert subprocess.run([*cmd, sys.executable, "-c", "raise SystemExit(2)"], env=ENV).returncode == 2
    assert jobstatus.read_status(status)["state"] == "failed"
    # attempt 2: running (seen as running by a report), then SIGKILLed like the kernel's OOM killer
    proc = subprocess.Popen([*cmd, "sleep", "30"], env=ENV)
    record = _wait_for(status, "running")
    assert record["attempt"] == 2 and record["pid"] == proc.pid
    [c] = sweep.scan(results).combinations
    assert c.state == "running" and c.attempts == 2
    assert sweep.scan(results, final=True).combinations[0].state == "killed"  # the sweep is over: not running
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 30
    while not children.read_text().split() and time.monotonic() < deadline:  # the record comes before the child
        time.sleep(0.02)
    child = int(children.read_text().split()[0])
    os.kill(child, signal.SIGKILL)
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    [c] = sweep.scan(results).combinations
    assert c.state == "killed" and "SIGKILL" in c.detail and c.attempts == 2
    # a diverged training run exits with 3
    assert subprocess.run([*cmd, sys.executable, "-c", "raise SystemExit(3)"], env=ENV).returncode == 3
    assert sweep.scan(results).combinations[0].state == "diverged"


def test_outcomes():
    assert jobstatus.outcome(0)[0] == "finished"
    assert jobstatus.outcome(jobstatus.DIVERGED_EXIT)[0] == "diverged"
    assert jobstatus.outcome(-signal.SIGKILL) == ("killed", "killed by SIGKILL (out of memory, preemption or a manual kill)")
    assert jobstatus.outcome(1) == ("failed", "exit code 1")


def test_an_incomplete_run_is_not_done(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in sweep.run_files("tfidf"):
        (run / name).write_text("x")
    assert "not valid JSON" in sweep.incomplete(run, "tfidf")
    (run / "metrics.json").write_text(json.dumps({"family": "tfidf", "params": {}, "val_bacc": float("nan")}))
    assert "finite" in sweep.incomplete(run, "tfidf")
    (run / "metrics.json").write_text(json.dumps({"family": "tfidf", "params": {}, "val_bacc": 0.7}))
    assert sweep.incomplete(run, "tfidf") is None
    (run / "model.joblib").unlink()
    assert sweep.incomplete(run, "tfidf") == "missing model.joblib"


def test_slurm_verdict_is_about_the_recorded_attempt(tmp_path):
    """Attempt 1 was killed for memory; attempt 2 (a new SLURM job) is running: not 'killed'."""
    results = _results(tmp_path, {"cnn": ["c"]})
    _slurm_log(results, "rule_train_neural/cnn_c/700.log", OOM)
    _record(results, "cnn", "c", state="running", host="node2", slurm_job_id="701", attempt=2)
    [c] = sweep.scan(results).combinations
    assert c.state == "running" and c.attempts == 2
    _slurm_log(results, "rule_train_neural/cnn_c/701.log", TIME)
    [c] = sweep.scan(results).combinations
    assert c.state == "timed out" and "701.log" in c.detail
