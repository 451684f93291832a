"""Profiles: one set of sizes for every study and notebook, a ladder from a CPU smoke run to the
paper's setup.

Everything that sets the scale of an experiment lives in a `Profile`: datasets, widths, epochs,
departures from the paper's recipe, the number of pairs, the protocol's sample counts, and the
study grids (weight-matching restarts, the l grid of Fig. 4, sweep values, sparsities). The same
code regenerates a figure at every rung; no notebook tests a profile's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from .data import DATASETS
from .models import ARCHITECTURES

LINEAR_MODELS = ("linear8", "linear5", "linear5_res", "mlp")
"""Models trained on flattened images with Adam (Table 2, first row); the rest are CNNs."""

_PAIR_MEMBERS = ((0, 1), (1, 2), (0, 2))
"""Which two of three independently trained models form each pair (the paper's 1_2, 2_3, 1_3)."""

SweepModel = tuple[str, float | None]
"""A model of a hyper-parameter sweep and its width (None: the profile's width for it)."""


@dataclass(frozen=True)
class Population:
    """Many small endpoint pairs for the mergeability predictor (notebook 09): every
    combination of width, epochs and weight decay is a configuration, each trained from `seeds`
    seeds; every two seeds of a configuration form a pair."""

    model: str
    widths: tuple[float, ...]
    epochs: tuple[float, ...]
    weight_decays: tuple[float, ...]
    seeds: int

    @property
    def configurations(self) -> list[dict[str, float]]:
        return [{"width": w, "epochs": e, "weight_decay": wd} for w in self.widths
                for e in self.epochs for wd in self.weight_decays]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(a, b) for a in range(1, self.seeds + 1) for b in range(a + 1, self.seeds + 1)]


@dataclass(frozen=True)
class Profile:
    """Everything that sets the scale of an experiment.

    `widths` and `epochs` map model names to a width multiplier and a number of epochs (a float:
    0.5 is half a pass over the training set). `recipe_overrides` replaces fields of the Table 2
    recipe per model (`vfcore.recipes.recipe_for`). Model `i` of a configuration is trained with
    seed `i + 1`; `seeds(pair)` gives the two seeds of a pair (different initialisation and data
    order). `extra_datasets` are the datasets of the paper's CIFAR-100 tables (Tables 9-11).

    Protocol sizes: `calibration_images` (matching and normalisation), `measure_images` (the
    vanishing-feature measurement), `test_images` (None: the whole test set). Study grids:
    `wm_restarts` (weight-matching seeds per pair, Fig. 3), `alphas` (points on the merging
    line), `partial_stride` (every how many layers Fig. 4 Left is measured), the learning-rate and
    weight-decay sweeps and their models (Figs 6-8), `sparsities` (Figs 5, 14, 16) and
    `calibration_counts` (Fig. 16's small calibration sets), and the `population` of small
    endpoint pairs of notebook 09's mergeability predictor.
    """

    name: str
    dataset: str
    linear_dataset: str
    image_size: int
    widths: dict[str, float]
    epochs: dict[str, float]
    pairs: int
    calibration_images: int
    measure_images: int
    test_images: int | None
    wm_restarts: int
    partial_stride: int
    lr_sweep: tuple[float, ...]
    lr_sweep_models: tuple[SweepModel, ...]
    wd_sweep: tuple[float, ...]
    wd_sweep_models: tuple[SweepModel, ...]
    sparsities: tuple[float, ...]
    calibration_counts: tuple[int, ...]
    population: Population
    extra_datasets: tuple[str, ...] = ()
    alphas: int = 11
    batch_size: int = 128
    augment: bool = True
    recipe_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for dataset in (self.dataset, self.linear_dataset, *self.extra_datasets):
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
        sweep_models = {m for m, _ in self.lr_sweep_models + self.wd_sweep_models}
        if sweep_models - set(ARCHITECTURES):
            raise ValueError(f"profile {self.name!r}: unknown sweep models "
                             f"{sorted(sweep_models - set(ARCHITECTURES))}")
        if not 1 <= self.pairs <= len(_PAIR_MEMBERS):
            raise ValueError(f"profile {self.name!r}: pairs must be 1..{len(_PAIR_MEMBERS)}")
        if any(not 0 <= s < 1 for s in self.sparsities):
            raise ValueError(f"profile {self.name!r}: sparsities must lie in [0, 1)")
        if self.wm_restarts < 1 or self.partial_stride < 1 or self.alphas < 3:
            raise ValueError(f"profile {self.name!r}: wm_restarts and partial_stride must be "
                             "positive and alphas at least 3")

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
    def models(self) -> int:
        """Independently trained models per configuration (3 for 2 or 3 pairs)."""
        return 2 if self.pairs == 1 else 3

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


