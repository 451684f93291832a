"""Aligning two endpoints before merging: permutations and general merge/unmerge maps.

An alignment gives, per permutation group of the spec, a map from one model's hidden units to
the merged model's units (`GroupMap`):

- a permutation `p` (1-D int64, length d): merged unit i is this model's unit p[i], so
  W'[i] = W[p[i]] on output axes and W'[:, j] = W[:, p[j]] on input axes;
- a dense pair (T, U) of (d, d) matrices: outputs map as T @ W (T's dim 1 contracts the output
  axis), inputs as W @ U (U's dim 0 contracts the input axis). 1-D per-channel tensors map like
  outputs, except running variances, which map with T * T (elementwise square: the variance of
  independent units, exact for permutations).

A group missing from a map dict is left as it is (the identity). Weight matching (Git Re-Basin)
and activation matching return permutations; ZipIt! and CCA (`vfcore.matchers`) return dense
maps. `align` is the single entry point that the notebooks use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .device import model_device
from .hooks import hooked, outputs_of
from .models import check_compatible
from .spec import PermutationSpec, spec_for

State = dict[str, torch.Tensor]
GroupMap = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
METHODS = ("direct", "wm", "am", "zipit", "cca")
WM_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Alignment:
    """Two endpoints expressed in one merged coordinate system.

    `maps[i]` maps endpoint i's units per group (a missing group is the identity); `states[i]` is
    endpoint i's state dict after applying them, ready for `merge.interpolate`.
    """

    method: str
    maps: tuple[dict[str, GroupMap], dict[str, GroupMap]]
    states: tuple[State, State]


# ----------------------------------------------------------------------------- applying maps


def _checked_map(group: str, m: GroupMap, d: int) -> GroupMap:
    """Validate one group's map against the group size; return it in canonical form."""
    if isinstance(m, torch.Tensor):
        if m.dtype.is_floating_point or m.dtype.is_complex or m.dtype == torch.bool:
            raise ValueError(f"permutation for group {group!r} must hold integer indices, got "
                             f"{m.dtype}; pass a (T, U) pair for a dense map")
        if m.shape != (d,):
            raise ValueError(f"permutation for group {group!r} must be 1-D of length {d}, got "
                             f"shape {tuple(m.shape)}")
        p = m.long()
        if not torch.equal(p.sort().values.cpu(), torch.arange(d)):
            raise ValueError(f"the map for group {group!r} is not a permutation of 0..{d - 1} "
                             "(it repeats or misses an index)")
        return p
    if (isinstance(m, tuple) and len(m) == 2
            and all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in m)):
        if m[0].shape != (d, d) or m[1].shape != (d, d):
            raise ValueError(f"dense map (T, U) for group {group!r} must be two ({d}, {d}) "
                             f"matrices, got {tuple(m[0].shape)} and {tuple(m[1].shape)}")
        return m
    raise ValueError(f"map for group {group!r} must be an int64 permutation or a pair (T, U) of "
                     f"floating matrices, got {type(m).__name__}")


def _checked_maps(spec: PermutationSpec, maps: dict[str, GroupMap],
                  state: State) -> dict[str, GroupMap]:
    sizes = spec.check(state)
    unknown = sorted(set(maps) - set(sizes))
    if unknown:
        raise ValueError(f"maps name groups {unknown} that the spec lacks; its groups are "
                         f"{sorted(sizes)}")
    return {g: _checked_map(g, m, sizes[g]) for g, m in maps.items()}


def _map_axis(t: torch.Tensor, axis: int, m: GroupMap, variance: bool) -> torch.Tensor:
    """Apply one group's map to one axis of a tensor (axis 0: outputs, other axes: inputs)."""
    if isinstance(m, torch.Tensor):
        return t.index_select(axis, m.to(t.device))
    T, U = m
    mat = T if axis == 0 else U.T
    mat = mat.to(t.device, torch.float64)
    if variance:
        mat = mat * mat
    out = torch.tensordot(mat, t.to(torch.float64), dims=([1], [axis]))
    return out.movedim(0, axis).to(t.dtype)


def transform(spec: PermutationSpec, maps: dict[str, GroupMap], state: State) -> State:
    """A new state dict with every group's map applied to every axis it owns.

    Permutations index; dense maps multiply (in float64, cast back to each tensor's dtype).
    Groups absent from `maps` are untouched. Tensors are always copied, never shared.
    """
    checked = _checked_maps(spec, maps, state)
    out: State = {}
    for key, t in state.items():
        new = t
        for axis, group in enumerate(spec.axes[key]):
            if group in checked:
                new = _map_axis(new, axis, checked[group], key.endswith("running_var"))
        out[key] = t.clone() if new is t else new
    return out


