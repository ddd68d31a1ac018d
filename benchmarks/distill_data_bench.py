"""Issue 11 benchmark: throughput of ``distill_pairs`` (InstructPix2Pix pair distillation) on this CPU.

The pipelines are RANDOM-WEIGHT and SMALL (``tests/fixtures/e2gan.py::tiny_instruct_pix2pix``):
a two-level UNet, a VAE that downsamples 2× (SD's downsamples 8×) and a one-layer CLIP text
model. The edits are noise, and the numbers are the cost of mobilekit's loop plus diffusers'
pipeline overhead at these sizes on this host; they are NOT the speed of SD-1.5 /
``timbrooks/instruct-pix2pix`` (a ~860M-parameter UNet), which is far slower per pair on a CPU.

Each cell runs one warm-up pair into a scratch folder, then ``--pairs`` timed pairs; the timing is
``DistillReport.seconds`` (pipeline calls and pair writes, not loading), as `mobilekit gan
distill-data` reports it and writes it into the pairs folder's ``distill.json``.

Run:
    .venv/bin/python benchmarks/distill_data_bench.py                 # tiny and moderate configs
    .venv/bin/python benchmarks/distill_data_bench.py --cells tiny-2 --pairs 4
Writes ``benchmarks/results/distill_data.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, rewrite_markdown, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

from mobilekit._io import write_text_atomic  # noqa: E402

# name -> pipeline shape (tiny_instruct_pix2pix keywords), pair size, denoising steps
CELLS: dict[str, dict[str, Any]] = {
    "tiny-2": {"pipe": {"block_out_channels": (8, 16), "vae_channels": 8, "text_dim": 16}, "size": 32, "steps": 2},
    "tiny-20": {"pipe": {"block_out_channels": (8, 16), "vae_channels": 8, "text_dim": 16}, "size": 32, "steps": 20},
    "moderate-20": {"pipe": {"block_out_channels": (64, 128), "vae_channels": 32, "text_dim": 64}, "size": 64,
                    "steps": 20},
}


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def measure(name: str, pairs: int, tmp: Path) -> dict[str, Any]:
    """Warm up on one pair, then distil ``pairs`` pairs and return the report's throughput."""
    from mobilekit.train.e2gan.distill_data import DistillDataConfig, distill_pairs
    from tests.fixtures.e2gan import tiny_instruct_pix2pix

    cell = CELLS[name]
    pipe = tiny_instruct_pix2pix(tmp / name / "pipe", **cell["pipe"])
    # short prompt: the tiny tokenizer is one token per character and holds 16
    cfg = DistillDataConfig(concept="bench", prompt="make it snowy", size=cell["size"],
                            num_inference_steps=cell["steps"])
    distill_pairs(pipe, "builtin:1", tmp / name / "warmup", cfg)
    rep = distill_pairs(pipe, f"builtin:{pairs}", tmp / name / "pairs", cfg)
    return {"cell": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in cell["pipe"].items()},
            "size": cell["size"], "steps": cell["steps"],
            "parameters": {"unet": _params(pipe.unet), "vae": _params(pipe.vae),
                           "text_encoder": _params(pipe.text_encoder)},
            **{k: v for k, v in rep.to_dict().items() if k != "out"}}


def _markdown(res: dict[str, Any]) -> str:
    lines = ["# Distilled-pairs throughput (issue 11)", "",
             "Random-weight, small InstructPix2Pix pipelines: pipeline overhead on this CPU, not SD-1.5 speed.",
             "", f"Command: `{res['command']}`  ", f"Host: {res['host']['cpu']} ({res['host']['cores']} cores), "
             f"torch threads {res['threads']}, load average before/after "
             f"{res['loadavg_before'][0]:.2f} / {res['loadavg_after'][0]:.2f}.", "",
             "| cell | UNet widths | UNet params | size px | steps | pairs | seconds | pairs/s | s/pair |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['cell']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['cell']} | {r['block_out_channels']} | {r['parameters']['unet']:,} | {r['size']} | "
                     f"{r['steps']} | {r['written']} | {r['seconds']:.2f} | {r['pairs_per_second']:.3f} | "
                     f"{r['seconds_per_pair']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--pairs", type=int, default=8, help="timed pairs per cell (after one warm-up pair)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--render-only", action="store_true", help="only rewrite the .md from the JSON")
    args = ap.parse_args()
    md = RESULTS / "distill_data.md"
    if args.render_only:
        rewrite_markdown("distill_data", _markdown)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mk-distill-") as tmp:
        for name in args.cells:
            try:
                rows.append(measure(name, args.pairs, Path(tmp)))
            except Exception as exc:  # one failing cell is a result, not the end of the run
                rows.append({"cell": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(json.dumps(rows[-1]), flush=True)
    out = write_result("distill_data.json", {"weights": "random (tiny configs; not SD-1.5)", "threads": args.threads,
                                             "pairs": args.pairs, "loadavg_before": load_before,
                                             "loadavg_after": os.getloadavg(), "rows": rows})
    write_text_atomic(md, _markdown(json.loads(out.read_text())))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
