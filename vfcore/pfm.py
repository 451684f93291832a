"""Preserve-First Merging (PFM, Sec. 5.4 and App. A.3 of the paper).

PFM_{l/L} keeps the first l weight layers of both endpoints unmerged: the input runs through
each endpoint's own first l layers, the tensors that cross the cut are mapped into the merged
coordinates and averaged (weighted by alpha), and the merged network carries on from there.
l = 0 is ordinary merging; l = L averages the aligned endpoints' outputs (an ensemble).

The cut is described per architecture by the tensors that cross it. In a sequential network that
is the output of layer l. In a ResNet cut inside block k it is the output of layer l and the
block's input (which its shortcut still needs); shortcut convolutions are never counted in l,
as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass

import torch
from torch import nn

from .align import Alignment, map_features, unmap_features
from .device import model_device
from .hooks import StopForward, hooked, module
from .merge import check_alpha, interpolate
from .models import ModelConfig, ResNet, check_compatible, model_config, num_parameters, rebuild
from .spec import spec_for


@dataclass(frozen=True)
class Cut:
    """A tensor crossing the PFM cut: a module's output (or input), and whose units it holds.

    `key`/`axis` name a state-dict axis with the same units, which gives the permutation group
    the tensor's channels belong to.
    """

    module: str
    kind: str  # "output" | "input"
    key: str
    axis: int


def cuts(model: nn.Module, n_preserved: int) -> list[Cut]:
    """The tensors that cross a cut after `n_preserved` weight layers, in forward order."""
    layers = model.weight_layers
    if not 0 <= n_preserved <= len(layers):
        raise ValueError(f"the number of preserved layers must lie in [0, {len(layers)}] for "
                         f"{model_config(model).name}, got {n_preserved}")
    if n_preserved == 0:
        return []
    name = layers[n_preserved - 1]
    out = Cut(name, "output", f"{name}.weight", 0)
    if isinstance(model, ResNet) and name.startswith("blocks."):
        block = name.rsplit(".", 1)[0]
        return [Cut(block, "input", f"{block}.conv1.weight", 1), out]
    return [out]


class _CutReached(StopForward):
    """Ends a capture; private so that other hooks' StopForward passes through it."""


def _capture(model: nn.Module, cut_list: list[Cut], x: torch.Tensor) -> list[torch.Tensor]:
    """Run `model` on x only as far as needed to read the cut tensors."""
    found: dict[int, torch.Tensor] = {}

    def recorder(i: int) -> Callable:
        def fn(_m: nn.Module, inputs: tuple, output: torch.Tensor | None = None) -> None:
            found[i] = inputs[0] if output is None else output
            if len(found) == len(cut_list):
                raise _CutReached
        return fn

    with ExitStack() as stack:
        for i, cut in enumerate(cut_list):
            stack.enter_context(hooked(model, {cut.module: recorder(i)}, pre=cut.kind == "input"))
        with suppress(_CutReached):
            model(x)
    return [found[i] for i in range(len(cut_list))]


def _run_from(model: nn.Module, cut_list: list[Cut], tensors: list[torch.Tensor],
              x: torch.Tensor) -> torch.Tensor:
    """Run `model` with the cut tensors replacing what its own first layers would compute.

    The layers before the cut see only two dummy samples; everything after it the full batch.
    """
    with ExitStack() as stack:
        for cut, t in zip(cut_list, tensors, strict=True):
            stack.enter_context(hooked(model, {cut.module: _replacement(cut, t)},
                                       pre=cut.kind == "input", prepend=True))
        return model(x[:2])


def _replacement(cut: Cut, t: torch.Tensor) -> Callable:
    """A hook that makes `cut`'s tensor be `t`."""
    if cut.kind == "input":
        return lambda _m, inputs: (t, *inputs[1:])
    return lambda _m, _inputs, _output: t


