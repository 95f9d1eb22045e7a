"""Everything MLflow, behind a few calls: prepare_store, tracked_run and TrackedRun.log for a
training run; start_sweep and end_sweep for the parent run of a multirun.

The store is opened in one place, open_store (prepare_store adds the experiment; readers use
open_existing_store, which creates nothing and refuses what is not an MLflow store): whatever stops
it from opening (a URI MLflow cannot use, a folder that cannot be created, a file that is not a
database, a server that does not answer, an experiment name MLflow refuses or has deleted) is
one line naming the key, raised before anything is logged.

One MLflow run per job; a multirun is one parent run (created by the study sweeper in the
launching process) with its jobs as child runs (MLflow's mlflow.parentRunId tag, which the UI
groups by). Metrics go in one batched call per epoch (a SQLite write costs ~10 ms here, so
per-metric calls would add up). A run is closed in `finally`: FINISHED when the body returns,
FAILED (with the error in the `error` tag) when it raises, KILLED on Ctrl-C. A process killed
hard (kill -9, out of memory) cannot close its run: every run records its pid and host, and the
next run or sweep of the experiment on that host closes the runs whose process is gone
(src.processes.close_dead_runs), so none stays RUNNING.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from filelock import FileLock
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST,
                                          ErrorCode)
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError
from src.files import check_folder
from src.processes import close_dead_runs, process_tags
from src.schema import (
    COMMAND_TAG, CONFIG_ARTIFACT, CONFIG_HASH_TAG, ENDED_BY_TAG, ERROR_TAG, JOBS_TAG, KIND_TAG, RESULT_TAG, RUN_NAME_TAG,
    SUPERSEDED_BY_TAG, SWEEP_KIND, SWEEP_TAG, SWEEPS_TAG, VAL_LOSS,
)

if TYPE_CHECKING:
    from src.data import Dataset

# What an experiment is for, to MLflow 3: model training (runs, metrics, the runs table), not
# GenAI development (traces, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# MLflow 3.17's UI takes GenAI or model training from its own toggle (top left; GenAI until a
# browser has chosen), not from the tag, so the links we print ask for model training.
UI_MODEL_TRAINING = "workflowType=machine_learning"
# Tags MLflow's context providers (mlflow.tracking.context) resolve: user, source file and type,
# git commit, branch and repository. A sweep's jobs take their parent's (below).
CONTEXT_PREFIXES = ("mlflow.user", "mlflow.source.")

# MLflow announces a fresh SQLite store's table creation at INFO on stderr: two lines before any
# run's output or error; a store being created is no news (the README says where it is). And it
# logs every database error it re-raises at ERROR, with the SQL statement and a traceback (a
# screen per failed write on a full or locked store): the error itself is told in one line
# (store_error_text), so only what it never raises gets through.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
# Keys that say where a run reads or writes, how it is recorded or how fast it goes, not what it
# computes: left out of the config hash that identifies a run for skipping and resuming, and out
# of the figures' groups (src.figures.identity). Every path-valued key is here (paths, and the
# dataset keys that interpolate ${paths.data_dir}; tests/test_identity.py checks every option of
# conf/), as is dataset.download: the data themselves enter the identity by their digest
# (hash_config's data_digest), so moving them, or another folder per node, changes nothing.
NOT_IDENTITY = ("paths", "tracking", "dataset.data_dir", "dataset.cache_dir", "dataset.download",
                "trainer.threads", "trainer.resume", "trainer.eval_batch_size")
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
    if db.exists() and not db.is_file():  # MLflow would retry opening it for ~2 minutes
        raise ConfigError(f"{key}={uri}: {db} is a folder (or another non-file), not an SQLite store; "
                          "move it away or point tracking.uri elsewhere")
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
                          f"{detail[:300]})") from None
    finally:
        retries.setLevel(saved_level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def is_store_error(error: BaseException) -> bool:
    """Whether MLflow's store failed (a full disk, a read-only or locked file, a server gone):
    MLflow's own exception or SQLAlchemy's, which a run cannot do anything about."""
    return type(error).__module__.split(".")[0] in ("mlflow", "sqlalchemy")


def store_error_text(error: BaseException) -> str:
    """A store's error in one line: SQLAlchemy's text without the statement and parameters it
    appends (screens of SQL that say nothing more)."""
    return " ".join(str(error).split("[SQL:")[0].split("(Background on this error")[0].split())


def open_store(uri: str, key: str = "tracking.uri") -> MlflowClient:
    """A client of the store at `uri`, opened: a SQLite file is created with its tables if
    missing (serialised across processes), a server has answered within OPENING_PATIENCE.
    Raises ConfigError naming `key`."""
    with _opening(uri, key), _store_lock(uri, key):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # the first request: creates the tables, reaches a server
    return client


# The tables by which a SQLite file is an MLflow store: those every MLflow version has made.
MLFLOW_TABLES = ("alembic_version", "experiments", "runs", "metrics", "params", "tags")


def _check_sqlite_store(db: Path, key: str, uri: str, hint: str) -> None:
    """Raise ConfigError unless `db` is a SQLite file with MLflow's tables, looked at read-only:
    MLflow itself would create a missing file, and its ~40 tables in any other database."""
    import sqlite3

    if not db.exists():
        raise ConfigError(f"no MLflow store at {db}" + (f" ({hint})" if hint else ""))
    if not db.is_file():
        raise ConfigError(f"{key}={uri}: {db} is a folder (or another non-file), not an MLflow store")
    try:  # mode=ro: never a journal, a lock or a table written
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        raise ConfigError(f"{key}={uri}: {db} is not an SQLite database ({error}), so not an MLflow store") from None
    missing = [table for table in MLFLOW_TABLES if table not in tables]
    if missing:
        raise ConfigError(f"{key}={uri}: {db} is not an MLflow store (an SQLite file without MLflow's tables "
                          f"{', '.join(missing)}); left as it is")


def open_existing_store(uri: str, key: str = "tracking.uri", hint: str = "") -> MlflowClient:
    """A client of the store at `uri` for reading runs back: open_store without creating anything.
    A SQLite store must exist and be MLflow's (checked read-only, before MLflow touches it);
    a missing one is `no MLflow store at <path> (<hint>)`. Raises ConfigError naming `key`."""
    if uri.startswith(SQLITE_PREFIX):
        _check_sqlite_store(Path(uri[len(SQLITE_PREFIX) :]), key, uri, hint)
    with _opening(uri, key):  # no _store_lock: an existing store's tables are not created again
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
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
                return client.create_experiment(tracking.experiment, artifact_location=location,
                                                tags=experiment_tags(tracking))
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    if error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE):  # too long, for one
                        raise ConfigError(f"tracking.experiment={_shown(tracking.experiment)}: MLflow refuses "
                                          f"this name ({error.message})") from None
                    raise
                experiment = client.get_experiment_by_name(tracking.experiment)  # another process made it first
        if experiment.lifecycle_stage == LifecycleStage.DELETED:
            raise ConfigError(
                f"tracking.experiment={tracking.experiment!r}: deleted in {tracking.uri} (id "
                f"{experiment.experiment_id}); restore it (MLFLOW_TRACKING_URI={tracking.uri} mlflow experiments "
                f"restore -x {experiment.experiment_id}) or choose another name")
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # created before experiments had a kind
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def experiment_tags(tracking: DictConfig) -> dict[str, str]:
    """A new experiment's tags: the MLflow 3 UI opens it on its runs (model training), with
    tracking.description as its description."""
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, MLFLOW_RUN_NOTE: tracking.description}


def artifact_location(tracking: DictConfig) -> str | None:
    """Where a new experiment keeps its artifacts. A local store: artifact_root, as a file URI.
    A tracking server (http/https): None, so the server picks its own root (its artifact proxy,
    mlflow-artifacts:/, with `mlflow server --artifacts-destination`) and the runs of every
    machine keep their artifacts in one place."""
    if _is_server(tracking.uri):
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


def hash_config(cfg: DictConfig, data_digest: str | None) -> str:
    """A short stable hash of the resolved config, NOT_IDENTITY keys left out, and of
    `data_digest` (Dataset.digest of the data the run trains on): the config hash that identifies
    a run (tag CONFIG_HASH_TAG, its checkpoint's name). None: the config alone, for what must be
    decided before the data are loaded (src.train's lock)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    plain["data_digest"] = data_digest
    for dotted in NOT_IDENTITY:
        *parents, leaf = dotted.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def runs_with_config(cfg: DictConfig, config_hash: str, status: str | None = None, experiment_id: str | None = None):
    """Training runs of this experiment logged with `config_hash`, newest first. `experiment_id`:
    the experiment's, from prepare_store; None: prepared here."""
    if experiment_id is None:
        experiment_id = prepare_store(cfg.tracking)  # never the first, unlocked, writer of a store
    query = f"tags.{CONFIG_HASH_TAG} = '{config_hash}'" + (f" and attributes.status = '{status}'" if status else "")
    return MlflowClient(cfg.tracking.uri).search_runs([experiment_id], query, order_by=["attributes.start_time DESC"])


def run_is_in_store(cfg: DictConfig, run_id: str | None, experiment_id: str) -> bool:
    """Whether MLflow run `run_id` is in this config's store and experiment (`experiment_id`, from
    prepare_store), not deleted."""
    if run_id is None:
        return False
    try:
        run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == LifecycleStage.ACTIVE


def run_url(tracking: DictConfig, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, in its model-training view: on the tracking server
    itself, or where `mlflow ui` serves a local store (tracking.ui_url)."""
    server = tracking.uri if _is_server(tracking.uri) else tracking.ui_url
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_MODEL_TRAINING}"


def ui_command(tracking: DictConfig) -> str | None:
    """The command that serves a local store in the UI; None for a tracking server (its own UI)."""
    if _is_server(tracking.uri):
        return None
    port = tracking.ui_url.rstrip("/").rsplit(":", 1)[-1]
    return f"mlflow ui --backend-store-uri {tracking.uri}" + ("" if port == "5000" else f" --port {port}")


def dataset_input(data: Dataset) -> DatasetInput:
    """The data set as an MLflow dataset input (the runs table's Dataset column): its name, its
    digest (Dataset.digest: the samples themselves), where it came from, and a profile with N
    train / validation / test, the classes and the input shape."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # file: and the empty scheme both resolve to MLflow's local source
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(data.source)
    meta = MetaDataset(source, name=data.name, digest=data.digest()).to_dict()
    profile = {"n_train": data.n_train, "n_val": data.n_val, "n_test": data.n_test, "n_classes": data.n_classes,
               "input_shape": list(data.input_shape)}
    entity = DatasetEntity(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"],
                           source=meta["source"], profile=json.dumps(profile))
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])


class TrackedRun:
    """The handle the training loop logs through."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, sweep_jobs: int | None = None):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.sweep_jobs = sweep_jobs  # how many jobs the run's sweep launched; None: not in a sweep

    def last_logged_epoch(self) -> int:
        """The highest step with a val_loss, -1 if none."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, VAL_LOSS)), default=-1)

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """One batched write; per-epoch metrics use step = the 0-based epoch."""
        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_dataset(self, data: Dataset) -> None:
        self.client.log_inputs(self.run_id, datasets=[dataset_input(data)])

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)


class Untracked:
    """What the ranks other than 0 of a DDP run log through: nothing; rank 0 logs for all."""

    run_id = experiment_id = sweep_jobs = None

    def last_logged_epoch(self) -> int:
        return -1  # logs nothing, so holds nothing

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_dataset(self, data: Dataset) -> None:
        pass

    def log_artifact(self, path: Path, folder: str) -> None:
        pass


def join_sweep(cfg: DictConfig, run_id: str, sweep_id: str) -> dict[str, str]:
    """Add a re-run sweep that skips or resumes a run to the run's SWEEPS_TAG, so the newest sweep
    holds every run of its command (the figures read one sweep at a time) while its sweep_id
    keeps the sweep that trained it. Returns the run's tags as they were read."""
    client = MlflowClient(cfg.tracking.uri)
    tags = client.get_run(run_id).data.tags
    sweeps = tags.get(SWEEPS_TAG, tags.get(SWEEP_TAG, "")).split()
    if sweep_id not in sweeps:
        client.set_tag(run_id, SWEEPS_TAG, " ".join([*sweeps, sweep_id]))
    return tags


def _close_stale_runs(client: MlflowClient, cfg: DictConfig, config_hash: str, keep: str, experiment_id: str) -> None:
    """Runs of this config left RUNNING by a process killed before its first checkpoint: nothing
    can resume them, so they are marked KILLED and point at the run that replaces them."""
    for stale in runs_with_config(cfg, config_hash, status="RUNNING", experiment_id=experiment_id):
        if stale.info.run_id != keep:
            client.set_tag(stale.info.run_id, SUPERSEDED_BY_TAG, keep)
            client.set_terminated(stale.info.run_id, "KILLED")


def _launch_tags(client: MlflowClient, tracking: DictConfig) -> tuple[dict[str, str], int | None]:
    """(the tags that say where a run was launched from, the number of jobs of its sweep).
    A sweep's job takes its parent run's context tags and command: the launching process
    resolved them, where sys.argv names src.run (a submitit worker's names submitit). Any other
    run resolves them itself with MLflow's context providers."""
    if tracking.parent_run_id:
        parent = client.get_run(tracking.parent_run_id).data.tags
        launch = {k: v for k, v in parent.items() if k.startswith(CONTEXT_PREFIXES) or k == COMMAND_TAG}
        launch[MLFLOW_PARENT_RUN_ID] = tracking.parent_run_id
        jobs = int(parent[JOBS_TAG]) if JOBS_TAG in parent else None  # a parent that is not a sweep's: no count
    else:
        launch, jobs = resolve_tags(), None
    if tracking.note:
        launch[MLFLOW_RUN_NOTE] = tracking.note
    return launch, jobs


def _system_metrics(tracking: DictConfig, run_id: str, resumed: bool):
    """MLflow's system-metrics monitor for the run, started; None when tracking.system_metrics is
    off. (psutil, which it needs, is checked with the config: src.config.)"""
    if not tracking.system_metrics:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=tracking.system_metrics_every_s,
                                   resume_logging=resumed, tracking_uri=tracking.uri)
    monitor.start()
    return monitor


