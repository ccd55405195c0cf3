"""results/report.html from a handmade results/ tree: content, self-containment, a real browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from meli.report import aggregate, evaluate
from meli.report import html as html_parts
from meli.report import render, sections
from tests.test_aggregate import RUNS, FakePredictor, make_results

CONFIG = {"dataset": {"name": "demo-es", "source": "demo"}, "report": {"bootstrap": 200}}
SECTION_IDS = [sid for sid, _ in render.SECTIONS]


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """A results/ tree after aggregate + evaluate, with the workflow root as cwd."""
    results = make_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    aggregate.aggregate(sorted(str(p.relative_to(tmp_path)) for p in (results / "runs").glob("*/*")), "results/tables")
    evaluate.evaluate("results/tables/selection.json", "results/data", "results/features", {"bootstrap": 200}, "cpu",
                      "results/tables", load_predictor=FakePredictor)
    (tmp_path / "config.yaml").write_text("dataset:\n  name: demo-es\n")
    return results


def build(results: Path, out: Path | None = None) -> str:
    out = out or results / "report.html"
    assert render.main(["--results", str(results), "--config", json.dumps(CONFIG), "--configfiles", "config.yaml",
                        "--out", str(out)]) == 0
    return out.read_text()


def test_every_run_and_every_section(results):
    html = build(results)
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html and f'href="#{sid}"' in html
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert len(runs) == len(RUNS)
    for combo in runs["combo"]:
        assert html.count(combo) >= 2, f"{combo} missing from the comparison or cost table"
    test = pd.read_csv(results / "tables" / "test.csv")
    for _, row in test.iterrows():
        assert f"{row['test_bacc']:.4f}" in html
        assert f"[{row['bacc_ci_low']:.4f}, {row['bacc_ci_high']:.4f}]" in html
    selection = json.loads((results / "tables" / "selection.json").read_text())["families"]
    assert html.count('<tr class=selected>') == len(selection)  # one highlighted row per family table
    assert html.count('stroke="#d9480f" stroke-width="2.5"') == 2 * 3  # winner curves: mlp, cnn x 3 charts
    for text in ("MLP: dropout", "MLP: freeze_embeddings", "CNN: lr", "TF-IDF baseline: C",  # effect charts
                 "Worst categories by recall", "Most confused pairs", "reliable", "unreliable",
                 "ab" * 32, "812.5", "prepare_data", "xyz (7)", "dataset:\n  name: demo-es"):
        assert text in html, text
    assert "snakemake" in html and "pandas" in html  # package versions


def test_self_contained_no_external_resource(results):
    html = build(results)
    refs = re.findall(r"""\b(?:src|href|xlink:href|action|srcset|poster|data)\s*=\s*["']?([^"'\s>]*)""", html, re.I)
    assert refs and all(r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")]
    assert "<script" not in html.lower() and "<link" not in html.lower() and "<iframe" not in html.lower()
    assert not re.search(r"@import|url\(", html), "CSS must not load anything"
    assert "http://" not in html and "https://" not in html


def test_optional_inputs_missing_show_dashes(results):
    for optional in ("benchmarks", "embeddings"):
        shutil.rmtree(results / optional)
    for f in ("features/stats.json", "data/summary.json", "tables/test.csv", "tables/test_details.json",
              "tables/effects.csv"):
        (results / f).unlink()
    html = build(results)
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html
    assert "summary.json missing" in html and "test.csv missing" in html and html_parts.DASH in html


def test_missing_runs_table_is_a_clear_error(results):
    (results / "tables" / "runs.csv").unlink()
    with pytest.raises(FileNotFoundError, match="runs.csv"):
        build(results, results / "r.html")
    assert not (results / "r.html").exists()


def test_git_info_outside_git(tmp_path):
    assert sections.git_info(tmp_path)["commit"] == html_parts.DASH
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", sections.git_info(root)["commit"])


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium (install it with tests/install_system_deps.sh)")


def open_in_browser(html_path: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """Load a page in headless Chromium: (the rendered DOM, the console messages it logged)."""
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=2000", "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_browser_detects_console_errors(tmp_path):
    """The check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    _, console = open_in_browser(bad, tmp_path)
    assert any("undefinedFunction" in line for line in console)


def test_opens_in_a_real_browser(results, tmp_path):
    build(results)
    dom, console = open_in_browser(results / "report.html", tmp_path)
    assert console == [], console
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in dom
    assert dom.count("<svg") >= 10 and "</html>" in dom
