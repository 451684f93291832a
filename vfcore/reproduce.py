"""Regenerate every notebook at one profile: check the data, train every endpoint (in parallel),
then execute the notebooks through papermill from the cache, with progress and timings. On a
CPU the notebooks run on the same number of workers as the training, one kernel of
`cores // workers` torch threads each, the longest first; on a GPU, one at a time.

    python -m vfcore.reproduce --profile smoke               # all notebooks, in place
    python -m vfcore.reproduce --profile paper_tiny          # copies in notebooks/paper_tiny/
    python -m vfcore.reproduce --profile paper --device cuda --engine slurm --workers 16
    python -m vfcore.reproduce --only 05 07                  # a selection

At the smoke profile the committed notebooks are re-executed in place (their outputs are what
nbval checks); other profiles write executed copies to notebooks/<profile>/. Figures and tables
go to figures/<profile>/. Progress (endpoints trained, notebook cells) shows on a terminal only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from .data import load_dataset
from .device import cpu_cores, resolve_device
from .io import atomic_path
from .jobs import ENGINES, quiet_output, train_all
from .profiles import PROFILES, get_profile
from .studies import Setup
from .studies.manifest import endpoints

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LONGEST_FIRST = ("09", "05", "07")
"""Notebook prefixes by falling cold smoke time (2-core CPU, empty results cache: 421, 207 and
173 s; each of the others took under 100 s): on several workers they start first, so that the
workers finish together instead of one starting the longest notebook last."""


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks, in order; `only` keeps those whose name starts with a prefix."""
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return every
    paths = [p for p in every if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise SystemExit(f"no notebook matches {only}; have {[p.name for p in every]}")
    return paths


def longest_first(paths: list[Path]) -> list[Path]:
    """`paths` with the `LONGEST_FIRST` notebooks moved to the front (the rest keep their order)."""
    rank = {prefix: i for i, prefix in enumerate(LONGEST_FIRST)}
    return sorted(paths, key=lambda p: rank.get(p.name[:2], len(rank)))


def output_path(notebook: Path, profile: str) -> Path:
    return notebook if profile == "smoke" else NOTEBOOKS / profile / notebook.name


VOLATILE = ("start_time", "end_time", "duration")
"""papermill's per-run timings: dropped on write, so that re-executing a notebook changes only
lines that carry results."""
INJECTED_ID = "injected-parameters"


def _stable_metadata(executed: Path, source: Path, out: Path) -> None:
    """Make an executed notebook depend only on its results: repository-relative paths in
    papermill's metadata instead of this machine's, no timestamps or durations, and a fixed id
    for the injected-parameters cell instead of a random one."""
    root = NOTEBOOKS.parent
    nb = json.loads(executed.read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("papermill", {})
    meta["input_path"] = str(source.relative_to(root) if source.is_relative_to(root) else source)
    meta["output_path"] = str(out.relative_to(root) if out.is_relative_to(root) else out)
    for key in VOLATILE:
        meta.pop(key, None)
    for cell in nb.get("cells", []):
        cell_meta = cell.get("metadata", {})
        cell_meta.pop("execution", None)
        for key in VOLATILE:
            cell_meta.get("papermill", {}).pop(key, None)
        if INJECTED_ID in cell_meta.get("tags", []):
            cell["id"] = INJECTED_ID
    executed.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def check_data(profile: str) -> None:
    """Load every dataset the profile needs before anything trains: a missing one stops the
    run at once with the error that says where to put its files."""
    p = get_profile(profile)
    for name in dict.fromkeys((p.dataset, *p.extra_datasets, p.linear_dataset)):
        for train in (True, False):
            load_dataset(name, train=train)


def execute_notebook(notebook: Path, profile: str, device: str, progress: bool,
                     out: Path | None = None) -> float:
    """Execute one notebook into `out` (default: its output path for `profile`); return the
    seconds it took. The kernel inherits this process's environment."""
    import papermill

    start = time.perf_counter()
    out = output_path(notebook, profile) if out is None else out
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        papermill.execute_notebook(
            str(notebook), str(tmp), parameters={"profile": profile, "device": device},
            kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=progress,
            request_save_on_cell_execute=False)
        _stable_metadata(tmp, notebook, out)
    return time.perf_counter() - start


def _in_worker(notebook: Path, profile: str, device: str) -> float:
    """`execute_notebook` in a worker process; errors come back as plain RuntimeErrors (papermill's
    own do not always survive pickling) that keep the message with the failing cell."""
    try:
        return execute_notebook(notebook, profile, device, progress=False)
    except Exception as err:
        raise RuntimeError(f"{notebook.name}: {type(err).__name__}: {err}") from None


def _kernel_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)


def execute(profile: str, device: str, paths: list[Path], workers: int = 1
            ) -> list[tuple[str, float]]:
    """Execute the notebooks; return (name, seconds) for each, then ("notebooks", wall seconds).

    With several workers, each runs one notebook at a time in a kernel of `cores // workers`
    torch threads, the longest notebooks first; a failure stops the notebooks not yet started.
    """
    start = time.perf_counter()
    timings = []
    if workers <= 1:
        for i, nb in enumerate(paths, 1):
            print(f"[{i}/{len(paths)}] {nb.name} ...", flush=True)
            timings.append((nb.name, execute_notebook(nb, profile, device, not quiet_output())))
            print(f"[{i}/{len(paths)}] {nb.name} done in {timings[-1][1]:.0f} s", flush=True)
    else:
        threads = max(1, cpu_cores() // workers)
        print(f"executing {len(paths)} notebooks on {workers} workers of {threads} torch "
              f"thread(s), longest first", flush=True)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_kernel_threads, initargs=(threads,)) as pool:
            running = {pool.submit(_in_worker, nb, profile, device): nb
                       for nb in longest_first(paths)}
            for future in as_completed(running):
                if future.exception() is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise future.exception()
                timings.append((running[future].name, future.result()))
                print(f"[{len(timings)}/{len(paths)}] {running[future].name} done in "
                      f"{timings[-1][1]:.0f} s", flush=True)
    return timings + [("notebooks", time.perf_counter() - start)]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 05")
    parser.add_argument("--workers", type=int, default=cpu_cores(),
                        help="endpoints trained, and notebooks executed, at once (default: the "
                             "usable CPU cores)")
    parser.add_argument("--engine", default="local", choices=ENGINES,
                        help="where endpoints train: this process, local worker processes, "
                             "or a SLURM job array (see the README)")
    parser.add_argument("--train-only", action="store_true",
                        help="train every endpoint, execute no notebook")
    args = parser.parse_args(argv)
    paths = notebook_paths(args.only)
    check_data(args.profile)
    setup = Setup(args.profile, args.device)
    jobs = endpoints(setup)
    print(f"{len(jobs)} endpoints at the {args.profile} profile; training those not cached "
          f"with {args.workers} worker(s)", flush=True)
    timings = [("training", train_all(jobs, workers=args.workers, engine=args.engine))]
    if not args.train_only:
        on_cpu = resolve_device(args.device).type == "cpu"
        timings += execute(args.profile, args.device, paths, args.workers if on_cpu else 1)
    print("\n".join(f"{s:8.0f} s  {name}" for name, s in timings))
    stages = [s for name, s in timings if name in ("training", "notebooks")]
    print(f"{sum(stages):8.0f} s  total ({args.profile} profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
