"""On-disk paired data: source image, target image, prompt and concept.

Layout of a pairs directory::

    DIR/dataset.json            {"format": "mobilekit-pairs", "version": 1}
    DIR/source/<id>.png         the input photo (RGB, 8-bit)
    DIR/target/<id>.png         the edited photo, same size as the source
    DIR/meta/<id>.json          {"id", "source", "target", "prompt", "concept", ...extra}
    DIR/distill.json            optional: how `distill-data` made the pairs (model, settings,
                                throughput of every run)

A pair is complete once its ``meta/<id>.json`` exists: the two images are written first
(atomically), the meta file last, so an interrupted writer leaves no half pair and a
resumed one skips the ids whose meta file exists. Extra keys in a meta file (seed,
generator settings) are kept.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilekit._io import atomic_path, write_json_atomic
from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT = "mobilekit-pairs"
VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
SUMMARY_FILE = "distill.json"


@dataclass(frozen=True)
class PairRecord:
    """One pair on disk (paths relative to the dataset directory)."""

    id: str
    source: str
    target: str
    prompt: str
    concept: str
    extra: dict[str, Any] = field(default_factory=dict)


def init_pairs_dir(directory: Path) -> Path:
    """Create (or reuse) a pairs directory and its ``dataset.json``."""
    directory = Path(directory)
    for sub in ("source", "target", "meta"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    marker = directory / "dataset.json"
    if not marker.exists():
        write_json_atomic(marker, {"format": FORMAT, "version": VERSION})
    return directory


def read_summary(directory: Path) -> dict[str, Any] | None:
    """The distillation summary of a pairs directory, or None when it has none (or an unreadable one)."""
    path = Path(directory) / SUMMARY_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode="RGB").save(tmp, format="PNG")


def pair_exists(directory: Path, pair_id: str) -> bool:
    """True when the pair ``pair_id`` is complete in ``directory``."""
    return (Path(directory) / "meta" / f"{pair_id}.json").is_file()


def write_pair(directory: Path, pair_id: str, source: np.ndarray, target: np.ndarray, *, prompt: str,
               concept: str, extra: dict[str, Any] | None = None) -> PairRecord:
    """Write one pair (images HWC RGB, uint8 or float in [0, 1]) atomically; meta file last.

    Raises:
        ConfigError: bad id, empty prompt/concept, or source and target of different sizes.
    """
    directory = Path(directory)
    if not _ID.match(pair_id):
        raise ConfigError(f"pair id {pair_id!r} may use only letters, digits, '_', '-', '.'", where="pair_id")
    if not prompt or not prompt.strip():
        raise ConfigError("empty prompt", where=f"pair {pair_id}", fix="give every pair an instruction prompt")
    if not concept or not concept.strip():
        raise ConfigError("empty concept", where=f"pair {pair_id}", fix="give every pair a concept name")
    if np.shape(source)[:2] != np.shape(target)[:2]:
        raise ConfigError(f"source {np.shape(source)[:2]} and target {np.shape(target)[:2]} sizes differ",
                          where=f"pair {pair_id}", fix="resize the target to the source size")
    init_pairs_dir(directory)
    rec = PairRecord(pair_id, f"source/{pair_id}.png", f"target/{pair_id}.png", prompt, concept, dict(extra or {}))
    _save_png(directory / rec.source, source)
    _save_png(directory / rec.target, target)
    write_json_atomic(directory / "meta" / f"{pair_id}.json",
                      {"id": pair_id, "source": rec.source, "target": rec.target, "prompt": prompt,
                       "concept": concept, **rec.extra})
    return rec


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"cannot read image: {exc}", where=str(path),
                          fix="replace the file with a PNG or JPEG") from exc


def read_records(directory: Path) -> list[PairRecord]:
    """Read and validate every pair record of ``directory`` (sorted by id).

    Raises:
        ConfigError: not a pairs directory, no pairs, a meta file that is not JSON or lacks
            ``prompt``/``concept``/``source``/``target``, or a missing image file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError("pairs directory does not exist", where=str(directory),
                          fix="pass a directory written by `mobilekit gan distill-data` or write_pair()")
    marker = directory / "dataset.json"
    if not marker.is_file():
        raise ConfigError("not a pairs directory: dataset.json is missing", where=str(directory),
                          fix="a pairs directory holds dataset.json, source/, target/ and meta/ "
                              "(see mobilekit.train.e2gan.pairs)")
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"dataset.json is not valid JSON: {exc}", where=str(marker)) from exc
    if info.get("format") != FORMAT:
        raise ConfigError(f"dataset.json format is {info.get('format')!r}, expected {FORMAT!r}", where=str(marker))
    metas = sorted((directory / "meta").glob("*.json")) if (directory / "meta").is_dir() else []
    if not metas:
        raise ConfigError("the pairs directory holds no pairs (meta/*.json)", where=str(directory),
                          fix="generate pairs first with `mobilekit gan distill-data`")
    records = []
    for m in metas:
        try:
            d = json.loads(m.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"meta file is not valid JSON: {exc}", where=str(m)) from exc
        for key in ("source", "target", "prompt", "concept"):
            val = d.get(key)
            if not isinstance(val, str) or not val.strip():
                raise ConfigError(f"missing or empty {key!r}", where=str(m),
                                  fix=f"add a non-empty \"{key}\" to the meta file")
        for key in ("source", "target"):
            if not (directory / d[key]).is_file():
                raise ConfigError(f"{key} image {d[key]!r} is missing", where=str(m))
        extra = {k: v for k, v in d.items() if k not in ("id", "source", "target", "prompt", "concept")}
        records.append(PairRecord(d.get("id", m.stem), d["source"], d["target"], d["prompt"], d["concept"], extra))
    return records


