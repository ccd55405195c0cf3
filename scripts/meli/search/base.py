"""The search-strategy interface: a plan of stages, and the selection between them.

A strategy (:class:`Strategy`; registered in :mod:`meli.search`) turns a family's combinations into
a :class:`SearchPlan`: one or more *ladders* (:class:`Ladder`: a successive-halving rung sequence
over its own combinations, meli.search.ladder) whose rungs before the last are the *stages*
(:class:`Stage`, one job per combination, ``results/search/{family}/{stage.key}/{combo}/``). A
stage's records are ranked by :func:`select_stage` (one Snakemake checkpoint per stage); the last
rung of every ladder is a complete run in ``results/runs/{family}/{combo}/``. Everything the rules,
the report, MLflow and ``make report`` need to know about a search is a method here: the plan is
made once (:func:`meli.search.family_plan`) and read, never recomputed elsewhere.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from meli import runs
from meli.io import atomic_path, read_json, write_json
from meli.search.ladder import Plan, SearchError

SNAPSHOT = "checkpoint.pt"  # a stage's training state (model, optimizer, early-stopping state)
SELECTION = "selection.json"
PRUNED = "pruned"
SUMMARY = "search.json"
CRITERION = "highest validation balanced accuracy; ties: lower validation loss, then combination id"


def stage_key(bracket: int | None, rung: int) -> str:
    """A stage's folder under results/search/{family}/ (and its ``stage`` wildcard)."""
    return f"rung-{rung}" if bracket is None else f"bracket-{bracket}/rung-{rung}"


def stage_label(bracket: int | None, rung: int) -> str:
    return f"rung {rung}" if bracket is None else f"bracket {bracket}, rung {rung}"


@dataclass(frozen=True)
class Stage:
    """A rung before a ladder's last: one job per combination, ``epochs`` budget, then a selection."""
    bracket: int | None
    rung: int
    epochs: int
    combinations: int
    keep: int  # promoted to the next rung

    @property
    def key(self) -> str:
        return stage_key(self.bracket, self.rung)

    @property
    def previous(self) -> str | None:
        """The stage whose training state this one continues (None: rung 0 starts from scratch)."""
        return stage_key(self.bracket, self.rung - 1) if self.rung > 0 else None


@dataclass(frozen=True)
class Ladder:
    """Successive halving over ``combos`` (all of a family's, or one Hyperband bracket's)."""
    bracket: int | None
    combos: tuple[str, ...]
    plan: Plan

    def stages(self) -> list[Stage]:
        return [Stage(self.bracket, r.index, int(r.epochs), r.combinations, self.plan.keep(r.index))
                for r in self.plan.rungs[:-1]]

    @property
    def last_stage(self) -> str | None:
        """The stage the final runs continue from (None: they train from scratch, as in a grid)."""
        return stage_key(self.bracket, self.plan.final - 1) if self.plan.final else None


class Strategy:
    """What a search strategy defines; the base class is the grid (no stages).

    ``ladders`` is the only method a strategy must write: the rest (stages, inputs, selection,
    progress, report, MLflow) is generic over ladders. The texts are what the report and MLflow say.
    """
    name = "grid"
    title = "grid search"
    #: the report's paragraph above the per-family tables
    intro = ("Grid search: every combination trained to its configured epochs with early stopping "
             "(<code>train.search.strategy: grid</code>; <code>halving</code> or <code>hyperband</code> "
             "prune the weak ones early).")

    def ladders(self, combos: Sequence[str], cfg: Mapping[str, Any], max_epochs: int) -> tuple[Ladder, ...]:
        """The ladders over ``combos`` (ids, in configuration order); () trains the grid."""
        return ()

    def check(self, cfg: Mapping[str, Any]) -> None:
        """Parse-time checks of ``train.search`` beyond the schema (raise SearchError)."""

    def heading(self, combinations: int, ladders: int) -> str:
        """The report's and MLflow's name for a search of ``combinations`` in ``ladders`` ladders."""
        return f"{self.title} over {combinations} combinations"


