"""Scale benchmark: the stages on synthetic MeLi-shaped data at growing sizes, extrapolated to 20M.

    .venv/bin/python benchmarks/bench_scale.py                    # 1M, 2M, 4M rows (~11 min)
    .venv/bin/python benchmarks/bench_scale.py --quick            # 10k/20k rows, < 1 min
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000000,2000000 --out bench-out/scale.md

Every stage runs exactly as the workflow runs it (``python -m meli.<module>`` with the rule's
arguments) in its own process; wall time is measured around the process and peak RSS is the
process's own ``ru_maxrss`` (``os.wait4``). Stages, per size N (official train.csv shape:
Spanish + Portuguese, 1,588 categories, stratified split because the file has no splits):

* data      ``meli.data.prepare`` on the generated ``train.csv.gz``           rows/s = N / wall
* features  ``meli.embeddings.features`` (vocabulary + int32 token matrices)          rows/s = N / wall
* train     ``meli.train.neural`` MLP, one epoch (+ its validation pass), CPU     rows/s = train rows / wall

and once: ``meli.embeddings.matrix`` on an SBWCE-sized (1,000,000 x 300) word2vec text file, and the
dry run (``snakemake -n``) of a 1,000-combination grid in a copy of the workflow. A least-squares
line through the sizes (wall and RSS against rows) gives the 20M-row extrapolation.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(SCRIPTS))
from benchmarks.synthetic import PRESETS, write_titles_csv, write_vectors  # noqa: E402

FULL_ROWS = 20_000_000
TARGETS = {
    "data_rows_per_s": 100_000,
    "data_rss_mb_20m": 8_000,
    "vectors_parse_s": 60,
    "dry_run_s": 10,
    # Training peak RSS may grow by at most this many bytes per train row for each byte of the
    # row's token-matrix entry (int32 ids + int64 label): 1 = the matrix itself, 2 = one copy.
    "train_rss_per_matrix_byte": 2.0,
}
STAGE_MODULES = {"data": "meli.data.prepare", "features": "meli.embeddings.features", "vectors": "meli.embeddings.matrix", "train": "meli.train.neural"}
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "config", "report")
MLP_PARAMS = {  # one combination of config/meli2019.yaml's MLP grid, one epoch
    "embedding": "sbwce", "freeze_embeddings": True, "hidden": [256, 128], "dropout": 0.3,
    "batch_size": 256, "lr": 0.001, "epochs": 1, "patience": 1, "seed": 0,
}


@dataclass
class Measure:
    stage: str
    rows: int  # rows the stage processed (train: train rows)
    wall_s: float
    peak_rss_mb: float
    size: int = 0  # the dataset size (input rows) it belongs to
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.wall_s, 1e-9)


class StageFailed(RuntimeError):
    pass


# Runs a module as `python -m` would, then records the process's own peak RSS (VmHWM): the
# rusage ru_maxrss of a child starts at its parent's size at fork, which would hide small stages.
_WRAPPER = """
import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    with open(os.environ["BENCH_HWM_FILE"], "w") as f:
        f.write(str(kb))
atexit.register(_hwm)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_measured(module: str, args: list[str], log_path: Path, cwd: Path | None = None) -> tuple[float, float]:
    """Run ``python -m module args`` (output to ``log_path``); its wall seconds and peak RSS in MB."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH")) if p)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    hwm = log_path.with_suffix(".hwm")
    hwm.unlink(missing_ok=True)
    env["BENCH_HWM_FILE"] = str(hwm)
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, module, *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage (ru_maxrss in KiB)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise StageFailed(f"python -m {module} exited {proc.returncode}; log {log_path}:\n{tail}")
    peak_kb = int(hwm.read_text()) if hwm.exists() else usage.ru_maxrss
    return wall, peak_kb / 1024.0


def present(stage: str) -> bool:
    return importlib.util.find_spec(STAGE_MODULES[stage]) is not None


def workflow_config() -> dict:
    """config/meli2019.yaml validated against the schema (defaults filled, as the rules see it)."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "config" / "meli2019.yaml").read_text())
    validate(cfg, str(ROOT / "config" / "schema.yaml"))
    return cfg


