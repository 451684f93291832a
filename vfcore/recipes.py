"""The paper's training recipes (Table 2), scaled by a profile: optimiser, learning-rate
schedule (warm-up, step decay at fixed fractions of the run), batch size, epochs, augmentation."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .profiles import LINEAR_MODELS, Profile, get_profile

PAPER_ITERATIONS = 62_560
PAPER_MILESTONES = (32_000 / PAPER_ITERATIONS, 48_000 / PAPER_ITERATIONS)
"""The paper's step decay: lr x 0.1 at iterations 32k and 48k of 62,560 (160 epochs x 391)."""

PAPER_WARMUP = 1 / 160
"""The paper's warm-up lasts one epoch of 160."""

WARMUP_START = 1e-5
"""Warm-up starts at lr x 1e-5 and rises linearly to lr."""

_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Recipe:
    """How one endpoint is trained (Table 2 of the paper, scaled by a profile).

    `epochs` may be fractional (0.5 stops half-way through the first pass). `milestones` and
    `warmup` are fractions of all iterations: lr is multiplied by 0.1 from each milestone on,
    and rises linearly from lr x 1e-5 over the first `warmup` of the run. `momentum` is SGD's and
    unused by Adam. `grad_clip` caps the global gradient norm of every step (None: no cap) and
    `label_smoothing` softens the cross-entropy targets; the paper uses neither, some CPU
    profiles do (see their recipe overrides).
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
    grad_clip: float | None = None
    label_smoothing: float = 0.0

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
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")

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
    recipe = replace(recipe, batch_size=prof.batch_size, epochs=prof.epochs_of(model_name))
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


def schedule(recipe: Recipe, num_train: int) -> tuple[int, int]:
    """(iterations per epoch, total iterations) for a training set size."""
    if num_train < 1:
        raise ValueError("the training set is empty")
    steps_per_epoch = math.ceil(num_train / recipe.batch_size)
    return steps_per_epoch, max(1, math.ceil(recipe.epochs * steps_per_epoch))


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order/augmentation seed of one epoch, a hash of (seed, epoch)."""
    digest = hashlib.sha256(f"vfcore-epoch:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