@dataclass(frozen=True)
class SearchPlan:
    strategy: Strategy
    family: str
    ladders: tuple[Ladder, ...]

    @property
    def combos(self) -> list[str]:
        return [c for ladder in self.ladders for c in ladder.combos]

    @property
    def bracketed(self) -> bool:
        return any(ladder.bracket is not None for ladder in self.ladders)

    def stages(self) -> list[Stage]:
        """Every stage of every ladder (what select_rung checkpoints and search_done collect)."""
        return [s for ladder in self.ladders for s in ladder.stages()]

    def stage(self, key: str) -> Stage:
        for s in self.stages():
            if s.key == key:
                return s
        raise SearchError(f"{self.family} has no stage {key!r} (it has {', '.join(s.key for s in self.stages())})")

    def ladder_of(self, combo: str) -> Ladder:
        for ladder in self.ladders:
            if combo in ladder.combos:
                return ladder
        raise SearchError(f"{self.family}: {combo} is not a combination of this search")

    def entering(self, key: str, kept: Callable[[str], list[str]]) -> list[str]:
        """Combinations a stage trains: its ladder's (rung 0) or those ``kept(previous stage)``."""
        stage = self.stage(key)
        if stage.previous is None:
            return list(next(lad for lad in self.ladders if lad.bracket == stage.bracket).combos)
        return list(kept(stage.previous))

    def finals(self, kept: Callable[[str], list[str]]) -> list[str]:
        """Combinations trained to the end: each ladder's last survivors (all of a one-rung ladder's)."""
        return [c for ladder in self.ladders
                for c in (kept(ladder.last_stage) if ladder.last_stage else ladder.combos)]

    def final_rung(self, combo: str) -> int:
        return self.ladder_of(combo).plan.final

    def final_start(self, combo: str) -> str | None:
        """The stage a combination's final run continues from (None: trained from scratch)."""
        return self.ladder_of(combo).last_stage

    def max_epochs_trained(self, max_epochs: int) -> int:
        return sum(ladder.plan.max_epochs_trained(max_epochs) for ladder in self.ladders)

    def heading(self) -> str:
        return self.strategy.heading(len(self.combos), len(self.ladders))


# -------------------------------------------------------------------------------- selection
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
    """(kept, pruned): the best ``keep`` records and the rest, each best first. A diverged
    combination (:func:`write_diverged`) ranks last and is always pruned, as trial-based tuners
    treat a failed trial; a stage where every combination diverged has nothing to continue."""
    if keep < 1:
        raise SearchError(f"keep must be >= 1, got {keep}")
    combos = [r["combo"] for r in records]
    if len(set(combos)) != len(combos):
        raise SearchError(f"a combination appears twice in one rung: {sorted(c for c in combos if combos.count(c) > 1)}")
    ranked = rank(records)
    usable = [r for r in ranked if not r.get("diverged")]
    if ranked and not usable:
        raise SearchError(f"every combination of this stage diverged ({', '.join(combos)}): nothing to continue; "
                          "lower their learning rates")
    kept = usable[:keep]
    return kept, [r for r in ranked if not any(r is k for k in kept)]


def _read_stage_records(run_dirs: Sequence[str | os.PathLike], family: str, rung: int) -> list[dict[str, Any]]:
    records = []
    for d in run_dirs:
        rec = runs.read_metrics(d)
        if rec["family"] != family or rec.get("rung") != rung:
            raise SearchError(f"{d}/{runs.METRICS}: a {rec['family']} record of rung {rec.get('rung')}, "
                              f"expected {family} rung {rung}")
        # the directory name is the workflow's combination id (as in meli.report.aggregate)
        records.append({**rec, "combo": Path(d).name, "_dir": Path(d)})
    return records


