"""Measure an artifact on an attached Android phone over adb.

The artifact and a runner binary are pushed to ``/data/local/tmp/mobilekit``: LiteRT's
``benchmark_model`` for ``.tflite`` and ExecuTorch's ``executor_runner`` for ``.pte``. Both are
Android arm64 builds the user provides (``runner=`` / ``--runner``, the environment variables
``MOBILEKIT_BENCHMARK_MODEL`` / ``MOBILEKIT_EXECUTOR_RUNNER``, or found on ``PATH``). Their output
is parsed into a ``LatencyReport`` with ``source="device"``, the phone's model, Android version
and thermal state (``dumpsys thermalservice``) recorded in ``device``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from mobilekit.errors import ConfigError, DeviceError
from mobilekit.profiling.report import LatencyReport

logger = logging.getLogger(__name__)

REMOTE_DIR = "/data/local/tmp/mobilekit"
_RUNNER_FOR = {".tflite": ("benchmark_model", "MOBILEKIT_BENCHMARK_MODEL"),
               ".pte": ("executor_runner", "MOBILEKIT_EXECUTOR_RUNNER")}
# android.os.PowerManager THERMAL_STATUS_* values, as printed by `dumpsys thermalservice`.
THERMAL_STATES = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}


def find_adb() -> str:
    """Path of ``adb`` (PATH, then ``$ANDROID_HOME/platform-tools``), or DeviceError."""
    found = shutil.which("adb")
    if found:
        return found
    for env in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
        root = os.environ.get(env)
        if root and (Path(root) / "platform-tools" / "adb").exists():
            return str(Path(root) / "platform-tools" / "adb")
    raise DeviceError("adb was not found", where="PATH",
                      fix="install Android platform-tools and put adb on PATH (or set ANDROID_HOME)")


def parse_adb_devices(text: str) -> list[dict[str, str]]:
    """Rows of ``adb devices -l``: ``{serial, state, model?, ...}``.

    Example:
        >>> parse_adb_devices("List of devices attached\\nABC123 device model:Pixel_8\\n")[0]["model"]
        'Pixel_8'
    """
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("*"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        row = {"serial": parts[0], "state": parts[1]}
        for extra in parts[2:]:
            key, sep, value = extra.partition(":")
            if sep:
                row[key] = value
        rows.append(row)
    return rows


def parse_thermal(text: str) -> str | None:
    """Thermal status name from ``dumpsys thermalservice`` (``none`` … ``shutdown``), or None."""
    m = re.search(r"Thermal Status:\s*(\d+)", text)
    return THERMAL_STATES.get(int(m.group(1)), m.group(1)) if m else None


def _num(text: str) -> float:
    return float(text)


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Timings (ms), memory (MiB) and per-op times from LiteRT ``benchmark_model`` output.

    Returns:
        ``init_ms``, ``first_inference_ms``, ``warmup_avg_ms``, ``avg_ms``, ``count``, ``min_ms``, ``max_ms``,
        ``std_ms``, ``median_ms`` (when printed), ``peak_memory_mb`` (when printed) and ``per_op``.

    Raises:
        DeviceError: the output has no timing summary (the tool failed; its tail is in the message).
    """
    out: dict[str, Any] = {"per_op": []}
    m = re.search(r"Inference timings in us: Init: ([\d.e+]+), First inference: ([\d.e+]+), "
                  r"Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)", text)
    if not m:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise DeviceError(f"benchmark_model printed no timings: {tail or 'no output'}", where="benchmark_model",
                          fix="check the model runs with the chosen delegate; run the command by hand with adb shell")
    out["init_ms"], out["first_inference_ms"], out["warmup_avg_ms"], out["avg_ms"] = (
        _num(g) / 1e3 for g in m.groups())
    stats = re.findall(r"count=(\d+)(?: first=[\d.e+]+)? curr=[\d.e+]+ min=([\d.e+]+) max=([\d.e+]+) "
                       r"avg=([\d.e+]+) std=([\d.e+]+)(?: p5=[\d.e+]+ median=([\d.e+]+) p95=[\d.e+]+)?", text)
    if stats:  # the last block is the timed run (the first is the warm-up)
        count, lo, hi, _avg, std, median = stats[-1]
        out.update(count=int(count), min_ms=_num(lo) / 1e3, max_ms=_num(hi) / 1e3, std_ms=_num(std) / 1e3)
        if median:
            out["median_ms"] = _num(median) / 1e3
    mem = re.search(r"(?:Overall )?[Pp]eak memory footprint \(MB\)[^:]*:\s*([\d.e+]+)", text)
    if mem:
        out["peak_memory_mb"] = _num(mem.group(1))
    out["per_op"] = _parse_op_table(text)
    return out


