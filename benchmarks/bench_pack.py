"""Packing (``train.pack``) against one job per combination, through a SLURM cluster.

    sudo tests/slurm/local_cluster.sh start        # or any SLURM cluster with the test profile's partition
    .venv/bin/python benchmarks/bench_pack.py                     # 50 tiny MLP combinations, pack 8
    .venv/bin/python benchmarks/bench_pack.py --quick --pack 3   # 6 combinations, a smoke run

1. The workflow's data and embedding rules on the demo data (1,200 titles, 8 categories) in a
   temporary copy of the workflow, locally; the copy is then duplicated, so both variants start
   from the same files.
2. The same grid of tiny MLP combinations (1-2 epochs, one fake GPU each) trained through
   ``snakemake --profile profiles/slurm --profile tests/slurm/profile``: once one job per
   combination (``train.pack: 1``), once packed (``train.pack: --pack``), one after the other in
   this run, so that the machine's other load affects both alike.

Measured per variant: SLURM jobs submitted (``sacct``, by the copy's working directory), wall
time of the snakemake command, CPU-seconds per combination (``sacct`` TotalCPU of the jobs, plus
the packed variant's local ``pack_member`` jobs from their Snakemake benchmark files), and
GPU-held seconds per combination (elapsed time x GPUs of the jobs). Asserted: every combination's
validation bacc and loss are the same in both variants. Targets (issue 23): >= 5x fewer jobs and
>= 2x less wall time.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "config", "report", "envs")
PROFILES = ("--profile", str(ROOT / "profiles" / "slurm"), "--profile", str(ROOT / "tests" / "slurm" / "profile"))
GRID = {  # 2 x 5 x 5 = 50 combinations
    "hidden": [[16], [32]],
    "dropout": [0.0, 0.1, 0.2, 0.3, 0.4],
    "lr": [0.003, 0.01, 0.02, 0.03, 0.1],
    "batch_size": [64],
    "epochs": [2],
    "patience": [2],
}
QUICK = {"hidden": [[16]], "dropout": [0.0, 0.1], "lr": [0.003, 0.01, 0.03]}  # --quick: 6 combinations


def _config(quick: bool, pack: int) -> dict:
    config = yaml.safe_load((ROOT / "tests" / "data" / "tiny.yaml").read_text())
    train = config["train"]
    train["resources"] = {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 1}
    train["pack"] = pack
    grid = dict(GRID, **QUICK) if quick else GRID
    train["mlp"] = {"grid": grid}
    for family in ("cnn", "rnn", "tfidf"):  # the MLP grid only
        train[family] = {"grid": {}, "combinations": [], "sample": None}
    return config


def _snakemake(wf: Path, *args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=wf, env=env, capture_output=True, text=True,
                          timeout=timeout)


def prepare(base: Path, quick: bool) -> list[str]:
    """A workflow copy with the data and the embedding matrix built (locally); the run files to train."""
    base.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, base / name)
    (base / "bench.yaml").write_text(yaml.safe_dump(_config(quick, 1)))
    proc = _snakemake(base, "results/features/labels.json", "results/embeddings/w2v/matrix.npy", "--cores", "2",
                      "--configfile", "bench.yaml")
    if proc.returncode != 0:
        raise SystemExit(f"preparing the data failed:\n{proc.stderr[-4000:]}")
    dry = _snakemake(base, "-n", "--cores", "1", "--configfile", "bench.yaml")
    targets = sorted({word.rstrip(",") for line in dry.stdout.splitlines() if line.strip().startswith("output:")
                      for word in line.split() if word.startswith("results/runs/mlp/") and "metrics.json" in word})
    if not targets:
        raise SystemExit(f"no MLP run in the dry run:\n{(dry.stdout + dry.stderr)[-3000:]}")
    return targets


def _sacct(workdir: Path, since: str) -> list[dict[str, str]]:
    fields = ["JobID", "Comment", "State", "Elapsed", "ElapsedRaw", "TotalCPU", "AllocTRES", "WorkDir"]
    # (no --allocations: its rows carry no TotalCPU; the job's own row, without a step suffix, does)
    out = subprocess.run(["sacct", "--allusers", "--parsable2", "--noheader", f"--starttime={since}",
                          f"--format={','.join(fields)}"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]
    return [r for r in rows if r["WorkDir"] == str(workdir) and "." not in r["JobID"]]


def _seconds(text: str) -> float:
    """sacct's [DD-[HH:]]MM:SS[.mmm] as seconds."""
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (float(days) if days else 0.0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _gpus(tres: str) -> int:
    for item in tres.split(","):
        if item.startswith("gres/gpu="):
            return int(item.split("=")[1])
    return 0


def _local_cpu(wf: Path) -> float:
    """CPU-seconds of the local pack_member jobs (their Snakemake benchmark files)."""
    total = 0.0
    for tsv in (wf / "results" / "benchmarks" / "pack").glob("*/adopt/*.tsv"):
        with tsv.open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                total += float(row.get("cpu_time") or 0)
    return total


def run_variant(wf: Path, targets: list[str], pack: int, quick: bool) -> dict:
    (wf / "bench.yaml").write_text(yaml.safe_dump(_config(quick, pack)))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    start = time.monotonic()
    proc = _snakemake(wf, *targets, *PROFILES, "--configfile", "bench.yaml")
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"pack {pack}: snakemake failed:\n{(proc.stdout + proc.stderr)[-6000:]}")
    time.sleep(2)  # sacct lags the last job's end by a moment
    jobs = [j for j in _sacct(wf, since) if j["Comment"].startswith(("rule_train_neural", "rule_train_pack"))]
    cpu = sum(_seconds(j["TotalCPU"]) for j in jobs) + _local_cpu(wf)
    gpu = sum(float(j["ElapsedRaw"] or 0) * _gpus(j["AllocTRES"]) for j in jobs)
    metrics = {}
    for path in targets:
        m = json.loads((wf / path).read_text())
        metrics[m["combo"]] = (m["val_bacc"], m["val_loss"], m["epochs_run"])
    return {"pack": pack, "jobs": len(jobs), "wall_s": wall, "cpu_s_per_combo": cpu / len(targets),
            "gpu_s_per_combo": gpu / len(targets), "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 combinations (a smoke run)")
    ap.add_argument("--pack", type=int, default=8)
    ap.add_argument("--out", default="bench-out/pack.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workflow copies")
    args = ap.parse_args(argv)
    if not shutil.which("sbatch"):
        raise SystemExit("needs a SLURM cluster (sbatch): tests/slurm/local_cluster.sh start")
    tmp = Path(tempfile.mkdtemp(prefix="bench-pack-"))
    try:
        base = tmp / "unpacked"
        targets = prepare(base, args.quick)
        packed = tmp / "packed"
        shutil.copytree(base, packed, symlinks=True)
        one = run_variant(base, targets, 1, args.quick)
        many = run_variant(packed, targets, args.pack, args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    assert one["metrics"] == many["metrics"], "packed runs' validation metrics differ from the unpacked ones"
    rows = [("jobs submitted", one["jobs"], many["jobs"], one["jobs"] / max(many["jobs"], 1)),
            ("wall time (s)", one["wall_s"], many["wall_s"], one["wall_s"] / many["wall_s"]),
            ("CPU-s per combination", one["cpu_s_per_combo"], many["cpu_s_per_combo"],
             one["cpu_s_per_combo"] / max(many["cpu_s_per_combo"], 1e-9)),
            ("GPU-held s per combination", one["gpu_s_per_combo"], many["gpu_s_per_combo"],
             one["gpu_s_per_combo"] / max(many["gpu_s_per_combo"], 1e-9))]
    print(f"{len(targets)} MLP combinations (demo data, 2 epochs, 1 fake GPU each), pack {args.pack}; "
          "validation metrics identical in both")
    print("| | one job per combination | packed | ratio |\n|---|---|---|---|")
    for name, a, b, r in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {r:.1f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"combos": len(targets), "pack": args.pack,
                                          "unpacked": {k: v for k, v in one.items() if k != "metrics"},
                                          "packed": {k: v for k, v in many.items() if k != "metrics"}}, indent=1))
    fewer, faster = rows[0][3], rows[1][3]
    print(f"targets: >= 5x fewer jobs: {'met' if fewer >= 5 else 'MISSED'} ({fewer:.1f}x); "
          f">= 2x less wall: {'met' if faster >= 2 else 'MISSED'} ({faster:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
