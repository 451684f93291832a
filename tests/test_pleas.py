"""Known answers for PLeaS-style partial merging (`vfcore.pleas`).

Endpoints are random tiny models whose units all fire on part of the data (each unit's
pre-activation is centred a little above zero), so that activation matching can tell every unit
apart. Budget 2 must give the ensemble, and merging a model with a permuted copy of itself must
give the model back at every budget, on held-out inputs: the least-squares fit starts from the
endpoints' own weights, so exactness does not depend on how much calibration data there is.
"""

from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vfcore.features import activation_matching
from vfcore.hooks import outputs_of
from vfcore.models import build_model, num_parameters
from vfcore.pleas import (
    LeastSquares,
    Split,
    SplitChannelNorm,
    plan_widths,
    planned_parameters,
    pleas_cost,
    pleas_merge,
)
from vfcore.spec import spec_for
from vfcore.transform import permute

torch.set_num_threads(1)

SHAPES = {"mlp": dict(in_channels=1, image_size=6)}
VGG_SHAPE = dict(in_channels=3, image_size=16)


def shape_of(name: str) -> dict:
    return SHAPES.get(name, VGG_SHAPE)


def images(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    c = model.config
    return torch.randn(n, c.in_channels, c.image_size, c.image_size,
                       generator=torch.Generator().manual_seed(seed))


@cache
@torch.no_grad()
def endpoint(name: str, seed: int) -> nn.Module:
    """A random tiny model with no dead units: every unit's pre-activation is shifted to mean
    0.3 std; BatchNorms get the true statistics and a random affine. Merging never changes its
    endpoints, so tests share them."""
    torch.manual_seed(seed)
    model = build_model(name, width=1 / 16, **shape_of(name)).eval()
    x = images(model, 64, 100 + seed)
    for layer_name in model.weight_layers[:-1]:
        z = outputs_of(model, [layer_name], x)[layer_name]
        dims = [0, 2, 3] if z.dim() == 4 else [0]
        model.get_submodule(layer_name).bias.sub_(z.mean(dims) - 0.3 * z.std(dims))
        prefix, index = layer_name.rsplit(".", 1)
        bn = model.get_submodule(prefix)[int(index) + 1]
        if isinstance(bn, nn.BatchNorm2d):
            z = outputs_of(model, [layer_name], x)[layer_name]
            bn.running_mean.copy_(z.mean(dims))
            bn.running_var.copy_(z.var(dims))
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.5)
    return model


def planted_copy(model: nn.Module) -> nn.Module:
    """The same function with every hidden layer's units shuffled."""
    spec = spec_for(model)
    g = torch.Generator().manual_seed(7)
    perms = {k: torch.randperm(n, generator=g) for k, n in spec.check(model.state_dict()).items()}
    copy = build_model(model.config.name, width=1 / 16, **shape_of(model.config.name))
    copy.load_state_dict(permute(spec, perms, model.state_dict()))
    return copy.eval()


def calibration(model: nn.Module, n_batches: int = 2) -> list[torch.Tensor]:
    return [images(model, 64, seed) for seed in range(n_batches)]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def assert_close(x: torch.Tensor, y: torch.Tensor, rtol: float, atol: float) -> None:
    assert x.shape == y.shape and torch.allclose(x, y, rtol=rtol, atol=atol), (x - y).abs().max()


# ----------------------------------------------------------------------------- least squares


def test_least_squares_equals_lstsq() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 7, generator=g, dtype=torch.float64) * 3 + 1
    t = torch.randn(200, 4, generator=g, dtype=torch.float64)
    lsq = LeastSquares(7, 4)
    for xc, tc in zip(x.split(64), t.split(64), strict=True):
        lsq.add(xc, tc)
    ones = torch.ones(200, 1, dtype=torch.float64)
    ref = torch.linalg.lstsq(torch.cat([x, ones], 1), t).solution
    w, b = lsq.solve(0.0)
    assert_close(w, ref[:7].T, 1e-9, 1e-11)
    assert_close(b, ref[7], 1e-9, 1e-11)
    # a subset of inputs and outputs is the regression on those columns alone
    cols = torch.tensor([0, 3, 5])
    w, b = lsq.solve(0.0, cols, slice(1, 3))
    ref = torch.linalg.lstsq(torch.cat([x[:, cols], ones], 1), t[:, 1:3]).solution
    assert_close(w, ref[:3].T, 1e-9, 1e-11)
    assert_close(b, ref[3], 1e-9, 1e-11)


