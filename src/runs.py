"""Runs read back from the MLflow store as plain data: RunData, a sweep's runs, a study's runs.

Nothing here draws, compares or writes: src.verdict groups and compares what this returns,
src.plots and src.report show it. Every per-epoch metric is read through metric_points /
metric_history, the one reader of MLflow's metric histories (the tests read them through it too).

A sweep's runs are the training runs that list it in their `sweeps` tag: the runs it trained and
those a re-run of it skipped or resumed (which keep the sweep_id of the sweep that trained them).
A study's runs (src.reproduce) are those of its experiment with its `preset` tag, the newest
FINISHED run per config hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from src.schema import (
    BATCH_SIZE, CONFIG_HASH_TAG, GNS_B_SIMPLE, KIND_TAG, LR, MOMENTUM, NOISE_SCALE, PARAM_UPDATES, PRESET_TAG, SCHEDULE_TAG,
    SEED_TAG, SUPERSEDED_BY_TAG, SWEEP_KIND, SWEEP_TAG, SWEEPS_TAG, TEST_ACC, TEST_LOSS, TRAIN_LOSS, VAL_ACC,
    VAL_LOSS, WALL_TIME_S,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# Per-epoch metrics the figures and the report read (step = the 0-based epoch).
HISTORIES = (TRAIN_LOSS, VAL_LOSS, VAL_ACC, TEST_LOSS, TEST_ACC, LR, BATCH_SIZE, MOMENTUM, NOISE_SCALE, PARAM_UPDATES,
             WALL_TIME_S)
MEASURED_HISTORIES = (GNS_B_SIMPLE,)  # read where a run logged them (trainer.gns): B_simple per epoch
BEST_VAL_LOSS = "best_val_loss"  # not logged: the lowest val_loss of any epoch, read from the history
FINISHED = "FINISHED"  # MLflow's status of a run that ended normally


class StoreError(Exception):
    """Nothing to report, in one line (the commands print it and exit 2)."""


@dataclass
class RunData:
    """One training run, as plain data."""

    run_id: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING
    start_time: int  # ms since the epoch
    end_time: int | None  # ms since the epoch; None while running
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the last value of every metric: the once-per-run ones are finals
    history: dict[str, list[float]]  # per-epoch metric -> values at steps 0, 1, 2 ...
    n_classes: int | None = None  # from the run's dataset input (its profile); None: not logged

    @property
    def chance(self) -> float:
        """The accuracy of guessing, 0..1: what a seed whose loss diverged is counted at (0 when
        the number of classes was not logged)."""
        return 1 / self.n_classes if self.n_classes else 0.0

    @property
    def schedule(self) -> str:
        return self.tags.get(SCHEDULE_TAG, "?")

    @property
    def seed(self) -> str:
        return self.tags.get(SEED_TAG, "?")

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def reported(self, name: str) -> float:
        if name == BEST_VAL_LOSS:
            return min(self.history[VAL_LOSS])
        return self.metrics[name]


def metric_points(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of every value of one metric the run logged, by step, in the order logged
    within a step (a resumed run may log an epoch twice: both are here)."""
    points = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
    return [(point.step, point.value) for point in points]


def metric_history(client: MlflowClient, run_id: str, name: str) -> list[float]:
    """One metric's value per step, by step: an epoch logged twice (a resumed run) keeps its last
    value."""
    return list(dict(metric_points(client, run_id, name)).values())


def all_runs(client: MlflowClient, experiment_id: str) -> list:
    """Every run of the experiment (MLflow's Run objects), page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_data(client: MlflowClient, run) -> RunData:
    """An MLflow Run and its per-epoch histories as RunData."""
    names = HISTORIES + tuple(name for name in MEASURED_HISTORIES if name in run.data.metrics)
    history = {name: metric_history(client, run.info.run_id, name) for name in names}
    return RunData(run.info.run_id, run.info.status, run.info.start_time, run.info.end_time,
                   dict(run.data.tags), dict(run.data.params), dict(run.data.metrics), history, _n_classes(run))


def _n_classes(run) -> int | None:
    """The number of classes from the run's dataset input (src.tracking logs it in the profile)."""
    for dataset_input in getattr(run.inputs, "dataset_inputs", None) or []:
        profile = json.loads(dataset_input.dataset.profile or "{}")
        if "n_classes" in profile:
            return int(profile["n_classes"])
    return None


