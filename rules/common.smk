# Shared by every rules/*.smk: config validation, the Python package on the path, the grids,
# and every input function (rule files hold rules only).
import json
import os
import shlex
import sys
from urllib.parse import urlparse

import yaml

from snakemake.utils import min_version, validate

min_version("9.0")

# Rules are thin shell calls to `python -m meli.<stage>.<module>`; the package lives in scripts/.
# The Snakefile imports it at parse time (sys.path); every job's shell gets it on PYTHONPATH
# through the shell prefix (kept: "set -euo pipefail;"), not through this process's
# environment, so no environment variable has to be declared with `envvars:`.
SCRIPTS = os.path.join(workflow.basedir, "scripts")
sys.path.insert(0, SCRIPTS)
# The jobs' `python` is the one running Snakemake (its bin directory first on PATH), so
# `.venv/bin/snakemake` works without activating the venv; a `--sdm conda` job activates its own
# environment after this prefix, which then comes first.
_BIN = os.path.dirname(sys.executable)
_PATH = "export PATH=%s:$PATH; " % shlex.quote(_BIN) if os.access(os.path.join(_BIN, "python"), os.X_OK) else ""
# Snakemake formats the prefix like a shell command: every brace is doubled to stand for itself,
# the shell's ${...} and any in the checkout's own path (a directory named "exp {v2}").
_PREFIX = "set -euo pipefail; export PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}; %s" % (shlex.quote(SCRIPTS), _PATH)
shell.prefix(_PREFIX.replace("{", "{{").replace("}", "}}"))

from meli import models  # noqa: E402
from meli.config import ConfigError, check_after_defaults, check_config, stage_config  # noqa: E402
from meli.data.fetch import local_path  # noqa: E402
from meli.grid import FAMILIES, NEURAL_FAMILIES, check_job_count, expand_family  # noqa: E402
from meli import search  # noqa: E402
from meli.overrides import coerce  # noqa: E402
from meli.sweep import partial_stamp  # noqa: E402

# Stops the run before any job, naming the offending key (one line; snakemake's validate would
# print the whole schema after it), then fills defaults from the schema. `--config key='{a: 0.1}'`
# values arrive as strings (Snakemake parses them with YAML's BaseLoader): typed by the schema first.
SCHEMA_FILE = os.path.join(workflow.basedir, "config", "schema.yaml")
with open(SCHEMA_FILE) as _schema:
    SCHEMA = yaml.safe_load(_schema)
