"""Training and evaluation of endpoints, with the paper's recipes and a verified on-disk cache.

`train` is a plain loop: SGD or Adam, a per-iteration learning rate (optional linear warm-up,
step decay at fixed fractions of the run), cross-entropy, channels-last CNNs, tensor-op batches
from `vfcore.data.batches`. Data order and augmentation of epoch `e` are drawn from a generator
seeded by (seed, e), so a run interrupted at an epoch boundary resumes bit for bit.

`train_endpoint` builds a model, seeds its initialisation and caches the trained weights under a
key over everything that changes them. Cache files are written atomically with a sidecar holding
their SHA-256, and loaded with `torch.load(weights_only=True)`: a truncated, tampered or
mismatching file is reported and retrained, never loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import DATASETS, ImageSet, batches, load_dataset
from .device import limit_threads, model_device, resolve_device
from .io import atomic_write_bytes, atomic_write_text
from .models import ARCHITECTURES, build_model, model_config
from .profiles import LINEAR_MODELS, Profile, get_profile

TRAIN_VERSION = 1
"""Bump when a change to the training code changes the weights it produces (invalidates caches)."""

PAPER_ITERATIONS = 62_560
PAPER_MILESTONES = (32_000 / PAPER_ITERATIONS, 48_000 / PAPER_ITERATIONS)
"""The paper's step decay: lr x 0.1 at iterations 32k and 48k of 62,560 (160 epochs x 391)."""

PAPER_WARMUP = 1 / 160
"""The paper's warm-up lasts one epoch of 160."""

WARMUP_START = 1e-5
"""Warm-up starts at lr x 1e-5 and rises linearly to lr."""

_DATASET_SHAPES = {  # in_channels, native image size, classes
    "mnist": (1, 28, 10),
    "fashion_mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
}
_OPTIMIZERS = ("sgd", "adam")

Progress = bool | None


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class Recipe:
    """How one endpoint is trained (Table 2 of the paper, scaled by a profile).

    `epochs` may be fractional (0.5 stops half-way through the first pass). `milestones` and
    `warmup` are fractions of all iterations: lr is multiplied by 0.1 from each milestone on,
    and rises linearly from lr x 1e-5 over the first `warmup` of the run. `momentum` is SGD's and
    unused by Adam. `train_subset` images (a fresh random draw each epoch) make up one epoch; None
    uses the whole training set.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    epochs: float = 160.0
    milestones: tuple[float, ...] = PAPER_MILESTONES
    warmup: float = 0.0
    augment: bool = True
    train_subset: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of {_OPTIMIZERS}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum must lie in [0, 1) and weight_decay must be >= 0")
        if self.batch_size < 1 or not self.epochs > 0:
            raise ValueError("batch_size and epochs must be positive")
        if any(not 0 < m <= 1 for m in self.milestones) or list(self.milestones) != sorted(
                self.milestones):
            raise ValueError(f"milestones must be increasing fractions in (0, 1], got "
                             f"{self.milestones}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the run in [0, 1), got {self.warmup}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be positive or None, got {self.train_subset}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def recipe_for(model_name: str, profile: str | Profile = "smoke", *, lr: float | None = None,
               weight_decay: float | None = None, epochs: float | None = None,
               width: float | None = None) -> Recipe:
    """The Table 2 recipe for `model_name`, scaled by `profile`, with optional overrides.

    Linear nets and the MLP: Adam, lr 0.01, wd 1e-4, constant lr, no augmentation. CNNs: SGD,
    lr 0.1, momentum 0.9, wd 1e-4, step decay at the paper's iterations, crop+flip augmentation
    where `profile.augment`. Then `profile.recipe_overrides` applies (the smoke profile's
    departures from Table 2, each explained in its docstring), then the `lr`, `weight_decay` and
    `epochs` arguments (the sweeps). Warm-up (one epoch in 160) is added where the paper's
    scripts use it, unless the profile sets `warmup`: ResNet20-LN, ResNet20 wider than 1x, and
    VGGs trained with weight decay above 1e-4.
    """
    prof = get_profile(profile)
    width = prof.width_of(model_name) if width is None else width
    if model_name in LINEAR_MODELS:
        recipe = Recipe(optimizer="adam", lr=0.01, momentum=0.0, weight_decay=1e-4,
                        milestones=(), augment=False)
    else:
        recipe = Recipe(augment=prof.augment)
    recipe = replace(recipe, batch_size=prof.batch_size, epochs=prof.epochs_of(model_name),
                     train_subset=prof.train_subset)
    overrides = dict(prof.recipe_overrides.get(model_name, {}))
    unknown = sorted(set(overrides) - {f.name for f in fields(Recipe)})
    if unknown:
        raise ValueError(f"profile {prof.name!r} overrides unknown recipe fields {unknown}")
    overrides.update({k: v for k, v in (("lr", lr), ("weight_decay", weight_decay),
                                        ("epochs", epochs)) if v is not None})
    recipe = replace(recipe, **overrides)
    if "warmup" not in prof.recipe_overrides.get(model_name, {}) and _paper_warms_up(
            model_name, width, recipe.weight_decay):
        recipe = replace(recipe, warmup=PAPER_WARMUP)
    return recipe


def _paper_warms_up(model_name: str, width: float, weight_decay: float) -> bool:
    """Whether the paper's scripts train this configuration with a warm-up epoch."""
    if model_name == "resnet20_ln":
        return True
    if model_name.startswith("resnet20"):
        return width > 1
    return model_name.startswith("vgg") and weight_decay > 1e-4


