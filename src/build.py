"""Building a run from its config: the data, the model, the schedule, the optimizer and the
settings of each step (RunParts), seeded by trainer.seed, the same for train() and the
benchmarks (which may hand in data of their own).

Each group is built with Hydra's instantiate from its `_target_`; a constructor that refuses
its values becomes one line naming the group's target (_built_from), before any MLflow run is
created, rather than a traceback at the first step.
"""

from __future__ import annotations

import random
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src import schema
from src.batching import BatchStream
from src.config import validate_against_data
from src.data import Dataset
from src.distributed import World
from src.errors import ConfigError, DatasetUnavailable
from src.gns import NoiseScaleEstimator
from src.schedules import Plan, Schedule
from src.step import Learner, Precision, StepSettings


@dataclass
class RunParts(Learner):
    """What one run trains with, built from its config (build_run): a Learner (model,
    optimizer, data, batches, step settings; its model is the unwrapped module, what a
    checkpoint holds) and what the loop asks each epoch (the schedule)."""

    schedule: Schedule
    lr_scale: float  # optimizer.lr_scale: the optimizer applies the schedule's lr times this


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(optimizer_cfg: DictConfig, params, lr: float) -> torch.optim.Optimizer:
    """instantiate(_target_) with the schedule's first lr; lr_scale is ours, not torch's."""
    kwargs = OmegaConf.to_container(optimizer_cfg, resolve=True)
    lr_scale = kwargs.pop("lr_scale")
    return instantiate(kwargs, params, lr=lr * lr_scale)


def apply_plan(optimizer: torch.optim.Optimizer, plan: Plan, lr_scale: float) -> None:
    """An epoch's lr (times lr_scale) and momentum on the optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = plan.lr * lr_scale
        if "momentum" in group:  # SGD; Adam's betas stay as configured
            group["momentum"] = plan.momentum


def make_schedule(cfg: DictConfig, n_train: int, epochs: int | None = None) -> Schedule:
    """instantiate(cfg.schedule) with what the loop supplies: N, the epochs (trainer.epochs
    unless given) and the optimizer's momentum (Adam: 0, see conf/optimizer/adam.yaml)."""
    momentum = cfg.optimizer.get("momentum", 0.0)
    epochs = cfg.trainer.epochs if epochs is None else epochs
    return instantiate(cfg.schedule, n_train=n_train, epochs=epochs, optimizer_momentum=momentum)


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


def _returned(value: object) -> str:
    """What a dataset function returned, as a message names it: a tensor by dtype and shape."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__ if value is not None else "None"


def check_dataset(target: str, data: object) -> None:
    """What a dataset function (dataset._target_, the project's or a user's) must return: a
    src.data.Dataset whose x_* are floating tensors of one sample shape, whose y_* are 1-D int64
    class indices in 0..n_classes-1, one per sample, and whose source is a URI MLflow resolves
    (the runs' Dataset column). Anything else is one ConfigError naming `target` and what it
    returned, before any MLflow run exists."""
    def refuse(what: str) -> None:
        raise ConfigError(f"dataset._target_={target}: must return a src.data.Dataset (README: Your own data "
                          f"and model); {what}")

    if not isinstance(data, Dataset):
        refuse(f"returned {_returned(data)}")
    splits = [f.name[2:] for f in fields(Dataset) if f.name.startswith("x_")]  # train, val (and test)
    for split in splits:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            refuse(f"x_{split} is {_returned(x)}, not a floating tensor of (samples, features...)")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != x.shape[:1]:
            refuse(f"y_{split} is {_returned(y)}, not int64 class indices, one per sample of x_{split} ({len(x)})")
        if x.shape[1:] != data.x_train.shape[1:]:
            refuse(f"x_{split} samples have shape {tuple(x.shape[1:])}, x_train's {tuple(data.x_train.shape[1:])}")
        if len(y) and not (isinstance(data.n_classes, int) and 0 <= int(y.min()) <= int(y.max()) < data.n_classes):
            refuse(f"y_{split} holds classes {int(y.min())}..{int(y.max())}, not 0..n_classes-1 (n_classes={data.n_classes!r})")
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    try:
        with warnings.catch_warnings():  # file: and the empty scheme both resolve to MLflow's local source
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            resolve_dataset_source(data.source)
    except MlflowException:
        refuse(f"source={data.source!r} is no URI MLflow can resolve (a file:// path, https://, s3:// ...)")


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


def first_samples(data: Dataset, train_samples: int | None, eval_samples: int | None) -> Dataset:
    """The first `train_samples` training samples and the first `eval_samples` of the validation
    and the test split (trainer.train_samples, trainer.eval_samples: conf/debug/'s few batches);
    None: all (src.config checks they are >= 1). The splits are shuffled already, so the first
    are a random subset."""
    train, held_out = slice(train_samples), slice(eval_samples)
    return replace(data, x_train=data.x_train[train], y_train=data.y_train[train], x_val=data.x_val[held_out],
                   y_val=data.y_val[held_out], x_test=data.x_test[held_out], y_test=data.y_test[held_out])


def build_run(cfg: DictConfig, device: torch.device, world: World = World(), data: Dataset | None = None) -> RunParts:
    """Data, model, schedule and optimizer as a run of `cfg` trains them, seeded by trainer.seed:
    the same call for train() and the benchmarks. `data`: already on `device` (a benchmark's
    synthetic images); None: cfg.dataset's, moved there."""
    trainer = cfg.trainer
    seed_everything(trainer.seed)  # before anything is built
    if data is None:
        with _built_from(cfg, "dataset", "cannot make its data"):
            data = instantiate(cfg.dataset)
        check_dataset(cfg.dataset._target_, data)
        data = first_samples(data, trainer.train_samples, trainer.eval_samples).to(device)
    validate_against_data(cfg, data.n_train, data.n_val, data.n_test)
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
        model=model,
        optimizer=optimizer,
        data=data,
        batches=BatchStream(trainer.last_batch),
        batch_order=torch.Generator().manual_seed(trainer.seed),
        settings=StepSettings(trainer.micro_batch_size, precision, world),
        noise=(NoiseScaleEstimator(trainer.gns_memory_epochs * data.n_train, trainer.gns_every)  # memory in samples
               if measure_noise else None),
        schedule=schedule,
        lr_scale=cfg.optimizer.lr_scale,
    )
