"""PLeaS-style partial merging: a merged model between one endpoint's size and the ensemble's.

PLeaS (Nasery et al., "PLeaS: Merging Models with Permutations and Least Squares", CVPR 2025,
Sec. 3) in three steps:

1. Match. In every hidden layer, activation matching pairs each unit of model a with one of
   model b (the correlation assignment of `features.activation_matching`, computed here from
   the same `features.feature_statistics` so that the pairs' correlations are at hand).
2. Choose widths. The fraction q of matched pairs with the lowest correlation is kept apart (both
   units stay, side by side); every other pair becomes one merged unit. A layer of d units
   becomes d + k units, laid out as [merged | kept from a | kept from b]. As in PLeaS, no weight
   connects one model's kept units to the other's: the kept units of a read only the merged and
   a's kept inputs (a's *view* of the layer, d units), those of b only b's view, and merged units
   read everything. q = 1 is therefore the two endpoints side by side (the ensemble) and q = 0 a
   model of the endpoint's shape. One q serves every layer; it is found by bisection on the
   parameter count so that the merged model has about `budget` times an endpoint's parameters.
3. Fit. Layer by layer, in forward order, the weights are the closed-form least-squares map from
   the merged network's own inputs to that layer (computed by the layers fitted before it) to the
   targets: for a merged unit the alpha-weighted average of its two endpoint units'
   pre-activations, for a kept unit its own endpoint's pre-activation. The head is fitted to the
   alpha-weighted average of the endpoints' logits. (PLeaS's code minimises the same per-layer
   error by gradient descent, feeding each layer the endpoints' activations rather than the
   merged network's; here it is solved exactly.)

Pre-activations are the outputs of each convolution or linear layer, after its BatchNorm when the
endpoints have one (in eval mode BN is affine, so it belongs to the fitted map). The merged model
keeps a BatchNorm there, holding the calibration mean and variance of the fitted output as running
statistics and the affine that undoes them, so in eval mode it passes the fitted output through
unchanged and RESET on the same data starts from the statistics it would estimate. LayerNorm is
not affine: it stays after the fitted layer (the target is the convolution's output) as a
`SplitChannelNorm`, which normalises each unit with its own model's view of the layer.

Least squares runs on float64 moments (convolutions through `unfold`, i.e. im2col), with inputs
centred so that the bias is the fitted intercept. It is anchored at a prior: the endpoints'
weights carried into the merged coordinates (merged units: the alpha-average of the pair's
weights, kept units: their own). The ridge, `ridge` times the mean diagonal of the input
covariance, pulls the weights towards that prior rather than towards zero, and input directions
the calibration data never excite (zero padding at the border, units that never fire) keep their
prior weights instead of arbitrary ones (much as gradient descent started from the permutation
merge leaves what the data do not constrain where it started). `ridge=0` is ordinary least
squares (the solution nearest the prior when it is not unique); a huge ridge gives the
permutation merge with refitted biases.
Where the prior already reproduces the targets (budget 2, or a model merged with a permuted copy
of itself at any budget) the fit returns it unchanged, whatever the calibration data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .device import model_device
from .features import FeatureStats, assignment, feature_statistics
from .hooks import Batch, batch_inputs, eval_mode
from .merge import check_alpha
from .models import MLP, VGG, ChannelLayerNorm, check_compatible, num_parameters

CHUNK_BYTES = 1 << 28  # largest float64 im2col block formed at once


@dataclass(frozen=True)
class Split:
    """The unit layout of one merged layer: m merged units, then k of a's, then k of b's."""

    m: int
    k: int

    @property
    def width(self) -> int:
        return self.m + 2 * self.k

    def view(self, which: int) -> torch.Tensor:
        """Indices of model a's (which=0) or b's (which=1) d = m + k units in this layer."""
        kept = torch.arange(self.m + which * self.k, self.m + (which + 1) * self.k)
        return torch.cat([torch.arange(self.m), kept])


@dataclass(frozen=True)
class Units:
    """Which endpoint units make up one merged hidden layer (indices in each endpoint).

    Merged unit i averages a's unit `merged_a[i]` with b's `merged_b[i]`; the kept units are
    the least correlated matched pairs, `kept_a[j]` paired with `kept_b[j]`. `correlation[i]` is
    the correlation of a's unit i with its match in b.
    """

    merged_a: torch.Tensor
    merged_b: torch.Tensor
    kept_a: torch.Tensor
    kept_b: torch.Tensor
    correlation: torch.Tensor


class SplitLayer(nn.Module):
    """A convolution or linear layer whose kept output units read only their own model's view.

    Output layout [merged | kept a | kept b]: `merged` reads every input unit, `kept_a` the
    merged and a's kept inputs, `kept_b` the merged and b's kept inputs (PLeaS's block-sparse
    weights). Parts with no units are None.
    """

    def __init__(self, template: nn.Conv2d | nn.Linear, inputs: Split, outputs: Split,
                 factory: dict):
        super().__init__()
        if isinstance(template, nn.Conv2d) and (template.groups != 1
                                                or template.padding_mode != "zeros"):
            raise ValueError("PLeaS fits plain convolutions only (groups=1, zero padding)")

        def make(n_in: int, n_out: int) -> nn.Module | None:
            if n_out == 0:
                return None
            if isinstance(template, nn.Conv2d):
                t = template
                return nn.Conv2d(n_in, n_out, t.kernel_size, t.stride, t.padding, t.dilation,
                                 **factory)
            return nn.Linear(n_in, n_out, **factory)

        self.inputs, self.outputs = inputs, outputs
        self.geometry = ((template.kernel_size, template.dilation, template.padding,
                          template.stride) if isinstance(template, nn.Conv2d) else None)
        self.merged = make(inputs.width, outputs.m)
        self.kept_a = make(inputs.m + inputs.k, outputs.k)
        self.kept_b = make(inputs.m + inputs.k, outputs.k)
        self.register_buffer("view_b", inputs.view(1).to(factory["device"]), persistent=False)

    @property
    def kernel_elements(self) -> int:
        return math.prod(self.geometry[0]) if self.geometry is not None else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.merged is not None:
            parts.append(self.merged(x))
        if self.kept_a is not None:
            parts.append(self.kept_a(x[:, :self.inputs.m + self.inputs.k]))
            parts.append(self.kept_b(x.index_select(1, self.view_b)))
        return torch.cat(parts, dim=1)

    def samples(self, x: torch.Tensor) -> torch.Tensor:
        """The least-squares rows of input x: im2col patches for a conv, x itself otherwise.

        Columns run channel-major (channel c owns columns c*r .. c*r + r - 1, r kernel elements),
        the layout of a conv weight flattened to (out, in * r).
        """
        if self.geometry is None:
            return x
        cols = F.unfold(x, *self.geometry)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def columns(self, which: int | None) -> torch.Tensor:
        """Sample columns of the whole input (None) or of model a's (0) or b's (1) view."""
        r = self.kernel_elements
        channels = (torch.arange(self.inputs.width) if which is None
                    else self.inputs.view(which))
        return (channels[:, None] * r + torch.arange(r)).flatten().to(self.view_b.device)

    def parts(self) -> list[tuple[nn.Module, int | None, slice]]:
        """(sub-layer, view it reads, slice of the output units it writes) for each part."""
        m, k = self.outputs.m, self.outputs.k
        spans = [(self.merged, None, slice(0, m)), (self.kept_a, 0, slice(m, m + k)),
                 (self.kept_b, 1, slice(m + k, m + 2 * k))]
        return [(layer, view, span) for layer, view, span in spans if layer is not None]


class SplitChannelNorm(nn.Module):
    """Channel LayerNorm of a partially merged layer: each unit uses its own model's view.

    The paper's LN for CNNs normalises over an endpoint's d channels at each position. Here the
    kept units of a are normalised with the mean and std over a's view (merged + a's kept units),
    those of b over b's view, and merged units with the alpha-weighted mean and std of the two
    views. With nothing kept this is the endpoint's LN; with everything kept, the two endpoints'.
    """

    def __init__(self, split: Split, alpha: float, eps: float, factory: dict):
        super().__init__()
        self.split, self.alpha, self.eps = split, alpha, eps
        self.weight = nn.Parameter(torch.ones(split.width, **factory))
        self.bias = nn.Parameter(torch.zeros(split.width, **factory))
        self.register_buffer("view_b", split.view(1).to(factory["device"]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, k = self.split.m, self.split.k
        stats = []
        for view in (x[:, :m + k], x.index_select(1, self.view_b)):
            var, mean = torch.var_mean(view, dim=1, correction=0, keepdim=True)
            stats.append((mean, (var + self.eps).sqrt()))
        (mean_a, std_a), (mean_b, std_b) = stats
        mean = torch.cat([torch.lerp(mean_a, mean_b, self.alpha).expand(-1, m, -1, -1),
                          mean_a.expand(-1, k, -1, -1), mean_b.expand(-1, k, -1, -1)], dim=1)
        std = torch.cat([torch.lerp(std_a, std_b, self.alpha).expand(-1, m, -1, -1),
                         std_a.expand(-1, k, -1, -1), std_b.expand(-1, k, -1, -1)], dim=1)
        shape = (1, -1, 1, 1)
        return (x - mean) / std * self.weight.view(shape) + self.bias.view(shape)


class PLeaSNet(nn.Module):
    """A partially merged network in the layout of vfcore's VGG (or MLP): `features`, then global
    average pooling (VGG only), then `classifier`.

    `weight_layers` names the fitted layers in forward order; `units` maps each endpoint hidden
    layer's name to the `Units` it was built from; `kept_fraction` is the fraction of matched
    pairs kept apart (about the same in every layer); `budget` the parameter count over an
    endpoint's.
    """

    def __init__(self, features: nn.Sequential, classifier: SplitLayer, *, pooled: bool,
                 units: dict[str, Units], kept_fraction: float, budget: float):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1) if pooled else nn.Identity()
        self.classifier = classifier
        self.pooled = pooled
        self.units = units
        self.kept_fraction = kept_fraction
        self.budget = budget
        self.starts = [i for i, m in enumerate(features) if isinstance(m, SplitLayer)]
        self.weight_layers = [f"features.{i}" for i in self.starts] + ["classifier"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x if self.pooled else x.flatten(1))
        return self.classifier(self.pool(h).flatten(1))

    def fitted_layers(self) -> list[SplitLayer]:
        """The weight layers, in forward order."""
        return [self.features[i] for i in self.starts] + [self.classifier]

    def stage(self, i: int) -> nn.Sequential:
        """Hidden weight layer i and everything after it up to the next weight layer's input."""
        if i + 1 < len(self.starts):
            return self.features[self.starts[i]:self.starts[i + 1]]
        return nn.Sequential(*self.features[self.starts[i]:], self.pool, nn.Flatten())


