"""Successive halving and Hyperband against the full grid, on real MeLi titles (the course's 38k Spanish sample).

    S=$SHARED/data/meli2019-es-sample.jsonl.gz   # $SHARED: the shared/ folder beside the developers' checkout
    .venv/bin/python benchmarks/bench_halving.py --source $S                  # 27 MLP combinations, course regime
    .venv/bin/python benchmarks/bench_halving.py --source $S --grid short --seed 1   # the first grid, a replicate
    .venv/bin/python benchmarks/bench_halving.py --source $S --quick          # 8 combinations, a smoke run
    .venv/bin/python benchmarks/bench_halving.py --source $S --settings 3:2 --hyperband 3:1  # halving's best vs Hyperband

1. The workflow's own data and embedding stages (``snakemake`` in a temporary copy of the
   workflow, up to the token matrices and a word2vec matrix trained on the train split) on
   ``--source``, the course's real titles (``$SHARED/data/meli2019-es-sample.jsonl.gz``, $SHARED being the
   shared/ folder beside the developers' checkout; its own train/validation/test splits).
2. The grid: every combination trained by ``meli.train.neural.run`` to its epochs with early
   stopping, as ``train_neural`` runs it.
3. Each search (``--settings``: halving, ``--hyperband``): the same combinations through the stages
   of ``meli.search.family_plan``, exactly as the rules run them -- ``run(until_epoch=...,
   snapshot=...)`` per combination and stage, continuing from the previous rung's state,
   ``meli.search.select_rung`` after each stage, every ladder's final runs.

Cost is epochs x training rows actually trained (early stopping included for both). Targets
(issue 14): halving's selected combination within 0.5 points of validation bacc of the grid's
best, for at most 40% of the grid's epochs x rows. Also checked: each final run ends exactly like
the grid's run of the same combination (deterministic per-epoch seeding, on CPU).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from meli import search  # noqa: E402
from meli.grid import expand_family  # noqa: E402
from meli.train.neural import run  # noqa: E402

WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "config", "report", "envs")
GRIDS = {
    # 3 x 3 x 3 = 27 combinations each; small dims so a grid fits in minutes on 2 cores.
    # "course": the training regime of config/meli2019.yaml (batch 128, up to 20 epochs, patience 3):
    # ~240 optimizer steps per epoch on the sample, runs stop when they stop improving.
    "course": {
        "embedding": ["w2v"],
        "hidden": [[32], [128], [64, 64]],
        "dropout": [0.0, 0.3, 0.6],
        "lr": [0.01, 0.003, 0.001],
        "batch_size": [128],
        "epochs": [20],
        "patience": [3],
        "seed": [0],
    },
}
# "short": the first benchmark's grid (batch 512, 9 epochs, patience 2): 60 steps per epoch, so
# rung 0 ranks after almost no training and every run is still improving at its last epoch.
GRIDS["short"] = {**GRIDS["course"], "batch_size": [512], "epochs": [9], "patience": [2]}
QUICK_GRID = {**GRIDS["short"], "hidden": [[32]], "dropout": [0.0, 0.5], "lr": [0.01, 0.003, 0.001, 0.0003], "epochs": [4]}


def prepare(work: Path, source: Path, seed: int = 42) -> tuple[Path, Path]:
    """Token matrices and a word2vec matrix, made by the workflow's own rules (``seed``: the
    split's and word2vec's)."""
    wf = work / "wf"
    wf.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, wf / name)
    cfg = {
        "dataset": {"name": "meli-es-sample", "source": str(source)},
        "split": {"seed": seed},
        "vocab": {"min_count": 2, "max_size": 50000, "max_len": 16},
        "embeddings": {"w2v": {"kind": "word2vec", "dim": 32, "epochs": 5, "workers": 1, "seed": seed}},
        "train": {"mlp": {"grid": {"embedding": ["w2v"]}}, "cnn": {"grid": {"embedding": ["w2v"]}}},
    }
    (wf / "bench.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "results/features/labels.json",
                           "results/embeddings/w2v/matrix.npy", "--cores", "2", "--configfile", "bench.yaml"],
                          cwd=wf, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the workflow's data stages failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wf / "results" / "features", wf / "results" / "embeddings" / "w2v" / "matrix.npy"


def grid_search(combos: dict, features: Path, matrix: Path, out: Path, threads: int) -> dict[str, dict]:
    results = {}
    for i, (combo, params) in enumerate(combos.items(), 1):
        m = run("mlp", params, features, matrix, out / "runs" / combo, "cpu", threads, out / "ck" / combo)
        results[combo] = m
        print(f"  grid {i:2d}/{len(combos)} {combo}: val bacc {m['val_bacc']:.4f}, {m['epochs_run']} epochs",
              flush=True)
    return results


def staged_search(strategy: str, eta: int, min_epochs: int, combos: dict, features: Path, matrix: Path, out: Path,
                  threads: int) -> tuple[dict, dict[str, int], search.SearchPlan, list[dict]]:
    """One search exactly as the rules run it, from ``meli.search.family_plan``: each stage's jobs
    (``run(until_epoch=..., snapshot=...)``, continuing from the previous rung's state), its
    ``select_rung``, then every ladder's final runs."""
    search_plan = search.family_plan("mlp", combos, {"strategy": strategy, "eta": eta, "min_epochs": min_epochs})
    epochs_trained = {c: 0 for c in combos}
    kept: dict[str, list[str]] = {}
    selections = []
    for stage in search_plan.stages():
        dirs = []
        for combo in search_plan.entering(stage.key, kept.__getitem__):
            d = out / "search" / stage.key / combo
            start = out / "search" / stage.previous / combo / search.SNAPSHOT if stage.previous else None
            m = run("mlp", combos[combo], features, matrix, d, "cpu", threads, out / "ck" / combo,
                    until_epoch=stage.epochs, start_from=start, snapshot=d / search.SNAPSHOT, rung=stage.rung)
            epochs_trained[combo] = m["epochs_run"]
            dirs.append(d)
        sel = search.select_rung(dirs, "mlp", stage.rung, stage.keep, out / "search" / stage.key / "selection.json",
                                 out / "search" / stage.key / "pruned", stage.epochs, stage.bracket)
        selections.append(sel)
        kept[stage.key] = sel["kept"]
        print(f"  {search.stage_label(stage.bracket, stage.rung)}: {len(dirs)} combinations to epoch {stage.epochs}, "
              f"kept {len(sel['kept'])}: best {sel['ranking'][0]['val_bacc']:.4f}", flush=True)
    finals = {}
    for combo in search_plan.finals(kept.__getitem__):
        start_key = search_plan.final_start(combo)
        start = out / "search" / start_key / combo / search.SNAPSHOT if start_key else None
        m = run("mlp", combos[combo], features, matrix, out / "runs" / combo, "cpu", threads, out / "ck" / combo,
                start_from=start, rung=search_plan.final_rung(combo))
        epochs_trained[combo] = m["epochs_run"]
        finals[combo] = m
    return finals, epochs_trained, search_plan, selections


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, required=True,
                    help="real titles, e.g. $SHARED/data/meli2019-es-sample.jsonl.gz (the course's 38k sample; "
                    "$SHARED: the shared/ folder beside the developers' checkout)")
    ap.add_argument("--quick", action="store_true", help="8 combinations, 4 epochs")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="course", help="the 27-combination grid (see GRIDS)")
    ap.add_argument("--settings", default="3:1,3:2,2:1",
                    help="halving searches to run against the one grid, as eta:min_epochs,... ('' for none)")
    ap.add_argument("--hyperband", default="3:1",
                    help="Hyperband searches against the same grid, as eta:min_epochs,... ('' for none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    ap.add_argument("--seed", type=int, default=42, help="a replicate: the split's, word2vec's and the models' seed "
                    "(default 42: split and word2vec as in the README's figures, models seed 0)")
    args = ap.parse_args(argv)
    if not args.source.exists():
        print(f"{args.source} not found (the course's sample is in shared/data/ beside the developers' checkout)",
              file=sys.stderr)
        return 2
    grid_cfg = QUICK_GRID if args.quick else GRIDS[args.grid]
    if args.seed != 42:
        grid_cfg = {**grid_cfg, "seed": [args.seed]}
    combos = expand_family({"grid": grid_cfg}, embeddings=["w2v"])
    with tempfile.TemporaryDirectory(prefix="bench-halving-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        features, matrix = prepare(work, args.source, args.seed)
        n_train = int((__import__("numpy").load(features / "train_labels.npy") >= 0).sum())
        print(f"data + features + word2vec: {time.perf_counter() - t0:.0f} s; {n_train:,} training rows", flush=True)

        t0 = time.perf_counter()
        grid = grid_search(combos, features, matrix, work / "grid", args.threads)
        grid_s = time.perf_counter() - t0
        # The noise floor: the grid's best combination again with two other model seeds (same data).
        best_combo = search.rank(grid.values())[0]["combo"]
        reseeded = [run("mlp", {**combos[best_combo], "seed": seed}, features, matrix, work / "reseed" / str(seed),
                        "cpu", args.threads, work / "ck-reseed" / str(seed))["val_bacc"]
                    for seed in (args.seed + 100, args.seed + 200)]
        settings = [(strategy, *(int(v) for v in s.split(":")))
                    for strategy, given in (("halving", args.settings), ("hyperband", args.hyperband))
                    for s in given.split(",") if s]
        searches = []
        for strategy, eta, min_epochs in settings:
            t0 = time.perf_counter()
            out = work / f"{strategy}-{eta}-{min_epochs}"
            searches.append((*staged_search(strategy, eta, min_epochs, combos, features, matrix, out, args.threads),
                             time.perf_counter() - t0))

    grid_best = search.rank(grid.values())[0]
    grid_epochs = sum(m["epochs_run"] for m in grid.values())
    seed_baccs = [grid_best["val_bacc"], *reseeded]
    seed_sd = 100 * float(__import__("numpy").std(seed_baccs, ddof=1))
    grid_order = [m["combo"] for m in search.rank(grid.values())]
    figures = {
        "combinations": len(combos), "train_rows": n_train, "seed": args.seed,
        "grid_name": "quick" if args.quick else args.grid,
        "grid": {"best": grid_best["combo"], "val_bacc": grid_best["val_bacc"], "epochs": grid_epochs,
                 "epochs_x_rows": grid_epochs * n_train, "wall_s": grid_s,
                 "runs": {c: {"val_bacc": m["val_bacc"], "epochs_run": m["epochs_run"]} for c, m in grid.items()},
                 "best_over_3_model_seeds": seed_baccs, "best_seed_sd_points": seed_sd},
        "halving": [],
        "hyperband": [],
    }
    print(f"\ngrid: best val bacc {grid_best['val_bacc']:.4f} ({grid_best['combo']}), {grid_epochs} epochs x "
          f"{n_train:,} rows, {grid_s:.0f} s; the same combination over 3 model seeds: "
          f"{' / '.join(f'{b:.4f}' for b in seed_baccs)} (sd {seed_sd:.2f} points: the noise floor)")
    all_ok = True
    for (finals, trained, search_plan, selections, search_s), (strategy, eta, min_epochs) in zip(searches, settings):
        best = search.rank(finals.values())[0]
        epochs = sum(trained.values())
        same = all(finals[c]["val_bacc"] == grid[c]["val_bacc"] and finals[c]["epochs_run"] == grid[c]["epochs_run"]
                   for c in finals)
        gap, share = 100 * (grid_best["val_bacc"] - best["val_bacc"]), epochs / grid_epochs
        ok = gap <= 0.5 and share <= 0.40 and same
        all_ok &= ok
        pruned_at = next((s for s in selections if grid_best["combo"] in s["pruned"]), None)
        figures[strategy].append({
            "eta": eta, "min_epochs": min_epochs,
            "ladders": [{"bracket": lad.bracket, "rungs": [{"rung": r.index, "combinations": r.combinations,
                                                            "epochs": r.epochs} for r in lad.plan.rungs]}
                        for lad in search_plan.ladders],
            "best": best["combo"], "val_bacc": best["val_bacc"], "rank_in_grid": grid_order.index(best["combo"]) + 1,
            "epochs": epochs, "epochs_x_rows": epochs * n_train, "wall_s": search_s, "gap_points": gap,
            "cost_share": share, "final_runs_equal_grid_runs": same, "pass": ok,
            "grid_best_pruned_at": pruned_at and search.stage_label(pruned_at.get("bracket"), pruned_at["rung"]),
        })
        shape = "; ".join((f"bracket {lad.bracket}: " if lad.bracket is not None else "")
                          + " -> ".join(f"{r.combinations}@{r.epochs or 'end'}" for r in lad.plan.rungs)
                          for lad in search_plan.ladders)
        print(f"{strategy} eta {eta}, min_epochs {min_epochs} ({shape}): "
              f"best val bacc {best['val_bacc']:.4f} (#{grid_order.index(best['combo']) + 1} of the grid), {epochs} epochs = "
              f"{100 * share:.1f}% of the grid's epochs x rows, {search_s:.0f} s; gap {gap:.2f} points; final runs = "
              f"grid runs: {same} -> {'PASS' if ok else 'FAIL'} (targets: gap <= 0.5, cost <= 40%)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
