"""Adapter packaging: export a base model with its peft LoRA adapters, fused or sharing the base weights.

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

Two policies (``Recipe.adapter_policy``), both through the export pipeline (``mobilekit.exporting``):

* ``fuse``: each adapter is merged into a copy of the base (W + scale·B·A) and that copy goes
  through ``mobilekit.export`` like any model (parity on held-out inputs, cache, manifest entry):
  ``<model>-<adapter>-<recipe>.<ext>``, plus the base.
* ``separate``: the base weights are stored once and each adapter adds only its own part,
  where the format can share weights (see ``converters.adapters``):

  ========== ====================================================================
  executorch program–data separation: ``<variant>.pte`` per variant + one ``base.ptd``
  tflite     one ``.tflite``, one signature per variant (``base`` + each adapter)
  coreml     one multifunction ``.mlpackage``, one function per variant (iOS18+)
  onnx       cannot share: one fused artifact per adapter (noted in the manifest)
  ========== ====================================================================

  ``executorch-coreml`` and ``tflite-int8-static`` fall back to ``fuse`` too (noted). Each
  variant is verified with the pipeline's ``_verify`` on the pipeline's parity inputs.

Besides ``manifest.json`` (one Artifact per variant, ``adapter`` = its name, None for the
base), ``adapters.json`` is written next to it: per recipe, the bytes of the shared base, each
variant's own bytes, the total against N standalone (fused) copies, and parity per adapter.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mobilekit._deps import toolchain_versions
from mobilekit._io import copy_atomic, ensure_writable_dir, write_json_atomic
from mobilekit.artifact import Artifact, Manifest, TensorSpec, sha256_of, size_of
from mobilekit.errors import ConfigError, ParityError

if TYPE_CHECKING:
    from mobilekit.build_config import ModelEntry
    from mobilekit.spec import LoadedSpec

ProgressFn = Callable[[str, int, int], None]
BASE = "base"
SIDECAR = "adapters.json"
SIDECAR_SCHEMA_VERSION = 1
PEFT_CONFIG, PEFT_WEIGHTS, DIFFUSERS_WEIGHTS = "adapter_config.json", "adapter_model.safetensors", \
    "pytorch_lora_weights.safetensors"
SHARING = {"executorch": "program-data-separation", "tflite": "multi-signature", "coreml": "multifunction"}
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


def export_adapters(base: torch.nn.Module, adapters: Mapping[str, Any], example_inputs: Sequence[torch.Tensor], *,
                    targets: Sequence[str], out_dir: str | Path, precision: str | Sequence[str] | None = None,
                    formats: Sequence[str] | None = None, policy: str = "separate",
                    calibration: Sequence[Sequence[torch.Tensor]] | None = None, verify: bool = True,
                    tolerances: Mapping[str, Mapping[str, float]] | None = None, cache_dir: str | Path | None = None,
                    workers: int = 1, model_name: str | None = None, input_names: Sequence[str] | None = None,
                    measure_fused: bool = True, parity_inputs: Sequence[Sequence[torch.Tensor]] | None = None,
                    parity_samples: int = 4, on_progress: ProgressFn | None = None) -> Manifest:
    """Export ``base`` and its LoRA adapters for each target under one adapter policy.

    Args:
        base: the base model (not modified).
        adapters: adapter name → peft folder, diffusers LoRA file, model with LoRA layers, LoRA, or a
            registered layout (see ``load_adapters``).
        example_inputs: tensors in forward order (fix shapes, drive parity).
        targets: target names from ``profiles/``.
        out_dir: where artifacts, ``manifest.json`` and ``adapters.json`` go.
        precision: as in ``mobilekit.export`` (one or several; None: each target's default).
        formats: formats to build (None: each target's default recipe).
        policy: ``separate`` (share the base weights where the format can) or ``fuse``.
        calibration: input batches for ``int8-static``.
        verify: run every variant with its real runtime and fail when out of tolerance.
        tolerances: per-precision parity overrides.
        cache_dir: export cache (fused exports and ``separate`` builds alike).
        workers: worker processes for the fused exports.
        model_name: name used in file names (default: the class name).
        input_names: input names (default: forward's parameter names).
        measure_fused: under ``separate``, also export the base alone per recipe to report the
            bytes of N standalone copies in ``adapters.json`` (a fused copy has the base's size).
        parity_inputs: as in ``mobilekit.export``.
        parity_samples: as in ``mobilekit.export``.
        on_progress: ``on_progress(stage, done, total)`` callback.

    Returns:
        The Manifest (also in ``out_dir/manifest.json``): one Artifact per (recipe, variant),
        ``adapter`` naming the adapter (None for the base).

    Raises:
        ConfigError: bad adapters (see ``load_adapters``), unknown policy, target or recipe; all
            before any export work.
        ParityError: a variant differs from PyTorch beyond tolerance (``verify``).

    Example:
        >>> m = export_adapters(dit, {"style": "lora/"}, (x, t, y), targets=["pixel-8"], out_dir="out",
        ...                     formats=["onnx"], policy="fuse")  # doctest: +SKIP
    """
    from mobilekit.exporting import export
    from mobilekit.plan import plan_exports

    if policy not in ("fuse", "separate"):
        raise ConfigError(f"unknown adapter policy {policy!r}", where="policy", fix="use 'fuse' or 'separate'")
    example = tuple(example_inputs)
    if not example or not all(isinstance(t, torch.Tensor) for t in example):
        raise ConfigError("example_inputs must be a non-empty sequence of tensors", where="example_inputs")
    name = model_name or type(base).__name__
    ads = load_adapters(adapters, base)
    plans = plan_exports(targets, formats=formats, precision=precision, adapter_policy=policy).builds
    out = ensure_writable_dir(Path(out_dir))
    progress = on_progress or (lambda stage, done, total: None)
    common = {"calibration": calibration, "verify": verify, "tolerances": tolerances, "cache_dir": cache_dir,
              "workers": workers, "input_names": input_names, "parity_inputs": parity_inputs,
              "parity_samples": parity_samples}
    fused: dict[str, torch.nn.Module] = {}
    artifacts: list[Artifact] = []
    report: list[dict[str, Any]] = []
    for i, plan in enumerate(plans):
        recipe, plan_targets = plan.recipe, list(plan.targets)
        progress(recipe.name, i, len(plans))
        reason = _fallback_reason(recipe) if policy == "separate" else None
        if policy == "separate" and not reason:
            parts, rec = _export_separate(base, ads, example, recipe, plan_targets, out, name, common)
            if measure_fused:
                rec.update(_measure_fused(base, example, recipe, plan_targets, len(parts), common))
                if rec["fused_total_bytes"]:
                    extra = rec["separate_total_bytes"] - rec["fused_copy_bytes"]
                    rec["bytes_per_adapter_over_base"] = round(extra / max(1, len(ads)))
                    rec["separate_vs_fused_ratio"] = round(rec["separate_total_bytes"] / rec["fused_total_bytes"], 4)
            artifacts += parts
            report.append(rec)
            continue
        fused = fused or {BASE: base, **{n: apply_lora(base, a, fuse=True) for n, a in ads.items()}}
        parts = []
        for variant, model in fused.items():
            m = export(model, example, targets=plan_targets, out_dir=out, precision=recipe.precision,
                       formats=[recipe.format], model_name=name if variant == BASE else f"{name}-{variant}",
                       adapter_policy="fuse", **common)
            note = (f"adapter_policy separate: {reason}; fused instead",) if reason else ()
            parts += [replace(a, adapter=None if variant == BASE else variant, notes=a.notes + note)
                      for a in m.artifacts if (a.recipe.format, a.recipe.delegate) == (recipe.format, recipe.delegate)]
        artifacts += parts
        report.append(_fused_report(recipe, plan_targets, parts, reason))
    manifest = Manifest(model=name, artifacts=tuple(artifacts), toolchain=toolchain_versions(),
                        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), root=out)
    manifest.write(out)
    write_json_atomic(out / SIDECAR, {"schema_version": SIDECAR_SCHEMA_VERSION, "model": name, "policy": policy,
                                      "adapters": sorted(ads), "recipes": report})
    progress("done", len(plans), len(plans))
    return manifest


def _fallback_reason(recipe: Any) -> str | None:
    """Why ``separate`` cannot share weights for this recipe (then it fuses), or None."""
    from mobilekit.converters.adapters import TFLITE_SEPARATE_PRECISIONS

    if recipe.format == "onnx":
        return ("ONNX cannot share weights between adapters (ONNX Runtime loads one graph per session and "
                "external data is per model)")
    if recipe.format == "executorch" and recipe.delegate != "xnnpack":
        return f"program-data separation is implemented for the XNNPACK delegate, not {recipe.delegate}"
    if recipe.format == "tflite" and recipe.precision not in TFLITE_SEPARATE_PRECISIONS:
        return f"multi-signature TFLite cannot calibrate {recipe.precision} per signature"
    return None


def _export_separate(base: torch.nn.Module, ads: Mapping[str, LoRA], example: tuple[torch.Tensor, ...],
                     recipe: Any, targets: list[str], out: Path, name: str,
                     common: Mapping[str, Any]) -> tuple[list[Artifact], dict[str, Any]]:
    """One ``separate`` build (all variants sharing the base), served from the export cache when unchanged."""
    import mobilekit.converters.adapters as lowering
    from mobilekit.cache import ExportCache, cache_key, hash_tensors, inputs_fingerprint, model_fingerprint
    from mobilekit.exporting import _converter_fingerprint

    h = hashlib.sha256()
    for ad_name in sorted(ads):
        h.update(json.dumps({"name": ad_name, "config": ads[ad_name].config.to_dict()}, sort_keys=True,
                            default=str).encode())
        hash_tensors(sorted(ads[ad_name].weights.items()), h)
    lowering_src = Path(lowering.__file__ or "")
    options = {"adapters": h.hexdigest(), "name": name, "policy": "separate",
               "converter": _converter_fingerprint(recipe.format),
               "lowering": hashlib.sha256(lowering_src.read_bytes()).hexdigest() if lowering_src.is_file() else "",
               **{k: common[k] for k in ("verify", "tolerances", "parity_samples")},
               "parity_inputs": inputs_fingerprint(example, common["parity_inputs"])}
    key = cache_key(model_fingerprint(base, repr(base)), inputs_fingerprint(example, common["calibration"]),
                    recipe.to_dict(), toolchain_versions(), options)
    cache = ExportCache(Path(common["cache_dir"]) if common["cache_dir"] else None)
    hit = cache.lookup(key)
    if hit is not None and all((cache.entry(key) / f).exists() for f in hit["files"]):
        for f in hit["files"]:
            copy_atomic(cache.entry(key) / f, out / f)
        artifacts = [replace(Artifact.from_dict(d), targets=tuple(targets), cached=True) for d in hit["artifacts"]]
        return artifacts, {**hit["record"], "targets": targets, "cached": True}
    artifacts, record = _build_separate(base, ads, example, recipe, targets, out, name, common)
    files = sorted({f for a in artifacts for f in (a.path, *a.extra_files)})
    work = cache.new_workdir()
    for f in files:
        copy_atomic(out / f, work / f)
    cache.commit(work, key, {"filename": files[0], "files": files, "artifacts": [a.to_dict() for a in artifacts],
                             "record": record})
    return artifacts, record


def _build_separate(base: torch.nn.Module, ads: Mapping[str, LoRA], example: tuple[torch.Tensor, ...],
                    recipe: Any, targets: list[str], out: Path, name: str,
                    common: Mapping[str, Any]) -> tuple[list[Artifact], dict[str, Any]]:
    """Lower all variants sharing the base, verify each with the pipeline's ``_verify``; return artifacts, report."""
    from mobilekit.converters import adapters as lowering
    from mobilekit.converters._torch_common import input_names_of, prepared_model
    from mobilekit.exporting import TensorOutputs, _dtype_name, _flatten_outputs, _parity_feeds, _plain_outputs, \
        _verify
    from mobilekit.parity import Parity

    names = list(common["input_names"] or input_names_of(base, len(example)))
    variants, feeds, references = {}, {}, {}
    for v, model in {BASE: base, **{n: apply_lora(base, a, fuse=False) for n, a in ads.items()}}.items():
        model = prepared_model(model)
        with torch.no_grad():
            raw = model(*example)
        variants[v] = model if _plain_outputs(raw) else TensorOutputs(model, names)
        reference = [t.detach().float().numpy() for t in _flatten_outputs(raw)]
        feeds[v], references[v] = _parity_feeds(variants[v], example, reference, common["parity_inputs"],
                                                common["parity_samples"])
    cal = [tuple(b) for b in common["calibration"]] if common["calibration"] else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".adapters-", dir=out) as tmp:
        work = Path(tmp)
        if recipe.format == "executorch":
            res = lowering.lower_executorch_separate(variants, example, recipe, work, base=BASE, calibration=cal)
        elif recipe.format == "tflite":
            res = lowering.lower_tflite_signatures(variants, example, recipe, work)
        else:
            res = lowering.lower_coreml_multifunction(variants, example, recipe, work, base=BASE, calibration=cal)
        seconds = time.perf_counter() - start
        placed = _place_files(res, work, out, f"{name}-{recipe.name}")
    parities = {}
    for v in variants:
        own = [out / placed[f] for f in res.files[v]]
        if not common["verify"]:
            parities[v] = Parity.not_run("not run: verify=False")
            continue
        parities[v] = _verify(own[0], recipe, feeds[v], references[v], common["tolerances"],
                              own[1:] + [out / placed[f] for f in res.shared], options=res.entry.get(v, {}))
        if recipe.format == "coreml" and parities[v].status != "fail":
            from mobilekit.converters.coreml import validate_mlpackage

            functions = [str(f) for f in validate_mlpackage(own[0]).get("functions", [])]
            if functions and v not in functions:
                parities[v] = Parity(status="fail", runtime="coremltools", tolerance=parities[v].tolerance,
                                     reason=f"function {v!r} missing (has {functions})")
    failed = [v for v, p in parities.items() if p.status == "fail"]
    if failed:
        raise ParityError(f"{recipe.name} (separate) variant {failed[0]!r} differs from PyTorch: "
                          f"{parities[failed[0]].reason}", where=recipe.name,
                          fix="use adapter_policy='fuse', loosen the tolerance, or pass verify=False")
    toolchain = toolchain_versions()
    shared = [placed[f] for f in res.shared]
    shared_bytes = sum(size_of(out / f) for f in shared)
    if res.deployment_target and res.deployment_target != recipe.deployment_target:
        recipe = recipe.with_(deployment_target=res.deployment_target)
    inputs = tuple(TensorSpec(name=n, shape=tuple(t.shape), dtype=_dtype_name(t.dtype)) for n, t in zip(names, example))
    artifacts, variants_rec = [], {}
    for v in variants:
        own = [placed[f] for f in res.files[v]]
        own_bytes = sum(size_of(out / f) for f in dict.fromkeys(own))
        entry = res.entry.get(v, {})
        artifacts.append(Artifact(
            path=own[0], targets=tuple(targets), recipe=recipe, sha256=sha256_of(out / own[0]),
            size_bytes=own_bytes + shared_bytes, inputs=inputs,
            outputs=tuple(TensorSpec(name=f"output_{k}", shape=tuple(r.shape), dtype="float32")
                          for k, r in enumerate(references[v][0])),
            parity=parities[v], export_seconds=round(seconds, 3),
            stages={k: round(s, 4) for k, s in res.stages.items()}, toolchain=toolchain,
            extra_files=tuple(own[1:]) + tuple(shared), adapter=None if v == BASE else v,
            notes=tuple(res.notes) + tuple(f"{k}: {val}" for k, val in entry.items())))
        single_file = all(res.files[u] == res.files[v] for u in variants)
        variants_rec[v] = {"files": own, "entry": entry, "own_bytes": None if single_file else own_bytes,
                           "parity": parities[v].to_dict()}
    separate_total = sum(size_of(out / f) for f in {f for a in artifacts for f in (a.path, *a.extra_files)})
    return artifacts, {"recipe": recipe.name, "format": recipe.format, "targets": targets, "policy": "separate",
                       "sharing": SHARING[recipe.format], "shares_weights": True, "shared_files": shared,
                       "shared_bytes": shared_bytes, "variants": variants_rec,
                       "separate_total_bytes": separate_total, "notes": list(res.notes)}


def _place_files(res: Any, work: Path, out: Path, prefix: str) -> dict[str, str]:
    """Move the lowered files into ``out`` as ``<prefix>-<file>``; return old → new relative names."""
    placed: dict[str, str] = {}
    for rel in dict.fromkeys([f for fs in res.files.values() for f in fs] + list(res.shared)):
        dest = out / f"{prefix}-{rel}"
        if dest.is_dir():
            shutil.rmtree(dest)
        (work / rel).replace(dest)
        placed[rel] = dest.name
    return placed


def _measure_fused(base: torch.nn.Module, example: tuple[torch.Tensor, ...], recipe: Any, targets: list[str],
                   copies: int, common: Mapping[str, Any]) -> dict[str, Any]:
    """Bytes of one standalone export of the base for ``recipe`` (= one fused copy) and of ``copies`` of them."""
    from mobilekit.exporting import export

    with tempfile.TemporaryDirectory(prefix="mobilekit-fused-") as tmp:
        m = export(base, example, targets=targets, out_dir=tmp, precision=recipe.precision, formats=[recipe.format],
                   adapter_policy="fuse", **{**dict(common), "verify": False})
        sizes = [a.size_bytes for a in m.artifacts if a.recipe.delegate == recipe.delegate]
    one = sizes[0] if sizes else 0
    return {"fused_copy_bytes": one, "fused_copies": copies, "fused_total_bytes": one * copies,
            "fused_copy_measured_as": "a standalone export of the base (a fused adapter has the same size)"}


def _fused_report(recipe: Any, targets: list[str], parts: Sequence[Artifact], reason: str | None) -> dict[str, Any]:
    return {"recipe": recipe.name, "format": recipe.format, "targets": targets, "policy": "fuse",
            "sharing": None, "shares_weights": False, "fallback": reason, "shared_files": [], "shared_bytes": 0,
            "variants": {(a.adapter or BASE): {"files": [a.path, *a.extra_files], "own_bytes": a.size_bytes,
                                               "parity": a.parity.to_dict()} for a in parts},
            "separate_total_bytes": None, "fused_copy_bytes": max((a.size_bytes for a in parts), default=0),
            "fused_copies": len(parts), "fused_total_bytes": sum(a.size_bytes for a in parts),
            "notes": [f"adapter_policy separate: {reason}; fused instead"] if reason else []}


def export_with_adapters(spec: LoadedSpec, entry: ModelEntry, *, out_dir: str | Path,
                         cache_dir: str | Path | None = None, workers: int = 1,
                         on_progress: ProgressFn | None = None) -> Manifest:
    """Export a build entry's model with its adapters (``[models.NAME] adapters = {...}``).

    Returns:
        The Manifest written to ``out_dir/manifest.json`` (``adapters.json`` beside it).

    Example:
        >>> export_with_adapters(spec, entry, out_dir="build/gan")  # doctest: +SKIP
    """
    return export_adapters(spec.model, dict(entry.adapters), spec.example_inputs, targets=list(entry.targets),
                           out_dir=out_dir, precision=list(entry.precisions) or None,
                           formats=list(entry.formats) or None, policy=entry.adapter_policy,
                           calibration=spec.calibration or None, cache_dir=cache_dir, workers=workers,
                           model_name=entry.name, input_names=list(spec.input_names) or None,
                           on_progress=on_progress)