@contextmanager
def tracked_run(
    cfg: DictConfig, tags: Mapping[str, str], run_name: str, resume_run_id: str | None = None,
    experiment_id: str | None = None,
) -> Iterator[TrackedRun]:
    """Start an MLflow run for one job (or reopen `resume_run_id`): its tags, MLflow's context
    tags, tracking.tags and tracking.note, the parent of a sweep's job; log the resolved config
    (as params and as config.yaml), and close the run whatever happens in the block. The run's
    identity, hash_config of the config and its data, comes in `tags` (CONFIG_HASH_TAG: src.train).
    `experiment_id`: from prepare_store; None: prepared here. Nothing in the block prepares the
    store again, so the short patience of opening it never applies to a run that exists."""
    if experiment_id is None:
        experiment_id = prepare_store(cfg.tracking)
    client = MlflowClient(cfg.tracking.uri)
    config_hash = tags[CONFIG_HASH_TAG]
    launch_tags, sweep_jobs = _launch_tags(client, cfg.tracking)
    close_dead_runs(client, experiment_id)
    if resume_run_id:
        run_id = resume_run_id
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in process_tags().items()])
        client.update_run(run_id, status="RUNNING")
    else:
        # the user's tags first: they may add tags, not change the study's
        all_tags = {**cfg.tracking.tags, **tags, **launch_tags, RUN_NAME_TAG: run_name,
                    SWEEPS_TAG: tags[SWEEP_TAG], **process_tags()}
        run_id = client.create_run(experiment_id, tags=all_tags).info.run_id
    status = "FAILED"
    monitor = None
    try:  # from here on, whatever fails, the run is closed in `finally`
        monitor = _system_metrics(cfg.tracking, run_id, resumed=bool(resume_run_id))
        if resume_run_id:
            earlier = join_sweep(cfg, run_id, tags[SWEEP_TAG])
            for stale in (ERROR_TAG, ENDED_BY_TAG):  # why the attempt before this one ended
                if stale in earlier:
                    client.delete_tag(run_id, stale)
        else:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            params = [Param(k, v) for k, v in flatten(resolved).items()]
            for start in range(0, len(params), MAX_PARAMS_PER_CALL):
                client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
            client.log_text(run_id, OmegaConf.to_yaml(resolved), CONFIG_ARTIFACT)
        _close_stale_runs(client, cfg, config_hash, keep=run_id, experiment_id=experiment_id)
        yield TrackedRun(client, run_id, experiment_id, sweep_jobs)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as error:
        told = store_error_text(error) if is_store_error(error) else str(error)
        _closing(lambda: client.log_batch(run_id, tags=[RunTag(ERROR_TAG, f"{type(error).__name__}: {told}"[:5000])]),
                 run_id, cfg.tracking.uri)
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        _closing(lambda: client.set_terminated(run_id, status), run_id, cfg.tracking.uri)


