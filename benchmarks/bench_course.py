"""The course's full size on one node, measured stage by stage (issue 25, part 4).

    python benchmarks/synthetic.py csv --rows 6182780 --preset course-es --out bench-out/course/course-es.csv.gz
    python benchmarks/bench_course.py --csv bench-out/course/course-es.csv.gz --work bench-out/course \\
        --stages data,features,tfidf,squared-hinge,mlp-tfidf,mlp-w2v,cnn,rnn,linearsvc --threads 2

Course-shaped synthetic titles (632 categories, Spanish, ``synthetic.py`` preset course-es) at the
course's 6,182,780 rows, split 80/10/10 as ``config/meli2019.yaml`` (4.95M train rows). Every stage
runs in its own process (wall time around it, peak RSS = its VmHWM; benchmarks/bench_scale.run_measured)
with ``config/meli2019.yaml``'s settings:

* ``data``      ``meli.data.prepare``
* ``features``  ``meli.embeddings.features`` (vocabulary + int32 token ids)
* ``tfidf``     ``meli.embeddings.tfidf`` (the shared word + char n-gram rows, ``--threads``)
* ``squared-hinge``, ``softmax``, ``mlp-tfidf``: the training step of the torch baselines
  (``meli.train.baseline.fit_sparse_linear``'s bag + bias and loss; config/meli2019.yaml's
  combination of that solver) and of the ``input: tfidf`` MLP (``meli.train.neural``'s network and
  optimizer) over the **full-size** rows loaded as the trainers load them, for one epoch or until
  ``--max-train-s`` (then the rows trained, rows/s and the epoch's projected time are reported as
  such), followed by the full validation pass; peak RSS is the whole process's (full data + model
  + optimizer).
* ``mlp-w2v``, ``cnn``, ``rnn``: the same for the word-vector families (config/meli2019.yaml's
  grid's first combination of each, token ids; a seeded random ``[vocab, 300]`` matrix stands in
  for the vectors: the time does not depend on the values)
* ``linearsvc`` ``meli.train.baseline`` (LinearSVC C 0.5) over the first ``--svc-rows`` train rows
  of the full-size features: at full size it does not fit this machine.

Results go to ``<work>/results.json`` (one entry per stage, kept between invocations) and a
markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmarks.bench_scale import run_measured  # noqa: E402

TOKEN_STAGES = {"mlp-w2v": "mlp", "cnn": "cnn", "rnn": "rnn"}  # stage -> family over token ids
LINEAR_STAGES = {"squared-hinge": "squared_hinge", "softmax": "softmax"}  # stage -> train.tfidf solver
STEP_STAGES = ("mlp-tfidf", *TOKEN_STAGES, *LINEAR_STAGES)


def course_config() -> dict:
    import yaml
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "config" / "meli2019.yaml").read_text())
    validate(cfg, str(ROOT / "config" / "schema.yaml"))
    return cfg


def mlp_tfidf_params(cfg: dict) -> dict:
    """config/meli2019.yaml's input-tfidf MLP combination, one epoch."""
    combo = next(c for c in cfg["train"]["mlp"].get("combinations", []) if c.get("input") == "tfidf")
    return {**combo, "epochs": 1, "patience": 1}


def linear_params(cfg: dict, solver: str) -> dict:
    """config/meli2019.yaml's combination of a torch solver of the TF-IDF family, one epoch."""
    from meli.grid import cartesian
    from meli.train.baseline import DEFAULTS

    tfidf = cfg["train"]["tfidf"]
    combos = [*cartesian(tfidf.get("grid") or {}), *tfidf.get("combinations", [])]
    combo = next(c for c in combos if c.get("solver", "linearsvc") == solver)
    return {**DEFAULTS, **combo, "epochs": 1}


def token_params(cfg: dict, family: str) -> dict:
    """The first combination of config/meli2019.yaml's grid of a word-vector family, one epoch."""
    return {**{k: v[0] for k, v in cfg["train"][family]["grid"].items()}, "epochs": 1, "patience": 1}


