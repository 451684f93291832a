"""The paper profile's path, exercised end to end at toy size: every notebook executed at the
`paper_tiny` profile on generated CIFAR-10/100 and MNIST files in their official layouts, and
`make reproduce PROFILE=paper` refusing to start without the CIFAR files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
from fake_datasets import write_all

from vfcore.data import DatasetNotFoundError
from vfcore.reproduce import NOTEBOOKS, check_data, longest_first, notebook_paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_tiny_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("paper_tiny")
    data = write_all(base / "data", n_train=512, n_test=256)
    env = {"VFCORE_DATA": str(data), "VFCORE_NO_DOWNLOAD": "1",
           "VFCORE_CACHE": str(base / "cache"), "VFCORE_FIGURES": str(base / "figures")}
    subprocess.run([sys.executable, "-m", "vfcore.reproduce", "--profile", "paper_tiny",
                    "--train-only", "--workers", "1"], env=_environ(env), check=True,
                   cwd=ROOT, capture_output=True)
    return env


def _environ(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


@pytest.mark.parametrize("notebook", [p.name for p in longest_first(notebook_paths())])
def test_every_notebook_runs_at_the_paper_structure(paper_tiny_env, notebook, tmp_path,
                                                    monkeypatch):
    for key, value in paper_tiny_env.items():
        monkeypatch.setenv(key, value)
    papermill.execute_notebook(str(NOTEBOOKS / notebook), str(tmp_path / notebook),
                               parameters={"profile": "paper_tiny", "device": "cpu"},
                               kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    stem = notebook.removesuffix(".ipynb")
    assert (Path(paper_tiny_env["VFCORE_FIGURES"]) / "paper_tiny" / f"claims_{stem}.csv").exists()


def test_the_paper_profile_stops_at_once_without_cifar(tmp_path, monkeypatch):
    monkeypatch.setenv("VFCORE_DATA", str(tmp_path))
    monkeypatch.setenv("VFCORE_NO_DOWNLOAD", "1")
    monkeypatch.setattr("vfcore.data._REPO_DATA", tmp_path / "repo")
    monkeypatch.setattr("vfcore.data._SYSTEM_DATASETS", tmp_path / "system")
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR-10(?s:.*)Put the files in"):
        check_data("paper")
