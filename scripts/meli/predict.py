"""Try a trained model on new titles: the top-k categories with their probabilities.

    python -m meli.predict --family mlp "Celular Samsung Galaxy S21 128gb" "Taladro percutor 750w"
    python -m meli.predict --run results/runs/cnn/<combo> --top-k 3 --file titles.txt   # - for stdin
    python -m meli.predict --family tfidf --json "Bicicleta rodado 29"

``--family`` uses the run selected on validation (results/tables/selection.json). Titles are
cleaned exactly like the training data (the data stage's recorded preprocess config).

A title with no word the model knows (empty, or only words unseen in training) still gets its
top-k, flagged: the model saw only [UNK]/padding, so the probabilities are its prior over the
categories, not a reading of the title. The text output says so under the title; the JSON has
``known_words: 0`` and a ``warning``.

Trust: a neural run's ``model.pt`` is read with ``torch.load(weights_only=True)`` (tensors only, no
code). A TF-IDF ``model.joblib`` is a pickle: loading it runs whatever code it holds. It is
loaded only from the run directories of the workflow you are in (``./results/runs/...``, or
the run ``--family`` selects); for a run directory anywhere else (a colleague's, a download)
predict refuses unless ``--trust-model`` says you trust whoever wrote it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from meli.cli import MeliError, entry_point
from meli.io import read_json
from meli.runs import results_root, workflow_root


def resolve_run(run: str | None, family: str | None, selection: str | Path) -> Path:
    """The run directory: given directly, or the family's selected run in selection.json."""
    if run:
        path = Path(run)
        if not path.is_dir():
            raise FileNotFoundError(f"run directory {path} does not exist")
        return path
    selection = Path(selection)
    if not selection.exists():
        raise FileNotFoundError(f"{selection} missing: run the workflow (or give --run DIR)")
    families = read_json(selection).get("families", {})
    ensembles = selection.with_name("ensembles.json")
    if family == "ensemble" and ensembles.exists():  # meli.ensemble's choice on validation
        chosen = read_json(ensembles).get("chosen")
        if chosen:
            families = {**families, "ensemble": read_json(ensembles)["candidates"][chosen]}
    if family not in families:
        raise KeyError(f"{selection}: no selected run for family {family!r} (have: {sorted(families)})")
    path = Path(families[family]["run_dir"])
    if not path.is_absolute() and not path.exists():
        path = workflow_root(selection) / path  # recorded relative to the workflow root
    return path


def ensemble_members(run_dir: Path) -> list[Path]:
    """The run directories of an ensemble folder (results/ensembles/<scope>/<name>), else none."""
    record = run_dir / "ensemble.json"
    if not record.exists():
        return []
    root = run_dir.resolve().parents[3]
    return [p if (p := Path(m["run_dir"])).is_absolute() else root / p for m in read_json(record)["members"]]


PICKLED_MODELS = ("model.joblib",)


def check_trusted(run_dir: Path, trusted_roots: Iterable[Path], trust: bool) -> None:
    """Refuse to unpickle a model from outside ``trusted_roots`` (results/runs of this workflow)
    unless the user said ``--trust-model``."""
    pickled = [run_dir / name for name in PICKLED_MODELS if (run_dir / name).exists()]
    if not pickled or trust:
        return
    here = run_dir.resolve()
    if any(here.is_relative_to(root.resolve()) for root in trusted_roots):
        return
    raise PermissionError(
        f"{pickled[0]} is a pickle (joblib): loading it runs any code it contains, and this run directory is not "
        f"under {' or '.join(str(r) for r in trusted_roots)} (the workflow you are in). If you trust whoever wrote "
        "it, pass --trust-model")


def read_titles(args_titles: list[str], file: str | None) -> list[str]:
    titles = list(args_titles)
    if file:
        with contextlib.nullcontext(sys.stdin) if file == "-" else open(file, encoding="utf-8") as fh:
            try:
                titles += [line.strip() for line in fh if line.strip()]
            except UnicodeDecodeError as err:
                raise ValueError(f"{'stdin' if file == '-' else file}: not UTF-8 ({err.reason} at byte {err.start}); "
                                 "convert it with: iconv -f latin1 -t utf-8") from None
    if not titles:
        raise ValueError("no titles: give them as arguments or with --file (one per line, - for stdin)")
    return titles


