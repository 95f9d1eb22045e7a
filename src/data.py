"""Data: each loader returns a Dataset of whole tensors that then live on the training device.

Three splits: train (the steps), validation (what any decision may read: the plateau schedules,
the best validation loss, the choice of settings) and test (held out: logged and reported, read
by no decision). MNIST-1D and digits split one seeded, shuffled set as [train | val | test];
covertype likewise by fractions; CIFAR-10 keeps its 10,000 test images as the test split, as the
paper reports test accuracy, and holds out the last training images for validation.

Batches are slices of a seeded permutation of the resident training tensors (src.batching), so
the batch size can change at any epoch with nothing to rebuild. Augmentation, where a dataset has
one, works on a whole batch on the device for the same reason (augment_crop_flip).

Loaders of data that must be downloaded (cifar10, covtype) raise DatasetUnavailable, with one
line saying where to put which files, when the files are missing and cannot be downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import pickle
import random
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from src.errors import ConfigError, DatasetUnavailable
from src.files import write_atomically

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"  # what the archive unpacks to, and torchvision's layout
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor  # int64 class indices
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor  # held out: logged and reported, read by no decision
    y_test: torch.Tensor
    n_classes: int
    name: str  # the data set, as its conf/dataset/ option names it
    source: str  # where the samples came from: the URI of the file or folder they were read from
    # augment(x_batch, generator) -> a new training batch on x_batch's device; None: none
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        return len(self.y_val)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    def digest(self) -> str:
        """A fingerprint of the samples as the run trains and validates on them (after the split
        and the scaling): sha256 over the six tensors' bytes and shapes, 12 hex digits. Two runs
        with the same digest saw the same data, whatever the loader's arguments."""
        sha = hashlib.sha256()
        for tensor in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            sha.update(str(tuple(tensor.shape)).encode())
            sha.update(tensor.detach().cpu().contiguous().numpy())  # the buffer itself: no second copy
        return sha.hexdigest()[:12]

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
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


def _from_arrays(x: np.ndarray, y: np.ndarray, n_val: int, n_test: int, n_classes: int, name: str,
                 source: str) -> Dataset:
    """Already shuffled samples split in order: [train | n_val validation | n_test test]. Sizes
    below 1 are left for config.validate_against_data to refuse, naming the keys."""
    x_t = torch.as_tensor(x, dtype=torch.float32)
    y_t = torch.as_tensor(y, dtype=torch.int64)
    n_train = max(len(y_t) - max(n_val, 0) - max(n_test, 0), 0)
    n_train_val = min(n_train + max(n_val, 0), len(y_t))
    return Dataset(x_t[:n_train], y_t[:n_train], x_t[n_train:n_train_val], y_t[n_train:n_train_val],
                   x_t[n_train_val:], y_t[n_train_val:], n_classes, name=name, source=source)


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


MNIST1D_LENGTH = 40  # samples per sequence: mnist1d's default final_seq_length, which load_mnist1d keeps
MNIST1D_CLASSES = 10


def _mnist1d_inputs(n_samples: int, generator_seed: int) -> str:
    """sha256 of what the generator is given: the two arguments set here and mnist1d's version
    (which fixes every other argument's default). Stored in the cache beside the data: a cache
    is what it claims only if it was generated from exactly these."""
    version = importlib.metadata.version("mnist1d")
    return hashlib.sha256(repr((int(n_samples), int(generator_seed), version)).encode()).hexdigest()


