import pytest
import torch
from torch import nn

from vfcore.align import align
from vfcore.merge import interpolate
from vfcore.models import build_model, num_parameters
from vfcore.normalize import (
    bias_calibrated_state,
    channel_stats,
    remove_biases,
    repair,
    repair_layers,
    reset_bn,
)
from vfcore.pfm import PFMModel, partial_zip, pfm_cost, preserve_first_merge
from vfcore.pipeline import aligned_models, merge_models
from vfcore.spec import spec_for
from vfcore.trace import structure
from vfcore.transform import permute

torch.set_num_threads(1)

ARCHS = ["vgg11", "vgg11_bn", "resnet20", "resnet20_ln", "resnet20_plain", "linear8", "mlp"]


def tiny(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    flat = name.startswith(("linear", "mlp"))
    kw = dict(in_channels=1, image_size=6) if flat else dict(image_size=16, in_channels=2)
    model = build_model(name, width=0.125 if not flat else 0.25, **kw)
    with torch.no_grad():  # non-trivial norm statistics and biases, so averaging them matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def inputs(model: nn.Module, n: int = 16, seed: int = 1) -> torch.Tensor:
    c = model.config
    return torch.randn(n, c.in_channels, c.image_size, c.image_size,
                       generator=torch.Generator().manual_seed(seed))


def planted_copy(model: nn.Module) -> nn.Module:
    """The same function with every hidden group's units shuffled."""
    spec = spec_for(model)
    g = torch.Generator().manual_seed(7)
    perms = {k: torch.randperm(n, generator=g) for k, n in spec.check(model.state_dict()).items()}
    copy = build_model(model.config.name, width=model.config.width,
                       in_channels=model.config.in_channels, image_size=model.config.image_size)
    copy.load_state_dict(permute(spec, perms, model.state_dict()))
    return copy.eval()


@pytest.mark.parametrize("name", ARCHS)
def test_all_layers_preserved_is_the_ensemble(name):
    a, b = tiny(name, 0), tiny(name, 1)
    x = inputs(a)
    alignment = align(a, b, "wm")
    pfm = preserve_first_merge(a, b, len(a.weight_layers), alignment=alignment).eval()
    with torch.no_grad():
        assert torch.allclose(pfm(x), (a(x) + b(x)) / 2, atol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_no_layer_preserved_is_plain_merging(name):
    a, b = tiny(name, 0), tiny(name, 1)
    x = inputs(a)
    alignment = align(a, b, "wm")
    merged = build_model(name, width=a.config.width, in_channels=a.config.in_channels,
                         image_size=a.config.image_size)
    merged.load_state_dict(interpolate(*alignment.states, 0.5))
    pfm = preserve_first_merge(a, b, 0, alignment=alignment).eval()
    with torch.no_grad():
        assert torch.allclose(pfm(x), merged.eval()(x), atol=1e-6)


@pytest.mark.parametrize("name", ARCHS)
def test_every_cut_of_a_model_and_its_permuted_copy_keeps_its_function(name):
    """Wrong cut tensors, a missing map into merged coordinates or a wrong unmap would show."""
    a = tiny(name, 0)
    b = planted_copy(a)
    x = inputs(a)
    alignment = align(a, b, "wm")
    with torch.no_grad():
        expected = a(x)
        for n in range(len(a.weight_layers) + 1):
            pfm = preserve_first_merge(a, b, n, alignment=alignment, alpha=0.3).eval()
            assert torch.allclose(pfm(x), expected, atol=1e-5), f"PFM{n}"
            zipped = partial_zip(a, b, n, alignment=alignment, alpha=0.3).eval()
            assert torch.allclose(zipped(x), expected, atol=1e-5), f"partial zip {n}"


def test_vgg_pfm_equals_a_hand_built_one():
    a, b = tiny("vgg11", 0), tiny("vgg11", 1)
    x = inputs(a)
    alignment = align(a, b, "direct")
    merged = build_model("vgg11", width=0.125, in_channels=2, image_size=16).eval()
    merged.load_state_dict(interpolate(a.state_dict(), b.state_dict(), 0.5))
    for n in (1, 3, 5):
        cut = int(a.weight_layers[n - 1].split(".")[1])
        with torch.no_grad():
            z = (a.features[:cut + 1](x) + b.features[:cut + 1](x)) / 2
            expected = merged.classifier(merged.pool(merged.features[cut + 1:](z)).flatten(1))
            pfm = preserve_first_merge(a, b, n, alignment=alignment).eval()
            assert torch.allclose(pfm(x), expected, atol=1e-6)


def test_resnet_cut_inside_a_block_crosses_two_tensors():
    net = structure(build_model("resnet20", width=0.25))
    inside = net.cut(6)  # block 2's input (for the shortcut) and its conv1 output
    assert [v.name for v in inside.live] == ["blocks_1_relu2", "blocks_2_conv1"]
    assert inside.boundary == "blocks.2.conv1" and inside.boundary_value == 1
    first = net.cut(1)
    assert first.boundary == "conv" and [v.name for v in first.live] == ["conv"]
    with pytest.raises(ValueError, match=r"\[0, 20\]"):
        net.cut(21)
    with pytest.raises(ValueError, match=r"\[0, 20\]"):
        net.cut(-1)


def test_costs_reproduce_the_papers_counts():
    vgg = build_model("vgg16")
    paper = {3: (14.83, 1.008, 0.37, 1.19), 6: (15.87, 1.08, 0.47, 1.49),
             8: (17.64, 1.2, 0.52, 1.67), 12: (27.07, 1.84, 0.62, 1.97)}
    for n, (params, p_ratio, gflops, f_ratio) in paper.items():
        cost = pfm_cost(vgg, n)
        assert round(cost.params / 1e6, 2) == params
        assert abs(cost.params_ratio - p_ratio) < 0.005
        assert round(cost.macs / 1e9, 2) == gflops
        assert abs(cost.macs_ratio - f_ratio) < 0.005
    assert pfm_cost(vgg, 0).params == num_parameters(vgg) == 14_719_818
    resnet = build_model("resnet20")
    paper = {6: (0.28, 1.04, 1.3), 10: (0.31, 1.14, 1.51), 13: (0.34, 1.24, 1.68),
             19: (0.54, 2.0, 2.0)}
    for n, (params, p_ratio, f_ratio) in paper.items():
        cost = pfm_cost(resnet, n)
        assert round(cost.params / 1e6, 2) == params
        assert abs(cost.params_ratio - p_ratio) < 0.01
        assert abs(cost.macs_ratio - f_ratio) < 0.01


@pytest.mark.parametrize("name", ["vgg11", "resnet20_plain"])
@pytest.mark.parametrize("n", [0, 2, 3])
def test_repair_of_a_pfm_model_hits_its_targets(name, n):
    a, b = tiny(name, 0), tiny(name, 1)
    calib = [inputs(a, 32, seed=s) for s in range(3)]
    alignment = align(a, b, "wm")
    pfm = preserve_first_merge(a, b, n, alignment=alignment)
    refs = []
    for state in alignment.states:
        m = build_model(name, width=0.125, in_channels=2, image_size=16).eval()
        m.load_state_dict(state)
        refs.append(m)
    repaired = repair(pfm, refs, [0.5, 0.5], calib, eps=0.0)
    targets = repaired.repair_targets(repair_layers(repaired))
    measured, names = [path for path, _, _ in targets], [layer for _, layer, _ in targets]
    target = [channel_stats(r, names, calib) for r in refs]
    got = channel_stats(repaired, measured, calib)
    for path, layer in zip(measured, names, strict=True):
        mean = (target[0][layer][0] + target[1][layer][0]) / 2
        std = (target[0][layer][1] + target[1][layer][1]) / 2
        assert torch.allclose(got[path][0], mean, atol=1e-4)
        assert torch.allclose(got[path][1], std, rtol=1e-3, atol=1e-5)


def test_reset_of_a_pfm_model_leaves_the_endpoints_alone():
    a, b = tiny("vgg11_bn", 0), tiny("vgg11_bn", 1)
    pfm = preserve_first_merge(a, b, 3, alignment=align(a, b, "wm"))
    before = {k: v.clone() for k, v in pfm.endpoints.state_dict().items()}
    reset = reset_bn(pfm, [inputs(a, 32, seed=s) for s in range(2)])
    after = reset.endpoints.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(reset.merged.features[1].running_var,
                           pfm.merged.features[1].running_var)


def test_mismatched_endpoints_are_refused():
    with pytest.raises(ValueError, match="differ"):
        preserve_first_merge(tiny("vgg11", 0), tiny("vgg11_bn", 0), 1)


# --- merge_models: one table cell of the paper -------------------------------------------------


def biased(name: str, seed: int) -> nn.Module:
    """`tiny` with nonzero conv/linear biases, so that bias options change the merge."""
    model = tiny(name, seed)
    with torch.no_grad():
        for layer in model.weight_layers:
            model.get_submodule(layer).bias.uniform_(-0.5, 0.5)
    return model


def same(state: dict, want: dict) -> bool:
    return state.keys() == want.keys() and all(torch.equal(v, want[k]) for k, v in state.items())


def test_merge_models_plain_merge_is_a_plain_model():
    a, b = biased("vgg11", 0), biased("vgg11", 1)
    alignment = align(a, b, "wm")
    merged = merge_models(a, b, alignment, alpha=0.3)
    assert type(merged) is type(a) and not merged.training
    assert same(merged.state_dict(), interpolate(*alignment.states, 0.3))
    pfm = merge_models(a, b, alignment, alpha=0.3, n_preserved=2)
    assert isinstance(pfm, PFMModel) and pfm.n_preserved == 2
    assert same(pfm.merged.state_dict(), merged.state_dict())


def test_merge_models_bias_options():
    a, b = biased("vgg11", 0), biased("vgg11", 1)
    alignment = align(a, b, "wm")
    plain = merge_models(a, b, alignment, alpha=0.3)
    removed = merge_models(a, b, alignment, alpha=0.3, removed_biases=2)
    assert same(removed.state_dict(), remove_biases(plain, 2).state_dict())
    assert not same(removed.state_dict(), plain.state_dict())
    pfm = merge_models(a, b, alignment, alpha=0.3, n_preserved=2, removed_biases=2)
    assert same(pfm.merged.state_dict(), removed.state_dict())
    calibrated = merge_models(a, b, alignment, alpha=0.3, bias_calibration=True)
    assert same(calibrated.state_dict(), bias_calibrated_state(a, *alignment.states, 0.3))


@pytest.mark.parametrize(("options", "message"), [
    (dict(removed_biases=0), "at least one layer"),
    (dict(removed_biases=-1), "at least one layer"),
    (dict(removed_biases=1, bias_calibration=True), "not both"),
    (dict(norm="bn"), "unknown normalisation"),
    (dict(norm="repair"), "needs calibration batches"),
    (dict(alpha=1.5), "alpha"),
])
def test_merge_models_rejects_bad_options(options, message):
    a, b = tiny("vgg11", 0), tiny("vgg11", 1)
    with pytest.raises(ValueError, match=message):
        merge_models(a, b, align(a, b, "direct"), **options)


def test_merge_models_normalises_towards_the_alpha_weighted_endpoints():
    a, b = biased("vgg11_bn", 0), biased("vgg11_bn", 1)
    alignment = align(a, b, "wm")
    batches = [inputs(a, 16, seed=s) for s in range(2)]
    plain = merge_models(a, b, alignment, alpha=0.3)
    reset = merge_models(a, b, alignment, alpha=0.3, norm="reset", calibration=batches)
    assert same(reset.state_dict(), reset_bn(plain, batches).state_dict())
    repaired = merge_models(a, b, alignment, alpha=0.3, norm="repair", calibration=batches)
    want = repair(plain, aligned_models(a, alignment), [0.7, 0.3], batches, mode="repair")
    for key, value in want.state_dict().items():
        torch.testing.assert_close(repaired.state_dict()[key], value, msg=key)


def test_merge_models_builds_zipit_maps_for_its_alpha():
    a, b = tiny("vgg11", 0), tiny("vgg11", 1)
    zipped = align(a, b, "zipit", [inputs(a, 32)])
    merged = merge_models(a, b, zipped, alpha=0.3)
    assert same(merged.state_dict(), interpolate(*zipped.at(0.3).states, 0.3))
    assert not same(merged.state_dict(), interpolate(*zipped.states, 0.3))
