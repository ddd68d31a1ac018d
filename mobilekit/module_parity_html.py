"""The per-module parity map as a self-contained HTML page: a PSNR-per-module line chart and the table.

Inline SVG and CSS only, nothing from the network, in the style of the latency report
(``mobilekit.profiling.html``), whose inline script marks the page once the chart is laid out.
"""

from __future__ import annotations

from pathlib import Path

from mobilekit._io import write_text_atomic
from mobilekit.module_parity import CAVEAT, ParityMap
from mobilekit.profiling.html import _CSS, _SCRIPT, _e, _svg

_PSNR_CAP = 150.0  # dB shown at most; exact taps (999) sit on the top edge


def _g(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _common_prefix(paths: list[str]) -> str:
    """The dotted prefix every path shares (``dit.``), or ``""``."""
    if len(paths) < 2:
        return ""
    parts = [p.split(".") for p in paths]
    shared = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    shared = shared[:min(len(p) for p in parts) - 1]
    return ".".join(shared) + "." if shared else ""


def psnr_line_svg(pm: ParityMap, *, width: int = 980, height: int = 340) -> str:
    """PSNR (dB) per tapped module along execution order, the tolerance floor, and the first module over it."""
    left, right, top, bottom = 56, 110, 16, 100
    w, h = width - left - right, height - top - bottom
    n = len(pm.rows)
    floor = pm.tolerance.get("psnr_db", 0.0)
    values = [min(r.psnr_db, _PSNR_CAP) if r.psnr_db is not None and r.psnr_db == r.psnr_db else None
              for r in pm.rows]  # None: a tap that could not be built (status error), or NaN
    known = [v for v in values if v is not None]
    hi = max([*known, floor]) * 1.08 + 1.0
    lo = max(0.0, min([*known, floor]) - 5.0)
    sx = (lambda i: left + (w / 2 if n == 1 else i * w / (n - 1)))
    sy = (lambda v: top + h - (v - lo) / (hi - lo) * h)
    body = [f'<line class="mk-axis" x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}"/>',
            f'<line class="mk-axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + h}"/>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        body.append(f'<line class="mk-grid" x1="{left}" y1="{sy(v):.1f}" x2="{left + w}" y2="{sy(v):.1f}"/>'
                    f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    body.append(f'<line x1="{left}" y1="{sy(floor):.1f}" x2="{left + w}" y2="{sy(floor):.1f}" stroke="#cf222e" '
                f'stroke-dasharray="6 4" stroke-width="1.5"><title>tolerance: PSNR {floor:g} dB</title></line>'
                f'<text x="{left + w - 4}" y="{sy(floor) - 5:.1f}" text-anchor="end" fill="#cf222e">'
                f'floor {floor:g} dB</text>')
    first = next((i for i, r in enumerate(pm.rows) if r.module == pm.first_over), None)
    if first is not None:
        x = sx(first)
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#9a6700" '
                    f'stroke-width="1.5" stroke-dasharray="2 3"/><text x="{x + 4:.1f}" y="{top + 12}" '
                    f'fill="#9a6700">first over: {_e(pm.first_over)}</text>')
    prefix = _common_prefix([r.module for r in pm.rows])
    points = " ".join(f"{sx(i):.1f},{sy(v):.1f}" for i, v in enumerate(values) if v is not None)
    body.append(f'<polyline points="{points}" fill="none" stroke="#4e79a7" stroke-width="2"/>')
    for i, (r, v) in enumerate(zip(pm.rows, values, strict=True)):
        if v is None:
            body.append(f'<text x="{sx(i):.1f}" y="{top + h - 6}" text-anchor="middle" fill="#9a6700">✕'
                        f'<title>{_e(r.module)}: {_e(r.reason or r.status)}</title></text>')
        else:
            color = "#1a7f37" if r.ok else "#cf222e"
            body.append(f'<circle class="mk-point" cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="{5 if r.ok else 6}" '
                        f'fill="{color}"><title>{_e(r.module)} ({_e(r.type)}): PSNR {_g(r.psnr_db)} dB, cosine '
                        f'{_g(r.cosine, 7)}, {r.status}</title></circle>')
        short = r.module[len(prefix):] or r.module
        label = short if len(short) <= 24 else "…" + short[-23:]
        body.append(f'<text transform="translate({sx(i) + 3:.1f},{top + h + 10}) rotate(40)" '
                    f'text-anchor="start">{_e(label)}</text>')
    if prefix:
        body.append(f'<text x="{left + w / 2:.1f}" y="{height - 4}" text-anchor="middle">modules of '
                    f'{_e(prefix.rstrip("."))}, in execution order</text>')
    body.append(f'<text transform="translate(14,{top + h / 2:.1f}) rotate(-90)" text-anchor="middle">'
                f'PSNR vs PyTorch (dB, capped at {_PSNR_CAP:.0f})</text>')
    return _svg("psnr-by-module", width, height, body, "PSNR per module along execution order")


def render_parity_map_html(pm: ParityMap, *, title: str | None = None) -> str:
    """The whole page for one ParityMap."""
    name = pm.artifact or pm.recipe.name
    head = title or f"Per-module parity: {name}"
    if pm.first_over is not None:
        verdict = f'<p class="st-fail">Error enters at <b>{_e(pm.first_over)}</b>: the first module over tolerance.</p>'
    elif pm.final.status == "fail":
        verdict = '<p class="st-fail">Every tap is within tolerance, but the final output is not.</p>'
    elif any(r.status == "error" for r in pm.rows):
        verdict = ('<p class="st-pass">Every module that could be tapped, and the final output, are within '
                   'tolerance; <span class="st-error">some could not be tapped (see the table).</span></p>')
    else:
        verdict = '<p class="st-pass">Every tapped module and the final output are within tolerance.</p>'
    final = pm.final
    facts = [("recipe", pm.recipe.name), ("runtime", pm.runtime),
             ("tolerance", f"cosine ≥ {pm.tolerance.get('cosine')}, PSNR ≥ {pm.tolerance.get('psnr_db')} dB"),
             ("inputs compared", pm.inputs),
             ("final output (tapped artifact)", f"{final.status}: cosine {_g(final.cosine, 7)}, "
                                                f"PSNR {_g(final.psnr_db)} dB"),
             ("shipped artifact's parity", f"{pm.shipped.status}: cosine {_g(pm.shipped.cosine, 7)}, PSNR "
                                           f"{_g(pm.shipped.psnr_db)} dB" if pm.shipped else "–")]
    facts_html = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    rows = []
    for i, r in enumerate(pm.rows):
        cls = {"pass": "st-pass", "fail": "st-fail"}.get(r.status, "st-error")
        mark = " ◀ first over" if r.module == pm.first_over else ""
        rows.append(f"<tr><td>{i}</td><td>{_e(r.module)}{_e(mark)}</td><td>{_e(r.type)}</td>"
                    f"<td>{_e('×'.join(map(str, r.shape)))}</td><td>{_g(r.cosine, 7)}</td><td>{_g(r.psnr_db)}</td>"
                    f"<td>{_g(r.max_abs_error, 3)}</td><td>{_g(r.rel_error, 3)}</td><td>{_g(r.growth, 3)}</td>"
                    f'<td class="{cls}">{_e(r.status)}</td><td class="why">{_e(r.reason or "")}</td></tr>')
    table = ("<table><tr><th>#</th><th>module</th><th>type</th><th>shape</th><th>cosine</th><th>PSNR (dB)</th>"
             "<th>max abs</th><th>rel. error</th><th>growth ×</th><th>status</th><th>why</th></tr>" + "".join(rows) + "</table>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in pm.notes if n != CAVEAT)
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>" + _e(head) + "</title><style>" + _CSS
            + "td:nth-child(2),th:nth-child(2),td:nth-child(3),th:nth-child(3),th:last-child{text-align:left}</style></head><body>"
            + f"<h1>{_e(head)}</h1>{verdict}<table>{facts_html}</table>"
            + "<h2>PSNR along the graph</h2>" + psnr_line_svg(pm)
            + "<h2>Module by module</h2>" + table
            + '<p class="note">Growth: a row\'s relative error (‖artifact − PyTorch‖ / ‖PyTorch‖) divided by '
              "the previous row's. Rows are in the order the modules finished in PyTorch's forward.</p>"
            + f'<p class="note">Caveat: {_e(CAVEAT)}; the final output of the tapped artifact is compared '
              "too.</p>" + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
            + f"<script>{_SCRIPT}</script></body></html>")


def write_parity_map_html(path: str | Path, pm: ParityMap) -> Path:
    """Write the page for ``pm`` to ``path`` atomically and return the path."""
    return write_text_atomic(Path(path), render_parity_map_html(pm))
