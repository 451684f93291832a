"""Known-answer tests of vfcore.trace: specs and structure derived by torch.fx tracing.

Golden tests: for every built-in architecture the traced spec equals the hand-written one
(tests/golden_specs.py) up to group names, and so do the paper's layer facts (L weight layers,
REPAIR layers, PFM cuts, bias depths). Outside models (tests/zoo.py) are checked by what they
must compute: running the graph piece by piece gives the model's output, read points carry their
group's channels, and models that cannot be handled raise errors naming the node.
"""

from __future__ import annotations

import time

import pytest
import torch
import zoo
from golden_specs import (
    hand_bias_depths,
    hand_cut_groups,
    hand_repair_layers,
    hand_spec,
)
from torch import nn

from vfcore.hooks import outputs_of
from vfcore.models import ARCHITECTURES, ChannelLayerNorm, build_model
from vfcore.spec import Block, Part, PermutationSpec, spec_for
from vfcore.trace import TraceError, structure, structure_of

torch.set_num_threads(1)


def tiny(name: str) -> dict:
    if name.startswith("linear"):
        return dict(width=0.25, in_channels=1, image_size=4)
    if name == "mlp":
        return dict(width=1 / 32, in_channels=1, image_size=4)
    if name.startswith("vgg"):
        return dict(width=1 / 16, image_size=16)
    return dict(width=0.25, image_size=8)


def builtin(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    kw = tiny(name)
    x = torch.randn(2, kw.get("in_channels", 3), kw["image_size"], kw["image_size"])
    return build_model(name, **kw).eval(), x


ZOO = {
    "resnet18": (zoo.ResNet18Style, (4, 3, 8, 8)),
    "concat": (zoo.ConcatNet, (4, 3, 6, 6)),
    "convnext": (zoo.TinyConvNeXt, (4, 3, 8, 8)),
    "skip_mlp": (zoo.SkipMLP, (4, 6)),
}


def zoo_model(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = ZOO[name]
    torch.manual_seed(seed)
    return cls().eval(), torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def members(spec: PermutationSpec) -> dict[str, frozenset[tuple[str, int]]]:
    """Group -> the (key, axis) pairs it permutes (plain specs only)."""
    out: dict[str, set[tuple[str, int]]] = {}
    for key, axes in spec.axes.items():
        for axis, group in enumerate(axes):
            if group is not None:
                out.setdefault(group, set()).add((key, axis))
    return {g: frozenset(v) for g, v in out.items()}


def renaming(traced: PermutationSpec, hand: PermutationSpec) -> dict[str | None, str | None]:
    """Assert both specs permute the same (key, axis) sets together; map traced names to hand's."""
    assert list(traced.axes) == list(hand.axes)
    assert [len(a) for a in traced.axes.values()] == [len(a) for a in hand.axes.values()]
    ours, theirs = members(traced), members(hand)
    assert sorted(map(sorted, ours.values())) == sorted(map(sorted, theirs.values()))
    by_members = {v: g for g, v in theirs.items()}
    return {None: None} | {g: by_members[v] for g, v in ours.items()}


# ----------------------------------------------------------------------------- built-ins (golden)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_builtin_structure_matches_the_hand_written_one(name: str) -> None:
    model, _ = builtin(name)
    s = structure(model)
    hand = hand_spec(model)
    rename = renaming(s.spec, hand)
    assert spec_for(model) is s.spec
    assert {rename[g]: v for g, v in s.spec.features.items()} == hand.features
    assert set(s.spec.feature_axes.values()) == {1}

    assert s.weight_layers == model.weight_layers and s.head == model.weight_layers[-1]
    resnet = name.startswith("resnet")
    assert s.side_layers == (["blocks.3.shortcut.0", "blocks.6.shortcut.0"] if resnet else [])
    assert s.layers == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d |
                                                                             nn.Linear)]
    assert s.repair_layers == hand_repair_layers(model)
    assert s.bias_depths == hand_bias_depths(model)
    names, modules = list(dict(model.named_modules())), dict(model.named_modules())
    for layer in s.layers:  # the norm registered right after a layer is the one applied to it
        following = names[names.index(layer) + 1: names.index(layer) + 2]
        norm = following and isinstance(modules[following[0]], nn.BatchNorm2d | ChannelLayerNorm)
        assert s.norm_after[layer] == (following[0] if norm else None), layer
    for n in range(len(s.weight_layers) + 1):
        cut = s.cut(n)
        assert cut.boundary == (model.weight_layers[n - 1] if n else None)
        groups = [rename[v.group] for v in cut.live]
        if n == 0:
            assert [(v.group, v.axis) for v in cut.live] == [(None, None)]
        else:
            assert groups == [hand.axes[key][axis] for key, axis in hand_cut_groups(model, n)]
            assert cut.live[cut.boundary_value].axis == 1


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "linear5_res", "mlp"])
def test_running_the_graph_piece_by_piece_gives_the_model(name: str) -> None:
    model, x = builtin(name)
    s = structure(model)
    with torch.no_grad():
        expected = model(x)
        for n in range(len(s.weight_layers) + 1):
            live = s.run(model, (x,), stop=n)
            assert len(live) == len(s.cut(n).live)
            assert torch.equal(s.run(model, live, start=n), expected)
            if n >= 2:  # from one cut to a later one, then on to the output
                middle = s.run(model, s.run(model, (x,), stop=n - 2), start=n - 2, stop=n)
                assert torch.equal(s.run(model, middle, start=n), expected)
    with pytest.raises(ValueError, match="back to cut"):
        s.run(model, s.run(model, (x,), stop=2), start=2, stop=1)
    with pytest.raises(ValueError, match="live values"):
        s.run(model, (x, x), start=0)


