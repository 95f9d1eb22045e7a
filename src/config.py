"""What a study config may hold, checked before anything is built or logged.

Every problem becomes a ConfigError with one line naming the key, the value and what is
allowed. The plain groups (trainer, tracking, paths) are structured configs: dataclasses
registered in Hydra's ConfigStore as types/<group>, under their YAML (each YAML lists
`/types/<group>@_here_` first in its defaults and holds every value; the dataclasses hold
`???`, a key the YAML must set). OmegaConf therefore refuses a wrong type or an unknown key while
Hydra composes, before any job exists. Groups built with `_target_` (dataset, model, optimizer,
schedule) are checked against the signature of what they build, so a new model or schedule needs
no schema of its own. Range checks follow.

The types are registered when this module is imported (src/run.py does, before Hydra composes)
and, for a composition that never imports it (the tests, the benchmarks, a notebook's compose()),
by hydra_plugins/study_configs, which Hydra imports when it starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from src.batching import check_last_batch
from src.errors import ConfigError
from src.schedules import milestone_epochs


# Fields in the order of their YAML, so `--cfg job` and the logged config.yaml read the same.
@dataclass
class TrainerConfig:
    epochs: int = MISSING
    device: str = MISSING
    seed: int = MISSING
    threads: Optional[int] = MISSING
    last_batch: str = MISSING
    eval_batch_size: int = MISSING
    micro_batch_size: Optional[int] = MISSING
    bf16: bool = MISSING
    channels_last: bool = MISSING
    resume: bool = MISSING
    gns: bool = MISSING
    gns_memory_epochs: float = MISSING
    gns_every: int = MISSING
    train_samples: Optional[int] = MISSING
    eval_samples: Optional[int] = MISSING
    profile_steps: int = MISSING


@dataclass
class ProgressConfig:
    after_s: float = MISSING
    refresh_s: float = MISSING
    log_every_s: float = MISSING


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment: str = MISSING
    artifact_root: str = MISSING
    sweep_id: Optional[str] = MISSING
    parent_run_id: Optional[str] = MISSING
    run_name: Optional[str] = MISSING
    tags: Dict[str, str] = MISSING
    note: Optional[str] = MISSING
    log_weights: bool = MISSING
    system_metrics: bool = MISSING
    system_metrics_every_s: float = MISSING
    ui_url: str = MISSING
    progress: ProgressConfig = MISSING
    description: str = MISSING


@dataclass
class PathsConfig:
    data_dir: str = MISSING
    output_dir: str = MISSING


PLAIN_GROUPS = {"trainer": TrainerConfig, "tracking": TrackingConfig, "paths": PathsConfig}
TYPES_GROUP = "types"  # where the ConfigStore keeps them: /types/trainer ...


def register_configs() -> None:
    """Put the plain groups' dataclasses in Hydra's ConfigStore (storing again replaces)."""
    store = ConfigStore.instance()
    for group, node in PLAIN_GROUPS.items():
        store.store(group=TYPES_GROUP, name=group, node=node)


# Here for `python -m src.run` (src/run.py imports this module before Hydra composes), from any
# folder; hydra_plugins/study_configs does it for a composition that does not import this module.
register_configs()

BUILT_GROUPS = ("dataset", "model", "optimizer", "schedule")
# Arguments the training loop passes itself, so they must not come from the config.
SUPPLIED_BY_LOOP = {
    "dataset": set(),
    "model": {"input_shape", "n_classes"},
    "optimizer": {"params", "lr"},
    "schedule": {"n_train", "epochs", "optimizer_momentum"},
}
# Keys the loop reads that are not arguments of the built object.
LOOP_KEYS = {"optimizer": {"lr_scale"}}
# Keys every option of a built group must set, because the loop or the range checks read them.
REQUIRED_KEYS = {"optimizer": ("lr_scale",), "schedule": ("name", "lr", "batch_size")}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
SEED_RANGE = (0, 2**32 - 1)  # what every RNG seeded from trainer.seed accepts (numpy's is the narrowest)


def _type_problem(key: str, value: Any, hint: Any) -> str | None:
    """What is wrong when a value plainly does not fit a simple annotation; None otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:  # the values a constructor names (src.models.MLPInit)
        return None if value in args else f"{key}={value!r}: allowed: {', '.join(map(str, args))}"
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _type_problem(key, value, options[0]) if len(options) == 1 else None
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        fits = {
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
            bool: isinstance(value, bool),
        }[hint]
        return None if fits else f"{key}={value!r}: expected {names[hint]}"
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"{key}={value!r}: expected a list"
        for index, item in enumerate(value if args else ()):
            problem = _type_problem(f"{key}[{index}]", item, args[0])
            if problem:
                return problem
    return None