try:
    config.update(coerce(dict(config), SCHEMA))
    check_config(config, SCHEMA)
    validate(config, SCHEMA_FILE)
    check_after_defaults(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# `--sdm conda`: every rule runs in this environment (relative to rules/); otherwise in the
# current Python (the venv that `make run` builds).
CONDA_ENV = "../envs/meli.yaml"
if "{" in workflow.basedir or "}" in workflow.basedir:
    # snakemake formats the env path (made absolute) with the wildcards: braces in the checkout's
    # path would be read as wildcards, so give it absolute with the braces escaped.
    CONDA_ENV = os.path.join(workflow.basedir, "envs", "meli.yaml").replace("{", "{{").replace("}", "}}")

# Changes whenever a failed sweep's end writes partial tables/report/MLflow import (meli.sweep):
# a parameter of the rules that write them, so the next run always rebuilds them, even when their
# inputs are unchanged (Snakemake records a failed job's input checksums as if it had succeeded).
PARTIAL_STAMP = partial_stamp("results")

SPLITS = ("train", "validation", "test")
DATA = "results/data"
FEATURES = "results/features"
EMBEDDINGS = sorted(config["embeddings"])


def as_arg(obj):
    """A config section as one shell-quoted JSON argument for a script's --config."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def _family_grid(family):
    cfg = config["train"].get(family, {})
    defaults = {"embedding": EMBEDDINGS} if family in NEURAL_FAMILIES else None
    try:
        return expand_family(cfg, defaults=defaults, embeddings=EMBEDDINGS if defaults else (), family=family)
    except ValueError as err:
        raise WorkflowError(f"config train.{family}: {err}") from err


COMBOS = {family: _family_grid(family) for family in FAMILIES}
try:
    check_job_count(COMBOS, config["train"], config["train"]["max_combinations"])
except ValueError as err:
    raise WorkflowError(f"config train: {err}") from None
# Only embeddings some combination trains with are built (a configured but unused one costs nothing).
EMBEDDINGS_USED = sorted({p["embedding"] for f in NEURAL_FAMILIES for p in COMBOS[f].values() if "embedding" in p})
# The shared sparse TF-IDF matrix (rule tfidf_features) is built when the TF-IDF family or an
# MLP with input tfidf reads it.
TFIDF = f"{FEATURES}/tfidf"
TFIDF_USED = bool(COMBOS["tfidf"]) or any(
    p.get("input") == "tfidf" for f in NEURAL_FAMILIES for p in COMBOS[f].values())


# ---------------------------------------------------- search (train.search; meli/search.py)
SEARCH = config["train"]["search"]


# Families trained in rungs (rules/train.smk: train_rung, select_rung, train_final); the rung
# arithmetic is known now, only which combinations survive each rung depends on results.
PLANS = {f: p for f in NEURAL_FAMILIES if (p := search.family_plan(f, COMBOS[f], SEARCH)) is not None}
HALVING = list(PLANS)


def rung_dir(family, rung, combo):
    return f"results/search/{family}/rung-{rung}/{combo}"


def kept_after(family, rung):
    """Combinations promoted out of a rung: known once its select_rung checkpoint has run."""
    selection = checkpoints.select_rung.get(neural=family, rung=str(rung)).output.selection
    return search.read_selection(selection)["kept"]


def rung_combos(family, rung):
    return list(COMBOS[family]) if rung == 0 else kept_after(family, rung - 1)


def search_inputs(wc):
    """What search_done collects from a halving family: every rung's selection and pruned records,
    and the final runs' files (known once the last rung's checkpoint has run)."""
    outs = []
    for rung in range(PLANS[wc.neural].final):
        out = checkpoints.select_rung.get(neural=wc.neural, rung=str(rung)).output
        outs += [out.selection, out.pruned]
    model = models.get(wc.neural).model_file
    for d in final_run_dirs(wc.neural):
        outs += [f"{d}/metrics.json", f"{d}/history.csv", f"{d}/{model}"]
    return outs


def search_summaries():
    """results/search/{family}/search.json of every halving family: a plain input (known now) of
    the tables, the report and MLflow, which read the run directories from it. Depending on the
    checkpoints directly instead, they would count as up to date after an earlier grid run (Snakemake
    does not look behind a checkpoint for jobs whose outputs exist) and the search would never start."""
    return [f"results/search/{f}/search.json" for f in HALVING]


def all_run_dirs(summaries):
    """Run directories for the tables and MLflow: the runs known now, then those in the search summaries."""
    dirs = [f"results/runs/{f}/{c}" for f in FAMILIES if f not in HALVING for c in COMBOS[f]]
    for path in summaries:
        if os.path.exists(path):  # not yet in a dry run; always when the job runs
            dirs += search.read_summary(path)["run_dirs"]
    return " ".join(shlex.quote(d) for d in dirs)


def family_resources(family):
    """train.resources overridden by train.<family>.resources."""
    return {**config["train"]["resources"], **config["train"].get(family, {}).get("resources", {})}


def gpu_model(res):
    """'' unless GPUs are requested: the slurm plugin turns any gpu_model into --gpus=<model>:<gpu>, even gpu 0."""
    return (res.get("gpu_model") or "") if res["gpu"] else ""


# One MLP/CNN job's resources (train_neural, and train_rung / train_final under halving): a retry
# after an out-of-memory or timeout kill gets more of both.
NEURAL_JOB_RESOURCES = dict(
    mem_mb=lambda wc, attempt: family_resources(wc.neural)["mem_mb"] * attempt,
    runtime=lambda wc, attempt: family_resources(wc.neural)["runtime"] * attempt,
    gpu=lambda wc: family_resources(wc.neural)["gpu"],
    gpu_model=lambda wc: gpu_model(family_resources(wc.neural)),
)


# What train_neural, train_rung and train_final share. The run directory is the metrics' folder
# (results/runs/... or, for a rung, results/search/...).
NEURAL_JOB_PARAMS = dict(
    hp=lambda wc: as_arg(COMBOS[wc.neural][wc.combo]),
    device=config["train"]["device"],
    features=lambda wc, input: os.path.dirname(input.labels),
    source=lambda wc, input: neural_source_arg(wc, input),
    run_dir=lambda wc, output: os.path.dirname(output.metrics),
    # Per-epoch resume state: not an output, so a failed job's checkpoint survives the cleanup.
    checkpoint_dir=lambda wc: f"results/checkpoints/{wc.neural}/{wc.combo}",
    # Attempt record (running/failed/diverged/killed, attempts; every rung of a combination):
    # outside the outputs, which Snakemake deletes when the job fails; read by meli.sweep.
    status=lambda wc: f"results/sweep/jobs/{wc.neural}/{wc.combo}.json",
)


def final_combos(family):
    """Combinations trained to the end: all (grid), or the last rung's survivors (halving)."""
    if family in HALVING:
        return kept_after(family, PLANS[family].final - 1)
    return list(COMBOS[family])


def final_run_dirs(family):
    return [f"results/runs/{family}/{c}" for c in final_combos(family)]


def run_metrics():
    """metrics.json of the runs known at parse time (every family not searched by halving)."""
    return [f"results/runs/{f}/{c}/metrics.json" for f in FAMILIES if f not in HALVING for c in COMBOS[f]]


def run_histories():
    return [m.replace("metrics.json", "history.csv") for m in run_metrics()]


def run_outputs():
    """Every run's declared outputs (rules/train.smk, rules/baseline.smk): `rule all` asks for them,
    so a deleted model or run folder is retrained (meli.sweep.run_files lists the same). A halving
    family's final runs are not known yet: its search summary stands for them (search_done needs them)."""
    return [
        f"results/runs/{f}/{c}/{name}"
        for f in FAMILIES
        if f not in HALVING
        for c in COMBOS[f]
        for name in ("metrics.json", "history.csv", models.get(f).model_file, "val_predictions.parquet")
    ] + search_summaries()


