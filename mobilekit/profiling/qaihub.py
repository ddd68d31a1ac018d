"""Measure an artifact on a phone in Qualcomm AI Hub's device farm, through the ``qai-hub`` client.

``profile_qaihub`` uploads a ``.tflite``, ``.onnx`` (with its ``.onnx.data``) or QNN (``.dlc`` /
``.bin``) artifact, optionally compiles it for another AI Hub target runtime first, runs a profile
job on a named Snapdragon device, waits, downloads the profile and turns it into the same
``LatencyReport`` the adb runner writes (``source="device"``). The job ids and URLs go into
``device`` and ``notes`` so the run can be opened on the AI Hub website.

Everything that can be checked locally is checked before anything is uploaded: an API token is
configured, the format is one AI Hub profiles, the device is known. The ``qai_hub`` package is
imported only when no ``client`` is passed; it is an optional dependency (``pip install qai-hub``).

The artifact leaves this machine: AI Hub runs it in Qualcomm's cloud.

Profile format (``ProfileJob.download_profile()``): ``execution_summary`` with times in µs
(``estimated_inference_time``, ``all_inference_times``, ``first_load_time``, ``warm_load_time``)
and memory in bytes (``inference_memory_peak_range`` = ``(low, high)``,
``estimated_inference_peak_memory``), and ``execution_detail``, one row per layer with
``name``, ``type``, ``compute_unit`` (``CPU``/``GPU``/``NPU``) and, when measured,
``execution_time`` (µs).
"""

from __future__ import annotations

import configparser
import datetime as _dt
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mobilekit.errors import BackendUnavailableError, ConfigError, DeviceError
from mobilekit.profiling.report import LatencyReport

logger = logging.getLogger(__name__)

# mobilekit target profile -> AI Hub device name. "(Family)" lets AI Hub run on any variant of the
# phone it has free (all Snapdragon: AI Hub's Galaxy devices are the Snapdragon models).
AIHUB_DEVICES: dict[str, str] = {
    "galaxy-s22": "Samsung Galaxy S22 5G",
    "galaxy-s23": "Samsung Galaxy S23 (Family)",
    "galaxy-s24": "Samsung Galaxy S24 (Family)",
    "galaxy-s25": "Samsung Galaxy S25 (Family)",
    "pixel-3": "Google Pixel 3",
    "pixel-4": "Google Pixel 4",
    "snapdragon-7-gen4-qrd": "Snapdragon 7 Gen 4 QRD",
    "snapdragon-8-elite-gen5-qrd": "Snapdragon 8 Elite Gen 5 QRD",
}

# artifact suffix -> (LatencyReport format, AI Hub runtime it is profiled with)
_PROFILABLE: dict[str, tuple[str | None, str]] = {
    ".tflite": ("tflite", "tflite"),
    ".onnx": ("onnx", "onnx"),
    ".dlc": (None, "qnn_dlc"),
    ".bin": (None, "qnn_context_binary"),
}
_NOT_PROFILABLE = {
    ".pte": "ExecuTorch programs (.pte) cannot be profiled on AI Hub: it runs TFLite, ONNX and QNN models",
    ".mlpackage": "Core ML models cannot be profiled on AI Hub's Snapdragon devices",
    ".mlmodel": "Core ML models cannot be profiled on AI Hub's Snapdragon devices",
}
# AI Hub target runtimes a compile job can produce (``--target_runtime``)
COMPILE_RUNTIMES = ("tflite", "onnx", "qnn_dlc", "qnn_context_binary", "precompiled_qnn_onnx")
CONFIG_ENV = "QAIHUB_CLIENT_INI"  # the client's own variable for its config path
TOKEN_ENV = "QAI_HUB_API_TOKEN"  # mobilekit's: a token without a config file (CI secrets)
_DEFAULT_CONFIG = "~/.qai_hub/client.ini"
_TOKEN_FIX = ("run `qai-hub configure --api_token YOUR_TOKEN` (the token is on your AI Hub account page, "
              "https://aihub.qualcomm.com), or set QAI_HUB_API_TOKEN")


def config_path() -> Path:
    """Where the ``qai-hub`` client reads its configuration: ``$QAIHUB_CLIENT_INI`` or ``~/.qai_hub/client.ini``."""
    return Path(os.path.expanduser(os.environ.get(CONFIG_ENV, _DEFAULT_CONFIG)))


