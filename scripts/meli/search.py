"""Budget-aware search: successive halving over a neural family's combinations, one job per rung.

    python -m meli.search select --family mlp --rung 0 --keep 9 --epochs 1 \
        --selection results/search/mlp/rung-0/selection.json --pruned-dir results/search/mlp/rung-0/pruned \
        results/search/mlp/rung-0/<combo> ...

``train.search: {strategy: halving, eta, min_epochs}`` (config/schema.yaml). Rung 0 trains every
combination for ``min_epochs`` epochs; each following rung keeps the best ``1/eta`` of the
previous one (:func:`rank`: validation bacc, then lower validation loss, then combination id)
and trains them up to ``eta`` times more epochs, continuing from the previous rung's training
state; the last rung trains the survivors to their configured ``epochs`` with early stopping, as a
grid run would. :func:`plan` is the rung arithmetic: pure, known when the Snakefile is parsed; only
*which* combinations survive depends on results (the Snakemake checkpoint ``select_rung``).

Files (rules/train.smk):

- ``results/search/{family}/rung-{r}/{combo}/``: a rung's record (``metrics.json`` with ``rung``,
  ``history.csv`` since epoch 1) and ``checkpoint.pt``, the training state the next rung continues from;
- ``results/search/{family}/rung-{r}/selection.json``: the rung's ranking, ``kept`` and ``pruned``;
- ``results/search/{family}/rung-{r}/pruned/{combo}/``: the record of a combination pruned at rung
  ``r`` (its rung record with ``pruned_at_rung: r``) -- a run directory like any other for the
  tables, the report and MLflow; its training state is deleted (nothing continues from it);
- ``results/search/{family}/search.json``: the final and pruned run directories (rule search_done),
  which the tables, the report and MLflow read;
- ``results/runs/{family}/{combo}/``: the final rung's runs, the usual complete run record plus
  ``rung`` and ``pruned_at_rung: null``. Selection on validation is among these only.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from meli import runs
from meli.cli import MeliError, entry_point
from meli.io import read_json, setup_logging, write_json

STRATEGIES = ("grid", "halving")
SNAPSHOT = "checkpoint.pt"  # a rung's training state (model, optimizer, early-stopping state)
SELECTION = "selection.json"
PRUNED = "pruned"
CRITERION = "highest validation balanced accuracy; ties: lower validation loss, then combination id"


class SearchError(MeliError, ValueError):
    """A bad search setting or rung record."""


@dataclass(frozen=True)
class Rung:
    index: int
    combinations: int  # how many combinations this rung trains
    epochs: int | None  # epochs trained (since epoch 1) by the end of the rung; None: the configured epochs


@dataclass(frozen=True)
class Plan:
    rungs: tuple[Rung, ...]
    eta: int

    @property
    def final(self) -> int:
        """Index of the last rung (0: nothing to prune, the search is the grid)."""
        return len(self.rungs) - 1

    def keep(self, rung: int) -> int:
        """Combinations promoted out of ``rung`` (not defined for the last rung)."""
        if not 0 <= rung < self.final:
            raise SearchError(f"rung {rung} promotes nothing: rungs 0..{self.final - 1} do (the last is {self.final})")
        return self.rungs[rung + 1].combinations

    def epochs(self, rung: int) -> int | None:
        return self.rungs[rung].epochs

    def max_epochs_trained(self, max_epochs: int) -> int:
        """Upper bound of epochs trained by the whole search (early stopping only lowers it)."""
        total, before = 0, 0
        for rung in self.rungs:
            until = max_epochs if rung.epochs is None else min(rung.epochs, max_epochs)
            total += rung.combinations * max(until - before, 0)
            before = until
        return total


def plan(n_combinations: int, eta: int, min_epochs: int, max_epochs: int) -> Plan:
    """The rungs of a successive-halving search over ``n_combinations``.

    Rung ``r`` trains ``n_r`` combinations up to ``min_epochs * eta**r`` epochs, with ``n_0 = n`` and
    ``n_{r+1} = max(1, n_r // eta)``. A rung is the last -- trained to the configured epochs -- as
    soon as it has one combination or its budget reaches ``max_epochs`` (the largest configured
    ``epochs``): training further in rungs would only repeat the grid.
    """
    for name, value, low in (("n_combinations", n_combinations, 1), ("eta", eta, 2),
                             ("min_epochs", min_epochs, 1), ("max_epochs", max_epochs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SearchError(f"train.search: {name} must be an integer >= {low}, got {value!r}")
    rungs: list[Rung] = []
    n, epochs = n_combinations, min_epochs
    while n > 1 and epochs < max_epochs:
        rungs.append(Rung(len(rungs), n, epochs))
        n, epochs = max(1, n // eta), epochs * eta
    rungs.append(Rung(len(rungs), n, None))
    return Plan(tuple(rungs), eta)


def family_plan(family: str, combos: dict[str, dict[str, Any]], search_cfg: dict[str, Any]) -> Plan | None:
    """The plan of one family under ``train.search`` (None: the family trains as a grid)."""
    from meli import models

    if (search_cfg or {}).get("strategy", "grid") != "halving" or not combos:
        return None
    fam = models.get(family)
    if not fam.neural:
        return None
    default_epochs = fam.defaults()["epochs"]
    max_epochs = max(int(p.get("epochs", default_epochs)) for p in combos.values())
    p = plan(len(combos), int(search_cfg.get("eta", 3)), int(search_cfg.get("min_epochs", 1)), max_epochs)
    return p if p.final > 0 else None


def _order_key(record: dict[str, Any]) -> tuple[float, float, str]:
    bacc = record.get("val_bacc")
    loss = record.get("val_loss")
    bacc = bacc if isinstance(bacc, (int, float)) and math.isfinite(bacc) else -math.inf
    loss = loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf
    return (-bacc, loss, str(record["combo"]))


def rank(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first: validation bacc, then lower validation loss, then combination id (deterministic)."""
    return sorted(records, key=_order_key)


def select(records: Sequence[dict[str, Any]], keep: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, pruned): the best ``keep`` records and the rest, each best first."""
    if keep < 1:
        raise SearchError(f"keep must be >= 1, got {keep}")
    combos = [r["combo"] for r in records]
    if len(set(combos)) != len(combos):
        raise SearchError(f"a combination appears twice in one rung: {sorted(c for c in combos if combos.count(c) > 1)}")
    ranked = rank(records)
    return ranked[:keep], ranked[keep:]


# ------------------------------------------------------------------------------- rung selection
def select_rung(run_dirs: Sequence[str | os.PathLike], family: str, rung: int, keep: int, selection_path: str | os.PathLike,
                pruned_dir: str | os.PathLike, epochs: int | None = None) -> dict[str, Any]:
    """Rank a rung's records, write the pruned runs' records and selection.json, drop their state."""
    records = []
    for d in run_dirs:
        rec = runs.read_metrics(d)
        if rec["family"] != family or rec.get("rung") != rung:
            raise SearchError(f"{d}/{runs.METRICS}: a {rec['family']} record of rung {rec.get('rung')}, "
                              f"expected {family} rung {rung}")
        # the directory name is the workflow's combination id (as in meli.report.aggregate)
        records.append({**rec, "combo": Path(d).name, "_dir": Path(d)})
    kept, pruned = select(records, keep)
    pruned_dir = Path(pruned_dir)
    # Built beside its final place and renamed: a killed job leaves no half directory.
    pruned_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pruned_dir.name}.", dir=pruned_dir.parent))
    try:
        for rec in pruned:
            src, dst = rec["_dir"], tmp / rec["combo"]
            dst.mkdir()
            shutil.copy2(src / runs.HISTORY, dst / runs.HISTORY)
            runs.write_metrics(dst, {**_public(rec), "pruned_at_rung": rung})
        if pruned_dir.exists():
            shutil.rmtree(pruned_dir)
        os.replace(tmp, pruned_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    selection = {
        "family": family,
        "rung": rung,
        "epochs": epochs,
        "criterion": CRITERION,
        "keep": keep,
        "kept": [r["combo"] for r in kept],
        "pruned": [r["combo"] for r in pruned],
        "ranking": [
            {"combo": r["combo"], "val_bacc": r["val_bacc"], "val_loss": r.get("val_loss"),
             "epochs_run": r.get("epochs_run"), "stopped_early": r.get("stopped_early"), "kept": i < keep}
            for i, r in enumerate(kept + pruned)
        ],
    }
    write_json(selection_path, selection)
    # A pruned combination's state is never continued: free the disk (one model + optimizer each).
    # Nothing requests these files any more, so Snakemake does not rerun their jobs for them.
    for rec in pruned:
        (rec["_dir"] / SNAPSHOT).unlink(missing_ok=True)
    return selection


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def read_selection(path: str | os.PathLike) -> dict[str, Any]:
    sel = read_json(path)
    for key in ("family", "rung", "kept", "pruned"):
        if key not in sel:
            raise SearchError(f"{path}: missing key {key!r} (delete it to redo the rung's selection)")
    return sel


def summarize(family: str, selections: Sequence[str | os.PathLike], runs_dir: str | os.PathLike,
              out: str | os.PathLike) -> dict[str, Any]:
    """search.json: the run directories a finished search leaves (final first, then pruned by rung)."""
    sels = sorted((read_selection(p) | {"_path": Path(p)} for p in selections), key=lambda s: s["rung"])
    if [s["rung"] for s in sels] != list(range(len(sels))) or any(s["family"] != family for s in sels):
        raise SearchError(f"{family}: expected the selections of rungs 0..{len(sels) - 1}, got "
                          + ", ".join(str(s["_path"]) for s in sels))
    final = [f"{Path(runs_dir).as_posix()}/{c}" for c in sels[-1]["kept"]] if sels else []
    pruned = [{"run_dir": (s["_path"].parent / PRUNED / c).as_posix(), "pruned_at_rung": s["rung"]}
              for s in sels for c in s["pruned"]]
    summary = {"family": family, "rungs": len(sels) + 1, "final": final, "pruned": pruned,
               "run_dirs": final + [p["run_dir"] for p in pruned]}
    write_json(out, summary)
    return summary


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("run_dirs"), list):
        raise SearchError(f"{path}: no 'run_dirs' list (delete it to rebuild it)")
    return summary


def combination_states(results: str | os.PathLike, family: str, combos: Iterable[str], search_plan: Plan) -> dict[str, dict[str, Any]]:
    """Where each configured combination of a halving family stands, from files only.

    ``{combo: {"state": "final" | "pruned" | "in search", "rung": r}}``: ``final`` when its
    final run exists, ``pruned`` (not missing!) when a rung's selection pruned it, otherwise the
    last rung whose record it has (-1: none yet).
    """
    results = Path(results)
    out: dict[str, dict[str, Any]] = {}
    pruned_at: dict[str, int] = {}
    for r in range(search_plan.final):
        path = results / "search" / family / f"rung-{r}" / SELECTION
        if path.exists():
            for c in read_selection(path)["pruned"]:
                pruned_at[c] = r
    for combo in combos:
        if (results / "runs" / family / combo / runs.METRICS).exists():
            out[combo] = {"state": "final", "rung": search_plan.final}
        elif combo in pruned_at:
            out[combo] = {"state": "pruned", "rung": pruned_at[combo]}
        else:
            done = [r for r in range(search_plan.final)
                    if (results / "search" / family / f"rung-{r}" / combo / runs.METRICS).exists()]
            out[combo] = {"state": "in search", "rung": max(done, default=-1)}
    return out


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meli.search", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="rank one rung's records; keep the best, record the pruned")
    sel.add_argument("--family", required=True)
    sel.add_argument("--rung", type=int, required=True)
    sel.add_argument("--keep", type=int, required=True)
    sel.add_argument("--epochs", type=int, default=None, help="the rung's epoch budget (recorded)")
    sel.add_argument("--selection", required=True, help="selection.json to write")
    sel.add_argument("--pruned-dir", required=True, help="directory for the pruned runs' records")
    sel.add_argument("runs", nargs="+", help="the rung's record directories")
    summ = sub.add_parser("summary", help="search.json: the final and pruned run directories")
    summ.add_argument("--family", required=True)
    summ.add_argument("--runs-dir", required=True, help="results/runs/{family}")
    summ.add_argument("--out", required=True)
    summ.add_argument("selections", nargs="*", help="every rung's selection.json")
    args = ap.parse_args(argv)
    log = setup_logging("meli.search")
    if args.command == "summary":
        summary = summarize(args.family, args.selections, args.runs_dir, args.out)
        log.info("%s: %d final run(s), %d pruned", args.family, len(summary["final"]), len(summary["pruned"]))
        return 0
    selection = select_rung(args.runs, args.family, args.rung, args.keep, args.selection, args.pruned_dir, args.epochs)
    log.info("%s rung %d: kept %d of %d (%s), pruned %d", args.family, args.rung, len(selection["kept"]),
             len(args.runs), ", ".join(selection["kept"]), len(selection["pruned"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
