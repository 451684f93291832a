"""Preserve-First Merging (PFM, Sec. 5.4 and App. A.3 of the paper) and partial zipping.

PFM_{l/L} keeps the first l weight layers of both endpoints unmerged: the input runs through
each endpoint's own first l layers, the values that cross the cut are mapped into the merged
coordinates and averaged (weighted by alpha), and the merged network carries on from there.
l = 0 is ordinary merging; l = L averages the aligned endpoints' outputs (an ensemble).

The cut comes from the model's traced structure (`vfcore.trace`): the values live right after
the output of weight layer l, before its norm and activation. In a sequential network that is
layer l's output; in a ResNet cut inside a block it is also the block's input, which the
shortcut still needs. Shortcut convolutions are never counted in l, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .align import Alignment, align
from .device import model_device
from .hooks import eval_mode, module
from .merge import check_alpha, interpolate, with_state
from .models import ModelConfig, check_compatible, num_parameters
from .trace import Live, structure, zero_batch
from .transform import GroupMap, map_value, unmap_value
from .vf import vf_layers

BOUNDARY = "boundary_output"  # the PFM module through which the averaged boundary output passes


def _folding(model: nn.Module, name: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """apply(scale, shift) folding a per-channel correction into layer `name` of `model`."""
    from .normalize import fold_into

    return fold_into(module(model, name), name)


def _convert(values: Sequence[Any], live: Sequence[Live], maps: dict[str, GroupMap],
             inverse: bool) -> list[Any]:
    """Cut values into merged coordinates (or, with `inverse`, back into one model's units)."""
    move = unmap_value if inverse else map_value
    return [move(t, v.group, maps, v.axis) if isinstance(t, torch.Tensor) and v.axis is not None
            else t for t, v in zip(values, live, strict=True)]


class _TwoEndpoints(nn.Module):
    """Shared by PFM and partial zipping: two frozen endpoints beside one merged network.

    The endpoints stay in eval mode even when the wrapper is put in train mode (for RESET), so
    normalisation touches the merged network only. `weight_layers` (and `config` for vfcore's
    own models) are the merged network's, so the kernels treat the wrapper like its architecture.
    """

    endpoints: nn.ModuleList
    merged: nn.Module

    @property
    def weight_layers(self) -> list[str]:
        return list(structure(self.merged).weight_layers)

    @property
    def config(self) -> ModelConfig:
        return self.merged.config

    def train(self, mode: bool = True) -> _TwoEndpoints:
        self.training = mode
        self.merged.train(mode)
        self.endpoints.eval()
        return self

    def _hold(self, endpoint_a: nn.Module, endpoint_b: nn.Module, merged: nn.Module,
              alignment: Alignment, alpha: float) -> None:
        check_alpha(alpha)
        check_compatible(endpoint_a, merged)
        check_compatible(endpoint_b, merged)
        self.endpoints = nn.ModuleList([endpoint_a, endpoint_b]).eval()
        for p in self.endpoints.parameters():
            p.requires_grad_(False)
        self.merged = merged
        self.alpha = alpha
        self.maps = alignment.maps


class PFMModel(_TwoEndpoints):
    """Two endpoints' first layers, unmerged, feeding one merged network.

    The averaged output of the boundary layer passes through the identity module
    `boundary_output`, where REPAIR and the vanishing-feature measurement read it, after the
    per-channel affine correction (`cut_scale`, `cut_shift`) that lets REPAIR and RESCALE
    normalise the boundary layer as well, as the paper does.
    """

    def __init__(self, endpoint_a: nn.Module, endpoint_b: nn.Module, merged: nn.Module,
                 n_preserved: int, alignment: Alignment, alpha: float = 0.5):
        super().__init__()
        self._hold(endpoint_a, endpoint_b, merged, alignment, alpha)
        self.cut = structure(merged).cut(n_preserved)
        self.n_preserved = n_preserved
        self.boundary_output = nn.Identity()
        if self.cut.boundary is not None:
            channels = module(merged, self.cut.boundary).weight.shape[0]
            device = model_device(merged)
            self.register_buffer("cut_scale", torch.ones(channels, device=device))
            self.register_buffer("cut_shift", torch.zeros(channels, device=device))

    def crossing(self, x: torch.Tensor) -> list[Any]:
        """The cut values averaged in merged coordinates, the boundary output corrected.

        The network input crosses as it is; values without channels are averaged as they are;
        non-tensors (shapes) are taken from endpoint a.
        """
        traced = structure(self.merged)
        source = traced.cut(0).live[0].name
        per_model = [_convert(traced.run(m, (x,), stop=self.n_preserved), self.cut.live, maps,
                              inverse=False)
                     for m, maps in zip(self.endpoints, self.maps, strict=True)]
        out = []
        for i, (live, a, b) in enumerate(zip(self.cut.live, *per_model, strict=True)):
            if live.name == source:
                value = x
            elif isinstance(a, torch.Tensor):
                value = (1 - self.alpha) * a + self.alpha * b
            else:
                value = a
            if i == self.cut.boundary_value:
                shape = [1] * value.dim()
                shape[live.axis] = -1
                value = self.boundary_output(value * self.cut_scale.view(shape)
                                             + self.cut_shift.view(shape))
            out.append(value)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_preserved == 0:
            return self.merged(x)
        return structure(self.merged).run(self.merged, self.crossing(x), start=self.n_preserved)

    def repair_targets(self, layers: list[str]) -> list[tuple[str, str, Callable]]:
        """Where REPAIR measures and corrects each layer (the normalize module's protocol).

        Layers before the boundary are the endpoints' own and are left alone; the boundary
        layer's averaged output is corrected by the cut affine; later layers are folded into the
        merged network.
        """
        preserved = structure(self.merged).layers_before(self.n_preserved)
        targets = []
        for name in layers:
            if name == self.cut.boundary:
                targets.append((BOUNDARY, name, self._cut_affine))
            elif name not in preserved:
                targets.append((f"merged.{name}", name, _folding(self.merged, name)))
        return targets

    @torch.no_grad()
    def _cut_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        s, t = self.cut_scale, self.cut_shift
        s.mul_(scale.to(s))
        t.mul_(scale.to(t)).add_(shift.to(t))

    def measured_layers(self, include_norms: bool = False) -> tuple[list[str], list[str]]:
        """Module paths of the merged layers from the boundary on, and their names in an
        endpoint: what the vanishing-feature measurement compares (preserved layers are the
        endpoints' own, with a normalised scale of exactly 1). The boundary layer is read at
        `boundary_output`. With `include_norms`, the norm after each of those layers too
        (`vf.vf_layers`)."""
        names = vf_layers(self.merged, include_norms=include_norms)
        first = names.index(self.weight_layers[max(self.n_preserved, 1) - 1])
        paths = [BOUNDARY if name == self.cut.boundary else f"merged.{name}"
                 for name in names[first:]]
        return paths, names[first:]


def preserve_first_merge(model_a: nn.Module, model_b: nn.Module, n_preserved: int, *,
                         alignment: Alignment | None = None, alpha: float = 0.5,
                         merged_state: dict[str, torch.Tensor] | None = None) -> PFMModel:
    """PFM_{n_preserved/L} of two endpoints (Sec. 5.4).

    `alignment` (from `align.align`) gives the maps into merged coordinates and the aligned
    states; without it the endpoints are merged directly. `merged_state` replaces the plain
    interpolation of the aligned states (e.g. a bias-calibrated one). The endpoints are used as
    they are (copied), so the preserved layers compute exactly what they computed alone.
    """
    a, b, merged, alignment = _copies(model_a, model_b, alignment, alpha, merged_state)
    return PFMModel(a, b, merged, n_preserved, alignment, alpha)


class PartialZipModel(_TwoEndpoints):
    """Partial zipping (ZipIt!, App. A.8.2): the reverse of PFM.

    The first L - K weight layers are merged; the values crossing that cut are mapped back
    into each endpoint's own coordinates and each endpoint's last K layers finish the job; the
    outputs are averaged (weighted by alpha): a multi-head model.
    """

    def __init__(self, endpoint_a: nn.Module, endpoint_b: nn.Module, merged: nn.Module,
                 n_unmerged: int, alignment: Alignment, alpha: float = 0.5):
        super().__init__()
        self._hold(endpoint_a, endpoint_b, merged, alignment, alpha)
        n_layers = len(structure(merged).weight_layers)
        if isinstance(n_unmerged, bool) or not isinstance(n_unmerged, int) or not (
                0 <= n_unmerged <= n_layers):
            raise ValueError(f"the number of unmerged layers must be an integer in "
                             f"[0, {n_layers}], got {n_unmerged!r}")
        self.n_merged = n_layers - n_unmerged
        self.cut = structure(merged).cut(self.n_merged)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        traced = structure(self.merged)
        if self.n_merged == len(traced.weight_layers):
            return self.merged(x)
        merged = traced.run(self.merged, (x,), stop=self.n_merged)
        out = 0
        for w, endpoint, maps in zip((1 - self.alpha, self.alpha), self.endpoints, self.maps,
                                     strict=True):
            own = _convert(merged, self.cut.live, maps, inverse=True)
            out = out + w * traced.run(endpoint, own, start=self.n_merged)
        return out

    def repair_targets(self, layers: list[str]) -> list[tuple[str, str, Callable]]:
        """REPAIR and RESCALE correct the merged layers only (the normalize protocol)."""
        merged = structure(self.merged).layers_before(self.n_merged)
        return [(f"merged.{name}", name, _folding(self.merged, name))
                for name in layers if name in merged]


def _copies(model_a: nn.Module, model_b: nn.Module, alignment: Alignment | None,
            alpha: float, merged_state: dict[str, torch.Tensor] | None
            ) -> tuple[nn.Module, nn.Module, nn.Module, Alignment]:
    """Copies of both endpoints and the merged model (eval mode, on the endpoints' device), and
    the alignment at `alpha`."""
    check_compatible(model_a, model_b)
    alignment = (alignment or align(model_a, model_b, "direct")).at(alpha)
    merged = with_state(model_a, merged_state or interpolate(*alignment.states, alpha))
    return (with_state(model_a, model_a.state_dict()), with_state(model_b, model_b.state_dict()),
            merged, alignment)


def partial_zip(model_a: nn.Module, model_b: nn.Module, n_unmerged: int, *,
                alignment: Alignment | None = None, alpha: float = 0.5,
                merged_state: dict[str, torch.Tensor] | None = None) -> PartialZipModel:
    """Partial zipping with the last `n_unmerged` layers of both endpoints kept apart."""
    a, b, merged, alignment = _copies(model_a, model_b, alignment, alpha, merged_state)
    return PartialZipModel(a, b, merged, n_unmerged, alignment, alpha)


@dataclass(frozen=True)
class Cost:
    """Parameters and multiply-accumulates of a PFM model against its base model."""

    params: int
    macs: int
    base_params: int
    base_macs: int

    @property
    def params_ratio(self) -> float:
        return self.params / self.base_params

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.base_macs


@torch.no_grad()
def _macs(model: nn.Module, run: Callable[[], Any]) -> int:
    """Multiply-accumulates of the conv and linear layers that `run()` calls."""
    macs = 0

    def count(m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(m, _ConvNd):
            macs += out[0].numel() * m.weight[0].numel()
        elif isinstance(m, nn.Linear):
            macs += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, _ConvNd | nn.Linear)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return macs


def _prefix_parameters(model: nn.Module, n_preserved: int) -> int:
    """Parameters held by the first `n_preserved` layers' piece of the network."""
    modules, attributes = structure(model).prefix_targets(n_preserved)
    params = {id(p): p for name in modules for p in model.get_submodule(name).parameters()}
    for target in attributes:
        owner, _, leaf = target.rpartition(".")
        value = getattr(model.get_submodule(owner) if owner else model, leaf, None)
        if isinstance(value, nn.Parameter):
            params[id(value)] = value
    return sum(p.numel() for p in params.values())


def pfm_cost(model: nn.Module, n_preserved: int, input_shape: tuple[int, ...] | None = None
             ) -> Cost:
    """Parameter and MAC counts of PFM_{n_preserved/L} built on `model`'s architecture.

    The preserved layers exist twice (once per endpoint) and run twice; everything after the
    cut once. MACs count conv and linear multiply-accumulates on one input of `input_shape`
    (default: one sample of the model's configured input, or of the shape its class was traced
    with), which reproduce the paper's torchstat FLOP ratios (VGG16 PFM8/14: 17.64M parameters,
    1.2x; 0.52 G, 1.67x).
    """
    traced = structure(model)
    traced.cut(n_preserved)
    x = zero_batch(model, 1)
    if input_shape is not None:
        x = torch.zeros(input_shape, dtype=x.dtype, device=x.device)
    with eval_mode(model):
        base_macs = _macs(model, lambda: model(x))
        extra_macs = (_macs(model, lambda: traced.run(model, (x,), stop=n_preserved))
                      if n_preserved else 0)
    base_params = num_parameters(model)
    return Cost(base_params + _prefix_parameters(model, n_preserved), base_macs + extra_macs,
                base_params, base_macs)
