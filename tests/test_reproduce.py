"""How `vfcore.reproduce` executes notebooks: the longest first, on workers of one thread each,
and a failing notebook stops the run with its name and error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from vfcore import reproduce


def _notebook(path: Path, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(source))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_longest_notebooks_start_first():
    paths = [Path(f"{i:02d}_x.ipynb") for i in range(10)]
    ordered = reproduce.longest_first(paths)
    first = [p.name[:2] for p in ordered[:len(reproduce.LONGEST_FIRST)]]
    assert first == list(reproduce.LONGEST_FIRST)
    rest = [p for p in paths if p.name[:2] not in reproduce.LONGEST_FIRST]
    assert ordered[len(reproduce.LONGEST_FIRST):] == rest
    assert sorted(ordered) == paths


def test_notebooks_run_on_workers_of_one_thread_each(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(reproduce, "cpu_cores", lambda: 2)
    paths = [_notebook(tmp_path / f"0{i}_x.ipynb",
                       "import os, pathlib\n"
                       f"pathlib.Path({str(tmp_path / f'{i}.threads')!r})"
                       ".write_text(os.environ.get('OMP_NUM_THREADS', 'unset'))")
             for i in range(3)]
    timings = reproduce.execute("smoke", "cpu", paths, workers=2)
    assert sorted(name for name, _ in timings[:-1]) == [p.name for p in paths]
    assert timings[-1][0] == "notebooks"
    assert [(tmp_path / f"{i}.threads").read_text() for i in range(3)] == ["1"] * 3
    executed = nbformat.read(paths[0], as_version=4)
    assert "papermill" in executed.metadata


def test_a_re_executed_notebook_is_byte_identical(tmp_path: Path):
    """Executed notebooks carry no timestamps, durations or random ids: re-running one whose
    results do not change leaves its file as it was."""
    path = _notebook(tmp_path / "00_x.ipynb", "print(6 * 7)")
    reproduce.execute("smoke", "cpu", [path])
    first = path.read_bytes()
    reproduce.execute("smoke", "cpu", [path])
    assert path.read_bytes() == first
    executed = nbformat.read(path, as_version=4)
    assert not set(reproduce.VOLATILE) & set(executed.metadata["papermill"])
    assert [c.id for c in executed.cells] == [reproduce.INJECTED_ID, executed.cells[1].id]
    assert all("execution" not in c.metadata for c in executed.cells)
    assert executed.cells[1].outputs[0]["text"] == "42\n"


def test_a_failing_notebook_stops_the_run_with_its_name(tmp_path: Path):
    paths = [_notebook(tmp_path / "00_ok.ipynb", "1 + 1"),
             _notebook(tmp_path / "01_bad.ipynb", "raise ValueError('planted failure')")]
    with pytest.raises(RuntimeError, match=r"(?s)01_bad\.ipynb.*planted failure"):
        reproduce.execute("smoke", "cpu", paths, workers=2)
