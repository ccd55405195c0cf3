"""Pretrained-vectors loader (meli.embeddings.matrix) against a naive per-line float() parse.

    .venv/bin/python benchmarks/bench_vectors.py                       # 200,000 x 300, ~2-3 min
    .venv/bin/python benchmarks/bench_vectors.py --rows 1000000 --skip-naive   # SBWCE-sized

Generates a word2vec text file (plain and gzip) of ``--rows`` words × ``--dim`` values and a
vocabulary of ``--vocab`` words of which ``--overlap`` occur in the file. Each measurement runs
in its own fresh process, so its peak RSS (ru_maxrss of that process) is its own; an
import-only process gives the baseline. The naive parse is what notebooks do: every line split
and converted with ``[float(x) for x in ...]`` into a dict of all words, then the matrix.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def generate(directory: Path, rows: int, dim: int, vocab_size: int, overlap: int, seed: int = 0) -> dict:
    """vectors.txt, vectors.txt.gz and vocab.tsv in ``directory``; returns their paths."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = [f"w{i:07d}" for i in range(rows)]
    # Values from a pool of formatted numbers: realistic text, generated in seconds, not minutes.
    pool = np.array([f"{x:.6f}" for x in rng.normal(0, 0.3, 20_000)], dtype=object)
    txt, gz = directory / "vectors.txt", directory / "vectors.txt.gz"
    with open(txt, "w") as plain, gzip.open(gz, "wt", compresslevel=1) as packed:
        header = f"{rows} {dim}\n"
        plain.write(header), packed.write(header)
        for start in range(0, rows, 10_000):
            picks = pool[rng.integers(0, len(pool), size=(min(10_000, rows - start), dim))]
            block = "".join(f"{words[start + i]} {' '.join(r)}\n" for i, r in enumerate(picks))
            plain.write(block), packed.write(block)
    in_file = rng.choice(rows, size=min(overlap, rows), replace=False)
    vocab = [words[i] for i in in_file] + [f"absent{i}" for i in range(vocab_size - len(in_file))]
    counts = rng.integers(1, 1000, size=len(vocab))
    (directory / "vocab.tsv").write_text(
        "[PAD]\t0\n[UNK]\t0\n" + "".join(f"{w}\t{c}\n" for w, c in zip(vocab, counts))
    )
    return {"txt": txt, "gz": gz, "vocab": directory / "vocab.tsv"}


# --------------------------------------------------------------------------------------------
# Workers (each runs in a fresh process)


def work_import_only(args) -> dict:
    return {}


def work_loader(args) -> dict:
    from meli.embeddings.matrix import build
    from meli.io import setup_logging

    spec = {"name": "bench", "kind": "pretrained", "dim": args.dim}
    matrix, coverage = build(args.vocab_file, args.file, spec, setup_logging("bench"))
    return {"found": coverage["found"], "checksum": checksum(matrix, args.vocab_file)}


def work_naive(args) -> dict:
    import numpy as np

    vectors = {}
    opener = gzip.open if str(args.file).endswith(".gz") else open
    with opener(args.file, "rt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            parts = line.rstrip().split(" ")
            vectors[parts[0]] = [float(x) for x in parts[1:]]
    words = [line.split("\t")[0] for line in Path(args.vocab_file).read_text().splitlines()]
    matrix = np.zeros((len(words), args.dim), np.float32)
    found = 0
    for i, w in enumerate(words):
        if w in vectors:
            matrix[i] = vectors[w]
            found += 1
    return {"found": found, "checksum": checksum(matrix, args.vocab_file)}


def checksum(matrix, vocab_file: str) -> float:
    """Sum of |values| over the rows of words that are in the file (generated names start with w)."""
    import numpy as np

    words = np.array([line.split("\t")[0] for line in Path(vocab_file).read_text().splitlines()])
    return float(np.abs(matrix[np.char.startswith(words, "w")]).sum())


WORKERS = {"import": work_import_only, "loader": work_loader, "naive": work_naive}


def measure(kind: str, file: Path, vocab: Path, dim: int) -> dict:
    """Run one worker in a fresh process; its wall time, peak RSS and result."""
    cmd = [sys.executable, __file__, "--worker", kind, "--file", str(file), "--vocab-file", str(vocab), "--dim", str(dim)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": wall}


def worker_main(args) -> None:
    import resource

    import numpy  # noqa: F401  (imports are not timed: every worker pays them alike)

    from meli.embeddings import matrix  # noqa: F401

    start = time.perf_counter()
    result = WORKERS[args.worker](args)
    result["parse_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--vocab", type=int, default=50_000, help="vocabulary words")
    parser.add_argument("--overlap", type=int, default=40_000, help="vocabulary words present in the file")
    parser.add_argument("--skip-naive", action="store_true", help="only the loader (for very large files)")
    parser.add_argument("--workdir", help="keep the generated files here (default: a temporary directory)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--vocab-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        files = generate(Path(tmp), args.rows, args.dim, args.vocab, args.overlap)
        sizes = {k: files[k].stat().st_size / 2**20 for k in ("txt", "gz")}
        print(
            f"generated {args.rows:,} x {args.dim} vectors in {time.perf_counter() - start:.1f}s: "
            f"plain {sizes['txt']:,.0f} MB, gzip {sizes['gz']:,.0f} MB; vocabulary {args.vocab:,} words, "
            f"{min(args.overlap, args.rows):,} in the file"
        )
        base = measure("import", files["txt"], files["vocab"], args.dim)["peak_rss_mb"]
        matrix_mb = (args.vocab + 2) * args.dim * 4 / 2**20
        print(f"baseline (imports only) peak RSS {base:,.0f} MB; the [vocab, dim] float32 matrix is {matrix_mb:,.0f} MB")
        print(
            f"{'file':6} {'parser':7} {'parse s':>8} {'process s':>9} {'lines/s':>11} {'peak RSS MB':>12}"
            f" {'over base':>10} {'found':>7}"
        )
        results = {}
        for fmt in ("txt", "gz"):
            for kind in ("loader",) if args.skip_naive else ("loader", "naive"):
                r = measure(kind, files[fmt], files["vocab"], args.dim)
                results[fmt, kind] = r
                print(
                    f"{fmt:6} {kind:7} {r['parse_s']:8.2f} {r['process_s']:9.2f} {args.rows / r['parse_s']:11,.0f} "
                    f"{r['peak_rss_mb']:12,.0f} {r['peak_rss_mb'] - base:10,.0f} {r['found']:7,}"
                )
        for fmt in ("txt", "gz"):
            if (fmt, "naive") in results:
                fast, slow = results[fmt, "loader"], results[fmt, "naive"]
                assert fast["found"] == slow["found"] and abs(fast["checksum"] - slow["checksum"]) < 1e-3 * slow["checksum"]
                print(
                    f"{fmt}: loader {slow['parse_s'] / fast['parse_s']:.1f}x faster than naive, "
                    f"{(slow['peak_rss_mb'] - base) / max(fast['peak_rss_mb'] - base, 1):.1f}x less memory over baseline "
                    f"(file {sizes[fmt]:,.0f} MB; loader extra {fast['peak_rss_mb'] - base:,.0f} MB vs matrix {matrix_mb:,.0f} MB)"
                )


if __name__ == "__main__":
    main()
