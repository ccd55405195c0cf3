"""The TF-IDF family against the issue-12 reference script, and its cost at scale.

    python benchmarks/bench_baseline.py --sample $SHARED/data/meli2019-es-sample.jsonl.gz   # real sample + scale
    python benchmarks/bench_baseline.py --sample PATH --skip-scale   # only the real-sample comparison
    python benchmarks/bench_baseline.py --scale 100000x64,200000x64,100000x128 --threads 2

1. **Real sample** (``--sample``: the course's sample of real titles, e.g.
   ``$SHARED/data/meli2019-es-sample.jsonl.gz``, $SHARED being the shared/ folder beside the
   developers' checkout; skipped with a
   note without it): split with the workflow's own ``meli.data.prepare`` (stratified 70/15/15, seed 42, as
   config/meli2019-sample.yaml), then in the same run
   * the **reference**, the issue's ten-line script: its own ``TfidfVectorizer``s (word 1-2 +
     char_wb 2-5, min_df 2, sublinear tf) on the raw titles, ``LinearSVC(C=0.5)``;
   * the **family**: ``meli.embeddings.tfidf`` (the shared features, on the cleaned text) +
     ``meli.train.baseline.fit_ovr_svc`` (parallel one-vs-rest LinearSVC, float32 coef).
   Validation and test balanced accuracy, seconds and peak RSS of each, each in its own process.
2. **Scale** (synthetic MeLi-shaped titles from ``synthetic.py``, prepared by ``meli.data.prepare``):
   features + fit at each ``ROWSxCLASSES`` point, seconds and peak RSS, each in its own process.
   The summary extrapolates to 1M rows x 1,588 classes: fit time linear in rows x classes (one
   binary liblinear problem per class, each linear in the non-zeros), feature time linear in rows,
   memory from the measured X: float32 X + its float64 copy + per thread liblinear's copy of X and
   one 64-class chunk's float64 coefficients, + the float32 coef (1,588 x columns x 4 B). The
   method is printed with the numbers.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
PREPROCESS = {"lowercase": True, "strip_accents": True, "strip_punctuation": True, "strip_numbers": False,
              "remove_stopwords": True, "min_token_length": 2, "chunk_rows": 500000}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(source: Path, out_dir: Path, validation: float, test: float, fmt: str = "auto") -> None:
    cfg = {"dataset": {"name": "bench", "source": str(source), "format": fmt, "languages": ["spanish"],
                       "label_quality": ["reliable", "unreliable"], "max_bad_row_fraction": 0.05, "sha256": None},
           "preprocess": PREPROCESS,
           "split": {"use_source_splits": False, "validation_fraction": validation, "test_fraction": test,
                     "subsample": 1.0, "seed": 42, "rare_category_policy": "train_only", "min_rows_per_category": 3}}
    subprocess.run([sys.executable, "-m", "meli.data.prepare", "--source", str(source), "--out-dir", str(out_dir),
                    "--threads", "2", "--config", json.dumps(cfg)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})


def _splits(data: Path):
    import numpy as np
    import pandas as pd

    dfs = {s: pd.read_parquet(data / f"{s}.parquet", columns=["title", "text", "category"])
           for s in ("train", "validation", "test")}
    cats = pd.Index(sorted(dfs["train"]["category"].unique()))
    ys = {s: cats.get_indexer(d["category"]).astype(np.int64) for s, d in dfs.items()}
    return dfs, ys, len(cats)


def _bacc(y, pred) -> float:
    from meli.metrics import balanced_accuracy

    known = y >= 0
    return float(balanced_accuracy(y[known], pred[known]))


def part_reference(data: Path, threads: int) -> dict:
    """The issue's script, as a practitioner writes it (raw titles, sklearn's own lowercasing)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    dfs, ys, _ = _splits(data)
    t0 = time.perf_counter()
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    x = hstack([word.fit_transform(dfs["train"]["title"]), char.fit_transform(dfs["train"]["title"])]).tocsr()
    clf = LinearSVC(C=0.5).fit(x, ys["train"])
    fit_s = time.perf_counter() - t0
    out = {"what": "reference", "features": x.shape[1], "fit_s": fit_s}
    for s in ("validation", "test"):
        xs = hstack([word.transform(dfs[s]["title"]), char.transform(dfs[s]["title"])]).tocsr()
        out[s] = _bacc(ys[s], clf.predict(xs))
    return out


def part_family(data: Path, threads: int) -> dict:
    """The workflow's TF-IDF family: shared features on the cleaned text + parallel OVR LinearSVC."""
    from meli.embeddings.tfidf import TitleVectorizer
    from meli.train.baseline import fit_ovr_svc

    dfs, ys, n_classes = _splits(data)
    t0 = time.perf_counter()
    vec = TitleVectorizer()  # the schema's defaults = config/meli2019-sample.yaml
    x = vec.fit_transform(dfs["train"]["text"])
    features_s = time.perf_counter() - t0
    clf = fit_ovr_svc(x, ys["train"], n_classes, C=0.5, threads=threads)
    fit_s = time.perf_counter() - t0
    out = {"what": "family", "features": x.shape[1], "nnz_per_row": x.nnz / x.shape[0], "features_s": features_s,
           "fit_s": fit_s, "threads": threads, "coef_mb": clf.coef_.nbytes / 2**20}
    for s in ("validation", "test"):
        out[s] = _bacc(ys[s], clf.predict(vec.transform(dfs[s]["text"])))
    return out


