"""E²GAN benchmark: adapting a base GAN to held-out concepts, and generator host latency.

Quality part (built-in offline concept set, nothing downloaded):
  1. Train one base on concepts chosen by k-means from the pool minus 3 held-out concepts.
  2. For each held-out concept, adapt with: LoRA on crucial layers with searched ranks,
     LoRA with uniform ranks at the same budget, full fine-tuning of the base, training
     from scratch; each on all pairs and on a k-means subset.
  3. Evaluate on crops of photos never used for training (skimage.data held-out photos):
     PSNR and L1 against the concept's true edit, Fréchet distance in the fixed 76-d
     feature space of ``mobilekit.train.e2gan.metrics``; wall-clock seconds to reach a
     fixed quality (``q80``: the base's zero-shot PSNR plus 80% of the best PSNR gain over
     it that any run of the concept reached; rank search and subset selection time count); trainable / stored parameters and bytes.

Latency part: the default generator (256×256) exported with ``mobilekit.export`` for
pixel-8 as ExecuTorch-XNNPACK and TFLite, fp32 and int8-dynamic, measured on this host
with ``mobilekit.profile``.

Run:  nice -n 10 .venv/bin/python benchmarks/e2gan_bench.py --mode quick
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilekit._io import write_json_atomic, write_text_atomic  # noqa: E402
from mobilekit.train.e2gan import concepts as cc  # noqa: E402
from mobilekit.train.e2gan.adapt import adapt  # noqa: E402
from mobilekit.train.e2gan.loop import LoopConfig  # noqa: E402
from mobilekit.train.e2gan.metrics import frechet_distance, image_features, l1, psnr  # noqa: E402
from mobilekit.train.e2gan.models import (E2GANConfig, PatchDiscriminatorConfig,  # noqa: E402
                                          build_generator)
from mobilekit.train.e2gan.train import AdaptConfig, BaseTrainConfig, train_base  # noqa: E402

log = logging.getLogger("e2gan_bench")

MODES: dict[str, dict[str, Any]] = {
    "smoke": {"size": 16, "gen": "tiny", "base_steps": 4, "base_pairs": 4, "num_concepts": 2,
              "adapt_steps": 4, "adapt_pairs": 8, "subset": 4, "eval_pairs": 4, "eval_every": 2,
              "batch": 2, "latency_seconds": 1.0},
    "quick": {"size": 48, "gen": "small", "base_steps": 400, "base_pairs": 48, "num_concepts": 6,
              "adapt_steps": 120, "adapt_pairs": 64, "subset": 16, "eval_pairs": 24, "eval_every": 20,
              "batch": 8, "latency_seconds": 4.0},
    "full": {"size": 64, "gen": "small", "base_steps": 3000, "base_pairs": 128, "num_concepts": 8,
             "adapt_steps": 600, "adapt_pairs": 128, "subset": 32, "eval_pairs": 64, "eval_every": 50,
             "batch": 8, "latency_seconds": 10.0},
}
METHODS = [("lora-searched", "lora", "search"), ("lora-uniform", "lora", "uniform"),
           ("full-finetune", "full", None), ("scratch", "scratch", None)]
LR = {"lora": 2e-3, "full": 5e-4, "scratch": 5e-4}
BASE_LR = 5e-4
UNIFORM_RANK = 2  # the LoRA budget = rank 2 on every crucial layer


def _gen_config(name: str) -> E2GANConfig:
    return {"tiny": E2GANConfig.tiny, "small": E2GANConfig.small, "default": E2GANConfig}[name]()


def _evaluate(model: Any, pairs: cc.ConceptPairs) -> dict[str, float]:
    with torch.no_grad():
        out = torch.cat([model(pairs.sources[i:i + 16], torch.zeros(min(16, len(pairs) - i), dtype=torch.long))
                         for i in range(0, len(pairs), 16)])
    return {"psnr": round(psnr(out, pairs.targets), 3), "l1": round(l1(out, pairs.targets), 4),
            "fd": round(frechet_distance(image_features(out), image_features(pairs.targets)), 3)}


def generator_macs(cfg: E2GANConfig, size: int) -> int:
    """Multiply-accumulates of one generator call at size×size (conv, linear, attention matmuls)."""
    g = build_generator(cfg).eval()
    macs = 0

    def hook(mod: torch.nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(mod, torch.nn.Conv2d):
            macs += out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        elif isinstance(mod, torch.nn.Linear):
            macs += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    img, txt = g.example_inputs(size=size)
    with torch.no_grad():
        g(img, txt)
    for h in hs:
        h.remove()
    n_tok = (size // 8) ** 2
    w3 = cfg.widths[3]
    macs += 2 * n_tok * n_tok * w3 + 2 * n_tok * cfg.text_len * w3  # self- and cross-attention matmuls
    return int(macs)


def run_quality(mode: dict[str, Any], work: Path, seed: int) -> dict[str, Any]:
    held_out = list(cc.DEFAULT_HELD_OUT)
    gcfg = _gen_config(mode["gen"])
    size = mode["size"]
    t0 = time.perf_counter()
    base_cfg = BaseTrainConfig(generator=gcfg, discriminator=PatchDiscriminatorConfig(base_width=16, num_layers=3),
                               num_concepts=mode["num_concepts"], exclude=tuple(held_out),
                               pairs_per_concept=mode["base_pairs"], image_size=size,
                               loop=LoopConfig(steps=mode["base_steps"], batch_size=mode["batch"], lr=BASE_LR,
                                               seed=seed, checkpoint_every=0))
    base = train_base(base_cfg, work / "base")
    base_run = json.loads((work / "base" / "run.json").read_text())
    log.info("base trained in %.0f s on %s", time.perf_counter() - t0, base_run["concepts"])
    n_gen = base.generator.num_parameters()
    from mobilekit.train.e2gan.lora import layer_lora_cost, lora_targets

    mods = dict(base.generator.named_modules())
    rank1 = sum(layer_lora_cost(mods[n]) for n in lora_targets(base.generator))
    budget = UNIFORM_RANK * rank1  # uniform ranks spend it exactly; the search spends at most this
    results: dict[str, Any] = {"base": {"concepts": base_run["concepts"], "train_seconds": base_run["train_seconds"],
                                        "steps": mode["base_steps"], "generator_parameters": n_gen,
                                        "generator_bytes_fp32": 4 * n_gen},
                               "lora_budget_parameters": budget, "lora_budget_rule": f"uniform rank {UNIFORM_RANK} on "
                               "every crucial layer", "concepts": {}}
    for ci, concept in enumerate(held_out):
        train_pairs = cc.builtin_pairs(concept, mode["adapt_pairs"], size, seed=seed + 100 + ci)
        eval_pairs = cc.builtin_pairs(concept, mode["eval_pairs"], size, seed=seed + 900 + ci, held_out_photos=True)
        identity = {"psnr": round(psnr(eval_pairs.sources, eval_pairs.targets), 3),
                    "l1": round(l1(eval_pairs.sources, eval_pairs.targets), 4)}
        mean_emb = base.embeddings.table.detach().mean(0)
        with torch.no_grad():
            zs = base.generator(eval_pairs.sources, mean_emb.expand(len(eval_pairs), -1, -1))
        zero_shot = {"psnr": round(psnr(zs, eval_pairs.targets), 3), "l1": round(l1(zs, eval_pairs.targets), 4)}
        runs = {}
        for data_mode in ("all", "subset"):
            for label, method, ranks in METHODS:
                name = f"{label}/{data_mode}"
                cfg = AdaptConfig(concept=concept, method=method, ranks=ranks or "search", budget=budget,
                                  subset=mode["subset"] if data_mode == "subset" else None, image_size=size,
                                  loop=LoopConfig(steps=mode["adapt_steps"], batch_size=mode["batch"], lr=LR[method],
                                                  seed=seed, checkpoint_every=0, eval_every=mode["eval_every"]))
                res = adapt(base, cfg, work / concept / label / data_mode, data=train_pairs,
                            eval_fn=lambda m, step, secs, ep=eval_pairs: _evaluate(m, ep))
                final = res.history[-1]
                spent = None
                if res.ranks:
                    mods = dict(base.generator.named_modules())
                    from mobilekit.train.e2gan.lora import layer_lora_cost

                    spent = sum(layer_lora_cost(mods[n]) * r for n, r in res.ranks.items())
                runs[name] = {"method": label, "data": data_mode, "pairs": mode["subset"] if data_mode == "subset"
                              else mode["adapt_pairs"], "psnr": final["psnr"], "l1": final["l1"], "fd": final["fd"],
                              "train_seconds": round(res.train_seconds, 2),
                              "setup_seconds": round(res.setup_seconds, 2),
                              "trainable_parameters": res.trainable_parameters,
                              "stored_parameters": res.stored_parameters, "stored_bytes": res.stored_bytes,
                              "stored_fraction_of_generator_bytes": round(res.stored_bytes / (4 * n_gen), 5),
                              "lora_parameters_spent": spent, "ranks": res.ranks, "history": res.history}
                log.info("%s %s: psnr %.2f l1 %.4f fd %.2f in %.1f s", concept, name, final["psnr"], final["l1"],
                         final["fd"], res.train_seconds)
        best = max(r["psnr"] for r in runs.values())
        q = zero_shot["psnr"] + 0.8 * (best - zero_shot["psnr"])
        for r in runs.values():
            hit = next((h for h in r["history"] if h["psnr"] >= q), None)
            r["seconds_to_q80"] = None if hit is None else round(hit["train_seconds"] + r["setup_seconds"], 2)
            r["steps_to_q80"] = None if hit is None else hit["step"]
        results["concepts"][concept] = {"identity": identity, "base_zero_shot": zero_shot, "q80_psnr": round(q, 3),
                                        "runs": runs}
    return results


def run_latency(work: Path, seconds: float) -> dict[str, Any]:
    """Export the default generator at 256×256 and measure it on this host."""
    import mobilekit

    g = build_generator(E2GANConfig(), seed=0).eval()
    inputs = g.example_inputs(size=256)
    rows: list[dict[str, Any]] = []
    from mobilekit.profiling.host import profile

    for precision in ("fp32", "int8-dynamic"):
        for fmt in ("executorch", "tflite"):  # one export each, so one failure does not hide the other
            try:
                manifest = mobilekit.export(g, inputs, targets=["pixel-8"], formats=[fmt], precision=precision,
                                            out_dir=work / "latency" / precision / fmt, use_cache=False,
                                            model_name="e2gan-default")
            except Exception as exc:  # record the failure, keep the benchmark going
                rows.append({"precision": precision, "format": fmt, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            for art in manifest.artifacts:
                row: dict[str, Any] = {"precision": precision, "format": art.recipe.format,
                                       "delegate": getattr(art.recipe, "delegate", None), "size_bytes": art.size_bytes,
                                       "export_seconds": round(art.export_seconds, 1),
                                       "parity": art.parity.to_dict() if hasattr(art.parity, "to_dict")
                                       else str(art.parity)}
                try:
                    rep = profile(manifest.path_of(art), target="pixel-8", max_seconds=seconds, per_op=False)
                    row.update({"p50_ms": round(rep.p50_ms, 2), "runtime": rep.runtime, "source": rep.source,
                                "samples": len(rep.samples_ms), "threads": rep.threads})
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                rows.append(row)
    mods = dict(g.named_modules())
    from mobilekit.train.e2gan.lora import layer_lora_cost, lora_targets

    rank1 = sum(layer_lora_cost(mods[n]) for n in lora_targets(g))
    return {"model": "E2GANGenerator(E2GANConfig()) at 256x256", "parameters": g.num_parameters(),
            "lora_rank1_all_crucial_parameters": rank1,
            "lora_budget_fraction_at_uniform_rank": {str(r): round(r * rank1 / g.num_parameters(), 5)
                                                     for r in (1, 2, 4)},
            "macs": generator_macs(E2GANConfig(), 256), "rows": rows}


def to_markdown(res: dict[str, Any]) -> str:
    lines = [f"# E²GAN benchmark ({res['mode']} mode)", "", f"Command: `{res['command']}`", "",
             f"Seed {res['seed']}; torch threads {res['threads']}; generator `{res['generator']}` "
             f"({res['quality']['base']['generator_parameters']} params); base concepts "
             f"{', '.join(res['quality']['base']['concepts'])}; LoRA budget "
             f"{res['quality']['lora_budget_parameters']} params ({res['quality']['lora_budget_rule']}).", ""]
    for concept, c in res["quality"]["concepts"].items():
        lines += [f"## held-out concept `{concept}`", "",
                  f"identity (output = source): PSNR {c['identity']['psnr']} dB, L1 {c['identity']['l1']}; "
                  f"base zero-shot (mean embedding): PSNR {c['base_zero_shot']['psnr']} dB; "
                  f"q80 threshold {c['q80_psnr']} dB", "",
                  "| method | data | PSNR dB | L1 | FD | train s | s to q80 | steps to q80 | trainable | stored params "
                  "| stored bytes | % of gen bytes | LoRA params spent |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        order = [f"{label}/{data}" for data in ("all", "subset") for label, _, _ in METHODS]
        for r in (c["runs"][k] for k in order if k in c["runs"]):
            lines.append(f"| {r['method']} | {r['data']} ({r['pairs']}) | {r['psnr']} | {r['l1']} | {r['fd']} | "
                         f"{r['train_seconds']} | {r['seconds_to_q80']} | {r['steps_to_q80']} | "
                         f"{r['trainable_parameters']} | {r['stored_parameters']} | {r['stored_bytes']} | "
                         f"{100 * r['stored_fraction_of_generator_bytes']:.2f} | {r['lora_parameters_spent'] or '-'} |")
        lines.append("")
    lat = res.get("latency")
    if lat:
        fr = lat["lora_budget_fraction_at_uniform_rank"]
        lines += ["## generator host latency (256×256, pixel-8 recipes, measured on this host)", "",
                  f"{lat['model']}: {lat['parameters']} params, {lat['macs'] / 1e9:.2f} GMACs. "
                  f"LoRA on all its crucial layers: rank 1 = {lat['lora_rank1_all_crucial_parameters']} params "
                  f"({100 * fr['1']:.2f} % of the generator), rank 2 = {100 * fr['2']:.2f} %, "
                  f"rank 4 = {100 * fr['4']:.2f} %.", "",
                  "| format | precision | p50 ms | size bytes | note |", "|---|---|---|---|---|"]
        for r in lat["rows"]:
            lines.append(f"| {r.get('format', '-')} | {r['precision']} | {r.get('p50_ms', '-')} | "
                         f"{r.get('size_bytes', '-')} | {r.get('error', '')[:120]} |")
        lines.append("")
    return "\n".join(lines)


def render_only(path: Path) -> None:
    """Rewrite the markdown table from an existing JSON result."""
    write_text_atomic(path.with_suffix(".md"), to_markdown(json.loads(path.read_text())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/e2gan_bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2gan.json")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="only rewrite the .md from the JSON")
    args = ap.parse_args()
    if args.render_only:
        render_only(args.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    mode = MODES[args.mode]
    shutil.rmtree(args.work, ignore_errors=True)
    from mobilekit._deps import toolchain_versions

    res: dict[str, Any] = {"command": " ".join(["python", "benchmarks/e2gan_bench.py", *sys.argv[1:]]),
                           "mode": args.mode, "settings": mode, "seed": args.seed, "threads": args.threads,
                           "generator": mode["gen"], "lr": LR, "base_lr": BASE_LR,
                           "toolchain": toolchain_versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.perf_counter()
    if not args.skip_quality:
        res["quality"] = run_quality(mode, args.work, args.seed)
        write_json_atomic(args.out, res)
    if not args.skip_latency:
        res["latency"] = run_latency(args.work, mode["latency_seconds"])
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if args.skip_quality and args.out.is_file():  # merge into the quality results
        prev = json.loads(args.out.read_text())
        prev.update({"latency": res.get("latency"), "latency_command": res["command"],
                     "latency_wall_seconds": res["wall_seconds"]})
        res = prev
    write_json_atomic(args.out, res)
    if "quality" in res:
        write_text_atomic(args.out.with_suffix(".md"), to_markdown(res))
    log.info("wrote %s in %.0f s", args.out, res["wall_seconds"])


if __name__ == "__main__":
    main()
