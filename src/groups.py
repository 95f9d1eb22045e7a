"""A sweep's runs grouped: curves (the runs that differ only in the seed) and groups (the curves
that differ only in the schedule).

A curve is the runs that differ in nothing but the seed: the same resolved config (the logged
params) once the seed and the keys outside a run's identity (src.tracking.NOT_IDENTITY: paths,
tracking, threads, ...) are left out. A key that takes more than one value among the runs of one
schedule is an axis of the sweep (the optimizer, schedule.factor, the model ...): each value of
the axes is a group with its own figures and report section, and in a group the curves differ
only by the schedule (and what comes with it). No fixed list of keys: a key the sweep varies can
never be averaged over. Plain data: no MLflow calls, no matplotlib.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from src.runs import RunData
from src.schema import BATCH_SIZE, SEED_PARAM
from src.tracking import NOT_IDENTITY


MAX_BATCH_PARAM = "schedule.max_batch_size"  # a step schedule's cap on B, as runs log it (None: N / 10)


@dataclass
class Curve:
    """The runs of one schedule in one group: they differ in nothing but the seed."""

    schedule: str
    runs: list[RunData]

    @property
    def by_seed(self) -> dict[str, RunData]:
        """seed -> its finished run (the newest, if a seed ran twice: the same config and seed
        give the same numbers on CPU, so a second run is a repeat, not a second sample)."""
        newest = {}
        for run in sorted((r for r in self.runs if r.finished), key=lambda r: r.start_time):
            newest[run.seed] = run
        return dict(sorted(newest.items()))

    @property
    def finished(self) -> list[RunData]:
        return list(self.by_seed.values())

    @property
    def n_failed(self) -> int:
        return sum(not run.finished for run in self.runs)

    def paired_with(self, base: Curve) -> list[tuple[RunData, RunData]]:
        """(this curve's run, the base's run) for each seed both finished, by seed: the same seed,
        the same initial weights."""
        theirs = base.by_seed
        return [(run, theirs[seed]) for seed, run in self.by_seed.items() if seed in theirs]


@dataclass
class Group:
    """Curves that share every config value but the schedule's (and the seed)."""

    label: str  # what sets it apart from the sweep's other groups; '' when it is the only one
    setting: dict[str, str | None]  # axis key -> its value in this group
    curves: dict[str, Curve] = field(default_factory=dict)  # schedule -> curve

    @property
    def runs(self) -> list[RunData]:
        return [run for curve in self.curves.values() for run in curve.runs]


def _not_identity(key: str) -> bool:
    """Whether `key` is one of NOT_IDENTITY's keys or under one."""
    return any(key == prefix or key.startswith(prefix + ".") for prefix in NOT_IDENTITY)


def identity(params: dict[str, str]) -> dict[str, str]:
    """What a run computes: its logged config without the seed and the NOT_IDENTITY keys."""
    return {key: value for key, value in params.items() if key != SEED_PARAM and not _not_identity(key)}


def sweep_axes(runs: Sequence[RunData]) -> list[str]:
    """The config keys that take more than one value among the runs of one schedule (a key a run
    does not log counts as the value None). A key that changes only with the schedule is part of
    what the schedule is."""
    configs = [(run.schedule, identity(run.params)) for run in runs]
    keys = sorted(set().union(*(config for _, config in configs)))
    axes = []
    for key in keys:
        values: dict[str, set] = {}
        for schedule, config in configs:
            values.setdefault(schedule, set()).add(config.get(key))
        if any(len(v) > 1 for v in values.values()):
            axes.append(key)
    return axes


def optimizer_name(params: dict[str, str]) -> str:
    """momentum, nesterov, sgd (no momentum), adam or momentum_debiased, as conf/optimizer/ names
    them; else the class name."""
    target = params.get("optimizer._target_", "?").rsplit(".", 1)[-1]
    if target == "DebiasedMomentumSGD":
        return "momentum_debiased"
    if target == "SGD":
        if params.get("optimizer.nesterov") == "True":
            return "nesterov"
        return "sgd" if float(params.get("optimizer.momentum", 0)) == 0 else "momentum"
    return target.lower()