def _check_type(key: str, value: Any, hint: Any) -> None:
    """Refuse a value that plainly does not fit a simple annotation; say nothing otherwise."""
    problem = _type_problem(key, value, hint)
    if problem:
        raise ConfigError(problem)


def _check_plain_group(group: str, node: Any) -> None:
    """The group merged into its structured config, as Hydra composed it: this catches what
    composition lets through, a key added with `+` and a config built by hand."""
    structured = PLAIN_GROUPS[group]
    try:
        OmegaConf.merge(OmegaConf.structured(structured), node)
    except (ConfigKeyError, ConfigAttributeError) as error:
        *parents, _ = str(error.full_key or error.key).split(".")  # a nested key: its parents' names
        holder = structured
        for parent in parents:
            holder = typing.get_type_hints(holder)[parent]
        keys = ", ".join(f.name for f in fields(holder))
        raise ConfigError(f"{group}.{error.full_key or error.key}: unknown key; "
                          f"{'.'.join([group, *parents])} has: {keys}") from None
    except OmegaConfBaseException as error:
        key = str(error.full_key or error.key)
        value = OmegaConf.select(OmegaConf.create(node), key) if isinstance(node, Mapping) else node
        raise ConfigError(f"{group}.{key}={value!r}: {str(error).splitlines()[0]}") from None


def _check_present(group: str, node: Mapping, needed: Sequence[str]) -> None:
    missing = [k for k in needed if k not in node]
    if missing:
        raise ConfigError(f"{group}.{missing[0]}: missing; {group} needs: {', '.join(needed)}")


def _binds(signature: inspect.Signature, key: str, value: Any) -> bool:
    try:
        signature.bind_partial(**{key: value})
    except TypeError:  # no such parameter, or a positional-only one
        return False
    return True


