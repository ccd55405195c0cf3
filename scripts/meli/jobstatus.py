"""One training job's attempt record, kept outside its declared outputs.

    python -m meli.jobstatus --status results/sweep/jobs/mlp/<combo>.json --log <rule log> -- \\
        python -m meli.train.neural ...

Snakemake deletes a failed job's outputs, so what happened to a combination (failed, diverged,
killed, how often tried) cannot live in them. The training rules run their command through this
wrapper, which writes ``results/sweep/jobs/{family}/{combo}.json`` (atomically) before the command
starts (``state: running``, attempt number, host, pid, SLURM job/array ids) and again when it ends
(``finished``, ``failed``, ``diverged``, ``interrupted`` (saved its state on a stop signal and
exited to be retried) or ``killed`` with the exit code or signal, and the attempt's ``seconds``).
``attempts`` lists the earlier attempts of the same job (state, seconds, start and end), which is
what the report's time lost to restarts is counted from. A job killed
together with this wrapper (SLURM memory or time limit, node crash) stays ``running`` here;
:mod:`meli.sweep` then reads SLURM's log of that job to say why. Only the standard library is
imported, so the wrapper adds milliseconds to a job.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meli.cli import entry_point  # standard library only, like this module

# meli.train.neural exits with this code when the loss diverged: NaN/inf, or far above its start
# for epochs in a row (NonFiniteLoss.exit_code).
DIVERGED_EXIT = 3
# meli.train.neural exits with this code (EX_TEMPFAIL) after a stop signal (SIGTERM: SLURM's time
# limit, scancel, preemption; SIGUSR1: its early warning) once it has saved its state within the
# epoch: the attempt was interrupted, not a crash, and the next attempt resumes where it stopped.
INTERRUPTED_EXIT = 75
# Earlier attempts kept in a record's "attempts" list (state, seconds, detail), newest last.
KEEP_ATTEMPTS = 20
SLURM_IDS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_status(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record, or None when absent or unreadable (a record is a hint, never a reason to fail)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_status(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Atomic replace; a full disk or read-only results/ only costs the record, not the job."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        print(f"meli.jobstatus: could not write {path}: {err}", file=sys.stderr, flush=True)
        try:
            tmp.unlink()
        except OSError:
            pass


def outcome(returncode: int) -> tuple[str, str]:
    """(state, detail) for a command's exit status."""
    if returncode == 0:
        return "finished", "exit code 0"
    if returncode == DIVERGED_EXIT:
        return "diverged", "the training loss diverged (exit code 3)"
    if returncode == INTERRUPTED_EXIT:
        return "interrupted", ("saved its training state on a stop signal and exited (code 75) to be retried; "
                               "the next attempt resumes there")
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = " (out of memory, preemption or a manual kill)" if name == "SIGKILL" else ""
        return "killed", f"killed by {name}{why}"
    return "failed", f"exit code {returncode}"


def _earlier_attempts(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The previous record's attempt list plus that attempt itself (a record still ``running`` was
    killed together with its job: its end and seconds are unknown)."""
    if not previous.get("attempt"):
        return []
    last = {key: previous.get(key) for key in ("attempt", "state", "started_at", "ended_at", "seconds", "detail")}
    earlier = previous.get("attempts") if isinstance(previous.get("attempts"), list) else []
    return [*earlier, last][-KEEP_ATTEMPTS:]


def restart_cost(record: dict[str, Any] | None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What restarts cost one combination (issue 23): ``attempts`` (of its last job, or the trainer's
    count), ``earlier_s`` (wall seconds of its earlier attempts; ``unknown`` of them had no end on
    record) and, for a finished run (``metrics``), ``lost_s``: the earlier attempts' time the run did
    not keep (work after their last save, exits) plus the resumed attempts' startup before training
    went on. Queue waits between attempts are not counted (SLURM's, not the job's)."""
    record, metrics = record or {}, metrics or {}
    earlier = [a for a in record.get("attempts") or [] if isinstance(a, dict)]
    earlier_s = sum(float(a.get("seconds") or 0.0) for a in earlier)
    attempts = max(int(record.get("attempt") or 0), int(metrics.get("attempts") or 0), 1 if metrics else 0)
    lost = None
    if metrics:
        kept = float(metrics.get("resumed_elapsed_s") or 0.0)
        lost = (max(0.0, earlier_s - kept) if earlier else 0.0) + float(metrics.get("restart_startup_s") or 0.0)
    return {"attempts": attempts, "earlier_s": earlier_s, "lost_s": lost,
            "unknown": sum(1 for a in earlier if a.get("seconds") is None)}


def run(status_path: str | os.PathLike, command: list[str], log: str | None = None) -> int:
    previous = read_status(status_path) or {}
    # A halving combination's rung jobs share one record: attempts count tries of the same job
    # (its log), so rung 1's first try is attempt 1, not the combination's second job.
    same_job = previous.get("log") == log
    tries = int(previous.get("attempt", 0)) if same_job else 0
    record = {
        "state": "running",
        "attempt": tries + 1,
        "attempts": _earlier_attempts(previous) if same_job else [],
        "started_at": now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "log": log,
        "command": command,
        **{key.lower(): os.environ[key] for key in SLURM_IDS if os.environ.get(key)},
    }
    write_status(status_path, record)
    print(f"meli.jobstatus: attempt {record['attempt']} of this job", file=sys.stderr, flush=True)
    started = time.monotonic()
    child = subprocess.Popen(command)

    def forward(signum, _frame):  # SLURM's time limit sends SIGTERM first: let the job see it
        record["signal_received"] = signal.Signals(signum).name
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    returncode = child.wait()
    state, detail = outcome(returncode)
    if state == "killed" and record.get("signal_received") == "SIGTERM":
        detail += " after SIGTERM (time limit, preemption or scancel)"
    if state == "interrupted" and record.get("signal_received"):
        detail = detail.replace("a stop signal", record["signal_received"])
    record.update(state=state, detail=detail, returncode=returncode, ended_at=now(),
                  seconds=round(time.monotonic() - started, 3))
    write_status(status_path, record)
    print(f"meli.jobstatus: {state}: {detail}", file=sys.stderr, flush=True)
    return returncode if returncode >= 0 else 128 - returncode


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--status", required=True, help="the record: results/sweep/jobs/{family}/{combo}.json")
    ap.add_argument("--log", default=None, help="the rule's log file (recorded for the report)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the training command")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given after --")
    return run(args.status, command, args.log)


if __name__ == "__main__":
    raise SystemExit(main())