def _folding(model: nn.Module, name: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """apply(scale, shift) folding a per-channel correction into layer `name` of `model`."""
    from .normalize import fold_into

    return fold_into(module(model, name), name)


class _TwoEndpoints(nn.Module):
    """Shared by PFM and partial zipping: two frozen endpoints beside one merged network.

    The endpoints stay in eval mode even when the wrapper is put in train mode (for RESET), so
    normalisation touches the merged network only. `config` and `weight_layers` are the merged
    network's, so evaluation and the kernels treat the wrapper like its architecture.
    """

    endpoints: nn.ModuleList
    merged: nn.Module

    @property
    def weight_layers(self) -> list[str]:
        return self.merged.weight_layers

    @property
    def config(self) -> ModelConfig:
        return self.merged.config

    def train(self, mode: bool = True) -> _TwoEndpoints:
        self.training = mode
        self.merged.train(mode)
        self.endpoints.eval()
        return self


class PFMModel(_TwoEndpoints):
    """Two endpoints' first layers, unmerged, feeding one merged network.

    The endpoints are frozen (always in eval mode, even when the model is put in train mode for
    RESET), so normalisation touches the merged part only. Per-channel affine corrections of the
    averaged cut outputs (`cut_scale`, `cut_shift`) let REPAIR and RESCALE normalise the boundary
    layer as well, as the paper does.
    """

    def __init__(self, endpoint_a: nn.Module, endpoint_b: nn.Module, merged: nn.Module,
                 n_preserved: int, alignment: Alignment, alpha: float = 0.5):
        super().__init__()
        check_alpha(alpha)
        check_compatible(endpoint_a, merged)
        check_compatible(endpoint_b, merged)
        self.endpoints = nn.ModuleList([endpoint_a, endpoint_b]).eval()
        for p in self.endpoints.parameters():
            p.requires_grad_(False)
        self.merged = merged
        self.n_preserved = n_preserved
        self.alpha = alpha
        self.cuts = cuts(merged, n_preserved)
        spec = spec_for(merged)
        self.groups = [spec.axes[c.key][c.axis] for c in self.cuts]
        self.maps = alignment.maps
        for i, cut in enumerate(self.cuts):
            if cut.kind == "output":
                channels = merged.state_dict()[cut.key].shape[cut.axis]
                self.register_buffer(f"cut_scale_{i}", torch.ones(channels))
                self.register_buffer(f"cut_shift_{i}", torch.zeros(channels))

    def crossing(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The averaged cut tensors in merged coordinates, affine corrections applied."""
        per_model = [_capture(m, self.cuts, x) for m in self.endpoints]
        weights = (1 - self.alpha, self.alpha)
        out = []
        for i, group in enumerate(self.groups):
            t = sum(w * map_features(z[i], maps.get(group) if group else None)
                    for w, z, maps in zip(weights, per_model, self.maps, strict=True))
            if self.cuts[i].kind == "output":
                shape = (1, -1) + (1,) * (t.dim() - 2)
                t = t * getattr(self, f"cut_scale_{i}").view(shape) + getattr(
                    self, f"cut_shift_{i}").view(shape)
            out.append(t)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuts:
            return self.merged(x)
        return _run_from(self.merged, self.cuts, self.crossing(x), x)

    def repair_targets(self, layers: list[str]) -> list[tuple[str, str, Callable]]:
        """Where REPAIR measures and corrects each layer (the normalize module's protocol).

        Layers before the boundary are the endpoints' own and are left alone; the boundary
        layer's averaged output is corrected by the cut affine; later layers are folded into the
        merged network.
        """
        order = {name: i + 1 for i, name in enumerate(self.merged.weight_layers)}
        boundary = {c.module: i for i, c in enumerate(self.cuts) if c.kind == "output"}
        targets = []
        for name in layers:
            if order[name] < self.n_preserved:
                continue
            if name in boundary:
                targets.append((f"merged.{name}", name, self._cut_affine(boundary[name])))
            else:
                targets.append((f"merged.{name}", name, _folding(self.merged, name)))
        return targets

    def _cut_affine(self, i: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def apply(scale: torch.Tensor, shift: torch.Tensor) -> None:
            s, t = getattr(self, f"cut_scale_{i}"), getattr(self, f"cut_shift_{i}")
            s.mul_(scale.to(s))
            t.mul_(scale.to(t)).add_(shift.to(t))
        return apply

    def measured_layers(self) -> tuple[list[str], list[str]]:
        """Module paths of the merged layers from the boundary on, and their names in an
        endpoint: what the vanishing-feature measurement compares (preserved layers are the
        endpoints' own, with a normalised scale of exactly 1)."""
        names = self.merged.weight_layers[max(self.n_preserved, 1) - 1:]
        return [f"merged.{n}" for n in names], names


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

    The first L - K weight layers are merged; the tensors crossing that cut are mapped back
    into each endpoint's own coordinates and each endpoint's last K layers finish the job; the
    outputs are averaged (weighted by alpha): a multi-head model.
    """

    def __init__(self, endpoint_a: nn.Module, endpoint_b: nn.Module, merged: nn.Module,
                 n_unmerged: int, alignment: Alignment, alpha: float = 0.5):
        super().__init__()
        check_alpha(alpha)
        n_layers = len(merged.weight_layers)
        if not 0 <= n_unmerged <= n_layers:
            raise ValueError(f"the number of unmerged layers must lie in [0, {n_layers}], got "
                             f"{n_unmerged}")
        self.endpoints = nn.ModuleList([endpoint_a, endpoint_b]).eval()
        self.merged = merged
        self.n_merged = n_layers - n_unmerged
        self.alpha = alpha
        self.cuts = cuts(merged, self.n_merged)
        spec = spec_for(merged)
        self.groups = [spec.axes[c.key][c.axis] for c in self.cuts]
        self.maps = alignment.maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_merged == len(self.merged.weight_layers):
            return self.merged(x)
        if not self.cuts:
            return sum(w * m(x) for w, m in zip((1 - self.alpha, self.alpha), self.endpoints,
                                                strict=True))
        merged = _capture(self.merged, self.cuts, x)
        out = 0
        for w, endpoint, maps in zip((1 - self.alpha, self.alpha), self.endpoints, self.maps,
                                     strict=True):
            own = [unmap_features(t, maps.get(g) if g else None)
                   for t, g in zip(merged, self.groups, strict=True)]
            out = out + w * _run_from(endpoint, self.cuts, own, x)
        return out

    def repair_targets(self, layers: list[str]) -> list[tuple[str, str, Callable]]:
        """REPAIR and RESCALE correct the merged layers only (the normalize protocol)."""
        order = {name: i + 1 for i, name in enumerate(self.merged.weight_layers)}
        return [(f"merged.{name}", name, _folding(self.merged, name))
                for name in layers if order[name] <= self.n_merged]


def _copies(model_a: nn.Module, model_b: nn.Module, alignment: Alignment | None,
            alpha: float, merged_state: dict[str, torch.Tensor] | None
            ) -> tuple[nn.Module, nn.Module, nn.Module, Alignment]:
    """Copies of both endpoints and the merged model (eval mode, on the endpoints' device)."""
    check_compatible(model_a, model_b)
    alignment = alignment or Alignment("direct", ({}, {}),
                                       (model_a.state_dict(), model_b.state_dict()))
    device = next(model_a.parameters()).device
    merged = rebuild(model_a).to(device)
    merged.load_state_dict(merged_state or interpolate(*alignment.states, alpha))
    endpoints = []
    for m in (model_a, model_b):
        copy = rebuild(m).to(device)
        copy.load_state_dict(m.state_dict())
        endpoints.append(copy.eval())
    return endpoints[0], endpoints[1], merged.eval(), alignment


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


def _macs_and_params_run(model: nn.Module, x: torch.Tensor, stop_after: list[Cut] | None
                         ) -> tuple[int, int]:
    """MACs of conv/linear layers and parameters of every module run on one input (up to the
    cut when given)."""
    macs, params, seen = 0, 0, set()

    def count(m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal macs, params
        if isinstance(m, nn.Conv2d):
            k = m.weight[0].numel()
            macs += out[0].numel() * k
        elif isinstance(m, nn.Linear):
            macs += out[0].numel() * m.in_features
        if id(m) not in seen:
            seen.add(id(m))
            params += sum(p.numel() for p in m.parameters(recurse=False))

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            if stop_after:
                _capture(model, stop_after, x)
            else:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return macs, params


def pfm_cost(model: nn.Module, n_preserved: int, input_shape: tuple[int, ...] | None = None
             ) -> Cost:
    """Parameter and MAC counts of PFM_{n_preserved/L} built on `model`'s architecture.

    The preserved layers exist twice (once per endpoint) and run twice; everything after the
    cut once. MACs count conv and linear multiply-accumulates, which reproduce the paper's
    torchstat FLOP ratios (VGG16 PFM8/14: 17.64M parameters, 1.2x; 0.52 G, 1.67x).
    """
    c = model_config(model)
    shape = input_shape or (1, c.in_channels, c.image_size, c.image_size)
    x = torch.zeros(shape, device=model_device(model))
    was_training = model.training
    model.eval()
    base_macs, _ = _macs_and_params_run(model, x, None)
    extra_macs, extra_params = (_macs_and_params_run(model, x, cuts(model, n_preserved))
                                if n_preserved else (0, 0))
    model.train(was_training)
    base_params = num_parameters(model)
    return Cost(base_params + extra_params, base_macs + extra_macs, base_params, base_macs)
