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


def source_override(configfile: Path) -> list[str]:
    """A config whose dataset lives beside the project (../shared) names it relative to the project
    directory; in the test's copy of the workflow (and in a clone without ../shared) it is given
    on the command line: the real file when it is here, else the demo (the DAG is the same)."""
    source = yaml.safe_load(configfile.read_text())["dataset"]["source"]
    if not source.startswith("../shared/"):
        return []
    real = (ROOT / source).resolve()
    return ["--config", f"dataset={{source: {real if real.exists() else 'demo'}}}"]


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda p: p.name)
def test_dry_run_of_every_config(workflow_dir: Path, configfile: Path):
    proc = snakemake(workflow_dir, "-n", "--configfile", str(configfile), *source_override(configfile))
    counts = job_counts(proc.stdout)
    cfg = yaml.safe_load(configfile.read_text())
    assert counts["all"] == 1 and counts["report_html"] == 1
    used = {e for f in ("mlp", "cnn", "rnn") for e in cfg["train"][f]["grid"].get("embedding", cfg["embeddings"])}
    assert counts["embedding_matrix"] == len(used)
    assert counts["train_neural"] >= 2 and counts["train_tfidf"] >= 1
    assert counts["tfidf_features"] == 1  # one shared sparse matrix, whatever the number of jobs reading it


def test_sample_config_needs_its_source_given_when_shared_is_absent(workflow_dir: Path):
    """Without ../shared beside the workflow, the parse-time check names dataset.source; --config fixes it."""
    proc = snakemake(workflow_dir, "-n", "--configfile", "config/meli2019-sample.yaml", check=False)
    assert proc.returncode != 0 and "dataset.source" in proc.stdout + proc.stderr


def test_snakemake_lint_is_clean(workflow_dir: Path):
    """`snakemake --lint` has no finding (envvars, functions outside rule files, globals in shell, paths by +)."""
    proc = snakemake(workflow_dir, "--lint")
    out = proc.stdout + proc.stderr
    assert "Lints for" not in out and "Congratulations, your workflow is in a good condition" in out, out[-4000:]


def test_full_config_fans_out_the_seeds_grids(workflow_dir: Path):
    """config/meli2019.yaml: 2×2×2×2 MLP + 2×2×2×2×2 CNN + 2×2×2 RNN combinations, each its own job, no network."""
    proc = snakemake(workflow_dir, "-n", "--configfile", "config/meli2019.yaml")
    counts = job_counts(proc.stdout)
    assert counts["train_neural"] == 16 + 1 + 32 + 8  # + the input-tfidf MLP
    assert counts["download_dataset"] == 1 and counts["download_vectors"] == 1
    assert "meli-challenge-2019.tar.bz2" in proc.stdout
    # every combination directory is distinct and readable
    dirs = set(re.findall(r"results/runs/(?:mlp|cnn|rnn)/([^/\s]+)/metrics\.json", proc.stdout))
    assert len(dirs) == 57
    assert sum(d.startswith("emb-sbwce_frz-") for d in dirs) == 56
    assert sum(d.startswith("in-tfidf_h-512_") for d in dirs) == 1


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


