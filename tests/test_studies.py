"""Studies on tiny models: known answers of the merge cell, the result cache (resume, damaged
entries), the endpoint manifest, and parallel training identical to sequential training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from fake_datasets import write_cifar10

from vfcore import studies
from vfcore.align import check_equivalent
from vfcore.endpoints import load_or_train
from vfcore.jobs import train_all
from vfcore.merge import interpolate, with_state
from vfcore.profiles import PAPER_TINY
from vfcore.spec import spec_for
from vfcore.studies.manifest import endpoints
from vfcore.studies.merging import Merge, build
from vfcore.transform import permute

TINY = dataclasses.replace(
    PAPER_TINY, name="unit", epochs={k: 0.25 for k in PAPER_TINY.epochs}, pairs=2,
    calibration_images=64, measure_images=32, test_images=64, batch_size=32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("data")
    write_cifar10(folder, 256, 128)
    return folder


@pytest.fixture
def setup(data_dir, tmp_path, monkeypatch: pytest.MonkeyPatch) -> studies.Setup:
    monkeypatch.setenv("VFCORE_DATA", str(data_dir))
    monkeypatch.setenv("VFCORE_NO_DOWNLOAD", "1")
    return studies.Setup(TINY, "cpu", cache_dir=tmp_path / "cache")


def test_pfm_ends_are_the_plain_merge_and_the_ensemble(setup):
    a, b = setup.endpoints("vgg16_bn", 0)
    x = setup.measure_batches(a, "cifar10", 0)[0]
    plain = with_state(a, interpolate(a.state_dict(), b.state_dict(), 0.5))
    check_equivalent(build(setup, "vgg16_bn", 0, Merge(preserved=0)), plain, x)
    ensemble = build(setup, "vgg16_bn", 0, Merge(preserved=len(a.weight_layers)))
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x), (a(x) + b(x)) / 2, rtol=1e-4, atol=1e-5)


def test_a_model_merged_with_its_permuted_copy_keeps_its_accuracy(setup, monkeypatch):
    a, _ = setup.endpoints("resnet20", 0)
    spec = spec_for(a)
    g = torch.Generator().manual_seed(0)
    sizes = spec.check(a.state_dict())
    perms = {group: torch.randperm(n, generator=g) for group, n in sizes.items()}
    shuffled = with_state(a, permute(spec, perms, a.state_dict()))
    monkeypatch.setattr(setup, "endpoints", lambda *args, **kw: (a, shuffled))
    rows = studies.merge_cells(setup, "resnet20", [Merge("wm"), Merge("wm", preserved=6)],
                               pairs=range(1))
    accuracy = setup.accuracy(a, "cifar10")
    assert [r["value"] for r in rows] == [accuracy, accuracy]


def _count_computes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = studies.Setup.cell

    def counting(self, study, coords, compute, **kw):
        def wrapped():
            calls.append(study)
            return compute()
        return real(self, study, coords, wrapped, **kw)

    monkeypatch.setattr(studies.Setup, "cell", counting)
    return calls


def test_a_second_call_computes_nothing(setup, monkeypatch):
    merges = [Merge("am", preserved=n) for n in (0, 3)]
    first = studies.merge_cells(setup, "vgg16", merges)
    calls = _count_computes(monkeypatch)
    assert studies.merge_cells(setup, "vgg16", merges) == first
    assert calls == []


def test_an_interrupted_study_resumes_where_it_stopped(setup, monkeypatch):
    merges = [Merge("direct", preserved=n) for n in (0, 2, 4, 6)]
    real = studies.Setup.cell
    done = []

    def interrupting(self, study, coords, compute, **kw):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(coords["l"])
        return real(self, study, coords, compute, **kw)

    monkeypatch.setattr(studies.Setup, "cell", interrupting)
    with pytest.raises(KeyboardInterrupt):
        studies.merge_cells(setup, "vgg16", merges, pairs=range(1))
    monkeypatch.undo()
    calls = _count_computes(monkeypatch)
    rows = studies.merge_cells(setup, "vgg16", merges, pairs=range(1))
    assert [r["l"] for r in rows] == [0, 2, 4, 6] and len(calls) == 1


def test_a_damaged_entry_is_recomputed_not_loaded(setup, monkeypatch):
    rows = studies.merge_cells(setup, "vgg16", [Merge()], pairs=range(1))
    [entry] = list((setup.cache_dir / "results").rglob("*.json"))
    payload = json.loads(entry.read_text())
    payload["values"]["accuracy"] = 123.0
    entry.write_text(json.dumps(payload))
    calls = _count_computes(monkeypatch)
    with pytest.warns(UserWarning, match="damaged"):
        again = studies.merge_cells(setup, "vgg16", [Merge()], pairs=range(1))
    assert again == rows and calls == ["merge"]
    entry.write_text("{not json")
    with pytest.warns(UserWarning, match="damaged"):
        assert studies.merge_cells(setup, "vgg16", [Merge()], pairs=range(1)) == rows


def test_the_manifest_lists_each_endpoint_once(setup):
    jobs = endpoints(setup)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    models = {j.model for j in jobs}
    assert {"vgg16", "vgg16_bn", "resnet20", "resnet20_ln", "linear8", "mlp"} <= models
    assert {j.dataset for j in jobs} == {"cifar10", "cifar100", "mnist"}


def test_two_workers_train_what_one_trains(setup, tmp_path):
    jobs = [setup.job(model, seed) for model in ("vgg16_bn", "resnet20_ln") for seed in (1, 2)]
    train_all(jobs, workers=1, cache_dir=tmp_path / "one")
    train_all(jobs, workers=2, cache_dir=tmp_path / "two")
    for job in jobs:
        one = load_or_train(job, cache_dir=tmp_path / "one").state_dict()
        two = load_or_train(job, cache_dir=tmp_path / "two").state_dict()
        assert all(torch.equal(one[k], two[k]) for k in one), job.label
