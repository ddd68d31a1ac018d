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
from _common import RESULTS, ROOT, export_cell, merge_cells, provenance, rewrite_markdown, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))
from mobilekit._io import write_text_atomic  # noqa: E402

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


def _role(cmd: list[str]) -> str:
    """What a child of the tree is for, from its command line: a runtime child says its job."""
    if "mobilekit.runtime.child" in cmd:
        try:  # the child's work dir holds the job it was given ("infer": parity, "measure": latency)
            job = json.loads((Path(cmd[cmd.index("mobilekit.runtime.child") + 1]) / "job.json").read_text())
            return f"runtime child: {job.get('job')}"
        except (OSError, ValueError, IndexError):
            return "runtime child"
    if len(cmd) > 2 and cmd[1] == "-m":
        return f"python -m {cmd[2]}"
    return Path(cmd[0]).name if cmd else "?"  # e.g. flatc, which XNNPACK's serializer runs once per partition


def _run_sampled(cmd: list[str], timeout: float) -> tuple[int, dict[str, Any]]:
    """Run ``cmd``; return its exit code and the peak RSS of it alone, of each kind of child and of the tree.

    A child that still shows the exporter's own command line has been forked but has not exec'd
    yet (``subprocess`` starts flatc hundreds of times during an XNNPACK lowering): it shares the
    exporter's pages (vfork: the same address space; fork: copy-on-write) and its RSS reads as the
    exporter's whole RSS. Counting it would double the tree for that instant without any memory
    in use, so it is recorded apart (``peak_rss_unexeced_fork``) and the tree sum with it kept as
    ``peak_rss_process_tree_counting_forks``, the number earlier runs of this script reported.
    PSS (shared pages split between the processes that map them) is summed alongside RSS.
    """
    import psutil

    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3",
                                      "GLOG_minloglevel": "2", "TQDM_DISABLE": "1"})
    root = psutil.Process(proc.pid)
    root_cmdline = root.cmdline()
    peaks = dict.fromkeys(("main", "tree", "pss", "fork", "with_forks"), 0)
    at_peak: list[str] = []
    roles: dict[int, str] = {}
    children: dict[str, dict[str, Any]] = {}  # role -> how many, peak RSS and PSS of one such child alone
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            main = root.memory_full_info()
            kids = root.children(recursive=True)
        except psutil.Error:
            time.sleep(0.1)
            continue
        rss, pss, forks, alive = main.rss, main.pss, 0, [f"exporter {main.rss / 2**30:.2f} GB"]
        for kid in kids:
            try:
                kid_cmd = kid.cmdline()
                mem = kid.memory_full_info()
            except psutil.Error:
                continue
            if kid_cmd == root_cmdline:
                forks = max(forks, mem.rss)
                continue
            if kid.pid not in roles:
                roles[kid.pid] = _role(kid_cmd)
                children.setdefault(roles[kid.pid], {"role": roles[kid.pid], "count": 0, "peak_rss": 0,
                                                     "peak_pss": 0})["count"] += 1
            entry = children[roles[kid.pid]]
            entry["peak_rss"], entry["peak_pss"] = max(entry["peak_rss"], mem.rss), max(entry["peak_pss"], mem.pss)
            rss, pss = rss + mem.rss, pss + mem.pss
            alive.append(f"{roles[kid.pid]} {mem.rss / 2**30:.2f} GB")
        peaks["main"] = max(peaks["main"], main.rss)
        if rss > peaks["tree"]:  # which processes made up the tree's peak, and how big each was then
            peaks["tree"], at_peak = rss, alive
        peaks["pss"], peaks["fork"] = max(peaks["pss"], pss), max(peaks["fork"], forks)
        peaks["with_forks"] = max(peaks["with_forks"], rss + forks)
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.1)
    kinds = sorted(children.values(), key=lambda c: -c["peak_rss"])
    largest = kinds[0] if kinds else {"peak_rss": 0, "role": ""}
    return proc.returncode, {"peak_rss_exporting_process": peaks["main"], "peak_rss_largest_child": largest["peak_rss"],
                             "largest_child_role": largest["role"], "peak_rss_process_tree": peaks["tree"],
                             "peak_pss_process_tree": peaks["pss"], "tree_at_peak": at_peak, "children": kinds,
                             "peak_rss_unexeced_fork": peaks["fork"],
                             "peak_rss_process_tree_counting_forks": peaks["with_forks"]}


