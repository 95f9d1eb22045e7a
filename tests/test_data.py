import logging
import random

import mnist1d.data
import numpy as np
import pytest
import torch

from src.batching import BatchStream, batch_indices, updates_in_epoch
from src.data import load_digits, load_mnist1d


def test_batches_cover_the_permutation_once():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    kept = list(batch_indices(order, 10, "keep"))
    assert [len(b) for b in kept] == [10] * 10 + [3]
    assert torch.equal(torch.cat(kept), order)
    dropped = list(batch_indices(order, 10, "drop"))
    assert [len(b) for b in dropped] == [10] * 10
    assert torch.equal(torch.cat(dropped), order[:100])
    for policy in ("keep", "drop"):  # the stream carries nothing under these
        stream = BatchStream(policy)
        got, want = stream.epoch(order, 10), list(batch_indices(order, 10, policy))
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
        assert len(stream.leftover) == 0


def carry_epochs(batch_sizes, n=103, seed=0, stream=None):
    """Run a carry stream over one seeded permutation per epoch: (permutations, batches per epoch, stream)."""
    generator = torch.Generator().manual_seed(seed)
    stream = stream or BatchStream("carry")
    permutations, batches = [], []
    for batch_size in batch_sizes:
        permutations.append(torch.randperm(n, generator=generator))
        batches.append(stream.epoch(permutations[-1], batch_size))
    return permutations, batches, stream


def test_carry_every_batch_is_whole_and_every_permutation_is_consumed_once():
    sizes = [10, 10, 10, 40, 40, 64, 64, 103]  # N = 103: never a multiple; B grows at "milestones"
    permutations, batches, stream = carry_epochs(sizes)
    leftover = 0
    for batch_size, epoch_batches in zip(sizes, batches):
        assert {len(b) for b in epoch_batches} == {batch_size}  # every update has exactly B
        assert len(epoch_batches) == updates_in_epoch(103, batch_size, "carry", leftover)  # the count schedules use
        leftover = leftover + 103 - len(epoch_batches) * batch_size
        assert all(len(set(b.tolist())) == len(b) for b in epoch_batches)  # no sample twice in a batch
    assert len(stream.leftover) == leftover < sizes[-1]
    # the stream, batches then the final leftover, is the permutations consumed one after the
    # other: each sample exactly once per permutation, in epoch order
    stream_order = torch.cat([*(torch.cat(b) for b in batches), stream.leftover]).tolist()
    start = 0
    for permutation in permutations:
        assert sorted(stream_order[start : start + 103]) == list(range(103))
        start += 103
    assert len(stream_order) == start
    # the carried samples open the next epoch's first batch
    first_carry = 103 % 10
    assert torch.equal(batches[1][0][:first_carry], permutations[0][-first_carry:])


def test_carry_state_round_trip_continues_the_same_batches():
    sizes = [10, 10, 40, 40, 64]
    _, uninterrupted, _ = carry_epochs(sizes)
    _, _, first_part = carry_epochs(sizes[:2])
    resumed = BatchStream("carry")
    resumed.load_state_dict(first_part.state_dict())
    generator = torch.Generator().manual_seed(0)
    for _ in sizes[:2]:
        torch.randperm(103, generator=generator)  # the permutations the first part drew
    rest = [resumed.epoch(torch.randperm(103, generator=generator), b) for b in sizes[2:]]
    assert all(torch.equal(a, b) for got, want in zip(rest, uninterrupted[2:]) for a, b in zip(got, want))
    assert [len(e) for e in rest] == [len(e) for e in uninterrupted[2:]]
    with pytest.raises(ValueError, match="last_batch='half'"):
        BatchStream("half")


