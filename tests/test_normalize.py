"""RESET, REPAIR/RESCALE/RESHIFT, bias removal and bias calibration against known answers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from vfcore.hooks import outputs_of
from vfcore.merge import interpolate, merged_model
from vfcore.models import LinearNet, build_model, has_batchnorm, num_parameters
from vfcore.normalize import (
    bias_calibrated_state,
    channel_stats,
    remove_biases,
    repair,
    repair_layers,
    reset_bn,
)

ALPHA = 0.3
WEIGHTS = [1 - ALPHA, ALPHA]
SIZES = {"vgg11": 16, "vgg16": 16, "vgg11_bn": 16, "vgg11_ln": 16}  # VGGs pool 5 times


def make(name: str, seed: int) -> nn.Module:
    """A tiny model with random (nonzero) biases, norm biases included, so that channel means
    and the bias tests are not trivial."""
    torch.manual_seed(seed)
    width = 1.0 if name.startswith("linear") else 0.125
    model = build_model(name, width=width, in_channels=1, image_size=SIZES.get(name, 8))
    with torch.no_grad():
        if isinstance(model, LinearNet):  # keep the signal alive through 8 linear layers
            for lin in model.layers:
                lin.weight.normal_(0, 1 / math.sqrt(lin.in_features))
        for key, param in model.named_parameters():
            if key.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def data(name: str, sizes=(16, 16, 16), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = SIZES.get(name, 8)
    return [torch.randn(n, 1, s, s, generator=g) for n in sizes]


def direct_stats(model: nn.Module, names: list[str], batches) -> dict:
    """Per-channel mean and population std computed on all batches at once (not streamed)."""
    outs = outputs_of(model, names, torch.cat(batches))
    flat = {n: o.double().transpose(0, 1).flatten(1) for n, o in outs.items()}
    return {n: (f.mean(1), f.std(1, correction=0)) for n, f in flat.items()}


def merged_pair(name: str):
    a, b = make(name, 1), make(name, 2)
    return a, b, merged_model(a, a.state_dict(), b.state_dict(), ALPHA)


def targets(a, b, layers, batches):
    sa, sb = direct_stats(a, layers, batches), direct_stats(b, layers, batches)
    return {n: (WEIGHTS[0] * sa[n][0] + WEIGHTS[1] * sb[n][0],
                WEIGHTS[0] * sa[n][1] + WEIGHTS[1] * sb[n][1]) for n in layers}


def assert_close(got, want, scale, rtol=1e-3):
    assert torch.all((got - want).abs() <= rtol * (want.abs() + scale)), (got, want)


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, state: dict) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())


def test_channel_stats_matches_direct_computation():
    model = make("vgg11", 0)
    batches = data("vgg11", sizes=(5, 11, 16))
    names = model.weight_layers
    got, want = channel_stats(model, names, batches), direct_stats(model, names, batches)
    for n in names:
        assert got[n][0].dtype == torch.float64
        torch.testing.assert_close(got[n][0], want[n][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[n][1], want[n][1], rtol=1e-5, atol=1e-6)


def test_channel_stats_leaves_batchnorm_alone():
    model = make("vgg11_bn", 0).train()
    before = snapshot(model)
    channel_stats(model, ["features.0"], data("vgg11_bn"))
    assert_same(model, before)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("name", ["vgg11", "vgg16", "resnet20_plain", "resnet20_ln", "mlp",
                                  "linear8", "linear5_res"])
def test_repair_hits_weighted_targets(name):
    a, b, merged = merged_pair(name)
    batches = data(name)
    layers = repair_layers(merged)
    states = [snapshot(m) for m in (a, b, merged)]
    repaired = repair(merged, [a, b], WEIGHTS, batches, eps=0.0)

    want = targets(a, b, layers, batches)
    got = direct_stats(repaired, layers, batches)
    for n in layers:
        assert_close(got[n][1], want[n][1], 0.0)
        assert_close(got[n][0], want[n][0], want[n][1])
    for model, state in zip((a, b, merged), states, strict=True):
        assert_same(model, state)
    assert not has_batchnorm(repaired)
    assert [type(m) for m in repaired.modules()] == [type(m) for m in merged.modules()]
    extra = 0
    if name == "resnet20_ln":  # bias-free convs gain one bias per repaired channel
        extra = sum(repaired.get_submodule(n).out_channels for n in layers)
    assert num_parameters(repaired) == num_parameters(merged) + extra


@pytest.mark.parametrize("name", ["vgg11", "resnet20_ln", "linear5_res"])
def test_repair_cache_does_not_change_the_result(name):
    """Starting passes at cached block inputs must equal re-running from the input, whatever the
    memory budget and whatever order the layers are listed in."""
    a, b, merged = merged_pair(name)
    batches = data(name)
    layers = repair_layers(merged)
    states = [repair(merged, [a, b], WEIGHTS, batches, layers=order, max_cache_bytes=budget)
              .state_dict() for order, budget in ((layers, 2**30), (layers, 0),
                                                  (layers, 20_000), (layers[::-1], 2**30))]
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        for k, v in state.items():
            torch.testing.assert_close(v, states[0][k], rtol=1e-5, atol=1e-7)


def test_repair_layers_follow_the_paper():
    assert repair_layers(make("vgg11", 0)) == [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16,
                                                                         18)]
    resnet = make("resnet20_plain", 0)
    assert repair_layers(resnet) == [f"blocks.{k}.conv{j}" for k in range(9) for j in (1, 2)]
    assert repair_layers(make("mlp", 0)) == ["layers.0", "layers.2", "layers.4"]


def prefix_stats(merged, a, b, batches, layers, mode, j):
    """Stats at layer j of the model corrected on the layers before j only."""
    model = merged if j == 0 else repair(merged, [a, b], WEIGHTS, batches, mode=mode,
                                         layers=layers[:j], eps=0.0)
    return direct_stats(model, [layers[j]], batches)[layers[j]]


@pytest.mark.parametrize("name", ["vgg11", "resnet20_plain", "mlp"])
def test_rescale_matches_std_and_keeps_mean_over_std(name):
    a, b, merged = merged_pair(name)
    batches = data(name)
    layers = repair_layers(merged)
    rescaled = repair(merged, [a, b], WEIGHTS, batches, mode="rescale", eps=0.0)
    want = targets(a, b, layers, batches)
    got = direct_stats(rescaled, layers, batches)
    for n in layers:
        assert_close(got[n][1], want[n][1], 0.0)
    for j in (0, len(layers) // 2, len(layers) - 1):
        mean, std = prefix_stats(merged, a, b, batches, layers, "rescale", j)
        assert_close(got[layers[j]][0] / got[layers[j]][1], mean / std, 1e-2)
        assert not torch.allclose(got[layers[j]][0], want[layers[j]][0], rtol=0.05)


@pytest.mark.parametrize("name", ["vgg11", "resnet20_plain", "mlp"])
def test_reshift_matches_mean_and_keeps_std(name):
    a, b, merged = merged_pair(name)
    batches = data(name)
    layers = repair_layers(merged)
    reshifted = repair(merged, [a, b], WEIGHTS, batches, mode="reshift", eps=0.0)
    want = targets(a, b, layers, batches)
    got = direct_stats(reshifted, layers, batches)
    for n in layers:
        assert_close(got[n][0], want[n][0], want[n][1])
    for j in (0, len(layers) // 2, len(layers) - 1):
        _, std = prefix_stats(merged, a, b, batches, layers, "reshift", j)
        assert_close(got[layers[j]][1], std, 0.0)


def test_reshift_of_a_linear_net_keeps_every_std():
    a, b, merged = merged_pair("linear8")
    batches = data("linear8")
    layers = repair_layers(merged)
    before = direct_stats(merged, layers, batches)
    after = direct_stats(repair(merged, [a, b], WEIGHTS, batches, mode="reshift"), layers, batches)
    for n in layers:
        assert_close(after[n][1], before[n][1], 0.0)


def test_repair_with_one_reference_copies_its_statistics():
    a, b, _ = merged_pair("mlp")
    batches = data("mlp")
    layers = repair_layers(a)
    pairs = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]
    got = direct_stats(repair(b, [a], [1.0], pairs, eps=0.0), layers, batches)
    want = direct_stats(a, layers, batches)
    for n in layers:
        assert_close(got[n][0], want[n][0], want[n][1])
        assert_close(got[n][1], want[n][1], 0.0)


def test_repair_rejects_bad_input():
    a, b, merged = merged_pair("mlp")
    batches = data("mlp")
    with pytest.raises(ValueError, match="2 reference"):
        repair(merged, [a, b], [1.0], batches)
    with pytest.raises(ValueError, match="sum to 1"):
        repair(merged, [a, b], [0.5, 0.6], batches)
    with pytest.raises(ValueError, match="non-negative"):
        repair(merged, [a, b], [1.5, -0.5], batches)
    with pytest.raises(ValueError, match="unknown mode"):
        repair(merged, [a, b], WEIGHTS, batches, mode="rescale_all")
    with pytest.raises(ValueError, match="not exist"):
        repair(merged, [a, b], WEIGHTS, batches, layers=["layers.9"])
    with pytest.raises(ValueError, match="Conv2d or Linear"):
        repair(merged, [a, b], WEIGHTS, batches, layers=["layers.1"])
    with pytest.raises(ValueError, match="models differ"):
        repair(merged, [a, build_model("mlp", width=0.25, in_channels=1, image_size=8)],
               WEIGHTS, batches)
    with pytest.raises(TypeError, match="iterator"):
        repair(merged, [a, b], WEIGHTS, iter(batches))
    with pytest.raises(ValueError, match="eps"):
        repair(merged, [a, b], WEIGHTS, batches, eps=-1.0)
    with pytest.raises(ValueError, match="empty"):
        repair(merged, [a, b], WEIGHTS, [])


class FakeWrapper(nn.Module):
    """A minimal PFM-like wrapper: the merged model inside, corrections applied by the wrapper."""

    def __init__(self, merged: nn.Module):
        super().__init__()
        self.merged = merged
        self.calls: list[tuple[str, int, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merged(x)

    def repair_targets(self, layers):
        def fold(name: str):
            layer = self.merged.get_submodule(name)

            @torch.no_grad()
            def apply(scale: torch.Tensor, shift: torch.Tensor) -> None:
                self.calls.append((name, scale.numel(), scale.dtype))
                layer.weight.mul_(scale.float()[:, None])
                layer.bias.mul_(scale.float()).add_(shift.float())
            return apply
        return [(f"merged.{name}", name, fold(name)) for name in layers]


def test_repair_uses_the_wrapper_protocol():
    a, b, merged = merged_pair("mlp")
    batches = data("mlp")
    wrapper = FakeWrapper(merged)
    layers = repair_layers(merged)
    assert repair_layers(wrapper) == layers
    repaired = repair(wrapper, [a, b], WEIGHTS, batches, eps=0.0)
    assert isinstance(repaired, FakeWrapper) and wrapper.calls == []
    assert repaired.calls == [(n, 64, torch.float64) for n in layers]
    want = targets(a, b, layers, batches)
    got = direct_stats(repaired, [f"merged.{n}" for n in layers], batches)
    for n in layers:
        assert_close(got[f"merged.{n}"][0], want[n][0], want[n][1])
        assert_close(got[f"merged.{n}"][1], want[n][1], 0.0)
    other = build_model("vgg11", width=0.125, in_channels=1, image_size=16)
    with pytest.raises(ValueError, match="models differ"):
        repair(wrapper, [a, other], WEIGHTS, batches)


def batchnorm_inputs(model: nn.Module, batches) -> dict[str, list[torch.Tensor]]:
    """Each BatchNorm's input on each batch, with the model in training mode (batch statistics)."""
    model = copy.deepcopy(model).train()
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda _m, i, _o, n=n: seen.setdefault(n, []).append(i[0]))
               for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20"])