def _write_pruned(pruned: list[dict[str, Any]], pruned_dir: Path, extra: dict[str, Any]) -> None:
    """The pruned runs' records, built beside their final place and renamed: a killed job leaves no half directory."""
    pruned_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pruned_dir.name}.", dir=pruned_dir.parent))
    try:
        for rec in pruned:
            src, dst = rec["_dir"], tmp / rec["combo"]
            dst.mkdir()
            shutil.copy2(src / runs.HISTORY, dst / runs.HISTORY)
            runs.write_metrics(dst, {**_public(rec), **extra})
        if pruned_dir.exists():
            shutil.rmtree(pruned_dir)
        os.replace(tmp, pruned_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def select_rung(run_dirs: Sequence[str | os.PathLike], family: str, rung: int, keep: int,
                selection_path: str | os.PathLike, pruned_dir: str | os.PathLike, epochs: int | None = None,
                bracket: int | None = None) -> dict[str, Any]:
    """Rank a stage's records, write the pruned runs' records and selection.json, drop their state."""
    kept, pruned = select(_read_stage_records(run_dirs, family, rung), keep)
    where = {"pruned_at_rung": rung, **({} if bracket is None else {"bracket": bracket})}
    _write_pruned(pruned, Path(pruned_dir), where)
    selection = {
        "family": family,
        **({} if bracket is None else {"bracket": bracket}),
        "rung": rung,
        "epochs": epochs,
        "criterion": CRITERION,
        "keep": keep,
        "kept": [r["combo"] for r in kept],
        "pruned": [r["combo"] for r in pruned],
        "ranking": [
            {"combo": r["combo"], "val_bacc": r["val_bacc"], "val_loss": r.get("val_loss"),
             "epochs_run": r.get("epochs_run"), "stopped_early": r.get("stopped_early"), "kept": i < len(kept),
             **({"diverged": True} if r.get("diverged") else {})}
            for i, r in enumerate(kept + pruned)
        ],
    }
    write_json(selection_path, selection)
    # A pruned combination's state is never continued: free the disk (one model + optimizer each).
    # Nothing requests these files any more, so Snakemake does not rerun their jobs for them.
    for rec in pruned:
        (rec["_dir"] / SNAPSHOT).unlink(missing_ok=True)
    return selection


def write_diverged(stage_dir: str | os.PathLike, family: str, params: dict[str, Any], rung: int,
                   snapshot: str | os.PathLike, bracket: int | None = None, detail: str = "") -> dict[str, Any]:
    """A stage's record for a combination whose training diverged (the trainer exits with
    meli.jobstatus.DIVERGED_EXIT and writes nothing): ``diverged: true`` and ``val_bacc`` 0 (the worst
    possible: it was not measured, and a run record needs a number), an empty history and a marker
    in place of the training state. The stage's selection then
    prunes it like the worst of its rung, instead of the whole search waiting for a job that
    will never succeed."""
    import datetime as dt

    import pandas as pd

    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(stage_dir / runs.HISTORY) as tmp:
        pd.DataFrame(columns=list(runs.HISTORY_COLUMNS)).to_csv(tmp, index=False)
    with atomic_path(Path(snapshot)) as tmp:  # never continued: the selection prunes it and deletes this
        tmp.write_text("diverged: no training state\n")
    record = {"family": family, "combo": stage_dir.name, "params": params, "rung": rung,
              **({} if bracket is None else {"bracket": bracket}), "val_bacc": 0.0, "val_loss": None,
              "epochs_run": 0, "diverged": True, "detail": detail,
              "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")}
    runs.write_metrics(stage_dir, record)
    return record


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def read_selection(path: str | os.PathLike) -> dict[str, Any]:
    sel = read_json(path)
    for key in ("family", "rung", "kept", "pruned"):
        if key not in sel:
            raise SearchError(f"{path}: missing key {key!r} (delete it to redo the rung's selection)")
    return sel


# ---------------------------------------------------------------------------------- summary
def _ladders_of(sels: list[dict[str, Any]], family: str) -> dict[int | None, list[dict[str, Any]]]:
    by_bracket: dict[int | None, list[dict[str, Any]]] = {}
    for s in sels:
        by_bracket.setdefault(s.get("bracket"), []).append(s)
    for bracket, group in by_bracket.items():
        group.sort(key=lambda s: s["rung"])
        if [s["rung"] for s in group] != list(range(len(group))) or any(s["family"] != family for s in group):
            where = "" if bracket is None else f" of bracket {bracket}"
            raise SearchError(f"{family}: expected the selections of rungs 0..{len(group) - 1}{where}, got "
                              + ", ".join(str(s["_path"]) for s in group))
    return by_bracket