def _content_digest(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the cached arrays' shapes, dtypes and bytes: a cache edited or damaged after it
    was written no longer matches the digest written with it."""
    sha = hashlib.sha256()
    for array in (x, y):
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(np.ascontiguousarray(array).data)
    return sha.hexdigest()


def _cache_problem(arrays: dict[str, np.ndarray], n_samples: int, inputs: str) -> str | None:
    """Why cached arrays are not MNIST-1D generated from `inputs` (n_samples rows of
    MNIST1D_LENGTH, labels 0..9, the digests written with them); None when they are."""
    if not {"x", "y", "inputs", "content"} <= arrays.keys():
        return f"holds {sorted(arrays)}, not x, y and the digests of a cache this version writes"
    x, y = arrays["x"], arrays["y"]
    if str(arrays["inputs"]) != inputs:
        return "generated from other inputs (another generator seed, sample count or mnist1d version)"
    if x.shape != (n_samples, MNIST1D_LENGTH) or y.shape != (n_samples,):
        return f"x {x.shape} and y {y.shape}, not ({n_samples}, {MNIST1D_LENGTH}) and ({n_samples},)"
    if x.dtype != np.float32 or y.dtype != np.int64:
        return f"x {x.dtype} and y {y.dtype}, not float32 and int64"
    if len(y) and not 0 <= y.min() <= y.max() < MNIST1D_CLASSES:
        return f"labels {y.min()}..{y.max()}, not 0..{MNIST1D_CLASSES - 1}"
    if str(arrays["content"]) != _content_digest(x, y):
        return "its arrays do not match the digest written with them (edited or damaged)"
    return None


def _read_cache(path: Path, n_samples: int, inputs: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) from a cache file that is what it claims: generated from `inputs`, n_samples rows,
    labels 0..9, the arrays those digests were written for. None when it is missing, or when it is
    anything else (unreadable, of another seed or size, renamed, edited, cut short, written by an
    older version): then, after one warning line naming the file and why, the data are generated
    again and the file replaced. A file's name is no evidence of what it holds."""
    if not path.exists():
        return None
    try:
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        problem = _cache_problem(arrays, n_samples, inputs)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        problem = f"unreadable ({type(error).__name__}: {' '.join(str(error).split())})"
    if problem is None:
        return arrays["x"], arrays["y"]
    log.warning("data cache %s is not the MNIST-1D it is named for: %s; generating the data again", path, problem)
    return None


def load_mnist1d(n_samples: int, n_val: int, n_test: int, generator_seed: int, cache_dir: str) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally with mnist1d's make_dataset, never its
    download path. Cached as .npz under cache_dir, named by the generation arguments and
    checked against them when read (_read_cache)."""
    # The check needs no import of mnist1d (~0.65 s: it pulls in matplotlib and scipy): the
    # generation arguments are its defaults but for these two, fixed by the installed version.
    inputs = _mnist1d_inputs(n_samples, generator_seed)
    path = Path(cache_dir) / f"mnist1d_{n_samples}_{inputs[:10]}.npz"
    cached = _read_cache(path, n_samples, inputs)
    if cached is not None:
        x, y = cached
    else:
        import mnist1d.data

        args = mnist1d.data.get_dataset_args(as_dict=True)
        args.update(num_samples=int(n_samples), train_split=1.0, seed=int(generator_seed))
        with _global_rng_untouched():
            generated = mnist1d.data.make_dataset(mnist1d.utils.ObjectView(args))
        x, y = generated["x"].astype(np.float32), generated["y"].astype(np.int64)
        content = _content_digest(x, y)
        # parallel jobs generating the same cache never see a torn file
        write_atomically(path, lambda f: np.savez(f, x=x, y=y, inputs=inputs, content=content))
    # make_dataset already shuffled and standardised the whole set: split in order.
    return _from_arrays(x, y, n_val, n_test, n_classes=MNIST1D_CLASSES, name="mnist1d", source=path.resolve().as_uri())


def load_digits(n_val: int, n_test: int, split_seed: int) -> Dataset:
    """sklearn's bundled 8x8 digits (1,797 samples, no download): for smoke tests."""
    import sklearn.datasets
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    order = np.random.default_rng(split_seed).permutation(len(y))
    x = x[order] / 16.0  # pixel values 0..16 -> 0..1
    bundled = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"  # the file load_digits reads
    return _from_arrays(x, y[order], n_val, n_test, n_classes=10, name="digits", source=bundled.as_uri())


def _unavailable(what_and_where: str, reason: str) -> DatasetUnavailable:
    """One line, whatever the reason's text holds (urllib's errors can span lines)."""
    return DatasetUnavailable(" ".join(f"{what_and_where} ({reason})".split()))


def _standardise_in_place(data: Dataset, dims: tuple[int, ...]) -> None:
    """Subtract the TRAIN part's mean and divide by its (population) std over `dims`, in all
    three parts. A feature constant in the train part is divided by 1, as sklearn's StandardScaler
    does. In place: CIFAR-10's training set is 600 MB as float32."""
    std, mean = torch.std_mean(data.x_train, dim=dims, correction=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for part in (data.x_train, data.x_val, data.x_test):
        part.sub_(mean).div_(std)


CIFAR10_PIXELS = 3 * 32 * 32  # values per image row of a batch file
CIFAR10_CLASSES = 10


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One of CIFAR-10's python pickles: b"data" uint8 (n, 3072), each row the 1024 red, then
    green, then blue pixels of a 32x32 image, row-major; b"labels" a list of n ints 0..9. A file
    that is not one (truncated, empty, another file under its name) is DatasetUnavailable: one
    line naming the file, not the unpickler's traceback."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the files were written by Python 2
        images, labels = np.asarray(batch[b"data"]), [int(label) for label in batch[b"labels"]]
        problem = None
        if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != CIFAR10_PIXELS:
            problem = f"data {images.dtype} {images.shape}, not uint8 (n, {CIFAR10_PIXELS})"
        elif len(labels) != len(images) or not all(0 <= label < CIFAR10_CLASSES for label in labels):
            problem = f"{len(labels)} labels for {len(images)} images, or a label outside 0..{CIFAR10_CLASSES - 1}"
    except Exception as error:  # whatever a truncated or foreign pickle raises: EOFError, UnpicklingError, KeyError ...
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        raise _unavailable(f"CIFAR-10 file {path} is not a CIFAR-10 batch: replace it (from {CIFAR10_URL}), or "
                           f"delete it to download again", problem)
    return images, labels


def _read_cifar10_batches(folder: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of batch files `names` as float32 (n, 3, 32, 32) and their labels."""
    images, labels = [], []
    for name in names:
        batch_images, batch_labels = _read_cifar10_batch(folder / name)
        images.append(batch_images)
        labels.extend(batch_labels)
    x = torch.from_numpy(np.concatenate(images)).reshape(-1, 3, 32, 32).float()
    return x, torch.tensor(labels, dtype=torch.int64)


def _at_most_available(key: str, asked: int | None, available: int, where: Path) -> None:
    """Refuse a subset size (dataset.n_train ...) larger than what the files hold, rather than
    train on fewer samples than the run logs as its parameter."""
    if asked is not None and asked > available:
        raise ConfigError(f"{key}={asked}: the files under {where} hold {available}; at most {available}, "
                          "or null for all")


def _download_cifar10(data_dir: Path) -> str | None:
    """Fetch the archive with torchvision when it is installed (an optional dependency, so
    imported here). None on success, else why not."""
    try:
        import torchvision
    except ImportError:
        return "torchvision not installed, so no download"
    try:
        torchvision.datasets.CIFAR10(root=str(data_dir), download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad checksum a RuntimeError
        return f"download failed: {type(error).__name__}: {error}"
    return None


def load_cifar10(data_dir: str, download: bool, n_val: int, n_train: int | None, n_test: int | None) -> Dataset:
    """CIFAR-10 from torchvision's on-disk format, <data_dir>/cifar-10-batches-py/, as float32
    (N, 3, 32, 32) normalised per channel with the training set's mean and std. Test = the
    10,000 images of test_batch, the paper's test set; validation = the last n_val of the
    50,000 in data_batch_1..5 (the files are already shuffled), train = the rest. Missing
    files are downloaded with torchvision when `download` and torchvision is installed.
    Training batches are augmented as in the WRN code the paper follows (augment_crop_flip;
    inferred: the paper is silent). n_train / n_test keep the first images of their part only
    (null: all): for quick, scaled-down runs; more than the files hold is refused
    (ConfigError). A batch file that is not one (truncated, empty) is DatasetUnavailable naming it."""
    data_dir = Path(data_dir).resolve()
    folder = data_dir / CIFAR10_FOLDER

    def missing() -> bool:
        return not all((folder / name).exists() for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE))

    if missing():
        reason = _download_cifar10(data_dir) if download else "download=False"
        if missing():
            raise _unavailable(
                f"CIFAR-10 not found: put {CIFAR10_FOLDER}/ (data_batch_1..5 and {CIFAR10_TEST_FILE}, from "
                f"{CIFAR10_URL}) under {data_dir}",
                reason or "downloaded, yet files are missing",
            )
    x_all, y_all = _read_cifar10_batches(folder, CIFAR10_TRAIN_FILES)
    x_test, y_test = _read_cifar10_batches(folder, (CIFAR10_TEST_FILE,))
    if not 0 < n_val < len(y_all):  # validation comes out of the training files: one image at least left to train on
        raise ConfigError(f"dataset.n_val={n_val}: the files under {folder} hold {len(y_all)} training images; "
                          f"between 1 and {len(y_all) - 1}, the rest to train on")
    n_rest = len(y_all) - n_val
    _at_most_available("dataset.n_train", n_train, n_rest, folder)
    _at_most_available("dataset.n_test", n_test, len(y_test), folder)
    data = Dataset(x_all[:n_rest][:n_train], y_all[:n_rest][:n_train], x_all[n_rest:], y_all[n_rest:],
                   x_test[:n_test], y_test[:n_test], n_classes=CIFAR10_CLASSES, augment=augment_crop_flip,
                   name="cifar10", source=folder.as_uri())
    _standardise_in_place(data, dims=(0, 2, 3))
    return data


def load_covtype(data_dir: str, split_seed: int, val_fraction: float, test_fraction: float, download: bool,
                 n_samples: int | None) -> Dataset:
    """Forest covertype (581,012 samples, 54 features, 7 classes) through
    sklearn.datasets.fetch_covtype, cached under <data_dir>/covertype/ (sklearn's own cache:
    samples_py3 and targets_py3, joblib dumps); downloaded there when missing and `download`.
    A seeded shuffle split as [train | val_fraction validation | test_fraction test], each
    fraction rounded up as sklearn's train_test_split does (the blog demo's split is 75/25
    train/validation and has no test part). Features standardised with the train part's mean and
    std; labels 1..7 become 0..6. n_samples keeps that many of the shuffled samples (before the
    split): for quick, scaled-down runs; more than the cache holds is refused (ConfigError)."""
    from sklearn.datasets import fetch_covtype

    data_dir = Path(data_dir).resolve()
    try:
        # With download_if_missing, sklearn reads its cache when both files are there and only
        # downloads otherwise. OSError: missing without download, or the download failed.
        x, y = fetch_covtype(data_home=str(data_dir), download_if_missing=download, return_X_y=True)
    except OSError as error:
        raise _unavailable(
            f"covertype not found: put sklearn's cache covertype/ (samples_py3, targets_py3, written by "
            f"sklearn.datasets.fetch_covtype(data_home=...) where online) under {data_dir}",
            f"{type(error).__name__}: {error}" if download else "download=False",
        ) from error
    _at_most_available("dataset.n_samples", n_samples, len(y), data_dir / "covertype")
    order = np.random.default_rng(split_seed).permutation(len(y))[:n_samples]
    n_val, n_test = math.ceil(val_fraction * len(order)), math.ceil(test_fraction * len(order))
    data = _from_arrays(x[order], y[order] - 1, n_val, n_test, n_classes=7, name="covtype",
                        source=(data_dir / "covertype").as_uri())
    _standardise_in_place(data, dims=(0,))
    return data


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The augmentation of the WRN code the paper follows (Zagoruyko & Komodakis; inferred), on
    a whole batch (N, C, H, W): a random H x W crop of the image padded by `padding` pixels on
    each side by REFLECTION (the edge pixel not repeated), then a horizontal flip with
    probability 1/2. Reflection, not zeros, as that code trains CIFAR-10: its Lua train.lua
    defaults to zero padding but scripts/train_cifar.sh sets randomcrop_type=reflection
    (nn.SpatialReflectionPadding; its logged CIFAR runs say "reflection"), and its PyTorch port
    pads with torchvision's Pad(4, padding_mode='reflect'). The same distribution as theirs: 9 x 9
    offsets, flip independent of the crop.

    One gather on x's device, no loop over images. The random offsets and flips (3 numbers per
    image) are drawn on the generator's device and moved to x's: a CPU generator gives the same
    augmentation on CPU and GPU for the same seed.
    """
    n, _, height, width = x.shape
    draw_device = generator.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_device).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_device).to(x.device)
    flip = torch.rand(n, generator=generator, device=draw_device).to(x.device) < 0.5
    padded = F.pad(x, (padding, padding, padding, padding), mode="reflect")
    rows = top[:, None] + torch.arange(height, device=x.device)  # (n, H) rows of the padded image
    columns = torch.arange(width, device=x.device).expand(n, width)
    columns = left[:, None] + torch.where(flip[:, None], columns.flip(1), columns)  # flipped: read right to left
    images = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[images, channels, rows[:, None, :, None], columns[:, None, None, :]]
