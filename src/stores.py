"""Opening an MLflow store: open_store (a client whose first request has succeeded) and
prepare_store (that, and the experiment, created if missing). Whatever stops a store from opening
(a URI MLflow cannot use, a folder that cannot be created, a file that is not a database, a server
that does not answer, an experiment name MLflow refuses or has deleted) is one line naming the
key, raised before anything is logged. Logging into an open store is src.tracking's.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from omegaconf import DictConfig

from src.errors import ConfigError, StoreFailed
from src.files import check_folder

# What an experiment is for, to MLflow 3: model training (runs, metrics, the runs table), not
# GenAI development (traces, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

# MLflow announces a fresh SQLite store's table creation at INFO on stderr: two lines before any
# run's output or error; a store being created is no news (the README says where it is). And it
# logs every database error it re-raises at ERROR, with the SQL statement and a traceback (a
# screen per failed write on a full or locked store): the error itself is told in one line
# (store_error_text), so only what it never raises gets through.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

SQLITE_PREFIX = "sqlite:///"
# How long opening a tracking server may take: one retry, 3 s per attempt, so ~7 s at worst.
# MLflow's own policy (7 retries with exponential backoff, 120 s timeouts: ~4.5 minutes against a
# port nothing listens on) stays for every later request, where riding out a server restart in
# the middle of a long run is what is wanted. MLflow reads these variables at each request.
OPENING_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}


@contextmanager
def store_lock(uri: str, key: str) -> Iterator[None]:
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


def is_server(uri: str) -> bool:
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
    if is_server(uri):
        os.environ.update(OPENING_PATIENCE)
        retries.setLevel(logging.ERROR)
    try:
        yield
    except ConfigError:
        raise
    except Exception as error:
        reason = _not_answering(error) if is_server(uri) else None
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


# SQLAlchemy's advice to its own callers, put before the driver's error when a query flushed
AUTOFLUSH_ADVICE = re.compile(r"\(raised as a result of Query-invoked autoflush;[^)]*\)\s*")


def store_error_text(error: BaseException) -> str:
    """A store's error in one line: SQLAlchemy's text without the statement and parameters it
    appends (screens of SQL that say nothing more), nor its advice on autoflush."""
    text = str(error).split("[SQL:")[0].split("(Background on this error")[0]
    return " ".join(AUTOFLUSH_ADVICE.sub("", text).split())


def store_failed(uri: str, error: BaseException) -> StoreFailed:
    """The store's failure (full, immutable, locked) named here, where the store is known:
    MLflow's text names no file."""
    return StoreFailed(f"the MLflow store {uri} failed: {type(error).__name__}: {store_error_text(error)}")


@contextmanager
def store_named(uri: str) -> Iterator[None]:
    """What the store fails with in the block raised as store_failed; other errors as they are."""
    try:
        yield
    except Exception as error:
        if not is_store_error(error):
            raise
        raise store_failed(uri, error) from error


def open_store(uri: str, key: str = "tracking.uri") -> MlflowClient:
    """A client of the store at `uri`, opened: a SQLite file is created with its tables if
    missing (serialised across processes), a server has answered within OPENING_PATIENCE.
    Raises ConfigError naming `key`."""
    with _opening(uri, key), store_lock(uri, key):
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
    with _opening(uri, key):  # no store_lock: an existing store's tables are not created again
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


def prepare_store(tracking: DictConfig) -> str:
    """Open the store as open_store does and create the experiment if missing; return the
    experiment id. Safe to call from many processes at once. Raises ConfigError naming
    tracking.uri, tracking.experiment or tracking.artifact_root when one cannot be used."""
    with _opening(tracking.uri, "tracking.uri"), store_lock(tracking.uri, "tracking.uri"):
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
    if is_server(tracking.uri):
        return None
    return Path(tracking.artifact_root).resolve().as_uri()
