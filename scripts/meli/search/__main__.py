"""``python -m meli.search select|summary`` (the rules select_rung and search_done).

    python -m meli.search select --family mlp --rung 0 --keep 9 --epochs 1 [--bracket 2] \
        --selection results/search/mlp/rung-0/selection.json --pruned-dir results/search/mlp/rung-0/pruned \
        results/search/mlp/rung-0/<combo> ...
    python -m meli.search diverged --code $? --family mlp --rung 0 --params '{...}' --stage-dir DIR \
        --snapshot DIR/checkpoint.pt --log LOG   # train_rung, after its training command failed
    python -m meli.search summary --family mlp --runs-dir results/runs/mlp --out results/search/mlp/search.json \
        [--straight 0=<combo> ...] results/search/mlp/rung-*/selection.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from meli.cli import entry_point
from meli.io import setup_logging
from meli.jobstatus import DIVERGED_EXIT
from meli.search.base import select_rung, summarize, write_diverged
from meli.search.ladder import SearchError


def _straight(values: list[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for v in values:
        bracket, sep, combo = v.partition("=")
        if not sep or not combo:
            raise SearchError(f"--straight {v!r}: expected BRACKET=COMBO")
        out[combo] = int(bracket) if bracket not in ("", "none") else None
    return out


def _last_line(path: str | None, word: str) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines() if path else []
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if word in line and "meli.jobstatus" not in line), "")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m meli.search", description="A search's selections and summary.")
    sub = ap.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="rank one stage's records; keep the best, record the pruned")
    sel.add_argument("--family", required=True)
    sel.add_argument("--rung", type=int, required=True)
    sel.add_argument("--bracket", type=int, default=None, help="the stage's bracket (Hyperband)")
    sel.add_argument("--keep", type=int, required=True)
    sel.add_argument("--epochs", type=int, default=None, help="the stage's epoch budget (recorded)")
    sel.add_argument("--selection", required=True, help="selection.json to write")
    sel.add_argument("--pruned-dir", required=True, help="directory for the pruned runs' records")
    sel.add_argument("runs", nargs="+", help="the stage's record directories")
    div = sub.add_parser("diverged", help="after a stage job's training command: record a diverged "
                         "combination (exit code 3) for pruning; any other code is passed on")
    div.add_argument("--code", type=int, required=True, help="the training command's exit code")
    div.add_argument("--family", required=True)
    div.add_argument("--rung", type=int, required=True)
    div.add_argument("--bracket", type=int, default=None)
    div.add_argument("--params", required=True, help="the combination's parameters (JSON)")
    div.add_argument("--stage-dir", required=True)
    div.add_argument("--snapshot", required=True, help="the stage's training-state output")
    div.add_argument("--log", default=None, help="the training log (its last 'diverged' line is recorded)")
    summ = sub.add_parser("summary", help="search.json: the final and pruned run directories")
    summ.add_argument("--family", required=True)
    summ.add_argument("--runs-dir", required=True, help="results/runs/{family}")
    summ.add_argument("--out", required=True)
    summ.add_argument("--straight", action="append", default=[], metavar="BRACKET=COMBO",
                      help="a final run trained from scratch (a one-rung bracket), with its bracket")
    summ.add_argument("selections", nargs="*", help="every stage's selection.json")
    return ap


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = setup_logging("meli.search")
    if args.command == "diverged":
        if args.code != DIVERGED_EXIT:
            return args.code  # a failure like any other: the job fails, Snakemake retries or stops
        detail = _last_line(args.log, "diverged")
        write_diverged(args.stage_dir, args.family, json.loads(args.params), args.rung, args.snapshot,
                       args.bracket, detail)
        log.warning("%s %s diverged (%s): recorded for pruning at this stage", args.family,
                    Path(args.stage_dir).name, detail or "exit code 3")
        return 0
    if args.command == "summary":
        summary = summarize(args.family, args.selections, args.runs_dir, args.out, _straight(args.straight))
        log.info("%s: %d final run(s), %d pruned", args.family, len(summary["final"]), len(summary["pruned"]))
        return 0
    selection = select_rung(args.runs, args.family, args.rung, args.keep, args.selection, args.pruned_dir,
                            args.epochs, args.bracket)
    log.info("%s %s: kept %d of %d (%s), pruned %d", args.family,
             f"rung {args.rung}" if args.bracket is None else f"bracket {args.bracket} rung {args.rung}",
             len(selection["kept"]), len(args.runs), ", ".join(selection["kept"]), len(selection["pruned"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
