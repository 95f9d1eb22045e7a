"""Everything MLflow, behind three calls: prepare_store, tracked_run and TrackedRun.log.

The store is opened in one place, open_store (prepare_store adds the experiment): whatever stops
it from opening (a URI MLflow cannot use, a folder that cannot be created, a file that is not a
database, a server that does not answer, an experiment name MLflow refuses or has deleted) is
one line naming the key, raised before anything is logged.

One MLflow run per job. Metrics go in one batched call per epoch (a SQLite write costs ~10 ms
here, so per-metric calls would add up). A run is closed in `finally`: FINISHED when the body
returns, FAILED (with the error in the `error` tag) when it raises, KILLED on Ctrl-C; never left
RUNNING.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock
from mlflow.entities import LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST,
                                          ErrorCode)
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from src.config import check_folder
from src.errors import ConfigError, _one_line
from src.schema import CONFIG_HASH_TAG, ERROR_TAG, SUPERSEDED_BY_TAG, SWEEP_TAG, VAL_LOSS

# MLflow announces a fresh SQLite store's table creation at INFO on stderr: two lines before any
# run's output or error; a store being created is no news (the README says where it is).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

SQLITE_PREFIX = "sqlite:///"
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
# Keys that say where and how a run is recorded or how fast it goes, not what it computes:
# left out of the config hash that identifies a run for skipping and resuming.
NOT_IDENTITY = ("paths", "tracking", "trainer.threads", "trainer.resume", "trainer.eval_batch_size")
# How long opening a tracking server may take: one retry, 3 s per attempt, so ~7 s at worst.
# MLflow's own policy (7 retries with exponential backoff, 120 s timeouts: ~4.5 minutes against a
# port nothing listens on) stays for every later request, where riding out a server restart in
# the middle of a long run is what is wanted. MLflow reads these variables at each request.
OPENING_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}


@contextmanager
def _store_lock(uri: str, key: str) -> Iterator[None]:
    """Serialise the first writers of a fresh SQLite store: MLflow's table creation crashes when
    two processes run it at once. Other stores (a server) serialise themselves."""
    if not uri.startswith(SQLITE_PREFIX):
        yield
        return
    db = Path(uri[len(SQLITE_PREFIX) :])
    check_folder(key, db.parent, value=uri)
    with FileLock(db.with_name(db.name + ".lock")):
        yield


def _shown(value: str, most: int = 60) -> str:
    """A value as a message quotes it: a long one cut, with its length."""
    return repr(value) if len(value) <= most else f"{value[:most]!r}... ({len(value)} characters)"


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _not_answering(error: BaseException) -> str | None:
    """Why a request reached no server (refused, no such host, timed out), or None when one
    answered. MLflow wraps the requests library's error, keeping it as the cause or context."""
    import requests

    while error is not None:
        if isinstance(error, requests.exceptions.Timeout):
            return "timed out"
        if isinstance(error, requests.exceptions.ConnectionError):
            text = str(error)
            for reason in ("timed out", "Connection refused", "Name or service not known", "nodename nor servname",
                           "No route to host", "Network is unreachable", "Temporary failure in name resolution"):
                if reason in text:
                    return reason.lower()
            return "no connection"
        error = error.__cause__ or error.__context__
    return None


def _start_a_server(uri: str) -> str:
    """How to start a tracking server where `uri` points."""
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (f"start one there: mlflow server --host {parts.hostname} --port {port} "
            "--backend-store-uri sqlite:///mlflow.db (README: A remote tracking server)")


@contextmanager
def _opening(uri: str, key: str) -> Iterator[None]:
    """Around the first requests to a store: a server gets OPENING_PATIENCE; whatever fails
    becomes a ConfigError, one line naming `key` (tracking.uri, or the figures' --tracking-uri).
    MLflow raises its own exceptions, SQLAlchemy's or the requests library's, so all are caught;
    a ConfigError (a folder, an experiment name) passes as it is."""
    saved = {name: os.environ.get(name) for name in OPENING_PATIENCE}
    retries = logging.getLogger("urllib3.connectionpool")  # warns of each retry: the error says it all
    saved_level = retries.level
    if _is_server(uri):
        os.environ.update(OPENING_PATIENCE)
        retries.setLevel(logging.ERROR)
    try:
        yield
    except ConfigError:
        raise
    except Exception as error:
        reason = _not_answering(error) if _is_server(uri) else None
        if reason:
            raise ConfigError(
                f"{key}={uri}: no MLflow server answers there ({reason}); {_start_a_server(uri)}") from None
        cause = getattr(error, "orig", None) or error  # SQLAlchemy's wrapper: the driver's own message
        detail = cause.message if isinstance(cause, MlflowException) else str(cause)
        raise ConfigError(f"{key}={uri}: MLflow cannot open this store ({type(cause).__name__}: "
                          f"{_one_line(detail)[:300]})") from None
    finally:
        retries.setLevel(saved_level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def open_store(uri: str, key: str = "tracking.uri") -> MlflowClient:
    """A client of the store at `uri`, opened: a SQLite file is created with its tables if
    missing (serialised across processes), a server has answered within OPENING_PATIENCE.
    Raises ConfigError naming `key`."""
    with _opening(uri, key), _store_lock(uri, key):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # the first request: creates the tables, reaches a server
    return client


def prepare_store(tracking: DictConfig) -> str:
    """Open the store as open_store does and create the experiment if missing; return the
    experiment id. Safe to call from many processes at once. Raises ConfigError naming
    tracking.uri, tracking.experiment or tracking.artifact_root when one cannot be used."""
    with _opening(tracking.uri, "tracking.uri"), _store_lock(tracking.uri, "tracking.uri"):
        client = MlflowClient(tracking.uri)
        experiment = client.get_experiment_by_name(tracking.experiment)  # the first request
        if experiment is None:
            location = artifact_location(tracking)
            if location is not None:
                check_folder("tracking.artifact_root", tracking.artifact_root)
            try:
                return client.create_experiment(tracking.experiment, artifact_location=location)
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    if error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE):  # too long, for one
                        raise ConfigError(f"tracking.experiment={_shown(tracking.experiment)}: MLflow refuses "
                                          f"this name ({_one_line(error.message)})") from None
                    raise
                experiment = client.get_experiment_by_name(tracking.experiment)  # another process made it first
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        raise ConfigError(
            f"tracking.experiment={tracking.experiment!r}: deleted in {tracking.uri} (id {experiment.experiment_id}); "
            f"restore it (MLFLOW_TRACKING_URI={tracking.uri} mlflow experiments restore -x {experiment.experiment_id}) "
            "or choose another name")
    return experiment.experiment_id


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


def run_is_in_store(cfg: DictConfig, run_id: str | None) -> bool:
    """Whether MLflow run `run_id` is in this config's store and experiment, not deleted."""
    if run_id is None:
        return False
    experiment_id = prepare_store(cfg.tracking)
    try:
        run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == LifecycleStage.ACTIVE


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

    def last_logged_epoch(self) -> int:
        return -1  # logs nothing, so holds nothing

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
