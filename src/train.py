"""train(cfg) -> final metrics: one run of one schedule, read top to bottom.

Per epoch: ask the schedule for (lr, B, m); set lr and m on the optimizer; draw a seeded
permutation of the resident training tensors and cut it into batches of B (src.data.BatchStream:
under the default trainer.last_batch=carry the samples left over at an epoch's end open the next
epoch's first batch, so every update has exactly B samples); step; validate; checkpoint; log one
batch of metrics. Counters are exact: param_updates counts optimizer steps, samples_seen the
samples that went into them. Times are seconds.

A run is identified by the hash of its resolved config without paths and of its data's digest
(tracking.hash_config, once the data are loaded). With
trainer.resume (the default) a run already FINISHED is skipped, and an interrupted one resumes
from its last checkpoint into the same MLflow run, with the same numbers as if it had never
stopped: model, optimizer, schedule, the RNG streams, the batches carried between epochs and the
counters are all restored. Each epoch is logged once, whatever the interruption. Two processes
given the same config and output folder train it one after the other, never together.

The file in order: one epoch (train_epoch, evaluate), building a run from its config
(build_run), the checkpoint contract (checkpoint_state, restore_state), skip-or-resume, and the
epoch loop itself (_train).
"""

from __future__ import annotations

import logging
import math
import os
import random
import shlex
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from src import checkpoint, devices, schema, tracking
from src.config import check_folder, validate, validate_against_data
from src.data import BatchStream, Dataset
from src.distributed import World, all_sum, join, leave, share
from src.errors import ConfigError, DatasetUnavailable, Diverged, Stopped
from src.gns import NoiseScaleEstimator
from src.progress import Console, EpochProgress
from src.progress import label as job_label
from src.schedules import Plan, Schedule, noise_scale

log = logging.getLogger(__name__)


def load_average(names: dict[str, str]) -> dict[str, float]:
    """The machine's 1-, 5- and 15-minute load averages (runnable processes, all users) under
    `names` (schema.LOAD_AVERAGE_START or _END): the context a wall time is read in (report.md's
    environment block)."""
    return dict(zip((names[span] for span in schema.LOAD_SPANS), os.getloadavg()))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(optimizer_cfg: DictConfig, params, lr: float) -> torch.optim.Optimizer:
    """instantiate(_target_) with the schedule's first lr; lr_scale is ours, not torch's."""
    kwargs = OmegaConf.to_container(optimizer_cfg, resolve=True)
    lr_scale = kwargs.pop("lr_scale")
    return instantiate(kwargs, params, lr=lr * lr_scale)


def make_schedule(cfg: DictConfig, n_train: int, epochs: int | None = None) -> Schedule:
    """instantiate(cfg.schedule) with what the loop supplies: N, the epochs (trainer.epochs
    unless given) and the optimizer's momentum (Adam: 0, see conf/optimizer/adam.yaml)."""
    momentum = cfg.optimizer.get("momentum", 0.0)
    epochs = cfg.trainer.epochs if epochs is None else epochs
    return instantiate(cfg.schedule, n_train=n_train, epochs=epochs, optimizer_momentum=momentum)


