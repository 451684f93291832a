"""Do the smoke results depend on the number of torch threads the analysis runs on?

    python benchmarks/thread_stability.py --threads 4              # run, then compare
    python benchmarks/thread_stability.py --compare A B            # compare two figure folders

A run executes the smoke notebooks under nbval, as `make test` does, on one kernel of N torch
threads (`OMP_NUM_THREADS=N VFCORE_CORES=N`, so N may exceed this machine's cores: the numbers
are what N threads compute, only slower; then with `OMP_WAIT_POLICY=PASSIVE`, which changes no
number) from an empty result cache. The trained endpoints are
shared with `$VFCORE_CACHE`: they always train on one thread, so every thread count analyses the
same weights. Figures go to `build/threads-N/smoke/`. Then it compares them with the committed
`figures/smoke/`: the claims guard (verdicts, and values within their tolerances) and, for every
results CSV, how many numbers moved and by how much.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from vfcore.claims.summary import guard
from vfcore.device import cpu_cores
from vfcore.endpoints import resolve_cache_dir

ROOT = Path(__file__).resolve().parent.parent


def run(threads: int) -> Path:
    """Execute the smoke notebooks on `threads` torch threads; return their figures folder."""
    figures = ROOT / "build" / f"threads-{threads}"
    cores = cpu_cores()
    endpoints = resolve_cache_dir()
    with tempfile.TemporaryDirectory(prefix="vfcore-threads-") as cache:
        for entry in endpoints.iterdir():
            if entry.suffix in (".pt", ".json"):
                (Path(cache) / entry.name).symlink_to(entry)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VFCORE_CORES": str(threads),
               "VFCORE_CACHE": cache, "VFCORE_FIGURES": str(figures)}
        if threads > cores:  # spinning waiters would take the cores the busy threads need
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        subprocess.run([sys.executable, "-m", "pytest", "notebooks", "-p", "no:xdist",
                        "--nbval-lax", "--sanitize-with", "notebooks/sanitize.cfg", "-q"],
                       cwd=ROOT, env=env, check=True)
    return figures / "smoke"


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
    return pd.DataFrame(rows)


def compare(new: Path, reference: Path) -> int:
    table = moved(new, reference)
    print(table.to_string(index=False))
    print(f"{int(table['moved'].clip(lower=0).sum())} of {int(table['numbers'].sum())} numbers "
          f"moved; largest move {table['largest'].max():.4g}")
    problems = guard(new, reference)
    for problem in problems:
        print(problem)
    print(f"claims guard: {len(problems)} problem(s)")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="run the notebooks on this many threads")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("NEW", "REFERENCE"),
                        help="only compare two folders of smoke figures")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.threads or args.threads < 1:
        parser.error("give --threads N (N >= 1) or --compare NEW REFERENCE")
    return compare(run(args.threads), ROOT / "figures" / "smoke")


if __name__ == "__main__":
    sys.exit(main())
