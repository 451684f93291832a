"""Measuring the vanishing feature: input-induced features, offsets and their upper bounds.

Definitions follow the paper (Qu & Horváth, CPAL 2025). For the output f^(l) of layer l,
Def. 5.1 splits it into the input-induced feature g^(l)(x) = f^(l)(x) - f^(l)(0) and the
input-independent offset h^(l) = f^(l)(0); for linear networks this is the exact product-of-
weights decomposition of Eq. 2. A network shows the vanishing feature when E_x ||g^(l)(x)|| has a
non-increasing upper bound that ends small (Defs. 4.1, 4.2, 5.1). Here E_x ||g^(l)|| is measured,
normalised by reference models (the merge endpoints, or the unpruned model), turned into the
tight or smoothed upper-bound sequences, and resampled onto the paper's % of depth axis.

Where the authors' code differs from the paper, the paper is followed; each such place is named
in the docstring concerned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hooks import batch_inputs, eval_mode, forward_until
from .models import LinearNet, ResidualLinear
from .trace import structure

State = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Measurement points


def vf_layers(model: nn.Module, *, include_norms: bool = False) -> list[str]:
    """The modules whose outputs are measured, in forward order, from the traced structure.

    These are the model's L weight layers (the output of a ResidualLinear includes its
    identity). With `include_norms`, the normalisation layer applied to each weight layer's
    output (BatchNorm or LayerNorm, found in the traced graph; `nn.Identity` placeholders are
    not norms) follows it: the "pre-BN outputs included" sequence of Figs 2B, 5B, 11 and 12. The
    authors' code instead hooks every Conv2d, Linear, BatchNorm2d and LayerNorm, ResNet shortcut
    convolutions and their norms included; the paper counts only the L layers, and so does this
    function. A wrapper exposing the merged model as `model.merged` (PFM) gets its layers.
    """
    merged = getattr(model, "merged", None)
    traced = structure(merged if isinstance(merged, nn.Module) else model)
    out: list[str] = []
    for name in traced.weight_layers:
        out.append(name)
        norm = traced.norm_after[name]
        if include_norms and norm is not None:
            out.append(norm)
    return out


# ---------------------------------------------------------------------------------------------
# Feature norms over data


@dataclass(frozen=True)
class FeatureNorms:
    """Per-layer statistics of the input-induced feature and the offset (Def. 5.1).

    g_mean, g_std: mean and (population) standard deviation over samples of ||g^(l)(x)||_2.
    h: ||h^(l)||_2 = ||f^(l)(0)||_2. All arrays follow `layers`.
    """

    layers: list[str]
    g_mean: np.ndarray
    g_std: np.ndarray
    h: np.ndarray
    num_samples: int


def _as_input(model: nn.Module, item: torch.Tensor | Sequence) -> torch.Tensor:
    """The input tensor of a batch (`x` or `(x, y)`), in the model's dtype and on its device."""
    x = batch_inputs(item)
    if x.dim() < 2:
        raise TypeError("batches must yield input tensors (N, ...) or (inputs, labels) pairs")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return x if param is None else x.to(device=param.device, dtype=param.dtype)


def _check_layers(layers: Sequence[str]) -> list[str]:
    layers = list(layers)
    if not layers or not all(isinstance(n, str) for n in layers):
        raise ValueError("layers must be a non-empty list of module names; see vf_layers(model)")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers contains duplicates: {layers}")
    return layers


