"""Concepts: the built-in offline concept set, concept embeddings and text encoders.

The built-in set turns the real photographs bundled with scikit-image into paired data:
random crops and flips of a photo are the sources, a deterministic image edit of each
crop (sepia, pencil sketch, posterize, ...) is the target. Nothing is downloaded.

A generator is conditioned on text embeddings [B, T, D]. They come either from a
pluggable ``TextEncoder`` (``CLIPTextEncoder`` loads a CLIP text model and tokenizer
through transformers from a local folder the user saved, without network), or, the offline default,
from ``ConceptEmbeddings``: one learned [T, D] tensor per concept.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)

# Photos bundled inside the scikit-image wheel (no pooch download).
TRAIN_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                 "immunohistochemistry", "camera", "grass", "brick")
HELD_OUT_PHOTOS: tuple[str, ...] = ("stereo_motorcycle", "coins", "gravel")
# Concepts the benchmark holds out from base training by default.
DEFAULT_HELD_OUT: tuple[str, ...] = ("sepia", "pencil_sketch", "hue_shift")

Edit = Callable[[np.ndarray], np.ndarray]


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=-1)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if x.ndim == 3:
        return gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")
    return gaussian_filter(x, sigma=sigma, mode="reflect")


def _sobel(g: np.ndarray) -> np.ndarray:
    from scipy.ndimage import sobel

    return np.hypot(sobel(g, axis=0, mode="reflect"), sobel(g, axis=1, mode="reflect")) / 4


def _sepia(x: np.ndarray) -> np.ndarray:
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
    return x @ m.T


def _pencil(x: np.ndarray) -> np.ndarray:
    g = _gray(x)
    inv_blur = _blur(1 - g, 2.0)
    return _rgb(np.clip(g / np.maximum(1 - inv_blur, 1e-3), 0, 1) ** 2)


def _hsv_shift(x: np.ndarray, dh: float) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(x, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + dh) % 1.0
    return hsv2rgb(hsv).astype(np.float32)


def _emboss(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import convolve

    k = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32) / 2
    return _rgb(convolve(_gray(x), k, mode="reflect") * 0.5 + 0.25)


def _edge_glow(x: np.ndarray) -> np.ndarray:
    e = np.clip(_sobel(_gray(x)) * 4, 0, 1)
    glow = _blur(e, 1.0)
    return np.clip(0.25 * x + np.stack([0.2 * glow, glow, 1.2 * glow], -1), 0, 1)


def _cartoon(x: np.ndarray) -> np.ndarray:
    smooth = np.round(_blur(x, 1.5) * 3) / 3
    edges = np.clip(_sobel(_gray(x)) * 5, 0, 1)
    return smooth * (1 - edges[..., None])


def _vignette(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)
    return x * (1 - 0.8 * r[..., None] ** 2)


# name -> (edit on float32 HWC in [0, 1], instruction prompt)
_CONCEPTS: dict[str, tuple[Edit, str]] = {
    "sepia": (_sepia, "make it a sepia-toned old photograph"),
    "pencil_sketch": (_pencil, "turn it into a pencil sketch"),
    "posterize": (lambda x: np.floor(x * 4 - 1e-6).clip(0, 3) / 3, "posterize it with four levels"),
    "cartoon": (_cartoon, "make it look like a cartoon"),
    "invert": (lambda x: 1 - x, "invert the colours"),
    "emboss": (_emboss, "emboss it like a metal relief"),
    "hue_shift": (lambda x: _hsv_shift(x, 1 / 3), "shift every hue by a third of the colour wheel"),
    "blur": (lambda x: _blur(x, 2.0), "blur it softly"),
    "edge_glow": (_edge_glow, "make the edges glow neon on a dark image"),
    "grayscale": (lambda x: _rgb(_gray(x)), "make it black and white"),
    "solarize": (lambda x: np.where(x > 0.5, 1 - x, x), "solarize it"),
    "warm": (lambda x: x * np.array([1.2, 1.0, 0.75], dtype=np.float32), "make the light warm"),
    "cool": (lambda x: x * np.array([0.75, 0.95, 1.2], dtype=np.float32), "make the light cold and blue"),
    "high_contrast": (lambda x: (x - 0.5) * 1.8 + 0.5, "raise the contrast strongly"),
    "channel_swap": (lambda x: x[..., ::-1], "swap the red and blue channels"),
    "vignette": (_vignette, "add a dark vignette"),
}


def builtin_concepts() -> list[str]:
    """Names of the built-in concepts, sorted."""
    return sorted(_CONCEPTS)


def concept_prompt(name: str) -> str:
    """The instruction prompt of a built-in concept."""
    return _CONCEPTS[_check_concept(name)][1]


def _check_concept(name: str) -> str:
    if name not in _CONCEPTS:
        raise ConfigError(f"unknown built-in concept {name!r}", where="concept",
                          fix=f"choose one of {builtin_concepts()}, or pass paired data with --data")
    return name


def apply_edit(name: str, image: np.ndarray) -> np.ndarray:
    """Apply the deterministic edit of concept ``name`` to ``image`` (float32 HWC in [0, 1])."""
    out = _CONCEPTS[_check_concept(name)][0](image.astype(np.float32))
    return np.clip(out, 0, 1).astype(np.float32)


def load_photo(name: str) -> np.ndarray:
    """Load a photo bundled with scikit-image as float32 HWC RGB in [0, 1] (read-only, cached)."""
    return _load_photo(name)


@functools.lru_cache(maxsize=32)
def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    fn = getattr(skimage.data, name, None)
    if fn is None:
        raise ConfigError(f"skimage.data has no photo {name!r}", where="photos")
    img = fn()
    if isinstance(img, tuple):  # stereo pairs
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    out = (img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)).clip(0, 1)
    out.setflags(write=False)
    return out


def random_crops(photos: Sequence[str], n: int, size: int, *, seed: int) -> np.ndarray:
    """Return ``n`` random crops with random horizontal flips, [n, size, size, 3] float32.

    Each crop takes a random square window of 1–2× ``size`` pixels from a random photo and
    resizes it to ``size`` (so scales vary); the same seed gives the same crops.
    """
    from skimage.transform import resize

    if n <= 0 or size <= 0:
        raise ConfigError(f"n and size must be positive (n={n}, size={size})", where="random_crops")
    rng = np.random.default_rng(seed)
    imgs = [load_photo(p) for p in photos]
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i in range(n):
        img = imgs[int(rng.integers(len(imgs)))]
        h, w = img.shape[:2]
        win = int(min(h, w, size * rng.uniform(1.0, 2.0)))
        y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
        crop = img[y:y + win, x:x + win]
        if win != size:
            crop = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] float in [0, 1] -> [N, 3, H, W] float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() * 2 - 1


def to_numpy(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] float32 in [0, 1]."""
    return ((images.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


@dataclass(frozen=True)
class ConceptPairs:
    """In-memory pairs of one concept: sources and targets [N, 3, H, W] in [-1, 1]."""

    concept: str
    prompt: str
    sources: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.sources.shape[0])

    def subset(self, indices: Sequence[int]) -> ConceptPairs:
        """The pairs at ``indices``."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return ConceptPairs(self.concept, self.prompt, self.sources[idx], self.targets[idx])


def builtin_pairs(concept: str, n: int, size: int, *, seed: int, held_out_photos: bool = False) -> ConceptPairs:
    """Make ``n`` pairs of a built-in concept from crops of the bundled photos.

    Args:
        concept: a name from ``builtin_concepts()``.
        n: number of pairs.
        size: crop size in pixels.
        seed: crop seed (the edit itself is deterministic).
        held_out_photos: take crops from ``HELD_OUT_PHOTOS`` (evaluation) instead of
            ``TRAIN_PHOTOS``.
    """
    _check_concept(concept)
    src = random_crops(HELD_OUT_PHOTOS if held_out_photos else TRAIN_PHOTOS, n, size, seed=seed)
    tgt = np.stack([apply_edit(concept, s) for s in src])
    return ConceptPairs(concept, concept_prompt(concept), to_tensor(src), to_tensor(tgt))


def concept_descriptors(concepts: Sequence[str], *, size: int = 48, n: int = 16, seed: int = 0,
                        text_encoder: TextEncoder | None = None) -> np.ndarray:
    """Embed concepts for clustering, [len(concepts), F].

    With a text encoder: the mean-pooled embedding of each concept's prompt. Without one
    (offline default): the edit's signature in the fixed feature space, i.e. the mean
    feature of the edited crops and the mean feature change the edit causes.
    """
    if text_encoder is not None:
        emb = text_encoder.encode([concept_prompt(c) for c in concepts])
        return emb.mean(dim=1).detach().float().numpy()
    from mobilekit.train.e2gan.metrics import image_features

    src = to_tensor(random_crops(TRAIN_PHOTOS, n, size, seed=seed))
    fs = image_features(src)
    rows = []
    for c in concepts:
        tgt = to_tensor(np.stack([apply_edit(c, s) for s in to_numpy(src)]))
        ft = image_features(tgt)
        rows.append(torch.cat([ft.mean(0), (ft - fs).mean(0)]).numpy())
    return np.stack(rows)


def choose_concepts(pool: Sequence[str], k: int, *, seed: int = 0,
                    text_encoder: TextEncoder | None = None) -> list[str]:
    """Pick ``k`` representative concepts of ``pool``: k-means on their descriptors, nearest to each centre."""
    from mobilekit.train.e2gan.subset import select_nearest_centres

    if not 0 < k <= len(pool):
        raise ConfigError(f"cannot choose {k} concepts from a pool of {len(pool)}", where="num_concepts",
                          fix=f"use 1..{len(pool)}")
    desc = concept_descriptors(pool, text_encoder=text_encoder, seed=seed)
    desc = (desc - desc.mean(0)) / (desc.std(0) + 1e-8)
    idx = select_nearest_centres(desc, k, seed=seed)
    return [pool[i] for i in sorted(idx)]


# ------------------------------------------------------------------ text conditioning


class TextEncoder(Protocol):
    """Turns prompts into text embeddings [B, T, D]."""

    hidden_size: int

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Return embeddings [len(prompts), T, D] (no gradient)."""
        ...


class CLIPTextEncoder:
    """A CLIP text model (transformers) as a frozen TextEncoder.

    Args:
        model: a ``CLIPTextModel`` instance, or a local folder holding a saved
            ``CLIPTextModel`` and ``CLIPTokenizer`` (``save_pretrained``). A folder is read
            with ``local_files_only=True``: nothing is downloaded.
        tokenizer: a tokenizer instance, a folder, or None to use ``model``'s folder.
            Without a tokenizer, call ``encode_ids`` with token ids.
        max_length: tokens per prompt (T), capped at the model's position embeddings.

    Attributes:
        name: the folder's name (or the model class) recorded with a base trained on it.
        hidden_size: D.
        fingerprint: sha256 of the weights, so a base can tell its own encoder from another.

    Raises:
        ConfigError: the folder is missing or holds no loadable model / tokenizer.
    """

    def __init__(self, model: Any, tokenizer: Any = None, *, max_length: int = 16) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        self.name = type(model).__name__
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            src = Path(str(model))
            model, self.name = _load_local(CLIPTextModel, src, "CLIP text model"), src.name
            if tokenizer is None:
                tokenizer = src
        if isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
            tokenizer = _load_local(CLIPTokenizer, Path(str(tokenizer)), "CLIP tokenizer")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = min(max_length, int(model.config.max_position_embeddings))
        self.hidden_size = int(model.config.hidden_size)
        from mobilekit.train.e2gan.models import sha256_of_state

        # folder names change when copied; the weights' hash tells one encoder from another
        self.fingerprint = sha256_of_state(model.state_dict())

    def identity(self) -> dict[str, Any]:
        """What a base records about the encoder it was trained on."""
        return {"name": self.name, "hidden_size": self.hidden_size, "sha256": self.fingerprint}

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids [B, T] -> [B, T, D]."""
        return self.model(input_ids=input_ids).last_hidden_state.float()

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Tokenize (padded to ``max_length``) and embed ``prompts`` -> [B, T, D]."""
        if self.tokenizer is None:
            raise ConfigError("this CLIPTextEncoder has no tokenizer", where="CLIPTextEncoder.encode",
                              fix="pass tokenizer=, or call encode_ids() with token ids")
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt").input_ids
        return self.encode_ids(ids)


def _load_local(cls: Any, folder: Path, what: str) -> Any:
    """``cls.from_pretrained(folder)`` without network; a ConfigError naming the folder if it fails."""
    fix = ("save one with CLIPTextModel.save_pretrained(DIR) and CLIPTokenizer.save_pretrained(DIR), "
           "or omit --text-encoder to learn one embedding per concept")
    if not folder.is_dir():
        raise ConfigError(f"{what} folder does not exist", where=str(folder), fix=fix)
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"cannot load a {what} from this folder: {exc}", where=str(folder), fix=fix) from exc


