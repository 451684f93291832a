"""`python -m vfcore.claims readme` rewrites the README's "What holds" table from the claims
CSVs; `python -m vfcore.claims guard NEW COMMITTED` compares regenerated claims with committed
ones and exits 1 on any change CI refuses."""

from __future__ import annotations

import argparse
import sys

from .summary import guard, update_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("readme", help="rewrite the README's summary table")
    check = sub.add_parser("guard", help="compare regenerated claims with committed ones")
    check.add_argument("new", help="folder of regenerated claims_*.csv")
    check.add_argument("committed", help="folder of the committed claims_*.csv")
    args = parser.parse_args(argv)
    if args.command == "readme":
        print("README updated" if update_readme() else "README already current")
        return 0
    problems = guard(args.new, args.committed)
    for problem in problems:
        print(problem)
    print(f"claims guard: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