class _Recorder:
    """Accumulates per-sample ||f(x) - f(0)|| for one model over a stream of batches."""

    def __init__(self, model: nn.Module, layers: list[str]):
        self.model, self.layers = model, layers
        self.offsets: dict[str, torch.Tensor] | None = None
        self.norms: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def _keep_offset(self, name: str, out: torch.Tensor) -> None:
        self.offsets[name] = out.clone()

    def _add_norms(self, name: str, out: torch.Tensor) -> None:
        g = (out - self.offsets[name]).flatten(1)
        self.norms[name].append(torch.linalg.vector_norm(g, dim=1).double().cpu())

    def _forward(self, x: torch.Tensor) -> None:
        if self.offsets is None:
            self.offsets = {}
            zero = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
            forward_until(self.model, zero, self.layers, self._keep_offset)
        forward_until(self.model, x, self.layers, self._add_norms)

    @torch.no_grad()
    def update(self, item: torch.Tensor | Sequence) -> None:
        with eval_mode(self.model):
            self._forward(_as_input(self.model, item))

    def result(self) -> FeatureNorms:
        if self.offsets is None:
            raise ValueError("batches yielded nothing; pass at least one batch of inputs")
        per_sample = [torch.cat(self.norms[n]).numpy() for n in self.layers]
        h = [torch.linalg.vector_norm(self.offsets[n].double()).item() for n in self.layers]
        return FeatureNorms(
            layers=list(self.layers),
            g_mean=np.array([v.mean() for v in per_sample]),
            g_std=np.array([v.std() for v in per_sample]),
            h=np.array(h),
            num_samples=len(per_sample[0]),
        )


def feature_norms(model: nn.Module, batches: Iterable, layers: Sequence[str]) -> FeatureNorms:
    """E_x ||g^(l)(x)||_2 (with its std over samples) and ||h^(l)||_2 for each named module.

    g^(l)(x) = f^(l)(x) - f^(l)(0) and h^(l) = f^(l)(0) (Def. 5.1), where 0 is an all-zeros
    input of one sample's shape, i.e. zero after normalisation; f(0) is computed once. Norms are
    taken over all non-batch dimensions. `batches` yields inputs or (inputs, labels) pairs and is
    read once; the model runs in eval mode (BN uses running statistics) without gradients, and
    every submodule's train/eval mode is restored afterwards.

    Differences from the authors' code: the paper measures over the training set, their code
    over the test set (pass the batches you mean); their `l2_mean` divides each norm by
    sqrt(C*H*W), which cancels in `normalized_scale` but rescales raw values such as Fig. 12's.

    Precision: g is a difference, so where ||h|| dwarfs ||g|| (the last layers of a merged linear
    net) it carries rounding of about eps * ||h|| (float32 eps ~ 1e-7). For linear nets,
    `linear_decomposition` computes g without that cancellation.
    """
    recorder = _Recorder(model, _check_layers(layers))
    for item in batches:
        recorder.update(item)
    return recorder.result()


def normalized_scale(model: nn.Module, references: Sequence[nn.Module | FeatureNorms] | nn.Module,
                     batches: Iterable, layers: Sequence[str], *,
                     ref_layers: Sequence[str] | None = None) -> np.ndarray:
    """E||g_model^(l)|| / mean_i E||g_ref_i^(l)|| per layer (App. A.3 "Measuring the VF").

    References are the merge endpoints (the paper's normaliser (1/2) sum_i E||g_i^(l)||) or, for
    pruning, the single unpruned model. A reference may also be a precomputed `FeatureNorms`
    (e.g. the endpoints measured once for a whole sweep). `ref_layers` names the references'
    modules when they differ from the model's (a PFM wrapper measures `merged.<name>`).
    `batches` is read once: every model sees each batch in turn.
    """
    layers = _check_layers(layers)
    ref_layers = layers if ref_layers is None else _check_layers(ref_layers)
    if len(ref_layers) != len(layers):
        raise ValueError(f"ref_layers has {len(ref_layers)} names but layers has {len(layers)}; "
                         "they must pair up one to one")
    if isinstance(references, (nn.Module, FeatureNorms)):
        references = [references]
    if not references:
        raise ValueError("normalized_scale needs at least one reference model")
    for ref in references:
        if isinstance(ref, FeatureNorms) and len(ref.g_mean) != len(layers):
            raise ValueError(f"a precomputed reference has {len(ref.g_mean)} layers, expected "
                             f"{len(layers)}")
    recorders = [_Recorder(model, layers)] + [
        _Recorder(ref, ref_layers) for ref in references if isinstance(ref, nn.Module)]
    for item in batches:
        for recorder in recorders:
            recorder.update(item)
    measured = iter(r.result().g_mean for r in recorders)
    g_model = next(measured)
    g_refs = [ref.g_mean if isinstance(ref, FeatureNorms) else next(measured)
              for ref in references]
    denominator = np.mean(g_refs, axis=0)
    if np.any(denominator <= 0):
        dead = [n for n, d in zip(ref_layers, denominator, strict=True) if d <= 0]
        raise ValueError(f"the references' input-induced feature is zero at {dead}; the "
                         "normalised scale is undefined there")
    return g_model / denominator