PAPER = Profile(
    name="paper",
    dataset="cifar10",
    linear_dataset="mnist",
    extra_datasets=("cifar100",),
    image_size=32,
    widths=_per_model(1.0, 1.0),
    epochs=_per_model(20.0, 160.0, linear8=5.0),
    pairs=3,
    calibration_images=50_000,
    measure_images=50_000,
    test_images=None,
    wm_restarts=3,
    partial_stride=1,
    lr_sweep=(0.01, 0.03, 0.05, 0.07, 0.1),
    lr_sweep_models=(("vgg16_bn", None), ("vgg16_ln", None), ("resnet20", 4.0),
                     ("resnet20_ln", 4.0)),
    wd_sweep=(1e-4, 2e-4, 3e-4, 4e-4, 5e-4),
    wd_sweep_models=(("vgg16", None), ("resnet20", None), ("resnet20_ln", None)),
    sparsities=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    calibration_counts=(64, 128, 256),
    population=Population("vgg11_bn", (0.25, 0.5), (10.0, 40.0), (1e-4, 5e-4), 4),
)
"""The paper's setup (Table 2 and App. A.3): CIFAR-10 at width 1, 160 epochs, MNIST linear nets,
CIFAR-100 for Tables 9-11. Three models per configuration (seeds 1, 2, 3), paired 1-2, 2-3 and
1-3. Calibration and measurement use the whole training set (50,000 images, augmented for
calibration), evaluation the whole test set. Fig. 6's learning-rate sweep uses ResNet20-4x and
ResNet20-LN-4x, as the paper does.
"""

CPU_RECIPES: dict[str, dict[str, Any]] = {
    **{name: {"lr": 0.04, "warmup": 0.05, "grad_clip": 2.0} for name in ("vgg11", "vgg16")},
    **{name: {"warmup": 0.05, "grad_clip": 2.0} for name in ("vgg11_ln", "vgg16_ln")},
    "resnet20_plain": {"lr": 0.05},
    "resnet20_ln": {"optimizer": "adam", "lr": 5e-4, "momentum": 0.0},
}
"""Where the CPU profiles depart from Table 2, and why (measured on Fashion-MNIST, 1/8-width
VGG16s trained for 2 epochs, 1/8-width VGG16-LN for 1, half-width ResNet20-LN for half an epoch;
three seeds unless stated; `benchmarks/recipes.md` has the table):

- Norm-free VGGs: lr 0.04 with a 5% linear warm-up and the global gradient norm clipped at 2.
  With the paper's init (Kaiming-normal convs, an N(0, 0.01) head) and no normalisation, a short
  run at lr 0.04 ends anywhere between 71% and 84% depending on the seed, or stays at chance
  (lr 0.08-0.1); warm-up alone gave 71.5-81.9%, label smoothing 0.1 one run at chance. Warm-up
  and clipping gave 85.6 / 86.0 / 86.5%: reliable. PyTorch's Kaiming-uniform init (the paper's
  "torch init" variant) stayed at chance.
- VGG-LN: the paper's lr 0.1, with the same warm-up and clipping; without them lr 0.1 collapses to
  chance within the first epoch (82.2% with them; lr 0.01: 80.9%).
- ResNet20-LN: Adam at lr 5e-4 (after the paper's warm-up fraction). SGD with warm-up and
  clipping stayed at chance at lr 0.1 and reached 51.7% at lr 0.01 in half an epoch, against
  about 69% with Adam.
- Plain ResNet20 (not used by the notebooks): lr 0.05.
BatchNorm models keep the paper's recipe.
"""

