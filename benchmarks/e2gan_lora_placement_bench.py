"""E²GAN LoRA-placement ablation: where should the adapter go, at the same parameter budget?

``e2gan_bench.py`` measured that full fine-tuning changes the ResNet blocks' weights more than the
paper's "crucial layers" (AUC 0.20), which the default LoRA placement targets. This benchmark tests
whether that matters for adaptation: for each seed of ``--seeds`` it trains (or reuses, from
``--work``) the same base as ``e2gan_bench.py`` and, for each held-out concept, adapts it with LoRA
on one named placement (``AdaptConfig.lora_layers``) at a time:

  crucial  the generator's crucial layers (stem, down/up-sampling, transformer, head): the default
  resnet   the ResNet blocks' convolutions only
  both     crucial + resnet, the one budget split between them by the rank allocation

Every placement gets the budget of ``e2gan_bench.py`` (uniform rank 2 on every crucial layer); the
rank allocation (``--ranks``, default the library's ``search``) spends it to within one rank step,
and the parameters actually spent are recorded per run. Training pairs, evaluation pairs, steps and
learning rate are ``e2gan_bench.py``'s, so the ``crucial`` runs are its ``lora-searched`` runs.
Statistics: mean ± 95% Student-t interval over seeds of the final PSNR per concept and averaged
over concepts, and the paired per-seed differences resnet − crucial and both − crucial.

Run:  .venv/bin/python benchmarks/e2gan_lora_placement_bench.py --mode quick --seeds 0 1 2 3 4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import e2gan_bench as eb  # noqa: E402
from benchmarks._common import RESULTS, provenance, write_json_and_markdown  # noqa: E402

from mobilekit.train.e2gan import concepts as cc  # noqa: E402
from mobilekit.train.e2gan.lora import layer_lora_cost, lora_targets  # noqa: E402
from mobilekit.train.e2gan.models import LORA_PLACEMENTS, build_generator  # noqa: E402
from mobilekit.train.e2gan.train import RANK_ALLOCATIONS  # noqa: E402

log = logging.getLogger("e2gan_lora_placement_bench")

PLACEMENTS = ("crucial", "resnet", "both")
REFERENCE = "crucial"  # the default placement; the others are compared with it, paired by seed
STEM = "e2gan_lora_placement"


def run_seed(mode: dict[str, Any], work: Path, seed: int, ranks: str,
             placements: tuple[str, ...] = PLACEMENTS) -> dict[str, Any]:
    """One seed: its base (reused when ``work`` holds it), then every placement on every held-out concept."""
    t0 = time.perf_counter()
    base, base_rec = eb._train_seed_base(mode, work, seed, reuse=True)
    budget = base_rec["lora_budget_parameters"]
    concepts: dict[str, Any] = {}
    for ci, concept in enumerate(cc.DEFAULT_HELD_OUT):
        train_pairs = eb.train_pairs_for(mode, seed, ci, concept)
        eval_pairs = eb._eval_pairs(mode, ci, concept)
        runs = {}
        for placement in placements:
            record, _ = eb._adapt_one(base, mode, (f"lora-{placement}", "lora", ranks, None), concept, train_pairs,
                                      eval_pairs, budget, seed, work / concept / placement, lora_layers=placement)
            record["placement"] = placement
            runs[placement] = record
        concepts[concept] = {"runs": runs}
    return {"seed": seed, "base": base_rec, "budget": budget, "concepts": concepts,
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def resnet_share(ranks: dict[str, int], generator: torch.nn.Module) -> float:
    """The fraction of the LoRA parameters of ``ranks`` that sit on the ResNet-block convolutions."""
    mods = dict(generator.named_modules())
    resnet = set(lora_targets(generator, LORA_PLACEMENTS["resnet"]))
    cost = {n: layer_lora_cost(mods[n]) * r for n, r in ranks.items()}
    return sum(c for n, c in cost.items() if n in resnet) / sum(cost.values())


def analyse(seeds: dict[str, dict[str, Any]], gen: str) -> dict[str, Any]:
    """Per concept and concept-averaged intervals over seeds, paired differences against ``REFERENCE``;
    per placement the parameters spent and, where the allocation chose, the ResNet blocks' share."""
    generator = build_generator(eb._gen_config(gen))
    ordered = [seeds[k] for k in sorted(seeds, key=int)]
    concepts = list(ordered[0]["concepts"])
    placements = [p for p in PLACEMENTS if p in ordered[0]["concepts"][concepts[0]]["runs"]]

    def psnr(s: dict[str, Any], concept: str, p: str) -> float:
        return s["concepts"][concept]["runs"][p]["psnr"]

    def block(values: Any) -> dict[str, Any]:
        out: dict[str, Any] = {p: eb._interval([values(s, p) for s in ordered]) for p in placements}
        for p in placements:
            if p != REFERENCE:
                out[f"{p}_minus_{REFERENCE}"] = eb._interval([values(s, p) - values(s, REFERENCE) for s in ordered])
        return out

    per_concept = {c: block(lambda s, p, c=c: psnr(s, c, p)) for c in concepts}
    # averaging over concepts first makes the seed the unit of replication (n = seeds)
    averaged = block(lambda s, p: statistics.mean(psnr(s, c, p) for c in concepts))
    params: dict[str, Any] = {}
    for p in placements:
        runs = [s["concepts"][c]["runs"][p] for s in ordered for c in concepts]
        spent = [r["lora_parameters_spent"] for r in runs]
        params[p] = {"lora_parameters_spent_min": min(spent), "lora_parameters_spent_max": max(spent),
                     "lora_parameters_spent_mean": round(statistics.mean(spent), 1),
                     "trainable_parameters_mean": round(statistics.mean(r["trainable_parameters"] for r in runs), 1),
                     "seconds": eb._interval([r["seconds"] for r in runs], 2),
                     # with both groups open, how much of the budget the rank allocation gave the ResNet blocks
                     "resnet_share": eb._interval([resnet_share(r["ranks"], generator) for r in runs])}
    return {"n_seeds": len(ordered), "concepts": concepts, "placements": placements, "per_concept": per_concept,
            "averaged": averaged, "parameters": params}


