"""Data-stage throughput: `meli.data.prepare` end to end on N rows in the official CSV format.

    .venv/bin/python benchmarks/bench_data.py [--rows 1000000] [--naive-sample 30000] [--keep DIR]

1. Builds the input: a pool of demo titles (`meli.data.demo.generate`), drawn N times at random
   with a random model-number token appended so titles stay varied, written as gzip CSV with
   header (vectorized, not timed).
2. Runs `python -m meli.data.prepare` on it in a subprocess (as the rule does) and reports rows/s
   (rows read / wall time, including process start, reading, cleaning, split, Parquet writing)
   and the subprocess's peak RSS.
3. Baseline measured in the same run: the per-row Python cleaner (`meli.data.text.clean_title_python`,
   the readable reference the vectorized path is tested against) on a sample, against
   `meli.data.text.clean_array` on the same sample: the speed-up ratio.
Figures depend on the machine and its load; the target is >= 100,000 rows/s on 2 cores with
peak RSS well under 8 GB at 20M rows (memory grows about linearly with kept rows).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from meli.data.demo import generate  # noqa: E402
from meli.data.text import clean_array, clean_title_python  # noqa: E402

POOL_ROWS = 20_000
CONFIG = {
    "dataset": {"name": "bench", "source": "bench", "format": "auto", "languages": ["spanish"],
                "label_quality": ["reliable", "unreliable"], "max_bad_row_fraction": 0.01, "sha256": None},
    "preprocess": {"lowercase": True, "strip_accents": True, "strip_punctuation": True, "strip_numbers": False,
                   "remove_stopwords": True, "min_token_length": 2, "chunk_rows": 500_000},
    "split": {"use_source_splits": True, "validation_fraction": 0.1, "test_fraction": 0.1, "subsample": 1.0,
              "seed": 42, "rare_category_policy": "train_only", "min_rows_per_category": 3},
}


def write_input(rows: int, out: Path, seed: int = 0) -> pa.Table:
    """N rows drawn from a demo pool, each with a random model token; returns the pool."""
    pool = pa.Table.from_pylist(
        [dict(zip(("title", "label_quality", "language", "category"), r)) for r in generate(POOL_ROWS, 40, seed)]
    )
    rng = np.random.default_rng(seed)
    with pa.CompressedOutputStream(str(out), "gzip") as sink:
        writer = None
        for start in range(0, rows, 500_000):
            n = min(500_000, rows - start)
            block = pool.take(pa.array(rng.integers(0, len(pool), n)))
            token = pc.cast(pa.array(rng.integers(1, 99_999, n)), pa.string())
            title = pc.binary_join_element_wise(block["title"], pc.binary_join_element_wise("x", token, ""), " ")
            block = block.set_column(0, "title", title)
            if writer is None:
                writer = pcsv.CSVWriter(sink, block.schema)
            writer.write_table(block)
        writer.close()
    return pool


def run_prepare(source: Path, out_dir: Path) -> tuple[float, dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "meli.data.prepare", "--source", str(source), "--out-dir", str(out_dir), "--threads", "2",
         "--config", json.dumps(CONFIG)],
        env=env, capture_output=True, text=True,
    )
    wall = time.monotonic() - start
    if proc.returncode:
        sys.exit(f"prepare failed:\n{proc.stderr[-4000:]}")
    return wall, json.loads((out_dir / "summary.json").read_text())


def compare_cleaning(titles: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    naive = [clean_title_python(t, CONFIG["preprocess"], "spanish") for t in titles]
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = clean_array(pa.array(titles), CONFIG["preprocess"], "spanish").text.to_pylist()
    fast_s = time.perf_counter() - start
    assert fast == naive, "vectorized and reference cleaning disagree"
    return len(titles) / naive_s, len(titles) / fast_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--naive-sample", type=int, default=30_000, help="titles for the per-row baseline")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep the files")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source = work / "bench.csv.gz"
        start = time.monotonic()
        pool = write_input(args.rows, source)
        print(f"input: {args.rows:,} rows, {source.stat().st_size / 1e6:.1f} MB gzip CSV "
              f"(built in {time.monotonic() - start:.1f}s)")
        wall, summary = run_prepare(source, work / "data")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_rss, child_cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
        rate = summary["rows_read"] / wall
        print(f"prepare end to end: {summary['rows_read']:,} rows in {wall:.1f}s = {rate:,.0f} rows/s "
              f"(in-process {summary['rows_per_s']:,.0f} rows/s), peak RSS {child_rss:,.0f} MB, "
              f"{summary['rows']['total']:,} rows kept")
        print(f"  CPU time {child_cpu:.1f}s = {summary['rows_read'] / child_cpu:,.0f} rows per CPU-second "
              f"(load average at start {load[0]:.1f} on {os.cpu_count()} cores: a busy machine lowers rows/s)")
        titles = pool["title"].to_pylist()[: args.naive_sample]
        naive_rate, fast_rate = compare_cleaning(titles)
        print(f"cleaning {len(titles):,} titles: per-row Python {naive_rate:,.0f} rows/s, "
              f"vectorized Arrow {fast_rate:,.0f} rows/s, ratio {fast_rate / naive_rate:.1f}x")
        print(f"end-to-end prepare vs per-row cleaning alone: {rate / naive_rate:.1f}x")
        print(f"target >= 100,000 rows/s: {'met' if rate >= 100_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
