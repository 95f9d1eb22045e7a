"""examples/my_study: a user's own dataset function and model class, their YAML in the user's own
config folder, trained by a real `python -m src.run --config-dir` run from outside the project's
conf/, then drawn by `python -m src.figures`; a dataset function that returns anything but a
valid src.data.Dataset is one line naming its _target_, exit 2, and no run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers.configs import ROOT
from helpers.store import all_runs_in, runs_in

EXAMPLE = ROOT / "examples" / "my_study"


def src_module(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    # The user's package imports from their folder; the project's root is on the path too, because
    # Hydra finds the study sweeper by scanning the hydra_plugins namespace, which an editable
    # install (pip install -e) does not expose outside the project's folder.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow  # ~12 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_the_example_trains_from_its_own_config_folder_and_draws_its_figures(tmp_path, blank_store):
    user = tmp_path / "my_study"
    shutil.copytree(EXAMPLE, user, ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    (user / "outputs").mkdir()
    shutil.copy(blank_store, user / "outputs" / "mlflow.db")
    result = src_module("src.run", "-m", "--config-dir", "conf", "dataset=blobs", "model=two_layer",
                        "schedule=decay_lr,increase_bs", "trainer.epochs=2", "schedule.milestones=[1]", cwd=user)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_in(user / "outputs")
    assert sorted(r.data.tags["schedule"] for r in runs) == ["decay_lr", "increase_bs"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "blobs"
        assert run.data.params["model._target_"] == "my_study.model.TwoLayer"
        assert run.data.metrics["final_val_acc"] > 0.5  # 4 well-separated blobs: chance is 0.25
        assert run.data.metrics["model_parameters"] == 8 * 32 + 32 + 32 * 4 + 4  # TwoLayer(width=32) on 8 features
    figures = src_module("src.figures", cwd=user)  # the store and folder of conf/config.yaml, under cwd
    assert figures.returncode == 0, figures.stderr[-3000:]
    assert list((user / "outputs" / "figures").rglob("report.md"))


def test_a_dataset_function_that_returns_a_tuple_is_one_line_and_no_run(tmp_path, blank_store):
    user = tmp_path / "bad"
    (user / "conf" / "dataset").mkdir(parents=True)
    (user / "bad_data.py").write_text("import torch\n\ndef make(n):\n    return torch.zeros(n, 3), torch.zeros(n)\n")
    (user / "conf" / "dataset" / "bad.yaml").write_text("_target_: bad_data.make\nn: 10\n")
    (user / "outputs").mkdir()
    shutil.copy(blank_store, user / "outputs" / "mlflow.db")
    result = src_module("src.run", "--config-dir", "conf", "dataset=bad", cwd=user)
    assert result.returncode == 2
    assert result.stderr == ("error: dataset._target_=bad_data.make: must return a src.data.Dataset (README: Your "
                             "own data and model); returned tuple\n")
    assert all_runs_in(user / "outputs") == []