def test_reset_bn_stores_the_average_batch_statistics(name):
    model = make(name, 0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.3
    before = snapshot(model)
    batches = data(name, sizes=(4, 9, 20))
    reset = reset_bn(model, batches)
    assert_same(model, before)
    assert not reset.training
    inputs = batchnorm_inputs(model, batches)
    for n, xs in inputs.items():
        bn = reset.get_submodule(n)
        means = torch.stack([x.double().mean((0, 2, 3)) for x in xs]).mean(0)
        variances = torch.stack([x.double().var((0, 2, 3), correction=1) for x in xs]).mean(0)
        torch.testing.assert_close(bn.running_mean.double(), means, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), variances, rtol=1e-4, atol=1e-5)
        assert bn.momentum == 0.3 and int(bn.num_batches_tracked) == len(batches)


class HalfFrozen(nn.Module):
    """Two BN models; `train()` keeps the second one frozen in eval mode."""

    def __init__(self):
        super().__init__()
        self.live, self.frozen = make("vgg11_bn", 0), make("vgg11_bn", 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x):
        return self.live(x) + self.frozen(x)


def test_reset_bn_skips_frozen_batchnorms():
    model = HalfFrozen()
    reset = reset_bn(model, data("vgg11_bn", sizes=(8,)))
    assert_same(reset.frozen, snapshot(model.frozen))
    assert int(reset.live.features[1].num_batches_tracked) == 1
    assert not torch.equal(reset.live.features[1].running_mean, model.live.features[1].running_mean)