def test_end_to_end_tiny_run_produces_the_report(tiny_run):
    wf, _ = tiny_run
    res = wf / "results"
    for split in ("train", "validation", "test"):
        df = pd.read_parquet(res / "data" / f"{split}.parquet")
        assert len(df) > 0 and {"title", "text", "category", "label_quality", "language"} <= set(df.columns)
    runs = pd.read_csv(res / "tables" / "runs.csv")
    assert set(runs["family"]) == {"mlp", "cnn", "rnn", "tfidf"}
    assert len(runs) == len(list((res / "runs").glob("*/*/metrics.json")))
    for metrics_file in (res / "runs").glob("*/*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        assert 0.0 <= metrics["val_bacc"] <= 1.0
    # better than chance on 8 categories, but the demo data is not trivially separable
    assert runs["val_bacc"].max() > 0.3
    test = pd.read_csv(res / "tables" / "test.csv")
    # the families' selected runs, and the ensemble chosen on validation (report.ensemble, issue 24)
    assert set(test["family"]) == {"mlp", "cnn", "rnn", "tfidf", "ensemble"}
    chosen = json.loads((res / "tables" / "ensembles.json").read_text())["chosen"]
    assert (res / "ensembles" / chosen / "ensemble.json").exists()
    html = (res / "report.html").read_text()
    assert "<html" in html.lower() and len(html) > 5000
    assert json.loads((res / "mlflow" / "imported.json").read_text())
    selected = json.loads((res / "mlflow" / "selected.json").read_text())["selected"]
    assert set(selected) == {"mlp", "cnn", "rnn", "tfidf"} and all(s["model"] for s in selected.values())
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
    for rule in ("demo_dataset", "prepare_data", "features", "embedding_matrix", "aggregate", "ensembles",
                 "evaluate_test", "report_html", "mlflow_import", "mlflow_selected"):
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


# ---- a sweep with a failing combination (issue 10) --------------------------------------------


def _stat_mtime(path: Path) -> float:
    return path.stat().st_mtime


@pytest.fixture(scope="module")
def failed_sweep(tiny_run, tmp_path_factory):
    """The finished tiny run, then its grid extended by a learning rate that diverges: one of
    five combinations fails (with keep-going, as profiles/slurm runs)."""
    wf_ref, _ = tiny_run
    wf = tmp_path_factory.mktemp("failed") / "wf"
    shutil.copytree(wf_ref, wf, symlinks=True)
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["mlp"]["grid"]["lr"] = [0.01, 1.0e30]
    (wf / "grid.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wf, "--cores", "2", "--keep-going", "--configfile", "grid.yaml", check=False)
    diverged = next(p.name for p in (wf / "results" / "sweep" / "jobs" / "mlp").glob("*lr-1e+30*.json"))[:-5]
    return wf, proc, diverged


def test_a_failed_combination_leaves_partial_tables_report_and_mlflow(failed_sweep):
    from meli import mlflow_store

    wf, proc, diverged = failed_sweep
    out, res = proc.stdout + proc.stderr, wf / "results"
    assert proc.returncode != 0 and "At least one job did not complete successfully" in out
    assert "done 4 · running 0 · failed 1 · left 0" in out
    runs = pd.read_csv(res / "tables" / "runs.csv")
    assert len(runs) == 4 and diverged not in set(runs["combo"]) and set(runs["family"]) == {"mlp", "cnn", "rnn", "tfidf"}
    html = (res / "report.html").read_text()
    assert "Partial: 1 of 5 combinations missing" in html and '<section id="sweep">' in html
    # one wrapped block per missing combination (readable on a phone): state, attempts, the job's
    # own reason, what to do (a diverged run: lower the learning rate, not "rerun"), the log
    row = re.search(rf'<li class="failure"><div><strong>mlp</strong> <code>{re.escape(diverged)}</code>(.*?)</li>',
                    html).group(1)
    assert "<strong>diverged</strong> (1 attempt)" in row and "Lower" in row and "Rerun the same" not in row
    assert f"results/logs/train/mlp/{diverged}.log" in row
    # the families whose combinations all finished are scored; the MLP's selection may still change
    assert set(pd.read_csv(res / "tables" / "test.csv")["family"]) == {"cnn", "rnn", "tfidf"}
    imported = json.loads((res / "mlflow" / "imported.json").read_text())
    assert sorted(Path(d).name for d in imported["runs"]) == sorted(runs["combo"])
    assert mlflow_store.problem(res / "mlflow" / "mlflow.db") is None
    # dated 1970: never taken as up to date by the next run
    for partial in ("tables/runs.csv", "tables/selection.json", "report.html", "mlflow/imported.json"):
        assert _stat_mtime(res / partial) < 10**6, partial


def test_the_next_run_retries_only_the_failed_combination(failed_sweep):
    wf, _, diverged = failed_sweep
    proc = snakemake(wf, "-n", "--configfile", "grid.yaml")
    assert job_counts(proc.stdout) == {"train_neural": 1, "aggregate": 1, "mlflow_import": 1, "evaluate_test": 1,
                                       "ensembles": 1, "mlflow_selected": 1, "report_html": 1, "all": 1, "total": 8}
    assert f"results/runs/mlp/{diverged}/metrics.json" in proc.stdout


def _running_jobs(res: Path) -> list[int]:
    """pids of the training commands whose attempt record says running (children of the wrapper)."""
    pids = []
    for status in res.glob("sweep/jobs/*/*.json"):
        record = json.loads(status.read_text())
        if record["state"] == "running":
            children = Path(f"/proc/{record['pid']}/task/{record['pid']}/children")
            if children.exists():
                pids += [int(p) for p in children.read_text().split()]
    return pids


def test_lost_outputs_are_retrained_and_make_report_runs_beside_the_sweep(failed_sweep):
    """Deleted model.pt and run folder are retrained; `make report` while the sweep holds the lock
    prints progress and writes a partial report; the sweep still ends with the final report."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import BIN

    wf, _, diverged = failed_sweep
    res = wf / "results"
    mlp = next(d for d in (res / "runs" / "mlp").iterdir() if d.name != diverged)
    (mlp / "model.pt").unlink()
    shutil.rmtree(next((res / "runs" / "tfidf").iterdir()))
    # (the diverging value is dropped again: the partial tables must still be rebuilt)
    sweep_proc = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "2", "--configfile", str(TINY_CONFIG)], cwd=wf,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    paused: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not paused and time.monotonic() < deadline and sweep_proc.poll() is None:
            for pid in _running_jobs(res):
                os.kill(pid, signal.SIGSTOP)  # hold the training job so that it is seen running
                paused.append(pid)
            time.sleep(0.05)
        assert paused, "no training job was seen running"
        assert list((wf / ".snakemake" / "locks").iterdir()), "the sweep holds its lock"
        shutil.copy2(ROOT / "Makefile", wf / "Makefile")
        (wf / ".venv").symlink_to(Path(sys.executable).parent.parent)
        live = subprocess.run(["make", "-s", "-o", ".venv/.installed", "report"], cwd=wf, capture_output=True,
                              text=True, timeout=300)
        assert live.returncode == 0, live.stdout + live.stderr
        assert re.search(r"done \d · running [12] · failed 0 · left [01] · ETA ~", live.stdout), live.stdout
        html = (res / "report.html").read_text()
        assert re.search(r"Partial: [12] of 4 combinations missing", html) and "<strong>running</strong>" in html
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        out = sweep_proc.communicate(timeout=600)[0]
    assert sweep_proc.returncode == 0, out[-4000:]
    assert (mlp / "model.pt").exists() and len(list((res / "runs" / "tfidf").glob("*/model.joblib"))) == 1
    html = (res / "report.html").read_text()
    assert "Partial:" not in html and '<section id="sweep">' not in html
    assert len(pd.read_csv(res / "tables" / "runs.csv")) == 4 and (res / "tables" / "test.csv").exists()
    assert _stat_mtime(res / "report.html") > 10**6
    # after full success a rerun is a no-op
    again = snakemake(wf, "--cores", "2", "--configfile", str(TINY_CONFIG))
    assert "Nothing to be done" in again.stdout + again.stderr


# ---- the README as a user meets it -------------------------------------------------------------

README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line.strip(), maxsplit=1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_every_readme_command_works(tiny_run, tmp_path):
    """Each command of README.md, for real where it is quick (predict, report, the MLflow store's
    URI) and as a dry run where a real run is the slow part (snakemake, make run/test)."""
    import os
    import shlex
    import subprocess
    import sys

    from conftest import BIN, copy_workflow

    wf_ref, _ = tiny_run
    wf = tmp_path / "done"  # a finished workflow, for the commands that read results
    shutil.copytree(wf_ref, wf, symlinks=True)
    shutil.copy2(ROOT / "Makefile", wf / "Makefile")
    (wf / ".venv").symlink_to(Path(sys.executable).parent.parent)
    fresh = copy_workflow(tmp_path / "fresh")  # for dry runs from scratch
    shutil.copytree(ROOT / "profiles", fresh / "profiles")
    (wf / "titles.txt").write_text("Funda silicona para iPhone 13 pro negra\ncuchillo de cocina 20cm\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(wf / "scripts")}
    mlp_combo = next((wf / "results" / "runs" / "mlp").iterdir()).name
    # config/meli2019-sample.yaml reads ../shared/data beside the project: dry runs only check that
    # the file exists, so an empty stand-in serves (also in a clone without ../shared).
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "meli2019-es-sample.jsonl.gz").touch()

    def sh(cmd: str, cwd: Path) -> str:
        proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    checked = []
    for cmd in readme_commands():
        words = shlex.split(cmd)
        if words[0] == "make" and words[1] in ("run", "test"):
            out = sh(f"make -n -o .venv/.installed {words[1]}", wf)  # prints what it would run
            assert ("snakemake --cores" if words[1] == "run" else "pytest") in out
        elif words[0] == "make":  # predict, report: for real, on the finished tiny run
            out = sh(cmd.replace("make ", "make -s -o .venv/.installed ", 1), wf)
            if words[1] == "predict":
                assert "%" in out, out
            else:  # a finished sweep: progress only, the final report is left alone
                assert "done 4 · running 0 · failed 0 · left 0" in out and "every combination has finished" in out
                assert "Partial" not in (wf / "results" / "report.html").read_text()
        elif words[0] == "meli-predict":
            out = sh(cmd.replace("<combination>", mlp_combo), wf)
            assert "%" in out
        elif words[0] == "mlflow":  # `mlflow ui` serves this store: it must open and hold every run
            from mlflow.tracking import MlflowClient

            uri = words[words.index("--backend-store-uri") + 1]
            client = MlflowClient(tracking_uri=uri.replace("sqlite:///", f"sqlite:///{wf}/"))
            exp = client.get_experiment_by_name("tiny")
            assert len(client.search_runs([exp.experiment_id])) == 3
        elif words[0] == "source":
            continue  # activates the venv for the next line
        elif words[0].endswith("snakemake"):
            if "--profile" in words and "-n" not in words:
                continue  # a real cluster run: tests/test_slurm.py
            words = [w.replace("/path/to/", f"{shared}/") for w in words]  # the README's placeholder
            dry = [w for w in words if w != "--keep-going"] + ([] if "-n" in words else ["-n"])
            dry[0] = str(BIN / "snakemake")
            out = sh(shlex.join(dry), fresh)
            assert "Job stats" in out
        else:
            raise AssertionError(f"README command without a check here: {cmd}")
        checked.append(cmd)
    assert len(checked) >= 10, checked


def test_numeric_command_line_overrides_are_typed_by_the_schema(workflow_dir):
    ok = snakemake(workflow_dir, "-n", "--configfile", "config/meli2019.yaml",
                   "--config", "split={subsample: 0.1, seed: 3}", "train={mlp: {grid: {lr: [0.5, 1e-3]}}}")
    assert "subsample" not in ok.stderr
    # the typed values reach the jobs: the grid's learning rates name the MLP combinations
    assert re.search(r"results/runs/mlp/[^/\s]*_lr-0\.5_", ok.stdout) and re.search(r"_lr-0\.001_", ok.stdout)
    bad = snakemake(workflow_dir, "-n", "--config", "split={subsample: lots}", check=False)
    assert bad.returncode != 0 and "subsample" in bad.stdout + bad.stderr and "'lots'" in bad.stdout + bad.stderr


def test_the_venvs_snakemake_works_without_activating_the_venv(workflow_dir):
    """`.venv/bin/snakemake` with the venv NOT on PATH: the job's `python` is still the venv's."""
    import os
    import subprocess

    from conftest import BIN

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.run([str(BIN / "snakemake"), "results/data/source/demo.csv.gz", "--cores", "1",
                           "--configfile", str(TINY_CONFIG)], cwd=workflow_dir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + (workflow_dir / "results/logs/demo_dataset.log").read_text()

def test_cosmetic_and_operational_keys_plan_no_training_job(tiny_run, tmp_path):
    """Issue 17: renaming the dataset, download settings, read limits, resources, report and MLflow
    settings change no stage's output, so a finished run plans no data, feature, embedding or
    training job (one dry run with all of them changed: jobs rerun by a params change are the
    union of each key's). Changing vocab.max_len, which does change the features, plans them."""
    wf, _ = tiny_run
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["dataset"].update(name="renamed", download_timeout_s=5, download_retries=9, max_line_bytes=4096,
                          max_source_bytes=10**9)
    cfg["preprocess"] = {"chunk_rows": 2000}
    cfg["train"]["resources"] = {"threads": 2, "mem_mb": 3000, "runtime": 20}
    cfg["train"]["mlp"]["resources"] = {"mem_mb": 1500}
    cfg["report"].update(worst_categories=3, top_confusions=4)
    cfg["mlflow"] = {"experiment": "other", "log_models": True}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    planned = set(job_counts(snakemake(wf, "-n", "--configfile", str(changed)).stdout))
    assert planned <= {"evaluate_test", "report_html", "mlflow_import", "mlflow_selected", "all", "total"}, planned
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["vocab"]["max_len"] = 12
    changed.write_text(yaml.safe_dump(cfg))
    planned = job_counts(snakemake(wf, "-n", "--configfile", str(changed)).stdout)
    assert planned["features"] == 1 and planned["train_neural"] == 3  # mlp, cnn, rnn


def test_checkout_path_with_braces_and_percent_encoded_vectors_url(tmp_path):
    """Issue 17: a directory named with { } (was a WildcardError) runs jobs; a file:// vectors URL
    with %20 is decoded like dataset.source."""
    from conftest import copy_workflow

    wf = copy_workflow(tmp_path / "exp {v2}" / "wf")
    vectors_dir = tmp_path / "my vectors"
    vectors_dir.mkdir()
    (vectors_dir / "v.txt").write_text("2 4\ncasa 0.1 0.2 0.3 0.4\nfunda 0.1 0.2 0.3 0.5\n")
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["embeddings"]["pre"] = {"kind": "pretrained", "dim": 4,
                                "source": "file://" + str(vectors_dir / "v.txt").replace(" ", "%20")}
    cfg["train"]["mlp"]["grid"]["embedding"] = ["pre"]
    configfile = tmp_path / "c.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake(wf, "-n", "--configfile", str(configfile))
    assert str(vectors_dir / "v.txt") in proc.stdout and job_counts(proc.stdout)["embedding_matrix"] == 2
    snakemake(wf, "results/data/source/demo.csv.gz", "--cores", "1", "--configfile", str(configfile))
    assert (wf / "results" / "data" / "source" / "demo.csv.gz").stat().st_size > 1000