# ----------------------------------------------------------------------------- endpoint layout


@dataclass(frozen=True)
class _Layer:
    """One weight layer of an endpoint: `pre` computes its pre-activation from its input (the
    layer, then its BatchNorm if any), `post` the next weight layer's input from that."""

    name: str
    layer: nn.Conv2d | nn.Linear
    pre: nn.Sequential
    post: nn.Sequential


def _layers(model: nn.Module) -> list[_Layer]:
    """The endpoint's weight layers in forward order; the last is the head."""
    if type(model) is VGG:
        prefix, trunk = "features", list(model.features)
        head = ("classifier", model.classifier)
        to_head: list[nn.Module] = [model.pool, nn.Flatten()]
    elif type(model) is MLP:
        prefix, trunk = "layers", list(model.layers[:-1])
        head, to_head = (f"layers.{len(trunk)}", model.layers[-1]), []
    else:
        raise TypeError(f"PLeaS merging supports vfcore's VGG and MLP models, not "
                        f"{type(model).__name__}")
    starts = [i for i, m in enumerate(trunk) if isinstance(m, nn.Conv2d | nn.Linear)]
    out = []
    for start, end in zip(starts, [*starts[1:], len(trunk)], strict=True):
        split = start + 1 + int(start + 1 < end and isinstance(trunk[start + 1], nn.BatchNorm2d))
        post = trunk[split:end] + (to_head if end == len(trunk) else [])
        out.append(_Layer(f"{prefix}.{start}", trunk[start], nn.Sequential(*trunk[start:split]),
                          nn.Sequential(*post)))
    return [*out, _Layer(head[0], head[1], nn.Sequential(head[1]), nn.Sequential())]


