"""Tests of vfcore.vf: known answers on tiny random models, no real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vfcore.hooks import outputs_of
from vfcore.merge import merged_model
from vfcore.models import build_model
from vfcore.spec import spec_for
from vfcore.vf import (
    FeatureNorms,
    depth_curve,
    elementary_symmetric,
    feature_norms,
    linear_decomposition,
    normalized_scale,
    rescaled_feature_norms,
    residual_closed_form,
    smoothed_bound,
    tight_bound,
    vf_layers,
    weight_magnitudes,
)


def linear_net(name: str = "linear5_res", seed: int = 0, bias_std: float = 0.5) -> nn.Module:
    """A float64 linear net on 1x4x4 inputs with random nonzero biases."""
    torch.manual_seed(seed)
    model = build_model(name, width=0.25, in_channels=1, image_size=4).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.normal_(std=bias_std)
    return model


def inputs(n: int, shape: tuple[int, ...] = (1, 4, 4), seed: int = 0,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def vgg_bn() -> nn.Module:
    """A tiny VGG11-BN whose BN running statistics are not the identity."""
    torch.manual_seed(0)
    model = build_model("vgg11_bn", width=0.125, image_size=16)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(std=0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model


# --- linear networks (Eq. 2, magnitude perspective) -------------------------------------------


def test_linear_decomposition_is_exact():
    model, x = linear_net(), inputs(32)
    gs, hs = linear_decomposition(model, x)
    f_x = outputs_of(model, model.weight_layers, x)
    f_0 = outputs_of(model, model.weight_layers, torch.zeros_like(x[:1]))
    assert len(gs) == len(hs) == 5
    for name, g, h in zip(model.weight_layers, gs, hs, strict=True):
        torch.testing.assert_close(g + h, f_x[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, f_x[name] - f_0[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, f_0[name][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(f_x[name].var(0), g.var(0), rtol=1e-10, atol=1e-14)


def test_linear_feature_ignores_biases():
    x = inputs(8)
    g1, h1 = linear_decomposition(linear_net(seed=0, bias_std=0.5), x)
    g2, h2 = linear_decomposition(linear_net(seed=0, bias_std=0.0), x)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert h2[-1].abs().max() == 0 and h1[-1].abs().max() > 0


def test_scaling_weights_scales_features_by_lambda_to_the_l():
    model, lam = linear_net("linear5"), 0.7
    scaled = linear_net("linear5", bias_std=2.0)
    with torch.no_grad():
        for src, dst in zip(model.layers, scaled.layers, strict=True):
            src.weight.normal_(std=src.in_features**-0.5)  # keeps g well above rounding of h
            dst.weight.copy_(lam * src.weight)
    batches = [inputs(16, seed=1), inputs(9, seed=2)]
    scale = normalized_scale(scaled, [model], batches, model.weight_layers)
    np.testing.assert_allclose(scale, lam ** np.arange(1, 6), rtol=1e-10)


def test_merged_independent_linear_nets_lose_their_feature():
    torch.manual_seed(0)
    a = build_model("linear8", in_channels=1, image_size=8).double()
    torch.manual_seed(1)
    b = build_model("linear8", in_channels=1, image_size=8).double()
    merged = merged_model(a, a.state_dict(), b.state_dict(), 0.5)
    batches = [inputs(64, (1, 8, 8), seed=3)]
    scale = normalized_scale(merged, [a, b], batches, vf_layers(a))
    # Independent weights: W_0.5 has entries of std/sqrt(2), so the scale is about 2^(-l/2).
    np.testing.assert_allclose(scale, 2.0 ** (-np.arange(1, 9) / 2), rtol=0.15)
    assert np.all(np.diff(scale) < 0)
    assert tight_bound(scale)[-1] == scale[-1] and smoothed_bound(scale)[0] > scale[-1]


def test_linear_decomposition_rejects_other_models():
    with pytest.raises(TypeError, match="LinearNet"):
        linear_decomposition(build_model("mlp", width=0.01, image_size=4), inputs(2))


# --- feature_norms and normalized_scale -------------------------------------------------------


def test_feature_norms_match_linear_decomposition_across_batches():
    model = linear_net()
    batches = [(inputs(7, seed=4), None), (inputs(5, seed=5), None)]
    fn = feature_norms(model, batches, model.weight_layers)
    gs, hs = linear_decomposition(model, torch.cat([x for x, _ in batches]))
    norms = [g.norm(dim=1).numpy() for g in gs]
    assert fn.layers == model.weight_layers and fn.num_samples == 12
    np.testing.assert_allclose(fn.g_mean, [v.mean() for v in norms], rtol=1e-12)
    np.testing.assert_allclose(fn.g_std, [v.std() for v in norms], rtol=1e-10)
    np.testing.assert_allclose(fn.h, [h.norm().item() for h in hs], rtol=1e-12)


def test_feature_norms_use_eval_mode_and_restore_the_mode():
    model = vgg_bn().train()
    model.features[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = vf_layers(model, include_norms=True)
    x = inputs(6, (3, 16, 16), dtype=torch.float32)
    fn = feature_norms(model, [x[:4], x[4:]], layers)
    assert model.training and model.features[4].training and not model.features[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    f_x = outputs_of(model, layers, x)
    f_0 = outputs_of(model, layers, torch.zeros_like(x[:1]))
    expected = np.array([(f_x[n] - f_0[n]).flatten(1).norm(dim=1).mean().item() for n in layers])
    np.testing.assert_allclose(fn.g_mean, expected, rtol=1e-5)
    np.testing.assert_allclose(fn.h, [f_0[n].norm().item() for n in layers], rtol=1e-5)


def test_model_against_itself_has_unit_scale():
    model = vgg_bn()
    layers = vf_layers(model, include_norms=True)
    batches = [inputs(4, (3, 16, 16), dtype=torch.float32)]
    np.testing.assert_array_equal(normalized_scale(model, [model], batches, layers), 1.0)
    ref = feature_norms(model, batches, layers)
    np.testing.assert_array_equal(normalized_scale(model, ref, batches, layers), 1.0)


def test_ref_layers_pair_wrapped_paths_with_plain_ones():
    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.merged = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.merged(x)

    model = linear_net()
    layers = model.weight_layers
    scale = normalized_scale(Wrapper(model), [model], [inputs(5)], [f"merged.{n}" for n in layers],
                             ref_layers=layers)
    np.testing.assert_allclose(scale, 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="pair up"):
        normalized_scale(model, [model], [inputs(5)], layers, ref_layers=layers[:2])


def test_in_place_activations_do_not_corrupt_the_measurement():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).double()
    with torch.no_grad():
        model[0].bias.fill_(-1.0)  # f(0) < 0: an in-place ReLU would zero a kept copy of it
    x = inputs(5, (4,))
    fn = feature_norms(model, [x], ["0", "2"])
    expected = (x @ model[0].weight.T).norm(dim=1).mean().item()
    np.testing.assert_allclose(fn.g_mean[0], expected, rtol=1e-12)
    np.testing.assert_allclose(fn.h[0], 6**0.5, rtol=1e-12)


def test_bad_measurement_input_is_rejected():
    model = linear_net()
    with pytest.raises(ValueError, match="at least one batch"):
        feature_norms(model, [], model.weight_layers)
    with pytest.raises(ValueError, match="non-empty"):
        feature_norms(model, [inputs(2)], [])
    with pytest.raises(KeyError, match="no module"):
        feature_norms(model, [inputs(2)], ["layers.9"])
    with pytest.raises(ValueError, match="at least one reference"):
        normalized_scale(model, [], [inputs(2)], model.weight_layers)


# --- measurement points ---------------------------------------------------------------------


def test_vf_layers_with_norms_vgg16_bn():
    model = build_model("vgg16_bn", width=0.125)
    convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    expected = [f"features.{i + k}" for i in convs for k in (0, 1)] + ["classifier"]
    assert vf_layers(model, include_norms=True) == expected
    assert vf_layers(model) == [f"features.{i}" for i in convs] + ["classifier"]
    plain = build_model("vgg16", width=0.125)
    assert vf_layers(plain, include_norms=True) == plain.weight_layers


def test_vf_layers_with_norms_resnet20():
    model = build_model("resnet20", width=0.125)
    blocks = [f"blocks.{k}.{m}{j}" for k in range(9) for j in (1, 2) for m in ("conv", "norm")]
    assert vf_layers(model, include_norms=True) == ["conv", "norm", *blocks, "fc"]
    plain = build_model("resnet20_plain", width=0.125)
    assert vf_layers(plain, include_norms=True) == plain.weight_layers
    ln = build_model("resnet20_ln", width=0.125, image_size=8)
    layers = vf_layers(ln, include_norms=True)
    assert len(layers) == 39
    fn = feature_norms(ln, [inputs(3, (3, 8, 8), dtype=torch.float32)], layers)
    assert fn.g_mean.shape == (39,) and np.all(fn.g_mean > 0)


class OutsideMLP(nn.Module):
    """A model vfcore did not build: its structure needs one example input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_vf_layers_of_an_outside_model_need_one_example_input():
    with pytest.raises(ValueError, match=r"spec_for\(model, example_input\)"):
        vf_layers(OutsideMLP())
    spec_for(OutsideMLP(), torch.randn(3, 4))
    assert vf_layers(OutsideMLP()) == ["fc1", "fc2"]  # later models of the class reuse it


