"""profiles/slurm against a real SLURM: dry runs here, and the demo workflow through sbatch on a
single-node cluster started by tests/slurm/local_cluster.sh (root + apt-get; MELI_SLURM_TESTS=0
skips it).

The cluster-free tests check what the users' one command would submit; the cluster test checks
that it does: one SLURM job per training combination (with its GPU), a job killed for memory is
retried with more, the baseline's combinations go as one job array (profiles/slurm/arrays), the
report is built, and a failed job's SLURM log is where the docs say.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_CONFIG, copy_workflow, snakemake

PROFILE = ROOT / "profiles" / "slurm"
TEST_PROFILE = ROOT / "tests" / "slurm" / "profile"
ARRAYS_PROFILE = PROFILE / "arrays"
CLUSTER = ROOT / "tests" / "slurm" / "local_cluster.sh"
SLURM_LOGDIR = "results/logs/slurm"
# scontrol is probed when Snakemake imports the plugin (every start); anything else would mean
# the dry run needs a cluster
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "sacctmgr", "sinfo", "scontrol", "scancel")

pytestmark = pytest.mark.workflow


def _profile_keys(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def _job_blocks(dry_run_output: str, rule: str) -> list[str]:
    """The text of every `rule <rule>:` job in a dry run's output."""
    blocks = re.split(r"\n(?=\[[^\n]*\d{4}\]\n|rule \w+:|localrule \w+:)", dry_run_output)
    return [b for b in blocks if re.match(rf"(local)?rule {rule}:", b.lstrip())]


def _resources(block: str) -> dict[str, str]:
    line = re.search(r"^\s*resources: (.*)$", block, re.M).group(1)
    return dict(item.split("=", 1) for item in line.split(", "))


def test_profile_keys_are_options_of_the_pinned_snakemake_and_plugin():
    from snakemake.cli import get_argument_parser

    options = {o for action in get_argument_parser()._actions for o in action.option_strings}
    for profile in (PROFILE, TEST_PROFILE, ARRAYS_PROFILE):
        unknown = [k for k in _profile_keys(profile) if f"--{k}" not in options]
        assert not unknown, f"{profile}/config.yaml: not options of this snakemake/plugin: {unknown}"
    assert not (ROOT / "profiles" / "default").exists(), "profiles/default would be loaded implicitly"


def test_the_arrays_profile_hands_the_plugin_every_ready_job_of_a_rule_at_once():
    """Plugin 2.8.0 drops a rule's batch smaller than its remaining ready jobs (#473): the run
    hangs. Snakemake cuts batches by `jobs` and by its rate limit, so the arrays profile must
    lift both above any grid the workflow plans (config/meli2019.yaml's is the largest)."""
    from snakemake.settings.types import MaxJobsPerTimespan

    keys = _profile_keys(ARRAYS_PROFILE)
    full = yaml.safe_load((ROOT / "config" / "meli2019.yaml").read_text())
    combinations = sum(
        math.prod(len(v) for v in full["train"][f]["grid"].values()) + len(full["train"][f].get("combinations") or [])
        for f in ("mlp", "cnn", "rnn", "tfidf")
    )
    rate = MaxJobsPerTimespan.parse_choice(keys["max-jobs-per-timespan"])
    assert keys["jobs"] >= 100 * combinations, keys["jobs"]
    assert rate.max_jobs / rate.timespan >= 100 * combinations, rate
    # the layered profiles keep the plain profile's cap for users who do not ask for arrays
    assert _profile_keys(PROFILE)["jobs"] < keys["jobs"]


def _fake_slurm_bin(tmp_path: Path) -> tuple[Path, Path]:
    """SLURM client commands that only record their arguments and fail, first on PATH."""
    bin_dir, calls = tmp_path / "fake-slurm-bin", tmp_path / "slurm-calls.txt"
    bin_dir.mkdir()
    calls.touch()
    for name in SLURM_COMMANDS:
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir, calls


