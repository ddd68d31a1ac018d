"""``mobilekit gan``: E²GAN base training, concept adaptation and paired-data distillation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

gan_app = typer.Typer(name="gan", help="E²GAN: train a base image-to-image GAN, adapt it to new concepts "
                      "with crucial-layer LoRA, distil paired data.", no_args_is_help=True)

_SIZES = ("tiny", "small", "default")


def _gen_config(size: str) -> Any:
    from mobilekit.errors import ConfigError
    from mobilekit.train.e2gan.models import E2GANConfig

    if size not in _SIZES:
        raise ConfigError(f"unknown generator size {size!r}", where="--size", fix=f"choose one of {list(_SIZES)}")
    return {"tiny": E2GANConfig.tiny, "small": E2GANConfig.small, "default": E2GANConfig}[size]()


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _text_encoder(path: Path | None) -> Any:
    """The CLIP text encoder saved in folder ``path`` (None: learned per-concept embeddings)."""
    if path is None:
        return None
    from mobilekit.train.e2gan.concepts import CLIPTextEncoder

    return CLIPTextEncoder(path)


def _fit_text_dim(gen_config: Any, encoder: Any) -> Any:
    """The generator config with cross-attention as wide as the encoder's embeddings (no CLI flag sets it)."""
    if encoder is None or encoder.hidden_size == gen_config.text_dim:
        return gen_config
    import dataclasses

    return dataclasses.replace(gen_config, text_dim=encoder.hidden_size)


def _report(fmt: str, title: str, record: dict[str, Any]) -> None:
    from mobilekit.cli._output import print_json, print_table

    if fmt == "json":
        print_json(record)
    else:
        print_table(title, ["key", "value"], [(k, v) for k, v in record.items()])


@gan_app.command("concepts")
def concepts_cmd() -> None:
    """List the built-in offline concepts and their prompts."""
    from mobilekit.cli._output import print_table
    from mobilekit.train.e2gan.concepts import DEFAULT_HELD_OUT, builtin_concepts, concept_prompt

    print_table("built-in concepts", ["concept", "prompt", "held out by default"],
                [(c, concept_prompt(c), "yes" if c in DEFAULT_HELD_OUT else "") for c in builtin_concepts()])


