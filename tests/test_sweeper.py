"""The study sweeper (hydra_plugins/study_sweeper): every job validated before any starts, a
failing job isolated from the others, and the summary line."""

from helpers.cli import run_cli
from helpers.configs import TINY
from helpers.store import runs_in

from src import schema


def test_a_diverging_job_fails_alone(tmp_path, data_dir):
    result = run_cli("-m", "schedule.lr=0.05,1e6,0.1", *TINY, output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "1 of 3 jobs failed" in last_line, result.stderr[-2000:]
    runs = runs_in(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]
    [failed] = [r for r in runs if r.info.status == "FAILED"]
    assert failed.data.params["schedule.lr"] == "1000000.0"
    assert failed.data.tags[schema.ERROR_TAG].startswith("Diverged: loss is nan")


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
