# Shared by every rules/*.smk: config validation, the Python package on the path, the grids,
# and every input function (rule files hold rules only).
import json
import os
import shlex
import sys
from functools import partial
from types import SimpleNamespace
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
from meli.grid import FAMILIES, NEURAL_FAMILIES, check_job_count, expand_family, pack_combos  # noqa: E402
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

# Issue 23, in the prefix (read at run time, not part of any rule's code, so neither reruns a
# finished job): SLURM signals every process of a job step (time limit: SIGTERM; --signal, scancel
# --signal). The job's bash must outlive it, or the step ends and takes the trainer down before
# it has saved: a trap (not '': that would be inherited as "ignore") makes bash wait for its
# command, then exit with its status (75: interrupted, retried). `( cmd )` execs cmd in the
# subshell, so STAGE_SHELL's jobstatus is bash's child too. The trainer also saves within an epoch
# every train.checkpoint_minutes (meli.train.neural reads it from the environment).
_PREFIX += "export MELI_CHECKPOINT_MINUTES=%s; trap : TERM USR1; " % float(config["train"]["checkpoint_minutes"])
shell.prefix(_PREFIX.replace("{", "{{").replace("}", "}}"))

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


def reads_tfidf(family, params):
    """The family says what a combination reads (meli/models/<family>.py), given its full params."""
    fam = models.get(family)
    return fam.inputs({**fam.defaults(), **params}) == models.family.TFIDF


TFIDF_USED = bool(COMBOS["tfidf"]) or any(reads_tfidf(f, p) for f in NEURAL_FAMILIES for p in COMBOS[f].values())


# ---------------------------------------------------- search (train.search; meli/search/)
SEARCH = config["train"]["search"]
try:
    search.get(SEARCH.get("strategy", "grid"))
except search.SearchError as err:
    raise WorkflowError(str(err)) from None


# Families searched in stages (rules/train.smk: train_rung, select_rung, search_done; their final
# runs are train_neural jobs). meli.search.family_plan is the one place a plan is made: its stages,
# budgets and ladders are known now, only which combinations survive a stage depends on results.
PLANS = {f: p for f in NEURAL_FAMILIES if (p := search.family_plan(f, COMBOS[f], SEARCH, warn=True)) is not None}
SEARCHED = list(PLANS)
# search_done has one input function per ladder (a Hyperband bracket), so that each ladder waits
# only for its own select_rung checkpoints: with one function, the first incomplete checkpoint
# would hide the other brackets' jobs until it is done.
LADDER_SLOTS = max((len(p.ladders) for p in PLANS.values()), default=0)


def stage_dir(family, stage, combo):
    """A stage's record of one combination (stage: rung-{r} or bracket-{b}/rung-{r})."""
    return f"results/search/{family}/{stage}/{combo}"


def kept_after(family, stage):
    """Combinations promoted out of a stage: known once its select_rung checkpoint has run."""
    selection = checkpoints.select_rung.get(neural=family, stage=stage).output.selection
    return search.read_selection(selection)["kept"]


def final_combos(family):
    """Combinations trained to the end: all (grid), or every ladder's last survivors (a search)."""
    if family in PLANS:
        return PLANS[family].finals(lambda stage: kept_after(family, stage))
    return list(COMBOS[family])


def ladder_inputs(slot, wc):
    """What search_done collects from one ladder of a searched family: its stages' selections and
    pruned records, and its final runs' files (known once its last stage's checkpoint has run)."""
    ladders = PLANS[wc.neural].ladders
    if slot >= len(ladders):
        return []
    ladder, outs = ladders[slot], []
    for stage in ladder.stages():
        out = checkpoints.select_rung.get(neural=wc.neural, stage=stage.key).output
        outs += [out.selection, out.pruned]
    finals = kept_after(wc.neural, ladder.last_stage) if ladder.last_stage else ladder.combos
    model = models.get(wc.neural).model_file
    for c in finals:
        outs += [f"results/runs/{wc.neural}/{c}/{name}" for name in ("metrics.json", "history.csv", model)]
    return outs


def straight_finals(family):
    """--straight BRACKET=COMBO for search_done: final runs of one-rung ladders (no selection names them)."""
    return " ".join(f"--straight {'none' if lad.bracket is None else lad.bracket}={shlex.quote(c)}"
                    for lad in PLANS[family].ladders if not lad.last_stage for c in lad.combos)


