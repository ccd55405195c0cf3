"""The TF-IDF path against the code before issue 25, measured side by side in one run.

    python benchmarks/bench_tfidf.py --sample $SHARED/data/meli2019-es-sample.jsonl.gz --threads 2
    python benchmarks/bench_tfidf.py --rows 1000000 --skip-mlp --skip-baseline     # features at scale
    python benchmarks/bench_tfidf.py --quick                                         # tiny, ~1 min

Every stage runs as its rule runs it (``python -m ...``) in its own process (wall time around the
process, peak RSS = the process's own VmHWM, benchmarks/bench_scale.run_measured), old and new
one after the other on the same data, so the machine's load affects both alike:

1. **features** (``meli.embeddings.tfidf``): ``engine: sklearn`` (before: one TfidfVectorizer per
   block, one core) against ``engine: hashed`` (vectorized n-gram hashing, ``--threads``); on the
   real sample (``--sample``, split 70/15/15 as config/meli2019-sample.yaml) and/or synthetic
   course-shaped titles (``--rows N``: ``synthetic.py`` preset course-es, split 80/10/10).
2. **MLP input tfidf** (hidden [512], config/meli2019-sample.yaml's combination, ``--epochs``):
   before = sklearn features + SparseAdam (``MELI_SPARSE_OPTIMIZER=sparse_adam``), after = hashed
   features + LazyAdam; train rows/s (the epochs' own ``samples_per_s``), validation bacc, peak RSS.
3. **baseline** (``meli.train.baseline``): LinearSVC (C 0.5, over the sklearn features, as
   before) against ``solver: softmax`` (over the hashed features); validation bacc, fit seconds.

Prints one table per part with the ratios new / old.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmarks.bench_baseline import prepare  # noqa: E402
from benchmarks.bench_scale import run_measured  # noqa: E402

FEATURES = {"word_ngrams": [1, 2], "char_ngrams": [2, 5], "min_df": 2, "max_features": 262144}  # meli2019*.yaml
MLP = {"input": "tfidf", "hidden": [512], "dropout": 0.3, "lr": 0.003, "batch_size": 128, "seed": 0}
SOFTMAX = {"solver": "softmax", "lr": 0.02, "epochs": 5, "batch_size": 256}


def _measured(module: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return run_measured(module, args, log)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def features(data: Path, work: Path, threads: int) -> list[dict]:
    """Both engines on the same splits; the label files the trainers need (meli.embeddings.features)."""
    rows = sum(_rows(data / f"{s}.parquet") for s in ("train", "validation", "test"))
    out = []
    for engine in ("sklearn", "hashed"):
        cfg = {**FEATURES, "engine": engine}
        dest = work / f"tfidf-{engine}"
        wall, rss = _measured("meli.embeddings.tfidf", ["--data-dir", str(data), "--out-dir", str(dest), "--config",
                                                        json.dumps(cfg), "--threads", str(threads)],
                              work / "logs" / f"tfidf-{engine}.log")
        stats = json.loads((dest / "stats.json").read_text())
        out.append({"engine": engine, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall, "peak_rss_mb": rss,
                    "columns": stats["n_features"], "nnz_per_row": stats["splits"]["train"]["nnz_per_row"],
                    "output_mb": sum((dest / f"{s}.npz").stat().st_size for s in ("train", "validation", "test")) / 2**20})
    _measured("meli.embeddings.features", ["--data-dir", str(data), "--out-dir", str(work / "features"),
                                           "--config", json.dumps({"min_count": 1, "max_size": 50000, "max_len": 20})],
              work / "logs" / "features.log")
    return out


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def mlp(work: Path, threads: int, epochs: int, hidden: list[int]) -> list[dict]:
    out = []
    params = {**MLP, "hidden": hidden, "epochs": epochs, "patience": epochs}
    for what, engine, opt in (("before: sklearn features + SparseAdam", "sklearn", "sparse_adam"),
                              ("after: hashed features + LazyAdam", "hashed", "lazy")):
        run = work / f"mlp-{engine}"
        wall, rss = _measured("meli.train.neural", [
            "--family", "mlp", "--params", json.dumps(params), "--features", str(work / "features"),
            "--tfidf", str(work / f"tfidf-{engine}"), "--out-dir", str(run), "--checkpoint-dir", str(work / f"ckpt-{engine}"),
            "--device", "cpu", "--threads", str(threads)], work / "logs" / f"mlp-{engine}.log",
            {"MELI_SPARSE_OPTIMIZER": opt})
        m = json.loads((run / "metrics.json").read_text())
        out.append({"what": what, "epochs": m["epochs_run"], "train_rows_per_s": m["samples_per_s"],
                    "val_bacc": m["val_bacc"], "wall_s": wall, "peak_rss_mb": rss, "n_train": m["n_train"]})
    return out


def baseline(data: Path, work: Path, threads: int, linearsvc: bool) -> list[dict]:
    out = []
    runs = [("LinearSVC C 0.5, sklearn features", "sklearn", {"C": 0.5})] if linearsvc else []
    runs.append(("softmax (torch, LazyAdam), hashed features", "hashed", SOFTMAX))
    for what, engine, params in runs:
        run = work / f"baseline-{engine}"
        wall, rss = _measured("meli.train.baseline", [
            "--params", json.dumps(params), "--data-dir", str(data), "--features", str(work / "features"),
            "--tfidf", str(work / f"tfidf-{engine}"), "--out-dir", str(run), "--threads", str(threads),
            "--device", "cpu"], work / "logs" / f"baseline-{engine}.log")
        m = json.loads((run / "metrics.json").read_text())
        out.append({"what": what, "val_bacc": m["val_bacc"], "fit_s": m["train_time_s"], "wall_s": wall,
                    "peak_rss_mb": rss})
    return out


def report(name: str, feats: list[dict], mlps: list[dict], bases: list[dict]) -> str:
    lines = [f"### {name}", ""]
    if feats:
        old, new = feats
        lines += ["| features | rows | wall s | rows/s | peak RSS MB | columns | nnz/row | .npz MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {f['engine']} | {f['rows']:,} | {f['wall_s']:.1f} | {f['rows_per_s']:,.0f} | {f['peak_rss_mb']:,.0f} "
                  f"| {f['columns']:,} | {f['nnz_per_row']} | {f['output_mb']:,.0f} |" for f in feats]
        lines += ["", f"features: **{old['wall_s'] / new['wall_s']:.1f}x faster**, peak RSS x{new['peak_rss_mb'] / old['peak_rss_mb']:.2f} "
                      f"(hashed / sklearn), same run", ""]
    if mlps:
        old, new = mlps
        lines += ["| MLP input tfidf | epochs | train rows/s | val bacc | wall s | peak RSS MB |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {m['what']} | {m['epochs']} | {m['train_rows_per_s']:,.0f} | {m['val_bacc']:.4f} | {m['wall_s']:.0f} | "
                  f"{m['peak_rss_mb']:,.0f} |" for m in mlps]
        lines += ["", f"MLP: **{new['train_rows_per_s'] / old['train_rows_per_s']:.1f}x train rows/s**, val bacc "
                      f"{100 * (new['val_bacc'] - old['val_bacc']):+.2f} points, peak RSS x{new['peak_rss_mb'] / old['peak_rss_mb']:.2f}", ""]
    if bases:
        lines += ["| baseline | val bacc | fit s | wall s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {b['what']} | {b['val_bacc']:.4f} | {b['fit_s']:.1f} | {b['wall_s']:.0f} | {b['peak_rss_mb']:,.0f} |"
                  for b in bases]
        if len(bases) == 2:
            lines += ["", f"baseline: softmax fits **{bases[0]['fit_s'] / bases[1]['fit_s']:.1f}x faster**, val bacc "
                          f"{100 * (bases[1]['val_bacc'] - bases[0]['val_bacc']):+.2f} points against LinearSVC", ""]
    return "\n".join(lines) + "\n"


def bench_dataset(name: str, data: Path, work: Path, args) -> str:
    work.mkdir(parents=True, exist_ok=True)
    feats = features(data, work, args.threads)
    print(report(name, feats, [], []), file=sys.stderr, flush=True)  # each part as soon as it is measured
    mlps = [] if args.skip_mlp else mlp(work, args.threads, args.epochs, args.hidden)
    print(report(name, [], mlps, []), file=sys.stderr, flush=True)
    bases = [] if args.skip_baseline else baseline(data, work, args.threads, not args.skip_linearsvc)
    return report(name, feats, mlps, bases)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=Path, default=None, help="the real-title sample (.jsonl.gz)")
    ap.add_argument("--rows", type=int, default=0, help="also synthetic course-es titles of this many rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--epochs", type=int, default=2, help="MLP epochs (old and new alike)")
    ap.add_argument("--hidden", type=lambda s: [int(x) for x in s.split(",")], default=[512])
    ap.add_argument("--skip-mlp", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-linearsvc", action="store_true", help="baseline: only the softmax solver")
    ap.add_argument("--quick", action="store_true", help="3,000 synthetic rows, hidden 32, 1 epoch")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.hidden = args.rows or 3000, 1, [32]
    if args.sample is None and not args.rows:
        ap.error("give --sample PATH and/or --rows N (or --quick)")
    out = [f"## TF-IDF path, old vs new ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
           f"--threads {args.threads})", ""]
    with tempfile.TemporaryDirectory(prefix="bench-tfidf-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        if args.sample is not None:
            prepare(args.sample, tmp / "sample" / "data", 0.15, 0.15)
            out.append(bench_dataset(f"real sample ({args.sample.name})", tmp / "sample" / "data", tmp / "sample", args))
            shutil.rmtree(tmp / "sample", ignore_errors=True)
        if args.rows:
            from benchmarks.synthetic import PRESETS, write_titles_csv

            csv = tmp / "synthetic.csv.gz"
            write_titles_csv(csv, args.rows, PRESETS["course-es"])
            prepare(csv, tmp / "synthetic" / "data", 0.1, 0.1)
            out.append(bench_dataset(f"synthetic course-es, {args.rows:,} rows", tmp / "synthetic" / "data",
                                     tmp / "synthetic", args))
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as err:
        sys.exit(f"{err.cmd[:3]} failed: {err.stderr!r:.2000}")
