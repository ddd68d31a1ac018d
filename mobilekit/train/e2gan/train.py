"""E²GAN base training on a concept mix, and adaptation of the base to a new concept.

``train_base`` trains one generator on several concepts (given, or chosen by k-means on
concept descriptors) and writes::

    OUT/generator/       model.safetensors + config.json
    OUT/discriminator/   the PatchGAN, reused to start adaptation
    OUT/concepts.safetensors + OUT/concepts.json   concept embedding table, names, prompts
    OUT/run.json         configs, seed, concepts, history, toolchain versions
    OUT/grid.png         source | target | output

``adapt`` fits a new concept with one of four methods: ``lora`` (crucial-layer LoRA with
searched or uniform ranks; writes ``OUT/adapter/``, the base is never modified),
``full`` (fine-tune every weight) or ``scratch`` (a new generator), both writing
``OUT/generator/``. An optional k-means subset keeps the most representative pairs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobilekit._deps import toolchain_versions
from mobilekit._io import atomic_path, ensure_writable_dir, write_json_atomic
from mobilekit.errors import ConfigError
from mobilekit.train.e2gan import concepts as cc
from mobilekit.train.e2gan.loop import Conditioned, EvalFn, LoopConfig, ProgressFn, TrainData, fit
from mobilekit.train.e2gan.models import (LORA_PLACEMENTS, E2GANConfig, E2GANGenerator, PatchDiscriminator,
                                          PatchDiscriminatorConfig, build_generator, sha256_of_state)

logger = logging.getLogger(__name__)

_METHODS = ("lora", "full", "scratch")
RANK_ALLOCATIONS = ("search", "uniform", "random")
SUBSET_METHODS = ("kmeans", "random")


@dataclass(frozen=True, kw_only=True)
class BaseTrainConfig:
    """Base training on a concept mix.

    Attributes:
        generator: generator shape.
        discriminator: discriminator shape.
        concepts: concepts to train on; None chooses ``num_concepts`` of the built-in pool
            (minus ``exclude``) by k-means on their descriptors.
        num_concepts: how many concepts to choose when ``concepts`` is None.
        exclude: concepts never chosen (held out for adaptation).
        pairs_per_concept: built-in pairs generated per concept.
        image_size: crop size of built-in pairs in pixels (divisible by 8).
        loop: optimisation settings.
        version: config schema version.
    """

    generator: E2GANConfig = field(default_factory=E2GANConfig)
    discriminator: PatchDiscriminatorConfig = field(default_factory=PatchDiscriminatorConfig)
    concepts: tuple[str, ...] | None = None
    num_concepts: int = 6
    exclude: tuple[str, ...] = cc.DEFAULT_HELD_OUT
    pairs_per_concept: int = 64
    image_size: int = 64
    loop: LoopConfig = field(default_factory=LoopConfig)
    version: int = 1

    def __post_init__(self) -> None:
        if self.concepts is not None:
            object.__setattr__(self, "concepts", tuple(self.concepts))
            if not self.concepts:
                raise ConfigError("concepts is empty", where="BaseTrainConfig.concepts")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.num_concepts < 1:
            raise ConfigError("num_concepts must be ≥ 1", where="BaseTrainConfig.num_concepts")
        if self.pairs_per_concept < 1:
            raise ConfigError("pairs_per_concept must be ≥ 1", where="BaseTrainConfig.pairs_per_concept")
        if self.image_size < 8 or self.image_size % 8:
            raise ConfigError(f"image_size must be a positive multiple of 8, got {self.image_size}",
                              where="BaseTrainConfig.image_size")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        d = asdict(self)
        d["generator"] = self.generator.to_dict()
        return d


@dataclass(frozen=True, kw_only=True)
class AdaptConfig:
    """Adaptation of a base to a new concept.

    Attributes:
        concept: the new concept's name.
        prompt: its instruction prompt (default: the built-in prompt, or the data's).
        method: ``lora`` (crucial layers), ``full`` (all weights) or ``scratch``.
        ranks: for ``lora``: ``search`` (gradient-spectrum search), ``uniform``, ``random``
            (random ranks at the budget, a control), or a dict module path -> rank.
        budget: LoRA parameter budget (elements); None: ``budget_fraction`` of the
            generator's parameters, raised to the cost of rank 1 on every target layer.
        budget_fraction: default budget as a fraction of the generator's parameters.
        max_rank: per-layer rank cap of the search.
        scale: LoRA alpha / r.
        lora_layers: named LoRA placement (``models.LORA_PLACEMENTS``): ``crucial`` (the
            generator's crucial layers, default), ``resnet`` (the ResNet blocks' convolutions)
            or ``both``; ignored when ``target_patterns`` is given (which then must leave it
            at ``crucial``).
        target_patterns: LoRA target regexes; None: the placement ``lora_layers`` names.
        subset: keep this many pairs (None: all pairs).
        subset_method: how the subset is chosen: ``kmeans`` (nearest the k-means centres of
            the source images' features) or ``random`` (a control).
        pairs: built-in pairs to generate when no data is given.
        image_size: crop size of built-in pairs.
        train_embedding: also learn the concept embedding (learned-embedding bases only).
        loop: optimisation settings.
        version: config schema version.
    """

    concept: str
    prompt: str | None = None
    method: str = "lora"
    ranks: str | dict[str, int] = "search"
    budget: int | None = None
    budget_fraction: float = 0.01
    max_rank: int = 16
    scale: float = 1.0
    lora_layers: str = "crucial"
    target_patterns: tuple[str, ...] | None = None
    subset: int | None = None
    subset_method: str = "kmeans"
    pairs: int = 64
    image_size: int = 64
    train_embedding: bool = True
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(lr=1e-3))
    version: int = 1

    def __post_init__(self) -> None:
        if not self.concept or not self.concept.strip():
            raise ConfigError("concept is empty", where="AdaptConfig.concept")
        if self.method not in _METHODS:
            raise ConfigError(f"unknown method {self.method!r}", where="AdaptConfig.method",
                              fix=f"choose one of {list(_METHODS)}")
        if isinstance(self.ranks, str) and self.ranks not in RANK_ALLOCATIONS:
            raise ConfigError(f"ranks must be one of {list(RANK_ALLOCATIONS)} or a dict, got {self.ranks!r}",
                              where="AdaptConfig.ranks")
        if self.subset_method not in SUBSET_METHODS:
            raise ConfigError(f"unknown subset_method {self.subset_method!r}", where="AdaptConfig.subset_method",
                              fix=f"choose one of {list(SUBSET_METHODS)}")
        if self.budget is not None and self.budget < 1:
            raise ConfigError("budget must be ≥ 1", where="AdaptConfig.budget")
        if not 0 < self.budget_fraction <= 1:
            raise ConfigError("budget_fraction must be in (0, 1]", where="AdaptConfig.budget_fraction")
        if self.subset is not None and self.subset < 1:
            raise ConfigError("subset must be ≥ 1", where="AdaptConfig.subset")
        if self.lora_layers not in LORA_PLACEMENTS:
            raise ConfigError(f"unknown LoRA placement {self.lora_layers!r}", where="AdaptConfig.lora_layers",
                              fix=f"choose one of {list(LORA_PLACEMENTS)}, or pass target_patterns")
        if self.target_patterns is not None:
            object.__setattr__(self, "target_patterns", tuple(self.target_patterns))
            if self.lora_layers != "crucial":  # two placements given: refuse rather than pick one silently
                raise ConfigError(f"both target_patterns and lora_layers={self.lora_layers!r} given",
                                  where="AdaptConfig", fix="pass one of them")

    @property
    def lora_patterns(self) -> tuple[str, ...] | None:
        """The LoRA target regexes: ``target_patterns``, else the named placement's.

        ``crucial`` gives None, so the generator's own ``_crucial_layers`` decide (a subclass may
        declare others).
        """
        if self.target_patterns is not None or self.lora_layers == "crucial":
            return self.target_patterns
        return LORA_PLACEMENTS[self.lora_layers]

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        return asdict(self)


@dataclass
class BaseModel:
    """A trained base loaded in memory."""

    generator: E2GANGenerator
    embeddings: cc.ConceptEmbeddings
    prompts: dict[str, str]
    discriminator: PatchDiscriminator | None
    learned: bool
    directory: Path | None = None
    text_encoder: dict[str, Any] | None = None  # cc.encoder_identity of the encoder it was trained on

    def text_embeds(self, concept: str) -> torch.Tensor:
        """The [T, D] embedding of a base concept."""
        return self.embeddings.get(concept).detach()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun job (only rank 0 writes outputs)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _builtin_data(names: Sequence[str], n: int, size: int, seed: int) -> tuple[TrainData, dict[str, str]]:
    srcs, tgts, idx, prompts = [], [], [], {}
    for i, c in enumerate(names):
        p = cc.builtin_pairs(c, n, size, seed=seed + 7919 * i)
        srcs.append(p.sources)
        tgts.append(p.targets)
        idx.append(torch.full((n,), i, dtype=torch.long))
        prompts[c] = p.prompt
    return TrainData(torch.cat(srcs), torch.cat(tgts), torch.cat(idx)), prompts


def _embedding_table(names: Sequence[str], prompts: dict[str, str], gcfg: E2GANConfig,
                     text_encoder: cc.TextEncoder | None, seed: int) -> cc.ConceptEmbeddings:
    emb = cc.ConceptEmbeddings(names, gcfg.text_len, gcfg.text_dim, seed=seed)
    if text_encoder is not None:
        if text_encoder.hidden_size != gcfg.text_dim:
            raise ConfigError(f"text encoder width {text_encoder.hidden_size} != generator text_dim {gcfg.text_dim}",
                              where="E2GANConfig.text_dim", fix=f"set text_dim={text_encoder.hidden_size}")
        table = text_encoder.encode([prompts[c] for c in names]).float()
        emb = cc.ConceptEmbeddings(names, table.shape[1], table.shape[2], seed=seed)
        emb.table.data.copy_(table)
        emb.table.requires_grad_(False)
    return emb


def save_grid_for(path: Path, model: Conditioned, data: TrainData, rows: int = 4) -> Path:
    """Write a source | target | output PNG grid of the first ``rows`` pairs of ``data``."""
    from mobilekit.train.e2gan.plots import save_grid

    k = min(rows, data.sources.shape[0])
    with torch.no_grad():
        out = model(data.sources[:k], data.concept_idx[:k])
    return save_grid(path, data.sources[:k], data.targets[:k], out)


def _save_embeddings(out: Path, emb: cc.ConceptEmbeddings, prompts: dict[str, str],
                     encoder: dict[str, Any] | None) -> None:
    from safetensors.torch import save_file

    with atomic_path(out / "concepts.safetensors") as tmp:
        save_file({"table": emb.table.detach().contiguous()}, str(tmp))
    # the encoder's identity lets `adapt` refuse prompts embedded by a different encoder
    write_json_atomic(out / "concepts.json", {"concepts": emb.concepts, "prompts": prompts,
                                              "learned": encoder is None, "text_encoder": encoder})


def train_base(config: BaseTrainConfig, out_dir: Path, *, data: Path | None = None,
               text_encoder: cc.TextEncoder | None = None, on_progress: ProgressFn | None = None,
               eval_fn: EvalFn | None = None) -> BaseModel:
    """Train a base generator on a concept mix and save it to ``out_dir`` (resumable).

    Args:
        config: what to train.
        out_dir: run directory (created; re-running resumes from its checkpoints).
        data: a pairs directory (all its concepts are used) instead of the built-in set.
        text_encoder: condition on encoded prompts instead of learned concept embeddings; its
            identity (name, hidden size, weight sha256) goes into concepts.json and run.json so
            ``adapt`` can refuse another encoder.
        on_progress: ``on_progress(stage, done, total)``.
        eval_fn: see ``loop.fit``.

    Returns:
        The trained base.

    Example:
        >>> base = train_base(BaseTrainConfig(generator=E2GANConfig.tiny()), Path("runs/base"))  # doctest: +SKIP
    """
    out = ensure_writable_dir(Path(out_dir), what="base run directory")
    seed = config.loop.seed
    if data is not None:
        from mobilekit.train.e2gan.pairs import PairDataset

        ds = PairDataset(data, size=config.image_size)
        names = sorted(set(ds.concepts))
        prompts = {c: ds.prompts[ds.concepts.index(c)] for c in names}
        cidx = torch.tensor([names.index(c) for c in ds.concepts])
        tdata = TrainData(ds.sources, ds.targets, cidx)
    else:
        if config.concepts is not None:
            names = list(config.concepts)
        else:
            pool = [c for c in cc.builtin_concepts() if c not in config.exclude]
            if on_progress:
                on_progress("choose concepts", 0, 1)
            names = cc.choose_concepts(pool, min(config.num_concepts, len(pool)), seed=seed, text_encoder=text_encoder)
        if on_progress:
            on_progress("make pairs", 0, 1)
        tdata, prompts = _builtin_data(names, config.pairs_per_concept, config.image_size, seed)
    logger.info("base concepts: %s", names)
    gen = build_generator(config.generator, seed=seed)
    emb = _embedding_table(names, prompts, config.generator, text_encoder, seed)
    torch.manual_seed(seed + 1)
    disc = PatchDiscriminator(config.discriminator)
    model = Conditioned(gen, emb)
    res = fit(model, tdata, config.loop, run_dir=out, discriminator=disc if config.loop.adversarial else None,
              on_progress=on_progress, eval_fn=eval_fn)
    encoder = cc.encoder_identity(text_encoder)
    if not is_main_process():
        return BaseModel(gen, emb, prompts, disc, text_encoder is None, out, encoder)
    gen.save_pretrained(out / "generator")
    from mobilekit.train.e2gan.models import save_model

    save_model(disc, config.discriminator.to_dict(), out / "discriminator", kind="PatchDiscriminator")
    _save_embeddings(out, emb, prompts, encoder)
    save_grid_for(out / "grid.png", model, tdata)
    write_json_atomic(out / "run.json", {"kind": "e2gan-base", "config": config.to_dict(), "concepts": names,
                                         "seed": seed, "text_encoder": encoder,
                                         "toolchain": toolchain_versions(), **res,
                                         "generator_sha256": sha256_of_state(gen.state_dict()),
                                         "generator_parameters": gen.num_parameters()})
    return BaseModel(gen, emb, prompts, disc, text_encoder is None, out, encoder)


def load_base(directory: Path) -> BaseModel:
    """Load a base written by ``train_base``."""
    from safetensors.torch import load_file

    from mobilekit.train.e2gan.models import _load_state, load_model_files

    d = Path(directory)
    if not (d / "concepts.json").is_file():
        raise ConfigError("not a base run directory: concepts.json is missing", where=str(d),
                          fix="pass the output directory of `mobilekit gan train-base`")
    gen = E2GANGenerator.from_pretrained(d / "generator")
    meta = json.loads((d / "concepts.json").read_text())
    table = load_file(str(d / "concepts.safetensors"))["table"]
    emb = cc.ConceptEmbeddings(meta["concepts"], table.shape[1], table.shape[2])
    emb.table.data.copy_(table)
    disc = None
    if (d / "discriminator" / "config.json").is_file():
        dcfg, state = load_model_files(d / "discriminator", kind="PatchDiscriminator")
        disc = PatchDiscriminator(PatchDiscriminatorConfig.from_dict(dcfg))
        _load_state(disc, state, d / "discriminator")
    return BaseModel(gen, emb, dict(meta["prompts"]), disc, bool(meta["learned"]), d, meta.get("text_encoder"))