def stage_commands(cfg: dict, csv: Path, work: Path, vectors: Path | None, matrix: Path | None) -> dict[str, list[str]]:
    """``python -m`` arguments of each stage, exactly as its rule calls it."""
    data, features = work / "data", work / "features"
    data_cfg = {
        "dataset": {**cfg["dataset"], "name": "synthetic-official", "source": str(csv),
                    "languages": ["spanish", "portuguese"]},
        "preprocess": cfg["preprocess"],
        "split": {**cfg["split"], "use_source_splits": False},
    }
    cmds = {
        "data": ["meli.data.prepare", "--source", str(csv), "--out-dir", str(data), "--config", json.dumps(data_cfg)],
        "features": ["meli.embeddings.features", "--data-dir", str(data), "--out-dir", str(features),
                     "--config", json.dumps(cfg["vocab"])],
    }
    if vectors is not None:
        spec = {**cfg["embeddings"]["sbwce"], "source": str(vectors), "name": "sbwce"}
        cmds["vectors"] = ["meli.embeddings.matrix", "--vocab", str(features / "vocab.tsv"), "--source", str(vectors),
                           "--spec", json.dumps(spec), "--out-dir", str(work / "embeddings" / "sbwce")]
    if matrix is not None:
        cmds["train"] = ["meli.train.neural", "--family", "mlp", "--params", json.dumps(MLP_PARAMS),
                         "--features", str(features), "--matrix", str(matrix), "--out-dir", str(work / "runs" / "mlp"),
                         "--checkpoint-dir", str(work / "checkpoints" / "mlp"), "--device", "cpu",
                         "--threads", str(os.cpu_count() or 1)]
    return cmds


def cached(path: Path, make) -> tuple[Path, float | None]:
    """``path``, made by ``make(path)`` unless a previous run left it; seconds spent making it."""
    if path.exists():
        return path, None
    start = time.perf_counter()
    make(path)
    return path, time.perf_counter() - start


def bench_sizes(
    sizes: list[int], cfg: dict, cache: Path, work_root: Path, vector_words: int, stages: set[str], log,
    vocab_size: int = PRESETS["official"].vocab_size, train_sizes: set[int] | None = None,
) -> list[Measure]:
    results: list[Measure] = []
    vectors = None
    shape = replace(PRESETS["official"], vocab_size=vocab_size)
    for size in sizes:
        csv, gen_s = cached(cache / f"official-{size}-v{vocab_size}.csv.gz", lambda p: write_titles_csv(p, size, shape))
        if gen_s:
            results.append(Measure("generate", size, gen_s, 0.0, size))
        work = work_root / f"n{size}"
        shutil.rmtree(work, ignore_errors=True)
        cmds = stage_commands(cfg, csv, work, None, None)
        for stage in ("data", "features"):
            if stage not in stages:
                continue
            wall, rss = run_measured(cmds[stage][0], cmds[stage][1:], work / "logs" / f"{stage}.log")
            results.append(Measure(stage, size, wall, rss, size))
            log(f"{size:>11,} {stage:9} {wall:8.1f} s {size / wall:>11,.0f} rows/s {rss:>8,.0f} MB")
        if not (work / "features" / "vocab.tsv").exists():
            continue
        if vectors is None and "vectors" in stages:
            # Once: SBWCE-sized vectors against this vocabulary (the parse dominates, not N).
            vectors, gen_s = cached(cache / f"vectors-{vector_words}x300.txt.gz",
                                    lambda p: write_vectors(p, vector_words, 300))
            if gen_s:
                results.append(Measure("generate vectors", vector_words, gen_s, 0.0, vector_words))
            cmd = stage_commands(cfg, csv, work, vectors, None)["vectors"]
            wall, rss = run_measured(cmd[0], cmd[1:], work / "logs" / "vectors.log")
            coverage = json.loads((work / "embeddings" / "sbwce" / "coverage.json").read_text())
            results.append(Measure("vectors", vector_words, wall, rss, size, {
                "vocab_words": coverage.get("words"), "found": coverage.get("found")}))
            log(f"{vector_words:>11,} vectors   {wall:8.1f} s {vector_words / wall:>11,.0f} lines/s {rss:>8,.0f} MB")
        if "train" in stages and (train_sizes is None or size in train_sizes):
            # Training time does not depend on the vectors' values: a seeded [vocab, 300] matrix
            # for this size's vocabulary spares re-parsing the vectors file at every size.
            matrix = work / "matrix.npy"
            words = sum(1 for _ in open(work / "features" / "vocab.tsv", "rb"))
            np.save(matrix, np.random.default_rng(0).normal(0, 0.1, (words, 300)).astype(np.float32))
            cmd = stage_commands(cfg, csv, work, None, matrix)["train"]
            wall, rss = run_measured(cmd[0], cmd[1:], work / "logs" / "train.log")
            metrics = json.loads((work / "runs" / "mlp" / "metrics.json").read_text())
            ids = [work / "features" / f"{s}_{k}.npy" for s in ("train", "validation") for k in ("ids", "labels")]
            results.append(Measure("train", metrics["n_train"], wall, rss, size, {
                "n_val": metrics["n_val"], "samples_per_s": metrics["samples_per_s"],
                "token_matrix_mb": sum(p.stat().st_size for p in ids) / 2**20,
                "embedding_matrix_mb": matrix.stat().st_size / 2**20, "val_bacc": metrics["val_bacc"]}))
            log(f"{metrics['n_train']:>11,} train     {wall:8.1f} s {metrics['n_train'] / wall:>11,.0f} rows/s {rss:>8,.0f} MB")
        shutil.rmtree(work / "data", ignore_errors=True)  # keep disk use to one size at a time
    return results


