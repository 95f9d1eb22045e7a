"""Real subprocess runs of `python -m src.run`."""

import pytest
from helpers.cli import run_cli
from helpers.configs import TINY
from helpers.store import client_for, history, runs_in, sweep_runs_in

from src import schema


@pytest.mark.slow  # ~17 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_three_schedule_multirun(tmp_path, data_dir):
    result = run_cli("-m", "schedule=decay_lr,increase_bs,hybrid", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(tmp_path)
    runs = runs_in(tmp_path)
    assert sorted(r.data.tags[schema.SCHEDULE_TAG] for r in runs) == ["decay_lr", "hybrid", "increase_bs"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags[schema.SWEEP_TAG] for r in runs}) == 1
    for run in runs:
        for name in schema.EPOCH_METRICS:
            assert [s for s, _ in history(client, run.info.run_id, name)] == [0, 1, 2], name
    updates = {r.data.tags[schema.SCHEDULE_TAG]: r.data.metrics[schema.TOTAL_PARAM_UPDATES] for r in runs}
    assert updates["increase_bs"] < updates["decay_lr"]
    assert updates["hybrid"] < updates["decay_lr"]

    again = run_cli("-m", "schedule=decay_lr,increase_bs,hybrid", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert again.returncode == 0
    summary = "0 of 3 jobs failed (3 skipped - already FINISHED, nothing trained)"
    assert again.stderr.strip().splitlines()[-1].endswith(summary)
    rerun = runs_in(tmp_path)
    assert len(rerun) == 3  # nothing new ...
    [first, second] = sorted(sweep_runs_in(tmp_path), key=lambda r: r.info.start_time)
    first_id, second_id = (r.data.tags[schema.SWEEP_TAG] for r in (first, second))
    assert second.data.tags[schema.RESULT_TAG] == summary and second.info.status == "FINISHED"
    for run in rerun:  # ... the sweep that trained them is kept, and the re-run sweep holds them too
        assert run.data.tags[schema.SWEEP_TAG] == first_id
        assert run.data.tags[schema.SWEEPS_TAG] == f"{first_id} {second_id}"
        assert run.data.tags["mlflow.parentRunId"] == first.info.run_id


def test_print_config_without_training(tmp_path, data_dir):
    result = run_cli("--cfg", "job", "schedule=hybrid", output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 0
    assert "name: hybrid" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()
