"""Several grid combinations of one neural family in one cluster job (``train.pack``).

    python -m meli.train.pack run --family mlp --pack pack-000 --members '[{...}, ...]' \\
        --features results/features --device auto --threads 8 --mem-mb 32000 \\
        --stamp results/packs/mlp/pack-000.json
    python -m meli.train.pack adopt --staged results/packs/mlp/staged/<combo> \\
        results/runs/mlp/<combo>/metrics.json ...

On small data a job's start (queue wait, Python, ``import torch``, loading the splits and the
matrix) costs more than its training, and each job holds a whole GPU. ``run`` trains the pack's
combinations one after another in this one process, with the inputs loaded once, each exactly as
its own ``meli.train.neural`` job would: its own log (``results/logs/train/...``), attempt record
(``results/sweep/jobs/...``, with the pack's id), per-epoch checkpoints and run. A combination that
fails is recorded and the next one trains; the job exits non-zero then, so Snakemake retries it
(more memory and time) and a rerun runs it again: a combination already finished (its run, or its
staged copy, complete and newer than its inputs) is not trained again, an unfinished one resumes
from its checkpoint. Rule ``train_pack`` declares only the stamp (a ``temp`` file, written when
every member finished): Snakemake deletes a failed job's outputs, so the members' files cannot be
its outputs. Each member's files are staged under ``results/packs/{family}/staged/{combo}/`` and
hard-linked into its run directory at once (the partial report shows it even if a later member
fails); rule ``pack_member`` (a local job per combination, whose outputs are the run's usual
files) then ``adopt``\\ s the staged files. docs/design.md, "Packing combinations", says why.
Only the standard library is imported at the top: ``adopt`` runs on the submit host per member.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from meli import jobstatus
from meli.cli import MeliError, entry_point

log = logging.getLogger("meli.train.pack")

METRICS = "metrics.json"  # (meli.runs.METRICS, without importing pandas here)


class PackError(MeliError, ValueError):
    """A pack's member cannot be adopted or the pack's arguments are wrong."""


# ------------------------------------------------------------------------------- adopt (local)
def adopt(staged: str | os.PathLike, outputs: list[str]) -> None:
    """Move a member's staged files onto its declared outputs (metrics.json last), dated now."""
    staged = Path(staged)
    missing = [Path(o).name for o in outputs if not (staged / Path(o).name).is_file()]
    if missing:
        raise PackError(f"{staged}: no trained result to adopt ({', '.join(missing)} missing): the pack job did not "
                        "finish this combination (its attempt record and log say why); rerun to train it")
    for out in sorted(outputs, key=lambda o: Path(o).name == METRICS):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / out.name, out)
        os.utime(out)  # newer than the pack's stamp, so Snakemake sees it up to date
    for d in (staged, staged.parent):
        try:
            d.rmdir()
        except OSError:
            break


# ---------------------------------------------------------------------------- members
def _mtime_ok(run_dir: Path, names: list[str], inputs: list[str]) -> bool:
    try:
        oldest = min((run_dir / n).stat().st_mtime for n in names)
        newest_input = max((Path(p).stat().st_mtime for p in inputs), default=0.0)
    except (OSError, ValueError):
        return False
    return oldest >= newest_input


def finished_run(run_dir: str | os.PathLike, names: list[str], family: str, params: dict[str, Any],
                 inputs: list[str]) -> bool:
    """A member's run that need not be trained again: every file there, the record sound
    (meli.runs.check_record), made for these params and newer than every input file."""
    from meli import runs

    run_dir = Path(run_dir)
    if not all((run_dir / n).is_file() for n in names) or not _mtime_ok(run_dir, names, inputs):
        return False
    try:
        record = runs.check_record(run_dir)
    except (runs.RunError, OSError, ValueError):
        return False
    return record.get("family") == family and json.dumps(record.get("params"), sort_keys=True) == json.dumps(
        params, sort_keys=True)


