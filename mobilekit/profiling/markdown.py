"""Markdown summary of latency reports, for CI logs and pull-request comments."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mobilekit.profiling.budget import BudgetCheck
from mobilekit.profiling.per_op import top_ops
from mobilekit.profiling.report import LatencyReport


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def render_markdown(reports: Sequence[LatencyReport], *, estimates: Sequence[Any] = (),
                    checks: Sequence[BudgetCheck] = (), title: str = "mobilekit latency", top: int = 5) -> str:
    """A Markdown page: one table row per report, estimates, budget results and the top ops.

    Args:
        reports: measured reports.
        estimates: ``LatencyEstimate`` objects or their ``to_dict()`` dicts.
        checks: budget checks to list (from ``check_budgets``).
        title: the heading.
        top: ops listed per report.

    Returns:
        Markdown text (GitHub-flavoured tables, ``<details>`` for per-op lists).

    Example:
        >>> text = render_markdown([report])  # doctest: +SKIP
    """
    lines = [f"## {title}", ""]
    if checks:
        failed = [c for c in checks if c.status == "fail"]
        errors = [c for c in checks if c.status == "error"]
        lines += [f"**Budget: {'FAILED' if failed else 'ERRORS' if errors else 'passed'}** "
                  f"({sum(c.passed for c in checks)}/{len(checks)} checks pass"
                  + (f", {len(errors)} could not be evaluated" if errors else "") + ")", ""]
    if reports:
        lines += ["| artifact | target | device | source | runtime | p50 ms (95% CI) | p90 ms | p99 ms | "
                  "cold load ms | first ms | peak MiB | +model MiB | size MiB | samples |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in reports:
            ci = f" ({_f(r.ci95_low_ms)}–{_f(r.ci95_high_ms)})" if r.ci95_low_ms is not None else ""
            size = None if r.artifact_size_bytes is None else r.artifact_size_bytes / 2**20
            lines.append("| " + " | ".join(_cell(x) for x in (
                Path(r.artifact).name, r.target or "–", r.device.get("name", "?"), r.source, r.runtime,
                f"{_f(r.p50_ms)}{ci}", _f(r.p90_ms), _f(r.p99_ms), _f(r.cold_load_ms, 1),
                _f(r.first_inference_ms, 2), _f(r.peak_memory_mb, 1), _f(r.memory_delta_mb, 1), _f(size, 3),
                f"{len(r.samples_ms)}{'' if r.converged in (None, True) else ' (not converged)'}")) + " |")
        lines.append("")
    if estimates:
        lines += ["### Estimates", "", "| target | model | format | precision | unit | ms (low–high) | bound |",
                  "|---|---|---|---|---|---|---|"]
        for e in map(_as_dict, estimates):
            layers = e.get("per_layer") or []
            mem = sum(1 for x in layers if x.get("bound") == "memory")
            bound = f"{mem}/{len(layers)} layers memory-bound" if layers else "–"
            lines.append("| " + " | ".join(_cell(x) for x in (
                e.get("target", "?"), e.get("model", "?"), e.get("format") or "–", e.get("precision", "?"),
                e.get("compute_unit", "?"), f"{_f(e.get('ms'))} ({_f(e.get('low_ms'))}–{_f(e.get('high_ms'))})",
                bound)) + " |")
        lines.append("")
    if checks:
        lines += ["### Budget checks", "", "| | check | value | limit | note |", "|---|---|---|---|---|"]
        for c in checks:
            mark = {"pass": "✅ pass", "fail": "❌ fail", "error": "⚠️ error"}[c.status]
            note = c.reason or ""
            lines.append(f"| {mark} | {_cell(c.report)}: {c.metric} | {_f(c.value)} | {c.limit:g} | {_cell(note)} |")
        lines.append("")
    for r in reports:
        if not r.per_op:
            continue
        lines += [f"<details><summary>Top ops: {_cell(r.name)} ({r.per_op_source})</summary>", "",
                  "| op | ms per inference | share |", "|---|---|---|"]
        total = sum(float(o.get("ms", 0.0)) for o in r.per_op) or 1.0
        for op, ms in top_ops(r.per_op, top):
            lines.append(f"| {_cell(op)} | {ms:.4f} | {100 * ms / total:.1f}% |")
        lines += ["", "</details>", ""]
    for r in reports:
        for note in r.notes:
            lines.append(f"> {_cell(r.name)}: {_cell(note)}")
    return "\n".join(lines).rstrip() + "\n"
