"""Small files in the real on-disk formats of the data sets that are downloaded (CIFAR-10,
covertype), which cannot be downloaded where the tests run: the tests read them through the
project's own loaders, and benchmarks/gpu_checks.sh trains on a large CIFAR-10-shaped set of them
(`PYTHONPATH=tests python -c "from helpers.data_files import write_cifar10_files; ..."`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import numpy as np

from src.data import CIFAR10_FOLDER, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES


def write_cifar10_files(data_dir, per_batch: int, seed: int = 0):
    """Random images in CIFAR-10's real on-disk format: cifar-10-batches-py/data_batch_1..5 and
    test_batch, pickled dicts with bytes keys, b"data" uint8 (per_batch, 3072) channel-major
    rows, b"labels" a list. The three channels get different means and spreads, so
    normalisation has work to do. Returns (train pixels, train labels, test pixels, test
    labels) as written."""
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
        red, green, blue = (rng.integers(lo, hi, (per_batch, 1024)) for lo, hi in ((0, 256), (100, 150), (0, 60)))
        data = np.concatenate([red, green, blue], axis=1).astype(np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    train = [written[name] for name in CIFAR10_TRAIN_FILES]
    return (np.concatenate([d for d, _ in train]), sum((l for _, l in train), []), *written[CIFAR10_TEST_FILE])


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
    folder = Path(data_home) / "covertype"
    folder.mkdir(parents=True)
    joblib.dump(x, folder / "samples_py3", compress=9)
    joblib.dump(y, folder / "targets_py3", compress=9)
    return x, y
