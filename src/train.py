"""train(cfg) -> final metrics: one run of one schedule, read top to bottom.

Per epoch: ask the schedule for (lr, B, m); set lr and m on the optimizer; draw a seeded
permutation of the resident training tensors and cut it into batches of B (src.batching:
under the default trainer.last_batch=carry the samples left over at an epoch's end open the next
epoch's first batch, so every update has exactly B samples); step (src.step); validate;
checkpoint (src.checkpoint); log one batch of metrics. Counters are exact: param_updates counts
optimizer steps, samples_seen the samples that went into them. Times are seconds.

A run is identified by the hash of its resolved config and its data's digest
(tracking.hash_config, once the data are loaded; paths never enter it). With
trainer.resume (the default) a run already FINISHED is skipped, and an interrupted one resumes
from its last checkpoint into the same MLflow run, with the same numbers as if it had never
stopped. Each epoch is logged once, whatever the interruption. Two processes given the same
config and output folder train it one after the other, never together (a lock per config).

Where the rest lives: building a run, src.build; one epoch of steps and the evaluation of a
split, src.step; what a checkpoint holds and the loop's counters, src.checkpoint; the MLflow
run, src.tracking; the console, src.progress.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import sys
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from src import checkpoint, devices, schema, sweep_record, tracking
from src.build import RunParts, apply_plan, build_run
from src.checkpoint import LoopState
from src.config import validate
from src.data import Dataset
from src.distributed import World, join, leave, together
from src.errors import Diverged, Stopped
from src.files import check_folder
from src.progress import Console, EpochProgress, SweepPace
from src.progress import label as job_label
from src.profiling import profiled
from src.schedules import Plan, noise_scale
from src.step import Learner, evaluate_split, train_epoch

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Train one run; returns {"outcome": finished | resumed | skipped, <schema.FINAL_METRICS>}.
    Launched by torchrun, the processes train it together (src/distributed.py).

    One function on purpose (~85 lines, over the ~60 of the rest): lock, skip or resume, build,
    the epoch loop and the end of the run read in the order they happen, each step a call whose
    name says what it does; cut further, the order would be spread over functions again."""
    world = join()
    try:
        validate(cfg)  # before anything is built or logged
        trainer, name = cfg.trainer, run_name(cfg)
        if world.is_main:
            check_folder("paths.output_dir", cfg.paths.output_dir)  # checkpoints, the lock
        with _one_at_a_time(checkpoint.lock_path(cfg), name, world):
            started = time.perf_counter()
            sweep_id = cfg.tracking.sweep_id or f"adhoc-{uuid.uuid4().hex[:8]}"
            experiment_id = tracking.prepare_store(cfg.tracking)  # once: every later call is given it
            label, pace = _in_its_sweep(cfg, name)  # the console's: "job 2/6 <name>" in a sweep
            device = devices.pick_device(trainer.device, world)
            parts = _built(cfg, device, world)
            data_digest = parts.data.digest()  # hashes every sample (a copy off the GPU): once
            config_hash = tracking.hash_config(cfg, data_digest)  # the run's identity: config and data
            checkpoint_path = checkpoint.path_of(cfg, config_hash)
            if world.is_main:
                checkpoint.remove_stale_temporaries(checkpoint_path)
            if trainer.resume:
                finished = _finished_before(cfg, experiment_id, config_hash, sweep_id, label, world)
                if finished is not None:
                    return {"outcome": "skipped", **finished}
            saved_state = _checkpoint_to_resume(cfg, experiment_id, checkpoint_path, label) if trainer.resume else None
            if saved_state is None:
                checkpoint.remove(checkpoint_path)  # unreadable or unwanted: start over
            learner, loop = _restored(parts, world, saved_state)

            resume_run_id = saved_state["run_id"] if saved_state else None  # None: a new MLflow run
            tags = {**_tags(cfg, parts.data, device, sweep_id), schema.CONFIG_HASH_TAG: config_hash,
                    schema.CURVE_TAG: tracking.hash_config(cfg, data_digest, leave_out=[schema.SEED_PARAM])}
            tracked = (
                tracking.tracked_run(cfg, tags, name,
                                     resume_run_id=resume_run_id, experiment_id=experiment_id)
                if world.is_main else nullcontext(tracking.Untracked())  # rank 0 logs for every rank
            )
            with (tracked as run, _stopped_here(label, run, loop, checkpoint_path, trainer.epochs),
                  profiled(trainer.profile_steps, run, label) as on_step):  # debug=profile
                run.tag(load_average(schema.LOAD_AVERAGE_START))
                console = Console(label, trainer.epochs, cfg.tracking.progress, devices.this_job()[1],
                                  on_step=on_step, pace=pace)
                if world.is_main:  # a sweep's jobs leave the command that serves the UI to the sweep's end
                    console.opened(run.run_id, tracking.run_url(cfg.tracking, run.experiment_id, run.run_id),
                                   None if cfg.tracking.parent_run_id else tracking.ui_command(cfg.tracking),
                                   loop.epochs_done if saved_state else None)
                if not resume_run_id:  # a new MLflow run, also when it continues a checkpoint whose run is gone
                    run.log_dataset(parts.data)
                    run.log({schema.MODEL_PARAMETERS: sum(p.numel() for p in parts.model.parameters())})
                logged = run.last_logged_epoch() if resume_run_id else -1  # the last epoch this MLflow run holds
                # A new run continuing a checkpoint (the checkpoint's run was gone): every epoch so
                # far; killed between checkpoint and log: the last one.
                for epoch in range(logged + 1, loop.epochs_done):
                    run.log(loop.epoch_metrics(epoch), step=epoch)

                for epoch in range(loop.epochs_done, trainer.epochs):
                    epoch_began = time.perf_counter()
                    plan = parts.schedule(epoch, loop.history)
                    metrics = _train_and_validate(parts, learner, loop, epoch, plan, trainer.eval_batch_size,
                                                  console.epoch(epoch) if world.is_main else None)
                    loop.record(metrics)
                    # Checkpoint before logging: a run killed in between re-logs this epoch on resume.
                    if world.is_main:
                        elapsed = loop.earlier_attempts_s + time.perf_counter() - started
                        checkpoint.save(checkpoint_path, checkpoint.state_of(parts, loop, run.run_id, elapsed))
                    # Resumed from an older checkpoint than the run's last logged epoch (the newer
                    # one was torn: the .prev fallback), the epochs in between are trained again
                    # but logged once: as first logged (the same numbers on CPU, the same seed).
                    if epoch > logged:
                        run.log(metrics, step=epoch)
                    if world.is_main:
                        console.epoch_done(epoch, _epoch_line(metrics, loop), metrics[schema.SAMPLES_PER_S],
                                           time.perf_counter() - epoch_began)

                final = _final_metrics(loop, started)
                run.log_final(final, parts.data, parts.model if cfg.tracking.log_weights else None, trainer.epochs)
                run.tag(load_average(schema.LOAD_AVERAGE_END))
            if world.is_main:
                checkpoint.remove(checkpoint_path)  # the FINISHED run is the record now
            together(world)  # the other ranks wait for rank 0's record before they leave
            log.info("[%s] done: %s", label, "  ".join(f"{k} {v:.4g}" for k, v in final.items()))
            return {"outcome": "resumed" if saved_state else "finished", **final}
    finally:
        leave(world)


