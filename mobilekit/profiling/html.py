"""A self-contained HTML latency report: inline SVG charts, inline CSS, nothing from the network.

Charts: the latency distribution of each measured report (histogram with the median and its
95% CI), the top ops (horizontal bars), one bar per target across measurements and estimates
(with the estimate's low–high range), and each estimate's position on its target's roofline
(log-log: arithmetic intensity in FLOP/byte against GOP/s). Estimates are read from
``LatencyEstimate.to_dict()`` dicts so this module does not import the estimator.

A small inline script marks the page once the browser has laid the charts out
(``<html data-mk-rendered="ok" data-mk-bars="N">``), which the headless-browser test checks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mobilekit._io import write_text_atomic
from mobilekit.profiling.per_op import top_ops
from mobilekit.profiling.report import LatencyReport

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
.mk-chart{background:#fff;border:1px solid #eee;margin:6px 0}.mk-chart text{font-size:11px;fill:#333}
.mk-axis{stroke:#888;stroke-width:1}.mk-grid{stroke:#eee;stroke-width:1}
.note{color:#666;font-size:12px}.charts{display:flex;flex-wrap:wrap;gap:16px}
.st-pass{color:#1a7f37}.st-fail{color:#cf222e;font-weight:600}.st-error{color:#9a6700;font-weight:600}
td.why{text-align:left;color:#555;font-size:12px}
"""
_SCRIPT = """
(function(){
  var charts=document.querySelectorAll('svg.mk-chart'), bars=0, ok=true;
  charts.forEach(function(svg){
    var marks=svg.querySelectorAll('.mk-bar,.mk-point');
    if(!marks.length){ok=false;}
    marks.forEach(function(m){var b=m.getBBox(); if(b.width>0||b.height>0){bars++;}});
    svg.setAttribute('data-mk-drawn', String(marks.length));
  });
  document.documentElement.setAttribute('data-mk-bars', String(bars));
  document.documentElement.setAttribute('data-mk-rendered', ok && charts.length ? 'ok' : 'empty');
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _svg(kind: str, width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg class="mk-chart" data-chart="{_e(kind)}" role="img" aria-label="{_e(label)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">' + "".join(body) + "</svg>")


def histogram_svg(samples: Sequence[float], *, p50: float | None = None, ci: tuple[float, float] | None = None,
                  width: int = 520, height: int = 220) -> str:
    """An SVG histogram of latency samples (ms), with the median line and its 95% CI band."""
    left, right, top, bottom = 44, 12, 12, 34
    w, h = width - left - right, height - top - bottom
    lo, hi = min(samples), max(samples)
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    nbins = int(min(40, max(5, math.sqrt(len(samples)))))
    counts = [0] * nbins
    for x in samples:
        counts[min(nbins - 1, int((x - lo) / (hi - lo) * nbins))] += 1
    peak = max(counts) or 1
    sx = lambda v: left + (v - lo) / (hi - lo) * w  # noqa: E731
    body = [f'<line class="mk-axis" x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}"/>',
            f'<line class="mk-axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + h}"/>']
    if ci is not None:
        body.append(f'<rect x="{sx(ci[0]):.1f}" y="{top}" width="{max(1.0, sx(ci[1]) - sx(ci[0])):.1f}" '
                    f'height="{h}" fill="#f28e2b" opacity="0.18"><title>95% CI of the median: '
                    f'{ci[0]:.4f}–{ci[1]:.4f} ms</title></rect>')
    bw = w / nbins
    for i, c in enumerate(counts):
        bh = h * c / peak
        a, b = lo + (hi - lo) * i / nbins, lo + (hi - lo) * (i + 1) / nbins
        body.append(f'<rect class="mk-bar" x="{left + i * bw + 0.5:.1f}" y="{top + h - bh:.1f}" '
                    f'width="{max(bw - 1, 0.5):.1f}" height="{bh:.1f}" fill="{_PALETTE[0]}">'
                    f'<title>{a:.4f}–{b:.4f} ms: {c} samples</title></rect>')
    if p50 is not None:
        body.append(f'<line x1="{sx(p50):.1f}" y1="{top}" x2="{sx(p50):.1f}" y2="{top + h}" stroke="#e15759" '
                    f'stroke-width="2"><title>p50 {p50:.4f} ms</title></line>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        v = lo + (hi - lo) * frac
        body.append(f'<text x="{sx(v):.1f}" y="{top + h + 14}" text-anchor="{anchor}">{v:.4g}</text>')
    body.append(f'<text x="{left + w / 2:.1f}" y="{height - 4}" text-anchor="middle">latency (ms)</text>')
    body.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak}</text>')
    body.append(f'<text x="{left - 6}" y="{top + h}" text-anchor="end">0</text>')
    return _svg("histogram", width, height, body, "latency distribution")


def hbar_svg(items: Sequence[tuple[str, float, float | None, float | None]], *, unit: str = "ms",
             kind: str = "bars", width: int = 640, colors: Sequence[str] | None = None) -> str:
    """Horizontal bars: ``(label, value, low, high)`` with an optional low–high whisker."""
    row, left, right, top = 22, 230, 70, 8
    height = top * 2 + row * len(items) + 18
    w = width - left - right
    vmax = max([v for _, v, _, _ in items] + [hh for *_, hh in items if hh is not None] + [1e-12])
    body = [f'<line class="mk-axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + row * len(items)}"/>']
    for i, (label, value, low, high) in enumerate(items):
        y = top + i * row
        color = (colors[i] if colors else _PALETTE[i % len(_PALETTE)])
        short = label if len(label) <= 36 else label[:34] + "…"
        body.append(f'<text x="{left - 6}" y="{y + row * 0.68:.1f}" text-anchor="end">{_e(short)}</text>')
        bw = max(w * value / vmax, 0.5)
        body.append(f'<rect class="mk-bar" x="{left}" y="{y + 3}" width="{bw:.1f}" height="{row - 6}" '
                    f'fill="{color}"><title>{_e(label)}: {value:.4f} {unit}</title></rect>')
        if low is not None and high is not None:
            x1, x2 = left + w * low / vmax, left + w * high / vmax
            ym = y + row / 2
            body.append(f'<line x1="{x1:.1f}" y1="{ym:.1f}" x2="{x2:.1f}" y2="{ym:.1f}" stroke="#222" '
                        f'stroke-width="1.5"><title>{low:.4f}–{high:.4f} {unit}</title></line>')
        end = max(bw, w * high / vmax if high is not None else 0.0)
        body.append(f'<text x="{left + end + 4:.1f}" y="{y + row * 0.68:.1f}">{_fmt(value)} {unit}</text>')
    return _svg(kind, width, height, body, kind)


def roofline_svg(points: Sequence[dict[str, Any]], *, width: int = 560, height: int = 360) -> str:
    """Log-log roofline: per point ``{label, peak_gops, bandwidth_gbps, intensity, achieved_gops}``."""
    left, right, top, bottom = 60, 16, 12, 40
    w, h = width - left - right, height - top - bottom
    xs = [p["intensity"] for p in points] + [p["peak_gops"] / p["bandwidth_gbps"] for p in points]
    ys = [p["achieved_gops"] for p in points] + [p["peak_gops"] for p in points]
    xmin, xmax = min(xs) / 10, max(xs) * 10
    ymin, ymax = min(ys) / 10, max(ys) * 3
    lx, ly = math.log10(xmin), math.log10(ymin)
    dx, dy = math.log10(xmax) - lx, math.log10(ymax) - ly
    sx = lambda v: left + (math.log10(v) - lx) / dx * w  # noqa: E731
    sy = lambda v: top + h - (math.log10(v) - ly) / dy * h  # noqa: E731
    body = [f'<line class="mk-axis" x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}"/>',
            f'<line class="mk-axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + h}"/>']
    for k in range(math.ceil(lx), math.floor(lx + dx) + 1):
        x = sx(10.0 ** k)
        body.append(f'<line class="mk-grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}"/>'
                    f'<text x="{x:.1f}" y="{top + h + 14}" text-anchor="middle">1e{k}</text>')
    for k in range(math.ceil(ly), math.floor(ly + dy) + 1):
        y = sy(10.0 ** k)
        body.append(f'<line class="mk-grid" x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}"/>'
                    f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">1e{k}</text>')
    for i, p in enumerate(points):
        color = _PALETTE[i % len(_PALETTE)]
        ridge = p["peak_gops"] / p["bandwidth_gbps"]
        path = (f'M{sx(xmin):.1f},{sy(max(ymin, p["bandwidth_gbps"] * xmin)):.1f} '
                f'L{sx(ridge):.1f},{sy(p["peak_gops"]):.1f} L{sx(xmax):.1f},{sy(p["peak_gops"]):.1f}')
        body.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.5">'
                    f'<title>{_e(p["label"])}: {p["bandwidth_gbps"]:g} GB/s, {p["peak_gops"]:g} GOP/s</title></path>')
        body.append(f'<circle class="mk-point" cx="{sx(p["intensity"]):.1f}" cy="{sy(p["achieved_gops"]):.1f}" r="5" '
                    f'fill="{color}" stroke="#222"><title>{_e(p["label"])}: intensity {p["intensity"]:.3g} FLOP/B, '
                    f'{p["achieved_gops"]:.3g} GOP/s</title></circle>')
        body.append(f'<text x="{left + w - 4}" y="{top + 14 + 14 * i}" text-anchor="end" fill="{color}">'
                    f'{_e(p["label"])}</text>')
    body.append(f'<text x="{left + w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                'arithmetic intensity (FLOP/byte)</text>')
    body.append(f'<text x="14" y="{top + h / 2:.1f}" text-anchor="middle" '
                f'transform="rotate(-90 14 {top + h / 2:.1f})">GOP/s</text>')
    return _svg("roofline", width, height, body, "roofline")


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _summary_table(reports: Sequence[LatencyReport]) -> str:
    head = ("artifact", "target", "device", "source", "runtime", "p50 ms", "95% CI ms", "CPU p50 ms", "p90 ms",
            "p99 ms",
            "cold load ms", "first ms", "peak MiB", "+model MiB", "samples")
    rows = []
    for r in reports:
        ci = f"{_fmt(r.ci95_low_ms)}–{_fmt(r.ci95_high_ms)}" if r.ci95_low_ms is not None else "–"
        cells = (Path(r.artifact).name, r.target or "–", r.device.get("name", "?"), r.source, r.runtime,
                 _fmt(r.p50_ms), ci, _fmt(r.cpu_p50_ms), _fmt(r.p90_ms), _fmt(r.p99_ms), _fmt(r.cold_load_ms, 1),
                 _fmt(r.first_inference_ms, 2), _fmt(r.peak_memory_mb, 1), _fmt(r.memory_delta_mb, 1),
                 len(r.samples_ms))
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def render_html(reports: Sequence[LatencyReport], *, estimates: Sequence[Any] = (), checks: Sequence[Any] = (),
                title: str = "mobilekit latency report", top: int = 12, lead: str = "") -> str:
    """Render reports (and estimates) as one self-contained HTML page.

    Args:
        reports: measured ``LatencyReport`` objects.
        estimates: ``LatencyEstimate`` objects or their ``to_dict()`` dicts (target, ms, low_ms, high_ms, roofline;
            an optional ``artifact`` label names the bar).
        checks: budget checks (``BudgetCheck``) to list.
        title: page title.
        top: ops shown per report.
        lead: HTML placed right under the title (a build's verdict and artifact table); the caller escapes it.

    Returns:
        The HTML text (no external resources).

    Example:
        >>> page = render_html([report], estimates=[est.to_dict()])  # doctest: +SKIP
    """
    ests = [_as_dict(e) for e in estimates]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>", lead]
    if reports:
        parts.append("<h2>Summary</h2>" + _summary_table(reports))
    if checks:
        rows = "".join(f"<tr><td>{_e(c.report)}</td><td>{_e(c.metric)}</td><td>{_fmt(c.value)}</td>"
                       f"<td>{c.limit:g}</td><td class=\"st-{_e(c.status)}\">{_e(c.status)}</td>"
                       f"<td class=\"why\">{_e(c.reason or '')}</td>"
                       "</tr>" for c in checks)
        parts.append("<h2>Budgets</h2><table><tr><th>checked</th><th>metric</th><th>value</th><th>limit</th>"
                     f"<th>status</th><th>why not evaluated</th></tr>{rows}</table>")
    across: list[tuple[str, float, float | None, float | None]] = []
    colors: list[str] = []
    for r in reports:
        across.append((f"{r.target or '–'} · {r.source} · {Path(r.artifact).name}", r.p50_ms, r.ci95_low_ms,
                       r.ci95_high_ms))
        colors.append(_PALETTE[0] if r.source == "host" else _PALETTE[2])
    for e in ests:
        if e.get("ms") is not None:
            label = f"{e.get('target', '?')} · estimate · {e.get('compute_unit', '')} {e.get('precision', '')}"
            if e.get("artifact"):
                label += f" · {e['artifact']}"
            across.append((label, float(e["ms"]), e.get("low_ms"), e.get("high_ms")))
            colors.append(_PALETTE[1])
    if across:
        parts.append("<h2>Latency across targets</h2><p class=\"note\">p50 ms with the 95% CI of the median "
                     "(measured) or the low–high range (estimates). Blue: this host, green: a phone, "
                     "orange: estimate.</p>" + hbar_svg(across, kind="targets", colors=colors))
    roof = [{"label": f"{e.get('target', '?')} {e.get('compute_unit', '')} {e.get('precision', '')}".strip(),
             **{k: float(e["roofline"][k]) for k in ("peak_gops", "bandwidth_gbps", "intensity", "achieved_gops")}}
            for e in ests if isinstance(e.get("roofline"), dict)
            and all(float(e["roofline"].get(k) or 0) > 0
                    for k in ("peak_gops", "bandwidth_gbps", "intensity", "achieved_gops"))]
    if roof:
        parts.append("<h2>Roofline</h2><p class=\"note\">Each line is a target's roof (memory bandwidth × "
                     "intensity, capped by peak compute); the dot is where the model sits.</p>" + roofline_svg(roof))
    for r in reports:
        parts.append(f"<h2>{_e(r.name)}</h2><div class=\"charts\">")
        if r.samples_ms:
            ci = (r.ci95_low_ms, r.ci95_high_ms) if r.ci95_low_ms is not None and r.ci95_high_ms is not None else None
            parts.append(f"<div><h3>Latency distribution ({len(r.samples_ms)} samples)</h3>"
                         + histogram_svg(r.samples_ms, p50=r.p50_ms, ci=ci) + "</div>")
        if r.per_op:
            ops = top_ops(r.per_op, top)
            parts.append(f"<div><h3>Top ops ({_e(r.per_op_source)}, ms per inference)</h3>"
                         + hbar_svg([(name, ms, None, None) for name, ms in ops], kind="per-op") + "</div>")
        parts.append("</div>")
        for note in r.notes:
            parts.append(f"<p class=\"note\">{_e(note)}</p>")
    for e in ests:
        layers = sorted(e.get("per_layer") or [], key=lambda x: float(x.get("ms") or 0), reverse=True)[:top]
        if layers:
            parts.append(f"<h2>Estimate: {_e(e.get('target', '?'))} · {_e(e.get('model', ''))}</h2>"
                         "<h3>Slowest layers (estimated ms)</h3>"
                         + hbar_svg([(f"{x.get('name', '?')} ({x.get('bound', '?')})", float(x.get("ms") or 0),
                                      None, None) for x in layers], kind="per-layer"))
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_html(path: Path, reports: Sequence[LatencyReport], **kwargs: Any) -> Path:
    """Render with ``render_html`` and write the page atomically; returns the path."""
    return write_text_atomic(Path(path), render_html(reports, **kwargs))
