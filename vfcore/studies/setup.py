"""What every study shares: the profile, the device, the pairs, one protocol and the cell cache.

The protocol is defined once here (the README's "Protocol" section states it):

- calibration batches (activation matching, ZipIt!, CCA, RESET, REPAIR/RESCALE, post-pruning
  normalisation): `calibration_images` training images drawn with the same augmentation the
  endpoints were trained with, i.e. from the training distribution as the paper does (Algorithm 1,
  Sec. 5.5); one draw per pair, seeded by the pair (`calibration_seed`), shared by every study;
- vanishing-feature measurement: `measure_images` un-augmented training images (the paper
  measures over the training set, App. A.3), one draw per pair (`measure_seed`);
- test evaluation: the first `test_images` test images (all when None), in eval mode;
- mean and spread over pairs: the mean and the sample standard deviation (ddof = 1), as the
  paper's tables (torch.std);
- the barrier: the paper's max over alpha of the endpoints' line minus the merged accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._version import __version__
from ..data import ImageSet, load_dataset
from ..device import limit_threads, resolve_device
from ..endpoints import Endpoint, endpoint, load_or_train, resolve_cache_dir
from ..evaluation import calibration_batches, evaluate, is_cnn
from ..profiles import Profile, get_profile
from .cache import ResultCache, Values, digest

COLUMNS = ("study", "model", "pair", "matcher", "norm", "alpha", "l", "sparsity", "setting",
           "metric", "index", "value")
"""The tidy table: one row per measured number. `index` numbers the entries of a curve."""

DDOF = 1
"""Spread over pairs is the sample standard deviation, as in the paper's tables."""


@dataclass(frozen=True)
class Protocol:
    """How every study calibrates, measures and evaluates (see the module docstring)."""

    calibration_images: int
    calibration_augment: bool
    measure_images: int
    test_images: int | None
    batch_size: int = 500

    @staticmethod
    def of(profile: Profile) -> Protocol:
        return Protocol(profile.calibration_images, profile.augment, profile.measure_images,
                        profile.test_images)

    @staticmethod
    def calibration_seed(pair: int) -> int:
        return 1000 + pair

    @staticmethod
    def measure_seed(pair: int) -> int:
        return 2000 + pair