def find_api_token(api_token: str | None = None) -> tuple[str, str]:
    """The AI Hub API token and where it came from: the argument, ``QAI_HUB_API_TOKEN``, or the client's config.

    Raises:
        ConfigError: no token anywhere (nothing has been uploaded).
    """
    if api_token and api_token.strip():
        return api_token.strip(), "api_token"
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env, TOKEN_ENV
    path = config_path()
    if path.is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise ConfigError(f"the qai-hub configuration cannot be read: {exc}", where=str(path),
                              fix=_TOKEN_FIX) from exc
        token = parser.get("api", "api_token", fallback="").strip()
        if token:
            return token, str(path)
        raise ConfigError("the qai-hub configuration has no [api] api_token", where=str(path), fix=_TOKEN_FIX)
    raise ConfigError("no Qualcomm AI Hub API token is configured", where=f"{path} / ${TOKEN_ENV}", fix=_TOKEN_FIX)


def resolve_device(device: str | None, target: str | None = None) -> tuple[str, str | None]:
    """The AI Hub device name and the mobilekit target for ``device`` (a target name or an AI Hub name).

    A mobilekit target name (``galaxy-s24``) maps through ``AIHUB_DEVICES``; anything else is taken
    as an AI Hub device name as is (``"Samsung Galaxy S24 (Family)"``). With no ``device`` the
    ``target`` is used.

    Raises:
        ConfigError: neither is given, or the target's phone is not in AI Hub's farm.
    """
    name = (device or "").strip() or (target or "").strip()
    if not name:
        raise ConfigError("no AI Hub device was named", where="--device",
                          fix="pass --device qaihub:\"Samsung Galaxy S24 (Family)\" or --device qaihub --target "
                              f"galaxy-s24 (targets on AI Hub: {', '.join(sorted(AIHUB_DEVICES))})")
    key = name.lower()
    if key in AIHUB_DEVICES:
        return AIHUB_DEVICES[key], key
    from mobilekit.targets import list_targets

    by_name = {t.name: t for t in list_targets()}
    if key in by_name:
        t = by_name[key]
        raise ConfigError(f"target {t.name} ({t.soc}) is not a phone Qualcomm AI Hub hosts",
                          where="--device",
                          fix="AI Hub has Snapdragon devices only; use one of "
                              f"{', '.join(sorted(AIHUB_DEVICES))} or an AI Hub device name")
    return name, (target.strip().lower() if target else None)


def _default_client(token: str, origin: str) -> Any:
    try:
        from qai_hub.client import Client
    except ImportError as exc:
        raise BackendUnavailableError("the qai-hub client is not installed", where="qai_hub",
                                      fix="pip install qai-hub (or pip install 'mobilekit[qaihub]')") from exc
    client = Client()
    if origin != str(config_path()):  # token from the argument or the environment, not the client's file
        client.set_session_token(token)
    try:
        client.set_verbose(False)  # no progress bars or polling lines on the terminal
    except Exception:  # noqa: BLE001 - a bad config file: the submit call reports it with its own message
        logger.debug("could not silence the qai-hub client", exc_info=True)
    return client


def _device_object(client: Any, name: str) -> Any:
    factory = getattr(client, "Device", None)  # the qai_hub module itself, or a test double
    if factory is None:
        import qai_hub

        factory = qai_hub.Device
    return factory(name)


def _check_device(client: Any, name: str) -> dict[str, Any]:
    """The device's name/os/attributes from AI Hub's device list, or DeviceError when it has none by that name."""
    getter = getattr(client, "get_devices", None)
    if getter is None:
        return {}
    try:
        found = list(getter(name=name))
    except Exception as exc:  # noqa: BLE001 - network, auth: the client's message says which
        raise DeviceError(f"could not list Qualcomm AI Hub devices: {exc}", where="qai_hub.get_devices",
                          fix="check the network and the API token (`qai-hub configure --api_token ...`)") from exc
    if not found and name.endswith(" (Family)"):
        # a family name selects any variant; if the list has no entry for the family itself, its base phone counts
        try:
            found = list(getter(name=name[: -len(" (Family)")]))
        except Exception:  # noqa: BLE001 - the first call worked; treat a failure here as "not listed"
            found = []
        if found:
            return {k: v for k, v in _device_info(found[0]).items() if k != "name"}
    if not found:
        raise DeviceError(f"Qualcomm AI Hub has no device named {name!r}", where="--device",
                          fix="list them with `qai-hub list-devices`, or use a mobilekit target: "
                              f"{', '.join(sorted(AIHUB_DEVICES))}")
    return _device_info(found[0])


