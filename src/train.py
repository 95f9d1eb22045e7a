"""train(cfg) -> final metrics: one run of one schedule, read top to bottom.

Per epoch: ask the schedule for (lr, B, m); set lr and m on the optimizer; draw a seeded
permutation of the resident training tensors and cut it into batches of B (src.data.BatchStream:
under the default trainer.last_batch=carry the samples left over at an epoch's end open the next
epoch's first batch, so every update has exactly B samples); step; validate; checkpoint; log one
batch of metrics. Counters are exact: param_updates counts optimizer steps, samples_seen the
samples that went into them. Times are seconds.

A run is identified by the hash of its resolved config (tracking.config_hash). With
trainer.resume (the default) a run already FINISHED is skipped, and an interrupted one resumes
from its last checkpoint into the same MLflow run, with the same numbers as if it had never
stopped: model, optimizer, schedule, the RNG streams and the counters are all restored.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shlex
import sys
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from src import checkpoint, devices, tracking
from src.config import validate, validate_against_data
from src.data import BatchStream, Dataset
from src.distributed import World, all_sum, join, leave, share
from src.errors import ConfigError, Diverged
from src.gns import NoiseScaleEstimator
from src.schedules import Plan, noise_scale

log = logging.getLogger(__name__)

FINAL_METRICS = ("final_val_loss", "final_val_acc", "total_param_updates", "train_time_s", "total_wall_time_s")
CHECKPOINT_KEYS = {"run_id", "store", "epoch", "model", "optimizer", "schedule", "noise", "rng", "batches", "counters",
                   "history", "metrics"}


def load_average(when: str) -> dict[str, float]:
    """The machine's 1-, 5- and 15-minute load averages (runnable processes, all users), e.g.
    load_1m_start: the context a wall time is read in (report.md's environment block)."""
    return {f"load_{span}_{when}": value for span, value in zip(("1m", "5m", "15m"), os.getloadavg())}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, world: World) -> torch.device:
    """Under DDP with `auto` or `cuda`, the rank's local GPU; otherwise the one-GPU-per-job rule of
    src.devices.device_for_job (CPU when there is no GPU)."""
    if name in ("auto", "cuda") and world.size > 1 and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device(devices.job_device(name))


def build_optimizer(optimizer_cfg: DictConfig, params, lr: float) -> torch.optim.Optimizer:
    """instantiate(_target_) with the schedule's first lr; lr_scale is ours, not torch's."""
    kwargs = OmegaConf.to_container(optimizer_cfg, resolve=True)
    lr_scale = kwargs.pop("lr_scale")
    return instantiate(kwargs, params, lr=lr * lr_scale)


