"""Runs read back from a real MLflow store (a SQLite file in a test's temp folder)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from src.runs import metric_points
from src.schema import KIND_TAG, SWEEP_KIND, SWEEP_TAG, default_experiment


def client_for(output_dir: Path) -> MlflowClient:
    """A client of the store a run with paths.output_dir=output_dir writes."""
    return MlflowClient(f"sqlite:///{output_dir}/mlflow.db")


def all_runs_in(output_dir: Path, query: str = "", experiment: str | None = None) -> list:
    """Every run (training runs and sweeps' parent runs) of `experiment` (default: the default
    experiment) in that store matching an MLflow filter `query`; [] where no store or no
    experiment was created (looking creates nothing)."""
    if not (Path(output_dir) / "mlflow.db").exists():
        return []
    client = client_for(output_dir)
    found = client.get_experiment_by_name(experiment or default_experiment())
    return client.search_runs([found.experiment_id], query) if found else []


def runs_in(output_dir: Path, query: str = "", experiment: str | None = None) -> list:
    """The training runs (not the sweeps' parent runs) among all_runs_in."""
    return [run for run in all_runs_in(output_dir, query, experiment) if KIND_TAG not in run.data.tags]


def sweep_runs_in(output_dir: Path, experiment: str | None = None) -> list:
    """The sweeps' parent runs among all_runs_in."""
    return all_runs_in(output_dir, f"tags.{KIND_TAG} = '{SWEEP_KIND}'", experiment)


def only_run(output_dir: Path, sweep_id: str):
    """The one run tagged with sweep_id."""
    runs = runs_in(output_dir, f"tags.{SWEEP_TAG} = '{sweep_id}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


# (step, value) of every logged value of one metric, by step: src.runs' reader, the one the
# figures and the reports read the store with.
history = metric_points
