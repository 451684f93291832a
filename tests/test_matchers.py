"""Known-answer tests of vfcore.matchers: ZipIt! and CCA merge/unmerge maps."""

from __future__ import annotations

import pytest
import torch
from test_align import ARCHS, TINY, inputs, live_model, planted_pair

from vfcore.align import align, check_equivalent
from vfcore.features import FeatureStats
from vfcore.matchers import Zip, cca, cca_maps, zip_group
from vfcore.merge import interpolate, merged_model
from vfcore.models import build_model
from vfcore.spec import PermutationSpec, spec_for
from vfcore.transform import transform

torch.set_num_threads(1)  # tiny models: a second thread only adds contention


def stats_of(fa: torch.Tensor, fb: torch.Tensor) -> FeatureStats:
    s = FeatureStats(fa.shape[1])
    s.add(fa, fb)
    return s


@pytest.mark.parametrize("name", ARCHS)
def test_zipit_zips_a_permuted_copy_back_into_the_model(name: str) -> None:
    model, other, spec, planted = planted_pair(name)
    z = align(model, other, "zipit", inputs(name).split(64))
    sizes = spec.check(model.state_dict())
    for g, d in sizes.items():
        (t0, u0), (t1, u1) = z.maps[0][g], z.maps[1][g]
        assert t0.shape == u0.shape == t1.shape == u1.shape == (d, d)
        # every unit is zipped with its twin only: both maps are permutation matrices
        assert torch.equal(t0.T, u0) and torch.equal(t1.T, u1)
        assert torch.equal(t0 @ u0, torch.eye(d, dtype=t0.dtype))
        assert torch.equal(u1.argmax(0), planted[g].argsort()[u0.argmax(0)])
    for alpha in (0.5, 0.2):  # twins zipped at any alpha: their weighted mean is the model
        merged = merged_model(model, *z.at(alpha).states, alpha)
        check_equivalent(model, merged, inputs(name, seed=1), atol=1e-4)


def test_zipit_spends_exactly_its_within_model_budget() -> None:
    d, n = 16, 400
    g = torch.Generator().manual_seed(0)
    signals = torch.randn(n, d // 2, generator=g)
    fa = signals.repeat_interleave(2, dim=1)          # model 0: eight duplicated pairs
    fb = torch.randn(n, d, generator=g)               # model 1: unrelated units
    for b, budget in ((0.5, 4), (0.25, 2), (0.0, 0)):
        (t0, u0), (t1, u1) = zip_group(stats_of(fa, fb), a=0.3, b=b).maps()
        assert u0.sum() + u1.sum() == 2 * d and torch.all(torch.cat([u0, u1]).sum(1) == 1)
        within0 = (u0.sum(0) - 1).clamp_min(0).sum()
        assert within0 == budget
        merge = torch.cat([t0, t1], 1) / 2
        torch.testing.assert_close(merge.sum(1), torch.ones(d, dtype=merge.dtype))
        torch.testing.assert_close(merge, (torch.cat([u0, u1]) / torch.cat([u0, u1]).sum(0)).T)
    assert torch.equal(u0 @ u0.T, torch.eye(d, dtype=u0.dtype))   # b = 0: a pure matching


def test_zipit_known_small_answer() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(500, 2, generator=g)
    fa = base
    fb = base.flip(1) + 0.3 * torch.randn(500, 2, generator=g)
    (t0, u0), (t1, u1) = zip_group(stats_of(fa, fb), b=0.0).maps()
    assert torch.equal(t0, torch.eye(2, dtype=t0.dtype))
    assert torch.equal(t1, torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=t1.dtype))


def test_zipit_rejects_bad_hyperparameters() -> None:
    s = stats_of(torch.randn(10, 3), torch.randn(10, 3))
    for a, b in ((-0.1, 0.1), (1.5, 0.1), (0.3, -1.0), (0.3, 2.0)):
        with pytest.raises(ValueError):
            zip_group(s, a, b)


