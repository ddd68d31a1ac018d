"""LatencyReport: one artifact's latency on one device, with where the numbers came from.

Serialised as sorted, indented JSON that validates against ``latency_report.schema.json``
(``LATENCY_REPORT_SCHEMA_VERSION``). ``source`` says whether the numbers were measured on this
host (``host``), on a phone (``device``), or predicted (``estimate``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from mobilekit._io import write_json_atomic
from mobilekit.errors import ConfigError

LATENCY_REPORT_SCHEMA_VERSION = 1
SOURCES = ("host", "device", "estimate")
SCHEMA_PATH = Path(__file__).with_name("latency_report.schema.json")


@dataclass(frozen=True, kw_only=True)
class LatencyReport:
    """Samples and statistics of one artifact's inference latency on one device.

    Attributes:
        artifact: path of the measured artifact (as given).
        format: ``executorch``, ``tflite``, ``onnx`` or ``coreml``.
        runtime: the runtime that ran it (``executorch``, ``ai-edge-litert``, ``onnxruntime``, ``benchmark_model``...).
        source: ``host``, ``device`` or ``estimate``.
        device: what ran it: ``name`` (host CPU or phone model), ``os``, and when known ``android_version``,
            ``serial``, ``thermal_state``, ``cores``.
        p50_ms: median latency of one inference, ms.
        target: the target profile name the artifact is for (e.g. ``pixel-8``), if any.
        model: a name for the model, if known.
        precision: the artifact's precision, if known.
        threads: runtime threads (None: the runtime's default).
        warmup: untimed runs before the timed loop.
        samples_ms: every timed sample, ms (empty when the tool gives only aggregates).
        p90_ms, p99_ms, mean_ms, min_ms, max_ms, std_ms: statistics of the samples, ms.
        cv: coefficient of variation of the samples (std / mean).
        ci95_low_ms, ci95_high_ms: distribution-free 95% confidence interval of the median, ms.
        converged: True when the CI came within ``rel_precision`` of the median before a limit was hit.
        stop_reason: ``converged``, ``max_seconds``, ``max_samples`` or ``fixed`` (a tool's own run count).
        cold_load_ms: time to load the artifact and prepare it for the first call, ms.
        first_inference_ms: the first inference after loading, ms.
        peak_memory_mb: peak resident memory of the process that ran the artifact, MiB.
        memory_delta_mb: peak resident memory above the process's footprint before loading, MiB
            (what the model itself costs; the runtime's import is excluded).
        cpu_p50_ms: median process CPU time of one inference, ms (all threads summed). Near ``p50_ms``
            on one thread when the host is idle; far below it when other processes took the CPU.
        artifact_size_bytes: the artifact's bytes on disk.
        per_op: per-operator times: ``{name, op, ms, count, delegated}`` with ``ms`` the median per call.
        per_op_source: where per-op times came from (``etdump``, ``onnxruntime-profile``, ``benchmark_model``).
        toolchain: runtime package versions.
        created: ISO-8601 UTC time of the measurement.
        notes: remarks (fallbacks, missing data and why).
        schema_version: the JSON schema version.
    """

    artifact: str
    format: str | None
    runtime: str
    source: str
    device: dict[str, Any]
    p50_ms: float
    target: str | None = None
    model: str | None = None
    precision: str | None = None
    threads: int | None = None
    warmup: int = 0
    samples_ms: tuple[float, ...] = ()
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    std_ms: float | None = None
    cv: float | None = None
    ci95_low_ms: float | None = None
    ci95_high_ms: float | None = None
    converged: bool | None = None
    stop_reason: str | None = None
    cold_load_ms: float | None = None
    first_inference_ms: float | None = None
    peak_memory_mb: float | None = None
    memory_delta_mb: float | None = None
    cpu_p50_ms: float | None = None
    artifact_size_bytes: int | None = None
    per_op: tuple[dict[str, Any], ...] = ()
    per_op_source: str | None = None
    toolchain: dict[str, str | None] = field(default_factory=dict)
    created: str = ""
    notes: tuple[str, ...] = ()
    schema_version: int = LATENCY_REPORT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"unknown LatencyReport source {self.source!r}", where="source",
                              fix=f"use one of {', '.join(SOURCES)}")
        if not (isinstance(self.p50_ms, (int, float)) and math.isfinite(self.p50_ms) and self.p50_ms >= 0):
            raise ConfigError(f"p50_ms must be a finite number >= 0, got {self.p50_ms!r}", where="p50_ms")
        object.__setattr__(self, "samples_ms", tuple(float(x) for x in self.samples_ms))
        object.__setattr__(self, "per_op", tuple(dict(op) for op in self.per_op))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def name(self) -> str:
        """A short label: ``<artifact file> @ <device or target>``."""
        where = self.device.get("name") or self.target or self.source
        return f"{Path(self.artifact).name} @ {where}"

    def with_(self, **changes: Any) -> LatencyReport:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (validates against the schema)."""
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        d["per_op"] = [dict(op) for op in self.per_op]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyReport:
        """Inverse of ``to_dict``; checks the schema version and rejects unknown keys by name.

        Raises:
            ConfigError: a different schema version, or unknown keys.
        """
        version = data.get("schema_version", LATENCY_REPORT_SCHEMA_VERSION)
        if version != LATENCY_REPORT_SCHEMA_VERSION:
            raise ConfigError(f"LatencyReport schema_version {version!r} is not {LATENCY_REPORT_SCHEMA_VERSION}",
                              where="schema_version", fix="re-run the profile with this mobilekit version")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"unknown LatencyReport key(s) {extra}", where="LatencyReport",
                              fix=f"known: {sorted(known)}")
        d = dict(data)
        d["samples_ms"] = tuple(d.get("samples_ms", ()))
        d["per_op"] = tuple(d.get("per_op", ()))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)

    def write(self, path: Path) -> Path:
        """Write the report as sorted, indented JSON atomically and return the path."""
        return write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: Path) -> LatencyReport:
        """Read a report written by ``write``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the latency report: {exc}", where=str(path)) from exc
        return cls.from_dict(data)


@cache
def schema() -> dict[str, Any]:
    """The JSON schema of a serialised LatencyReport."""
    return json.loads(SCHEMA_PATH.read_text())


def validate(data: dict[str, Any]) -> None:
    """Check ``data`` (a report's ``to_dict()``) against the JSON schema.

    Raises:
        ConfigError: naming the first offending field.
        BackendUnavailableError: ``jsonschema`` is not installed.
    """
    from mobilekit._deps import require

    require("jsonschema", extra="dev")
    import jsonschema

    try:
        jsonschema.validate(data, schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "report"
        raise ConfigError(f"latency report does not match the schema: {exc.message}", where=where) from exc


def reports_to_json(reports: Sequence[LatencyReport]) -> dict[str, Any]:
    """The JSON document the CLI writes for ``--json``: ``{schema_version, reports: [...]}``."""
    return {"schema_version": LATENCY_REPORT_SCHEMA_VERSION, "reports": [r.to_dict() for r in reports]}
