"""A diverging combination in a search (issue 22): its stage job leaves a `diverged` record instead of
failing, the stage's selection prunes it as the worst of its rung, and the search goes on."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TINY_CONFIG, snakemake
from meli import runs, search
from meli.search import SearchError, select_rung
from meli.search.__main__ import main
from test_search import write_rung_record


def _diverged(stage: Path, combo: str, code: int = 3) -> int:
    log = stage.parent / f"{combo}.log"
    log.write_text("epoch 1/6: ...\nmeli.train.neural: training diverged: mean train loss 4.2e+19 at epoch 2\n")
    return main(["diverged", "--code", str(code), "--family", "mlp", "--rung", "0", "--params", '{"lr": 1000000.0}',
                 "--stage-dir", str(stage / combo), "--snapshot", str(stage / combo / search.SNAPSHOT),
                 "--log", str(log)])


def test_a_diverged_combination_is_recorded_and_always_pruned(tmp_path):
    stage = tmp_path / "search" / "mlp" / "rung-0"
    write_rung_record(stage / "a", "a", 0.5, 1.0)
    write_rung_record(stage / "b", "b", 0.4, 1.0)
    assert _diverged(stage, "x", code=1) == 1 and not (stage / "x").exists()  # any other failure stays a failure
    assert _diverged(stage, "x") == 0
    record = runs.read_metrics(stage / "x")
    assert record["diverged"] is True and record["val_bacc"] == 0.0 and record["rung"] == 0
    assert "training diverged" in record["detail"] and (stage / "x" / search.SNAPSHOT).exists()
    # keep 3 of 3: the diverged one is still pruned (nothing can continue from it), ranked last
    sel = select_rung([stage / c for c in "abx"], "mlp", 0, 3, stage / "selection.json", stage / "pruned", 2)
    assert sel["kept"] == ["a", "b"] and sel["pruned"] == ["x"]
    assert sel["ranking"][-1] == {"combo": "x", "val_bacc": 0.0, "val_loss": None, "epochs_run": 0,
                                  "stopped_early": None, "kept": False, "diverged": True}
    assert not (stage / "x" / search.SNAPSHOT).exists()
    assert runs.read_metrics(stage / "pruned" / "x")["pruned_at_rung"] == 0
    # every combination diverged: a clear error, nothing to continue
    only = tmp_path / "only" / "rung-0"
    only.mkdir(parents=True)
    _diverged(only, "y")
    with pytest.raises(SearchError, match="every combination of this stage diverged"):
        select_rung([only / "y"], "mlp", 0, 1, only / "selection.json", only / "pruned", 2)


@pytest.mark.workflow
def test_a_diverging_learning_rate_does_not_block_a_halving_search(tiny_run, tmp_path):
    """lr 1e6 among three: its rung-0 job records the divergence, the selection prunes it, the search
    ends with its final run and the report; a rerun does nothing."""
    wf = tmp_path / "wf"
    shutil.copytree(tiny_run[0], wf, symlinks=True)
    shutil.rmtree(wf / "results" / "runs" / "mlp")
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["train"]["search"] = {"strategy": "halving", "eta": 3, "min_epochs": 2}
    cfg["train"]["mlp"]["grid"].update(lr=[0.03, 0.01, 1e6], epochs=[6], patience=[6])
    config = tmp_path / "diverging.yaml"
    config.write_text(yaml.safe_dump(cfg))
    snakemake(wf, "--cores", "2", "--configfile", str(config))
    res = wf / "results"
    sel = json.loads((res / "search" / "mlp" / "rung-0" / "selection.json").read_text())
    [diverged] = [r["combo"] for r in sel["ranking"] if r.get("diverged")]
    assert "lr-1e+06" in diverged and diverged in sel["pruned"] and len(sel["kept"]) == 1
    assert json.loads((res / "sweep" / "jobs" / "mlp" / f"{diverged}.json").read_text())["state"] == "diverged"
    assert (res / "runs" / "mlp" / sel["kept"][0] / "model.pt").exists()
    selection = json.loads((res / "tables" / "selection.json").read_text())["families"]["mlp"]
    assert selection["combo"] == sel["kept"][0] and selection["n_pruned"] == 2
    assert (res / "report.html").exists()
    proc = snakemake(wf, "--cores", "2", "--configfile", str(config))
    assert "Nothing to be done" in proc.stdout + proc.stderr
