"""The `vfcore` command: diagnose, merge and prune on tiny checkpoints and tiny MNIST-layout data.

`vfcore.cli.main(argv)` runs in-process; the installed console script runs once. Every bad input
exits with 2, says what is wrong on stderr and writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fake_datasets
import pytest
import torch
from torch import nn

from vfcore import cli
from vfcore.align import align
from vfcore.diagnose import PFM_FORMAT, ModelChoice, prepare
from vfcore.models import build_model
from vfcore.pfm import preserve_first_merge
from vfcore.pipeline import merge_models
from vfcore.prune import sparsity

NETS = '''
import torch
from torch import nn


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.ReLU(), nn.Linear(12, 10))


def rgb():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(x) if x.sum() >= 0 else -self.fc(x)


def not_a_model():
    return 3
'''
TINY = ["--model", "vgg11_bn", "--width", "0.0625", "--data", "mnist", "--images", "48"]
PLAIN = ["--model", "mlp", "--width", "0.03125", "--data", "mnist", "--images", "48"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MNIST in the official layout, checkpoints and a module of models of one's own."""
    root = tmp_path_factory.mktemp("cli")
    fake_datasets.write_mnist(root / "data", 200, 100)
    for name, width, seeds in (("vgg11_bn", 0.0625, (1, 2)), ("vgg11_bn", 0.125, (3,)),
                               ("mlp", 0.03125, (1, 2))):
        for seed in seeds:
            torch.manual_seed(seed)
            model = build_model(name, width=width, in_channels=1,
                                image_size=28 if name == "mlp" else 32)
            torch.save(model.state_dict(), root / f"{name}_{seed}.pt")
    (root / "tiny_nets.py").write_text(NETS)
    sys.path.insert(0, str(root))
    try:
        import tiny_nets
    finally:
        sys.path.remove(str(root))
    torch.save(tiny_nets.mlp().state_dict(), root / "own.pt")
    torch.save(tiny_nets.Branchy().state_dict(), root / "branchy.pt")
    del sys.modules["tiny_nets"]
    return root