def lr_factor(step: int, total_steps: int, recipe: Recipe) -> float:
    """Multiplier of `recipe.lr` at iteration `step` (0-based) of a `total_steps` run."""
    warmup_steps = round(recipe.warmup * total_steps)
    factor = 1.0
    if step < warmup_steps:
        factor = WARMUP_START + (1 - WARMUP_START) * step / warmup_steps
    for milestone in recipe.milestones:
        if step >= round(milestone * total_steps):
            factor *= 0.1
    return factor


def schedule(recipe: Recipe, num_train: int) -> tuple[int, int, int]:
    """(images per epoch, iterations per epoch, total iterations) for a training set size."""
    per_epoch = num_train if recipe.train_subset is None else min(recipe.train_subset, num_train)
    if per_epoch < 1:
        raise ValueError("the training set is empty")
    steps_per_epoch = math.ceil(per_epoch / recipe.batch_size)
    return per_epoch, steps_per_epoch, max(1, math.ceil(recipe.epochs * steps_per_epoch))


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order/augmentation seed of one epoch, a hash of (seed, epoch)."""
    digest = hashlib.sha256(f"vfcore-epoch:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "name", type(model).__name__)


def is_cnn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def pad_for(model: nn.Module, data: ImageSet) -> int | None:
    """The canvas size `data` must be zero-padded to for `model` (None when it already fits)."""
    config = model_config(model)
    channels, height, width = data.images.shape[1:]
    if channels != config.in_channels:
        raise ValueError(f"{data.name} images have {channels} channel(s) but the model expects "
                         f"{config.in_channels}; build it with in_channels={channels}")
    if max(height, width) > config.image_size:
        raise ValueError(f"{data.name} images are {height}x{width}, larger than the model's "
                         f"{config.image_size}x{config.image_size}; build it with a larger "
                         "image_size")
    return None if height == width == config.image_size else config.image_size


def input_batches(model: nn.Module, data: ImageSet, batch_size: int, *, augment: bool = False,
                  shuffle: bool = False, seed: int = 0, limit: int | None = None,
                  device: str | torch.device | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`data.batches` shaped for `model`: padded to its image size, channels-last for CNNs.

    `device` defaults to the model's device.
    """
    target = model_device(model) if device is None else resolve_device(device)
    return batches(data, batch_size, shuffle=shuffle, augment=augment, seed=seed, device=target,
                   pad_to=pad_for(model, data), channels_last=is_cnn(model), limit=limit)


