"""Prune a DiT with TinyFusion's learnable 1:2 search, recover it briefly, and export it for two phones.

Run (from the repository root, after `make install`):
    .venv/bin/python examples/prune_and_export_dit.py --out runs/dit-example

Uses the built-in DiT and scikit-learn's digits; swap in your own DiTTransformer2DModel and data
(an image folder or a latents .safetensors file) for real work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mobilekit
from mobilekit.builtins import build_builtin, DiTForExport, dit_inputs
from mobilekit.train import DepthPruneConfig, DistillConfig, distill, prune_depth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dit-example"))
    parser.add_argument("--search-steps", type=int, default=60, help="optimizer steps of the learnable search")
    parser.add_argument("--recover-steps", type=int, default=60, help="optimizer steps of masked-KD recovery")
    args = parser.parse_args()

    teacher = build_builtin("dit-tiny").model.dit                     # a diffusers DiTTransformer2DModel
    pruned = prune_depth(teacher, "digits", DepthPruneConfig(method="learnable", pattern="1:2", steps=args.search_steps),
                         out_dir=args.out / "pruned")
    print(f"kept blocks {pruned.kept} of {pruned.depth_before}; calibration loss {pruned.calibration_loss:.4f}")

    recovered = distill(pruned.model, teacher, "digits",
                        DistillConfig(mode="masked-kd", steps=args.recover_steps), kept=pruned.kept, groups=pruned.groups,
                        out_dir=args.out / "recovered")
    student = recovered.model

    inputs = dit_inputs(dict(student.config))
    manifest = mobilekit.export(DiTForExport(student), inputs, targets=["iphone-15-pro", "pixel-8"],
                                precision="int8", out_dir=args.out / "export", model_name="dit-pruned",
                                input_names=["latents", "timestep", "class_labels"])
    for a in manifest.artifacts:
        print(f"{a.path}: {a.recipe.name} for {', '.join(a.targets)}, {a.size_bytes / 2**20:.2f} MiB, "
              f"parity {a.parity.status}")
        if a.format in ("executorch", "tflite", "onnx"):
            report = mobilekit.profile(manifest.path_of(a), target=a.targets[0], max_seconds=2)
            print(f"  host p50 {report.p50_ms:.2f} ms")
        for target in a.targets:
            est = mobilekit.estimate(DiTForExport(student), inputs, target=target, format=a.format,
                                     precision=a.precision)
            print(f"  {target}: estimated {est.ms:.2f} ms [{est.low_ms:.2f}, {est.high_ms:.2f}]")


if __name__ == "__main__":
    main()