def encoder_identity(encoder: TextEncoder | None) -> dict[str, Any] | None:
    """The record of ``encoder`` kept with a base (None: learned concept embeddings)."""
    if encoder is None:
        return None
    ident = getattr(encoder, "identity", None)
    return ident() if callable(ident) else {"name": type(encoder).__name__, "hidden_size": encoder.hidden_size}


class ConceptEmbeddings(nn.Module):
    """One learned text embedding [T, D] per concept (the offline default).

    Args:
        concepts: concept names, in order.
        tokens: T.
        dim: D, the generator's ``text_dim``.
        seed: initialisation seed (N(0, 1) entries, like normalised text features).
    """

    def __init__(self, concepts: Sequence[str], tokens: int, dim: int, *, seed: int = 0) -> None:
        super().__init__()
        if len(set(concepts)) != len(concepts) or not concepts:
            raise ConfigError(f"concept names must be unique and non-empty: {list(concepts)}",
                              where="ConceptEmbeddings(concepts)")
        self.concepts = list(concepts)
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(len(concepts), tokens, dim, generator=gen))

    def index(self, concept: str) -> int:
        """Row of ``concept``; ConfigError listing the known names if absent."""
        try:
            return self.concepts.index(concept)
        except ValueError:
            raise ConfigError(f"no embedding for concept {concept!r}", where="ConceptEmbeddings",
                              fix=f"known concepts: {self.concepts}") from None

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, T, D] for concept indices [B]."""
        return self.table[indices]

    def get(self, concept: str) -> torch.Tensor:
        """The [T, D] embedding of ``concept`` (a view of the parameter)."""
        return self.table[self.index(concept)]
