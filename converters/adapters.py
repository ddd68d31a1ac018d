"""Lowering for the ``separate`` adapter policy: one base, one small part per LoRA adapter.

Each function takes ``variants`` (name → PyTorch module: the base and each adapter's
*unfused* LoRA model, whose base weights are bit-identical to the base's) and writes
artifacts whose formats let those variants share the base weights:

* ExecuTorch (``lower_executorch_separate``): program–data separation. Every variant is
  its own small ``.pte`` (graph + the adapter's own constants); every constant whose bytes
  equal a constant of the base goes to one shared ``base.ptd``. The match is by content
  (sha256 of the tensor bytes), so it also holds after int8 quantization, which rounds the
  unchanged base weights identically in every variant. XNNPACK packs weights into its
  delegate blob unless a constant carries ``delegate_constant_tag``, so constants are
  tagged on the unlifted graph before lowering; constants left outside the delegate go
  external through ``ExecutorchBackendConfig(external_constants=...)``.
* TFLite (``lower_tflite_signatures``): one ``.tflite`` with one signature per variant
  (litert-torch multi-signature conversion).
* Core ML (``lower_coreml_multifunction``): one ``.mlpackage`` with one function per
  variant; ``save_multifunction`` stores identical weights once. Needs iOS18/macOS15.

ONNX has no way to share weights between graphs of one file that ONNX Runtime loads per
variant, so the orchestrator (``mobilekit.adapters``) fuses there instead.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobilekit.converters.base import StageTimer
from mobilekit._deps import require
from mobilekit._io import write_bytes_atomic
from mobilekit.errors import ConfigError, ExportError
from mobilekit.recipe import Recipe

logger = logging.getLogger(__name__)

SHARED_TAG = "base"  # the shared ExecuTorch data file is ``base.ptd``
# Precisions the multi-signature TFLite path builds (int8-static would need per-signature calibration).
TFLITE_SEPARATE_PRECISIONS = ("fp32", "fp16", "int8-weight", "int8-dynamic")
COREML_MULTIFUNCTION_MIN_IOS = 18


@dataclass
class SeparateResult:
    """What a separate-policy lowering wrote into its work directory.

    Attributes:
        files: variant name → the files it alone needs (relative to the work directory).
        shared: files every variant needs (relative), e.g. ``base.ptd``; may be empty.
        entry: variant name → how to reach it inside its file: ``{"signature": ...}`` (TFLite),
            ``{"function": ...}`` (Core ML) or ``{}``.
        stages: seconds per stage.
        notes: remarks for the manifest.
        deployment_target: the Core ML deployment target used (Core ML only).
    """

    files: dict[str, list[str]]
    shared: list[str] = field(default_factory=list)
    entry: dict[str, dict[str, str]] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    deployment_target: str | None = None


def _tensor_hash(t: torch.Tensor) -> str:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    data = t.cpu().numpy().tobytes()
    return hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + data).hexdigest()


def _get_attr(root: torch.nn.Module, target: str) -> Any:
    return functools.reduce(getattr, target.split("."), root)


def _graph_constants(gm: torch.fx.GraphModule) -> dict[str, str]:
    """get_attr target → content hash, for every tensor constant of an unlifted graph."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _get_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                out[str(node.target)] = _tensor_hash(value)
    return out


