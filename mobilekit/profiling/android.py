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
import statistics
import subprocess
from collections.abc import Sequence
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


_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
# Log prefixes benchmark_model lines carry: ``INFO: `` (newer builds), logcat ``I tflite  : `` /
# ``07-08 15:34:26.201 I/tflite  ( 5395): `` when the tool logs to logcat.
_PREFIX = re.compile(r"^\s*(?:\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+(?:\d+\s+\d+\s+)?)?"
                     r"(?:[VDIWEF][/ ]tflite\s*(?:\(\s*\d+\))?\s*:\s?|INFO:\s?)")


def _num(text: str) -> float:
    return float(text)


def _lines(text: str) -> list[str]:
    """Output lines without log prefixes (tabs and the tables' own indentation kept)."""
    return [_PREFIX.sub("", line, count=1).rstrip() for line in text.splitlines()]


def _fields(line: str) -> dict[str, float]:
    """``count=50 first=… min=… avg=2.95e+06`` → ``{"count": 50.0, ...}``."""
    return {k: float(v) for k, v in re.findall(rf"(\w+)=({_NUM})", line)}


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Timings (ms), memory (MB) and per-op times from LiteRT / TFLite ``benchmark_model`` output.

    The steady-state statistics come from the ``count=… min=… max=… avg=… std=…`` line of the
    regular (timed) run: the last such line before ``Inference timings in us:``; the warm-up line
    before it and the op profiler's ``Timings (microseconds): count=…`` lines are ignored, so
    avg/min/max/std are always read from one line.

    Returns:
        ``init_ms``, ``first_inference_ms``, ``warmup_avg_ms``, ``avg_ms`` and, when printed,
        ``count``, ``min_ms``, ``max_ms``, ``std_ms``, ``median_ms``, ``p5_ms``, ``p95_ms``,
        ``memory_init_mb`` / ``memory_overall_mb`` (``Memory footprint delta from the start of
        the tool (MB): init=… overall=…``, or the older ``Peak memory footprint (MB): init=…
        overall=…``), ``peak_memory_mb`` (``Overall peak memory footprint (MB) via periodic
        monitoring``), ``per_op`` (the regular runs' op table; empty without
        ``--enable_op_profiling``), ``init_ops`` (the initialisation table: ``ModifyGraphWithDelegate``,
        ``AllocateTensors``; never inference time) and ``notes``.

    Raises:
        DeviceError: the output has no timing summary (the tool failed; its tail is in the message).
    """
    lines = _lines(text)
    summary = None
    for i, line in enumerate(lines):
        m = re.search(rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                      rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})", line)
        if m:
            summary = (i, m)
    if summary is None:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise DeviceError(f"benchmark_model printed no timings: {tail or 'no output'}", where="benchmark_model",
                          fix="check the model runs with the chosen delegate; run the command by hand with adb shell")
    at, m = summary
    init_us, first_us, warmup_us, avg_us = (_num(g) for g in m.groups())
    out: dict[str, Any] = {"init_ms": init_us / 1e3, "first_inference_ms": first_us / 1e3,
                           "warmup_avg_ms": warmup_us / 1e3, "avg_ms": avg_us / 1e3, "notes": []}
    steady = next((lines[j] for j in range(at - 1, -1, -1) if lines[j].lstrip().startswith("count=")), None)
    if steady is not None:
        f = _fields(steady)
        if "avg" in f:
            out["avg_ms"] = f["avg"] / 1e3
            if abs(f["avg"] - avg_us) > 1e-3 * max(abs(avg_us), 1.0):
                out["notes"].append(f"benchmark_model's timed-run line says avg={f['avg']:g} us but its summary "
                                    f"says Inference (avg) {avg_us:g} us: avg_ms is the timed-run line's")
        out["count"] = int(f["count"])
        for key, name in (("min", "min_ms"), ("max", "max_ms"), ("std", "std_ms"), ("median", "median_ms"),
                          ("p5", "p5_ms"), ("p95", "p95_ms")):
            if key in f:
                out[name] = f[key] / 1e3
    for line in lines:
        mem = re.search(rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                        rf"init=({_NUM}) overall=({_NUM})", line)
        if mem:
            out["memory_init_mb"], out["memory_overall_mb"] = _num(mem.group(1)), _num(mem.group(2))
        peak = re.search(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})", line)
        if peak:
            out["peak_memory_mb"] = _num(peak.group(1))
    ops = parse_op_profile(text)
    out["per_op"], out["init_ops"] = ops["per_op"], ops["init_ops"]
    return out


_INIT_HEADING = "Profiling Info for Benchmark Initialization"
_RUN_HEADING = "Operator-wise Profiling Info for Regular Benchmark Runs"


def parse_op_profile(text: str) -> dict[str, list[dict[str, Any]]]:
    """The ``Run Order`` tables of ``benchmark_model --enable_op_profiling=true``.

    ``per_op`` is the table under "Operator-wise Profiling Info for Regular Benchmark Runs" (a
    ``Run Order`` table with no heading at all counts as that); ``init_ops`` the one under
    "Profiling Info for Benchmark Initialization". Columns are found by their header names
    (``[node type]``, ``[start]`` when printed, ``[first]``, ``[avg ms]``, ``[%]``, ``[cdf%]``,
    ``[mem KB]``, ``[times called]``, ``[Name]``), cells by tabs or, where the tabs were lost, by
    the run of numeric cells between the node type and the name (XNNPACK node types have spaces).

    Each op is ``{name, op, ms, count, delegated}``: ``op`` the node type, ``ms`` ``[avg ms]``,
    ``count`` ``[times called]``, ``delegated`` True for delegate kernels and ops inside one.
    """
    lines = _lines(text)
    tables: dict[str, list[dict[str, Any]]] = {"per_op": [], "init_ops": []}
    heading = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if _INIT_HEADING in line:
            heading = "init_ops"
        elif _RUN_HEADING in line:
            heading = "per_op"
        elif re.match(r"^\s*=+ Run Order =+\s*$", line) and i + 1 < len(lines):
            names = re.findall(r"\[([^\]]+)\]", lines[i + 1])
            rows, i = _table_rows(lines, i + 2, names)
            key = heading or "per_op"
            if not tables[key]:
                tables[key] = rows
            heading = None
            continue
        i += 1
    return tables


def _table_rows(lines: list[str], i: int, names: list[str]) -> tuple[list[dict[str, Any]], int]:
    cols = [n.strip().lower() for n in names]
    if not cols or cols[0] != "node type" or cols[-1] != "name":
        return [], i
    numeric = cols[1:-1]
    pattern = re.compile(r"^\s*(?P<op>\S.*?)\s+" + r"\s+".join(rf"({_NUM})%?" for _ in numeric) + r"\s+(?P<name>\S.*)$")
    rows = []
    while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith("="):
        line = lines[i]
        i += 1
        cells = [c.strip() for c in line.split("\t") if c.strip()]
        if len(cells) != len(cols):
            m = pattern.match(line)
            if not m:
                continue
            cells = [m.group("op"), *m.groups()[1:1 + len(numeric)], m.group("name")]
        try:
            values = {c: float(v.rstrip("%")) for c, v in zip(numeric, cells[1:-1])}
        except ValueError:
            continue
        op, name = cells[0], cells[-1]
        times = values.get("times called")
        rows.append({"name": name, "op": op, "ms": values.get("avg ms", 0.0),
                     "count": int(times) if times is not None else None,
                     "delegated": "delegate" in op.lower() or name.startswith("Delegate/")})
    return rows, i


def parse_executor_runner(text: str) -> dict[str, Any]:
    """What ExecuTorch ``executor_runner`` prints: runs, total/average ms, load time, per-iteration times.

    Returns:
        ``count`` and ``total_ms`` (``Model executed successfully N time(s) in X ms``), ``avg_ms``
        (total / count), and when printed (newer runners) ``load_ms`` (``Model loaded in X ms``),
        ``samples_ms`` (``Iteration i of n: X ms``), ``etdump_path`` (``ETDump written to file
        '…'``), plus ``missing``: what this runner did not print (min/max/std without
        per-iteration lines, memory, per-op times without an ETDump).

    Raises:
        DeviceError: the output has no timing line.
    """
    m = re.search(rf"executed successfully (\d+) time\(s\) in ({_NUM}) ?ms", text)
    if not m:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise DeviceError(f"executor_runner printed no timings: {tail or 'no output'}", where="executor_runner",
                          fix="check the runner was built with the kernels/delegates the .pte uses")
    count, total = int(m.group(1)), float(m.group(2))
    out: dict[str, Any] = {"count": count, "total_ms": total, "avg_ms": total / max(count, 1)}
    load = re.search(rf"Model loaded in ({_NUM}) ?ms", text)
    if load:
        out["load_ms"] = float(load.group(1))
    samples = [float(x) for x in re.findall(rf"Iteration \d+ of \d+: ({_NUM}) ?ms", text)]
    if samples:
        out["samples_ms"] = samples
    dump = re.search(r"ETDump written to file '([^']+)'", text)
    if dump:
        out["etdump_path"] = dump.group(1)
    missing = []
    if not samples:
        missing.append("per-run times (only the total is printed: no median, min, max or std)")
    if not load:
        missing.append("load time")
    missing.append("memory")
    if not dump:
        missing.append("per-op times (no ETDump written)")
    out["missing"] = missing
    return out


def parse_thermal_service(text: str) -> dict[str, Any]:
    """``dumpsys thermalservice``: ``status`` (0–6), ``state`` (its name) and ``temperatures`` (°C by sensor).

    Temperatures come from "Current temperatures from HAL" (live) or, without it, "Cached
    temperatures" (the last broadcast, possibly stale). Sensors reporting -99.9 (absent) are skipped.
    """
    m = re.search(r"Thermal Status:\s*(\d+)", text)
    status = int(m.group(1)) if m else None
    out: dict[str, Any] = {"status": status, "state": THERMAL_STATES.get(status, str(status)) if m else None,
                           "temperatures": {}}
    blocks: dict[str, dict[str, float]] = {}
    current = None
    for line in text.splitlines():
        head = line.strip()
        if head.endswith(":") and "emperature" in head:
            current = head
            blocks[current] = {}
            continue
        t = re.search(rf"Temperature\{{mValue=({_NUM}), mType=-?\d+, mName=([^,}}]+)", line)
        if t and current is not None:
            value = float(t.group(1))
            if value > -50:
                blocks[current][t.group(2).strip()] = value
        elif head and not line[:1].isspace() and current is not None:
            current = None
    for name in ("Current temperatures from HAL:", "Cached temperatures:"):
        if blocks.get(name):
            out["temperatures"] = blocks[name]
            break
    return out


def parse_thermal(text: str) -> str | None:
    """Thermal status name from ``dumpsys thermalservice`` (``none`` … ``shutdown``), or None."""
    return parse_thermal_service(text)["state"]


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


def thermal_snapshot(adb: Adb) -> dict[str, Any]:
    """``parse_thermal_service`` of the phone's ``dumpsys thermalservice`` (all None/empty when it has none)."""
    try:
        return parse_thermal_service(adb.shell("dumpsys thermalservice"))
    except DeviceError:
        return {"status": None, "state": None, "temperatures": {}}


