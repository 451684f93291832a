"""The result cache: every measured cell of a study, stored under a key over what changes it.

A cell is one measured configuration (say, VGG16 pair 2, AM + RESCALE at PFM 8) and its values
(metric -> number or list of numbers). Each is one small JSON file, written atomically, that
carries its key and a SHA-256 of its values: a study interrupted half-way resumes where it
stopped, a second run returns at once, and a damaged entry is recomputed, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

from ..io import atomic_write_text

Values = dict[str, float | list[float]]


def canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def _check_values(values: Values) -> Values:
    if not isinstance(values, dict) or not values:
        raise TypeError("a cell must measure at least one metric: return {metric: value}")
    out: Values = {}
    for metric, value in values.items():
        if isinstance(value, (list, tuple)):
            out[metric] = [float(v) for v in value]
        else:
            out[metric] = float(value)
    return out


class ResultCache:
    """Cells as JSON files under `folder`, named by the first bytes of their key."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Values | None:
        """The cell's values, or None when it is missing or damaged (a warning says which)."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("key") != key:
                raise ValueError("it was stored under another key")
            if entry.get("sha256") != digest(entry.get("values")):
                raise ValueError("its checksum does not match its values")
            return _check_values(entry["values"])
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            warnings.warn(f"cached result {path} is damaged ({err}); recomputing it",
                          stacklevel=3)
            return None

    def put(self, key: str, cell: dict[str, Any], values: Values) -> Values:
        values = _check_values(values)
        entry = {"key": key, "cell": cell, "values": values, "sha256": digest(values)}
        atomic_write_text(self._path(key), json.dumps(entry, indent=0, allow_nan=True))
        return values


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        float(value))