class Setup:
    """One profile, device and number of pairs, with the shared protocol and the cell cache.

    Endpoints, datasets, calibration batches and alignments are loaded or computed once per
    process and kept (`memo`); measured cells go to the result cache under
    `<cache>/results/`. A Setup pickles without its in-memory state, so that studies can send it
    to worker processes.
    """

    def __init__(self, profile: str | Profile = "smoke", device: str | torch.device = "auto", *,
                 pairs: int | None = None, cache_dir: str | os.PathLike | None = None):
        self.profile = get_profile(profile)
        self.device = resolve_device(device)
        self.pairs = self.profile.pairs if pairs is None else pairs
        if not 1 <= self.pairs <= self.profile.pairs:
            raise ValueError(f"pairs must lie in 1..{self.profile.pairs} for profile "
                             f"{self.profile.name!r}, got {pairs}")
        self.protocol = Protocol.of(self.profile)
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.results = ResultCache(self.cache_dir / "results")
        self._memo: dict[Hashable, Any] = {}
        limit_threads()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memo"] = {}
        return state

    def memo(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """`make()` once per process for `key`."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # ------------------------------------------------------------------ endpoints and data

    def job(self, model: str, seed: int, dataset: str | None = None, **train: float) -> Endpoint:
        return endpoint(model, dataset, seed=seed, profile=self.profile, device=self.device,
                        **train)

    def pair_jobs(self, model: str, pair: int, dataset: str | None = None,
                  **train: float) -> tuple[Endpoint, Endpoint]:
        seed_a, seed_b = self.profile.seeds(pair)
        return self.job(model, seed_a, dataset, **train), self.job(model, seed_b, dataset, **train)

    def load(self, job: Endpoint) -> nn.Module:
        return self.memo(("endpoint", job.key),
                         lambda: load_or_train(job, cache_dir=self.cache_dir))

    def endpoints(self, model: str, pair: int, dataset: str | None = None,
                  **train: float) -> tuple[nn.Module, nn.Module]:
        """The two trained endpoints of `pair` (trained on first use, then cached)."""
        a, b = self.pair_jobs(model, pair, dataset, **train)
        return self.load(a), self.load(b)

    def data(self, dataset: str, train: bool) -> ImageSet:
        return self.memo(("data", dataset, train), lambda: load_dataset(dataset, train=train))

    def calibration(self, model: nn.Module, dataset: str, pair: int, *,
                    images: int | None = None, batch_size: int | None = None
                    ) -> list[torch.Tensor]:
        """The pair's calibration batches (see the protocol); `images` draws fewer of them.

        CNNs see them with the training augmentation of their recipe; linear nets and MLPs are
        trained without augmentation, and so calibrated.
        """
        n = self.protocol.calibration_images if images is None else images
        size = self.protocol.batch_size if batch_size is None else batch_size
        key = ("calibration", dataset, pair, n, size, tuple(model.config.as_dict().items()))
        return self.memo(key, lambda: calibration_batches(
            model, self.data(dataset, True), n, seed=self.protocol.calibration_seed(pair),
            augment=self.protocol.calibration_augment and is_cnn(model), batch_size=size,
            device=self.device))

    def measure_batches(self, model: nn.Module, dataset: str, pair: int) -> list[torch.Tensor]:
        """The pair's un-augmented training images for the vanishing-feature measurement."""
        shape = tuple(model.config.as_dict().items())
        return self.memo(("measure", dataset, pair, shape), lambda: calibration_batches(
            model, self.data(dataset, True), self.protocol.measure_images,
            seed=self.protocol.measure_seed(pair), augment=False,
            batch_size=self.protocol.batch_size, device=self.device))

    def accuracy(self, model: nn.Module, dataset: str, *, train: bool = False) -> float:
        """Test accuracy (%) on the protocol's test images (with `train`, on as many of the
        first training images, un-augmented)."""
        return evaluate(model, self.data(dataset, train), limit=self.protocol.test_images,
                        device=self.device)

    def endpoint_accuracy(self, job: Endpoint, dataset: str) -> float:
        """`accuracy` of a trained endpoint, once per process (population endpoints are in
        several pairs)."""
        return self.memo(("accuracy", job.key, dataset),
                         lambda: self.accuracy(self.load(job), dataset))

    # ------------------------------------------------------------------ cells

    def cell(self, study: str, coords: dict[str, Any], compute: Callable[[], Values], *,
             endpoints: Iterable[Endpoint] = (), params: dict[str, Any] | None = None,
             version: int = 1) -> list[dict[str, Any]]:
        """Tidy rows of one measured cell, from the cache or by calling `compute()`.

        The key covers the study and its `version`, the cell's coordinates and extra `params`,
        the keys of the endpoints it uses, the protocol and vfcore's version.
        """
        keyed = {"study": study, "version": version, "vfcore": __version__,
                 "coords": coords, "params": params or {},
                 "endpoints": [job.key for job in endpoints],
                 "protocol": asdict(self.protocol)}
        key = digest(keyed)
        values = self.results.get(key)
        if values is None:
            values = self.results.put(key, {"study": study, **coords}, compute())
        return rows(study, coords, values)


def rows(study: str, coords: dict[str, Any], values: Values) -> list[dict[str, Any]]:
    """One row per number: scalars get index None, lists one row per entry."""
    out = []
    for metric, value in values.items():
        base = {"study": study, **coords, "metric": metric}
        if isinstance(value, list):
            out += [{**base, "index": i, "value": v} for i, v in enumerate(value)]
        else:
            out.append({**base, "index": None, "value": value})
    return out


def frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The tidy DataFrame of some rows, with every column of `COLUMNS` present."""
    df = pd.DataFrame.from_records(list(records))
    for column in COLUMNS:
        if column not in df:
            df[column] = None
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra]


def expand_settings(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with one column per `name=value` entry of its `setting` column (missing: None)."""
    parsed = pd.DataFrame(list(df["setting"].fillna("").map(
        lambda s: dict(item.split("=", 1) for item in s.split(",") if item))), index=df.index)
    return pd.concat([df, parsed[[c for c in parsed if c not in df]]], axis=1)


class MissingResult(LookupError):
    """A table has no rows for the cell asked for (not measured at this profile)."""


def summary(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof 1 (0 for one value), count) of per-pair values."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise MissingResult("no values to summarise: the table has no such cell")
    return float(v.mean()), float(v.std(ddof=DDOF)) if v.size > 1 else 0.0, int(v.size)
