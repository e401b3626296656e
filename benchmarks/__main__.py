"""Run every benchmark: ``python -m benchmarks [name ...]`` (names: foundation, sae, scoring, sweep)."""
from __future__ import annotations

import sys

from . import foundation, sae, scoring, sweep

ALL = {"foundation": foundation.main, "sae": sae.main, "scoring": scoring.main, "sweep": sweep.main}

if __name__ == "__main__":
    names = sys.argv[1:] or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; known: {list(ALL)}")
    for n in names:
        ALL[n]()
