"""Weight matching (Git Re-Basin; the paper's Sec. 2): permutations of model b's units that maximise
sum <W_a, P(W_b)> over every floating tensor of the state, by coordinate descent over groups.

Specs with block axes (concatenated or flattened channels) are matched on their plain view
(`PermutationSpec.plain`): each part of a block is a piece of its own, which gives the same
objective."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from .spec import PermutationSpec
from .transform import State, permute

WM_TOLERANCE = 1e-12


@dataclass(frozen=True)
class WeightMatching:
    """Result of weight matching: the perms for model b and how the search went."""

    perms: dict[str, torch.Tensor]
    sweeps: int
    solves: int


def matching_objective(spec: PermutationSpec, state_a: State, state_b: State,
                       perms: dict[str, torch.Tensor]) -> float:
    """Sum over all floating tensors of <W_a, perms(W_b)>: what weight matching maximises."""
    spec.check_pair(state_a, state_b)
    permuted = permute(spec, perms, state_b)
    return float(sum((state_a[k].double() * permuted[k].double()).sum()
                     for k, t in state_a.items() if t.is_floating_point()))


class _Term:
    """One (key, axis) contribution W_a @ W_b'^T to a group's assignment matrix.

    W_b' is W_b with the perms of the tensor's other grouped axes applied. The product is kept and
    updated as those perms change: when a perm changed on fewer than half of its indices, only the
    changed slices are recomputed (a low-rank update), which is exact up to rounding and makes the
    late sweeps of weight matching cheap. Both tensors are stored as (rest, neighbour, unit), so
    every gather along the neighbour axis copies whole rows of units, and the product is one
    transposed matmul. Matmuls are float32; the product is kept in float64.
    """

    def __init__(self, wa: torch.Tensor, wb: torch.Tensor, axis: int,
                 others: list[tuple[int, str]]):
        self.groups = [g for _, g in others]
        tail = [ax for ax, _ in others[:1]] + [axis]
        order = [ax for ax in range(wa.dim()) if ax not in tail] + tail
        self.extra = [(order.index(ax), g) for ax, g in others[1:]]
        self.d = wa.shape[axis]
        self.b = wb.float().permute(order).contiguous()
        if wa.dim() == 1:
            self.b = self.b[None]
        self.a = wa.float().permute(order).reshape(-1, self.b.shape[-2], self.d).contiguous()
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
            b = b.index_select(b.dim() - 2, current[0])
        for pos, g in self.extra:
            b = b.index_select(pos, perms[g])
        self.product = (self.a.reshape(-1, self.d).T @ b.reshape(-1, self.d)).double()
        self.used = [p.clone() for p in current]
        return self.product

    def _update(self, slots: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        b = self.b.reshape(-1, self.b.shape[-2], self.d)
        delta = b.index_select(1, new) - b.index_select(1, old)
        part = self.a.index_select(1, slots)
        self.product += (part.reshape(-1, self.d).T @ delta.reshape(-1, self.d)).double()


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
    sizes = spec.check_pair(state_a, state_b)
    view = spec.plain
    matcher = _Matcher(view.spec, view.split(state_a), view.split(state_b), sizes)
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
