"""Joint statistics of two models' hidden features, and activation matching on them.

Activation matching (AM), ZipIt! and CCA all start from the same numbers: per permutation group,
the covariance of both models' post-activation features over one pass of the same inputs.
Which values are read for a group is the spec's `features` list (every read point, in forward
order); `reads="last"` takes the last read point of each group, `"all"` pools every one of them
as more samples of the group. For a ResNet residual stream, "last" is the output of the stage's
last block, one activation per stage as the authors read it; "all" adds the stem and every
block's output. Values are read by running the traced graph (`vfcore.trace`), so a read point
may be a function's output (`F.relu`) as well as a module's; channels-last values (a linear
layer's output in a ConvNeXt block) are read on their own channel axis.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .device import model_device
from .hooks import Batch, batch_inputs, eval_mode
from .models import check_compatible
from .spec import PermutationSpec
from .stats import Moments
from .trace import Structure, structure

READS = ("last", "all")


class FeatureStats:
    """Streaming joint moments of one group's features of both models, concatenated as [a; b]."""

    def __init__(self, d: int):
        self.d = d
        self.moments = Moments(covariance=True)

    def add(self, fa: torch.Tensor, fb: torch.Tensor) -> None:
        """Add paired features of one batch: fa and fb are (N, d, *spatial), from the same inputs.

        Every batch element and spatial position is one sample of each of the d units.
        """
        if fa.shape != fb.shape or fa.dim() < 2 or fa.shape[1] != self.d:
            raise ValueError(f"expected two (N, {self.d}, ...) feature tensors of one shape, got "
                             f"{tuple(fa.shape)} and {tuple(fb.shape)}")
        self.moments.add(torch.cat([fa, fb], dim=1))

    @property
    def mean(self) -> torch.Tensor:
        return self.moments.mean

    @property
    def cov(self) -> torch.Tensor:
        """(2d, 2d) population covariance of [a; b]."""
        return self.moments.cov

    @property
    def corr(self) -> torch.Tensor:
        """(2d, 2d) Pearson correlation of [a; b]; dead units get correlation 0."""
        return self.moments.corr


def read_points(spec: PermutationSpec, reads: str = "last") -> dict[str, list[str]]:
    """Per group, the modules whose outputs are read as that group's features."""
    if reads not in READS:
        raise ValueError(f"unknown feature reads {reads!r}; choose one of {READS}")
    bare = [g for g in spec.groups if not spec.features.get(g)]
    if bare:
        raise ValueError(f"the spec names no feature modules for groups {bare}; features are "
                         "needed to match activations")
    return {g: list(names) if reads == "all" else names[-1:] for g, names in spec.features.items()}


def _accumulate(traced: Structure, model_a: nn.Module, model_b: nn.Module, x: torch.Tensor,
                spec: PermutationSpec, group_of: dict[str, str],
                stats: dict[str, FeatureStats]) -> None:
    """Add one batch to the statistics; b's features are consumed as they are produced."""
    feats_a: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        feats_a[name] = out.movedim(spec.feature_axis(name), 1).clone()

    def record(name: str, out: torch.Tensor) -> None:
        out = out.movedim(spec.feature_axis(name), 1)
        group = group_of[name]
        if group not in stats:
            stats[group] = FeatureStats(out.shape[1])
        stats[group].add(feats_a.pop(name), out)

    traced.read(model_a, x, group_of, keep)
    traced.read(model_b, x, group_of, record)


@torch.no_grad()
def feature_statistics(model_a: nn.Module, model_b: nn.Module, batches: Iterable[Batch],
                       spec: PermutationSpec | None = None, *,
                       reads: str = "last") -> dict[str, FeatureStats]:
    """Per group, the joint moments of both models' post-activation features in one pass.

    Both models run in eval mode on every batch (tensors or (x, y) pairs); their modes are
    restored afterwards. Channels are on the read point's axis (`spec.feature_axis`, 1 unless
    channels-last), and conv features count every batch element and spatial position as a
    sample. `spec` defaults to the traced one (`vfcore.spec.spec_for`).
    """
    check_compatible(model_a, model_b)
    traced = structure(model_a)
    spec = spec or traced.spec
    spec.check_pair(model_a.state_dict(), model_b.state_dict())
    points = read_points(spec, reads)
    group_of = {name: g for g, names in points.items() for name in names}
    device = model_device(model_a)
    stats: dict[str, FeatureStats] = {}
    with eval_mode(model_a, model_b):
        for batch in batches:
            _accumulate(traced, model_a, model_b, batch_inputs(batch).to(device), spec, group_of,
                        stats)
    if not stats:
        raise ValueError("batches yielded no inputs; pass at least one batch")
    return {g: stats[g] for g in points}


def assignment(similarity: torch.Tensor) -> torch.Tensor:
    """The permutation p maximising sum_i similarity[i, p[i]] (on similarity's device)."""
    _, cols = linear_sum_assignment(similarity.detach().cpu().numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long, device=similarity.device)


def activation_matching(model_a: nn.Module, model_b: nn.Module, batches: Iterable[Batch],
                        spec: PermutationSpec | None = None, *,
                        reads: str = "last") -> dict[str, torch.Tensor]:
    """Permutations of model b's units maximising the correlation with model a's units.

    Per group, a linear assignment on the cross block corr[:d, d:] of the post-activation features
    (as the authors' PFM code computes it: full covariance over one pass, Pearson correlation). The
    paper's Sec. 2 writes AM as min_pi sum_l ||f0(x) - pi(f1(x))||, i.e. matching raw inner
    products; both of the authors' implementations, which produced its tables, use correlation, and
    so does this function.
    """
    stats = feature_statistics(model_a, model_b, batches, spec, reads=reads)
    return {g: assignment(s.corr[:s.d, s.d:]) for g, s in stats.items()}
