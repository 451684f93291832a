"""Trained endpoints, cached: `train_endpoint` builds a model, seeds its initialisation, trains
it with its profile's recipe and stores the weights under a key over everything that changes
them. Cache files are written atomically with a sidecar holding their SHA-256, and loaded with
`torch.load(weights_only=True)`: a truncated, tampered or mismatching file is reported and
retrained, never loaded."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import ImageSet, dataset_shape, load_dataset
from .device import cpu_threads, resolve_device
from .evaluation import memory_format
from .io import atomic_write_bytes, atomic_write_text
from .kernels import cpu_kernels
from .models import ARCHITECTURES, build_model
from .profiles import LINEAR_MODELS, Profile, get_profile
from .recipes import Recipe, recipe_for
from .training import CheckpointError, Progress, _cpu_state, _to_bytes, fit_state, train

TRAIN_VERSION = 2
"""Bump when a change to the training code changes the weights it produces (invalidates caches)."""

TRAIN_THREADS = 1
"""CPU threads of every training run (see `Endpoint`)."""




def resolve_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The endpoint cache: `path`, else `$VFCORE_CACHE`, else ~/.cache/vfcore."""
    chosen = path or os.environ.get("VFCORE_CACHE") or Path.home() / ".cache" / "vfcore"
    return Path(chosen).expanduser()


def _data_identity(dataset: str | ImageSet) -> str | dict[str, Any]:
    """What identifies the training data in the cache key: its name, or a digest of its content."""
    if isinstance(dataset, str):
        return dataset
    digest = hashlib.sha256()
    for tensor in (dataset.images, dataset.labels):
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return {"name": dataset.name, "sha256": digest.hexdigest(), "mean": list(dataset.mean),
            "std": list(dataset.std), "num_classes": dataset.num_classes}


