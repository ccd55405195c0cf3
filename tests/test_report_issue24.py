"""Issue 24: the report misleads no careful reader (sorting, failures, small losses, statistics)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meli import sweep
from meli.report import aggregate, charts, evaluate, failures, order, render
from tests.test_aggregate import CNN, MLP, TFIDF, FakePredictor, make_results, make_run

CONFIG = {"dataset": {"name": "issue-24", "source": "demo"}, "report": {"bootstrap": 200}}


def build(root: Path, runs: list[tuple[str, dict, float, float]]) -> Path:
    """results/ and report.html for ``runs`` (family, params, val bacc, test accuracy)."""
    results = make_results(root, make=False)
    for family, params, vb, acc in runs:
        make_run(results, family, params, vb, 1.5 - vb, epochs=1 if family == "tfidf" else 4, test_accuracy=acc)
    dirs = sorted((results / "runs").glob("*/*"))
    aggregate.aggregate(dirs, results / "tables")
    evaluate.evaluate(results / "tables" / "selection.json", results / "data", results / "features",
                      {"bootstrap": 200}, "cpu", results / "tables", load_predictor=FakePredictor)
    (root / "config.yaml").write_text("dataset:\n  name: issue-24\n")
    out = results / "report.html"
    out.write_text(render.render(results, CONFIG, ["config.yaml"], workdir=root), encoding="utf-8")
    return out


NUMERIC_RUNS = (
    [("mlp", {**MLP, "hidden": h, "lr": lr}, 0.70 + 0.01 * i, 0.8)
     for i, (h, lr) in enumerate([([128], 3e-05), ([16], 0.001), ([64], 0.01), ([128, 64], 0.003)])]
    + [("cnn", {**CNN, "filters": f, "seed": s}, 0.72 + 0.003 * s + 0.01 * (f == 32), 0.8)
       for f in (128, 32) for s in (0, 1, 2, 3)]
    + [("tfidf", {**TFIDF, "C": c}, 0.6 + 0.01 * c, 0.7) for c in (0.5, 10.0, 2.0, 1.0)]
)


def test_values_have_a_natural_order():
    assert order.sorted_values(["[128]", "[16]", "[64]", "[128,64]"]) == ["[16]", "[64]", "[128]", "[128,64]"]
    assert order.sorted_values([0.5, 10, 2]) == [0.5, 2, 10]
    assert order.sorted_values(["0.001", "3e-05", "0.01"]) == ["3e-05", "0.001", "0.01"]
    assert order.sorted_values(["w2v", None, 1]) == [1, "w2v", None]
    kind, ticks, pos = charts.Axis("hidden", [[128], [16], [64]]).scale()
    assert kind == "categorical" and [t for _, t in ticks] == ["[16]", "[64]", "[128]"] and pos([16]) == 0
    _, ticks, _ = charts.Axis("seed", [0, 1, 2, 3, 4, 5, 6, 7]).scale()
    assert all(float(t).is_integer() for t in (label.replace(",", "") for _, label in ticks))  # no "2.5"


def test_effects_are_in_value_order(tmp_path):
    results = make_results(tmp_path, make=False)
    for family, params, vb, acc in NUMERIC_RUNS:
        make_run(results, family, params, vb, 1.0, test_accuracy=acc)
    df = aggregate.runs_table([aggregate.load_run(d) for d in sorted((results / "runs").glob("*/*"))])
    eff = aggregate.effects(df)
    by = {(f, h): list(g["value"]) for (f, h), g in eff.groupby(["family", "hyperparameter"], sort=False)}
    assert by[("mlp", "hidden")] == ["[16]", "[64]", "[128]", "[128,64]"]
    assert by[("mlp", "lr")] == ["3e-05", "0.001", "0.003", "0.01"]
    assert by[("tfidf", "C")] == ["0.5", "1.0", "2.0", "10.0"]
    assert [float(v) for v in by[("cnn", "filters")]] == [32, 128]


def test_failed_runs_say_what_to_do(tmp_path):
    assert "Lower the learning rate" in failures.advice("diverged") and "Rerun the same" not in failures.advice(
        "diverged")
    for state in ("killed for memory", "timed out", "killed"):
        assert "Rerun the same" in failures.advice(state)
    assert "Free disk space" in failures.advice("failed", "OSError: [Errno 28] No space left on device: ...")
    log = tmp_path / "job.log"
    reason = "RuntimeError: training diverged: " + "x" * 600 + " Lower the learning rate (lr=10.0)"
    log.write_text("epoch 1\n" + reason + "\n")
    kept = sweep.last_error(log)
    assert kept.endswith("Lower the learning rate (lr=10.0)")  # the advice at the end is never cut
    c = sweep.Combination("mlp", "lr-10", "diverged", attempts=1, detail=kept, log=str(log))
    html = failures.section([c])
    assert "Lower the learning rate (lr=10.0)" in html and "<table" not in html  # wraps on a phone


def test_complete_families_get_test_scores_in_a_partial_sweep(tmp_path):
    results = make_results(tmp_path)
    aggregate.aggregate(sorted((results / "runs").glob("*/*")), results / "tables")
    table = evaluate.evaluate_families(results / "tables" / "selection.json", results / "data",
                                       results / "features", ["cnn", "tfidf"], {"bootstrap": 50}, "cpu",
                                       results / "tables", load_predictor=FakePredictor)
    assert list(table["family"]) == ["cnn", "tfidf"] and (results / "tables" / "test.csv").exists()
    assert not list((results / "tables").glob(".selection*"))


def test_provenance_counts_an_untracked_config_file(tmp_path):
    from meli.report.sections import git_info

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    (tmp_path / "mine.yaml").write_text("dataset: {}\n")
    assert git_info(tmp_path)["dirty"] == "no"
    assert git_info(tmp_path, ["mine.yaml"])["dirty"].startswith("yes: config file not committed: mine.yaml")


def test_report_pages_refuses_a_missing_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tests.report_pages", "--report", str(tmp_path / "missing.html"),
                           "--out", str(tmp_path / "shots")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "no such report" in proc.stderr
    assert not (tmp_path / "shots").exists()


def test_tables_sort_by_value_and_filter_exactly_in_a_browser(tmp_path):
    """Headless Chromium: a click sorts hidden [16] [64] [128] [128,64], lr 3e-05 first, C 0.5 2 10;
    `C=1` matches C=1 only; ids have tooltips; no dotted leaders; the seed group's mean is a column."""
    from tests import report_pages

    if report_pages.chromium() is None:
        pytest.skip("no Chromium")
    page = build(tmp_path / "wf", NUMERIC_RUNS)
    html = page.read_text()
    assert "stroke-dasharray" not in html  # label leaders looked like data
    assert "seed-group mean ± sd (seeds)" in html
    with report_pages.browser(tmp_path) as tools:
        data, console = report_pages.inspect(tools, page, 1400)
        assert console == []

        def run(js: str):
            return tools.call("Runtime.evaluate", expression=js, returnByValue=True)["result"].get("value")

        def column(table: int, name: str) -> list[str]:
            return run(f"""(() => {{ const t = document.querySelectorAll('#comparison table.sortable')[{table}];
              const i = [...t.tHead.rows[0].cells].findIndex(c => c.textContent === '{name}');
              t.tHead.rows[0].cells[i].click(); t.tHead.rows[0].cells[i].click();
              return [...t.tBodies[0].rows].map(r => r.cells[i].textContent); }})()""")

        assert column(0, "hidden") == ["[16]", "[64]", "[128]", "[128, 64]"]
        assert column(0, "lr") == ["3e-05", "0.001", "0.003", "0.01"]
        assert column(2, "C") == ["0.5", "1", "2", "10"]
        assert column(1, "filters") == ["32"] * 4 + ["128"] * 4
        shown = run("""(() => { const box = document.querySelectorAll('#comparison input.filter')[2];
            box.value = 'C=1'; box.dispatchEvent(new Event('input'));
            return [...document.querySelectorAll('#comparison table.sortable')[2].tBodies[0].rows]
              .filter(r => !r.hidden).map(r => r.dataset.filter); })()""")
        assert len(shown) == 1 and "c=1 " in shown[0] + " "
        tip = run("document.querySelector('#comparison td.id').title")
        assert tip and tip == run("document.querySelector('#comparison td.id').textContent")