def _device_info(dev: Any) -> dict[str, Any]:
    if dev is None:
        return {}
    info: dict[str, Any] = {}
    if getattr(dev, "name", None):
        info["name"] = str(dev.name)
    if getattr(dev, "os", None):
        info["os"] = str(dev.os)
    attrs = [str(a) for a in (getattr(dev, "attributes", None) or [])]
    for attr in attrs:
        key, _, value = attr.partition(":")
        if key in ("chipset", "os", "vendor", "format", "hexagon") and value:
            info[f"hub_{key}"] = value
    return info


def _wait(job: Any, kind: str, timeout: float | None) -> None:
    url = getattr(job, "url", None)
    job_id = getattr(job, "job_id", None)
    try:
        status = job.wait(timeout=int(timeout) if timeout else None)
    except TimeoutError as exc:
        raise DeviceError(f"AI Hub {kind} job {job_id} did not finish within {timeout:g} s",
                          where=url or f"job {job_id}",
                          fix="it keeps running on AI Hub: open the URL, or raise the timeout") from exc
    except Exception as exc:  # noqa: BLE001 - polling failed (network, auth): the job may still run
        raise DeviceError(f"waiting for AI Hub {kind} job {job_id} failed: {exc}", where=url or f"job {job_id}",
                          fix="open the job URL; check the network and the API token") from exc
    if status is None or not hasattr(status, "success"):
        status = job.get_status()
    if not status.success:
        message = getattr(status, "message", None) or getattr(status, "code", None) or "no reason given"
        raise DeviceError(f"AI Hub {kind} job {job_id} failed: {message}", where=url or f"job {job_id}",
                          fix="open the job URL for the full log; unsupported ops or shapes need a re-export")


