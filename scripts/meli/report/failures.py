"""The report's "Failed and unfinished" section: per combination, what happened and what to do.

Rerunning the same ``snakemake`` command is right for a job killed by a time limit, memory, a
node failure or a full disk, and wrong for a diverged run (it diverges again with the same
hyperparameters). Each missing combination is a block of wrapped text (no wide table: on a
phone the reason must be readable without scrolling sideways).
"""
from __future__ import annotations

from html import escape
from typing import Any, Iterable

RERUN = "Rerun the same <code>snakemake</code> command: it retrains only the missing combinations."
# state -> what to do (HTML); meli.sweep's states
ADVICE = {
    "diverged": ("Rerunning changes nothing: the same hyperparameters diverge again. Lower the learning rate "
                 "(or remove this value from the grid), then rerun <code>snakemake</code>."),
    "killed for memory": ("Raise the family's memory (<code>train.&lt;family&gt;.resources.mem_mb</code>, or "
                          "<code>--set-resources</code>) or lower <code>batch_size</code>, then rerun. With "
                          "<code>--profile profiles/slurm</code> retries already get more memory. " + RERUN),
    "timed out": ("Raise <code>train.&lt;family&gt;.resources.runtime</code> (or rely on the profile's retries, "
                  "which add time); training resumes from its last checkpoint. " + RERUN),
    "killed": "Killed from outside (preemption, node failure, signal); it resumes from its last checkpoint. " + RERUN,
    "cancelled": "Cancelled by a person or the scheduler. " + RERUN,
    "interrupted": ("Stopped by a signal (time limit, its early warning, preemption, scancel) after saving its state "
                    "within the epoch; Snakemake's retries resume it there. Once the sweep has ended without them: rerun, and it "
                    "resumes where it stopped (for epochs longer than a job's time limit raise <code>retries</code> "
                    "or <code>train.&lt;family&gt;.resources.runtime</code>). " + RERUN),
    "outputs missing": "Its files were deleted after it finished. " + RERUN,
    "not run yet": "Not started: the sweep stopped before it. " + RERUN,
    "running": "Still running: wait for it, or refresh this report with <code>make report</code>.",
}
DISK = "No space left"


def advice(state: str, detail: str = "") -> str:
    """What to do about one combination, as HTML."""
    if DISK.lower() in (detail or "").lower():
        return "Free disk space (or set a larger quota) where the path in the reason points, then " + RERUN[0].lower() \
            + RERUN[1:]
    return ADVICE.get(state, "Read its log (below) for the cause. " + RERUN)


def section(missing: Iterable[Any]) -> str:
    """The section's HTML: one block per combination (``family``, ``combo``, ``state``,
    ``attempts``, ``detail``, ``log`` attributes, as meli.sweep.Combination has them)."""
    items = []
    for c in missing:
        attempts = f"{c.attempts} attempt{'s' if c.attempts != 1 else ''}" if c.attempts else "no attempt"
        reason = f'<div class="reason">{escape(c.detail)}</div>' if c.detail else ""
        log = f'<div class="note">log: <code>{escape(c.log)}</code></div>' if c.log else ""
        items.append(f'<li class="failure"><div><strong>{escape(c.family)}</strong> <code>{escape(c.combo)}</code> '
                     f"— <strong>{escape(c.state)}</strong> ({attempts})</div>{reason}"
                     f'<div class="todo"><em>What to do:</em> {advice(c.state, c.detail)}</div>{log}</li>')
    return (f'<ul class="failures">{"".join(items)}</ul>'
            '<p class="note">With <code>--profile profiles/slurm</code> a job killed for memory or time gets up to 3 '
            "attempts, each with more of both. Once every combination has finished, the tables, test scores and "
            "this report are rebuilt.</p>")
