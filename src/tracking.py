"""Everything MLflow a run logs, behind a few calls: tracked_run and TrackedRun.log for a
training run. The parent run of a multirun is src.sweep_record's; opening the store (and its
one-line errors) is src.stores'.

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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, LifecycleStage, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from omegaconf import DictConfig, OmegaConf

from src.processes import close_dead_runs, process_tags
from src.signals import HeldCalls, held
from src.stores import is_server, is_store_error, prepare_store, store_error_text, store_failed
from src.schema import (
    COMMAND_TAG, CONFIG_ARTIFACT, CONFIG_HASH_TAG, ENDED_BY_TAG, ERROR_TAG, RUN_NAME_TAG, SUPERSEDED_BY_TAG, SWEEP_TAG,
    SWEEPS_TAG, VAL_LOSS,
)

if TYPE_CHECKING:
    import torch

    from src.data import Dataset

# MLflow 3.17's UI takes GenAI or model training from its own toggle (top left; GenAI until a
# browser has chosen), not from the tag, so the links we print ask for model training.
UI_MODEL_TRAINING = "workflowType=machine_learning"
# Tags MLflow's context providers (mlflow.tracking.context) resolve: user, source file and type,
# git commit, branch and repository. A sweep's jobs take their parent's (below).
CONTEXT_PREFIXES = ("mlflow.user", "mlflow.source.")

log = logging.getLogger(__name__)

MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"  # MLflow's variable, read by conf/tracking/mlflow.yaml

MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
# Keys that say where a run reads or writes, how it is recorded or how fast it goes, not what it
# computes: left out of the config hash that identifies a run for skipping and resuming, and out
# of the figures' groups (src.groups.identity). Every path-valued key is here (paths, and the
# dataset keys that interpolate ${paths.data_dir}; tests/test_identity.py checks every option of
# conf/), as is dataset.download: the data themselves enter the identity by their digest
# (hash_config's data_digest), so moving them, or another folder per node, changes nothing.
NOT_IDENTITY = ("paths", "tracking", "dataset.data_dir", "dataset.cache_dir", "dataset.download",
                "trainer.threads", "trainer.resume", "trainer.eval_batch_size")
# Keys of the config not logged as params: how the store and console present a run, not what it is
# (config.yaml, the run's artifact, still holds them). A key and everything under it.
NOT_PARAMS = ("tracking.description", "tracking.ui_url", "tracking.progress")


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


def hash_config(cfg: DictConfig, data_digest: str | None, leave_out: Sequence[str] = ()) -> str:
    """A short stable hash of the resolved config, NOT_IDENTITY keys (and `leave_out`'s) left out,
    and of `data_digest` (Dataset.digest of the data the run trains on): the config hash that
    identifies a run (tag CONFIG_HASH_TAG, its checkpoint's name); with the seed left out, its
    curve's (CURVE_TAG). None: the config alone, for what must be decided before the data are
    loaded (src.train's lock)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    plain["data_digest"] = data_digest
    for dotted in (*NOT_IDENTITY, *leave_out):
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
    server = tracking.uri if is_server(tracking.uri) else tracking.ui_url
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_MODEL_TRAINING}"


def ui_command(tracking: DictConfig) -> str | None:
    """The command that serves a local store in the UI; None for a tracking server (its own UI)."""
    if is_server(tracking.uri):
        return None
    port = tracking.ui_url.rstrip("/").rsplit(":", 1)[-1]
    return f"mlflow ui --backend-store-uri {tracking.uri}" + ("" if port == "5000" else f" --port {port}")


def dataset_input(data: Dataset) -> DatasetInput:
    """The data set as an MLflow dataset input (the runs table's Dataset column): its name, its
    digest (Dataset.digest: the samples themselves), where it came from, and a profile with N
    train / N validation, the classes and the input shape."""
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

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    def last_logged_epoch(self) -> int:
        """The highest step with a val_loss, -1 if none."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, VAL_LOSS)), default=-1)

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """One batched write; per-epoch metrics use step = the 0-based epoch."""
        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def tag(self, values: Mapping[str, object]) -> None:
        """One batched write of tags: what a run ran in (the machine's load), not what it measured."""
        self.client.log_batch(self.run_id, tags=[RunTag(name, str(value)) for name, value in values.items()])

    def log_dataset(self, data: Dataset) -> None:
        self.client.log_inputs(self.run_id, datasets=[dataset_input(data)])

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_final(self, metrics: Mapping[str, float], data: Dataset, model: torch.nn.Module | None, epochs: int) -> None:
        """The run's final metrics, each linked to the data set it was measured on (MLflow's
        dataset of a metric: name and digest of the run's dataset input) and, when `model` is
        given (tracking.log_weights), to the model: logged first as the run's LoggedModel
        (log_model), after `epochs` epochs."""
        model_id = self.log_model(model, data, epochs) if model is not None else None
        now, digest = int(time.time() * 1000), data.digest()
        batch = [Metric(name, float(value), now, 0, model_id=model_id, dataset_name=data.name, dataset_digest=digest)
                 for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_model(self, model: torch.nn.Module, data: Dataset, epochs: int) -> str:
        """`model` as an MLflow model of this run (mlflow.pytorch, torch.export's pt2 format:
        weights and graph, loadable without unpickling code): a LoggedModel named after its class,
        with the run's params, two validation samples as its input example and the signature they
        give. Logged on a CPU copy, so it loads on any machine. Returns its model id
        (`models:/<id>`, what `python -m src.evaluate model=...` takes)."""
        import copy

        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        cpu_model = copy.deepcopy(model).cpu().eval()
        example = data.x_val[:2].detach().cpu().float()  # 2, not 1: torch.export fixes a batch dimension of 1
        with torch.no_grad():
            signature = infer_signature(example.numpy(), cpu_model(example).numpy())
        name = type(model).__name__
        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id,
                                                 params=self.client.get_run(self.run_id).data.params)
        # mlflow.pytorch.log_model writes through the process's tracking URI (it has no client
        # argument), and mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which conf/
        # reads: the run's store for this call only, the variable as it was afterwards (the next
        # job of an in-process sweep composes its config again).
        before = os.environ.get(MLFLOW_TRACKING_URI)
        mlflow.set_tracking_uri(self.client.tracking_uri)
        try:
            # step=epochs: the model after that many epochs. MLflow links the run's metrics at the
            # model's step to it; per-epoch metrics end at step epochs - 1, so none is copied.
            # Held against signals in a local store, as the client's calls are (writing_client).
            with nullcontext() if is_server(self.client.tracking_uri) else held():
                mlflow.pytorch.log_model(cpu_model, name=name, model_id=logged.model_id, run_id=self.run_id,
                                         step=epochs, input_example=example.numpy(), signature=signature,
                                         # what loading a pt2 model needs; left out, MLflow infers it
                                         # in a subprocess that loads the model (~8 s here). Without
                                         # the local label (+cpu, +cu126), as pip resolves it from PyPI.
                                         pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        finally:
            mlflow.set_tracking_uri(None)  # unsets the variable too
            if before is not None:
                os.environ[MLFLOW_TRACKING_URI] = before
        return logged.model_id


class Untracked:
    """What the ranks other than 0 of a DDP run log through: nothing; rank 0 logs for all."""

    run_id = experiment_id = None

    def last_logged_epoch(self) -> int:
        return -1  # logs nothing, so holds nothing

    def log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def tag(self, values: Mapping[str, object]) -> None:
        pass

    def log_dataset(self, data: Dataset) -> None:
        pass

    def log_artifact(self, path: Path, folder: str) -> None:
        pass

    def log_final(self, metrics: Mapping[str, float], data: Dataset, model: torch.nn.Module | None, epochs: int) -> None:
        pass


def writing_client(uri: str) -> MlflowClient:
    """The client a run or a sweep writes through. A local store's calls (SQLite, files) each
    finish before Ctrl-C or SIGTERM acts (src/signals.py): a signal inside SQLAlchemy's commit
    could leave the store locked by this process and its run never closed. A server's are left as
    they are: one that stops answering must not hold Ctrl-C back for its timeout."""
    client = MlflowClient(uri)
    return client if is_server(uri) else HeldCalls(client)


def join_sweep(cfg: DictConfig, run_id: str, sweep_id: str) -> dict[str, str]:
    """Add a re-run sweep that skips or resumes a run to the run's SWEEPS_TAG, so the newest sweep
    holds every run of its command (the figures read one sweep at a time) while its sweep_id
    keeps the sweep that trained it. Returns the run's tags as they were read."""
    client = writing_client(cfg.tracking.uri)
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


def _launch_tags(client: MlflowClient, tracking: DictConfig) -> dict[str, str]:
    """The tags that say where a run was launched from. A sweep's job takes its parent run's
    context tags and command: the launching process resolved them, where sys.argv names src.run
    (a submitit worker's names submitit). Any other run resolves them itself with MLflow's
    context providers."""
    if tracking.parent_run_id:
        parent = client.get_run(tracking.parent_run_id).data.tags
        launch = {k: v for k, v in parent.items() if k.startswith(CONTEXT_PREFIXES) or k == COMMAND_TAG}
        launch[MLFLOW_PARENT_RUN_ID] = tracking.parent_run_id
    else:
        launch = resolve_tags()
    if tracking.note:
        launch[MLFLOW_RUN_NOTE] = tracking.note
    return launch


def _system_metrics(tracking: DictConfig, run_id: str, resumed: bool):
    """MLflow's system-metrics monitor for the run, started; None when tracking.system_metrics is
    off. (psutil, which it needs, is checked with the config: src.config.)"""
    if not tracking.system_metrics:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Silent: its INFO lines (started, no GPU, stopping, stopped: 4 a run) are noise, and its
    # warnings and errors repeat, with SQL, a store failure that the run's own next write reports
    # in one line (StoreFailed); a sample it cannot log is just not logged.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)

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
    client = writing_client(cfg.tracking.uri)
    config_hash = tags[CONFIG_HASH_TAG]
    launch_tags = _launch_tags(client, cfg.tracking)
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
    warn_on_close = True  # a store that failed to take the error is told once, not again at the close
    try:  # from here on, whatever fails, the run is closed in `finally`
        monitor = _system_metrics(cfg.tracking, run_id, resumed=bool(resume_run_id))
        if resume_run_id:
            earlier = join_sweep(cfg, run_id, tags[SWEEP_TAG])
            for stale in (ERROR_TAG, ENDED_BY_TAG):  # why the attempt before this one ended
                if stale in earlier:
                    client.delete_tag(run_id, stale)
        else:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            params = [Param(k, v) for k, v in flatten(resolved).items()
                      if not any(k == key or k.startswith(key + ".") for key in NOT_PARAMS)]
            for start in range(0, len(params), MAX_PARAMS_PER_CALL):
                client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
            client.log_text(run_id, OmegaConf.to_yaml(resolved), CONFIG_ARTIFACT)
        _close_stale_runs(client, cfg, config_hash, keep=run_id, experiment_id=experiment_id)
        yield TrackedRun(client, run_id, experiment_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as error:
        told = store_error_text(error) if is_store_error(error) else str(error)
        warn_on_close = _closing(
            lambda: client.log_batch(run_id, tags=[RunTag(ERROR_TAG, f"{type(error).__name__}: {told}"[:5000])]),
            run_id, cfg.tracking.uri)
        if is_store_error(error):
            raise store_failed(cfg.tracking.uri, error) from error
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        _closing(lambda: client.set_terminated(run_id, status), run_id, cfg.tracking.uri, warn=warn_on_close)


def _closing(write, run_id: str, uri: str, warn: bool = True) -> bool:
    """A last write to a run on its way out; returns whether it was written. When the store itself
    is what failed (full, read-only, locked), it says so in one line (unless `warn` is False: said
    already) and lets the error that ended the run be the one reported: the run stays RUNNING in
    the store, and the next run or sweep of its experiment on this host closes it
    (close_dead_runs: its process is gone by then); its checkpoint is kept."""
    try:
        write()
    except Exception as error:
        if not is_store_error(error):
            raise
        if warn:
            log.warning("could not close MLflow run %s in %s (%s); the next run of its experiment on this host "
                        "closes it", run_id, uri, store_error_text(error))
        return False
    return True