def calibration_batches(model: nn.Module, data: ImageSet, n: int, *, seed: int = 0,
                        augment: bool = True, batch_size: int = 500,
                        device: str | torch.device | None = None) -> list[torch.Tensor]:
    """`n` shuffled (by default augmented) training inputs, materialised as a list of batches.

    Activation matching, REPAIR and RESET iterate these several times, so they are drawn once.
    """
    if not 1 <= n <= len(data):
        raise ValueError(f"calibration needs 1..{len(data)} images of {data.name}, asked for {n}")
    return [x for x, _ in input_batches(model, data, batch_size, augment=augment, shuffle=True,
                                        seed=seed, limit=n, device=device)]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _prepare(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Move `model` to `device` (default: where it is) and return that device."""
    target = model_device(model) if device is None else resolve_device(device)
    model.to(target)
    return target


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, *, batch_size: int = 1000,
            device: str | torch.device | None = None, limit: int | None = None) -> torch.Tensor:
    """Logits of the first `limit` samples (all by default), in eval mode, on the CPU."""
    limit_threads()
    target = _prepare(model, device)
    with _eval_mode(model):
        out = [model(x).float().cpu() for x, _ in input_batches(
            model, data, batch_size, limit=limit, device=target)]
    return torch.cat(out) if out else torch.empty(0, data.num_classes)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, *, batch_size: int = 1000,
             device: str | torch.device | None = None, limit: int | None = None) -> float:
    """Top-1 accuracy in percent on the first `limit` samples (all by default), in eval mode."""
    limit_threads()
    target = _prepare(model, device)
    correct = torch.zeros((), dtype=torch.long, device=target)
    seen = 0
    with _eval_mode(model):
        for x, y in input_batches(model, data, batch_size, limit=limit, device=target):
            correct += (model(x).argmax(1) == y).sum()
            seen += len(y)
    if seen == 0:
        raise ValueError(f"nothing to evaluate: {data.name} has {len(data)} samples, "
                         f"limit={limit}")
    return 100.0 * correct.item() / seen


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr,
                                weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def _quiet(progress: Progress) -> bool | None:
    """tqdm's `disable`: None (shown only on a terminal) unless forced; always quiet under CI."""
    if progress is None:
        return True if os.environ.get("CI") else None
    return not progress


@contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    """Deterministic cuDNN kernels for the duration of training (a no-op on the CPU)."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors (a canonical, portable layout)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run: dict[str, Any],
            device: torch.device) -> tuple[int, int]:
    """(epoch, step) to continue from, restoring model and optimizer from a valid checkpoint."""
    if not path.exists():
        return 0, 0
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("run") != run:
            raise CheckpointError("it belongs to a different run (recipe, seed or data)")
        fit_state(model, saved["model"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for state in optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.to(device)
        return int(saved["epoch"]), int(saved["step"])
    except Exception as err:  # any unreadable or mismatching checkpoint means: start over
        warnings.warn(f"ignoring training checkpoint {path}: {err}; training from the start",
                      stacklevel=3)
        return 0, 0


def train(model: nn.Module, data: ImageSet, recipe: Recipe, *, seed: int,
          device: str | torch.device | None = None, progress: Progress = None,
          checkpoint: str | os.PathLike | None = None,
          on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Train `model` in place on `data` with `recipe`; return it in eval mode.

    `seed` fixes the data order and augmentation of every epoch (the initialisation is the
    caller's). With `checkpoint`, model and optimizer are saved atomically at the end of every
    epoch and a valid checkpoint of the same run is resumed from. `on_epoch(epoch, mean_loss)` is
    called after each epoch's checkpoint. `progress`: True/False forces the progress bar on/off;
    None shows it on a terminal and hides it under CI. `device` None means CUDA when available.
    """
    limit_threads()
    target = resolve_device(device)
    cnn = is_cnn(model)
    model.to(target, memory_format=torch.channels_last if cnn else torch.preserve_format)
    optimizer = _optimizer(model, recipe)
    per_epoch, steps_per_epoch, total_steps = schedule(recipe, len(data))
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    run = {"recipe": recipe.as_dict(), "seed": seed, "data": [data.name, len(data)]}
    path = None if checkpoint is None else Path(checkpoint)
    first_epoch, step = (0, 0) if path is None else _resume(path, model, optimizer, run, target)
    bar = tqdm(total=total_steps, initial=step, disable=_quiet(progress), unit="it",
               desc=_name(model), leave=False)
    model.train()
    with _deterministic_cudnn(), bar:
        for epoch in range(first_epoch, num_epochs):
            loss_sum = torch.zeros((), device=target)
            batches_done = 0
            for x, y in input_batches(model, data, recipe.batch_size, augment=recipe.augment,
                                      shuffle=True, seed=epoch_seed(seed, epoch),
                                      limit=per_epoch, device=target):
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * lr_factor(step, total_steps, recipe)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                step += 1
                batches_done += 1
                bar.update()
            mean_loss = loss_sum.item() / max(1, batches_done)
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"training diverged in epoch {epoch} (loss {mean_loss}); "
                                   f"lower the learning rate (now {recipe.lr})")
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.3f}")
            if path is not None:
                payload = _to_bytes({"run": run, "epoch": epoch + 1, "step": step,
                                     "model": _cpu_state(model),
                                     "optimizer": optimizer.state_dict()})
                atomic_write_bytes(path, payload)
            if on_epoch is not None:
                on_epoch(epoch, mean_loss)
    return model.eval()


def fit_state(model: nn.Module, state: Any) -> None:
    """Raise `CheckpointError` naming every missing, extra or mis-shaped key of `state`."""
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("the checkpoint does not hold a state dict of tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs the model's {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} {items[:10]}{' ...' if len(items) > 10 else ''}"
                for label, items in (("missing keys", missing), ("unexpected keys", extra),
                                     ("shape mismatches", shapes)) if items]
    if problems:
        raise CheckpointError(f"the checkpoint does not fit this {_name(model)} model: "
                              + "; ".join(problems)
                              + ". Build the model with the checkpoint's architecture and width.")


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights saved by vfcore (or a bare state dict) into `model`, safely.

    `torch.load(weights_only=True)` cannot run code from the file. A file that cannot be read, or
    whose state does not fit `model`, raises `CheckpointError` naming the keys at fault.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    state = saved["state"] if isinstance(saved, dict) and "state" in saved else saved
    fit_state(model, state)
    model.load_state_dict(state, strict=True)
    return model


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