@gan_app.command("train-base")
def train_base_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (re-run to resume)")],
    data: Annotated[Path | None, typer.Option("--data", help="pairs directory (default: built-in concept set)")] = None,
    concepts: Annotated[str | None, typer.Option("--concepts", help="comma-separated built-in concepts "
                                                  "(default: chosen by k-means)")] = None,
    num_concepts: Annotated[int, typer.Option("--num-concepts", help="concepts to choose by clustering")] = 6,
    size: Annotated[str, typer.Option("--size", help="generator size: tiny, small or default")] = "default",
    image_size: Annotated[int, typer.Option("--image-size", help="training crop size in pixels")] = 64,
    pairs_per_concept: Annotated[int, typer.Option("--pairs-per-concept", help="built-in pairs per concept")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="optimizer steps")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    lr: Annotated[float, typer.Option("--lr")] = 2e-4,
    adversarial: Annotated[bool, typer.Option("--adversarial/--no-adversarial", help="PatchGAN loss")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    text_encoder: Annotated[Path | None, typer.Option("--text-encoder", help="folder with a saved CLIPTextModel "
                                                       "and CLIPTokenizer; the generator's text width follows it "
                                                       "(default: one learned embedding per concept)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    fmt: Annotated[str, typer.Option("--format", help="human or json")] = "human",
) -> None:
    """Train a base generator on a concept mix."""
    from mobilekit.cli._output import err_console, progress_callback
    from mobilekit.train.e2gan.loop import LoopConfig
    from mobilekit.train.e2gan.train import BaseTrainConfig, train_base

    _threads(threads)
    encoder = _text_encoder(text_encoder)
    cfg = BaseTrainConfig(generator=_fit_text_dim(_gen_config(size), encoder),
                          concepts=tuple(c.strip() for c in concepts.split(",") if c.strip()) if concepts else None,
                          num_concepts=num_concepts, pairs_per_concept=pairs_per_concept, image_size=image_size,
                          loop=LoopConfig(steps=steps, batch_size=batch_size, lr=lr, adversarial=adversarial,
                                          seed=seed))
    with progress_callback("gan train-base") as on_progress:
        base = train_base(cfg, out, data=data, text_encoder=encoder, on_progress=on_progress)
    _report(fmt, "base generator", {"out": str(out), "concepts": ", ".join(base.embeddings.concepts),
                                    "generator_parameters": base.generator.num_parameters(),
                                    "text_encoder": text_encoder.name if text_encoder else "learned embeddings",
                                    "grid": str(out / "grid.png")})
    err_console().print(f"next: mobilekit gan adapt --base {out} --concept NAME --out DIR")


@gan_app.command("adapt")
def adapt_cmd(
    concept: Annotated[str, typer.Option("--concept", help="the new concept's name")],
    base: Annotated[Path, typer.Option("--base", help="base run directory from train-base")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (re-run to resume)")],
    data: Annotated[Path | None, typer.Option("--data", help="pairs directory (default: built-in concept)")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="instruction prompt (default: from data)")] = None,
    method: Annotated[str, typer.Option("--method", help="lora, full or scratch")] = "lora",
    ranks: Annotated[str, typer.Option("--ranks", help="search, uniform or random")] = "search",
    lora_layers: Annotated[str, typer.Option("--lora-layers", help="where LoRA goes: crucial (stem, sampling, "
                                             "transformer, head), resnet (ResNet-block convs) or both")] = "crucial",
    budget: Annotated[int | None, typer.Option("--budget", help="LoRA parameters (default: 1% of the generator)")] = None,
    subset: Annotated[int | None, typer.Option("--subset", help="train on K pairs chosen by k-means")] = None,
    subset_method: Annotated[str, typer.Option("--subset-method", help="kmeans or random")] = "kmeans",
    image_size: Annotated[int, typer.Option("--image-size", help="training crop size in pixels")] = 64,
    pairs: Annotated[int, typer.Option("--pairs", help="built-in pairs when no --data")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="optimizer steps")] = 300,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    adversarial: Annotated[bool, typer.Option("--adversarial/--no-adversarial", help="PatchGAN loss")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    text_encoder: Annotated[Path | None, typer.Option("--text-encoder", help="the CLIP text encoder folder the "
                                                       "base was trained with (default: learned embeddings)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    fmt: Annotated[str, typer.Option("--format", help="human or json")] = "human",
) -> None:
    """Adapt a base generator to a new concept (LoRA on crucial layers by default)."""
    from mobilekit.cli._output import err_console, progress_callback
    from mobilekit.train.e2gan.adapt import adapt
    from mobilekit.train.e2gan.loop import LoopConfig
    from mobilekit.train.e2gan.train import AdaptConfig

    _threads(threads)
    cfg = AdaptConfig(concept=concept, prompt=prompt, method=method, ranks=ranks, lora_layers=lora_layers,
                      budget=budget, subset=subset,
                      subset_method=subset_method, pairs=pairs, image_size=image_size,
                      loop=LoopConfig(steps=steps, batch_size=batch_size, lr=lr, adversarial=adversarial, seed=seed))
    with progress_callback(f"gan adapt {concept}") as on_progress:
        res = adapt(base, cfg, out, data=data, text_encoder=_text_encoder(text_encoder), on_progress=on_progress)
    _report(fmt, f"{concept} ({method})", {
        "out": str(out), "method": method, "ranks": res.ranks, "trainable_parameters": res.trainable_parameters,
        "stored_parameters": res.stored_parameters, "stored_bytes": res.stored_bytes,
        "train_seconds": round(res.train_seconds, 2), "grid": str(out / "grid.png")})
    if res.adapter is not None:
        err_console().print(f"adapter: {out / 'adapter'} (fuse with mobilekit.train.load_adapted)")


@gan_app.command("distill-data")
def distill_data_cmd(
    model: Annotated[str, typer.Option("--model", help="InstructPix2Pix diffusers folder or hub id")],
    out: Annotated[Path, typer.Option("--out", "-o", help="pairs directory (re-run to resume)")],
    concept: Annotated[str, typer.Option("--concept", help="concept name stored with the pairs")],
    prompt: Annotated[str, typer.Option("--prompt", help="editing instruction")],
    sources: Annotated[str, typer.Option("--sources", help="folder of images, or builtin:N")] = "builtin:64",
    size: Annotated[int, typer.Option("--size", help="pair size in pixels")] = 256,
    steps: Annotated[int, typer.Option("--steps", help="denoising steps")] = 20,
    guidance: Annotated[float, typer.Option("--guidance", help="text guidance scale")] = 7.5,
    image_guidance: Annotated[float, typer.Option("--image-guidance", help="image guidance scale")] = 1.5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    fmt: Annotated[str, typer.Option("--format", help="human or json")] = "human",
) -> None:
    """Make (source, edited) pairs with an InstructPix2Pix pipeline (seeded, resumable)."""
    from mobilekit.cli._output import progress_callback
    from mobilekit.train.e2gan.distill_data import DistillDataConfig, distill_pairs, load_instruct_pix2pix

    _threads(threads)
    cfg = DistillDataConfig(concept=concept, prompt=prompt, size=size, num_inference_steps=steps,
                            guidance_scale=guidance, image_guidance_scale=image_guidance, seed=seed)
    pipe = load_instruct_pix2pix(model)
    src: Any = sources if sources.startswith("builtin:") else Path(sources)
    with progress_callback(f"gan distill-data {concept}") as on_progress:
        rep = distill_pairs(pipe, src, out, cfg, on_progress=on_progress)
    _report(fmt, "distilled pairs", rep.to_dict())  # throughput included; also in OUT/distill.json


def register(app: typer.Typer) -> None:
    """Add the ``gan`` command group to the CLI."""
    app.add_typer(gan_app, name="gan")
