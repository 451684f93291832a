"""Do a profile's results depend on the number of torch threads the analysis runs on?

    python benchmarks/thread_stability.py --threads 4              # smoke: run, then compare
    python benchmarks/thread_stability.py --threads 2 --profile fmnist_quarter --only 02 03
    python benchmarks/thread_stability.py --compare A B            # compare two figure folders

A run executes the profile's notebooks (all, or those whose name starts with an `--only` prefix)
on one kernel of N torch threads (`OMP_NUM_THREADS=N VFCORE_CORES=N`, so N may exceed this
machine's cores: the numbers are what N threads compute, only slower; then with
`OMP_WAIT_POLICY=PASSIVE`, which changes no number) from an empty result cache: smoke's under
nbval, as `make test` does, other profiles' with papermill into `build/threads-N/notebooks/`. The
trained endpoints are shared with `$VFCORE_CACHE`: they always train on one thread, so every
thread count analyses the same weights. Figures go to `build/threads-N/<profile>/`, emptied first so
that an earlier run's figures never count as this one's. Then it compares them with the committed
`figures/<profile>/` (those of the notebooks that ran): the claims guard (verdicts, and values
within their tolerances), every verdict that changed in either direction, and, for every results
CSV, how many numbers moved and by how much.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pandas as pd

from vfcore.claims.summary import guard, load
from vfcore.device import cpu_cores
from vfcore.endpoints import resolve_cache_dir
from vfcore.profiles import PROFILES
from vfcore.reproduce import execute_notebook, notebook_paths

ROOT = Path(__file__).resolve().parent.parent


def run(threads: int, profile: str, only: list[str]) -> Path:
    """Execute the profile's notebooks on `threads` torch threads; return their figures folder."""
    build = ROOT / "build" / f"threads-{threads}"
    shutil.rmtree(build / profile, ignore_errors=True)
    notebooks = notebook_paths(only)
    cores = cpu_cores()
    endpoints = resolve_cache_dir()
    with tempfile.TemporaryDirectory(prefix="vfcore-threads-") as cache, \
            patch.dict(os.environ):  # the kernels inherit it; restored with the cache's removal
        for entry in endpoints.iterdir():
            if entry.suffix in (".pt", ".json"):
                (Path(cache) / entry.name).symlink_to(entry)
        os.environ.update({"OMP_NUM_THREADS": str(threads), "VFCORE_CORES": str(threads),
                           "VFCORE_CACHE": cache, "VFCORE_FIGURES": str(build)})
        if threads > cores:  # spinning waiters would take the cores the busy threads need
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        if profile == "smoke":
            subprocess.run([sys.executable, "-m", "pytest", *map(str, notebooks), "-p",
                            "no:xdist", "--nbval-lax", "--sanitize-with",
                            "notebooks/sanitize.cfg", "-q"], cwd=ROOT, check=True)
        else:
            for notebook in notebooks:
                print(f"{notebook.name} on {threads} thread(s) ...", flush=True)
                execute_notebook(notebook, profile, "cpu", progress=False,
                                 out=build / "notebooks" / profile / notebook.name)
    return build / profile


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def numbers(table: pd.DataFrame) -> np.ndarray:
    """Every number of a table in reading order, including those inside text cells ("86.35 ±
    1.06" gives two)."""
    cells = [str(cell) for cell in table.to_numpy().ravel()]
    return np.array([float(x) for cell in cells for x in NUMBER.findall(cell)])


def moved(new: Path, reference: Path) -> pd.DataFrame:
    """For each results CSV in both folders: numbers compared, how many moved, the largest move
    (-1 moved: the tables differ in shape)."""
    rows = []
    for path in sorted(reference.glob("*.csv")):
        if path.name.startswith("claims_") or not (new / path.name).exists():
            continue
        a, b = numbers(pd.read_csv(path)), numbers(pd.read_csv(new / path.name))
        if a.shape != b.shape:
            rows.append({"table": path.name, "numbers": a.size, "moved": -1, "largest": np.nan})
            continue
        diff = np.nan_to_num(np.abs(a - b), nan=0.0)
        rows.append({"table": path.name, "numbers": a.size, "moved": int((diff > 1e-9).sum()),
                     "largest": float(diff.max(initial=0.0))})
    return pd.DataFrame(rows, columns=["table", "numbers", "moved", "largest"])


def verdicts_changed(new: Path, reference: Path) -> list[str]:
    """Claims whose verdict differs between two folders, in either direction."""
    fresh = load(new)
    changed = []
    for notebook, old in load(reference).items():
        now = fresh.get(notebook, pd.DataFrame(columns=["id", "holds"])).set_index("id")["holds"]
        changed += [f"{notebook}: {row.id} {row.holds} -> {now.get(row.id, 'missing')}"
                    for row in old.itertuples(index=False) if now.get(row.id) != row.holds]
    return changed


def compare(new: Path, reference: Path) -> int:
    """Compare `new` with the claims and results of `reference` that `new` also has."""
    with tempfile.TemporaryDirectory(prefix="vfcore-reference-") as shared:
        for path in reference.glob("*.csv"):
            if (new / path.name).exists():
                (Path(shared) / path.name).symlink_to(path.resolve())
        table = moved(new, Path(shared))
        print(table.to_string(index=False))
        print(f"{int(table['moved'].clip(lower=0).sum())} of {int(table['numbers'].sum())} "
              f"numbers moved; largest move {table['largest'].max():.4g}")
        changed = verdicts_changed(new, Path(shared))
        claims = sum(len(df) for df in load(shared).values())
        for line in changed:
            print(line)
        print(f"verdicts: {len(changed)} of {claims} claims changed")
        problems = guard(new, shared)
    for problem in problems:
        print(problem)
    print(f"claims guard: {len(problems)} problem(s)")
    return 1 if problems or changed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="run the notebooks on this many threads")
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 02 03")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("NEW", "REFERENCE"),
                        help="only compare two folders of figures")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.threads or args.threads < 1:
        parser.error("give --threads N (N >= 1) or --compare NEW REFERENCE")
    figures = run(args.threads, args.profile, args.only)
    return compare(figures, ROOT / "figures" / args.profile)


if __name__ == "__main__":
    sys.exit(main())
