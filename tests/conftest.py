"""Shared fixtures: real Hydra composition, a real MLflow store in a temp folder, tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A tiny but real configuration: sklearn's bundled digits, 3 epochs with steps after epochs 1
# and 2 (the default fractional milestones need at least 4 epochs), the default model.
TINY = ["dataset=digits", "trainer.epochs=3", "schedule.milestones=[1,2]", "trainer.threads=1"]
# MNIST-1D small enough to generate in about a second.
TINY_MNIST1D = ["dataset.n_samples=2000", "dataset.n_val=500"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data cache for the whole session (MNIST-1D generation is the slow part)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Path:
    """One MLflow store for tests that only read their own runs back (a fresh SQLite store
    costs ~2 s of table creation)."""
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture
def make_cfg(data_dir, shared_store):
    """compose(overrides) -> the real composed config, writing into the shared temp store."""

    def make(*overrides: str, output_dir: Path | None = None):
        out = output_dir or shared_store
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "config",
                overrides=[f"paths.output_dir={out}", f"paths.data_dir={data_dir}", *overrides],
            )

    return make


def client_for(output_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{output_dir}/mlflow.db")


def run_cli(*args: str, output_dir: Path, data_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """A real `python -m src.run` in a subprocess, writing into output_dir. Flags (-m, --cfg)
    go first in args: Hydra's parser wants them before the overrides."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "src.run", *args, f"paths.output_dir={output_dir}", f"paths.data_dir={data_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
