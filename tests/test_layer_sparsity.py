"""Known answers of vfcore.layer_sparsity: exact mean sparsity, the uniform limit, direction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfcore.layer_sparsity import allocate, prune_allocated, weight_statistic
from vfcore.models import build_model
from vfcore.prune import prunable_layers, prune

torch.set_num_threads(1)

SAMPLERS = {  # light to heavy tails: kurtosis 1.8, 3, 6 and about 30 (a 10% Gaussian spike)
    "uniform": lambda g, n: torch.rand(n, generator=g) * 2 - 1,
    "gaussian": lambda g, n: torch.randn(n, generator=g),
    "laplace": lambda g, n: torch.log(torch.rand(n, generator=g)) * torch.sign(
        torch.rand(n, generator=g) - 0.5),
    "spike": lambda g, n: torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.1)
    + 0.01 * torch.randn(n, generator=g),
}


def planted() -> nn.Module:
    """Four 20x20 linear layers whose weights follow the SAMPLERS' distributions, in order."""
    model = nn.Sequential(*[nn.Linear(20, 20) for _ in SAMPLERS])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer, sample in zip(model, SAMPLERS.values(), strict=True):
            layer.weight.copy_(sample(g, 400).view(20, 20))
    return model


def tiny_vgg() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg11", width=1 / 16, image_size=16)


def zeros(model: nn.Module) -> dict[str, int]:
    return {n: int((model.get_submodule(n).weight == 0).sum()) for n in prunable_layers(model)}


@pytest.mark.parametrize("statistic", ["kurtosis", "hoyer"])
@pytest.mark.parametrize("mean", [0.7, 0.9, 0.95])
def test_mean_sparsity_is_exact(statistic: str, mean: float) -> None:
    for model in (tiny_vgg(), planted()):
        total = sum(model.get_submodule(n).weight.numel() for n in prunable_layers(model))
        allocation = allocate(model, mean, statistic=statistic, strength=1.0)
        assert sum(allocation.values()) == round(mean * total)
        pruned = prune_allocated(model, allocation)
        assert zeros(pruned) == allocation
        for name, count in allocation.items():
            assert count <= 0.99 * model.get_submodule(name).weight.numel()
        for name, p in model.named_parameters():
            if not name.endswith("weight"):  # biases are never pruned
                assert torch.equal(pruned.get_parameter(name), p), name


def test_strength_zero_is_layerwise_pruning() -> None:
    model = tiny_vgg()
    mean = 0.8
    sizes = {n: model.get_submodule(n).weight.numel() for n in prunable_layers(model)}
    assert sum(round(mean * s) for s in sizes.values()) == round(mean * sum(sizes.values()))
    allocation = allocate(model, mean, statistic="kurtosis", strength=0.0)
    assert allocation == {n: round(mean * s) for n, s in sizes.items()}
    ours, reference = prune_allocated(model, allocation), prune(model, mean, scope="layerwise")
    for name in sizes:
        assert torch.equal(ours.get_submodule(name).weight,
                           reference.get_submodule(name).weight), name
    as_fractions = prune_allocated(model, dict.fromkeys(sizes, mean))  # floats are fractions
    assert zeros(as_fractions) == allocation


def test_channels_last_weights_are_pruned_like_contiguous_ones() -> None:
    """Models run channels-last on the CPU; their 4-D weights cannot be viewed as flat."""
    model = tiny_vgg()
    allocation = allocate(model, 0.8)
    reference = prune_allocated(model, allocation)
    ours = prune_allocated(model.to(memory_format=torch.channels_last), allocation)
    for name in allocation:
        assert torch.equal(ours.get_submodule(name).weight, reference.get_submodule(name).weight)


@pytest.mark.parametrize("statistic", ["kurtosis", "hoyer"])
def test_heavier_tails_get_less_sparsity(statistic: str) -> None:
    model = planted()
    names = prunable_layers(model)
    stats = [weight_statistic(model.get_submodule(n).weight, statistic) for n in names]
    assert stats == sorted(stats)  # the planted order really is light to heavy tails
    allocation = allocate(model, 0.8, statistic=statistic, strength=1.0)
    counts = [allocation[n] for n in names]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] + 40
    reversed_ = allocate(model, 0.8, statistic=statistic, strength=-1.0)
    assert [reversed_[n] for n in names] == sorted(reversed_.values())


def test_bounds_are_respected() -> None:
    model = planted()
    allocation = allocate(model, 0.5, statistic="hoyer", strength=5.0, bounds=(0.3, 0.6))
    assert sum(allocation.values()) == 800
    assert all(120 <= c <= 240 for c in allocation.values())


def test_bad_input_is_rejected() -> None:
    model = planted()
    for mean in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="mean_sparsity"):
            allocate(model, mean, statistic="hoyer")
    with pytest.raises(ValueError, match="statistic"):
        allocate(model, 0.5, statistic="entropy")
    with pytest.raises(ValueError, match="cannot be reached"):
        allocate(model, 0.95, statistic="hoyer", bounds=(0.0, 0.9))
    with pytest.raises(KeyError, match="not prunable"):
        prune_allocated(model, {"9": 3})
    with pytest.raises(ValueError, match="outside"):
        prune_allocated(model, {"0": 401})
    with torch.no_grad():
        model[0].weight.zero_()
    with pytest.raises(ValueError, match="constant"):
        allocate(model, 0.5, statistic="kurtosis")