def commands(stage: str, cfg: dict, args) -> list[str]:
    w = args.work
    data, feats, tfidf = w / "data", w / "features", w / "tfidf"
    if stage == "data":
        data_cfg = {"dataset": {**cfg["dataset"], "name": "synthetic-course-es", "source": str(args.csv)},
                    "preprocess": cfg["preprocess"], "split": {**cfg["split"], "use_source_splits": False}}
        return ["meli.data.prepare", "--source", str(args.csv), "--out-dir", str(data), "--config", json.dumps(data_cfg)]
    if stage == "features":
        return ["meli.embeddings.features", "--data-dir", str(data), "--out-dir", str(feats),
                "--config", json.dumps(cfg["vocab"])]
    if stage == "tfidf":
        return ["meli.embeddings.tfidf", "--data-dir", str(data), "--out-dir", str(tfidf),
                "--config", json.dumps(cfg["tfidf_features"]), "--threads", str(args.threads)]
    if stage in STEP_STAGES:
        if stage in TOKEN_STAGES:
            params, inputs = token_params(cfg, TOKEN_STAGES[stage]), w / "w2v-matrix.npy"
        else:
            params = linear_params(cfg, LINEAR_STAGES[stage]) if stage in LINEAR_STAGES else mlp_tfidf_params(cfg)
            inputs = tfidf
        return ["benchmarks.bench_course", "steps", "--kind", stage, "--params", json.dumps(params),
                "--features", str(feats), "--tfidf", str(inputs), "--threads", str(args.threads),
                "--max-train-s", str(args.max_train_s), "--out", str(w / f"{stage}.json")]
    if stage == "linearsvc":
        part = w / f"svc-{args.svc_rows}"
        return ["meli.train.baseline", "--params", json.dumps({"C": 0.5}), "--data-dir", str(part / "data"),
                "--features", str(part / "features"), "--tfidf", str(part / "features" / "tfidf"),
                "--out-dir", str(part / "run"), "--threads", str(args.svc_threads), "--device", "cpu"]
    raise ValueError(f"unknown stage {stage!r}")


def _link_first_rows(w: Path, rows: int) -> None:
    """The first ``rows`` train rows of the full-size features and data (validation at full size)."""
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    part = w / f"svc-{rows}"
    feats, data = part / "features", part / "data"
    (feats / "tfidf").mkdir(parents=True, exist_ok=True)
    data.mkdir(exist_ok=True)
    sp.save_npz(feats / "tfidf" / "train.npz", sp.load_npz(w / "tfidf" / "train.npz")[:rows], compressed=False)
    for name in ("validation.npz", "vectorizer.joblib", "stats.json"):
        if not (feats / "tfidf" / name).exists():
            os.link(w / "tfidf" / name, feats / "tfidf" / name)
    train = pq.read_table(w / "data" / "train.parquet", columns=["category"]).slice(0, rows)
    pq.write_table(train, data / "train.parquet")
    # The categories of these rows only (the trainer refuses a category without a training row);
    # validation rows of the others are then unseen, not scored.
    cats = json.loads((w / "features" / "labels.json").read_text())
    present = set(train.column("category").to_pylist())
    (feats / "labels.json").write_text(json.dumps({**cats, "categories": [c for c in cats["categories"] if c in present]}))
    for name in ("validation.parquet", "summary.json"):
        if not (data / name).exists():
            os.link(w / "data" / name, data / name)


def _w2v_matrix(w: Path) -> None:
    import numpy as np

    words = sum(1 for _ in open(w / "features" / "vocab.tsv", "rb"))
    np.save(w / "w2v-matrix.npy", np.random.default_rng(0).normal(0, 0.1, (words, 300)).astype(np.float32))


