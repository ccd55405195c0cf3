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
   before issue 25 = sklearn features + SparseAdam, today = hashed features + LazyAdam, new =
   hashed features + row-wise RMSprop (``sparse_optimizer: rowwise_rmsprop``, forced per run by ``MELI_SPARSE_OPTIMIZER``);
   train rows/s (the epochs' own ``samples_per_s``, and training steps of the three interleaved
   batch by batch in one process), validation bacc (mean ± sd over ``--seeds``), CPU seconds, peak RSS.
3. **baseline** (``meli.train.baseline``): LinearSVC (C 0.5, over the sklearn features, as
   before) against the torch solvers over the hashed features, ``solver: squared_hinge``
   (LinearSVC's loss) and ``solver: softmax``; validation bacc, fit seconds, CPU seconds.

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
# config/meli2019*.yaml's input-tfidf MLP (cosine: what the row-wise optimizer needs to match SparseAdam's
# accuracy; old and new run with it)
MLP = {"input": "tfidf", "hidden": [512], "dropout": 0.3, "lr": 0.003, "batch_size": 128, "seed": 0, "lr_schedule": "cosine"}
# The torch baselines as config/meli2019.yaml has them (issue 25, part 3)
SQUARED_HINGE = {"solver": "squared_hinge", "lr": 0.01, "epochs": 8, "batch_size": 256, "sparse_optimizer": "lazy_adam"}
SOFTMAX = {"solver": "softmax", "lr": 0.03, "epochs": 5, "batch_size": 256, "sparse_optimizer": "rowwise_adagrad"}


CPU_S: dict[str, float] = {}  # log name -> the process's CPU seconds (user + system)


def _measured(module: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """run_measured (wall, peak RSS), and the process's CPU seconds in CPU_S[log.stem]: on a machine
    shared with other work, CPU time is what old and new can be compared on (wall time is not)."""
    import resource

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        wall, rss = run_measured(module, args, log)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_S[log.stem] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, rss


def features(data: Path, work: Path, threads: int, engines=("sklearn", "hashed")) -> list[dict]:
    """Both engines on the same splits; the label files the trainers need (meli.embeddings.features)."""
    rows = sum(_rows(data / f"{s}.parquet") for s in ("train", "validation", "test"))
    out = []
    for engine in engines:
        cfg = {**FEATURES, "engine": engine}
        dest = work / f"tfidf-{engine}"
        wall, rss = _measured("meli.embeddings.tfidf", ["--data-dir", str(data), "--out-dir", str(dest), "--config",
                                                        json.dumps(cfg), "--threads", str(threads)],
                              work / "logs" / f"tfidf-{engine}.log")
        stats = json.loads((dest / "stats.json").read_text())
        out.append({"engine": engine, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall, "peak_rss_mb": rss,
                    "cpu_s": CPU_S[f"tfidf-{engine}"],
                    "columns": stats["n_features"], "nnz_per_row": stats["splits"]["train"]["nnz_per_row"],
                    "output_mb": sum((dest / f"{s}.npz").stat().st_size for s in ("train", "validation", "test")) / 2**20})
    _measured("meli.embeddings.features", ["--data-dir", str(data), "--out-dir", str(work / "features"),
                                           "--config", json.dumps({"min_count": 1, "max_size": 50000, "max_len": 20})],
              work / "logs" / "features.log")
    return out


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


# The input-tfidf MLP's sparse optimizers, oldest first: (label, features engine, sparse optimizer).
MLP_VARIANTS = (("before issue 25: sklearn features + SparseAdam", "sklearn", "sparse_adam"),
                ("today: hashed features + LazyAdam", "hashed", "lazy_adam"),
                ("new: hashed features + row-wise RMSprop", "hashed", "rowwise_rmsprop"))
ROWWISE = {"sparse_lr_scale": 0.3}  # the bag's lr = 0.3 x lr under rowwise_rmsprop (config/meli2019*.yaml)


def _mlp_params(kind: str, **extra) -> dict:
    return {**MLP, **extra, **({"sparse_optimizer": kind, **ROWWISE} if kind.startswith("rowwise_") else {})}


def mlp(work: Path, threads: int, epochs: int, hidden: list[int], seeds: list[int] = (0,)) -> list[dict]:
    """Each variant's whole training job, once per seed (seeds alternate between the variants, so
    load from other work falls on all alike); the figures are the seeds' means, val bacc with its
    standard deviation over the seeds (the noise that "the same accuracy" is judged against)."""
    import statistics

    jobs: dict[str, list[dict]] = {opt: [] for _, _, opt in MLP_VARIANTS}
    for seed in seeds:
        for what, engine, opt in MLP_VARIANTS:
            run = work / f"mlp-{engine}-{opt}-seed{seed}"
            params = _mlp_params(opt, hidden=hidden, epochs=epochs, patience=epochs, seed=seed)
            wall, rss = _measured("meli.train.neural", [
                "--family", "mlp", "--params", json.dumps(params), "--features", str(work / "features"),
                "--tfidf", str(work / f"tfidf-{engine}"), "--out-dir", str(run),
                "--checkpoint-dir", str(work / f"ckpt-{opt}-{seed}"), "--device", "cpu", "--threads", str(threads)],
                work / "logs" / f"{run.name}.log", {"MELI_SPARSE_OPTIMIZER": opt})
            m = json.loads((run / "metrics.json").read_text())
            jobs[opt].append({"epochs": m["epochs_run"], "train_rows_per_s": m["samples_per_s"], "cpu_s": CPU_S[run.name],
                              "val_bacc": m["val_bacc"], "wall_s": wall, "peak_rss_mb": rss, "n_train": m["n_train"]})
    out = []
    for what, _, opt in MLP_VARIANTS:
        runs = jobs[opt]
        mean = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
        baccs = [r["val_bacc"] for r in runs]
        out.append({**mean, "what": what, "kind": opt, "seeds": len(runs), "val_baccs": baccs,
                    "val_bacc_sd": statistics.stdev(baccs) if len(baccs) > 1 else 0.0,
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)})
    return out


def interleaved_steps(work: Path, threads: int, hidden: list[int], batches: int, batch_size: int = 128) -> dict:
    """Training steps of the three sparse optimizers in one process, alternating batch by batch
    (rotating which goes first) over the same batches of the hashed features: load from other work
    on the machine falls on all alike, which sequential runs cannot promise on a shared machine."""
    import torch
    import torch.nn.functional as F

    from meli.models.nets import TfidfMLP
    from meli.train import neural

    torch.set_num_threads(threads)
    data = neural.load_sparse_data(work / "features", work / "tfidf-hashed")
    x, y = data.train.ids, data.train.labels
    n_classes = len(data.categories)
    kinds = [kind for _, _, kind in MLP_VARIANTS]
    models, opts, spent = {}, {}, dict.fromkeys(kinds, 0.0)
    for kind in kinds:
        torch.manual_seed(0)
        models[kind] = TfidfMLP(x.n_features, n_classes, hidden=hidden, dropout=MLP["dropout"])
        opts[kind] = neural.make_optimizer(models[kind], {**_mlp_params(kind), "sparse_optimizer": kind,
                                                          "weight_decay": 0.0, "optimizer": "adam"})
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    batches = min(batches, len(y) // batch_size)
    for b in range(batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        for kind in kinds[b % 3 :] + kinds[: b % 3]:
            start = time.perf_counter()
            rows = x[idx]  # the gather is part of the step
            loss = F.cross_entropy(models[kind](rows), y[idx])
            opts[kind].zero_grad()
            loss.backward()
            opts[kind].step()
            if b >= 3:  # first batches: allocation of the optimizer state
                spent[kind] += time.perf_counter() - start
    rows_done = (batches - 3) * batch_size
    return {"batches": batches, "batch_size": batch_size, **{kind: rows_done / spent[kind] for kind in kinds}}


def baseline(data: Path, work: Path, threads: int, linearsvc: bool) -> list[dict]:
    """LinearSVC as before issue 25 (sklearn features, liblinear) against the torch solvers over the
    hashed features: squared_hinge (LinearSVC's loss, LazyAdam) and softmax."""
    out = []
    runs = [("LinearSVC C 0.5, sklearn features (before issue 25)", "sklearn", {"C": 0.5})] if linearsvc else []
    runs += [("squared_hinge (torch, LazyAdam, 8 epochs), hashed features", "hashed", SQUARED_HINGE),
             ("softmax (torch, row-wise Adagrad, 5 epochs), hashed features", "hashed", SOFTMAX)]
    for what, engine, params in runs:
        run = work / f"baseline-{engine}-{params.get('solver', 'linearsvc')}"
        wall, rss = _measured("meli.train.baseline", [
            "--params", json.dumps(params), "--data-dir", str(data), "--features", str(work / "features"),
            "--tfidf", str(work / f"tfidf-{engine}"), "--out-dir", str(run), "--threads", str(threads),
            "--device", "cpu"], work / "logs" / f"{run.name}.log")
        m = json.loads((run / "metrics.json").read_text())
        out.append({"what": what, "val_bacc": m["val_bacc"], "fit_s": m["train_time_s"], "wall_s": wall,
                    "cpu_s": CPU_S[run.name],
                    "peak_rss_mb": rss})
    return out


def fraction(data: Path, work: Path, rows: int, threads: int, hidden: list[int]) -> list[dict]:
    """One epoch of the MLP and of the squared_hinge baseline over the first ``rows`` train rows of the
    full-size features (columns, bag and validation split at full size): a measured fraction of an
    epoch, for sizes where a whole one does not fit the time (stated as such in the output)."""
    import numpy as np
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    part, feats = work / f"first-{rows}", work / f"first-{rows}" / "features"
    (feats / "tfidf").mkdir(parents=True, exist_ok=True)
    (part / "data").mkdir(exist_ok=True)
    full = work / "tfidf-hashed"
    x = sp.load_npz(full / "train.npz")[:rows]
    sp.save_npz(feats / "tfidf" / "train.npz", x, compressed=False)
    del x
    for name in ("validation.npz", "vectorizer.joblib", "stats.json"):
        os.link(full / name, feats / "tfidf" / name)
    for name in ("labels.json", "validation_labels.npy"):
        os.link(work / "features" / name, feats / name)
    np.save(feats / "train_labels.npy", np.load(work / "features" / "train_labels.npy")[:rows])
    pq.write_table(pq.read_table(data / "train.parquet", columns=["category"]).slice(0, rows), part / "data" / "train.parquet")
    for name in ("validation.parquet", "summary.json"):
        os.link(data / name, part / "data" / name)
    out = []
    params = {**MLP, "hidden": hidden, "epochs": 1, "patience": 1}
    for what, module, args in (
        ("MLP input tfidf (LazyAdam), 1 epoch", "meli.train.neural",
         ["--family", "mlp", "--params", json.dumps(params), "--features", str(feats), "--tfidf", str(feats / "tfidf"),
          "--checkpoint-dir", str(part / "ckpt"), "--device", "cpu"]),
        ("squared_hinge baseline, 1 epoch", "meli.train.baseline",
         ["--params", json.dumps({**SQUARED_HINGE, "epochs": 1}), "--data-dir", str(part / "data"), "--features", str(feats),
          "--tfidf", str(feats / "tfidf"), "--device", "cpu"])):
        run = part / module.rsplit(".", 1)[1]
        wall, rss = _measured(module, [*args, "--out-dir", str(run), "--threads", str(threads)],
                              work / "logs" / f"{run.name}-first-{rows}.log")
        m = json.loads((run / "metrics.json").read_text())
        out.append({"what": what, "n_train": m["n_train"], "n_val": m["n_val"], "train_s": m["train_time_s"],
                    "train_rows_per_s": m["samples_per_s"], "wall_s": wall, "peak_rss_mb": rss, "val_bacc": m["val_bacc"]})
    return out


def report(name: str, feats: list[dict], mlps: list[dict], bases: list[dict], parts: list[dict] = ()) -> str:
    lines = [f"### {name}", ""]
    if len(feats) == 1:
        f = feats[0]
        lines += ["| features (new only) | rows | wall s | rows/s | peak RSS MB | columns | nnz/row | .npz MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {f['engine']} | {f['rows']:,} | {f['wall_s']:.1f} | {f['rows_per_s']:,.0f} | {f['peak_rss_mb']:,.0f} "
                  f"| {f['columns']:,} | {f['nnz_per_row']} | {f['output_mb']:,.0f} |", ""]
    if parts:
        lines += ["| a measured fraction of an epoch | train rows | validation rows | train s | train rows/s | "
                  "wall s (incl. load + validation) | peak RSS MB | val bacc |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {p['what']} | {p['n_train']:,} | {p['n_val']:,} | {p['train_s']:.0f} | {p['train_rows_per_s']:,.0f} | "
                  f"{p['wall_s']:.0f} | {p['peak_rss_mb']:,.0f} | {p['val_bacc']:.4f} |" for p in parts]
        lines.append("")
    if len(feats) == 2:
        old, new = feats
        lines += ["| features | rows | wall s | CPU s | rows/s | peak RSS MB | columns | nnz/row | .npz MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {f['engine']} | {f['rows']:,} | {f['wall_s']:.1f} | {f['cpu_s']:.1f} | {f['rows_per_s']:,.0f} | "
                  f"{f['peak_rss_mb']:,.0f} | {f['columns']:,} | {f['nnz_per_row']} | {f['output_mb']:,.0f} |" for f in feats]
        lines += ["", f"features: **{old['wall_s'] / new['wall_s']:.1f}x faster** in wall time, "
                      f"{old['cpu_s'] / new['cpu_s']:.1f}x less CPU time, peak RSS x{new['peak_rss_mb'] / old['peak_rss_mb']:.2f} "
                      f"(hashed / sklearn), same run", ""]
    if mlps:
        lines += ["| MLP input tfidf | epochs | train rows/s (epochs, sequential runs) | train rows/s (steps interleaved) "
                  "| val bacc (mean ± sd over seeds) | wall s | CPU s (job) | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {m['what']} | {m['epochs']:.0f} | {m['train_rows_per_s']:,.0f} | {m['step_rows_per_s']:,.0f} | "
                  f"{m['val_bacc']:.4f} ± {m['val_bacc_sd']:.4f} ({m['seeds']} seeds: "
                  f"{', '.join(f'{b:.4f}' for b in m['val_baccs'])}) | {m['wall_s']:.0f} | {m['cpu_s']:.0f} | "
                  f"{m['peak_rss_mb']:,.0f} |" for m in mlps]
        before, today, new = mlps
        for old, name in ((today, "today's LazyAdam"), (before, "SparseAdam (before issue 25)")):
            lines += ["", f"MLP against {name}: **{new['step_rows_per_s'] / old['step_rows_per_s']:.1f}x train rows/s** "
                          f"(training steps interleaved batch by batch in one process, {mlps[0]['step_batches']} batches of "
                          f"{MLP['batch_size']}; the sequential epochs: x{new['train_rows_per_s'] / old['train_rows_per_s']:.1f}; "
                          f"CPU time of the whole job: {old['cpu_s'] / new['cpu_s']:.1f}x less), val bacc "
                          f"{100 * (new['val_bacc'] - old['val_bacc']):+.2f} points, peak RSS x{new['peak_rss_mb'] / old['peak_rss_mb']:.2f}"]
        lines.append("")
    if bases:
        lines += ["| baseline | val bacc | fit s | wall s | CPU s (job) | peak RSS MB |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {b['what']} | {b['val_bacc']:.4f} | {b['fit_s']:.1f} | {b['wall_s']:.0f} | {b['cpu_s']:.0f} | "
                  f"{b['peak_rss_mb']:,.0f} |" for b in bases]
        if len(bases) == 3:
            svc = bases[0]
            lines.append("")
            lines += [f"baseline: {b['what'].split(' (')[0]} fits **{svc['fit_s'] / b['fit_s']:.1f}x faster** "
                      f"({svc['cpu_s'] / b['cpu_s']:.1f}x less CPU per job), val bacc "
                      f"{100 * (b['val_bacc'] - svc['val_bacc']):+.2f} points against LinearSVC" for b in bases[1:]]
            lines.append("")
    return "\n".join(lines) + "\n"


def bench_dataset(name: str, data: Path, work: Path, args) -> str:
    work.mkdir(parents=True, exist_ok=True)
    if args.new_only:  # full size: today's code does not fit; the new path alone, measured
        feats = features(data, work, args.threads, engines=("hashed",))
        print(report(name, feats, [], []), file=sys.stderr, flush=True)
        parts = fraction(data, work, args.fraction_rows, args.threads, args.hidden) if args.fraction_rows else []
        return report(name, feats, [], [], parts)
    feats = features(data, work, args.threads)
    print(report(name, feats, [], []), file=sys.stderr, flush=True)  # each part as soon as it is measured
    steps = {} if args.skip_mlp else interleaved_steps(work, args.threads, args.hidden, args.step_batches)
    mlps = [] if args.skip_mlp else mlp(work, args.threads, args.epochs, args.hidden, args.seeds)
    for m in mlps:
        m["step_rows_per_s"], m["step_batches"] = steps[m["kind"]], steps["batches"]
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
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                    help="MLP: each variant's whole job once per seed (e.g. 0,1,2): val bacc mean ± sd")
    ap.add_argument("--skip-mlp", action="store_true")
    ap.add_argument("--step-batches", type=int, default=200, help="MLP: interleaved old/new training steps timed")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-linearsvc", action="store_true", help="baseline: only the torch solvers")
    ap.add_argument("--quick", action="store_true", help="3,000 synthetic rows, hidden 32, 1 epoch")
    ap.add_argument("--new-only", action="store_true", help="only the new path (full size, where the old one does not fit)")
    ap.add_argument("--fraction-rows", type=int, default=0,
                    help="with --new-only: one epoch of the MLP and the squared_hinge baseline over this many train rows of the full features")
    ap.add_argument("--keep-csv", type=Path, default=None, help="reuse/keep the generated synthetic CSV here")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.hidden, args.step_batches = args.rows or 3000, 1, [32], 10
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

            csv = args.keep_csv or tmp / "synthetic.csv.gz"
            if not csv.exists():
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
