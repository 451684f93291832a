"""Known-answer tests of alignment: permutations and dense maps (vfcore.transform), weight
matching (vfcore.weight_matching), feature statistics and activation matching (vfcore.features),
and the `align` entry point (vfcore.align)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from zoo import randomise

from vfcore.align import align, check_equivalent
from vfcore.features import (
    FeatureStats,
    activation_matching,
    feature_statistics,
    read_points,
)
from vfcore.hooks import outputs_of
from vfcore.merge import merged_model
from vfcore.models import build_model
from vfcore.spec import PermutationSpec, spec_for
from vfcore.transform import map_features, permute, transform, unmap_features
from vfcore.weight_matching import match_weights, matching_objective, weight_matching

torch.set_num_threads(1)  # tiny models: a second thread only adds contention

TINY = {
    "linear8": dict(width=0.25, in_channels=1, image_size=4),
    "linear5_res": dict(width=0.25, in_channels=1, image_size=4),
    "mlp": dict(width=1 / 32, in_channels=1, image_size=4),
    "vgg11": dict(width=1 / 16, image_size=16),
    "vgg16_bn": dict(width=1 / 16, image_size=16),
    "vgg16_ln": dict(width=1 / 16, image_size=16),
    "resnet20": dict(width=0.25, image_size=8),
    "resnet20_ln": dict(width=0.25, image_size=8),
    "resnet20_plain": dict(width=0.25, image_size=8),
}
ARCHS = list(TINY)


def inputs(name: str, n: int = 128, seed: int = 0) -> torch.Tensor:
    c = TINY[name]
    shape = (n, c.get("in_channels", 3), c["image_size"], c["image_size"])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _centre(shifted: nn.Module, _relu: nn.Module, args: tuple) -> tuple:
    """Shift a ReLU's input to median 0 per channel, both in this pass and in the bias behind it."""
    x = args[0]
    median = x.movedim(1, -1).reshape(-1, x.shape[1]).median(dim=0).values
    shifted.bias -= median
    return (x - median.view(-1, *[1] * (x.dim() - 2)),)


@torch.no_grad()
def live_model(name: str, seed: int = 0) -> nn.Module:
    """A tiny model with generic random parameters (norm statistics included) in which every
    ReLU unit is active on half of `inputs(name)`: dead or duplicate units would make the
    planted matching ambiguous, so the test could not have a single right answer."""
    torch.manual_seed(seed)
    model = build_model(name, **TINY[name]).eval()
    randomise(model, seed, lambda key, noise: 0.1 * noise + (1.0 if key.endswith(".weight")
                                                            else 0.0))
    hooks, shifted = [], None
    for module in model.modules():
        if getattr(module, "bias", None) is not None:
            shifted = module
        if isinstance(module, nn.ReLU):
            hooks.append(module.register_forward_pre_hook(partial(_centre, shifted)))
    model(inputs(name))
    for h in hooks:
        h.remove()
    return model


def planted_pair(name: str, seed: int = 0):
    """A live model, random perms of every group, and the model with those perms applied."""
    model = live_model(name, seed)
    spec = spec_for(model)
    gen = torch.Generator().manual_seed(seed + 100)
    sizes = spec.check(model.state_dict())
    planted = {g: torch.randperm(n, generator=gen) for g, n in sizes.items()}
    other = build_model(name, **TINY[name]).eval()
    other.load_state_dict(permute(spec, planted, model.state_dict()))
    return model, other, spec, planted


def undoes(planted: dict[str, torch.Tensor], perms: dict[str, torch.Tensor]) -> bool:
    """Whether perms applied to the planted copy give back the original unit order."""
    return all(torch.equal(planted[g][perms[g]], torch.arange(len(p))) for g, p in planted.items())


# ----------------------------------------------------------------------------- planted permutations


@pytest.mark.parametrize("name", ARCHS)
def test_planted_permutation_is_recovered(name: str) -> None:
    model, other, spec, planted = planted_pair(name)
    x = inputs(name, seed=1)
    # summation order differs after permuting; LN over few channels amplifies that rounding
    assert check_equivalent(model, other, x, atol=1e-4) < 1e-4

    wm = align(model, other, "wm")
    assert undoes(planted, wm.maps[1]) and wm.maps[0] == {}
    for key, t in model.state_dict().items():
        assert torch.equal(wm.states[1][key], t), key

    am = align(model, other, "am", inputs(name).split(64))
    assert undoes(planted, am.maps[1])

    merged = merged_model(model, *am.states, 0.5)
    check_equivalent(model, merged, x)


