"""Small, learnable stand-ins for MNIST, CIFAR-10 and CIFAR-100, written in the official on-disk
layouts (IDX files; the python pickle batches), so that the paper profile's data path runs in CI.

Each class has its own random mean image; samples are that image plus noise, so a tiny network
learns them in a few steps.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _samples(n: int, shape: tuple[int, ...], classes: int, seed: int) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.integers(40, 216, size=(classes, *shape))
    labels = rng.integers(0, classes, size=n)
    noise = rng.normal(0, 30, size=(n, *shape))
    images = np.clip(means[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(f">{1 + array.ndim}I", 0x0800 | array.ndim, *array.shape) + array.tobytes()


def write_mnist(folder: Path, n_train: int, n_test: int) -> None:
    """`mnist/` with the four gzipped IDX files."""
    folder = folder / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = _samples(n, (28, 28), 10, seed)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx(labels.astype(np.uint8))))


def _pickle(path: Path, payload: dict) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=2))


def write_cifar10(folder: Path, n_train: int, n_test: int) -> None:
    """`cifar10/cifar-10-batches-py/` with data_batch_1..5, test_batch and batches.meta."""
    folder = folder / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _samples(n_train, (3, 32, 32), 10, 3)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _pickle(folder / f"data_batch_{i}", {b"data": images[part].reshape(len(part), -1),
                                             b"labels": labels[part].tolist()})
    images, labels = _samples(n_test, (3, 32, 32), 10, 4)
    _pickle(folder / "test_batch", {b"data": images.reshape(n_test, -1),
                                    b"labels": labels.tolist()})
    _pickle(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})


def write_cifar100(folder: Path, n_train: int, n_test: int) -> None:
    """`cifar100/cifar-100-python/` with train, test and meta."""
    folder = folder / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 5), ("test", n_test, 6)):
        images, labels = _samples(n, (3, 32, 32), 100, seed)
        _pickle(folder / name, {b"data": images.reshape(n, -1), b"fine_labels": labels.tolist(),
                                b"coarse_labels": (labels // 5).tolist()})
    _pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})


def write_all(folder: Path, n_train: int = 1000, n_test: int = 500) -> Path:
    """Every dataset of the paper profile under `folder` (point $VFCORE_DATA at it)."""
    write_mnist(folder, n_train, n_test)
    write_cifar10(folder, n_train, n_test)
    write_cifar100(folder, n_train, n_test)
    return folder