def lower_executorch_separate(variants: Mapping[str, torch.nn.Module], example_inputs: tuple[torch.Tensor, ...],
                              recipe: Recipe, workdir: Path, *, base: str = "base",
                              calibration: Sequence[tuple[Any, ...]] | None = None) -> SeparateResult:
    """Write ``<variant>.pte`` per variant plus one shared ``base.ptd`` holding the base's constants.

    Args:
        variants: name → module; ``variants[base]`` is the plain base, the others its LoRA models.
        example_inputs: tensors in forward order (fix the shapes).
        recipe: an ``executorch-xnnpack-*`` recipe.
        workdir: an existing, empty directory.
        base: the name of the base variant.
        calibration: input batches for ``int8-static``.

    Returns:
        A SeparateResult; a variant whose data file differs from the base's keeps its own
        ``<variant>.ptd`` (noted), so every program always runs.

    Raises:
        ConfigError: the recipe's delegate is not XNNPACK, or ``base`` is not a variant.
        ExportError / UnsupportedOpError: lowering failed.

    Example:
        >>> res = lower_executorch_separate({"base": g, "sepia": lora_g}, (x, t),
        ...                                 Recipe.parse("executorch-xnnpack-fp32"), Path("work"))  # doctest: +SKIP
    """
    require("executorch.exir", extra="executorch", purpose="to export .pte files")
    from mobilekit.converters._torch_common import HalfPrecision, capture, prepared_model
    from mobilekit.converters.executorch import _delegation_notes, _lower, _quantize
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

    if recipe.delegate != "xnnpack":
        raise ConfigError(f"separate adapters for ExecuTorch need the XNNPACK delegate, not {recipe.delegate}",
                          where=recipe.name, fix="use executorch-xnnpack-*, or adapter_policy='fuse'")
    if base not in variants:
        raise ConfigError(f"no base variant {base!r} among {sorted(variants)}", where="variants")
    workdir = Path(workdir)
    timer = StageTimer()
    result = SeparateResult(files={})
    order = [base] + [n for n in variants if n != base]
    base_hashes: set[str] = set()
    base_ptd: bytes | None = None
    inputs = tuple(example_inputs)
    for name in order:
        notes: list[str] = []
        with timer(f"lower:{name}"):
            module = prepared_model(variants[name], mutates=recipe.precision in ("fp16", "int8-weight"))
            if recipe.precision == "fp16":
                module = HalfPrecision(module)
            module = _quantize(module, inputs, recipe, calibration, notes)
            graph = capture(module, inputs, backend=recipe.name).module()
            consts = _graph_constants(graph)  # type: ignore[arg-type]
            if name == base:
                base_hashes = set(consts.values())

            def tag(node: torch.fx.Node, consts: dict[str, str] = consts) -> str | None:
                return SHARED_TAG if consts.get(str(node.target)) in base_hashes else None

            delegate_external_constants_pass_unlifted(graph, gen_tag_fn=tag)
            program = capture(graph, inputs, backend=recipe.name)  # type: ignore[arg-type]
            edge = _lower(program, "xnnpack", None, recipe.name, dynamic=recipe.precision == "int8-dynamic")
            if name == base:
                result.notes.extend(notes)
                result.notes.extend(_delegation_notes(edge, "xnnpack"))
        with timer(f"serialize:{name}"):
            ep = edge.exported_program()
            placeholder_hash = _placeholder_hashes(ep)

            def external(node: torch.fx.Node, ph: dict[str, str] = placeholder_hash) -> str | None:
                return SHARED_TAG if ph.get(node.name) in base_hashes else None

            try:
                prog = edge.to_executorch(ExecutorchBackendConfig(external_constants=external))
                pte = prog.buffer
            except Exception as exc:
                raise ExportError(f"{recipe.name}: serializing variant {name!r} failed: {exc}",
                                  where=recipe.name, fix="use adapter_policy='fuse'") from exc
            data = {str(k): bytes(v) for k, v in (getattr(prog, "_tensor_data", None) or {}).items()}
            ptd = data.pop(SHARED_TAG, b"")
            if data:
                raise ExportError(f"unexpected data files {sorted(data)} for variant {name!r}", where=recipe.name)
            pte_name = f"{name}.pte"
            write_bytes_atomic(workdir / pte_name, pte)
            result.files[name] = [pte_name]
            if name == base:
                base_ptd = ptd
                write_bytes_atomic(workdir / f"{SHARED_TAG}.ptd", ptd)
                result.shared = [f"{SHARED_TAG}.ptd"]
            elif ptd != base_ptd:
                own = f"{name}.ptd"
                write_bytes_atomic(workdir / own, ptd)
                result.files[name].append(own)
                result.notes.append(f"{name}: its weight file differs from the base's ({len(ptd)} vs "
                                    f"{len(base_ptd or b'')} bytes), so it keeps its own {own}")
            logger.debug("%s: %s %d bytes, shared %d bytes", recipe.name, pte_name, len(pte), len(ptd))
    result.stages = dict(timer.stages)
    result.notes.append(f"program-data separation: {len(order)} programs share {SHARED_TAG}.ptd "
                        "(constants equal to the base's); each .pte holds its graph and adapter weights; "
                        "load a program with data_path=base.ptd")
    return result


def _placeholder_hashes(ep: torch.export.ExportedProgram) -> dict[str, str]:
    """Placeholder node name → content hash, for parameters, buffers and lifted constants."""
    out: dict[str, str] = {}
    tables = {**ep.state_dict, **getattr(ep, "constants", {})}
    for spec in ep.graph_signature.input_specs:
        target = getattr(spec, "target", None)
        value = tables.get(target) if target is not None else None
        if isinstance(value, torch.Tensor):
            out[spec.arg.name] = _tensor_hash(value)  # type: ignore[union-attr]
    return out


