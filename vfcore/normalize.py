"""Post-merging normalisation: RESET, REPAIR / RESCALE / RESHIFT, bias removal, bias calibration.

RESET (NOTES §2.6) re-estimates BatchNorm statistics on calibration data. REPAIR (Eq. 1, §2.7)
gives every repaired channel of a merged model the mean and standard deviation of the same channel
in reference models, averaged with the merge weights; RESCALE (§2.8) matches the standard
deviation only, RESHIFT the mean only. Instead of inserting BatchNorm layers, the per-channel
affine correction is folded straight into the layer's weights and bias, so a repaired model has
the architecture (and, for layers with a bias, the parameter count) of the model it came from.
Every function returns a new model and leaves its inputs untouched.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .device import model_device
from .hooks import StopForward, hooked, module
from .merge import State, check_states, interpolate
from .models import MLP, VGG, LinearNet, ResidualLinear, ResNet, check_compatible, has_batchnorm

Batch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]
Stats = tuple[torch.Tensor, torch.Tensor]
Apply = Callable[[torch.Tensor, torch.Tensor], None]
Target = tuple[str, str, Apply]
MODES = ("repair", "rescale", "reshift")


def _inputs(batch: Batch) -> torch.Tensor:
    """The input tensor of a batch given either as a tensor or as an (x, y) pair."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a batch must be a tensor or an (x, y) pair, got {type(batch).__name__}")
    return x


def _check_batches(batches: Iterable[Batch], reiterable: bool) -> None:
    if isinstance(batches, torch.Tensor):
        raise TypeError("batches must be a list of batches, not one tensor (iterating a tensor "
                        "walks its samples); wrap it as [x]")
    if reiterable and isinstance(batches, Iterator):
        raise TypeError("batches is an iterator, but this pass iterates it several times; "
                        "pass a list, e.g. list(batches(...))")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with every submodule in eval mode, then restore each module's own flag."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


