"""E²GAN base-selection ablation (issue 11): which concepts should the base be trained on?

For each seed of ``--seeds``, three bases with the same steps, batch and total pair budget
(``num_concepts × base_pairs`` pairs):
  * ``clustered``: ``num_concepts`` concepts chosen by k-means on concept descriptors
    (``choose_concepts``, as ``e2gan_bench.py`` does);
  * ``random``: the same number drawn at random (seeded by the seed) from the same pool (the
    built-in concepts minus the 3 held-out ones);
  * ``single``: one concept, the pool concept nearest the pool's centre in standardised
    descriptor space (deterministic: the same concept for every seed), trained on all the pairs.
Each base is adapted with ``lora-searched`` (the bench's default method, same budget and steps)
to the same 3 held-out concepts, with the same training pairs per seed and concept; evaluation on
the bench's held-out-photo pairs (PSNR, L1, Fréchet distance). Recorded too: each base's zero-shot
PSNR on each held-out concept (mean embedding, as in the bench, and the embedding of the base
concept nearest the held-out one in descriptor space) and the identity PSNR.
Over seeds: mean ± 95% Student-t interval per base kind (concept average and per concept) and
paired differences clustered − random, clustered − single.

Run:  nice -n 10 .venv/bin/python benchmarks/e2gan_base_ablation_bench.py --mode quick --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.e2gan_bench as eb  # noqa: E402
from benchmarks._common import provenance, write_json_and_markdown  # noqa: E402

from mobilekit.train.e2gan import concepts as cc  # noqa: E402

log = logging.getLogger("e2gan_base_ablation")

KINDS = ("clustered", "random", "single")
CONTRASTS = [("clustered", "random"), ("clustered", "single")]
METRICS = ("psnr", "l1", "fd", "zero_shot_psnr", "zero_shot_nearest_psnr", "zero_shot_minus_identity",
           "zero_shot_nearest_minus_identity")
METHOD = eb.METHODS[0]  # ("lora-searched", "lora", "search", None)
assert METHOD[0] == eb.REFERENCE


def base_pool(held_out: tuple[str, ...] = cc.DEFAULT_HELD_OUT) -> list[str]:
    """The concepts a base may be trained on: the built-in pool minus the held-out concepts (sorted)."""
    return [c for c in cc.builtin_concepts() if c not in held_out]


def random_concepts(pool: list[str], k: int, seed: int) -> list[str]:
    """``k`` distinct concepts of ``pool`` drawn at random with ``seed`` (sorted)."""
    if not 0 < k <= len(pool):
        raise ValueError(f"cannot draw {k} concepts from a pool of {len(pool)}")
    return sorted(random.Random(seed).sample(list(pool), k))


def _standardised(desc: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (desc - ref.mean(0)) / (ref.std(0) + 1e-8)


def central_concept(pool: list[str], desc: np.ndarray | None = None) -> str:
    """The pool concept nearest the pool's centre (mean of the standardised descriptors)."""
    d = cc.concept_descriptors(pool) if desc is None else desc
    z = _standardised(d, d)
    return pool[int(np.argmin(((z - z.mean(0)) ** 2).sum(1)))]


def nearest_base_concept(target: str, base_concepts: list[str], pool: list[str], pool_desc: np.ndarray,
                         target_desc: np.ndarray) -> str:
    """The base concept nearest ``target`` in descriptor space (standardised over the pool)."""
    zp = _standardised(pool_desc, pool_desc)
    zt = _standardised(target_desc[None], pool_desc)[0]
    dist = {c: float(((zp[pool.index(c)] - zt) ** 2).sum()) for c in base_concepts}
    return min(base_concepts, key=lambda c: dist[c])


def base_concepts_for(kind: str, pool: list[str], k: int, seed: int, single: str) -> list[str] | None:
    """The concepts of a base kind; None for ``clustered`` (``train_base`` chooses them by k-means)."""
    if kind == "clustered":
        return None
    if kind == "random":
        return random_concepts(pool, k, seed)
    if kind == "single":
        return [single]
    raise ValueError(kind)


