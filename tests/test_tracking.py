"""src/tracking.py against a real MLflow store: a failing job's run, params, and many processes
creating one fresh store at once."""

import subprocess
import sys

import pytest
from helpers.configs import ROOT, TINY
from helpers.store import client_for, history, runs_in

from src import schema
from src.sweep_record import sweep_so_far
from src.tracking import flatten, tracked_run


def test_a_raising_job_ends_failed_with_the_error(make_cfg, shared_store):
    cfg = make_cfg(*TINY, "tracking.sweep_id=raises")
    with pytest.raises(RuntimeError, match="boom"):
        with tracked_run(cfg, {schema.SWEEP_TAG: "raises", schema.CONFIG_HASH_TAG: "raises"}, run_name="raises") as run:
            run.log({schema.VAL_LOSS: 1.0}, step=0)
            raise RuntimeError("boom")
    [failed] = runs_in(shared_store, f"tags.{schema.SWEEP_TAG} = 'raises'")
    assert failed.info.status == "FAILED"
    assert failed.data.tags[schema.ERROR_TAG] == "RuntimeError: boom"
    assert failed.data.metrics[schema.VAL_LOSS] == 1.0  # what was logged before the error is kept


def test_a_parent_run_that_is_not_a_sweeps_gives_no_job_count(make_cfg, shared_store):
    """tracking.parent_run_id set by hand to a plain run (no jobs tag): the run nests under it."""
    client = client_for(shared_store)
    parent_cfg = make_cfg(*TINY, "tracking.sweep_id=plain-parent")
    with tracked_run(parent_cfg, {schema.SWEEP_TAG: "plain-parent", schema.CONFIG_HASH_TAG: "plain-parent"}, run_name="plain parent") as parent:
        pass
    cfg = make_cfg(*TINY, "tracking.sweep_id=nested", f"tracking.parent_run_id={parent.run_id}")
    with tracked_run(cfg, {schema.SWEEP_TAG: "nested", schema.CONFIG_HASH_TAG: "nested"}, run_name="nested") as run:
        assert sweep_so_far(cfg.tracking) == (None, [])  # no count; no child run has ended
    assert client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    ended = client.get_run(run.run_id).info
    assert sweep_so_far(cfg.tracking) == (None, [(ended.end_time - ended.start_time) / 1000])


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


@pytest.mark.slow
def test_four_processes_into_one_fresh_store(tmp_path, data_dir):
    """4 sweeps of 2 jobs started at the same moment into a store that does not exist yet."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "src.run", "-m", "schedule=decay_lr,increase_bs", *TINY,
             f"trainer.seed={seed}", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for seed in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    runs = runs_in(tmp_path)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    sweeps = [r.data.tags[schema.SWEEP_TAG] for r in runs]
    assert sorted(sweeps.count(s) for s in set(sweeps)) == [2, 2, 2, 2]  # one id per sweep, never shared
    client = client_for(tmp_path)
    for run in runs:
        for name in schema.EPOCH_METRICS:
            assert [s for s, _ in history(client, run.info.run_id, name)] == [0, 1, 2], name
