"""Known answers of vfcore.regmean: self-merges, the averaging limit, and least-squares optima."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vfcore.align import align
from vfcore.merge import interpolate
from vfcore.models import MLP, build_model
from vfcore.normalize import reset_bn
from vfcore.regmean import _rows, forward_order, regression_merge

torch.set_num_threads(1)

TINY = {
    "vgg11": dict(width=1 / 16, image_size=16),
    "vgg11_bn": dict(width=1 / 16, image_size=16),
    "resnet20": dict(width=0.25, image_size=8),
    "resnet20_ln": dict(width=0.25, image_size=8),
}


def batches(name: str, n: int = 2, size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    side = TINY[name]["image_size"]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, side, side, generator=gen) for _ in range(n)]


def model(name: str, seed: int, data: list[torch.Tensor]) -> nn.Module:
    """A tiny random model; BN models get the statistics RESET gives them on `data`, so that a
    self-merge (which re-estimates BN statistics on the same data) can return it exactly."""
    torch.manual_seed(seed)
    m = build_model(name, **TINY[name]).eval()
    return reset_bn(m, data) if "bn" in name or name == "resnet20" else m


def stacked_lstsq(sources: list[torch.Tensor], targets: list[torch.Tensor],
                  weights: list[float]) -> torch.Tensor:
    """argmin_W sum_i w_i ||S_i W^T - T_i||^2 as one least-squares problem; returns W."""
    s = torch.cat([math.sqrt(w) * x for w, x in zip(weights, sources, strict=True)])
    t = torch.cat([math.sqrt(w) * y for w, y in zip(weights, targets, strict=True)])
    return torch.linalg.lstsq(s, t).solution.T


SELF_MERGES = [("vgg11_bn", lam) for lam in (0.0, 0.1, math.inf)] + [
    ("resnet20", lam) for lam in (0.1, math.inf)]  # lam > 0 runs the lam = 0 code path too


@pytest.mark.parametrize(("name", "lam"), SELF_MERGES)
@pytest.mark.parametrize("variant", ["regmean", "chain"])
def test_self_merge_returns_the_model(name: str, variant: str, lam: float) -> None:
    data = batches(name, n=1)
    a = model(name, 0, data)
    merged = regression_merge(a, copy.deepcopy(a), align(a, a, "direct"), data, alpha=0.3,
                              lam=lam, variant=variant)
    assert not merged.training
    for key, t in a.state_dict().items():  # exactly: the regression correction is exactly zero
        torch.testing.assert_close(merged.state_dict()[key], t, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn", "resnet20_ln"])
@pytest.mark.parametrize("variant", ["regmean", "chain"])
def test_large_lambda_gives_the_weighted_average(name: str, variant: str) -> None:
    data = batches(name, n=1 if name.startswith("resnet") else 2)
    a, b = model(name, 0, data), model(name, 1, data)
    alignment = align(a, b, "wm")
    expected = interpolate(*alignment.states, 0.3)
    merged = regression_merge(a, b, alignment, data, alpha=0.3, lam=1e10, variant=variant)
    for key, p in merged.named_parameters():
        torch.testing.assert_close(p.detach(), expected[key], rtol=1e-6, atol=1e-7, msg=key)


def _layernorm_linear(seed: int) -> nn.Module:
    """One linear layer behind a LayerNorm whose affine parameters differ between endpoints, so
    that the endpoints feed the linear layer different inputs."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 3))
    with torch.no_grad():
        m[0].weight.uniform_(0.5, 2.0)
        m[0].bias.normal_()
    return m.eval()


