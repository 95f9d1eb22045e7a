"""One epoch of training steps, and the evaluation of a split: what a run does between two
checkpoints, given what src.build built (a Learner).

Precision says how forward passes run (bfloat16 autocast, channels-last layout); StepSettings
how each batch becomes one optimizer step (micro-batches, the DDP ranks); a Learner is the
model, its optimizer, the data and the run's batch stream, the same objects every epoch.
train_epoch makes the updates of one epoch's permutation; evaluate_split measures the loss and
accuracy of a split. Neither knows of schedules, checkpoints or MLflow.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.batching import BatchStream
from src.data import Dataset
from src.distributed import World, all_sum, share
from src.gns import NoiseScaleEstimator
from src.progress import EpochProgress


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


@dataclass
class Learner:
    """What train_epoch steps, and with what: the same objects for every epoch of a run
    (src.build.build_run builds them as a run of a config has them; src.build.RunParts is one)."""

    model: torch.nn.Module  # what the step calls: under torchrun the module wrapped in DDP (src.train)
    optimizer: torch.optim.Optimizer
    data: Dataset  # resident on the training device
    batches: BatchStream  # cuts each epoch's permutation by trainer.last_batch; under carry, holds the leftover
    # One CPU stream for the batch order and the augmentation: the same on any device, and one
    # state to checkpoint.
    batch_order: torch.Generator
    settings: StepSettings
    noise: NoiseScaleEstimator | None  # measures the gradient noise scale when asked or followed


def train_epoch(learner: Learner, order: torch.Tensor, batch_size: int,
                progress: EpochProgress | None = None, lr_ramp: tuple[float, float] | None = None
                ) -> tuple[float, int, int]:
    """The updates drawn while the permutation `order` is consumed, in batches of batch_size cut
    by learner.batches (under carry they include the samples carried in from the epoch before,
    and the samples carried out are left to the next). Returns (mean train loss over the samples
    of these updates, updates, samples). `progress` hears of every step (src/progress.py).
    lr_ramp (first, end): step i of n trains at first + (end - first) * i / n, a per-iteration
    warm-up (src.schedules.Plan.lr_end); None: the optimizer's lr as it is.

    Augmentation (if the data have one) is drawn for the whole batch first, so it depends
    neither on the micro-batch size nor on the number of ranks. Under DDP each rank trains on its
    share (src/distributed.py). With learner.noise, the measured steps' gradient norms stay on
    the device until the end of the epoch (no sync per step), then feed the estimator.
    """
    data, world, noise = learner.data, learner.settings.world, learner.noise
    learner.model.train()
    loss_sum = torch.zeros((), device=data.x_train.device)  # summed on device: no sync per step
    updates = samples = samples_here = 0  # samples_here: this rank's share of them, which loss_sum sums over
    norms = []  # per measured step: (mean |part gradient|^2, their harmonic mean size, |batch gradient|^2, B)
    epoch_batches = learner.batches.epoch(order, batch_size)
    if progress is not None:
        progress.start(len(epoch_batches))
    for step, index in enumerate(epoch_batches):
        if lr_ramp is not None:
            first, end = lr_ramp
            for group in learner.optimizer.param_groups:
                group["lr"] = first + (end - first) * step / len(epoch_batches)
        x, y = data.x_train[index], data.y_train[index]
        if data.augment is not None:
            x = data.augment(x, learner.batch_order)
        x, y = share(x, world), share(y, world)
        weight = world.size / len(index)  # per sample: its share of the batch, DDP's average undone
        measure = noise is not None and updates % noise.every == 0 and len(y) > 1
        measured = _update(learner, x, y, weight, measure, loss_sum)
        if measured is not None:
            norms.append(measured)
        updates += 1
        samples += len(index)
        samples_here += len(y)
        if progress is not None:
            progress.step(updates, samples, loss_sum, samples_here)
    if progress is not None:
        progress.done()
    if norms:
        part_sq, part_size, batch_sq, size = zip(*norms)
        for values in zip(torch.stack(part_sq).tolist(), part_size, torch.stack(batch_sq).tolist(), size):
            noise.update(*values)
    return all_sum(loss_sum, world).item() / samples, updates, samples


def _update(learner: Learner, x: torch.Tensor, y: torch.Tensor, weight: float, measure: bool,
            loss_sum: torch.Tensor) -> tuple | None:
    """One optimizer step on the batch (x, y) (this rank's share), its loss added to loss_sum
    (weighted by its samples). Returns the gradient norms of a measured step, else None.

    A batch larger than micro_batch_size is cut into micro-batches whose gradients add up to
    the whole batch's (each loss weighted by its share of the batch) before ONE optimizer step:
    B = 16,000 fits in the memory that a micro-batch needs. When `measure`, the squared norms of
    the parts' gradients and of the whole batch's feed the gradient-noise-scale estimator
    (src/gns.py); a batch that is not split anyway is split in two halves for it. Parts of
    unequal size (B not a multiple of the micro-batch, or odd B halved) count as their harmonic
    mean: mean_i |G_i|^2 estimates |G|^2 + tr(Sigma) * mean_i(1 / b_i), so that is the part size
    that keeps the estimator unbiased."""
    model, settings = learner.model, learner.settings
    precision, world = settings.precision, settings.world
    part_size = settings.micro_batch_size or len(y)
    if measure and part_size >= len(y):
        part_size = (len(y) + 1) // 2
    parts = list(zip(x.split(part_size), y.split(part_size)))
    learner.optimizer.zero_grad(set_to_none=True)
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
    measured = None
    if part_sq:
        harmonic_part_size = len(parts) / sum(1 / len(y_part) for _, y_part in parts)
        measured = torch.stack(part_sq).mean(), harmonic_part_size, before.square().sum(), len(y)
    learner.optimizer.step()
    return measured


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int, precision: Precision,
                   world: World = World()) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction, 0..1) over the split (x, y), in chunks of
    `chunk` samples (trainer.eval_batch_size: memory only); under DDP each rank evaluates its
    share and the sums are added across ranks."""
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
