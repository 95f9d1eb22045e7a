"""train(cfg) -> final metrics: one run of one schedule, read top to bottom.

Per epoch: ask the schedule for (lr, B, m); set lr and m on the optimizer; slice a seeded
permutation of the resident training tensors into batches of B; step; validate; log one batch
of metrics. Counters are exact: param_updates counts optimizer steps, samples_seen the samples
that went into them. Times are seconds.
"""

from __future__ import annotations

import logging
import random
import time
import uuid

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src import tracking
from src.data import Dataset, batch_indices
from src.schedules import Plan, noise_scale

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def train_epoch(model, optimizer, data: Dataset, order: torch.Tensor, batch_size: int, last_batch: str):
    """One pass over the permutation `order`. Returns (mean train loss, updates, samples)."""
    model.train()
    loss_sum = torch.zeros((), device=data.x_train.device)  # summed on device: no sync per step
    updates = samples = 0
    for index in batch_indices(order, batch_size, last_batch):
        loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        updates += 1
        samples += len(index)
    return loss_sum.item() / samples, updates, samples


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, chunk: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction, 0..1) over (x, y)."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(y), chunk):
        logits = model(x[start : start + chunk])
        target = y[start : start + chunk]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return loss_sum.item() / len(y), correct.item() / len(y)


def train(cfg: DictConfig) -> dict[str, float]:
    started = time.perf_counter()
    trainer = cfg.trainer
    seed_everything(trainer.seed)  # before anything is built
    if trainer.threads:
        torch.set_num_threads(trainer.threads)
    device = pick_device(trainer.device)

    data: Dataset = instantiate(cfg.dataset).to(device)
    model = instantiate(cfg.model, input_shape=data.input_shape, n_classes=data.n_classes).to(device)
    momentum = cfg.optimizer.get("momentum", 0.0)  # Adam: 0, see conf/optimizer/adam.yaml
    schedule = instantiate(cfg.schedule, n_train=data.n_train, epochs=trainer.epochs, momentum=momentum)
    lr_scale = cfg.optimizer.lr_scale
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), schedule(0).lr)
    batch_order = torch.Generator().manual_seed(trainer.seed)  # on CPU: same order on any device

    sweep_id = cfg.tracking.sweep_id or f"adhoc-{uuid.uuid4().hex[:8]}"
    tags = {"schedule": cfg.schedule.name, "seed": str(trainer.seed), "sweep_id": sweep_id}
    label = f"{cfg.schedule.name} seed={trainer.seed}"
    param_updates = samples_seen = 0
    train_time = 0.0
    val_losses: list[float] = []
    with tracking.tracked_run(cfg, tags, run_name=label) as run:
        for epoch in range(trainer.epochs):
            plan = schedule(epoch, val_losses)
            apply_plan(optimizer, plan, lr_scale)
            order = torch.randperm(data.n_train, generator=batch_order).to(device)

            epoch_start = time.perf_counter()
            train_loss, updates, samples = train_epoch(
                model, optimizer, data, order, plan.batch_size, trainer.last_batch
            )
            train_time += time.perf_counter() - epoch_start  # .item() above waited for the device
            param_updates += updates
            samples_seen += samples

            val_loss, val_acc = evaluate(model, data.x_val, data.y_val, trainer.eval_batch_size)
            val_losses.append(val_loss)
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
            run.log(metrics, step=epoch)
            log.info(
                "[%s] epoch %d/%d  lr %.3g  B %d  train_loss %.4f  val_loss %.4f  val_acc %.4f"
                "  updates %d  %.1fs",
                label, epoch + 1, trainer.epochs, metrics["lr"], plan.batch_size,
                train_loss, val_loss, val_acc, param_updates, train_time,
            )

        final = {
            "final_val_loss": val_losses[-1],
            "final_val_acc": val_acc,
            "total_param_updates": param_updates,
            "train_time_s": train_time,
            "total_wall_time_s": time.perf_counter() - started,
        }
        run.log(final)
    log.info("[%s] done: %s", label, "  ".join(f"{k} {v:.4g}" for k, v in final.items()))
    return final
