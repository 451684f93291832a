"""Closed-form layer-wise regression merges after alignment: RegMean and Chain of Merges.

RegMean (Jin et al., ICLR 2023) merges each linear map by least squares: the merged weight W
reproduces, on calibration inputs, the outputs each endpoint computes from its own inputs. Chain
of Merges (Buzzega et al., 2025) and RegMean++ (2025) merge the layers in forward order and feed
the regression the inputs of the *already merged* prefix, so that later layers fit what the
merged network really sees. Here both run after an alignment (`vfcore.align`), which puts the two
endpoints in one coordinate system, so the regression is between matched units.

Per conv/linear layer, with weights w_i = (1 - alpha, alpha), endpoint weights W_i (output x
input, a conv flattened to out x (in * kh * kw)), endpoint inputs X_i and regression inputs S_i
(rows are samples: im2col patches for a conv), the merged weight minimises

    sum_i w_i ||S_i W^T - X_i W_i^T||^2 + lam ||(W - W_avg) D^(1/2)||^2,

    W_avg = sum_i w_i W_i,   A = sum_i w_i S_i^T S_i,   D = diag(A),

whose solution is W^T = W_avg^T + (A + lam D)^+ sum_i w_i S_i^T (X_i W_i^T - S_i W_avg^T).
"regmean" takes S_i = X_i; "chain" takes S_i = X_hat, the merged prefix's inputs, so its targets
are the endpoints' own outputs on their own inputs and the cross term is X_hat^T X_i W_i^T.
lam = 0 is the pure regression, lam -> infinity the weighted average of the aligned weights, and
a model merged with itself comes back unchanged for every lam (the pseudo-inverse acts on the
difference from the average, which is then exactly zero).

The regulariser differs from RegMean's own. RegMean shrinks the off-diagonal of each endpoint's
Gram, G_i -> diag(G_i) + a (G_i - diag(G_i)), on both sides of its normal equations; as a -> 0
that tends to a per-input-feature average weighted by diag(G_i), not to W_avg. We shrink toward
W_avg with one shared D = diag(A): the left-hand side A + lam D is RegMean's shrunk Gram with
a = 1 / (1 + lam) (up to the factor 1 + lam), and the two coincide when the endpoints' input
energies diag(G_i) agree. D scales the penalty per input feature, so lam is unit-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from itertools import zip_longest

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .align import Alignment
from .device import model_device
from .feed import Feed
from .hooks import Batch, batch_inputs, eval_mode, hooked, module
from .merge import check_alpha, check_states, interpolate, with_state
from .models import has_batchnorm
from .normalize import reset_bn
from .trace import Structure, TraceError, structure

VARIANTS = ("regmean", "chain")
RCOND = 1e-10
"""Eigen-directions of A + lam D below this fraction of its largest eigenvalue count as unseen by
the calibration data; the merged weight keeps the weighted average there."""


def _check_batches(batches: Sequence[Batch]) -> list[Batch]:
    if isinstance(batches, (torch.Tensor, Iterator)):
        raise TypeError("batches must be a list of batches (each layer reads them again); wrap "
                        "one tensor as [x] and an iterator as list(...)")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; give at least one calibration batch")
    return batches


def _check_layer(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"
                                         or isinstance(layer.padding, str)):
        raise ValueError(f"conv {name!r} has groups={layer.groups}, padding={layer.padding!r}, "
                         f"padding_mode={layer.padding_mode!r}; only ungrouped convs with "
                         "numeric zero padding can be regressed")


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The model's Conv2d and Linear layers in the order a forward pass on x first calls them.

    A layer called twice (shared weights) or never is an error: it has no single input to regress.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    other = [name for name, m in model.named_modules()
             if isinstance(m, nn.modules.conv._ConvNd) and name not in layers]
    if not layers or other:
        raise TypeError(f"{type(model).__name__} needs Conv2d/Linear layers only; it has "
                        f"{len(layers)} of them and other convs {other}")
    calls: list[str] = []

    def count(name: str):
        return lambda _m, _args: calls.append(name)

    with eval_mode(model), torch.no_grad(), hooked(model, {n: count(n) for n in layers},
                                                   pre=True):
        model(x[:1])
    twice = sorted({n for n in calls if calls.count(n) > 1})
    missing = [n for n in layers if n not in calls]
    if twice or missing:
        raise ValueError(f"layers called more than once {twice} or never {missing} in a forward "
                         "pass; each regressed layer must run exactly once")
    for name in calls:
        _check_layer(name, layers[name])
    return calls


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as regression rows, in its own dtype: for a conv, one row per output
    position holding its receptive field (im2col, ordered like the flattened weight). The
    windows are strided views of the padded input, copied once into rows."""
    x = x.detach()
    if isinstance(layer, nn.Conv2d):
        (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (layer.kernel_size, layer.stride,
                                                  layer.dilation, layer.padding)
        windows = F.pad(x, (pw, pw, ph, ph)).unfold(2, dh * (kh - 1) + 1, sh)
        windows = windows.unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
        return windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)
    return x.reshape(-1, layer.in_features)


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.detach().double().reshape(w.shape[0], -1)


