"""The cost section's block on restarts (issue 23): attempts per combination and time lost to them.

A training job stopped by SLURM (time limit, its ``--signal`` warning, preemption) saves its state
within the epoch and is retried; each retry pays a startup, and work done after the last save is
redone. Read from the attempt records (``results/sweep/jobs/``, meli.jobstatus) and the runs'
``metrics.json`` (the trainer's ``attempts``, ``restart_startup_s``, ``resumed_elapsed_s``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meli.jobstatus import read_status, restart_cost
from meli.report.html import family_name, table


def costs(results: Path, runs: Any) -> list[dict[str, Any]]:
    """One row per run of ``runs`` (runs.csv: family, combo, run_dir): its restart cost."""
    out = []
    for _, row in runs.iterrows():
        record = read_status(results / "sweep" / "jobs" / str(row["family"]) / f"{row['combo']}.json")
        run_dir = Path(str(row["run_dir"]))
        run_dir = run_dir if run_dir.is_absolute() or run_dir.exists() else results.parent / run_dir
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = {}
        out.append({"family": row["family"], "combo": row["combo"], **restart_cost(record, metrics)})
    return out


def section(results: Path, runs: Any) -> str:
    """HTML: a line for all runs, and a table of the runs that took more than one attempt."""
    rows = costs(results, runs)
    again = [r for r in rows if r["attempts"] > 1]
    if not again:
        return ('<h3>Restarts</h3><p class="note">Every run finished in its first attempt (no time limit, '
                "preemption or failure made a job start again).</p>")
    lost = sum(r["lost_s"] or 0.0 for r in again)
    head = (f"<h3>Restarts</h3><p>{len(again)} of {len(rows)} runs took more than one attempt "
            f"({sum(r['attempts'] - 1 for r in again)} restarts in all); about {lost:,.0f} s were lost to restarts "
            "(startups and work redone after the last saved state; queue waits not counted).</p>")
    body = table(["family", "attempts", "earlier attempts (s)", "lost to restarts (s)", "run"],
                 [[family_name(r["family"]), r["attempts"], r["earlier_s"], r["lost_s"], r["combo"]] for r in again],
                 sortable=True)
    note = ('<p class="note">A job stopped by a time limit or preemption saves its state within the epoch and '
            "resumes there (<code>profiles/slurm/README.md</code>); earlier attempts' time is mostly kept.</p>")
    return head + body + note
