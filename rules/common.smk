# Shared by every rule file: config validation, the Python package on the path, the grids.
import json
import os
import shlex
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# Stops the run before any job, naming the offending key, and fills defaults from the schema.
validate(config, os.path.join(workflow.basedir, "config", "schema.yaml"))

# Rules are thin shell calls to `python -m meli.<module>`; the package lives in scripts/.
SCRIPTS = os.path.join(workflow.basedir, "scripts")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SCRIPTS, os.environ.get("PYTHONPATH")) if p)
sys.path.insert(0, SCRIPTS)

from meli.grid import FAMILIES, NEURAL_FAMILIES, expand_family  # noqa: E402

# `--sdm conda`: every rule runs in this environment (relative to rules/); otherwise in the
# current Python (the venv that `make run` builds).
CONDA_ENV = "../envs/meli.yaml"

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
        return expand_family(cfg, defaults=defaults, embeddings=EMBEDDINGS if defaults else ())
    except ValueError as err:
        raise WorkflowError(f"config train.{family}: {err}") from err


COMBOS = {family: _family_grid(family) for family in FAMILIES}
# Only embeddings some combination trains with are built (a configured but unused one costs nothing).
EMBEDDINGS_USED = sorted({p["embedding"] for f in NEURAL_FAMILIES for p in COMBOS[f].values()})


def family_resources(family):
    """train.resources overridden by train.<family>.resources."""
    return {**config["train"]["resources"], **config["train"].get(family, {}).get("resources", {})}


def run_dirs(family=None):
    families = [family] if family else FAMILIES
    return [f"results/runs/{f}/{c}" for f in families for c in COMBOS[f]]


def run_metrics(family=None):
    return [f"{d}/metrics.json" for d in run_dirs(family)]


wildcard_constraints:
    split="train|validation|test",
    family="|".join(FAMILIES),
    neural="|".join(NEURAL_FAMILIES),
    combo="[^/]+",
    emb="[^/]+",
