"""The package's layout: a public front door, no import cycles, the README's example runs."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import vfcore

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vfcore"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """vfcore modules imported at module level (not inside functions) by one file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vfcore"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vfcore"))
    return found


def test_no_import_cycles():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    parent = {m: m.rsplit(".", 1)[0] for m in modules}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if n == parent.get(m):
                continue  # a module may read its own package's __init__ (a package is a unit)
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, m, n]))
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_front_door_exports_the_public_api():
    for name in vfcore.__all__:
        assert hasattr(vfcore, name), name
    for name in ("build_model", "load_dataset", "align", "merge_models", "repair", "reset_bn",
                 "preserve_first_merge", "prune", "normalized_scale", "Setup"):
        assert name in vfcore.__all__


def test_the_readme_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it on your own models", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        torch.manual_seed(seed)
        model = vfcore.build_model("vgg16_bn", width=0.25, in_channels=1)
        torch.save(model.state_dict(), name)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["scale"].shape == (len(vfcore.vf_layers(namespace["a"])),)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_guards_the_claims_the_notebooks_wrote(tmp_path):
    """nbval runs each notebook in notebooks/, so a relative VFCORE_FIGURES would send the
    claims there and the guard would look for them elsewhere: the path must be absolute."""
    plan = subprocess.run(["make", "-n", "test", "PYTHON=python3"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    written = re.search(r"VFCORE_FIGURES=(\S+) \S+ -m pytest notebooks", plan)
    guarded = re.search(r"-m vfcore\.claims guard (\S+)/smoke figures/smoke", plan)
    assert written and guarded, plan
    assert Path(written[1]).is_absolute() and written[1] == guarded[1]


def test_nbval_skips_the_executed_copies_of_other_profiles(tmp_path):
    """`make test` runs `pytest notebooks`: notebooks/<profile>/ holds hours of another profile's
    outputs, which nbval must not re-execute."""
    (tmp_path / "fmnist_quarter").mkdir()
    for where in (tmp_path, tmp_path / "fmnist_quarter"):
        shutil.copy(ROOT / "notebooks" / "00_walkthrough.ipynb", where)
    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path)
    listed = subprocess.run(["python3", "-m", "pytest", str(tmp_path), "--collect-only", "-q",
                             "--nbval-lax", "-p", "no:cacheprovider"], cwd=tmp_path,
                            capture_output=True, text=True).stdout
    assert "00_walkthrough.ipynb" in listed and "fmnist_quarter" not in listed, listed