# What a process costs before it loads any model: the interpreter and the libraries it imports.
IDLE_PROCESSES = {
    "exporter (torch, diffusers, mobilekit, executorch.exir)":
        "import torch, diffusers, mobilekit, executorch.exir, mobilekit.exporting",
    "runtime child, executorch": "import mobilekit.runtime.child; from executorch.runtime import Runtime; Runtime.get()",
    "runtime child, onnxruntime": "import mobilekit.runtime.child, onnxruntime",
    "runtime child, ai-edge-litert": "import mobilekit.runtime.child; from ai_edge_litert.interpreter import Interpreter",
}


def _idle_rss() -> dict[str, int | None]:
    """RSS of a fresh process after each set of imports (None: that runtime is not installed)."""
    out: dict[str, int | None] = {}
    for name, imports in IDLE_PROCESSES.items():
        code = f"{imports}\nimport psutil; print(psutil.Process().memory_info().rss)"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"})
        last = proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else []
        out[name] = int(last[0]) if last and last[0].isdigit() else None
    return out


def _markdown(res: dict[str, Any]) -> str:
    """The result as a table, with the command of every cell and the idle processes' own RSS."""
    gb = 2**30
    cells = res["cells"]
    commands: dict[str, list[str]] = {}  # a merged file holds cells of several runs: each says its command
    for c in cells:
        commands.setdefault(c.get("command") or "not recorded (an earlier run)", []).append(
            f"{c['model']} / {c['recipe']}")
    lines = ["# Real-size exports\n", "Commands:\n",
             *[f"- `{cmd}`: {', '.join(which)}" for cmd, which in commands.items()], "",
             "Peak RSS is sampled every 0.1 s over the exporting process and all its children (parity and "
             "latency runs); 'largest child' is the biggest of those children alone (which one, where recorded), "
             "'tree' the largest sum at one instant. Ratios are against the model's fp32 "
             "weight bytes. Goal: peak ≤ 2.5× the fp32 weights.\n",
             "A child caught between fork and exec (the exporter starts flatc once per XNNPACK partition, hundreds "
             "of times for DiT-XL/2) still shares the exporter's pages, and its RSS reads as the exporter's whole "
             "RSS. Cells with no 'tree with forks' value come from earlier runs of this script, which counted "
             "such forks in the tree and as the largest child. Cells that record the "
             "children's roles leave it out of the tree; 'tree with forks' is the old sum, for comparison.\n",
             "| model | params | fp32 weights | recipe | status | export s | stages (s) | peak RSS exporter | "
             "peak RSS largest child | peak RSS tree | × weights | tree with forks | PSS tree | artifact bytes | "
             "× weights | parity cos | host p50 ms |",
             "|---|---:|---:|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        w = c.get("fp32_weight_bytes") or 1
        stages = ", ".join(f"{k} {v:.0f}" for k, v in (c.get("stages") or {}).items())
        tree = c.get("peak_rss_process_tree", 0)
        par = c.get("parity") or {}
        cos = f"{par['cosine']:.6f}" if par.get("cosine") is not None else (par.get("status") or "")
        lat = (c.get("host_latency") or {}).get("p50_ms")
        art = c.get("artifact_bytes")
        run = f" (run {c['from_run']})" if c.get("from_run") else ""  # a cell kept from an earlier run says so
        role = f" ({c['largest_child_role']})" if c.get("largest_child_role") else ""
        forks = c.get("peak_rss_process_tree_counting_forks")
        pss = c.get("peak_pss_process_tree")
        lines.append(f"| {c['model']} | {c.get('params', 0) / 1e6:.0f}M | {w / gb:.2f} GB | {c['recipe']} | "
                     f"{c['status']}{run} | {c.get('export_seconds', '')} | {stages} | "
                     f"{c.get('peak_rss_exporting_process', 0) / gb:.2f} GB | "
                     f"{c.get('peak_rss_largest_child', 0) / gb:.2f} GB{role} | {tree / gb:.2f} GB | {tree / w:.2f} | "
                     f"{'' if forks is None else f'{forks / gb:.2f} GB'} | {'' if pss is None else f'{pss / gb:.2f} GB'} | "
                     f"{art if art is not None else ''} | {'' if art is None else f'{art / w:.2f}'} | {cos} | "
                     f"{'' if lat is None else f'{lat:.0f}'} |")
    peaks = [c for c in cells if c.get("tree_at_peak")]
    if peaks:
        lines += ["", "## What made up each tree peak", ""]
        lines += [f"- **{c['model']} / {c['recipe']}**: {' + '.join(c['tree_at_peak'])}" for c in peaks]
    idle = res.get("idle_rss_bytes") or {}
    if idle:
        lines += ["", "## Fixed overhead: a process before it loads anything", "",
                  "RSS of a fresh process after its imports alone. The exporter and each runtime child pay this "
                  "whatever the model's size, so for a small model it is most of the tree: E²GAN's 0.01 GB of "
                  "weights against about 1 GB of tree is interpreter and libraries, not the model. The goal's "
                  "ratio is not changed for it; these numbers only explain it.", "",
                  "| process | RSS |", "|---|---:|"]
        lines += [f"| {k} | {'not installed' if v is None else f'{v / gb:.2f} GB'} |" for k, v in idle.items()]
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
    parser.add_argument("--render-only", action="store_true", help="rewrite real_size.md from real_size.json")
    parser.add_argument("--cell", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--cell-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        with tempfile.TemporaryDirectory(prefix="mk-real-out-") as out:
            cell = _cell(args.cell[0], args.cell[1], Path(out), args.latency_seconds)
        args.cell_out.write_text(json.dumps(cell, default=str))
        return 0

    if args.render_only:
        rewrite_markdown("real_size", _markdown)
        return 0
    cells: list[dict[str, Any]] = []
    previous = RESULTS / "real_size.json"
    command = provenance()["command"]  # recorded per cell: a merged result holds cells of several runs
    for name in args.models:
        for recipe in args.recipes:
            cell_file = Path(tempfile.mkstemp(prefix="mk-real-", suffix=".json")[1])
            start, load_before = time.perf_counter(), round(os.getloadavg()[0], 2)
            code, peaks = _run_sampled([sys.executable, __file__, "--cell", name, recipe, "--cell-out",
                                        str(cell_file), "--latency-seconds", str(args.latency_seconds)], args.timeout)
            try:
                cell = json.loads(cell_file.read_text())
            except (OSError, json.JSONDecodeError):
                cell = {"model": MODELS[name], "recipe": recipe, "status": "crash",
                        "message": f"the cell process exited with code {code}"}
            cell.update(peaks, command=command, wall_seconds=round(time.perf_counter() - start, 1),
                        loadavg_1m_before=load_before, loadavg_1m_after=round(os.getloadavg()[0], 2))  # other work on the host skews latency
            cells.append(cell)
            print(f"{cell['model']:18s} {recipe:32s} {cell['status']:8s} {cell['wall_seconds']:7.1f}s "
                  f"tree {peaks['peak_rss_process_tree'] / 2**30:5.2f} GB, largest child {peaks['largest_child_role']}",
                  flush=True)
            cell_file.unlink(missing_ok=True)
    before = json.loads(previous.read_text()) if previous.exists() else {}
    cells = merge_cells(previous, cells)  # keep the cells of models/recipes not re-run this time
    last_run = {(c["model"], c["recipe"]) for c in before.get("cells", []) if not c.get("from_run")}
    for c in cells:  # cells the previous file's own run made were made by the command it records
        if "command" not in c and (c["model"], c["recipe"]) in last_run and before.get("command"):
            c["command"] = before["command"]
    out = write_result("real_size.json", {"cells": cells, "idle_rss_bytes": _idle_rss()})
    write_text_atomic(RESULTS / "real_size.md", _markdown(json.loads(out.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