# ------------------------------------------------------------------------------- statistics
def test_holm_and_bootstrap_p():
    from meli.report import stats

    # Holm 1979: sorted p x (m - rank), running maximum, capped at 1; order and None kept.
    assert stats.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None], nan_ok=True)
    assert stats.holm([0.5, 0.001]) == [0.5, 0.002] and stats.holm([0.6, 0.4, 0.3]) == pytest.approx([0.9, 0.9, 0.9])
    assert stats.bootstrap_p(np.full(999, 0.01)) == pytest.approx(2 / 1000)  # never exactly 0
    assert stats.bootstrap_p(np.r_[np.full(500, 0.01), np.full(500, -0.01)]) == 1.0
    assert stats.verdict(0.02, 0.01) == "better" and stats.verdict(0.02, 0.2) == "not distinguishable"


def test_expected_max_matches_simulation():
    from meli.report import stats

    scores = [0.70, 0.72, 0.75, 0.80, 0.81]
    em = stats.expected_max(scores)
    assert list(em["n"]) == [1, 2, 3, 4, 5] and em["expected_max"][0] == pytest.approx(np.mean(scores))
    rng = np.random.default_rng(0)
    draws = rng.choice(scores, size=(200_000, 3)).max(axis=1)
    assert em["expected_max"][2] == pytest.approx(draws.mean(), abs=1e-3)
    assert em["sd"][2] == pytest.approx(draws.std(), abs=1e-3)
    assert list(em["expected_max"]) == sorted(em["expected_max"])  # more combinations, higher expected best


