"""The error of `vfcore diagnose`, `merge` and `prune` that the user has to act on."""

from __future__ import annotations


class BadInput(Exception):
    """Input the user must fix: a missing or unfitting file, an unknown name, a shape mismatch.

    The message names the problem and the fix; the command line prints it and exits with 2.
    """