@torch.no_grad()
def _solve_layer(name: str, merged: nn.Module, endpoints: list[nn.Module], weights: list[float],
                 feeds: list[Feed], cut: int | None, lam: float, chain: bool) -> torch.Tensor:
    """The merged weight of one layer, in the layer's shape and dtype. `feeds` hold the endpoints'
    passes, then the merged model's (read for "chain" only), which go batch by batch together."""
    layer = module(merged, name)
    own = [_flat(module(e, name).weight) for e in endpoints]
    average = torch.lerp(own[0], own[1], weights[1])
    p = average.shape[1]
    device = layer.weight.device
    gram = torch.zeros(p, p, dtype=torch.float64, device=device)
    cross = torch.zeros(p, average.shape[0], dtype=torch.float64, device=device)
    own_narrow = [w.to(layer.weight.dtype) for w in own]
    average_narrow = average.to(layer.weight.dtype)
    used = [k for k, w_i in enumerate(weights) if w_i != 0] + ([len(endpoints)] if chain else [])
    rows: dict[int, torch.Tensor] = {}

    def keep(k: int) -> Callable[[str, torch.Tensor], None]:
        return lambda _name, x: rows.__setitem__(k, _rows(layer, x))

    for _ in zip_longest(*(feeds[k].each([name], keep(k), cut, inputs=[name]) for k in used)):
        shared = rows[len(endpoints)] if chain else None
        for k, (w_i, weight) in enumerate(zip(weights, own_narrow, strict=True)):
            if w_i == 0:
                continue
            source = rows[k] if shared is None else shared
            gram.add_((source.T @ source).double(), alpha=w_i)
            residual = rows[k] @ weight.T - source @ average_narrow.T
            cross.add_((source.T @ residual).double(), alpha=w_i)
    system = gram + lam * torch.diag(gram.diagonal())
    delta = torch.linalg.pinv(system, rtol=RCOND, hermitian=True) @ cross
    return (average + delta.T).reshape(layer.weight.shape).to(layer.weight.dtype)


