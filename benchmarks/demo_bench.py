"""Issue 6 benchmark: the `make demo` build, cold (fresh output and cache) against warm (second run).

Runs `mobilekit demo` twice in fresh processes into a new directory and records the wall-clock
seconds of each, the artifacts exported by each run, and the warm/cold ratio (target ≤ 10%).

Run:
    .venv/bin/python benchmarks/demo_bench.py        # writes benchmarks/results/demo.json
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "demo.json"


def _run(out: Path) -> dict[str, object]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mobilekit.cli.main", "demo", "--out", str(out)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 7):
        raise SystemExit(f"demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    build = json.loads((out / "build" / "build.json").read_text())
    return {"seconds": round(seconds, 2), "exit_code": proc.returncode, "exported": build["exported"],
            "artifacts": sum(len(v) for v in build["artifacts"].values()), "budgets_ok": build["ok"]}


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from mobilekit._deps import toolchain_versions
    from mobilekit._io import write_json_atomic

    with tempfile.TemporaryDirectory(prefix="mk-demo-bench-") as tmp:
        cold = _run(Path(tmp) / "demo")
        warm = _run(Path(tmp) / "demo")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "host_cpu": cpu,
              "toolchain": toolchain_versions(), "cold": cold, "warm": warm,
              "warm_over_cold": round(warm["seconds"] / cold["seconds"], 3), "target_warm_over_cold_max": 0.10}
    write_json_atomic(RESULT, result)
    print(json.dumps(result, indent=2))  # noqa: T201 - benchmark output
    return 0


if __name__ == "__main__":
    sys.exit(main())