def summarize(family: str, selections: Sequence[str | os.PathLike], runs_dir: str | os.PathLike,
              out: str | os.PathLike, straight: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """search.json: the run directories a finished search leaves (final first, then pruned by rung).

    ``straight``: combinations of one-rung ladders (trained to the end from scratch) -> their bracket."""
    sels = [read_selection(p) | {"_path": Path(p)} for p in selections]
    by_bracket = _ladders_of(sels, family)
    runs_dir = Path(runs_dir).as_posix()
    final_bracket: dict[str, int | None] = {}
    for bracket, group in sorted(by_bracket.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        final_bracket.update({c: bracket for c in group[-1]["kept"]})
    final_bracket.update(straight or {})
    final = [f"{runs_dir}/{c}" for c in final_bracket]
    pruned = [{"run_dir": (s["_path"].parent / PRUNED / c).as_posix(), "pruned_at_rung": s["rung"],
               **({} if s.get("bracket") is None else {"bracket": s["bracket"]})}
              for _, group in sorted(by_bracket.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
              for s in group for c in s["pruned"]]
    summary = {"family": family, "rungs": len(sels) + 1, "final": final, "pruned": pruned,
               "run_dirs": final + [p["run_dir"] for p in pruned]}
    if any(b is not None for b in final_bracket.values()) or any("bracket" in p for p in pruned):
        summary["final_brackets"] = {f"{runs_dir}/{c}": b for c, b in final_bracket.items()}
    write_json(out, summary)
    return summary


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("run_dirs"), list):
        raise SearchError(f"{path}: no 'run_dirs' list (delete it to rebuild it)")
    return summary


def annotate(run_dir: str | os.PathLike, record: dict[str, Any]) -> dict[str, Any]:
    """A run record with its ``bracket`` when a bracketed search's final run lacks it (the trainer
    writes ``rung`` only; search.json knows the bracket). Unchanged otherwise."""
    if "rung" not in record or "bracket" in record:
        return record
    run_dir = Path(run_dir)
    path = run_dir.parent.parent.parent / "search" / run_dir.parent.name / SUMMARY
    try:
        brackets = read_json(path).get("final_brackets") or {}
    except (OSError, ValueError, AttributeError):
        return record
    for d, b in brackets.items():
        if Path(d).name == run_dir.name:
            return {**record, "bracket": b}
    return record


# --------------------------------------------------------------------------------- progress
def combination_states(results: str | os.PathLike, family: str, combos: Iterable[str],
                       search_plan: SearchPlan | Plan) -> dict[str, dict[str, Any]]:
    """Where each configured combination of a staged search stands, from files only.

    ``{combo: {"state": "final" | "pruned" | "in search", "rung": r}}`` (and ``bracket`` under
    Hyperband): ``final`` when its final run exists, ``pruned`` (not missing!) when a stage's
    selection pruned it, otherwise the last rung whose record it has (-1: none yet).
    """
    combos = list(combos)
    if isinstance(search_plan, Plan):  # one ladder over these combinations (halving)
        from meli.search.halving import HALVING

        search_plan = SearchPlan(HALVING, family, (Ladder(None, tuple(combos), search_plan),))
    root = Path(results) / "search" / family
    pruned_at: dict[str, int] = {}
    for stage in search_plan.stages():
        path = root / stage.key / SELECTION
        if path.exists():
            pruned_at.update({c: stage.rung for c in read_selection(path)["pruned"]})
    out: dict[str, dict[str, Any]] = {}
    for combo in combos:
        try:
            ladder = search_plan.ladder_of(combo)
        except SearchError:  # not in this plan (the config changed): left to the grid's classification
            continue
        where = {} if ladder.bracket is None else {"bracket": ladder.bracket}
        if (Path(results) / "runs" / family / combo / runs.METRICS).exists():
            out[combo] = {"state": "final", "rung": ladder.plan.final, **where}
        elif combo in pruned_at:
            out[combo] = {"state": "pruned", "rung": pruned_at[combo], **where}
        else:
            done = [s.rung for s in ladder.stages() if (root / s.key / combo / runs.METRICS).exists()]
            out[combo] = {"state": "in search", "rung": max(done, default=-1), **where}
    return out


def current_states(results: str | os.PathLike, family: str, combos: Iterable[str], search_plan: SearchPlan,
                   stale: Callable[[Path], bool] = lambda path: False) -> dict[str, dict[str, Any]]:
    """:func:`combination_states` for *this* plan only (what progress and the partial tables count).

    A stage's selection counts when it ranked exactly the combinations that entered the stage, with
    this plan's keep and epochs, and ``stale(path)`` says it is not about to be redone; a final run
    counts only when every stage of its ladder kept it. A run left by a previous plan (another eta,
    min_epochs or grid) is then "in search", neither done nor ranked.
    """
    root = Path(results) / "search" / family
    wanted = set(combos)
    out: dict[str, dict[str, Any]] = {}
    for ladder in search_plan.ladders:
        entered, pruned_at, survivors = set(ladder.combos), {}, set()
        for stage in ladder.stages():
            sel = _current_selection(root / stage.key / SELECTION, stale)
            if (sel is None or set(sel["kept"]) | set(sel["pruned"]) != entered
                    or sel.get("keep") != stage.keep or sel.get("epochs") != stage.epochs):
                break
            pruned_at.update((c, stage.rung) for c in sel["pruned"])
            entered = set(sel["kept"])
        else:
            survivors = entered
        where = {} if ladder.bracket is None else {"bracket": ladder.bracket}
        for combo in (c for c in ladder.combos if c in wanted):
            if combo in pruned_at:
                out[combo] = {"state": "pruned", "rung": pruned_at[combo], **where}
            elif combo in survivors and (Path(results) / "runs" / family / combo / runs.METRICS).exists():
                out[combo] = {"state": "final", "rung": ladder.plan.final, **where}
            else:
                done = [s.rung for s in ladder.stages() if (root / s.key / combo / runs.METRICS).exists()]
                out[combo] = {"state": "in search", "rung": max(done, default=-1), **where}
    return out


def _current_selection(path: Path, stale: Callable[[Path], bool]) -> dict[str, Any] | None:
    try:
        return read_selection(path) if path.exists() and not stale(path) else None
    except (SearchError, OSError, ValueError):
        return None