def _after(layer: _Layer) -> list[nn.Module]:
    """The modules between an endpoint's hidden layer and the next (pooling to the head aside)."""
    return [m for m in [*layer.pre[1:], *layer.post]
            if not isinstance(m, nn.AdaptiveAvgPool2d | nn.Flatten)]


# ----------------------------------------------------------------------------- widths and budget


def _splits(layers: list[_Layer], kept: Sequence[int]) -> list[Split]:
    """Input split of the first layer, then the output split of every weight layer."""
    first = layers[0].layer
    n_in = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
    widths = [lay.layer.weight.shape[0] for lay in layers]
    return [Split(n_in, 0)] + [Split(d - k, k) for d, k in zip(widths[:-1], kept, strict=True)] \
        + [Split(widths[-1], 0)]


@dataclass(frozen=True)
class _Sizes:
    """What the parameter count of a PLeaS model depends on, per weight layer: its output
    width, kernel elements and norm parameters per unit (plus the first layer's input width)."""

    n_in: int
    widths: tuple[int, ...]
    kernels: tuple[int, ...]
    norm_per_unit: tuple[int, ...]

    @classmethod
    def of(cls, model: nn.Module) -> _Sizes:
        layers = _layers(model)
        widths = tuple(lay.layer.weight.shape[0] for lay in layers)
        norms = [[m for m in _after(lay) if isinstance(m, nn.BatchNorm2d | ChannelLayerNorm)]
                 for lay in layers]
        return cls(_splits(layers, [0] * (len(layers) - 1))[0].m, widths,
                   tuple(lay.layer.weight[0, 0].numel() for lay in layers),
                   tuple(sum(p.numel() for m in ms for p in m.parameters()) // d
                         for ms, d in zip(norms, widths, strict=True)))

    def kept(self, q: float) -> list[int]:
        """Pairs kept apart per hidden layer at fraction q: round(q * d_l)."""
        return [math.floor(q * d + 0.5) for d in self.widths[:-1]]

    def parameters(self, kept: Sequence[int]) -> int:
        outs = [Split(d - k, k) for d, k in zip(self.widths[:-1], kept, strict=True)]
        splits = [Split(self.n_in, 0), *outs, Split(self.widths[-1], 0)]
        total = 0
        for inp, out, r, norm in zip(splits[:-1], splits[1:], self.kernels, self.norm_per_unit,
                                     strict=True):
            total += out.m * (inp.width * r + 1) + 2 * out.k * ((inp.m + inp.k) * r + 1)
            total += out.width * norm
        return total