def endpoint_spec(config: dict[str, Any], dataset: str | ImageSet, seed: int,
                  recipe: Recipe) -> dict[str, Any]:
    """Everything that changes a trained endpoint's weights, as a JSON-able dict."""
    return {"train_version": TRAIN_VERSION,
            "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
            "model": config, "dataset": _data_identity(dataset), "seed": seed,
            "recipe": recipe.as_dict()}


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
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    return _DATASET_SHAPES[dataset]


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
    native size; CNNs get them zero-padded to `profile.image_size`. An interrupted run resumes
    from `<key>.partial.pt`. Returns the model in eval mode on `device` (default: CUDA if any).
    """
    prof = get_profile(profile)
    if model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model {model_name!r}; known models: {', '.join(ARCHITECTURES)}")
    dataset = prof.dataset_for(model_name) if dataset is None else dataset
    in_channels, native_size, num_classes = _data_shape(dataset)
    width = prof.width_of(model_name) if width is None else width
    image_size = native_size if model_name in LINEAR_MODELS else prof.image_size
    recipe = recipe_for(model_name, prof, lr=lr, weight_decay=weight_decay, epochs=epochs,
                        width=width)
    target = resolve_device(device)
    torch.manual_seed(seed)
    model = build_model(model_name, width=width, num_classes=num_classes,
                        in_channels=in_channels, image_size=image_size)
    spec = endpoint_spec(model_config(model).as_dict(), dataset, seed, recipe)
    key = cache_key(spec)
    folder = resolve_cache_dir(cache_dir)
    if _load_cached(model, folder, key):
        return _finish(model, target)
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / f"{key}.lock"):
        if not _load_cached(model, folder, key):  # another process may have just trained it
            data = load_dataset(dataset, train=True) if isinstance(dataset, str) else dataset
            partial = folder / f"{key}.partial.pt"
            start = time.perf_counter()
            train(model, data, recipe, seed=seed, device=target, progress=progress,
                  checkpoint=partial)
            meta = {"key": key, "spec": spec,
                    "train_seconds": round(time.perf_counter() - start, 3)}
            _store(model, folder, key, meta)
            partial.unlink(missing_ok=True)
    return _finish(model, target)


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
    memory_format = torch.channels_last if is_cnn(model) else torch.preserve_format
    return model.to(device, memory_format=memory_format).eval()


def endpoint_pair(model_name: str, profile: str | Profile = "smoke", pair: int = 0,
                  **overrides: Any) -> tuple[nn.Module, nn.Module]:
    """The two endpoints of `pair` at `profile` (seeds `profile.seeds(pair)`).

    `overrides` go to `train_endpoint` (dataset, lr, weight_decay, epochs, width, device, ...).
    """
    prof = get_profile(profile)
    seed_a, seed_b = prof.seeds(pair)
    return (train_endpoint(model_name, seed=seed_a, profile=prof, **overrides),
            train_endpoint(model_name, seed=seed_b, profile=prof, **overrides))


NOTEBOOK_MODELS = ("linear8", "linear5", "linear5_res", "vgg16", "vgg16_bn", "vgg16_ln",
                   "resnet20", "resnet20_ln")
"""Architectures the notebooks train a pair of at every profile (besides the sweep model)."""


def notebook_endpoints(profile: str | Profile = "smoke") -> list[tuple[str, int, dict[str, Any]]]:
    """Every endpoint the notebooks train at `profile`, as (model, seed, train_endpoint kwargs).

    All pairs of each `NOTEBOOK_MODELS` entry, then one pair of `profile.sweep_model` per value of
    the learning-rate and weight-decay sweeps and one pair of its norm-free variant per weight
    decay (Figs 6-8); entries that share a recipe are listed once.
    """
    prof = get_profile(profile)
    seeds = sorted({seed for pair in range(prof.pairs) for seed in prof.seeds(pair)})
    jobs = [(name, seed, {}) for name in NOTEBOOK_MODELS for seed in seeds]
    sweeps = ([{"lr": lr} for lr in prof.lr_sweep]
              + [{"weight_decay": wd} for wd in prof.wd_sweep])
    jobs += [(prof.sweep_model, seed, kw) for kw in [{}, *sweeps] for seed in prof.seeds(0)]
    jobs += [(prof.sweep_plain_model, seed, {"weight_decay": wd}) for wd in prof.wd_sweep
             for seed in prof.seeds(0)]
    unique: dict[tuple[str, int, Recipe], tuple[str, int, dict[str, Any]]] = {}
    for name, seed, kw in jobs:
        unique.setdefault((name, seed, recipe_for(name, prof, **kw)), (name, seed, kw))
    return list(unique.values())