def device_info(adb: Adb, thermal: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model, Android version, SoC and thermal state (and temperatures, °C) of the phone behind ``adb``."""
    thermal = thermal if thermal is not None else thermal_snapshot(adb)
    return {"name": adb.getprop("ro.product.model") or adb.serial, "os": "android",
            "android_version": adb.getprop("ro.build.version.release"), "serial": adb.serial,
            "soc": adb.getprop("ro.soc.model"), "thermal_state": thermal["state"],
            "temperatures_c": thermal["temperatures"]}


def artifact_files(path: Path, extra_files: Sequence[str | Path] = ()) -> list[Path]:
    """Every file ``path`` needs on the phone: itself, ``extra_files`` (relative ones are taken beside it,
    e.g. an ExecuTorch ``.ptd``), and an ONNX model's ``<name>.onnx.data`` external-data file.

    Raises:
        ConfigError: a listed extra file is missing.
    """
    files = [path]
    for extra in extra_files:
        p = Path(extra)
        p = p if p.is_absolute() or p.exists() else path.parent / p
        if not p.is_file():
            raise ConfigError("a file the artifact needs is missing", where=str(p),
                              fix="re-export, or keep the artifact's extra files beside it")
        if p not in files:
            files.append(p)
    sidecar = path.with_name(path.name + ".data")
    if path.suffix == ".onnx" and sidecar.is_file() and sidecar not in files:
        files.append(sidecar)
    return files


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
                    threads: int | None = None, adb: Adb | None = None,
                    extra_files: Sequence[str | Path] = (), etdump_dir: str | Path | None = None) -> LatencyReport:
    """Measure ``artifact`` on an attached Android phone with benchmark_model or executor_runner.

    Every file the artifact needs is pushed (``extra_files``, e.g. an ExecuTorch ``.ptd``, which
    is passed to executor_runner as ``--data_path``). For a ``.pte`` the runner writes an ETDump,
    which is pulled to ``etdump_dir`` and read for per-op times when ExecuTorch's Inspector is
    installed here. The phone's thermal state is recorded before (``device["thermal_state"]``) and
    after (``device["thermal_state_after"]``) the run, with temperatures (°C).

    Args:
        artifact: a .tflite or .pte file.
        serial: the device serial (``adb devices``); None when exactly one phone is attached.
        runner: path of the Android runner binary (default: env var, then PATH).
        target: target name recorded in the report.
        warmup: warm-up runs.
        max_seconds: most seconds of timed runs (benchmark_model ``--max_secs``).
        threads: CPU threads (``--num_threads`` / ``--cpu_threads``).
        adb: an ``Adb`` to reuse.
        extra_files: other files of the artifact (an ``Artifact``'s ``extra_files``, relative to the artifact).
        etdump_dir: where the pulled ETDump goes (default: beside the artifact).

    Returns:
        A ``LatencyReport`` with ``source="device"``.

    Raises:
        DeviceError: no adb, no phone, no runner binary, or the runner failed.
        ConfigError: the artifact or one of its extra files is missing.

    Example:
        >>> profile_android("out/model.tflite", runner="bin/benchmark_model")  # doctest: +SKIP
    """
    path = Path(artifact)
    if not path.is_file():
        raise ConfigError("artifact file not found", where=str(path), fix="check the path, or re-export")
    suffix = path.suffix.lower()
    binary = _find_runner(suffix, runner)
    files = artifact_files(path, extra_files)
    adb = adb or Adb(serial)
    before = thermal_snapshot(adb)
    info = device_info(adb, before)
    adb.shell(f"mkdir -p {REMOTE_DIR}")
    remote = {f: f"{REMOTE_DIR}/{f.name}" for f in files}
    remote_model, remote_bin = remote[path], f"{REMOTE_DIR}/{binary.name}"
    for local, there in remote.items():
        adb.run("push", str(local), there)
    adb.run("push", str(binary), remote_bin)
    adb.shell(f"chmod 755 {remote_bin}")
    notes: list[str] = []
    if info.get("thermal_state") not in (None, "none"):
        notes.append(f"the phone reported thermal state {info['thermal_state']!r} before the run: "
                     "numbers may be throttled")
    per_op: list[dict[str, Any]] = []
    per_op_source = None
    if suffix == ".tflite":
        cmd = (f"{remote_bin} --graph={remote_model} --warmup_runs={warmup} --max_secs={max_seconds:g} "
               "--enable_op_profiling=true --report_peak_memory_footprint=true"
               + (f" --num_threads={threads}" if threads else ""))
        parsed = parse_benchmark_model(adb.shell(cmd))
        runtime, format_ = "benchmark_model", "tflite"
        per_op, per_op_source = parsed["per_op"], "benchmark_model"
        p50 = parsed.get("median_ms", parsed["avg_ms"])
        stats = {"mean_ms": parsed["avg_ms"], "min_ms": parsed.get("min_ms"), "max_ms": parsed.get("max_ms"),
                 "std_ms": parsed.get("std_ms"), "cold_load_ms": parsed["init_ms"],
                 "first_inference_ms": parsed["first_inference_ms"], "peak_memory_mb": parsed.get("peak_memory_mb"),
                 "memory_delta_mb": parsed.get("memory_overall_mb")}
        notes.extend(parsed["notes"])
        if "median_ms" not in parsed:
            notes.append("benchmark_model printed no median: p50_ms is the mean of the timed run")
        if parsed.get("init_ops"):
            init = ", ".join(f"{o['op']} {o['ms']:.3f} ms" for o in parsed["init_ops"])
            notes.append(f"initialisation (not in per-op times): {init}")
    else:
        iterations = max(10, int(max_seconds * 10))
        remote_dump = f"{REMOTE_DIR}/{path.stem}.etdump"
        ptd = [f for f in files if f.suffix == ".ptd"]
        cmd = (f"{remote_bin} --model_path={remote_model} --num_executions={iterations} --etdump_path={remote_dump}"
               + (f" --data_path={remote[ptd[0]]}" if ptd else "") + (f" --cpu_threads={threads}" if threads else ""))
        parsed = parse_executor_runner(adb.shell(cmd))
        runtime, format_ = "executor_runner", "executorch"
        samples = parsed.get("samples_ms", [])
        p50 = statistics.median(samples) if samples else parsed["avg_ms"]
        stats = {"mean_ms": parsed["avg_ms"], "cold_load_ms": parsed.get("load_ms")}
        if samples:
            stats.update(samples_ms=tuple(samples), min_ms=min(samples), max_ms=max(samples),
                         std_ms=statistics.stdev(samples) if len(samples) > 1 else 0.0)
        else:
            notes.append(f"executor_runner printed only the total time: p50_ms is the mean over {parsed['count']} "
                         "runs, the first included")
        missing = [m for m in parsed["missing"] if not m.startswith("per-run")]
        if parsed.get("etdump_path"):
            local_dump = Path(etdump_dir or path.parent) / f"{path.stem}.etdump"
            local_dump.parent.mkdir(parents=True, exist_ok=True)
            adb.run("pull", remote_dump, str(local_dump))
            notes.append(f"ETDump pulled to {local_dump}")
            try:
                from mobilekit.profiling.per_op import ops_from_etdump

                per_op, per_op_source = ops_from_etdump(local_dump), "etdump"
                missing = [m for m in missing if not m.startswith("per-op")]
            except ImportError:
                notes.append("per-op times: read the pulled ETDump with executorch.devtools.Inspector "
                             "(ExecuTorch is not installed here)")
            except Exception as exc:  # noqa: BLE001 - a truncated or foreign ETDump: keep the timings
                notes.append(f"the pulled ETDump could not be read for per-op times: {exc}")
        if missing:
            notes.append("executor_runner did not print: " + "; ".join(missing))
    after = thermal_snapshot(adb)
    info.update(thermal_state_after=after["state"], temperatures_c_after=after["temperatures"])
    if (after["status"] or 0) > (before["status"] or 0):
        notes.append(f"the phone warmed up during the run: thermal state {before['state']!r} → {after['state']!r}")
    return LatencyReport(
        artifact=str(path), format=format_, runtime=runtime, source="device", device=info, target=target,
        threads=threads, warmup=warmup, p50_ms=p50, stop_reason="fixed",
        artifact_size_bytes=sum(f.stat().st_size for f in files), per_op=tuple(per_op),
        per_op_source=per_op_source if per_op else None,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), notes=tuple(notes), **stats)
