"""Issue 13 benchmark: one-step parity against sampling-loop parity for diffusion denoisers.

For each denoiser × recipe, one ``mobilekit.export`` with ``sampling=Sampling(steps=N)``: the
artifact runs N DDIM steps in its real runtime and PyTorch runs the same loop from the same noise.
The table sets the one-step PSNR (the usual parity check) beside the PSNR after each step, so it
shows how far a single forward pass understates the error a user sees in the final sample.

Denoisers: the built-in DiT (``builtin:dit-tiny``) and the zoo's diffusers DiT and PixArt-α at
test size (random weights; BatchNorm-free transformers, learned sigma on the DiTs).

Run:
    .venv/bin/python benchmarks/sampling_bench.py                 # 8 steps, every recipe below
    .venv/bin/python benchmarks/sampling_bench.py --steps 4 --models dit-tiny
Writes ``benchmarks/results/sampling.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, export_cell, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPES = [("onnx", "fp32"), ("onnx", "int8-dynamic"), ("onnx", "int8-static"),
           ("executorch", "fp32"), ("executorch", "int8-dynamic"), ("executorch", "int8-static"),
           ("tflite", "fp32"), ("tflite", "int8-dynamic")]
# name -> (SPEC, index of the timestep among the inputs); the latents are input 0 everywhere
MODELS = {"dit-tiny": ("builtin:dit-tiny", 1), "dit": ("zoo:dit", 1), "pixart": ("zoo:pixart", 2)}


def run(models: list[str], steps: int) -> list[dict[str, Any]]:
    """Every (model, recipe) cell: one-step parity and the sampling trajectory's PSNR."""
    from mobilekit.sampling import Sampling
    from mobilekit.spec import load_spec

    cells = []
    for name in models:
        spec_name, timestep_input = MODELS[name]
        spec = load_spec(spec_name)
        for fmt, precision in RECIPES:
            with tempfile.TemporaryDirectory() as work:
                # parity floors are not the question here: record every artifact's numbers
                result = export_cell(spec.model, spec.example_inputs, targets=["pixel-8"], formats=[fmt],
                                     precision=precision, calibration=spec.calibration or None, use_cache=False,
                                     out_dir=Path(work) / "out", cache_dir=Path(work) / "cache", model_name=name,
                                     input_names=spec.input_names or None, sampling=Sampling(steps=steps, timestep_input=timestep_input),
                                     tolerances={precision: {"cosine": 0.0, "psnr_db": 0.0}})
            cell: dict[str, Any] = {"model": name, "format": fmt, "precision": precision, "status": result["status"]}
            if result["manifest"] is not None:
                a = result["manifest"].artifacts[0]
                s = a.sampling
                cell.update(recipe=a.recipe.name, parity_psnr_db=a.parity.psnr_db, parity_cosine=a.parity.cosine,
                            parity_inputs=a.parity.inputs, sample_status=s.status, sample_psnr_db=s.psnr_db,
                            sample_cosine=s.cosine, step_psnr_db=s.step_psnr_db, sample_tolerance=s.tolerance)
            else:
                cell["message"] = result["message"]
            print(f"{name:10s} {fmt:10s} {precision:13s} {cell['status']:6s} "
                  f"one-step {cell.get('parity_psnr_db') or 0:6.1f} dB  after {steps} steps "
                  f"{cell.get('sample_psnr_db') or 0:6.1f} dB", flush=True)
            cells.append(cell)
    return cells


def markdown(cells: list[dict[str, Any]], steps: int, command: str) -> str:
    """The results table."""
    lines = ["# Sampling-loop parity vs one-step parity", "", f"Command: `{command}`", "",
             f"Each artifact ran {steps} DDIM steps in its real runtime; PyTorch ran the same loop from the same "
             "noise and conditioning. *One-step* is the usual parity check: the worst of 4 inputs (the example and "
             "3 held-out ones), one forward pass. *After step k* compares the latents after k steps. PSNR is "
             "against the reference's range. Status is the final sample against the precision's sampling floor.",
             "", "| model | recipe | one-step PSNR dB | after step 1 | after step "
             f"{steps // 2} | after step {steps} (final) | final cosine | status |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for c in cells:
        if "step_psnr_db" not in c:
            lines.append(f"| {c['model']} | {c['format']}-{c['precision']} | | | | | | {c['status']}: "
                         f"{c.get('message', '')[:120]} |")
            continue
        st = c["step_psnr_db"]
        lines.append(f"| {c['model']} | {c['recipe']} | {c['parity_psnr_db']:.1f} | {st[0]:.1f} | "
                     f"{st[len(st) // 2 - 1]:.1f} | {st[-1]:.1f} | {c['sample_cosine']:.6f} | {c['sample_status']} |")
    drops = [c["parity_psnr_db"] - c["step_psnr_db"][-1] for c in cells
             if "step_psnr_db" in c and c["precision"] != "fp32" and c["parity_psnr_db"] < 900]
    if drops:
        lines += ["", f"Over the {len(drops)} int8 artifacts, the final sample's PSNR is {min(drops):.1f}–"
                      f"{max(drops):.1f} dB (median {sorted(drops)[len(drops) // 2]:.1f} dB) below the one-step "
                      "check's: a one-step check overstates how close a quantized denoiser stays to PyTorch."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    cells = run(args.models, args.steps)
    command = ".venv/bin/python benchmarks/sampling_bench.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    write_result("sampling.json", {"steps": args.steps, "cells": cells})
    from mobilekit._io import write_text_atomic

    write_text_atomic(RESULTS / "sampling.md", markdown(cells, args.steps, command))
    print(f"wrote {RESULTS / 'sampling.md'}")


if __name__ == "__main__":
    main()