def cache_key(spec: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of an endpoint spec."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load_cached(model: nn.Module, folder: Path, key: str) -> bool:
    """Load a verified cache entry into `model`; warn and return False if it is unusable."""
    weights, sidecar = folder / f"{key}.pt", folder / f"{key}.json"
    if not weights.exists():
        return False
    try:
        if not sidecar.exists():
            raise CheckpointError("its sidecar file is missing")
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        payload = weights.read_bytes()
        if meta.get("key") != key or meta.get("sha256") != hashlib.sha256(payload).hexdigest():
            raise CheckpointError("its SHA-256 does not match the sidecar (truncated or changed)")
        saved = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("meta", {}).get("key") != key:
            raise CheckpointError("it was saved under another key")
        fit_state(model, saved["state"])
        model.load_state_dict(saved["state"], strict=True)
        return True
    except Exception as err:  # a bad cache entry is never fatal: it is retrained
        warnings.warn(f"cached endpoint {weights} is unusable ({err}); retraining it",
                      stacklevel=3)
        return False


def _store(model: nn.Module, folder: Path, key: str, meta: dict[str, Any]) -> None:
    """Write `<key>.pt` then its sidecar `<key>.json`, each atomically."""
    payload = _to_bytes({"state": _cpu_state(model), "meta": meta})
    atomic_write_bytes(folder / f"{key}.pt", payload)
    sidecar = {"key": key, "sha256": hashlib.sha256(payload).hexdigest(), "meta": meta}
    atomic_write_text(folder / f"{key}.json", json.dumps(sidecar, indent=1, sort_keys=True))


def _data_shape(dataset: str | ImageSet) -> tuple[int, int, int]:
    if isinstance(dataset, ImageSet):
        return int(dataset.images.shape[1]), int(dataset.images.shape[-1]), dataset.num_classes
    return dataset_shape(dataset)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint to train: architecture, data, seed and recipe (a profile's, with overrides).

    Its `key` hashes everything that changes the trained weights (`spec`), so it identifies the
    endpoint in the cache without training it. On the CPU, training always runs on
    `TRAIN_THREADS` threads: floating-point sums differ with the thread count, and a briefly
    trained network amplifies such differences, so pinning it makes an endpoint the same on
    every machine of one kind, whatever its core count. Parallelism comes from training several
    endpoints at once (`vfcore.jobs`).
    """

    model: str
    seed: int
    profile: Profile
    dataset: str | ImageSet
    lr: float | None = None
    weight_decay: float | None = None
    epochs: float | None = None
    width: float | None = None
    device: torch.device = torch.device("cpu")

    @property
    def recipe(self) -> Recipe:
        return recipe_for(self.model, self.profile, lr=self.lr, weight_decay=self.weight_decay,
                          epochs=self.epochs, width=self.model_width)

    @property
    def model_width(self) -> float:
        return self.profile.width_of(self.model) if self.width is None else self.width

    def build(self) -> nn.Module:
        """The untrained model, initialised from `seed`."""
        in_channels, native_size, num_classes = _data_shape(self.dataset)
        image_size = native_size if self.model in LINEAR_MODELS else self.profile.image_size
        torch.manual_seed(self.seed)
        return build_model(self.model, width=self.model_width, num_classes=num_classes,
                           in_channels=in_channels, image_size=image_size)

    @cached_property
    def spec(self) -> dict[str, Any]:
        """Everything that changes the trained weights, as a JSON-able dict."""
        in_channels, native_size, num_classes = _data_shape(self.dataset)
        image_size = native_size if self.model in LINEAR_MODELS else self.profile.image_size
        config = {"name": self.model, "width": float(self.model_width),
                  "num_classes": num_classes, "in_channels": in_channels,
                  "image_size": image_size}
        return {"train_version": TRAIN_VERSION,
                "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
                "device": self.device.type,
                "threads": TRAIN_THREADS if self.device.type == "cpu" else None,
                "cpu_kernels": cpu_kernels() if self.device.type == "cpu" else None,
                "model": config, "dataset": _data_identity(self.dataset), "seed": self.seed,
                "recipe": self.recipe.as_dict()}

    @property
    def key(self) -> str:
        return cache_key(self.spec)

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k} {v:g}" for k, v in (("lr", self.lr), ("wd", self.weight_decay),
                                                    ("epochs", self.epochs),
                                                    ("width", self.width)) if v is not None)
        return f"{self.model} seed {self.seed}" + (f" ({extra})" if extra else "")


def endpoint(model_name: str, dataset: str | ImageSet | None = None, *, seed: int,
             profile: str | Profile = "smoke", lr: float | None = None,
             weight_decay: float | None = None, epochs: float | None = None,
             width: float | None = None, device: str | torch.device | None = None) -> Endpoint:
    """The `Endpoint` of `model_name` at `profile` (checked, not trained)."""
    prof = get_profile(profile)
    if model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model {model_name!r}; known models: {', '.join(ARCHITECTURES)}")
    dataset = prof.dataset_for(model_name) if dataset is None else dataset
    _data_shape(dataset)
    return Endpoint(model_name, seed, prof, dataset, lr, weight_decay, epochs, width,
                    resolve_device(device))


def load_or_train(job: Endpoint, *, cache_dir: str | os.PathLike | None = None,
                  progress: Progress = None) -> nn.Module:
    """The trained endpoint, from the cache when it has been trained before.

    An interrupted run resumes from `<key>.partial.pt`; two processes asking for one endpoint
    train it once. Returns the model in eval mode on the endpoint's device.
    """
    model = job.build()
    key = job.key
    folder = resolve_cache_dir(cache_dir)
    if _load_cached(model, folder, key):
        return _finish(model, job.device)
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / f"{key}.lock"):
        if not _load_cached(model, folder, key):  # another process may have just trained it
            data = (load_dataset(job.dataset, train=True) if isinstance(job.dataset, str)
                    else job.dataset)
            partial = folder / f"{key}.partial.pt"
            start = time.perf_counter()
            with cpu_threads(TRAIN_THREADS if job.device.type == "cpu" else None):
                train(model, data, job.recipe, seed=job.seed, device=job.device,
                      progress=progress, checkpoint=partial, label=job.label)
            meta = {"key": key, "spec": job.spec,
                    "train_seconds": round(time.perf_counter() - start, 3)}
            _store(model, folder, key, meta)
            partial.unlink(missing_ok=True)
    return _finish(model, job.device)


def is_cached(job: Endpoint, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the endpoint's weights are in the cache (not verified; loading verifies)."""
    folder = resolve_cache_dir(cache_dir)
    return (folder / f"{job.key}.pt").exists() and (folder / f"{job.key}.json").exists()


def train_endpoint(model_name: str, dataset: str | ImageSet | None = None, *, seed: int,
                   profile: str | Profile = "smoke", lr: float | None = None,
                   weight_decay: float | None = None, epochs: float | None = None,
                   width: float | None = None, device: str | torch.device | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   progress: Progress = None) -> nn.Module:
    """A trained endpoint of `model_name`, from the cache when it has been trained before.

    `dataset` defaults to the profile's dataset for the model (a name, or an `ImageSet` of your
    own, identified in the cache by a digest of its content). The initialisation is seeded with
    `seed` and the data order derives from it. Linear nets and the MLP see images at their
    native size; CNNs get them zero-padded to `profile.image_size`. Returns the model in eval
    mode on `device` (default: CUDA if any).
    """
    job = endpoint(model_name, dataset, seed=seed, profile=profile, lr=lr,
                   weight_decay=weight_decay, epochs=epochs, width=width, device=device)
    return load_or_train(job, cache_dir=cache_dir, progress=progress)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an advisory lock on `path`, so that two processes asking for the same endpoint
    train it once: the second waits, then loads it from the cache."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _finish(model: nn.Module, device: torch.device) -> nn.Module:
    return model.to(device, memory_format=memory_format(model)).eval()


def endpoint_pair(model_name: str, profile: str | Profile = "smoke", pair: int = 0,
                  **overrides: Any) -> tuple[nn.Module, nn.Module]:
    """The two endpoints of `pair` at `profile` (seeds `profile.seeds(pair)`).

    `overrides` go to `train_endpoint` (dataset, lr, weight_decay, epochs, width, device, ...).
    """
    prof = get_profile(profile)
    seed_a, seed_b = prof.seeds(pair)
    return (train_endpoint(model_name, seed=seed_a, profile=prof, **overrides),
            train_endpoint(model_name, seed=seed_b, profile=prof, **overrides))
