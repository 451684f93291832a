"""Recipes, training, evaluation and the endpoint cache, on tiny synthetic image sets (no real
data)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import pytest
import torch

import vfcore.endpoints as ve
from vfcore.data import ImageSet
from vfcore.device import cpu_cores, limit_threads, resolve_device
from vfcore.endpoints import TRAIN_THREADS, TRAIN_VERSION, endpoint_pair, train_endpoint
from vfcore.evaluation import (
    calibration_batches,
    channels_last,
    evaluate,
    input_batches,
    memory_format,
    pad_for,
    predict,
)
from vfcore.models import build_model
from vfcore.profiles import SMOKE, get_profile
from vfcore.recipes import PAPER_MILESTONES, Recipe, epoch_seed, lr_factor, recipe_for, schedule
from vfcore.training import CheckpointError, _quiet, load_checkpoint, train


def toy_set(n: int = 256, size: int = 8, classes: int = 4, seed: int = 0) -> ImageSet:
    """A separable set: class k brightens rows 2k, 2k+1 of a noisy grey image."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % classes
    images = torch.randint(0, 60, (n, 1, size, size), generator=g, dtype=torch.uint8)
    for k in range(classes):
        images[labels == k, :, 2 * k: 2 * k + 2, :] += 150
    return ImageSet("toy", True, images, labels, classes, (0.3,), (0.3,))


def pattern_set(n: int = 128, size: int = 16, seed: int = 0) -> ImageSet:
    """Four shift- and flip-invariant classes: horizontal lines, vertical lines, flat, dark."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) % 4
    images = torch.randint(0, 60, (n, 1, size, size), generator=g, dtype=torch.uint8)
    images[labels == 0, :, ::2, :] += 150
    images[labels == 1, :, :, ::2] += 150
    images[labels == 2] += 100
    return ImageSet("patterns", True, images, labels, 4, (0.3,), (0.3,))


def mlp(seed: int = 0, size: int = 8, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", width=1 / 16, num_classes=classes, in_channels=1, image_size=size)


ADAM = Recipe(optimizer="adam", lr=0.01, momentum=0.0, weight_decay=1e-4, batch_size=32,
              epochs=3, milestones=(), augment=False)

TINY = dataclasses.replace(
    SMOKE, name="tiny", image_size=16,
    widths={**SMOKE.widths, "mlp": 1 / 16, "vgg11_bn": 0.125},
    epochs={**SMOKE.epochs, "mlp": 2.0, "vgg11_bn": 1.0}, batch_size=32, recipe_overrides={})


class CallsCode:
    """Unpickles by calling a function: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (sorted, ([2, 1],))


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- recipes and schedule -------------------------------------------------------------------

def test_cnn_recipes_follow_table_2():
    for name in ("vgg16", "vgg16_bn", "vgg16_ln", "resnet20"):
        r = recipe_for(name, "paper")
        assert (r.optimizer, r.lr, r.momentum, r.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
        assert (r.batch_size, r.epochs, r.warmup, r.augment) == (128, 160, 0.0, True)
        assert r.milestones == pytest.approx((0.5115, 0.7673), abs=1e-4)


def test_warmup_where_the_paper_uses_it():
    assert recipe_for("resnet20_ln", "paper").warmup == pytest.approx(1 / 160)
    assert recipe_for("resnet20", "paper", width=4).warmup == pytest.approx(1 / 160)
    assert recipe_for("vgg16", "paper", weight_decay=5e-4).warmup == pytest.approx(1 / 160)
    assert recipe_for("vgg16", "paper", weight_decay=1e-4).warmup == 0


def test_linear_nets_use_adam_with_constant_lr():
    r = recipe_for("linear8", "paper")
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size) == ("adam", 0.01, 1e-4, 128)
    assert (r.milestones, r.warmup, r.augment, r.epochs) == ((), 0.0, False, 5)
    assert recipe_for("linear5_res", "paper").epochs == 20


def test_overrides_and_smoke_scaling():
    r = recipe_for("vgg16_bn", "paper", lr=0.03, weight_decay=3e-4, epochs=2)
    assert (r.lr, r.weight_decay, r.epochs) == (0.03, 3e-4, 2)
    assert recipe_for("vgg16", "smoke").lr < 0.1  # norm-free VGGs need a lower lr when short
    assert recipe_for("vgg16_bn", "smoke").epochs == SMOKE.epochs_of("vgg16_bn")


