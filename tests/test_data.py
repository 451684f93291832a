"""Tests for vfcore.data, using tiny fake datasets written in the official file formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vfcore import data
from vfcore.data import (
    DATASETS,
    DatasetError,
    DatasetNotFoundError,
    ImageSet,
    batches,
    load_dataset,
    num_batches,
)

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the repo's data/, system installs and $VFCORE_DATA, and forbid downloads."""
    empty = tmp_path_factory.mktemp("empty")
    monkeypatch.setattr(data, "_REPO_DATA", empty / "repo-data")
    monkeypatch.setattr(data, "_SYSTEM_DATASETS", empty / "system")
    monkeypatch.delenv("VFCORE_DATA", raising=False)
    monkeypatch.setenv("VFCORE_NO_DOWNLOAD", "1")


# --- writers for the official formats ---------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    magic = 0x0800 | array.ndim
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx(folder: Path, train: bool, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if train else "t10k"
    files = {f"{prefix}-images-idx3-ubyte": images, f"{prefix}-labels-idx1-ubyte": labels}
    for stem, array in files.items():
        payload = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)


def fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return images, rng.integers(0, 10, size=n, dtype=np.uint8)


def cifar_pickle(pixels: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    # Protocol 2 matches the official (Python 2) pickles, which need _codecs.encode.
    return pickle.dumps({b"data": pixels, label_key: labels}, protocol=2)


def fake_cifar(n: int, seed: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return pixels, rng.integers(0, num_classes, size=n).tolist()


def cifar10_members() -> dict[str, tuple[np.ndarray, list[int]]]:
    members = {f"data_batch_{i}": fake_cifar(2, i, 10) for i in range(1, 6)}
    members["test_batch"] = fake_cifar(3, 0, 10)
    return members


def write_members(folder: Path, members: dict, label_key: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in members.items():
        (folder / name).write_bytes(cifar_pickle(pixels, labels, label_key))


def write_archive(path: Path, folder: str, members: dict, label_key: bytes) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, (pixels, labels) in members.items():
            payload = cifar_pickle(pixels, labels, label_key)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def image_set(
    images: torch.Tensor, mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,)
) -> ImageSet:
    labels = torch.arange(images.shape[0])
    return ImageSet("test", True, images, labels, images.shape[0], mean, std)


# --- loading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_mnist_idx_round_trip(tmp_path: Path, gz: bool, train: bool) -> None:
    images, labels = fake_mnist(5, seed=1)
    write_idx(tmp_path, train, images, labels, gz)
    loaded = load_dataset("mnist", train, root=tmp_path, download=False)
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (5, 1, 28, 28)
    assert loaded.labels.dtype == torch.int64 and len(loaded) == 5
    assert torch.equal(loaded.images[:, 0], torch.from_numpy(images))
    assert torch.equal(loaded.labels, torch.from_numpy(labels).long())
    assert (loaded.name, loaded.train, loaded.num_classes) == ("mnist", train, 10)
    assert loaded.mean == (0.1307,) and loaded.std == (0.3081,)


@pytest.mark.parametrize("layout", ["fashion_mnist", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_subfolders_and_cache(tmp_path: Path, layout: str) -> None:
    images, labels = fake_mnist(4, seed=2)
    write_idx(tmp_path / layout, False, images, labels, gz=True)
    first = load_dataset("fashion_mnist", False, root=tmp_path, download=False)
    assert torch.equal(first.images[:, 0], torch.from_numpy(images))
    assert first.mean == (0.2860,) and first.std == (0.3530,)
    assert load_dataset("fashion_mnist", False, root=tmp_path, download=False) is first


def test_mnist_and_fashion_kept_apart_by_subfolder(tmp_path: Path) -> None:
    write_idx(tmp_path / "mnist", True, *fake_mnist(3, seed=3), gz=False)
    write_idx(tmp_path / "fashion_mnist", True, *fake_mnist(3, seed=4), gz=False)
    mnist = load_dataset("mnist", True, root=tmp_path, download=False)
    fashion = load_dataset("fashion_mnist", True, root=tmp_path, download=False)
    assert torch.equal(mnist.images[:, 0], torch.from_numpy(fake_mnist(3, seed=3)[0]))
    assert torch.equal(fashion.images[:, 0], torch.from_numpy(fake_mnist(3, seed=4)[0]))


def test_vfcore_data_env_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = fake_mnist(2, seed=5)
    write_idx(tmp_path / "MNIST" / "raw", False, images, labels, gz=False)
    monkeypatch.setenv("VFCORE_DATA", str(tmp_path))
    loaded = load_dataset("mnist", False, download=False)
    assert torch.equal(loaded.labels, torch.from_numpy(labels).long())


def check_cifar10(loaded: ImageSet, members: dict, names: list[str]) -> None:
    pixels = np.concatenate([members[name][0] for name in names])
    labels = sum((members[name][1] for name in names), [])
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (len(labels), 3, 32, 32)
    assert torch.equal(loaded.images.reshape(len(labels), -1), torch.from_numpy(pixels))
    assert loaded.labels.tolist() == labels and loaded.labels.dtype == torch.int64
    assert loaded.num_classes == 10 and loaded.mean == (0.4914, 0.4822, 0.4465)


@pytest.mark.parametrize("subfolder", ["", "cifar10"])
def test_cifar10_pickle_folder(tmp_path: Path, subfolder: str) -> None:
    members = cifar10_members()
    write_members(tmp_path / subfolder / "cifar-10-batches-py", members, b"labels")
    train = load_dataset("cifar10", True, root=tmp_path, download=False)
    check_cifar10(train, members, [f"data_batch_{i}" for i in range(1, 6)])
    test = load_dataset("cifar10", False, root=tmp_path, download=False)
    check_cifar10(test, members, ["test_batch"])
    # Channel-major rows: the first 1024 values are the red plane.
    first = members["data_batch_1"][0][0]
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(first[:1024]))


def test_cifar10_archive_read_without_extracting(tmp_path: Path) -> None:
    members = cifar10_members()
    write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members, b"labels")
    train = load_dataset("cifar10", True, root=tmp_path, download=False)
    check_cifar10(train, members, [f"data_batch_{i}" for i in range(1, 6)])
    test = load_dataset("cifar10", False, root=tmp_path, download=False)
    check_cifar10(test, members, ["test_batch"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize("archive", [False, True])
def test_cifar100(tmp_path: Path, archive: bool) -> None:
    members = {"train": fake_cifar(4, 1, 100), "test": fake_cifar(2, 2, 100)}
    if archive:
        archive_path = tmp_path / "cifar-100-python.tar.gz"
        write_archive(archive_path, "cifar-100-python", members, b"fine_labels")
    else:
        write_members(tmp_path / "cifar100" / "cifar-100-python", members, b"fine_labels")
    for train, name in ((True, "train"), (False, "test")):
        loaded = load_dataset("cifar100", train, root=tmp_path, download=False)
        pixels, labels = members[name]
        assert loaded.images.shape == (len(labels), 3, 32, 32) and loaded.num_classes == 100
        assert torch.equal(loaded.images.reshape(len(labels), -1), torch.from_numpy(pixels))
        assert loaded.labels.tolist() == labels


def test_cifar_pickle_from_old_numpy(tmp_path: Path) -> None:
    # The official files were written with numpy < 2, whose arrays name numpy.core.multiarray.
    pixels, labels = fake_cifar(2, 3, 10)
    payload = cifar_pickle(pixels, labels, b"labels").replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in payload
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    loaded = load_dataset("cifar10", False, root=tmp_path, download=False)
    assert torch.equal(loaded.images.reshape(2, -1), torch.from_numpy(pixels))


# --- damaged, missing and unsafe files ---------------------------------------------------------


def test_truncated_idx(tmp_path: Path) -> None:
    write_idx(tmp_path, True, *fake_mnist(3, seed=6), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte") as info:
        load_dataset("mnist", True, root=tmp_path, download=False)
    assert "delete" in str(info.value)


def test_truncated_and_corrupted_gzip(tmp_path: Path) -> None:
    write_idx(tmp_path, True, *fake_mnist(3, seed=7), gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", True, root=tmp_path, download=False)
    path.write_bytes(b"\x1f\x8b\x08\x00 this is not deflate data")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", True, root=tmp_path, download=False)


def test_bad_magic(tmp_path: Path) -> None:
    write_idx(tmp_path, False, *fake_mnist(3, seed=8), gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 0x0804) + path.read_bytes()[4:])
    with pytest.raises(DatasetError, match="magic"):
        load_dataset("mnist", False, root=tmp_path, download=False)


def test_label_count_and_range_are_checked(tmp_path: Path) -> None:
    images, labels = fake_mnist(3, seed=9)
    write_idx(tmp_path / "a", False, images, labels[:2], gz=False)
    with pytest.raises(DatasetError, match="2 labels for 3 images"):
        load_dataset("mnist", False, root=tmp_path / "a", download=False)
    write_idx(tmp_path / "b", False, images, np.array([0, 10, 1], dtype=np.uint8), gz=False)
    with pytest.raises(DatasetError, match="labels fall outside"):
        load_dataset("mnist", False, root=tmp_path / "b", download=False)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to unpickle .*mkdir"):
        load_dataset("cifar10", False, root=tmp_path, download=False)
    assert not marker.exists()


def test_corrupted_cifar_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(DatasetError, match="cifar-100-python.tar.gz"):
        load_dataset("cifar100", True, root=tmp_path, download=False)


def test_missing_fashion_mnist_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", True, root=tmp_path, download=False)
    message = str(info.value)
    for needed in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert needed in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "fashion-mnist") in message and "$VFCORE_DATA" in message
    assert "fashion-mnist.s3-website" in message


def test_missing_cifar_message_and_no_download_env(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", False, root=tmp_path)  # download=True, but $VFCORE_NO_DOWNLOAD=1
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and "test_batch" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "apt-get" not in message


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("imagenet", True)
    assert DATASETS == ("mnist", "fashion_mnist", "cifar10", "cifar100")


def fake_urlopen(files: dict[str, bytes]):
    return lambda url, timeout: io.BytesIO(files[url])


def test_download_verifies_and_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFCORE_NO_DOWNLOAD")
    images, labels = fake_mnist(3, seed=10)
    payloads = {
        "t10k-images-idx3-ubyte": idx_bytes(images),
        "t10k-labels-idx1-ubyte": idx_bytes(labels),
    }
    source = data._SOURCES["fashion_mnist"]
    files = {f"{source.url}{stem}.gz": gzip.compress(body) for stem, body in payloads.items()}
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(files))

    with pytest.raises(DatasetNotFoundError, match="sha256"):
        load_dataset("fashion_mnist", False, root=tmp_path)
    assert list((tmp_path / "fashion_mnist").iterdir()) == []  # temp file removed

    digests = ("", "", *(hashlib.sha256(body).hexdigest() for body in payloads.values()))
    monkeypatch.setitem(data._SOURCES, "fashion_mnist", replace(source, digests=digests))
    loaded = load_dataset("fashion_mnist", False, root=tmp_path)
    assert torch.equal(loaded.images[:, 0], torch.from_numpy(images))
    assert sorted(p.name for p in (tmp_path / "fashion_mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split() -> None:
    loaded = load_dataset("fashion_mnist", False, root=SYSTEM_FASHION, download=False)
    assert loaded.images.shape == (10000, 1, 28, 28) and loaded.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(loaded.labels), torch.full((10,), 1000))


def test_subset() -> None:
    full = image_set(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2))
    part = full.subset(4, seed=3)
    assert len(part) == 4 and len(set(part.labels.tolist())) == 4
    assert torch.equal(part.images[:, 0, 0, 0].long(), part.labels)
    assert torch.equal(full.subset(4, seed=3).labels, part.labels)
    assert len(full.subset(10)) == 10
    with pytest.raises(ValueError):
        full.subset(11)


# --- batches ----------------------------------------------------------------------------------


def indexed_set(n: int, size: int = 8) -> ImageSet:
    """Images whose every pixel equals the sample's index, labelled with that index."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size)
    return image_set(images.contiguous())


def test_batch_shapes_dtypes_and_drop_last() -> None:
    dataset = indexed_set(10)
    out = list(batches(dataset, 4))
    assert [x.shape[0] for x, _ in out] == [4, 4, 2] == [y.shape[0] for _, y in out]
    assert all(x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) for x, _ in out)
    assert all(y.dtype == torch.int64 for _, y in out)
    assert len(list(batches(dataset, 4, drop_last=True))) == 2
    assert num_batches(10, 4) == 3 and num_batches(10, 4, drop_last=True) == 2
    assert num_batches(8, 4) == 2 and num_batches(0, 4) == 0


def test_normalisation_of_constant_image() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    dataset = image_set(torch.full((2, 3, 4, 4), 200, dtype=torch.uint8), mean, std)
    ((x, _),) = batches(dataset, 2)
    for c in range(3):
        expected = torch.tensor((200 / 255 - mean[c]) / std[c])
        assert torch.allclose(x[:, c], expected.expand(2, 4, 4))


def test_pad_to_centres_the_image() -> None:
    dataset = image_set(torch.full((1, 1, 28, 28), 255, dtype=torch.uint8))
    ((x, _),) = batches(dataset, 1, pad_to=32)
    assert x.shape == (1, 1, 32, 32)
    assert torch.all(x[0, 0, 2:30, 2:30] == 1.0) and x.sum() == 28 * 28
    ((odd, _),) = batches(dataset, 1, pad_to=31)
    assert torch.all(odd[0, 0, 1:29, 1:29] == 1.0) and odd.sum() == 28 * 28
    with pytest.raises(ValueError):
        batches(dataset, 1, pad_to=27)


def test_shuffle_is_a_permutation_and_limit_takes_its_prefix() -> None:
    dataset = indexed_set(50)
    out = list(batches(dataset, 8, shuffle=True, seed=1))
    labels = torch.cat([y for _, y in out])
    assert sorted(labels.tolist()) == list(range(50)) and labels.tolist() != list(range(50))
    images = torch.cat([x for x, _ in out])
    assert torch.equal(images[:, 0, 0, 0] * 255, labels.float())  # images follow their labels
    limited = torch.cat([y for _, y in batches(dataset, 8, shuffle=True, seed=1, limit=12)])
    assert torch.equal(limited, labels[:12])


def test_augmentation_is_deterministic_per_seed() -> None:
    dataset = image_set(torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8))

    def run(seed: int) -> list[torch.Tensor]:
        return [x for x, _ in batches(dataset, 5, shuffle=True, augment=True, seed=seed)]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_crop_shifts_by_at_most_four_pixels_and_flip_mirrors() -> None:
    n, size, row, col = 64, 20, 10, 4
    images = torch.zeros((n, 1, size, size), dtype=torch.uint8)
    images[:, :, row, col] = 255
    ((x, _),) = batches(image_set(images), n, augment=True, seed=0)
    shifts, flips = set(), []
    for sample in x[:, 0]:
        bright = (sample == 1.0).nonzero()
        assert bright.shape[0] == 1 and sample.sum() == 1.0  # one pixel, nothing else
        r, c = bright[0].tolist()
        flipped = abs(c - (size - 1 - col)) <= 4
        assert abs(r - row) <= 4 and (flipped or abs(c - col) <= 4)
        flips.append(flipped)
        shifts.add((r - row, c - (size - 1 - col) if flipped else c - col))
    assert any(flips) and not all(flips) and len(shifts) > 10


def test_augmented_sample_is_a_shifted_possibly_mirrored_copy() -> None:
    images = torch.randint(1, 256, (8, 3, 6, 6), dtype=torch.uint8)
    ((x, y),) = batches(image_set(images), 8, augment=True, seed=2)
    padded = torch.nn.functional.pad(images.float() / 255, (4, 4, 4, 4))
    for out, label in zip(x, y, strict=True):
        candidates = [
            crop.flip(-1) if flip else crop
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            for crop in [padded[label, :, dy : dy + 6, dx : dx + 6]]
        ]
        assert any(torch.equal(out, c) for c in candidates)


def test_channels_last_and_device() -> None:
    dataset = image_set(torch.zeros((3, 3, 4, 4), dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3)
    ((x, y),) = batches(dataset, 3, channels_last=True, device=torch.device("cpu"))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.device.type == "cpu"
    assert y.device == x.device and torch.all(x == -1.0)
