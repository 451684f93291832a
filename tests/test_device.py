"""Every kernel keeps to the model's device.

On this CPU-only machine the models are put on a pretend cuda device (`fake_device.FakeCuda`):
a tensor a kernel creates without the model's device is a CPU tensor there, and the first
operation that mixes it with the model's tensors fails, as it would on a GPU. After each kernel
every output, parameter and buffer must report the device. The same kernels run on a real GPU
in the tests marked `gpu` (skipped without CUDA), against the CPU results.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import zoo
from fake_device import CUDA, DeviceMismatch, FakeCuda
from torch import nn

from vfcore import (
    align,
    merge_models,
    normalize_pruned,
    normalized_scale,
    partial_zip,
    pfm_cost,
    preserve_first_merge,
    prune,
    remove_biases,
    repair,
    reset_bn,
    vf_layers,
)
from vfcore.layer_sparsity import allocate, prune_allocated
from vfcore.mergeability import pair_metrics
from vfcore.models import build_model, has_batchnorm
from vfcore.normalize import bias_calibrated_state
from vfcore.pipeline import aligned_models
from vfcore.pleas import pleas_merge
from vfcore.prune import prunable_layers
from vfcore.regmean import regression_merge
from vfcore.spec import spec_for
from vfcore.ties import sign_disagreement, ties_merge

torch.set_num_threads(1)


def tiny(name: str, seed: int) -> tuple[nn.Module, list[torch.Tensor]]:
    """A tiny model (eval mode) and two calibration batches for it, on the CPU."""
    torch.manual_seed(seed)
    if name == "convnext":
        model, shape = zoo.TinyConvNeXt(), (6, 3, 8, 8)
        spec_for(model, torch.zeros(shape))
    elif name == "concat":
        model, shape = zoo.ConcatNet(), (6, 3, 6, 6)
        spec_for(model, torch.zeros(shape))
    elif name == "mlp":
        model, shape = build_model(name, width=1 / 32, in_channels=1, image_size=4), (6, 1, 4, 4)
    else:
        size = 8 if name.startswith("resnet") else 16
        model, shape = build_model(name, width=1 / 16, image_size=size), (6, 3, size, size)
    gen = torch.Generator().manual_seed(seed + 100)
    return model.eval(), [torch.randn(shape, generator=gen) for _ in range(2)]


def _pfm(a, b, batches, al):
    pfm = preserve_first_merge(a, b, 2, alignment=al)
    return pfm, pfm(batches[0])


def _pfm_repair(a, b, batches, al):
    pfm = preserve_first_merge(a, b, 2, alignment=al)
    fixed = repair(pfm, aligned_models(a, al), [0.5, 0.5], batches, mode="rescale")
    return fixed, fixed(batches[0])


def _merge(norm: str) -> Callable:
    def run(a, b, batches, al):
        chosen = ("reset" if has_batchnorm(a) else "repair") if norm == "auto" else norm
        merged = merge_models(a, b, al, n_preserved=1, norm=chosen, calibration=batches)
        return merged, merged(batches[0])
    return run


def _align(method: str) -> Callable:
    def run(a, b, batches, al):
        out = align(a, b, method, batches)
        return None, [m for maps in out.maps for m in maps.values()] + [
            t for state in out.states for t in state.values()]
    return run


def _prune(a, b, batches, al):
    pruned = normalize_pruned(prune(a, 0.6), a, batches)
    return pruned, pruned(batches[0])


def _reset(a, b, batches, al):
    model = reset_bn(a, batches)
    return model, model(batches[0])


def _bias(a, b, batches, al):
    state = bias_calibrated_state(a, *al.states, 0.3)
    return remove_biases(a, 2), list(state.values())


def _partial_zip(a, b, batches, al):
    model = partial_zip(a, b, 2, alignment=al)
    return model, model(batches[0])


def _measure(a, b, batches, al):
    pfm = preserve_first_merge(a, b, 1, alignment=al)
    paths, names = pfm.measured_layers(include_norms=True)
    normalized_scale(pfm, [a, b], batches, paths, ref_layers=names)
    normalized_scale(a, [a, b], batches, vf_layers(a, include_norms=True))
    pfm_cost(a, 2)
    return pfm, []


def _regression(variant: str) -> Callable:
    def run(a, b, batches, al):
        merged = regression_merge(a, b, al, batches, variant=variant)
        return merged, merged(batches[0])
    return run


def _ties(a, b, batches, al):
    merged = ties_merge(al.states, base="zero", density=0.5)
    sign_disagreement(*al.states, prunable_layers(a), base="midpoint")
    return None, list(merged.values())


def _layer_sparsity(a, b, batches, al):
    pruned = prune_allocated(a, allocate(a, 0.6))
    return pruned, pruned(batches[0])


def _mergeability(a, b, batches, al):
    with torch.no_grad():
        labels = a(batches[0]).argmax(1)
    pair_metrics(a, b, al, batches, labels)  # floats only: the endpoints must be left in place
    return a, []


def _pleas(a, b, batches, al):
    merged = pleas_merge(a, b, batches, budget=1.5)
    return merged, merged(batches[0])


KERNELS = {
    "direct": _align("direct"), "wm": _align("wm"), "am": _align("am"),
    "zipit": _align("zipit"), "cca": _align("cca"),
    "merge_none": _merge("none"), "merge_normalised": _merge("auto"),
    "merge_rescale": _merge("rescale"), "pfm": _pfm, "pfm_repair": _pfm_repair,
    "partial_zip": _partial_zip, "prune": _prune, "reset": _reset, "bias": _bias,
    "measure": _measure, "regmean": _regression("regmean"), "chain": _regression("chain"),
    "ties": _ties, "layer_sparsity": _layer_sparsity, "mergeability": _mergeability,
    "pleas": _pleas,
}
ARCHS = ["vgg11_bn", "resnet20", "mlp", "convnext", "concat"]
ONLY = {
    "regmean": ["vgg11_bn", "resnet20", "mlp", "concat"],  # no grouped convs (ConvNeXt's)
    "chain": ["vgg11_bn", "resnet20", "mlp", "concat"],
    "mergeability": ["vgg11_bn", "resnet20", "mlp"],  # built-in models list `weight_layers`
    "pleas": ["vgg11_bn", "mlp"],  # vfcore's VGG and MLP only
}
"""The architectures a kernel applies to, where not all of `ARCHS` (RESET: those with BN)."""


def _tensors(model: nn.Module | None, outputs) -> list[torch.Tensor]:
    found = [] if model is None else [*model.parameters(), *model.buffers()]
    flat = outputs if isinstance(outputs, list) else [outputs]
    for t in flat:
        found.extend(t if isinstance(t, tuple) else [t])
    return [t for t in found if isinstance(t, torch.Tensor)]


def _run_on(device: str | torch.device, arch: str, kernels: list[str]
            ) -> dict[str, list[torch.Tensor]]:
    """Run the named kernels on two tiny models of `arch` put on `device`; per kernel, every
    tensor of its outputs and of the model it returns."""
    a, batches = tiny(arch, 0)
    b, _ = tiny(arch, 1)
    a, b = a.to(device), b.to(device)
    batches = [x.to(device) for x in batches]
    al = align(a, b, "wm")
    out = {}
    for kernel in kernels:
        if arch not in ONLY.get(kernel, ARCHS) or (kernel == "reset" and not has_batchnorm(a)):
            continue
        model, outputs = KERNELS[kernel](a, b, batches, al)
        out[kernel] = _tensors(model, outputs)
    return out


# ----------------------------------------------------------------------------- the pretend device


def test_the_pretend_device_catches_what_a_gpu_refuses() -> None:
    with FakeCuda():
        model = nn.Linear(3, 2).to("cuda")
        assert model.weight.device == CUDA and model.weight.is_cuda
        x = torch.randn(4, 3)
        with pytest.raises(DeviceMismatch, match="linear"):
            model(x)
        y = model(x.to(model.weight.device))
        assert y.device == CUDA and torch.ones(2).device.type == "cpu"
        with pytest.raises(DeviceMismatch, match="add"):
            y + torch.ones(2)  # a factory without device=
        assert (y + torch.ones(2, device=y.device)).device == CUDA
        assert (y * torch.tensor(2.0)).device == CUDA  # CPU scalars mix, as in torch
        with pytest.raises(DeviceMismatch, match="numpy"):
            y.detach().numpy()
        assert y.detach().cpu().numpy().shape == (4, 2)
        assert y.detach().cpu().device.type == "cpu" and y.device == CUDA
        copied = nn.Linear(3, 2)
        copied.load_state_dict(model.state_dict())  # copies across devices are legal
        assert copied.weight.device.type == "cpu"


def test_pfm_cut_buffers_live_on_the_model_device() -> None:
    """The bug this file was written for: PFM's cut scale and shift made with torch.ones(c)."""
    a, batches = tiny("vgg11_bn", 0)
    b, _ = tiny("vgg11_bn", 1)
    with FakeCuda():
        a, b = a.to("cuda"), b.to("cuda")
        pfm = preserve_first_merge(a, b, 3, alignment=align(a, b, "wm"))
        assert pfm.cut_scale.device == CUDA and pfm.cut_shift.device == CUDA
        assert pfm(batches[0].to("cuda")).device == CUDA