class PairDataset:
    """Pairs of a directory, loaded into memory as tensors in [-1, 1].

    Args:
        directory: a pairs directory.
        concept: keep only pairs of this concept (None: all).
        size: resize every image to ``size``×``size`` pixels (None: keep; then all images
            must have the same size).

    Raises:
        ConfigError: see ``read_records``; also a source/target size mismatch, images of
            different sizes without ``size``, or no pair of ``concept``.
    """

    def __init__(self, directory: Path, *, concept: str | None = None, size: int | None = None) -> None:
        self.directory = Path(directory)
        recs = read_records(self.directory)
        if concept is not None:
            recs = [r for r in recs if r.concept == concept]
            if not recs:
                found = sorted({r.concept for r in read_records(self.directory)})
                raise ConfigError(f"no pairs of concept {concept!r}", where=str(self.directory),
                                  fix=f"concepts present: {found}")
        self.records = recs
        srcs, tgts = [], []
        first: tuple[int, int] | None = None
        for r in recs:
            s, t = _read_image(self.directory / r.source), _read_image(self.directory / r.target)
            if s.shape != t.shape:
                raise ConfigError(f"source {s.shape[:2]} and target {t.shape[:2]} sizes differ",
                                  where=str(self.directory / "meta" / f"{r.id}.json"),
                                  fix="regenerate the pair or resize the target to the source size")
            if size is None:
                first = first or s.shape[:2]
                if s.shape[:2] != first:
                    raise ConfigError(f"image size {s.shape[:2]} differs from the first pair's {first}",
                                      where=str(self.directory / r.source), fix="pass size= to resize all pairs")
            else:
                s, t = _resize(s, size), _resize(t, size)
            srcs.append(s)
            tgts.append(t)
        self.sources = _to_tensor(np.stack(srcs))
        self.targets = _to_tensor(np.stack(tgts))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def prompts(self) -> list[str]:
        """Prompt of each pair."""
        return [r.prompt for r in self.records]

    @property
    def concepts(self) -> list[str]:
        """Concept of each pair."""
        return [r.concept for r in self.records]

    def by_concept(self) -> dict[str, torch.Tensor]:
        """Indices of the pairs of each concept."""
        out: dict[str, list[int]] = {}
        for i, c in enumerate(self.concepts):
            out.setdefault(c, []).append(i)
        return {c: torch.tensor(v) for c, v in out.items()}


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def write_concept_pairs(directory: Path, sources: torch.Tensor, targets: torch.Tensor, *, prompt: str,
                        concept: str, prefix: str = "", ids: Sequence[str] | None = None) -> list[PairRecord]:
    """Write tensors [N, 3, H, W] in [-1, 1] as pairs (ids ``<prefix><concept>-<i:05d>`` by default)."""
    src = ((sources.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    tgt = ((targets.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    ids = list(ids) if ids is not None else [f"{prefix}{concept}-{i:05d}" for i in range(len(src))]
    return [write_pair(directory, pid, s, t, prompt=prompt, concept=concept) for pid, s, t in zip(ids, src, tgt)]
