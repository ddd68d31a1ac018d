"""Crucial-layer LoRA adapters for the E²GAN generator (through peft), saved as small files.

An ``Adapter`` is the per-concept deliverable: the LoRA A/B weights of the chosen Conv2d
and Linear layers with their per-layer ranks, plus (optionally) the concept's learned text
embedding. It is stored as ``adapter.safetensors`` + ``adapter.json`` (ranks, alphas,
target modules, concept, prompt, base model sha256) and never touches the base:

- ``apply_adapter(base, adapter)`` returns a copy with peft LoRA layers (unfused), and
- ``fuse_adapter(base, adapter)`` returns a copy whose Conv2d/Linear weights include the
  LoRA delta, with no peft wrapper left (what exporters need).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilekit._io import atomic_path, write_json_atomic
from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"
_SUPPORTED = (nn.Conv2d, nn.Linear)
_PEFT_NAME = "default"


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Per-layer LoRA ranks.

    Attributes:
        ranks: module path -> rank (≥ 1); layers absent here get no LoRA.
        scale: LoRA scaling alpha / r, the same for every layer (alpha = scale × rank).
        version: config schema version.
    """

    ranks: dict[str, int]
    scale: float = 1.0
    version: int = 1

    def __post_init__(self) -> None:
        if not self.ranks:
            raise ConfigError("ranks is empty: LoRA needs at least one layer", where="LoRAConfig.ranks",
                              fix="raise the parameter budget or pass target layers")
        for name, r in self.ranks.items():
            if not isinstance(r, int) or isinstance(r, bool) or r < 1:
                raise ConfigError(f"rank of {name!r} must be an integer ≥ 1, got {r!r}",
                                  where=f"LoRAConfig.ranks[{name!r}]", fix="drop layers that get rank 0")
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}", where="LoRAConfig.scale")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoRAConfig:
        """Build a config from ``to_dict()`` output."""
        return cls(ranks={str(k): int(v) for k, v in data["ranks"].items()}, scale=float(data.get("scale", 1.0)),
                   version=int(data.get("version", 1)))


@dataclass(frozen=True)
class Adapter:
    """A saved LoRA adapter for one concept.

    Attributes:
        config: per-layer ranks and scale.
        weights: ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` tensors.
        concept: the concept's name.
        prompt: its instruction prompt.
        base_sha256: sha256 of the base generator's state dict it was trained on.
        concept_embedding: the concept's learned text embedding [T, D], if any.
        extra: free-form metadata (training record).
    """

    config: LoRAConfig
    weights: dict[str, torch.Tensor]
    concept: str
    prompt: str
    base_sha256: str
    concept_embedding: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def num_parameters(self) -> int:
        """Stored parameters (LoRA weights plus the concept embedding), in elements."""
        n = sum(t.numel() for t in self.weights.values())
        return n + (self.concept_embedding.numel() if self.concept_embedding is not None else 0)

    def to_lora(self) -> Any:
        """This adapter as the SDK's generic peft ``LoRA`` (what ``mobilekit.adapters`` packages)."""
        from mobilekit.lora import LoRA

        return LoRA(_peft_config(self.config), dict(self.weights), source=f"E²GAN adapter {self.concept!r}",
                    base_sha256=self.base_sha256 or None)