def run_seed(mode: dict[str, Any], work: Path, seed: int, single: str, pool: list[str], pool_desc: np.ndarray,
             held_desc: dict[str, np.ndarray], identity: dict[str, float]) -> dict[str, Any]:
    t0 = time.perf_counter()
    total_pairs = mode["num_concepts"] * mode["base_pairs"]
    out: dict[str, Any] = {"seed": seed, "bases": {}}
    for kind in KINDS:
        names = base_concepts_for(kind, pool, mode["num_concepts"], seed, single)
        per = total_pairs // (len(names) if names else mode["num_concepts"])
        base, rec = eb._train_seed_base(mode, work / kind, seed, concepts=names, pairs_per_concept=per)
        rec["kind"] = kind
        mean_emb = base.embeddings.table.detach().mean(0)
        concepts = {}
        for ci, concept in enumerate(cc.DEFAULT_HELD_OUT):
            train_pairs = cc.builtin_pairs(concept, mode["adapt_pairs"], mode["size"], seed=1000 * seed + 100 + ci)
            eval_pairs = eb._eval_pairs(mode, ci, concept)
            near = nearest_base_concept(concept, rec["concepts"], pool, pool_desc, held_desc[concept])
            zs = eb._psnr_of(base.generator, mean_emb, eval_pairs)
            zs_near = eb._psnr_of(base.generator, base.text_embeds(near), eval_pairs)
            record, _ = eb._adapt_one(base, mode, METHOD, concept, train_pairs, eval_pairs,
                                      rec["lora_budget_parameters"], seed, work / kind / concept)
            record.pop("history", None)
            concepts[concept] = {**record, "zero_shot_psnr": zs, "nearest_base_concept": near,
                                 "zero_shot_nearest_psnr": zs_near, "identity_psnr": identity[concept],
                                 "zero_shot_minus_identity": round(zs - identity[concept], 3)}
        out["bases"][kind] = {"base": rec, "concepts": concepts}
        log.info("seed %d %s base %s: adapted PSNR %s", seed, kind, rec["concepts"],
                 [concepts[c]["psnr"] for c in concepts])
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _metric(run: dict[str, Any], metric: str) -> float:
    if metric == "zero_shot_nearest_minus_identity":
        return run["zero_shot_nearest_psnr"] - run["identity_psnr"]
    return run[metric]


