"""Issue 10 benchmark: host latency of a DiT at its published size against the same DiT at half depth.

TinyFusion's speed claim is about depth: its anchor is 1.96x for DiT-XL/2 pruned from 28 to 14
blocks. Latency does not depend on the weight values or on which blocks are kept, so each config is
built with random weights and pruned to every other block with ``surgery.build_pruned`` (the pruned
model is the same diffusers class, so it exports like the full one).

Both are exported with ``mobilekit.export`` (fp32), then measured with ``mobilekit.profile`` (its own
child process per call) in rounds whose order alternates (full, half, half, full, ...), so both see
the same machine drift. The speed-up of a round is full p50 / half p50; reported: each model's
median p50 over rounds and the mean speed-up with its 95% Student-t interval over rounds.

Run:
    .venv/bin/python benchmarks/dit_depth_latency_bench.py                  # DiT-S/2 (both formats), DiT-XL/2 (ONNX)
    .venv/bin/python benchmarks/dit_depth_latency_bench.py --cells dit-s-2:onnx --rounds 3
Writes ``benchmarks/results/dit_depth_latency.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, ci95, rewrite_markdown, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

from mobilekit._io import write_text_atomic  # noqa: E402
from mobilekit.zoo import DIT_XL_2  # noqa: E402

# The published DiT configs at 256 px (Peebles & Xie 2023, table 1): S/2 is 12 blocks of width 384.
CONFIGS: dict[str, dict[str, Any]] = {
    "dit-s-2": {**DIT_XL_2, "num_attention_heads": 6, "attention_head_dim": 64, "num_layers": 12},
    "dit-xl-2": DIT_XL_2,
}
PAPER_SPEEDUP = 1.96  # TinyFusion, DiT-XL/2 28 -> 14 blocks


def _models(name: str) -> dict[str, Any]:
    import torch
    from diffusers import DiTTransformer2DModel

    from mobilekit.builtins import DiTForExport
    from mobilekit.train.tinyfusion.blocks import DiTStack
    from mobilekit.train.tinyfusion.surgery import build_pruned

    torch.manual_seed(0)
    full = DiTTransformer2DModel(**CONFIGS[name]).eval()
    depth = CONFIGS[name]["num_layers"]
    half = build_pruned(full, list(range(0, depth, 2)), DiTStack())
    return {f"{depth} blocks": DiTForExport(full).eval(), f"{depth // 2} blocks": DiTForExport(half).eval()}


def _inputs(name: str) -> tuple[Any, ...]:
    import torch

    n = CONFIGS[name]["sample_size"]
    return torch.randn(1, 4, n, n), torch.tensor([500]), torch.tensor([3])


def measure(name: str, fmt: str, rounds: int, threads: int, seconds: float, work: Path) -> dict[str, Any]:
    """Export full and half depth of config ``name`` to ``fmt`` and profile them in alternating rounds."""
    import mobilekit

    paths, params, sizes = {}, {}, {}
    for label, model in _models(name).items():
        man = mobilekit.export(model, _inputs(name), targets=["pixel-8"], formats=[fmt], precision="fp32",
                               out_dir=work / name / fmt / label.replace(" ", "-"), use_cache=False,
                               model_name=f"{name}-{label.split()[0]}", input_names=("latents", "timestep", "class_labels"))
        art = man.artifacts[0]
        paths[label] = man.path_of(art)
        params[label] = sum(p.numel() for p in model.parameters())
        sizes[label] = art.size_bytes
        del model
    labels = list(paths)
    p50: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            rep = mobilekit.profile(paths[label], threads=threads, per_op=False, max_seconds=seconds)
            p50[label].append(rep.p50_ms)
        print(f"{name} {fmt} round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in p50.items()),
              flush=True)
    ratios = [a / b for a, b in zip(p50[labels[0]], p50[labels[1]])]
    mean, half = ci95(ratios)
    # a list, not a dict keyed by label: result files are written with sorted keys ("14 blocks" < "28 blocks")
    return {"config": name, "format": fmt, "recipe": f"{fmt}-fp32", "threads": threads, "rounds": rounds,
            "models": [{"label": k, "params": params[k], "size_bytes": sizes[k], "p50_ms": p50[k],
                        "median_p50_ms": statistics.median(p50[k])} for k in labels],
            "speedup_per_round": ratios, "speedup_mean": mean, "speedup_ci95": [mean - half, mean + half],
            "speedup_of_medians": statistics.median(p50[labels[0]]) / statistics.median(p50[labels[1]])}


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# DiT latency: full depth vs half depth (TinyFusion's speed claim)", "",
             f"Command: `{res['command']}`", "",
             f"Random weights, published 256-px configs, pruned to every other block; fp32, {res['threads']} "
             f"thread(s), {res['rounds']} alternating rounds of `mobilekit.profile` (a fresh child process per "
             f"call) on this {res['host']['cores']}-core host ({res['host']['cpu']}). Load average "
             f"{res['loadavg_before'][0]:.2f} before, {res['loadavg_after'][0]:.2f} after. The paper's anchor: "
             f"{PAPER_SPEEDUP}x for DiT-XL/2 at half depth.", "",
             "| config | format | blocks | params | p50 ms (median of rounds) | speed-up: mean [95% CI] over rounds "
             "| of the medians | per round |",
             "|---|---|---|---:|---:|---|---:|---|"]
    for row in res["rows"]:
        if "error" in row:
            lines.append(f"| {row['config']} | {row['format']} | | | | {row['error']} | | |")
            continue
        full, half = row["models"]
        lo, hi = row["speedup_ci95"]
        lines.append(f"| {row['config']} | {row['format']} | {full['label'].split()[0]} → {half['label'].split()[0]} | "
                     f"{full['params'] / 1e6:.1f}M → {half['params'] / 1e6:.1f}M | "
                     f"{full['median_p50_ms']:.1f} → {half['median_p50_ms']:.1f} | "
                     f"{row['speedup_mean']:.3f}x [{lo:.3f}, {hi:.3f}] | {row['speedup_of_medians']:.3f}x | "
                     + ", ".join(f"{r:.2f}" for r in row["speedup_per_round"]) + " |")
    lines += ["", "A model made only of blocks would speed up exactly 2x at half depth. The parts pruning keeps "
              "(patch embedding, timestep/label embedders, output head) pull the ratio below 2x; the half-size "
              "working set (weights that fit the caches better) can push it above."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["dit-s-2:executorch", "dit-s-2:onnx", "dit-xl-2:onnx"],
                    metavar="CONFIG:FORMAT",
                    help=f"configs {sorted(CONFIGS)}, formats executorch/onnx; DiT-XL/2 in ONNX only by default: "
                         "its ExecuTorch lowering peaks near 12 GB RSS (real_size.md)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=8.0, help="max timed seconds per profile call")
    ap.add_argument("--render-only", action="store_true", help="only rewrite the .md from the JSON")
    args = ap.parse_args()
    md = RESULTS / "dit_depth_latency.md"
    if args.render_only:
        rewrite_markdown("dit_depth_latency", _markdown)
        return 0

    cells = [c.partition(":")[::2] for c in args.cells]
    for (name, fmt), cell in zip(cells, args.cells):  # refuse a bad cell before any export
        if name not in CONFIGS or fmt not in ("executorch", "onnx"):
            ap.error(f"--cells {cell!r}: want CONFIG:FORMAT with CONFIG in {sorted(CONFIGS)}, FORMAT executorch/onnx")
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mk-depth-") as tmp:
        for name, fmt in cells:
            try:
                rows.append(measure(name, fmt, args.rounds, args.threads, args.seconds, Path(tmp)))
            except Exception as exc:  # one failing cell is a result, not the end of the run
                rows.append({"config": name, "format": fmt, "error": f"{type(exc).__name__}: {exc}"[:300]})
    out = write_result("dit_depth_latency.json", {"threads": args.threads, "rounds": args.rounds,
                                                  "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                                                  "paper_speedup": PAPER_SPEEDUP, "rows": rows})
    write_text_atomic(md, _markdown(json.loads(out.read_text())))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
