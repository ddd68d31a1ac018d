"""Adapt an E²GAN base to a new concept: LoRA (on the crucial layers by default, ``lora_layers`` names
other placements; searched, uniform or random ranks), full fine-tuning, or training from scratch;
optionally on a subset of the pairs (k-means or random).

Outputs in ``out_dir``: ``adapter/`` (LoRA: adapter.safetensors + adapter.json) or
``generator/`` + ``concept_embedding.safetensors`` (full / scratch), ``run.json`` and
``grid.png``. The base passed in is never modified.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilekit._deps import toolchain_versions
from mobilekit._io import atomic_path, ensure_writable_dir, write_json_atomic
from mobilekit.errors import ConfigError
from mobilekit.train.e2gan import concepts as cc
from mobilekit.train.e2gan.lora import (Adapter, LoRAConfig, apply_adapter, attach_lora, fuse_adapter,
                                        load_adapter, make_adapter, save_adapter)
from mobilekit.train.e2gan.loop import Conditioned, EvalFn, ProgressFn, TrainData, fit
from mobilekit.train.e2gan.models import PatchDiscriminator, build_generator, sha256_of_state
from mobilekit.train.e2gan.train import AdaptConfig, BaseModel, is_main_process, load_base, save_grid_for

logger = logging.getLogger(__name__)


@dataclass
class AdaptResult:
    """What ``adapt`` produced.

    Attributes:
        method: ``lora``, ``full`` or ``scratch``.
        generator: the adapted generator (LoRA: unfused peft copy of the base).
        text_embeds: the concept's text embedding [T, D].
        adapter: the LoRA adapter (``lora`` only).
        ranks: per-layer LoRA ranks (``lora`` only).
        trainable_parameters: parameters optimised, embedding included (elements).
        stored_parameters: parameters that must be stored for this concept (elements).
        stored_bytes: bytes of the files stored for this concept.
        train_seconds: wall-clock seconds in optimizer steps.
        setup_seconds: wall-clock seconds of subset selection and rank search.
        history: evaluation records.
        subset: indices of the pairs used when a subset was selected.
        out_dir: the run directory.
    """

    method: str
    generator: nn.Module
    text_embeds: torch.Tensor
    adapter: Adapter | None
    ranks: dict[str, int] | None
    trainable_parameters: int
    stored_parameters: int
    stored_bytes: int
    train_seconds: float
    setup_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    subset: list[int] | None = None
    out_dir: Path | None = None


def concept_pairs_for(config: AdaptConfig, data: Path | cc.ConceptPairs | None, seed: int) -> cc.ConceptPairs:
    """The new concept's pairs: given, read from a pairs directory, or built in."""
    if isinstance(data, cc.ConceptPairs):
        return data
    if data is not None:
        from mobilekit.train.e2gan.pairs import PairDataset

        ds = PairDataset(Path(data), concept=config.concept, size=config.image_size)
        return cc.ConceptPairs(config.concept, config.prompt or ds.prompts[0], ds.sources, ds.targets)
    if config.concept not in cc.builtin_concepts():
        raise ConfigError(f"{config.concept!r} is not a built-in concept and no data was given",
                          where="adapt(data)", fix="pass --data DIR with pairs of this concept")
    return cc.builtin_pairs(config.concept, config.pairs, config.image_size, seed=seed)


def evaluate_adapted(model: nn.Module, config: AdaptConfig, data: Path | cc.ConceptPairs | None,
                     seed: int) -> dict[str, Any]:
    """PSNR of the adapted model against the targets, beside the identity map's (the source photo as is).

    A built-in concept is evaluated on crops of photos training never sees; a user's data has no
    held-out split here, so its pairs are used and the record says so.
    """
    from mobilekit.train.e2gan.metrics import psnr

    if data is None and config.concept in cc.builtin_concepts():
        pairs, split = cc.builtin_pairs(config.concept, 16, config.image_size, seed=seed + 10_007,
                                        held_out_photos=True), "held-out photos"
    else:
        pairs, split = concept_pairs_for(config, data, seed), "training pairs"
    with torch.no_grad():
        out = model(pairs.sources, torch.zeros(len(pairs), dtype=torch.long))
    got, identity = psnr(out, pairs.targets), psnr(pairs.sources, pairs.targets)
    return {"split": split, "pairs": len(pairs), "psnr_db": round(got, 3), "identity_psnr_db": round(identity, 3),
            "gain_over_identity_db": round(got - identity, 3)}


