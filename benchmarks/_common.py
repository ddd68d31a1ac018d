"""What every benchmark result records: the command that made it, the host and the toolchain."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_name() -> str:
    """The host CPU's model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def provenance() -> dict[str, Any]:
    """Command line, host and toolchain versions for a result file."""
    from mobilekit._deps import toolchain_versions

    return {"command": shlex.join([".venv/bin/python", *[os.path.relpath(a, ROOT) if a == sys.argv[0] else a
                                                         for a in sys.argv]]),
            "host": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                     "python": platform.python_version()},
            "toolchain": toolchain_versions(),
            "date": __import__("datetime").date.today().isoformat()}


def ci95(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (0 for a single value)."""
    import statistics

    from scipy import stats

    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, float(stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5)


def rewrite_markdown(stem: str, render: Any) -> Path:
    """``--render-only``: rewrite ``results/<stem>.md`` from ``results/<stem>.json`` with ``render(dict) -> str``."""
    import json

    from mobilekit._io import write_text_atomic

    return write_text_atomic(RESULTS / f"{stem}.md", render(json.loads((RESULTS / f"{stem}.json").read_text())))


def write_json_and_markdown(path: Path, res: dict[str, Any], render: Any) -> None:
    """``path`` (JSON) and its ``.md`` (``render(res) -> str``), each written atomically."""
    from mobilekit._io import write_json_atomic, write_text_atomic

    write_json_atomic(path, res)
    write_text_atomic(path.with_suffix(".md"), render(res))


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>`` atomically with the provenance fields first."""
    from mobilekit._io import write_json_atomic

    return write_json_atomic(RESULTS / name, {**provenance(), **data})


def export_cell(model: Any, example_inputs: Any, **kwargs: Any) -> dict[str, Any]:
    """``mobilekit.export`` one cell and classify the outcome.

    Returns a dict with ``status``: ``pass`` (parity within tolerance, or Core ML's structural check
    off macOS), ``refused`` (a mobilekit error before any conversion started), ``fail`` (a mobilekit
    error once work had started, or parity out of tolerance) or ``crash`` (an exception that is not
    a mobilekit error: a bug, or a backend failure mobilekit does not map); plus ``manifest``,
    ``error``, ``message`` and ``export_seconds``.
    """
    import mobilekit
    from mobilekit.errors import MobilekitError

    started = {"work": False}

    def on_progress(step: str, done: int, total: int) -> None:
        if step not in ("trace", "cached"):
            started["work"] = True

    cell: dict[str, Any] = {"manifest": None}
    start = time.perf_counter()
    try:
        m = mobilekit.export(model, example_inputs, on_progress=on_progress, **kwargs)
        cell["manifest"] = m
        cell["status"] = "pass" if all(a.parity.status in ("pass", "not-run") for a in m.artifacts) else "fail"
    except MobilekitError as exc:
        cell.update(status="fail" if started["work"] else "refused", error=type(exc).__name__, message=str(exc))
    except Exception as exc:  # noqa: BLE001 - a raw traceback is what the benchmarks exist to count
        cell.update(status="crash", error=type(exc).__name__, message=f"{exc}"[:500])
    cell["export_seconds"] = round(time.perf_counter() - start, 2)
    return cell


def merge_cells(previous: Path, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``cells`` plus the cells of an earlier result file for (model, recipe) pairs not re-run now."""
    import json

    if not previous.exists():
        return cells
    old = json.loads(previous.read_text())
    done = {(c["model"], c["recipe"]) for c in cells}
    # a kept cell says which earlier run it comes from, so a table never passes old numbers off as new
    kept = [{**c, "from_run": c.get("from_run") or old.get("date") or f"the previous {previous.name}, undated"}
            for c in old.get("cells", []) if (c["model"], c["recipe"]) not in done]
    return kept + cells