SMOKE = Profile(
    name="smoke",
    dataset="fashion_mnist",
    linear_dataset="fashion_mnist",
    image_size=32,
    widths=_per_model(1.0, 0.125, resnet20=0.5, resnet20_ln=0.5, resnet20_plain=0.5),
    epochs=_per_model(2.0, 1.0, linear8=5.0, vgg16=2.0, resnet20=0.4, resnet20_ln=0.5,
                      resnet20_plain=0.5),
    pairs=2,
    calibration_images=500,
    measure_images=500,
    test_images=1000,
    wm_restarts=1,
    partial_stride=2,
    alphas=5,
    lr_sweep=(0.01, 0.1),
    lr_sweep_models=(("resnet20", None),),
    wd_sweep=(1e-4, 5e-4),
    wd_sweep_models=(("vgg16", None),),
    sparsities=(0.5, 0.7, 0.8, 0.9, 0.95),
    calibration_counts=(64,),
    population=Population("vgg11_bn", (1 / 16, 1 / 8), (0.25, 0.5), (1e-4, 5e-4), 5),
    augment=False,
    recipe_overrides=CPU_RECIPES,
)
"""The default and the CI profile: Fashion-MNIST on a 2-core CPU (sizes: see the README)."""

FMNIST_QUARTER = replace(
    SMOKE,
    name="fmnist_quarter",
    widths=_per_model(1.0, 0.25, resnet20=0.5, resnet20_ln=0.5, resnet20_plain=0.5),
    epochs=_per_model(2.0, 2.0, linear8=5.0, vgg16=4.0, vgg16_bn=3.0, resnet20=2.0,
                      resnet20_ln=1.0, resnet20_plain=1.0),
    pairs=3,
    calibration_images=1000,
    measure_images=1000,
    test_images=2000,
    partial_stride=1,
    lr_sweep_models=(("vgg16_ln", None), ("resnet20", None)),
)
"""The CPU rung between smoke and paper: smoke with the VGG16s at a quarter width (plain 4
epochs, BN 3, LN 2), ResNet20 at half width for 2 epochs (LN: 1), all three pairs, twice the
calibration, measurement and test images, Fig. 4 at every layer, and Fig. 6's learning-rate
sweep on VGG16-LN as well as ResNet20. Sized from `benchmarks/claims_vs_compute.py`; its cold
`make reproduce PROFILE=fmnist_quarter` time and what holds are in the README.
"""

PAPER_TINY = Profile(
    name="paper_tiny",
    dataset="cifar10",
    linear_dataset="mnist",
    extra_datasets=("cifar100",),
    image_size=32,
    widths=_per_model(0.25, 0.0625, resnet20=0.25, resnet20_ln=0.25, resnet20_plain=0.25),
    epochs=_per_model(1.0, 1.0),
    pairs=3,
    calibration_images=128,
    measure_images=64,
    test_images=None,
    wm_restarts=2,
    partial_stride=1,
    lr_sweep=(0.01, 0.1),
    lr_sweep_models=(("vgg16_bn", None), ("resnet20", 0.125)),
    wd_sweep=(1e-4, 5e-4),
    wd_sweep_models=(("vgg16", None), ("resnet20_ln", None)),
    sparsities=(0.5, 0.9, 0.99),
    calibration_counts=(64, 128),
    population=Population("vgg11_bn", (1 / 16,), (0.5, 1.0), (1e-4, 5e-4), 3),
)
"""The paper profile's structure at toy size, for CI: CIFAR-10/100 and MNIST (the test suite
generates small files in their official layouts), three models per configuration, CIFAR-100
tables, width overrides in the sweeps, two weight-matching restarts; tiny widths and data so that
every notebook runs in seconds. Its numbers mean nothing; that the paper path runs is the point.
"""

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, FMNIST_QUARTER, PAPER, PAPER_TINY)}


def get_profile(name: str | Profile = "smoke") -> Profile:
    """The profile called `name` (a `Profile` is passed through unchanged)."""
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    return PROFILES[name]
