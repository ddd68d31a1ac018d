"""Running artifacts with their real runtimes, always in a child process for the caller's safety."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.runtime.child import run_in_child
from mobilekit.runtime.runners import runtime_name

__all__ = ["run_artifact", "run_artifact_many", "run_in_child", "runtime_name"]


def run_artifact(path: Path, inputs: Sequence[np.ndarray], *, threads: int | None = None, timeout: float = 600.0,
                 **options: Any) -> list[np.ndarray]:
    """Run an artifact once on ``inputs`` in a child process and return its outputs.

    Args:
        path: a .pte, .tflite, .onnx (or, on macOS, .mlpackage) file.
        inputs: numpy arrays in the model's input order.
        threads: runtime threads (None: the runtime's default).
        timeout: seconds before the child is killed.

    Raises:
        RuntimeCrashError: the runtime crashed or failed (message names the file).

    Example:
        >>> outs = run_artifact(Path("out/model.onnx"), [x])  # doctest: +SKIP
    """
    job = {"job": "infer", "path": str(Path(path).resolve()), "threads": threads, "options": options}
    _, outputs = run_in_child(job, inputs, timeout=timeout)
    return outputs


def run_artifact_many(path: Path, feeds: Sequence[Sequence[np.ndarray]], *, threads: int | None = None,
                      timeout: float = 600.0, **options: Any) -> list[list[np.ndarray]]:
    """Run an artifact on each feed (one input list per run) with one load, in one child process.

    Returns:
        One output list per feed.

    Raises:
        RuntimeCrashError: the runtime crashed or failed (message names the file).
    """
    if not feeds:
        return []
    width = len(feeds[0])
    if any(len(f) != width for f in feeds):
        raise ValueError("every feed must hold the same number of inputs")
    job = {"job": "infer", "path": str(Path(path).resolve()), "threads": threads, "options": options,
           "per_feed": width}
    result, outputs = run_in_child(job, [a for f in feeds for a in f], timeout=timeout)
    grouped, at = [], 0
    for n in result["outputs_per_feed"]:
        grouped.append(outputs[at:at + n])
        at += n
    return grouped