def test_permute_composes_and_keeps_inputs() -> None:
    model, other, spec, planted = planted_pair("vgg16_bn")
    state = model.state_dict()
    inverse = {g: p.argsort() for g, p in planted.items()}
    back = permute(spec, inverse, permute(spec, planted, state))
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert permute(spec, {}, state)["features.0.weight"].data_ptr() != state[
        "features.0.weight"].data_ptr()
    p = planted["features.0"]
    out = permute(spec, {"features.0": p}, state)
    assert torch.equal(out["features.0.weight"], state["features.0.weight"][p])
    assert torch.equal(out["features.3.weight"], state["features.3.weight"][:, p])
    assert torch.equal(out["features.1.running_var"], state["features.1.running_var"][p])


# ----------------------------------------------------------------------------- errors


def test_spec_misfit_is_an_error() -> None:
    model = live_model("mlp")
    spec, state = spec_for(model), model.state_dict()
    perms = {"layers.0": torch.arange(16)}
    missing = {k: v for k, v in state.items() if k != "layers.2.bias"}
    extra = state | {"layers.9.weight": torch.zeros(3)}
    narrow = build_model("mlp", width=1 / 64, in_channels=1, image_size=4).state_dict()
    wider = state | {"layers.0.bias": torch.zeros(17)}
    for bad in (missing, extra, wider):
        with pytest.raises(ValueError):
            permute(spec, perms, bad)
    with pytest.raises(ValueError, match="missing keys"):
        weight_matching(spec, state, missing)
    with pytest.raises(ValueError, match="different group sizes"):
        weight_matching(spec_for(build_model("mlp", width=1 / 64, in_channels=1, image_size=4)),
                        narrow, state)
    with pytest.raises(ValueError):
        weight_matching(spec, state, narrow)


def test_check_pair_gives_group_sizes_and_rejects_mismatched_states() -> None:
    model = live_model("mlp")
    spec, state = spec_for(model), model.state_dict()
    assert spec.check_pair(state, live_model("mlp", 1).state_dict()) == spec.check(state)
    narrow = build_model("mlp", width=1 / 64, in_channels=1, image_size=4).state_dict()
    with pytest.raises(ValueError, match="different group sizes"):
        spec.check_pair(state, narrow)
    other_input = state | {"layers.0.weight": torch.zeros(16, 9)}  # an axis no group owns
    with pytest.raises(ValueError, match="layers.0.weight: shapes .* differ"):
        spec.check_pair(state, other_input)


def test_mismatched_models_are_rejected() -> None:
    a = live_model("resnet20")
    with pytest.raises(ValueError, match="differ"):
        align(a, build_model("resnet20_ln", **TINY["resnet20_ln"]), "wm")
    with pytest.raises(ValueError, match="differ"):
        align(a, build_model("resnet20", width=0.5, image_size=8), "wm")
    with pytest.raises(ValueError, match="unknown alignment method"):
        align(a, a, "ot")
    with pytest.raises(ValueError, match="pass batches"):
        align(a, a, "am")


def test_bad_maps_are_rejected() -> None:
    model = live_model("mlp")
    spec, state = spec_for(model), model.state_dict()
    bad = [
        {"layers.0": torch.arange(15)},                       # wrong length
        {"layers.0": torch.tensor([0] * 16)},                  # repeats
        {"layers.0": torch.arange(1, 17)},                     # out of range
        {"layers.0": torch.arange(16.0)},                      # not integer
        {"layers.5": torch.arange(16)},                        # no such group
        {"layers.0": (torch.eye(16), torch.eye(15))},          # dense of wrong size
    ]
    for perms in bad:
        with pytest.raises(ValueError):
            transform(spec, perms, state)
    with pytest.raises(ValueError):
        permute(spec, {"layers.0": (torch.eye(16), torch.eye(16))}, state)


def test_check_equivalent_reports_a_difference() -> None:
    a, b = live_model("mlp", 0), live_model("mlp", 1)
    with pytest.raises(ValueError, match="different functions"):
        check_equivalent(a, b, inputs("mlp"))
    assert check_equivalent(a, a, inputs("mlp")) == 0.0


@pytest.mark.parametrize("method", ["direct", "wm", "am", "cca"])
def test_at_is_the_identity_for_methods_whose_maps_ignore_alpha(method: str) -> None:
    model, other, _, _ = planted_pair("mlp")
    alignment = align(model, other, method, inputs("mlp").split(64))
    assert alignment.alpha == 0.5
    for alpha in (0.0, 0.3, 1.0):
        assert alignment.at(alpha) is alignment


# ----------------------------------------------------------------------------- weight matching


