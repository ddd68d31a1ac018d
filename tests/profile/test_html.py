"""The HTML report: self-contained, and its charts really draw in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mobilekit.profiling.html import render_html, write_html

pytestmark = pytest.mark.xdist_group("profile_artifacts")

CHROMIUM = Path("/usr/bin/chromium")


def _estimates() -> list[dict]:
    # LatencyEstimate.to_dict() shape (mobilekit.estimation); values are inputs to the drawing, not results.
    return [
        {"target": "pixel-8", "model": "convnet", "format": "tflite", "precision": "fp16", "compute_unit": "gpu",
         "ms": 0.4, "low_ms": 0.25, "high_ms": 0.7,
         "per_layer": [{"name": "conv", "op": "conv2d", "flops": 2e5, "bytes": 4e4, "ms": 0.2, "bound": "memory"},
                       {"name": "head", "op": "linear", "flops": 64, "bytes": 200, "ms": 0.01, "bound": "memory"}],
         "roofline": {"peak_gops": 1500.0, "bandwidth_gbps": 51.2, "intensity": 5.0, "achieved_gops": 60.0}},
        {"target": "iphone-15-pro", "model": "convnet", "format": "coreml", "precision": "fp16",
         "compute_unit": "npu", "ms": 0.2, "low_ms": 0.1, "high_ms": 0.35, "per_layer": [],
         "roofline": {"peak_gops": 35000.0, "bandwidth_gbps": 51.2, "intensity": 5.0, "achieved_gops": 200.0}},
    ]


@pytest.fixture(scope="module")
def page(onnx_report) -> str:
    return render_html([onnx_report], estimates=_estimates())


@pytest.mark.backend_onnx
def test_page_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page


@pytest.mark.backend_onnx
def test_page_has_every_chart(page, onnx_report):
    for kind in ("histogram", "per-op", "targets", "roofline", "per-layer"):
        assert f'data-chart="{kind}"' in page, kind
    hist = page.split('data-chart="histogram"')[1].split("</svg>")[0]
    bars = hist.count('class="mk-bar"')
    assert bars >= 5
    counts = [int(m) for m in re.findall(r"ms: (\d+) samples</title>", hist)]
    assert sum(counts) == len(onnx_report.samples_ms)  # every sample is in a bin
    targets = page.split('data-chart="targets"')[1].split("</svg>")[0]
    assert targets.count('class="mk-bar"') == 3  # the host measurement and two estimates
    roof = page.split('data-chart="roofline"')[1].split("</svg>")[0]
    assert roof.count('class="mk-point"') == 2 and roof.count("<path") == 2


def test_labels_are_escaped():
    from mobilekit.profiling.report import LatencyReport

    r = LatencyReport(artifact="<img src=x onerror=alert(1)>.onnx", format="onnx", runtime="onnxruntime",
                      source="host", device={"name": "cpu & <gpu>"}, p50_ms=1.0, samples_ms=(1.0, 1.1, 0.9))
    page = render_html([r])
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;.onnx" in page
    assert "<gpu>" not in page and "cpu &amp; &lt;gpu&gt;" in page


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.browser
@pytest.mark.backend_onnx
@pytest.mark.slow
def test_charts_render_in_headless_chromium(onnx_report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("headless chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    path = write_html(tmp_path / "report.html", [onnx_report], estimates=_estimates())
    proc = _chromium(["--virtual-time-budget=3000", "--dump-dom", path.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-mk-rendered="ok"' in dom, proc.stderr[-2000:]
    drawn = int(re.search(r'data-mk-bars="(\d+)"', dom).group(1))
    assert drawn == page_marks(path.read_text())
    shot = tmp_path / "shot.png"
    proc = _chromium([f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def page_marks(page: str) -> int:
    """Bars and points in the page: every one must have a non-empty box once laid out."""
    return page.count('class="mk-bar"') + page.count('class="mk-point"')


def test_empty_report_list_still_renders():
    page = render_html([])
    assert "<script>" in page and shutil.which is not None