def _parse_op_table(text: str) -> list[dict[str, Any]]:
    """Rows of benchmark_model's ``Run Order`` op-profiling table (``--enable_op_profiling=true``)."""
    ops: list[dict[str, Any]] = []
    section = re.search(r"=+ Run Order =+\n(.*?)(?:\n\s*\n|\n=+)", text, re.S)
    if not section:
        return ops
    for line in section.group(1).splitlines():
        line = re.sub(r"^\s*(?:INFO|I tflite)\s*:\s*", "", line)  # log prefix of newer builds
        cells = [c.strip() for c in line.strip().split("\t") if c.strip()]
        if len(cells) < 4 or cells[0].startswith("["):
            continue
        try:
            avg_ms = float(cells[2])
        except ValueError:
            continue
        name = cells[-1].strip("[]") or cells[0]
        times = int(cells[-2]) if len(cells) >= 7 and cells[-2].isdigit() else None
        ops.append({"name": name, "op": cells[0], "ms": avg_ms, "count": times,
                    "delegated": "delegate" in cells[0].lower()})
    return ops


def parse_executor_runner(text: str) -> dict[str, Any]:
    """Average ms per run from ExecuTorch ``executor_runner`` output (``... N time(s) in X ms.``).

    Raises:
        DeviceError: the output has no timing line.
    """
    m = re.search(r"executed successfully (\d+) time\(s\) in ([\d.e+]+) ?ms", text)
    if not m:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise DeviceError(f"executor_runner printed no timings: {tail or 'no output'}", where="executor_runner",
                          fix="check the runner was built with the kernels/delegates the .pte uses")
    count, total = int(m.group(1)), float(m.group(2))
    return {"count": count, "avg_ms": total / max(count, 1)}


class Adb:
    """A thin adb wrapper bound to one device serial."""

    def __init__(self, serial: str | None = None, *, adb: str | None = None, timeout: float = 600.0) -> None:
        self.adb = adb or find_adb()
        self.timeout = timeout
        devices = [d for d in parse_adb_devices(self._raw(["devices", "-l"])) if d["state"] == "device"]
        if not devices:
            raise DeviceError("no Android device is attached", where="adb devices",
                              fix="connect a phone with USB debugging enabled and accept the prompt on it")
        if serial is None:
            if len(devices) > 1:
                raise DeviceError(f"{len(devices)} devices are attached", where="adb devices",
                                  fix=f"pick one with --device: {', '.join(d['serial'] for d in devices)}")
            serial = devices[0]["serial"]
        elif serial not in {d["serial"] for d in devices}:
            raise DeviceError(f"device {serial!r} is not attached", where="adb devices",
                              fix=f"attached: {', '.join(d['serial'] for d in devices)}")
        self.serial = serial

    def _raw(self, args: list[str]) -> str:
        try:
            proc = subprocess.run([self.adb, *args], capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"adb {' '.join(args)} did not finish in {self.timeout:.0f} s", where="adb") from exc
        if proc.returncode != 0:
            raise DeviceError(f"adb {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}",
                              where="adb", fix="check the cable and that the device is authorized (adb devices)")
        return proc.stdout

    def run(self, *args: str) -> str:
        """``adb -s SERIAL args...``; stdout."""
        return self._raw(["-s", self.serial, *args])

    def shell(self, command: str) -> str:
        """``adb shell command``; stdout and stderr together."""
        return self.run("shell", command + " 2>&1")

    def getprop(self, name: str) -> str | None:
        """A system property, or None when empty."""
        return self.shell(f"getprop {name}").strip() or None


def device_info(adb: Adb) -> dict[str, Any]:
    """Model, Android version, SoC and thermal state of the phone behind ``adb``."""
    try:
        thermal = parse_thermal(adb.shell("dumpsys thermalservice"))
    except DeviceError:
        thermal = None
    return {"name": adb.getprop("ro.product.model") or adb.serial, "os": "android",
            "android_version": adb.getprop("ro.build.version.release"), "serial": adb.serial,
            "soc": adb.getprop("ro.soc.model"), "thermal_state": thermal}