def test_bad_recipes_are_rejected():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        Recipe(optimizer="rmsprop")
    with pytest.raises(ValueError, match="milestones"):
        Recipe(milestones=(0.8, 0.5))
    with pytest.raises(ValueError, match="unknown model 'vgg19'"):
        recipe_for("vgg19", "paper")
    with pytest.raises(ValueError, match="grad_clip"):
        Recipe(grad_clip=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        Recipe(label_smoothing=1.0)
    with pytest.raises(ValueError, match="overrides unknown recipe fields"):
        recipe_for("vgg16", dataclasses.replace(SMOKE, recipe_overrides={"vgg16": {"lrr": 1}}))


def test_the_paper_uses_no_clipping_or_smoothing():
    r = recipe_for("vgg16_bn", "paper")
    assert r.grad_clip is None and r.label_smoothing == 0.0


def test_schedule_hits_the_paper_decay_points():
    paper = recipe_for("vgg16", "paper")
    steps, total = schedule(paper, 50_000)
    assert (steps, total) == (391, 62_560)
    assert lr_factor(31_999, total, paper) == 1.0
    assert lr_factor(32_000, total, paper) == pytest.approx(0.1)
    assert lr_factor(47_999, total, paper) == pytest.approx(0.1)
    assert lr_factor(48_000, total, paper) == pytest.approx(0.01)
    assert PAPER_MILESTONES[0] * total == pytest.approx(32_000)


def test_schedule_warms_up_linearly():
    r = recipe_for("resnet20_ln", "paper")
    total = 62_560
    assert lr_factor(0, total, r) == pytest.approx(1e-5)
    assert lr_factor(391 // 2, total, r) == pytest.approx(0.5, abs=0.01)
    assert lr_factor(391, total, r) == 1.0
    assert lr_factor(40_000, total, r) == pytest.approx(0.1)


def test_fractional_epochs():
    r = Recipe(batch_size=100, epochs=0.5)
    assert schedule(r, 1000) == (10, 5)
    assert schedule(r, 60_000) == (600, 300)
    assert schedule(dataclasses.replace(r, epochs=0.001), 1000) == (10, 1)  # at least one step
    with pytest.raises(ValueError, match="empty"):
        schedule(r, 0)


# --- training ------------------------------------------------------------------------------

def test_training_learns_a_separable_set():
    data, losses = toy_set(), []
    model = train(mlp(), data, ADAM, seed=0, device="cpu", progress=False,
                  on_epoch=lambda epoch, loss: losses.append(loss))
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0]
    assert not model.training
    assert evaluate(model, toy_set(seed=1)) >= 95.0


def test_cnn_trains_channels_last_with_augmentation():
    data = pattern_set()
    torch.manual_seed(0)
    model = build_model("vgg11_bn", width=0.125, num_classes=4, in_channels=1, image_size=16)
    recipe = Recipe(lr=0.05, batch_size=32, epochs=4, milestones=(0.75,))
    train(model, data, recipe, seed=0, device="cpu", progress=False)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert evaluate(model, pattern_set(seed=1)) >= 90.0


def test_same_seed_same_weights_other_seed_other_data_order():
    data = toy_set()
    a = train(mlp(), data, ADAM, seed=3, device="cpu", progress=False)
    b = train(mlp(), data, ADAM, seed=3, device="cpu", progress=False)
    c = train(mlp(), data, ADAM, seed=4, device="cpu", progress=False)
    assert same_state(a, b) and not same_state(a, c)  # same init, so c differs by data order
    order = [next(iter(input_batches(a, data, 64, shuffle=True, seed=epoch_seed(s, 0))))[1]
             for s in (3, 4)]
    assert not torch.equal(*order)
    assert epoch_seed(3, 0) != epoch_seed(3, 1)


def test_interrupted_training_resumes_exactly(tmp_path):
    data, ckpt = toy_set(), tmp_path / "run.partial.pt"
    reference = train(mlp(), data, ADAM, seed=5, device="cpu", progress=False)

    def stop_after_first(epoch: int, _loss: float) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(mlp(), data, ADAM, seed=5, device="cpu", progress=False, checkpoint=ckpt,
              on_epoch=stop_after_first)
    saved = torch.load(ckpt, weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 8)
    epochs_run = []
    resumed = train(mlp(seed=99), data, ADAM, seed=5, device="cpu", progress=False,
                    checkpoint=ckpt, on_epoch=lambda e, _l: epochs_run.append(e))
    assert epochs_run == [1, 2]
    assert same_state(resumed, reference)


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    data, ckpt = toy_set(), tmp_path / "run.partial.pt"
    train(mlp(), data, ADAM, seed=5, device="cpu", progress=False, checkpoint=ckpt)
    epochs_run = []
    with pytest.warns(UserWarning, match="different run"):
        train(mlp(), data, ADAM, seed=6, device="cpu", progress=False, checkpoint=ckpt,
              on_epoch=lambda e, _l: epochs_run.append(e))
    assert epochs_run == [0, 1, 2]


def test_grad_clip_caps_the_step():
    data = toy_set(n=64)
    recipe = Recipe(lr=1.0, momentum=0.0, weight_decay=0.0, batch_size=64, epochs=1,
                    milestones=(), augment=False, grad_clip=1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in mlp().parameters()])
    model = train(mlp(), data, recipe, seed=0, device="cpu", progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # one plain SGD step of lr 1 moves the weights by the clipped gradient, of norm grad_clip
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-3)