def permute(spec: PermutationSpec, perms: dict[str, torch.Tensor], state: State) -> State:
    """A new state dict with each group's units permuted (`perms[g][i]`: the unit to put at i)."""
    for group, p in perms.items():
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"permute takes index tensors; group {group!r} has a "
                             f"{type(p).__name__} (use transform for dense maps)")
    return transform(spec, dict(perms), state)


def map_features(x: torch.Tensor, m: GroupMap | None, dim: int = 1) -> torch.Tensor:
    """One model's features (units on `dim`) in merged coordinates: what `transform` does to the
    outputs of a layer, applied to the outputs themselves. Computed in x's dtype."""
    if m is None:
        return x
    if isinstance(m, torch.Tensor):
        return x.index_select(dim, m.to(x.device))
    T = m[0].to(x.device, x.dtype)
    return torch.tensordot(T, x, dims=([1], [dim])).movedim(0, dim)


def unmap_features(z: torch.Tensor, m: GroupMap | None, dim: int = 1) -> torch.Tensor:
    """Merged-coordinate features (units on `dim`) in one model's own units: what a layer of that
    model sees when `transform` has mapped its input axis, since (W U) z = W (U z).

    Permutation: the inverse permutation; dense: U applied along dim; None: z. Computed in z's
    dtype. For permutations and CCA this inverts `map_features`; for ZipIt! it copies each merged
    unit back to all of its members.
    """
    if m is None:
        return z
    if isinstance(m, torch.Tensor):
        return z.index_select(dim, m.argsort().to(z.device))
    U = m[1].to(z.device, z.dtype)
    return torch.tensordot(U, z, dims=([1], [dim])).movedim(0, dim)


# ----------------------------------------------------------------------------- weight matching


@dataclass(frozen=True)
class WeightMatching:
    """Result of weight matching: the perms for model b and how the search went."""

    perms: dict[str, torch.Tensor]
    sweeps: int
    solves: int


def _check_pair(spec: PermutationSpec, state_a: State, state_b: State) -> dict[str, int]:
    sizes = spec.check(state_a)
    sizes_b = spec.check(state_b)
    if sizes != sizes_b:
        diff = {g: (sizes[g], sizes_b[g]) for g in sizes if sizes[g] != sizes_b[g]}
        raise ValueError(f"the two state dicts have different group sizes {diff}; "
                         "are the widths the same?")
    for key, t in state_a.items():
        if t.shape != state_b[key].shape:
            raise ValueError(f"{key}: shapes {tuple(t.shape)} and {tuple(state_b[key].shape)} "
                             "differ; both states must come from one architecture")
    return sizes


def matching_objective(spec: PermutationSpec, state_a: State, state_b: State,
                       perms: dict[str, torch.Tensor]) -> float:
    """Sum over all floating tensors of <W_a, perms(W_b)>: what weight matching maximises."""
    _check_pair(spec, state_a, state_b)
    permuted = permute(spec, perms, state_b)
    return float(sum((state_a[k].double() * permuted[k].double()).sum()
                     for k, t in state_a.items() if t.is_floating_point()))


