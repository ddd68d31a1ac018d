"""Which short CPU training makes `make demo`'s adapted GAN show its concept (issue 11).

Trains the built-in E²GAN base (4 concepts × 16 pairs, 64 px) and adapts it to the held-out
concept ``sepia`` by LoRA, for a few step counts with and without the adversarial term, then
measures PSNR to the targets on crops of photos training never saw, beside the identity map's
(the source photo as is). One seed: this picks the demo's settings, it compares no methods.

Run:
    .venv/bin/python benchmarks/demo_gan_bench.py            # every setting below (~8 min on 2 cores)
Writes ``benchmarks/results/demo_gan.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

# (base steps, adapt steps, adversarial)
SETTINGS = [(200, 200, True), (200, 200, False), (200, 400, False), (400, 200, False)]


def run_one(base_steps: int, adapt_steps: int, adversarial: bool, work: Path) -> dict:
    import torch

    from mobilekit.train.e2gan import concepts as cc
    from mobilekit.train.e2gan.adapt import adapt, load_adapted
    from mobilekit.train.e2gan.loop import LoopConfig
    from mobilekit.train.e2gan.metrics import psnr
    from mobilekit.train.e2gan.models import E2GANConfig
    from mobilekit.train.e2gan.train import AdaptConfig, BaseTrainConfig, train_base

    torch.set_num_threads(1)
    t = time.perf_counter()
    train_base(BaseTrainConfig(generator=E2GANConfig.tiny(), num_concepts=4, pairs_per_concept=16, image_size=64,
                               loop=LoopConfig(steps=base_steps, batch_size=8, seed=0, checkpoint_every=0,
                                               adversarial=adversarial)), work / "base")
    base_s = time.perf_counter() - t
    t = time.perf_counter()
    adapt(work / "base", AdaptConfig(concept="sepia", pairs=16, image_size=64,
                                     loop=LoopConfig(steps=adapt_steps, batch_size=8, seed=0, lr=1e-3,
                                                     checkpoint_every=0, adversarial=adversarial)), work / "sepia")
    adapt_s = time.perf_counter() - t
    ev = cc.builtin_pairs("sepia", 16, 64, seed=123, held_out_photos=True)
    gen, emb = load_adapted(work / "base", work / "sepia" / "adapter")
    with torch.no_grad():
        out = gen(ev.sources, emb.unsqueeze(0).expand(ev.sources.shape[0], *emb.shape))
    return {"base_steps": base_steps, "adapt_steps": adapt_steps, "adversarial": adversarial,
            "base_seconds": round(base_s, 1), "adapt_seconds": round(adapt_s, 1),
            "psnr_db": round(psnr(out, ev.targets), 2), "identity_psnr_db": round(psnr(ev.sources, ev.targets), 2)}


def main() -> None:
    rows = []
    for b, a, adv in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_one(b, a, adv, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    write_result("demo_gan.json", {"command": "python benchmarks/demo_gan_bench.py", "rows": rows})


if __name__ == "__main__":
    main()