def apply_plan(optimizer: torch.optim.Optimizer, plan: Plan, lr_scale: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = plan.lr * lr_scale
        if "momentum" in group:  # SGD; Adam's betas stay as configured
            group["momentum"] = plan.momentum


class Precision:
    """trainer.bf16: run forward passes under bfloat16 autocast (weights, gradients and the
    optimizer stay float32). trainer.channels_last: NHWC layout for 4-D inputs and the model,
    what tensor-core convolutions want. Both off by default: exact float32 numbers that match
    across machines; the GPU presets turn them on."""

    def __init__(self, device: torch.device, bf16: bool, channels_last: bool):
        self.device_type, self.bf16, self.channels_last = device.type, bf16, channels_last

    def autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


@dataclass(frozen=True)
class StepSettings:
    """How train_epoch makes each batch one optimizer step: the same for every epoch of a run.
    Which samples form a batch is not a setting but the run's BatchStream (its trainer.last_batch
    policy, and under carry the leftover it carries from epoch to epoch: per-run state, in the
    checkpoint); the batch size, the schedule's, is given per epoch."""

    micro_batch_size: int | None  # trainer.micro_batch_size: None = each batch in one pass
    precision: Precision  # trainer.bf16, trainer.channels_last
    world: World = World()  # the ranks that train together (src/distributed.py); one by default


def train_epoch(model, optimizer, data: Dataset, order: torch.Tensor, *, batch_size: int, batches: BatchStream,
                generator: torch.Generator, settings: StepSettings, noise: NoiseScaleEstimator | None = None,
                progress: EpochProgress | None = None):
    """The updates drawn while the permutation `order` is consumed, in batches of batch_size cut
    by `batches` (under carry they include the samples carried in from the epoch before, and the
    samples carried out are left to the next). Returns (mean train loss over the samples of
    these updates, updates, samples). `progress` hears of every step (src/progress.py).

    A batch larger than micro_batch_size is cut into micro-batches whose gradients add up to
    the whole batch's (each loss weighted by its share of the batch) before ONE optimizer step:
    B = 16,000 fits in the memory that a micro-batch needs. Augmentation (if the data have one)
    is drawn for the whole batch first, so it depends neither on the micro-batch size nor on the
    number of ranks. Under DDP each rank trains on its share (src/distributed.py).

    With `noise`, on one step in noise.every, the squared norms of the parts' gradients and of
    the whole batch's feed the gradient-noise-scale estimator (src/gns.py); a batch that is not
    split anyway is split in two halves for it. Parts of unequal size (B not a multiple of the
    micro-batch, or odd B halved) count as their harmonic mean: mean_i |G_i|^2 estimates
    |G|^2 + tr(Sigma) * mean_i(1 / b_i), so that is the part size that keeps the estimator
    unbiased. The norms stay on the device until the end of the epoch: no sync per step.
    """
    precision, world = settings.precision, settings.world
    model.train()
    loss_sum = torch.zeros((), device=data.x_train.device)  # summed on device: no sync per step
    updates = samples = 0
    norms = []  # per measured step: (mean |part gradient|^2, their harmonic mean size, |batch gradient|^2, B)
    epoch_batches = batches.epoch(order, batch_size)
    if progress is not None:
        progress.start(len(epoch_batches))
    for index in epoch_batches:
        x, y = data.x_train[index], data.y_train[index]
        if data.augment is not None:
            x = data.augment(x, generator)
        x, y = share(x, world), share(y, world)
        weight = world.size / len(index)  # per sample: its share of the batch, DDP's average undone
        measure = noise is not None and updates % noise.every == 0 and len(y) > 1
        part_size = settings.micro_batch_size or len(y)
        if measure and part_size >= len(y):
            part_size = (len(y) + 1) // 2
        parts = list(zip(x.split(part_size), y.split(part_size)))
        optimizer.zero_grad(set_to_none=True)
        before, part_sq = None, []
        for number, (x_part, y_part) in enumerate(parts):
            # DDP all-reduces gradients after the last micro-batch only
            last = number == len(parts) - 1
            with nullcontext() if last or world.size == 1 else model.no_sync():
                with precision.autocast():
                    loss = F.cross_entropy(model(precision.layout(x_part)), y_part)
                (loss * (len(y_part) * weight)).backward()
            loss_sum.add_(loss.detach(), alpha=len(y_part))  # one kernel
            if measure and len(parts) > 1:
                # the gradients accumulate: this part's mean gradient is the increase, rescaled
                accumulated = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
                part_mean = (accumulated if before is None else accumulated - before) * (len(y) / len(y_part))
                part_sq.append(part_mean.square().sum())
                before = accumulated
        if part_sq:
            harmonic_part_size = len(parts) / sum(1 / len(y_part) for _, y_part in parts)
            norms.append((torch.stack(part_sq).mean(), harmonic_part_size, before.square().sum(), len(y)))
        optimizer.step()
        updates += 1
        samples += len(index)
        if progress is not None:
            progress.step(updates, samples)
    if progress is not None:
        progress.done()
    if norms:
        part_sq, part_size, batch_sq, size = zip(*norms)
        for values in zip(torch.stack(part_sq).tolist(), part_size, torch.stack(batch_sq).tolist(), size):
            noise.update(*values)
    return all_sum(loss_sum, world).item() / samples, updates, samples


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, chunk: int, precision: Precision,
             world: World = World()) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction, 0..1) over (x, y); under DDP each rank
    evaluates its share and the sums are added across ranks."""
    model.eval()
    n = len(y)
    x, y = share(x, world), share(y, world)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(y), chunk):
        with precision.autocast():
            logits = model(precision.layout(x[start : start + chunk]))
        target = y[start : start + chunk]
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return all_sum(loss_sum, world).item() / n, all_sum(correct, world).item() / n


# --- building a run ------------------------------------------------------------------------------

@dataclass
class RunParts:
    """What one run trains with, built from its config (build_run)."""

    data: Dataset  # resident on the training device
    model: torch.nn.Module  # the unwrapped module, what a checkpoint holds; DDP wraps it in _train
    schedule: Schedule
    optimizer: torch.optim.Optimizer
    lr_scale: float  # optimizer.lr_scale: the optimizer applies the schedule's lr times this
    steps: StepSettings
    noise: NoiseScaleEstimator | None  # measures the gradient noise scale when asked or followed
    # One CPU stream for the batch order and the augmentation: the same on any device, and one
    # state to checkpoint.
    batch_order: torch.Generator
    batches: BatchStream  # cuts each epoch's permutation by trainer.last_batch; under carry, holds the leftover


# What a constructor raises when it refuses the values it is given (torch's own checks raise
# RuntimeError: a model that cannot take an input's shape).
REFUSALS = (ValueError, TypeError, IndexError, ZeroDivisionError, RuntimeError)


@contextmanager
def _built_from(cfg: DictConfig, group: str, what: str):
    """Around building a group from its config: a refusal becomes one line naming the group's
    target (what its constructor said follows), before any MLflow run is created, rather than a
    trace. A missing data set (DatasetUnavailable) and an exhausted device pass as they are."""
    try:
        yield
    except (InstantiationException, *REFUSALS) as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        passes = (ConfigError, DatasetUnavailable, torch.OutOfMemoryError)
        if not isinstance(cause, REFUSALS) or isinstance(cause, passes):
            raise
        said = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise ConfigError(f"{group}._target_={cfg[group]._target_}: {what}: {type(cause).__name__}: {said}") from None


def build_model(cfg: DictConfig, data: Dataset, device: torch.device, precision: Precision) -> torch.nn.Module:
    """cfg.model built for the data's input shape and classes, and one sample passed through it
    (in eval mode: no batch-norm statistics move, no dropout is drawn, so no number of the run
    changes). A model that cannot be built for these data or cannot take their inputs (model=wrn
    on 1-D data) is then one line naming it, before any MLflow run is created, rather than a trace
    at the first step."""
    what = (f"cannot take dataset._target_={cfg.dataset._target_}'s inputs of shape {tuple(data.input_shape)} "
            f"({data.n_classes} classes)")
    with _built_from(cfg, "model", what):
        model = instantiate(cfg.model, input_shape=data.input_shape, n_classes=data.n_classes)
        model = precision.prepare(model.to(device))
        model.eval()
        with torch.no_grad(), precision.autocast():
            model(precision.layout(data.x_train[:1]))
    return model


def build_run(cfg: DictConfig, device: torch.device, world: World = World()) -> RunParts:
    """Data, model, schedule and optimizer as a run of `cfg` trains them, seeded by trainer.seed:
    the same call for train() and the benchmarks."""
    trainer = cfg.trainer
    seed_everything(trainer.seed)  # before anything is built
    with _built_from(cfg, "dataset", "cannot make its data"):
        data: Dataset = instantiate(cfg.dataset).to(device)
    validate_against_data(cfg, data.n_train, data.n_val)
    precision = Precision(device, trainer.bf16, trainer.channels_last)
    model = build_model(cfg, data, device, precision)
    with _built_from(cfg, "schedule", "cannot be built"):
        schedule = make_schedule(cfg, data.n_train)
    # Measure the gradient noise scale when asked, or when the schedule follows it.
    measure_noise = trainer.gns or not set(schedule.follows).isdisjoint(schema.GNS_METRICS)
    if measure_noise and world.size > 1:
        asked_by = "trainer.gns=true" if trainer.gns else f"schedule={cfg.schedule.name}"
        raise ConfigError(f"{asked_by}: the noise-scale estimate needs a single process, not DDP")
    first = schedule(0)
    if first.batch_size < world.size:
        raise ConfigError(
            f"schedule.batch_size={cfg.schedule.batch_size}: the first batch ({first.batch_size}) "
            f"must be >= the {world.size} ranks"
        )
    with _built_from(cfg, "optimizer", "cannot be built"):
        optimizer = build_optimizer(cfg.optimizer, model.parameters(), first.lr)
    return RunParts(
        data=data,
        model=model,
        schedule=schedule,
        optimizer=optimizer,
        lr_scale=cfg.optimizer.lr_scale,
        steps=StepSettings(trainer.micro_batch_size, precision, world),
        noise=(NoiseScaleEstimator(trainer.gns_memory_epochs * data.n_train, trainer.gns_every)  # memory in samples
               if measure_noise else None),
        batch_order=torch.Generator().manual_seed(trainer.seed),
        batches=BatchStream(trainer.last_batch),
    )


# --- the checkpoint contract ---------------------------------------------------------------------

@dataclass
class Progress:
    """What the loop has done so far: where a resumed run picks up."""

    epochs_done: int = 0
    param_updates: int = 0  # optimizer steps
    samples_seen: int = 0  # samples in those steps
    train_time: float = 0.0  # seconds in train_epoch
    earlier_attempts_s: float = 0.0  # wall seconds of the attempts before this one (a resumed run)
    history: dict[str, list[float]] = field(default_factory=dict)  # every per-epoch metric so far

    def record(self, metrics: Mapping[str, float]) -> None:
        """Add the next epoch's metrics to the history, one value per epoch in every list: a
        metric an epoch did not have (gpu_peak_memory_mib of a run resumed on a CPU after a GPU)
        is nan there, so epoch_metrics and the schedules index every list by epoch."""
        epoch = self.epochs_done
        for name in [*self.history, *(name for name in metrics if name not in self.history)]:
            self.history.setdefault(name, [math.nan] * epoch).append(metrics.get(name, math.nan))
        self.epochs_done = epoch + 1

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """Every metric recorded for `epoch` (0-based), as it was logged (nan: not measured)."""
        return {name: values[epoch] for name, values in self.history.items()}


# What a checkpoint holds, saved by checkpoint_state and read back by restore_state (and, for
# run_id, by _checkpoint_to_resume). One more piece of state is one line in each of the three.
CHECKPOINT_KEYS = frozenset(
    {"run_id", "epoch", "model", "optimizer", "schedule", "noise", "rng", "batches", "counters", "history"}
)


def checkpoint_state(parts: RunParts, progress: Progress, run_id: str | None, elapsed: float) -> dict:
    """Everything a resumed run needs to go on with the same numbers as if it had never stopped.
    `elapsed`: wall seconds of this run so far, earlier attempts included."""
    rng = {"torch": torch.get_rng_state(), "batch_order": parts.batch_order.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "run_id": run_id,  # the MLflow run it continues, if that run is still in the store
        "epoch": progress.epochs_done - 1,  # the last finished epoch, 0-based
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "noise": parts.noise.state_dict() if parts.noise is not None else {},
        "rng": rng,
        "batches": parts.batches.state_dict(),  # under carry, the leftover that opens the next epoch
        "counters": [progress.param_updates, progress.samples_seen, progress.train_time, elapsed],
        "history": progress.history,
    }


def restore_state(parts: RunParts, state: dict) -> Progress:
    """Put a freshly built run back where checkpoint_state left it; returns its progress."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["schedule"])
    if parts.noise is not None:
        parts.noise.load_state_dict(state["noise"])
    torch.set_rng_state(state["rng"]["torch"])
    parts.batch_order.set_state(state["rng"]["batch_order"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    parts.batches.load_state_dict(state["batches"])
    param_updates, samples_seen, train_time, elapsed = state["counters"]
    return Progress(
        epochs_done=state["epoch"] + 1,
        param_updates=param_updates,
        samples_seen=samples_seen,
        train_time=train_time,
        earlier_attempts_s=elapsed,
        history={name: list(values) for name, values in state["history"].items()},
    )


# --- skip or resume ------------------------------------------------------------------------------

def _finished_before(cfg: DictConfig, experiment_id: str, config_hash: str, sweep_id: str, label: str,
                     world: World) -> dict | None:
    """The final metrics of this config's FINISHED run, which then joins this sweep; None if none."""
    for done in tracking.runs_with_config(cfg, config_hash, status="FINISHED", experiment_id=experiment_id)[:1]:
        log.info("[%s] already FINISHED as MLflow run %s (config %s): skipped", label, done.info.run_id, config_hash)
        if world.is_main:
            tracking.join_sweep(cfg, done.info.run_id, sweep_id)
        return {name: done.data.metrics[name] for name in schema.FINAL_METRICS}
    return None


def _checkpoint_to_resume(cfg: DictConfig, experiment_id: str, path: Path, label: str) -> dict | None:
    """The newest readable checkpoint at `path`; None: start over.

    When its MLflow run is not in this config's store and experiment (the store was deleted or
    replaced since, or the checkpoint comes from another), its run_id becomes None: the run
    resumes into a new MLflow run, to which the loop re-logs every epoch from the checkpoint's
    history. The checkpoint holds every per-epoch metric as it was logged, so the new run is
    whole and has the same numbers; starting over would throw its epochs away for nothing."""
    saved_state = checkpoint.load(path, CHECKPOINT_KEYS)
    if saved_state is not None and not tracking.run_is_in_store(cfg, saved_state["run_id"], experiment_id):
        log.warning("[%s] checkpoint %s continues MLflow run %s, which is not in %s (experiment %s): resuming it "
                    "into a new run, with its %d epochs re-logged", label, path, saved_state["run_id"],
                    cfg.tracking.uri, cfg.tracking.experiment, saved_state["epoch"] + 1)
        saved_state["run_id"] = None
    return saved_state


@contextmanager
def _one_at_a_time(cfg: DictConfig, label: str, world: World):
    """Held while a process trains a config: a lock per config hash next to its checkpoint.
    Two processes given the same config and output folder (two sweeps started at once, a job
    started twice) then train it one after the other: the second waits, then finds the run
    FINISHED and skips it, or resumes it if the first stopped. It waits rather than skipping at
    once so that its sweep still gets the run's final metrics and joins it. Rank 0 holds it for
    a DDP run (the other ranks wait for rank 0 anyway)."""
    if not world.is_main:
        yield
        return
    # by the config alone (the data are not loaded yet): configs that differ only in their data wait too
    path = Path(cfg.paths.output_dir) / "checkpoints" / f"{tracking.hash_config(cfg, None)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("[%s] the same config is training in another process (lock %s): waiting for it", label, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _stopped_here(label: str, run, progress: Progress, checkpoint_path: Path, epochs: int):
    """Ctrl-C or SIGTERM in the loop becomes Stopped, whose one line says which MLflow run is
    KILLED, where its checkpoint is and how to resume (the run is closed KILLED by tracked_run)."""
    try:
        yield
    except KeyboardInterrupt as stop:
        signum = stop.signal if isinstance(stop, Stopped) else signal.SIGINT
        kept = (f"checkpoint {checkpoint_path}" if checkpoint_path.exists()
                else "no checkpoint yet (none before the first epoch ends)")
        raise Stopped(signum, f"[{label}] MLflow run {run.run_id} KILLED after {progress.epochs_done} of {epochs} "
                              f"epochs; {kept}; run the same command again to resume") from None


# --- what a run is recorded with -----------------------------------------------------------------

def run_name(cfg: DictConfig) -> str:
    """tracking.run_name (the study sweeper sets it for each job: the schedule, what varies in
    the sweep, the seed), else "<schedule> seed=<seed>"."""
    return cfg.tracking.run_name or f"{cfg.schedule.name} seed={cfg.trainer.seed}"


def option_tags(cfg: DictConfig, data: Dataset) -> dict[str, str]:
    """The options a run was composed from, by their command-line names (dataset=digits,
    model=mlp, optimizer=nesterov, experiment=<preset>): Hydra's runtime choices. Outside a Hydra
    job (a notebook's compose), the names of what the groups build."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        schema.DATASET_TAG: choices.get("dataset") or data.name,
        schema.MODEL_TAG: choices.get("model") or cfg.model._target_.rsplit(".", 1)[-1],
        schema.OPTIMIZER_TAG: choices.get("optimizer") or cfg.optimizer._target_.rsplit(".", 1)[-1],
        schema.PRESET_TAG: choices.get("experiment") or schema.DEFAULT_PRESET,
    }


WEIGHTS_FILE = Path(schema.WEIGHTS_ARTIFACT)  # the final state_dict, an artifact of a FINISHED run


def log_weights(run, model: torch.nn.Module) -> None:
    """The model's final state_dict (torch.save) as the run's WEIGHTS_ARTIFACT, which
    `python -m src.evaluate` reads back."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS_FILE.name
        torch.save(model.state_dict(), path)
        run.log_artifact(path, WEIGHTS_FILE.parent.as_posix())


# --- the run -------------------------------------------------------------------------------------

def train(cfg: DictConfig) -> dict:
    """Train one run; returns {"outcome": finished | resumed | skipped, <schema.FINAL_METRICS>}.
    Launched by torchrun, the processes train it together (src/distributed.py)."""
    world = join()
    try:
        validate(cfg)  # before anything is built or logged
        if world.is_main:
            check_folder("paths.output_dir", cfg.paths.output_dir)  # checkpoints, the lock
        with _one_at_a_time(cfg, run_name(cfg), world):
            return _train(cfg, world)
    finally:
        leave(world)


def _train(cfg: DictConfig, world: World) -> dict:
    started = time.perf_counter()
    trainer = cfg.trainer
    label = run_name(cfg)
    sweep_id = cfg.tracking.sweep_id or f"adhoc-{uuid.uuid4().hex[:8]}"
    experiment_id = tracking.prepare_store(cfg.tracking)  # once: every later call is given it
    threads = devices.job_threads(trainer.threads)  # trainer.threads, else cores // jobs at once
    if threads:
        torch.set_num_threads(threads)
    device = devices.pick_device(trainer.device, world)
    parts = build_run(cfg, device, world)
    config_hash = tracking.hash_config(cfg, parts.data.digest())  # the run's identity: its config and its data
    if trainer.resume:
        finished = _finished_before(cfg, experiment_id, config_hash, sweep_id, label, world)
        if finished is not None:
            return {"outcome": "skipped", **finished}
    checkpoint_path = Path(cfg.paths.output_dir) / "checkpoints" / f"{config_hash}.pt"
    saved_state = _checkpoint_to_resume(cfg, experiment_id, checkpoint_path, label) if trainer.resume else None
    if saved_state is None:
        checkpoint.remove(checkpoint_path)  # unreadable or unwanted: start over
    data, schedule, optimizer, lr_scale = parts.data, parts.schedule, parts.optimizer, parts.lr_scale
    progress = restore_state(parts, saved_state) if saved_state else Progress()
    # DDP after restoring: every rank then starts from the same weights. parts.model stays the
    # unwrapped module, the one a checkpoint holds.
    model = DistributedDataParallel(parts.model) if world.size > 1 else parts.model

    device_name = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    tags = {schema.SCHEDULE_TAG: cfg.schedule.name, schema.SEED_TAG: str(trainer.seed), schema.SWEEP_TAG: sweep_id,
            schema.CONFIG_HASH_TAG: config_hash,
            **option_tags(cfg, data),
            # where and how it ran, for the report's environment block (not part of the config)
            schema.DEVICE_TAG: device_name, schema.THREADS_TAG: str(torch.get_num_threads()),
            schema.CPUS_TAG: str(os.cpu_count()), schema.TORCH_VERSION_TAG: torch.__version__,
            schema.COMMAND_TAG: shlex.join(sys.argv)}
    resume_run_id = saved_state["run_id"] if saved_state else None  # None: a new MLflow run
    tracked = (
        tracking.tracked_run(cfg, tags, label, resume_run_id=resume_run_id, experiment_id=experiment_id)
        if world.is_main else nullcontext(tracking.Untracked())  # rank 0 logs for every rank
    )
    with tracked as run, _stopped_here(label, run, progress, checkpoint_path, trainer.epochs):
        run.log(load_average(schema.LOAD_AVERAGE_START))
        job_number, parallel = devices.this_job()
        console = Console(job_label(label, job_number, run.sweep_jobs), trainer.epochs, cfg.tracking.progress, parallel)
        if world.is_main:
            console.opened(run.run_id, tracking.run_url(cfg.tracking, run.experiment_id, run.run_id),
                           tracking.ui_command(cfg.tracking), progress.epochs_done if saved_state else None)
        if not resume_run_id:  # a new MLflow run, also when it continues a checkpoint whose run is gone
            run.log_dataset(data)
        logged = run.last_logged_epoch() if resume_run_id else -1  # the last epoch this MLflow run holds
        # A new run continuing a checkpoint (the checkpoint's run was gone): every epoch so far;
        # killed between checkpoint and log: the last one.
        for epoch in range(logged + 1, progress.epochs_done):
            run.log(progress.epoch_metrics(epoch), step=epoch)
        for epoch in range(progress.epochs_done, trainer.epochs):
            epoch_began = time.perf_counter()
            plan = schedule(epoch, progress.history)
            apply_plan(optimizer, plan, lr_scale)
            order = torch.randperm(data.n_train, generator=parts.batch_order).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            epoch_start = time.perf_counter()
            train_loss, updates, samples = train_epoch(
                model, optimizer, data, order, batch_size=plan.batch_size, batches=parts.batches,
                generator=parts.batch_order, settings=parts.steps, noise=parts.noise,
                progress=console.epoch(epoch) if world.is_main else None,
            )
            epoch_train_s = time.perf_counter() - epoch_start  # .item() above waited for the device
            progress.train_time += epoch_train_s
            progress.param_updates += updates
            progress.samples_seen += samples

            val_loss, val_acc = evaluate(model, data.x_val, data.y_val, trainer.eval_batch_size,
                                         parts.steps.precision, world)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise Diverged(f"loss is {train_loss} (train) / {val_loss} (val) after epoch {epoch}: diverged")
            metrics = {
                schema.TRAIN_LOSS: train_loss,
                schema.VAL_LOSS: val_loss,
                schema.VAL_ACC: val_acc,
                schema.LR: plan.lr * lr_scale,
                schema.BATCH_SIZE: plan.batch_size,
                schema.MOMENTUM: plan.momentum,
                schema.NOISE_SCALE: noise_scale(plan.lr * lr_scale, plan.batch_size, plan.momentum, data.n_train),
                schema.PARAM_UPDATES: progress.param_updates,
                schema.SAMPLES_SEEN: progress.samples_seen,
                schema.WALL_TIME_S: progress.train_time,
                schema.SAMPLES_PER_S: samples / epoch_train_s,
            }
            if device.type == "cuda":
                metrics[schema.GPU_PEAK_MEMORY_MIB] = torch.cuda.max_memory_allocated(device) / 2**20
            if parts.noise is not None:  # smoothed over the last ~trainer.gns_memory_epochs epochs
                metrics.update(parts.noise.metrics())
            metrics.update(parts.schedule.metrics())  # what the schedule decided, if anything (critical_bs: its cap)
            progress.record(metrics)
            # Checkpoint before logging: a run killed in between re-logs this epoch on resume.
            if world.is_main:
                elapsed = progress.earlier_attempts_s + time.perf_counter() - started
                checkpoint.save(checkpoint_path, checkpoint_state(parts, progress, run.run_id, elapsed))
            # Resumed from an older checkpoint than the run's last logged epoch (the newer one was
            # torn: the .prev fallback), the epochs in between are trained again but logged once:
            # as first logged (the same numbers on CPU, the same seed).
            if epoch > logged:
                run.log(metrics, step=epoch)
            if world.is_main:
                console.epoch_done(
                    epoch,
                    f"lr {metrics[schema.LR]:.3g}  B {plan.batch_size}  train_loss {train_loss:.4f}  "
                    f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  updates {progress.param_updates}  "
                    f"{progress.train_time:.1f}s",
                    metrics[schema.SAMPLES_PER_S], time.perf_counter() - epoch_began,
                )

        final = {
            schema.FINAL_VAL_LOSS: progress.history[schema.VAL_LOSS][-1],
            schema.FINAL_VAL_ACC: progress.history[schema.VAL_ACC][-1],
            schema.TOTAL_PARAM_UPDATES: progress.param_updates,
            schema.TRAIN_TIME_S: progress.train_time,
            schema.TOTAL_WALL_TIME_S: progress.earlier_attempts_s + time.perf_counter() - started,
        }
        run.log({**final, **load_average(schema.LOAD_AVERAGE_END)})
        if cfg.tracking.log_weights:
            log_weights(run, parts.model)
    if world.is_main:
        checkpoint.remove(checkpoint_path)  # the FINISHED run is the record now
    log.info("[%s] done: %s", console.label, "  ".join(f"{k} {v:.4g}" for k, v in final.items()))
    return {"outcome": "resumed" if saved_state else "finished", **final}
