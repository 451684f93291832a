"""Profiles: one set of sizes for every notebook, from a CPU smoke run to the paper's setup.

A notebook reads everything that sets its scale from a `Profile` (datasets, widths, epochs, seeds,
sweeps, sample counts), so the same code regenerates a figure at smoke size on a laptop and at
the paper's size on a GPU. `get_profile("smoke")` is the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .data import DATASETS
from .models import ARCHITECTURES

LINEAR_MODELS = ("linear8", "linear5", "linear5_res", "mlp")
"""Models trained on flattened images with Adam (Table 2, first row); the rest are CNNs."""

_PAIR_MEMBERS = ((0, 1), (1, 2), (0, 2))
"""Which two of three independently trained models form each pair (the paper's 1_2, 2_3, 1_3)."""


@dataclass(frozen=True)
class Profile:
    """Everything that sets the scale of an experiment.

    `widths` and `epochs` map model names to a width multiplier and a number of epochs (a float:
    0.5 is half a pass over the training set). `augment` turns the CNNs' crop+flip augmentation
    on or off. `recipe_overrides` replaces fields of the Table 2 recipe per model (see
    `vfcore.train.recipe_for`). Endpoint `i` of the profile is trained with
    seed `i + 1`; `seeds(pair)` gives the seeds of the two endpoints of a pair, which differ in
    initialisation and data order.
    """

    name: str
    dataset: str
    linear_dataset: str
    image_size: int
    widths: dict[str, float]
    epochs: dict[str, float]
    train_subset: int | None
    test_subset: int | None
    calibration_images: int
    pairs: int
    lr_sweep: tuple[float, ...]
    wd_sweep: tuple[float, ...]
    sweep_model: str
    sparsities: tuple[float, ...]
    batch_size: int = 128
    augment: bool = True
    wide_resnet_width: float = 4.0
    recipe_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for dataset in (self.dataset, self.linear_dataset):
            if dataset not in DATASETS:
                raise ValueError(f"profile {self.name!r}: unknown dataset {dataset!r}; "
                                 f"known datasets: {', '.join(DATASETS)}")
        for table in ("widths", "epochs", "recipe_overrides"):
            unknown = sorted(set(getattr(self, table)) - set(ARCHITECTURES))
            if unknown:
                raise ValueError(f"profile {self.name!r}: {table} names unknown models {unknown}; "
                                 f"known models: {', '.join(ARCHITECTURES)}")
        missing = sorted(set(ARCHITECTURES) - (set(self.widths) & set(self.epochs)))
        if missing:
            raise ValueError(f"profile {self.name!r}: no width or epochs for {missing}")
        if self.sweep_model not in ARCHITECTURES:
            raise ValueError(f"profile {self.name!r}: unknown sweep_model {self.sweep_model!r}")
        if not 1 <= self.pairs <= len(_PAIR_MEMBERS):
            raise ValueError(f"profile {self.name!r}: pairs must be 1..{len(_PAIR_MEMBERS)}")
        if any(not 0 <= s < 1 for s in self.sparsities):
            raise ValueError(f"profile {self.name!r}: sparsities must lie in [0, 1)")

    def width_of(self, model_name: str) -> float:
        """Width multiplier of `model_name` at this profile."""
        return self.widths[_known(model_name)]

    def epochs_of(self, model_name: str) -> float:
        """Training epochs of `model_name` at this profile."""
        return self.epochs[_known(model_name)]

    def dataset_for(self, model_name: str) -> str:
        """The dataset `model_name` is trained on: linear nets and the MLP use `linear_dataset`."""
        return self.linear_dataset if _known(model_name) in LINEAR_MODELS else self.dataset

    @property
    def sweep_plain_model(self) -> str:
        """The norm-free variant of `sweep_model`, whose weight-decay sweep Figs 6-8 also use."""
        return self.sweep_model.removesuffix("_bn").removesuffix("_ln")

    def seeds(self, pair: int = 0) -> tuple[int, int]:
        """Seeds of the two endpoints of `pair` (0-based); three models give three pairs."""
        if not 0 <= pair < self.pairs:
            raise ValueError(f"pair {pair} is outside 0..{self.pairs - 1} "
                             f"(profile {self.name!r} has {self.pairs} pair(s))")
        a, b = _PAIR_MEMBERS[pair]
        return a + 1, b + 1

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _known(model_name: str) -> str:
    if model_name not in ARCHITECTURES:
        raise ValueError(f"unknown model {model_name!r}; known models: {', '.join(ARCHITECTURES)}")
    return model_name


def _per_model(linear: float, cnn: float, **special: float) -> dict[str, float]:
    """A value for every model: `linear` for LINEAR_MODELS, `cnn` otherwise, `special` by name."""
    table = {name: linear if name in LINEAR_MODELS else cnn for name in ARCHITECTURES}
    table.update(special)
    return table


SMOKE = Profile(
    name="smoke",
    dataset="fashion_mnist",
    linear_dataset="fashion_mnist",
    image_size=32,
    widths=_per_model(1.0, 0.125, resnet20=0.5, resnet20_ln=0.5, resnet20_plain=0.5),
    epochs=_per_model(2.0, 1.5, linear8=5.0, vgg16=2.0, vgg16_ln=1.0, resnet20=0.4, resnet20_ln=0.5,
                      resnet20_plain=0.5, vgg11=1.0, vgg11_bn=0.33, vgg11_ln=1.0),
    train_subset=None,
    test_subset=2000,
    calibration_images=2000,
    pairs=1,
    lr_sweep=(0.01, 0.03, 0.1),
    wd_sweep=(1e-4, 3e-4, 5e-4),
    sweep_model="vgg11_bn",
    sparsities=(0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    augment=False,
    wide_resnet_width=1.0,
    recipe_overrides={
        **{name: {"lr": 0.05} for name in ("vgg11", "resnet20_plain")},
        "vgg16": {"lr": 0.04},
        **{name: {"lr": 0.03} for name in ("vgg11_ln", "vgg16_ln")},
        "resnet20_ln": {"optimizer": "adam", "lr": 5e-4, "momentum": 0.0},
    },
)
"""The default: Fashion-MNIST on a 2-core CPU, every notebook endpoint trained in minutes.

CNNs see the 28x28 images zero-padded to 32x32 (the paper's input size); linear nets and the
MLP see them flattened at 28x28. One pair of endpoints (seeds 1 and 2) per configuration, no
augmentation (it only slows down runs this short), the Table 2 recipe otherwise, with its step
decay at the same fractions of the (short) run. Sizes and their measured costs on the 2-core
CPU here (torch 2.13, 2 threads, channels-last; accuracy on the full test set):

    model        width  epochs  train img/s  s per endpoint  test accuracy (seeds 1 / 2)
    linear8      1      5       41,000       12              79.99 / 76.35
    linear5(_res) 1    2        45-56,000    3-4             80.66 / 77.67 (82.65 / 81.57)
    vgg16        1/8    2       2,600        45-50           73.04 / 80.60
    vgg16_bn     1/8    1.5     1,840        46              89.64 / 90.06
    vgg16_ln     1/8    1       2,130        30              81.25 / 82.85
    resnet20     1/2    0.4     910          29              80.36 / 81.39
    resnet20_ln  1/2    0.5     790          35              68.79 / 69.71
    vgg11_bn     1/8    0.33    3,290        6               83.99 / 84.16 (lr 0.01: 68.73 / 73.17)
    vgg11        1/8    1       5,190        14              78.59 / 80.27 (wd 5e-4: 55.48 / 48.46)

All 32 notebook endpoints (`vfcore.train.notebook_endpoints`) train in 557 s from an empty cache
(`python benchmarks/bench_train.py`, peak RSS 0.9 GiB).

Where it departs from Table 2, and why:
- Norm-free VGGs train at lr 0.05 (not 0.1): the paper's init (N(0, 0.01) head) leaves them on
  the chance plateau for the first ~100-300 iterations, which lr 0.05 escapes and 0.08-0.1
  never does in a run this short; lr 0.02 does not escape either. VGG16 trains at 0.04: at
  0.05 its two endpoints ended at 84.5% and 68.3%, at 0.04 at 73.0% and 80.6%, the smaller gap
  (chosen on endpoint accuracy alone). Training a norm-free VGG16 this briefly is chaotic: the
  same seeds and recipe with one torch thread instead of two give 81.5% and 84.3%, so results
  are reproducible on machines with the same thread count (`vfcore.device.limit_threads`).
- VGG-LN trains at lr 0.03: at 0.1 it collapses to chance within the first epoch.
- ResNet20-LN trains with Adam at lr 5e-4 (after the paper's warm-up fraction): SGD at lr 0.1
  with warm-up stayed near chance for the whole half epoch.
- ResNet20-4x (`wide_resnet_width`) is 1x here: the 4x model is 16 times the compute.
"""

PAPER = Profile(
    name="paper",
    dataset="cifar10",
    linear_dataset="mnist",
    image_size=32,
    widths=_per_model(1.0, 1.0),
    epochs=_per_model(20.0, 160.0, linear8=5.0),
    train_subset=None,
    test_subset=None,
    calibration_images=50_000,
    pairs=3,
    lr_sweep=(0.01, 0.03, 0.05, 0.07, 0.1),
    wd_sweep=(1e-4, 2e-4, 3e-4, 4e-4, 5e-4),
    sweep_model="vgg16_bn",
    sparsities=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    wide_resnet_width=4.0,
)
"""The paper's setup (Table 2 and App. A.3): CIFAR-10 at width 1, 160 epochs, MNIST linear nets.

Three models per configuration (seeds 1, 2, 3), paired 1-2, 2-3 and 1-3. Calibration for AM,
REPAIR and RESET uses 50,000 augmented training images (the full training set). ResNet20-4x is
ResNet20 at `wide_resnet_width`.
"""

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, PAPER)}


def get_profile(name: str | Profile = "smoke") -> Profile:
    """The profile called `name` (a `Profile` is passed through unchanged)."""
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    return PROFILES[name]
