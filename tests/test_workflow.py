"""The workflow itself: dry runs of every config, config validation, a real end-to-end run on
tiny data, and a rerun that has nothing to do."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, TINY_CONFIG, snakemake

pytestmark = pytest.mark.workflow

CONFIGS = sorted(p for p in (ROOT / "config").glob("*.yaml") if p.name != "schema.yaml") + [TINY_CONFIG]


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    counts: dict[str, int] = {}
    table = dry_run_stdout.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda p: p.name)
def test_dry_run_of_every_config(workflow_dir: Path, configfile: Path):
    proc = snakemake(workflow_dir, "-n", "--configfile", str(configfile))
    counts = job_counts(proc.stdout)
    cfg = yaml.safe_load(configfile.read_text())
    assert counts["all"] == 1 and counts["report_html"] == 1
    used = {e for f in ("mlp", "cnn") for e in cfg["train"][f]["grid"].get("embedding", cfg["embeddings"])}
    assert counts["embedding_matrix"] == len(used)
    assert counts["train_neural"] >= 2 and counts["train_tfidf"] >= 1


def test_snakemake_lint_is_clean(workflow_dir: Path):
    """`snakemake --lint` has no finding (envvars, functions outside rule files, globals in shell, paths by +)."""
    proc = snakemake(workflow_dir, "--lint")
    out = proc.stdout + proc.stderr
    assert "Lints for" not in out and "Congratulations, your workflow is in a good condition" in out, out[-4000:]


def test_full_config_fans_out_the_seeds_grids(workflow_dir: Path):
    """config/meli2019.yaml: 2×2×2×2 MLP + 2×2×2×2×2 CNN combinations, each its own job, no network."""
    proc = snakemake(workflow_dir, "-n", "--configfile", "config/meli2019.yaml")
    counts = job_counts(proc.stdout)
    assert counts["train_neural"] == 16 + 32
    assert counts["download_dataset"] == 1 and counts["download_vectors"] == 1
    assert "meli-challenge-2019.tar.bz2" in proc.stdout
    # every combination directory is distinct and readable
    dirs = set(re.findall(r"results/runs/(?:mlp|cnn)/([^/\s]+)/metrics\.json", proc.stdout))
    assert len(dirs) == 48
    assert all(d.startswith("emb-sbwce_frz-") for d in dirs)


def test_adding_a_grid_value_adds_only_its_jobs(workflow_dir: Path, tmp_path: Path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(cfg))
    cfg["train"]["mlp"]["grid"]["dropout"] = [0.2, 0.5]
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump(cfg))
    before = set(re.findall(r"results/runs/mlp/([^/\s]+)/", snakemake(workflow_dir, "-n", "--configfile", str(base)).stdout))
    after = set(re.findall(r"results/runs/mlp/([^/\s]+)/", snakemake(workflow_dir, "-n", "--configfile", str(more)).stdout))
    assert before < after and len(after) == 2 * len(before)


@pytest.mark.parametrize(
    "section, override, key",
    [
        ("dataset", {"languages": ["klingon"]}, "klingon"),
        ("split", {"validation_fraction": -0.1}, "validation_fraction"),
        ("split", {"subsamp1e": 0.5}, "subsamp1e"),
        ("train", {"mlp": {"grid": {"dropout": [1.5]}}}, "dropout"),
        ("vocab", {"max_len": 0}, "max_len"),
    ],
)
def test_bad_config_value_stops_before_any_job_naming_the_key(workflow_dir, tmp_path, section, override, key):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    node = cfg.setdefault(section, {})
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(node.get(k), dict):
            node[k].setdefault("grid", {}).update(v["grid"])
        else:
            node[k] = v
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_dir, "--cores", "1", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Error validating config" in out and key in out
    assert not (workflow_dir / "results").exists(), "a job ran despite the invalid config"


def test_unknown_embedding_in_grid_is_a_clear_error(workflow_dir, tmp_path):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["mlp"]["grid"]["embedding"] = ["glove"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_dir, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "train.mlp" in proc.stderr + proc.stdout and "glove" in proc.stderr + proc.stdout


def test_conda_env_pins_match_requirements():
    req = {
        line.split("==")[0]: line.split("==")[1].split()[0]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    env = yaml.safe_load((ROOT / "envs" / "meli.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = dict(p.split("==") for p in pip if "==" in p)
    for name, version in pins.items():
        assert req.get(name) == version, f"{name}: envs/meli.yaml {version} vs requirements.txt {req.get(name)}"
    assert req["torch"] == "2.13.0"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole DAG, for real, on the tiny config (shared by the end-to-end assertions)."""
    from conftest import copy_workflow

    wf = copy_workflow(tmp_path_factory.mktemp("e2e") / "wf")
    proc = snakemake(wf, "--cores", "2", "--configfile", str(TINY_CONFIG))
    return wf, proc


