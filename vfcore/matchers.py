"""Non-permutation matchers of the paper: ZipIt! (Stoica et al.; Table 6) and CCA
merging (Horoi et al.; Tables 3-4).

Both work per permutation group from the joint feature statistics of the two models
(`features.feature_statistics`) and give dense maps (T, U) per model in the `transform.GroupMap`
convention, so that `transform.transform` puts each model's weights in merged coordinates and
`merge.interpolate` gives the method's merged model. ZipIt!'s maps depend on the merge
coefficient (`Zip.maps(alpha)`); CCA's do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .device import cpu_threads
from .features import FeatureStats, feature_statistics
from .hooks import Batch
from .spec import PermutationSpec
from .transform import GroupMap

Maps = tuple[dict[str, GroupMap], dict[str, GroupMap]]


def _zip_clusters(sims: torch.Tensor, d: int, a: float, budget: int) -> torch.Tensor:
    """Greedy ZipIt! clustering of 2d units into d; returns each unit's cluster representative.

    Repeatedly merges the most similar pair of live clusters. The merged cluster keeps the lower
    index as representative (so its model is that index's model) and its similarities become the
    elementwise min of the two, times `a`. Pairs inside one model count against that model's
    budget; once it is spent, that model's within-model similarities are masked. Each row's
    maximum is cached and only rows touched by a merge are rescanned, so a step costs O(d).
    """
    n = 2 * d
    sims = sims.clone()
    sims.fill_diagonal_(-torch.inf)
    best, arg = sims.amax(dim=1), sims.argmax(dim=1)

    def rescan(rows: torch.Tensor) -> None:
        part = sims.index_select(0, rows)
        best.index_copy_(0, rows, part.amax(dim=1))
        arg.index_copy_(0, rows, part.argmax(dim=1))

    def mask_block(m: int) -> None:
        block = slice(m * d, (m + 1) * d)
        sims[block, block] = -torch.inf
        rescan(torch.arange(m * d, (m + 1) * d))

    budgets = [budget, budget]
    for m in (0, 1):
        if budget == 0:
            mask_block(m)
    rep = torch.arange(n)
    for _ in range(d):
        r = int(best.argmax())
        if best[r] == -torch.inf:
            raise RuntimeError("ZipIt! ran out of mergeable pairs; the correlations are degenerate")
        i, j = sorted((r, int(arg[r])))
        new = torch.minimum(sims[i], sims[j])
        new = torch.where(new > -torch.inf, new * a, new)
        new[i] = new[j] = -torch.inf
        sims[i], sims[:, i] = new, new
        sims[j], sims[:, j] = -torch.inf, -torch.inf
        rep = torch.where(rep == j, i, rep)
        stale = ((arg == i) | (arg == j)).nonzero().squeeze(1)
        bump = new > best
        best, arg = torch.where(bump, new, best), torch.where(bump, i, arg)
        rescan(torch.cat([stale, torch.tensor([i, j])]))
        if i // d == j // d:
            budgets[i // d] -= 1
            if budgets[i // d] == 0:
                mask_block(i // d)
    return rep


@dataclass(frozen=True)
class Zip:
    """ZipIt!'s clustering of one group's 2d units (a's first, then b's) into d merged units.

    `cluster[j]` is the merged unit of unit j; merged units are ordered by their lowest member.
    """

    cluster: torch.Tensor
    d: int

    def maps(self, alpha: float = 0.5) -> tuple[GroupMap, GroupMap]:
        """Merge/unmerge maps (T0, U0) and (T1, U1) of the alpha-weighted ZipIt! merge.

        A merged unit is the weighted mean of its members, a's members weighing 1 - alpha and
        b's alpha (at alpha = 0.5: ZipIt!'s plain mean); U is 0/1 (each unit reads its merged
        unit). With T0 = M[:, a] / (1 - alpha) and T1 = M[:, b] / alpha, interpolating the two
        transformed states at alpha gives M_a W0 U0 + M_b W1 U1: the merge. It is defined for
        0 < alpha < 1 only: a zipped network cannot represent an endpoint whose own units were
        merged together, so its ends are not the endpoints.
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"ZipIt!'s merge is defined for 0 < alpha < 1, got {alpha}; at the "
                             "ends use the endpoints themselves")
        d, device = self.d, self.cluster.device
        weights = torch.full((2 * d,), 1.0 - alpha, dtype=torch.float64, device=device)
        weights[d:] = alpha
        members = torch.zeros(d, 2 * d, dtype=torch.float64, device=device)
        members[self.cluster, torch.arange(2 * d, device=device)] = 1.0
        merge = members * weights
        merge = merge / merge.sum(dim=1, keepdim=True)
        unmerge = members.T
        return ((merge[:, :d] / (1.0 - alpha), unmerge[:d].clone()),
                (merge[:, d:] / alpha, unmerge[d:].clone()))