def _call(kind: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """A client call whose own errors (qai_hub.UserError, network) become a DeviceError with their message."""
    try:
        return fn(**kwargs)
    except (DeviceError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - qai_hub raises its own classes; keep their text
        raise DeviceError(f"Qualcomm AI Hub refused the {kind}: {exc}", where=f"qai_hub ({type(exc).__name__})",
                          fix="check the API token (`qai-hub configure --api_token ...`), the network and the "
                              "model; MOBILEKIT_DEBUG=1 shows the traceback") from exc


def _stage_onnx(path: Path, workdir: Path) -> Path:
    """An ONNX model with external data as the directory AI Hub expects (``<name>.onnx/`` holding both files)."""
    data = [p for p in path.parent.glob(path.name + ".data*") if p.is_file()]
    if not data:
        return path
    staged = workdir / path.name
    staged.mkdir()
    shutil.copy2(path, staged / path.name)
    for p in data:
        shutil.copy2(p, staged / p.name)
    return staged


def _us_to_ms(value: Any) -> float | None:
    return float(value) / 1e3 if isinstance(value, (int, float)) and value >= 0 else None


def _mib(value: Any) -> float | None:
    return float(value) / 2**20 if isinstance(value, (int, float)) and value >= 0 else None


def report_from_profile(profile: Mapping[str, Any], *, artifact: str | Path, format_: str | None, runtime: str,
                        device: Mapping[str, Any], target: str | None = None,
                        jobs: Mapping[str, tuple[str | None, str | None]] | None = None,
                        artifact_size_bytes: int | None = None,
                        toolchain: Mapping[str, str | None] | None = None) -> LatencyReport:
    """A ``LatencyReport`` from the dict ``ProfileJob.download_profile()`` returns.

    Times: ``all_inference_times`` (µs) become ``samples_ms`` and p50/mean/min/max...; without it
    ``p50_ms`` is AI Hub's ``estimated_inference_time`` alone (a note says which). Memory:
    ``peak_memory_mb`` is the upper end of ``inference_memory_peak_range`` (else
    ``estimated_inference_peak_memory``), in MiB. Per-op rows: layers with an ``execution_time``,
    with their ``compute_unit``; ``delegated`` is True off the CPU.

    Args:
        jobs: ``{"compile"|"profile": (job_id, url)}`` of the jobs that produced it.

    Raises:
        DeviceError: the profile has no inference time.
    """
    from mobilekit.profiling.stats import summarize

    summary = dict(profile.get("execution_summary") or {})
    detail = list(profile.get("execution_detail") or [])
    notes: list[str] = []
    info = dict(device)
    for kind, (job_id, url) in (jobs or {}).items():
        if job_id:
            info[f"hub_{kind}_job"] = str(job_id)
        if url:
            info[f"hub_{kind}_url"] = str(url)
        notes.append(f"AI Hub {kind} job {job_id}: {url}" if url else f"AI Hub {kind} job {job_id}")
    estimated = _us_to_ms(summary.get("estimated_inference_time"))
    runs = [float(t) / 1e3 for t in (summary.get("all_inference_times") or []) if isinstance(t, (int, float))]
    stats: dict[str, Any] = {}
    if runs:
        stats = summarize(runs)
        stats["samples_ms"] = tuple(runs)
        notes.append(f"p50/mean/min/max are over the {len(runs)} inference times AI Hub recorded "
                     "(all_inference_times, first run included)"
                     + (f"; AI Hub's own estimate (estimated_inference_time) is {estimated:g} ms"
                        if estimated is not None else ""))
    elif estimated is not None:
        stats = {"p50_ms": estimated}
        notes.append("AI Hub returned no per-run times (no all_inference_times): p50_ms is its "
                     "estimated_inference_time only; no spread is known")
    else:
        where = info.get("hub_profile_url") or str(artifact)
        raise DeviceError("the AI Hub profile has no inference time", where=where,
                          fix="open the profile job on AI Hub; re-run the job")
    peak_range = summary.get("inference_memory_peak_range")
    peak = None
    if isinstance(peak_range, (list, tuple)) and len(peak_range) == 2:
        lo, hi = _mib(peak_range[0]), _mib(peak_range[1])
        peak = hi
        if lo is not None and hi is not None:
            notes.append(f"inference peak memory is a range on AI Hub: {lo:.2f}–{hi:.2f} MiB; "
                         "peak_memory_mb is its upper end")
    if peak is None:
        peak = _mib(summary.get("estimated_inference_peak_memory"))
    warm = _us_to_ms(summary.get("warm_load_time"))
    if warm is not None:
        notes.append(f"warm load (AI Hub warm_load_time): {warm:g} ms")
    per_op: list[dict[str, Any]] = []
    units: Counter[str] = Counter()
    untimed = 0
    for layer in detail:
        unit = str(layer.get("compute_unit") or "UNKNOWN").upper()
        units[unit] += 1
        ms = _us_to_ms(layer.get("execution_time"))
        if ms is None:
            untimed += 1
            continue
        per_op.append({"name": str(layer.get("name", "")), "op": layer.get("type"), "ms": ms, "count": None,
                       "delegated": unit != "CPU", "compute_unit": unit})
    if units:
        notes.append("layers by compute unit: " + ", ".join(f"{u} {n}" for u, n in units.most_common()))
    if untimed:
        notes.append(f"{untimed} of {len(detail)} layers have no execution_time and are not in per_op")
    return LatencyReport(
        artifact=str(artifact), format=format_, runtime=runtime, source="device", device=info, target=target,
        stop_reason="fixed", cold_load_ms=_us_to_ms(summary.get("first_load_time")), peak_memory_mb=peak,
        artifact_size_bytes=artifact_size_bytes, per_op=tuple(per_op), per_op_source="qai-hub" if per_op else None,
        toolchain=dict(toolchain or {}), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=tuple(notes), **stats)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    extra = [p for p in path.parent.glob(path.name + ".data*") if p.is_file()]
    return path.stat().st_size + sum(p.stat().st_size for p in extra)


def profile_qaihub(artifact: str | Path, *, device: str | None = None, target: str | None = None,
                   client: Any = None, api_token: str | None = None, compile_to: str | None = None,
                   compile_options: str = "", profile_options: str = "", timeout: float | None = 3600.0,
                   job_name: str | None = None,
                   on_submit: Callable[[str, str | None, str | None], None] | None = None) -> LatencyReport:
    """Profile ``artifact`` on a Qualcomm AI Hub device and return its ``LatencyReport``.

    Args:
        artifact: a ``.tflite``, ``.onnx`` (its ``.onnx.data`` goes along), ``.dlc`` or ``.bin`` file.
        device: a mobilekit target name (``galaxy-s24``; see ``AIHUB_DEVICES``) or an AI Hub device
            name (``"Samsung Galaxy S24 (Family)"``); None: ``target``'s device.
        target: the mobilekit target the artifact is for (recorded in the report).
        client: a ``qai_hub`` client (the ``qai_hub`` module, a ``qai_hub.client.Client``, or a test
            double with the same methods); None: a new ``Client`` for the configured token.
        api_token: an AI Hub API token; None: ``QAI_HUB_API_TOKEN``, then the client's config file.
        compile_to: compile on AI Hub for this target runtime first (``qnn_dlc``,
            ``qnn_context_binary``, ``tflite``, ``onnx``, ``precompiled_qnn_onnx``) and profile the result.
        compile_options, profile_options: extra option strings for the jobs (e.g. ``--compute_unit npu``).
        timeout: seconds to wait for each job (None: AI Hub's own limit).
        on_submit: called with ``(kind, job_id, url)`` when a job is submitted.

    Raises:
        ConfigError: no API token, a format AI Hub does not profile, an unknown compile runtime,
            or a target that is not on AI Hub (all before any upload).
        DeviceError: the device is unknown to AI Hub, a job failed (with its message and URL) or
            timed out.
        BackendUnavailableError: ``qai-hub`` is not installed and no ``client`` was passed.
    """
    path = Path(artifact)
    suffix = path.suffix.lower()
    if suffix in _NOT_PROFILABLE:
        raise ConfigError(_NOT_PROFILABLE[suffix], where=str(path),
                          fix="export to TFLite or ONNX for this target (e.g. a tflite-* or onnx-* recipe), "
                              "or profile it over adb with --device android")
    if suffix not in _PROFILABLE:
        raise ConfigError(f"AI Hub cannot profile {suffix or 'this'} artifacts", where=str(path),
                          fix="pass a .tflite, .onnx, .dlc or .bin file")
    if not path.exists():
        raise ConfigError("artifact not found", where=str(path), fix="check the path, or re-export")
    if compile_to is not None and compile_to not in COMPILE_RUNTIMES:
        raise ConfigError(f"unknown AI Hub target runtime {compile_to!r}", where="compile_to",
                          fix=f"use one of {', '.join(COMPILE_RUNTIMES)}")
    hub_device, target_name = resolve_device(device, target)
    token, origin = find_api_token(api_token)
    if client is None:
        client = _default_client(token, origin)
    info = {"name": hub_device, "platform": "qualcomm-ai-hub"}
    info.update(_check_device(client, hub_device))
    dev = _device_object(client, hub_device)
    format_, runtime = _PROFILABLE[suffix]
    name = job_name or f"mobilekit {path.name}"
    jobs: dict[str, tuple[str | None, str | None]] = {}

    def submitted(kind: str, job: Any) -> None:
        jobs[kind] = (getattr(job, "job_id", None), getattr(job, "url", None))
        logger.info("AI Hub %s job %s: %s", kind, *jobs[kind])
        if on_submit is not None:
            on_submit(kind, *jobs[kind])

    with tempfile.TemporaryDirectory(prefix="mobilekit-qaihub-") as tmp:
        model: Any = str(_stage_onnx(path, Path(tmp)) if suffix == ".onnx" else path)
        if compile_to is not None:
            options = " ".join(x for x in (f"--target_runtime {compile_to}", compile_options.strip()) if x)
            compile_job = _call("compile job", client.submit_compile_job, model=model, device=dev,
                                name=f"{name} compile", options=options)
            submitted("compile", compile_job)
            _wait(compile_job, "compile", timeout)
            model = _call("compiled model download", compile_job.get_target_model)
            if model is None:
                raise DeviceError(f"AI Hub compile job {jobs['compile'][0]} produced no model",
                                  where=jobs["compile"][1] or "compile job", fix="open the job URL for its log")
            runtime = compile_to
        kwargs: dict[str, Any] = {"model": model, "device": dev, "name": name}
        if profile_options.strip():
            kwargs["options"] = profile_options.strip()
        profile_job = _call("profile job", client.submit_profile_job, **kwargs)
        submitted("profile", profile_job)
        _wait(profile_job, "profile", timeout)
        profile = _call("profile download", profile_job.download_profile)
    ran_on = getattr(profile_job, "device", None)  # the real job's Device: the variant that ran it
    if ran_on is not None and not isinstance(ran_on, str):
        info.update(_device_info(ran_on))
    if compile_to is not None:
        format_ = {"tflite": "tflite", "onnx": "onnx"}.get(compile_to)
    from mobilekit._deps import version_of

    return report_from_profile(profile, artifact=path, format_=format_,
                               runtime=f"qai-hub:{runtime}", device=info, target=target_name, jobs=jobs,
                               artifact_size_bytes=_size(path), toolchain={"qai-hub": version_of("qai-hub")})