def test_importance_finds_what_matters_and_says_how_sure():
    from meli.report import stats

    rng = np.random.default_rng(1)
    rows = [{"lr": lr, "dropout": do, "hidden": h, "val_bacc": 0.8 - 40 * abs(lr - 0.003) + rng.normal(0, 0.002)}
            for lr in (0.001, 0.003, 0.01) for do in (0.2, 0.3, 0.5) for h in ("[64]", "[128]", "[256,128]")]
    imp = stats.importance(pd.DataFrame(rows), ["lr", "dropout", "hidden"])
    by = {h["hyperparameter"]: h for h in imp["hyperparameters"]}
    assert imp["hyperparameters"][0]["hyperparameter"] == "lr" and by["lr"]["low"] > 0.3
    assert by["dropout"]["low"] <= 0.01 and by["hidden"]["low"] <= 0.01  # not resolved: interval reaches 0
    assert imp["surrogate_r2"] > 0.8 and "random-forest" in imp["method"]
    assert stats.importance(pd.DataFrame(rows[:5]), ["lr"]) is None  # too few runs


def _with_val_predictions(run_dir: Path, y: np.ndarray, accuracy: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(len(y)) < accuracy, y, (y + 1) % 6)
    pd.DataFrame({"label": y, "pred": pred, "prob": 0.9}).to_parquet(run_dir / "val_predictions.parquet")


def test_validation_ties_runner_up_drop_and_recommendations(tmp_path):
    """Issue 24.2: the selected run's statistical ties on validation (paired, same rows), the
    runner-up, a cheaper tied run recommended, the val->test drop flagged."""
    results = make_results(tmp_path, make=False)
    y = np.arange(3000) % 6
    # (dropout, val bacc, val accuracy on the shared rows, train time): the first two are tied
    for i, (do, vb, acc, epochs) in enumerate([(0.2, 0.811, 0.81, 8), (0.3, 0.809, 0.808, 2), (0.5, 0.70, 0.70, 4)]):
        run = make_run(results, "mlp", {**MLP, "dropout": do}, vb, 0.5, epochs=epochs, test_accuracy=0.6)
        _with_val_predictions(run, y, acc, seed=i)
    for C, vb in ((1.0, 0.62), (10.0, 0.63)):
        make_run(results, "tfidf", {**TFIDF, "C": C}, vb, None, epochs=1, test_accuracy=0.6)
    sel = aggregate.aggregate(sorted((results / "runs").glob("*/*")), results / "tables")
    ties = sel["families"]["mlp"]["validation_ties"]
    assert [c["tied"] for c in ties["compared"]] == [True, False] and "Holm" in ties["method"]
    assert ties["recommendation"]["reason"] == "cheaper" and "do-0.3" in ties["recommendation"]["combo"]
    evaluate.evaluate(results / "tables" / "selection.json", results / "data", results / "features",
                      {"bootstrap": 200}, "cpu", results / "tables", load_predictor=FakePredictor)
    details = json.loads((results / "tables" / "test_details.json").read_text())
    assert details["families"]["mlp"]["val_test_drop"]["drop"] > 0.15  # val 0.81, test ~0.6
    assert details["recommendation"]["reason"] == "cheapest"  # MLP and TF-IDF both ~0.6 on test: a tie
    html = render.render(results, CONFIG, [], workdir=tmp_path)
    for text in ("statistically tied with the selected run on", "Runner-up:", "Recommended instead (cheaper)",
                 "validation 0.8110 → test", "the winner's curse", "Recommendation: <strong>",
                 "Search effort and importance", "Show your work"):
        assert text in html, text


