"""``python -m helpers data ...``: list, fetch and verify the pinned datasets (helpers.core.data does the work)."""
from __future__ import annotations

import argparse
import os
import sys

from helpers.core.data import REGISTRY, DataError, fetch_all, names, spec


def _human(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} KB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers data", description="Pinned, verified datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="list registered datasets (name, size, licence)")
    pl.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    pf = sub.add_parser("fetch", help="fetch and verify datasets into the data dir")
    pf.add_argument("names", nargs="*", metavar="NAME")
    pf.add_argument("--all", action="store_true", help="fetch every registered dataset")
    pf.add_argument(
        "--mirror",
        default="default",
        help="folder or http(s) base URL laid out as <owner>/<repo>/<commit>/<path>; '' = real URL",
    )
    pf.add_argument("--force", action="store_true", help="re-fetch even if a verified copy exists")
    args = p.parse_args(argv)

    try:
        if args.cmd == "list":
            shown = names(args.prefix)
            if not shown:
                spec(args.prefix)  # raises with suggestions
            width = max(len(n) for n in shown)
            try:
                for n in shown:
                    s = REGISTRY[n]
                    print(f"{n:<{width}}  {_human(s.size):>9}  {s.license}")
            except BrokenPipeError:  # e.g. `... list | head`: stop quietly, as the Python docs advise
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if args.all == bool(args.names):
            p.error("fetch: give dataset names or --all (not both)")
        todo = list(REGISTRY) if args.all else args.names
        for n in todo:
            spec(n)
        paths = fetch_all(todo, mirror=args.mirror or None, force=args.force, progress=len(todo) > 1)
        for n, path in paths.items():
            print(f"{n}\t{path}")
        return 0
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
