"""Regenerate every notebook through papermill at one profile, with progress and timings.

    python -m vfcore.reproduce --profile smoke            # all notebooks, in place
    python -m vfcore.reproduce --profile paper --device cuda
    python -m vfcore.reproduce --only 05 07               # a selection

At the smoke profile the committed notebooks are re-executed in place (their outputs are what
nbval checks); other profiles write executed copies to notebooks/<profile>/. Figures and tables
go to figures/<profile>/. All notebooks share the endpoint cache, so each endpoint trains once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .io import atomic_path
from .profiles import get_profile

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks, in order; `only` keeps those whose name starts with a prefix."""
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return every
    paths = [p for p in every if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise SystemExit(f"no notebook matches {only}; have {[p.name for p in every]}")
    return paths


def _portable_metadata(executed: Path, source: Path, out: Path) -> None:
    """Record repository-relative notebook paths in papermill's metadata, not this machine's."""
    root = NOTEBOOKS.parent
    nb = json.loads(executed.read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("papermill", {})
    meta["input_path"] = str(source.relative_to(root))
    meta["output_path"] = str(out.relative_to(root))
    executed.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def output_path(notebook: Path, profile: str) -> Path:
    return notebook if profile == "smoke" else NOTEBOOKS / profile / notebook.name


def run(profile: str, device: str, only: list[str] | None = None) -> list[tuple[str, float]]:
    """Execute the notebooks; return (name, seconds) for each."""
    import papermill

    get_profile(profile)
    timings = []
    paths = notebook_paths(only)
    for i, nb in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {nb.name} ...", flush=True)
        start = time.perf_counter()
        out = output_path(nb, profile)
        with atomic_path(out) as tmp:
            papermill.execute_notebook(
                str(nb), str(tmp), parameters={"profile": profile, "device": device},
                kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
                request_save_on_cell_execute=False)
            _portable_metadata(tmp, nb, out)
        seconds = time.perf_counter() - start
        timings.append((nb.name, seconds))
        print(f"[{i}/{len(paths)}] {nb.name} done in {seconds:.0f} s", flush=True)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 05")
    args = parser.parse_args(argv)
    timings = run(args.profile, args.device, args.only)
    total = sum(s for _, s in timings)
    print("\n".join(f"{s:8.0f} s  {name}" for name, s in timings))
    print(f"{total:8.0f} s  total ({args.profile} profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