def _find_runner(suffix: str, runner: str | Path | None) -> Path:
    if suffix not in _RUNNER_FOR:
        raise ConfigError(f"no Android runner for {suffix!r} artifacts", where="artifact",
                          fix="profile a .tflite (benchmark_model) or .pte (executor_runner) on Android")
    tool, env = _RUNNER_FOR[suffix]
    candidate = runner or os.environ.get(env) or shutil.which(tool)
    if not candidate or not Path(candidate).is_file():
        raise DeviceError(f"the {tool} binary for Android was not found", where=str(candidate or tool),
                          fix=f"build or download an Android arm64 {tool} and pass --runner PATH (or set {env})")
    return Path(candidate)


def profile_android(artifact: str | Path, *, serial: str | None = None, runner: str | Path | None = None,
                    target: str | None = None, warmup: int = 5, max_seconds: float = 10.0,
                    threads: int | None = None, adb: Adb | None = None) -> LatencyReport:
    """Measure ``artifact`` on an attached Android phone with benchmark_model or executor_runner.

    Args:
        artifact: a .tflite or .pte file.
        serial: the device serial (``adb devices``); None when exactly one phone is attached.
        runner: path of the Android runner binary (default: env var, then PATH).
        target: target name recorded in the report.
        warmup: warm-up runs.
        max_seconds: most seconds of timed runs (benchmark_model ``--max_secs``).
        threads: CPU threads (``--num_threads``).
        adb: an ``Adb`` to reuse.

    Returns:
        A ``LatencyReport`` with ``source="device"``.

    Raises:
        DeviceError: no adb, no phone, no runner binary, or the runner failed.

    Example:
        >>> profile_android("out/model.tflite", runner="bin/benchmark_model")  # doctest: +SKIP
    """
    path = Path(artifact)
    if not path.is_file():
        raise ConfigError("artifact file not found", where=str(path), fix="check the path, or re-export")
    binary = _find_runner(path.suffix.lower(), runner)
    adb = adb or Adb(serial)
    info = device_info(adb)
    adb.shell(f"mkdir -p {REMOTE_DIR}")
    remote_model, remote_bin = f"{REMOTE_DIR}/{path.name}", f"{REMOTE_DIR}/{binary.name}"
    adb.run("push", str(path), remote_model)
    adb.run("push", str(binary), remote_bin)
    adb.shell(f"chmod 755 {remote_bin}")
    notes: list[str] = []
    if info.get("thermal_state") not in (None, "none"):
        notes.append(f"the phone reported thermal state {info['thermal_state']!r}: numbers may be throttled")
    if path.suffix.lower() == ".tflite":
        cmd = (f"{remote_bin} --graph={remote_model} --warmup_runs={warmup} --max_secs={max_seconds:g} "
               "--enable_op_profiling=true --report_peak_memory_footprint=true"
               + (f" --num_threads={threads}" if threads else ""))
        parsed = parse_benchmark_model(adb.shell(cmd))
        runtime, per_op_source = "benchmark_model", "benchmark_model"
        p50 = parsed.get("median_ms", parsed["avg_ms"])
        stats = {"mean_ms": parsed["avg_ms"], "min_ms": parsed.get("min_ms"), "max_ms": parsed.get("max_ms"),
                 "std_ms": parsed.get("std_ms"), "cold_load_ms": parsed["init_ms"],
                 "first_inference_ms": parsed["first_inference_ms"], "peak_memory_mb": parsed.get("peak_memory_mb")}
        if "median_ms" not in parsed:
            notes.append("benchmark_model printed no median: p50_ms is the mean")
    else:
        iterations = max(10, int(max_seconds * 10))
        parsed = parse_executor_runner(adb.shell(f"{remote_bin} --model_path={remote_model} "
                                                 f"--num_executions={iterations}"))
        runtime, per_op_source = "executor_runner", None
        p50 = parsed["avg_ms"]
        stats = {"mean_ms": parsed["avg_ms"]}
        notes.append("executor_runner prints only the total time: p50_ms is the mean over "
                     f"{parsed['count']} runs, including the first")
    return LatencyReport(
        artifact=str(path), format="tflite" if path.suffix.lower() == ".tflite" else "executorch", runtime=runtime,
        source="device", device=info, target=target, threads=threads, warmup=warmup, p50_ms=p50,
        stop_reason="fixed", artifact_size_bytes=path.stat().st_size, per_op=tuple(parsed.get("per_op", ())),
        per_op_source=per_op_source if parsed.get("per_op") else None,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), notes=tuple(notes), **stats)
