"""The cifar10 and covtype loaders on small files written here in the real on-disk formats, their
one-line errors when the data are missing, and the batch augmentation."""

import pickle
import socket

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.data_files import write_cifar10_files, write_covtype_cache
from helpers.store import runs_in
from sklearn.datasets import fetch_covtype

from src.data import DatasetUnavailable, augment_crop_flip, load_cifar10, load_covtype
from src.errors import ConfigError

PER_BATCH = 20  # images per CIFAR-10 batch file (the real ones hold 10,000)
# The loaders' arguments as conf/dataset gives them, at this file's sizes: the last PER_BATCH
# training images for validation.
CIFAR10 = {"download": False, "n_val": PER_BATCH, "n_train": None, "n_test": None}
COVTYPE = {"split_seed": 0, "val_fraction": 0.25, "test_fraction": 0.1, "download": False, "n_samples": None}


def write_cifar10(data_dir, seed=0):
    return write_cifar10_files(data_dir, PER_BATCH, seed)


@pytest.fixture
def offline(monkeypatch):
    """No name resolves, as on a machine without internet: a download attempt fails at once
    instead of fetching 160 MB where the network is up."""

    def unreachable(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)


def test_cifar10_reads_the_python_batches_normalised_per_channel(tmp_path):
    """Test = test_batch (the paper's test set); validation = the last training images."""
    raw_files, file_labels, raw_test, test_labels = write_cifar10(tmp_path)
    data = load_cifar10(str(tmp_path), **CIFAR10)
    n_train = 4 * PER_BATCH
    raw_train, raw_val = raw_files[:n_train], raw_files[n_train:]
    assert data.x_train.shape == (n_train, 3, 32, 32) and data.x_val.shape == (PER_BATCH, 3, 32, 32)
    assert data.x_test.shape == (PER_BATCH, 3, 32, 32)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == file_labels[:n_train] and data.y_val.tolist() == file_labels[n_train:]
    assert data.y_test.tolist() == test_labels
    assert data.n_classes == 10 and data.augment is augment_crop_flip
    assert torch.allclose(data.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(data.x_train.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    # pixel (c, i, j) is row entry c*1024 + i*32 + j; validation and test use the TRAIN statistics
    pixels = raw_train.reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1).astype(np.float64)
    mean, std = pixels.mean(axis=1), pixels.std(axis=1)
    for x, raw in ((data.x_train, raw_train), (data.x_val, raw_val), (data.x_test, raw_test)):
        expected = (raw.reshape(-1, 3, 32, 32) - mean[:, None, None]) / std[:, None, None]
        assert np.allclose(x.numpy(), expected, atol=1e-4)
    assert data.to(torch.device("cpu")).augment is augment_crop_flip


def assert_one_line_naming(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and "\r" not in message
    for part in parts:
        assert part in message


def test_cifar10_missing_is_one_line_saying_what_goes_where(tmp_path, offline):
    for download in (False, True):
        with pytest.raises(DatasetUnavailable) as error:
            load_cifar10(str(tmp_path), **{**CIFAR10, "download": download})
        assert_one_line_naming(error, str(tmp_path.resolve()), "cifar-10-batches-py/", "data_batch_1", "test_batch",
                               "cifar-10-python.tar.gz")
    assert isinstance(error.value, RuntimeError)


def row_ids(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column 0 standardised is an increasing affine map of the row index: ranks give it back.
    (train, validation, test) row indices."""
    column = torch.cat([data.x_train[:, 0], data.x_val[:, 0], data.x_test[:, 0]]).numpy()
    ids = column.argsort().argsort()
    n_train_val = data.n_train + data.n_val
    return ids[: data.n_train], ids[data.n_train : n_train_val], ids[n_train_val:]


def test_covtype_reads_sklearns_cache_standardised_and_split(tmp_path):
    x, y = write_covtype_cache(tmp_path)
    assert fetch_covtype(data_home=str(tmp_path), download_if_missing=False, return_X_y=True)[0].shape == (200, 54)
    data = load_covtype(str(tmp_path), **COVTYPE)
    assert data.x_train.shape == (130, 54) and data.x_val.shape == (50, 54) and data.x_test.shape == (20, 54)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.n_classes == 7 and data.augment is None
    train_ids, val_ids, test_ids = row_ids(data)
    assert sorted([*train_ids, *val_ids, *test_ids]) == list(range(200))  # a partition of the rows
    assert data.y_train.tolist() == (y[train_ids] - 1).tolist() and data.y_val.tolist() == (y[val_ids] - 1).tolist()
    assert data.y_test.tolist() == (y[test_ids] - 1).tolist()
    assert set(data.y_train.tolist()) <= set(range(7))
    varying = data.x_train[:, :-1]
    assert torch.allclose(varying.mean(0), torch.zeros(53), atol=1e-5)
    assert torch.allclose(varying.std(0, correction=0), torch.ones(53), atol=1e-4)
    assert not data.x_train[:, -1].any() and not data.x_val[:, -1].any()  # constant: 0, no division by 0
    # validation and test standardised with the TRAIN part's statistics
    train_rows = x[train_ids]
    for part, ids in ((data.x_val, val_ids), (data.x_test, test_ids)):
        expected = (x[ids, 1:10] - train_rows[:, 1:10].mean(0)) / train_rows[:, 1:10].std(0)
        assert np.allclose(part[:, 1:10].numpy(), expected, atol=1e-4)


def test_covtype_split_is_seeded(tmp_path):
    write_covtype_cache(tmp_path)
    splits = [row_ids(load_covtype(str(tmp_path), **{**COVTYPE, "split_seed": seed}))[1:] for seed in (0, 0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(splits[0], splits[1]))
    assert not any(np.array_equal(a, b) for a, b in zip(splits[0], splits[2]))
    sizes = load_covtype(str(tmp_path), **{**COVTYPE, "val_fraction": 0.1, "test_fraction": 0.05})
    assert (sizes.n_train, sizes.n_val, sizes.n_test) == (170, 20, 10)


@pytest.mark.filterwarnings("ignore:Retry downloading")
def test_covtype_missing_is_one_line_saying_what_goes_where(tmp_path, offline):
    for download in (False, True):  # offline, the download attempt fails after sklearn's retries
        with pytest.raises(DatasetUnavailable) as error:
            load_covtype(str(tmp_path / "data"), **{**COVTYPE, "download": download})
        assert_one_line_naming(error, str((tmp_path / "data").resolve()), "covertype/", "samples_py3", "targets_py3")
    assert "URLError" in str(error.value)


def numbered_images(n: int, size: int = 6) -> torch.Tensor:
    """(n, 2, size, size) images whose pixels are all different and non-zero."""
    return torch.arange(1, n * 2 * size * size + 1, dtype=torch.float32).view(n, 2, size, size)


def test_augmentation_is_reproducible_and_keeps_shape_and_dtype():
    x = numbered_images(32)
    first = augment_crop_flip(x, torch.Generator().manual_seed(0))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, augment_crop_flip(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, augment_crop_flip(x, torch.Generator().manual_seed(1)))


def test_flips_mirror_half_the_images():
    x = numbered_images(64)
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), padding=0)  # no crop: flips alone
    flipped = [torch.equal(o, torch.flip(i, dims=[-1])) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image one or the other
    assert 16 < sum(flipped) < 48


def test_crops_are_shifted_windows_of_the_reflection_padded_image():
    """As the WRN code pads CIFAR-10 (reflection; src/data.py says where): each output is the
    window at one of the (2p + 1)^2 offsets of the image mirrored at its edges, maybe flipped."""
    padding, size = 2, 6
    x = numbered_images(64, size)
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), padding=padding)
    # reflection by hand: rows/columns -p..size-1+p read |i| mirrored at both edges, edge kept once
    mirror = [abs(i) if i < size else 2 * (size - 1) - i for i in range(-padding, size + padding)]
    padded = x[:, :, mirror][:, :, :, mirror]
    assert torch.equal(padded[0, 0, padding:-padding, padding:-padding], x[0, 0])
    assert torch.equal(padded[0, 0, 0], padded[0, 0, 2 * padding])  # row -2 is row 2
    seen = set()
    for image, source in zip(out, padded):
        matches = [
            (top, left, flip)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            for flip in (False, True)
            if torch.equal(image, source[:, top : top + size, left : left + size].flip(-1) if flip
                           else source[:, top : top + size, left : left + size])
        ]
        assert len(matches) == 1, "not a window of the reflection-padded image"
        seen.add(matches[0][:2])
    assert len(seen) > 12  # most of the 25 shifts occur
    assert not (out == 0).any()  # no zeros: every pixel of the numbered images is > 0


# --- more than the files hold, and files that are not what they are named ---------------------------

@pytest.mark.parametrize("key, asked, held, words", [("n_train", 4 * PER_BATCH + 1, 4 * PER_BATCH, "hold 80"),
                                                    ("n_val", 5 * PER_BATCH, 5 * PER_BATCH - 1, "hold 100 training"),
                                                    ("n_val", 0, 1, "between 1 and 99"),
                                                    ("n_test", PER_BATCH + 1, PER_BATCH, "hold 20")])
def test_cifar10_subset_larger_than_the_files_is_refused(tmp_path, key, asked, held, words):
    """dataset.n_train=100000 on files of fewer images: one line naming the key and what the files
    hold, never a run on fewer samples than its logged parameter says. Exactly what they hold is
    fine (a validation part leaves at least one image to train on)."""
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_cifar10(str(tmp_path), **{**CIFAR10, key: asked})
    assert_one_line_naming(error, f"dataset.{key}={asked}", words)
    data = load_cifar10(str(tmp_path), **{**CIFAR10, key: held})
    assert (data.n_train + data.n_val, data.n_test) == (5 * PER_BATCH, PER_BATCH)


def test_covtype_subset_larger_than_the_cache_is_refused(tmp_path):
    write_covtype_cache(tmp_path)  # 200 rows
    with pytest.raises(ConfigError) as error:
        load_covtype(str(tmp_path), **{**COVTYPE, "n_samples": 201})
    assert_one_line_naming(error, "dataset.n_samples=201", "hold 200")


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_a_batch", "labels_beyond_9"])
@pytest.mark.parametrize("name", ["data_batch_3", "test_batch"])
def test_cifar10_damaged_batch_file_is_one_line_naming_it(tmp_path, damage, name):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / name
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_a_batch":
        path.write_bytes(pickle.dumps({b"something": "else"}))
    else:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        batch[b"labels"] = [label + 10 for label in batch[b"labels"]]
        path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetUnavailable) as error:
        load_cifar10(str(tmp_path), **CIFAR10)
    assert_one_line_naming(error, str(path.resolve()), "not a CIFAR-10 batch")


@pytest.mark.slow  # ~5 s, a fresh process: the refusal itself is tested above in-process
def test_cli_cifar10_more_images_than_the_files_hold(tmp_path, data_dir):
    """End to end: exit 2, one line naming the key, no MLflow run (the session's files hold 1,000
    training images, 800 of them for training)."""
    result = run_cli("dataset=cifar10", "dataset.n_val=200", "dataset.n_train=100000", "trainer.epochs=1", "schedule.milestones=[]",
                     "trainer.threads=1", output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: dataset.n_train=100000: the files under") and "hold 800" in line, line
    assert runs_in(tmp_path) == []
