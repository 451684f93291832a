"""Image datasets for the experiments: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100.

The official files (IDX for the MNIST family, pickled batches for CIFAR) are parsed here without
torchvision or PIL and kept in memory as uint8 tensors. ``batches`` turns them into normalised
float batches with plain tensor operations, so loading is deterministic for a given seed and runs
on whatever device the model uses, without worker processes.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import gzip
import hashlib
import http.client
import logging
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # numpy < 2 keeps these under numpy.core
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.numeric import _frombuffer as _np_frombuffer

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100")
_SHAPES = {"mnist": (1, 28, 10), "fashion_mnist": (1, 28, 10), "cifar10": (3, 32, 10),
           "cifar100": (3, 32, 100)}


def dataset_shape(name: str) -> tuple[int, int, int]:
    """(channels, native image size, classes) of a dataset, known without loading it."""
    if name not in _SHAPES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return _SHAPES[name]

_log = logging.getLogger(__name__)

_REPO_DATA = Path(__file__).resolve().parent.parent / "data"
_SYSTEM_DATASETS = Path("/usr/share/datasets")
_DOWNLOAD_TIMEOUT_S = 30.0
_CROP_PAD = 4
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_IDX_STEMS = (  # train images, train labels, test images, test labels
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# A location is the resolved file(s) a split is read from; it keys the in-process cache.
_Location = tuple[Path, ...]


class DatasetError(RuntimeError):
    """A dataset file is unreadable, corrupted or unsafe to load."""


class DatasetNotFoundError(DatasetError):
    """No copy of the dataset was found and none could be downloaded."""


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split of a dataset, held in memory.

    ``images`` is uint8 (N, C, H, W) and ``labels`` int64 (N,). Sets returned by ``load_dataset``
    are cached and shared between callers, so treat the tensors as read-only. ``eq=False`` keeps
    identity comparison, because comparing tensors elementwise has no single truth value.
    """

    name: str
    train: bool
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int, seed: int = 0) -> ImageSet:
        """The first ``n`` samples of a permutation seeded with ``seed``: a reproducible subset."""
        if not 0 <= n <= len(self):
            raise ValueError(f"subset size {n} is outside 0..{len(self)}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return dataclasses.replace(self, images=self.images[order], labels=self.labels[order])


def _corrupt(source: Path | str, problem: str) -> DatasetError:
    """An error naming the bad file and telling the user how to recover."""
    return DatasetError(
        f"{source}: {problem}. The file is truncated or corrupted; delete it and obtain it again."
    )


def _check_labels(labels: torch.Tensor, num_classes: int, source: Path) -> torch.Tensor:
    """Return ``labels`` if all lie in 0..num_classes-1; otherwise the file is damaged."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise _corrupt(source, f"labels fall outside 0..{num_classes - 1}")
    return labels


def _read_bytes(path: Path) -> bytearray:
    """The file's contents, gunzipped when the name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        return bytearray(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, f"cannot be read ({err})") from err


def _read_idx(path: Path, magic: int) -> torch.Tensor:
    """Parse an IDX file of unsigned bytes; the magic's last byte is the number of dimensions."""
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, f"it has {len(raw)} bytes, fewer than the IDX header needs")
    found, *dims = struct.unpack_from(f">{1 + ndim}I", raw)
    if found != magic:
        raise _corrupt(path, f"bad magic number 0x{found:08x} (expected 0x{magic:08x})")
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise _corrupt(path, f"payload is {len(raw) - header} bytes, the header says {expected}")
    if expected == 0:
        return torch.zeros(dims, dtype=torch.uint8)
    return torch.frombuffer(raw, dtype=torch.uint8, offset=header).reshape(dims)


_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays, so a crafted file cannot run code."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _PICKLE_ALLOWED.get((module, name))
        if allowed is None:
            raise DatasetError(
                f"{self.source}: refusing to unpickle {module}.{name}, since only numpy arrays are"
                " expected. Delete the file and obtain it again from the official source."
            )
        return allowed


def _unpickle(file: IO[bytes], source: str) -> Any:
    """Load one CIFAR pickle with the restricted unpickler."""
    try:
        return _SafeUnpickler(file, source).load()
    except DatasetError:
        raise
    except Exception as err:  # a damaged pickle can fail in many different ways
        raise _corrupt(source, f"cannot be unpickled ({err!r})") from err