def test_ridge_penalises_the_weights_not_the_bias() -> None:
    """With lam = ridge * mean input variance, the solution is lstsq on centred data stacked
    on sqrt(n lam) I (targets 0), and the bias makes the fit pass through the means."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 5, generator=g, dtype=torch.float64) + 2
    t = torch.randn(100, 3, generator=g, dtype=torch.float64) - 1
    lsq = LeastSquares(5, 3)
    lsq.add(x, t)
    ridge = 0.3
    xc, tc = x - x.mean(0), t - t.mean(0)
    lam = ridge * float(xc.var(0, correction=0).mean())
    aug_x = torch.cat([xc, (100 * lam) ** 0.5 * torch.eye(5, dtype=torch.float64)])
    aug_t = torch.cat([tc, torch.zeros(5, 3, dtype=torch.float64)])
    ref = torch.linalg.lstsq(aug_x, aug_t).solution.T
    w, b = lsq.solve(ridge)
    assert_close(w, ref, 1e-9, 1e-11)
    assert_close(b, t.mean(0) - w @ x.mean(0), 1e-9, 1e-11)


def test_ridge_pulls_towards_the_prior() -> None:
    """With a prior P the solution is lstsq on centred data stacked on sqrt(n lam) I with targets
    sqrt(n lam) P^T; without a ridge, an input column that never varies keeps its prior weight."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    t = torch.randn(60, 2, generator=g, dtype=torch.float64)
    prior = torch.randn(2, 4, generator=g, dtype=torch.float64)
    lsq = LeastSquares(4, 2)
    lsq.add(x, t)
    xc, tc = x - x.mean(0), t - t.mean(0)
    lam = 0.5 * float(xc.var(0, correction=0).mean())
    root = (60 * lam) ** 0.5
    ref = torch.linalg.lstsq(torch.cat([xc, root * torch.eye(4, dtype=torch.float64)]),
                             torch.cat([tc, root * prior.T])).solution.T
    assert_close(lsq.solve(0.5, prior=prior)[0], ref, 1e-9, 1e-11)
    x[:, 2] = 3.0
    lsq = LeastSquares(4, 2)
    lsq.add(x, t)
    w, _ = lsq.solve(0.0, prior=prior)
    assert_close(w[:, 2], prior[:, 2], 1e-9, 1e-11)
    keep = torch.tensor([0, 1, 3])
    ref = torch.linalg.lstsq(torch.cat([x[:, keep], torch.ones(60, 1, dtype=torch.float64)], 1),
                             t).solution
    assert_close(w[:, keep], ref[:3].T, 1e-9, 1e-11)


@torch.no_grad()
def test_head_is_the_least_squares_fit_of_the_merged_features() -> None:
    """In a partial merge, the head equals lstsq from the merged network's own features to the
    averaged logits, on the calibration data."""
    a, b = endpoint("mlp", 0), endpoint("mlp", 1)
    cal = calibration(a, 4)
    net = pleas_merge(a, b, cal, budget=1.5, alpha=0.3, ridge=0.0)
    x = torch.cat(cal)
    feats = net.features(x.flatten(1)).double()
    target = (0.7 * a(x) + 0.3 * b(x)).double()
    ref = torch.linalg.lstsq(torch.cat([feats, torch.ones(len(x), 1, dtype=torch.float64)], 1),
                             target).solution
    head = net.classifier.merged
    assert_close(head.weight.double(), ref[:-1].T, 1e-4, 1e-5)
    assert_close(head.bias.double(), ref[-1], 1e-4, 1e-5)


# ----------------------------------------------------------------------------- the two ends


@pytest.mark.parametrize("name", ["vgg11", "vgg11_ln", "mlp"])
@torch.no_grad()
def test_budget_two_is_the_ensemble(name: str) -> None:
    a, b = endpoint(name, 0), endpoint(name, 1)
    net = pleas_merge(a, b, calibration(a), budget=2.0, alpha=0.25)
    assert net.kept_fraction == 1.0
    assert all(len(u.merged_a) == 0 for u in net.units.values())
    x = images(a, 64, 99)
    assert rel_error(net(x), 0.75 * a(x) + 0.25 * b(x)) < 1e-4
    assert num_parameters(net) == 2 * num_parameters(a) - a.config.num_classes  # one head bias
    params, macs = pleas_cost(net, (1, *x.shape[1:]))
    base_params, base_macs = pleas_cost(a, (1, *x.shape[1:]))
    assert (params, macs) == (num_parameters(net), 2 * base_macs)
    assert base_params == num_parameters(a)


@pytest.mark.parametrize(("name", "budget"), [("vgg11", 1.0), ("vgg11_bn", 1.4),
                                              ("vgg11_ln", 1.7), ("mlp", 1.0), ("mlp", 1.5)])