def _built(cfg: DictConfig, device: torch.device, world: World) -> RunParts:
    """The run built on `device` (src.build) with this job's CPU threads."""
    threads = devices.job_threads(cfg.trainer.threads)  # trainer.threads, else cores // jobs at once
    if threads:
        torch.set_num_threads(threads)
    return build_run(cfg, device, world)


def _restored(parts: RunParts, world: World, saved_state: dict | None) -> tuple[Learner, LoopState]:
    """`parts` put back where its checkpoint left them if there is one; the Learner that steps
    (under torchrun, the model wrapped in DDP after restoring, so every rank starts from the same
    weights; parts.model stays the unwrapped module, the one a checkpoint holds); the loop's state."""
    loop = checkpoint.restore(parts, saved_state) if saved_state else LoopState()
    learner = replace(parts, model=DistributedDataParallel(parts.model)) if world.size > 1 else parts
    return learner, loop


# --- one epoch -----------------------------------------------------------------------------------

# 7 parameters: the run, as built and as it steps, the loop's counters, and what this epoch is.
def _train_and_validate(parts: RunParts, learner: Learner, loop: LoopState, epoch: int, plan: Plan,
                        eval_batch_size: int, progress: EpochProgress | None) -> dict[str, float]:
    """Epoch `epoch` at `plan`: its training steps (the loop's counters advanced), then the
    validation and the test split; returns the epoch's metrics, as logged. `learner` is `parts` with the model
    as it steps (DDP-wrapped under torchrun). A loss that is not finite ends the run (Diverged)."""
    data = parts.data
    device = data.x_train.device
    apply_plan(parts.optimizer, plan, parts.lr_scale)
    order = torch.randperm(data.n_train, generator=parts.batch_order).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    epoch_start = time.perf_counter()
    lr_ramp = None if plan.lr_end is None else (plan.lr * parts.lr_scale, plan.lr_end * parts.lr_scale)
    train_loss, updates, samples = train_epoch(learner, order, plan.batch_size, progress, lr_ramp)
    epoch_train_s = time.perf_counter() - epoch_start  # .item() above waited for the device
    loop.train_time += epoch_train_s
    loop.param_updates += updates
    loop.samples_seen += samples

    val_loss, val_acc = evaluate_split(learner.model, data.x_val, data.y_val, eval_batch_size,
                                       parts.settings.precision, parts.settings.world)
    test_loss, test_acc = evaluate_split(learner.model, data.x_test, data.y_test, eval_batch_size,
                                         parts.settings.precision, parts.settings.world)
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise Diverged(f"loss is {train_loss} (train) / {val_loss} (val) after epoch {epoch}: diverged")
    lr = plan.lr * parts.lr_scale
    metrics = {
        schema.TRAIN_LOSS: train_loss,
        schema.VAL_LOSS: val_loss,
        schema.VAL_ACC: val_acc,
        schema.TEST_LOSS: test_loss,
        schema.TEST_ACC: test_acc,
        schema.LR: lr,
        schema.BATCH_SIZE: plan.batch_size,
        schema.MOMENTUM: plan.momentum,
        schema.NOISE_SCALE: noise_scale(lr, plan.batch_size, plan.momentum, data.n_train),
        schema.PARAM_UPDATES: loop.param_updates,
        schema.SAMPLES_SEEN: loop.samples_seen,
        schema.WALL_TIME_S: loop.train_time,
        schema.SAMPLES_PER_S: samples / epoch_train_s,
    }
    if device.type == "cuda":
        metrics[schema.GPU_PEAK_MEMORY_MIB] = torch.cuda.max_memory_allocated(device) / 2**20
    if parts.noise is not None:  # smoothed over the last ~trainer.gns_memory_epochs epochs
        metrics.update(parts.noise.metrics())
    metrics.update(parts.schedule.metrics())  # what the schedule decided, if anything (critical_bs: its cap)
    return metrics


