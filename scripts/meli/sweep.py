"""The state of a sweep, and partial results from whatever has finished.

    python -m meli.sweep report                  # `make report`: progress + partial tables/report, any time
    python -m meli.sweep report --final --mlflow # the Snakefile's onerror: the sweep ended with failures

Snakemake only builds the tables, the report and the MLflow import once every combination has
finished (they depend on all runs), and deletes a failed job's outputs. This module works
beside the DAG, reading only files:

* ``results/sweep/manifest.json`` -- written by the Snakefile's ``onstart``: every configured
  combination (family, id, params), the effective config and config files;
* ``results/runs/{family}/{combo}/`` -- a combination is **done** when all its declared outputs
  exist and metrics.json is valid;
* ``results/sweep/jobs/{family}/{combo}.json`` -- the attempt record :mod:`meli.jobstatus` keeps
  outside the declared outputs (attempts, running/failed/diverged/killed, host, SLURM ids);
* SLURM's job logs under ``results/logs/slurm/`` -- why SLURM killed a job (memory, time limit,
  preemption, node failure).

Every other combination is classified (running, failed, diverged, killed for memory, timed out,
killed, outputs missing, not run yet) with its attempts and the path of its log. From the
finished runs it writes the tables (``meli.report.aggregate``), ``results/report.html`` with a
"partial: k of n missing" banner and a section listing the others, and (``--mlflow``) the MLflow
import. Test scores are left out until every combination has finished: the selection on
validation may still change.

These partial outputs are the workflow's own output paths, dated 1970-01-02: older
than any input, so the next ``snakemake`` always rebuilds them -- a partial report is never taken
as up to date -- while the finished runs are not retrained. The writing happens under
``results/.tables.lock``, which the workflow's aggregate job takes too, so a ``make report``
during a running sweep never overwrites the final tables; and it never touches ``.snakemake/``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from meli import models, runs, search
from meli.cli import MeliError, entry_point
from meli.jobstatus import read_status, restart_cost

log = logging.getLogger("meli.sweep")

# Written by the partial render only; the workflow's aggregate/report/import rules overwrite them.
TABLES = ("runs.csv", "runs.md", "effects.csv", "selection.json", "statistics.json")
TEST_TABLES = ("test.csv", "test_details.json")
# 1970-01-02: older than every input, so Snakemake rebuilds the file (an mtime of 0 would read as
# "no output" to Snakemake and be ignored)
PARTIAL_MTIME = 86_400

DONE, RUNNING, NOT_RUN, LOST = "done", "running", "not run yet", "outputs missing"
PRUNED = "pruned"  # a search in stages (meli.search) stopped it at a rung: finished, not missing
# A finished run this sweep retrains (its job is planned: settings or inputs changed since): left, not done.
OUTDATED = "outdated"
DAMAGED = "damaged record"  # all files there, but metrics.json / history.csv unreadable or contradicting
FAILED, DIVERGED, OOM, TIMEOUT, KILLED, CANCELLED = (
    "failed", "diverged", "killed for memory", "timed out", "killed", "cancelled")
# Stopped by a signal after saving its state within the epoch (exit 75): Snakemake's retry, or the
# next run, resumes it there (issue 23).
INTERRUPTED = "interrupted"
FAILED_STATES = (FAILED, DIVERGED, OOM, TIMEOUT, KILLED, CANCELLED, INTERRUPTED)
LEFT_STATES = (NOT_RUN, LOST, OUTDATED)

# SLURM's words in a job's log (slurmstepd / the batch script's stderr) -> state
SLURM_VERDICTS = (
    (re.compile(r"oom[-_ ]kill|exceeded (job )?memory limit|out of memory", re.I), OOM, "SLURM: memory limit"),
    (re.compile(r"DUE TO TIME LIMIT"), TIMEOUT, "SLURM: time limit"),
    (re.compile(r"DUE TO PREEMPTION"), KILLED, "SLURM: preempted"),
    (re.compile(r"DUE TO NODE FAIL"), KILLED, "SLURM: node failure"),
    (re.compile(r"CANCELLED AT"), CANCELLED, "SLURM: cancelled"),
)
ERROR_LINE = re.compile(r"error|exception|no space left|quota|killed|diverged|traceback", re.I)


class SweepError(MeliError):
    """No sweep to report on."""


def sweep_dir(results: Path) -> Path:
    return results / "sweep"


def manifest_path(results: Path) -> Path:
    return sweep_dir(results) / "manifest.json"


def status_path(results: Path, family: str, combo: str) -> Path:
    return sweep_dir(results) / "jobs" / family / f"{combo}.json"


def train_log(results: Path, family: str, combo: str) -> Path:
    return results / "logs" / "train" / family / f"{combo}.log"


def partial_path(results: Path) -> Path:
    return sweep_dir(results) / "partial.json"


def write_manifest(results: str | os.PathLike, combos: dict[str, dict[str, dict[str, Any]]],
                   config: dict[str, Any], configfiles: list[str], planned: list[str] | None = None) -> Path:
    """What this sweep is meant to produce (the Snakefile's onstart). ``planned``: the outputs of the
    jobs this run will execute; the run and search records among them that are older than this
    sweep's start are outdated (kept, but neither done nor tabled until retrained)."""
    from meli.io import write_json

    path = manifest_path(Path(results))
    prefix = f"{Path(results).as_posix().rstrip('/')}/"
    records = sorted({f[len(prefix):] for f in planned or () if f.startswith(prefix)
                      and f.endswith((runs.METRICS, search.SELECTION))})
    write_json(path, {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started_ts": time.time(),
        "planned": records,
        "host": socket.gethostname(),
        "configfiles": [str(f) for f in configfiles],
        "config": config,
        "combinations": {family: {c: p for c, p in sorted(per.items())} for family, per in combos.items()},
    })
    return path


def stash_equivalent_runs(results: str | os.PathLike, jobs: list[tuple[str, list[str]]]) -> list[str]:
    """Before the planned grid training jobs run (the Snakefile's onstart): for each one whose run
    directory holds a successive-halving final run of the same combination, newer than the job's
    inputs, hard-link that run under ``results/checkpoints/{family}/{combo}/equivalent/``, where the
    job finds and reuses it (meli.train.neural) instead of training the same thing again -- Snakemake
    reruns the job (another rule wrote the files) and deletes its outputs first. ``jobs``: (metrics.json
    path, input paths) of each planned grid job. Returns the run directories stashed."""
    results, stashed = Path(results), []
    for metrics, inputs in jobs:
        run_dir = Path(metrics).parent
        family = run_dir.parent.name
        stash = results / "checkpoints" / family / run_dir.name / runs.EQUIVALENT
        if runs.stash_equivalent(run_dir, stash, inputs, run_files(family)):
            log.info("%s: a successive-halving final run the grid job would reproduce: stashed for reuse", run_dir)
            stashed.append(str(run_dir))
    return stashed


# ---------------------------------------------------------------------------------- classifying
@dataclass
class Combination:
    family: str
    combo: str
    state: str
    attempts: int = 0
    detail: str = ""
    log: str = ""
    run_dir: str = ""
    duration_s: float | None = None  # of the finished attempt
    lost_s: float | None = None  # time lost to restarts of a finished run (meli.jobstatus.restart_cost)
    running_for_s: float | None = None
    slurm_logs: list[str] = field(default_factory=list)
    pack: str = ""  # the pack job that trains it (train.pack), from its attempt record


def run_files(family: str) -> tuple[str, ...]:
    """The files a finished run of ``family`` holds (its training rule's declared outputs)."""
    return (runs.METRICS, runs.HISTORY, models.get(family).model_file, runs.VAL_PREDICTIONS)


def incomplete(run_dir: Path, family: str) -> str | None:
    """Why ``run_dir`` is not a finished run (missing files, bad metrics.json), or None."""
    missing = [f for f in run_files(family) if not (run_dir / f).exists()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        runs.check_record(run_dir)
    except (runs.RunError, OSError) as err:
        return str(err)
    return None


def damaged(run_dir: Path, family: str, problem: str | None) -> bool:
    """Every file is there but the record is unreadable or contradicts itself (not a run under way)."""
    return problem is not None and not problem.startswith("missing ") and all(
        (run_dir / f).exists() for f in run_files(family))


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def slurm_logs(results: Path, family: str, combo: str, record: dict[str, Any] | None) -> list[Path]:
    """SLURM logs of this combination's jobs, oldest first: by the wildcards directory the
    plugin names (``rule_<rule>/<family>_<combo>/<jobid>.log``) and, for array tasks, by the ids
    the attempt record holds (``rule_<rule>/<arrayjob>_<task>.log``)."""
    root = results / "logs" / "slurm"
    if not root.is_dir():
        return []
    wildcards = combo if family == "tfidf" else f"{family}_{combo}"  # the rule's wildcard values joined by "_"
    found = set(root.glob(f"rule_train_*/{wildcards}/*.log"))
    record = record or {}
    if record.get("slurm_array_job_id") and record.get("slurm_array_task_id"):
        found.update(root.glob(f"rule_train_*/{record['slurm_array_job_id']}_{record['slurm_array_task_id']}.log"))
    elif record.get("slurm_job_id"):
        found.update(root.glob(f"rule_train_*/**/{record['slurm_job_id']}.log"))
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _recorded_job_log(logs: list[Path], record: dict[str, Any] | None) -> Path | None:
    """The SLURM log of the attempt in ``record``; without a record (or SLURM ids), the newest."""
    record = record or {}
    if record.get("slurm_array_job_id") and record.get("slurm_array_task_id"):
        name = f"{record['slurm_array_job_id']}_{record['slurm_array_task_id']}.log"
    elif record.get("slurm_job_id"):
        name = f"{record['slurm_job_id']}.log"
    else:
        return logs[-1] if logs and not record else None
    return next((p for p in logs if p.name == name), None)


def slurm_verdict(text: str) -> tuple[str, str] | None:
    for pattern, state, why in SLURM_VERDICTS:
        if pattern.search(text):
            return state, why
    return None


def last_error(log_path: Path, limit: int = 2000) -> str:
    """The last line of a job's log that says what went wrong ('' if none)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(log_path) - 64_000))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if ERROR_LINE.search(line) and "meli.jobstatus" not in line:
            line = line.strip()
            # a long reason keeps its end, where the advice is ("... Lower the learning rate")
            return line if len(line) <= limit else line[: limit // 2 - 1] + " … " + line[-(limit // 2 - 2):]
    return ""


def _alive_here(record: dict[str, Any]) -> bool:
    """The recording wrapper still runs on this machine (pid checked against its command line)."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return False
    try:
        return b"meli.jobstatus" in Path(f"/proc/{int(record['pid'])}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def _finished(c: Combination, run_dir: Path, record: dict[str, Any] | None) -> Combination:
    c.state = DONE
    with contextlib.suppress(OSError, ValueError):
        cost = restart_cost(record, json.loads((run_dir / "metrics.json").read_text()))
        c.attempts, c.lost_s = max(c.attempts, cost["attempts"]), cost["lost_s"]
    if record and record.get("state") == "finished":
        c.duration_s = _seconds_between(record.get("started_at"), record.get("ended_at"))
    if c.duration_s is None:  # finished before attempt records existed, or record lost
        with contextlib.suppress(OSError, ValueError):
            c.duration_s = float(json.loads((run_dir / "metrics.json").read_text()).get("elapsed_s") or 0) or None
    return c


def _verdict(slurm: list[Path], record: dict[str, Any] | None) -> tuple[str, str] | None:
    """SLURM's verdict on the recorded attempt (its job id), not on an earlier one."""
    recorded = _recorded_job_log(slurm, record)
    if recorded is None:
        return None
    with contextlib.suppress(OSError):
        return slurm_verdict(recorded.read_text(errors="replace"))
    return None


def _running_or_killed(c: Combination, record: dict[str, Any], verdict: tuple[str, str] | None, final: bool) -> None:
    """A record that says 'running': still running (here, or on another node), or killed without a trace."""
    elsewhere = record.get("host") != socket.gethostname()
    if verdict:
        c.state, c.detail = verdict
    elif not final and (_alive_here(record) or elsewhere):
        c.state = RUNNING
        started = record.get("started_at")
        with contextlib.suppress(TypeError, ValueError):
            c.running_for_s = (datetime.now(timezone.utc) - datetime.fromisoformat(started)).total_seconds()
        c.detail = f"attempt {c.attempts} on {record.get('host')} since {started}"
    else:
        c.state = KILLED
        c.detail = "stopped without a record of its end (killed together with its job: node crash, kill -9)"


def _add_why(c: Combination) -> None:
    """The last error line of the job's log, and where SLURM's log is."""
    why = last_error(Path(c.log))
    if why and why not in c.detail:
        c.detail = f"{c.detail}: {why}" if c.detail else why
    if c.slurm_logs:
        c.detail += f" (SLURM log {c.slurm_logs[-1]})"


def classify(results: Path, family: str, combo: str, final: bool = False) -> Combination:
    """One configured combination's state. ``final``: the sweep is over, so nothing is running."""
    run_dir = results / "runs" / family / combo
    log_path = train_log(results, family, combo)
    record = read_status(status_path(results, family, combo))
    c = Combination(family, combo, NOT_RUN, log=str(log_path), run_dir=str(run_dir))
    if record:
        c.attempts = int(record.get("attempt") or 0)
        c.log = record.get("log") or c.log
        c.pack = str(record.get("pack") or "")
    problem = incomplete(run_dir, family)
    if damaged(run_dir, family, problem):
        return _damaged(c, run_dir, problem, final)
    if problem is None:
        return _finished(c, run_dir, record)

    slurm = slurm_logs(results, family, combo, record)
    c.slurm_logs = [str(p) for p in slurm]
    verdict = _verdict(slurm, record)
    if record is None:
        if verdict:  # killed before the wrapper could write (e.g. the job's own Snakemake ran out of memory)
            c.state, c.detail, c.attempts = verdict[0], verdict[1], len(slurm)
            c.log = c.slurm_logs[-1]
        return c
    state = record.get("state")
    if state == "finished":
        moved = runs.archived_damaged(results, family, combo)
        why = f"its record was damaged and moved to {moved} (why.txt says why)" if moved else f"then {problem}"
        c.state, c.detail = LOST, f"finished at {record.get('ended_at')}, {why}: the next snakemake retrains it"
        return c
    if state == "running":
        _running_or_killed(c, record, verdict, final)
    else:
        c.state = state if state in FAILED_STATES else FAILED
        c.detail = record.get("detail") or ""
        if verdict and c.state in (KILLED, FAILED):
            c.state, c.detail = verdict[0], f"{verdict[1]}; {c.detail}"
    if c.state != RUNNING:
        _add_why(c)
    return c


def _damaged(c: Combination, run_dir: Path, problem: str, final: bool) -> Combination:
    """A run whose files are all there but whose record is damaged (a disk hiccup, a file cut short).
    Snakemake's metadata still calls it complete, so it would never be retrained: once the sweep is
    over (onerror) it is moved aside into results/archive/damaged/, its outputs are missing and the
    next snakemake retrains it; while a sweep may run, it is only reported."""
    if final and run_dir.parent.parent.name == "runs":
        moved = runs.archive_damaged(run_dir, problem)
        log.warning("%s: moved the damaged run to %s", problem, moved)
        c.state, c.detail = LOST, f"{problem}: moved to {moved}; the next snakemake retrains it"
    else:
        c.state = DAMAGED
        c.detail = (f"{problem}: the workflow's aggregate job moves it to results/archive/damaged/, "
                    "then snakemake retrains it")
    return c


@dataclass
class Sweep:
    manifest: dict[str, Any]
    combinations: list[Combination]

    def by_state(self, *states: str) -> list[Combination]:
        return [c for c in self.combinations if c.state in states]

    @property
    def counts(self) -> dict[str, int]:
        counts = {"done": len(self.by_state(DONE)), "running": len(self.by_state(RUNNING)),
                  "failed": len(self.by_state(*FAILED_STATES, DAMAGED)), "left": len(self.by_state(*LEFT_STATES))}
        if self.by_state(PRUNED):
            counts["pruned"] = len(self.by_state(PRUNED))
        return counts

    @property
    def missing(self) -> list[Combination]:
        return [c for c in self.combinations if c.state not in (DONE, PRUNED)]

    def eta_s(self) -> float | None:
        """Seconds until the running and not-yet-run combinations finish, from the finished ones'
        mean duration and the number running at once (None when nothing has finished yet)."""
        durations = [c.duration_s for c in self.by_state(DONE) if c.duration_s]
        running, left = self.by_state(RUNNING), self.by_state(*LEFT_STATES)
        if not running and not left:
            return 0.0
        if not durations:
            return None
        mean = sum(durations) / len(durations)
        work = sum(max(mean - (c.running_for_s or 0.0), 0.0) for c in running) + mean * len(left)
        return work / max(len(running), 1)


class Planned:
    """The run and search records this sweep's jobs rewrite (manifest ``planned``, from onstart): one
    of them older than the sweep's start is left over from earlier settings, not a result of this sweep."""

    def __init__(self, results: Path, manifest: dict[str, Any]):
        self.results, self.start = results, manifest.get("started_ts")
        self.paths = set(manifest.get("planned") or ())
        self.combos = set()
        for p in self.paths:
            m = re.match(r"(?:runs/([^/]+)|search/([^/]+)/(?:bracket-\d+/)?rung-\d+)/([^/]+)/", p)
            if m:
                self.combos.add((m.group(1) or m.group(2), m.group(3)))

    def stale(self, path: Path) -> bool:
        if self.start is None or path.relative_to(self.results).as_posix() not in self.paths:
            return False
        with contextlib.suppress(OSError):
            return path.stat().st_mtime < self.start
        return False

    def outdated(self, family: str, combo: str) -> bool:
        """The combination's final run predates this sweep, which retrains it (or redoes its search)."""
        if self.start is None or (family, combo) not in self.combos:
            return False
        with contextlib.suppress(OSError):
            return (self.results / "runs" / family / combo / runs.METRICS).stat().st_mtime < self.start
        return False


def scan(results: str | os.PathLike = "results", final: bool = False) -> Sweep:
    results = Path(results)
    path = manifest_path(results)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path} not found: no sweep has started here yet (run snakemake first)") from None
    search_cfg = ((manifest.get("config") or {}).get("train") or {}).get("search") or {}
    combos = []
    planned = Planned(results, manifest)
    for family, per in manifest.get("combinations", {}).items():
        plan = search.family_plan(family, per, search_cfg)
        states = search.current_states(results, family, per, plan, planned.stale) if plan else {}
        for combo in per:
            c = (_classify_searched(results, family, combo, final, states[combo]) if combo in states
                 else classify(results, family, combo, final))
            if c.state == DONE and planned.outdated(family, combo):
                c.state, c.detail = OUTDATED, ("trained before this sweep started, which retrains it "
                                               "(its settings or inputs changed): not in the partial tables")
            combos.append(c)
    return Sweep(manifest, combos)


def _classify_searched(results: Path, family: str, combo: str, final: bool, where: dict[str, Any]) -> Combination:
    """A combination of a search in stages: pruned at a stage is finished, not missing; one still
    in the search is classified by its attempt record (shared by its stage jobs)."""
    bracket, rung = where.get("bracket"), where["rung"]
    if where["state"] == "pruned":
        stage = search.stage_key(bracket, rung)
        return Combination(family, combo, PRUNED, detail=f"pruned at {search.stage_label(bracket, rung)}",
                           log=str(results / "logs" / "search" / family / stage / f"{combo}.log"),
                           run_dir=str(results / "search" / family / stage / search.PRUNED / combo))
    c = classify(results, family, combo, final)
    if where["state"] == "in search" and c.state == DONE:  # a final run this plan did not (yet) keep
        c.state, c.attempts = NOT_RUN, 0
        c.detail = "its run in results/runs/ is left from another search plan: ignored"
        return c
    if where["state"] == "in search" and c.state in (LOST, NOT_RUN):
        # a finished stage job leaves no final run: that is progress, not lost outputs
        c.state = NOT_RUN
        c.detail = f"in the search: {search.stage_label(bracket, rung)} done" if rung >= 0 else c.detail
    return c


# ------------------------------------------------------------------------------------ rendering
def progress_text(sweep: Sweep) -> str:
    from meli.io import format_seconds

    n, counts = len(sweep.combinations), sweep.counts
    eta = sweep.eta_s()
    eta_text = ("—" if eta == 0 else "unknown until a combination finishes" if eta is None
                else f"~{format_seconds(eta)} (mean of {counts['done']} finished, {max(counts['running'], 1)} at once)")
    lines = [f"sweep started {sweep.manifest.get('started_at', '?')} ({', '.join(sweep.manifest.get('configfiles') or ['default config'])}): "
             f"{n} combinations",
             f"  done {counts['done']} · running {counts['running']} · failed {counts['failed']} · left {counts['left']}"
             + (f" · pruned {counts['pruned']}" if "pruned" in counts else "")
             + f" · ETA {eta_text}"]
    restarts = restart_line(sweep)
    if restarts:
        lines.append(restarts)
    packed = [c for c in sweep.combinations if c.pack]
    if packed:  # train.pack: combinations sharing a cluster job
        jobs = {(c.family, c.pack) for c in packed}
        lines.append(f"  packed: {len(packed)} combination{'s' if len(packed) != 1 else ''} in {len(jobs)} "
                     f"job{'s' if len(jobs) != 1 else ''} (train.pack)")
    for c in sweep.missing:
        attempts = f", {c.attempts} attempt{'s' if c.attempts != 1 else ''}" if c.attempts else ""
        lines.append(f"  {c.state:<17} {c.family}/{c.combo}{attempts}: {c.detail or '-'}")
        if c.state != NOT_RUN:
            lines.append(f"  {'':<17} log: {c.log}")
    return "\n".join(lines)


def restart_line(sweep: Sweep) -> str | None:
    """Attempts beyond the first and the time lost to restarts (issue 23), or None without restarts."""
    from meli.io import format_seconds

    again = [c for c in sweep.combinations if c.attempts > 1]
    if not again:
        return None
    lost = [c.lost_s for c in again if c.lost_s is not None]
    text = (f"  restarts: {len(again)} combination{'s' if len(again) != 1 else ''} took more than one attempt "
            f"({sum(c.attempts - 1 for c in again)} restarts)")
    if lost:
        text += f" · ~{format_seconds(sum(lost))} lost to restarts in {len(lost)} finished"
    return text


def status_html(sweep: Sweep, final: bool) -> dict[str, str]:
    """The report's banner and its section on failed and unfinished combinations."""
    n, missing = len(sweep.combinations), sweep.missing
    counts = sweep.counts
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    banner = (f'<p class="partial"><strong>Partial: {len(missing)} of {n} combinations missing</strong> '
              f"({counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
              f"{counts['left']} not run yet"
              + (f", {counts['pruned']} pruned by the search" if "pruned" in counts else "")
              + f"; {'the sweep ended' if final else 'rendered'} {escape(when)}). "
              "Tables and selection cover the finished runs only; test scores only for the families whose "
              'combinations have all finished. <a href="#sweep">Which are missing, why, and what to do</a>.</p>')
    from meli.report import failures

    return {"banner": banner, "section": failures.section(missing)}


def _backdate(paths: list[Path]) -> None:
    for p in paths:
        if p.exists():
            os.utime(p, (PARTIAL_MTIME, PARTIAL_MTIME))


def _evaluate_complete(results: Path, sweep: Sweep, config: dict[str, Any]) -> None:
    """Test scores of the families whose every combination has finished: their selection is final
    (one failed MLP combination need not hide the CNN's and the baseline's scores)."""
    from meli.report import evaluate

    waiting = {c.family for c in sweep.missing}
    complete = sorted({c.family for c in sweep.combinations} - waiting)
    if not complete or not (results / "features" / "test_labels.npy").exists():
        return
    try:
        evaluate.evaluate_families(results / "tables" / "selection.json", results / "data", results / "features",
                                   complete, config.get("report") or {}, (config.get("train") or {}).get("device", "auto"),
                                   results / "tables")
        log.info("test scores of the complete families: %s", ", ".join(complete))
    except Exception as err:  # the partial report matters more than these scores
        log.warning("could not score the complete families (%s): %s", ", ".join(complete), err)


def write_partial_stamp(results: Path) -> None:
    """results/sweep/partial.json, new each time the sweep's end writes partial outputs: the
    aggregate and mlflow_import rules take it as a parameter (rules/common.smk PARTIAL_STAMP). A
    failed job's outputs get Snakemake metadata all the same (with the input checksums of that
    attempt), so the 1970 date alone does not make the next run rebuild partial tables whose inputs
    did not change (a damaged record moved aside, an aggregate that failed for another reason);
    a changed parameter always does."""
    from meli.io import write_json

    write_json(partial_path(results), {"written_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                                       "pid": os.getpid()})


def partial_stamp(results: str | os.PathLike = "results") -> str:
    """The stamp of the last partial outputs ('' when none were ever written)."""
    from meli.jobstatus import read_status

    return str((read_status(partial_path(Path(results))) or {}).get("written_at") or "")


def write_partial(results: str | os.PathLike, sweep: Sweep, final: bool, mlflow: bool) -> Path | None:
    """Tables and report (and with ``mlflow`` the import) from the finished runs; backdated."""
    from meli.io import atomic_path, dir_lock
    from meli.report import aggregate, render

    results = Path(results)
    done = [c.run_dir for c in sweep.by_state(DONE, PRUNED)]
    if not done:
        log.info("no combination has finished yet: no tables or report to write")
        return None
    if not sweep.missing:
        log.info("every combination has finished: snakemake builds the final tables and report")
        return None
    tables, out = results / "tables", results / "report.html"
    config = sweep.manifest.get("config") or {}
    with dir_lock(tables):
        aggregate.aggregate(done, tables)
        for name in TEST_TABLES:  # scores of an earlier selection would contradict this one
            with contextlib.suppress(FileNotFoundError):
                (tables / name).unlink()
        _evaluate_complete(results, sweep, config)
        html = render.render(results, config, sweep.manifest.get("configfiles") or [], workdir=results.parent,
                             status=status_html(sweep, final))
        with atomic_path(out) as tmp:
            tmp.write_text(html, encoding="utf-8")
        _backdate([tables / name for name in TABLES + TEST_TABLES if (tables / name).exists()] + [out])
        if final:
            write_partial_stamp(results)
    log.info("wrote %s and %s/ from %d finished runs (partial: %d of %d missing)",
             out, tables, len(done), len(sweep.missing), len(sweep.combinations))
    if mlflow:
        from meli import tracking

        ml = config.get("mlflow") or {}
        dataset = (config.get("dataset") or {}).get("name")
        imported = results / "mlflow" / "imported.json"
        combos = sweep.manifest.get("combinations") or {}
        failed = [tracking.FailedRun(c.family, c.combo, c.state, c.detail, c.attempts, c.log,
                                     (combos.get(c.family) or {}).get(c.combo) or {})
                  for c in sweep.by_state(*FAILED_STATES)]
        tracking.import_runs([*done, *failed], ml.get("experiment") or dataset or "meli", ml.get("tracking_uri") or "",
                             results / "mlflow", imported, dataset=dataset, log_models=bool(ml.get("log_models")))
        _backdate([imported])
        log.info("imported the %d finished runs into MLflow (%s)", len(done), imported)
    return out


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="print progress; write partial tables and report from the finished runs")
    rep.add_argument("--results", default="results")
    rep.add_argument("--final", action="store_true", help="the sweep is over (Snakefile onerror): nothing runs")
    rep.add_argument("--mlflow", action="store_true", help="also import the finished runs into MLflow")
    rep.add_argument("--json", action="store_true", help="print the state as JSON instead of text")
    args = ap.parse_args(argv)
    from meli.io import setup_logging

    setup_logging("meli.sweep")
    sweep = scan(args.results, final=args.final)
    if args.json:
        print(json.dumps({"counts": sweep.counts, "eta_s": sweep.eta_s(),
                          "combinations": [asdict(c) for c in sweep.combinations]}, indent=1))
    else:
        print(progress_text(sweep), flush=True)
    t0 = time.monotonic()
    out = write_partial(args.results, sweep, final=args.final, mlflow=args.mlflow)
    if out is not None and not args.json:
        print(f"report: {out} (partial: {len(sweep.missing)} of {len(sweep.combinations)} missing; "
              f"{time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
