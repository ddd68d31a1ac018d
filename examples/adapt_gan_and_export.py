"""Train a small E²GAN base, adapt it to a new concept with LoRA, and export the base plus the adapter.

Run (from the repository root, after `make install`):
    .venv/bin/python examples/adapt_gan_and_export.py --out runs/gan-example

The built-in concept set edits scikit-image's photographs, so nothing is downloaded. With
`policy="separate"` the base ships once and each concept adds a small file (a shared .ptd for
ExecuTorch, one signature per concept in a .tflite, one function per concept in a Core ML package).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mobilekit
from mobilekit.builtins import gan_inputs
from mobilekit.train import AdaptConfig, BaseTrainConfig, E2GANConfig, GANLoopConfig, adapt, train_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gan-example"))
    parser.add_argument("--concept", default="sepia")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    base = train_base(BaseTrainConfig(generator=E2GANConfig.tiny(), num_concepts=4, pairs_per_concept=16,
                                      loop=GANLoopConfig(steps=args.steps, batch_size=8)), args.out / "base")
    result = adapt(args.out / "base", AdaptConfig(concept=args.concept, pairs=16,
                                                  loop=GANLoopConfig(steps=args.steps, lr=1e-3, batch_size=8)),
                   args.out / args.concept)
    print(f"adapter for {args.concept!r} written to {args.out / args.concept / 'adapter'}")

    generator = base.generator
    manifest = mobilekit.export_adapters(generator, {args.concept: args.out / args.concept / "adapter"},
                                         gan_inputs(generator.config), targets=["pixel-8", "iphone-15-pro"],
                                         formats=["executorch", "tflite"], precision="fp32", policy="separate",
                                         out_dir=args.out / "export", model_name="gan")
    for a in manifest.artifacts:
        print(f"{a.path} [{a.adapter or 'base'}]: {a.recipe.name}, parity {a.parity.status}")
    sidecar = json.loads((args.out / "export" / "adapters.json").read_text())
    for rec in sidecar["recipes"]:
        print(f"{rec['recipe']}: separate {rec['separate_total_bytes']} bytes vs fused copies "
              f"{rec.get('fused_total_bytes')} bytes")
    del result


if __name__ == "__main__":
    main()