def check_text_encoder(base: BaseModel, text_encoder: cc.TextEncoder | None) -> None:
    """Refuse an encoder the base was not trained with: its embeddings would mean nothing to the generator."""
    where = f"{base.directory or 'base'} (--text-encoder)"
    trained = base.text_encoder or {}
    if text_encoder is None:
        if not base.learned:
            raise ConfigError(f"this base was trained on text-encoder embeddings ({trained.get('name', '?')}, "
                              f"hidden size {trained.get('hidden_size', '?')})", where=where,
                              fix="pass the same text encoder (--text-encoder DIR)")
        return
    given = cc.encoder_identity(text_encoder) or {}
    if base.learned:
        raise ConfigError(f"this base was trained on learned concept embeddings, not a text encoder "
                          f"(got {given.get('name')})", where=where,
                          fix="drop --text-encoder, or train a base with --text-encoder DIR")
    # bases saved before encoders were recorded have no identity to compare against
    for key in ("hidden_size", "sha256"):
        if key in trained and key in given and trained[key] != given[key]:
            raise ConfigError(f"text encoder {given.get('name')!r} differs from the base's "
                              f"{trained.get('name')!r} ({key}: {given[key]} vs {trained[key]})", where=where,
                              fix="pass the text encoder folder the base was trained with")


def _initial_embedding(base: BaseModel, prompt: str, text_encoder: cc.TextEncoder | None) -> torch.Tensor:
    check_text_encoder(base, text_encoder)
    if text_encoder is not None:
        return text_encoder.encode([prompt])[0].float()
    return base.embeddings.table.detach().mean(dim=0)


def _data_source(data: Path | cc.ConceptPairs | None) -> dict[str, Any]:
    """What run.json says the pairs came from (a distilled folder also names its editor)."""
    if isinstance(data, cc.ConceptPairs):
        return {"kind": "in-memory"}
    if data is None:
        return {"kind": "builtin"}
    from mobilekit.train.e2gan.pairs import read_summary

    src: dict[str, Any] = {"kind": "pairs", "path": str(data)}
    summary = read_summary(Path(data))
    if summary is not None:
        src["distilled_from"] = summary.get("model")
    return src


def _budget(config: AdaptConfig, generator: nn.Module) -> int:
    """The explicit budget, else max(budget_fraction × generator parameters, rank 1 on every target)."""
    if config.budget is not None:
        return config.budget
    from mobilekit.train.e2gan.lora import layer_lora_cost, lora_targets

    mods = dict(generator.named_modules())
    rank1 = sum(layer_lora_cost(mods[n]) for n in lora_targets(generator, config.lora_patterns))
    return max(rank1, int(config.budget_fraction * sum(p.numel() for p in generator.parameters())))


def _choose_ranks(config: AdaptConfig, base: BaseModel, pairs: cc.ConceptPairs, emb: torch.Tensor,
                  record: dict[str, Any]) -> dict[str, int]:
    from mobilekit.train.e2gan.rank_search import RankSearchConfig, random_ranks, search_ranks, uniform_ranks

    if isinstance(config.ranks, dict):
        return dict(config.ranks)
    budget = _budget(config, base.generator)
    record["budget"] = budget
    if config.ranks == "uniform":
        return uniform_ranks(base.generator, budget, config.lora_patterns)
    if config.ranks == "random":
        return random_ranks(base.generator, budget, seed=config.loop.seed, max_rank=config.max_rank,
                            patterns=config.lora_patterns)
    res = search_ranks(base.generator, pairs.sources, pairs.targets, emb,
                       RankSearchConfig(budget=budget, max_rank=config.max_rank), patterns=config.lora_patterns)
    record["rank_search"] = {"spent": res.spent, "energy": {k: v[:4] for k, v in res.energy.items()}}
    return res.ranks


