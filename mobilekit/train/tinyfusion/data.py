"""Training data for depth pruning and recovery: class-conditional images or pre-computed latents.

A data source holds samples already shaped like the model's input ``[C, H, W]`` in about
[-1, 1], with integer class labels (or none). Three kinds:

- ``"digits"``: scikit-learn's 8x8 handwritten digits (offline, 10 classes), adapted to the model;
- a folder ``DIR/<class name>/*.png|jpg`` of images (classes sorted by name);
- a ``.safetensors`` file with ``latents`` ``[N, C, H, W]`` and optional ``labels`` ``[N]``.

Images are adapted to a model input of ``C`` channels and ``H x W``: if ``C`` is a square
``s*s`` the gray image is resized to ``sH x sW`` and folded into channels (pixel unshuffle),
so no information is duplicated; for ``C == 3`` the RGB image is resized; otherwise the gray
image is repeated over the channels. :func:`to_images` undoes the folding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mobilekit.errors import ConfigError

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class DataSource:
    """Samples shaped like the model input, kept in memory.

    Attributes:
        x: ``[N, C, H, W]`` float32 samples in about [-1, 1].
        labels: ``[N]`` int64 class ids, or None for unlabelled data.
        num_classes: number of classes (0 when unlabelled).
        name: where the data came from (recorded in results).
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The samples (and labels) at ``index``."""
        return self.x[index], None if self.labels is None else self.labels[index]

    def split(self, holdout: float = 0.2, seed: int = 0) -> tuple[DataSource, DataSource]:
        """A deterministic (train, held-out) split."""
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_hold = max(1, int(round(len(self) * holdout)))
        parts = []
        for idx, tag in ((perm[n_hold:], "train"), (perm[:n_hold], "holdout")):
            parts.append(DataSource(self.x[idx], None if self.labels is None else self.labels[idx],
                                    self.num_classes, f"{self.name}[{tag}]"))
        return parts[0], parts[1]


def _fold(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Adapt ``[N, 1|3, h, w]`` images in [-1, 1] to ``[N, C, H, W]``."""
    c, h, w = shape
    s = math.isqrt(c)
    if c == 3:
        rgb = images if images.shape[1] == 3 else images.repeat(1, 3, 1, 1)
        return F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=False)
    gray = images.mean(dim=1, keepdim=True)
    if s * s == c:
        big = F.interpolate(gray, size=(h * s, w * s), mode="bilinear", align_corners=False)
        return F.pixel_unshuffle(big, s) if s > 1 else big
    return F.interpolate(gray, size=(h, w), mode="bilinear", align_corners=False).repeat(1, c, 1, 1)


def to_images(x: torch.Tensor) -> torch.Tensor:
    """Undo the channel folding of :func:`_fold`: ``[N, C, H, W]`` -> gray or RGB images."""
    c = x.shape[1]
    s = math.isqrt(c)
    if c == 3:
        return x
    if s * s == c and s > 1:
        return F.pixel_shuffle(x, s)
    return x.mean(dim=1, keepdim=True)


def digits(shape: tuple[int, int, int]) -> DataSource:
    """scikit-learn's handwritten digits (1,797 images, 8x8, 10 classes) shaped as ``shape``.

    Example:
        >>> src = digits((4, 16, 16)); src.x.shape
        torch.Size([1797, 4, 16, 16])
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    img = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2.0 - 1.0
    return DataSource(_fold(img, shape), torch.tensor(bunch.target, dtype=torch.long), 10, "digits")


def image_folder(root: Path, shape: tuple[int, int, int]) -> DataSource:
    """Class-conditional images from ``root/<class>/*`` shaped as ``shape`` (classes sorted by name)."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise ConfigError("the image folder has no class sub-folders", where=str(root),
                          fix="lay images out as DIR/<class name>/<image>.png")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in _IMAGE_EXT:
                continue
            with Image.open(f) as im:
                arr = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1)
            xs.append(_fold(arr.unsqueeze(0) / 127.5 - 1.0, shape))
            ys.append(label)
    if not xs:
        raise ConfigError("no images found", where=str(root), fix=f"use one of {sorted(_IMAGE_EXT)}")
    return DataSource(torch.cat(xs), torch.tensor(ys, dtype=torch.long), len(classes), f"folder:{root}")


def latents_file(path: Path, shape: tuple[int, int, int] | None = None) -> DataSource:
    """Pre-computed latents from a safetensors file (``latents`` and optional ``labels``)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if "latents" not in tensors:
        raise ConfigError("the latents file has no 'latents' tensor", where=str(path),
                          fix="save {'latents': [N, C, H, W], 'labels': [N]} with safetensors")
    x = tensors["latents"].float()
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ConfigError(f"latents have shape {tuple(x.shape[1:])} but the model takes {tuple(shape)}",
                          where=str(path), fix="encode the data at the model's sample size and channels")
    labels = tensors.get("labels")
    n_cls = int(labels.max()) + 1 if labels is not None and labels.numel() else 0
    return DataSource(x, None if labels is None else labels.long(), n_cls, f"latents:{path}")


def load_data(spec: str | Path | DataSource, shape: tuple[int, int, int]) -> DataSource:
    """Resolve a data spec: a DataSource, ``"digits"``, an image folder, or a latents file.

    Raises:
        ConfigError: the spec names nothing usable.
    """
    if isinstance(spec, DataSource):
        if tuple(spec.x.shape[1:]) != tuple(shape):
            raise ConfigError(f"data samples have shape {tuple(spec.x.shape[1:])} but the model takes {tuple(shape)}",
                              where="data", fix="build the data source for this model's input shape")
        return spec
    if str(spec) in ("digits", "builtin:digits"):
        return digits(shape)
    path = Path(spec)
    if path.is_file() and path.suffix == ".safetensors":
        return latents_file(path, shape)
    if path.is_dir():
        return image_folder(path, shape)
    raise ConfigError(f"cannot use {str(spec)!r} as training data", where="data",
                      fix="pass 'digits', a folder DIR/<class>/*.png, or a .safetensors file with 'latents'")
