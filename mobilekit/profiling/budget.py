"""Budgets: latency, artifact size and peak memory limits that fail a build, plus JUnit XML.

* ``max_ms`` applies to a latency statistic of each report (``stat``: ``p50`` by default, or
  ``p90``/``p99``/``mean``).
* ``max_mb`` applies to the **artifact size on disk** (MiB = 2**20 bytes): what the app ships.
* ``max_memory_mb`` applies to the **peak resident memory the model adds** while running
  (``memory_delta_mb``: the process's peak above its footprint before loading, MiB).

``check_budgets`` returns one ``BudgetCheck`` per (report, limit); ``enforce`` raises
``BudgetError`` listing every failure; ``write_junit`` writes them as a JUnit XML file that CI
systems (GitHub Actions, GitLab, Jenkins) display as test results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from mobilekit._io import write_bytes_atomic
from mobilekit.errors import BudgetError, ConfigError
from mobilekit.profiling.report import LatencyReport

_STATS = ("p50", "p90", "p99", "mean")
MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Limits a build must meet; None leaves a quantity unchecked.

    Attributes:
        max_ms: most milliseconds per inference for statistic ``stat``.
        max_mb: largest artifact size on disk, MiB.
        max_memory_mb: most peak resident memory the model adds while running, MiB.
        stat: the latency statistic checked against ``max_ms`` (``p50``, ``p90``, ``p99``, ``mean``).
    """

    max_ms: float | None = None
    max_mb: float | None = None
    max_memory_mb: float | None = None
    stat: str = "p50"

    def __post_init__(self) -> None:
        for name in ("max_ms", "max_mb", "max_memory_mb"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}", where=name)
        if self.stat not in _STATS:
            raise ConfigError(f"unknown latency statistic {self.stat!r}", where="stat", fix=f"use one of {_STATS}")

    @property
    def empty(self) -> bool:
        """True when no limit is set."""
        return self.max_ms is None and self.max_mb is None and self.max_memory_mb is None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class BudgetCheck:
    """The outcome of one limit on one report.

    Attributes:
        report: the report's label (``<artifact> @ <device>``).
        artifact: the artifact path.
        metric: ``latency_p50_ms``, ``artifact_size_mb`` or ``memory_delta_mb``.
        limit: the limit, in the metric's unit.
        value: the measured value (None when the report lacks it).
        status: ``pass``, ``fail`` or ``skipped`` (no value to check).
        message: one line for logs.
    """

    report: str
    artifact: str
    metric: str
    limit: float
    value: float | None
    status: str
    message: str

    @property
    def passed(self) -> bool:
        """True unless the limit was exceeded."""
        return self.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def _check(report: LatencyReport, metric: str, unit: str, value: float | None, limit: float) -> BudgetCheck:
    if value is None:
        return BudgetCheck(report=report.name, artifact=report.artifact, metric=metric, limit=limit, value=None,
                           status="skipped", message=f"{report.name}: {metric} not measured, limit {limit:g} {unit}")
    ok = value <= limit
    verb = "within" if ok else "EXCEEDS"
    return BudgetCheck(report=report.name, artifact=report.artifact, metric=metric, limit=limit, value=value,
                       status="pass" if ok else "fail",
                       message=f"{report.name}: {metric} {value:.3f} {unit} {verb} the budget of {limit:g} {unit}")


def check_budgets(reports: Sequence[LatencyReport], budget: Budget) -> list[BudgetCheck]:
    """Check every report against every limit of ``budget``.

    Args:
        reports: latency reports.
        budget: the limits.

    Returns:
        One ``BudgetCheck`` per (report, limit set), in report order.

    Example:
        >>> checks = check_budgets([report], Budget(max_ms=30))  # doctest: +SKIP
    """
    checks: list[BudgetCheck] = []
    for r in reports:
        if budget.max_ms is not None:
            value = getattr(r, f"{budget.stat}_ms")
            checks.append(_check(r, f"latency_{budget.stat}_ms", "ms", value, budget.max_ms))
        if budget.max_mb is not None:
            size = None if r.artifact_size_bytes is None else r.artifact_size_bytes / MIB
            checks.append(_check(r, "artifact_size_mb", "MiB", size, budget.max_mb))
        if budget.max_memory_mb is not None:
            checks.append(_check(r, "memory_delta_mb", "MiB", r.memory_delta_mb, budget.max_memory_mb))
    return checks


def enforce(checks: Sequence[BudgetCheck]) -> None:
    """Raise ``BudgetError`` naming every failed check; return quietly when all pass.

    Raises:
        BudgetError: at least one check failed.
    """
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        lines = "; ".join(c.message for c in failed)
        raise BudgetError(f"{len(failed)} budget check(s) failed: {lines}", where=failed[0].artifact,
                          fix="shrink the model (prune, quantize: e.g. an int8 recipe) or raise the budget")


def junit_xml(checks: Sequence[BudgetCheck], *, suite: str = "mobilekit.profiling") -> bytes:
    """JUnit XML for ``checks``: one testcase per check, failures and skips marked."""
    failures = sum(c.status == "fail" for c in checks)
    skipped = sum(c.status == "skipped" for c in checks)
    root = ET.Element("testsuites", name="mobilekit", tests=str(len(checks)), failures=str(failures))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)), failures=str(failures),
                       errors="0", skipped=str(skipped))
    for c in checks:
        case = ET.SubElement(ts, "testcase", classname=c.report, name=f"{c.metric} <= {c.limit:g}", time="0")
        if c.status == "fail":
            node = ET.SubElement(case, "failure", message=c.message, type="BudgetError")
            node.text = c.message
        elif c.status == "skipped":
            ET.SubElement(case, "skipped", message=c.message)
        else:
            ET.SubElement(case, "system-out").text = c.message
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_junit(checks: Sequence[BudgetCheck], path: Path, *, suite: str = "mobilekit.profiling") -> Path:
    """Write ``checks`` as a JUnit XML file atomically and return its path.

    Example:
        >>> write_junit(check_budgets(reports, Budget(max_ms=30)), Path("budget.xml"))  # doctest: +SKIP
    """
    return write_bytes_atomic(Path(path), junit_xml(checks, suite=suite))