# A hand-made clustering of 2 x 3 units: merged unit 0 = {a0, a2} (a within-model merge), 1 =
# {a1, b0}, 2 = {b1, b2}. Units a0, a1, a2, b0, b1, b2 are 0..5.
ZIP = Zip(torch.tensor([0, 1, 0, 1, 2, 2]), 3)
UNMERGE_A = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.float64)
UNMERGE_B = torch.tensor([[0.0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.float64)


def test_zip_maps_at_one_half_are_the_midpoint_maps() -> None:
    # M averages each merged unit's members; T_i = 2 M[:, block i], U_i = the 0/1 block
    mean = torch.tensor([[0.5, 0, 0.5, 0, 0, 0], [0, 0.5, 0, 0.5, 0, 0], [0, 0, 0, 0, 0.5, 0.5]],
                        dtype=torch.float64)
    (t0, u0), (t1, u1) = ZIP.maps(0.5)
    assert torch.equal(t0, 2 * mean[:, :3]) and torch.equal(t1, 2 * mean[:, 3:])
    assert torch.equal(u0, UNMERGE_A) and torch.equal(u1, UNMERGE_B)
    default = [t for pair in ZIP.maps() for t in pair]
    assert all(torch.equal(x, y) for x, y in zip(default, (t0, u0, t1, u1), strict=True))


def test_zip_maps_interpolate_to_the_alpha_weighted_merge() -> None:
    alpha = 0.25  # a's members weigh 0.75, b's 0.25, normalised within each merged unit
    merge_a = torch.tensor([[0.5, 0, 0.5], [0, 0.75, 0], [0, 0, 0]], dtype=torch.float64)
    merge_b = torch.tensor([[0, 0, 0], [0.25, 0, 0], [0, 0.5, 0.5]], dtype=torch.float64)
    (t0, u0), (t1, u1) = ZIP.maps(alpha)
    torch.testing.assert_close((1 - alpha) * t0, merge_a, rtol=0, atol=1e-15)
    torch.testing.assert_close(alpha * t1, merge_b, rtol=0, atol=1e-15)
    assert torch.equal(u0, UNMERGE_A) and torch.equal(u1, UNMERGE_B)

    spec = PermutationSpec({"in.weight": ("g", None), "in.bias": ("g",),
                            "norm.running_var": ("g",), "hid.weight": ("h", "g"),
                            "hid.bias": ("h",), "out.weight": (None, "h")})
    gen = torch.Generator().manual_seed(4)
    shapes = {"in.weight": (3, 5), "in.bias": (3,), "norm.running_var": (3,),
              "hid.weight": (3, 3), "hid.bias": (3,), "out.weight": (2, 3)}
    sa, sb = ({k: torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5
               for k, shape in shapes.items()} for _ in range(2))
    maps_a, maps_b = ({"g": m, "h": m} for m in ZIP.maps(alpha))
    merged = interpolate(transform(spec, maps_a, sa), transform(spec, maps_b, sb), alpha)
    want = {
        "in.weight": merge_a @ sa["in.weight"] + merge_b @ sb["in.weight"],
        "in.bias": merge_a @ sa["in.bias"] + merge_b @ sb["in.bias"],
        # running variances average like every per-channel tensor (linear map)
        "norm.running_var": merge_a @ sa["norm.running_var"] + merge_b @ sb["norm.running_var"],
        "hid.weight": merge_a @ sa["hid.weight"] @ u0 + merge_b @ sb["hid.weight"] @ u1,
        "hid.bias": merge_a @ sa["hid.bias"] + merge_b @ sb["hid.bias"],
        "out.weight": (1 - alpha) * sa["out.weight"] @ u0 + alpha * sb["out.weight"] @ u1,
    }
    for key, value in want.items():
        torch.testing.assert_close(merged[key], value, msg=key)


def test_zip_maps_are_defined_strictly_inside_the_merging_line() -> None:
    for alpha in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="0 < alpha < 1"):
            ZIP.maps(alpha)


def test_zipit_alignment_at_rebuilds_the_maps_for_alpha() -> None:
    a, b = live_model("mlp", 0), live_model("mlp", 1)
    z = align(a, b, "zipit", inputs("mlp").split(64))
    assert z.alpha == 0.5 and set(z.zips) == set(z.spec.groups)
    moved = z.at(0.3)
    assert moved.alpha == 0.3 and moved.method == "zipit"
    for g, clustering in z.zips.items():
        for m, (t, u) in zip(moved.maps, clustering.maps(0.3), strict=True):
            assert torch.equal(m[g][0], t) and torch.equal(m[g][1], u)
    for state, maps, source in zip(moved.states, moved.maps, (a.state_dict(), b.state_dict()),
                                   strict=True):
        want = transform(z.spec, maps, source)
        assert all(torch.equal(state[k], v) for k, v in want.items())
    back = moved.at(0.5)
    for state, original in zip(back.states, z.states, strict=True):
        assert all(torch.equal(state[k], v) for k, v in original.items())
    with pytest.raises(ValueError, match="0 < alpha < 1"):
        z.at(1.0)


def _mixed_copy(model, seed: int = 0):
    """The model with each hidden group mixed by a random well-conditioned invertible map."""
    spec, state = spec_for(model), model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    maps = {}
    for group, d in spec.check(state).items():
        q1, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        q2, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        mix = q1 @ torch.diag(0.5 + 1.5 * torch.rand(d, generator=gen, dtype=torch.float64)) @ q2
        maps[group] = (mix, torch.linalg.inv(mix))
    other = build_model("linear8", **TINY["linear8"]).eval()
    other.load_state_dict(transform(spec, maps, state))
    return other, maps


@torch.no_grad()
def orthogonal_linear8() -> torch.nn.Module:
    """linear8 with orthonormal weight rows: its features stay well conditioned at every depth
    (random deep linear nets collapse towards rank one, which no covariance method can invert)."""
    model = build_model("linear8", **TINY["linear8"]).eval()
    gen = torch.Generator().manual_seed(3)
    for layer in model.layers:
        n, m = layer.weight.shape
        q, _ = torch.linalg.qr(torch.randn(max(n, m), max(n, m), generator=gen))
        layer.weight.copy_(q[:n, :m] * (max(n, m) / m) ** 0.5)
        layer.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model


def test_cca_undoes_an_invertible_mixing_of_a_linear_net() -> None:
    model = orthogonal_linear8()
    other, mixing = _mixed_copy(model)
    x = inputs("linear8")
    check_equivalent(model, other, x, rtol=1e-3, atol=1e-4)
    maps_a, maps_b = cca(model, other, x.split(64), gamma=1e-9)
    spec, state = spec_for(model), model.state_dict()
    for g, (t1, u1) in maps_b.items():
        d = len(t1)
        assert torch.equal(maps_a[g], torch.arange(d))
        torch.testing.assert_close(t1 @ u1, torch.eye(d, dtype=t1.dtype))
        torch.testing.assert_close(t1, mixing[g][1], rtol=1e-3, atol=1e-3)
    back = transform(spec, maps_b, other.state_dict())
    for key, t in state.items():
        torch.testing.assert_close(back[key], t, rtol=1e-3, atol=1e-3)
    merged = merged_model(model, *align(model, other, "cca", [x], cca_gamma=1e-9).states, 0.5)
    check_equivalent(model, merged, x, rtol=1e-3, atol=1e-3)


def test_cca_maps_with_default_gamma_are_inverse_pairs() -> None:
    g = torch.Generator().manual_seed(2)
    fa = torch.randn(300, 6, generator=g)
    fb = fa @ torch.randn(6, 6, generator=g) + 0.1 * torch.randn(300, 6, generator=g)
    ident, (t1, u1) = cca_maps(stats_of(fa, fb))
    assert torch.equal(ident, torch.arange(6))
    torch.testing.assert_close(t1 @ u1, torch.eye(6, dtype=t1.dtype))
    torch.testing.assert_close(u1 @ t1, torch.eye(6, dtype=t1.dtype))


def test_cca_rejects_bad_gamma_and_singular_covariance() -> None:
    fa = torch.randn(50, 3)
    dead = torch.cat([torch.randn(50, 2), torch.zeros(50, 1)], 1)
    with pytest.raises(ValueError, match="gamma"):
        cca_maps(stats_of(fa, fa), gamma=-1.0)
    with pytest.raises(ValueError, match="singular"):
        cca_maps(stats_of(fa, dead), gamma=0.0)