def test_end_to_end_tiny_run_produces_the_report(tiny_run):
    wf, _ = tiny_run
    res = wf / "results"
    for split in ("train", "validation", "test"):
        df = pd.read_parquet(res / "data" / f"{split}.parquet")
        assert len(df) > 0 and {"title", "text", "category", "label_quality", "language"} <= set(df.columns)
    runs = pd.read_csv(res / "tables" / "runs.csv")
    assert set(runs["family"]) == {"mlp", "cnn", "tfidf"}
    assert len(runs) == len(list((res / "runs").glob("*/*/metrics.json")))
    for metrics_file in (res / "runs").glob("*/*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        assert 0.0 <= metrics["val_bacc"] <= 1.0
    # better than chance on 8 categories, but the demo data is not trivially separable
    assert runs["val_bacc"].max() > 0.3
    test = pd.read_csv(res / "tables" / "test.csv")
    assert set(test["family"]) == {"mlp", "cnn", "tfidf"}
    html = (res / "report.html").read_text()
    assert "<html" in html.lower() and len(html) > 5000
    assert json.loads((res / "mlflow" / "imported.json").read_text())
    selected = json.loads((res / "mlflow" / "selected.json").read_text())["selected"]
    assert set(selected) == {"mlp", "cnn", "tfidf"} and all(s["model"] for s in selected.values())
    assert not list(res.glob("checkpoints/*/*/*")), "checkpoints should be removed after a finished run"


def test_rerun_does_nothing(tiny_run):
    wf, _ = tiny_run
    proc = snakemake(wf, "--cores", "2", "--configfile", str(TINY_CONFIG))
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_logs_and_benchmarks_for_every_job(tiny_run):
    wf, _ = tiny_run
    logs = list((wf / "results" / "logs" / "train").glob("*/*.log"))
    benchmarks = list((wf / "results" / "benchmarks" / "train").glob("*/*.tsv"))
    n_runs = len(list((wf / "results" / "runs").glob("*/*/metrics.json")))
    assert len(logs) == len(benchmarks) == n_runs
    mlp_log = next(p for p in logs if p.parent.name == "mlp").read_text()
    assert "ETA" in mlp_log and "val_bacc" in mlp_log
    results = wf / "results"
    assert [p for p in results.rglob("*.log") if p.relative_to(results).parts[0] != "logs"] == []
    for rule in ("demo_dataset", "prepare_data", "features", "embedding_matrix", "aggregate", "evaluate_test",
                 "report_html", "mlflow_import", "mlflow_selected"):
        assert list((results / "benchmarks").glob(f"{rule}*")), f"no benchmark for rule {rule}"


def test_report_opens_in_a_browser_and_snakemake_report_works(tiny_run, tmp_path):
    wf, _ = tiny_run
    if not shutil.which("chromium"):
        pytest.skip("chromium not installed (tests/install_system_deps.sh installs it as root)")
    from test_report import SECTION_IDS, open_in_browser

    dom, console = open_in_browser(wf / "results" / "report.html", tmp_path)
    assert console == [], console
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in dom
    for combo_dir in (wf / "results" / "runs").glob("*/*"):
        assert combo_dir.name in dom, f"run {combo_dir.name} missing from the report"
    snakemake(wf, "--configfile", str(TINY_CONFIG), "--report", "snakemake-report.zip")
    assert (wf / "snakemake-report.zip").stat().st_size > 10_000


def test_killed_training_job_resumes_and_matches_the_uninterrupted_run(tiny_run, tmp_path):
    """A job killed after its first epoch (as SLURM preemption or OOM would) is rerun by the next
    `snakemake` call, resumes from its checkpoint and ends exactly like the uninterrupted run."""
    from conftest import copy_workflow

    wf_ref, _ = tiny_run
    ref = next((wf_ref / "results" / "runs" / "mlp").glob("*/metrics.json"))
    target = str(ref.relative_to(wf_ref))
    wf = copy_workflow(tmp_path / "wf")
    env_kill = {"MELI_KILL_AFTER_EPOCH": "1"}
    first = snakemake(wf, target, "--cores", "1", "--configfile", str(TINY_CONFIG), check=False, env=env_kill)
    assert first.returncode != 0
    assert not (wf / target).exists(), "a killed job must not leave its declared outputs"
    assert list((wf / "results" / "checkpoints" / "mlp").glob("*/*")), "no checkpoint survived the kill"
    snakemake(wf, target, "--cores", "1", "--configfile", str(TINY_CONFIG))
    resumed, reference = json.loads((wf / target).read_text()), json.loads(ref.read_text())
    assert resumed["resumed_from_epoch"] == 1
    for key in ("val_bacc", "val_loss", "best_epoch", "epochs_run", "final_train_loss"):
        assert resumed[key] == reference[key], key
    pd.testing.assert_frame_equal(
        pd.read_csv(wf / target.replace("metrics.json", "history.csv")).drop(columns=["samples_per_s", "elapsed_s"]),
        pd.read_csv(ref.with_name("history.csv")).drop(columns=["samples_per_s", "elapsed_s"]),
    )
