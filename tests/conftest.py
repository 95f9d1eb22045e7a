"""Shared fixtures: real Hydra composition, a real MLflow store in a temp folder, tiny data.
Helpers that are not fixtures live in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.configs import compose_config
from helpers.data_files import write_cifar10_files, write_covtype_cache
from helpers.store import client_for

# The tests name their own stores: a user's MLFLOW_TRACKING_URI (conf/tracking/mlflow.yaml reads
# it) must not send their runs to the user's server, here or in the processes they start.
os.environ.pop("MLFLOW_TRACKING_URI", None)


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


@pytest.fixture(scope="session")
def blank_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables and no experiment: creating the tables takes
    seconds (MLflow's migrations), copying the file milliseconds."""
    db = tmp_path_factory.mktemp("blank_store") / "mlflow.db"
    client_for(db.parent).search_experiments()  # creates the tables
    return db


@pytest.fixture
def make_cfg(data_dir, shared_store):
    """compose(overrides) -> the real composed config, writing into the shared temp store."""

    def make(*overrides: str, output_dir: Path | None = None):
        out = output_dir or shared_store
        return compose_config(f"paths.output_dir={out}", f"paths.data_dir={data_dir}", *overrides)

    return make
