"""The debug group (conf/debug/): each mode composes over the default study and a preset and
passes validation; a real profiled run trains on the first trainer.train_samples samples, logs
its trace and operator table as artifacts, and leaves the process's MLflow settings as they were;
bad sample counts are refused in one line."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import unquote, urlsplit
from pathlib import Path

import pytest
from helpers.configs import DIGITS_N_TRAIN, group_options
from helpers.store import client_for, runs_in

from src import schema
from src.config import validate
from src.errors import ConfigError
from src.profiling import PROFILE_FOLDER, TOP_OPERATORS_FILE, TRACE_FILE
from src.train import train

DEBUG = "debug"  # the experiment the debug modes log to


def test_the_modes_are_fast_overfit_and_profile():
    assert group_options("debug") == ["fast", "overfit", "profile"]


@pytest.mark.parametrize("mode", ["fast", "overfit", "profile"])
@pytest.mark.parametrize("over", [[], ["dataset=digits", "optimizer=adam"], ["schedule=increase_bs"], ["experiment=smoke"]])
def test_each_mode_composes_and_validates(make_cfg, mode, over):
    constant = ["~schedule.milestones"] if mode == "overfit" and "experiment=smoke" in over else []  # overfit.yaml
    cfg = make_cfg(*over, f"debug={mode}", *constant)
    validate(cfg)
    assert cfg.tracking.experiment == DEBUG and cfg.trainer.resume is False
    assert cfg.trainer.train_samples < DIGITS_N_TRAIN  # a few batches, on any data set here


def test_overfit_is_one_batch_at_a_constant_schedule(make_cfg):
    cfg = make_cfg("debug=overfit")
    assert cfg.schedule.name == "constant" and cfg.trainer.train_samples == cfg.schedule.batch_size
    assert make_cfg("debug=overfit", "schedule=increase_bs").schedule.name == "increase_bs"  # the command line's wins
    # a preset's schedule keys that constant does not take: one line (conf/debug/overfit.yaml says so)
    with pytest.raises(ConfigError, match="^schedule.milestones: unknown key; schedule constant does not use it"):
        validate(make_cfg("experiment=smoke", "debug=overfit"))


@pytest.mark.parametrize("override", ["trainer.train_samples=0", "trainer.eval_samples=-5", "trainer.profile_steps=-1"])
def test_bad_sample_and_step_counts_are_refused_naming_the_key(make_cfg, override):
    with pytest.raises(ConfigError) as error:
        validate(make_cfg(override))
    assert str(error.value).startswith(f"{override}: must be >= ")


def test_a_profiled_run_logs_its_trace_on_the_first_samples(make_cfg, tmp_path, blank_store):
    shutil.copy(blank_store, tmp_path / "mlflow.db")
    train(make_cfg("experiment=smoke", "debug=profile", "trainer.threads=1", output_dir=tmp_path))
    assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow's process-wide URI, as it was before the run
    [run] = runs_in(tmp_path, experiment=DEBUG)
    assert run.info.status == "FINISHED"
    assert run.data.metrics[schema.TOTAL_PARAM_UPDATES] == 4 * 640 // 64  # 10 batches of 64 an epoch, 4 epochs
    [dataset] = run.inputs.dataset_inputs
    assert json.loads(dataset.dataset.profile)["n_train"] == 640 < DIGITS_N_TRAIN
    folder = Path(unquote(urlsplit(run.info.artifact_uri).path)) / PROFILE_FOLDER
    trace = json.loads((folder / TRACE_FILE).read_text())
    steps = [event["name"] for event in trace["traceEvents"] if event.get("name", "").startswith("ProfilerStep#")]
    assert steps == ["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4", "ProfilerStep#5", "ProfilerStep#6"]
    assert "aten::mm" in (folder / TOP_OPERATORS_FILE).read_text()
    assert not client_for(tmp_path).search_logged_models([run.info.experiment_id])  # log_weights off in profile
