"""Shared fixtures: real Hydra composition, a real MLflow store in a temp folder, tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from src.data import write_cifar10_files

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
    """One data folder for the whole session: the MNIST-1D cache (generating it is the slow
    part), and small CIFAR-10 (1,000 + 200 images) and covertype (2,000 rows) in their real
    on-disk formats, which cannot be downloaded here."""
    folder = tmp_path_factory.mktemp("data")
    write_cifar10_files(folder, per_batch=200)
    write_covtype_cache(folder, n=2000)
    return folder


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


def write_covtype_cache(data_home, n=200, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's own cache of fetch_covtype: covertype/samples_py3 (float64 (n, 54)) and
    covertype/targets_py3 (int32 labels 1..7), joblib dumps as sklearn writes them. Column 0
    (elevation) holds each row's index, to trace rows through the split; the last column
    (a soil type) is all zero, as rare soil types nearly are."""
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [np.arange(n)[:, None], rng.normal(200, 50, (n, 9)), rng.integers(0, 2, (n, 43)), np.zeros((n, 1))], axis=1
    )
    y = rng.integers(1, 8, n).astype(np.int32)
    folder = data_home / "covertype"
    folder.mkdir(parents=True)
    joblib.dump(x, folder / "samples_py3", compress=9)
    joblib.dump(y, folder / "targets_py3", compress=9)
    return x, y
