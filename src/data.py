"""Data: each loader returns a Dataset of whole tensors that then live on the training device.

Batches are slices of a seeded permutation of the resident training tensors (batch_indices),
so the batch size can change at any epoch with nothing to rebuild and no random state lost:
no DataLoader, no workers prefetching batches of the old size.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor  # int64 class indices
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> Dataset:
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
        )


def batch_indices(permutation: torch.Tensor, batch_size: int, last_batch: str) -> Iterator[torch.Tensor]:
    """Consecutive slices of one epoch's permutation. last_batch='keep' yields the smaller
    remainder as a final batch; 'drop' skips it (see schedules.updates_in_epoch)."""
    n = len(permutation)
    stop = n if last_batch == "keep" else n - n % batch_size
    for start in range(0, stop, batch_size):
        yield permutation[start : start + batch_size]


def _from_arrays(x: np.ndarray, y: np.ndarray, n_val: int, n_classes: int) -> Dataset:
    x_t = torch.as_tensor(x, dtype=torch.float32)
    y_t = torch.as_tensor(y, dtype=torch.int64)
    n_train = len(y_t) - n_val
    return Dataset(x_t[:n_train], y_t[:n_train], x_t[n_train:], y_t[n_train:], n_classes)


@contextmanager
def _global_rng_untouched():
    """mnist1d reseeds numpy's and random's global generators; put them back afterwards so the
    run's seeding does not depend on whether the data came from the cache or was generated."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _save_atomically(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # parallel jobs generating the same cache never see a torn file


def load_mnist1d(n_samples: int, n_val: int, generator_seed: int, cache_dir: str) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally with mnist1d's make_dataset, never its
    download path. Cached as .npz under cache_dir keyed by the generation arguments."""
    import mnist1d.data

    args = mnist1d.data.get_dataset_args(as_dict=True)
    args.update(num_samples=int(n_samples), train_split=1.0, seed=int(generator_seed))
    key = hashlib.sha1(repr(sorted((k, v) for k, v in args.items() if k != "url")).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"mnist1d_{n_samples}_{key}.npz"
    if path.exists():
        arrays = np.load(path)
        x, y = arrays["x"], arrays["y"]
    else:
        with _global_rng_untouched():
            generated = mnist1d.data.make_dataset(mnist1d.utils.ObjectView(args))
        x, y = generated["x"].astype(np.float32), generated["y"].astype(np.int64)
        _save_atomically(path, x=x, y=y)
    # make_dataset already shuffled and standardised the whole set: split head/tail.
    return _from_arrays(x, y, n_val, n_classes=10)


def load_digits(n_val: int, split_seed: int) -> Dataset:
    """sklearn's bundled 8x8 digits (1,797 samples, no download): for smoke tests."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    order = np.random.default_rng(split_seed).permutation(len(y))
    x = x[order] / 16.0  # pixel values 0..16 -> 0..1
    return _from_arrays(x, y[order], n_val, n_classes=10)
