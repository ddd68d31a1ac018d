"""Run an artifact in a child process, so a native crash becomes an error, not a dead caller.

The parent writes ``job.json`` (and ``inputs.npz``) into a temporary directory and runs
``python -m mobilekit.runtime.child DIR``; the child writes ``result.json`` (and
``outputs.npz``) or ``error.json``. A child killed by a signal is reported with the signal.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.errors import ConfigError, MobilekitError, RuntimeCrashError

# job name -> "module:function(job: dict, inputs: list[np.ndarray], workdir: Path) -> (result dict, outputs)"
JOBS: dict[str, str] = {
    "infer": "mobilekit.runtime.child:infer_job",
    "measure": "mobilekit.profiling.host:measure_job",
    "sample": "mobilekit.sampling:sample_job",
}


def infer_job(job: dict[str, Any], inputs: list[np.ndarray], workdir: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Load the artifact, run it once on ``inputs``, return its outputs."""
    from mobilekit.runtime.runners import open_runner

    runner = open_runner(Path(job["path"]), threads=job.get("threads"), **job.get("options", {}))
    per_feed = int(job.get("per_feed") or len(inputs) or 1)
    # several feeds share one load: parity over N inputs costs one model load, not N
    outputs: list[np.ndarray] = []
    counts = []
    for start in range(0, max(len(inputs), 1), per_feed):
        got = runner.run(inputs[start:start + per_feed])
        counts.append(len(got))
        outputs.extend(got)
    return {"runtime": runner.runtime, "outputs_per_feed": counts}, outputs


def run_in_child(job: dict[str, Any], inputs: Sequence[np.ndarray] = (), *, timeout: float = 600.0,
                 env: dict[str, str] | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Run ``job`` (a dict with ``job`` naming an entry of JOBS) in a fresh Python process.

    Args:
        job: ``{"job": "infer", "path": ..., ...}``.
        inputs: numpy arrays handed to the job.
        timeout: seconds before the child is killed.
        env: extra environment variables for the child.

    Returns:
        The job's result dict and output arrays.

    Raises:
        RuntimeCrashError: the child crashed, timed out, or the runtime raised.
    """
    if job.get("job") not in JOBS:
        raise ConfigError(f"unknown child job {job.get('job')!r}", fix=f"known: {sorted(JOBS)}")
    what = job.get("path", job["job"])
    with tempfile.TemporaryDirectory(prefix="mobilekit-child-") as tmp:
        work = Path(tmp)
        (work / "job.json").write_text(json.dumps(job, default=str))
        np.savez(work / "inputs.npz", *[np.asarray(x) for x in inputs])
        child_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run([sys.executable, "-m", "mobilekit.runtime.child", str(work)], env=child_env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeCrashError(f"the runtime did not finish within {timeout:.0f} s", where=str(what),
                                    fix="raise the time limit, or check the artifact with a smaller input") from exc
        if (work / "error.json").exists():
            err = json.loads((work / "error.json").read_text())
            # ExecuTorch says only "error: 0x1"; the reason is in its native log on stderr
            # ("[XNNCompiler.cpp:1351] Failed to create squeeze node 157 ...").
            cause = _native_cause(proc.stderr)
            raise RuntimeCrashError(f"{err['type']}: {err['message']}" + (f" (runtime log: {cause})" if cause else ""),
                                    where=str(what), fix=err.get("fix") or None)
        if proc.returncode != 0 or not (work / "result.json").exists():
            if proc.returncode < 0:
                sig = signal.Signals(-proc.returncode).name
                msg = f"the runtime crashed with {sig}"
            else:
                msg = f"the runtime process exited with code {proc.returncode}"
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeCrashError(msg + (f": {tail}" if tail else ""), where=str(what),
                                    fix="the artifact may be corrupt or truncated: re-export it")
        result = json.loads((work / "result.json").read_text())
        with np.load(work / "outputs.npz") as data:
            outputs = [data[f"arr_{i}"] for i in range(len(data.files))]
        return result, outputs


_FAILURE_LINE = re.compile(r"\[[\w.]+:\d+\] (.*(?:[Ff]ail|[Ee]rror|[Ii]nvalid).*)")


def _native_cause(stderr: str) -> str | None:
    """The first native log line that says what failed, e.g. an XNNPACK compile error."""
    for line in stderr.splitlines():
        m = _FAILURE_LINE.search(line)
        if m and "midr" not in m.group(1) and "Could not load this library" not in m.group(1):
            return m.group(1).strip()
    return None


def _main(work: Path) -> int:
    job = json.loads((work / "job.json").read_text())
    try:
        with np.load(work / "inputs.npz") as data:
            inputs = [data[f"arr_{i}"] for i in range(len(data.files))]
        module, func = JOBS[job["job"]].split(":")
        result, outputs = getattr(importlib.import_module(module), func)(job, inputs, work)
        np.savez(work / "outputs.npz", *outputs)
        (work / "result.json").write_text(json.dumps(result, default=str))
        return 0
    except BaseException as exc:  # everything the runtime raises goes back to the parent as data
        fix = exc.fix if isinstance(exc, MobilekitError) else None
        message = exc.message if isinstance(exc, MobilekitError) else str(exc).strip().splitlines()[0:3]
        if isinstance(message, list):
            message = " ".join(message) or type(exc).__name__
        (work / "error.json").write_text(json.dumps({"type": type(exc).__name__, "message": message, "fix": fix,
                                                    "traceback": traceback.format_exc()}))
        return 1


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1])))