# --- bounds and the depth axis --------------------------------------------------------------


def test_tight_bound():
    np.testing.assert_array_equal(tight_bound([1.0, 3.0, 2.0, 0.5]), [3.0, 3.0, 2.0, 0.5])
    e = np.random.default_rng(0).random(12)
    eps = tight_bound(e)
    assert np.all(np.diff(eps) <= 0) and np.all(eps >= e)
    np.testing.assert_array_equal(tight_bound(np.sort(e)[::-1]), np.sort(e)[::-1])
    with pytest.raises(ValueError, match="1-D"):
        tight_bound(np.ones((2, 2)))
    with pytest.raises(ValueError, match="1-D"):
        tight_bound([])


def test_smoothed_bound_hand_computed():
    # L = 3: eps3 = 0.4; eps2 = max(0.4 (1 + 0.4/2), 0.3) = 0.48; eps1 = max(0.48 (1 + 0.4/3), 0.1)
    np.testing.assert_allclose(smoothed_bound([0.1, 0.3, 0.4]), [0.544, 0.48, 0.4], rtol=1e-12)
    np.testing.assert_allclose(smoothed_bound([0.1, 0.5, 0.4]), [0.5 * 3.4 / 3, 0.5, 0.4])
    e = np.random.default_rng(1).random(10)
    eps = smoothed_bound(e)
    assert np.all(np.diff(eps) <= 0) and np.all(eps >= e)
    np.testing.assert_array_equal(smoothed_bound(e, gamma=1.0), tight_bound(e))
    with pytest.raises(ValueError, match="gamma"):
        smoothed_bound(e, gamma=0.9)


