"""Aligning two endpoints before merging: one entry point over every matcher of the paper.

`align(model_a, model_b, method)` expresses both endpoints in one merged coordinate system:
"direct" (no change), "wm" (weight matching), "am" (activation matching), "zipit" and "cca". The
result, an `Alignment`, holds each endpoint's map per permutation group and its state dict in
merged coordinates, ready for `merge.interpolate`. ZipIt!'s maps depend on the merge coefficient,
so `alignment.at(alpha)` gives the alignment for a given alpha.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .device import model_device
from .features import activation_matching
from .hooks import Batch, eval_mode
from .matchers import Zip, cca, zipit
from .models import check_compatible
from .spec import PermutationSpec
from .trace import structure
from .transform import GroupMap, State, permute, transform
from .weight_matching import weight_matching

METHODS = ("direct", "wm", "am", "zipit", "cca")


@dataclass(frozen=True)
class Alignment:
    """Two endpoints expressed in one merged coordinate system.

    `maps[i]` maps endpoint i's units per group (a missing group is the identity); `states[i]` is
    endpoint i's state dict after applying them. `alpha` is the merge coefficient the maps were
    built for (only ZipIt!'s depend on it); `zips` and `sources` let `at` rebuild them.
    """

    method: str
    spec: PermutationSpec
    maps: tuple[dict[str, GroupMap], dict[str, GroupMap]]
    states: tuple[State, State]
    alpha: float = 0.5
    zips: dict[str, Zip] = field(default_factory=dict, repr=False)
    sources: tuple[State, State] | None = field(default=None, repr=False)

    def at(self, alpha: float) -> Alignment:
        """This alignment for merge coefficient `alpha` (itself unless the maps depend on it)."""
        if not self.zips or alpha == self.alpha:
            return self
        pairs = {g: z.maps(alpha) for g, z in self.zips.items()}
        maps = ({g: p[0] for g, p in pairs.items()}, {g: p[1] for g, p in pairs.items()})
        states = tuple(transform(self.spec, m, s) for m, s in zip(maps, self.sources,
                                                                    strict=True))
        return replace(self, maps=maps, states=states, alpha=alpha)

    @property
    def references_one_model(self) -> bool:
        """Whether normalisation targets come from endpoint a alone: CCA changes what b's units
        mean, so the paper takes REPAIR/RESCALE statistics from model 0 only (Tables 3-4)."""
        return self.method == "cca"


@torch.no_grad()
def check_equivalent(model: nn.Module, other: nn.Module, x: torch.Tensor, *, rtol: float = 1e-4,
                     atol: float = 1e-5) -> float:
    """Max abs output difference of two models on x (both in eval mode).

    Raises ValueError when the outputs are not allclose: the two do not compute one function.
    """
    with eval_mode(model, other):
        x = x.to(model_device(model))
        y, z = model(x), other(x.to(model_device(other))).to(x.device)
    diff = float((y - z).abs().max())
    if not torch.allclose(z, y, rtol=rtol, atol=atol):
        raise ValueError(f"the models compute different functions: max abs output difference "
                         f"{diff:.3g} exceeds atol={atol} + rtol={rtol} * |output|")
    return diff


def _state(model: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def align(model_a: nn.Module, model_b: nn.Module, method: str,
          batches: Iterable[Batch] | None = None, *, alpha: float = 0.5, seed: int = 0,
          max_iter: int = 100, reads: str = "last", zipit_a: float = 0.3,
          zipit_b: float = 0.125, cca_gamma: float = 0.1) -> Alignment:
    """Express both endpoints in one merged coordinate system with the named method.

    "direct": no change. "wm": weight matching (seed, max_iter). "am": activation matching on
    `batches`. "zipit" / "cca": the dense matchers of `vfcore.matchers` on `batches`; ZipIt!'s
    maps are built for `alpha` (see `Alignment.at`). `reads` picks the feature read points of the
    feature-based methods (`features.read_points`). Permutation methods map only model b; the
    models themselves are never modified. Any model whose structure vfcore can derive by tracing
    works (`vfcore.spec.spec_for`); both must share one architecture.
    """
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; choose one of {METHODS}")
    check_compatible(model_a, model_b)
    spec = structure(model_a).spec
    sa, sb = _state(model_a), _state(model_b)
    spec.check_pair(sa, sb)
    if method in ("am", "zipit", "cca") and batches is None:
        raise ValueError(f"method {method!r} matches features: pass batches of inputs")
    if method == "direct":
        return Alignment(method, spec, ({}, {}), (sa, sb), alpha)
    if method in ("wm", "am"):
        perms = (weight_matching(spec, sa, sb, max_iter=max_iter, seed=seed) if method == "wm"
                 else activation_matching(model_a, model_b, batches, spec, reads=reads))
        return Alignment(method, spec, ({}, perms), (sa, permute(spec, perms, sb)), alpha)
    if method == "zipit":
        zips = zipit(model_a, model_b, batches, zipit_a, zipit_b, spec=spec, reads=reads)
        base = Alignment(method, spec, ({}, {}), (sa, sb), float("nan"), zips, (sa, sb))
        return base.at(alpha)
    maps = cca(model_a, model_b, batches, cca_gamma, spec=spec, reads=reads)
    return Alignment(method, spec, maps, (transform(spec, maps[0], sa),
                                          transform(spec, maps[1], sb)), alpha)