def _ci(s: dict[str, Any]) -> str:
    return f"{s['mean']:.2f} ± {s['ci95']:.2f}"


def _table(st: dict[str, Any], placements: list[str]) -> list[str]:
    lines = [f"| placement | PSNR dB | Δ vs {REFERENCE} (paired) | per seed Δ |", "|---|---|---|---|"]
    for p in placements:
        d = st.get(f"{p}_minus_{REFERENCE}")
        lines.append(f"| {p} | {_ci(st[p])} | {_ci(d) if d else '-'} | "
                     f"{', '.join(f'{v:+.2f}' for v in d['values']) if d else '-'} |")
    return lines


def to_markdown(res: dict[str, Any]) -> str:
    an = res["analysis"]
    seeds = sorted(res["seeds"], key=int)
    s0 = res["seeds"][seeds[0]]
    pl = an["placements"]
    lines = [f"# E²GAN LoRA placement at one budget ({res['mode']} mode, {an['n_seeds']} seeds)", "",
             f"Command: `{res['command']}`", "",
             f"Seeds {', '.join(seeds)}; each seed's base is `e2gan_bench.py`'s (trained once per seed, reused from "
             f"`--work` when present); torch threads {res['threads']}; generator `{res['settings']['gen']}` "
             f"({s0['base']['generator_parameters']} params); LoRA budget {s0['budget']} parameters for every "
             f"placement (uniform rank 2 on every crucial layer); ranks `{res['ranks']}`; "
             f"{res['settings']['adapt_steps']} adaptation steps on {res['settings']['adapt_pairs']} pairs; "
             f"evaluation on {res['settings']['eval_pairs']} held-out-photo pairs per concept, the same every seed. "
             "Wall time: " + ", ".join(f"seed {k} {res['seeds'][k]['wall_seconds']:.0f} s" for k in seeds) + ".", "",
             "Placements (`AdaptConfig.lora_layers`, `gan adapt --lora-layers`): "
             + "; ".join(f"`{p}` = `{' '.join(LORA_PLACEMENTS[p])}`" for p in pl) + ".", "",
             "Mean ± 95% Student-t half-width over seeds of the PSNR after the last step. Δ: per-seed paired "
             f"difference against the same seed's `{REFERENCE}` run (same base, pairs and seed).", "",
             "## LoRA parameters actually spent", "",
             "| placement | LoRA params spent (min–max over runs) | trainable params (mean, embedding included) "
             "| share on ResNet convs | seconds |", "|---|---|---|---|---|"]
    for p in pl:
        q = an["parameters"][p]
        lines.append(f"| {p} | {q['lora_parameters_spent_min']}–{q['lora_parameters_spent_max']} | "
                     f"{q['trainable_parameters_mean']:.0f} | {_ci(q['resnet_share'])} | {_ci(q['seconds'])} |")
    lines += ["", "Seconds are wall-clock on a 2-core host shared with other jobs: not a speed comparison."]
    lines += ["", "## averaged over the held-out concepts", "", *_table(an["averaged"], pl), ""]
    for c in an["concepts"]:
        lines += [f"## held-out concept `{c}`", "", *_table(an["per_concept"][c], pl), ""]
    lines += ["## every run", "", "| seed | concept | placement | PSNR dB | L1 | FD | LoRA params spent | ranks |",
              "|---|---|---|---|---|---|---|---|"]
    for k in seeds:
        for c, cd in res["seeds"][k]["concepts"].items():
            for p, r in cd["runs"].items():
                ranks = ", ".join(f"{n}:{v}" for n, v in r["ranks"].items())
                lines.append(f"| {k} | {c} | {p} | {r['psnr']} | {r['l1']} | {r['fd']} | "
                             f"{r['lora_parameters_spent']} | {ranks} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(eb.MODES), default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ranks", choices=RANK_ALLOCATIONS, default="search", help="rank allocation for every placement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/e2gan_lora_placement"),
                    help="run directories; a seed's base found here is reused")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{STEM}.json")
    ap.add_argument("--render-only", action="store_true", help="only rewrite the .md from the JSON")
    args = ap.parse_args(argv)
    if args.render_only:  # recompute the statistics too, so a change to them needs no re-run
        res = json.loads(args.out.read_text())
        res["analysis"] = analyse(res["seeds"], res["settings"]["gen"])
        write_json_and_markdown(args.out, res, to_markdown)
        return res
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    mode = eb.MODES[args.mode]
    eb._warm_up()  # one-off import and peft costs out of the first run's seconds
    res: dict[str, Any] = {**provenance(), "mode": args.mode, "settings": mode, "ranks": args.ranks,
                           "threads": args.threads, "lr": eb.LR, "seeds": {}}
    t0 = time.perf_counter()
    for seed in args.seeds:
        res["seeds"][str(seed)] = run_seed(mode, args.work / f"seed{seed}", seed, args.ranks)
        res["analysis"] = analyse(res["seeds"], mode["gen"])
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_json_and_markdown(args.out, res, to_markdown)  # after every seed, so a partial run keeps what it measured
    log.info("wrote %s in %.0f s", args.out, time.perf_counter() - t0)
    return res


if __name__ == "__main__":
    main()