@torch.no_grad()
def _reestimate_prefix(model: nn.Module, name: str, feed: Feed, cut: int | None) -> None:
    """RESET (Algorithm 1) in place for the BatchNorms that run before layer `name`: each batch is
    forwarded in training mode, with momentum None (cumulative average), only up to that layer,
    from the training-mode values `feed` cached at `cut` where it has them.

    Each BatchNorm is reset when the pass first reaches it. Those before the cut do not run and
    keep what the previous step estimated, which is what re-estimating them would give again:
    their inputs come from the final layers before them. `reset_bn` would instead copy the model
    and run it from the input to the end for every layer of the chain.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    reached: set[nn.Module] = set()

    def reset(bn: nn.Module, _args: tuple) -> None:
        if bn not in reached:
            reached.add(bn)
            bn.reset_running_stats()
            bn.momentum = None

    handles = [m.register_forward_pre_hook(reset) for m in bns]
    model.train()
    try:
        for _ in feed.each([name], lambda _n, _t: None, cut, inputs=[name]):
            pass
    finally:
        for h in handles:
            h.remove()
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def _traced(model: nn.Module, batches: list[Batch]) -> Structure | None:
    """The model's traced structure, for passes that resume at cuts; None where it cannot be
    traced (every pass then starts from the input)."""
    try:
        return structure(model, batch_inputs(batches[0]))
    except TraceError:
        return None


def regression_merge(model_a: nn.Module, model_b: nn.Module, alignment: Alignment,
                     batches: Sequence[Batch], *, alpha: float = 0.5, lam: float = 0.1,
                     variant: str = "regmean", max_cache_bytes: int = 2**30) -> nn.Module:
    """A new model of the endpoints' architecture whose conv/linear weights are the regression
    merge of the aligned endpoints (module docstring), in eval mode on model_a's device.

    The regression target is each layer's own linear map (a ResidualLinear's identity path and
    ResNet shortcuts are outside it; shortcut convs are layers of their own). Every other
    floating tensor (biases, norm parameters) is interpolated with weight alpha; the weights
    start there too, so "chain" sees averaged layers beyond the merged prefix (which do not
    affect its inputs). Biases are not regressed: with a shared regression input and averaged
    biases, the bias terms cancel from the normal equations, so the weights still minimise the
    output error given the averaged bias. BatchNorm statistics are re-estimated on `batches`
    (`reset_bn`) at the end and, for "chain", before each layer's inputs are read (those of the
    merged prefix only), so the prefix runs with its own statistics. Each batch's Gram is taken in
    the layer's dtype (the BLAS-speed part) and summed over batches in float64; one layer's
    (in x in) Gram is held at a time. Each model's passes resume from the values they cached at
    the last cut before the layer (`vfcore.feed`; up to `max_cache_bytes` in all), so the sweep
    costs about two forward passes per batch and model instead of one per layer. `lam` >= 0 may
    be math.inf (then the result is the interpolated model, BN statistics re-estimated).

    Only `alignment.states` is read: endpoint i is model_a's architecture holding states[i],
    which computes endpoint i's own function for permutation alignments. ZipIt!'s maps depend on
    alpha: pass `alignment.at(alpha)`.
    """
    check_alpha(alpha)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam must be a number >= 0 (0: pure regression, inf: averaging), got "
                         f"{lam!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    batches = _check_batches(batches)
    reference = model_a.state_dict()
    check_states(reference, model_b.state_dict())
    for state in alignment.states:
        check_states(reference, state)
    endpoints = [with_state(model_a, state) for state in alignment.states]
    merged = with_state(model_a, interpolate(*alignment.states, alpha))
    weights = [1.0 - alpha, alpha]
    device = model_device(model_a)
    order = [] if math.isinf(lam) else forward_order(merged, batch_inputs(batches[0]).to(device))
    bn = has_batchnorm(merged)
    chain = variant == "chain"
    traced = _traced(merged, batches) if order else None
    passes = 2 + int(chain) + int(chain and bn)  # endpoints, merged prefix, its BN estimates
    share = max_cache_bytes // passes
    feeds = [Feed(m, batches, share, traced) for m in (*endpoints, merged)]
    training = Feed(merged, batches, share, traced)
    for k, name in enumerate(order):
        cut = None if traced is None else traced.cut_before(name)
        if chain and bn and k > 0:
            _reestimate_prefix(merged, name, training, cut)
        with eval_mode(*endpoints, merged):
            weight = _solve_layer(name, merged, endpoints, weights, feeds, cut, float(lam), chain)
        with torch.no_grad():
            module(merged, name).weight.copy_(weight)
    if bn:
        merged = reset_bn(merged, batches)
    return merged.eval()

