"""Is the TinyFusion testbed's teacher trained to convergence? Its held-out loss and FD along pretraining.

Pretrains the 12-layer digit DiT of ``tinyfusion_bench.py`` exactly as that benchmark does (same
data split, batch, optimizer, EMA, seed), far past the quick mode's 800 steps, and evaluates the
EMA model every ``--every`` steps on the held-out digits' diffusion loss (fixed noise and
timesteps), plus the Fréchet distance of generated digits at the ``--fd-at`` steps. The pruning
comparison is only as meaningful as its teacher: a teacher still improving at the step where the
comparison starts confounds "recovers well" with "keeps training".

Run (from the repo root):
    nice -n 10 .venv/bin/python benchmarks/tinyfusion_teacher_curve_bench.py --steps 6000 \
        --save-teacher benchmarks/work/teacher_6000.pt
Writes benchmarks/results/tinyfusion_teacher_curve.{json,md,png}.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from tinyfusion_bench import (MODES, features, frechet, generate, heldout_loss, pretrain,  # noqa: E402
                              save_teacher, train_classifier)

from mobilekit._deps import toolchain_versions  # noqa: E402
from mobilekit._io import write_json_atomic, write_text_atomic  # noqa: E402
from mobilekit.train.tinyfusion.data import digits  # noqa: E402

log = logging.getLogger("tinyfusion_teacher_curve")
OUT = ROOT / "benchmarks" / "results" / "tinyfusion_teacher_curve.json"
# held-out loss falling by less than this share of itself per 1000 steps counts as converged
FLAT = 0.01


def run(steps: int, every: int, fd_at: list[int], threads: int, save: Path | None = None) -> dict[str, Any]:
    quick = MODES["quick"]
    data = digits((4, 8, 8))
    train, held = data.split(0.2, seed=0)
    clf, _ = train_classifier(train, held, seed=0)
    real = features(clf, held.x)
    points: list[dict[str, Any]] = []
    res: dict[str, Any] = {"benchmark": "tinyfusion_teacher_curve", "steps": steps, "every": every,
                           "batch": quick["batch"], "quick_mode_pretrain_steps": quick["pretrain_steps"],
                           "full_mode_pretrain_steps": MODES["full"]["pretrain_steps"], "points": points,
                           "threads": threads, "toolchain": toolchain_versions(),
                           "command": " ".join(["nice -n 10 .venv/bin/python benchmarks/tinyfusion_teacher_curve_bench.py",
                                                *sys.argv[1:]])}
    t0 = time.perf_counter()

    def checkpoint(step: int, ema: torch.nn.Module) -> None:
        point: dict[str, Any] = {"step": step, "heldout_loss": heldout_loss(ema, held)}
        if step in fd_at:
            point["fd"] = frechet(features(clf, generate(ema, quick["gen_samples"], quick["sample_steps"], 0)), real)
        log.info("step %d %s", step, point)
        points.append(point)
        # written at every checkpoint: an interrupted run keeps its curve (``complete`` says so)
        write_json_atomic(OUT, {**res, "complete": False, "seconds": time.perf_counter() - t0})

    teacher, step_s = pretrain(train, steps, quick["batch"], seed=0, every=every, checkpoint=checkpoint)
    if save is not None:  # the same teacher ``tinyfusion_bench.py --pretrain-steps STEPS --teacher-cache`` trains
        save_teacher(save, {"pretrain_steps": steps, "batch": quick["batch"]}, teacher, step_s)
    return {**res, "complete": True, "seconds_per_step": step_s, "seconds": time.perf_counter() - t0}


def _at(res: dict[str, Any], step: int) -> dict[str, Any] | None:
    return next((p for p in res["points"] if p["step"] == step), None)


def to_markdown(res: dict[str, Any]) -> str:
    pts = res["points"]
    last = pts[-1]
    quick = _at(res, res["quick_mode_pretrain_steps"])
    lines = ["# TinyFusion testbed: the teacher's pretraining curve", "",
             f"Command: `{res['command']}`. The 12-layer digit DiT of `tinyfusion_bench.py`, pretrained as there "
             f"(batch {res['batch']}, seed 0), evaluated every {res['every']} steps (EMA weights): held-out diffusion "
             f"loss on fixed noise, and FD of 300 DDIM-15 samples at some steps. "
             + (f"{res['seconds_per_step']:.3f} s per step on {res['threads']} thread(s)." if res.get("complete")
                else f"**Interrupted** after {res['points'][-1]['step']} of {res['steps']} steps "
                     f"({res['seconds'] / 60:.0f} min on {res['threads']} thread(s), machine shared)."), "", "![held-out loss](tinyfusion_teacher_curve.png)", "",
             "| step | held-out loss | FD |", "|---:|---:|---:|"]
    lines += [f"| {p['step']} | {p['heldout_loss']:.4f} | {p['fd']:.1f} |" if "fd" in p
              else f"| {p['step']} | {p['heldout_loss']:.4f} | |" for p in pts]
    lines.append("")
    if quick is not None:
        gain = quick["heldout_loss"] - last["heldout_loss"]
        tail = [p for p in pts if p["step"] > last["step"] - max(res["steps"] // 4, res["every"])]
        slope = ((tail[0]["heldout_loss"] - tail[-1]["heldout_loss"]) / max(1, tail[-1]["step"] - tail[0]["step"])
                 * 1000 if len(tail) > 1 else float("nan"))
        lines.append(f"At the quick mode's {res['quick_mode_pretrain_steps']} steps the held-out loss is "
                     f"{quick['heldout_loss']:.4f}; at {last['step']} it is {last['heldout_loss']:.4f} "
                     f"({100 * gain / quick['heldout_loss']:.1f}% lower). Over the last quarter of the run it falls "
                     f"{slope:.4f} per 1000 steps ({100 * slope / last['heldout_loss']:.1f}% of its last value): "
                     + ("the curve has flattened." if slope < FLAT * last["heldout_loss"] else
                        f"**not converged** (flat here means under {100 * FLAT:.0f}% per 1000 steps)."))
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = res["points"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([p["step"] for p in pts], [p["heldout_loss"] for p in pts], marker="o", ms=3, label="held-out loss (EMA)")
    ax.axvline(res["quick_mode_pretrain_steps"], color="grey", ls="--", lw=1)
    ax.text(res["quick_mode_pretrain_steps"], ax.get_ylim()[1], " quick mode's teacher", va="top", fontsize=8)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("held-out diffusion loss")
    fds = [p for p in pts if "fd" in p]
    if fds:
        ax2 = ax.twinx()
        ax2.plot([p["step"] for p in fds], [p["fd"] for p in fds], color="tab:orange", marker="s", ms=4, label="FD")
        ax2.set_ylabel("FD (generated vs held-out digits)", color="tab:orange")
    ax.set_title("12-layer digit DiT: pretraining curve")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--fd-at", type=int, nargs="*", default=[800, 1600, 3000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-teacher", type=Path, help="store the final teacher as a tinyfusion_bench --teacher-cache")
    ap.add_argument("--render-only", action="store_true", help="only rewrite the .md and .png from the JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.render_only:
        import json

        res = json.loads(OUT.read_text())
    else:
        bad = [s for s in args.fd_at if s % args.every or s > args.steps]
        if bad:
            raise SystemExit(f"--fd-at {bad}: each must be a multiple of --every {args.every} and <= --steps")
        res = run(args.steps, args.every, args.fd_at, args.threads, args.save_teacher)
        write_json_atomic(OUT, res)
    plot(res, OUT.with_suffix(".png"))
    write_text_atomic(OUT.with_suffix(".md"), to_markdown(res))


if __name__ == "__main__":
    main()
