"""Everything MLflow, behind three calls: prepare_store, tracked_run and TrackedRun.log.

One MLflow run per job. Metrics go in one batched call per epoch (a SQLite write costs ~10 ms
here, so per-metric calls would add up). A run is closed in `finally`: FINISHED when the body
returns, FAILED (with the error in the `error` tag) when it raises, KILLED on Ctrl-C; never left
RUNNING.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from src.schema import CONFIG_HASH_TAG, ERROR_TAG, SUPERSEDED_BY_TAG, SWEEP_TAG, VAL_LOSS

SQLITE_PREFIX = "sqlite:///"
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
# Keys that say where and how a run is recorded or how fast it goes, not what it computes:
# left out of the config hash that identifies a run for skipping and resuming.
NOT_IDENTITY = ("paths", "tracking", "trainer.threads", "trainer.resume", "trainer.eval_batch_size")


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
        return client.create_experiment(tracking.experiment, artifact_location=artifact_location(tracking))


def artifact_location(tracking: DictConfig) -> str | None:
    """Where a new experiment keeps its artifacts. A local store: artifact_root, as a file URI.
    A tracking server (http/https): None, so the server picks its own root (its artifact proxy,
    mlflow-artifacts:/, with `mlflow server --artifacts-destination`) and the runs of every
    machine keep their artifacts in one place."""
    if tracking.uri.startswith(("http://", "https://")):
        return None
    return Path(tracking.artifact_root).resolve().as_uri()


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


def hash_config(cfg: DictConfig) -> str:
    """A short stable hash of the resolved config, NOT_IDENTITY keys left out: the config hash
    that identifies a run (tag CONFIG_HASH_TAG)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    for dotted in NOT_IDENTITY:
        *parents, leaf = dotted.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def runs_with_config(cfg: DictConfig, config_hash: str, status: str | None = None):
    """Training runs of this experiment logged with `config_hash`, newest first."""
    experiment_id = prepare_store(cfg.tracking)  # never the first, unlocked, writer of a store
    query = f"tags.{CONFIG_HASH_TAG} = '{config_hash}'" + (f" and attributes.status = '{status}'" if status else "")
    return MlflowClient(cfg.tracking.uri).search_runs([experiment_id], query, order_by=["attributes.start_time DESC"])


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

    def last_logged_epoch(self) -> int:
        """The highest step with a val_loss, -1 if none."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, VAL_LOSS)), default=-1)

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """One batched write; per-epoch metrics use step = the 0-based epoch."""
        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)


class Untracked:
    """What the ranks other than 0 of a DDP run log through: nothing; rank 0 logs for all."""

    run_id = None

    def last_logged_epoch(self) -> float:
        return math.inf  # never re-logs a checkpointed epoch

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass


def join_sweep(cfg: DictConfig, run_id: str, sweep_id: str) -> None:
    """Move a run that a re-run sweep skips or resumes into that sweep, so the newest sweep holds
    every run of its command (the figures read one sweep at a time)."""
    MlflowClient(cfg.tracking.uri).set_tag(run_id, SWEEP_TAG, sweep_id)


def _close_stale_runs(client: MlflowClient, cfg: DictConfig, config_hash: str, keep: str) -> None:
    """Runs of this config left RUNNING by a process killed before its first checkpoint: nothing
    can resume them, so they are marked KILLED and point at the run that replaces them."""
    for stale in runs_with_config(cfg, config_hash, status="RUNNING"):
        if stale.info.run_id != keep:
            client.set_tag(stale.info.run_id, SUPERSEDED_BY_TAG, keep)
            client.set_terminated(stale.info.run_id, "KILLED")


@contextmanager
def tracked_run(
    cfg: DictConfig, tags: Mapping[str, str], run_name: str, resume_run_id: str | None = None
) -> Iterator[TrackedRun]:
    """Start an MLflow run for one job (or reopen `resume_run_id`), log the resolved config (as
    params and as config.yaml) and its hash, and close the run whatever happens in the block."""
    experiment_id = prepare_store(cfg.tracking)
    client = MlflowClient(cfg.tracking.uri)
    config_hash = hash_config(cfg)
    if resume_run_id:
        run_id = resume_run_id
        client.update_run(run_id, status="RUNNING")
    else:
        all_tags = {**tags, "mlflow.runName": run_name, CONFIG_HASH_TAG: config_hash}
        commit = _git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        run_id = client.create_run(experiment_id, tags=all_tags).info.run_id
    status = "FAILED"
    try:  # from here on, whatever fails, the run is closed in `finally`
        if resume_run_id:
            join_sweep(cfg, run_id, tags[SWEEP_TAG])
            if ERROR_TAG in client.get_run(run_id).data.tags:  # from the attempt that failed
                client.delete_tag(run_id, ERROR_TAG)
        else:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            params = [Param(k, v) for k, v in flatten(resolved).items()]
            for start in range(0, len(params), MAX_PARAMS_PER_CALL):
                client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
            client.log_text(run_id, OmegaConf.to_yaml(resolved), "config.yaml")
        _close_stale_runs(client, cfg, config_hash, keep=run_id)
        yield TrackedRun(client, run_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as error:
        client.log_batch(run_id, tags=[RunTag(ERROR_TAG, f"{type(error).__name__}: {error}"[:5000])])
        raise
    finally:
        client.set_terminated(run_id, status)
