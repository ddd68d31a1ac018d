"""Issue 9 benchmark: real-size exports, with the memory of every process involved.

Models (random weights, published configs): DiT-XL/2 at 256 px, PixArt-α at 512 px, the SD-1.5
VAE decoder at 512 px and the default E²GAN generator at 256 px. Each (model, recipe) cell runs
``mobilekit.export`` (no cache, parity in the real runtime) and then ``mobilekit.profile`` for host
latency, in a child process that the driver samples with psutil every 0.1 s, together with all of
its descendants (parity and latency children). Recorded per cell: the stages' seconds, peak RSS of
the exporting process and of the whole process tree, artifact bytes against the model's fp32
parameter bytes, parity and host p50. A recipe whose format can't hold the model (TFLite's 2 GB
flatbuffer) is recorded as refused, with the reason mobilekit gives before any work.

Run (about an hour on 2 cores; cells run one at a time, the biggest peaks near 15 GB):
    .venv/bin/python benchmarks/real_size_bench.py
    .venv/bin/python benchmarks/real_size_bench.py --models e2gan --recipes onnx-fp32
Writes ``benchmarks/results/real_size.json`` and ``benchmarks/results/real_size.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, export_cell, merge_cells, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

MODELS = {"dit": "dit-xl-2", "pixart": "pixart-alpha-512", "vae-decoder": "sd15-vae-decoder", "e2gan": "e2gan-256"}
RECIPES = ["executorch-xnnpack-fp32", "onnx-fp32", "tflite-fp32", "coreml-fp16", "executorch-xnnpack-int8-dynamic"]


def _cell(zoo_name: str, recipe_name: str, out: Path, latency_seconds: float) -> dict[str, Any]:
    """One export + host measurement, in this (child) process."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import psutil

    import mobilekit
    from mobilekit.errors import MobilekitError
    from mobilekit.recipe import Recipe

    me = psutil.Process()
    baseline = me.memory_info().rss  # Python, torch and mobilekit imported, no model yet
    t0 = time.perf_counter()
    b = mobilekit.build_zoo_model(zoo_name, size="real")
    params = sum(p.numel() for p in b.model.parameters())
    cell: dict[str, Any] = {"model": b.name, "recipe": recipe_name, "params": params,
                            "fp32_weight_bytes": sum(t.numel() * 4 for t in b.model.state_dict().values()
                                                     if t.is_floating_point()),
                            "build_seconds": round(time.perf_counter() - t0, 1),
                            "rss_baseline_bytes": baseline, "rss_after_build_bytes": me.memory_info().rss}
    recipe = Recipe.parse(recipe_name)
    target = "iphone-15-pro" if recipe.format == "coreml" else "pixel-8"
    with tempfile.TemporaryDirectory(prefix="mk-real-") as tmp:
        result = export_cell(b.model, b.example_inputs, targets=[target], formats=[recipe.format],
                             precision=recipe.precision, calibration=b.calibration[:2], use_cache=False,
                             cache_dir=Path(tmp) / "cache", out_dir=out, model_name=b.name, input_names=b.input_names)
        cell.update(status=result["status"], export_seconds=result["export_seconds"])
        m = result["manifest"]
        if m is None:
            cell.update(error=result["error"], message=result["message"])
            return cell
        a = m.artifacts[0]
        cell.update(stages=a.stages, artifact_bytes=a.size_bytes, parity=a.parity.to_dict(), notes=list(a.notes),
                    rss_after_export_bytes=me.memory_info().rss)
        del b  # the latency run needs only the artifact
        if recipe.format != "coreml" and latency_seconds > 0:
            try:
                rep = mobilekit.profile(m.path_of(a), target=target, warmup=1, max_seconds=latency_seconds,
                                        per_op=False)
                cell["host_latency"] = {"p50_ms": rep.p50_ms, "runs": len(rep.samples_ms),
                                        "ci95_ms": getattr(rep, "ci95_ms", None)}
            except MobilekitError as exc:
                cell["host_latency"] = {"error": str(exc)}
    return cell


def _run_sampled(cmd: list[str], timeout: float) -> tuple[int, dict[str, int]]:
    """Run ``cmd``; return its exit code and the peak RSS of it alone and of its whole process tree."""
    import psutil

    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3",
                                      "GLOG_minloglevel": "2", "TQDM_DISABLE": "1"})
    root = psutil.Process(proc.pid)
    peak_main = peak_tree = peak_child = 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            main = root.memory_info().rss
            kids = [c.memory_info().rss for c in root.children(recursive=True)]
        except psutil.Error:
            kids, main = [], peak_main
        peak_main, peak_child = max(peak_main, main), max([peak_child, *kids])
        peak_tree = max(peak_tree, main + sum(kids))
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.1)
    return proc.returncode, {"peak_rss_exporting_process": peak_main, "peak_rss_largest_child": peak_child,
                             "peak_rss_process_tree": peak_tree}