@torch.no_grad()
def test_merging_a_permuted_copy_returns_the_model(name: str, budget: float) -> None:
    """Matching finds the planted permutation, and at every budget the merged network (merged
    pairs of identical units, kept pairs side by side) computes the model's function."""
    a = endpoint(name, 0)
    b = planted_copy(a)
    cal = calibration(a)
    net = pleas_merge(a, b, cal, budget=budget)
    _, kept = plan_widths(a, budget)
    for (layer, perm), k in zip(activation_matching(a, b, cal).items(), kept, strict=True):
        units = net.units[layer]
        assert len(units.kept_a) == k
        assert torch.equal(torch.cat([units.merged_a, units.kept_a]).sort().values,
                           torch.arange(len(perm)))
        assert torch.equal(units.merged_b, perm[units.merged_a])
        assert torch.equal(units.kept_b, perm[units.kept_a])
        assert_close(units.correlation, torch.ones(len(perm), dtype=torch.float64), 0, 1e-5)
    x = images(a, 64, 99)
    assert rel_error(net(x), a(x)) < 1e-4
    if budget == 1.0:
        assert net.kept_fraction == 0.0
        assert pleas_cost(net, (1, *x.shape[1:])) == pleas_cost(a, (1, *x.shape[1:]))


# ----------------------------------------------------------------------------- partial merges


@torch.no_grad()
def test_partial_merge_keeps_the_least_correlated_pairs() -> None:
    a, b = endpoint("vgg11_bn", 0), endpoint("vgg11_bn", 1)
    cal = calibration(a, 2)
    net = pleas_merge(a, b, cal, budget=1.5)
    q, kept = plan_widths(a, 1.5)
    assert net.kept_fraction == q and 0 < q < 1
    assert num_parameters(net) == planned_parameters(a, kept)
    assert net.budget == pytest.approx(num_parameters(net) / num_parameters(a))
    perms = activation_matching(a, b, cal)
    for (layer, units), k in zip(net.units.items(), kept, strict=True):
        assert len(units.kept_a) == k
        assert torch.equal(perms[layer][units.merged_a], units.merged_b)
        assert torch.equal(perms[layer][units.kept_a], units.kept_b)
        if k:
            corr = units.correlation
            assert corr[units.kept_a].max() <= corr[units.merged_a].min()
    widths = [net.get_submodule(n).outputs.width for n in net.weight_layers[:-1]]
    assert widths == [lay + k for lay, k in zip([4, 8, 16, 16, 32, 32, 32, 32], kept,
                                                strict=True)]
    assert torch.isfinite(net(images(a, 4, 99))).all()


@pytest.mark.parametrize("name", ["vgg11", "vgg11_ln", "mlp"])
def test_parameter_count_follows_the_budget(name: str) -> None:
    model = build_model(name, width=1 / 16, **shape_of(name))
    base = num_parameters(model)
    counts = []
    for budget in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0):
        _, kept = plan_widths(model, budget)
        counts.append(planned_parameters(model, kept))
        assert counts[-1] / base == pytest.approx(budget, rel=0.03)
    assert counts == sorted(counts)
    assert counts[0] == base


def test_split_channel_norm_reduces_to_the_endpoints_layer_norm() -> None:
    x = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    factory = {"device": x.device, "dtype": x.dtype}
    whole = SplitChannelNorm(Split(6, 0), 0.5, 1e-5, factory)
    ref = F.layer_norm(x.movedim(1, -1), (6,), eps=1e-5).movedim(-1, 1)
    assert_close(whole(x), ref, 1e-5, 1e-6)
    apart = SplitChannelNorm(Split(0, 3), 0.5, 1e-5, factory)
    ref = torch.cat([F.layer_norm(h.movedim(1, -1), (3,), eps=1e-5).movedim(-1, 1)
                     for h in x.split(3, dim=1)], dim=1)
    assert_close(apart(x), ref, 1e-5, 1e-6)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected() -> None:
    a, b = build_model("mlp", width=1 / 16, **SHAPES["mlp"]), build_model(
        "mlp", width=1 / 16, **SHAPES["mlp"])
    x = images(a, 8, 0)
    for budget in (0.99, 2.01, float("nan")):
        with pytest.raises(ValueError, match="budget must lie in"):
            pleas_merge(a, b, [x], budget=budget)
    with pytest.raises(ValueError, match="alpha"):
        pleas_merge(a, b, [x], budget=1.5, alpha=1.5)
    with pytest.raises(ValueError, match="ridge"):
        pleas_merge(a, b, [x], budget=1.5, ridge=-1.0)
    with pytest.raises(TypeError, match="list of batches"):
        pleas_merge(a, b, x, budget=1.5)
    with pytest.raises(ValueError, match="empty"):
        pleas_merge(a, b, [], budget=1.5)
    resnet = build_model("resnet20", width=0.25)
    with pytest.raises(TypeError, match="VGG and MLP"):
        pleas_merge(resnet, resnet, [x], budget=1.5)
    with pytest.raises(ValueError, match="differ"):
        pleas_merge(a, build_model("mlp", width=1 / 8, **SHAPES["mlp"]), [x], budget=1.5)
