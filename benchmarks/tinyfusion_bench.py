"""TinyFusion at small scale: the paper's layer-choice comparison on scikit-learn's digits, on this CPU.

Pretrains a 12-layer DiT on the digits, prunes it to 6 layers with every method (learnable
TinyFusion and the baselines), recovers each for the same number of optimizer steps, and
reports per method: the calibration loss right after pruning, the held-out diffusion loss
after recovery, and the Fréchet distance between generated and real digits in the feature
space of a digit classifier trained here. Also: ExecuTorch-XNNPACK host latency of the 12-
and 6-layer models, and the search's cost per step against a plain training step.

Run (from the repo root):
    nice -n 10 .venv/bin/python benchmarks/tinyfusion_bench.py --mode quick
    nice -n 10 .venv/bin/python benchmarks/tinyfusion_bench.py --mode full
Writes benchmarks/results/tinyfusion.json and benchmarks/results/tinyfusion.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import ci95  # noqa: E402

from mobilekit._deps import toolchain_versions  # noqa: E402
from mobilekit._io import write_json_atomic, write_text_atomic  # noqa: E402
from mobilekit.train.tinyfusion import DepthPruneConfig, DistillConfig, distill, prune_depth  # noqa: E402
from mobilekit.train.tinyfusion._common import make_batch, step_generator  # noqa: E402
from mobilekit.train.tinyfusion.blocks import DiTStack  # noqa: E402
from mobilekit.train.tinyfusion.data import DataSource, digits, to_images  # noqa: E402
from mobilekit.train.tinyfusion.diffusion import NoiseSchedule, ddim_sample, diffusion_loss  # noqa: E402

log = logging.getLogger("tinyfusion_bench")

MODES = {
    "quick": {"pretrain_steps": 800, "search_steps": 100, "recover_steps": 200, "batch": 32, "search_batch": 16,
              "gen_samples": 300, "sample_steps": 15, "seeds": [0], "random_trials": 8, "latency_repeats": 30,
              "ablations": False},
    "full": {"pretrain_steps": 6000, "search_steps": 1000, "recover_steps": 1500, "batch": 64, "search_batch": 32,
             "gen_samples": 1000, "sample_steps": 25, "seeds": [0, 1, 2], "random_trials": 64,
             "latency_repeats": 100, "ablations": True},
}

DIT = {"num_attention_heads": 4, "attention_head_dim": 16, "in_channels": 4, "out_channels": 4, "num_layers": 12,
       "sample_size": 8, "patch_size": 2, "num_embeds_ada_norm": 10, "norm_type": "ada_norm_zero"}


def pretrain(data: DataSource, steps: int, batch: int, seed: int, *, every: int = 0,
             checkpoint: Any = None) -> tuple[torch.nn.Module, float]:
    """Train the 12-layer DiT from scratch; returns (EMA model, seconds per plain training step).

    ``checkpoint(step, ema)``, when given, is called every ``every`` steps (its time is not counted).
    """
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**DIT).eval()
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    sched = NoiseSchedule(1000)
    stack = DiTStack()
    t0 = time.perf_counter()
    for step in range(steps):
        b = make_batch(data, sched, batch, step_generator(seed, 0, step, salt=9), null_class=10, label_dropout=0.1)
        loss = diffusion_loss(stack.predict(model, b.x_t, b.t, b.cond), b.noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(d).add_(pm, alpha=1 - d)
        if (step + 1) % 250 == 0:
            log.info("pretrain step %d loss %.4f", step + 1, float(loss.detach()))
        if checkpoint is not None and every and (step + 1) % every == 0:
            paused = time.perf_counter()
            checkpoint(step + 1, ema.eval())
            t0 += time.perf_counter() - paused
    return ema.eval(), (time.perf_counter() - t0) / steps


def _teacher_key(cfg: dict) -> str:
    return json.dumps({"pretrain_steps": cfg["pretrain_steps"], "batch": cfg["batch"], "seed": 0, "model": DIT},
                      sort_keys=True)


def save_teacher(cache: Path, cfg: dict, teacher: torch.nn.Module, pre_step_s: float) -> None:
    """Store a pretrained teacher where ``load_or_pretrain`` finds it for the same settings."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(cache.suffix + ".tmp")
    torch.save({"key": _teacher_key(cfg), "state_dict": teacher.state_dict(), "pre_step_s": pre_step_s}, tmp)
    tmp.replace(cache)


def load_or_pretrain(data: DataSource, cfg: dict, cache: Path | None) -> tuple[torch.nn.Module, float]:
    """``pretrain`` with an optional on-disk cache keyed by the pretraining settings."""
    from diffusers import DiTTransformer2DModel

    if cache is not None and cache.exists():
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        if blob.get("key") == _teacher_key(cfg):
            model = DiTTransformer2DModel(**DIT)
            model.load_state_dict(blob["state_dict"])
            log.info("teacher loaded from %s", cache)
            return model.eval(), float(blob["pre_step_s"])
        log.info("teacher cache %s has other settings; pretraining", cache)
    teacher, pre_step_s = pretrain(data, cfg["pretrain_steps"], cfg["batch"], seed=0)
    if cache is not None:
        save_teacher(cache, cfg, teacher, pre_step_s)
    return teacher, pre_step_s


