"""The README's main job on built-in defaults, with nothing downloaded.

1. Prune the built-in DiT (6 blocks) to 3 with TinyFusion's learnable 1:2 search on the digits.
2. Train the built-in E²GAN generator on a mix of built-in concepts, then adapt it to a held-out
   concept (sepia) with LoRA on its crucial layers.
3. Build both for an iPhone and an Android phone at fp32 and int8: export (adapters kept
   separate where the format can share the base), measure on this host, estimate per target,
   check budgets, and write one HTML report.

Every stage is skipped when its outputs exist for the same settings, and exports come from the
content-addressed cache, so a second run only re-reads results.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilekit._io import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int], None]

DEMO_TARGETS = ("iphone-15-pro", "pixel-8")
PRUNE = {"pattern": "1:2", "method": "learnable", "steps": 40, "batch_size": 16, "seed": 0}
# Measured by benchmarks/demo_gan_bench.py (results/demo_gan.json): 30 steps left colour blobs; with
# the adversarial term on, 200+200 steps only matched the identity map on held-out photos, while
# L1 alone with 400 base + 200 adapt steps beat it by ~2.5 dB and shows the concept, in ~2 min.
GAN_BASE = {"num_concepts": 4, "pairs_per_concept": 16, "image_size": 64, "steps": 400, "batch_size": 8, "seed": 0,
            "adversarial": False}
GAN_ADAPT = {"concept": "sepia", "pairs": 16, "image_size": 64, "steps": 200, "batch_size": 8, "seed": 0,
             "adversarial": False}


def _stage(out: Path, name: str, settings: dict[str, Any], produce: Callable[[Path], None],
           done_marker: str) -> Path:
    """Run ``produce(dir)`` unless ``dir`` already holds its result for the same settings."""
    from mobilekit import __version__

    folder = out / name
    key = hashlib.sha256(json.dumps({"settings": settings, "version": __version__}, sort_keys=True).encode()).hexdigest()
    stamp = folder / "stage.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and (folder / done_marker).exists():
        logger.info("demo stage %s: up to date", name)
        return folder
    produce(folder)
    write_json_atomic(stamp, {"key": key, "settings": settings})
    return folder


def _prune(folder: Path, on_progress: ProgressFn | None) -> None:
    from mobilekit.builtins import build_builtin
    from mobilekit.train.tinyfusion.config import DepthPruneConfig
    from mobilekit.train.tinyfusion.prune import prune_depth

    dit = build_builtin("dit-tiny").model.dit
    config = DepthPruneConfig(**PRUNE)
    prune_depth(dit, "digits", config, out_dir=folder, on_progress=on_progress)


def _gan_base(folder: Path, on_progress: ProgressFn | None) -> None:
    from mobilekit.train.e2gan.loop import LoopConfig
    from mobilekit.train.e2gan.models import E2GANConfig
    from mobilekit.train.e2gan.train import BaseTrainConfig, train_base

    s = GAN_BASE
    config = BaseTrainConfig(generator=E2GANConfig.tiny(), num_concepts=s["num_concepts"],
                             pairs_per_concept=s["pairs_per_concept"], image_size=s["image_size"],
                             loop=LoopConfig(steps=s["steps"], batch_size=s["batch_size"], seed=s["seed"],
                                             checkpoint_every=0, adversarial=s["adversarial"]))
    train_base(config, folder, on_progress=on_progress)


def _gan_adapt(folder: Path, base: Path, on_progress: ProgressFn | None) -> None:
    from mobilekit.train.e2gan.adapt import adapt
    from mobilekit.train.e2gan.loop import LoopConfig
    from mobilekit.train.e2gan.train import AdaptConfig

    s = GAN_ADAPT
    config = AdaptConfig(concept=s["concept"], pairs=s["pairs"], image_size=s["image_size"],
                         loop=LoopConfig(steps=s["steps"], batch_size=s["batch_size"], seed=s["seed"], lr=1e-3,
                                         checkpoint_every=0, adversarial=s["adversarial"]))
    adapt(base, config, folder, on_progress=on_progress)


def demo_config(out: Path, *, targets: tuple[str, ...] = DEMO_TARGETS) -> str:
    """The build config the demo writes next to its models (``OUT/mobilekit.toml``)."""
    from mobilekit.builtins import DIT_TINY_CONFIG

    size, ch = DIT_TINY_CONFIG["sample_size"], DIT_TINY_CONFIG["in_channels"]
    quoted = ", ".join(f'"{t}"' for t in targets)
    return f"""# Written by `mobilekit demo`: the build of the pruned DiT and the adapted GAN.
[build]
out = "build"
targets = [{quoted}]
precisions = ["fp32", "int8"]
max_seconds = 1.0
cache_dir = "cache"

# Core ML runs only on macOS: off a Mac its parity is recorded as an error, allowed here
allow_errors = ["parity"]

[budgets]
host_latency_ms = 1000
phone_latency_ms = 1000
size_mb = 50
min_cosine = 0.95

[models.dit]
spec = "dit-pruned/model"
inputs = ["latents=1x{ch}x{size}x{size}", "timestep=1:int64", "class_labels=1:int64"]

[models.gan]
spec = "gan-base/generator"
adapters = {{ {GAN_ADAPT['concept']} = "gan-{GAN_ADAPT['concept']}/adapter" }}
adapter_policy = "separate"
"""


def run_demo(out: str | Path = "demo-out", *, targets: tuple[str, ...] = DEMO_TARGETS,
             on_progress: ProgressFn | None = None) -> Any:
    """Run the demo into ``out`` and return the BuildResult.

    Args:
        out: output directory (models, build artifacts, report.html).
        targets: an iPhone and an Android target by default.
        on_progress: ``on_progress(stage, done, total)`` callback.

    Example:
        >>> result = run_demo("demo-out")  # doctest: +SKIP
        >>> result.out / "report.html"  # doctest: +SKIP
    """
    from mobilekit._io import ensure_writable_dir
    from mobilekit.building import build

    out = ensure_writable_dir(Path(out)).resolve()
    step = on_progress or (lambda stage, done, total: None)
    step("prune dit-tiny (learnable 1:2)", 0, 4)
    _stage(out, "dit-pruned", PRUNE, lambda d: _prune(d, on_progress), "model/config.json")
    step("train gan-tiny base", 1, 4)
    base = _stage(out, "gan-base", GAN_BASE, lambda d: _gan_base(d, on_progress), "generator/config.json")
    step(f"adapt gan to {GAN_ADAPT['concept']}", 2, 4)
    _stage(out, f"gan-{GAN_ADAPT['concept']}", {**GAN_ADAPT, "base": GAN_BASE},
           lambda d: _gan_adapt(d, base, on_progress), "adapter/adapter.safetensors")
    step("build for " + ", ".join(targets), 3, 4)
    config = write_text_atomic(out / "mobilekit.toml", demo_config(out, targets=targets))
    result = build(config, on_progress=on_progress)
    step("done", 4, 4)
    return result