def link_files(src: Path, dst: Path, names: list[str]) -> None:
    """Hard links of a run's files (a copy where links are not possible), metrics.json last."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(names, key=lambda n: n == METRICS):
        tmp = dst / f".{name}.{os.getpid()}.link"
        try:
            os.link(src / name, tmp)
        except OSError:
            shutil.copy2(src / name, tmp)
        os.replace(tmp, dst / name)


def _begin_record(member: dict[str, Any], pack: dict[str, Any]) -> dict[str, Any]:
    """meli.jobstatus's record for one member (the same keys, plus the pack's id and size)."""
    previous = jobstatus.read_status(member["status"]) or {}
    same_job = previous.get("log") == member["log"]
    tries = int(previous.get("attempt", 0)) if same_job else 0
    record = {
        "state": "running", "attempt": tries + 1, "attempts": jobstatus._earlier_attempts(previous) if same_job else [],
        "started_at": jobstatus.now(), "host": socket.gethostname(),
        "pid": os.getpid(), "log": member["log"], "command": ["python", "-m", "meli.train.pack", "run", "..."],
        **pack,
        **{key.lower(): os.environ[key] for key in jobstatus.SLURM_IDS if os.environ.get(key)},
    }
    jobstatus.write_status(member["status"], record)
    record["_started"] = time.monotonic()
    return record


def _end_record(member: dict[str, Any], record: dict[str, Any], returncode: int) -> str:
    state, detail = jobstatus.outcome(returncode)
    seconds = round(time.monotonic() - record.pop("_started", time.monotonic()), 3)
    record.update(state=state, detail=detail, returncode=returncode, ended_at=jobstatus.now(), seconds=seconds)
    jobstatus.write_status(member["status"], record)
    return state


class _MemberLog:
    """The member's own log file (results/logs/train/...), next to the pack's log (stderr)."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, mode="w")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                                    "%Y-%m-%d %H:%M:%S"))

    def __enter__(self):
        logging.getLogger().addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def train_member(member: dict[str, Any], settings: dict[str, Any], loaded: dict) -> int:
    """Train one member like its own ``meli.train.neural`` job; its exit code (0, 1, 3 diverged).
    A stop signal (SLURM's time limit, --signal, preemption: the trainer saves its state within the
    epoch) is recorded as ``interrupted`` and raised: the pack stops there and exits 75."""
    from meli.train import neural

    record = _begin_record(member, settings["pack"])
    code = 1
    with _MemberLog(member["log"]):
        log.info("pack %s: member %s (attempt %d)", settings["pack"]["pack"], member["combo"], record["attempt"])
        try:
            neural.train(neural.Job(settings["family"], member["params"], settings["features"], member.get("matrix"),
                                    member["staged_dir"], settings["device"], settings["threads"],
                                    member["checkpoint_dir"], settings["mem_mb"], member.get("tfidf"),
                                    member["combo"], checkpoint_minutes=settings.get("checkpoint_minutes")), loaded)
            code = 0
        except neural.Terminated as stop:
            _end_record(member, record, int(stop.code))
            raise
        except neural.NonFiniteLoss as err:
            log.error("%s", err)
            code = err.exit_code
        except (MeliError, ValueError, FileNotFoundError, RuntimeError) as err:  # incl. CUDA out of memory
            log.error("%s", err)
        except Exception:  # a bug hit by one member must not cost the others: its traceback, then the next
            log.exception("member %s failed", member["combo"])
        finally:
            if code != 0:
                loaded.clear()  # whatever that member left on the device
                _free_gpu()
    _end_record(member, record, code)
    return code


def _free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _done_already(member: dict[str, Any], family: str, names: list[str]) -> bool:
    """A member finished before (an earlier attempt of this pack, or a sibling's rerun): put its
    files where both pack_member (the staged copy) and the partial report (the run) find them."""
    from meli.train.neural import resolve_params

    try:
        params = resolve_params(family, member["params"])
    except ValueError:
        return False  # its training reports the problem
    run_dir, staged = Path(member["run_dir"]), Path(member["staged_dir"])
    for here, there in ((run_dir, staged), (staged, run_dir)):
        if finished_run(here, names, family, params, member["inputs"]):
            if not finished_run(there, names, family, params, member["inputs"]):
                link_files(here, there, names)
            for name in names:  # dated now: this sweep keeps it (meli.sweep: not "outdated", done)
                os.utime(run_dir / name)
            return True
    return False