def plain_step_seconds(model: torch.nn.Module, data: DataSource, batch: int, n: int = 20) -> float:
    """Mean wall time of a plain full fine-tuning step at ``batch`` (s)."""
    m = copy.deepcopy(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    sched = NoiseSchedule(1000)
    times = []
    for step in range(n):
        b = make_batch(data, sched, batch, step_generator(5, 0, step), null_class=10, label_dropout=0.1)
        t0 = time.perf_counter()
        loss = diffusion_loss(DiTStack().predict(m, b.x_t, b.t, b.cond), b.noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.mean(times[3:])


class DigitClassifier(torch.nn.Module):
    """MLP on 8x8 digits; the 64-d penultimate layer is the feature space of the Fréchet distance."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                        torch.nn.Linear(128, 64), torch.nn.ReLU())
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def to_digit_images(x: torch.Tensor) -> torch.Tensor:
    """Model-space samples -> 1x8x8 images in [-1, 1] (the digits' own resolution)."""
    img = to_images(x)
    return F.adaptive_avg_pool2d(img, (8, 8)).clamp(-1, 1)


def train_classifier(train: DataSource, test: DataSource, seed: int) -> tuple[DigitClassifier, float]:
    torch.manual_seed(seed)
    clf = DigitClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    xs, ys = to_digit_images(train.x), train.labels
    gen = torch.Generator().manual_seed(seed)
    for _ in range(1500):
        idx = torch.randint(0, len(xs), (128,), generator=gen)
        loss = F.cross_entropy(clf(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((clf(to_digit_images(test.x)).argmax(1) == test.labels).float().mean())
    return clf.eval(), acc


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@torch.no_grad()
def features(clf: DigitClassifier, x: torch.Tensor) -> np.ndarray:
    return clf.body(to_digit_images(x)).numpy()


@torch.no_grad()
def generate(model: torch.nn.Module, n: int, steps: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    out = []
    for i in range(0, n, 200):
        y = labels[i:i + 200]
        out.append(ddim_sample(lambda x, t, y=y: DiTStack().predict(model, x, t, y), (len(y), 4, 8, 8),
                               NoiseSchedule(1000), steps=steps, generator=gen))
    return torch.cat(out)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, data: DataSource, repeats: int = 4) -> float:
    sched = NoiseSchedule(1000)
    total = []
    for r in range(repeats):
        gen = torch.Generator().manual_seed(10_000 + r)
        noise = torch.randn(data.x.shape, generator=gen)
        t = torch.randint(0, 1000, (len(data),), generator=gen)
        pred = DiTStack().predict(model, sched.add_noise(data.x, noise, t), t, data.labels)
        total.append(float(diffusion_loss(pred, noise)))
    return statistics.mean(total)


def latency(model: torch.nn.Module, repeats: int, workdir: Path, name: str) -> dict[str, object]:
    """ExecuTorch-XNNPACK fp32 latency on this host: export with mobilekit.export, run with executorch.runtime."""
    import mobilekit
    from mobilekit.builtins import DiTForExport

    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.tensor([3]))
    manifest = mobilekit.export(DiTForExport(copy.deepcopy(model)).eval(), inputs, targets=["pixel-8"],
                                formats=["executorch"], precision="fp32", out_dir=workdir / name, use_cache=False,
                                model_name=name)
    art = manifest.artifacts[0]
    path = workdir / name / art.path
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    for _ in range(5):
        method.execute(list(inputs))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        method.execute(list(inputs))
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "mean_ms": statistics.mean(samples), "repeats": repeats, "recipe": art.recipe.name,
            "size_bytes": art.size_bytes, "source": "host (executorch.runtime, measured by this script)"}


def latency_pair(repeats: int, kept: list[int]) -> dict[str, object]:
    """12- vs 6-layer latency with interleaved runs (latency does not depend on weight values)."""
    import mobilekit
    from diffusers import DiTTransformer2DModel
    from executorch.runtime import Runtime

    from mobilekit.builtins import DiTForExport
    from mobilekit.train.tinyfusion.surgery import build_pruned

    torch.manual_seed(0)
    big = DiTTransformer2DModel(**DIT).eval()
    models = {"12-layer": big, "6-layer": build_pruned(big, kept, DiTStack())}
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.tensor([3]))
    methods, arts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            man = mobilekit.export(DiTForExport(model).eval(), inputs, targets=["pixel-8"], formats=["executorch"],
                                   precision="fp32", out_dir=Path(tmp) / name, use_cache=False, model_name=name)
            arts[name] = man.artifacts[0]
            methods[name] = Runtime.get().load_program(Path(tmp) / name / arts[name].path).load_method("forward")
        samples: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(10):
            for m in methods.values():
                m.execute(list(inputs))
        for _ in range(repeats):
            for name, m in methods.items():
                t0 = time.perf_counter()
                m.execute(list(inputs))
                samples[name].append((time.perf_counter() - t0) * 1e3)
    out: dict[str, object] = {}
    for name, xs in samples.items():
        xs.sort()
        out[name] = {"p50_ms": statistics.median(xs), "p90_ms": xs[int(0.9 * (len(xs) - 1))], "mean_ms": statistics.mean(xs),
                     "repeats": repeats, "recipe": arts[name].recipe.name, "size_bytes": arts[name].size_bytes,
                     "source": "host (executorch.runtime, interleaved, measured by this script)"}
    out["speedup_p50"] = out["12-layer"]["p50_ms"] / out["6-layer"]["p50_ms"]  # type: ignore[index]
    out["kept"] = kept
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tinyfusion.json")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--device", default="cpu", help="search/recovery device (the recorded results ran on cpu)")
    ap.add_argument("--seeds", type=int, nargs="*", help="override the mode's seeds")
    ap.add_argument("--pattern", default="1:2", help="N:M pattern (e.g. 6:12 = one global group)")
    ap.add_argument("--search-steps", type=int, default=0, help="override the mode's search steps")
    ap.add_argument("--pretrain-steps", type=int, default=0,
                    help="override the mode's teacher pretraining steps (tinyfusion_teacher_curve.md: 800 is short "
                         "of convergence)")
    ap.add_argument("--recover-steps", type=int, default=0,
                    help="override the mode's recovery steps (the paper's premise needs long enough recovery)")
    ap.add_argument("--methods", nargs="*", help="run only these methods (names as in the table)")
    ap.add_argument("--teacher-cache", type=Path, default=None,
                    help="load the pretrained teacher from this file if it exists, else pretrain and save it there "
                         "(pretraining is deterministic, seed 0; saves the ~6 min pretraining in repeated runs)")
    ap.add_argument("--append-as", default="", help="store this run under extra_runs[LABEL] of the existing --out JSON")
    ap.add_argument("--promote-previous-as", default="",
                    help="this run becomes the main one while the existing --out JSON's main run moves to "
                         "extra_runs[LABEL] and its extra runs stay (with --skip-latency its latency stays too)")
    ap.add_argument("--render-only", action="store_true",
                    help="only rewrite the markdown and tinyfusion_summary.json from the existing --out JSON")
    ap.add_argument("--latency-only", type=int, metavar="REPEATS", default=0,
                    help="only re-measure the 12- vs 6-layer latency (interleaved, REPEATS runs each) into the JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.render_only:
        write_outputs(json.loads(args.out.read_text()), args.out)
        return
    if args.latency_only:
        res = json.loads(args.out.read_text())
        kept = next(r["kept"] for r in res["rows"] if r["method"] == "learnable")
        res["latency"] = latency_pair(args.latency_only, kept)
        res["latency"]["command"] = " ".join(["nice -n 10 .venv/bin/python benchmarks/tinyfusion_bench.py", *sys.argv[1:]])
        write_json_atomic(args.out, res)
        write_text_atomic(args.out.with_suffix(".md"), to_markdown(res))
        return
    cfg = dict(MODES[args.mode])
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.search_steps:
        cfg["search_steps"] = args.search_steps
    if args.pretrain_steps:
        cfg["pretrain_steps"] = args.pretrain_steps
    if args.recover_steps:
        cfg["recover_steps"] = args.recover_steps
    t_all = time.perf_counter()
    full_data = digits((4, 8, 8))
    train, held = full_data.split(0.2, seed=0)
    clf, clf_acc = train_classifier(train, held, seed=0)
    real_feats = features(clf, held.x)
    real_floor = frechet(features(clf, train.x[:len(held)]), real_feats)  # train digits vs held-out digits
    log.info("classifier held-out accuracy %.3f", clf_acc)
    teacher, pre_step_s = load_or_pretrain(train, cfg, args.teacher_cache)
    teacher_eval = {"heldout_loss": heldout_loss(teacher, held)}
    teacher_eval["frechet"] = frechet(features(clf, generate(teacher, cfg["gen_samples"], cfg["sample_steps"], 0)),
                                      real_feats)
    log.info("teacher %s", teacher_eval)
    methods: list[tuple[str, dict[str, object], str]] = [
        ("learnable", {"method": "learnable", "delta": "lora"}, "finetune"),
        ("learnable+masked-kd", {"method": "learnable", "delta": "lora"}, "masked-kd"),
        ("shortgpt", {"method": "shortgpt"}, "finetune"),
        ("flux-lite", {"method": "flux-lite"}, "finetune"),
        ("sensitivity", {"method": "sensitivity"}, "finetune"),
        ("oracle", {"method": "oracle"}, "finetune"),
        ("random-best-of-k", {"method": "random", "random_trials": cfg["random_trials"]}, "finetune"),
        # the same baselines held to the N:M pattern the learnable search obeys (best N of each group of M)
        ("sensitivity-groups", {"method": "sensitivity", "baseline_scope": "groups"}, "finetune"),
        ("shortgpt-groups", {"method": "shortgpt", "baseline_scope": "groups"}, "finetune"),
        ("random-groups", {"method": "random", "random_trials": cfg["random_trials"], "baseline_scope": "groups"},
         "finetune"),
    ]
    if cfg["ablations"]:
        methods += [("learnable-frozen", {"method": "learnable", "delta": "frozen"}, "finetune"),
                    ("learnable-full", {"method": "learnable", "delta": "full"}, "finetune")]
    if args.methods:
        methods = [m for m in methods if m[0] in args.methods]
    rows: list[dict[str, object]] = []
    search_cache: dict[tuple[str, int], object] = {}
    for seed in cfg["seeds"]:
        for name, kw, recovery in methods:
            key = (json.dumps(kw, sort_keys=True), seed)
            pr = search_cache.get(key)
            if pr is None:
                pcfg = DepthPruneConfig(pattern=args.pattern, steps=cfg["search_steps"], batch_size=cfg["search_batch"],
                                        seed=seed, calib_samples=128, log_every=max(1, cfg["search_steps"] // 20),
                                        **kw)  # type: ignore[arg-type]
                pr = prune_depth(teacher, train, pcfg, device=args.device)
                search_cache[key] = pr
            dcfg = DistillConfig(mode=recovery, steps=cfg["recover_steps"], batch_size=cfg["batch"], seed=seed,
                                 lr=2e-4, lr_min=1e-4, ema_decay=0.999, log_every=50)
            t0 = time.perf_counter()
            rec = distill(pr.model, teacher, train, dcfg, kept=pr.kept, groups=pr.groups, device=args.device)
            rec.model.cpu()
            rec_s = time.perf_counter() - t0
            fd = frechet(features(clf, generate(rec.model, cfg["gen_samples"], cfg["sample_steps"], seed)), real_feats)
            row = {"method": name, "seed": seed, "recovery": recovery, "kept": pr.kept,
                   "calibration_loss": pr.calibration_loss, "heldout_loss_after_recovery": heldout_loss(rec.model, held),
                   "frechet_after_recovery": fd, "confidences": pr.confidences,
                   "search_seconds_per_step": pr.search_seconds_per_step, "prune_seconds": pr.seconds,
                   "recovery_seconds": rec_s}
            rows.append(row)
            log.info("%s", row)
    summary = {}
    for name, _, _ in methods:
        rs = [r for r in rows if r["method"] == name]
        summary[name] = {k: {"mean": statistics.mean(float(r[k]) for r in rs),
                             "std": statistics.stdev(float(r[k]) for r in rs) if len(rs) > 1 else 0.0}
                         for k in ("calibration_loss", "heldout_loss_after_recovery", "frechet_after_recovery")}
        summary[name]["kept"] = [r["kept"] for r in rs]
    if args.append_as:
        res = json.loads(args.out.read_text())
        res.setdefault("extra_runs", {})[args.append_as] = {
            "command": " ".join(["nice -n 10 .venv/bin/python benchmarks/tinyfusion_bench.py", *sys.argv[1:]]),
            "settings": cfg, "pattern": args.pattern, "teacher": teacher_eval, "rows": rows, "summary": summary,
            "spearman_post_pruning_vs_recovered": spearman_post_pruning(rows), "seconds": time.perf_counter() - t_all}
        write_outputs(res, args.out)
        return
    learn_step = statistics.mean(float(r["search_seconds_per_step"]) for r in rows
                                 if r["method"] == "learnable" and r["search_seconds_per_step"])
    plain_step = plain_step_seconds(teacher, train, cfg["search_batch"])
    lat: dict[str, object] = {}
    if not args.skip_latency:
        with tempfile.TemporaryDirectory() as tmp:
            best = next(r for r in rows if r["method"] == "learnable")
            lat["12-layer"] = latency(teacher, cfg["latency_repeats"], Path(tmp), "dit12")
            six = search_cache[(json.dumps({"method": "learnable", "delta": "lora"}, sort_keys=True), best["seed"])]
            lat["6-layer"] = latency(six.model, cfg["latency_repeats"], Path(tmp), "dit6")  # type: ignore[attr-defined]
            lat["speedup_p50"] = lat["12-layer"]["p50_ms"] / lat["6-layer"]["p50_ms"]  # type: ignore[index]
    result = {
        "benchmark": "tinyfusion", "mode": args.mode,
        "command": " ".join(["nice -n 10 .venv/bin/python benchmarks/tinyfusion_bench.py", *sys.argv[1:]]),
        "settings": cfg, "threads": args.threads, "model": DIT, "pattern": args.pattern,
        "data": {"source": "sklearn load_digits folded to 4x8x8", "train": len(train), "heldout": len(held)},
        "classifier_heldout_accuracy": clf_acc, "teacher": teacher_eval, "frechet_real_train_vs_heldout": real_floor,
        "sampler": {"kind": "DDIM eta 0", "steps": cfg["sample_steps"], "cfg_scale": 1.0,
                    "samples": cfg["gen_samples"]},
        "rows": rows, "summary": summary,
        "search_cost": {"learnable_search_step_s": learn_step, "plain_train_step_s": plain_step,
                        "ratio": learn_step / plain_step, "batch": cfg["search_batch"],
                        "pretrain_step_s": pre_step_s},
        "latency": lat, "toolchain": toolchain_versions(), "seconds": time.perf_counter() - t_all,
    }
    result["spearman_post_pruning_vs_recovered"] = spearman_post_pruning(rows)
    if args.promote_previous_as:
        prev = json.loads(args.out.read_text())
        moved = {k: prev[k] for k in ("command", "settings", "pattern", "teacher", "rows", "summary", "seconds",
                                      "spearman_post_pruning_vs_recovered") if k in prev}
        result["extra_runs"] = {args.promote_previous_as: moved, **prev.get("extra_runs", {})}
        if args.skip_latency and prev.get("latency"):
            result["latency"] = prev["latency"]  # 12- vs 6-layer speed does not depend on the teacher's training
    write_outputs(result, args.out)
    log.info("wrote %s in %.0f s", args.out, result["seconds"])


# The names for the methods in tinyfusion_summary.json.
SUMMARY_NAMES = {"random-best-of-k": "random"}


def spearman_post_pruning(rows: list[dict]) -> float:
    """Rank correlation over every run of the loss right after pruning and the FD after recovery.

    The paper's premise is that the first does not predict the second once recovery is long enough.
    """
    from scipy import stats

    loss = [float(r["calibration_loss"]) for r in rows]
    fd = [float(r["frechet_after_recovery"]) for r in rows]
    if len(set(loss)) < 2 or len(set(fd)) < 2:
        return float("nan")  # undefined for a constant input (scipy would warn and say nan)
    return float(stats.spearmanr(loss, fd).statistic)


def _per_seed(rows: list[dict]) -> dict[str, dict[str, list]]:
    methods: dict[str, dict[str, list]] = {}
    for r in rows:
        m = methods.setdefault(SUMMARY_NAMES.get(r["method"], r["method"]),
                               {"fd": [], "heldout_loss": [], "kept": [], "seeds": []})
        m["fd"].append(float(r["frechet_after_recovery"]))
        m["heldout_loss"].append(float(r["heldout_loss_after_recovery"]))
        m["kept"].append(list(r["kept"]))
        m["seeds"].append(r["seed"])
    return methods


def run_key(run: dict) -> str:
    """The setting a run's numbers belong to: its N:M pattern, teacher and search and recovery budgets.

    Only runs with the same key may be pooled; e.g. ``"1:2, teacher 6000 steps, search 100 steps,
    recovery 1000 steps"``. A run with another teacher or a longer recovery is another experiment.
    """
    st = run["settings"]
    return (f"{run.get('pattern', '1:2')}, teacher {st['pretrain_steps']} steps, search {st['search_steps']} steps, "
            f"recovery {st['recover_steps']} steps")


def summary_file(res: dict) -> dict:
    """The per-seed numbers in the format issue 10 asks for.

    Top-level ``methods`` is the main run (its setting in ``key``, see ``run_key``). Extra runs go
    under ``runs[KEY]``, keyed by pattern, teacher and budgets, with the same per-method shape plus
    their teacher, seeds, Spearman and command; several runs of one key (e.g. the grouped
    baselines) merge their methods, the later ones listed in ``more_runs``. Runs of different keys
    are never merged.
    """
    out = {"teacher": {"fd": res["teacher"]["frechet"], "heldout_loss": res["teacher"]["heldout_loss"],
                       "pretrain_steps": res["settings"]["pretrain_steps"]},
           "pattern": res.get("pattern", "1:2"), "key": run_key(res), "methods": _per_seed(res["rows"]),
           "spearman_post_pruning_vs_recovered": res["spearman_post_pruning_vs_recovered"],
           "command": res["command"]}
    runs: dict[str, dict] = {}
    for label, extra in res.get("extra_runs", {}).items():
        st = extra["settings"]
        run = {"label": label, "command": extra["command"], "seeds": st["seeds"],
               "teacher": {"fd": extra["teacher"]["frechet"], "heldout_loss": extra["teacher"]["heldout_loss"],
                           "pretrain_steps": st["pretrain_steps"]}}
        if "spearman_post_pruning_vs_recovered" in extra and len(extra["rows"]) > 2:
            run["spearman_post_pruning_vs_recovered"] = extra["spearman_post_pruning_vs_recovered"]
        methods = _per_seed(extra["rows"])
        key = run_key(extra)
        entry = runs.get(key)
        if entry is None:  # the first run of a key gives the entry its label, command and teacher
            runs[key] = {**run, "pattern": extra.get("pattern", "1:2"), "search_steps": st["search_steps"],
                         "recover_steps": st["recover_steps"], "methods": methods}
        else:  # later runs of the same key (other methods) add theirs, each named with its run
            entry["methods"].update(methods)
            entry.setdefault("more_runs", []).append({**run, "methods": sorted(methods)})
    if runs:
        out["runs"] = runs
    return out


def write_outputs(res: dict, out: Path) -> None:
    """Write the JSON, its markdown and tinyfusion_summary.json from one result dict."""
    write_json_atomic(out, res)
    write_text_atomic(out.with_suffix(".md"), to_markdown(res))
    if "spearman_post_pruning_vs_recovered" in res:
        write_json_atomic(out.with_name("tinyfusion_summary.json"), summary_file(res))


def _ci_cell(rs: list[dict], key: str, digits: int) -> str:
    """``mean ± half-width`` of the 95% Student-t interval of ``key`` over the rows ``rs``."""
    m, h = ci95([float(r[key]) for r in rs])
    return f"{m:.{digits}f}" + (f" ± {h:.{digits}f}" if h else "")


def kept_by_seed(rs: list[dict]) -> str:
    """Each distinct kept set with the seeds that chose it, e.g. ``[0, 2] (seeds 0, 1); [1, 3] (seed 2)``."""
    by: dict[tuple, list] = {}
    for r in rs:
        by.setdefault(tuple(r["kept"]), []).append(r["seed"])
    return "; ".join(f"{list(k)} (seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))})"
                     for k, v in sorted(by.items(), key=lambda kv: kv[1][0]))


def paired_difference(rows: list[dict], a: str, b: str, key: str = "frechet_after_recovery"):
    """Mean and 95% half-width of ``a - b`` over the seeds both ran, and the number of seeds; None if none."""
    va = {r["seed"]: float(r[key]) for r in rows if r["method"] == a}
    vb = {r["seed"]: float(r[key]) for r in rows if r["method"] == b}
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        return None
    m, h = ci95([va[s] - vb[s] for s in seeds])
    return m, h, len(seeds)


# contrasts the issue asks about: the search against the baselines, masked KD against fine-tuning
PAIRS = (("learnable", "sensitivity"), ("learnable", "sensitivity-groups"), ("learnable", "random-best-of-k"),
         ("learnable+masked-kd", "learnable"))


def _paired_lines(rows: list[dict]) -> list[str]:
    """One line per contrast of ``PAIRS`` both of whose methods ran on at least two common seeds."""
    out = []
    for a, b in PAIRS:
        diff = paired_difference(rows, a, b)
        if diff is not None and diff[2] > 1:
            out += ["", f"{a} minus {b} FD, paired by seed ({diff[2]} seeds): {diff[0]:+.1f} ± {diff[1]:.1f} "
                        f"(negative: {a} better)."]
    return out


def _mean_fd(rows: list[dict], method: str) -> float:
    return statistics.mean(float(r["frechet_after_recovery"]) for r in rows if r["method"] == method)


def recovery_comparison(res: dict, extra: dict) -> list[str]:
    """Markdown lines setting an extra run beside the main one when only the recovery length differs.

    Compares per-method FD (the change paired by seed), the Spearman of the loss after pruning with
    the recovered FD on the same methods and seeds, and the ordering of the methods by mean FD: the
    paper's claim is that with long enough recovery that ordering follows recoverability, not the
    loss right after pruning. Empty when the runs differ in anything else (pattern, teacher, search).
    """
    a, b = res["settings"], extra["settings"]
    if (res.get("pattern", "1:2") != extra.get("pattern", "1:2") or a["pretrain_steps"] != b["pretrain_steps"]
            or a["search_steps"] != b["search_steps"] or a["recover_steps"] == b["recover_steps"]):
        return []
    seeds = {r["seed"] for r in extra["rows"]}
    names = [m for m in extra["summary"] if any(r["method"] == m for r in res["rows"])]
    if not names:
        return []
    base = [r for r in res["rows"] if r["method"] in names and r["seed"] in seeds]
    ra, rb = a["recover_steps"], b["recover_steps"]
    lines = ["", f"Recovery {rb} vs {ra} steps (same teacher, pattern, search and seeds {sorted(seeds)}; "
                 f"change paired by seed):", "",
             f"| method | FD after {ra} steps | FD after {rb} steps | change ({rb} − {ra}) |", "|---|---|---|---|"]
    for m in names:
        old = {r["seed"]: float(r["frechet_after_recovery"]) for r in base if r["method"] == m}
        new = {r["seed"]: float(r["frechet_after_recovery"]) for r in extra["rows"] if r["method"] == m}
        common = sorted(set(old) & set(new))
        dm, dh = ci95([new[s] - old[s] for s in common])
        lines.append(f"| {m} | {_ci_cell([r for r in base if r['method'] == m], 'frechet_after_recovery', 1)} | "
                     f"{_ci_cell([r for r in extra['rows'] if r['method'] == m], 'frechet_after_recovery', 1)} | "
                     f"{dm:+.1f}" + (f" ± {dh:.1f}" if dh else "") + " |")
    order_a = sorted(names, key=lambda m: _mean_fd(base, m))
    order_b = sorted(names, key=lambda m: _mean_fd(extra["rows"], m))
    if len(base) > 2 and len(extra["rows"]) > 2:  # a rank correlation of two runs says nothing
        lines += ["", f"Spearman of the loss after pruning with the FD after recovery on these methods and seeds: "
                      f"{spearman_post_pruning(base):.2f} after {ra} steps ({len(base)} runs), "
                      f"{spearman_post_pruning(extra['rows']):.2f} after {rb} steps ({len(extra['rows'])} runs)."]
    lines += ["", f"Ordering by mean FD (best first) after {ra} steps: {', '.join(order_a)}; after {rb} steps: "
              f"{', '.join(order_b)} (" + ("unchanged" if order_a == order_b else "changed") + ")."]
    # a swap only matters if the paired difference is clear of zero at one of the budgets at least
    for i, m in enumerate(order_a):
        for n in order_a[i + 1:]:
            if order_b.index(n) < order_b.index(m):
                da, db = paired_difference(base, n, m), paired_difference(extra["rows"], n, m)
                if da is not None and db is not None:
                    lines += ["", f"Swapped: {n} minus {m} FD, paired by seed: {da[0]:+.1f} ± {da[1]:.1f} after "
                                  f"{ra} steps, {db[0]:+.1f} ± {db[1]:.1f} after {rb} steps."]
    return lines


def _cross_run_lines(extra_runs: dict[str, dict]) -> list[str]:
    """Contrasts of ``PAIRS`` between methods that ran in different extra runs of one ``run_key``.

    Runs of one key share teacher settings and budgets (the pipeline is deterministic per seed), so
    pairing their rows by seed is as sound as pairing within one run, provided the teacher is the
    same one: a teacher pretrained again with the same settings but scoring another FD (other
    torch build, other process) is not, so the teacher's measured FD must match too.
    """
    by_key: dict[tuple[str, float], list[str]] = {}
    for label, extra in extra_runs.items():
        by_key.setdefault((run_key(extra), round(float(extra["teacher"]["frechet"]), 6)), []).append(label)
    out = []
    for (key, _), labels in by_key.items():
        if len(labels) < 2:
            continue
        owner = {r["method"]: label for label in labels for r in extra_runs[label]["rows"]}
        rows = [r for label in labels for r in extra_runs[label]["rows"]]
        for a, b in PAIRS:
            diff = paired_difference(rows, a, b)
            if diff is not None and diff[2] > 1 and owner[a] != owner[b]:
                out += ["", f"Across runs `{owner[a]}` and `{owner[b]}` ({key}): {a} minus {b} FD, paired by seed "
                            f"({diff[2]} seeds): {diff[0]:+.1f} ± {diff[1]:.1f} (negative: {a} better)."]
    return out


def to_markdown(res: dict) -> str:
    lines = [f"# TinyFusion at small scale ({res['mode']} mode)", "",
             f"Command: `{res['command']}`. 12-layer DiT (hidden 64, 4x8x8 inputs) pretrained {res['settings']['pretrain_steps']} steps "
             f"on digits, pruned {res.get('pattern', '1:2')} to 6 layers, each recovered {res['settings']['recover_steps']} steps; seeds "
             f"{res['settings']['seeds']}. Fréchet distance in the features of a digit MLP (held-out accuracy "
             f"{res['classifier_heldout_accuracy']:.3f}), {res['sampler']['samples']} DDIM-{res['sampler']['steps']} "
             f"samples vs {res['data']['heldout']} held-out digits. Teacher (12 layers): held-out loss "
             f"{res['teacher']['heldout_loss']:.4f}, FD {res['teacher']['frechet']:.2f}"
             + (f"; real train digits vs held-out: FD {res['frechet_real_train_vs_heldout']:.2f}"
                if "frechet_real_train_vs_heldout" in res else "") + ".", "",
             "Cells: mean ± half-width of the 95% Student-t interval over the seeds.", "",
             "| method | recovery | kept (one per seed) | calib. loss after pruning | held-out loss after recovery "
             "| FD after recovery |",
             "|---|---|---|---|---|---|"]
    for name in res["summary"]:
        rs = [r for r in res["rows"] if r["method"] == name]

        def fmt(k: str, digits: int, rs: list = rs) -> str:
            m, h = ci95([float(r[k]) for r in rs])
            return f"{m:.{digits}f}" + (f" ± {h:.{digits}f}" if h else "")
        kept = sorted({tuple(r["kept"]) for r in rs})
        lines.append(f"| {name} | {rs[0]['recovery']} | {'; '.join(map(str, map(list, kept)))} | "
                     f"{fmt('calibration_loss', 4)} | {fmt('heldout_loss_after_recovery', 4)} | "
                     f"{fmt('frechet_after_recovery', 1)} |")
    if "spearman_post_pruning_vs_recovered" in res:
        lines += ["", f"Spearman rank correlation of the calibration loss right after pruning with the FD after "
                  f"recovery, over all {len(res['rows'])} runs: {res['spearman_post_pruning_vs_recovered']:.2f}. "
                  "Per-seed numbers: `tinyfusion_summary.json`."]
    lines += _paired_lines(res["rows"])
    if any(e.get("pattern", "1:2") != res.get("pattern", "1:2") for e in res.get("extra_runs", {}).values()):
        lines += ["", "Other N:M patterns (below): the paper's 1:2, 2:4 and 7:14 are on 28 layers. On this "
                  "12-layer testbed 2:4 keeps 2 of every 4 blocks (three local groups) and 6:12 keeps 6 of 12 in "
                  "one global group, the analogue of 7:14 (both keep half with a single group). Only learnable and "
                  "oracle obey the pattern; shortgpt, flux-lite, sensitivity and random keep the best half anywhere "
                  "(the pattern only sets how many), so their kept sets repeat across patterns; their `-groups` "
                  "variants (`baseline_scope=\"groups\"`) keep the best N of every group of M instead. The pattern "
                  "runs use the 1:2 table's search and recovery budgets; each run's header names its teacher and "
                  "budgets. Per-seed numbers: "
                  "`tinyfusion_summary.json` under `runs[KEY]`, KEY naming the pattern, teacher and budgets, e.g. "
                  "`runs[\"2:4, teacher 800 steps, search 100 steps, recovery 200 steps\"]` (same shape as the "
                  "top-level `methods`, which stays the main run, plus `seeds`, `teacher` and `command`; runs of one "
                  "KEY, such as the grouped baselines', are merged and listed under `more_runs`; runs of different "
                  "KEYs never are)."]
    for label, extra in res.get("extra_runs", {}).items():
        lines += ["", f"Extra run `{label}` (`{extra['command']}`; pattern {extra.get('pattern', '1:2')}, "
                  f"search {extra['settings']['search_steps']} steps, seeds {extra['settings']['seeds']}, "
                  f"recovery {extra['settings']['recover_steps']} steps, "
                  f"teacher pretrained {extra['settings']['pretrain_steps']} steps, FD {extra['teacher']['frechet']:.2f}"
                  + (f", {extra['seconds']:.0f} s" if "seconds" in extra else "") + "):", "",
                  "| method | kept (seeds) | calib. loss | held-out loss after recovery | FD after recovery |",
                  "|---|---|---|---|---|"]
        for name in extra["summary"]:
            rs = [r for r in extra["rows"] if r["method"] == name]
            lines.append(f"| {name} | {kept_by_seed(rs)} | {_ci_cell(rs, 'calibration_loss', 4)} | "
                         f"{_ci_cell(rs, 'heldout_loss_after_recovery', 4)} | "
                         f"{_ci_cell(rs, 'frechet_after_recovery', 1)} |")
        lines += _paired_lines(extra["rows"])
        if "spearman_post_pruning_vs_recovered" in extra:
            lines += ["", f"Spearman of the loss after pruning with the FD after recovery, over its "
                      f"{len(extra['rows'])} runs: {extra['spearman_post_pruning_vs_recovered']:.2f}."]
        lines += recovery_comparison(res, extra)
    lines += _cross_run_lines(res.get("extra_runs", {}))
    c = res["search_cost"]
    lines += ["", f"Search cost: {c['learnable_search_step_s'] * 1e3:.1f} ms per learnable search step vs "
              f"{c['plain_train_step_s'] * 1e3:.1f} ms per plain full training step (batch {c['batch']}): "
              f"{c['ratio']:.2f}x."]
    if res["latency"]:
        lat = res["latency"]
        lines += ["", "| model | ExecuTorch XNNPACK fp32 host p50 (ms) | p90 (ms) | size (bytes) |", "|---|---|---|---|"]
        for k in ("12-layer", "6-layer"):
            lines.append(f"| {k} | {lat[k]['p50_ms']:.3f} | {lat[k]['p90_ms']:.3f} | {lat[k]['size_bytes']} |")
        lines.append(f"\nSpeed-up (p50): {lat['speedup_p50']:.2f}x"
                     + (f" (re-measured interleaved: `{lat['command']}`)" if "command" in lat else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
