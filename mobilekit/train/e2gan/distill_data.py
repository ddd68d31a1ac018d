"""Distil paired data from an instruction-based diffusion editor (InstructPix2Pix).

Each source photo is edited by diffusers' ``StableDiffusionInstructPix2PixPipeline`` with
the concept's instruction prompt; source and edit are written as one pair of a pairs
directory (``pairs.py``). Pair ``i`` always uses the seed ``seed + i``, and pairs already
on disk are skipped, so an interrupted run resumes and produces the same pairs as an
uninterrupted one.

The pipeline's weights come from a local path or a hub id the user gives (e.g.
``timbrooks/instruct-pix2pix``); loading a hub id downloads it. Tests pass a pipeline
built from tiny random components instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.errors import BackendUnavailableError, ConfigError
from mobilekit._io import write_json_atomic
from mobilekit.train.e2gan.pairs import SUMMARY_FILE, init_pairs_dir, pair_exists, read_summary, write_pair

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True, kw_only=True)
class DistillDataConfig:
    """How pairs are made.

    Attributes:
        concept: concept name stored with each pair.
        prompt: the editing instruction.
        size: sources are resized (center-cropped to square first) to size×size pixels;
            a multiple of 8.
        num_inference_steps: denoising steps per edit.
        guidance_scale: text guidance.
        image_guidance_scale: image guidance (how close the edit stays to the source).
        seed: pair ``i`` uses seed ``seed + i``.
        version: config schema version.
    """

    concept: str
    prompt: str
    size: int = 256
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        if not self.concept.strip():
            raise ConfigError("concept is empty", where="DistillDataConfig.concept")
        if not self.prompt.strip():
            raise ConfigError("prompt is empty", where="DistillDataConfig.prompt", fix="pass --prompt")
        if self.size < 8 or self.size % 8:
            raise ConfigError(f"size must be a positive multiple of 8, got {self.size}", where="DistillDataConfig.size")
        if self.num_inference_steps < 1:
            raise ConfigError("num_inference_steps must be ≥ 1", where="DistillDataConfig.num_inference_steps")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a dict."""
        return asdict(self)


@dataclass(frozen=True)
class DistillReport:
    """What a distillation run did: pairs written now, pairs already there, the directory, and
    the wall-clock seconds spent editing (pipeline calls and writes, not loading)."""

    written: int
    skipped: int
    out_dir: Path
    seconds: float = 0.0

    @property
    def pairs_per_second(self) -> float | None:
        """Throughput of the pairs written now (None when none was)."""
        return self.written / self.seconds if self.written and self.seconds > 0 else None

    @property
    def seconds_per_pair(self) -> float | None:
        """Seconds per pair written now (None when none was)."""
        return self.seconds / self.written if self.written else None

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, throughput included."""
        pps, spp = self.pairs_per_second, self.seconds_per_pair
        return {"out": str(self.out_dir), "written": self.written, "skipped": self.skipped,
                "seconds": round(self.seconds, 3), "pairs_per_second": None if pps is None else round(pps, 4),
                "seconds_per_pair": None if spp is None else round(spp, 4)}


def load_instruct_pix2pix(model: str | Path, *, dtype: str = "float32") -> Any:
    """Load an InstructPix2Pix pipeline from a local path or hub id (no safety checker).

    Raises:
        BackendUnavailableError: diffusers is missing.
        ConfigError: the path/id cannot be loaded.
    """
    try:
        import torch
        from diffusers import StableDiffusionInstructPix2PixPipeline
    except ImportError as exc:
        raise BackendUnavailableError("diffusers is not installed", where="distill_data",
                                      fix="pip install diffusers transformers") from exc
    try:
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            str(model), torch_dtype=getattr(torch, dtype), safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load an InstructPix2Pix pipeline: {exc}", where=str(model),
                          fix="pass a local diffusers folder or a hub id such as timbrooks/instruct-pix2pix") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _square(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = img[y:y + s, x:x + s]
    if crop.dtype != np.uint8:
        crop = (np.clip(crop, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.asarray(Image.fromarray(crop).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def source_images(sources: Path | Sequence[np.ndarray] | str, *, size: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Resolve sources to (name, uint8 HWC image) pairs.

    Args:
        sources: a directory of images (sorted by name), a list of HWC arrays, or
            ``"builtin:N"`` for N random crops of the photos bundled with scikit-image.
        size: output size in pixels.
        seed: crop seed for ``builtin:N``.
    """
    from PIL import Image

    if isinstance(sources, str) and sources.startswith("builtin:"):
        from mobilekit.train.e2gan.concepts import TRAIN_PHOTOS, random_crops

        try:
            n = int(sources.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"bad sources {sources!r}", where="sources", fix="use builtin:N, e.g. builtin:32") from None
        crops = random_crops(TRAIN_PHOTOS, n, size, seed=seed)
        return [(f"builtin{i:05d}", _square(c, size)) for i, c in enumerate(crops)]
    if isinstance(sources, (str, Path)):
        d = Path(sources)
        if not d.is_dir():
            raise ConfigError("source directory does not exist", where=str(d), fix="pass a folder of images or builtin:N")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ConfigError("no images in the source directory", where=str(d),
                              fix=f"add files ending in {', '.join(_IMAGE_SUFFIXES)}")
        out = []
        for p in files:
            with Image.open(p) as im:
                out.append((p.stem, _square(np.asarray(im.convert("RGB")), size)))
        return out
    return [(f"src{i:05d}", _square(np.asarray(a), size)) for i, a in enumerate(sources)]