def _naive_assignment(spec: PermutationSpec, sa, sb, perms, group):
    """Group's assignment matrix computed from scratch (no caching, float64)."""
    A = 0
    for key, axis in spec.groups[group]:
        wb = sb[key].double()
        for ax, g in enumerate(spec.axes[key]):
            if ax != axis and g is not None:
                wb = wb.index_select(ax, perms[g])
        wa = sa[key].double().movedim(axis, 0)
        A = A + wa.reshape(len(wa), -1) @ wb.movedim(axis, 0).reshape(len(wa), -1).T
    return A


def test_weight_matching_is_deterministic_optimal_per_group_and_improves() -> None:
    from scipy.optimize import linear_sum_assignment

    a, b = live_model("vgg11", 0), live_model("vgg11", 1)
    spec, sa, sb = spec_for(a), a.state_dict(), b.state_dict()
    first = match_weights(spec, sa, sb, seed=3)
    again = weight_matching(spec, sa, sb, seed=3)
    assert all(torch.equal(first.perms[g], again[g]) for g in spec.groups)
    assert first.sweeps >= 2 and first.solves >= len(spec.groups)
    identity = matching_objective(spec, sa, sb, {})
    assert matching_objective(spec, sa, sb, first.perms) > identity
    # a fixed point of the coordinate descent: no group alone can improve (checked naively)
    for g in spec.groups:
        A = _naive_assignment(spec, sa, sb, first.perms, g)
        rows, cols = linear_sum_assignment(A.numpy(), maximize=True)
        best = A[rows, cols].sum()
        assert A[torch.arange(len(A)), first.perms[g]].sum() >= best - 1e-6 * abs(best)


def test_weight_matching_stops_and_respects_max_iter() -> None:
    a, b = live_model("resnet20", 0), live_model("resnet20", 1)
    spec, sa, sb = spec_for(a), a.state_dict(), b.state_dict()
    assert match_weights(spec, sa, sb, max_iter=1).sweeps == 1
    with pytest.raises(ValueError, match="max_iter"):
        weight_matching(spec, sa, sb, max_iter=0)
    same = match_weights(spec, sa, sa)
    assert same.sweeps == 1 and all(torch.equal(p, torch.arange(len(p)))
                                    for p in same.perms.values())


# ----------------------------------------------------------------------------- dense maps, features


def test_map_features_matches_transform_on_a_layer() -> None:
    model = live_model("mlp")
    spec, state = spec_for(model), model.state_dict()
    gen = torch.Generator().manual_seed(5)
    T = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    perm = torch.randperm(16, generator=gen)
    x = inputs("mlp").flatten(1)
    y = model.layers[0](x)
    for m in (perm, (T, torch.linalg.inv(T))):
        out = transform(spec, {"layers.0": m}, state)
        mapped = x @ out["layers.0.weight"].T + out["layers.0.bias"]
        torch.testing.assert_close(map_features(y, m), mapped, rtol=1e-4, atol=1e-4)
    assert map_features(y, None) is y


