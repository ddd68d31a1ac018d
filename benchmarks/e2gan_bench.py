"""E²GAN benchmark: adapting a base GAN to held-out concepts over several seeds, and generator host latency.

Quality part (built-in offline concept set, nothing downloaded), for each seed of ``--seeds``:
  1. Train a base (seeded) on concepts chosen by k-means from the pool minus 3 held-out concepts.
  2. For each held-out concept, adapt with: LoRA on crucial layers with searched ranks, with
     uniform ranks and with random ranks at the same budget, full fine-tuning, training from
     scratch (all pairs each), and searched-rank LoRA on a k-means subset and on a random
     subset of the same size; the base's zero-shot output (mean embedding) is the floor.
  3. Evaluate on crops of photos never used for training (skimage.data held-out photos; the
     same evaluation pairs for every seed): PSNR and L1 against the concept's true edit,
     Fréchet distance in the fixed 76-d feature space of ``mobilekit.train.e2gan.metrics``.
Then, over seeds: mean ± 95% Student-t interval of PSNR at equal steps (final) and at equal
seconds (the PSNR each method had reached, on its evaluation curve, at the smallest total time
of any method of that concept and seed; rank search and subset selection count as time), per
concept and averaged over concepts, and paired differences against searched-rank LoRA. From
the full fine-tuning runs: per-layer relative weight change ||W_ft - W_base|| / ||W_base||,
ranked, against the layers the generator calls crucial.

Latency part: the default generator (256×256) exported with ``mobilekit.export`` for
pixel-8 as ExecuTorch-XNNPACK and TFLite, fp32 and int8-dynamic, measured on this host
with ``mobilekit.profile``. ``--skip-latency`` keeps the latency already in ``--out``.

Run:  nice -n 10 .venv/bin/python benchmarks/e2gan_bench.py --mode quick --seeds 0 1 2 --skip-latency
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import ci95  # noqa: E402
from mobilekit._io import write_json_atomic, write_text_atomic  # noqa: E402
from mobilekit.train.e2gan import concepts as cc  # noqa: E402
from mobilekit.train.e2gan.adapt import adapt  # noqa: E402
from mobilekit.train.e2gan.lora import layer_lora_cost, lora_targets  # noqa: E402
from mobilekit.train.e2gan.loop import LoopConfig  # noqa: E402
from mobilekit.train.e2gan.metrics import frechet_distance, image_features, l1, psnr  # noqa: E402
from mobilekit.train.e2gan.models import (E2GANConfig, PatchDiscriminatorConfig,  # noqa: E402
                                          build_generator)
from mobilekit.train.e2gan.train import (AdaptConfig, BaseModel, BaseTrainConfig, load_base,  # noqa: E402
                                         train_base)

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
# (label, AdaptConfig.method, ranks, subset_method or None for all pairs)
METHODS = [("lora-searched", "lora", "search", None), ("lora-uniform", "lora", "uniform", None),
           ("lora-random", "lora", "random", None), ("full-finetune", "full", None, None),
           ("scratch", "scratch", None, None), ("lora-searched-subset", "lora", "search", "kmeans"),
           ("lora-searched-random-subset", "lora", "search", "random")]
ZERO_SHOT = "base-zero-shot"
REFERENCE = "lora-searched"  # paired differences are taken against the default method
# further paired contrasts (a, b): a - b per seed; the subset question is k-means against random
CONTRASTS = [("lora-searched-subset", "lora-searched-random-subset"), ("lora-searched-subset", "lora-searched"),
             ("lora-searched", "full-finetune")]
ORDER = [m[0] for m in METHODS[:5]] + [ZERO_SHOT] + [m[0] for m in METHODS[5:]]
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


def _train_seed_base(mode: dict[str, Any], work: Path, seed: int, concepts: list[str] | None = None,
                     pairs_per_concept: int | None = None, reuse: bool = False) -> tuple[BaseModel, dict[str, Any]]:
    """Train this seed's base; return it with its record (concepts, seconds, LoRA budget).

    ``concepts`` None: ``mode["num_concepts"]`` chosen by k-means (``choose_concepts``); else these.
    ``pairs_per_concept`` None: ``mode["base_pairs"]``. ``reuse``: load the base already in
    ``work/base`` when its run.json records this very config (another benchmark's run of the seed).
    """
    gcfg = _gen_config(mode["gen"])
    t0 = time.perf_counter()
    base_cfg = BaseTrainConfig(generator=gcfg, discriminator=PatchDiscriminatorConfig(base_width=16, num_layers=3),
                               concepts=tuple(concepts) if concepts else None,
                               num_concepts=mode["num_concepts"], exclude=tuple(cc.DEFAULT_HELD_OUT),
                               pairs_per_concept=pairs_per_concept or mode["base_pairs"], image_size=mode["size"],
                               loop=LoopConfig(steps=mode["base_steps"], batch_size=mode["batch"], lr=BASE_LR,
                                               seed=seed, checkpoint_every=0))
    run_file = work / "base" / "run.json"
    cached = json.loads(run_file.read_text()) if reuse and run_file.is_file() else None
    # compared as JSON, the form run.json stores (tuples read back as lists)
    if cached is not None and cached.get("config") == json.loads(json.dumps(base_cfg.to_dict())):
        base = load_base(work / "base")
        log.info("seed %d: reusing the base in %s", seed, work / "base")
    else:
        base = train_base(base_cfg, work / "base")
        log.info("seed %d: base trained in %.0f s", seed, time.perf_counter() - t0)
    run = json.loads(run_file.read_text())
    log.info("seed %d: base concepts %s", seed, run["concepts"])
    n_gen = base.generator.num_parameters()
    mods = dict(base.generator.named_modules())
    rank1 = sum(layer_lora_cost(mods[n]) for n in lora_targets(base.generator))
    return base, {"concepts": run["concepts"], "train_seconds": round(run["train_seconds"], 2),
                  "steps": mode["base_steps"], "pairs_per_concept": pairs_per_concept or mode["base_pairs"], "generator_parameters": n_gen, "generator_bytes_fp32": 4 * n_gen,
                  # uniform ranks spend the budget exactly; searched and random ranks to within one rank step
                  "lora_budget_parameters": UNIFORM_RANK * rank1}


def _psnr_of(generator: torch.nn.Module, emb: torch.Tensor, pairs: cc.ConceptPairs) -> float:
    with torch.no_grad():
        return round(psnr(generator(pairs.sources, emb.expand(len(pairs), -1, -1)), pairs.targets), 3)


def relative_weight_change(base: torch.nn.Module, tuned: torch.nn.Module) -> dict[str, float]:
    """||W_tuned - W_base||_F / ||W_base||_F of every Conv2d/Linear weight (the layers LoRA could go on)."""
    tuned_mods = dict(tuned.named_modules())
    out = {}
    for name, mod in base.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            w0, w1 = mod.weight.detach(), tuned_mods[name].weight.detach()
            out[name] = round(float((w1 - w0).norm() / w0.norm().clamp_min(1e-12)), 6)
    return out


def _adapt_one(base: BaseModel, mode: dict[str, Any], spec: tuple, concept: str, train_pairs: cc.ConceptPairs,
               eval_pairs: cc.ConceptPairs, budget: int, seed: int, out: Path,
               lora_layers: str = "crucial") -> tuple[dict[str, Any], Any]:
    label, method, ranks, subset_method = spec
    cfg = AdaptConfig(concept=concept, method=method, ranks=ranks or "search", budget=budget, lora_layers=lora_layers,
                      subset=mode["subset"] if subset_method else None, subset_method=subset_method or "kmeans",
                      image_size=mode["size"],
                      loop=LoopConfig(steps=mode["adapt_steps"], batch_size=mode["batch"], lr=LR[method],
                                      seed=seed, checkpoint_every=0, eval_every=mode["eval_every"]))
    res = adapt(base, cfg, out, data=train_pairs, eval_fn=lambda m, step, secs: _evaluate(m, eval_pairs))
    final = res.history[-1]
    mods = dict(base.generator.named_modules())
    n_gen = base.generator.num_parameters()
    record = {"method": label, "pairs": len(res.subset) if res.subset else len(train_pairs), "subset": res.subset,
              "psnr": final["psnr"], "l1": final["l1"], "fd": final["fd"],
              "train_seconds": round(res.train_seconds, 2), "setup_seconds": round(res.setup_seconds, 2),
              "seconds": round(res.train_seconds + res.setup_seconds, 2),
              "trainable_parameters": res.trainable_parameters, "stored_parameters": res.stored_parameters,
              "stored_bytes": res.stored_bytes,
              "stored_fraction_of_generator_bytes": round(res.stored_bytes / (4 * n_gen), 5),
              "lora_parameters_spent": sum(layer_lora_cost(mods[n]) * r for n, r in res.ranks.items())
              if res.ranks else None, "ranks": res.ranks, "history": res.history}
    log.info("seed %d %s %s: psnr %.2f l1 %.4f fd %.2f in %.1f + %.1f s", seed, concept, label, final["psnr"],
             final["l1"], final["fd"], res.setup_seconds, res.train_seconds)
    return record, res


def run_seed(mode: dict[str, Any], work: Path, seed: int, methods: list[str] | None = None) -> dict[str, Any]:
    """One seed: its own base, then every method (or those named in ``methods``) on every held-out concept."""
    t0 = time.perf_counter()
    base, base_rec = _train_seed_base(mode, work, seed)
    budget = base_rec["lora_budget_parameters"]
    mean_emb = base.embeddings.table.detach().mean(0)
    # a from-scratch run starts from this generator (adapt builds it with the run's seed)
    scratch_init = build_generator(base.generator.config, seed=seed).eval()
    concepts = {}
    for ci, concept in enumerate(cc.DEFAULT_HELD_OUT):
        train_pairs = train_pairs_for(mode, seed, ci, concept)
        eval_pairs = _eval_pairs(mode, ci, concept)
        zero_shot = _psnr_of(base.generator, mean_emb, eval_pairs)
        runs, weight_change = {}, None
        for spec in METHODS:
            if methods is not None and spec[0] not in methods:
                continue
            record, res = _adapt_one(base, mode, spec, concept, train_pairs, eval_pairs, budget, seed,
                                     work / concept / spec[0])
            record["initial_psnr"] = _psnr_of(scratch_init, mean_emb, eval_pairs) if spec[1] == "scratch" else zero_shot
            runs[spec[0]] = record
            if spec[1] == "full":
                weight_change = relative_weight_change(base.generator, res.generator)
        concepts[concept] = {"base_zero_shot_psnr": zero_shot, "runs": runs,
                             "full_finetune_weight_change": weight_change}
    return {"seed": seed, "base": base_rec, "crucial_layers": lora_targets(base.generator), "concepts": concepts,
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def train_pairs_for(mode: dict[str, Any], seed: int, ci: int, concept: str) -> cc.ConceptPairs:
    """A seed's training pairs of held-out concept number ``ci`` (other benchmarks pair with these runs)."""
    return cc.builtin_pairs(concept, mode["adapt_pairs"], mode["size"], seed=1000 * seed + 100 + ci)


def _eval_pairs(mode: dict[str, Any], ci: int, concept: str) -> cc.ConceptPairs:
    """The held-out evaluation pairs of a concept: the same for every seed, so seeds compare on one test set."""
    return cc.builtin_pairs(concept, mode["eval_pairs"], mode["size"], seed=900 + ci, held_out_photos=True)


def identity_psnr(mode: dict[str, Any]) -> dict[str, float]:
    """PSNR of the identity map (output = source) on each concept's evaluation pairs."""
    out = {}
    for ci, concept in enumerate(cc.DEFAULT_HELD_OUT):
        p = _eval_pairs(mode, ci, concept)
        out[concept] = round(psnr(p.sources, p.targets), 3)
    return out


# --- statistics over seeds -------------------------------------------------------------------------------------

def psnr_at_seconds(run: dict[str, Any], seconds: float) -> float:
    """The PSNR a run had reached ``seconds`` into it: its last evaluation at or before then.

    A run's clock starts with its setup (subset selection, rank search), so evaluation ``h`` is at
    ``setup_seconds + h.train_seconds``; before its first evaluation a run has its starting PSNR.
    """
    got = run["initial_psnr"]
    for h in run["history"]:
        if run["setup_seconds"] + h["train_seconds"] <= seconds + 1e-9:
            got = h["psnr"]
    return got


def equal_seconds(runs: dict[str, dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """The shortest total time of the runs, and each run's PSNR at that time."""
    t = min(r["seconds"] for r in runs.values())
    return t, {k: psnr_at_seconds(r, t) for k, r in runs.items()}


def _seed_table(seed_res: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """concept -> method -> {psnr (equal steps), psnr_equal_seconds, seconds, stored_bytes} for one seed."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for concept, c in seed_res["concepts"].items():
        t, at_t = equal_seconds(c["runs"])
        rows = {k: {"psnr": r["psnr"], "psnr_equal_seconds": at_t[k], "seconds": r["seconds"],
                    "stored_bytes": r["stored_bytes"]} for k, r in c["runs"].items()}
        rows[ZERO_SHOT] = {"psnr": c["base_zero_shot_psnr"], "psnr_equal_seconds": c["base_zero_shot_psnr"],
                           "seconds": 0.0, "stored_bytes": 0}
        out[concept] = {k: rows[k] for k in ORDER if k in rows}
        out[concept]["_equal_seconds_at"] = {"seconds": t}
    return out


def _interval(xs: list[float], digits: int = 3) -> dict[str, Any]:
    m, h = ci95(xs)
    return {"mean": round(m, digits), "ci95": round(h, digits), "n": len(xs), "values": [round(x, digits) for x in xs]}


def _stats(per_seed: list[dict[str, dict[str, float]]], methods: list[str]) -> dict[str, Any]:
    """Mean ± CI over seeds of each method's numbers, and paired differences against ``REFERENCE``."""
    out: dict[str, Any] = {}
    for m in methods:
        out[m] = {k: _interval([s[m][k] for s in per_seed]) for k in ("psnr", "psnr_equal_seconds", "seconds")}
        out[m]["stored_bytes"] = round(statistics.mean(s[m]["stored_bytes"] for s in per_seed))
        if m != REFERENCE:
            out[m]["minus_" + REFERENCE] = _paired(per_seed, m, REFERENCE)
    return out


def _paired(per_seed: list[dict[str, dict[str, float]]], a: str, b: str) -> dict[str, Any]:
    """Interval of the per-seed difference a - b (same seed, base and data: the noise they share cancels)."""
    return {k: _interval([s[a][k] - s[b][k] for s in per_seed]) for k in ("psnr", "psnr_equal_seconds")}


def analyse(quality: dict[str, Any]) -> dict[str, Any]:
    """Per-concept and concept-averaged statistics over seeds, and the crucial-layer evidence."""
    seeds = [quality["seeds"][k] for k in sorted(quality["seeds"], key=int)]
    tables = [_seed_table(s) for s in seeds]
    concepts = list(tables[0])
    methods = [m for m in ORDER if m in tables[0][concepts[0]]]
    per_concept = {c: _stats([t[c] for t in tables], methods) for c in concepts}
    for c in concepts:
        per_concept[c]["_equal_seconds_at"] = [t[c]["_equal_seconds_at"]["seconds"] for t in tables]
    # averaging over concepts first makes the seed the unit of replication (n = seeds)
    averaged = [{m: {k: statistics.mean(t[c][m][k] for c in concepts) for k in t[concepts[0]][m]} for m in methods}
                for t in tables]
    contrasts = {f"{a} minus {b}": _paired(averaged, a, b) for a, b in CONTRASTS if a in methods and b in methods}
    return {"n_seeds": len(seeds), "per_concept": per_concept, "averaged": _stats(averaged, methods),
            "contrasts": contrasts, "crucial_layers": crucial_layer_evidence(seeds)}


def _auc(high: list[float], low: list[float]) -> float:
    """P(a value of ``high`` exceeds one of ``low``), ties half: 0.5 means no separation."""
    wins = sum((h > lo) + 0.5 * (h == lo) for h in high for lo in low)
    return wins / (len(high) * len(low))


def crucial_layer_evidence(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Do the layers called crucial change most under full fine-tuning? Ranked mean relative change."""
    changes = [c["full_finetune_weight_change"] for s in seeds for c in s["concepts"].values()]
    crucial = set(seeds[0]["crucial_layers"])
    layers = list(changes[0])
    mean = {n: statistics.mean(ch[n] for ch in changes) for n in layers}
    ranked = sorted(layers, key=lambda n: -mean[n])
    table = [{"rank": i + 1, "layer": n, "crucial": n in crucial, **_interval([ch[n] for ch in changes], 5)}
             for i, n in enumerate(ranked)]
    k = len(crucial & set(layers))
    per_run_auc = [_auc([ch[n] for n in layers if n in crucial], [ch[n] for n in layers if n not in crucial])
                   for ch in changes]
    groups: dict[str, list[str]] = {}
    for n in layers:
        groups.setdefault(n.split(".")[0], []).append(n)
    return {"measure": "||W_ft - W_base||_F / ||W_base||_F of each Conv2d/Linear weight after full fine-tuning, "
                       "mean over concepts and seeds",
            "runs": len(changes), "layers": table,
            "crucial_mean": round(statistics.mean(mean[n] for n in layers if n in crucial), 5),
            "non_crucial_mean": round(statistics.mean(mean[n] for n in layers if n not in crucial), 5),
            "crucial_in_top_k": sum(r["crucial"] for r in table[:k]), "k": k, "non_crucial": len(layers) - k,
            "crucial_in_top_k_by_chance": round(k * k / len(layers), 2),
            "auc_crucial_over_non_crucial": _interval(per_run_auc),
            "groups": {g: round(statistics.mean(mean[n] for n in ns), 5) for g, ns in groups.items()}}


def _warm_up() -> None:
    """Pay one-off costs (importing peft and scikit-learn, first LoRA injection) before any timed run.

    Otherwise the first LoRA run of the first seed carries them in its setup seconds (7 s measured),
    which would bias the equal-seconds comparison against it.
    """
    from mobilekit.train.e2gan.lora import LoRAConfig, attach_lora
    from mobilekit.train.e2gan.subset import select_subset

    g = build_generator(E2GANConfig.tiny())
    attach_lora(g, LoRAConfig(ranks={lora_targets(g)[0]: 1}))
    select_subset(torch.rand(4, 3, 16, 16) * 2 - 1, 2)


def run_quality(mode: dict[str, Any], work: Path, seeds: list[int],
                on_seed: Any = None, methods: list[str] | None = None) -> dict[str, Any]:
    """Every seed in turn (``on_seed(quality)`` after each, so a partial run keeps what it measured)."""
    _warm_up()
    quality: dict[str, Any] = {"identity_psnr": identity_psnr(mode), "eval_pairs": mode["eval_pairs"],
                               "lora_budget_rule": f"uniform rank {UNIFORM_RANK} on every crucial layer",
                               "seeds": {}}
    for seed in seeds:
        quality["seeds"][str(seed)] = run_seed(mode, work / f"seed{seed}", seed, methods)
        quality["analysis"] = analyse(quality)
        if on_seed is not None:
            on_seed(quality)
    return quality


def summary_file(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's compact summary: per concept, each method's PSNR and seconds per seed (in ``seeds`` order)."""
    q = res["quality"]
    tables = [_seed_table(q["seeds"][k]) for k in sorted(q["seeds"], key=int)]
    out: dict[str, Any] = {}
    for concept, ident in q["identity_psnr"].items():
        methods = {m: {"psnr": [t[concept][m]["psnr"] for t in tables],
                       "seconds": [t[concept][m]["seconds"] for t in tables],
                       "stored_bytes": round(statistics.mean(t[concept][m]["stored_bytes"] for t in tables))}
                   for m in ORDER if m in tables[0][concept]}
        out[concept] = {"identity_psnr": ident, "methods": methods}
    return {"concepts": out, "command": res["command"]}

# (target, format, precision): pixel-8 gets every Android format at each precision it builds; the
# iPhones get Core ML, built and estimated here (Core ML cannot run off macOS). The paper's 15.5 ms
# is for its generator on an iPhone 14 Pro (research/papers.md).
LATENCY_CELLS = [("pixel-8", fmt, prec) for prec in ("fp32", "int8-dynamic", "int8-static")
                 for fmt in ("executorch", "tflite", "onnx")]
LATENCY_CELLS += [(t, "coreml", prec) for t in ("iphone-14-pro", "iphone-15-pro") for prec in ("fp16", "int8-weight")]
PAPER_IPHONE_MS = 15.5


def _latency_cell(g: torch.nn.Module, inputs: tuple[torch.Tensor, ...], cell: tuple[str, str, str], work: Path,
                  seconds: float) -> dict[str, Any]:
    """Export one (target, format, precision) of the generator, measure it here if it runs here, estimate it."""
    import mobilekit
    from mobilekit.estimation import estimate
    from mobilekit.profiling.host import profile

    target, fmt, precision = cell
    row: dict[str, Any] = {"target": target, "format": fmt, "precision": precision}
    # int8-static calibrates on other random pictures than the parity inputs
    cal = [(torch.rand_like(inputs[0]) * 2 - 1, torch.randn_like(inputs[1])) for _ in range(4)]
    try:
        manifest = mobilekit.export(g, inputs, targets=[target], formats=[fmt], precision=precision,
                                    out_dir=work / "latency" / target / fmt / precision, use_cache=False,
                                    model_name="e2gan-default", calibration=cal if precision == "int8-static" else None)
    except Exception as exc:  # record the failure, keep the benchmark going
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:500]}
    art = manifest.artifacts[0]
    path = manifest.path_of(art)
    row.update({"recipe": art.recipe.name, "size_bytes": art.size_bytes, "export_seconds": round(art.export_seconds, 1),
                "parity": art.parity.to_dict()})
    if fmt != "coreml":
        try:
            rep = profile(path, target=target, max_seconds=seconds, per_op=False)
            row.update({"p50_ms": round(rep.p50_ms, 2), "runtime": rep.runtime, "samples": len(rep.samples_ms),
                        "threads": rep.threads})
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    try:
        est = estimate(g, inputs, target=target, format=fmt, precision=precision, delegate=art.recipe.delegate,
                       artifact=path)
        row["estimate"] = {"ms": round(est.ms, 2), "low_ms": round(est.low_ms, 2), "high_ms": round(est.high_ms, 2),
                           "compute_unit": est.compute_unit, "coverage": est.coverage}
    except Exception as exc:
        row["estimate_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def run_latency(work: Path, seconds: float) -> dict[str, Any]:
    """Export the default generator at 256×256 for every cell of ``LATENCY_CELLS``: host p50 and estimates."""
    g = build_generator(E2GANConfig(), seed=0).eval()
    inputs = g.example_inputs(size=256)
    rows = [_latency_cell(g, inputs, cell, work, seconds) for cell in LATENCY_CELLS]
    mods = dict(g.named_modules())
    rank1 = sum(layer_lora_cost(mods[n]) for n in lora_targets(g))
    return {"model": "E2GANGenerator(E2GANConfig()) at 256x256", "parameters": g.num_parameters(),
            "lora_rank1_all_crucial_parameters": rank1,
            "lora_budget_fraction_at_uniform_rank": {str(r): round(r * rank1 / g.num_parameters(), 5)
                                                     for r in (1, 2, 4)},
            "macs": generator_macs(E2GANConfig(), 256), "paper_iphone_ms": PAPER_IPHONE_MS, "rows": rows}


def _ci(s: dict[str, Any]) -> str:
    return f"{s['mean']:.2f} ± {s['ci95']:.2f}"


def _method_table(stats: dict[str, Any]) -> list[str]:
    lines = [f"| method | PSNR dB, equal steps | PSNR dB, equal seconds | Δ vs {REFERENCE}, equal steps "
             f"| Δ vs {REFERENCE}, equal seconds | seconds | stored bytes |", "|---|---|---|---|---|---|---|"]
    for m in ORDER:
        if m not in stats:
            continue
        s, d = stats[m], stats[m].get("minus_" + REFERENCE)
        diff = (_ci(d["psnr"]), _ci(d["psnr_equal_seconds"])) if d else ("-", "-")
        lines.append(f"| {m} | {_ci(s['psnr'])} | {_ci(s['psnr_equal_seconds'])} | {diff[0]} | {diff[1]} | "
                     f"{_ci(s['seconds'])} | {s['stored_bytes']} |")
    return lines


def _crucial_md(ev: dict[str, Any]) -> list[str]:
    auc = ev["auc_crucial_over_non_crucial"]
    lines = ["## crucial layers, measured", "",
             f"{ev['measure']} ({ev['runs']} runs). Crucial layers (LoRA targets, `E2GANGenerator._crucial_layers`): "
             f"mean {ev['crucial_mean']:.4f}; the others (ResNet blocks): mean {ev['non_crucial_mean']:.4f}. "
             f"{ev['crucial_in_top_k']} of the top {ev['k']} layers are crucial "
             f"({ev['crucial_in_top_k_by_chance']} expected by chance; {ev['non_crucial']} layers are not crucial). "
             f"AUC (probability that a crucial layer changed more than a non-crucial one; 0.5 = no separation), "
             f"per run: {_ci(auc)}.", "",
             "Per module group (mean over its layers), largest first: "
             + ", ".join(f"`{g}` {v:.4f}" for g, v in sorted(ev["groups"].items(), key=lambda kv: -kv[1]))
             + ".", "", "| rank | layer | crucial | relative change mean ± 95% CI |", "|---|---|---|---|"]
    lines += [f"| {r['rank']} | `{r['layer']}` | {'yes' if r['crucial'] else 'no'} | "
              f"{r['mean']:.4f} ± {r['ci95']:.4f} |" for r in ev["layers"]]
    return lines + [""]


def _runs_md(quality: dict[str, Any]) -> list[str]:
    lines = ["## every run", "", "| seed | concept | method | pairs | PSNR dB | L1 | FD | setup s | train s "
             "| stored bytes | LoRA params spent |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, s in sorted(quality["seeds"].items(), key=lambda kv: int(kv[0])):
        for concept, c in s["concepts"].items():
            for r in c["runs"].values():
                lines.append(f"| {seed} | {concept} | {r['method']} | {r['pairs']} | {r['psnr']} | {r['l1']} | "
                             f"{r['fd']} | {r['setup_seconds']} | {r['train_seconds']} | {r['stored_bytes']} | "
                             f"{r['lora_parameters_spent'] or '-'} |")
    return lines + [""]


def _latency_md(lat: dict[str, Any]) -> list[str]:
    fr = lat["lora_budget_fraction_at_uniform_rank"]
    lines = ["## generator latency (256×256): measured on this host, estimated per phone", "",
             f"{lat['model']}: {lat['parameters']} params, {lat['macs'] / 1e9:.2f} GMACs. "
             f"LoRA on all its crucial layers: rank 1 = {lat['lora_rank1_all_crucial_parameters']} params "
             f"({100 * fr['1']:.2f} % of the generator), rank 2 = {100 * fr['2']:.2f} %, "
             f"rank 4 = {100 * fr['4']:.2f} %. The paper's anchor: {lat.get('paper_iphone_ms', PAPER_IPHONE_MS)} ms "
             "for its generator on an iPhone 14 Pro. Core ML runs only on macOS: its rows are built and estimated.",
             "", "| target | format | precision | parity | host p50 ms | estimate ms [band] | unit | size bytes | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in lat["rows"]:
        e = r.get("estimate")
        est = f"{e['ms']} [{e['low_ms']}, {e['high_ms']}]" if e else "-"
        par = r.get("parity", {})
        cos = par.get("cosine")
        parity = f"{par.get('status', '-')}" + (f" (cos {cos:.4f})" if isinstance(cos, float) else "")
        note = (r.get("error") or r.get("estimate_error") or "")[:120]
        lines.append(f"| {r.get('target', 'pixel-8')} | {r.get('format', '-')} | {r['precision']} | {parity} | "
                     f"{r.get('p50_ms', '-')} | {est} | {e['compute_unit'] if e else '-'} | "
                     f"{r.get('size_bytes', '-')} | {note} |")
    return lines + [""]


def to_markdown(res: dict[str, Any]) -> str:
    q = res["quality"]
    an = q["analysis"]
    seeds = sorted(q["seeds"], key=int)
    s0 = q["seeds"][seeds[0]]
    lines = [f"# E²GAN benchmark ({res['mode']} mode, {an['n_seeds']} seeds)", "", f"Command: `{res['command']}`", "",
             f"Seeds {', '.join(seeds)} (each trains its own base and adapts with that seed); torch threads "
             f"{res['threads']}; generator `{res['generator']}` ({s0['base']['generator_parameters']} params); "
             f"LoRA budget {s0['base']['lora_budget_parameters']} params ({q['lora_budget_rule']}); "
             f"base trained {res['settings']['base_steps']} steps; {res['settings']['adapt_steps']} adaptation steps; evaluation on {q['eval_pairs']} held-out-photo "
             f"pairs per concept, the same for every seed. Wall time: "
             + ", ".join(f"seed {k} {q['seeds'][k]['wall_seconds']:.0f} s" for k in seeds) + ".", "",
             "Base concepts: " + "; ".join(f"seed {k}: {', '.join(q['seeds'][k]['base']['concepts'])}" for k in seeds)
             + ".", "",
             "Mean ± 95% Student-t half-width over seeds. *Equal steps*: PSNR after the last step. *Equal seconds*: "
             "the PSNR each method had reached on its evaluation curve at the shortest total time (setup + training) "
             "of any method of that concept and seed. Δ: paired difference against the same seed's "
             f"{REFERENCE} run.", "", "## averaged over the held-out concepts", "", *_method_table(an["averaged"]), "",
             "Other paired contrasts (concept average, per seed): "
             + "; ".join(f"{k}: {_ci(v['psnr'])} dB at equal steps, {_ci(v['psnr_equal_seconds'])} dB at equal seconds"
                         for k, v in an.get("contrasts", {}).items()) + ".", ""]
    for concept, st in an["per_concept"].items():
        lines += [f"## held-out concept `{concept}`", "",
                  f"identity (output = source): PSNR {q['identity_psnr'][concept]} dB; equal-seconds time per seed: "
                  + ", ".join(f"{t:.1f} s" for t in st["_equal_seconds_at"]), "", *_method_table(st), ""]
    lines += _crucial_md(an["crucial_layers"]) + _runs_md(q)
    if res.get("latency"):
        lines += _latency_md(res["latency"])
    return "\n".join(lines)


def render_only(path: Path) -> None:
    """Recompute the statistics and rewrite the markdown and summary from an existing JSON result."""
    res = json.loads(path.read_text())
    res["quality"]["analysis"] = analyse(res["quality"])
    _write_outputs(path, res)


def _write_outputs(path: Path, res: dict[str, Any]) -> None:
    write_json_atomic(path, res)
    if "quality" in res:
        write_text_atomic(path.with_suffix(".md"), to_markdown(res))
        write_json_atomic(path.with_name(path.stem + "_summary.json"), summary_file(res))

LATENCY_KEYS = ("latency", "latency_command", "latency_wall_seconds")


def _previous(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="each seed trains its own base")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/e2gan_bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2gan.json")
    ap.add_argument("--skip-latency", action="store_true", help="keep the latency section already in --out")
    ap.add_argument("--skip-quality", action="store_true", help="keep the quality section already in --out")
    ap.add_argument("--render-only", action="store_true", help="only recompute the .md and summary from the JSON")
    ap.add_argument("--base-steps", type=int, help="override the mode's base training steps")
    ap.add_argument("--methods", nargs="+", choices=[m[0] for m in METHODS],
                    help="run only these adaptation methods (default: all; base-zero-shot is always recorded)")
    args = ap.parse_args()
    if args.render_only:
        render_only(args.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    mode = dict(MODES[args.mode], **({"base_steps": args.base_steps} if args.base_steps else {}))
    shutil.rmtree(args.work, ignore_errors=True)
    from mobilekit._deps import toolchain_versions

    command = " ".join(["python", "benchmarks/e2gan_bench.py", *sys.argv[1:]])
    prev = _previous(args.out)  # read before the first partial write replaces it
    if args.skip_quality:  # the latency part alone: merge into the quality results
        res: dict[str, Any] = {k: v for k, v in prev.items() if k not in LATENCY_KEYS}
    else:
        res = {"command": command, "mode": args.mode, "settings": mode, "seeds": args.seeds, "threads": args.threads,
               "generator": mode["gen"], "lr": LR, "base_lr": BASE_LR, "toolchain": toolchain_versions(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.skip_latency:  # carry the measured latency over instead of losing it
        res.update({k: prev[k] for k in LATENCY_KEYS if k in prev})
    t0 = time.perf_counter()
    if not args.skip_quality:
        def partial(quality: dict[str, Any]) -> None:
            _write_outputs(args.out, {**res, "quality": quality, "wall_seconds": round(time.perf_counter() - t0, 1)})

        res["quality"] = run_quality(mode, args.work, args.seeds, on_seed=partial, methods=args.methods)
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if not args.skip_latency:
        t1 = time.perf_counter()
        res.update({"latency": run_latency(args.work, mode["latency_seconds"]), "latency_command": command,
                    "latency_wall_seconds": round(time.perf_counter() - t1, 1)})
    _write_outputs(args.out, res)
    log.info("wrote %s in %.0f s", args.out, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
