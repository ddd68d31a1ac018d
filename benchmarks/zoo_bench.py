"""Issue 9 benchmark: the model zoo × every format at fp32 and at each int8 variant the format builds.

Every cell is one ``mobilekit.export`` call (no cache) with parity in the real runtime. A cell is
``pass`` (parity within the precision's tolerance, or Core ML's structural check where its
runtime cannot run), ``refused`` (a mobilekit error before any conversion work, naming the op and
module path or the reason), ``fail`` (a mobilekit error after work started: parity out of
tolerance, a backend that could not lower the model) or ``crash`` (anything that is not a
mobilekit error: a bug of ours or an unmapped backend failure). Each model runs in its own child
process so a native crash costs one row, not the run.

Run:
    .venv/bin/python benchmarks/zoo_bench.py                    # all models, all cells
    .venv/bin/python benchmarks/zoo_bench.py --models resnet dit --recipes onnx-fp32
    .venv/bin/python benchmarks/zoo_bench.py --resume /tmp/mk-zoo-XXXX.jsonl   # finish an interrupted run
Writes ``benchmarks/results/zoo.json`` and ``benchmarks/results/zoo.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, export_cell, merge_cells, provenance, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPES = [
    "executorch-xnnpack-fp32", "executorch-xnnpack-int8-dynamic", "executorch-xnnpack-int8-static",
    "coreml-fp32", "coreml-int8-weight",
    "tflite-fp32", "tflite-int8-weight", "tflite-int8-dynamic", "tflite-int8-static",
    "onnx-fp32", "onnx-int8-weight", "onnx-int8-dynamic", "onnx-int8-static",
]


def target_for(recipe: str) -> str:
    """A phone that runs the recipe's format with its delegate (Core ML needs an iPhone)."""
    return "iphone-15-pro" if recipe.startswith("coreml") else "pixel-8"


def run_cell(name: str, recipe_name: str, work: Path) -> dict[str, Any]:
    """Export zoo model ``name`` with one recipe through ``mobilekit.export`` and classify the outcome."""
    import mobilekit
    from mobilekit.recipe import Recipe

    recipe = Recipe.parse(recipe_name)
    b = mobilekit.build_zoo_model(name)
    result = export_cell(b.model, b.example_inputs, targets=[target_for(recipe_name)], formats=[recipe.format],
                         precision=recipe.precision, calibration=b.calibration, use_cache=False,
                         cache_dir=work / "cache", out_dir=work / recipe_name, model_name=name,
                         input_names=b.input_names)
    cell: dict[str, Any] = {"model": name, "recipe": recipe_name, "status": result["status"],
                            "seconds": result["export_seconds"], "params": sum(p.numel() for p in b.model.parameters())}
    if result["manifest"] is not None:
        a = result["manifest"].artifacts[0]
        p = a.parity
        cell.update(parity=p.status, cosine=p.cosine, psnr_db=p.psnr_db, max_abs_error=p.max_abs_error,
                    parity_reason=p.reason, size_bytes=a.size_bytes, notes=list(a.notes))
    else:
        cell.update(error=result["error"], message=result["message"])
    return cell


def _child(name: str, recipes: list[str], out: Path) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="mk-zoo-") as tmp:
        with out.open("a") as fh:
            for r in recipes:
                cell = run_cell(name, r, Path(tmp))
                fh.write(json.dumps(cell, default=str) + "\n")
                fh.flush()
                print(f"{name:18s} {r:34s} {cell['status']:8s} {cell['seconds']:6.1f}s "
                      f"{cell.get('message', '') or cell.get('parity_reason') or ''}"[:220], flush=True)
    return 0