def _cifar_arrays(batch: Any, label_key: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one unpickled CIFAR batch and return its (N, 3072) pixels and (N,) labels."""
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise _corrupt(source, "it has no uint8 matrix under b'data'")
    if data.shape[1] != 3 * 32 * 32:
        raise _corrupt(source, f"rows have {data.shape[1]} values instead of 3072")
    labels = np.asarray(batch.get(label_key))
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(source, f"expected {data.shape[0]} integer labels under {label_key!r}")
    return data, labels


@dataclass(frozen=True)
class _Source:
    """What is common to every dataset: its constants and where its files may live."""

    title: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    subdirs: tuple[str, ...]  # searched under each base folder; the first receives downloads
    system_dirs: tuple[str, ...]  # searched under _SYSTEM_DATASETS
    apt_package: str | None


@dataclass(frozen=True)
class _IdxSource(_Source):
    """A dataset in the MNIST layout: four IDX files, raw or gzipped."""

    url: str
    digests: tuple[str, ...]  # hex digests of the files in _IDX_STEMS order
    hash_name: str
    hash_decompressed: bool  # whether the digest is of the gunzipped payload

    def stems(self, train: bool) -> tuple[str, ...]:
        return _IDX_STEMS[:2] if train else _IDX_STEMS[2:]

    def needed(self, train: bool) -> str:
        names = ", ".join(f"{stem}.gz" for stem in self.stems(train))
        return f"{names} (or the same files without .gz)"

    def urls(self, train: bool) -> list[str]:
        return [f"{self.url}{stem}.gz" for stem in self.stems(train)]

    def locate(self, folder: Path, train: bool) -> _Location | None:
        found = []
        for stem in self.stems(train):
            candidates = (folder / stem, folder / f"{stem}.gz")
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                return None
            found.append(path.resolve())
        return tuple(found)

    def read(self, location: _Location, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images_path, labels_path = location
        images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise _corrupt(
                labels_path, f"it has {labels.shape[0]} labels for {images.shape[0]} images"
            )
        return images.unsqueeze(1), _check_labels(labels.long(), self.num_classes, labels_path)

    def download(self, folder: Path, train: bool) -> None:
        digests = dict(zip(_IDX_STEMS, self.digests, strict=True))
        for stem, url in zip(self.stems(train), self.urls(train), strict=True):
            target = folder / f"{stem}.gz"
            _fetch(url, target, self.hash_name, digests[stem], self.hash_decompressed)


@dataclass(frozen=True)
class _CifarSource(_Source):
    """A dataset in the CIFAR layout: pickled batches, extracted or inside the official archive."""

    folder: str
    archive: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: bytes
    url: str
    md5: str

    def members(self, train: bool) -> tuple[str, ...]:
        return self.train_members if train else self.test_members

    def needed(self, train: bool) -> str:
        members = ", ".join(self.members(train))
        return f"{self.archive}, or the extracted folder {self.folder}/ containing {members}"

    def urls(self, train: bool) -> list[str]:
        return [self.url]

    def locate(self, folder: Path, train: bool) -> _Location | None:
        extracted = folder / self.folder
        if all((extracted / member).is_file() for member in self.members(train)):
            return (extracted.resolve(),)
        archive = folder / self.archive
        return (archive.resolve(),) if archive.is_file() else None

    def read(self, location: _Location, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        (path,) = location
        if path.is_dir():
            loaded = []
            for member in self.members(train):
                with (path / member).open("rb") as f:
                    loaded.append((_unpickle(f, str(path / member)), str(path / member)))
        else:
            loaded = self._read_archive(path, train)
        arrays = [_cifar_arrays(batch, self.label_key, source) for batch, source in loaded]
        images = torch.from_numpy(np.concatenate([pixels for pixels, _ in arrays]))
        labels = torch.from_numpy(np.concatenate([lab for _, lab in arrays]).astype(np.int64))
        return images.reshape(-1, 3, 32, 32), _check_labels(labels, self.num_classes, path)

    def _read_archive(self, path: Path, train: bool) -> list[tuple[Any, str]]:
        """Unpickle the wanted members in one pass over the .tar.gz stream, extracting nothing."""
        wanted = [f"{self.folder}/{member}" for member in self.members(train)]
        found: dict[str, Any] = {}
        try:
            with tarfile.open(path, "r|gz") as tar:
                for entry in tar:
                    name = entry.name.removeprefix("./")
                    file = tar.extractfile(entry) if name in wanted else None
                    if file is not None:
                        found[name] = _unpickle(file, f"{path}:{name}")
        except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
            raise _corrupt(path, f"the archive cannot be read ({err})") from err
        missing = [name for name in wanted if name not in found]
        if missing:
            raise _corrupt(path, f"the archive lacks {', '.join(missing)}")
        return [(found[name], f"{path}:{name}") for name in wanted]

    def download(self, folder: Path, train: bool) -> None:
        _fetch(self.url, folder / self.archive, "md5", self.md5, False)


_AnySource = _IdxSource | _CifarSource

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)

_SOURCES: dict[str, _AnySource] = {
    "mnist": _IdxSource(
        title="MNIST",
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        subdirs=("mnist", "MNIST/raw"),
        system_dirs=("mnist",),
        apt_package=None,
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        digests=(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        hash_name="md5",
        hash_decompressed=False,
    ),
    "fashion_mnist": _IdxSource(
        title="Fashion-MNIST",
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
        system_dirs=("fashion-mnist",),
        apt_package="dataset-fashion-mnist",
        url=_FASHION_URL,
        digests=(
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
        hash_name="sha256",
        hash_decompressed=True,
    ),
    "cifar10": _CifarSource(
        title="CIFAR-10",
        num_classes=10,
        mean=_CIFAR_MEAN,
        std=_CIFAR_STD,
        subdirs=("cifar10",),
        system_dirs=(),
        apt_package=None,
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",),
        label_key=b"labels",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": _CifarSource(
        title="CIFAR-100",
        num_classes=100,
        mean=_CIFAR_MEAN,
        std=_CIFAR_STD,
        subdirs=("cifar100",),
        system_dirs=(),
        apt_package=None,
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_members=("train",),
        test_members=("test",),
        label_key=b"fine_labels",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def _fetch(url: str, target: Path, hash_name: str, digest: str, decompressed: bool) -> None:
    """Download ``url`` to ``target`` through a temporary file, kept only if its digest matches."""
    _log.info("downloading %s to %s", url, target)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            shutil.copyfileobj(response, out)
        hasher = hashlib.new(hash_name)
        with gzip.open(tmp, "rb") if decompressed else tmp.open("rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
        actual = hasher.hexdigest()
        if actual != digest:
            raise DatasetError(f"{url}: {hash_name} is {actual}, expected {digest}")
        os.replace(tmp, target)
    except (OSError, EOFError, zlib.error, http.client.HTTPException) as err:
        raise DatasetError(f"could not download {url} ({err})") from err
    finally:
        tmp.unlink(missing_ok=True)


def _base_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    """The user-controlled base folders, in search order: root, $VFCORE_DATA, the repo's data/."""
    bases = [] if root is None else [Path(root).expanduser()]
    env = os.environ.get("VFCORE_DATA")
    if env:
        bases.append(Path(env).expanduser())
    bases.append(_REPO_DATA)
    return bases


def _search_dirs(source: _Source, bases: list[Path]) -> list[Path]:
    """Every folder to look in, in order.

    Dataset subfolders come before the base itself, because MNIST and Fashion-MNIST use the same
    file names and only a subfolder tells them apart.
    """
    dirs = []
    for base in bases:
        dirs += [base / sub for sub in source.subdirs]
        dirs.append(base)
    dirs += [_SYSTEM_DATASETS / sub for sub in source.system_dirs]
    return list(dict.fromkeys(dirs))


def _locate(source: _AnySource, searched: list[Path], train: bool) -> _Location | None:
    """The first complete copy of the split in the searched folders, if any."""
    for folder in searched:
        location = source.locate(folder, train)
        if location is not None:
            return location
    return None


def _download(source: _AnySource, bases: list[Path], train: bool) -> _Location:
    """Download into the dataset's subfolder of the first writable base folder."""
    for base in bases:
        folder = base / source.subdirs[0]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            source.download(folder, train)
            location = source.locate(folder, train)
            if location is None:
                raise DatasetError(f"the downloaded files are missing from {folder}")
            return location
    raise DatasetError("none of the base folders is writable")


def _not_found_message(source: _AnySource, train: bool, searched: list[Path], problem: str) -> str:
    """Explain what is missing, where we looked, and how to provide it."""
    sub = source.subdirs[0]
    lines = [
        f"{source.title} ({'train' if train else 'test'} split) was not found; {problem}.",
        f"Files needed: {source.needed(train)}.",
        "Folders searched:",
        *(f"  {folder}" for folder in searched),
        f"Put the files in {_REPO_DATA / sub}/ or $VFCORE_DATA/{sub}/ (or pass root=...),"
        " or load with download=True to fetch them from:",
        *(f"  {url}" for url in source.urls(train)),
    ]
    if source.apt_package:
        lines.append(f"On Debian/Ubuntu: sudo apt-get install {source.apt_package}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, location: _Location, train: bool) -> ImageSet:
    """Read a split once per process; keyed by the resolved file location."""
    source = _SOURCES[name]
    images, labels = source.read(location, train)
    return ImageSet(name, train, images, labels, source.num_classes, source.mean, source.std)


def load_dataset(
    name: str, train: bool, root: str | os.PathLike[str] | None = None, *, download: bool = True
) -> ImageSet:
    """Load one split of a dataset from local files, downloading it only if no copy is found.

    Search order: ``root``, ``$VFCORE_DATA``, the repo's ``data/``, then system-wide installs such
    as Debian's ``dataset-fashion-mnist``. Setting ``$VFCORE_NO_DOWNLOAD`` forbids downloading.
    Results are cached in-process and shared: do not modify their tensors in place.
    """
    source = _SOURCES.get(name)
    if source is None:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    bases = _base_dirs(root)
    searched = _search_dirs(source, bases)
    location = _locate(source, searched, train)
    problem = "downloading is off (download=False or $VFCORE_NO_DOWNLOAD is set)"
    if location is None and download and not os.environ.get("VFCORE_NO_DOWNLOAD"):
        try:
            location = _download(source, bases, train)
        except DatasetError as err:
            problem = f"the download failed: {err}"
    if location is None:
        raise DatasetNotFoundError(_not_found_message(source, train, searched, problem))
    return _load_cached(name, location, train)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``batches`` yields for ``n`` samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def _pad(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre images on a zero canvas of the given size (an odd remainder goes bottom/right)."""
    n, c, h, w = images.shape
    top, left = (height - h) // 2, (width - w) // 2
    canvas = images.new_zeros((n, c, height, width))
    canvas[:, :, top : top + h, left : left + w] = images
    return canvas


def _crop_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the 4-pixel zero-padded image plus a horizontal flip (p=0.5).

    Offsets and flips are drawn on the CPU generator, then applied in a single gather: a flipped
    sample simply reads its columns in reverse order.
    """
    n, c, h, w = images.shape
    padded = _pad(images, h + 2 * _CROP_PAD, w + 2 * _CROP_PAD)
    dy = torch.randint(0, 2 * _CROP_PAD + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * _CROP_PAD + 1, (n, 1), generator=generator)
    flip = torch.rand((n, 1), generator=generator) < 0.5
    rows = dy + torch.arange(h)
    cols = dx + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
    device = images.device
    sample = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[
        sample, channel, rows.to(device).view(n, 1, h, 1), cols.to(device).view(n, 1, 1, w)
    ]


def batches(
    data: ImageSet,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    pad_to: int | None = None,
    channels_last: bool = False,
    drop_last: bool = False,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches on ``device``: normalised float32 images, int64 labels.

    ``pad_to`` centres images on a zero canvas of that size first; ``augment`` adds a random
    4-pixel-padded crop and horizontal flip; ``limit`` keeps the first samples of the (shuffled)
    order. All randomness comes from one CPU generator seeded with ``seed``, so a seed gives the
    same batches on every run and device. Arguments are checked when called, not lazily.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    height, width = data.images.shape[-2:]
    if pad_to is not None and pad_to < max(height, width):
        raise ValueError(f"pad_to={pad_to} is smaller than the {height}x{width} images")
    device = torch.device(device)

    def generate() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order[:limit]
        images = data.images.to(device)
        labels = data.labels.to(device)
        mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        for i in range(num_batches(len(order), batch_size, drop_last)):
            index = order[i * batch_size : (i + 1) * batch_size].to(device)
            x = images.index_select(0, index)
            if pad_to is not None:
                x = _pad(x, pad_to, pad_to)
            if augment:
                x = _crop_and_flip(x, generator)
            x = x.float().div_(255).sub_(mean).div_(std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels.index_select(0, index)

    return generate()
