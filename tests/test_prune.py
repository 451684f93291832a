"""Magnitude pruning (exact counts, ties, survivors) and post-pruning normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfcore.hooks import outputs_of
from vfcore.models import build_model
from vfcore.normalize import repair, repair_layers, reset_bn
from vfcore.prune import normalize_pruned, prunable_layers, prune, sparsity


def make(name: str, seed: int = 0) -> nn.Module:
    """A tiny model with random nonzero biases (so "biases untouched" can fail)."""
    torch.manual_seed(seed)
    size = 16 if name.startswith("vgg") else 8
    model = build_model(name, width=0.125, in_channels=1, image_size=size)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def data(size: int, n=(16, 16)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(k, 1, size, size, generator=g) for k in n]


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [model.get_submodule(n).weight.detach() for n in prunable_layers(model)]


def test_prunable_layers_include_shortcuts_and_head():
    model = make("resnet20")
    names = prunable_layers(model)
    assert "blocks.3.shortcut.0" in names and "blocks.6.shortcut.0" in names
    assert set(model.weight_layers) < set(names) and len(names) == len(model.weight_layers) + 2


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_global_prune_is_exact_and_keeps_the_largest(fraction):
    model = make("resnet20_plain")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, fraction)
    total = sum(w.numel() for w in weights(model))
    k = round(fraction * total)
    assert sparsity(pruned) == k / total
    old, new = torch.cat([w.flatten() for w in weights(model)]), torch.cat(
        [w.flatten() for w in weights(pruned)])
    assert int((new == 0).sum()) == k
    assert torch.equal(new[new != 0], old[new != 0])
    assert old[new == 0].abs().max() <= old[new != 0].abs().min()
    for key, value in pruned.state_dict().items():
        if not key.endswith("weight") or "norm" in key:
            assert torch.equal(value, before[key]), key
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_layerwise_prune_counts_per_layer():
    model = make("vgg11")
    pruned = prune(model, 0.7, scope="layerwise")
    for old, new in zip(weights(model), weights(pruned), strict=True):
        assert int((new == 0).sum()) == round(0.7 * old.numel())
        assert old[new == 0].abs().max() <= old[new != 0].abs().min()


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_prune_with_tied_magnitudes_is_exact_and_deterministic(scope):
    model = make("vgg11")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # only magnitudes 1 and 2: almost every weight ties with many others
        for w in weights(model):
            signs = torch.randint(0, 2, w.shape, generator=g) * 2 - 1
            w.copy_(signs * torch.randint(1, 3, w.shape, generator=g))
    first, second = prune(model, 0.33, scope=scope), prune(model, 0.33, scope=scope)
    total = sum(w.numel() for w in weights(model))
    if scope == "global":
        assert sum(int((w == 0).sum()) for w in weights(first)) == round(0.33 * total)
    else:
        for w in weights(first):
            assert int((w == 0).sum()) == round(0.33 * w.numel())
    assert all(torch.equal(a, b) for a, b in zip(weights(first), weights(second), strict=True))


def test_pruned_model_is_plain():
    model = make("vgg11")
    pruned = prune(model, 0.5)
    assert pruned.state_dict().keys() == model.state_dict().keys()
    for m in pruned.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
    assert all(type(p) is nn.Parameter for p in pruned.parameters())


def test_prune_rejects_bad_arguments():
    model = make("mlp")
    for bad in (-0.1, 1.0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            prune(model, bad)
    with pytest.raises(ValueError, match="scope"):
        prune(model, 0.5, scope="structured")
    assert sparsity(prune(model, 0.0)) == 0.0


def test_normalize_pruned_resets_batchnorm_models():
    model = make("vgg11_bn")
    pruned = prune(model, 0.8)
    batches = data(16)
    out = normalize_pruned(pruned, model, batches)
    want = reset_bn(pruned, batches)
    assert int(out.features[1].num_batches_tracked) == len(batches)
    for key, value in want.state_dict().items():
        assert torch.equal(out.state_dict()[key], value), key
    assert not torch.allclose(out.features[1].running_var, pruned.features[1].running_var)
    with pytest.raises(ValueError, match="RESET"):
        normalize_pruned(pruned, model, batches, mode="rescale")


def stats(model: nn.Module, names: list[str], batches) -> dict:
    outs = outputs_of(model, names, torch.cat(batches))
    flat = {n: o.double().transpose(0, 1).flatten(1) for n, o in outs.items()}
    return {n: (f.mean(1), f.std(1, correction=0)) for n, f in flat.items()}


@pytest.mark.parametrize("mode", [None, "rescale"])
def test_normalize_pruned_repairs_models_without_batchnorm(mode):
    model = make("vgg11")
    pruned = prune(model, 0.8)
    batches = [1000 * x for x in data(16)]  # channel variances far above eps = 1e-5
    layers = repair_layers(model)
    out = normalize_pruned(pruned, model, batches, mode=mode)
    direct = repair(pruned, [model], [1.0], batches, mode=mode or "repair")
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in out.state_dict().items())
    got, want, old = stats(out, layers, batches), stats(model, layers, batches), stats(
        pruned, layers[:1], batches)
    for n in layers:
        torch.testing.assert_close(got[n][1], want[n][1], rtol=2e-3, atol=0)
    first = layers[0]
    if mode is None:
        for n in layers:
            assert torch.all((got[n][0] - want[n][0]).abs() <= 1e-3 * want[n][1])
    else:
        torch.testing.assert_close(got[first][0] / got[first][1], old[first][0] / old[first][1],
                                   rtol=1e-3, atol=1e-4)
        assert not torch.allclose(got[first][0], want[first][0], rtol=0.05)
    assert sparsity(out) == sparsity(pruned)