class _RunningStats:
    """Per-channel (dim 1) mean and population variance, merged batch by batch in float64.

    Each batch is centred on the running mean (its own mean for the first batch) in the
    activation's dtype; sums over one sample's positions run in that dtype and everything after
    in float64, and batches are combined with Chan et al.'s pairwise update. This keeps the
    precision of float64 (relative errors near 1e-9) without a float64 copy of the activations.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, out: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            raise TypeError("channel statistics need a tensor output with channels on dim 1")
        x = out.detach().reshape(out.shape[0], out.shape[1], -1)
        n = x.shape[0] * x.shape[2]
        if self.mean is not None and self.mean.shape != (x.shape[1],):
            raise ValueError(f"channel count changed between batches: {self.mean.numel()} vs "
                             f"{x.shape[1]}")
        guess = x.sum(2).double().sum(0) / n if self.mean is None else self.mean
        centre = guess.to(x.dtype)
        d = x - centre.view(1, -1, 1)
        s1 = d.sum(2).double().sum(0)
        s2 = (d * d).sum(2).double().sum(0)
        mean = centre.double() + s1 / n
        m2 = s2 - s1 * s1 / n
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    def result(self) -> Stats:
        assert self.mean is not None and self.m2 is not None
        return self.mean, (self.m2.clamp_min(0.0) / self.n).sqrt()


def _cut_of(model: nn.Module, name: str) -> str | None:
    """The module whose input carries everything layer `name` depends on, or None if unknown.

    Only vfcore's own chain-shaped models have cuts: a VGG conv or MLP/linear-net layer is its
    own cut (its input is the whole state of the forward pass), a ResNet layer's cut is its block.
    """
    if type(model) in (VGG, MLP, LinearNet):
        return name if re.fullmatch(r"(features|layers)\.\d+", name) else None
    if type(model) is ResNet:
        match = re.match(r"blocks\.\d+(?=\.)", name)
        return match[0] if match else None
    return None


class _Feed:
    """Runs calibration batches through a model, from the input or from a cut's cached inputs.

    A pass that measures a layer can also cache the inputs of the layer's cut on the way. Once
    every layer before that cut is final, later passes start there: the model runs on one sample
    and a forward pre-hook swaps the cut's input for the cached batch. This brings REPAIR's
    layer-by-layer passes down from about one forward pass per two layers to about one or two
    passes in all. The caller puts the model in eval and no-grad mode.
    """

    def __init__(self, model: nn.Module, batches: Iterable[Batch], max_cache_bytes: int = 0):
        self.model, self.batches, self.max_cache_bytes = model, batches, max_cache_bytes
        self.device = model_device(model)
        self.order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.cut: str | None = None
        self.cache: list[torch.Tensor] = []
        self.batch = -1

    def _forward(self, hooks: dict[str, Callable], pre_hooks: dict[str, Callable]) -> None:
        """Forward every batch with these (pre-)hooks; forward hooks may raise StopForward."""
        self.batch = -1
        with hooked(self.model, hooks), hooked(self.model, pre_hooks, pre=True):
            for i, batch in enumerate(self.batches):
                self.batch = i
                x = _inputs(batch).to(self.device)
                swap: dict[str, Callable] = {}
                if self.cut is not None:
                    swap[self.cut] = lambda _m, args, cached=self.cache[i]: (cached, *args[1:])
                    x = x[:1]
                with hooked(self.model, swap, pre=True, prepend=True), suppress(StopForward):
                    self.model(x)
        if self.batch < 0:
            raise ValueError("batches is empty; give at least one calibration batch")

    def stats(self, names: list[str], cut: str | None = None) -> dict[str, Stats]:
        """Per-channel statistics of the named outputs; each pass stops once all are seen.

        `cut` is a module reached before the named outputs whose preceding layers are final:
        its inputs are cached during this pass (if they fit) and later passes start there.
        """
        if self.cut is not None and cut != self.cut and (
                cut is None or self.order[cut] < self.order[self.cut]):
            self.cut, self.cache = None, []
        capturing = cut is not None and cut != self.cut and self.max_cache_bytes > 0
        captured: list[torch.Tensor] | None = [] if capturing else None

        def grab(_m: nn.Module, args: tuple) -> None:
            nonlocal captured
            if captured is not None:
                captured.append(args[0].detach())
                if sum(t.nbytes for t in captured) > self.max_cache_bytes:
                    captured = None

        acc = {name: _RunningStats() for name in names}
        seen: dict[str, int] = {}

        def record(name: str) -> Callable:
            def fn(_m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
                acc[name].update(out)
                seen[name] = self.batch
                if all(seen.get(n) == self.batch for n in names):
                    raise StopForward
            return fn

        self._forward({name: record(name) for name in names}, {cut: grab} if capturing else {})
        missing = [name for name in names if name not in seen]
        if missing:
            raise RuntimeError(f"modules {missing} were not run by the forward pass")
        if captured is not None and len(captured) == self.batch + 1:
            self.cut, self.cache = cut, captured
        return {name: a.result() for name, a in acc.items()}


def channel_stats(model: nn.Module, names: Sequence[str],
                  batches: Iterable[Batch]) -> dict[str, Stats]:
    """Per-channel mean and population std (float64) of the named modules' outputs.

    Channels are dim 1; conv outputs are pooled over the batch and all positions. The model runs
    in eval mode (so BatchNorm statistics are not touched) and each forward pass stops as soon as
    every named output has been seen. Every call of a named module contributes.
    """
    names = list(names)
    if not names:
        raise ValueError("no module names given to measure")
    _check_batches(batches, reiterable=False)
    with _eval_mode(model), torch.no_grad():
        return _Feed(model, batches).stats(names)


def reset_bn(model: nn.Module, batches: Iterable[Batch]) -> nn.Module:
    """RESET (Algorithm 1): re-estimate BatchNorm running statistics on calibration batches.

    A copy is put in training mode; every BatchNorm that is still training after `train()` (a
    wrapper may keep frozen parts in eval by overriding `train`) has its statistics reset and
    momentum set to None, so PyTorch stores the cumulative average over batches of each batch's
    mean and unbiased variance. All batches are forwarded without gradients; momenta are
    restored and the copy is returned in eval mode.
    """
    _check_batches(batches, reiterable=False)
    out = copy.deepcopy(model)
    out.train()
    bns = [m for m in out.modules()
           if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    if not bns:
        if has_batchnorm(out):
            raise ValueError("every BatchNorm stays in eval mode (or tracks no statistics) after "
                             "model.train(): there is nothing for RESET to re-estimate")
        raise ValueError("the model has no BatchNorm layer for RESET to re-estimate; normalise "
                         "models without BN with repair(model, references, weights, batches)")
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    device = model_device(out)
    n_batches = 0
    with torch.no_grad():
        for batch in batches:
            out(_inputs(batch).to(device))
            n_batches += 1
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    out.eval()
    if n_batches == 0:
        raise ValueError("batches is empty; give at least one calibration batch")
    return out


def repair_layers(model: nn.Module) -> list[str]:
    """The layers the paper repairs (NOTES §2.7), whose outputs REPAIR/RESCALE correct.

    VGG: every conv; ResNet: each block's conv1 and conv2 (not the stem, not the shortcuts);
    linear nets and MLPs: every hidden layer. The head is never repaired. A wrapper exposing the
    merged model as `model.merged` (PFM) gets the merged model's layers.
    """
    merged = getattr(model, "merged", None)
    if isinstance(merged, nn.Module):
        return repair_layers(merged)
    if isinstance(model, ResNet):
        return [name for name in model.weight_layers if name.startswith("blocks.")]
    if isinstance(model, (VGG, LinearNet, MLP)):
        return list(model.weight_layers[:-1])
    raise TypeError(f"no repair layers known for {type(model).__name__}; pass layers=[...] "
                    "explicitly or build the model with vfcore.build_model")


def fold_into(layer: nn.Module, name: str) -> Apply:
    """apply(scale, shift) that folds a per-output-channel affine map into a conv/linear layer.

    A ResidualLinear's output includes its input, so its weight also gets (scale - 1) on the
    diagonal: diag(s) (W x + b + x) + t = (diag(s) W + diag(s - 1)) x + (s b + t) + x.
    """
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"{name} is a {type(layer).__name__}; the default REPAIR folds into "
                         "Conv2d or Linear layers only")

    @torch.no_grad()
    def apply(scale: torch.Tensor, shift: torch.Tensor) -> None:
        w = layer.weight
        s = scale.to(device=w.device, dtype=w.dtype)
        t = shift.to(device=w.device, dtype=w.dtype)
        w.mul_(s.view(-1, *([1] * (w.dim() - 1))))
        if isinstance(layer, ResidualLinear):
            w.diagonal().add_(s - 1)
        if layer.bias is not None:
            layer.bias.mul_(s).add_(t)
        elif bool((shift != 0).any()):
            layer.bias = nn.Parameter(t.clone(), requires_grad=w.requires_grad)

    return apply


def _default_targets(model: nn.Module, layers: list[str]) -> list[Target]:
    """(name, name, fold into that layer) for each layer, in forward (module) order."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    unknown = [name for name in layers if name not in order]
    if unknown:
        raise ValueError(f"layers {unknown} do not exist in {type(model).__name__}; the "
                         f"repairable layers are {repair_layers(model)}")
    return [(name, name, fold_into(module(model, name), name))
            for name in sorted(layers, key=order.__getitem__)]