def test_label_smoothing_enters_the_loss():
    data, s, losses = toy_set(n=100), 0.2, []
    recipe = Recipe(lr=1e-9, momentum=0.0, weight_decay=0.0, batch_size=100, epochs=1,
                    milestones=(), augment=False, label_smoothing=s)
    train(constant_model(2), data, recipe, seed=0, device="cpu", progress=False,
          on_epoch=lambda _e, loss: losses.append(loss))
    # logits e_2 for every image: -log p_2 = lse - 1, -log p_k = lse otherwise (lse = log(e + 3));
    # the smoothed loss (1 - s) (-log p_y) + s/4 sum_k (-log p_k) averages to
    # lse - (1 - s) P(y = 2) - s/4
    lse = math.log(math.e + 3)
    share = (data.labels == 2).float().mean().item()
    assert losses == [pytest.approx(lse - (1 - s) * share - s / 4, rel=1e-5)]


def test_divergence_is_reported():
    recipe = dataclasses.replace(ADAM, lr=1e30, epochs=1)
    with pytest.raises(RuntimeError, match="diverged.*lower the learning rate"):
        train(mlp(), toy_set(), recipe, seed=0, device="cpu", progress=False)


# --- evaluation and batches -----------------------------------------------------------------

def constant_model(label: int, classes: int = 4) -> torch.nn.Module:
    model = build_model("linear5", width=0.25, num_classes=classes, in_channels=1, image_size=8)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.layers[-1].bias[label] = 1.0
    return model


def test_evaluate_is_a_percentage_and_predict_gives_logits():
    data = toy_set(n=100)
    expected = 100.0 * (data.labels == 2).sum().item() / len(data)
    model = constant_model(2).train()
    assert evaluate(model, data, batch_size=7) == pytest.approx(expected)
    assert model.training  # evaluate restores the mode it found
    logits = predict(model, data, batch_size=30, limit=50)
    assert logits.shape == (50, 4) and torch.all(logits.argmax(1) == 2)
    limited = data.labels[:10]
    assert evaluate(model, data, limit=10) == pytest.approx(100.0 * (limited == 2).sum() / 10)


