"""Everything MLflow, behind three calls: prepare_store, tracked_run and TrackedRun.log.

One MLflow run per job. Metrics go in one batched call per epoch (a SQLite write costs ~10 ms
here, so per-metric calls would add up). A run is closed in `finally`: FINISHED when the body
returns, FAILED (with the error in the `error` tag) when it raises, KILLED on Ctrl-C; never left
RUNNING.
"""

from __future__ import annotations

import fcntl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

SQLITE_PREFIX = "sqlite:///"
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise the first writers of a fresh SQLite store: MLflow's table creation crashes when
    two processes run it at once. Other stores (a server) serialise themselves."""
    if not uri.startswith(SQLITE_PREFIX):
        yield
        return
    db = Path(uri[len(SQLITE_PREFIX) :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare_store(tracking: DictConfig) -> str:
    """Create the store (tables) and the experiment if missing; return the experiment id.
    Safe to call from many processes at once."""
    with _store_lock(tracking.uri):
        client = MlflowClient(tracking.uri)
        experiment = client.get_experiment_by_name(tracking.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = Path(tracking.artifact_root).resolve().as_uri()
        return client.create_experiment(tracking.experiment, artifact_location=artifacts)


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class TrackedRun:
    """The handle the training loop logs through."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """One batched write; per-epoch metrics use step = the 0-based epoch."""
        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)


@contextmanager
def tracked_run(cfg: DictConfig, tags: Mapping[str, str], run_name: str) -> Iterator[TrackedRun]:
    """Start an MLflow run for one job, log the resolved config (as params and as config.yaml),
    and close the run whatever happens inside the block."""
    experiment_id = prepare_store(cfg.tracking)
    client = MlflowClient(cfg.tracking.uri)
    all_tags = {**tags, "mlflow.runName": run_name}
    commit = _git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    run_id = client.create_run(experiment_id, tags=all_tags).info.run_id
    status = "FAILED"
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        params = [Param(k, v) for k, v in flatten(resolved).items()]
        for start in range(0, len(params), MAX_PARAMS_PER_CALL):
            client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
        client.log_text(run_id, OmegaConf.to_yaml(resolved), "config.yaml")
        yield TrackedRun(client, run_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as error:
        client.log_batch(run_id, tags=[RunTag("error", f"{type(error).__name__}: {error}"[:5000])])
        raise
    finally:
        client.set_terminated(run_id, status)