# ---------------------------------------------------------------------------------------------
# Upper-bound sequences and the depth axis


def _as_sequence(e: Sequence[float] | np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=float)
    if e.ndim != 1 or e.size == 0 or not np.all(np.isfinite(e)):
        raise ValueError(f"expected a non-empty 1-D sequence of finite per-layer values, got "
                         f"shape {e.shape}")
    return e


def tight_bound(e: Sequence[float] | np.ndarray) -> np.ndarray:
    """The tightest non-increasing upper bound: eps^(L) = e^(L), eps^(l) = max(eps^(l+1), e^(l))."""
    e = _as_sequence(e)
    return np.maximum.accumulate(e[::-1])[::-1].copy()


def smoothed_bound(e: Sequence[float] | np.ndarray, gamma: float = 1.4) -> np.ndarray:
    """The smoothed bound of Figs 2B, 5B, 11, 12 (App. A.3), with 1-based layer index l:

    eps^(L) = e^(L), eps^(l) = max(gamma eps^(l+1) + (1 - gamma)(1 - 1/(L+1-l)) eps^(l+1), e^(l)),
    i.e. eps^(l) = max(e^(l), eps^(l+1) (1 + (gamma - 1)/(L+1-l))). `gamma` >= 1 keeps it
    non-increasing, as Def. 4.1 requires. The authors' code plugs the 0-based index into the
    paper's formula, i.e. uses 1/(L+2-l); this follows the paper.
    """
    e = _as_sequence(e)
    if not gamma >= 1.0:
        raise ValueError(f"gamma must be >= 1 (the paper uses 1.4) so that the bound is "
                         f"non-increasing; got {gamma}")
    n = len(e)
    eps = e.copy()
    for i in range(n - 2, -1, -1):
        l_ = i + 1
        grown = gamma * eps[i + 1] + (1 - gamma) * (1 - 1 / (n + 1 - l_)) * eps[i + 1]
        eps[i] = max(grown, e[i])
    return eps