def _closing(write, run_id: str, uri: str) -> None:
    """A last write to a run on its way out. When the store itself is what failed (full, read-only,
    locked), it says so in one line and lets the error that ended the run be the one reported:
    the run stays RUNNING in the store, and the next run or sweep of its experiment on this host
    closes it (close_dead_runs: its process is gone by then); its checkpoint is kept."""
    try:
        write()
    except Exception as error:
        if not is_store_error(error):
            raise
        log.warning("could not close MLflow run %s in %s (%s); the next run of its experiment on this host closes it",
                    run_id, uri, store_error_text(error))


def start_sweep(tracking: DictConfig, folder: str, name: str, jobs: int, command: str) -> tuple[str, str]:
    """Create the parent run of a multirun, in the launching process, before its jobs start;
    returns (its id, the sweep's id), which each job gets as tracking.parent_run_id and
    tracking.sweep_id. The sweep's id is its folder's name, made unique in the experiment
    (`<folder>-2`, `-3` ...) when an earlier sweep was given the same hydra.sweep.dir: the figures
    read a sweep by its id, and two sweeps must not merge there. The run carries the id, MLflow's
    context tags (resolved here, where sys.argv is the command), the command, tracking.tags and
    tracking.note, the number of jobs, and this process (pid, host)."""
    experiment_id = prepare_store(tracking)
    client = MlflowClient(tracking.uri)
    with _store_lock(tracking.uri, "tracking.uri"):  # two sweeps started at once in one folder get two ids
        close_dead_runs(client, experiment_id)
        sweep_id, number = folder, 1
        while client.search_runs([experiment_id], f"tags.{SWEEP_TAG} = '{sweep_id}' and tags.{KIND_TAG} = "
                                 f"'{SWEEP_KIND}'", max_results=1):
            number += 1
            sweep_id = f"{folder}-{number}"
        tags = {**tracking.tags, SWEEP_TAG: sweep_id, KIND_TAG: SWEEP_KIND, JOBS_TAG: str(jobs), COMMAND_TAG: command,
                RUN_NAME_TAG: name, **process_tags()}
        if tracking.note:
            tags[MLFLOW_RUN_NOTE] = tracking.note
        return client.create_run(experiment_id, tags=resolve_tags(tags)).info.run_id, sweep_id


def end_sweep(tracking: DictConfig, run_id: str, status: str, result: str) -> list[str]:
    """Close a sweep's parent run: FINISHED, FAILED (a job failed) or KILLED, with the sweep's
    last line as its RESULT_TAG; first close the runs its stopped or killed workers left RUNNING
    (close_dead_runs), whose ids it returns."""
    client = MlflowClient(tracking.uri)
    closed = close_dead_runs(client, client.get_run(run_id).info.experiment_id)
    client.set_tag(run_id, RESULT_TAG, result)
    client.set_terminated(run_id, status)
    return closed
