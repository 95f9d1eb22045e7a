"""The study sweeper (hydra_plugins/study_sweeper): every job validated before any starts, a
failing job isolated from the others, and the summary line."""

import re

import pytest
from helpers.cli import run_cli
from helpers.configs import TINY, compose_config
from helpers.store import runs_in, sweep_runs_in
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from hydra_plugins.study_sweeper.study_sweeper import _quoted, _tracking_overrides, _varying_keys
from src import schema


@pytest.mark.slow  # ~20 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_a_diverging_job_fails_alone(tmp_path, data_dir):
    result = run_cli("-m", "schedule.lr=0.05,1e6,0.1", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "1 of 3 jobs failed" in last_line, result.stderr[-2000:]
    [told] = [line for line in result.stderr.splitlines() if ") failed: " in line]
    assert "job 1 (schedule.lr=1000000.0 " in told and "Diverged" in told, told
    assert "tracking." not in told.split(") failed: ")[0], told  # the user's overrides, not the sweeper's
    runs = runs_in(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]
    [failed] = [r for r in runs if r.info.status == "FAILED"]
    assert failed.data.params["schedule.lr"] == "1000000.0"
    assert failed.data.tags[schema.ERROR_TAG].startswith("Diverged: loss is nan")
    # the sweep's table marks the failed job, here and in its parent run's description
    [row] = [line for line in result.stdout.splitlines() if line.startswith("  decay_lr schedule.lr=1000000.0 seed=0")]
    assert row.split()[3:6] == ["FAILED", "Diverged:", "loss"], row
    [parent] = sweep_runs_in(tmp_path)
    assert "| decay_lr schedule.lr=1000000.0 seed=0 | FAILED | Diverged: loss is nan" in parent.data.tags[MLFLOW_RUN_NOTE]

    # again: the finished jobs are skipped, each still told as job k/n, and the table says so
    again = run_cli("-m", "schedule.lr=0.05,1e6,0.1", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert again.returncode == 1
    for number, lr in ((1, 0.05), (3, 0.1)):
        name = f"decay_lr schedule.lr={lr} seed=0"
        assert re.search(rf"\[job {number}/3 {name}\] already FINISHED as MLflow run \w+ \(config \w+\): skipped",
                         again.stdout), again.stdout[-3000:]
        assert re.search(rf"(?m)^  {name} +skipped +\d+\.\d\d% +\d+ +\d+\.\d s$", again.stdout)


def test_a_bad_job_stops_a_sweep_before_any_job_starts(tmp_path, data_dir):
    result = run_cli("-m", "schedule.factor=2,1", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: job 1 (schedule.factor=1")
    assert not list(tmp_path.iterdir())  # no store, no experiment, no sweep folder


def test_a_job_whose_composition_fails_stops_the_sweep_too(tmp_path, data_dir):
    result = run_cli("-m", "trainer.epochs=3,abc", *TINY[:1], *TINY[2:], output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: job 1 (trainer.epochs=abc") and "trainer.epochs" in last_line, last_line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["decay_lr model.hidden=[64,32] seed=0", "it's", "a ${oc.env:HOME} b",
                                  "back\\slash", "ends in \\", "q\\'", "two\\\\ x", "tag=\\${literal}",
                                  "a \\\\${x} b"])
def test_a_run_name_reaches_the_job_as_given(name):
    """The sweeper hands each job its name as an override: quotes, backslashes and ${...} come
    through Hydra's parser and OmegaConf's interpolation unchanged."""
    assert compose_config(f"tracking.run_name={_quoted(name)}").tracking.run_name == name


def test_each_job_is_named_by_what_varies_and_joins_the_parent_in_its_store():
    jobs = [["trainer.epochs=3", f"optimizer={o}", f"schedule={s}", f"trainer.seed={seed}"]
            for o in ("momentum", "adam") for s in ("decay_lr", "hybrid") for seed in (0, 1)]
    jobs[-1].append("+tracking.tags.extra=1")  # a key only one job has varies too
    varying = _varying_keys(jobs)
    assert varying == {"optimizer", "schedule", "trainer.seed", "tracking.tags.extra"}
    parent_store = compose_config().tracking
    named = []
    for job in jobs:
        extra = _tracking_overrides(job, compose_config(*job), varying, "abc123", parent_store, "s-2")
        assert extra[:2] == ["tracking.sweep_id='s-2'", "tracking.parent_run_id=abc123"]
        named.append(compose_config(*job, extra[2]).tracking.run_name)
    assert named[0] == "decay_lr optimizer=momentum seed=0"
    assert named[-1] == "hybrid optimizer=adam tracking.tags.extra=1 seed=1"
    assert len(set(named)) == len(jobs)
    elsewhere = compose_config("tracking.experiment=other")  # a job logging to another experiment
    assert _tracking_overrides(jobs[0], elsewhere, varying, "abc123", parent_store, "s")[1].startswith(
        "tracking.run_name=")