def planned_parameters(model: nn.Module, kept: Sequence[int]) -> int:
    """Parameters of the PLeaS model of `model` with kept[l] pairs kept apart in hidden layer l."""
    return _Sizes.of(model).parameters(kept)


def plan_widths(model: nn.Module, budget: float) -> tuple[float, list[int]]:
    """Per hidden layer, how many matched pairs to keep apart for a parameter budget, and the
    fraction of all pairs that makes.

    One fraction q for all hidden layers keeps round(q * d_l) pairs of a d_l-unit layer; q is found
    by bisection on the parameter count (a non-decreasing step function of q), choosing whichever
    side of the last step lies closer to budget times the endpoint's count. Budget 1 keeps
    nothing apart; budget 2 keeps everything (the ensemble, whose heads share one bias vector
    here: `num_classes` parameters fewer than two endpoints).
    """
    _check_budget(budget)
    sizes = _Sizes.of(model)
    target = budget * num_parameters(model)
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if sizes.parameters(sizes.kept(mid)) < target:
            lo = mid
        else:
            hi = mid
    kept = min((sizes.kept(lo), sizes.kept(hi)), key=lambda k: abs(sizes.parameters(k) - target))
    return sum(kept) / sum(sizes.widths[:-1]), kept


def _units(stats: FeatureStats, k: int, device: torch.device) -> Units:
    """Match units by correlation; keep the k least correlated pairs apart."""
    d = stats.d
    cross = stats.corr[:d, d:]
    match = assignment(cross).to(device)
    corr = cross[torch.arange(d, device=cross.device), match.to(cross.device)].to(device)
    order = torch.sort(corr, stable=True).indices
    kept = order[:k].sort().values
    merged = order[k:].sort().values
    return Units(merged, match[merged], kept, match[kept], corr)


# ----------------------------------------------------------------------------- least squares