@pytest.fixture(autouse=True)
def setting(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data from `files` only, no downloads, no progress bars, the models module importable."""
    monkeypatch.setenv("VFCORE_DATA", str(files / "data"))
    monkeypatch.setenv("VFCORE_NO_DOWNLOAD", "1")
    monkeypatch.setenv("CI", "1")
    monkeypatch.chdir(files)
    monkeypatch.delitem(sys.modules, "tiny_nets", raising=False)


def run(*argv: str | Path) -> int:
    return cli.main([str(a) for a in argv])


def test_diagnose_writes_the_report(files: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert run("diagnose", "vgg11_bn_1.pt", "vgg11_bn_2.pt", *TINY, "--threads", "1",
               "--out", out) == 0
    for name in ("summary", "vf", "remedies", "pfm"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    n_layers = len(report["layers"])
    assert n_layers == 9 and report["norms"] == ["none", "reset"]
    assert [(r["alignment"], r["norm"]) for r in report["remedies"]] == [
        (m, n) for m in ("direct", "wm", "am") for n in ("none", "reset")]
    assert all(0 <= r["accuracy"] <= 100 for r in report["remedies"])
    assert report["inputs"]["test_images"] == 48 and report["inputs"]["calibration_images"] == 48
    best = report["best"]
    assert {"direct", "wm", "am", f"{best['alignment']}+reset"} == set(report["vf"])
    for curve in report["vf"].values():
        assert len(curve["scale"]) == len(curve["bound"]) == n_layers
        assert all(b >= s - 1e-9 for b, s in zip(curve["bound"], curve["scale"], strict=True))
    points = report["pfm"]["points"]
    assert [p["l"] for p in points] == list(range(n_layers + 1))
    assert points[0]["accuracy"] == best["accuracy"] and points[0]["params_ratio"] == 1.0
    assert points[-1]["accuracy"] == report["endpoints"]["ensemble"]
    assert points[-1]["params_ratio"] == pytest.approx(2.0, abs=0.01)
    text = (out / "report.md").read_text()
    assert "## Reading" in text and "![summary](summary.png)" in text and "close to chance" in text


def test_a_model_merged_with_itself_keeps_its_feature(files: Path, tmp_path: Path) -> None:
    """A model of one's own (module:callable), merged with itself: a scale of 1 at every layer,
    the merge scores what the model scores, and REPAIR and RESCALE are the normalisations."""
    out = tmp_path / "self"
    argv = ["own.pt", "own.pt", "--model", "tiny_nets:mlp", "--data", "mnist", "--images", "48"]
    assert run("diagnose", *argv, "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["norms"] == ["none", "repair", "rescale"]
    for method in ("direct", "wm"):
        assert report["vf"][method]["scale"] == pytest.approx([1.0, 1.0], abs=1e-5)
        assert report["vf"][method]["vanishes_at"] is None
    merged = {(r["alignment"], r["norm"]): r["accuracy"] for r in report["remedies"]}
    assert merged["direct", "none"] == report["endpoints"]["a"] == report["endpoints"]["ensemble"]


def test_merge_writes_a_loadable_state_dict(files: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A vfcore cache entry gives its width; weight matching without normalisation needs no
    data at all."""
    monkeypatch.setenv("VFCORE_DATA", str(tmp_path))
    state = torch.load(files / "vgg11_bn_1.pt", weights_only=True)
    meta = {"spec": {"model": {"name": "vgg11_bn", "width": 0.0625}}}
    torch.save({"state": state, "meta": meta}, tmp_path / "entry.pt")
    out = tmp_path / "merged.pt"
    assert run("merge", tmp_path / "entry.pt", files / "vgg11_bn_2.pt", "--model", "vgg11_bn",
               "--data", "mnist", "--align", "wm", "--norm", "none",
               "-o", out) == 0
    model = build_model("vgg11_bn", width=0.0625, in_channels=1)
    model.load_state_dict(torch.load(out, weights_only=True))


def test_merge_with_preserved_layers_rebuilds(files: Path, tmp_path: Path) -> None:
    """The PFM file holds the whole model: rebuilt as documented, it computes what PFM of the
    original checkpoints computes."""
    out = tmp_path / "pfm.pt"
    assert run("merge", "vgg11_bn_1.pt", "vgg11_bn_2.pt", *TINY, "--align", "am",
               "--norm", "reset", "--preserve", "3", "--alpha", "0.4", "-o", out) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["meta"]["n_preserved"] == 3 and "preserve_first_merge" in saved["meta"]["load"]
    template = build_model("vgg11_bn", width=0.0625, in_channels=1)
    rebuilt = preserve_first_merge(template, template, 3, alpha=0.4)
    rebuilt.load_state_dict(saved["state"])

    inputs = prepare(["vgg11_bn_1.pt", "vgg11_bn_2.pt"], ModelChoice("vgg11_bn", 0.0625),
                     "mnist", "cpu")
    a, b = inputs.models
    calibration = [x for x, _ in inputs.draw(48, train=True, augment=True)]
    expected = merge_models(a, b, align(a, b, "am", calibration), alpha=0.4,
                            n_preserved=3, norm="reset", calibration=calibration)
    x = calibration[0][:8]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), expected(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("argv", "model", "bn"), [
    (["--scope", "global", "--renorm"], "vgg11_bn", True),
    (["--scope", "layerwise", "--renorm", "rescale"], "mlp", False),
])
def test_prune_is_exact(files: Path, tmp_path: Path, argv: list[str], model: str,
                        bn: bool) -> None:
    out = tmp_path / "pruned.pt"
    options = TINY if bn else PLAIN
    assert run("prune", f"{model}_1.pt", *options, "--sparsity", "0.8", *argv, "-o", out) == 0
    pruned = build_model(model, width=0.0625 if bn else 0.03125, in_channels=1,
                         image_size=32 if bn else 28)
    pruned.load_state_dict(torch.load(out, weights_only=True))
    weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if argv[1] == "global":
        total = sum(w.numel() for w in weights)
        assert sparsity(pruned) == round(0.8 * total) / total
    else:
        assert all(int((w == 0).sum()) == round(0.8 * w.numel()) for w in weights)


