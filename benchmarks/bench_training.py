"""Training throughput: our tensor-resident loop against a course-style input pipeline.

Same synthetic data (token ids of MeLi-like titles), same MLP, same batch size, one process:

  naive  gzip JSON lines parsed per sample by a torch Dataset, a Python padding collate_fn,
         DataLoader, per-batch transfer and loss.item() (how the course notebooks train)
  ours   meli.train.train_epoch with meli.train.make_optimizer: matrices loaded once (on the GPU
         when there is one), batches gathered by a seeded permutation, loss synced only every few
         hundred batches, fused Adam

    python benchmarks/bench_training.py                 # CPU, ~1-2 min on 2 cores
    python benchmarks/bench_training.py --threads 1     # when teammates load the machine
    python benchmarks/bench_training.py --device cuda   # targets: >= 20x and >= 2M samples/s (MLP)
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from meli.io import peak_rss_mb  # noqa: E402
from meli.models.nets import build_model  # noqa: E402
from meli.models.runtime import select_device  # noqa: E402
from meli.train.neural import make_optimizer, resolve_params, train_epoch  # noqa: E402


def synthetic(rows: int, vocab: int, max_len: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned int32 ids (Zipf-like token frequencies, 2..max_len tokens) and int64 labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, max_len + 1, rows)
    tokens = np.minimum(rng.zipf(1.2, (rows, max_len)) + 1, vocab - 1).astype(np.int32)
    tokens[np.arange(max_len)[None, :] >= lengths[:, None]] = 0
    return tokens, rng.integers(0, classes, rows).astype(np.int64)


def write_course_jsonl(path: Path, ids: np.ndarray, labels: np.ndarray) -> None:
    """The course's format: one JSON object per title with its token ids in `data`."""
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for row, y in zip(ids, labels):
            fh.write(json.dumps({"data": row[row != 0].tolist(), "target": int(y), "title": "x"}) + "\n")


class CourseDataset(torch.utils.data.IterableDataset):
    """Streams the gzip JSON lines, parsing one sample at a time."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self):
        with gzip.open(self.path, "rt") as fh:
            for line in fh:
                item = json.loads(line)
                yield {"data": item["data"], "target": item["target"]}


def pad_collate(batch, max_len: int):
    """The course's PadSequences: pad every list in Python, then build tensors."""
    data = [item["data"][:max_len] + [0] * (max_len - len(item["data"][:max_len])) for item in batch]
    return {"data": torch.LongTensor(data), "target": torch.LongTensor([item["target"] for item in batch])}


def make_model(family: str, args, device):
    torch.manual_seed(0)
    extra = {"filters": 100, "kernel_sizes": [2, 3, 4], "hidden": []} if family == "cnn" else {"hidden": [256, 128]}
    params = resolve_params(family, {"freeze_embeddings": not args.fine_tune, "dropout": 0.3, **extra})
    matrix = torch.randn(args.vocab, args.dim) * 0.1
    matrix[0] = 0
    model = build_model(family, params, args.vocab, args.dim, args.classes, matrix=matrix).to(device)
    return model, make_optimizer(model, params)


def naive_epoch(model, opt, path: Path, args, device) -> float:
    """One course-style pass over the gzip JSON lines; samples/s."""
    loader = torch.utils.data.DataLoader(
        CourseDataset(path), batch_size=args.batch_size, collate_fn=lambda b: pad_collate(b, args.max_len)
    )
    model.train()
    running, n, t0 = 0.0, 0, time.perf_counter()
    for batch in loader:
        x, y = batch["data"].to(device), batch["target"].to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        running += loss.item()
        n += len(y)
    return n / (time.perf_counter() - t0)


def our_epoch(model, opt, x: torch.Tensor, y: torch.Tensor, args, device, gen: torch.Generator) -> float:
    """One pass of meli.train.train_epoch over tensors already where they will be used; samples/s."""
    perm = torch.randperm(len(y), generator=gen).to(x.device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_epoch(model, opt, x, y, args.batch_size, perm, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(y) / (time.perf_counter() - t0)


def resident(ids: np.ndarray, labels: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.from_numpy(ids), torch.from_numpy(labels)
    return (x.to(device), y.to(device)) if device.type == "cuda" else (x, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows per round of our loop (MLP)")
    ap.add_argument("--naive-rows", type=int, default=20_000, help="rows per round of the course-style pipeline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cnn-rows", type=int, default=20_000)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--classes", type=int, default=632)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--threads", type=int, default=2, help="CPU threads; on a busy shared machine 1 avoids oversubscription")
    ap.add_argument("--fine-tune", action="store_true", help="train the embedding too (default: frozen)")
    args = ap.parse_args()
    device = select_device(args.device)
    torch.set_num_threads(args.threads)
    ids, labels = synthetic(max(args.rows, args.naive_rows, args.cnn_rows), args.vocab, args.max_len, args.classes)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"device {device}{gpu}, {args.threads} threads, batch {args.batch_size}, vocab {args.vocab:,} x {args.dim}, "
          f"{args.classes} classes, max_len {args.max_len}, embeddings {'fine-tuned' if args.fine_tune else 'frozen'}")

    gen = torch.Generator().manual_seed(0)
    naive_model, _ = make_model("mlp", args, device)
    naive_opt = torch.optim.Adam([p for p in naive_model.parameters() if p.requires_grad], lr=1e-3)  # course's
    our_model, our_opt = make_model("mlp", args, device)
    x, y = resident(ids[: args.rows], labels[: args.rows], device)
    naive, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl.gz"
        write_course_jsonl(path, ids[: args.naive_rows], labels[: args.naive_rows])
        our_epoch(our_model, our_opt, x[: 20 * args.batch_size], y[: 20 * args.batch_size], args, device, gen)  # warm-up
        # Interleaved rounds, best of each: on a shared machine both see the same background load.
        for r in range(args.rounds):
            naive.append(naive_epoch(naive_model, naive_opt, path, args, device))
            ours.append(our_epoch(our_model, our_opt, x, y, args, device, gen))
            print(f"round {r + 1}/{args.rounds}: naive {naive[-1]:,.0f}/s, ours {ours[-1]:,.0f}/s", flush=True)
    print(f"naive course-style pipeline  MLP: {max(naive):12,.0f} samples/s  ({args.naive_rows:,} rows/round)")
    print(f"ours (meli.train.train_epoch) MLP: {max(ours):12,.0f} samples/s  ({args.rows:,} rows/round)")
    target = "20x and 2M samples/s" if device.type == "cuda" else "1.5x"
    print(f"speed-up: {max(ours) / max(naive):.2f}x best-of-{args.rounds} (median {np.median(ours) / np.median(naive):.2f}x; "
          f"target {target})")
    cnn_rows = args.rows if device.type == "cuda" else args.cnn_rows
    cnn_model, cnn_opt = make_model("cnn", args, device)
    xc, yc = resident(ids[:cnn_rows], labels[:cnn_rows], device)
    our_epoch(cnn_model, cnn_opt, xc[: 10 * args.batch_size], yc[: 10 * args.batch_size], args, device, gen)
    cnn = our_epoch(cnn_model, cnn_opt, xc, yc, args, device, gen)
    print(f"ours CNN (100 filters x [2,3,4]): {cnn:12,.0f} samples/s  ({cnn_rows:,} rows)")
    print(f"peak RSS {peak_rss_mb():,.0f} MB" + (
        f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MB" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
