"""The project's folders and the tiny configurations tests train on."""

from __future__ import annotations

from src.schema import CONF_DIR

ROOT = CONF_DIR.parent

# A tiny but real configuration: sklearn's bundled digits, 3 epochs with steps after epochs 1
# and 2 (the default fractional milestones need at least 4 epochs), the default model.
TINY = ["dataset=digits", "trainer.epochs=3", "schedule.milestones=[1,2]", "trainer.threads=1"]
DIGITS_N_TRAIN, DIGITS_N_VAL, DIGITS_N_TEST = 1437, 180, 180  # digits (conf/dataset/digits.yaml: 1,797 samples)
# MNIST-1D small enough to generate in about a second.
TINY_MNIST1D = ["dataset.n_samples=2500", "dataset.n_val=500", "dataset.n_test=500"]


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_config(*overrides: str, return_hydra_config: bool = False):
    """The real composed config, as `python -m src.run <overrides>` would compose it."""
    from src.config import compose

    return compose(*overrides, return_hydra_config=return_hydra_config)


def multirun_job_config(*overrides: str):
    """The composed config with its hydra node, as a job of a multirun sees it."""
    from hydra.types import RunMode
    from omegaconf import open_dict

    cfg = compose_config(*overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    return cfg


def for_schedule(schedule: str, *overrides: str) -> list[str]:
    """`overrides` without the `schedule.<key>=...` ones that `schedule` does not read (keys its
    composed config lacks: constant takes no milestones or cap, the plateau arms no milestones),
    which validation would refuse."""
    reads = compose_config(f"schedule={schedule}").schedule
    return [o for o in overrides if not o.startswith("schedule.") or o.split("=")[0].split(".")[1] in reads]


def checkpoint_path(cfg):
    """Where src.train keeps cfg's checkpoint: named by the hash of its config and its data."""
    from hydra.utils import instantiate

    from src import checkpoint
    from src.tracking import hash_config

    return checkpoint.path_of(cfg, hash_config(cfg, instantiate(cfg.dataset).digest()))