def _final_metrics(loop: LoopState, started: float) -> dict[str, float]:
    """What a run logs once, at its end (schema.FINAL_METRICS); `started`: this attempt's
    perf_counter at its start."""
    return {
        schema.FINAL_VAL_LOSS: loop.history[schema.VAL_LOSS][-1],
        schema.FINAL_VAL_ACC: loop.history[schema.VAL_ACC][-1],
        schema.FINAL_TEST_LOSS: loop.history[schema.TEST_LOSS][-1],
        schema.FINAL_TEST_ACC: loop.history[schema.TEST_ACC][-1],
        schema.TOTAL_PARAM_UPDATES: loop.param_updates,
        schema.TRAIN_TIME_S: loop.train_time,
        schema.TOTAL_WALL_TIME_S: loop.earlier_attempts_s + time.perf_counter() - started,
    }


def _epoch_line(metrics: dict[str, float], loop: LoopState) -> str:
    """The console's line for an epoch just done."""
    return (f"lr {metrics[schema.LR]:.3g}  B {metrics[schema.BATCH_SIZE]}  train_loss {metrics[schema.TRAIN_LOSS]:.4f}  "
            f"val_loss {metrics[schema.VAL_LOSS]:.4f}  val_acc {metrics[schema.VAL_ACC]:.4f}  "
            f"updates {loop.param_updates}  {loop.train_time:.1f}s")


