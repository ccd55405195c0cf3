"""results/report.html: one self-contained page (inline CSS, SVG and one small script; no external URL).

    python -m meli.report.render --results results --config '<full config JSON>' \\
        --configfiles config/config.yaml --out results/report.html

Answers "which model and which hyperparameters, how sure are we, and why", in that order: the
answer (selected runs, their hyperparameters and predict commands, paired test differences), the
sweep (per-family parallel coordinates and sortable, filterable run tables), learning curves,
hyperparameter effects, the selected models' test scores, then the dataset, embedding coverage,
cost per run and provenance. Optional inputs (benchmarks, coverage, stats) may be missing; they
show as "—". The script only sorts and filters tables: without it the page is complete. The
page is assembled here from sections.py (one function per section) and html.py (styles,
formatting, tables, the script).
"""
from __future__ import annotations

import argparse
import json
import logging
from html import escape
from pathlib import Path
from typing import Any

from meli.cli import entry_point
from meli.io import atomic_path, setup_logging
from meli.report.search import section_search
from meli.report.html import CSS, SCRIPT, plural
from meli.report.sections import (
    Results,
    section_comparison,
    section_cost,
    section_curves,
    section_dataset,
    section_effects,
    section_embeddings,
    section_provenance,
    section_statistics,
    section_summary,
    section_duplicates,
    section_test,
)

LOG = logging.getLogger("meli.report.render")
# Page order: the answer, then what supports it (the sweep, test details), then the inputs.
SECTIONS = (
    ("summary", "Answer"),
    ("comparison", "Comparison"),
    ("curves", "Learning curves"),
    ("search", "Search"),
    ("effects", "Hyperparameter effects"),
    ("statistics", "Search effort and importance"),
    ("test", "Test results"),
    ("dataset", "Dataset"),
    ("embeddings", "Embedding coverage"),
    ("cost", "Cost"),
    ("provenance", "Provenance"),
)
# A partial sweep (some combinations failed or unfinished) gets its own section right after the
# answer, whose conclusions it qualifies; its HTML comes from the sweep's state (``status``).
SWEEP_SECTION = ("sweep", "Failed and unfinished")


# --------------------------------------------------------------------------------------- page
def render(results: str | Path, config: dict[str, Any], configfiles: list[str], workdir: str | Path = ".",
           status: dict[str, str] | None = None) -> str:
    """The page; ``status`` (``banner``, ``section``: HTML describing a partial sweep) adds a
    banner under the title and the failed-and-unfinished section after the answer."""
    r = Results(results)
    workdir = Path(workdir)
    name = (config.get("dataset") or {}).get("name") or "MeLi"
    bodies = {
        "summary": section_summary(r),
        "dataset": section_dataset(r),
        "embeddings": section_embeddings(r),
        "comparison": section_comparison(r),
        "curves": section_curves(r),
        "search": section_search(r),
        "effects": section_effects(r),
        "statistics": section_statistics(r),
        "test": section_test(r) + section_duplicates(r),
        "cost": section_cost(r),
        "provenance": section_provenance(r, config, configfiles, workdir),
    }
    shown = SECTIONS
    if status:
        bodies[SWEEP_SECTION[0]] = status["section"]
        shown = (SECTIONS[0], SWEEP_SECTION, *SECTIONS[1:])
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in shown)
    sections = "\n".join(f'<section id="{sid}"><h2>{escape(title)}</h2>\n{bodies[sid]}\n</section>'
                         for sid, title in shown)
    n_runs = len(r.runs)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(name)}: MLP vs CNN vs TF-IDF product-title classification</title>
<style>{CSS}</style>
</head>
<body>
<nav>{nav}</nav>
<main>
<header><h1>{escape(name)}: which model, which hyperparameters, how sure</h1>
<p>{plural(n_runs, "run")} in {plural(len(r.families()), "family", "families")} · metric: balanced accuracy · selection on validation only</p>
{status["banner"] if status else ""}</header>
{sections}
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="the results/ directory")
    ap.add_argument("--config", default="{}", help="the full effective config as JSON")
    ap.add_argument("--configfiles", nargs="*", default=[], help="config files given to snakemake")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    setup_logging("meli.report.render")
    html = render(args.results, json.loads(args.config), args.configfiles, workdir=Path.cwd())
    with atomic_path(args.out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    LOG.info("wrote %s (%.0f kB)", args.out, len(html.encode()) / 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