def test_structures_are_cached_per_architecture_and_training_state_is_untouched() -> None:
    model, x = builtin("vgg16_bn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = structure_of(model, x)
    assert fresh.spec.axes == structure(model).spec.axes
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    other = build_model("vgg16_bn", **tiny("vgg16_bn"))
    assert structure(other) is structure(model)  # same class, modules, keys and shapes
    wider = build_model("vgg16_bn", **{**tiny("vgg16_bn"), "width": 1 / 8})
    assert structure(wider) is not structure(model)
    residual = build_model("linear5_res", **tiny("linear5_res"))
    assert structure(residual) is not structure(build_model("linear5", **tiny("linear5")))


def test_the_cache_makes_a_structure_cheap() -> None:
    model, _ = builtin("resnet20")
    start = time.perf_counter()
    for _ in range(20):
        structure_of(model, torch.zeros(2, 3, 8, 8))
    traced = (time.perf_counter() - start) / 20
    structure(model)
    start = time.perf_counter()
    for _ in range(200):
        structure(model)
    cached = (time.perf_counter() - start) / 200
    assert cached < traced / 10, (cached, traced)


# ----------------------------------------------------------------------------- outside models


def test_resnet18_style_spec_unites_each_stage_stream() -> None:
    model, x = zoo_model("resnet18")
    s = structure_of(model, x)
    axes = s.spec.axes
    stage1 = {axes[k][0] for k in ("conv1.weight", "layer1.0.conv2.weight",
                                   "layer1.1.conv2.weight")}
    stage2 = {axes[k][0] for k in ("layer2.0.conv2.weight", "layer2.0.downsample.0.weight",
                                   "layer2.1.conv2.weight", "layer2.1.bn2.running_var")}
    assert stage1 == {"conv1"} and stage2 == {"layer2.0.conv2"}
    assert axes["layer2.0.downsample.0.weight"] == ("layer2.0.conv2", "conv1", None, None)
    assert axes["fc.weight"] == (None, "layer2.0.conv2") and axes["fc.bias"] == (None,)
    assert axes["layer1.0.bn1.num_batches_tracked"] == ()
    assert s.weight_layers == ["conv1"] + [f"layer{i}.{b}.conv{j}" for i in (1, 2)
                                           for b in (0, 1) for j in (1, 2)] + ["fc"]
    assert s.side_layers == ["layer2.0.downsample.0"]
    assert s.norm_after["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert s.norm_after["layer1.1.conv2"] == "layer1.1.bn2" and s.norm_after["fc"] is None
    assert s.repair_layers == s.weight_layers[1:-1]  # the blocks' convs, as for ResNet20
    assert s.bias_depths["layer2.0.downsample.0"] == s.bias_depths["layer2.0.conv2"] == 7


def test_concatenation_gives_block_axes_and_flatten_a_repeated_block() -> None:
    model, x = zoo_model("concat")
    s = structure_of(model, x)
    cat = Block((Part("branch_a", 3), Part("branch_b", 5)))
    assert s.spec.axes["bn.running_var"] == (cat,)
    assert s.spec.axes["mix.weight"] == ("mix", cat, None, None)
    assert s.spec.axes["head.weight"] == (None, Block((Part("mix", 6, 4),)))
    assert s.weight_layers == ["stem", "branch_a", "mix", "head"]
    assert s.side_layers == ["branch_b"]
    assert s.bias_depths["branch_b"] == s.bias_depths["branch_a"] == 2
    assert s.spec.check(model.state_dict()) == {"stem": 4, "branch_a": 3, "branch_b": 5,
                                                "mix": 6}
    view = s.spec.plain
    assert view.spec.axes["bn[1].running_var"] == ("branch_b",)
    assert view.spec.axes["mix[0].weight"] == ("mix", "branch_a", None, None)
    assert view.spec.axes["head[0].weight"] == (None, "mix", None)
    state = model.state_dict()
    pieces = view.split(state)
    assert pieces["head[0].weight"].shape == (3, 6, 4)
    assert torch.equal(pieces["head[0].weight"][:, 2], state["head.weight"][:, 8:12])
    assert torch.equal(pieces["mix[1].weight"], state["mix.weight"][:, 3:])
    with pytest.raises(TypeError, match="block axis"):
        {cat: 1}  # noqa: B018 -- a block is not a group name


def test_convnext_block_follows_channels_last_layer_norm_and_layer_scale() -> None:
    model, x = zoo_model("convnext")
    s = structure_of(model, x)
    axes = s.spec.axes
    stream = {axes[k][0] for k in ("stem.weight", "stem_norm.weight", "blocks.0.dwconv.weight",
                                   "blocks.0.norm.bias", "blocks.0.gamma",
                                   "blocks.1.pwconv2.weight", "head_norm.weight")}
    assert stream == {"stem"} and axes["head.weight"] == (None, "stem")
    assert axes["blocks.0.dwconv.weight"] == ("stem", None, None, None)
    assert axes["blocks.1.pwconv1.weight"] == ("blocks.1.pwconv1", "stem")
    assert s.spec.features["blocks.0.pwconv1"] == ["blocks.0.act"]
    assert s.spec.features["stem"][-1] == "head_norm"
    assert s.spec.feature_axis("blocks.0.act") == 3 and s.spec.feature_axis("head_norm") == 1
    assert s.weight_layers == ["stem"] + [f"blocks.{b}.{n}" for b in (0, 1)
                                          for n in ("dwconv", "pwconv1", "pwconv2")] + ["head"]
    assert s.layer_axes["blocks.0.pwconv1"] == 3 and s.layer_axes["stem"] == 1
    assert s.norm_after["stem"] == "stem_norm"
    assert s.norm_after["blocks.0.dwconv"] == "blocks.0.norm"
    assert s.norm_after["blocks.0.pwconv1"] is None
    assert s.repair_layers == s.weight_layers[1:-1]


def test_skip_mlp_unites_the_skipped_layers() -> None:
    model, x = zoo_model("skip_mlp")
    s = structure_of(model, x)
    assert s.spec.axes["fc3.weight"] == ("fc1", "fc2")
    assert s.spec.axes["fc4.weight"] == (None, "fc1")
    assert s.weight_layers == ["fc1", "fc2", "fc3", "fc4"]
    assert s.repair_layers == ["fc2", "fc3"]  # inside the skipped branch, as in a ResNet
    assert [(v.group, v.axis) for v in s.cut(2).live] == [("fc1", 1), ("fc2", 1)]


@pytest.mark.parametrize("name", list(ZOO))
def test_pieces_compose_to_the_model_for_every_cut(name: str) -> None:
    model, x = zoo_model(name)
    s = structure_of(model, x)
    sizes = s.spec.check(model.state_dict())
    with torch.no_grad():
        expected = model(x)
        for n in range(len(s.weight_layers) + 1):
            values = s.run(model, (x,), stop=n)
            assert torch.equal(s.run(model, values, start=n), expected)
            for v, t in zip(s.cut(n).live, values, strict=True):
                if isinstance(v.group, str):
                    assert t.shape[v.axis] == sizes[v.group]


def test_read_points_include_function_outputs_and_reused_modules() -> None:
    model, x = zoo_model("resnet18")
    s = structure_of(model, x)
    names = [n for ns in s.spec.features.values() for n in ns]
    # every block calls its one ReLU twice; the stem's ReLU runs once
    assert [n for n in names if not n.startswith("_taps.")] == ["relu"]
    assert s.spec.features["layer2.0.conv2"][-1] == "_taps.layer2_1_relu_1"
    got: dict[str, torch.Tensor] = {}
    s.read(model, x, names, lambda name, t: got.__setitem__(name, t.clone()))
    sizes = s.spec.check(model.state_dict())
    for group, ns in s.spec.features.items():
        assert all(got[n].shape[s.spec.feature_axis(n)] == sizes[group] for n in ns)
    assert torch.equal(got["_taps.layer2_1_relu_1"], outputs_of(model, ["layer2"], x)["layer2"])
    with pytest.raises(ValueError, match="not a read point"):
        s.read(model, x, ["layer2"], print)


def test_hooks_of_modules_the_tracer_went_through_fire_in_pieces() -> None:
    model, x = zoo_model("convnext")
    s = structure_of(model, x)
    seen = outputs_of(model, ["stem_norm", "blocks.1"], x)
    got: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: got.__setitem__(n, out)) for n in seen]
    with torch.no_grad():
        s.run(model, s.run(model, (x,), stop=1), start=1)
    for h in handles:
        h.remove()
    assert all(torch.equal(got[n], seen[n]) for n in seen)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls, shape, message", [
    (zoo.DataDependent, (2, 4), r"cannot trace DataDependent: .*control flow"),
    (zoo.SelfAttention, (2, 3, 4), r"node 'matmul' \(function matmul\)"),
    (zoo.GroupedConv, (2, 3, 8, 8), r"node 'grouped' \(Conv2d .*grouped convolution"),
    (zoo.PartialGroupNorm, (2, 3, 8, 8), r"node 'norm' \(GroupNorm .*2 groups of 4 channels"),
    (zoo.ChannelMean, (2, 3, 8, 8), r"node 'mean' \(method \.mean\(\)\) reduces over the "
                                    r"channel axis"),
])
def test_unsupported_models_raise_trace_errors_naming_the_node(cls, shape, message) -> None:
    with pytest.raises(TraceError, match=message):
        structure_of(cls(), torch.randn(shape))


def test_bad_arguments_are_rejected_clearly() -> None:
    model, x = builtin("mlp")
    s = structure(model)
    with pytest.raises(ValueError, match=r"in \[0, 4\]"):
        s.cut(5)
    with pytest.raises(ValueError, match="failed on example_input"):
        structure_of(model, torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="batched tensor"):
        structure_of(model, torch.randn(16))

    class Unknown(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(ValueError, match=r"spec_for\(model, example_input\)"):
        structure(Unknown())
    spec = spec_for(Unknown(), torch.zeros(1, 3))
    assert spec.axes == {"fc.weight": (None, None), "fc.bias": (None,)}
    unknown = Unknown()
    unknown.fc.bias = None  # a new architecture of a class traced before: its input is known
    assert structure(unknown).spec.axes == {"fc.weight": (None, None)}