class LeastSquares:
    """Streaming float64 sums of layer inputs x (n, f) and targets t (n, o) for least squares."""

    def __init__(self, f: int, o: int, device: torch.device | str | None = None):
        kw = dict(dtype=torch.float64, device=device)
        self.n = 0
        self.sx, self.st = torch.zeros(f, **kw), torch.zeros(o, **kw)
        self.sxx, self.sxt = torch.zeros(f, f, **kw), torch.zeros(f, o, **kw)

    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        if x.dim() != 2 or t.dim() != 2 or x.shape[0] != t.shape[0]:
            raise ValueError(f"expected (n, f) inputs and (n, o) targets, got {tuple(x.shape)} "
                             f"and {tuple(t.shape)}")
        x, t = x.double(), t.double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.st += t.sum(0)
        self.sxx.addmm_(x.T, x)
        self.sxt.addmm_(x.T, t)

    def covariance(self, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Input covariance (population), restricted to the given columns."""
        if self.n == 0:
            raise ValueError("no samples were added; give at least one calibration batch")
        sx, sxx = self.sx, self.sxx
        if cols is not None:
            sx, sxx = sx[cols], sxx[cols][:, cols]
        mean = sx / self.n
        return sxx / self.n - torch.outer(mean, mean)

    def solve(self, ridge: float, cols: torch.Tensor | None = None,
              outputs: slice = slice(None), prior: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights W (o, f) and bias b (o,) minimising mean ||W x + b - t||^2 + lam ||W - P||^2
        over the given input columns and target outputs, for a prior P (o, f) (zero if None).

        lam = ridge * mean diagonal of the input covariance, solved by Cholesky. With lam = 0 the
        covariance is inverted through its eigendecomposition, dropping eigenvalues at round-off
        level: the least-squares solution nearest P, defined even with input columns that never
        vary (zero padding, dead units), which keep their prior weights.
        """
        cov = self.covariance(cols)
        mean_x = (self.sx if cols is None else self.sx[cols]) / self.n
        sxt = self.sxt if cols is None else self.sxt[cols]
        mean_t = self.st[outputs] / self.n
        cross = sxt[:, outputs] / self.n - torch.outer(mean_x, mean_t)
        start = torch.zeros_like(cross) if prior is None else prior.T.to(cross)
        residual = cross - cov @ start
        lam = ridge * float(cov.diagonal().mean().clamp_min(0))
        if lam > 0:
            cov.diagonal().add_(lam)
            step = torch.cholesky_solve(residual, torch.linalg.cholesky(cov))
        else:
            evals, evecs = torch.linalg.eigh(cov)
            tol = float(evals.abs().max()) * cov.shape[0] * torch.finfo(torch.float64).eps
            inv = torch.where(evals > tol, 1 / evals, torch.zeros_like(evals))
            step = (evecs * inv) @ (evecs.T @ residual)
        w = start + step
        return w.T, mean_t - mean_x @ w


# ----------------------------------------------------------------------------- building, fitting


def _targets(za: torch.Tensor, zb: torch.Tensor, units: Units | None, alpha: float
             ) -> torch.Tensor:
    """Targets of one merged layer: averaged pairs, then a's and b's kept units."""
    if units is None:
        return torch.lerp(za, zb, alpha)
    merged = torch.lerp(za.index_select(1, units.merged_a), zb.index_select(1, units.merged_b),
                        alpha)
    return torch.cat([merged, za.index_select(1, units.kept_a),
                      zb.index_select(1, units.kept_b)], dim=1)


def _rows(z: torch.Tensor) -> torch.Tensor:
    """(N, o, ...) targets as (N * positions, o) rows, in the order `unfold` gives patches."""
    return z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1]) if z.dim() > 2 else z


def _skeleton(layers: tuple[list[_Layer], list[_Layer]], units: list[Units], alpha: float
              ) -> tuple[nn.Sequential, SplitLayer]:
    """The merged network's layers (on the endpoints' device, in their dtype), with LayerNorm
    affines set and every fitted weight still at its initial value."""
    layers_a, layers_b = layers
    splits = _splits(layers_a, [len(u.kept_a) for u in units])
    weight = layers_a[0].layer.weight
    factory = {"device": weight.device, "dtype": weight.dtype}
    modules: list[nn.Module] = []
    for i, (la, lb, u) in enumerate(zip(layers_a[:-1], layers_b[:-1], units, strict=True)):
        out = splits[i + 1]
        modules.append(SplitLayer(la.layer, splits[i], out, factory))
        for ma, mb in zip(_after(la), _after(lb), strict=True):
            if isinstance(ma, nn.BatchNorm2d):
                modules.append(nn.BatchNorm2d(out.width, ma.eps, ma.momentum, **factory))
            elif isinstance(ma, ChannelLayerNorm):
                norm = SplitChannelNorm(out, alpha, ma.eps, factory)
                for name in ("weight", "bias"):
                    pa, pb = getattr(ma, name).detach(), getattr(mb, name).detach()
                    getattr(norm, name).copy_(_targets(pa[None], pb[None], u, alpha)[0])
                modules.append(norm)
            elif isinstance(ma, nn.ReLU | nn.MaxPool2d):
                modules.append(copy.deepcopy(ma))
            else:
                raise TypeError(f"PLeaS cannot carry a {type(ma).__name__} after {la.name}")
    head = SplitLayer(layers_a[-1].layer, splits[-2], splits[-1], factory)
    return nn.Sequential(*modules), head