def _file_bytes(*paths: Path) -> int:
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total


def adapt(base: BaseModel | Path, config: AdaptConfig, out_dir: Path, *,
          data: Path | cc.ConceptPairs | None = None, text_encoder: cc.TextEncoder | None = None,
          on_progress: ProgressFn | None = None, eval_fn: EvalFn | None = None) -> AdaptResult:
    """Adapt ``base`` to ``config.concept`` and save the result in ``out_dir`` (resumable).

    Args:
        base: a loaded base or its directory.
        config: method, ranks, budget, subset and optimisation settings.
        out_dir: run directory.
        data: the concept's pairs (directory or in memory); None: built-in pairs.
        text_encoder: the encoder the base was trained with, if any.
        on_progress: ``on_progress(stage, done, total)``.
        eval_fn: ``eval_fn(model, step, train_seconds)`` called during training (see
            ``loop.fit``); ``model(sources, zeros)`` runs the concept being learned.

    Returns:
        The adapted generator, its embedding, and sizes/timings.

    Example:
        >>> res = adapt(Path("runs/base"), AdaptConfig(concept="sepia", subset=16), Path("runs/sepia"))  # doctest: +SKIP
    """
    if not isinstance(base, BaseModel):
        base = load_base(Path(base))
    out = ensure_writable_dir(Path(out_dir), what="adapt run directory")
    seed = config.loop.seed
    # LoRA's initial weights (and the rank search's probes) draw on torch's global generator: seed it
    # so one seed gives one adapter whatever ran before in this process (paired-by-seed comparisons)
    torch.manual_seed(seed)
    base_sha = sha256_of_state(base.generator.state_dict())
    pairs = concept_pairs_for(config, data, seed)
    prompt = config.prompt or pairs.prompt
    record: dict[str, Any] = {"kind": "e2gan-adapt", "config": config.to_dict(), "seed": seed,
                              "base_sha256": base_sha, "num_pairs": len(pairs), "data": _data_source(data),
                              "text_encoder": cc.encoder_identity(text_encoder)}
    subset_idx = None
    t_setup = time.perf_counter()
    if config.subset is not None and config.subset < len(pairs):
        from mobilekit.train.e2gan.subset import random_subset, select_subset

        if on_progress:
            on_progress("select subset", 0, 1)
        subset_idx = (select_subset(pairs.sources, config.subset, seed=seed) if config.subset_method == "kmeans"
                      else random_subset(len(pairs), config.subset, seed=seed))
        pairs = pairs.subset(subset_idx)
        record["subset"] = subset_idx
    emb0 = _initial_embedding(base, prompt, text_encoder)
    embeddings = cc.ConceptEmbeddings([config.concept], emb0.shape[0], emb0.shape[1])
    embeddings.table.data.copy_(emb0.unsqueeze(0))
    embeddings.table.requires_grad_(config.train_embedding and base.learned and text_encoder is None)
    ranks = None
    if config.method == "lora":
        if on_progress:
            on_progress("rank search", 0, 1)
        ranks = _choose_ranks(config, base, pairs, emb0, record)
        lcfg = LoRAConfig(ranks=ranks, scale=config.scale)
        generator: nn.Module = attach_lora(base.generator, lcfg)
    elif config.method == "full":
        generator = copy.deepcopy(base.generator).requires_grad_(True)
    else:
        generator = build_generator(base.generator.config, seed=seed).requires_grad_(True)
    setup_seconds = time.perf_counter() - t_setup
    if config.method == "scratch" or base.discriminator is None:
        torch.manual_seed(seed + 1)
        disc = PatchDiscriminator(base.discriminator.config if base.discriminator else None)
    else:
        disc = copy.deepcopy(base.discriminator)
    model = Conditioned(generator, embeddings)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tdata = TrainData(pairs.sources, pairs.targets, torch.zeros(len(pairs), dtype=torch.long))
    res = fit(model, tdata, config.loop, run_dir=out, discriminator=disc if config.loop.adversarial else None,
              on_progress=on_progress, eval_fn=eval_fn)
    text_embeds = embeddings.table.detach()[0].clone()
    adapter = None
    if not is_main_process():
        return AdaptResult(config.method, generator, text_embeds, None, ranks, trainable, 0, 0,
                           res["train_seconds"], setup_seconds, res["history"], subset_idx, out)
    if config.method == "lora":
        adapter = make_adapter(generator, lcfg, concept=config.concept, prompt=prompt, base_sha256=base_sha,
                               concept_embedding=text_embeds if base.learned else None,
                               extra={"seed": seed, "method": "lora"})
        save_adapter(adapter, out / "adapter")
        stored = adapter.num_parameters()
        stored_bytes = _file_bytes(out / "adapter" / "adapter.safetensors")
    else:
        from safetensors.torch import save_file

        generator.save_pretrained(out / "generator")  # type: ignore[operator]
        with atomic_path(out / "concept_embedding.safetensors") as tmp:
            save_file({"concept_embedding": text_embeds.contiguous()}, str(tmp))
        stored = sum(p.numel() for p in generator.parameters()) + text_embeds.numel()
        stored_bytes = _file_bytes(out / "generator" / "model.safetensors", out / "concept_embedding.safetensors")
    if sha256_of_state(base.generator.state_dict()) != base_sha:
        raise ConfigError("the base generator changed during adaptation", where="adapt",
                          fix="this is a bug; please report it")
    save_grid_for(out / "grid.png", model, tdata)
    record["eval"] = evaluate_adapted(model, config, data, seed)
    record.update({"method": config.method, "ranks": ranks, "trainable_parameters": trainable,
                   "stored_parameters": stored, "stored_bytes": stored_bytes, "setup_seconds": setup_seconds, "toolchain": toolchain_versions(),
                   **res})
    write_json_atomic(out / "run.json", record)
    return AdaptResult(config.method, generator, text_embeds, adapter, ranks, trainable, stored, stored_bytes,
                       res["train_seconds"], setup_seconds, res["history"], subset_idx, out)


def load_adapted(base_dir: Path, adapter_dir: Path, *, fuse: bool = True,
                 text_encoder: cc.TextEncoder | None = None) -> tuple[nn.Module, torch.Tensor]:
    """Load a base and an adapter; return (generator, text_embeds [T, D]).

    With ``fuse`` the generator is a plain E2GANGenerator (LoRA merged into its weights,
    ready for export); otherwise it keeps peft LoRA layers. A base trained on a text
    encoder needs that ``text_encoder`` to embed the adapter's prompt.
    """
    base = load_base(Path(base_dir))
    adapter = load_adapter(Path(adapter_dir))
    gen = fuse_adapter(base.generator, adapter) if fuse else apply_adapter(base.generator, adapter)
    if text_encoder is not None:
        check_text_encoder(base, text_encoder)
        emb = text_encoder.encode([adapter.prompt])[0].float()
    elif adapter.concept_embedding is not None:
        emb = adapter.concept_embedding
    elif adapter.concept in base.embeddings.concepts:
        emb = base.text_embeds(adapter.concept)
    else:
        raise ConfigError(f"adapter for {adapter.concept!r} stores no embedding and the base has none",
                          where=str(adapter_dir), fix="encode the prompt with the base's text encoder")
    return gen, emb