def apply_plan(optimizer: torch.optim.Optimizer, plan: Plan, lr_scale: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = plan.lr * lr_scale
        if "momentum" in group:  # SGD; Adam's betas stay as configured
            group["momentum"] = plan.momentum


def train_epoch(model, optimizer, data: Dataset, order: torch.Tensor, batch_size: int, batches: BatchStream,
                micro_batch_size: int | None, generator: torch.Generator, precision: "Precision",
                world: World = World(), noise: NoiseScaleEstimator | None = None):
    """The updates drawn while the permutation `order` is consumed, in batches of batch_size cut
    by `batches` (under carry they include the samples carried in from the epoch before, and the
    samples carried out are left to the next). Returns (mean train loss over the samples of
    these updates, updates, samples).

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
    model.train()
    loss_sum = torch.zeros((), device=data.x_train.device)  # summed on device: no sync per step
    updates = samples = 0
    norms = []  # per measured step: (mean |part gradient|^2, their harmonic mean size, |batch gradient|^2, B)
    for index in batches.epoch(order, batch_size):
        x, y = data.x_train[index], data.y_train[index]
        if data.augment is not None:
            x = data.augment(x, generator)
        x, y = share(x, world), share(y, world)
        weight = world.size / len(index)  # per sample: its share of the batch, DDP's average undone
        measure = noise is not None and updates % noise.every == 0 and len(y) > 1
        part_size = micro_batch_size or len(y)
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
    if norms:
        part_sq, part_size, batch_sq, size = zip(*norms)
        for values in zip(torch.stack(part_sq).tolist(), part_size, torch.stack(batch_sq).tolist(), size):
            noise.update(*values)
    return all_sum(loss_sum, world).item() / samples, updates, samples


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, chunk: int, precision: "Precision",
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


def rng_state(batch_order: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "batch_order": batch_order.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, batch_order: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    batch_order.set_state(state["batch_order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cfg: DictConfig) -> dict:
    """Train one run; returns {"outcome": finished | resumed | skipped, <FINAL_METRICS>}.
    Launched by torchrun, the processes train it together (src/distributed.py)."""
    world = join()
    try:
        return _train(cfg, world)
    finally:
        leave(world)


def _train(cfg: DictConfig, world: World) -> dict:
    started = time.perf_counter()
    validate(cfg)  # before anything is built or logged
    trainer = cfg.trainer
    label = f"{cfg.schedule.name} seed={trainer.seed}"
    key = tracking.config_hash(cfg)
    sweep_id = cfg.tracking.sweep_id or f"adhoc-{uuid.uuid4().hex[:8]}"
    if trainer.resume:
        for done in tracking.runs_with_config(cfg, key, status="FINISHED")[:1]:
            log.info("[%s] already FINISHED as MLflow run %s (config %s): skipped", label, done.info.run_id, key)
            if world.is_main:
                tracking.join_sweep(cfg, done.info.run_id, sweep_id)
            return {"outcome": "skipped", **{k: done.data.metrics[k] for k in FINAL_METRICS}}
    checkpoint_path = Path(cfg.paths.output_dir) / "checkpoints" / f"{key}.pt"
    store = f"{cfg.tracking.uri} experiment={cfg.tracking.experiment}"  # where run_id lives
    resumed = checkpoint.load(checkpoint_path, CHECKPOINT_KEYS) if trainer.resume else None
    if resumed is not None and resumed["store"] != store:
        log.warning("[%s] checkpoint %s continues a run logged to %s, not %s: starting over",
                    label, checkpoint_path, resumed["store"], store)
        resumed = None
    if resumed is None:
        checkpoint.remove(checkpoint_path)  # unreadable or unwanted: start over

    seed_everything(trainer.seed)  # before anything is built
    threads = devices.job_threads(trainer.threads)  # trainer.threads, else cores // jobs at once
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(trainer.device, world)
    data: Dataset = instantiate(cfg.dataset).to(device)
    validate_against_data(cfg, data.n_train)
    precision = Precision(device, trainer.bf16, trainer.channels_last)
    net = instantiate(cfg.model, input_shape=data.input_shape, n_classes=data.n_classes).to(device)
    net = precision.prepare(net)
    momentum = cfg.optimizer.get("momentum", 0.0)  # Adam: 0, see conf/optimizer/adam.yaml
    schedule = instantiate(cfg.schedule, n_train=data.n_train, epochs=trainer.epochs, optimizer_momentum=momentum)
    lr_scale = cfg.optimizer.lr_scale
    # Measure the gradient noise scale when asked, or when the schedule follows it.
    measure_noise = trainer.gns or "gns_b_simple" in getattr(schedule, "follows", ())
    if measure_noise and world.size > 1:
        asked_by = "trainer.gns=true" if trainer.gns else f"schedule={cfg.schedule.name}"
        raise ConfigError(f"{asked_by}: the noise-scale estimate needs a single process, not DDP")
    noise = NoiseScaleEstimator(trainer.gns_ema, trainer.gns_every) if measure_noise else None
    if schedule(0).batch_size < world.size:
        raise ConfigError(
            f"schedule.batch_size={cfg.schedule.batch_size}: the first batch ({schedule(0).batch_size}) "
            f"must be >= the {world.size} ranks"
        )
    optimizer = build_optimizer(cfg.optimizer, net.parameters(), schedule(0).lr)
    # One CPU stream for the batch order and the augmentation: the same on any device, and one
    # state to checkpoint.
    batch_order = torch.Generator().manual_seed(trainer.seed)
    batches = BatchStream(trainer.last_batch)  # under carry, the leftover: checkpointed with the rest

    first_epoch, param_updates, samples_seen, train_time = 0, 0, 0, 0.0
    history: dict[str, list[float]] = {}  # every per-epoch metric so far: what schedules follow
    if resumed:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        if noise is not None:
            noise.load_state_dict(resumed["noise"])
        restore_rng(resumed["rng"], batch_order)
        batches.load_state_dict(resumed["batches"])
        first_epoch = resumed["epoch"] + 1
        param_updates, samples_seen, train_time, elapsed = resumed["counters"]
        started -= elapsed  # total_wall_time_s counts the earlier attempts too
        history = {name: list(values) for name, values in resumed["history"].items()}
        val_acc = resumed["metrics"]["val_acc"]
    # DDP after restoring: every rank then starts from the same weights.
    model = DistributedDataParallel(net) if world.size > 1 else net

    tags = {"schedule": cfg.schedule.name, "seed": str(trainer.seed), "sweep_id": sweep_id,
            # the preset (experiment=...) the command line chose, else "default": src.reproduce reads it
            "preset": (HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None)
            or "default",
            # where and how it ran, for the report's environment block (not part of the config)
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "threads": str(torch.get_num_threads()), "cpus": str(os.cpu_count()),
            "torch_version": torch.__version__, "command": shlex.join(sys.argv)}
    tracked = (
        tracking.tracked_run(cfg, tags, label, resume_run_id=resumed and resumed["run_id"])
        if world.is_main else nullcontext(tracking.Untracked())  # rank 0 logs for every rank
    )
    with tracked as run:
        run.log(load_average("start"))
        if resumed:
            log.info("[%s] resuming MLflow run %s from epoch %d of %d", label, run.run_id, first_epoch + 1, trainer.epochs)
            if run.last_logged_epoch() < resumed["epoch"]:  # killed between checkpoint and log
                run.log(resumed["metrics"], step=resumed["epoch"])
        for epoch in range(first_epoch, trainer.epochs):
            plan = schedule(epoch, history)
            apply_plan(optimizer, plan, lr_scale)
            order = torch.randperm(data.n_train, generator=batch_order).to(device)

            epoch_start = time.perf_counter()
            train_loss, updates, samples = train_epoch(
                model, optimizer, data, order, plan.batch_size, batches,
                trainer.micro_batch_size, batch_order, precision, world, noise,
            )
            train_time += time.perf_counter() - epoch_start  # .item() above waited for the device
            param_updates += updates
            samples_seen += samples

            val_loss, val_acc = evaluate(model, data.x_val, data.y_val, trainer.eval_batch_size, precision, world)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise Diverged(f"loss is {train_loss} (train) / {val_loss} (val) after epoch {epoch}: diverged")
            metrics = {
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": plan.lr * lr_scale,
                "batch_size": plan.batch_size,
                "momentum": plan.momentum,
                "noise_scale": noise_scale(plan.lr * lr_scale, plan.batch_size, plan.momentum, data.n_train),
                "param_updates": param_updates,
                "samples_seen": samples_seen,
                "wall_time_s": train_time,
            }
            if noise is not None:  # smoothed over the last ~1/(1-ema) measured steps
                metrics.update(noise.metrics())
            for name, value in metrics.items():
                history.setdefault(name, []).append(value)
            # Checkpoint before logging: a run killed in between re-logs this epoch on resume.
            if world.is_main:
                checkpoint.save(checkpoint_path, {
                    "run_id": run.run_id,
                    "store": store,
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "noise": noise.state_dict() if noise is not None else {},
                    "rng": rng_state(batch_order),
                    "batches": batches.state_dict(),
                    "counters": [param_updates, samples_seen, train_time, time.perf_counter() - started],
                    "history": history,
                    "metrics": metrics,
                })
            run.log(metrics, step=epoch)
            log.info(
                "[%s] epoch %d/%d  lr %.3g  B %d  train_loss %.4f  val_loss %.4f  val_acc %.4f"
                "  updates %d  %.1fs",
                label, epoch + 1, trainer.epochs, metrics["lr"], plan.batch_size,
                train_loss, val_loss, val_acc, param_updates, train_time,
            )

        final = {
            "final_val_loss": history["val_loss"][-1],
            "final_val_acc": val_acc,
            "total_param_updates": param_updates,
            "train_time_s": train_time,
            "total_wall_time_s": time.perf_counter() - started,
        }
        run.log({**final, **load_average("end")})
    if world.is_main:
        checkpoint.remove(checkpoint_path)  # the FINISHED run is the record now
    log.info("[%s] done: %s", label, "  ".join(f"{k} {v:.4g}" for k, v in final.items()))
    return {"outcome": "resumed" if resumed else "finished", **final}