def _check_weights(weights: Sequence[float], n_refs: int) -> list[float]:
    weights = [float(w) for w in weights]
    if n_refs == 0:
        raise ValueError("repair needs at least one reference model")
    if len(weights) != n_refs:
        raise ValueError(f"got {len(weights)} weights for {n_refs} reference models; give one "
                         "weight per reference, e.g. [1 - alpha, alpha]")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"weights must be finite and non-negative, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {weights} (sum {sum(weights)})")
    return weights


def _correction(mode: str, mean: torch.Tensor, std: torch.Tensor, target_mean: torch.Tensor,
                target_std: torch.Tensor, eps: float, where: str) -> Stats:
    """Per-channel (scale, shift) that moves (mean, std) to the mode's targets."""
    if mode == "reshift":
        return torch.ones_like(mean), target_mean - mean
    denom = (std * std + eps).sqrt()
    if bool((denom == 0).any()):
        raise ValueError(f"{where} has channels with zero variance on the calibration data; "
                         "use eps > 0 or more varied calibration batches")
    scale = target_std / denom
    shift = target_mean - mean * scale if mode == "repair" else torch.zeros_like(mean)
    return scale, shift


def repair(model: nn.Module, references: Sequence[nn.Module], weights: Sequence[float],
           batches: Sequence[Batch], *, mode: str = "repair", layers: Sequence[str] | None = None,
           eps: float = 1e-5, max_cache_bytes: int = 2**30) -> nn.Module:
    """REPAIR (Eq. 1), RESCALE or RESHIFT of `model` towards weighted reference statistics.

    At each repaired layer's output (before any norm or activation) and for each channel, the
    targets are mean = sum_i w_i mean_i and std = sum_i w_i std_i over the references (standard
    deviations are averaged, as in the paper). "repair" matches both, "rescale" multiplies by
    target_std / Std (no centring, NOTES §2.8) and "reshift" adds target_mean - mean. Layers are
    corrected in forward order, each measured after the earlier ones were corrected, so on the
    calibration data every corrected channel hits its targets (exactly up to `eps`, which is
    added to the variance as BatchNorm does).

    The correction is folded into the layer (weight rows times scale, bias times scale plus
    shift). A layer without a bias (only bias-free convs, such as ResNet20-LN's and ResNet20-BN's)
    gets a new bias Parameter when its shift is nonzero: one extra parameter per repaired channel.

    `batches` is iterated once per layer, so it must be re-iterable: a list of input tensors or
    (x, y) pairs. To avoid re-running the whole prefix for every layer, vfcore's own models cache
    the calibration inputs of the block (or layer) being repaired, up to `max_cache_bytes`
    (0 disables it; passes then start at the input, which gives the same result more slowly).
    `layers` defaults to `repair_layers(model)`; they are taken in forward order.

    A wrapper (PFM) may define `repair_targets(layers) -> [(module path in the wrapper to
    measure, layer name in the references, apply(scale, shift))]`, in forward order; scale and
    shift are per-channel float64 tensors. The references must share the architecture of
    `model` (of `model.merged` for a wrapper).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    references = list(references)
    weights = _check_weights(weights, len(references))
    base = getattr(model, "merged", model)
    for ref in references:
        check_compatible(base, ref)
    _check_batches(batches, reiterable=True)
    layers = repair_layers(model) if layers is None else list(layers)
    if not layers:
        raise ValueError("no layers to repair; leave layers=None for the paper's choice")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers lists a layer more than once: {layers}")

    out = copy.deepcopy(model)
    repair_targets = getattr(out, "repair_targets", None)
    targets = repair_targets(layers) if callable(repair_targets) else _default_targets(out, layers)
    ref_names = list(dict.fromkeys(ref_name for _, ref_name, _ in targets))
    for name in ref_names:
        try:
            module(references[0], name)
        except KeyError:
            raise ValueError(f"layer {name!r} does not exist in the reference models; the "
                             f"repairable layers are {repair_layers(references[0])}") from None

    ref_stats = [channel_stats(ref, ref_names, batches) for ref in references]
    feed = _Feed(out, batches, max_cache_bytes)
    with _eval_mode(out), torch.no_grad():
        for path, ref_name, apply in targets:
            target_mean = sum(w * s[ref_name][0] for w, s in zip(weights, ref_stats, strict=True))
            target_std = sum(w * s[ref_name][1] for w, s in zip(weights, ref_stats, strict=True))
            mean, std = feed.stats([path], _cut_of(out, path))[path]
            if mean.shape != target_mean.shape:
                raise ValueError(f"{path} has {mean.numel()} channels but reference layer "
                                 f"{ref_name} has {target_mean.numel()}; are the widths the same?")
            target_mean, target_std = target_mean.to(mean.device), target_std.to(mean.device)
            apply(*_correction(mode, mean, std, target_mean, target_std, eps, path))
    return out


def remove_biases(model: nn.Module, k: int, *, from_end: bool = True) -> nn.Module:
    """Bias Removal (NOTES §2.8): zero the biases of the last k weight layers.

    With `from_end=False` the first k layers lose their biases instead (forward removal). Only
    conv/linear biases of `model.weight_layers` are zeroed; norm-layer biases are kept.
    """
    names = list(getattr(model, "weight_layers", []))
    if not names:
        raise TypeError(f"{type(model).__name__} lists no weight_layers; build it with "
                        "vfcore.build_model")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(names):
        raise ValueError(f"k must be an integer in [0, {len(names)}] (the model's weight layers),"
                         f" got {k!r}")
    out = copy.deepcopy(model)
    chosen = names[len(names) - k:] if from_end else names[:k]
    with torch.no_grad():
        for name in chosen:
            bias = module(out, name).bias
            if bias is not None:
                bias.zero_()
    return out


_SHORTCUT = re.compile(r"^(blocks\.\d+)\.shortcut\.\d+$")


def _bias_depths(model: nn.Module) -> dict[str, int]:
    """State key of each conv/linear bias -> its 1-based layer index for bias calibration.

    Weight layers count in forward order. A ResNet shortcut conv (biased only in plain ResNets)
    is not a counted layer; its output joins the block's conv2 output, so it takes conv2's index.
    """
    depth = {name: i for i, name in enumerate(model.weight_layers, start=1)}
    out: dict[str, int] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or layer.bias is None:
            continue
        if name in depth:
            out[f"{name}.bias"] = depth[name]
            continue
        match = _SHORTCUT.match(name)
        if match is None or f"{match[1]}.conv2" not in depth:
            raise ValueError(f"{name} has a bias but is not a weight layer of the model; bias "
                             "calibration does not know its depth")
        out[f"{name}.bias"] = depth[f"{match[1]}.conv2"]
    return out


def bias_calibrated_state(model: nn.Module, state_a: State, state_b: State,
                          alpha: float) -> State:
    """Bias Calibration (NOTES §2.8): interpolate weights, give biases the homogeneous weights.

    The bias of weight layer l (1-based over `model.weight_layers`) becomes
    (1 - alpha)^l b_a + alpha^l b_b; everything else, norm biases included, is interpolated
    linearly. This is the paper's layer index: the authors' code instead counts every state key
    containing "weight" (norm weights too) when it computes the exponent.
    """
    check_states(model.state_dict(), state_a)
    out = interpolate(state_a, state_b, alpha)
    for key, depth in _bias_depths(model).items():
        a, b = state_a[key], state_b[key].to(state_a[key].dtype)
        out[key] = (1 - alpha) ** depth * a + alpha ** depth * b
    return out