class _Term:
    """One (key, axis) contribution W_a @ W_b'^T to a group's assignment matrix.

    W_b' is W_b with the perms of the tensor's other grouped axes applied. The product is kept and
    updated as those perms change: when a perm changed on fewer than half of its indices, only the
    changed slices are recomputed (a low-rank update), which is exact up to rounding and makes the
    late sweeps of weight matching cheap. Matmuls are float32; the product is kept in float64.
    """

    def __init__(self, wa: torch.Tensor, wb: torch.Tensor, axis: int,
                 others: list[tuple[int, str]]):
        self.groups = [g for _, g in others]
        lead = [axis] + [ax for ax, _ in others[:1]]
        order = lead + [ax for ax in range(wa.dim()) if ax not in lead]
        self.extra = [(order.index(ax), g) for ax, g in others[1:]]
        self.d = wa.shape[axis]
        self.b = wb.float().permute(order).contiguous()
        if wa.dim() == 1:
            self.b = self.b[:, None]
        self.a = wa.float().permute(order).reshape(self.d, self.b.shape[1], -1).contiguous()
        self.used: list[torch.Tensor] = []
        self.product: torch.Tensor | None = None

    def value(self, perms: dict[str, torch.Tensor]) -> torch.Tensor:
        current = [perms[g] for g in self.groups]
        if self.product is not None:
            if all(torch.equal(p, u) for p, u in zip(current, self.used, strict=True)):
                return self.product
            if len(current) == 1:
                changed = (current[0] != self.used[0]).nonzero().squeeze(1)
                if 2 * len(changed) < len(current[0]):
                    self._update(changed, self.used[0][changed], current[0][changed])
                    self.used = [current[0].clone()]
                    return self.product
        b = self.b
        if current:
            b = b.index_select(1, current[0])
        for pos, g in self.extra:
            b = b.index_select(pos, perms[g])
        self.product = (self.a.reshape(self.d, -1) @ b.reshape(self.d, -1).T).double()
        self.used = [p.clone() for p in current]
        return self.product

    def _update(self, slots: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        b = self.b.reshape(self.d, self.b.shape[1], -1)
        delta = b.index_select(1, new) - b.index_select(1, old)
        part = self.a.index_select(1, slots).reshape(self.d, -1)
        self.product += (part @ delta.reshape(self.d, -1).T).double()


class _Matcher:
    """Git Re-Basin coordinate descent with exact skipping of unchanged subproblems.

    Group g's linear assignment matrix is A_g = sum over its (key, axis) of W_a (axis first,
    flattened) @ W_b' (other axes permuted by the current perms, axis first, flattened)^T. It
    depends only on the perms of g's neighbours (the groups on the other axes of its tensors), so
    a group whose neighbours have not changed since its last solve would give the same answer and
    is skipped. Each (key, axis) product is a `_Term`, updated incrementally.
    """

    def __init__(self, spec: PermutationSpec, state_a: State, state_b: State,
                 sizes: dict[str, int]):
        self.terms: dict[str, list[_Term]] = {}
        self.neighbours: dict[str, set[str]] = {}
        for g, pairs in spec.groups.items():
            self.terms[g] = []
            for key, axis in pairs:
                if not state_a[key].is_floating_point():
                    continue
                others = [(ax, g2) for ax, g2 in enumerate(spec.axes[key])
                          if ax != axis and g2 is not None]
                self.terms[g].append(_Term(state_a[key], state_b[key], axis, others))
            self.neighbours[g] = {g2 for term in self.terms[g] for g2 in term.groups}
        device = next(iter(state_a.values())).device
        self.perms = {g: torch.arange(n, device=device) for g, n in sizes.items()}
        self.changed_at = dict.fromkeys(sizes, -1)
        self.solved_at: dict[str, int] = {}
        self.clock = 0
        self.solves = 0

    def _stale(self, group: str) -> bool:
        last = self.solved_at.get(group)
        return last is None or any(self.changed_at[n] > last for n in self.neighbours[group])

    def _solve(self, group: str) -> bool:
        """Re-solve one group's assignment; return whether the objective improved."""
        A = sum(term.value(self.perms) for term in self.terms[group])
        self.solved_at[group] = self.clock
        self.clock += 1
        self.solves += 1
        _, cols = linear_sum_assignment(A.cpu().numpy(), maximize=True)
        new = torch.as_tensor(cols, dtype=torch.long, device=A.device)
        rows = torch.arange(len(new), device=A.device)
        gain = A[rows, new].sum() - A[rows, self.perms[group]].sum()
        if gain <= WM_TOLERANCE:
            return False
        self.perms[group] = new.to(self.perms[group].device)
        self.changed_at[group] = self.clock
        self.clock += 1
        return True

    def run(self, max_iter: int, seed: int) -> int:
        """Sweep until one sweep improves nothing (or max_iter sweeps); return the sweep count."""
        groups = list(self.terms)
        for sweep in range(max_iter):
            gen = torch.Generator().manual_seed(seed + sweep)
            order = torch.randperm(len(groups), generator=gen).tolist()
            improved = False
            for i in order:
                if self._stale(groups[i]):
                    improved |= self._solve(groups[i])
            if not improved:
                return sweep + 1
        return max_iter


def match_weights(spec: PermutationSpec, state_a: State, state_b: State, *, max_iter: int = 100,
                  seed: int = 0) -> WeightMatching:
    """Weight matching with its diagnostics (sweeps run, assignment problems solved)."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    sizes = _check_pair(spec, state_a, state_b)
    matcher = _Matcher(spec, state_a, state_b, sizes)
    sweeps = matcher.run(max_iter, seed)
    return WeightMatching(dict(matcher.perms), sweeps, matcher.solves)


def weight_matching(spec: PermutationSpec, state_a: State, state_b: State, *,
                    max_iter: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Permutations of model b's units that maximise sum <W_a, P(W_b)> (Git Re-Basin WM).

    Coordinate descent over groups; each sweep visits the groups in an order drawn from a torch
    generator seeded with `seed + sweep` (the authors' order is unseeded), solves each group's
    linear assignment with the others fixed, keeps a new perm only if it improves the objective by
    more than 1e-12, and stops after a sweep with no improvement. Uses every floating tensor of
    the state (weights, biases, norm parameters and running statistics), as the authors do.
    Products are float32 matmuls accumulated in float64; groups whose neighbours did not change
    since their last solve are not re-solved (they would give the same answer).
    """
    return match_weights(spec, state_a, state_b, max_iter=max_iter, seed=seed).perms


# ----------------------------------------------------------------------------- feature statistics


class FeatureStats:
    """Streaming moments of one group's features of both models, concatenated as [a; b].

    Sums are float64 and taken about a shift (the first batch's mean) so that the covariance does
    not lose precision to large means.
    """

    def __init__(self, d: int, device: torch.device | str | None = None):
        self.d = d
        self.count = 0
        self.shift = torch.zeros(2 * d, dtype=torch.float64, device=device)
        self.total = torch.zeros(2 * d, dtype=torch.float64, device=device)
        self.outer = torch.zeros(2 * d, 2 * d, dtype=torch.float64, device=device)

    def add(self, fa: torch.Tensor, fb: torch.Tensor) -> None:
        """Add paired features of one batch: fa and fb are (N, d, *spatial), from the same inputs.

        Every batch element and spatial position is one sample of each of the d units.
        """
        if fa.shape != fb.shape or fa.dim() < 2 or fa.shape[1] != self.d:
            raise ValueError(f"expected two (N, {self.d}, ...) feature tensors of one shape, got "
                             f"{tuple(fa.shape)} and {tuple(fb.shape)}")
        d = self.d
        x = torch.empty(fa.numel() // d, 2 * d, dtype=torch.float64, device=self.outer.device)
        for k, f in enumerate((fa, fb)):
            x[:, k * d:(k + 1) * d].view(f.shape[0], *f.shape[2:], d).copy_(f.movedim(1, -1))
        if self.count == 0:
            self.shift = x.mean(dim=0)
        x -= self.shift
        self.count += x.shape[0]
        self.total += x.sum(dim=0)
        self.outer.addmm_(x.T, x)

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self._n()

    @property
    def cov(self) -> torch.Tensor:
        """(2d, 2d) population covariance of [a; b]."""
        m = self.total / self._n()
        return self.outer / self._n() - torch.outer(m, m)

    @property
    def corr(self) -> torch.Tensor:
        """(2d, 2d) Pearson correlation; dead units get correlation 0.

        The floor on std_i * std_j is relative (1e-12 of the largest variance) rather than the
        authors' absolute 1e-7, so correlations do not depend on the features' scale (the paper's
        deep linear nets have tiny features).
        """
        cov = self.cov
        var = cov.diagonal().clamp_min(0)
        std = var.sqrt()
        floor = max(1e-12 * float(var.max()), torch.finfo(torch.float64).tiny)
        return cov / torch.outer(std, std).clamp_min(floor)

    def _n(self) -> int:
        if self.count == 0:
            raise ValueError("no samples were added to these feature statistics")
        return self.count


def _inputs(batch: torch.Tensor | tuple | list) -> torch.Tensor:
    x = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(x, torch.Tensor):
        raise ValueError("batches must yield input tensors or (inputs, labels) pairs, got "
                         f"{type(x).__name__}")
    return x


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode for a block, then restore every submodule's own flag."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _feature_spec(model_a: nn.Module, model_b: nn.Module,
                  spec: PermutationSpec | None) -> PermutationSpec:
    check_compatible(model_a, model_b)
    spec = spec or spec_for(model_a)
    spec.check(model_a.state_dict())
    spec.check(model_b.state_dict())
    bare = [g for g in spec.groups if not spec.features.get(g)]
    if bare:
        raise ValueError(f"the spec names no feature modules for groups {bare}; features are "
                         "needed to match activations")
    return spec


def _accumulate(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor,
                group_of: dict[str, str], stats: dict[str, FeatureStats]) -> None:
    """Add one batch to the statistics; b's features are consumed as they are produced."""
    feats_a = outputs_of(model_a, list(group_of), x)

    def record(name: str):
        def fn(_m: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            group = group_of[name]
            if group not in stats:
                stats[group] = FeatureStats(out.shape[1], x.device)
            stats[group].add(feats_a.pop(name), out)
        return fn

    with hooked(model_b, {name: record(name) for name in group_of}):
        model_b(x)


@torch.no_grad()
def feature_statistics(model_a: nn.Module, model_b: nn.Module,
                       batches: Iterable[torch.Tensor | tuple],
                       spec: PermutationSpec | None = None) -> dict[str, FeatureStats]:
    """Per group, the joint moments of both models' post-activation features in one pass.

    Both models run in eval mode on every batch (tensors or (x, y) pairs). Each group's feature
    modules (`spec.features`) are hooked; channels are dim 1, and conv features count every
    batch element and spatial position as a sample. Several modules in one group are more samples
    of that group. The models' modes are restored afterwards.
    """
    spec = _feature_spec(model_a, model_b, spec)
    group_of = {name: g for g, names in spec.features.items() for name in names}
    device = model_device(model_a)
    stats: dict[str, FeatureStats] = {}
    with _eval_mode(model_a, model_b):
        for batch in batches:
            _accumulate(model_a, model_b, _inputs(batch).to(device), group_of, stats)
    if not stats:
        raise ValueError("batches yielded no inputs; pass at least one batch")
    return {g: stats[g] for g in spec.features}


def _assignment(similarity: torch.Tensor) -> torch.Tensor:
    """The permutation p maximising sum_i similarity[i, p[i]]."""
    _, cols = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def activation_matching(model_a: nn.Module, model_b: nn.Module,
                        batches: Iterable[torch.Tensor | tuple],
                        spec: PermutationSpec | None = None) -> dict[str, torch.Tensor]:
    """Permutations of model b's units maximising the correlation with model a's units.

    Per group, a linear assignment on the cross block corr[:d, d:] of the post-activation features
    (NOTES 2.3, the PFM code's variant: full covariance over one pass, Pearson correlation). The
    paper's Sec. 2 writes AM as min_pi sum_l ||f0(x) - pi(f1(x))||, i.e. matching raw inner
    products; both of the authors' implementations, which produced its tables, use correlation,
    and so does this function.
    """
    stats = feature_statistics(model_a, model_b, batches, spec)
    return {g: _assignment(s.corr[:s.d, s.d:]) for g, s in stats.items()}


# ----------------------------------------------------------------------------- checks, entry point


@torch.no_grad()
def check_equivalent(model: nn.Module, other: nn.Module, x: torch.Tensor, *, rtol: float = 1e-4,
                     atol: float = 1e-5) -> float:
    """Max abs output difference of two models on x (both in eval mode).

    Raises ValueError when the outputs are not allclose: the two do not compute one function.
    """
    with _eval_mode(model, other):
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
          batches: Iterable[torch.Tensor | tuple] | None = None, *, seed: int = 0,
          max_iter: int = 100, zipit_a: float = 0.3, zipit_b: float = 0.125,
          cca_gamma: float = 0.1) -> Alignment:
    """Express both endpoints in one merged coordinate system with the named method.

    "direct": no change. "wm": weight matching (seed, max_iter). "am": activation matching on
    `batches`. "zipit" / "cca": the dense matchers of `vfcore.matchers` on `batches`. Permutation
    methods map only model b; the models themselves are never modified.
    """
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; choose one of {METHODS}")
    check_compatible(model_a, model_b)
    spec = spec_for(model_a)
    sa, sb = _state(model_a), _state(model_b)
    _check_pair(spec, sa, sb)
    if method in ("am", "zipit", "cca") and batches is None:
        raise ValueError(f"method {method!r} matches features: pass batches of inputs")
    if method == "direct":
        return Alignment(method, ({}, {}), (sa, sb))
    if method == "wm":
        perms = weight_matching(spec, sa, sb, max_iter=max_iter, seed=seed)
        return Alignment(method, ({}, perms), (sa, permute(spec, perms, sb)))
    if method == "am":
        perms = activation_matching(model_a, model_b, batches, spec)
        return Alignment(method, ({}, perms), (sa, permute(spec, perms, sb)))
    from . import matchers  # imported here: matchers builds on this module

    if method == "zipit":
        maps = matchers.zipit(model_a, model_b, batches, zipit_a, zipit_b, spec=spec)
    else:
        maps = matchers.cca(model_a, model_b, batches, cca_gamma, spec=spec)
    return Alignment(method, maps, (transform(spec, maps[0], sa), transform(spec, maps[1], sb)))