def is_training_run(tags: dict[str, str]) -> bool:
    """A training run by its tags: not one with a kind (a sweep's parent; the summary runs of
    older versions), not one superseded by a retrained run (killed before its first checkpoint)."""
    return KIND_TAG not in tags and SUPERSEDED_BY_TAG not in tags


def sweeps_of(tags: dict[str, str]) -> list[str]:
    """The sweeps a training run belongs to: its SWEEPS_TAG; its sweep_id for a run logged
    before runs had one."""
    return tags.get(SWEEPS_TAG, tags[SWEEP_TAG]).split()


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise StoreError(f"no experiment '{experiment}' (known experiments: {known})")
    return found.experiment_id


def _sweep_starts(runs: Iterable, every_run: Iterable) -> dict[str, int]:
    """sweep_id -> its latest start (ms): of a run it trained or reused, or of its parent run (a
    re-run sweep that only skipped runs is as new as its parent)."""
    started: dict[str, int] = {}
    for run in runs:
        for sweep in sweeps_of(run.data.tags):
            started[sweep] = max(started.get(sweep, 0), run.info.start_time)
    for parent in every_run:
        sweep = parent.data.tags.get(SWEEP_TAG)
        if parent.data.tags.get(KIND_TAG) == SWEEP_KIND and sweep in started:
            started[sweep] = max(started[sweep], parent.info.start_time)
    return started


def load_sweep(client: MlflowClient, experiment: str, sweep_id: str | None = None,
               tags: dict[str, str] | None = None) -> tuple[str, list[RunData]]:
    """(sweep_id, its training runs): the given sweep, or the newest (the latest start of its
    parent run or of a run it trained) among the runs whose tags match `tags`. Runs with a kind
    (a sweep's parent; the summary runs of older versions) and runs superseded by a retrained one
    are never read."""
    every_run = all_runs(client, _experiment_id(client, experiment))
    tags = tags or {}
    matching = " with tags " + ", ".join(f"{k}={v}" for k, v in tags.items()) if tags else ""
    runs = [
        run for run in every_run
        if SWEEP_TAG in run.data.tags and is_training_run(run.data.tags)
        and all(run.data.tags.get(key) == value for key, value in tags.items())
    ]
    started = _sweep_starts(runs, every_run)
    if sweep_id is None:
        if not started:
            raise StoreError(f"no runs{matching} in experiment '{experiment}'")
        sweep_id = max(started, key=started.get)
    elif sweep_id not in started:
        newest = sorted(started, key=started.get, reverse=True)
        known = ", ".join(newest[:10]) + (f" ... {len(newest)} in all" if len(newest) > 10 else "")
        raise StoreError(f"no runs with sweep_id '{sweep_id}'{matching} in experiment '{experiment}'"
                         f" (known sweeps: {known or 'none'})")
    chosen = [run_data(client, run) for run in runs if sweep_id in sweeps_of(run.data.tags)]
    return sweep_id, sorted(chosen, key=lambda r: (r.schedule, r.seed, r.start_time))


def load_study(client: MlflowClient, experiment: str, preset: str) -> list[RunData]:
    """A study's runs: in `experiment`, tagged preset=`preset`, per config hash the newest
    FINISHED run (else the newest, which then counts as failed); [] when there is no such
    experiment."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    chosen: dict[str, object] = {}
    rank = lambda run: (run.info.status == FINISHED, run.info.start_time)  # noqa: E731
    for run in all_runs(client, found.experiment_id):
        tags = run.data.tags
        if not is_training_run(tags) or tags.get(PRESET_TAG) != preset:
            continue
        key = tags.get(CONFIG_HASH_TAG, run.info.run_id)
        if key not in chosen or rank(run) > rank(chosen[key]):
            chosen[key] = run
    return [run_data(client, run) for run in sorted(chosen.values(), key=lambda r: r.info.start_time)]


def record_run(client: MlflowClient, experiment_id: str, sweep_id: str, runs: list[RunData]) -> str | None:
    """The run a sweep's figures are logged to: the sweep's parent run; for the sweep of a single
    run (python -m src.run without -m), that run; None when there is neither (a sweep_id given by
    hand to separate runs)."""
    query = f"tags.{KIND_TAG} = '{SWEEP_KIND}' and tags.{SWEEP_TAG} = '{sweep_id}'"
    parents = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"])
    if parents:
        return parents[0].info.run_id
    trained_here = [run for run in runs if run.tags[SWEEP_TAG] == sweep_id]
    return trained_here[0].run_id if len(runs) == 1 and trained_here else None