def _markdown(cells: list[dict[str, Any]], recipes: list[str], command: str) -> str:
    mark = {"pass": "✓", "fail": "✗ fail", "refused": "refused", "crash": "✗ crash"}
    from mobilekit.zoo import ZOO

    present = {c["model"] for c in cells}  # zoo order, whichever run each row's cells come from
    models = [m for m in ZOO if m in present] + [m for m in dict.fromkeys(c["model"] for c in cells) if m not in ZOO]
    by = {(c["model"], c["recipe"]): c for c in cells}
    passed = sum(c["status"] == "pass" for c in cells)
    runs = Counter(c.get("command") or "an earlier run whose command the cells do not record" for c in cells)
    lines = [f"# Model zoo × export matrix\n\nCommand: `{command}`\n"
             + ("" if len(runs) == 1 else "\nCells come from these runs (cells each): "
                + "; ".join(f"`{c}` ({n})" for c, n in runs.items()) + "\n"),
             f"{passed} of {len(cells)} cells pass ({100 * passed / max(len(cells), 1):.1f}%). "
             "✓ = parity within the precision's tolerance in the real runtime (Core ML: structurally valid "
             "mlProgram; its runtime needs macOS).\n",
             "| model | " + " | ".join(recipes) + " |", "|---|" + "---|" * len(recipes)]
    for m in models:
        row = []
        for r in recipes:
            c = by.get((m, r))
            if c is None:
                row.append("")
                continue
            cos = f" {c['cosine']:.4f}" if c.get("cosine") is not None and c["status"] == "pass" else ""
            row.append(mark[c["status"]] + cos + (" †" if c.get("from_run") else ""))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    old = sorted({c["from_run"] for c in cells if c.get("from_run")})
    if old:
        n_old = sum(bool(c.get("from_run")) for c in cells)
        new = [c for c in cells if not c.get("from_run")]
        lines += ["", f"† {n_old} cells are kept from an earlier run ({', '.join(old)}), made with earlier "
                      "code; they were not re-run here. The cells re-run now: "
                      f"{sum(c['status'] == 'pass' for c in new)} of {len(new)} pass."]
    problems = [c for c in cells if c["status"] != "pass"]
    if problems:
        lines += ["", "## Cells that do not pass", ""]
        lines += [f"- **{c['model']} / {c['recipe']}** ({c['status']}): "
                  f"{(c.get('message') or c.get('parity_reason') or '').splitlines()[0][:400]}" for c in problems]
    return "\n".join(lines) + "\n"


def main() -> int:
    from mobilekit.zoo import ZOO

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--cells", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", default="zoo", help="result file stem in benchmarks/results/")
    parser.add_argument("--merge", action="store_true", help="keep the earlier result's cells not re-run now")
    parser.add_argument("--resume", type=Path, help="cells file (.jsonl) of an interrupted run: its finished "
                                                    "models are kept, not re-run")
    args = parser.parse_args()
    if args.one:
        return _child(args.one, args.recipes, args.cells)

    if args.resume:
        cells_file = args.resume
        have = [json.loads(ln) for ln in cells_file.read_text().splitlines() if ln.strip()]
        finished = {m for m in {c["model"] for c in have}
                    if {c["recipe"] for c in have if c["model"] == m} >= set(args.recipes)}
        # a model cut off mid-way is run again from its start
        cells_file.write_text("".join(json.dumps(c) + "\n" for c in have if c["model"] in finished))
    else:
        cells_file, finished = Path(tempfile.mkstemp(prefix="mk-zoo-", suffix=".jsonl")[1]), set()
    print(f"cells: {cells_file}", flush=True)
    start = time.perf_counter()
    for name in [m for m in args.models if m not in finished]:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--cells", str(cells_file),
                               "--recipes", *args.recipes], env={**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "2"})
        if proc.returncode != 0:
            done = {json.loads(ln)["recipe"] for ln in cells_file.read_text().splitlines()
                    if json.loads(ln)["model"] == name}
            with cells_file.open("a") as fh:
                for r in args.recipes:
                    if r not in done:
                        fh.write(json.dumps({"model": name, "recipe": r, "status": "crash", "error": "process",
                                             "message": f"the export process died with code {proc.returncode}"})
                                 + "\n")
    # every cell names the command that made it, so a merged table can list all the runs in it
    this_command = provenance()["command"]
    cells = [{**json.loads(ln), "command": this_command} for ln in cells_file.read_text().splitlines()]
    if args.merge:  # a partial re-run keeps the other cells of the last full run
        cells = merge_cells(RESULTS / f"{args.result}.json", cells)
    # the table's columns are every recipe in it (a merged subset run keeps the others' columns)
    recipes = [r for r in dict.fromkeys([*RECIPES, *args.recipes]) if any(c["recipe"] == r for c in cells)]
    passed = sum(c["status"] == "pass" for c in cells)
    summary = {"cells": len(cells), "passed": passed, "pass_rate": round(passed / max(len(cells), 1), 4),
               "by_status": {s: sum(c["status"] == s for c in cells) for s in ("pass", "fail", "refused", "crash")},
               "seconds": round(time.perf_counter() - start, 1)}
    out = write_result(f"{args.result}.json", {"summary": summary, "recipes": recipes, "cells": cells})
    command = json.loads(out.read_text())["command"]
    (RESULTS / f"{args.result}.md").write_text(_markdown(cells, recipes, command))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
