"""nbval collects the notebooks here, not the executed copies of other profiles in
notebooks/<profile>/ (outputs of hours of training, not tests). Under pytest-xdist (`--dist
loadfile --no-loadscope-reorder`, as `make test` runs them) the longest start first, in the order
`vfcore.reproduce` executes them, so that the workers finish together."""

from pathlib import Path

import pytest

from vfcore.profiles import PROFILES
from vfcore.reproduce import longest_first

collect_ignore = [name for name in PROFILES if name != "smoke"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {p: i for i, p in enumerate(longest_first(sorted({Path(i.path) for i in items})))}
    items.sort(key=lambda item: order[Path(item.path)])
