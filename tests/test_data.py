import random

import mnist1d.data
import numpy as np
import pytest
import torch

from src.data import batch_indices, load_digits, load_mnist1d


def test_batches_cover_the_permutation_once():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    kept = list(batch_indices(order, 10, "keep"))
    assert [len(b) for b in kept] == [10] * 10 + [3]
    assert torch.equal(torch.cat(kept), order)
    dropped = list(batch_indices(order, 10, "drop"))
    assert [len(b) for b in dropped] == [10] * 10
    assert torch.equal(torch.cat(dropped), order[:100])


def test_mnist1d_generated_split_and_cached(tmp_path, monkeypatch):
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    data = load_mnist1d(n_samples=1000, n_val=200, generator_seed=42, cache_dir=str(tmp_path))
    # mnist1d reseeds the global generators; the loader must put them back
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert data.x_train.shape == (800, 40) and data.x_val.shape == (200, 40)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.n_classes == 10 and set(data.y_train.tolist()) == set(range(10))
    assert len(list(tmp_path.glob("mnist1d_1000_*.npz"))) == 1

    def must_not_regenerate(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", must_not_regenerate)
    again = load_mnist1d(n_samples=1000, n_val=200, generator_seed=42, cache_dir=str(tmp_path))
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_val, data.y_val)
    with pytest.raises(AssertionError, match="regenerated"):  # other arguments: a new file
        load_mnist1d(n_samples=1000, n_val=200, generator_seed=7, cache_dir=str(tmp_path))


def test_digits_split_is_seeded():
    a, b, c = load_digits(360, 0), load_digits(360, 0), load_digits(360, 1)
    assert a.x_train.shape == (1437, 64) and a.x_val.shape == (360, 64)
    assert float(a.x_train.max()) <= 1.0
    assert torch.equal(a.y_train, b.y_train) and not torch.equal(a.y_train, c.y_train)
