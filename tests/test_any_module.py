"""Every kernel works on models from outside vfcore, through their traced structure.

The four outside models of tests/zoo.py (a ResNet18-style net with 1x1 downsample shortcuts, a
channel concatenation, a ConvNeXt-style block with a channels-first LayerNorm, an MLP with a
skip) go through alignment, merging, normalisation, PFM, pruning and the vanishing-feature
measurement, against known answers: a planted permutation keeps the function and is recovered;
a model merged with its own permuted copy is the model; PFM at l = 0 is the plain merge and at
l = L the ensemble; REPAIR hits its targets, RESET stores the batch statistics; a model measured
against itself has normalised scale 1. Bad input gets an error and changes nothing.
"""

from __future__ import annotations

import copy

import pytest
import torch
import zoo
from torch import nn

from vfcore.align import align, check_equivalent
from vfcore.merge import interpolate, with_state
from vfcore.models import has_batchnorm
from vfcore.normalize import (
    bias_calibrated_state,
    channel_stats,
    remove_biases,
    repair,
    repair_layers,
)
from vfcore.pfm import partial_zip, pfm_cost, preserve_first_merge
from vfcore.pipeline import aligned_models, merge_models
from vfcore.prune import normalize_pruned, prune, sparsity
from vfcore.spec import spec_for
from vfcore.trace import TraceError, structure
from vfcore.transform import permute
from vfcore.vf import normalized_scale, vf_layers

torch.set_num_threads(1)

ZOO = {
    "resnet18": (zoo.ResNet18Style, (3, 8, 8)),
    "concat": (zoo.ConcatNet, (3, 6, 6)),
    "convnext": (zoo.TinyConvNeXt, (3, 8, 8)),
    "skip_mlp": (zoo.SkipMLP, (6,)),
}
NAMES = list(ZOO)


@torch.no_grad()
def make(name: str, seed: int = 0) -> nn.Module:
    """A zoo model in eval mode with generic parameters and statistics (every entry distinct,
    biases around 1 so that most units are active), its structure derived once."""
    cls, shape = ZOO[name]
    torch.manual_seed(seed)
    model = cls().eval()
    zoo.randomise(model, seed, lambda _key, noise: 1.0 + 0.5 * noise)
    spec_for(model, torch.zeros(2, *shape))
    return model


def batches(name: str, n: int = 3, size: int = 32, seed: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *ZOO[name][1], generator=gen) for _ in range(n)]


def planted(model: nn.Module, seed: int = 1) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model with every group's units shuffled, and the permutations."""
    spec = structure(model).spec
    gen = torch.Generator().manual_seed(seed)
    perms = {g: torch.randperm(n, generator=gen)
             for g, n in spec.check(model.state_dict()).items()}
    return with_state(model, permute(spec, perms, model.state_dict())), perms


def undoes(planted_perms: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p[found[g]], torch.arange(len(p))) for g, p in planted_perms.items())


def outputs(model: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(x) for x in xs])


# ----------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("name", NAMES)
def test_planted_permutation_keeps_the_function_and_is_recovered(name: str) -> None:
    model = make(name)
    other, perms = planted(model)
    xs = batches(name)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    check_equivalent(model, other, torch.cat(xs))
    wm = align(model, other, "wm")
    assert undoes(perms, wm.maps[1])
    assert all(torch.equal(wm.states[1][k], v) for k, v in model.state_dict().items())
    am = align(model, other, "am", xs)
    assert undoes(perms, am.maps[1])