def test_mnist1d_generated_split_and_cached(tmp_path, monkeypatch):
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    data = load_mnist1d(n_samples=1000, n_val=200, n_test=200, generator_seed=42, cache_dir=str(tmp_path))
    # mnist1d reseeds the global generators; the loader must put them back
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert data.x_train.shape == (600, 40) and data.x_val.shape == (200, 40) and data.x_test.shape == (200, 40)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.n_classes == 10 and set(data.y_train.tolist()) == set(range(10))
    assert len(list(tmp_path.glob("mnist1d_1000_*.npz"))) == 1

    def must_not_regenerate(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", must_not_regenerate)
    again = load_mnist1d(n_samples=1000, n_val=200, n_test=200, generator_seed=42, cache_dir=str(tmp_path))
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_val, data.y_val)
    assert torch.equal(again.x_test, data.x_test)
    with pytest.raises(AssertionError, match="regenerated"):  # other arguments: a new file
        load_mnist1d(n_samples=1000, n_val=200, n_test=200, generator_seed=7, cache_dir=str(tmp_path))


def test_digits_split_is_seeded():
    a, b, c = load_digits(180, 180, 0), load_digits(180, 180, 0), load_digits(180, 180, 1)
    assert a.x_train.shape == (1437, 64) and a.x_val.shape == (180, 64) and a.x_test.shape == (180, 64)
    assert float(a.x_train.max()) <= 1.0
    assert torch.equal(a.y_train, b.y_train) and not torch.equal(a.y_train, c.y_train)


# --- the MNIST-1D cache is checked against what it claims to be ------------------------------------

def _only_cache(folder):
    (path,) = folder.glob("mnist1d_*.npz")
    return path


def _rewrite(path, **arrays):
    """Replace a cache file's arrays (the others kept), as a stray or edited file would hold them."""
    with np.load(path) as stored:
        kept = {name: stored[name] for name in stored.files}
    kept.update(arrays)
    with open(path, "wb") as f:
        np.savez(f, **kept)


@pytest.mark.parametrize("fault", ["other_seed", "more_rows", "fewer_rows", "labels_10_19", "edited", "old_format"])
def test_mnist1d_cache_that_is_not_what_its_name_says_is_regenerated_with_one_warning(tmp_path, caplog, fault):
    """A cache file is trusted for what it holds, not for its name: one of another generator seed,
    of 600 or 6,000 rows where 2,000 were asked, with labels 10-19, edited after it was written, or
    written without the digests (an older version) trains nothing: one warning naming the file,
    then the same data as a genuine cache gives."""
    genuine_dir, other_dir, cache_dir = tmp_path / "genuine", tmp_path / "other", tmp_path / "cache"
    genuine = load_mnist1d(n_samples=2000, n_val=400, n_test=400, generator_seed=42, cache_dir=str(genuine_dir))
    load_mnist1d(n_samples=2000, n_val=400, n_test=400, generator_seed=42, cache_dir=str(cache_dir))
    path = _only_cache(cache_dir)
    if fault == "other_seed":  # another seed's cache under this one's name
        load_mnist1d(n_samples=2000, n_val=400, n_test=400, generator_seed=7, cache_dir=str(other_dir))
        _only_cache(other_dir).replace(path)
    elif fault in ("more_rows", "fewer_rows"):
        rows = 6000 if fault == "more_rows" else 600
        load_mnist1d(n_samples=rows, n_val=100, n_test=100, generator_seed=42, cache_dir=str(other_dir))
        _only_cache(other_dir).replace(path)
    elif fault == "labels_10_19":
        with np.load(path) as stored:
            _rewrite(path, y=stored["y"] + 10)
    elif fault == "edited":
        with np.load(path) as stored:
            _rewrite(path, x=stored["x"][::-1].copy())  # the same rows, another order
    else:
        with np.load(path) as stored:
            x, y = stored["x"], stored["y"]
        with open(path, "wb") as f:
            np.savez(f, x=x, y=y)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.data"):
        data = load_mnist1d(n_samples=2000, n_val=400, n_test=400, generator_seed=42, cache_dir=str(cache_dir))
    assert data.digest() == genuine.digest()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.data"):  # replaced: the next read trusts it, silently
        again = load_mnist1d(n_samples=2000, n_val=400, n_test=400, generator_seed=42, cache_dir=str(cache_dir))
    assert again.digest() == genuine.digest() and not caplog.records
    assert [p.name for p in cache_dir.iterdir()] == [path.name]  # no temporary file left