def _edit(pipe: Any, src: np.ndarray, config: DistillDataConfig, seed: int) -> np.ndarray:
    """One InstructPix2Pix edit of ``src`` as float HWC in [0, 1], resized back to the source's size."""
    import torch
    from PIL import Image

    gen = torch.Generator(device="cpu").manual_seed(seed)
    result = pipe(config.prompt, image=Image.fromarray(src), num_inference_steps=config.num_inference_steps,
                  guidance_scale=config.guidance_scale, image_guidance_scale=config.image_guidance_scale,
                  generator=gen, output_type="np")
    tgt = np.asarray(result.images[0], dtype=np.float32)
    if tgt.shape[:2] != src.shape[:2]:
        tgt = np.asarray(Image.fromarray((np.clip(tgt, 0, 1) * 255 + 0.5).astype(np.uint8))
                         .resize(src.shape[1::-1], Image.Resampling.BICUBIC))
    return tgt


def _model_name(pipe: Any) -> str | None:
    """The folder or hub id the pipeline was loaded from (None for one built in memory)."""
    cfg = getattr(pipe, "config", None) or {}
    name = cfg.get("_name_or_path") if hasattr(cfg, "get") else None
    return str(name) if name else None


def _write_summary(out: Path, pipe: Any, config: DistillDataConfig, report: DistillReport) -> None:
    """Record the editor, the settings and this run's throughput; earlier runs (resumes) are kept."""
    prev = read_summary(out) or {}
    runs = [*prev.get("runs", []), report.to_dict()]
    write_json_atomic(out / SUMMARY_FILE, {"model": _model_name(pipe) or prev.get("model"),
                                           "config": config.to_dict(), "runs": runs})


def distill_pairs(pipe: Any, sources: Path | Sequence[np.ndarray] | str, out_dir: Path, config: DistillDataConfig,
                  *, on_progress: Callable[[str, int, int], None] | None = None) -> DistillReport:
    """Edit every source with ``pipe`` and write the pairs to ``out_dir`` (seeded, resumable).

    Args:
        pipe: a ``StableDiffusionInstructPix2PixPipeline`` (see ``load_instruct_pix2pix``).
        sources: see ``source_images``.
        out_dir: the pairs directory (created; existing pairs are kept and skipped).
        config: prompt, size, sampler settings and seed.
        on_progress: ``on_progress("distill", done, total)``.

    Returns:
        How many pairs were written and skipped, and the seconds it took (throughput);
        the same goes to ``out_dir/distill.json``.

    Example:
        >>> pipe = load_instruct_pix2pix("timbrooks/instruct-pix2pix")  # doctest: +SKIP
        >>> distill_pairs(pipe, "builtin:64", Path("data/sepia"), DistillDataConfig(concept="sepia",
        ...               prompt="make it a sepia photo"))  # doctest: +SKIP
    """
    import time

    out = init_pairs_dir(Path(out_dir))
    items = source_images(sources, size=config.size, seed=config.seed)
    written = skipped = 0
    device = getattr(pipe, "device", "cpu")
    seconds = 0.0
    for i, (name, src) in enumerate(items):
        pid = f"{config.concept}-{i:05d}"
        if pair_exists(out, pid):
            skipped += 1
        else:
            seed = config.seed + i
            t0 = time.perf_counter()
            tgt = _edit(pipe, src, config, seed)
            write_pair(out, pid, src, tgt, prompt=config.prompt, concept=config.concept,
                       extra={"seed": seed, "source_name": name, "steps": config.num_inference_steps,
                              "guidance_scale": config.guidance_scale,
                              "image_guidance_scale": config.image_guidance_scale, "device": str(device)})
            seconds += time.perf_counter() - t0
            written += 1
        if on_progress is not None:
            on_progress("distill", i + 1, len(items))
    report = DistillReport(written, skipped, out, seconds)
    _write_summary(out, pipe, config, report)
    logger.info("distilled %d pairs (%d already present) into %s in %.1f s", written, skipped, out, seconds)
    return report