def part_scale(data: Path, threads: int) -> dict:
    """Features + fit of the family on prepared synthetic rows; the numbers to extrapolate from."""
    import pandas as pd

    from meli.embeddings.tfidf import TitleVectorizer
    from meli.train.baseline import fit_ovr_svc

    train = pd.read_parquet(data / "train.parquet", columns=["text", "category"])
    cats = pd.Index(sorted(train["category"].unique()))
    y = cats.get_indexer(train["category"])
    t0 = time.perf_counter()
    x = TitleVectorizer().fit_transform(train["text"])
    features_s = time.perf_counter() - t0
    rss_features = peak_rss_mb()
    t1 = time.perf_counter()
    clf = fit_ovr_svc(x, y, len(cats), C=0.5, threads=threads)
    fit_s = time.perf_counter() - t1
    return {"what": "scale", "rows": int(x.shape[0]), "classes": len(cats), "features": int(x.shape[1]),
            "nnz_per_row": x.nnz / x.shape[0], "x_mb": (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 2**20,
            "features_s": features_s, "fit_s": fit_s, "threads": threads, "coef_mb": clf.coef_.nbytes / 2**20,
            "peak_rss_features_mb": rss_features}


PARTS = {"reference": part_reference, "family": part_family, "scale": part_scale}


def child(part: str, data: Path, threads: int) -> dict:
    """One part in its own process: its peak RSS is its own."""
    proc = subprocess.run([sys.executable, __file__, "--part", part, "--data", str(data), "--threads", str(threads)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})
    if proc.returncode != 0:
        raise RuntimeError(f"{part} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extrapolate(points: list[dict], rows: int = 1_000_000, classes: int = 1588) -> dict:
    """1M x 1,588 from the largest measured point (linear in rows x classes for the fit, rows for features)."""
    p = max(points, key=lambda q: q["rows"] * q["classes"])
    fit_per_rc = p["fit_s"] * p["threads"] / (p["rows"] * p["classes"])  # core-seconds per row x class
    features = min(2 * 262_144, p["features"] * (rows / p["rows"]) ** 0.6)  # Heaps-like growth, capped
    x_gb = p["x_mb"] / 1024 * rows / p["rows"]
    coef_gb = classes * features * 4 / 2**30
    return {"from": f"{p['rows']:,} x {p['classes']}", "core_hours": fit_per_rc * rows * classes / 3600,
            "features_min": p["features_s"] * rows / p["rows"] / 60, "features": int(features), "x_gb": x_gb,
            "coef_gb": coef_gb,
            # float32 X + its float64 copy (1.5 X) + per thread liblinear's copy (16 B/nnz = 2 X) and one
            # chunk's float64 coefficients twice (64 classes x features x 16 B), + the float32 coef.
            "peak_gb_per_thread": lambda t: 2.5 * x_gb + coef_gb + t * (2 * x_gb + 64 * features * 16 / 2**30)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=Path, default=None,
                    help="real titles (JSON lines), e.g. $SHARED/data/meli2019-es-sample.jsonl.gz "
                    "($SHARED: the shared/ folder beside the developers' checkout)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", default="100000x64,200000x64", help="ROWSxCLASSES points of synthetic data")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-sample", action="store_true")
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.part:
        result = PARTS[args.part](args.data, args.threads)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return 0

    results: dict = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        tmp = Path(tmp)
        if not args.skip_sample:
            if args.sample is None or not args.sample.exists():
                print(f"real sample {args.sample or '(no --sample given)'} not found: skipping the reference comparison")
            else:
                prepare(args.sample, tmp / "sample", 0.15, 0.15)
                for part in ("reference", "family"):
                    r = child(part, tmp / "sample", args.threads)
                    results[part] = r
                    print(f"{part:9s}: val {r['validation']:.4f}  test {r['test']:.4f}  {r['features']:,} features  "
                          f"{r['fit_s']:.1f} s  peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
        if not args.skip_scale:
            from benchmarks import synthetic

            results["scale"] = []
            for point in args.scale.split(","):
                rows, classes = (int(v) for v in point.lower().split("x"))
                csv = tmp / f"synthetic-{rows}-{classes}.csv"
                synthetic.write_titles_csv(csv, int(rows / 0.9) + 1,
                                           synthetic.Shape(categories=classes, portuguese_share=0.0))
                prepare(csv, tmp / f"scale-{rows}-{classes}", 0.05, 0.05, fmt="raw_csv")
                r = child("scale", tmp / f"scale-{rows}-{classes}", args.threads)
                results["scale"].append(r)
                print(f"scale {r['rows']:,} rows x {r['classes']} classes: {r['features']:,} features "
                      f"({r['nnz_per_row']:.0f} nnz/row), features {r['features_s']:.1f} s, LinearSVC "
                      f"{r['fit_s']:.1f} s on {r['threads']} threads, peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
            e = extrapolate(results["scale"])
            peak = e.pop("peak_gb_per_thread")
            results["extrapolated_1M_x_1588"] = {**e, "peak_gb_8_threads": peak(8)}
            print(f"extrapolated to 1,000,000 rows x 1,588 classes (from {e['from']}: fit linear in rows x classes, "
                  f"features linear in rows, columns ~ rows^0.6 capped at 2 x 262,144): LinearSVC "
                  f"{e['core_hours']:.1f} core-hours ({e['core_hours'] * 60 / 8:.0f} min on 8 threads), features "
                  f"{e['features_min']:.1f} min, {e['features']:,} columns, X {e['x_gb']:.1f} GB, float32 coef "
                  f"{e['coef_gb']:.1f} GB, peak ~{peak(8):.1f} GB with 8 threads")
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f} "
          f"({os.cpu_count()} cores)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