def test_a_494_run_sweep_report_loads_fast_and_fits(tmp_path):
    """The issue's 494-run synthetic sweep: rendered, it loads in Chromium in about a second
    (measured ~1.5 s on the shared 2-core machine, as before these changes) and fits a phone."""
    from tests import report_pages

    if report_pages.chromium() is None:
        pytest.skip("no Chromium")
    page = report_pages.render_sweep(tmp_path / "wf", report_pages.big_sweep_runs())
    assert page.stat().st_size < 2_000_000
    with report_pages.browser(tmp_path) as tools:
        loads = []
        for width in (1400, 390, 1400, 1400, 390):
            data, console = report_pages.inspect(tools, page, width)
            assert console == [] and data["scrollWidth"] <= width and data["sticking_out"] == []
            loads.append(data["load_ms"])
    print("load ms:", loads)
    assert min(loads) < 3000, loads  # generous: other jobs share the machine


def test_family_median_and_worst_leave_out_pruned_runs(tmp_path):
    from meli.report import sections

    results = make_results(tmp_path, make=False)
    for do, vb, pruned in ((0.1, 0.80, None), (0.2, 0.78, None), (0.3, 0.76, None), (0.4, 0.30, 0), (0.5, 0.20, 0)):
        make_run(results, "mlp", {**MLP, "dropout": do}, vb, 1.0, test_accuracy=0.7, rung=1 if pruned is None else 0,
                 pruned_at_rung=pruned)
    aggregate.aggregate(sorted((results / "runs").glob("*/*")), results / "tables")
    row = sections._family_row(sections.Results(results), "mlp")
    assert row[1] == "5 (2 pruned, not counted)" and (row[2], row[3], row[4]) == (0.80, 0.78, 0.76)


def test_failed_section_and_statistics_read_on_a_phone(tmp_path):
    """Chromium at 390 px: a diverged run's whole reason and advice wrap on screen (no sideways
    scrolling), and the statistics section fits."""
    from tests import report_pages

    if report_pages.chromium() is None:
        pytest.skip("no Chromium")
    results = make_results(tmp_path / "wf")
    aggregate.aggregate(sorted((results / "runs").glob("*/*")), results / "tables")
    reason = "RuntimeError: training diverged: mean train loss 3.1e+19 " + "over 3 x max(start, log(classes)) " * 8 + \
        "Lower the learning rate (lr=10.0, set in train.mlp.grid.lr)"
    c = sweep.Combination("mlp", "emb-w2v_frz-0_h-128_do-0.3_bs-64_lr-10_seed-0", "diverged", 1, reason,
                          "results/logs/train/mlp/emb-w2v_frz-0_h-128_do-0.3_bs-64_lr-10_seed-0.log")
    page = results / "report.html"
    page.write_text(render.render(results, CONFIG, [], workdir=tmp_path / "wf", status={
        "banner": "<p>Partial</p>", "section": failures.section([c])}), encoding="utf-8")
    with report_pages.browser(tmp_path) as tools:
        data, console = report_pages.inspect(tools, page, 390)
        assert console == [] and data["scrollWidth"] <= 390 and data["sticking_out"] == [], data
        box = tools.call("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const r = document.querySelector('#sweep .reason').getBoundingClientRect();"
            " return [r.left, r.right, document.querySelector('#sweep').textContent]; })()"))["result"]["value"]
        assert box[0] >= 0 and box[1] <= 390 and "Lower the learning rate (lr=10.0" in box[2]