def test_depth_curve():
    bound = np.array([4.0, 3.0, 2.0, 1.0])
    x, y = depth_curve(bound)
    np.testing.assert_allclose(x, np.arange(5, 101, 5))
    assert len(x) == len(y) == 20 and y[-1] == bound[-1]
    np.testing.assert_allclose(y[:5], 4.0)
    np.testing.assert_allclose(y[[9, 11, 14]], [3.0, 2.6, 2.0])
    x10, _ = depth_curve(bound, points=10)
    np.testing.assert_allclose(x10, np.arange(10, 101, 10))
    with pytest.raises(ValueError, match="points"):
        depth_curve(bound, points=0)


# --- weight magnitudes (Fig. 1 Mid/Right) ---------------------------------------------------


def constant_state(model: nn.Module, weights: list[float], biases: list[float]) -> dict:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, w, b in zip(model.weight_layers, weights, biases, strict=True):
        state[f"{name}.weight"].fill_(w)
        state[f"{name}.bias"].fill_(b)
    return state


def test_weight_magnitudes_known_values():
    model = linear_net("linear5")
    w, b = weight_magnitudes(constant_state(model, [-1, 2, -3, 4, -5], [0.5, -1, 0, 1, 2]), model)
    np.testing.assert_allclose(w, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(b, [0.5, 1, 0, 1, 2])
    resnet = build_model("resnet20", width=0.125)
    _, b = weight_magnitudes(resnet.state_dict(), resnet)
    assert np.all(b[:-1] == 0)
    with pytest.raises(KeyError, match="lacks"):
        weight_magnitudes({}, model)


def test_rescaled_feature_norms_known_values():
    model = linear_net("linear5")
    a = constant_state(model, [1, 1, 2, 1, 1], [0] * 5)
    b = constant_state(model, [3, -1, 2, 1, 5], [0] * 5)
    merged = constant_state(model, [0.5, 1, 1, 2, 1], [0] * 5)
    g = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # alpha = 0.25: W-bar = [1.5, 1, 2, 1, 2]; ratios [3, 1, 2, 0.5, 2], cumulative [3, 3, 6, 3, 6]
    out = rescaled_feature_norms(merged, a, b, model, g, alpha=0.25)
    np.testing.assert_allclose(out, g * [3, 3, 6, 3, 6])
    with pytest.raises(ValueError, match="one entry per weight layer"):
        rescaled_feature_norms(merged, a, b, model, g[:3])


# --- residual closed form (Eq. 3) -----------------------------------------------------------


def test_elementary_symmetric_polynomials():
    gen = torch.Generator().manual_seed(0)
    m = [torch.randn(3, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    e = elementary_symmetric(m)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(e[0], eye)
    torch.testing.assert_close(e[1], m[0] + m[1] + m[2])
    torch.testing.assert_close(e[2], m[1] @ m[0] + m[2] @ m[0] + m[2] @ m[1])
    torch.testing.assert_close(e[3], m[2] @ m[1] @ m[0])
    torch.testing.assert_close(sum(e), (eye + m[2]) @ (eye + m[1]) @ (eye + m[0]))


def test_residual_closed_form_matches_forward_pass():
    model, x = linear_net("linear5_res"), inputs(6)
    hidden = [f"layers.{i}" for i in (1, 2, 3)]
    out = outputs_of(model, ["layers.0", *hidden], x)
    weights = [model.layers[i].weight for i in (1, 2, 3)]
    biases = [model.layers[i].bias for i in (1, 2, 3)]
    gs, hs = residual_closed_form(weights, biases, out["layers.0"])
    for name, g, h in zip(hidden, gs, hs, strict=True):
        torch.testing.assert_close(g + h, out[name], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        offset = torch.zeros_like(out["layers.0"][:1])
        for i, h in zip((1, 2, 3), hs, strict=True):
            offset = model.layers[i](offset)
            torch.testing.assert_close(h, offset[0], rtol=1e-12, atol=1e-12)


def test_feature_norms_dataclass_fields():
    fn = feature_norms(linear_net(), [inputs(3)], ["layers.0"])
    assert isinstance(fn, FeatureNorms)
    assert fn.g_mean.shape == fn.g_std.shape == fn.h.shape == (1,)