def run_stage(stage: str, cfg: dict, args) -> dict:
    if stage == "linearsvc":
        _link_first_rows(args.work, args.svc_rows)
    if stage in TOKEN_STAGES and not (args.work / "w2v-matrix.npy").exists():
        _w2v_matrix(args.work)
    cmd = commands(stage, cfg, args)
    wall, rss = run_measured(cmd[0], cmd[1:], args.work / "logs" / f"{stage}.log", cwd=ROOT)
    out = {"stage": stage, "wall_s": wall, "peak_rss_mb": rss}
    extra = args.work / f"{stage}.json"
    if stage in STEP_STAGES and extra.exists():
        out.update(json.loads(extra.read_text()))
    if stage == "linearsvc":
        m = json.loads((args.work / f"svc-{args.svc_rows}" / "run" / "metrics.json").read_text())
        out.update(rows=args.svc_rows, train_s=m["train_time_s"], val_bacc=m["val_bacc"], threads=args.svc_threads)
    if stage == "tfidf":
        stats = json.loads((args.work / "tfidf" / "stats.json").read_text())
        out.update(columns=stats["n_features"], nnz_per_row=stats["splits"]["train"]["nnz_per_row"],
                   output_mb=sum((args.work / "tfidf" / f"{s}.npz").stat().st_size for s in ("train", "validation", "test")) / 2**20)
    if stage in ("data", "features", "tfidf"):
        import pyarrow.parquet as pq

        out["rows"] = sum(pq.ParquetFile(args.work / "data" / f"{s}.parquet").metadata.num_rows
                          for s in ("train", "validation", "test"))
        out["rows_per_s"] = out["rows"] / wall
    return out


# ------------------------------------------------------------------ the in-process training steps
def _linear_model(n_features: int, n_classes: int, params: dict):
    import torch

    from meli.train.sparse import make_sparse_optimizer

    class Linear(torch.nn.Module):  # fit_sparse_linear's model: a sparse bag of width classes + a bias
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.EmbeddingBag(n_features, n_classes, mode="sum", sparse=True)
            torch.nn.init.zeros_(self.embedding.weight)
            self.bias = torch.nn.Parameter(torch.zeros(n_classes))

        def forward(self, rows):
            return self.embedding(rows.indices, rows.offsets, per_sample_weights=rows.values) + self.bias

    from meli.train.optim import Optimizers

    model = Linear()
    opt = Optimizers([make_sparse_optimizer(model.embedding, params, kind=params.get("sparse_optimizer")),
                      torch.optim.Adam([model.bias], lr=float(params["lr"]))])
    return model, opt