def run_pack(settings: dict[str, Any], members: list[dict[str, Any]], names: list[str],
             stamp: str | os.PathLike) -> dict[str, str]:
    """Train every unfinished member, one after another; ``{combo: state}``. The stamp is written
    only when every member has finished."""
    from meli.io import write_json

    loaded: dict = {}
    states: dict[str, str] = {}
    for member in members:
        if _done_already(member, settings["family"], names):
            log.info("%s: finished before, not trained again", member["combo"])
            states[member["combo"]] = "finished"
            continue
        code = train_member(member, settings, loaded)
        states[member["combo"]] = jobstatus.outcome(code)[0]
        if code == 0:
            link_files(Path(member["staged_dir"]), Path(member["run_dir"]), names)
    failed = sorted(c for c, s in states.items() if s != "finished")
    log.info("pack %s: %d of %d finished%s", settings["pack"]["pack"], len(members) - len(failed), len(members),
             f"; not finished: {', '.join(failed)} (see their logs)" if failed else "")
    if not failed:
        write_json(stamp, {"pack": settings["pack"]["pack"], "family": settings["family"], "members": states,
                           "finished_at": jobstatus.now()})
    return states


# ------------------------------------------------------------------------------------ CLI
def _members(text: str) -> list[dict[str, Any]]:
    try:
        members = json.loads(text)
    except ValueError as err:
        raise PackError(f"--members is not JSON: {err}") from None
    keys = ("combo", "params", "run_dir", "staged_dir", "checkpoint_dir", "status", "log", "inputs")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise PackError("--members must be a non-empty JSON list of objects")
    for m in members:
        missing = [k for k in keys if k not in m]
        if missing:
            raise PackError(f"--members: {m.get('combo', '?')} lacks {missing}")
    return members


def _terminate(signum, _frame):  # between members (inside one, the trainer's own handler saves and stops)
    from meli.train.checkpoint import Terminated

    log.warning("received %s between members: stopping; the next attempt trains the unfinished ones",
                signal.Signals(signum).name)
    raise Terminated(signum)


def _run_main(args) -> int:
    from meli.train.checkpoint import Terminated
    from meli.train.neural import _checkpoint_minutes

    members = _members(args.members)
    settings = {"family": args.family, "features": args.features, "device": args.device, "threads": args.threads,
                "mem_mb": args.mem_mb, "checkpoint_minutes": _checkpoint_minutes(None),  # (the shell prefix's env)
                "pack": {"pack": args.pack, "pack_size": len(members), "pack_log": args.log}}
    for sig in (signal.SIGTERM, signal.SIGUSR1):  # the stop signals meli.train.neural saves on
        signal.signal(sig, _terminate)
    try:
        states = run_pack(settings, members, args.files, args.stamp)
    except Terminated as stop:  # saved and recorded: exit 75 as a single job does (interrupted; Snakemake retries)
        return int(stop.code)
    return 0 if all(s == "finished" for s in states.values()) else 1


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m meli.train.pack", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a pack's unfinished members in this process")
    run.add_argument("--family", required=True)
    run.add_argument("--pack", required=True, help="the pack's id (pack-000), recorded in each member's record")
    run.add_argument("--members", required=True, help="JSON list: combo, params, matrix or tfidf, run_dir, staged_dir, "
                     "checkpoint_dir, status, log, inputs (one object per combination)")
    run.add_argument("--files", nargs="+", required=True, help="a run's file names (metrics.json, history.csv, ...)")
    run.add_argument("--features", required=True)
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--mem-mb", type=int, default=None)
    run.add_argument("--log", default=None, help="the pack job's own log (recorded in the members' records)")
    run.add_argument("--stamp", required=True, help="written when every member has finished")
    take = sub.add_parser("adopt", help="move a member's staged files onto its declared outputs")
    take.add_argument("--staged", required=True)
    take.add_argument("outputs", nargs="+")
    return ap


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "adopt":
        adopt(args.staged, args.outputs)
        return 0
    from meli.io import setup_logging

    setup_logging("meli.train.pack")
    return _run_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