def analyse(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± 95% t-interval over seeds per base kind (concept average and per concept), and paired contrasts."""
    order = sorted(seeds, key=int)
    held = list(cc.DEFAULT_HELD_OUT)

    def values(kind: str, metric: str, concept: str | None) -> list[float]:
        vs = []
        for k in order:
            cs = seeds[k]["bases"][kind]["concepts"]
            vs.append(_metric(cs[concept], metric) if concept else statistics.mean(_metric(cs[c], metric) for c in held))
        return vs

    def block(concept: str | None) -> dict[str, Any]:
        res: dict[str, Any] = {kind: {m: eb._interval(values(kind, m, concept)) for m in METRICS} for kind in KINDS}
        res["contrasts"] = {f"{a}_minus_{b}": {m: eb._interval([x - y for x, y in zip(values(a, m, concept),
                                                                                        values(b, m, concept))])
                                                for m in METRICS} for a, b in CONTRASTS}
        return res

    return {"n_seeds": len(order), "averaged": block(None), "per_concept": {c: block(c) for c in held}}


def _md_block(st: dict[str, Any]) -> list[str]:
    ci = eb._ci
    lines = ["| base kind | adapted PSNR dB | adapted L1 | adapted FD | zero-shot PSNR (mean emb.) "
             "| zero-shot PSNR (nearest base concept) | zero-shot − identity dB (mean emb.) "
             "| zero-shot − identity dB (nearest) |", "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        s = st[kind]
        lines.append(f"| {kind} | {ci(s['psnr'])} | {s['l1']['mean']:.4f} ± {s['l1']['ci95']:.4f} | {ci(s['fd'])} | "
                     f"{ci(s['zero_shot_psnr'])} | {ci(s['zero_shot_nearest_psnr'])} | "
                     f"{ci(s['zero_shot_minus_identity'])} | {ci(s['zero_shot_nearest_minus_identity'])} |")
    for name, s in st["contrasts"].items():
        lines.append(f"| Δ {name.replace('_minus_', ' − ')} (paired) | {ci(s['psnr'])} | "
                     f"{s['l1']['mean']:.4f} ± {s['l1']['ci95']:.4f} | {ci(s['fd'])} | {ci(s['zero_shot_psnr'])} | "
                     f"{ci(s['zero_shot_nearest_psnr'])} | {ci(s['zero_shot_minus_identity'])} | "
                     f"{ci(s['zero_shot_nearest_minus_identity'])} |")
    return lines


def to_markdown(res: dict[str, Any]) -> str:
    an, seeds = res["analysis"], res["seeds"]
    order = sorted(seeds, key=int)
    m = res["settings"]
    lines = [f"# E²GAN base-selection ablation ({res['mode']} mode, {an['n_seeds']} seeds)", "",
             f"Command: `{res['command']}`", "",
             f"Per seed three bases, {m['base_steps']} steps, batch {m['batch']}, "
             f"{m['num_concepts'] * m['base_pairs']} training pairs each: *clustered* = {m['num_concepts']} concepts "
             f"by k-means (`choose_concepts`), *random* = {m['num_concepts']} concepts drawn at random (seeded) from "
             f"the pool ({len(res['pool'])} built-in concepts minus the held-out {', '.join(cc.DEFAULT_HELD_OUT)}), "
             f"*single* = `{res['single_concept']}` (the pool concept nearest the pool's centre in standardised "
             f"descriptor space; the same every seed). Each base adapted with {METHOD[0]} "
             f"({m['adapt_steps']} steps, same LoRA budget, same training pairs per seed and concept), evaluated on "
             f"{m['eval_pairs']} held-out-photo pairs per concept. Torch threads {res['threads']}. "
             f"Wall time {res.get('wall_seconds', 0):.0f} s: "
             + ", ".join(f"seed {k} {seeds[k]['wall_seconds']:.0f} s" for k in order) + ".", "",
             "Identity PSNR (output = source): " + ", ".join(f"{c} {v} dB" for c, v in res["identity_psnr"].items())
             + ".", "", "Base concepts: "
             + "; ".join(f"seed {k}: " + ", ".join(f"{kind} [{', '.join(seeds[k]['bases'][kind]['base']['concepts'])}]"
                                                  for kind in KINDS) for k in order) + ".", "",
             "Mean ± 95% Student-t half-width over seeds. Δ rows: paired per-seed differences. PSNR higher is "
             "better; L1 and FD lower is better. Zero-shot (mean emb.): the base run with the mean of its concept "
             "embeddings, as in `e2gan_bench.py`; (nearest base concept): with the embedding of its concept "
             "nearest the held-out one in descriptor space.", "", "## averaged over the held-out concepts", "",
             *_md_block(an["averaged"]), ""]
    for c, st in an["per_concept"].items():
        near = "; ".join(f"seed {k}: " + ", ".join(f"{kind} {seeds[k]['bases'][kind]['concepts'][c]['nearest_base_concept']}"
                                                  for kind in KINDS) for k in order)
        lines += [f"## held-out concept `{c}` (identity {res['identity_psnr'][c]} dB)", "",
                  f"Nearest base concept: {near}.", "", *_md_block(st), ""]
    lines += ["## every run", "", "| seed | base kind | concept | PSNR dB | L1 | FD | zero-shot PSNR | "
              "zero-shot nearest PSNR | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for k in order:
        for kind in KINDS:
            for c, r in seeds[k]["bases"][kind]["concepts"].items():
                lines.append(f"| {k} | {kind} | {c} | {r['psnr']} | {r['l1']} | {r['fd']} | {r['zero_shot_psnr']} | "
                             f"{r['zero_shot_nearest_psnr']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(eb.MODES), default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base-steps", type=int, default=None, help="override the mode's base steps")
    ap.add_argument("--eval-pairs", type=int, default=None, help="override the mode's evaluation pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/e2gan_base_ablation"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2gan_base_ablation.json")
    ap.add_argument("--render-only", action="store_true", help="only recompute the analysis and .md from --out")
    args = ap.parse_args(argv)
    if args.render_only:
        res = json.loads(args.out.read_text())
        res["analysis"] = analyse(res["seeds"])
        write_json_and_markdown(args.out, res, to_markdown)
        return res
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    mode = dict(eb.MODES[args.mode])
    if args.base_steps:
        mode["base_steps"] = args.base_steps
    if args.eval_pairs:
        mode["eval_pairs"] = args.eval_pairs
    shutil.rmtree(args.work, ignore_errors=True)
    pool = base_pool()
    pool_desc = cc.concept_descriptors(pool)
    held_desc = dict(zip(cc.DEFAULT_HELD_OUT, cc.concept_descriptors(list(cc.DEFAULT_HELD_OUT))))
    single = central_concept(pool, pool_desc)
    identity = eb.identity_psnr(mode)
    res: dict[str, Any] = {**provenance(), "mode": args.mode, "settings": mode, "threads": args.threads,
                           "method": METHOD[0], "pool": pool, "single_concept": single, "identity_psnr": identity,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seeds": {}}
    t0 = time.perf_counter()
    for seed in args.seeds:
        res["seeds"][str(seed)] = run_seed(mode, args.work / f"seed{seed}", seed, single, pool, pool_desc,
                                           held_desc, identity)
        res["analysis"] = analyse(res["seeds"])
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        res["complete"] = seed == args.seeds[-1]
        write_json_and_markdown(args.out, res, to_markdown)  # after every seed, so a stopped run keeps what it finished
        log.info("seed %d done in %.0f s (total %.0f s)", seed, res["seeds"][str(seed)]["wall_seconds"],
                 res["wall_seconds"])
    return res


if __name__ == "__main__":
    main()