def grid_config(combos: int) -> dict:
    """config/meli2019.yaml with an MLP grid of ``combos`` = a x b x c combinations (lr x dropout x seed)."""
    a = round(combos ** (1 / 3))
    if a**3 != combos:
        raise ValueError(f"--grid-combos must be a cube (e.g. 1000 = 10 x 10 x 10), got {combos}")
    cfg = yaml.safe_load((ROOT / "config" / "meli2019.yaml").read_text())
    grid = cfg["train"]["mlp"]["grid"]
    grid.update(lr=[round(1e-4 * (i + 1), 6) for i in range(a)], dropout=[round(0.05 * i, 2) for i in range(a)],
                seed=list(range(a)), hidden=[[256, 128]], freeze_embeddings=[True], batch_size=[256])
    cfg["train"]["max_combinations"] = combos + 100  # meant: the guard against a mistyped grid would stop it
    return cfg


def bench_dry_run(combos: int, work_root: Path) -> Measure:
    """``snakemake -n`` of a ``combos``-combination MLP grid (plus meli2019's CNN/TF-IDF grids)."""
    wf = work_root / "workflow"
    shutil.rmtree(wf, ignore_errors=True)
    wf.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, wf / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, wf / name)
    (wf / "grid.yaml").write_text(yaml.safe_dump(grid_config(combos)))
    log_path = work_root / "logs" / "dry_run.log"
    wall, rss = run_measured("snakemake", ["-n", "--configfile", "grid.yaml"], log_path, cwd=wf)
    out = log_path.read_text()
    match = re.search(r"^train_neural\s+(\d+)", out, re.M)
    jobs = int(match.group(1)) if match else -1
    total = re.search(r"^total\s+(\d+)", out, re.M)
    if jobs < combos:
        raise StageFailed(f"dry run planned {jobs} train_neural jobs, expected >= {combos}; see {log_path}")
    return Measure("dry run", combos, wall, rss, 0, {"train_neural_jobs": jobs, "total_jobs": int(total.group(1)) if total else None})


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line, or None with fewer than 2 distinct x."""
    if len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def extrapolate(results: list[Measure], stage: str, full_rows: int) -> dict | None:
    ms = [m for m in results if m.stage == stage]
    wall_fit = linear_fit([m.rows for m in ms], [m.wall_s for m in ms])
    rss_fit = linear_fit([m.rows for m in ms], [m.peak_rss_mb for m in ms])
    if not wall_fit or not rss_fit:
        return None
    # Train rows scale with the dataset: the same train share as measured.
    rows = round(full_rows * ms[-1].rows / ms[-1].size) if ms[-1].size else full_rows
    # A line that does not grow (tiny sizes, where process start-up dominates) predicts nothing.
    wall = wall_fit[0] + wall_fit[1] * rows if wall_fit[1] > 0 else None
    return {"stage": stage, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall if wall else None,
            "peak_rss_mb": rss_fit[0] + rss_fit[1] * rows if rss_fit[1] > 0 else None,
            "rss_mb_per_million_rows": rss_fit[1] * 1e6}


def verdicts(results: list[Measure], extra: dict[str, dict], quick: bool) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    rows = []
    data = [m for m in results if m.stage == "data"]
    if data:
        worst = min(m.rows_per_s for m in data)
        rows.append((f"data stage >= {TARGETS['data_rows_per_s']:,} rows/s", f"{worst:,.0f} rows/s (slowest size)",
                     "ok" if worst >= TARGETS["data_rows_per_s"] else "MISSED"))
    if "data" in extra and extra["data"]["wall_s"] and extra["data"]["peak_rss_mb"]:
        e = extra["data"]
        rows.append((f"data stage at 20M: peak RSS < {TARGETS['data_rss_mb_20m']:,} MB, >= 100k rows/s",
                     f"{e['peak_rss_mb']:,.0f} MB, {e['rows_per_s']:,.0f} rows/s (extrapolated)",
                     "ok" if e["peak_rss_mb"] < TARGETS["data_rss_mb_20m"] and e["rows_per_s"] >= TARGETS["data_rows_per_s"] else "MISSED"))
    vec = [m for m in results if m.stage == "vectors"]
    if vec:
        m = vec[0]
        rows.append((f"vectors parse < {TARGETS['vectors_parse_s']} s (1,000,000 x 300)",
                     f"{m.wall_s:.1f} s for {m.rows:,} x 300, {m.peak_rss_mb:,.0f} MB",
                     ("ok" if m.wall_s < TARGETS["vectors_parse_s"] else "MISSED") + (" (small file: --quick)" if m.rows < 1_000_000 else "")))
    dry = [m for m in results if m.stage == "dry run"]
    if dry:
        m = dry[0]
        rows.append((f"dry run of {m.rows:,} combinations < {TARGETS['dry_run_s']} s",
                     f"{m.wall_s:.1f} s ({m.extra['total_jobs']} jobs)", "ok" if m.wall_s < TARGETS["dry_run_s"] else "MISSED"))
    train = [m for m in results if m.stage == "train"]
    fit = linear_fit([m.rows for m in train], [m.peak_rss_mb * 2**20 for m in train])
    if fit:
        # bytes per train row of its token matrix (ids + label), validation rows carried along
        per_row = np.mean([m.extra["token_matrix_mb"] * 2**20 / m.rows for m in train])
        ratio = fit[1] / per_row
        rows.append(("training memory bounded by its token matrix",
                     f"peak RSS grows {fit[1]:,.0f} B/train row; token matrices {per_row:,.0f} B/train row "
                     f"(x{ratio:.2f}); fixed part {fit[0] / 2**20:,.0f} MB",
                     "ok" if ratio <= TARGETS["train_rss_per_matrix_byte"] else "MISSED"))
    elif train:
        m = train[-1]
        rows.append(("training memory bounded by its token matrix",
                     f"{m.peak_rss_mb:,.0f} MB with {m.extra['token_matrix_mb']:,.0f} MB of token matrices (one size: no slope)",
                     "n/a"))
    if quick:
        rows = [(t, v, f"{ok} (quick run: tiny sizes, not a verdict)") for t, v, ok in rows]
    return rows


def markdown(results: list[Measure], extra: dict[str, dict], checks: list[tuple[str, str, str]], header: str) -> str:
    lines = [header, "", "| stage | size (input rows) | rows processed | wall s | rows/s | peak RSS MB | notes |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for m in results:
        if m.stage in ("generate", "generate vectors"):
            continue
        note = ", ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.extra.items())
        unit = "lines/s" if m.stage == "vectors" else "combos/s" if m.stage == "dry run" else ""
        lines.append(f"| {m.stage} | {m.size:,} | {m.rows:,} | {m.wall_s:,.1f} | {m.rows_per_s:,.0f} {unit}".rstrip()
                     + f" | {m.peak_rss_mb:,.0f} | {note} |")
    fmt = lambda x: "n/a" if x is None else f"{x:,.0f}"  # noqa: E731
    for stage, e in extra.items():
        lines.append(f"| {stage} | **{FULL_ROWS:,} (extrapolated)** | {e['rows']:,} | {fmt(e['wall_s'])} | "
                     f"{fmt(e['rows_per_s'])} | {fmt(e['peak_rss_mb'])} | linear fit over the sizes; "
                     f"{e['rss_mb_per_million_rows']:+,.0f} MB RSS per 1M rows |")
    gen = [m for m in results if m.stage.startswith("generate")]
    if gen:
        lines += ["", "Synthetic data generated this run: " + "; ".join(
            f"{m.rows:,} {'vectors' if 'vectors' in m.stage else 'rows'} in {m.wall_s:.1f} s" for m in gen) + "."]
    lines += ["", "| target | measured | verdict |", "|---|---|---|"] + [f"| {t} | {v} | {ok} |" for t, v, ok in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help="comma-separated row counts (default 1000000,2000000,4000000)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes: 10k, 20k rows, 50k-word vocabulary, 10k x 300 vectors, 27-combination grid")
    ap.add_argument("--vocab-size", type=int, default=None, help="generator words per language (default 500,000)")
    ap.add_argument("--train-sizes", default=None,
                    help="comma-separated sizes at which to time the training epoch (default: every size)")
    ap.add_argument("--vector-words", type=int, default=None, help="words in the vectors file (default 1,000,000)")
    ap.add_argument("--grid-combos", type=int, default=None, help="MLP combinations in the dry run (a cube; default 1000)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: sizes, vectors, train, dry-run")
    ap.add_argument("--cache-dir", default=str(ROOT / "bench-out" / "cache"), help="generated inputs, reused between runs")
    ap.add_argument("--workdir", default=None, help="where the temporary directory for stage outputs goes (removed at the end)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    args = ap.parse_args(argv)

    sizes = [int(s) for s in (args.sizes or ("10000,20000" if args.quick else "1000000,2000000,4000000")).split(",")]
    vector_words = args.vector_words or (10_000 if args.quick else 1_000_000)
    vocab_size = args.vocab_size or (50_000 if args.quick else PRESETS["official"].vocab_size)
    # A CPU epoch costs ~20x the data stage per row: --train-sizes 1000000,2000000 saves minutes.
    train_sizes = {int(s) for s in args.train_sizes.split(",")} if args.train_sizes else set(sizes)
    combos = args.grid_combos or (27 if args.quick else 1000)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.workdir) as tmp:
        work = Path(tmp)
        results: list[Measure] = []
        if "sizes" not in skip:
            stages = {s for s in STAGE_MODULES if s not in skip and present(s)}
            for missing in sorted(set(STAGE_MODULES) - skip - {s for s in STAGE_MODULES if present(s)}):
                log(f"skip {missing}: {STAGE_MODULES[missing]} is not in scripts/ yet")
            results += bench_sizes(sizes, workflow_config(), cache, work, vector_words, stages, log, vocab_size, train_sizes)
        if "dry-run" not in skip:
            m = bench_dry_run(combos, work)
            log(f"dry run of {combos:,} combinations: {m.wall_s:.1f} s ({m.extra['total_jobs']} jobs)")
            results.append(m)
    extra = {s: e for s in ("data", "features", "train") if (e := extrapolate(results, s, FULL_ROWS))}
    checks = verdicts(results, extra, args.quick)
    header = (f"## Scale benchmark ({'quick' if args.quick else 'full'}): sizes {', '.join(f'{s:,}' for s in sizes)}; "
              f"{os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d %H:%M')}")
    table = markdown(results, extra, checks, header)
    sys.stdout.write(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "sizes": sizes, "measures": [{**asdict(m), "rows_per_s": m.rows_per_s} for m in results],
            "extrapolated": extra, "targets": [{"target": t, "measured": v, "verdict": ok} for t, v, ok in checks],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