def top_k(proba: np.ndarray, categories: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the k most probable categories, most probable first (ties: lower label id)."""
    proba = np.asarray(proba)
    if proba.ndim != 2 or proba.shape[1] != len(categories):
        raise ValueError(f"probabilities of shape {proba.shape} for {len(categories)} categories")
    k = min(k, len(categories))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [[(categories[j], float(row[j])) for j in idx] for row, idx in zip(proba, order)]


NO_KNOWN_WORD = ("no known word: the model has seen none of this title's words, so these probabilities are "
                 "its prior over the categories, not a prediction")


def format_text(titles: Iterable[str], ranked: list[list[tuple[str, float]]],
                warnings: Iterable[str | None] | None = None) -> str:
    """Each title, then its categories and probabilities in aligned columns (and a flag line
    for a title whose prediction is only the prior)."""
    width = max((len(c) for row in ranked for c, _ in row), default=0)
    lines = []
    for title, row, warning in zip(titles, ranked, warnings or [None] * len(ranked)):
        lines.append(title if title.strip() else repr(title))
        if warning:
            lines.append(f"  ({warning})")
        lines += [f"  {i}. {c:<{width}}  {100 * p:6.2f}%" for i, (c, p) in enumerate(row, start=1)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def predict(run_dir: Path, titles: list[str], k: int, data_dir: Path, features: Path, device: str,
            load_predictor=None) -> list[dict[str, Any]]:
    if load_predictor is None:
        from meli.ensemble import load_predictor  # a run or an ensemble; torch only when really predicting
    predictor = load_predictor(run_dir, data_dir, features, device)
    ranked = top_k(predictor.predict_proba(titles), list(predictor.categories), k)
    known = predictor.known_words(titles) if hasattr(predictor, "known_words") else [None] * len(titles)
    out = []
    for title, row, n in zip(titles, ranked, known):
        result: dict[str, Any] = {"title": title, "top": [{"category": c, "probability": p} for c, p in row]}
        if n is not None:
            result["known_words"] = int(n)
            if n == 0:
                result["warning"] = NO_KNOWN_WORD
        out.append(result)
    return out


class PredictError(MeliError):
    exit_code = 2  # as argparse for a usage error


@entry_point
def main(argv: list[str] | None = None, load_predictor=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a run directory, results/runs/{family}/{combo}, or an ensemble, "
                                      "results/ensembles/{scope}/{name}")
    which.add_argument("--family", help="use this family's run selected on validation (mlp, cnn, rnn, tfidf), or "
                                         "'ensemble': the ensemble chosen on validation")
    ap.add_argument("--selection", default="results/tables/selection.json")
    ap.add_argument("--data-dir", help="default: <results>/data beside the run")
    ap.add_argument("--features", help="default: <results>/features beside the run")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--trust-model", action="store_true",
                    help="load a pickled model (TF-IDF model.joblib) from outside ./results/runs (runs its code)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--file", help="titles, one per line; - reads stdin")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("titles", nargs="*")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top-k must be >= 1")
    try:
        titles = read_titles(args.titles, args.file)
        run_dir = resolve_run(args.run, args.family, args.selection)
        trusted = [Path.cwd() / "results" / "runs"]
        if args.family:  # the selection of a workflow you point at is that workflow's own run
            trusted.append(workflow_root(args.selection) / "results" / "runs")
        check_trusted(run_dir, trusted, args.trust_model)
        for member in ensemble_members(run_dir):  # an ensemble unpickles its members' models
            check_trusted(member, trusted, args.trust_model)
        root = results_root(run_dir)
        data_dir = Path(args.data_dir) if args.data_dir else root / "data"
        features = Path(args.features) if args.features else root / "features"
        out = predict(run_dir, titles, args.top_k, data_dir, features, args.device, load_predictor)
    except (OSError, KeyError, ValueError) as err:  # a missing run/selection/file or a bad value
        raise PredictError(err) from err
    if args.json:
        print(json.dumps({"run": str(run_dir), "predictions": out}, ensure_ascii=False, indent=2))
    else:
        print(f"# {run_dir}")
        print(format_text(titles, [[(t["category"], t["probability"]) for t in o["top"]] for o in out],
                          [o.get("warning") for o in out]), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