def test_reset_bn_without_batchnorm_points_to_repair():
    with pytest.raises(ValueError, match="repair"):
        reset_bn(make("vgg11", 0), data("vgg11"))


def test_remove_biases_zeroes_exactly_the_chosen_layers():
    model = make("vgg11_ln", 0)
    layers = model.weight_layers
    before = snapshot(model)
    for k, from_end, chosen in [(3, True, layers[-3:]), (3, False, layers[:3]), (0, True, []),
                                (len(layers), True, layers)]:
        out = remove_biases(model, k, from_end=from_end)
        for key, value in out.state_dict().items():
            layer = key.rsplit(".", 1)[0]
            if key.endswith(".bias") and layer in chosen:
                assert not value.any(), key
            else:
                assert torch.equal(value, before[key]), key
    assert_same(model, before)
    for k in (-1, len(layers) + 1):
        with pytest.raises(ValueError, match="k must"):
            remove_biases(model, k)


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20_plain"])
def test_bias_calibration_scales_bias_by_depth(name):
    a, b = make(name, 1), make(name, 2)
    sa, sb = a.state_dict(), b.state_dict()
    for alpha, end in ((0.0, sa), (1.0, sb)):
        state = bias_calibrated_state(a, sa, sb, alpha)
        assert all(torch.equal(state[k], v) for k, v in end.items())
    state = bias_calibrated_state(a, sa, sb, 0.5)
    linear = interpolate(sa, sb, 0.5)
    depth = {f"{n}.bias": i for i, n in enumerate(a.weight_layers, start=1)}
    if name == "resnet20_plain":  # a shortcut conv takes the depth of the conv2 it joins
        depth["blocks.3.shortcut.0.bias"] = depth["blocks.3.conv2.bias"]
        depth["blocks.6.shortcut.0.bias"] = depth["blocks.6.conv2.bias"]
    for key, value in state.items():
        if key in depth:
            torch.testing.assert_close(value, 0.5 ** depth[key] * (sa[key] + sb[key]))
        else:
            torch.testing.assert_close(value, linear[key])
    with pytest.raises(ValueError, match="alpha"):
        bias_calibrated_state(a, sa, sb, 1.5)