def run_models():
    """The fitted model of every run known at parse time (model.pt or model.joblib, as its family defines)."""
    return [f"results/runs/{f}/{c}/{models.get(f).model_file}" for f in FAMILIES if f not in HALVING for c in COMBOS[f]]


# ------------------------------------------------------------------------ data (rules/data.smk)
def literal(path, link_dir):
    """A path given by the user, as an input file. Snakemake reads any `{name}` in an input path as
    a wildcard (doubled braces do not escape it there), so a path with braces ("exp {v2}/x.csv")
    is given through a symlink without them, `results/.linked/<link_dir>/<name with ( )>` (made here,
    at parse time, only for such a path; outside every rule's output pattern); the link's target is
    the file, so its changes still count."""
    path = str(path)
    if "{" not in path and "}" not in path:
        return path
    link = os.path.join("results", ".linked", link_dir, os.path.basename(path).replace("{", "(").replace("}", ")"))
    target = os.path.abspath(path)
    if not (os.path.islink(link) and os.readlink(link) == target):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        tmp = f"{link}.{os.getpid()}.tmp"
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return link


def dataset_source():
    """Path of the dataset file the prepare rule reads (local sources are not copied)."""
    src = config["dataset"]["source"]
    if src == "demo":
        return f"{DATA}/source/demo.csv.gz"
    url = urlparse(src)
    if url.scheme in ("http", "https"):
        return f"{DATA}/source/{os.path.basename(url.path) or 'dataset'}"
    return literal(local_path(src), "dataset")


# ------------------------------------------------------------ embeddings (rules/embeddings.smk)
def vectors_source(name):
    src = config["embeddings"][name].get("source")
    if not src:
        raise WorkflowError(f"config embeddings.{name}: kind: pretrained needs a `source`")
    url = urlparse(src)
    if url.scheme in ("http", "https"):
        return f"results/embeddings/{name}/source/{os.path.basename(url.path)}"
    return literal(local_path(src), f"embeddings/{name}")  # file:// URLs percent-decoded, as for dataset.source


def embedding_inputs(wc):
    spec = config["embeddings"][wc.emb]
    inputs = {"vocab": f"{FEATURES}/vocab.tsv"}
    if spec["kind"] == "pretrained":
        inputs["vectors"] = vectors_source(wc.emb)
    else:
        inputs["train"] = f"{DATA}/train.parquet"
    return inputs


# ---------------------------------------------------------------------- training (rules/train.smk)
def neural_inputs(wc):
    params = COMBOS[wc.neural][wc.combo]
    inputs = {
        "y": expand(f"{FEATURES}/{{split}}_labels.npy", split=("train", "validation")),
        "labels": f"{FEATURES}/labels.json",
    }
    if params.get("input") == "tfidf":
        inputs["tfidf"] = expand(f"{TFIDF}/{{split}}.npz", split=("train", "validation"))
    else:
        inputs["ids"] = expand(f"{FEATURES}/{{split}}_ids.npy", split=("train", "validation"))
        inputs["matrix"] = f"results/embeddings/{params['embedding']}/matrix.npy"
    return inputs


def neural_source_arg(wc, input):
    """--matrix FILE (word-vector input) or --tfidf DIR (the shared sparse TF-IDF rows)."""
    if "matrix" in input.keys():
        return f"--matrix {shlex.quote(input.matrix)}"
    return f"--tfidf {shlex.quote(os.path.dirname(input.tfidf[0]))}"


def tfidf_test_inputs():
    """What evaluate_test reads for tfidf-input MLPs (the TF-IDF family carries its own vectorizer)."""
    return [f"{TFIDF}/test.npz", f"{TFIDF}/vectorizer.joblib"] if TFIDF_USED else []


def rung_inputs(wc):
    """A rung's job: the data, and for rung > 0 the previous rung's training state of the same combination."""
    inputs = neural_inputs(wc)
    rung = int(wc.rung)
    if rung >= PLANS[wc.neural].final:
        raise WorkflowError(f"{wc.neural} has rungs 0..{PLANS[wc.neural].final - 1} before its final runs, not {rung}")
    if rung > 0:
        inputs["state"] = f"{rung_dir(wc.neural, rung - 1, wc.combo)}/{search.SNAPSHOT}"
    return inputs


def final_inputs(wc):
    """A final run of a halving family continues from its state at the end of the rung before."""
    return {**neural_inputs(wc), "state": f"{rung_dir(wc.neural, PLANS[wc.neural].final - 1, wc.combo)}/{search.SNAPSHOT}"}


def rung_records(wc):
    return [f"{rung_dir(wc.neural, wc.rung, c)}/metrics.json" for c in rung_combos(wc.neural, int(wc.rung))]


wildcard_constraints:
    split="train|validation|test",
    family="|".join(FAMILIES),
    neural="|".join(NEURAL_FAMILIES),
    combo="[^/]+",
    emb="[^/]+",
    rung="[0-9]+",