def _markdown(cells: list[dict[str, Any]], command: str) -> str:
    gb = 2**30
    lines = ["# Real-size exports\n", f"Command: `{command}`\n",
             "Peak RSS is sampled every 0.1 s over the exporting process and all its children (parity and "
             "latency runs); 'largest child' is the biggest of those children alone, 'tree' the largest sum at one "
             "instant. Ratios are against the model's fp32 "
             "weight bytes. Goal: peak ≤ 2.5× the fp32 weights.\n",
             "| model | params | fp32 weights | recipe | status | export s | stages (s) | peak RSS exporter | "
             "peak RSS largest child | peak RSS tree | × weights | artifact bytes | × weights | parity cos | "
             "host p50 ms |",
             "|---|---:|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        w = c.get("fp32_weight_bytes") or 1
        stages = ", ".join(f"{k} {v:.0f}" for k, v in (c.get("stages") or {}).items())
        tree = c.get("peak_rss_process_tree", 0)
        par = c.get("parity") or {}
        cos = f"{par['cosine']:.6f}" if par.get("cosine") is not None else (par.get("status") or "")
        lat = (c.get("host_latency") or {}).get("p50_ms")
        art = c.get("artifact_bytes")
        run = f" (run {c['from_run']})" if c.get("from_run") else ""  # a cell kept from an earlier run says so
        lines.append(f"| {c['model']} | {c.get('params', 0) / 1e6:.0f}M | {w / gb:.2f} GB | {c['recipe']} | "
                     f"{c['status']}{run} | {c.get('export_seconds', '')} | {stages} | "
                     f"{c.get('peak_rss_exporting_process', 0) / gb:.2f} GB | "
                     f"{c.get('peak_rss_largest_child', 0) / gb:.2f} GB | {tree / gb:.2f} GB | {tree / w:.2f} | "
                     f"{art if art is not None else ''} | {'' if art is None else f'{art / w:.2f}'} | {cos} | "
                     f"{'' if lat is None else f'{lat:.0f}'} |")
    notes = [c for c in cells if c["status"] != "pass"]
    if notes:
        lines += ["", "## Cells that did not pass", ""]
        lines += [f"- **{c['model']} / {c['recipe']}** ({c['status']}): {c.get('message', '')[:400]}" for c in notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="timed seconds per host measurement")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a cell is killed")
    parser.add_argument("--cell", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--cell-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        with tempfile.TemporaryDirectory(prefix="mk-real-out-") as out:
            cell = _cell(args.cell[0], args.cell[1], Path(out), args.latency_seconds)
        args.cell_out.write_text(json.dumps(cell, default=str))
        return 0

    cells: list[dict[str, Any]] = []
    previous = RESULTS / "real_size.json"
    for name in args.models:
        for recipe in args.recipes:
            cell_file = Path(tempfile.mkstemp(prefix="mk-real-", suffix=".json")[1])
            start = time.perf_counter()
            code, peaks = _run_sampled([sys.executable, __file__, "--cell", name, recipe, "--cell-out",
                                        str(cell_file), "--latency-seconds", str(args.latency_seconds)], args.timeout)
            try:
                cell = json.loads(cell_file.read_text())
            except (OSError, json.JSONDecodeError):
                cell = {"model": MODELS[name], "recipe": recipe, "status": "crash",
                        "message": f"the cell process exited with code {code}"}
            cell.update(peaks, wall_seconds=round(time.perf_counter() - start, 1),
                        loadavg_1m_after=round(os.getloadavg()[0], 2))  # other work on the host skews latency
            cells.append(cell)
            print(f"{cell['model']:18s} {recipe:32s} {cell['status']:8s} {cell['wall_seconds']:7.1f}s "
                  f"tree {peaks['peak_rss_process_tree'] / 2**30:5.2f} GB", flush=True)
            cell_file.unlink(missing_ok=True)
    cells = merge_cells(previous, cells)  # keep the cells of models/recipes not re-run this time
    out = write_result("real_size.json", {"cells": cells})
    (RESULTS / "real_size.md").write_text(_markdown(cells, json.loads(out.read_text())["command"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
