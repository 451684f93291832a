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
    assert set(PROFILES) == {"smoke", "paper"}


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown profile 'huge'.*smoke, paper"):
        get_profile("huge")


def test_paper_profile_matches_the_paper():
    p = get_profile("paper")
    assert (p.dataset, p.linear_dataset) == ("cifar10", "mnist")
    assert (p.image_size, p.batch_size) == (32, 128)
    assert all(p.width_of(m) == 1.0 for m in ARCHITECTURES)
    assert p.epochs_of("vgg16_bn") == p.epochs_of("resnet20_ln") == 160
    assert p.epochs_of("linear8") == 5 and p.epochs_of("linear5_res") == 20
    assert p.train_subset is None and p.test_subset is None
    assert p.calibration_images == 50_000
    assert p.lr_sweep == (0.01, 0.03, 0.05, 0.07, 0.1)
    assert p.wd_sweep == (1e-4, 2e-4, 3e-4, 4e-4, 5e-4)
    assert p.sparsities[-3:] == (0.9, 0.95, 0.99) and len(p.sparsities) == 11
    assert p.wide_resnet_width == 4.0


def test_paper_pairs_use_three_models_once_each():
    p = get_profile("paper")
    pairs = [p.seeds(i) for i in range(p.pairs)]
    assert pairs == [(1, 2), (2, 3), (1, 3)]
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
    assert p.image_size == 32 and p.pairs == 1 and p.seeds(0) == (1, 2)
    for name in ARCHITECTURES:
        assert p.width_of(name) > 0 and p.epochs_of(name) > 0
        assert p.dataset_for(name) == "fashion_mnist"
    assert p.sweep_model in ARCHITECTURES and len(p.lr_sweep) >= 3 and len(p.wd_sweep) >= 3
    assert all(0 <= s < 1 for s in p.sparsities)
    assert 0 < p.calibration_images <= 60_000


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


def test_profiles_are_frozen():
    p: Profile = get_profile("paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.pairs = 1  # type: ignore[misc]
    assert math.isclose(sum(p.seeds(0)), 3)
