"""results/report.html from a handmade results/ tree: content, self-containment, a real browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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
    assert html.count("<tr class=selected") == len(selection)  # one highlighted row per family table
    # The selected run in the accent colour: MLP and CNN curves (3 charts each) and the MLP's
    # parallel coordinates (2 swept hyperparameters; CNN and TF-IDF sweep one: no chart).
    assert html.count('stroke="#d9480f" stroke-width="2.4"') == 2 * 3 + 1
    assert html.count('class="chart wide"') == 1 and "MLP: hyperparameters → validation balanced accuracy" in html
    for text in ("MLP: dropout", "MLP: freeze_embeddings", "CNN: lr", "TF-IDF baseline: C",  # effect charts
                 "Worst categories by recall", "Most confused pairs", "reliable", "unreliable",
                 "ab" * 32, "812.5", "prepare_data", "xyz (7)", "dataset:\n  name: demo-es"):
        assert text in html, text
    assert "snakemake" in html and "pandas" in html  # package versions


def test_self_contained_no_external_resource(results):
    html = build(results)
    refs = re.findall(r"""\b(?:src|href|xlink:href|action|srcset|poster|data)\s*=\s*["']?([^"'\s>]*)""", html, re.I)
    assert refs and all(r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")]
    assert "<link" not in html.lower() and "<iframe" not in html.lower()
    # One inline script (sorting and filtering), loading nothing.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert len(scripts) == 1 and scripts[0][0].strip() == ""
    assert not re.search(r"fetch\(|XMLHttpRequest|import\(|WebSocket|\.src\s*=", scripts[0][1])
    assert not re.search(r"@import|url\(", html), "CSS must not load anything"
    assert "http://" not in html and "https://" not in html


def test_answer_says_how_sure_and_how_to_use_the_winner(results):
    html = build(results)
    details = json.loads((results / "tables" / "test_details.json").read_text())
    head = details["comparisons"][0]
    assert (head["a"], head["b"]) == ("mlp", "tfidf")
    answer = html[html.index('<section id="summary">'):html.index("</section>", html.index('<section id="summary">'))]
    assert sections.comparison_sentence(head) in answer
    assert f"{html_parts.signed(head['diff'])} balanced accuracy (95% CI {html_parts.signed(head['ci_low'])} to" in answer
    assert {"better": "is better than", "worse": "is worse than"}.get(head["verdict"], "not distinguishable") in answer
    selection = json.loads((results / "tables" / "selection.json").read_text())["families"]
    for family, chosen in selection.items():
        assert html_parts.escape(sections.predict_command(chosen["run_dir"])) in answer
        for key, value in chosen["params"].items():
            assert f"<dt>{key}</dt><dd>{html_parts.escape(html_parts.fmt_param(value))}</dd>" in answer
    assert "<dt>hidden</dt><dd>[128]</dd>" in answer and "<dt>C</dt><dd>10</dd>" in answer
    # The answer and the sweep come before the dataset details.
    order = [html.index(f'<section id="{sid}">') for sid in ("summary", "comparison", "test", "dataset")]
    assert order == sorted(order)


def test_predict_command_runs_as_shown(results):
    """The command in the answer is the real CLI: its arguments parse and name the run folder."""
    import shlex

    selection = json.loads((results / "tables" / "selection.json").read_text())["families"]
    argv = shlex.split(sections.predict_command(selection["mlp"]["run_dir"]))
    assert argv[0] == "meli-predict"
    parser_help = subprocess.run([sys.executable, "-m", "meli.predict", "--help"], capture_output=True, text=True)
    for flag in ("--run", "--top-k"):
        assert flag in parser_help.stdout and flag in argv
    assert Path(argv[argv.index("--run") + 1]) == Path(selection["mlp"]["run_dir"])


def test_sweep_section_slot(results):
    """A partial sweep's banner and failed-and-unfinished section go right after the answer."""
    page = render.render(results, CONFIG, [], workdir=results.parent,
                         status={"banner": '<p class="partial">2 of 8 combinations failed</p>',
                                 "section": "<p>mlp/x: failed (diverged)</p>"})
    assert page.index('<p class="partial">') < page.index('<section id="summary">')
    ids = re.findall(r'<section id="(\w+)">', page)
    assert ids[:3] == ["summary", "sweep", "comparison"] and 'href="#sweep"' in page
    assert '<section id="sweep">' not in build(results)


def test_number_formats_are_consistent():
    assert html_parts.decimals([8.2, 8.0]) == 1 and html_parts.decimals([64.0, 128.0]) == 0
    assert html_parts.decimals([0.81234567, 0.5]) == 4 and html_parts.decimals([1234.5, 99.25]) == 0
    assert html_parts.decimals([12.5, 150.0]) == 1
    cells = re.findall(r"<td class=num>([^<]*)</td>", html_parts.table(["x"], [[8.2], [8.0], [None]]))
    assert cells == ["8.2", "8.0", html_parts.DASH]
    assert re.findall(r"<td class=num>([^<]*)</td>", html_parts.table(["n"], [[64.0], [1280.0]])) == ["64", "1,280"]
    assert html_parts.fmt(8.2) == "8.2" and html_parts.fmt(64.0) == "64" and html_parts.fmt(0.123456) == "0.1235"
    assert html_parts.fmt_param(0.001) == "0.001" and html_parts.fmt_param([256, 128]) == "[256, 128]"
    assert html_parts.fmt_param(True) == "true" and html_parts.signed(-0.01234) == "−0.0123"
    sortable = html_parts.table(["#", "lr", "run"], [[1, 0.01, "a" * 50]], sortable=True, row_filters=["lr=0.01"])
    assert 'class="sortable"' in sortable and 'data-v="0.01"' in sortable and 'data-filter="lr=0.01"' in sortable
    # a run id stays on one line, last, and reads in full on hover when the table cuts it
    assert f'<td class=id title="{"a" * 50}">' + "a" * 50 in sortable


def test_parallel_coordinates_scales():
    from meli.report import charts

    kind, ticks, pos = charts.Axis("lr", [0.001, 0.003, 0.01]).scale()
    assert kind == "log" and pos(0.001) == 0 and pos(0.01) == 1 and 0.4 < pos(0.003) < 0.5
    assert [t for _, t in ticks] == ["0.001", "0.003", "0.01"]
    kind, ticks, pos = charts.Axis("freeze", [True, False, True]).scale()
    assert kind == "categorical" and [t for _, t in ticks] == ["false", "true"] and pos(True) == 1
    kind, _, pos = charts.Axis("dropout", [0.2, 0.5, None]).scale()
    assert kind == "linear" and pos(0.5) == 1 and pos(None) is None
    svg = charts.parallel_coordinates(
        [charts.Axis("dropout", [0.2, 0.5, 0.2, 0.5]), charts.Axis("lr", [0.001, 0.01, 0.01, 0.001]),
         charts.Axis("val bacc", [0.8, 0.7, 0.75, 0.6])], ["a", "b", "c", "d"], [1, 3, 2, None], "t")
    assert svg.count("<polyline") == 4 and "lr (log)" in svg
    for rank in (1, 2, 3):  # the top runs are labelled with their rank, in their colour
        assert f'fill="{charts.rank_colour(rank)}">{rank}</text>' in svg


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


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory) -> Path:
    """The report of a synthetic 20-run sweep (tests/report_pages.py), rendered once."""
    from tests.report_pages import render_sweep

    return render_sweep(tmp_path_factory.mktemp("sweep") / "wf")


def test_sweep_report_fits_phone_and_desktop_and_its_script_works(sweep_report, tmp_path):
    """At 1400 and 390 px: the page never scrolls sideways, nothing logs to the console, and the
    tables sort and filter (screenshots of the same page: `make report-shots`)."""
    from tests import report_pages

    if report_pages.chromium() is None:
        pytest.skip("no Chromium (install it with tests/install_system_deps.sh)")
    with report_pages.browser(tmp_path) as tools:
        for width in report_pages.WIDTHS.values():
            data, console = report_pages.inspect(tools, sweep_report, width, tmp_path / f"{width}.png",
                                                 full_page=False)
            assert console == [], console
            assert data["innerWidth"] == width and data["scrollWidth"] <= width, data
            assert data["sticking_out"] == []
            assert data["sortable"] == 4 and data["filters"] == 4  # 3 families' runs + the cost table
            assert (tmp_path / f"{width}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        def run(js: str):
            return tools.call("Runtime.evaluate", expression=js, returnByValue=True)["result"].get("value")

        first_col = "[...document.querySelector('#comparison table.sortable').tBodies[0].rows].map(r => r.cells[1]" \
                    ".textContent)"
        before = run(first_col)
        assert before == sorted(before, reverse=True) and len(before) == 12  # validation order without the script
        run("document.querySelector('#comparison table.sortable thead th:nth-child(2)').click()")
        run("document.querySelector('#comparison table.sortable thead th:nth-child(2)').click()")
        assert run(first_col) == sorted(before)  # second click: ascending
        box = "document.querySelector('#comparison input.filter')"
        run(f"{box}.value = 'lr=0.003 dropout=0.2'; {box}.dispatchEvent(new Event('input'))")
        shown = run("[...document.querySelector('#comparison table.sortable').tBodies[0].rows]"
                    ".filter(r => !r.hidden).map(r => r.dataset.filter)")
        assert len(shown) == 2 and all("lr=0.003" in f and "dropout=0.2" in f for f in shown)
        assert report_pages.problems(tools.events) == []
        # ... and the check can fail: a script error and an overflowing element are caught.
        bad = tmp_path / "bad.html"
        bad.write_text("<!DOCTYPE html><html><body><div style='width:600px'>x</div>"
                       "<script>undefinedFunction();</script></body></html>")
        data, console = report_pages.inspect(tools, bad, 390)
        assert any("undefinedFunction" in line for line in console) and data["scrollWidth"] > 390