def test_dry_run_lists_one_gpu_job_per_combination_without_a_cluster(tmp_path, monkeypatch):
    wf = copy_workflow(tmp_path / "wf")
    fake_bin, calls = _fake_slurm_bin(tmp_path)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    # --cores only lifts the dry run's default cap of 1 thread per job, to show the real counts
    out = snakemake(wf, "--profile", str(PROFILE), "-n", "--cores", "64").stdout

    full = yaml.safe_load((ROOT / "config" / "meli2019.yaml").read_text())
    assert full["dataset"]["source"] in out, "the profile must run config/meli2019.yaml"
    expected = {
        family: math.prod(len(values) for values in full["train"][family]["grid"].values())
        + len(full["train"][family].get("combinations") or [])  # explicit ones (the input-tfidf MLP)
        for family in ("mlp", "cnn", "rnn")
    }
    jobs = _job_blocks(out, "train_neural")
    per_family = {f: sum(f"neural={f}," in b for b in jobs) for f in expected}
    assert per_family == expected, out[-3000:]
    assert re.search(rf"^train_neural\s+{sum(expected.values())}$", out, re.M)
    res = full["train"]["resources"]
    for block in jobs:
        r = _resources(block)
        assert r["gpu"] == "1" and r["slurm_partition"] == "batch", block
        assert r["mem_mb"] == str(res["mem_mb"]) and r["runtime"] == str(res["runtime"])
        assert r["cpus_per_task"] == str(res["threads"])
    # the baseline at full size is the torch squared_hinge solver: a GPU job sized by the family's resources
    tfidf = _resources(_job_blocks(out, "train_tfidf")[0])
    assert tfidf.get("gpu", "0") == "1" and tfidf["mem_mb"] == str(full["train"]["tfidf"]["resources"]["mem_mb"])

    made = calls.read_text().splitlines()
    assert all(c.startswith("scontrol show config") for c in made), f"dry run called SLURM: {made}"


