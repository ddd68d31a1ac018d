"""Per-operator times from the runtimes' own profilers (runs inside the measuring child).

ExecuTorch: the program is loaded with ETDump enabled, run a few times, the ETDump is written
and read back with ``executorch.devtools.Inspector``; delegated XNNPACK ops appear by their
XNNPACK names. ONNX Runtime: a session with profiling on writes a Chrome-trace JSON whose
``Node`` events carry each kernel's duration. LiteRT's Python interpreter has no op profiler
(``benchmark_model --enable_op_profiling`` on a phone has; see ``android.py``).

Each op is ``{name, op, ms, count, delegated}``: ``ms`` is the median time of one call over the
runs, ``count`` how many runs observed it.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# ETDump events that wrap others (their time includes their children) or are not inference.
_ET_WRAPPERS = {"OPERATOR_CALL", "DELEGATE_CALL", "Method::execute", "Method::init", "Program::load_method"}


def collect(path: Path, runtime: str, feed: Sequence[np.ndarray], workdir: Path, *, runs: int = 10,
            threads: int | None = None,
            options: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Per-op times of ``path`` over ``runs`` inferences, and their source (None: no profiler here)."""
    if runtime == "executorch":
        return _executorch(path, feed, workdir, runs=runs, threads=threads, options=options or {}), "etdump"
    if runtime == "onnxruntime":
        return _onnxruntime(path, feed, workdir, runs=runs, threads=threads), "onnxruntime-profile"
    return [], None


def _op_type(name: str) -> str:
    """``native_call_convolution.out`` → ``convolution``; ``Convolution (NHWC, F32) IGEMM #2`` → without ``#2``."""
    if name.startswith("native_call_"):
        return name[len("native_call_"):].split(".")[0]
    return re.sub(r"\s*#\d+$", "", name)


def _executorch(path: Path, feed: Sequence[np.ndarray], workdir: Path, *, runs: int, threads: int | None,
                options: dict[str, Any]) -> list[dict[str, Any]]:
    from mobilekit.runtime.runners import ExecuTorchRunner

    runner = ExecuTorchRunner(path, threads=threads, etdump=True, **options)
    for _ in range(runs):
        runner.run(feed)
    etdump = workdir / "profile.etdp"
    runner.program.write_etdump_result_to_file(str(etdump), str(workdir / "profile.debug.bin"))
    return ops_from_etdump(etdump)


def ops_from_etdump(etdump: Path) -> list[dict[str, Any]]:
    """Per-op times (``{name, op, ms, count, delegated}``) of an ETDump file (this host's or a phone's).

    Raises:
        ImportError: ExecuTorch (``executorch.devtools``) is not installed.
    """
    import warnings

    from executorch.devtools import Inspector

    with warnings.catch_warnings():  # "Output Buffer not found": we asked for timings only
        warnings.simplefilter("ignore")
        inspector = Inspector(etdump_path=str(etdump))
    ops: list[dict[str, Any]] = []
    for block in inspector.event_blocks:
        if block.name == "Default":  # load-time events
            continue
        for event in block.events:
            if event.name in _ET_WRAPPERS or event.perf_data is None:
                continue
            raw = [float(x) for x in event.perf_data.raw]
            if not raw:
                continue
            ops.append({"name": event.name, "op": _op_type(event.name), "ms": statistics.median(raw),
                        "count": len(raw), "delegated": bool(event.is_delegated_op)})
    return ops


def _onnxruntime(path: Path, feed: Sequence[np.ndarray], workdir: Path, *, runs: int,
                 threads: int | None) -> list[dict[str, Any]]:
    from mobilekit.runtime.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=threads, profile_prefix=str(workdir / "ort_profile"))
    for _ in range(runs):
        runner.run(feed)
    trace = Path(runner.session.end_profiling())
    return parse_onnxruntime_profile(json.loads(trace.read_text()))


def parse_onnxruntime_profile(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-node median kernel times (ms) from an ONNX Runtime profiling trace (a list of events).

    Example:
        >>> parse_onnxruntime_profile([{"cat": "Node", "name": "conv_kernel_time", "dur": 40,
        ...                             "args": {"op_name": "Conv"}}])[0]["ms"]
        0.04
    """
    by_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    order: list[str] = []
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        if node not in by_node:
            by_node[node] = []
            order.append(node)
        by_node[node].append(float(ev.get("dur", 0)) / 1e3)  # µs → ms
        op_of[node] = str(ev.get("args", {}).get("op_name") or node)
    return [{"name": n, "op": op_of[n], "ms": statistics.median(by_node[n]), "count": len(by_node[n]),
             "delegated": False} for n in order]


def top_ops(per_op: Sequence[dict[str, Any]], n: int = 10, *, by: str = "op") -> list[tuple[str, float]]:
    """The ``n`` largest groups of ``per_op`` by total ms per inference, grouped by ``op`` type or ``name``."""
    totals: dict[str, float] = {}
    for entry in per_op:
        key = str(entry.get(by) or entry.get("name"))
        totals[key] = totals.get(key, 0.0) + float(entry.get("ms", 0.0))
    return sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:n]