BAD = {
    "different architectures": (
        ["diagnose", "vgg11_bn_1.pt", "vgg11_bn_3.pt", *TINY], "hold different architectures"),
    "checkpoint does not fit": (
        ["diagnose", "mlp_1.pt", "mlp_2.pt", *TINY], "missing keys"),
    "wrong width": (
        ["prune", "vgg11_bn_3.pt", *TINY, "--sparsity", "0.5"],
        "Its features.0.weight suggests --width 0.125"),
    "cannot be traced": (
        ["diagnose", "branchy.pt", "branchy.pt", "--model", "tiny_nets:Branchy", "--data",
         "mnist"], "cannot derive the structure"),
    "images of another shape": (
        ["diagnose", "own.pt", "own.pt", "--model", "tiny_nets:rgb", "--data", "mnist"],
        "does not accept mnist images"),
    "channels do not fit": (
        ["merge", "vgg11_bn_1.pt", "vgg11_bn_2.pt", *TINY, "--in-channels", "3"],
        "have 1 channel(s) but the model takes 3"),
    "missing file": (["prune", "nowhere.pt", *PLAIN, "--sparsity", "0.5"], "no such file"),
    "unknown model": (["prune", "mlp_1.pt", "--model", "vgg99", "--sparsity", "0.5"],
                      "unknown model 'vgg99'"),
    "not a module": (["prune", "own.pt", "--model", "tiny_nets:not_a_model", "--data", "mnist",
                      "--sparsity", "0.5"], "returned a int, not an nn.Module"),
    "sparsity out of range": (["prune", "mlp_1.pt", *PLAIN, "--sparsity", "1"],
                              "must lie in [0, 1)"),
    "too many preserved layers": (["merge", "mlp_1.pt", "mlp_2.pt", *PLAIN, "--preserve", "5"],
                                  "--preserve must lie in [0, 4]"),
    "reset without batchnorm": (["merge", "mlp_1.pt", "mlp_2.pt", *PLAIN, "--norm", "reset"],
                                "has no BatchNorm"),
    "width of a model of one's own": (
        ["prune", "own.pt", "--model", "tiny_nets:mlp", "--width", "2", "--sparsity", "0.5"],
        "apply to built-in models only"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_and_writes_nothing(files: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture, case: str) -> None:
    argv, message = BAD[case]
    out = tmp_path / "out"
    target = ["--out", out] if argv[0] == "diagnose" else ["-o", out]
    assert run(*argv, *target) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_dataset(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("VFCORE_DATA", str(tmp_path))
    assert run("diagnose", "mlp_1.pt", "mlp_2.pt", *PLAIN, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "MNIST (train split) was not found" in err and "$VFCORE_DATA/mnist/" in err
    assert not any(tmp_path.iterdir())


def test_existing_outputs_are_kept(files: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    (tmp_path / "pruned.pt").write_text("mine")
    assert run("diagnose", "mlp_1.pt", "mlp_2.pt", *PLAIN, "--out", tmp_path / "report") == 2
    assert run("prune", "mlp_1.pt", *PLAIN, "--sparsity", "0.5", "-o",
               tmp_path / "pruned.pt") == 2
    assert capsys.readouterr().err.count("exists; choose another path or pass --force") == 2
    assert os.listdir(tmp_path / "report") == ["notes.txt"]
    assert (tmp_path / "pruned.pt").read_text() == "mine"
    assert run("prune", "mlp_1.pt", *PLAIN, "--sparsity", "0.5", "-o", tmp_path / "pruned.pt",
               "--force") == 0
    torch.load(tmp_path / "pruned.pt", weights_only=True)


def test_a_pfm_file_is_not_taken_for_one_model(files: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    torch.save({"state": {}, "meta": {"format": PFM_FORMAT, "load": "pfm = ..."}},
               tmp_path / "pfm.pt")
    assert run("prune", tmp_path / "pfm.pt", *PLAIN, "--sparsity", "0.5", "-o",
               tmp_path / "out.pt") == 2
    assert "holds a whole PFM model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["diagnose", "merge", "prune"])
def test_help(command: str, capsys: pytest.CaptureFixture) -> None:
    assert run(command, "--help") == 0
    text = capsys.readouterr().out
    assert f"usage: vfcore {command}" in text and "examples:" in text and "--model" in text


def test_top_level_help_and_reproduce(capsys: pytest.CaptureFixture) -> None:
    assert run("--help") == 0
    text = capsys.readouterr().out
    assert all(c in text for c in ("diagnose", "merge", "prune", "reproduce", "examples:"))
    assert run("reproduce", "--help") == 0
    assert "usage: vfcore reproduce" in capsys.readouterr().out
    assert run() == 2


def test_console_script(files: Path, tmp_path: Path) -> None:
    script = shutil.which("vfcore")
    if script is None:
        pytest.skip("the vfcore console script is not installed (pip install -e .)")
    done = subprocess.run([script, "prune", "nowhere.pt", *PLAIN, "--sparsity", "0.5", "-o",
                           str(tmp_path / "out.pt")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert "vfcore prune: error: nowhere.pt: no such file" in done.stderr
    assert not (tmp_path / "out.pt").exists()
