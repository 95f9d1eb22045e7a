"""Runs made up as plain data (src.runs.RunData): for the report's arithmetic, with no store
and no training."""

from __future__ import annotations

from src import schema
from src.runs import HISTORIES, RunData


def fake_run(schedule: str, seed: int, acc: float, updates: float = 300.0, lr=(0.1, 0.1, 0.02),
             **params: str) -> RunData:
    """A finished 3-epoch run: no store, no training."""
    history = {name: [3.0, 2.0, 1.0] for name in HISTORIES}
    history.update({schema.VAL_ACC: [acc / 2, acc * 0.9, acc], schema.TEST_ACC: [acc / 2, acc * 0.9, acc],
                    schema.PARAM_UPDATES: [updates / 3, updates * 2 / 3, updates],
                    schema.LR: list(lr), schema.BATCH_SIZE: [64.0] * 3, schema.MOMENTUM: [0.9] * 3,
                    schema.NOISE_SCALE: [x / 0.1 * (1000 / 64 - 1) for x in lr]})
    metrics = {schema.FINAL_TEST_ACC: acc, schema.FINAL_TEST_LOSS: 1.0, schema.FINAL_VAL_ACC: acc, schema.FINAL_VAL_LOSS: 1.0, schema.TOTAL_PARAM_UPDATES: updates,
               schema.TOTAL_WALL_TIME_S: 2.0, schema.TRAIN_TIME_S: 1.5}
    params = {"schedule.name": schedule, schema.SEED_PARAM: str(seed), **params}
    tags = {schema.SCHEDULE_TAG: schedule, schema.SEED_TAG: str(seed)}
    return RunData(f"{schedule}-{seed}", "FINISHED", seed, seed + 1, tags, params, metrics, history, n_classes=10)
