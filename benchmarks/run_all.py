"""Run every benchmark script with its default arguments, one after another (``make bench``).

Each script writes its own results into ``benchmarks/results/`` with the command that made it.
The whole set takes several hours on 2 cores; ``--only zoo real_size`` runs a subset.

Run:
    .venv/bin/python benchmarks/run_all.py
    .venv/bin/python benchmarks/run_all.py --only zoo export
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# every *_bench.py here, so a new benchmark is part of `make bench` without editing this list
SCRIPTS = sorted(p.name[: -len("_bench.py")] for p in HERE.glob("*_bench.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS)
    args = parser.parse_args()
    failed = []
    for name in args.only:
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"{name}_bench.py")])
        print(f"{name}_bench.py: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
