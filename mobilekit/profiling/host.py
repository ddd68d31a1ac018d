"""Measure artifacts on this host with their real runtimes, in a child process.

``profile`` (parent side) turns a path, an Artifact or a Manifest into jobs for
``mobilekit.runtime.child``; ``measure_job`` (child side) loads the artifact, times the cold
load and the first inference, warms up, then times inferences until the 95% CI of the median is
within ±``rel_precision`` or ``max_seconds`` pass, reads the process's peak resident memory,
and finally collects per-op times (ExecuTorch ETDump through ``executorch.devtools.Inspector``,
ONNX Runtime's profiling JSON) in a separate pass so the profiler never perturbs the timings.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.errors import BackendUnavailableError, ConfigError, MobilekitError, RuntimeCrashError
from mobilekit.inputs import random_inputs
from mobilekit.profiling import per_op as _per_op
from mobilekit.profiling.report import LatencyReport
from mobilekit.profiling.stats import StoppingRule, summarize

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
_RUNTIME_DIST = {"executorch": "executorch", "ai-edge-litert": "ai-edge-litert", "onnxruntime": "onnxruntime",
                 "coreml": "coremltools"}
_FORMAT_OF = {"executorch": "executorch", "ai-edge-litert": "tflite", "onnxruntime": "onnx", "coreml": "coreml"}


# --------------------------------------------------------------------------------------------- child side

def _import_runtime(runtime: str) -> None:
    """Import the runtime before the memory baseline, so its import is not billed to the model."""
    if runtime == "executorch":
        import executorch.runtime  # noqa: F401
        import torch  # noqa: F401
    elif runtime == "ai-edge-litert":
        import ai_edge_litert.interpreter  # noqa: F401
    elif runtime == "onnxruntime":
        import onnxruntime  # noqa: F401


def _rss_mb() -> float | None:
    """Current resident memory of this process, MiB (psutil: Linux, macOS, Windows)."""
    import psutil

    try:
        return psutil.Process().memory_info().rss / 2**20
    except psutil.Error:
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark (Linux ≥ 4.0); True on success."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB (VmHWM, else getrusage).

    psutil has no resettable high-water mark, and the peak since ``_reset_peak_rss`` is what
    isolates the model's own memory from the runtime's import, so Linux's VmHWM is read directly.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def synthesize_inputs(runner: Any) -> list[np.ndarray]:
    """Inputs matching a loaded runner's declared input shapes: seeded normal floats, zero integers."""
    specs: list[tuple[tuple[int, ...], Any]] = []
    runtime = getattr(runner, "runtime", "")
    if runtime == "onnxruntime":
        table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8}
        for meta in runner.session.get_inputs():
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in meta.shape)
            specs.append((shape, table.get(meta.type, np.float32)))
    elif runtime == "ai-edge-litert":
        for detail in runner.interpreter.get_input_details():
            specs.append((tuple(int(d) for d in detail["shape"]), detail["dtype"]))
    elif runtime == "executorch":
        import torch

        meta = runner.program.metadata("forward")
        for i in range(meta.num_inputs()):
            tm = meta.input_tensor_meta(i)
            dtype = torch.empty(0, dtype=_et_dtype(tm.dtype())).numpy().dtype
            specs.append((tuple(tm.sizes()), dtype))
    else:
        raise ConfigError(f"cannot derive inputs for runtime {runtime!r}", where="inputs",
                          fix="pass the inputs explicitly")
    return random_inputs(specs)


def _et_dtype(code: Any) -> Any:
    import torch

    table = {6: torch.float32, 5: torch.float16, 4: torch.int64, 3: torch.int32, 11: torch.bool, 0: torch.uint8,
             15: torch.bfloat16, 1: torch.int8, 7: torch.float64}
    value = getattr(code, "value", code)
    try:
        return table[int(value)]
    except (KeyError, TypeError, ValueError):
        return torch.float32