def _identity(n: int, device: torch.device) -> Units:
    """Units of a layer that is not split (the input, the logits): unit i is unit i of both."""
    every, none = torch.arange(n, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return Units(every, every, none, none, torch.ones(n, dtype=torch.float64, device=device))


def _folded(pre: nn.Sequential) -> torch.Tensor:
    """Weight (float64) of an endpoint's affine map to a pre-activation, its eval-mode BatchNorm
    folded in (the bias needs no prior: it is fitted to the means)."""
    w = pre[0].weight.double()
    if len(pre) > 1:
        bn = pre[1]
        scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
        w = w * scale.view(-1, *[1] * (w.dim() - 1))
    return w


def _priors(wa: torch.Tensor, wb: torch.Tensor, inputs: Units, outputs: Units, alpha: float
            ) -> dict[int | None, torch.Tensor]:
    """The endpoints' weights in the merged layer's coordinates, per part (None: merged units,
    0 / 1: a's / b's kept units), flattened to (units, view columns).

    Merged units take the alpha-average of their pair's weights from the merged inputs and each
    endpoint's share of its weights from that endpoint's kept inputs; kept units take their own
    endpoint's weights. With every pair matched exactly (or kept apart) these reproduce the
    targets: a prior that least squares only corrects.
    """
    def pick(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return w.index_select(0, rows).index_select(1, cols)

    o, i = outputs, inputs
    merged = torch.cat([(1 - alpha) * pick(wa, o.merged_a, i.merged_a)
                        + alpha * pick(wb, o.merged_b, i.merged_b),
                        (1 - alpha) * pick(wa, o.merged_a, i.kept_a),
                        alpha * pick(wb, o.merged_b, i.kept_b)], dim=1)
    kept_a = torch.cat([pick(wa, o.kept_a, i.merged_a), pick(wa, o.kept_a, i.kept_a)], dim=1)
    kept_b = torch.cat([pick(wb, o.kept_b, i.merged_b), pick(wb, o.kept_b, i.kept_b)], dim=1)
    return {None: merged.flatten(1), 0: kept_a.flatten(1), 1: kept_b.flatten(1)}


def _fit(net: PLeaSNet, layers: tuple[list[_Layer], list[_Layer]], units: list[Units],
         inputs: list[torch.Tensor], alpha: float, ridge: float) -> None:
    """Solve the weight layers of `net` in forward order from the calibration inputs.

    Per batch, the inputs of the current weight layer are cached for the merged network and
    both endpoints; after a layer is solved, its inputs are pushed through it (and what follows)
    to give the next layer's, so each network runs once over the calibration data in all.
    """
    cache = [(x, x, x) for x in inputs]
    fitted = net.fitted_layers()
    device = inputs[0].device
    ends = [_identity(fitted[0].inputs.m, device), *units,
            _identity(fitted[-1].outputs.m, device)]
    for i, layer in enumerate(fitted):
        r = layer.kernel_elements
        lsq = LeastSquares(layer.inputs.width * r, layer.outputs.width, device)
        advanced = []
        for hm, ha, hb in cache:
            za, zb = layers[0][i].pre(ha), layers[1][i].pre(hb)
            t = _targets(za, zb, units[i] if i < len(units) else None, alpha)
            chunk = max(1, CHUNK_BYTES // (8 * hm.shape[1] * r * (t[0].numel() // t.shape[1])))
            for hc, tc in zip(hm.split(chunk), t.split(chunk), strict=True):
                lsq.add(layer.samples(hc), _rows(tc))
            advanced.append((layers[0][i].post(za), layers[1][i].post(zb)))
        stage = net.stage(i) if i < len(units) else None
        bn = stage[1] if stage is not None and isinstance(stage[1], nn.BatchNorm2d) else None
        priors = _priors(_folded(layers[0][i].pre), _folded(layers[1][i].pre), ends[i],
                         ends[i + 1], alpha)
        _solve_into(layer, lsq, ridge, priors, bn)
        if stage is not None:
            cache = [(stage(hm), ha, hb) for (hm, _, _), (ha, hb) in zip(cache, advanced,
                                                                          strict=True)]


def _solve_into(layer: SplitLayer, lsq: LeastSquares, ridge: float,
                priors: dict[int | None, torch.Tensor], bn: nn.BatchNorm2d | None) -> None:
    """Set each part of `layer` to its least-squares solution, and the BatchNorm after it (if
    any) to pass the fitted output through unchanged, holding its calibration statistics."""
    for sub, view, span in layer.parts():
        cols = layer.columns(view)
        w, b = lsq.solve(ridge, cols, span, priors[view])
        sub.weight.copy_(w.reshape(sub.weight.shape))
        sub.bias.copy_(b)
        if bn is not None:
            var = ((w @ lsq.covariance(cols)) * w).sum(1).clamp_min(0)
            mean = b + w @ (lsq.sx[cols] / lsq.n)
            bn.running_mean[span] = mean
            bn.running_var[span] = var
            bn.weight[span] = (var + bn.eps).sqrt()
            bn.bias[span] = mean


def _check_budget(budget: float) -> None:
    if isinstance(budget, bool) or not (isinstance(budget, int | float) and 1 <= budget <= 2):
        raise ValueError(f"budget must lie in [1, 2] (parameters over one endpoint's: 1 merges "
                         f"every unit, 2 is the ensemble), got {budget!r}")


@torch.no_grad()
def pleas_merge(model_a: nn.Module, model_b: nn.Module, batches: Iterable[Batch], *,
                budget: float, alpha: float = 0.5, ridge: float = 1e-4) -> PLeaSNet:
    """Merge two endpoints (vfcore VGG or MLP) PLeaS-style into a model of `budget` times an
    endpoint's parameters (1: every unit merged, 2: the ensemble), see the module docstring.

    `batches` (a list of input tensors or (x, y) pairs) serves both the matching and the fits;
    the fit holds one layer's activations of all of it (merged network and both endpoints) at a
    time. A layer's weights are determined by the data only where the calibration inputs vary
    (more samples, images times positions, than the layer's input width times its kernel size);
    elsewhere they keep the endpoints' weights. Units that never fire on the calibration data
    cannot be matched meaningfully: use data from the endpoints' input distribution. The
    endpoints are used in eval mode and left unchanged; the result is in eval mode on their
    device, in their dtype. `units` and `kept_fraction` on the result say what was merged.
    """
    check_alpha(alpha)
    _check_budget(budget)
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    if isinstance(batches, torch.Tensor | Iterator):
        raise TypeError("batches must be a list of batches (it is iterated twice); wrap a single "
                        "tensor as [x] and an iterator as list(...)")
    batches = list(batches)
    check_compatible(model_a, model_b)
    layers = (_layers(model_a), _layers(model_b))
    device = model_device(model_a)
    inputs = [batch_inputs(batch).to(device) for batch in batches]
    if not inputs:
        raise ValueError("batches is empty; give at least one calibration batch")
    if type(model_a) is MLP:
        inputs = [x.flatten(1) for x in inputs]
    q, kept = plan_widths(model_a, budget)
    names = [lay.name for lay in layers[0][:-1]]
    with eval_mode(model_a, model_b):
        stats = feature_statistics(model_a, model_b, batches)
        units = [_units(stats[name], k, device) for name, k in zip(names, kept, strict=True)]
        features, head = _skeleton(layers, units, alpha)
        net = PLeaSNet(features, head, pooled=type(model_a) is VGG,
                       units=dict(zip(names, units, strict=True)), kept_fraction=q,
                       budget=planned_parameters(model_a, kept) / num_parameters(model_a))
        _fit(net.eval(), layers, units, inputs, alpha, ridge)
    net.config = model_a.config  # the endpoints' input size, so that data is fed alike
    return net


@torch.no_grad()
def pleas_cost(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, multiply-accumulates per sample) of any model on inputs of `input_shape`
    (batch dimension included, e.g. (1, 3, 32, 32)).

    MACs count convolutions and linear layers (as the PFM costs do): per output element, the
    layer's fan-in. Works for endpoints and PLeaS models alike, so ratios compare the two.
    """
    macs = 0

    def count(m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out[0].numel() * m.weight[0].numel()

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with eval_mode(model):
            model(torch.zeros(input_shape, device=model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return num_parameters(model), macs
