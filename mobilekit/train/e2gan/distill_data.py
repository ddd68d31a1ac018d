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
from mobilekit.train.e2gan.pairs import init_pairs_dir, pair_exists, write_pair

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
    """What a distillation run did: pairs written now, pairs already there, the directory."""

    written: int
    skipped: int
    out_dir: Path


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
        How many pairs were written and skipped.

    Example:
        >>> pipe = load_instruct_pix2pix("timbrooks/instruct-pix2pix")  # doctest: +SKIP
        >>> distill_pairs(pipe, "builtin:64", Path("data/sepia"), DistillDataConfig(concept="sepia",
        ...               prompt="make it a sepia photo"))  # doctest: +SKIP
    """
    import torch
    from PIL import Image

    out = init_pairs_dir(Path(out_dir))
    items = source_images(sources, size=config.size, seed=config.seed)
    written = skipped = 0
    device = getattr(pipe, "device", torch.device("cpu"))
    for i, (name, src) in enumerate(items):
        pid = f"{config.concept}-{i:05d}"
        if pair_exists(out, pid):
            skipped += 1
        else:
            seed = config.seed + i
            gen = torch.Generator(device="cpu").manual_seed(seed)
            result = pipe(config.prompt, image=Image.fromarray(src), num_inference_steps=config.num_inference_steps,
                          guidance_scale=config.guidance_scale, image_guidance_scale=config.image_guidance_scale,
                          generator=gen, output_type="np")
            tgt = np.asarray(result.images[0], dtype=np.float32)
            if tgt.shape[:2] != src.shape[:2]:
                tgt = np.asarray(Image.fromarray((np.clip(tgt, 0, 1) * 255 + 0.5).astype(np.uint8))
                                 .resize(src.shape[1::-1], Image.Resampling.BICUBIC))
            write_pair(out, pid, src, tgt, prompt=config.prompt, concept=config.concept,
                       extra={"seed": seed, "source_name": name, "steps": config.num_inference_steps,
                              "guidance_scale": config.guidance_scale,
                              "image_guidance_scale": config.image_guidance_scale, "device": str(device)})
            written += 1
        if on_progress is not None:
            on_progress("distill", i + 1, len(items))
    logger.info("distilled %d pairs (%d already present) into %s", written, skipped, out)
    return DistillReport(written, skipped, out)