def steps(argv: list[str]) -> int:
    """One epoch (or ``--max-train-s``) of training steps over the full-size rows, then the validation pass."""
    import torch
    import torch.nn.functional as F

    from meli.io import Progress, write_json
    from meli.models.nets import build_model
    from meli.train.inputs import load_data, load_sparse_data
    from meli.train.loop import evaluate
    from meli.train.neural import resolve_params
    from meli.train.optim import lr_factor, make_optimizer, set_lr

    ap = argparse.ArgumentParser()
    for name in ("--kind", "--params", "--features", "--tfidf", "--out"):
        ap.add_argument(name, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-train-s", type=float, default=900.0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    start = time.perf_counter()
    # --tfidf: the TF-IDF directory, or (mlp-w2v) the embedding matrix
    data = load_data(a.features, a.tfidf) if a.kind in TOKEN_STAGES else load_sparse_data(a.features, a.tfidf)
    load_s = time.perf_counter() - start
    x, y = data.train.ids, data.train.labels
    torch.manual_seed(0)
    loss_fn = F.cross_entropy
    if a.kind in TOKEN_STAGES:
        params = resolve_params(TOKEN_STAGES[a.kind], json.loads(a.params))
        model = build_model(TOKEN_STAGES[a.kind], params, *data.input_shape, data.n_classes, matrix=data.matrix)
        opt = make_optimizer(model, params)
    elif a.kind == "mlp-tfidf":
        params = resolve_params("mlp", json.loads(a.params))
        model = build_model("mlp", params, data.n_features, 0, data.n_classes)
        opt = make_optimizer(model, params)
    else:
        from meli.train.baseline import squared_hinge

        params = json.loads(a.params)
        model, opt = _linear_model(data.n_features, data.n_classes, params)
        loss_fn = squared_hinge if params["solver"] == "squared_hinge" else F.cross_entropy
    batch, lr = int(params["batch_size"]), float(params["lr"])
    n = len(y)
    total = -(-n // batch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    model.train()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    progress = Progress(logging.getLogger("bench_course"), n, f"{a.kind} train rows", every_s=60)
    start, done, step = time.perf_counter(), 0, 0
    for step in range(total):
        idx = perm[step * batch : (step + 1) * batch]
        set_lr(opt, lr * lr_factor(params.get("lr_schedule", "cosine"), step, total))
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
        done += idx.numel()
        progress.update(idx.numel())
        if time.perf_counter() - start > a.max_train_s:
            break
    train_s = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    _, val_bacc = evaluate(model, data.validation, data.n_classes, torch.device("cpu"))
    val_s = time.perf_counter() - start
    write_json(a.out, {"rows": done, "n_train": n, "n_val": len(data.validation.labels), "epoch_done": done == n,
                       "steps": step + 1, "train_s": train_s, "rows_per_s": done / train_s,
                       "epoch_s_projected": n / (done / train_s), "load_s": load_s, "val_s": val_s,
                       "val_bacc_after_rows": val_bacc, "n_features": data.n_features,
                       "optimizer": type(getattr(opt, "parts", [opt])[0]).__name__})
    return 0


def markdown(results: dict) -> str:
    lines = ["| stage | rows | wall s | peak RSS MB | rows/s | notes |", "|---|---:|---:|---:|---:|---|"]
    for stage, r in results.items():
        notes = []
        if "columns" in r:
            notes.append(f"{r['columns']:,} columns, {r['nnz_per_row']} nnz/row, .npz {r['output_mb']:,.0f} MB")
        if "epoch_s_projected" in r:
            notes.append(("one whole epoch" if r["epoch_done"] else
                          f"{r['rows']:,} of {r['n_train']:,} train rows in {r['train_s']:.0f} s (epoch projected "
                          f"{r['epoch_s_projected'] / 60:.0f} min)") + f"; validation pass {r['val_s']:.0f} s over "
                         f"{r['n_val']:,} rows; load {r['load_s']:.0f} s; {r['optimizer']}")
        if stage == "linearsvc":
            notes.append(f"first {r['rows']:,} train rows (full-size columns and validation rows), {r['threads']} thread(s), "
                         f"fit {r['train_s']:.0f} s, val bacc {r['val_bacc']:.4f}")
        lines.append(f"| {stage} | {r.get('rows', 0):,} | {r['wall_s']:.0f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r.get('rows_per_s', 0):,.0f} | {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["steps"]:
        return steps(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--stages", default="data,features,tfidf,squared-hinge,mlp-tfidf,mlp-w2v,cnn,rnn,linearsvc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-train-s", type=float, default=900.0, help="training-step stages stop after this")
    ap.add_argument("--svc-rows", type=int, default=100_000)
    ap.add_argument("--svc-threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    args.csv = args.csv.resolve()
    cfg = course_config()
    from meli.io import write_json

    store = args.work / "results.json"
    results: dict = {}
    for stage in args.stages.split(","):
        print(f"{time.strftime('%H:%M:%S')} {stage} ...", file=sys.stderr, flush=True)
        result = run_stage(stage, cfg, args)
        # re-read just before writing: stages of the same work directory may run side by side
        # (one per core), each adding its own entry
        results = json.loads(store.read_text()) if store.exists() else {}
        results[stage] = result
        write_json(store, results)
        print(markdown({stage: result}), file=sys.stderr, flush=True)
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