def lora_targets(model: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """Paths of the Conv2d/Linear modules of ``model`` matching ``patterns`` (regexes, ``re.search``).

    Args:
        model: the generator.
        patterns: module-path regexes; default: the model's ``_crucial_layers``.

    Raises:
        ConfigError: a pattern matches no Conv2d/Linear module (the message lists the
            supported types and the modules it did match).
    """
    pats = list(patterns if patterns is not None else getattr(model, "_crucial_layers", ()))
    if not pats:
        raise ConfigError("no LoRA target patterns given and the model declares no _crucial_layers",
                          where=type(model).__name__, fix="pass target patterns")
    out: list[str] = []
    for pat in pats:
        rx = re.compile(pat)
        hits = [(n, m) for n, m in model.named_modules() if n and rx.search(n)]
        leaf = [n for n, m in hits if isinstance(m, _SUPPORTED)]
        if not leaf:
            other = sorted({f"{n} ({type(m).__name__})" for n, m in hits if not list(m.children())})[:5]
            raise ConfigError(f"LoRA target pattern {pat!r} matches no Conv2d or Linear module",
                              where=f"{type(model).__name__}: matched {other or 'nothing'}",
                              fix="LoRA supports Conv2d and Linear; fix the pattern")
        out += [n for n in leaf if n not in out]
    return out


def layer_lora_cost(module: nn.Module) -> int:
    """Parameters one unit of LoRA rank adds to ``module`` (A row + B column)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ConfigError("LoRA on grouped convolutions is not supported", where=str(module))
        k = module.kernel_size[0] * module.kernel_size[1]
        return module.in_channels * k + module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features + module.out_features
    raise ConfigError(f"LoRA supports Conv2d and Linear, not {type(module).__name__}", where=str(module))


def _peft_config(config: LoRAConfig) -> Any:
    from peft import LoraConfig

    names = sorted(config.ranks)
    return LoraConfig(r=config.ranks[names[0]], lora_alpha=config.scale * config.ranks[names[0]],
                      target_modules=names, lora_dropout=0.0, bias="none",
                      rank_pattern={re.escape(n): config.ranks[n] for n in names},
                      alpha_pattern={re.escape(n): config.scale * config.ranks[n] for n in names})


def attach_lora(base: nn.Module, config: LoRAConfig) -> nn.Module:
    """Return a copy of ``base`` with LoRA layers on ``config.ranks``; only LoRA weights train.

    LoRA B starts at zero, so the copy computes exactly what ``base`` does. ``base`` is
    not modified.
    """
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    modules = dict(base.named_modules())
    for name in config.ranks:
        if name not in modules:
            raise ConfigError(f"no module {name!r} in the model", where="LoRAConfig.ranks",
                              fix="use lora_targets(model) for valid names")
        layer_lora_cost(modules[name])
    model = copy.deepcopy(base)
    model = inject_adapter_in_model(_peft_config(config), model, adapter_name=_PEFT_NAME)
    model.requires_grad_(False)
    got: dict[str, int] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            got[name] = int(mod.r[_PEFT_NAME])
            for p in list(mod.lora_A.parameters()) + list(mod.lora_B.parameters()):
                p.requires_grad_(True)
    if got != dict(config.ranks):
        raise ConfigError(f"peft placed LoRA ranks {got}, expected {dict(config.ranks)}",
                          where="attach_lora", fix="report this with the module names (a bug)")
    return model


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of a model from ``attach_lora``, keyed ``<module>.lora_{A,B}.weight``."""
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_A." in k or ".lora_B." in k:
            out[k.replace(f".{_PEFT_NAME}.", ".")] = v.detach().clone().contiguous()
    return out


def make_adapter(model: nn.Module, config: LoRAConfig, *, concept: str, prompt: str, base_sha256: str,
                 concept_embedding: torch.Tensor | None = None, extra: dict[str, Any] | None = None) -> Adapter:
    """Package the trained LoRA weights of ``model`` (from ``attach_lora``) as an Adapter."""
    emb = concept_embedding.detach().clone().contiguous() if concept_embedding is not None else None
    return Adapter(config, lora_state(model), concept, prompt, base_sha256, emb, dict(extra or {}))


def save_adapter(adapter: Adapter, directory: Path) -> Path:
    """Write ``adapter.safetensors`` and ``adapter.json`` into ``directory`` (atomic per file)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(adapter.weights)
    if adapter.concept_embedding is not None:
        tensors["concept_embedding"] = adapter.concept_embedding
    with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "kind": "mobilekit-e2gan-adapter"})
    meta = {"kind": "mobilekit-e2gan-adapter", "concept": adapter.concept, "prompt": adapter.prompt,
            "base_sha256": adapter.base_sha256, "lora": adapter.config.to_dict(),
            "target_modules": sorted(adapter.config.ranks),
            "alphas": {k: adapter.config.scale * r for k, r in adapter.config.ranks.items()},
            "num_parameters": adapter.num_parameters(), "extra": adapter.extra}
    write_json_atomic(directory / ADAPTER_META, meta)
    return directory


def load_adapter(directory: Path) -> Adapter:
    """Load an adapter written by ``save_adapter``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_p, w_p = directory / ADAPTER_META, directory / ADAPTER_WEIGHTS
    for p in (meta_p, w_p):
        if not p.is_file():
            raise ConfigError(f"missing {p.name}", where=str(directory), fix="pass a directory written by adapt()")
    meta = json.loads(meta_p.read_text())
    tensors = load_file(str(w_p))
    emb = tensors.pop("concept_embedding", None)
    return Adapter(LoRAConfig.from_dict(meta["lora"]), tensors, meta["concept"], meta["prompt"],
                   meta["base_sha256"], emb, meta.get("extra", {}))


def _check_base(base: nn.Module, adapter: Adapter, strict: bool) -> None:
    from mobilekit.train.e2gan.models import sha256_of_state

    if strict and adapter.base_sha256:
        sha = sha256_of_state(base.state_dict())
        if sha != adapter.base_sha256:
            raise ConfigError(f"adapter for concept {adapter.concept!r} was trained on another base "
                              f"(sha256 {adapter.base_sha256[:12]}…, this base {sha[:12]}…)",
                              where="apply_adapter(base)", fix="load the base the adapter was trained on, "
                              "or pass strict=False")


def apply_adapter(base: nn.Module, adapter: Adapter, *, strict: bool = True) -> nn.Module:
    """Return a copy of ``base`` with the adapter's LoRA layers attached (unfused, eval mode).

    Raises:
        ConfigError: the adapter was trained on a different base (``strict``), or its
            weights do not fit the base's layers.
    """
    _check_base(base, adapter, strict)
    model = attach_lora(base, adapter.config)
    state = {k.replace(".lora_A.", f".lora_A.{_PEFT_NAME}.").replace(".lora_B.", f".lora_B.{_PEFT_NAME}."): v
             for k, v in adapter.weights.items()}
    missing = set(lora_state(model)) - set(adapter.weights)
    if missing:
        raise ConfigError(f"adapter lacks weights for {sorted(missing)[:4]}", where="apply_adapter")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"adapter weights do not fit the base: {exc}", where="apply_adapter") from exc
    return model.eval().requires_grad_(False)


def fuse_adapter(base: nn.Module, adapter: Adapter, *, strict: bool = True) -> nn.Module:
    """Return a copy of ``base`` with the adapter merged into plain Conv2d/Linear weights.

    The result holds no peft module (exporters see the base architecture); ``base`` is
    not modified.

    Example:
        >>> fused = fuse_adapter(generator, load_adapter("runs/sepia/adapter"))  # doctest: +SKIP
    """
    model = apply_adapter(base, adapter, strict=strict)
    return unload_merged(model)


def unload_merged(model: nn.Module) -> nn.Module:
    """Merge every peft LoRA layer of ``model`` in place and replace it by its base layer."""
    from peft.tuners.lora import LoraLayer

    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name in names:
        mod = model.get_submodule(name)
        mod.merge(safe_merge=True, adapter_names=[_PEFT_NAME])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod.get_base_layer())
    leftover = [n for n, m in model.named_modules() if isinstance(m, LoraLayer) or "lora_" in n]
    if leftover:
        raise ConfigError(f"peft layers left after fusing: {leftover[:4]}", where="fuse_adapter")
    return model