def short_value(value: str | None) -> str:
    """A value for a label: a class path by its class name."""
    if value is None:
        return "unset"
    return value.rsplit(".", 1)[-1] if re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Z]\w*", value) else value


def folder_name(label: str) -> str:
    """A group's (or a sweep's, a study's) label as a folder name."""
    return re.sub(r"[^\w.=,+-]", "_", label)


def _labels(settings: list[dict[str, str | None]], runs: list[RunData]) -> list[str]:
    """One label per group: the optimizer by its name when the sweep varies it, other axes as
    key=value; every key=value when the short labels would not tell two groups apart."""
    if not settings or not settings[0]:
        return [""] * len(settings)
    short = []
    for setting, run in zip(settings, runs):
        parts = [f"{key}={short_value(value)}" for key, value in setting.items() if not key.startswith("optimizer.")]
        if any(key.startswith("optimizer.") for key in setting):
            parts.insert(0, f"optimizer={optimizer_name(run.params)}")
        short.append(",".join(parts))
    if len(set(short)) == len(short):
        return short
    return [",".join(f"{key}={value}" for key, value in setting.items()) for setting in settings]


def schedule_order(schedule: str, baselines: Sequence[str]) -> tuple:
    """The sort key of a schedule: the baselines first, in their order, then the others by name."""
    return (baselines.index(schedule) if schedule in baselines else len(baselines), schedule)


def group_runs(runs: Sequence[RunData], baselines: Sequence[str] = ()) -> list[Group]:
    """The sweep's groups (sorted by label), each with one curve per schedule: the first of
    `baselines` that ran first, then the others by name."""
    axes = sweep_axes(runs)
    members: dict[tuple, list[RunData]] = {}
    for run in runs:
        config = identity(run.params)
        members.setdefault(tuple(config.get(key) for key in axes), []).append(run)
    settings = [dict(zip(axes, values)) for values in members]
    labels = _labels(settings, [group[0] for group in members.values()])
    groups = []
    for label, setting, group_runs_ in zip(labels, settings, members.values()):
        group = Group(label, setting)
        for run in sorted(group_runs_, key=lambda r: schedule_order(r.schedule, baselines)):
            group.curves.setdefault(run.schedule, Curve(run.schedule, [])).runs.append(run)
        groups.append(group)
    return sorted(groups, key=lambda g: natural_key(g.label))


def natural_key(label: str) -> tuple:
    """A label's sort key with its numbers read as numbers: factor=2 before factor=10."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", label)
    return tuple((0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(parts) if part)


def numeric_axis(groups: Sequence[Group]) -> str | None:
    """The one axis a sweep's groups differ in when each group's value of it is a number (a sweep
    over a parameter: schedule.factor=2,5,10); None otherwise."""
    keys = {key for group in groups for key in group.setting}
    if len(groups) < 2 or len(keys) != 1:
        return None
    [key] = keys
    try:
        [float(group.setting[key]) for group in groups]
    except (TypeError, ValueError):
        return None
    return key


def reached_cap(curve: Curve) -> bool | None:
    """Whether a finished run of the curve grew its batch to schedule.max_batch_size (from there
    the schedule's anneal is lr decay); None where the cap is not a number the run logged."""
    try:
        cap = int(float(curve.runs[0].params[MAX_BATCH_PARAM]))
    except (IndexError, KeyError, ValueError):
        return None
    return any(max(run.history.get(BATCH_SIZE, [0])) >= cap for run in curve.finished)


def pick_baseline(group: Group, requested: str | None, candidates: Sequence[str]) -> str | None:
    """`requested` if given, else the first of `candidates` that ran in the group; None if it
    did not run."""
    for schedule in [requested] if requested else candidates:
        if schedule in group.curves:
            return schedule
    return None
