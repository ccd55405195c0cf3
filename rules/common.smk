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
from meli.overrides import coerce  # noqa: E402

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


def family_resources(family):
    """train.resources overridden by train.<family>.resources."""
    return {**config["train"]["resources"], **config["train"].get(family, {}).get("resources", {})}


def gpu_model(res):
    """'' unless GPUs are requested: the slurm plugin turns any gpu_model into --gpus=<model>:<gpu>, even gpu 0."""
    return (res.get("gpu_model") or "") if res["gpu"] else ""


def run_dirs(family=None):
    families = [family] if family else FAMILIES
    return [f"results/runs/{f}/{c}" for f in families for c in COMBOS[f]]


def run_metrics(family=None):
    return [f"{d}/metrics.json" for d in run_dirs(family)]


def run_outputs():
    """Every run's declared outputs (rules/train.smk, rules/baseline.smk): `rule all` asks for them,
    so a deleted model or run folder is retrained (meli.sweep.run_files lists the same)."""
    return [
        f"results/runs/{f}/{c}/{name}"
        for f in FAMILIES
        for c in COMBOS[f]
        for name in ("metrics.json", "history.csv", models.get(f).model_file, "val_predictions.parquet")
    ]


def run_models():
    """Every run's fitted model (model.pt or model.joblib, as its family defines)."""
    return [f"results/runs/{f}/{c}/{models.get(f).model_file}" for f in FAMILIES for c in COMBOS[f]]


# ------------------------------------------------------------------------ data (rules/data.smk)
def dataset_source():
    """Path of the dataset file the prepare rule reads (local sources are not copied)."""
    src = config["dataset"]["source"]
    if src == "demo":
        return f"{DATA}/source/demo.csv.gz"
    url = urlparse(src)
    if url.scheme in ("http", "https"):
        return f"{DATA}/source/{os.path.basename(url.path) or 'dataset'}"
    return str(local_path(src))


# ------------------------------------------------------------ embeddings (rules/embeddings.smk)
def vectors_source(name):
    src = config["embeddings"][name].get("source")
    if not src:
        raise WorkflowError(f"config embeddings.{name}: kind: pretrained needs a `source`")
    url = urlparse(src)
    if url.scheme in ("http", "https"):
        return f"results/embeddings/{name}/source/{os.path.basename(url.path)}"
    return str(local_path(src))  # file:// URLs percent-decoded, as for dataset.source


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


wildcard_constraints:
    split="train|validation|test",
    family="|".join(FAMILIES),
    neural="|".join(NEURAL_FAMILIES),
    combo="[^/]+",
    emb="[^/]+",