def depth_curve(bound: Sequence[float] | np.ndarray,
                points: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The bound on the paper's "% of total depth" axis: x = 100/points, ..., 100 (5..100 for 20).

    Layer l (1-based) sits at l/L of the depth, so 100% is the last layer; y interpolates the
    bound linearly between layers (fractions before the first layer take its value). The authors'
    code places layers at idx / max(idx) of their own hook indices instead.
    """
    bound = _as_sequence(bound)
    if not isinstance(points, int) or points < 1:
        raise ValueError(f"points must be a positive integer, got {points}")
    x = np.arange(1, points + 1) * (100.0 / points)
    positions = np.arange(1, len(bound) + 1) / len(bound)
    return x, np.interp(x / 100.0, positions, bound)


# ---------------------------------------------------------------------------------------------
# Linear networks (Sec. 4)


def _check_linear_net(model: nn.Module) -> None:
    if not isinstance(model, LinearNet):
        raise TypeError(f"expected a LinearNet (linear8, linear5, linear5_res), got "
                        f"{type(model).__name__}; use feature_norms for other networks")


@torch.no_grad()
def linear_decomposition(model: LinearNet,
                         x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Eq. 2 per layer: g^(l)(x), the product of the weights applied to x (biases dropped,
    residual identities kept), and h^(l) = f^(l)(0), shape (units,). f^(l) = g^(l) + h^(l)
    exactly, and g^(l)(x) = f^(l)(x) - f^(l)(0)."""
    _check_linear_net(model)
    x = _as_input(model, x).flatten(1)
    g, h = x, torch.zeros_like(x[0])
    gs, hs = [], []
    for layer in model.layers:
        residual = isinstance(layer, ResidualLinear)
        g = F.linear(g, layer.weight) + (g if residual else 0)
        h = layer(h.unsqueeze(0)).squeeze(0)
        gs.append(g)
        hs.append(h)
    return gs, hs


def _weight_keys(state: State, model: nn.Module) -> list[str]:
    layers = vf_layers(model)
    missing = [f"{n}.weight" for n in layers if f"{n}.weight" not in state]
    if missing:
        raise KeyError(f"state dict lacks {missing[:3]}; does it belong to this "
                       f"{type(model).__name__}?")
    return layers


def weight_magnitudes(state: State, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Per weight layer, mean |W| (the paper's ||W||_{1,mean}) and mean |b| (Fig. 1 Mid).

    A layer without a bias has mean |b| = 0 (its offset contribution is zero)."""
    layers = _weight_keys(state, model)
    w = [state[f"{n}.weight"].double().abs().mean().item() for n in layers]
    b = [state[f"{n}.bias"].double().abs().mean().item() if f"{n}.bias" in state else 0.0
         for n in layers]
    return np.array(w), np.array(b)


def rescaled_feature_norms(merged_state: State, state_a: State, state_b: State, model: nn.Module,
                           g_norms: Sequence[float] | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Fig. 1 Right: ||g_alpha^(l)|| prod_{j<=l} ||W-bar^(j)||_{1,mean} / ||W_alpha^(j)||_{1,mean}.

    ||W-bar^(j)||_{1,mean} = (1 - alpha) ||W_0^(j)||_{1,mean} + alpha ||W_1^(j)||_{1,mean} is the
    endpoints' average magnitude, so the product undoes the shrinkage of |W| that merging causes.
    `g_norms` holds the merged model's norms per weight layer (its last axis has L entries).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    w_merged, _ = weight_magnitudes(merged_state, model)
    w_a, _ = weight_magnitudes(state_a, model)
    w_b, _ = weight_magnitudes(state_b, model)
    g = np.asarray(g_norms, dtype=float)
    if g.ndim == 0 or g.shape[-1] != len(w_merged):
        raise ValueError(f"g_norms must have one entry per weight layer ({len(w_merged)}), "
                         f"got shape {g.shape}")
    return g * np.cumprod(((1 - alpha) * w_a + alpha * w_b) / w_merged)


def elementary_symmetric(matrices: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """e_0..e_N of square matrices M_1..M_N, each product taken in network order (later on the
    left): e_k = sum_{j_1<...<j_k} M_{j_k} ... M_{j_1}, e_0 = I.

    Built with e_k(M_1..M_{n+1}) = M_{n+1} e_{k-1}(M_1..M_n) + e_k(M_1..M_n); the paper's proof of
    Prop. A.2 prints e_{k-1} in the second term, a typo.
    """
    if not matrices:
        raise ValueError("need at least one matrix")
    d = matrices[0].shape[0]
    if any(m.shape != (d, d) for m in matrices):
        raise ValueError("all matrices must be square and of one size (a constant-width net)")
    e = [torch.eye(d, dtype=matrices[0].dtype, device=matrices[0].device)]
    for m in matrices:
        e = [e[0]] + [m @ e[k - 1] + (e[k] if k < len(e) else 0) for k in range(1, len(e) + 1)]
    return e


@torch.no_grad()
def residual_closed_form(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                         x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Eq. 3 (Prop. A.2) for a linear net whose every layer is residual, f^(l) = W^(l) f^(l-1) +
    b^(l) + f^(l-1), f^(0) = x: per layer l, the input term sum_{j=0..l} e_j(W^(1..l)) x and the
    offset sum_{j=1..l} sum_{k=0..l-j} e_k(W^(j+1..l)) b^(j). Their sum is f^(l)(x)."""
    if len(weights) != len(biases) or not weights:
        raise ValueError("pass one bias per weight matrix, at least one layer")
    gs, hs = [], []
    for n in range(1, len(weights) + 1):
        g_map = sum(elementary_symmetric(weights[:n]))
        h = sum(sum(elementary_symmetric(weights[j + 1:n])) @ biases[j] if j + 1 < n
                else biases[j] for j in range(n))
        gs.append(x @ g_map.T)
        hs.append(h)
    return gs, hs
