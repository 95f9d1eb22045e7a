"""Entry point: `python -m src.run [overrides]`, `python -m src.run -m <sweep>`.

A thin Hydra wrapper around src.train.train. torch and mlflow are imported only when a job
actually trains, so `python -m src.run --cfg job` answers in about a second.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict


class PrepareTrackingStore(Callback):
    """Create the MLflow store and experiment once, in the launching process, before any job:
    parallel first writers of a fresh SQLite store crash MLflow's table creation."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from src.tracking import prepare_store

        prepare_store(config.tracking)

    on_multirun_start = on_run_start


def sweep_id() -> str:
    """The name of the Hydra sweep folder (shared by every job of a multirun), or of the run
    folder for a single run: a timestamp, so sweeps sort by time."""
    hydra_cfg = HydraConfig.get()
    folder = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(folder).name


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    from src.train import train

    if cfg.tracking.sweep_id is None:
        with open_dict(cfg):
            cfg.tracking.sweep_id = sweep_id()
    return train(cfg)


if __name__ == "__main__":
    main()
