"""Budgets: the one set of limits that gates ``mobilekit profile`` and ``mobilekit build``, plus JUnit XML.

A ``Budget`` names where each latency comes from, because a number measured on this x86 host
and a number for a phone are different quantities and one limit cannot serve both:

* ``host_ms``: a latency statistic (``stat``: ``p50`` by default) **measured on this host**.
* ``phone_ms``: the same statistic **on a phone**: measured on an attached phone, or estimated
  from the phone's profile. ``phone_ms_by_target`` overrides it per target name.
* ``size_mb``: the **artifact size on disk** (MiB = 2**20 bytes, all files of the artifact).
* ``memory_mb``: the **peak resident memory the model adds** while running (MiB).
* ``min_cosine`` / ``min_psnr_db``: the least parity with PyTorch.

Every check ends ``pass``, ``fail`` or ``error``. ``error`` means the limit was configured but
could not be evaluated (no runtime here, the estimate or measurement failed, the runtime does
not report the quantity); it carries the reason, and it fails the gate unless the caller allows
errors: a check that silently disappears would leave a build green that never checked anything.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from mobilekit._io import write_bytes_atomic
from mobilekit.errors import BudgetError, ConfigError
from mobilekit.profiling.report import LatencyReport

_STATS = ("p50", "p90", "p99", "mean")
MIB = 1024 * 1024
#: What a check is about; ``allow_errors`` takes these names.
CHECK_KINDS = ("size", "parity", "sampling", "images", "host", "phone", "memory")


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Limits a build or a profiling run must meet; None leaves a quantity unchecked.

    Attributes:
        host_ms: most milliseconds of statistic ``stat`` measured on this host.
        phone_ms: most milliseconds of ``stat`` on a phone (measured on it, or estimated for it).
        phone_ms_by_target: per-target overrides of ``phone_ms`` (target name → ms).
        size_mb: largest artifact size on disk, MiB.
        memory_mb: most peak resident memory the model adds while running, MiB.
        min_cosine: least cosine similarity of outputs with PyTorch.
        min_psnr_db: least PSNR of outputs against PyTorch, dB.
        min_sample_cosine: least cosine of a denoiser's final sample after a sampling loop, vs PyTorch's.
        min_sample_psnr_db: least PSNR of that final sample, dB.
        min_image_psnr_db: least PSNR of an image model's output as 8-bit pictures (peak 255), dB.
        stat: the latency statistic the latency limits apply to (``p50``, ``p90``, ``p99``, ``mean``).
    """

    host_ms: float | None = None
    phone_ms: float | None = None
    phone_ms_by_target: Mapping[str, float] = field(default_factory=dict)
    size_mb: float | None = None
    memory_mb: float | None = None
    min_cosine: float | None = None
    min_psnr_db: float | None = None
    min_sample_cosine: float | None = None
    min_sample_psnr_db: float | None = None
    min_image_psnr_db: float | None = None
    stat: str = "p50"

    def __post_init__(self) -> None:
        for name in ("host_ms", "phone_ms", "size_mb", "memory_mb", "min_cosine", "min_psnr_db", "min_sample_cosine",
                     "min_sample_psnr_db", "min_image_psnr_db"):
            _positive(name, getattr(self, name), allow_zero=name.startswith("min_"))
        for target, value in self.phone_ms_by_target.items():
            _positive(f"phone_ms[{target}]", value)
        if self.stat not in _STATS:
            raise ConfigError(f"unknown latency statistic {self.stat!r}", where="stat", fix=f"use one of {_STATS}")

    @property
    def empty(self) -> bool:
        """True when no limit is set."""
        return all(getattr(self, f.name) in (None, {}) for f in fields(self) if f.name != "stat")

    def phone_limit(self, target: str | None) -> float | None:
        """The phone latency limit for ``target`` (its override, else ``phone_ms``)."""
        return self.phone_ms_by_target.get(target or "", self.phone_ms)

    def merged(self, override: Budget) -> Budget:
        """These limits with every limit ``override`` sets applied on top."""
        values = {f.name: getattr(override, f.name) if getattr(override, f.name) not in (None, {})
                  else getattr(self, f.name) for f in fields(self)}
        values["phone_ms_by_target"] = {**self.phone_ms_by_target, **override.phone_ms_by_target}
        values["stat"] = override.stat if override.stat != "p50" else self.stat
        return Budget(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {**asdict(self), "phone_ms_by_target": dict(self.phone_ms_by_target)}


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a {'' if allow_zero else 'positive '}number, got {value!r}", where=name)


@dataclass(frozen=True, kw_only=True)
class BudgetCheck:
    """The outcome of one limit on one artifact, report or estimate.

    Attributes:
        report: what was checked, with where its number comes from (``conv/x.onnx (host, measured)``).
        artifact: the artifact path.
        metric: ``latency_p50_ms``, ``artifact_size_mb``, ``memory_delta_mb``, ``min_cosine``, ``min_psnr_db``.
        limit: the limit, in the metric's unit.
        value: the value checked (None for an error).
        status: ``pass``, ``fail`` or ``error`` (configured but not evaluable; ``message`` says why).
        message: one line for logs.
        kind: one of ``CHECK_KINDS`` (what ``allow_errors`` names).
        source: where the value comes from: ``file``, ``parity``, ``host``, ``device`` or ``estimate``.
        target: the phone target a phone check is for, if any.
        reason: for an ``error``, why the check could not be evaluated.
    """

    report: str
    artifact: str
    metric: str
    limit: float
    value: float | None
    status: str
    message: str
    kind: str = "host"
    source: str = "host"
    target: str | None = None
    reason: str | None = None

    @property
    def passed(self) -> bool:
        """True only when the limit was evaluated and met."""
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def evaluate(label: str, artifact: str, metric: str, limit: float, value: float | None, *, kind: str,
             source: str, unit: str = "", floor: bool = False, target: str | None = None,
             missing: str | None = None) -> BudgetCheck:
    """One check: ``value`` against ``limit`` (a ceiling, or a floor when ``floor``).

    ``value`` None makes an ``error`` check whose message is ``missing`` (why it could not be evaluated).
    """
    unit_s = f" {unit}" if unit else ""
    common = dict(report=label, artifact=artifact, metric=metric, limit=limit, kind=kind, source=source,
                  target=target)
    if value is None:
        why = missing or f"{metric} was not measured"
        return BudgetCheck(**common, value=None, status="error", reason=why,
                           message=f"{label}: {metric} could not be checked against {limit:g}{unit_s}: {why}")
    failed = value < limit if floor else value > limit
    relation = ("below the floor of" if failed else "meets the floor of") if floor else (
        "EXCEEDS the budget of" if failed else "within the budget of")
    return BudgetCheck(**common, value=round(float(value), 6), status="fail" if failed else "pass",
                       message=f"{label}: {metric} {value:.4g}{unit_s} {relation} {limit:g}{unit_s}")


def check_report(report: LatencyReport, budget: Budget, *, label: str | None = None) -> list[BudgetCheck]:
    """Latency, size and memory limits on one latency report (host or phone, by its ``source``)."""
    label = label or report.name
    checks: list[BudgetCheck] = []
    on_phone = report.source == "device"
    limit = budget.phone_limit(report.target) if on_phone else budget.host_ms
    where = f"{label} ({'phone' if on_phone else 'host'}, measured)"
    if limit is not None:
        checks.append(evaluate(where, report.artifact, f"latency_{budget.stat}_ms", limit,
                               getattr(report, f"{budget.stat}_ms"), kind="phone" if on_phone else "host",
                               source=report.source, unit="ms", target=report.target if on_phone else None,
                               missing=f"the runtime did not report a {budget.stat}"))
    if budget.size_mb is not None:
        size = None if report.artifact_size_bytes is None else report.artifact_size_bytes / MIB
        checks.append(evaluate(label, report.artifact, "artifact_size_mb", budget.size_mb, size, kind="size",
                               source="file", unit="MiB", missing="the artifact's size is unknown"))
    if budget.memory_mb is not None:
        checks.append(evaluate(where, report.artifact, "memory_delta_mb", budget.memory_mb, report.memory_delta_mb,
                               kind="memory", source=report.source, unit="MiB",
                               missing=f"{report.runtime} on {report.device.get('name', report.source)} "
                                       "does not report peak memory"))
    return checks


def check_budgets(reports: Sequence[LatencyReport], budget: Budget) -> list[BudgetCheck]:
    """Check every report against every limit of ``budget``.

    Args:
        reports: latency reports (host or phone measurements).
        budget: the limits.

    Returns:
        One ``BudgetCheck`` per (report, limit), in report order.

    Example:
        >>> checks = check_budgets([report], Budget(host_ms=30))  # doctest: +SKIP
    """
    return [c for r in reports for c in check_report(r, budget)]


def failed_checks(checks: Sequence[BudgetCheck], allow_errors: bool | Collection[str] = False) -> list[BudgetCheck]:
    """Checks that fail the gate: every ``fail``, and every ``error`` whose kind is not allowed."""
    def allowed(c: BudgetCheck) -> bool:
        return allow_errors is True or (not isinstance(allow_errors, bool) and c.kind in allow_errors)

    return [c for c in checks if c.status == "fail" or (c.status == "error" and not allowed(c))]


def enforce(checks: Sequence[BudgetCheck], *, allow_errors: bool | Collection[str] = False) -> None:
    """Raise ``BudgetError`` naming every failed (or not allowed unevaluable) check; return quietly otherwise.

    Raises:
        BudgetError: at least one check failed or could not be evaluated.
    """
    failed = failed_checks(checks, allow_errors)
    if failed:
        lines = "; ".join(c.message for c in failed)
        raise BudgetError(f"{len(failed)} budget check(s) failed: {lines}", where=failed[0].artifact,
                          fix="shrink the model (prune, quantize: e.g. an int8 recipe) or raise the budget; "
                              "for a check that could not run, fix its cause or allow it (allow_errors)")


def junit_xml(checks: Sequence[BudgetCheck], *, suite: str = "mobilekit.profiling",
              allow_errors: bool | Collection[str] = False) -> bytes:
    """JUnit XML for ``checks``: one testcase per check; ``fail`` is a failure, ``error`` an error.

    An allowed error is written as skipped with its reason, so the CI page still shows it.
    """
    gate = {id(c) for c in failed_checks(checks, allow_errors)}
    failures = sum(c.status == "fail" for c in checks)
    errors = sum(c.status == "error" and id(c) in gate for c in checks)
    skipped = sum(c.status == "error" and id(c) not in gate for c in checks)
    root = ET.Element("testsuites", name="mobilekit", tests=str(len(checks)), failures=str(failures),
                      errors=str(errors))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)), failures=str(failures),
                       errors=str(errors), skipped=str(skipped))
    for c in checks:
        relation = ">=" if c.metric.startswith("min_") else "<="
        case = ET.SubElement(ts, "testcase", classname=c.report, name=f"{c.metric} {relation} {c.limit:g}", time="0")
        if c.status == "fail":
            ET.SubElement(case, "failure", message=c.message, type="BudgetError").text = c.message
        elif c.status == "error" and id(c) in gate:
            ET.SubElement(case, "error", message=c.message, type="NotEvaluated").text = c.message
        elif c.status == "error":
            ET.SubElement(case, "skipped", message=f"allowed: {c.message}")
        else:
            ET.SubElement(case, "system-out").text = c.message
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_junit(checks: Sequence[BudgetCheck], path: Path, *, suite: str = "mobilekit.profiling",
                allow_errors: bool | Collection[str] = False) -> Path:
    """Write ``checks`` as a JUnit XML file atomically and return its path.

    Example:
        >>> write_junit(check_budgets(reports, Budget(host_ms=30)), Path("budget.xml"))  # doctest: +SKIP
    """
    return write_bytes_atomic(Path(path), junit_xml(checks, suite=suite, allow_errors=allow_errors))
