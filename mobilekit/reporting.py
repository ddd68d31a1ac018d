"""Build reports: the Markdown for CI logs and PR comments, and the self-contained HTML page."""

from __future__ import annotations

import html as _html
from typing import Any

from mobilekit.artifact import Artifact
from mobilekit.build_result import BuildResult
from mobilekit.profiling.html import render_html
from mobilekit.profiling.markdown import render_markdown


def _not_run(check: Any) -> str:
    """A parity record that has no numbers, in words: why it was not run, else its status."""
    return check.reason or check.status


def parity_text(a: Artifact) -> str:
    """One artifact's parity in words: status, worst cosine and PSNR, over how many inputs."""
    p = a.parity
    if p.status == "not-run" or p.cosine is None:
        return _not_run(p)
    return f"{p.status} (cos {p.cosine:.5f}, {p.psnr_db:.1f} dB" + (
        f", worst of {p.inputs} inputs)" if p.inputs > 1 else ")")


def sampling_text(a: Artifact) -> str:
    """One artifact's sampling-loop parity in words, or ``–`` when it was not asked for."""
    s = a.sampling
    if s is None:
        return "–"
    if s.status == "not-run" or s.cosine is None:
        return _not_run(s)
    return f"{s.status} (cos {s.cosine:.5f}, {s.psnr_db:.1f} dB after {s.steps} {s.scheduler} steps)"


def images_text(a: Artifact) -> str:
    """One artifact's output-image parity (8-bit pictures) in words, or ``–`` when the model has no image output."""
    im = a.images
    if im is None:
        return "–"
    if im.status == "not-run" or im.psnr_db is None:
        return _not_run(im)
    return (f"{im.status} ({im.psnr_db:.1f} dB, at most {im.max_level_diff} levels off, "
            f"{im.levels_off_pct:.2f}% > 1 level)")


def artifact_rows(result: BuildResult) -> list[list[str]]:
    """One row per artifact: model, file, recipe, targets, size, parity, sampling, built or cached."""
    rows = []
    for name, manifest in result.manifests.items():
        for a in manifest.artifacts:
            rows.append([name, a.label, a.recipe.name, ", ".join(a.targets), f"{a.size_bytes / 2**20:.2f} MiB",
                         parity_text(a), sampling_text(a), images_text(a),
                         "cached" if a.cached else f"built in {a.export_seconds:.1f} s"])
    return rows


def latency_rows(result: BuildResult) -> list[list[str]]:
    """One row per artifact and latency source: host p50 with its 95% CI, or a target's estimate band."""
    rows = []
    for m in result.reports:
        r = m.report
        ci = f"[{r.ci95_low_ms or 0:.2f}, {r.ci95_high_ms or 0:.2f}]"
        rows.append([m.model, m.label, "host (measured)", f"{r.p50_ms:.2f}", ci])
    for p in result.estimates:
        e = p.estimate
        rows.append([p.model, p.label, f"{e.target} (estimate, {e.compute_unit})",
                     f"{e.ms:.2f}", f"[{e.low_ms:.2f}, {e.high_ms:.2f}]"])
    return rows


LATENCY_COLUMNS = ["model", "artifact", "where", "p50 ms", "range ms"]
ARTIFACT_COLUMNS = ["model", "artifact", "recipe", "targets", "size", "parity vs PyTorch", "sampling loop vs PyTorch",
                    "output images (8-bit)", "export"]


def build_markdown(result: BuildResult) -> str:
    """The build as Markdown: verdict, artifacts, then measurements, estimates and budgets."""
    lines = [f"# mobilekit build: {result.verdict()}", "",
             f"{sum(len(m.artifacts) for m in result.manifests.values())} artifact(s), {result.exported} built, "
             f"the rest from the cache; {result.seconds:.1f} s.", "",
             "| " + " | ".join(ARTIFACT_COLUMNS) + " |", "|" + "---|" * len(ARTIFACT_COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in artifact_rows(result)]
    lines += ["", render_markdown([m.report for m in result.reports], estimates=[p.estimate for p in result.estimates], checks=result.checks,
                                  title="Latency")]
    return "\n".join(lines) + "\n"


def build_html(result: BuildResult) -> str:
    """The build as one self-contained HTML page with charts (no network access needed)."""
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in ARTIFACT_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in artifact_rows(result))
    lead = (f"<p><b class=\"st-{'pass' if result.ok else 'fail'}\">{_html.escape(result.verdict())}</b> — "
            f"{result.exported} artifact(s) built, the rest from the cache, {result.seconds:.1f} s.</p>"
            f"<h2>Artifacts</h2><table><tr>{head}</tr>{body}</table>")
    # each estimate carries the build's name for its artifact, so variants sharing a file stay apart
    estimates = [{**p.estimate.to_dict(), "artifact": p.label} for p in result.estimates]
    return render_html([m.report for m in result.reports], estimates=estimates, checks=result.checks,
                       title="mobilekit build report", lead=lead)