def test_pad_for_and_input_batches():
    cnn = build_model("vgg11", width=0.125, in_channels=1, image_size=32)
    data = toy_set(n=20, size=28)
    assert pad_for(cnn, data) == 32
    x, _ = next(iter(input_batches(cnn, data, 8)))
    assert x.shape == (8, 1, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert pad_for(build_model("mlp", width=0.1, in_channels=1, image_size=28), data) is None
    with pytest.raises(ValueError, match="larger than the model's 16x16"):
        pad_for(build_model("vgg11", width=0.125, in_channels=1, image_size=16), data)
    with pytest.raises(ValueError, match="1 channel.*expects 3"):
        pad_for(build_model("vgg11", width=0.125), data)


def test_channels_last_except_with_narrow_strided_convolutions():
    vgg = build_model("vgg11", width=0.125, image_size=16)     # no strided convolution
    narrow = build_model("resnet20", width=0.25, image_size=8)  # 1x1 stride-2 conv on 4 channels
    wide = build_model("resnet20", width=0.5, image_size=8)     # ... on 8 channels
    assert channels_last(vgg) and channels_last(wide) and memory_format(wide) == torch.channels_last
    assert not channels_last(narrow) and memory_format(narrow) == torch.contiguous_format
    assert not channels_last(mlp()) and memory_format(mlp()) == torch.contiguous_format
    images = torch.zeros(8, 3, 8, 8, dtype=torch.uint8)
    rgb = ImageSet("rgb", True, images, torch.zeros(8, dtype=torch.long), 10, (0.5,) * 3,
                   (0.5,) * 3)
    for model, layout in ((narrow, False), (wide, True)):
        x, _ = next(iter(input_batches(model, rgb, 4)))
        assert x.is_contiguous(memory_format=torch.channels_last) == layout
        assert x.is_contiguous() != layout


def test_calibration_batches_are_seeded_and_sized():
    model, data = mlp(), toy_set()
    first = calibration_batches(model, data, 70, batch_size=32, seed=1)
    assert [len(x) for x in first] == [32, 32, 6]
    again = calibration_batches(model, data, 70, batch_size=32, seed=1)
    other = calibration_batches(model, data, 70, batch_size=32, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    with pytest.raises(ValueError, match="calibration needs 1..256"):
        calibration_batches(model, data, 257)


# --- checkpoints -----------------------------------------------------------------------------

def test_load_checkpoint_names_missing_and_extra_keys(tmp_path):
    model = mlp()
    state = model.state_dict()
    state.pop("layers.0.bias")
    state["layers.9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['layers.0.bias'\].*unexpected "
                                              r"keys \['layers.9.weight'\]"):
        load_checkpoint(mlp(), tmp_path / "bad.pt")


def test_load_checkpoint_names_shape_mismatches(tmp_path):
    torch.save({"state": mlp().state_dict()}, tmp_path / "narrow.pt")
    wide = build_model("mlp", width=1 / 8, num_classes=4, in_channels=1, image_size=8)
    with pytest.raises(CheckpointError, match="shape mismatches.*layers.0.weight"):
        load_checkpoint(wide, tmp_path / "narrow.pt")


def test_load_checkpoint_round_trip_and_refuses_code(tmp_path):
    source = mlp(seed=1)
    torch.save({"state": source.state_dict(), "meta": {"k": 1}}, tmp_path / "ok.pt")
    assert same_state(load_checkpoint(mlp(seed=2), tmp_path / "ok.pt"), source)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state": CallsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(mlp(), tmp_path / "evil.pt")


# --- endpoint cache --------------------------------------------------------------------------

def counting_train(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = ve.train

    def wrapped(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ve, "train", wrapped)
    return calls


def endpoint(tmp_path, seed: int = 1, **kw) -> torch.nn.Module:
    return train_endpoint("mlp", toy_set(), seed=seed, profile=TINY, cache_dir=tmp_path,
                          device="cpu", progress=False, **kw)


def test_second_call_loads_from_cache(tmp_path, monkeypatch):
    first = endpoint(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".pt")
    sidecar = json.loads((tmp_path / files[0]).read_text())
    spec = sidecar["meta"]["spec"]
    assert spec["seed"] == 1 and spec["model"]["name"] == "mlp"
    assert spec["train_version"] == TRAIN_VERSION
    assert (spec["device"], spec["threads"]) == ("cpu", TRAIN_THREADS)

    def no_training(*_a, **_k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(ve, "train", no_training)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))
    second = endpoint(tmp_path)
    assert same_state(first, second) and not second.training
    assert loads and all(k.get("weights_only") is True for k in loads)


def test_cache_key_separates_what_changes_weights(tmp_path):
    a = endpoint(tmp_path, seed=1)
    b = endpoint(tmp_path, seed=2)
    c = endpoint(tmp_path, seed=1, lr=0.003)
    assert len(list(tmp_path.glob("*.pt"))) == 3
    assert not same_state(a, b) and not same_state(a, c)
    torch.manual_seed(1)
    init = build_model("mlp", width=1 / 16, num_classes=4, in_channels=1, image_size=8)
    torch.manual_seed(2)
    other_init = build_model("mlp", width=1 / 16, num_classes=4, in_channels=1, image_size=8)
    assert not same_state(init, other_init)  # the seed also sets the initialisation


def test_cpu_training_runs_on_the_pinned_thread_count(tmp_path, monkeypatch):
    seen: list[int] = []
    real = ve.train

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(ve, "train", recording)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        endpoint(tmp_path)
        assert seen == [TRAIN_THREADS] == [1]
        assert torch.get_num_threads() == 2  # restored after training
    finally:
        torch.set_num_threads(before)


def test_cache_key_includes_the_device_type_and_thread_count(monkeypatch):
    job = ve.endpoint("mlp", toy_set(), seed=1, profile=TINY, device="cpu")
    assert (job.spec["device"], job.spec["threads"]) == ("cpu", TRAIN_THREADS)
    monkeypatch.setattr(ve, "TRAIN_THREADS", TRAIN_THREADS + 1)
    again = ve.endpoint("mlp", toy_set(), seed=1, profile=TINY, device="cpu")
    assert again.spec["threads"] == TRAIN_THREADS + 1 and again.key != job.key
    gpu = dataclasses.replace(job, device=torch.device("cuda"))
    assert (gpu.spec["device"], gpu.spec["threads"]) == ("cuda", None) and gpu.key != job.key


@pytest.mark.parametrize("damage", ["truncate", "tamper_hash", "drop_sidecar"])
def test_damaged_cache_is_retrained_not_loaded(tmp_path, monkeypatch, damage):
    reference = endpoint(tmp_path)
    (pt,) = tmp_path.glob("*.pt")
    sidecar = pt.with_suffix(".json")
    if damage == "truncate":
        pt.write_bytes(pt.read_bytes()[:200])
    elif damage == "tamper_hash":
        meta = json.loads(sidecar.read_text())
        meta["sha256"] = "0" * 64
        sidecar.write_text(json.dumps(meta))
    else:
        sidecar.unlink()
    calls = counting_train(monkeypatch)
    with pytest.warns(UserWarning, match="unusable.*retraining"):
        again = endpoint(tmp_path)
    assert calls == [1] and same_state(again, reference)
    fresh = counting_train(monkeypatch)
    endpoint(tmp_path)
    assert fresh == []  # the retrained entry is valid again


def test_interrupted_endpoint_resumes_from_partial(tmp_path, monkeypatch):
    reference = endpoint(tmp_path / "ref")
    monkeypatch.setattr(ve, "_store", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        endpoint(tmp_path / "run")
    assert len(list((tmp_path / "run").glob("*.partial.pt"))) == 1
    monkeypatch.undo()
    monkeypatch.setattr(torch.optim.Adam, "step", lambda *a, **k: pytest.fail("retrained"))
    resumed = endpoint(tmp_path / "run")
    assert same_state(resumed, reference)
    assert list((tmp_path / "run").glob("*.partial.pt")) == []


def test_cnn_endpoint_pads_to_the_profile_size(tmp_path):
    model = train_endpoint("vgg11_bn", toy_set(n=64), seed=1, profile=TINY, cache_dir=tmp_path,
                           device="cpu", progress=False)
    assert model.config.image_size == 16 and model.config.in_channels == 1
    assert model.config.num_classes == 4 and model.config.width == 0.125


def test_endpoint_pair_uses_the_profile_seeds(tmp_path):
    a, b = endpoint_pair("mlp", TINY, 0, dataset=toy_set(), cache_dir=tmp_path, device="cpu",
                         progress=False)
    assert same_state(a, endpoint(tmp_path, seed=1)) and same_state(b, endpoint(tmp_path, seed=2))


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VFCORE_CACHE", str(tmp_path / "env"))
    assert ve.resolve_cache_dir() == tmp_path / "env"
    assert ve.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_unknown_names_raise_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'resnet56'.*resnet20_ln"):
        train_endpoint("resnet56", seed=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*fashion_mnist"):
        train_endpoint("vgg16", "svhn", seed=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown profile 'big'"):
        train_endpoint("vgg16", seed=0, profile="big", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="width"):
        train_endpoint("vgg16", seed=0, width=0.001, cache_dir=tmp_path)


# --- device -----------------------------------------------------------------------------------

def test_threads_never_exceed_cores():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cpu_cores() + 3)
        limit_threads()
        assert torch.get_num_threads() == cpu_cores()
        torch.set_num_threads(1)
        limit_threads()
        assert torch.get_num_threads() == 1  # never raised
    finally:
        torch.set_num_threads(before)


def test_a_core_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("VFCORE_CORES", "4")
    assert cpu_cores() == 4
    try:
        torch.set_num_threads(4)
        limit_threads()
        assert torch.get_num_threads() == 4  # the budget, not the machine's cores
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("VFCORE_CORES", bad)
        with pytest.raises(ValueError, match="VFCORE_CORES"):
            cpu_cores()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_progress_is_quiet_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "1")
    assert _quiet(None) is True
    monkeypatch.delenv("CI")
    assert _quiet(None) is None and _quiet(True) is False and _quiet(False) is True


def test_smoke_profile_is_the_default():
    assert get_profile() is SMOKE
    assert math.isclose(recipe_for("vgg16_bn").lr, recipe_for("vgg16_bn", SMOKE).lr)
