"""Profiles: the paper's setup is encoded faithfully, the smoke one is complete and valid."""

from __future__ import annotations

import dataclasses
import math

import pytest

from vfcore.models import ARCHITECTURES, build_model, num_parameters
from vfcore.profiles import LINEAR_MODELS, PROFILES, SMOKE, Profile, get_profile


def test_get_profile_by_name_and_default():
    assert get_profile() is get_profile("smoke") is SMOKE
    assert get_profile("paper").name == "paper"
    assert get_profile(SMOKE) is SMOKE
    assert {"smoke", "paper", "paper_tiny"} <= set(PROFILES)
    assert all(get_profile(name).name == name for name in PROFILES)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown profile 'huge'.*smoke, fmnist_quarter, paper"):
        get_profile("huge")


def test_paper_profile_matches_the_paper():
    p = get_profile("paper")
    assert (p.dataset, p.linear_dataset) == ("cifar10", "mnist")
    assert (p.image_size, p.batch_size) == (32, 128)
    assert all(p.width_of(m) == 1.0 for m in ARCHITECTURES)
    assert p.epochs_of("vgg16_bn") == p.epochs_of("resnet20_ln") == 160
    assert p.epochs_of("linear8") == 5 and p.epochs_of("linear5_res") == 20
    assert p.test_images is None and p.augment
    assert p.calibration_images == p.measure_images == 50_000
    assert p.extra_datasets == ("cifar100",) and p.alphas == 11
    assert p.lr_sweep == (0.01, 0.03, 0.05, 0.07, 0.1)
    assert p.wd_sweep == (1e-4, 2e-4, 3e-4, 4e-4, 5e-4)
    assert p.sparsities[-3:] == (0.9, 0.95, 0.99) and len(p.sparsities) == 11
    # Fig. 6 sweeps ResNet20 and ResNet20-LN at 4x width, VGGs at the profile's width
    assert dict(p.lr_sweep_models) == {"vgg16_bn": None, "vgg16_ln": None, "resnet20": 4.0,
                                       "resnet20_ln": 4.0}
    assert p.recipe_overrides == {}


def test_paper_pairs_use_three_models_once_each():
    p = get_profile("paper")
    pairs = [p.seeds(i) for i in range(p.pairs)]
    assert pairs == [(1, 2), (2, 3), (1, 3)] and p.models == 3
    with pytest.raises(ValueError, match="pair 3 is outside 0..2"):
        p.seeds(3)


@pytest.mark.parametrize(("name", "count"), [
    ("vgg16", 14_719_818), ("vgg16_bn", 14_728_266), ("resnet20", 272_474)])
def test_paper_widths_give_the_paper_parameter_counts(name, count):
    p = get_profile("paper")
    model = build_model(name, width=p.width_of(name), num_classes=10, in_channels=3,
                        image_size=p.image_size)
    assert num_parameters(model) == count


def test_smoke_profile_is_complete():
    p = get_profile("smoke")
    assert p.dataset == p.linear_dataset == "fashion_mnist"
    assert p.image_size == 32 and p.pairs == 2 and p.models == 3
    assert [p.seeds(i) for i in range(p.pairs)] == [(1, 2), (2, 3)]
    for name in ARCHITECTURES:
        assert p.width_of(name) > 0 and p.epochs_of(name) > 0
        assert p.dataset_for(name) == "fashion_mnist"
    sweep_models = p.lr_sweep_models + p.wd_sweep_models
    assert sweep_models and all(m in ARCHITECTURES for m, _ in sweep_models)
    assert len(p.lr_sweep) >= 2 and len(p.wd_sweep) >= 2
    assert all(0 <= s < 1 for s in p.sparsities)
    assert 0 < p.calibration_images <= 60_000 and 0 < p.measure_images <= 60_000
    assert all(0 < n <= p.calibration_images for n in p.calibration_counts)


def test_fmnist_quarter_sits_between_smoke_and_paper():
    smoke, mid, paper = (get_profile(n) for n in ("smoke", "fmnist_quarter", "paper"))
    assert mid.dataset == mid.linear_dataset == smoke.dataset
    assert mid.recipe_overrides == smoke.recipe_overrides  # the CPU recipes, not Table 2's
    assert mid.pairs == 3 and mid.partial_stride == 1
    for name in ARCHITECTURES:
        assert smoke.width_of(name) <= mid.width_of(name) <= paper.width_of(name), name
        assert smoke.epochs_of(name) <= mid.epochs_of(name) <= paper.epochs_of(name), name
    assert mid.width_of("vgg16") == mid.width_of("vgg16_bn") == 0.25
    for size in ("calibration_images", "measure_images", "test_images"):
        assert getattr(smoke, size) < getattr(mid, size), size
    assert set(smoke.lr_sweep_models) < set(mid.lr_sweep_models)


def test_dataset_for_splits_linear_nets_from_cnns():
    p = get_profile("paper")
    assert {p.dataset_for(m) for m in LINEAR_MODELS} == {"mnist"}
    assert p.dataset_for("vgg16") == p.dataset_for("resnet20_ln") == "cifar10"


def test_unknown_model_names_raise():
    with pytest.raises(ValueError, match="unknown model 'vgg19'.*vgg16_bn"):
        SMOKE.width_of("vgg19")
    with pytest.raises(ValueError, match="unknown model"):
        SMOKE.dataset_for("resnet56")


def test_invalid_profiles_are_rejected():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        dataclasses.replace(SMOKE, dataset="svhn")
    with pytest.raises(ValueError, match="unknown models"):
        dataclasses.replace(SMOKE, widths={**SMOKE.widths, "vgg19": 1.0})
    with pytest.raises(ValueError, match="sparsities"):
        dataclasses.replace(SMOKE, sparsities=(0.5, 1.0))
    with pytest.raises(ValueError, match="pairs"):
        dataclasses.replace(SMOKE, pairs=4)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        dataclasses.replace(SMOKE, extra_datasets=("svhn",))
    with pytest.raises(ValueError, match="unknown sweep models"):
        dataclasses.replace(SMOKE, lr_sweep_models=(("vgg19", None),))
    with pytest.raises(ValueError, match="alphas"):
        dataclasses.replace(SMOKE, alphas=2)


def test_one_pair_needs_two_models_and_more_pairs_three():
    assert dataclasses.replace(SMOKE, pairs=1).models == 2
    assert dataclasses.replace(SMOKE, pairs=3).models == 3


def test_profiles_are_frozen():
    p: Profile = get_profile("paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.pairs = 1  # type: ignore[misc]
    assert math.isclose(sum(p.seeds(0)), 3)


def test_paper_tiny_has_the_paper_structure():
    tiny, paper = get_profile("paper_tiny"), get_profile("paper")
    for name in ("dataset", "linear_dataset", "extra_datasets", "image_size", "pairs",
                 "partial_stride", "alphas", "batch_size", "augment", "recipe_overrides"):
        assert getattr(tiny, name) == getattr(paper, name), name
    assert tiny.wm_restarts > 1  # restarts are exercised
    assert any(width is not None for _, width in tiny.lr_sweep_models + tiny.wd_sweep_models)