def test_unmap_features_matches_transform_on_an_input_axis() -> None:
    model = live_model("mlp")
    spec, state = spec_for(model), model.state_dict()
    gen = torch.Generator().manual_seed(6)
    T = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    perm = torch.randperm(16, generator=gen)
    z = torch.randn(8, 16, generator=gen)
    for m in (perm, (T, torch.linalg.inv(T))):
        out = transform(spec, {"layers.0": m}, state)
        torch.testing.assert_close(z @ out["layers.2.weight"].T,
                                   unmap_features(z, m) @ state["layers.2.weight"].T,
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(unmap_features(map_features(z, m), m), z, rtol=1e-4,
                                   atol=1e-4)
    assert unmap_features(z, None) is z


def test_dense_permutation_matrix_equals_index_permutation() -> None:
    model, _, spec, planted = planted_pair("vgg16_bn")
    state = model.state_dict()
    dense = {g: (torch.eye(len(p))[p], torch.eye(len(p))[p].T) for g, p in planted.items()}
    by_index, by_matrix = permute(spec, planted, state), transform(spec, dense, state)
    for key, t in by_index.items():
        torch.testing.assert_close(by_matrix[key], t, rtol=0, atol=1e-6)


def test_transform_rules_for_outputs_inputs_and_running_var() -> None:
    model = live_model("vgg16_bn")
    spec, state = spec_for(model), model.state_dict()
    d = state["features.1.running_var"].numel()
    T = torch.randn(d, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    U = torch.randn(d, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = transform(spec, {"features.0": (T, U)}, state)
    var = state["features.1.running_var"].double()
    # every per-channel tensor maps linearly, running variances included
    torch.testing.assert_close(out["features.1.running_var"].double(), T @ var,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["features.1.running_mean"].double(),
                               T @ state["features.1.running_mean"].double(), rtol=1e-5, atol=1e-5)
    w = state["features.3.weight"].double()
    torch.testing.assert_close(out["features.3.weight"].double(),
                               torch.einsum("oikl,ij->ojkl", w, U), rtol=1e-5, atol=1e-5)
    assert torch.equal(out["features.1.num_batches_tracked"],
                       state["features.1.num_batches_tracked"])


def test_feature_statistics_restore_modes_and_need_inputs() -> None:
    a, b = live_model("vgg11", 0), live_model("vgg11", 1)
    a.train()
    x = inputs("vgg11", n=32)
    stats = feature_statistics(a, b, [(x[:20], None), x[20:]])
    assert a.training and not b.training
    assert stats["features.0"].moments.count == 32 * 16 * 16
    with pytest.raises(ValueError, match="no inputs"):
        feature_statistics(a, b, [])


def test_feature_statistics_match_direct_moments() -> None:
    a, b = live_model("vgg11", 0), live_model("vgg11", 1)
    x = inputs("vgg11", n=32)
    stats = feature_statistics(a, b, [(x[:20], None), x[20:]])
    with torch.no_grad():
        fa = a.features[:2](x)   # features.1 is the first ReLU
        fb = b.features[:2](x)
    s = stats["features.0"]
    samples = torch.cat([fa, fb], 1).movedim(1, -1).reshape(-1, 2 * s.d).double()
    assert s.moments.count == len(samples)
    torch.testing.assert_close(s.mean, samples.mean(0))
    torch.testing.assert_close(s.cov, torch.cov(samples.T, correction=0))
    torch.testing.assert_close(s.corr, torch.corrcoef(samples.T))


def test_correlation_ignores_scale() -> None:
    s = FeatureStats(2)
    g = torch.Generator().manual_seed(0)
    f = torch.randn(100, 2, generator=g) * 1e-9
    s.add(f, torch.stack([f[:, 1] * 3, torch.zeros(100)], 1))
    torch.testing.assert_close(s.corr[1, 2], torch.tensor(1.0, dtype=torch.float64))


def test_correlation_zeroes_dead_units() -> None:
    s = FeatureStats(2)
    f = torch.randn(100, 2, generator=torch.Generator().manual_seed(0)) * 1e-9
    s.add(f, torch.stack([f[:, 1] * 3, torch.zeros(100)], 1))
    assert s.corr[3].abs().max() == 0 and s.corr[:, 3].abs().max() == 0


def test_reads_last_takes_each_stage_output_and_all_pools_every_read_point() -> None:
    # float64 models: the moments are then exact to float64 rounding whatever their sums' dtype
    a, b = live_model("resnet20", 0).double(), live_model("resnet20", 1).double()
    spec = spec_for(a)
    everything, last_only = read_points(spec, "all"), read_points(spec)
    stream = ["relu", "blocks.0.relu2", "blocks.1.relu2", "blocks.2.relu2"]
    (first,) = [g for g, names in everything.items() if names == stream]  # stage 1's stream
    (inner,) = [g for g, names in everything.items() if names == ["blocks.0.relu1"]]
    assert last_only[first] == ["blocks.2.relu2"]      # the output of the stage's last block
    assert last_only[inner] == ["blocks.0.relu1"]
    assert all(last_only[g] == names[-1:] for g, names in everything.items())
    with pytest.raises(ValueError, match="unknown feature reads"):
        read_points(spec, "first")
    x = inputs("resnet20", n=16).double()
    last, pooled = feature_statistics(a, b, [x]), feature_statistics(a, b, [x], reads="all")
    fa, fb = outputs_of(a, stream, x), outputs_of(b, stream, x)
    d = last[first].d
    for stats, names in ((last, stream[-1:]), (pooled, stream)):
        samples = torch.cat([torch.cat([fa[n], fb[n]], 1).movedim(1, -1).reshape(-1, 2 * d)
                             for n in names])
        s = stats[first]
        assert s.moments.count == len(samples)
        torch.testing.assert_close(s.mean, samples.mean(0))
        torch.testing.assert_close(s.cov, torch.cov(samples.T, correction=0))
    torch.testing.assert_close(last[inner].cov, pooled[inner].cov)


@pytest.mark.parametrize("reads", ["last", "all"])
def test_activation_matching_recovers_a_resnet_permutation_with_either_reads(reads: str) -> None:
    model, other, spec, planted = planted_pair("resnet20")
    batches = inputs("resnet20").split(64)
    perms = activation_matching(model, other, batches, spec, reads=reads)
    assert undoes(planted, perms)
    aligned = align(model, other, "am", batches, reads=reads).maps[1]
    assert all(torch.equal(aligned[g], p) for g, p in perms.items())