# --- lock, skip or resume ------------------------------------------------------------------------

@contextmanager
def _one_at_a_time(path: Path, label: str, world: World):
    """Held while a process trains a config: a lock per config hash next to its checkpoint
    (`path`, from checkpoint.lock_path: by the config alone, as the data are not loaded yet,
    so configs that differ only in their data wait for each other too). Two processes given the same config and output folder
    (two sweeps started at once, a job started twice) then train it one after the other: the
    second waits, then finds the run FINISHED and skips it, or resumes it if the first stopped.
    It waits rather than skipping at once so that its sweep still gets the run's final metrics
    and joins it. Rank 0 holds it for a DDP run (the other ranks wait for rank 0 anyway)."""
    if not world.is_main:
        yield
        return
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


def _in_its_sweep(cfg: DictConfig, name: str) -> tuple[str, SweepPace | None]:
    """(the run's console label: `name`, and in a sweep which job of how many it is; its sweep's
    pace so far, for the sweep's ETA: None outside a sweep or where its launcher does not start
    the jobs in turn), read from the sweep's parent run in the store."""
    job_number, _ = devices.this_job()
    jobs, job_s = sweep_record.sweep_so_far(cfg.tracking)
    at_once = devices.jobs_in_turn()
    pace = SweepPace(job_s, jobs - job_number - 1, at_once) if jobs and job_number is not None and at_once else None
    return job_label(name, job_number, jobs), pace


# 6 parameters: the config and its identity, where to look, and who asks.
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
    saved_state = checkpoint.load(path)
    if saved_state is not None and not tracking.run_is_in_store(cfg, saved_state["run_id"], experiment_id):
        log.warning("[%s] checkpoint %s continues MLflow run %s, which is not in %s (experiment %s): resuming it "
                    "into a new run, with its %d epochs re-logged", label, path, saved_state["run_id"],
                    cfg.tracking.uri, cfg.tracking.experiment, saved_state["epoch"] + 1)
        saved_state["run_id"] = None
    return saved_state


@contextmanager
def _stopped_here(label: str, run, loop: LoopState, checkpoint_path: Path, epochs: int):
    """Ctrl-C or SIGTERM in the loop becomes Stopped, whose one line says which MLflow run is
    KILLED, where its checkpoint is and how to resume (the run is closed KILLED by tracked_run)."""
    try:
        yield
    except KeyboardInterrupt as stop:
        signum = stop.signal if isinstance(stop, Stopped) else signal.SIGINT
        kept = (f"checkpoint {checkpoint_path}" if checkpoint_path.exists()
                else "no checkpoint yet (none before the first epoch ends)")
        raise Stopped(signum, f"[{label}] MLflow run {run.run_id} KILLED after {loop.epochs_done} of {epochs} "
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


def _tags(cfg: DictConfig, data: Dataset, device: torch.device, sweep_id: str) -> dict[str, str]:
    """A training run's tags: what it trained, its colour in MLflow's UI (the figures' colour of
    its schedule), and where and how it ran on `device` (for the report's environment block; not
    part of the config)."""
    device_name = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    known = cfg.schedule.name in schema.SCHEDULE_COLORS
    color = {schema.RUN_COLOR_TAG: schema.SCHEDULE_COLORS[cfg.schedule.name]} if known else {}
    return {schema.SCHEDULE_TAG: cfg.schedule.name, schema.SEED_TAG: str(cfg.trainer.seed), schema.SWEEP_TAG: sweep_id,
            **color, **option_tags(cfg, data),
            schema.DEVICE_TAG: device_name, schema.THREADS_TAG: str(torch.get_num_threads()),
            schema.CPUS_TAG: str(os.cpu_count()), schema.TORCH_VERSION_TAG: torch.__version__,
            schema.COMMAND_TAG: shlex.join(sys.argv)}


def load_average(names: dict[str, str]) -> dict[str, float]:
    """The machine's load averages (runnable processes, all users) over schema.LOAD_SPANS, in
    os.getloadavg's order, under `names` (schema.LOAD_AVERAGE_START or _END): the context a wall
    time is read in (report.md's environment block)."""
    return dict(zip((names[span] for span in schema.LOAD_SPANS), os.getloadavg()))

