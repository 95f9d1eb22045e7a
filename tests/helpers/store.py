"""Runs read back from a real MLflow store (a SQLite file in a test's temp folder)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from src.schema import SWEEP_TAG, default_experiment


def client_for(output_dir: Path) -> MlflowClient:
    """A client of the store a run with paths.output_dir=output_dir writes."""
    return MlflowClient(f"sqlite:///{output_dir}/mlflow.db")


def runs_in(output_dir: Path, query: str = "") -> list:
    """The runs of the default experiment in that store matching an MLflow filter `query`;
    [] where no store or no experiment was created (looking creates nothing)."""
    if not (Path(output_dir) / "mlflow.db").exists():
        return []
    client = client_for(output_dir)
    experiment = client.get_experiment_by_name(default_experiment())
    return client.search_runs([experiment.experiment_id], query) if experiment else []


def only_run(output_dir: Path, sweep_id: str):
    """The one run tagged with sweep_id."""
    runs = runs_in(output_dir, f"tags.{SWEEP_TAG} = '{sweep_id}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of one metric, by step."""
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]