def zip_group(stats: FeatureStats, a: float = 0.3, b: float = 0.125) -> Zip:
    """ZipIt! clustering of one group (Stoica et al., as the paper runs it): greedy matching over
    all 2d units, within and across models, on the feature correlation, until d merged units
    remain. A merged unit's similarities become the elementwise min times `a`; within-model
    merges are limited to int(b * d / 2) per model."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"ZipIt! a (similarity decay after a merge) must lie in [0, 1], got {a}")
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"ZipIt! b (within-model merge budget) must lie in [0, 1], got {b}")
    d = stats.d
    with cpu_threads(1):  # tiny sequential ops: a thread pool only adds overhead
        rep = _zip_clusters(stats.corr.cpu(), d, a, int(b * d / 2))
    cluster = torch.searchsorted(rep.unique(), rep)
    return Zip(cluster.to(stats.moments.mean.device), d)


def _sqrt_and_inverse(S: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """S^(1/2) and S^(-1/2) of a symmetric positive definite matrix, via eigh in float64."""
    w, Q = torch.linalg.eigh((S + S.T) / 2)
    if float(w.min()) <= 1e-12 * max(float(w.max()), 0.0):
        raise ValueError(f"{what} is singular (smallest eigenvalue {float(w.min()):.3g}); "
                         "raise the CCA regulariser gamma")
    root = w.sqrt()
    return (Q * root) @ Q.T, (Q / root) @ Q.T


def cca_maps(stats: FeatureStats, gamma: float = 0.1) -> tuple[GroupMap, GroupMap]:
    """CCA merging maps of one group: model 0 keeps its units, model 1 is mapped onto them.

    With S_xx = C00 + gamma I, S_yy = C11 + gamma I, S_xy = C01 and the SVD
    S_xx^(-1/2) S_xy S_yy^(-1/2) = U S V^T, model 1 maps with T1 = S_xx^(1/2) U V^T S_yy^(-1/2) and
    unmaps with its inverse S_yy^(1/2) V U^T S_xx^(-1/2), so W1 becomes T1 W1 T1_prev^(-1) (the
    paper's form; the authors' code writes the transposes for row vectors). Model 0's map is the
    identity permutation. When model 1's features are an invertible linear image A of model 0's
    and gamma -> 0, T1 -> A^(-1).
    """
    if gamma < 0:
        raise ValueError(f"CCA gamma must be non-negative, got {gamma}")
    d = stats.d
    C = stats.cov
    eye = torch.eye(d, dtype=C.dtype, device=C.device)
    with cpu_threads(1):  # tiny sequential ops: a thread pool only adds overhead
        sxx_root, sxx_inv_root = _sqrt_and_inverse(C[:d, :d] + gamma * eye, "model 0's covariance")
        syy_root, syy_inv_root = _sqrt_and_inverse(C[d:, d:] + gamma * eye, "model 1's covariance")
        u, _, vh = torch.linalg.svd(sxx_inv_root @ C[:d, d:] @ syy_inv_root)
    rotation = u @ vh
    T1 = sxx_root @ rotation @ syy_inv_root
    U1 = syy_root @ rotation.T @ sxx_inv_root
    return torch.arange(d, device=C.device), (T1, U1)


def zipit(model_a: nn.Module, model_b: nn.Module, batches: Iterable[Batch],
          a: float = 0.3, b: float = 0.125, *, spec: PermutationSpec | None = None,
          reads: str = "last") -> dict[str, Zip]:
    """ZipIt! clusterings of every group, from one pass of `batches` through both models."""
    stats = feature_statistics(model_a, model_b, batches, spec, reads=reads)
    return {g: zip_group(s, a, b) for g, s in stats.items()}


def cca(model_a: nn.Module, model_b: nn.Module, batches: Iterable[Batch],
        gamma: float = 0.1, *, spec: PermutationSpec | None = None, reads: str = "last") -> Maps:
    """CCA maps for every group, from one pass of `batches` through both models."""
    stats = feature_statistics(model_a, model_b, batches, spec, reads=reads)
    pairs = {g: cca_maps(s, gamma) for g, s in stats.items()}
    return {g: p[0] for g, p in pairs.items()}, {g: p[1] for g, p in pairs.items()}
