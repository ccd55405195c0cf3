"""Every benchmark, each in its own process, and one consolidated summary (what `make bench` runs).

    make bench                                   # full: scale 1M/2M/4M + the stage benchmarks
    make bench ARGS=--quick                      # tiny sizes, about a minute
    make bench ARGS="--sizes 1000000,2000000,4000000 --only scale"

Outputs go to ``--out-dir`` (default bench-out/): each benchmark's full output in
``<name>.txt``, the scale table in ``scale.md``/``scale.json``, and the summary in ``summary.md``.
A benchmark that fails is reported (with its output's tail) and makes the exit status 1; the
others still run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# name -> (script, arguments for a full run, arguments for --quick). The stage benchmarks are
# the teammates'; each is run only if its script exists.
STAGE_BENCHMARKS = {
    "data": ("bench_data.py", [], ["--rows", "20000", "--naive-sample", "3000"]),
    "vectors": ("bench_vectors.py", [], ["--rows", "20000", "--vocab", "5000", "--overlap", "4000"]),
    "vectors-sbwce": ("bench_vectors.py", ["--rows", "1000000", "--skip-naive"], None),
    "training": ("bench_training.py", [], ["--rows", "20000", "--naive-rows", "5000", "--cnn-rows", "2000"]),
    "baseline": ("bench_baseline.py", [], ["--skip-sample", "--scale", "20000x16"]),
    "tfidf": ("bench_tfidf.py", ["--rows", "200000", "--skip-linearsvc"], ["--quick", "--skip-linearsvc"]),
}


def run(name: str, cmd: list[str], out_dir: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    text = f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    (out_dir / f"{name}.txt").write_text(text)
    return {"name": name, "rc": proc.returncode, "wall_s": wall, "stdout": proc.stdout, "stderr": proc.stderr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes everywhere (about a minute)")
    ap.add_argument("--sizes", help="row counts for the scale benchmark, e.g. 1000000,2000000,4000000")
    ap.add_argument("--only", help="comma-separated subset: scale," + ",".join(STAGE_BENCHMARKS))
    ap.add_argument("--out-dir", default=str(ROOT / "bench-out"))
    ap.add_argument("--cache-dir", default=None, help="generated inputs of the scale benchmark (default bench-out/cache)")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    only = {s.strip() for s in args.only.split(",")} if args.only else None

    jobs: list[tuple[str, list[str]]] = []
    if only is None or "scale" in only:
        scale = [sys.executable, str(BENCH / "bench_scale.py"), "--out", str(out_dir / "scale.md"),
                 "--json", str(out_dir / "scale.json"), "--cache-dir", args.cache_dir or str(out_dir / "cache")]
        scale += ["--quick"] if args.quick else []
        scale += ["--sizes", args.sizes] if args.sizes else []
        jobs.append(("scale", scale))
    for name, (script, full, quick) in STAGE_BENCHMARKS.items():
        extra = quick if args.quick else full
        if (only is not None and name not in only) or extra is None:
            continue
        if not (BENCH / script).exists():
            print(f"[{name}] {script} not present: skipped", file=sys.stderr)
            continue
        jobs.append((name, [sys.executable, str(BENCH / script), *extra]))

    results = []
    for name, cmd in jobs:
        print(f"[{name}] running: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        r = run(name, cmd, out_dir)
        print(f"[{name}] {'ok' if r['rc'] == 0 else 'FAILED'} in {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
        results.append(r)

    lines = ["# Benchmarks", "", "| benchmark | status | wall s | full output |", "|---|---|---:|---|"]
    lines += [f"| {r['name']} | {'ok' if r['rc'] == 0 else 'FAILED (exit %d)' % r['rc']} | {r['wall_s']:,.0f} | "
              f"{out_dir / (r['name'] + '.txt')} |" for r in results]
    for r in results:
        lines += ["", f"## {r['name']}", ""]
        if r["rc"] != 0:
            lines += ["```", r["stderr"].strip()[-3000:] or r["stdout"].strip()[-3000:], "```"]
        elif r["name"] == "scale":
            lines.append(r["stdout"].strip())
        else:
            lines += ["```", r["stdout"].strip(), "```"]
    summary = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(summary)
    sys.stdout.write(summary)
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