@pytest.mark.parametrize("method", ["zipit", "cca"])
@pytest.mark.parametrize("name", NAMES)
def test_dense_matchers_merge_a_permuted_copy_back_into_the_model(name: str, method: str) -> None:
    model = make(name)
    other, _ = planted(model)
    xs = batches(name)
    alignment = align(model, other, method, xs)
    merged = merge_models(model, other, alignment)
    torch.testing.assert_close(outputs(merged, xs), outputs(model, xs), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- PFM


@pytest.mark.parametrize("name", NAMES)
def test_pfm_ends_are_the_plain_merge_and_the_ensemble(name: str) -> None:
    a, b = make(name, 0), make(name, 1)
    xs = batches(name, n=1)
    alignment = align(a, b, "wm")
    n_layers = len(structure(a).weight_layers)
    plain = with_state(a, interpolate(*alignment.states, 0.3))
    first = preserve_first_merge(a, b, 0, alignment=alignment, alpha=0.3)
    torch.testing.assert_close(outputs(first, xs), outputs(plain, xs))
    every = preserve_first_merge(a, b, n_layers, alignment=alignment, alpha=0.3)
    ensemble = 0.7 * outputs(a, xs) + 0.3 * outputs(b, xs)
    torch.testing.assert_close(outputs(every, xs), ensemble, rtol=1e-4, atol=1e-5)
    cost = pfm_cost(a, n_layers)
    assert cost.params == 2 * cost.base_params and cost.macs == 2 * cost.base_macs
    assert pfm_cost(a, 0).params == cost.base_params


@pytest.mark.parametrize("name", NAMES)
def test_every_cut_of_a_model_and_its_permuted_copy_keeps_the_function(name: str) -> None:
    model = make(name)
    other, _ = planted(model)
    xs = batches(name, n=1)
    alignment = align(model, other, "wm")
    expected = outputs(model, xs)
    for n in range(len(structure(model).weight_layers) + 1):
        pfm = preserve_first_merge(model, other, n, alignment=alignment, alpha=0.3)
        torch.testing.assert_close(outputs(pfm, xs), expected, rtol=1e-4, atol=1e-5)
        zipped = partial_zip(model, other, n, alignment=alignment, alpha=0.3)
        torch.testing.assert_close(outputs(zipped, xs), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("name", ["skip_mlp", "convnext"])
@pytest.mark.parametrize("n_preserved", [0, 2])
def test_repair_hits_the_weighted_targets(name: str, n_preserved: int) -> None:
    a, b = make(name, 0), make(name, 1)
    xs = batches(name)
    alignment = align(a, b, "wm")
    refs = aligned_models(a, alignment)
    merged = merge_models(a, b, alignment, n_preserved=n_preserved)
    repaired = repair(merged, refs, [0.5, 0.5], xs, eps=0.0)
    axes = structure(a).layer_axes
    targets = repair_targets(repaired)
    assert [name for _, name in targets] == [
        n for n in repair_layers(a) if n not in structure(a).layers_before(n_preserved)
        or n == structure(a).cut(n_preserved).boundary]
    for path, layer in targets:
        want = [channel_stats(r, [layer], xs, axes={layer: axes[layer]})[layer] for r in refs]
        got = channel_stats(repaired, [path], xs, axes={path: axes[layer]})[path]
        torch.testing.assert_close(got[0], (want[0][0] + want[1][0]) / 2, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[1], (want[0][1] + want[1][1]) / 2, atol=1e-4, rtol=1e-3)


def repair_targets(model: nn.Module) -> list[tuple[str, str]]:
    """(path measured, layer name) of every layer REPAIR corrects in a model or PFM wrapper."""
    layers = repair_layers(model)
    if hasattr(model, "repair_targets"):
        return [(path, layer) for path, layer, _ in model.repair_targets(layers)]
    return [(layer, layer) for layer in layers]


@pytest.mark.parametrize("name", ["resnet18", "concat"])
def test_reset_stores_the_batch_statistics(name: str) -> None:
    a, b = make(name, 0), make(name, 1)
    x = batches(name, n=1)
    merged = merge_models(a, b, align(a, b, "wm"), norm="reset", calibration=x)
    seen: dict[str, torch.Tensor] = {}
    probe = copy.deepcopy(merged).train()
    bns = {n: m for n, m in probe.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for n, m in bns.items():
        m.register_forward_hook(lambda _m, i, _o, n=n: seen.__setitem__(n, i[0]))
    with torch.no_grad():
        probe(x[0])
    for n, bn in merged.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            inputs = seen[n].transpose(0, 1).flatten(1)
            torch.testing.assert_close(bn.running_mean, inputs.mean(1), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(bn.running_var, inputs.var(1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bias_options_and_merge_pipeline(name: str) -> None:
    a, b = make(name, 0), make(name, 1)
    xs = batches(name)
    alignment = align(a, b, "wm")
    s = structure(a)
    state = a.state_dict()
    calibrated = bias_calibrated_state(a, state, state, 0.3)
    for layer, depth in s.bias_depths.items():
        key = f"{layer}.bias"
        if key in state:
            torch.testing.assert_close(calibrated[key], (0.7 ** depth + 0.3 ** depth) * state[key])
    removed = remove_biases(a, 2)
    for layer in s.weight_layers[-2:]:
        bias = removed.get_submodule(layer).bias
        assert bias is None or not bias.any()
    norm = "reset" if has_batchnorm(a) else "rescale"
    for options in (dict(bias_calibration=True), dict(removed_biases=1), dict(n_preserved=1)):
        merged = merge_models(a, b, alignment, norm=norm, calibration=xs, **options)
        assert torch.isfinite(outputs(merged, xs)).all()


# ----------------------------------------------------------------------------- pruning, VF


@pytest.mark.parametrize("name", NAMES)
def test_pruning_and_its_normalisation(name: str) -> None:
    model = make(name)
    xs = batches(name)
    pruned = prune(model, 0.5)
    assert abs(sparsity(pruned) - 0.5) < 0.01
    fixed = normalize_pruned(pruned, model, xs)
    assert torch.isfinite(outputs(fixed, xs)).all()
    if has_batchnorm(model):  # RESET: the statistics move, the weights do not
        assert all(torch.equal(fixed.state_dict()[k], v) for k, v in pruned.state_dict().items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    else:  # REPAIR towards the unpruned model: its repaired layers hit the unpruned statistics
        axes = structure(model).layer_axes
        for layer in repair_layers(model):
            want = channel_stats(model, [layer], xs, axes={layer: axes[layer]})[layer]
            got = channel_stats(fixed, [layer], xs, axes={layer: axes[layer]})[layer]
            torch.testing.assert_close(got[0], want[0], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_a_model_against_itself_has_unit_scale(name: str) -> None:
    model = make(name)
    other, _ = planted(model)
    xs = batches(name)
    layers = vf_layers(model, include_norms=True)
    assert layers[:1] == structure(model).weight_layers[:1]
    assert normalized_scale(model, [model], xs, layers).tolist() == [1.0] * len(layers)
    scale = normalized_scale(other, [model], xs, layers)  # permuting keeps every norm
    torch.testing.assert_close(torch.as_tensor(scale), torch.ones(len(layers),
                                                                   dtype=torch.float64),
                               rtol=1e-5, atol=0)
    pfm = preserve_first_merge(model, other, 2, alignment=align(model, other, "wm"))
    paths, names = pfm.measured_layers(include_norms=True)
    scale = normalized_scale(pfm, [model, other], xs, paths, ref_layers=names)
    torch.testing.assert_close(torch.as_tensor(scale), torch.ones(len(names),
                                                                   dtype=torch.float64),
                               rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------- bad input


def snapshot(*models: nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in models]


def unchanged(models: tuple[nn.Module, ...], before: list[dict[str, torch.Tensor]]) -> bool:
    return all(m.state_dict().keys() == s.keys() and
               all(torch.equal(m.state_dict()[k], v) for k, v in s.items())
               for m, s in zip(models, before, strict=True))


def test_different_architectures_are_refused_and_nothing_is_written() -> None:
    resnet, concat = make("resnet18"), make("concat")
    wider = zoo.ResNet18Style(width=8).eval()
    before = snapshot(resnet, concat, wider)
    with pytest.raises(ValueError, match="models differ: ResNet18Style vs ConcatNet"):
        align(resnet, concat, "wm")
    with pytest.raises(ValueError, match=r"models differ: conv1.weight has shape"):
        align(resnet, wider, "wm")
    with pytest.raises(ValueError, match="models differ"):
        preserve_first_merge(resnet, wider, 1)
    with pytest.raises(ValueError, match="models differ"):
        repair(resnet, [wider], [1.0], batches("resnet18"))
    assert unchanged((resnet, concat, wider), before)


def test_a_state_dict_that_does_not_fit_is_refused() -> None:
    model = make("concat")
    spec = structure(model).spec
    state = model.state_dict()
    before = snapshot(model)
    perms = {"mix": torch.arange(6)}
    missing = {k: v for k, v in state.items() if k != "bn.running_var"}
    narrow = state | {"bn.running_var": torch.ones(7)}
    with pytest.raises(ValueError, match=r"missing keys \['bn.running_var'\]"):
        permute(spec, perms, missing)
    with pytest.raises(ValueError, match="block axis holds 8"):
        permute(spec, perms, narrow)
    with pytest.raises(ValueError):
        bias_calibrated_state(model, missing, missing, 0.5)
    assert unchanged((model,), before)


@pytest.mark.parametrize("cls, shape, message", [
    (zoo.DataDependent, (2, 4), r"cannot trace DataDependent: .*control flow"),
    (zoo.GroupedConv, (2, 3, 8, 8), r"node 'grouped' \(Conv2d .*grouped convolution"),
    (zoo.ChannelMean, (2, 3, 8, 8), r"node 'mean' \(method \.mean\(\)\)"),
])
def test_a_model_that_cannot_be_traced_is_refused_naming_the_node(cls, shape, message) -> None:
    a, b = cls(), cls()
    before = snapshot(a, b)
    with pytest.raises(TraceError, match=message):
        spec_for(a, torch.zeros(shape))
    with pytest.raises(TraceError, match=message):
        align(a, b, "wm")  # the class's input shape is known from the first attempt
    assert unchanged((a, b), before)