def _signature_problems(group: str, node: Any) -> list[str]:
    """Every problem of a group built with `_target_`, in the shape of torchtune's config
    validation: each key is bound to the target's signature with bind_partial (the loop
    supplies the rest), the target's required arguments must be there, and each value must fit
    its annotation. Returns one line per problem; the caller raises them together."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        return [f"{group}={node!r}: expected a mapping with a _target_"]
    name = node["_target_"]
    try:
        target = get_method(name)
    except Exception:
        return [f"{group}._target_={name!r}: cannot be imported"]
    signature = inspect.signature(target)
    supplied = SUPPLIED_BY_LOOP[group]
    takes = [p for p in signature.parameters if p not in supplied and p not in ("self", "cls")]
    takes += sorted(LOOP_KEYS.get(group, ()))
    given = {k: v for k, v in node.items() if k != "_target_" and k not in LOOP_KEYS.get(group, ())}
    try:
        # a class's own annotations are its attributes; its arguments' are __init__'s
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # annotations this Python cannot evaluate: skip the type checks
        hints = {}
    problems = []
    # a schedule is named by its name too (several share a target): the key is one it would not use
    owner = f"schedule {node['name']} does not use it; " if group == "schedule" and "name" in node else ""
    for key, value in given.items():
        if key in supplied or not _binds(signature, key, value):
            problems.append(f"{group}.{key}: unknown key; {owner}{name} takes: {', '.join(takes)}")
        elif key in hints:
            problems.append(_type_problem(f"{group}.{key}", value, hints[key]))
    required = [
        p.name for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in supplied and p.name not in ("self", "cls")
    ]
    problems += [f"{group}.{key}: missing; {name} needs it" for key in required if key not in given]
    return [problem for problem in problems if problem]


def _positive(key: str, value: Any, minimum: float = 0.0, inclusive: bool = False) -> None:
    _check_type(key, value, float)
    ok = value >= minimum if inclusive else value > minimum
    if not ok:
        raise ConfigError(f"{key}={value!r}: must be {'>=' if inclusive else '>'} {minimum}")


def _non_finite(node: Any, key: str = "") -> tuple[str, float] | None:
    """(key, value) of the first infinite or nan number (keys dotted, list items as [i]), else None.
    No key of a study takes one, and one check for all of them keeps every range check honest:
    inf passes `> 0` (schedule.factor=inf trained at lr 0, schedule.lr=inf until it diverged),
    and nan passes any check written as `if value > limit: refuse`."""
    if isinstance(node, float) and not math.isfinite(node):
        return key, node
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for name, value in items:
        inner = f"{key}[{name}]" if isinstance(node, list) else f"{key}.{name}" if key else str(name)
        found = _non_finite(value, inner)
        if found:
            return found
    return None


def _check_ranges(cfg: Mapping) -> None:
    _check_trainer(cfg["trainer"], cfg["model"])
    _check_optimizer(cfg["optimizer"])
    _check_schedule(cfg["schedule"], cfg["trainer"]["epochs"])


def _check_trainer(trainer: Mapping, model: Mapping) -> None:
    _positive("trainer.epochs", trainer["epochs"], 1, inclusive=True)
    low, high = SEED_RANGE
    if not low <= trainer["seed"] <= high:
        raise ConfigError(f"trainer.seed={trainer['seed']}: must be in {low}..{high} (2**32 - 1), what the RNGs accept")
    if trainer["threads"] is not None:
        _positive("trainer.threads", trainer["threads"], 1, inclusive=True)
    _positive("trainer.eval_batch_size", trainer["eval_batch_size"], 1, inclusive=True)
    _positive("trainer.gns_memory_epochs", trainer["gns_memory_epochs"])
    _positive("trainer.gns_every", trainer["gns_every"], 1, inclusive=True)
    for key in ("train_samples", "eval_samples"):
        if trainer[key] is not None:
            _positive(f"trainer.{key}", trainer[key], 1, inclusive=True)
    _positive("trainer.profile_steps", trainer["profile_steps"], 0, inclusive=True)
    micro = trainer["micro_batch_size"]
    if micro is not None:
        _positive("trainer.micro_batch_size", micro, 1, inclusive=True)
        ghost = model.get("ghost_batch_size")
        if ghost and micro % ghost:
            raise ConfigError(
                f"trainer.micro_batch_size={micro}: must be a multiple of model.ghost_batch_size={ghost}, "
                "or ghost batches straddle micro-batches"
            )
        if model.get("batch_norm") and not ghost:
            raise ConfigError(f"trainer.micro_batch_size={micro}: not with model.batch_norm=true over the whole "
                              "batch, whose statistics would be per micro-batch and change the update (micro-batches "
                              "must not); ghost batch norm (+model.ghost_batch_size) is fine")
    check_last_batch(trainer["last_batch"])
    if not DEVICE.fullmatch(trainer["device"]):
        raise ConfigError(f"trainer.device={trainer['device']!r}: allowed: auto, cpu, cuda, cuda:<index>, mps")


def _check_optimizer(optimizer: Mapping) -> None:
    if "momentum" in optimizer:
        _check_type("optimizer.momentum", optimizer["momentum"], float)
    if "momentum" in optimizer and not 0.0 <= optimizer["momentum"] < 1.0:
        raise ConfigError(f"optimizer.momentum={optimizer['momentum']!r}: must be in [0, 1)")
    _positive("optimizer.lr_scale", optimizer["lr_scale"])
    if "weight_decay" in optimizer:
        _positive("optimizer.weight_decay", optimizer["weight_decay"], 0.0, inclusive=True)


def _check_schedule(schedule: Mapping, epochs: int) -> None:
    _positive("schedule.lr", schedule["lr"])
    if "lr_boost" in schedule:
        _positive("schedule.lr_boost", schedule["lr_boost"])
    if "cap_factor" in schedule:
        _positive("schedule.cap_factor", schedule["cap_factor"])
    if schedule.get("momentum") is not None:
        _check_type("schedule.momentum", schedule["momentum"], float)
        if not 0.0 <= schedule["momentum"] < 1.0:
            raise ConfigError(f"schedule.momentum={schedule['momentum']!r}: must be in [0, 1), or null (the optimizer's)")
    if "warmup" in schedule:
        _check_type("schedule.warmup", schedule["warmup"], float)
        if not 0.0 <= schedule["warmup"] < 1.0:
            raise ConfigError(f"schedule.warmup={schedule['warmup']!r}: a fraction of the epochs, in [0, 1)")
    if "patience" in schedule:
        _positive("schedule.patience", schedule["patience"], 1, inclusive=True)
    _check_type("schedule.batch_size", schedule["batch_size"], int)
    _positive("schedule.batch_size", schedule["batch_size"], 1, inclusive=True)
    if "factor" in schedule:
        _positive("schedule.factor", schedule["factor"], 1.0)
    if "milestones" in schedule:
        _check_milestones(schedule["milestones"], epochs)
        growth = schedule.get("batch_growth_steps")
        _check_type("schedule.batch_growth_steps", growth, Optional[int])
        if growth is not None and growth < 0:
            raise ConfigError(f"schedule.batch_growth_steps={growth}: allowed >= 0, or null (every milestone)")
    cap = schedule.get("max_batch_size")
    _check_type("schedule.max_batch_size", cap, Optional[int])
    if cap is not None and cap < schedule["batch_size"]:
        raise ConfigError(f"schedule.max_batch_size={cap}: must be >= schedule.batch_size={schedule['batch_size']}")


def _check_milestones(given, epochs: int) -> None:
    _check_type("schedule.milestones", given, list[float])
    milestones = list(given)
    try:
        at = milestone_epochs(milestones, epochs)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if any(b <= a for a, b in zip(at, at[1:])):
        raise ConfigError(
            f"schedule.milestones={milestones}: must increase strictly (as epochs: {list(at)}); "
            "for a short run give fewer milestones or absolute epochs"
        )
    if at and not (0 < at[0] and at[-1] < epochs):
        raise ConfigError(
            f"schedule.milestones={milestones}: as epochs {list(at)}, must lie in 1..{epochs - 1} "
            f"(trainer.epochs={epochs})"
        )


def _check_tracking(tracking: Mapping) -> None:
    """The store's address and experiment are given (MLflow's other refusals, an experiment name
    over its length limit, a URI it cannot open, are told where the store is opened:
    src.stores.prepare_store); what tracking switches need: MLflow's system metrics need
    psutil (a dependency, which an older install may lack)."""
    for key in ("uri", "experiment"):
        if not tracking[key].strip():
            raise ConfigError(f"tracking.{key}={tracking[key]!r}: must not be empty")
    if tracking["system_metrics"] and importlib.util.find_spec("psutil") is None:
        raise ConfigError("tracking.system_metrics=true: needs psutil: pip install -c requirements/lock.txt psutil "
                          "(or tracking.system_metrics=false)")
    _positive("tracking.system_metrics_every_s", tracking["system_metrics_every_s"])
    progress = tracking["progress"]
    _positive("tracking.progress.after_s", progress["after_s"], 0.0, inclusive=True)
    _positive("tracking.progress.refresh_s", progress["refresh_s"])
    _positive("tracking.progress.log_every_s", progress["log_every_s"])


def validate(cfg: DictConfig) -> None:
    """Check a composed config; raise ConfigError (one line) on the first problem, or, for the
    signatures of the built groups, on all of them at once."""
    try:  # without Hydra's own node, which only resolves inside a job
        kept = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        plain = OmegaConf.to_container(kept, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:  # a ??? of a structured config that no YAML set
        raise ConfigError(f"{error.full_key}: missing; set it in its YAML or on the command line") from None
    except Exception as error:  # an interpolation that does not resolve
        raise ConfigError(str(error)) from None
    expected = set(PLAIN_GROUPS) | set(BUILT_GROUPS)
    for key in plain:
        if key not in expected:
            raise ConfigError(f"{key}: unknown top-level key; allowed: {', '.join(sorted(expected))}")
    for group in sorted(expected):
        if group not in plain:
            raise ConfigError(f"{group}: missing from the config")
    for group in PLAIN_GROUPS:
        _check_plain_group(group, plain[group])
    for group, needed in REQUIRED_KEYS.items():
        _check_present(group, plain[group], needed)
    non_finite = _non_finite(plain)
    if non_finite:
        raise ConfigError(f"{non_finite[0]}={non_finite[1]}: must be a finite number")
    _check_ranges(plain)  # first: needs no imports, so most typos fail before torch loads
    _check_tracking(plain["tracking"])
    problems = [problem for group in BUILT_GROUPS for problem in _signature_problems(group, plain[group])]
    if problems:
        raise ConfigError("; ".join(problems))


def validate_against_data(cfg: DictConfig, n_train: int, n_val: int, n_test: int) -> None:
    """The checks that need the data's sizes: N training, n_val validation and n_test test
    samples (known once the data are loaded)."""
    if min(n_train, n_val, n_test) < 1:
        keys = ", ".join(f"dataset.{k}={v}" for k, v in cfg.dataset.items() if k != "_target_")
        raise ConfigError(f"{keys}: gives {n_train} training, {n_val} validation and {n_test} test samples; "
                          "each must be >= 1")
    for key in ("batch_size", "max_batch_size"):
        value = cfg.schedule.get(key)
        if value is not None and value > n_train:
            raise ConfigError(f"schedule.{key}={value}: must be <= N = {n_train} training samples")


def compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml composed with Hydra's compose API, as `python -m src.run <overrides>`
    composes it: where the commands that read runs back (src.figures, src.evaluate) take the
    store, the experiment and the output folder from, so they cannot drift from the runs'."""
    from hydra import compose as compose_config
    from hydra import initialize_config_dir

    from src.schema import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose_config("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