def measure_job(job: dict[str, Any], inputs: list[np.ndarray],
                workdir: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Measure one artifact (runs inside the child process; see ``mobilekit.runtime.child``).

    Args:
        job: ``path``, ``threads``, ``warmup``, ``max_seconds``, ``rel_precision``, ``min_samples``,
            ``max_samples``, ``per_op`` (bool), ``per_op_runs``, ``options`` (runner keyword arguments).
        inputs: input arrays; empty to synthesize them from the artifact's declared inputs.
        workdir: a scratch directory (ETDump and ONNX Runtime profiles go here).

    Returns:
        A dict of measurements (times in ms, memory in MiB, ``samples_ms``, ``per_op``) and no outputs.
    """
    from mobilekit.runtime.runners import open_runner, runtime_name

    path = Path(job["path"])
    runtime = runtime_name(path)
    options = dict(job.get("options") or {})
    _import_runtime(runtime)
    base_rss = _rss_mb()
    peak_reset = _reset_peak_rss()

    t0 = time.perf_counter()
    try:
        runner = open_runner(path, threads=job.get("threads"), **options)
    except MobilekitError:
        raise
    except Exception as exc:  # the runtime rejected the file: say so, with what to do
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RuntimeCrashError(f"{runtime} cannot load the artifact: {detail}", where=str(path),
                                fix=f"the file ({path.stat().st_size} bytes) may be corrupt, truncated or from an "
                                    "incompatible toolchain: re-export it") from exc
    cold_load_ms = (time.perf_counter() - t0) * 1e3
    feed = list(inputs) if inputs else synthesize_inputs(runner)

    t0 = time.perf_counter()
    runner.run(feed)
    first_ms = (time.perf_counter() - t0) * 1e3

    warmup = int(job.get("warmup", 5))
    for _ in range(warmup):
        runner.run(feed)

    rule = StoppingRule(rel_precision=float(job.get("rel_precision", 0.02)),
                        min_samples=int(job.get("min_samples", 10)),
                        max_seconds=float(job.get("max_seconds", 10.0)),
                        max_samples=int(job.get("max_samples", 10_000)))
    samples: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    reason = None
    while reason is None:
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        runner.run(feed)
        t1, c1 = time.perf_counter_ns(), time.process_time_ns()
        samples.append((t1 - t0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
        reason = rule.should_stop(samples, time.perf_counter() - start)
    peak = _peak_rss_mb()
    result: dict[str, Any] = {
        "runtime": runner.runtime, "cold_load_ms": cold_load_ms, "first_inference_ms": first_ms,
        "samples_ms": samples, "cpu_p50_ms": statistics.median(cpu), "stop_reason": reason,
        "converged": reason == "converged",
        "peak_memory_mb": peak,
        "memory_delta_mb": max(0.0, peak - base_rss) if (base_rss is not None and peak_reset) else None,
        "per_op": [], "per_op_source": None, "notes": [],
    }
    if not peak_reset:
        result["notes"].append("memory_delta_mb unavailable: the peak-RSS counter cannot be reset on this OS")
    del runner
    if job.get("per_op", True):
        runs = int(job.get("per_op_runs", 10))
        try:
            ops, source = _per_op.collect(path, runtime, feed, workdir, runs=runs, threads=job.get("threads"),
                                          options=options)
            result["per_op"], result["per_op_source"] = ops, source
            if source is None:
                result["notes"].append(f"no per-op times: {runtime} on this host has no op profiler")
        except Exception as exc:  # per-op data is a bonus; the timing above stands on its own
            result["notes"].append(f"per-op profiling failed: {type(exc).__name__}: {exc}")
    return result, []


# --------------------------------------------------------------------------------------------- parent side

def host_device() -> dict[str, Any]:
    """Describe this host: CPU model name (from /proc/cpuinfo), OS, cores, top clock and frequency governor."""
    name = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                name = value.strip()
                break
    except OSError:
        pass
    if not name and sys.platform == "darwin":
        import subprocess

        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            name = None
    import psutil

    freq = psutil.cpu_freq() if hasattr(psutil, "cpu_freq") else None
    governor = None
    try:  # 'powersave'/'ondemand' governors ramp the clock during a run: part of what a number means
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip() or None
    except OSError:
        pass
    # only fixed properties here: this dict is part of the measurement cache key
    return {"name": name or platform.processor() or platform.machine() or "unknown host",
            "os": platform.platform(), "cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "max_mhz": round(freq.max) if freq and freq.max else None, "governor": governor}


def inputs_from_specs(specs: Sequence[Any]) -> list[np.ndarray]:
    """The inputs ``profile`` feeds an artifact: seeded random arrays for its ``TensorSpec`` list."""
    return random_inputs([(spec.shape, spec.dtype) for spec in specs])


def _is_manifest(path: Path) -> bool:
    """True for a ``manifest.json`` (any ``.json``) or a directory that is not an ``.mlpackage``."""
    return path.suffix == ".json" or (path.is_dir() and path.suffix not in (".mlpackage", ".mlmodelc"))


def _resolve(artifact: Any) -> tuple[list[tuple[Path, Any]], str | None]:
    """(path, Artifact-or-None) pairs and a model name for a path, Artifact or Manifest."""
    from mobilekit.artifact import Artifact, Manifest

    if isinstance(artifact, Manifest):
        return [(artifact.path_of(a), a) for a in artifact.artifacts], artifact.model
    if isinstance(artifact, Artifact):
        return [(Path(artifact.path), artifact)], None
    path = Path(artifact)
    if _is_manifest(path):
        manifest = Manifest.read(path)
        return [(manifest.path_of(a), a) for a in manifest.artifacts], manifest.model
    return [(path, None)], None


def _check_target(target: str | None) -> str | None:
    if target is None:
        return None
    try:
        from mobilekit.targets import get_target
    except ImportError:  # the targets module is optional for host measurement
        return target
    return get_target(target).name


def profile(artifact: Any, target: str | None = None, *, warmup: int = 5, max_seconds: float = 10.0,
            threads: int | None = None, rel_precision: float = 0.02, per_op: bool = True,
            inputs: Sequence[np.ndarray] | None = None, timeout: float | None = None,
            on_progress: ProgressFn | None = None) -> LatencyReport | list[LatencyReport]:
    """Measure an artifact's latency on this host with its real runtime, in a child process.

    Args:
        artifact: a .pte/.tflite/.onnx path, an ``Artifact``, a ``Manifest``, or a ``manifest.json`` (or its
            directory). A manifest gives one report per artifact (those for ``target`` when one is given).
        target: the target name the artifact is for (recorded in the report; filters a manifest).
        warmup: untimed runs after the first inference.
        max_seconds: most seconds of timed runs per artifact; the loop stops earlier once the 95% CI of the
            median is within ±``rel_precision``.
        threads: runtime threads (None: the runtime's default).
        rel_precision: target half-width of the median's 95% CI, as a fraction (0.02 = ±2%).
        per_op: also collect per-op times (ExecuTorch ETDump, ONNX Runtime profiling).
        inputs: input arrays; default: from the Artifact's input specs, else synthesized from the file.
        timeout: seconds before a hung child is killed (default: generous, from ``max_seconds``).
        on_progress: ``on_progress(stage, done, total)`` callback, one step per artifact.

    Returns:
        One ``LatencyReport`` for a single artifact; a list for a manifest.

    Raises:
        ConfigError: missing file, bad argument, or no artifact for ``target``.
        BackendUnavailableError: the artifact needs a runtime this host lacks (Core ML off macOS).
        RuntimeCrashError: the runtime crashed, hung or raised; the message names the file.

    Example:
        >>> report = profile("out/model.pte", target="pixel-8", max_seconds=2)  # doctest: +SKIP
        >>> report.p50_ms  # doctest: +SKIP
    """
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}", where="warmup")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}", where="threads")
    StoppingRule(rel_precision=rel_precision, max_seconds=max_seconds)  # validates both
    from mobilekit.artifact import Manifest

    many = isinstance(artifact, Manifest) or (isinstance(artifact, (str, Path)) and _is_manifest(Path(artifact)))
    pairs, model = _resolve(artifact)
    target = _check_target(target)
    if many and target is not None:
        chosen = [(p, a) for p, a in pairs if a is None or target in a.targets or not a.targets]
        if not chosen:
            known = sorted({t for _, a in pairs if a is not None for t in a.targets})
            raise ConfigError(f"the manifest has no artifact for target {target!r}", where=str(artifact),
                              fix=f"targets in it: {', '.join(known) or 'none'}")
        pairs = chosen
    reports: list[LatencyReport] = []
    for i, (path, art) in enumerate(pairs):
        if on_progress:
            on_progress(f"measuring {path.name}", i, len(pairs))
        try:
            reports.append(_profile_one(path, art, target=target, model=model, warmup=warmup,
                                        max_seconds=max_seconds, threads=threads, rel_precision=rel_precision,
                                        per_op=per_op, inputs=inputs, timeout=timeout))
        except BackendUnavailableError as exc:
            if not many:
                raise
            logger.warning("skipped %s: %s", path, exc)
    if on_progress:
        on_progress("done", len(pairs), len(pairs))
    return reports if many else reports[0]


def _mentions_apple_or_vendor_backend(path: Path) -> bool:
    """True when a .pte names a delegate other than XNNPACK (cheap byte scan, no ExecuTorch import)."""
    from mobilekit._io import names_in_file

    try:
        return bool(names_in_file(path, (b"CoreMLBackend", b"MPSBackend", b"QnnBackend", b"VulkanBackend")))
    except OSError:
        return False


def _artifact_bytes(path: Path, size_of: Callable[[Path], int]) -> int:
    """Bytes on disk, counting an ONNX model's external-data sibling (``model.onnx.data``)."""
    total = size_of(path)
    sidecar = path.with_name(path.name + ".data")
    if path.suffix == ".onnx" and sidecar.exists():
        total += sidecar.stat().st_size
    return total


def _profile_one(path: Path, art: Any, *, target: str | None, model: str | None, warmup: int, max_seconds: float,
                 threads: int | None, rel_precision: float, per_op: bool, inputs: Sequence[np.ndarray] | None,
                 timeout: float | None) -> LatencyReport:
    from mobilekit._deps import version_of
    from mobilekit.artifact import size_of
    from mobilekit.runtime.child import run_in_child
    from mobilekit.runtime.runners import runtime_name

    path = Path(path)
    if not path.exists():
        raise ConfigError("artifact file not found", where=str(path), fix="check the path, or re-export")
    runtime = runtime_name(path)
    if runtime == "coreml" and sys.platform != "darwin":
        raise BackendUnavailableError("Core ML artifacts run only on macOS", where=str(path),
                                      fix="profile it on a Mac, or use `mobilekit profile --device` with an iPhone")
    options: dict[str, Any] = {}
    if runtime == "executorch":
        if art is not None:
            ptd = [f for f in art.extra_files if f.endswith(".ptd")]
            if ptd:
                options["data_path"] = str(path.parent / ptd[0])
        missing = None
        if _mentions_apple_or_vendor_backend(path):  # only then pay for importing ExecuTorch here
            try:
                from mobilekit.runtime.runners import pte_needs_backend

                missing = pte_needs_backend(path)
            except Exception:  # unreadable file: let the child report the crash
                missing = None
        if missing:
            raise BackendUnavailableError(f"the program is delegated to {missing}, which this host's ExecuTorch "
                                          "runtime lacks", where=str(path),
                                          fix="profile it on a device with that backend, or export an XNNPACK recipe")
    feed = list(inputs) if inputs is not None else (inputs_from_specs(art.inputs) if art is not None and art.inputs
                                                    else [])
    job = {"job": "measure", "path": str(path.resolve()), "threads": threads, "warmup": warmup,
           "max_seconds": max_seconds, "rel_precision": rel_precision, "per_op": per_op, "options": options}
    result, _ = run_in_child(job, feed, timeout=timeout or (max_seconds * 4 + 300.0))
    samples = result["samples_ms"]
    stats = summarize(samples)
    notes = list(result["notes"])
    cpu_p50 = result.get("cpu_p50_ms")
    if threads == 1 and cpu_p50 and stats["p50_ms"] > 1.25 * cpu_p50:
        notes.append(f"the host looks busy: the median inference took {stats['p50_ms']:.3f} ms of wall time but "
                     f"only {cpu_p50:.3f} ms of CPU time on one thread (load average "
                     f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return LatencyReport(
        artifact=str(path), format=_FORMAT_OF.get(runtime), runtime=result["runtime"], source="host",
        device=host_device(),
        target=target or (art.targets[0] if art is not None and len(art.targets) == 1 else None),
        model=model, precision=art.precision if art is not None else None, threads=threads, warmup=warmup,
        samples_ms=tuple(samples), converged=result["converged"], stop_reason=result["stop_reason"],
        cold_load_ms=result["cold_load_ms"], first_inference_ms=result["first_inference_ms"],
        peak_memory_mb=result["peak_memory_mb"], memory_delta_mb=result["memory_delta_mb"],
        artifact_size_bytes=_artifact_bytes(path, size_of), per_op=tuple(result["per_op"]), per_op_source=result["per_op_source"],
        toolchain={_RUNTIME_DIST[runtime]: version_of(_RUNTIME_DIST[runtime]), "mobilekit": version_of("mobilekit")},
        cpu_p50_ms=cpu_p50, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=tuple(notes), **stats)