def test_plugin_turns_the_resources_into_the_intended_sbatch_flags():
    """gpu=1 -> --gpus=1, gpu=0 -> no GPU, an empty gpu_model is ignored, a model is passed on."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        def __init__(self, **resources):
            self.resources, self.threads = Resources(resources), 8

    params = dict(run_uuid="u", slurm_logfile="l", comment_str="c", account="", partition=" -p batch", workdir="")
    base = dict(mem_mb=32000, runtime=240, slurm_partition="batch", cpus_per_task=8)
    gpu = Job(**base, gpu=1, gpu_model="")
    call = get_submit_command(gpu, params) + set_gres_string(gpu)
    assert "--gpus=1" in call and "--mem 32000" in call and "-t 240" in call
    assert "--cpus-per-task=8" in call and " -p batch" in call
    cpu = Job(**base, gpu=0, gpu_model="")
    assert "gpu" not in get_submit_command(cpu, params) + set_gres_string(cpu)
    assert set_gres_string(Job(**base, gpu=2, gpu_model="a100")) == " --gpus=a100:2"


# ---- the real cluster ------------------------------------------------------------------------


def _cluster_skip_reason() -> str | None:
    if os.environ.get("MELI_SLURM_TESTS") == "0":
        return "MELI_SLURM_TESTS=0"
    if os.geteuid() != 0:
        return "needs root (installs and starts a local SLURM cluster)"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "needs apt-get to install SLURM (Debian)"
    return None


def _cluster(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), command], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = _cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    # a cluster that was already up (another session's, a developer's) is used and left running
    already_up = _cluster("status").returncode == 0
    started = _cluster("start")
    try:
        assert started.returncode == 0, f"local_cluster.sh start failed:\n{started.stderr[-4000:]}"
        yield
    finally:
        if not already_up:
            # stopping also removes /etc/slurm/slurm.conf: with it left behind but no controller,
            # every later snakemake start would wait ~9 s for `scontrol show config`
            stopped = _cluster("stop")
            assert stopped.returncode == 0, stopped.stderr


def _sacct(workdir: Path, since: str) -> list[dict[str, str]]:
    fields = ["JobID", "JobName", "Comment", "State", "ExitCode", "ReqMem", "ReqTRES", "WorkDir"]
    out = subprocess.run(
        ["sacct", "--allusers", "--allocations", "--parsable2", "--noheader", f"--starttime={since}",
         f"--format={','.join(fields)}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]
    return [r for r in rows if r["WorkDir"] == str(workdir)]


@pytest.mark.slurm
def test_demo_workflow_runs_through_sbatch_and_survives_a_job_killed_for_memory(slurm_cluster, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    # every training job asks for a (fake) GPU, as on the real cluster
    config["train"]["resources"]["gpu"] = 1
    # the CNN's first attempt gets 400 MB, less than Snakemake + PyTorch need inside the job (~550 MB):
    # SLURM kills it and the retry asks for 2x
    config["train"]["cnn"]["resources"] = {"mem_mb": 400}
    # two baseline combinations, submitted as one SLURM job array (profiles/slurm/arrays lists
    # train_neural too; here the CNN's own memory must stay apart from the MLP's)
    config["train"]["tfidf"]["grid"]["C"] = [1.0, 0.5]
    # the MLP as a Hyperband search (the generic stage rules, as for halving): over 3 epochs with
    # eta 3, bracket 1 trains 2 combinations for 1 epoch (two train_rung jobs; the plugin writes the "/" of their stage as "_") and
    # continues the better one; bracket 0 trains the third straight
    config["train"]["search"] = {"strategy": "hyperband", "eta": 3, "min_epochs": 1}
    config["train"]["mlp"]["grid"]["lr"] = [0.03, 0.01, 0.003]
    # two RNN combinations packed into one GPU job (train.pack; rule train_pack, local pack_member)
    config["train"]["rnn"]["grid"]["hidden_size"] = [8, 12]
    config["train"]["rnn"]["pack"] = 2
    (wf / "slurm-test.yaml").write_text(yaml.safe_dump(config))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))

    run = snakemake(wf, "--profile", str(PROFILE), "--profile", str(TEST_PROFILE), "--profile", str(ARRAYS_PROFILE),
                    "--slurm-array-jobs", "train_tfidf", "--configfile", "slurm-test.yaml", timeout=600, check=False)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert (wf / "results" / "report.html").stat().st_size > 0

    jobs = _sacct(wf, since)
    assert jobs, "sacct lists no job of this run"
    training = [j for j in jobs if j["Comment"].startswith("rule_train_neural_wildcards_")]
    combos = {p.parent.name: p.parent.parent.name for p in (wf / "results" / "runs").glob("*/*/metrics.json")}
    neural = {c: f for c, f in combos.items() if f in ("mlp", "cnn", "rnn")}
    assert len(neural) == 5 and len(combos) == 7  # 2 MLP finals (one per bracket), the CNN, 2 RNNs, 2 TF-IDF
    for combo, family in neural.items():
        if family == "rnn":
            continue  # packed: below
        own = [j for j in training if j["Comment"] == f"rule_train_neural_wildcards_{family}_{combo}"]
        assert own and own[-1]["State"] == "COMPLETED", (combo, own)
        assert all("gres/gpu=1" in j["ReqTRES"] for j in own), own
    packed = [j for j in jobs if j["Comment"].startswith("rule_train_pack_wildcards_")]
    assert [(j["Comment"], j["State"]) for j in packed] == [("rule_train_pack_wildcards_rnn_pack-000", "COMPLETED")]
    assert "gres/gpu=1" in packed[0]["ReqTRES"]  # two combinations, one GPU
    rnn_records = [json.loads(p.read_text()) for p in (wf / "results" / "sweep" / "jobs" / "rnn").glob("*.json")]
    assert len(rnn_records) == 2 and all(r["state"] == "finished" and r["pack"] == "pack-000"
                                         and r["slurm_job_id"] == packed[0]["JobID"] for r in rnn_records)
    rungs = [j for j in jobs if j["Comment"].startswith("rule_train_rung_wildcards_mlp_bracket-1_rung-0_")]
    assert len(rungs) == 2 and all(j["State"] == "COMPLETED" and "gres/gpu=1" in j["ReqTRES"] for j in rungs), rungs
    # the baseline: one array of two tasks, each with its SLURM log and its ids in the attempt record
    tfidf = [j for j in jobs if j["Comment"].startswith("rule_train_tfidf_wildcards_")]
    assert [j["State"] for j in tfidf] == ["COMPLETED", "COMPLETED"], tfidf
    array_ids = {tuple(j["JobID"].split("_")) for j in tfidf}
    assert len({a for a, _ in array_ids}) == 1 and {t for _, t in array_ids} == {"1", "2"}, array_ids
    for array_id, task in array_ids:
        assert (wf / SLURM_LOGDIR / "rule_train_tfidf" / f"{array_id}_{task}.log").exists()
    records = [json.loads(p.read_text()) for p in (wf / "results" / "sweep" / "jobs" / "tfidf").glob("*.json")]
    assert {(r["slurm_array_job_id"], r["slurm_array_task_id"]) for r in records} == array_ids
    assert all(r["state"] == "finished" for r in records)
    progress = subprocess.run([sys.executable, "-m", "meli.sweep", "report"], cwd=wf, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(wf / "scripts")}, timeout=120)
    assert "done 7 · running 0 · failed 0 · left 0 · pruned 1" in progress.stdout, progress.stdout + progress.stderr
    assert "packed: 2 combinations in 1 job (train.pack)" in progress.stdout
    # aggregate, report and MLflow import are localrules: they ran on the submit host
    submitted = {j["Comment"].split("_wildcards_")[0] for j in jobs}
    assert not submitted & {"rule_aggregate", "rule_report_html", "rule_mlflow_import", "rule_select_rung",
                            "rule_search_done", "rule_pack_member"}, submitted

    # the CNN job: killed at 400 MB, then completed with more memory
    cnn = [j for j in training if "_wildcards_cnn_" in j["Comment"]]
    assert len(cnn) >= 2, cnn
    first, last = cnn[0], cnn[-1]
    assert first["State"] in ("FAILED", "OUT_OF_MEMORY") and first["ReqMem"] == "400M", first
    assert last["State"] == "COMPLETED" and int(last["ReqMem"].rstrip("M")) > 400, last
    # ... and its SLURM log, kept under results/logs/slurm/rule_<rule>/<wildcards>/<job id>.log,
    # says why; Snakemake printed where it is
    cnn_combo = next(c for c, f in neural.items() if f == "cnn")
    failed_log = wf / SLURM_LOGDIR / "rule_train_neural" / f"cnn_{cnn_combo}" / f"{first['JobID']}.log"
    assert "exceeded memory limit" in failed_log.read_text(), failed_log.read_text()[-2000:]
    assert str(failed_log) in log or f"{SLURM_LOGDIR}/rule_train_neural/cnn_{cnn_combo}" in log


def _wait_for(predicate, what: str, timeout: float = 240.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slurm
def test_a_job_signalled_mid_epoch_resumes_in_its_retry_identical_to_one_run(slurm_cluster, tmp_path):
    """Issue 23: SLURM's SIGTERM (what the time limit, the profile's --signal lead and preemption
    send to every process of the job step) reaches the trainer mid-epoch through Snakemake, bash and
    meli.jobstatus; it saves its state at the next batch and exits 75, the job ends FAILED, and
    Snakemake's retry resumes it at that batch: the same run as without interruption, and the
    progress shows the attempts. (scancel --signal while the trainer waits at a known batch, to be
    exact; a second interruption in one epoch is tests/test_preemption.py's.)"""
    from meli.train.checkpoint import PAUSE_AT_ENV, PAUSE_LINE
    from tests.test_preemption import assert_identical

    wf = copy_workflow(tmp_path / "wf")
    # the MLP's inputs here (not what this test is about), then only its run through SLURM (no
    # GPU asked: the 2 fake GPUs are shared, and waiting for one would only slow the test)
    snakemake(wf, "results/features/labels.json", "results/embeddings/w2v/matrix.npy", "--cores", "2",
              "--configfile", str(TINY_CONFIG), timeout=300)
    dry = snakemake(wf, "-n", "--configfile", str(TINY_CONFIG)).stdout
    combo = re.search(r"results/runs/mlp/([^/\s]+)/metrics\.json", dry).group(1)
    status = wf / "results" / "sweep" / "jobs" / "mlp" / f"{combo}.json"
    train_log = wf / "results" / "logs" / "train" / "mlp" / f"{combo}.log"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           PAUSE_AT_ENV: "2:5"}  # 12 batches an epoch: wait for a signal after batch 5 of epoch 2
    run = subprocess.Popen([str(bin_dir / "snakemake"), f"results/runs/mlp/{combo}/metrics.json", "--profile",
                            str(PROFILE), "--profile", str(TEST_PROFILE)],
                           cwd=wf, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: train_log.exists() and PAUSE_LINE in train_log.read_text(), "the pause mid-epoch", proc=run)
        subprocess.run(["scancel", "--signal=TERM", json.loads(status.read_text())["slurm_job_id"]], check=True,
                       timeout=30)
        out, _ = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out[-6000:]

    record = json.loads(status.read_text())
    assert record["state"] == "finished" and record["attempt"] == 2, record
    assert [a["state"] for a in record["attempts"]] == ["interrupted"] and "SIGTERM" in record["attempts"][0]["detail"]
    jobs = [j for j in _sacct(wf, since) if j["Comment"] == f"rule_train_neural_wildcards_mlp_{combo}"]
    assert [j["State"] for j in jobs] == ["FAILED", "COMPLETED"], jobs
    run_dir = wf / "results" / "runs" / "mlp" / combo
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["attempts"] == 2 and metrics["resumed_at"] == [[2, 5]], metrics

    # the same command without SLURM or signals, in one go (here: no second import of torch): the
    # same run, bit for bit
    from meli import sweep
    from meli.train import neural

    args = record["command"][3:]  # after "python -m meli.train.neural"
    for flag, value in (("--out-dir", tmp_path / "straight"), ("--checkpoint-dir", tmp_path / "straight-ckpt")):
        args[args.index(flag) + 1] = str(value)
    here = os.getcwd()
    os.chdir(wf)
    try:
        assert neural.main(args) == 0
        # what `make report` prints (meli.sweep report's progress, without its partial render)
        progress = sweep.progress_text(sweep.scan(Path("results")))
    finally:
        os.chdir(here)
    assert_identical(tmp_path / "straight", run_dir)
    assert "restarts: 1 combination took more than one attempt (1 restarts) · ~" in progress, progress


def test_training_jobs_ask_slurm_for_sigterm_before_their_time_limit(tmp_path, monkeypatch):
    """Issue 23: train.stop_signal_s becomes sbatch --signal=TERM@<s> (the plugin's slurm_extra),
    capped at a quarter of the job's runtime; the other jobs ask for nothing."""
    wf = copy_workflow(tmp_path / "wf")
    fake_bin, _ = _fake_slurm_bin(tmp_path)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    out = snakemake(wf, "--profile", str(PROFILE), "-n", "--configfile", str(TINY_CONFIG)).stdout
    # tiny.yaml: runtime 10 min -> at most 150 s before the limit (the default asks for 300)
    assert {_resources(b).get("slurm_extra") for b in _job_blocks(out, "train_neural")} == {"--signal=TERM@150"}
    assert all("slurm_extra" not in _resources(b) for b in _job_blocks(out, "train_tfidf"))