def search_summaries():
    """results/search/{family}/search.json of every searched family: a plain input (known now) of
    the tables, the report and MLflow, which read the run directories from it. Depending on the
    checkpoints directly instead, they would count as up to date after an earlier grid run (Snakemake
    does not look behind a checkpoint for jobs whose outputs exist) and the search would never start."""
    return [f"results/search/{f}/{search.SUMMARY}" for f in SEARCHED]


def all_run_dirs(summaries):
    """Run directories for the tables and MLflow: the runs known now, then those in the search summaries."""
    dirs = [f"results/runs/{f}/{c}" for f in FAMILIES if f not in SEARCHED for c in COMBOS[f]]
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


def tfidf_resources(wc):
    """The family's resources; a LinearSVC combination never holds a GPU (liblinear runs on CPU),
    the torch solvers (squared_hinge, softmax) use the one the family asks for (--device auto)."""
    res = family_resources("tfidf")
    if COMBOS["tfidf"][wc.combo].get("solver", "linearsvc") == "linearsvc":
        return {**res, "gpu": 0}
    return res


def stop_signal(wc, attempt):
    """sbatch's --signal for a training job (slurm plugin: slurm_extra): SIGTERM train.stop_signal_s
    before its time limit (at most a quarter of its runtime), so the trainer saves its state within
    the epoch and exits 75 well before SLURM's own SIGTERM and kill; Snakemake's retry resumes it."""
    lead = min(int(config["train"]["stop_signal_s"]), family_resources(wc.neural)["runtime"] * attempt * 60 // 4)
    return f"--signal=TERM@{lead}" if lead > 0 else ""


# One MLP/CNN job's resources (train_neural, train_rung): a retry after an out-of-memory or
# timeout kill gets more of both.
NEURAL_JOB_RESOURCES = dict(
    mem_mb=lambda wc, attempt: family_resources(wc.neural)["mem_mb"] * attempt,
    runtime=lambda wc, attempt: family_resources(wc.neural)["runtime"] * attempt,
    gpu=lambda wc: family_resources(wc.neural)["gpu"],
    gpu_model=lambda wc: gpu_model(family_resources(wc.neural)),
    slurm_extra=stop_signal,
)


# What train_neural and train_rung share. The run directory is the metrics' folder
# (results/runs/... or, for a stage, results/search/...); `stage` is what the search adds
# (train_stage_args / final_stage_args below).
NEURAL_JOB_PARAMS = dict(
    hp=lambda wc: as_arg(COMBOS[wc.neural][wc.combo]),
    device=config["train"]["device"],
    features=lambda wc, input: os.path.dirname(input.labels),
    source=lambda wc, input: neural_source_arg(wc, input),
    run_dir=lambda wc, output: os.path.dirname(output.metrics),
    # Per-epoch resume state: not an output, so a failed job's checkpoint survives the cleanup.
    checkpoint_dir=lambda wc: f"results/checkpoints/{wc.neural}/{wc.combo}",
    # Attempt record (running/failed/diverged/killed, attempts; every stage of a combination):
    # outside the outputs, which Snakemake deletes when the job fails; read by meli.sweep.
    status=lambda wc: f"results/sweep/jobs/{wc.neural}/{wc.combo}.json",
)
# The one training command of train_neural and train_rung (a search's arguments in params.stage).
TRAIN_SHELL = (
    "python -m meli.jobstatus --status {params.status:q} --log {log:q} --"
    " python -m meli.train.neural --family {wildcards.neural} --params {params.hp}"
    " --features {params.features} {params.source} --out-dir {params.run_dir:q}"
    " --checkpoint-dir {params.checkpoint_dir:q}"
    " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb}"
    " --combo {wildcards.combo}"  # the grid's combination id, into metrics.json
    "{params.stage} > {log:q} 2>&1"
)
# A stage job (train_rung): a combination whose training diverges (exit code 3) is recorded as
# such and pruned by the stage's selection, like a failed trial in a tuner, instead of failing
# the job and leaving the whole search waiting for it; any other failure fails the job as usual.
STAGE_SHELL = (
    f"( {TRAIN_SHELL} ) || python -m meli.search diverged --code $? --family {{wildcards.neural}}"
    " {params.select} --params {params.hp} --stage-dir {params.run_dir:q} --snapshot {output.state:q}"
    " --log {log:q} >> {log:q} 2>&1"
)


# ------------------------------------------------ packing (train.pack; rules/train.smk, meli/train/pack.py)
def family_pack(family):
    """train.pack overridden by train.<family>.pack."""
    return int(config["train"].get(family, {}).get("pack") or config["train"]["pack"])


# A searched family's stage jobs and final runs stay one job each (their combinations are known
# only stage by stage): packing applies to grid families.
for _f in NEURAL_FAMILIES:
    if _f in PLANS and family_pack(_f) > 1 and COMBOS[_f]:
        print(f"config train.pack: {_f} is searched in stages ({SEARCH['strategy']}): its stage jobs and final "
              "runs are not packed (one job each)", file=sys.stderr)
PACKED = [f for f in NEURAL_FAMILIES if f not in PLANS and family_pack(f) > 1 and COMBOS[f]]


def _input_key(family, combo):
    params = COMBOS[family][combo]
    return "tfidf" if reads_tfidf(family, params) else params["embedding"]


# {family: {pack id: [combos]}}: fixed by the grid, so the same combination is in the same pack on every parse
PACKS = {f: pack_combos(COMBOS[f], family_pack(f), key=partial(_input_key, f)) for f in PACKED}
PACK_OF = {f: {c: p for p, members in PACKS[f].items() for c in members} for f in PACKED}
# train_neural's families: every neural family not packed ("(?!)" matches nothing).
UNPACKED_RE = "|".join(f for f in NEURAL_FAMILIES if f not in PACKED) or "(?!)"
# The run's files that a pack's member stages and pack_member adopts (train_neural's outputs).
RUN_FILES = ("metrics.json", "history.csv", "model.pt", "val_predictions.parquet")


def pack_stamp(wc):
    """pack_member's input: the stamp of its combination's pack."""
    return f"results/packs/{wc.neural}/{PACK_OF[wc.neural][wc.combo]}.json"


def staged_dir(family, combo):
    return f"results/packs/{family}/staged/{combo}"


def _pack_members(wc):
    try:
        return PACKS[wc.neural][wc.pack]
    except KeyError:
        raise WorkflowError(f"{wc.neural}: no {wc.pack} in this config's packs") from None


def pack_inputs(wc):
    """train_pack's input: every member's data (the splits, and each matrix or the TF-IDF rows)."""
    files = {}
    for combo in _pack_members(wc):
        for key, value in neural_inputs(SimpleNamespace(neural=wc.neural, combo=combo)).items():
            files.setdefault(key, set()).update([value] if isinstance(value, str) else value)
    return {key: sorted(value) for key, value in files.items()}


def pack_members_arg(wc):
    """train_pack's --members: per combination, what its own train_neural job would get."""
    members = []
    for combo in _pack_members(wc):
        inputs = neural_inputs(SimpleNamespace(neural=wc.neural, combo=combo))
        member = {
            "combo": combo,
            "params": COMBOS[wc.neural][combo],
            "run_dir": f"results/runs/{wc.neural}/{combo}",
            "staged_dir": staged_dir(wc.neural, combo),
            "checkpoint_dir": f"results/checkpoints/{wc.neural}/{combo}",
            "status": f"results/sweep/jobs/{wc.neural}/{combo}.json",
            "log": f"results/logs/train/{wc.neural}/{combo}.log",
            "inputs": sorted(f for v in inputs.values() for f in ([v] if isinstance(v, str) else v)),
        }
        if "matrix" in inputs:
            member["matrix"] = inputs["matrix"]
        else:
            member["tfidf"] = os.path.dirname(inputs["tfidf"][0])
        members.append(member)
    return as_arg(members)


# A pack asks for one combination's threads, memory and GPU, and its combinations' runtimes added
# up (they train one after another); a retry gets more memory and time, as a single job does.
PACK_JOB_RESOURCES = dict(
    NEURAL_JOB_RESOURCES,
    runtime=lambda wc, attempt: family_resources(wc.neural)["runtime"] * len(_pack_members(wc)) * attempt,
)


def final_run_dirs(family):
    return [f"results/runs/{family}/{c}" for c in final_combos(family)]


def run_metrics():
    """metrics.json of the runs known at parse time (every family not searched in stages)."""
    return [f"results/runs/{f}/{c}/metrics.json" for f in FAMILIES if f not in SEARCHED for c in COMBOS[f]]


def run_histories():
    return [m.replace("metrics.json", "history.csv") for m in run_metrics()]


def run_outputs():
    """Every run's declared outputs (rules/train.smk, rules/baseline.smk): `rule all` asks for them,
    so a deleted model or run folder is retrained (meli.sweep.run_files lists the same). A searched
    family's final runs are not known yet: its search summary stands for them (search_done needs them)."""
    return [
        f"results/runs/{f}/{c}/{name}"
        for f in FAMILIES
        if f not in SEARCHED
        for c in COMBOS[f]
        for name in ("metrics.json", "history.csv", models.get(f).model_file, "val_predictions.parquet")
    ] + search_summaries()


def run_models():
    """The fitted model of every run known at parse time (model.pt or model.joblib, as its family defines)."""
    return [f"results/runs/{f}/{c}/{models.get(f).model_file}" for f in FAMILIES if f not in SEARCHED for c in COMBOS[f]]


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
    if reads_tfidf(wc.neural, params):
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


def _state(family, stage, combo):
    return f"{stage_dir(family, stage, combo)}/{search.SNAPSHOT}"


def run_inputs(wc):
    """A complete run (train_neural): the data, and for a search's final run the training state at
    the end of its ladder's last stage (none for a one-rung ladder)."""
    inputs = neural_inputs(wc)
    start = PLANS[wc.neural].final_start(wc.combo) if wc.neural in PLANS else None
    if start is not None:
        inputs["state"] = _state(wc.neural, start, wc.combo)
    return inputs


def final_stage_args(wc, input):
    """train_neural's search arguments: a final run records its rung and continues its ladder."""
    if wc.neural not in PLANS:
        return ""
    start = f" --start-from {shlex.quote(input.state)}" if "state" in input.keys() else ""
    return f"{start} --rung {PLANS[wc.neural].final_rung(wc.combo)}"


def stage_inputs(wc):
    """A stage's job: the data, and after rung 0 the previous rung's training state of the same combination."""
    inputs = neural_inputs(wc)
    try:
        stage = PLANS[wc.neural].stage(wc.stage)
    except (KeyError, search.SearchError) as err:
        raise WorkflowError(f"{wc.neural}: no search stage {wc.stage} in this config ({err})") from None
    if stage.previous is not None:
        inputs["state"] = _state(wc.neural, stage.previous, wc.combo)
    return inputs


def train_stage_args(wc, input, output):
    """train_rung's search arguments: the stage's epoch budget, where it continues from, its state and rung."""
    stage = PLANS[wc.neural].stage(wc.stage)
    start = f" --start-from {shlex.quote(input.state)}" if "state" in input.keys() else ""
    return f" --until-epoch {stage.epochs}{start} --snapshot {shlex.quote(output.state)} --rung {stage.rung}"


def stage_records(wc):
    """select_rung's input: the records of the combinations the stage trained."""
    plan = PLANS[wc.neural]
    combos = plan.entering(wc.stage, lambda previous: kept_after(wc.neural, previous))
    return [f"{stage_dir(wc.neural, wc.stage, c)}/metrics.json" for c in combos]


def stage_id_args(wc):
    """--rung R [--bracket B] of a stage (select_rung, and train_rung's diverged record)."""
    stage = PLANS[wc.neural].stage(wc.stage)
    return f"--rung {stage.rung}" + ("" if stage.bracket is None else f" --bracket {stage.bracket}")


def select_args(wc):
    stage = PLANS[wc.neural].stage(wc.stage)
    return f"{stage_id_args(wc)} --keep {stage.keep} --epochs {stage.epochs}"


wildcard_constraints:
    split="train|validation|test",
    family="|".join(FAMILIES),
    neural="|".join(NEURAL_FAMILIES),
    combo="[^/]+",
    emb="[^/]+",
    stage="(bracket-[0-9]+/)?rung-[0-9]+",
    pack="pack-[0-9]+",
