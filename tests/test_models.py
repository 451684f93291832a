import pytest
import torch

from vfcore.models import (
    ARCHITECTURES,
    ChannelLayerNorm,
    build_model,
    check_compatible,
    num_parameters,
)


@pytest.mark.parametrize("name, count", [
    ("vgg16", 14_719_818), ("vgg16_bn", 14_728_266), ("resnet20", 272_474)])
def test_width_one_matches_the_paper(name, count):
    assert num_parameters(build_model(name)) == count


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_model_runs_and_lists_its_layers(name):
    flat = name.startswith(("linear", "mlp"))
    kw = dict(in_channels=1, image_size=28) if flat else dict(image_size=16)
    model = build_model(name, width=0.25, num_classes=7, **kw)
    x = torch.randn(3, kw.get("in_channels", 3), kw["image_size"], kw["image_size"])
    assert model(x).shape == (3, 7)
    for layer in model.weight_layers:
        assert isinstance(model.get_submodule(layer), torch.nn.Conv2d | torch.nn.Linear)


def test_layer_counts_are_the_papers():
    assert len(build_model("vgg16").weight_layers) == 14
    assert len(build_model("resnet20").weight_layers) == 20
    assert len(build_model("linear8", in_channels=1, image_size=28).weight_layers) == 8


def test_channel_layernorm_normalises_channels_at_each_position():
    x = torch.randn(2, 6, 3, 3) * 5 + 2
    y = ChannelLayerNorm(6)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 3), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 3, 3), atol=1e-3)


def test_channel_layernorm_keeps_the_input_memory_layout():
    norm = ChannelLayerNorm(6)
    x = torch.randn(2, 6, 3, 4)
    y = norm(x)
    assert y.is_contiguous() and not y.is_contiguous(memory_format=torch.channels_last)
    z = norm(x.contiguous(memory_format=torch.channels_last))
    assert z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous()
    assert torch.equal(y, z)


def test_linear_net_init_and_residual():
    net = build_model("linear5_res", in_channels=1, image_size=28)
    assert abs(net.layers[1].weight.std().item() - 0.005) < 0.001
    assert all(layer.bias.abs().sum() == 0 for layer in net.layers)
    hidden = torch.randn(4, 32)
    assert torch.allclose(net.layers[2](hidden), hidden + torch.nn.functional.linear(
        hidden, net.layers[2].weight, net.layers[2].bias))


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="unknown model 'vgg17'"):
        build_model("vgg17")
    with pytest.raises(ValueError, match="width 0.001"):
        build_model("vgg16", width=0.001)
    with pytest.raises(ValueError, match="positive"):
        build_model("vgg16", width=0)
    with pytest.raises(ValueError, match="differ"):
        check_compatible(build_model("vgg11", width=0.25), build_model("vgg11", width=0.5))