@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_keep_to_the_model_device(arch: str) -> None:
    with FakeCuda():
        found = _run_on("cuda", arch, list(KERNELS))
        wrong = {k: [tuple(t.shape) for t in ts if t.device != CUDA] for k, ts in found.items()}
    assert all(found.values())
    assert not any(wrong.values()), f"tensors left on the CPU: {wrong}"


# ----------------------------------------------------------------------------- a real GPU


DETERMINISTIC = [k for k in KERNELS
                 if k not in ("am", "zipit", "cca", "measure", "mergeability", "pleas")]


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_on_a_gpu_match_the_cpu(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same results on the GPU as on the CPU (TF32 off, so float32 is float32 on both)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gpu = _run_on("cuda", arch, DETERMINISTIC)
    cpu = _run_on("cpu", arch, DETERMINISTIC)
    assert gpu.keys() == cpu.keys()
    for kernel, tensors in gpu.items():
        assert all(t.is_cuda for t in tensors), kernel
        assert len(tensors) == len(cpu[kernel]), kernel
        for g, c in zip(tensors, cpu[kernel], strict=True):
            if c.dtype == torch.long:
                assert torch.equal(g.cpu(), c), kernel
            else:
                torch.testing.assert_close(g.cpu(), c, rtol=1e-3, atol=1e-4, msg=kernel)