def lower_tflite_signatures(variants: Mapping[str, torch.nn.Module], example_inputs: tuple[torch.Tensor, ...],
                            recipe: Recipe, workdir: Path) -> SeparateResult:
    """Write one ``model.tflite`` with one signature per variant (signature name = variant name).

    Args:
        variants: name → module (the base and the unfused LoRA models).
        example_inputs: float tensors in forward order.
        recipe: a ``tflite-*`` recipe with a precision in ``TFLITE_SEPARATE_PRECISIONS``.
        workdir: an existing, empty directory.

    Raises:
        ConfigError: ``int8-static`` (needs per-signature calibration: use ``fuse``) or integer inputs.
        ExportError / UnsupportedOpError: conversion or quantization failed.

    Example:
        >>> lower_tflite_signatures({"base": g, "sepia": lora_g}, (x, t),
        ...                         Recipe.parse("tflite-fp32"), Path("work"))  # doctest: +SKIP
    """
    if recipe.precision not in TFLITE_SEPARATE_PRECISIONS:
        raise ConfigError(f"multi-signature TFLite cannot build {recipe.precision}", where=recipe.name,
                          fix=f"use one of {', '.join(TFLITE_SEPARATE_PRECISIONS)}, or adapter_policy='fuse'")
    if any(t.dtype in (torch.int64, torch.int32) for t in example_inputs):
        raise ConfigError("multi-signature TFLite takes float inputs only", where="example_inputs",
                          fix="use adapter_policy='fuse' for models with integer inputs")
    litert_torch = require("litert_torch", extra="tflite", purpose="to export TFLite models")
    from mobilekit.converters.tflite import _map_error, _quantize, _quiet

    timer = StageTimer()
    inputs = tuple(example_inputs)
    names = list(variants)
    with timer("lower"):
        try:
            with _quiet():
                conv = None
                for name in names:
                    module = variants[name].eval()
                    conv = (litert_torch.signature(name, module, inputs) if conv is None
                            else conv.signature(name, module, inputs))
                flatbuffer = bytes(conv.convert().model_content())  # type: ignore[union-attr]
        except ConfigError:
            raise
        except Exception as exc:
            raise _map_error(exc, variants[names[0]], inputs) from exc
    notes = [f"one signature per variant: {', '.join(names)}"]
    if recipe.precision != "fp32":
        with timer("quantize"):
            flatbuffer = _quantize(flatbuffer, recipe.precision, [])
        notes.append(f"{recipe.precision} applied to every signature (ai-edge-quantizer)")
    with timer("serialize"):
        write_bytes_atomic(Path(workdir) / "model.tflite", flatbuffer)
    return SeparateResult(files={n: ["model.tflite"] for n in names}, entry={n: {"signature": n} for n in names},
                          stages=dict(timer.stages), notes=notes)


def lower_coreml_multifunction(variants: Mapping[str, torch.nn.Module], example_inputs: tuple[torch.Tensor, ...],
                               recipe: Recipe, workdir: Path, *, base: str = "base",
                               calibration: Sequence[tuple[Any, ...]] | None = None) -> SeparateResult:
    """Write one ``model.mlpackage`` with a function per variant; identical weights are stored once.

    The deployment target is raised to iOS18 when lower (multifunction models need it).

    Args:
        variants: name → module (the base and the unfused LoRA models).
        example_inputs: tensors in forward order.
        recipe: a ``coreml-*`` recipe.
        workdir: an existing, empty directory.
        base: the default function.
        calibration: input batches for ``int8-static`` (refused off macOS by the Core ML converter).

    Example:
        >>> lower_coreml_multifunction({"base": g, "sepia": lora_g}, (x, t),
        ...                            Recipe.parse("coreml-fp16"), Path("work"))  # doctest: +SKIP
    """
    from mobilekit.converters.coreml import CoreMLConverter, _ios_level, save_multifunction

    timer = StageTimer()
    notes: list[str] = []
    target = recipe.deployment_target or "iOS18"
    level = _ios_level(target)
    if level is None or level < COREML_MULTIFUNCTION_MIN_IOS:
        notes.append(f"deployment target raised from {target} to iOS18: multifunction models need iOS18/macOS15")
        target = "iOS18"
    part_recipe = recipe.with_(deployment_target=target)
    parts = Path(workdir) / "_parts"
    packages: dict[str, Path] = {}
    converter = CoreMLConverter()
    try:
        for name, module in variants.items():
            with timer(f"lower:{name}"):
                d = parts / name
                d.mkdir(parents=True, exist_ok=True)
                res = converter.convert(module, tuple(example_inputs), part_recipe, d, calibration=calibration)
                packages[name] = d / res.filename
        with timer("merge"):
            save_multifunction(packages, Path(workdir) / "model.mlpackage", default=base if base in packages
                               else None)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    notes.append(f"one function per variant: {', '.join(variants)} (default {base}); identical weights stored "
                 "once; parity not run: needs macOS")
    return SeparateResult(files={n: ["model.mlpackage"] for n in variants},
                          entry={n: {"function": n} for n in variants}, stages=dict(timer.stages), notes=notes,
                          deployment_target=target)