@pytest.mark.parametrize("variant", ["regmean", "chain"])
def test_single_linear_layer_minimises_the_summed_output_error(variant: str) -> None:
    a, b = _layernorm_linear(0), _layernorm_linear(1)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(2))
    states = (a.state_dict(), b.state_dict())
    merged = regression_merge(a, b, SimpleNamespace(states=states), [x[:20], x[20:]], alpha=0.3,
                              lam=0.0, variant=variant)
    w = [0.7, 0.3]
    with torch.no_grad():
        own = [m[0](x).double() for m in (a, b)]
        targets = [xi @ m[1].weight.double().T for xi, m in zip(own, (a, b), strict=True)]
        average_ln = nn.LayerNorm(6).eval()
        average_ln.load_state_dict({k[2:]: v for k, v in interpolate(*states, 0.3).items()
                                    if k.startswith("0.")})
        sources = own if variant == "regmean" else [average_ln(x).double()] * 2
    expected = stacked_lstsq(sources, targets, w)
    torch.testing.assert_close(merged[1].weight.double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(merged[1].bias, torch.lerp(a[1].bias, b[1].bias, 0.3))
    assert not torch.allclose(expected, torch.lerp(a[1].weight, b[1].weight, 0.3).double(),
                              atol=1e-2)


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20"])
@pytest.mark.parametrize("variant", ["regmean", "chain"])
def test_cached_passes_give_the_same_merge_with_fewer_forwards(name: str, variant: str) -> None:
    # passes resumed at cuts must compute what passes from the input compute, bit for bit, also
    # for "chain", whose merged prefix changes (weights, then BN statistics) layer by layer
    data = batches(name, n=3)
    a, b = model(name, 0, data), model(name, 1, data)
    calls = []
    first = a.get_submodule(forward_order(a, data[0])[0])
    handle = first.register_forward_hook(lambda *_: calls.append(1))
    merges = {}
    for budget in (0, 2**30):
        calls.clear()
        merges[budget] = regression_merge(a, b, align(a, b, "direct"), data, alpha=0.3, lam=0.1,
                                          variant=variant, max_cache_bytes=budget)
        merges[budget, "calls"] = len(calls)
    handle.remove()
    for key, value in merges[0].state_dict().items():
        assert torch.equal(value, merges[2**30].state_dict()[key]), key
    assert merges[2**30, "calls"] < merges[0, "calls"] / 2


@pytest.mark.parametrize(("kernel", "stride", "dilation", "padding"), [
    (3, 1, 1, 1), ((3, 1), (2, 1), (1, 2), (1, 0)), (1, 2, 1, 0), ((5, 3), (1, 2), (2, 1), (2, 1))])
def test_conv_rows_times_the_flat_weight_is_the_conv(kernel, stride, dilation, padding) -> None:
    conv = nn.Conv2d(4, 6, kernel, stride=stride, dilation=dilation, padding=padding, bias=False)
    x = torch.randn(3, 4, 11, 9, generator=torch.Generator().manual_seed(0))
    for layout in (torch.contiguous_format, torch.channels_last):
        rows = _rows(conv, x.contiguous(memory_format=layout))
        out = conv(x).permute(0, 2, 3, 1).reshape(-1, 6)
        torch.testing.assert_close(rows @ conv.weight.reshape(6, -1).T, out)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = MLP(5, 4, 2, 3).eval()
    with torch.no_grad():
        m.layers[0].bias.uniform_(0.5, 1.5)  # keep every hidden unit alive on the data
    return m


@pytest.mark.parametrize("variant", ["regmean", "chain"])
def test_two_layer_mlp_equals_the_hand_computed_two_step_solution(variant: str) -> None:
    # in float64 the kernel's Grams are exact enough to compare with the algebra at 1e-6
    a, b = _mlp(0).double(), _mlp(1).double()
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    merged = regression_merge(a, b, SimpleNamespace(states=(a.state_dict(), b.state_dict())),
                              [x[:32], x[32:]], alpha=0.3, lam=0.0, variant=variant)
    assert forward_order(merged, x) == ["layers.0", "layers.2"]
    w = [0.7, 0.3]
    xs = x.double()
    first = [m.layers[0] for m in (a, b)]
    second = [m.layers[2] for m in (a, b)]
    # step 1: both endpoints (and the merged prefix) see x itself
    w1 = stacked_lstsq([xs, xs], [xs @ f.weight.double().T for f in first], w)
    b1 = torch.lerp(first[0].bias, first[1].bias, 0.3).double()
    # step 2: the endpoints' own hidden features, and the merged first layer's
    hidden = [torch.relu(xs @ f.weight.double().T + f.bias.double()) for f in first]
    merged_hidden = torch.relu(xs @ w1.T + b1)
    assert torch.linalg.matrix_rank(merged_hidden) == 4
    targets = [h @ s.weight.double().T for h, s in zip(hidden, second, strict=True)]
    sources = hidden if variant == "regmean" else [merged_hidden] * 2
    w2 = stacked_lstsq(sources, targets, w)
    torch.testing.assert_close(merged.layers[0].weight.double(), w1, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(merged.layers[2].weight.double(), w2, rtol=1e-6, atol=1e-7)
    other = stacked_lstsq(hidden if variant == "chain" else [merged_hidden] * 2, targets, w)
    assert not torch.allclose(w2, other, atol=1e-3)  # the two variants really differ here


def test_bad_input_is_rejected() -> None:
    data = batches("vgg11")
    a = model("vgg11", 0, data)
    alignment = align(a, a, "direct")
    with pytest.raises(ValueError, match="variant"):
        regression_merge(a, a, alignment, data, variant="ties")
    with pytest.raises(ValueError, match="lam"):
        regression_merge(a, a, alignment, data, lam=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        regression_merge(a, a, alignment, data, alpha=1.5)
    with pytest.raises(TypeError, match="list"):
        regression_merge(a, a, alignment, iter(data))
    with pytest.raises(ValueError, match="empty"):
        regression_merge(a, a, alignment, [])
    other = build_model("vgg11", width=1 / 8, image_size=16)
    with pytest.raises(ValueError, match="shapes"):
        regression_merge(a, other, alignment, data)
