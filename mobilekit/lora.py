"""LoRA adapters for any ``nn.Module``, read from peft and diffusers formats and checked against a base.

An adapter is a ``LoRA``: a peft ``LoraConfig`` plus its A/B weights keyed by module path, for
any ``nn.Module``. ``load_adapters`` reads, for each name, one of:

* an ``nn.Module`` carrying peft LoRA layers (a ``PeftModel``, ``inject_adapter_in_model`` or
  diffusers ``add_adapter``),
* a folder written by peft's ``save_pretrained`` (``adapter_config.json`` + ``adapter_model.safetensors``),
* a diffusers LoRA file (``pytorch_lora_weights.safetensors``, or the folder holding it): keys like
  ``transformer.<module>.lora_A.weight`` or the older ``<module>.lora.down.weight``,
* a layout a training package registered with ``register_adapter_layout``, or an object with a
  ``to_lora()`` method (how ``mobilekit.train`` packages plug in; this module knows none of them).

Every adapter is checked against the base before any export work: each target module exists and
each A/B weight has the shape the module needs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mobilekit.errors import ConfigError

PEFT_CONFIG, PEFT_WEIGHTS, DIFFUSERS_WEIGHTS = "adapter_config.json", "adapter_model.safetensors", \
    "pytorch_lora_weights.safetensors"
BASE = "base"  # the variant name of the base; no adapter may take it
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PEFT_NAME = "default"
_FIX = (f"pass a peft folder ({PEFT_CONFIG} + {PEFT_WEIGHTS}), a diffusers LoRA .safetensors file, "
        "a model with peft LoRA layers, or a layout registered with register_adapter_layout")
# older diffusers key styles → peft's ``<module>.lora_{A,B}.weight``
_OLD_KEYS = ((re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v)_lora\.(down|up)\.weight$"), r"\1.\2.lora_\3.weight"),
             (re.compile(r"^(.*)\.processor\.to_out_lora\.(down|up)\.weight$"), r"\1.to_out.0.lora_\2.weight"),
             (re.compile(r"^(.*)\.lora(?:_linear_layer)?\.(down|up)\.weight$"), r"\1.lora_\2.weight"))
_LAYOUTS: list[tuple[str, Callable[[Path], Any]]] = []


@dataclass(frozen=True)
class LoRA:
    """A peft LoRA adapter, apart from any model.

    Attributes:
        config: the peft ``LoraConfig`` (ranks, alphas, target modules).
        weights: ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` tensors (peft's saved form).
        source: where it came from, for messages.
        base_sha256: sha256 of the base's state dict it was trained on, when known (checked).
    """

    config: Any
    weights: dict[str, torch.Tensor]
    source: str = "memory"
    base_sha256: str | None = None

    @property
    def modules(self) -> list[str]:
        """Paths of the modules the adapter changes."""
        return sorted({k.split(".lora_")[0] for k in self.weights})


def register_adapter_layout(marker: str, load: Callable[[Path], Any]) -> None:
    """Teach ``load_adapters`` a folder layout: a folder holding ``marker`` is read with ``load(folder)``.

    ``load`` returns a ``LoRA`` (or an object with ``to_lora()``). Registering a marker again replaces it.

    Example:
        >>> register_adapter_layout("adapter.json", my_loader)  # doctest: +SKIP
    """
    _LAYOUTS[:] = [(m, f) for m, f in _LAYOUTS if m != marker] + [(marker, load)]


def _lora_config(data: Mapping[str, Any], where: str) -> Any:
    from peft import LoraConfig

    if str(data.get("peft_type", "LORA")).upper() != "LORA":
        raise ConfigError(f"{where}: peft_type {data.get('peft_type')!r} is not LoRA", where=where,
                          fix="only LoRA adapters can be packaged")
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    return LoraConfig(**{k: v for k, v in data.items() if k in fields and k != "peft_type"})


def _normalize(weights: Mapping[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Keys in peft's form (prefix ``base_model.model.`` and old diffusers styles rewritten); alphas apart."""
    out, alphas = {}, {}
    for key, t in weights.items():
        k = key.replace("base_model.model.", "")
        if k.endswith(".alpha"):
            alphas[k[: -len(".alpha")]] = float(t)
            continue
        for rx, repl in _OLD_KEYS:
            k = rx.sub(repl, k)
        k = k.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B.")
        if ".lora_" not in k or k.startswith("lora_"):
            raise ConfigError(f"unknown LoRA file layout: key {key!r} is not a peft/diffusers LoRA weight",
                              where=where, fix=f"{_FIX}; convert other layouts with diffusers' load_lora_weights "
                              "then save_lora_adapter")
        out[k] = t
    return out, alphas


def _inferred_config(weights: Mapping[str, torch.Tensor], alphas: Mapping[str, float]) -> Any:
    """A LoraConfig for weights with no config: rank from each lora_A, alpha from ``.alpha`` keys or = rank."""
    from peft import LoraConfig

    ranks = {k.split(".lora_A.")[0]: int(t.shape[0]) for k, t in weights.items() if ".lora_A." in k}
    names = sorted(ranks)
    if not names:
        raise ConfigError("no lora_A weights in the file", where="adapter", fix=_FIX)
    alpha = {n: alphas.get(n, float(ranks[n])) for n in names}
    return LoraConfig(r=ranks[names[0]], lora_alpha=alpha[names[0]], target_modules=names, lora_dropout=0.0,
                      rank_pattern={re.escape(n): ranks[n] for n in names},
                      alpha_pattern={re.escape(n): alpha[n] for n in names})


def _read_safetensors(path: Path) -> LoRA:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    weights, alphas = _normalize(tensors, str(path))
    config_json = meta.get("lora_adapter_metadata")  # diffusers >= 0.34 stores the LoraConfig here
    config = _lora_config(json.loads(config_json), str(path)) if config_json else _inferred_config(weights, alphas)
    return LoRA(config, weights, str(path), meta.get("base_sha256"))


def _from_module(model: torch.nn.Module, where: str) -> LoRA:
    from peft.utils import get_peft_model_state_dict

    configs = getattr(model, "peft_config", None) or {}
    name = getattr(model, "active_adapter", None)
    name = name if isinstance(name, str) and name in configs else next(iter(configs), None)
    if name is None:
        raise ConfigError(f"{where}: {type(model).__name__} carries no peft LoRA layers", where=where, fix=_FIX)
    weights, _ = _normalize(get_peft_model_state_dict(model, adapter_name=name), where)
    return LoRA(copy.deepcopy(configs[name]), {k: v.detach().clone() for k, v in weights.items()}, where)


def _read(item: Any, where: str) -> LoRA:
    if isinstance(item, LoRA):
        return item
    if hasattr(item, "to_lora"):
        return _read(item.to_lora(), where)
    if isinstance(item, torch.nn.Module):
        return _from_module(item, where)
    if not isinstance(item, (str, Path)):
        raise ConfigError(f"{where}: cannot read a {type(item).__name__} as an adapter", where=where, fix=_FIX)
    path = Path(item)
    if path.is_file() and path.suffix == ".safetensors":
        return _read_safetensors(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory or a .safetensors file", where=where, fix=_FIX)
    if (path / PEFT_CONFIG).is_file() and (path / PEFT_WEIGHTS).is_file():
        lora = _read_safetensors(path / PEFT_WEIGHTS)
        return replace(lora, config=_lora_config(json.loads((path / PEFT_CONFIG).read_text()), str(path)),
                       source=str(path))
    if (path / DIFFUSERS_WEIGHTS).is_file():
        return _read_safetensors(path / DIFFUSERS_WEIGHTS)
    for marker, load in reversed(_LAYOUTS):
        if (path / marker).is_file():
            return _read(load(path), where)
    found = sorted(p.name for p in path.iterdir())[:6]
    raise ConfigError(f"unknown adapter layout in {path}: missing adapter files ({PEFT_CONFIG} + {PEFT_WEIGHTS} or "
                      f"{DIFFUSERS_WEIGHTS}); found {found or 'nothing'}", where=where, fix=_FIX)


def _resolve(base: torch.nn.Module, lora: LoRA, where: str) -> LoRA:
    """Map the adapter's module paths onto ``base`` (a diffusers ``unet.``/``transformer.`` prefix dropped,
    a wrapper's prefix such as ``model.`` added); name the first module the base lacks."""
    names = {n for n, _ in base.named_modules()}
    mods = lora.modules
    heads = {m.split(".")[0] for m in mods}
    if len(heads) == 1 and (head := next(iter(heads))) in ("unet", "transformer", "prior") and head not in names:
        mods = [m[len(head) + 1:] for m in lora.modules]
    prefix = ""
    if mods[0] not in names:
        prefix = next((n[: -len(mods[0])] for n in sorted(names, key=len) if n.endswith("." + mods[0])), "")
    mapping = dict(zip(lora.modules, (prefix + m for m in mods), strict=True))
    for old, new in mapping.items():
        if new not in names:
            raise ConfigError(f"{where}: target module {old!r} does not exist in the base {type(base).__name__}",
                              where=where, fix="export with the base the adapter was trained for")
    if all(k == v for k, v in mapping.items()):
        return lora
    weights = {mapping[k.split(".lora_")[0]] + ".lora_" + k.split(".lora_", 1)[1]: t for k, t in lora.weights.items()}
    config = copy.deepcopy(lora.config)
    if set(config.target_modules or ()) == set(mapping):  # a config naming full paths (inferred from the file)
        config.target_modules = [mapping[m] for m in sorted(mapping)]
        esc = {re.escape(k): re.escape(v) for k, v in mapping.items()}
        config.rank_pattern = {esc.get(k, k): r for k, r in (config.rank_pattern or {}).items()}
        config.alpha_pattern = {esc.get(k, k): a for k, a in (config.alpha_pattern or {}).items()}
    return replace(lora, weights=weights, config=config)


def _check_shapes(base: torch.nn.Module, lora: LoRA, where: str) -> None:
    """Each A/B weight must have the shape its Linear/Conv2d needs at the config's rank."""
    from peft.utils.other import get_pattern_key

    cfg = lora.config
    for module in lora.modules:
        layer = base.get_submodule(module)
        rank = int((cfg.rank_pattern or {}).get(get_pattern_key((cfg.rank_pattern or {}).keys(), module), cfg.r))
        if isinstance(layer, torch.nn.Linear):
            need = {"lora_A": (rank, layer.in_features), "lora_B": (layer.out_features, rank)}
        elif isinstance(layer, torch.nn.Conv2d):
            need = {"lora_A": (rank, layer.in_channels // layer.groups, *layer.kernel_size),
                    "lora_B": (layer.out_channels, rank, 1, 1)}
        else:
            continue  # other layer types: peft checks them when the adapter is applied
        for part, shape in need.items():
            key = f"{module}.{part}.weight"
            if key not in lora.weights:
                raise ConfigError(f"{where}: no {key} in the adapter", where=where, fix="re-save the adapter")
            got = tuple(lora.weights[key].shape)
            if got != shape:
                raise ConfigError(f"{where}: {key} has shape {got}, but the base's {type(layer).__name__} {module!r} "
                                  f"needs {shape} (rank {rank})", where=where,
                                  fix="export with the base the adapter was trained for, or fix its rank in the config")


def load_adapters(adapters: Mapping[str, Any], base: torch.nn.Module) -> dict[str, LoRA]:
    """Read each adapter (see the module docstring for what it may be) and check it fits ``base``.

    Raises:
        ConfigError: a bad name, an unreadable or unknown layout, a target module the base lacks
            (named), a weight of the wrong shape (key and both shapes), or an adapter trained on
            another base (each names the adapter).

    Example:
        >>> ads = load_adapters({"style": "lora/pytorch_lora_weights.safetensors"}, transformer)  # doctest: +SKIP
    """
    if not adapters:
        raise ConfigError("no adapters given", where="adapters", fix="pass {name: adapter path or model}")
    out: dict[str, LoRA] = {}
    base_sha = None
    for name, item in adapters.items():
        where = f"adapter {name!r}"
        if not isinstance(name, str) or not _NAME.match(name) or name == BASE:
            raise ConfigError(f"bad adapter name {name!r}", where=f"adapters[{name!r}]",
                              fix=f"use letters, digits, '_', '-', '.'; {BASE!r} is reserved for the base")
        try:
            lora = _read(item, where)
        except ConfigError as exc:
            raise ConfigError(exc.message if exc.message.startswith(where) else f"{where}: {exc.message}",
                              where=exc.where, fix=exc.fix) from exc
        except Exception as exc:
            raise ConfigError(f"{where} cannot be read: {type(exc).__name__}: {exc}", where=str(item),
                              fix="re-save the adapter") from exc
        if lora.base_sha256:
            from mobilekit.cache import hash_tensors

            base_sha = base_sha or hash_tensors(sorted(base.state_dict().items())).hexdigest()
            if base_sha != lora.base_sha256:
                raise ConfigError(f"{where} was trained on another base (sha256 {lora.base_sha256[:12]}…, this "
                                  f"base {base_sha[:12]}…)", where=f"adapters[{name!r}]",
                                  fix="export with the base the adapter was trained on")
        lora = _resolve(base, lora, where)
        _check_shapes(base, lora, where)
        out[name] = lora
    return out


def apply_lora(base: torch.nn.Module, lora: LoRA, *, fuse: bool) -> torch.nn.Module:
    """A copy of ``base`` with ``lora``: merged into plain layers (``fuse``) or as unfused peft layers.

    ``base`` is not modified. A fused copy holds no peft module (exporters see the base architecture).

    Raises:
        ConfigError: peft cannot place the adapter, or the adapter lacks weights peft expects.
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    try:
        model = inject_adapter_in_model(copy.deepcopy(lora.config), copy.deepcopy(base), adapter_name=_PEFT_NAME)
        result = set_peft_model_state_dict(model, lora.weights, adapter_name=_PEFT_NAME)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"adapter from {lora.source} does not fit the base: {(str(exc).splitlines() or [''])[0]}",
                          where=lora.source, fix="export with the base the adapter was trained for") from exc
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ConfigError(f"adapter from {lora.source} does not match the layers peft placed: missing "
                          f"{missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}", where=lora.source,
                          fix="check target_modules in the adapter's config")
    model.eval().requires_grad_(False)
    if not fuse:
        return model
    for name in [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]:
        layer = model.get_submodule(name)
        layer.merge(safe_merge=True, adapter_names=[_PEFT_NAME])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    return model
