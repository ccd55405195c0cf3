"""The report's packed jobs (``train.pack``): which runs shared a cluster job, and what it cost.

A packed combination's attempt record (``results/sweep/jobs/{family}/{combo}.json``, written by
meli.train.pack) names its pack; the pack job's Snakemake benchmark
(``results/benchmarks/pack/{family}/{pack}.tsv``) is the whole job's wall and CPU time, shared by
its combinations. Runs trained one job each have no pack and are not listed here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from meli.jobstatus import read_status
from meli.report.html import table


def packed_jobs(root: Path, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per pack job behind the runs shown (family, pack, its runs here, its size, benchmark)."""
    from meli.report.sections import read_benchmark

    packs: dict[tuple[str, str], dict[str, Any]] = {}
    for family, combo in zip(runs["family"], runs["combo"]):
        record = read_status(root / "sweep" / "jobs" / str(family) / f"{combo}.json") or {}
        if not record.get("pack"):
            continue
        entry = packs.setdefault((str(family), str(record["pack"])), {"runs": 0, "size": record.get("pack_size")})
        entry["runs"] += 1
    rows = []
    for (family, pack), entry in sorted(packs.items()):
        bench = read_benchmark(root / "benchmarks" / "pack" / family / f"{pack}.tsv") or {}
        wall, cpu = bench.get("s"), bench.get("cpu_time")
        rows.append({"family": family, "pack": pack, "runs": entry["runs"], "size": entry["size"], "wall_s": wall,
                     "cpu_s": cpu, "wall_per_run_s": wall / entry["runs"] if wall is not None and entry["runs"] else None})
    return rows


def section(root: Path, runs: pd.DataFrame) -> str:
    """The cost section's block on packed jobs ('' when no run was packed)."""
    rows = packed_jobs(root, runs)
    if not rows:
        return ""
    n_runs = sum(r["runs"] for r in rows)
    head = (f"<h3>Packed jobs (train.pack)</h3><p>{n_runs} runs were trained in {len(rows)} cluster jobs, several "
            "combinations one after another in one process sharing its GPU (each with its own log, attempt record "
            "and checkpoints). Job times are the pack's Snakemake benchmark of its last attempt, shared by its runs.</p>")
    return head + table(["family", "pack", "runs shown", "combinations in the pack", "job wall time (s)",
                         "job CPU time (s)", "wall time per run (s)"],
                        [[r["family"], r["pack"], r["runs"], r["size"], r["wall_s"], r["cpu_s"], r["wall_per_run_s"]]
                         for r in rows])
