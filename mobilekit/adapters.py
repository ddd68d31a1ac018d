"""Adapter packaging: export a base model with its LoRA adapters, fused or sharing the base weights.

Two policies (``Recipe.adapter_policy``):

* ``fuse``: each adapter is merged into a copy of the base (``fuse_adapter``) before
  quantization, so int8 rounding applies to the merged weights; every adapter is then a
  complete artifact of its own (``<model>-<adapter>-<recipe>.<ext>``), plus the base.
* ``separate``: the base weights are stored once and each adapter adds only its own part,
  where the format can share weights (see ``converters.adapters``):

  ========== ====================================================================
  executorch program–data separation: ``<variant>.pte`` per variant + one ``base.ptd``
  tflite     one ``.tflite``, one signature per variant (``base`` + each adapter)
  coreml     one multifunction ``.mlpackage``, one function per variant (iOS18+)
  onnx       cannot share: one fused artifact per adapter (noted in the manifest)
  ========== ====================================================================

  ``executorch-coreml`` and ``tflite-int8-static`` fall back to ``fuse`` too (noted).

Besides ``manifest.json`` (one Artifact per variant, ``adapter`` = its name, None for the
base), ``adapters.json`` is written next to it: per recipe, the bytes of the shared base, each
variant's own bytes, the total against N standalone (fused) copies, and parity per adapter.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mobilekit._deps import toolchain_versions
from mobilekit._io import ensure_writable_dir, write_json_atomic
from mobilekit.artifact import Artifact, Manifest, TensorSpec, sha256_of, size_of
from mobilekit.errors import ConfigError, MobilekitError, ParityError
from mobilekit.parity import Parity, compare, tolerance_for

if TYPE_CHECKING:
    from mobilekit.build_config import ModelEntry
    from mobilekit.spec import LoadedSpec
    from mobilekit.train.e2gan.lora import Adapter

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
BASE = "base"
SIDECAR = "adapters.json"
SIDECAR_SCHEMA_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHARING = {"executorch": "program-data-separation", "tflite": "multi-signature", "coreml": "multifunction"}


def load_adapters(adapters: Mapping[str, Path | str | Adapter], base: torch.nn.Module) -> dict[str, Adapter]:
    """Load adapters (directories or Adapter objects) and check each was trained on ``base``.

    Raises:
        ConfigError: a bad name, a missing or unreadable adapter directory, or an adapter
            trained on another base (each names the adapter).

    Example:
        >>> ads = load_adapters({"sepia": "runs/sepia/adapter"}, generator)  # doctest: +SKIP
    """
    from mobilekit.train.e2gan.lora import Adapter, _check_base, load_adapter

    if not adapters:
        raise ConfigError("no adapters given", where="adapters", fix="pass {name: adapter directory}")
    out: dict[str, Adapter] = {}
    for name, item in adapters.items():
        if not isinstance(name, str) or not _NAME.match(name) or name == BASE:
            raise ConfigError(f"bad adapter name {name!r}", where=f"adapters[{name!r}]",
                              fix=f"use letters, digits, '_', '-', '.'; {BASE!r} is reserved for the base")
        if isinstance(item, Adapter):
            adapter = item
        else:
            path = Path(item)
            if not path.is_dir():
                raise ConfigError(f"adapter {name!r}: {path} is not a directory", where=f"adapters[{name!r}]",
                                  fix="pass the adapter directory written by `mobilekit train e2gan adapt`")
            try:
                adapter = load_adapter(path)
            except ConfigError as exc:
                raise ConfigError(f"adapter {name!r}: {exc.message if hasattr(exc, 'message') else exc}",
                                  where=str(path), fix="pass a directory holding adapter.json and "
                                  "adapter.safetensors") from exc
            except Exception as exc:
                raise ConfigError(f"adapter {name!r} cannot be read: {type(exc).__name__}: {exc}",
                                  where=str(path), fix="re-save the adapter") from exc
        try:
            _check_base(base, adapter, True)
        except ConfigError as exc:
            raise ConfigError(f"adapter {name!r}: {exc}", where=f"adapters[{name!r}]",
                              fix="export with the base the adapter was trained on") from exc
        out[name] = adapter
    return out


def _variants(base: torch.nn.Module, adapters: Mapping[str, Adapter], fused: bool) -> dict[str, torch.nn.Module]:
    from mobilekit.train.e2gan.lora import apply_adapter, fuse_adapter

    make = fuse_adapter if fused else apply_adapter
    out = {BASE: copy.deepcopy(base).eval()}
    for name, adapter in adapters.items():
        try:
            out[name] = make(base, adapter).eval()
        except ConfigError as exc:
            raise ConfigError(f"adapter {name!r} does not fit the base: {exc}", where=f"adapters[{name!r}]",
                              fix="export with the base the adapter was trained on") from exc
    return out


def _reference(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    from mobilekit.exporting import _flatten_outputs

    with torch.no_grad():
        return [t.detach().float().numpy() for t in _flatten_outputs(model(*example))]


def export_adapters(base: torch.nn.Module, adapters: Mapping[str, Path | str | Adapter],
                    example_inputs: Sequence[torch.Tensor], *, targets: Sequence[str], out_dir: str | Path,
                    precision: str | Sequence[str] | None = None, formats: Sequence[str] | None = None,
                    policy: str = "separate", calibration: Sequence[Sequence[torch.Tensor]] | None = None,
                    verify: bool = True, tolerances: Mapping[str, Mapping[str, float]] | None = None,
                    cache_dir: str | Path | None = None, workers: int = 1, model_name: str | None = None,
                    input_names: Sequence[str] | None = None, measure_fused: bool = True,
                    on_progress: ProgressFn | None = None) -> Manifest:
    """Export ``base`` and its LoRA adapters for each target under one adapter policy.

    Args:
        base: the base generator (not modified).
        adapters: adapter name → adapter directory (``save_adapter``) or Adapter.
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
        on_progress: ``on_progress(stage, done, total)`` callback.

    Returns:
        The Manifest (also in ``out_dir/manifest.json``): one Artifact per (recipe, variant),
        ``adapter`` naming the adapter (None for the base).

    Raises:
        ConfigError: bad adapters (missing, unreadable, trained on another base), unknown policy,
            target or recipe.
        ParityError: a variant differs from PyTorch beyond tolerance (``verify``).

    Example:
        >>> m = export_adapters(gen, {"sepia": "runs/sepia/adapter"}, gen.example_inputs(),
        ...                     targets=["pixel-8"], out_dir="out", formats=["tflite"])  # doctest: +SKIP
    """
    from mobilekit.exporting import export
    from mobilekit.plan import plan_exports

    if policy not in ("fuse", "separate"):
        raise ConfigError(f"unknown adapter policy {policy!r}", where="policy", fix="use 'fuse' or 'separate'")
    out = ensure_writable_dir(Path(out_dir))
    example = tuple(example_inputs)
    if not example or not all(isinstance(t, torch.Tensor) for t in example):
        raise ConfigError("example_inputs must be a non-empty sequence of tensors", where="example_inputs")
    name = model_name or type(base).__name__
    ads = load_adapters(adapters, base)
    progress = on_progress or (lambda stage, done, total: None)
    plans = plan_exports(targets, formats=formats, precision=precision, adapter_policy=policy).builds
    common = {"calibration": calibration, "verify": verify, "tolerances": tolerances, "cache_dir": cache_dir,
              "workers": workers, "input_names": input_names}
    artifacts: list[Artifact] = []
    report: list[dict[str, Any]] = []
    total = len(plans)
    for i, plan in enumerate(plans):
        recipe = plan.recipe
        progress(recipe.name, i, total)
        reason = _fallback_reason(recipe) if policy == "separate" else None
        if policy == "fuse" or reason:
            fused = _variants(base, ads, fused=True)
            parts = []
            for variant, model in fused.items():
                vname = name if variant == BASE else f"{name}-{variant}"
                m = export(model, example, targets=list(plan.targets), out_dir=out, precision=recipe.precision,
                           formats=[recipe.format], model_name=vname, adapter_policy="fuse", **common)
                for a in m.artifacts:
                    if a.recipe.format != recipe.format or a.recipe.delegate != recipe.delegate:
                        continue
                    notes = a.notes + ((f"adapter_policy separate: {reason}; fused instead",) if reason else ())
                    parts.append(replace(a, adapter=None if variant == BASE else variant, notes=notes))
            artifacts += parts
            report.append(_fused_report(recipe, list(plan.targets), parts, out, reason))
        else:
            parts, rec = _export_separate(base, ads, example, recipe, list(plan.targets), out, name, verify,
                                          tolerances, calibration, cache_dir)
            if measure_fused:
                rec.update(_measure_fused(base, example, recipe, list(plan.targets), len(parts), common))
                if rec["fused_total_bytes"]:
                    extra = rec["separate_total_bytes"] - rec["fused_copy_bytes"]
                    rec["bytes_per_adapter_over_base"] = round(extra / max(1, len(ads)))
                    rec["separate_vs_fused_ratio"] = round(rec["separate_total_bytes"] / rec["fused_total_bytes"], 4)
            artifacts += parts
            report.append(rec)
    toolchain = toolchain_versions()
    manifest = Manifest(model=name, artifacts=tuple(artifacts), toolchain=toolchain,
                        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), root=out)
    manifest.write(out)
    write_json_atomic(out / SIDECAR, {"schema_version": SIDECAR_SCHEMA_VERSION, "model": name, "policy": policy,
                                      "adapters": sorted(ads), "recipes": report})
    progress("done", total, total)
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


def _separate_key(base: torch.nn.Module, ads: Mapping[str, Adapter], example: tuple[torch.Tensor, ...],
                  recipe: Any, name: str, verify: bool, tolerances: Any,
                  calibration: Sequence[Sequence[torch.Tensor]] | None) -> str:
    """Content address of one ``separate`` build: base and adapter weights, inputs, recipe, converters."""
    import hashlib

    from mobilekit.cache import cache_key, hash_tensors, inputs_fingerprint, model_fingerprint
    from mobilekit.exporting import _converter_fingerprint

    h = hashlib.sha256()
    for ad_name in sorted(ads):
        ad = ads[ad_name]
        h.update(json.dumps({"name": ad_name, "config": ad.config.to_dict()}, sort_keys=True).encode())
        hash_tensors(sorted(ad.weights.items()), h)
    import mobilekit.converters.adapters as lowering_module

    lowering = Path(lowering_module.__file__ or "")
    options = {"adapters": h.hexdigest(), "name": name, "verify": verify, "tolerances": tolerances,
               "converter": _converter_fingerprint(recipe.format),
               "lowering": hashlib.sha256(lowering.read_bytes()).hexdigest() if lowering.is_file() else "",
               "policy": "separate"}
    return cache_key(model_fingerprint(base, repr(base)), inputs_fingerprint(example, calibration), recipe.to_dict(),
                     toolchain_versions(), options)


def _export_separate(base: torch.nn.Module, ads: Mapping[str, Adapter], example: tuple[torch.Tensor, ...],
                     recipe: Any, targets: list[str], out: Path, name: str, verify: bool,
                     tolerances: Mapping[str, Mapping[str, float]] | None,
                     calibration: Sequence[Sequence[torch.Tensor]] | None,
                     cache_dir: str | Path | None = None) -> tuple[list[Artifact], dict[str, Any]]:
    """Like ``_build_separate``, served from the export cache when base, adapters and recipe are unchanged."""
    from mobilekit._io import copy_atomic
    from mobilekit.cache import ExportCache

    cache = ExportCache(Path(cache_dir) if cache_dir else None)
    key = _separate_key(base, ads, example, recipe, name, verify, tolerances, calibration)
    hit = cache.lookup(key)
    if hit is not None and all((cache.entry(key) / f).exists() for f in hit["files"]):
        for f in hit["files"]:
            copy_atomic(cache.entry(key) / f, out / f)
        artifacts = [replace(Artifact.from_dict(d), targets=tuple(targets), cached=True) for d in hit["artifacts"]]
        return artifacts, {**hit["record"], "targets": targets, "cached": True}
    artifacts, record = _build_separate(base, ads, example, recipe, targets, out, name, verify, tolerances,
                                        calibration)
    files = sorted({f for a in artifacts for f in (a.path, *a.extra_files)})
    work = cache.new_workdir()
    for f in files:
        copy_atomic(out / f, work / f)
    cache.commit(work, key, {"filename": files[0], "files": files, "artifacts": [a.to_dict() for a in artifacts],
                             "record": record})
    return artifacts, record


def _build_separate(base: torch.nn.Module, ads: Mapping[str, Adapter], example: tuple[torch.Tensor, ...],
                    recipe: Any, targets: list[str], out: Path, name: str, verify: bool,
                    tolerances: Mapping[str, Mapping[str, float]] | None,
                    calibration: Sequence[Sequence[torch.Tensor]] | None) -> tuple[list[Artifact], dict[str, Any]]:
    """Lower all variants sharing the base, verify each, place the files; return artifacts and the report."""
    from mobilekit.converters import adapters as lowering

    variants = _variants(base, ads, fused=False)
    references = {v: _reference(m, example) for v, m in variants.items()}
    cal = [tuple(b) for b in calibration] if calibration else None
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
        parities = {v: _verify_variant(out, placed, res, v, recipe, example, references[v], tolerances, verify)
                    for v in variants}
    failed = [v for v, p in parities.items() if p.status == "fail"]
    if failed:
        p = parities[failed[0]]
        raise ParityError(f"{recipe.name} (separate) variant {failed[0]!r} differs from PyTorch: {p.reason}",
                          where=recipe.name, fix="use adapter_policy='fuse', loosen the tolerance, or pass "
                          "verify=False")
    toolchain = toolchain_versions()
    shared = [placed[f] for f in res.shared]
    shared_bytes = sum(size_of(out / f) for f in shared)
    artifacts, variants_rec = [], {}
    if res.deployment_target and res.deployment_target != recipe.deployment_target:
        recipe = recipe.with_(deployment_target=res.deployment_target)
    for v in variants:
        own = [placed[f] for f in res.files[v]]
        own_bytes = sum(size_of(out / f) for f in dict.fromkeys(own))
        entry = res.entry.get(v, {})
        notes = tuple(res.notes) + tuple(f"{k}: {val}" for k, val in entry.items())
        artifacts.append(Artifact(
            path=own[0], targets=tuple(targets), recipe=recipe, sha256=sha256_of(out / own[0]),
            size_bytes=own_bytes + shared_bytes, inputs=_in_specs(example, base),
            outputs=tuple(TensorSpec(name=f"output_{k}", shape=tuple(r.shape), dtype="float32")
                          for k, r in enumerate(references[v])),
            parity=parities[v], export_seconds=round(seconds, 3),
            stages={k: round(s, 4) for k, s in res.stages.items()}, toolchain=toolchain,
            extra_files=tuple(own[1:]) + tuple(shared), adapter=None if v == BASE else v, notes=notes))
        single_file = all(res.files[u] == res.files[v] for u in variants)
        variants_rec[v] = {"files": own, "entry": entry, "own_bytes": None if single_file else own_bytes,
                           "parity": parities[v].to_dict()}
    files = {f for a in artifacts for f in (a.path, *a.extra_files)}
    separate_total = sum(size_of(out / f) for f in files)
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


def _verify_variant(out: Path, placed: Mapping[str, str], res: Any, variant: str, recipe: Any,
                    example: tuple[torch.Tensor, ...], reference: list[np.ndarray],
                    tolerances: Mapping[str, Mapping[str, float]] | None, verify: bool) -> Parity:
    """Run one variant with its real runtime (Core ML: structural check only) and compare with PyTorch."""
    tol = tolerance_for(recipe.precision, tolerances)
    path = out / placed[res.files[variant][0]]
    if recipe.format == "coreml":
        from mobilekit.converters.coreml import validate_mlpackage

        try:
            info = validate_mlpackage(path)
        except MobilekitError as exc:
            return Parity(status="fail", runtime="coremltools", tolerance=tol, reason=f"structural check: {exc}")
        functions = [str(f) for f in info.get("functions", [])]
        if functions and variant not in functions:
            return Parity(status="fail", runtime="coremltools", tolerance=tol,
                          reason=f"function {variant!r} missing (has {functions})")
        return Parity(status="not-run", tolerance=tol, reason=f"not run: needs macOS (Core ML runtime); function "
                      f"{variant!r} present in a structurally valid multifunction mlProgram")
    if not verify:
        return Parity.not_run("not run: verify=False")
    from mobilekit.runtime import run_artifact
    from mobilekit.runtime.runners import runtime_name

    options: dict[str, Any] = {}
    ptd = [placed[f] for f in [*res.files[variant][1:], *res.shared] if f.endswith(".ptd")]
    if ptd:
        options["data_path"] = str(out / ptd[0])
    if "signature" in res.entry.get(variant, {}):
        options["signature"] = res.entry[variant]["signature"]
    outputs = run_artifact(path, [t.detach().numpy() for t in example], **options)
    return compare(reference, outputs, tolerance=tol, runtime=runtime_name(path))


def _in_specs(example: tuple[torch.Tensor, ...], model: torch.nn.Module) -> tuple[TensorSpec, ...]:
    from mobilekit.converters._torch_common import input_names_of
    from mobilekit.exporting import _dtype_name

    names = input_names_of(model, len(example))
    return tuple(TensorSpec(name=n, shape=tuple(t.shape), dtype=_dtype_name(t.dtype))
                 for n, t in zip(names, example, strict=True))


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


def _fused_report(recipe: Any, targets: list[str], parts: Sequence[Artifact], out: Path,
                  reason: str | None) -> dict[str, Any]:
    total = sum(a.size_bytes for a in parts)
    return {"recipe": recipe.name, "format": recipe.format, "targets": targets, "policy": "fuse",
            "sharing": None, "shares_weights": False, "fallback": reason, "shared_files": [], "shared_bytes": 0,
            "variants": {(a.adapter or BASE): {"files": [a.path, *a.extra_files], "own_bytes": a.size_bytes,
                                               "parity": a.parity.to_dict()} for a in parts},
            "separate_total_bytes": None, "fused_copy_bytes": max((a.size_bytes for a in parts), default=0),
            "fused_copies": len(parts), "fused_total_bytes": total,
            "notes": [f"adapter_policy separate: {reason}; fused instead"] if reason else []}


def export_with_adapters(spec: LoadedSpec, entry: ModelEntry, *, out_dir: str | Path,
                         cache_dir: str | Path | None = None, workers: int = 1,
                         on_progress: ProgressFn | None = None) -> Manifest:
    """Export a build entry's model with its adapters (``[models.NAME] adapters = {...}``).

    Args:
        spec: the loaded base model with its example inputs, calibration and input names.
        entry: the build entry (targets, formats, precisions, adapters, adapter_policy).
        out_dir: the entry's output directory.
        cache_dir: export cache.
        workers: worker processes for fused exports.
        on_progress: ``on_progress(stage, done, total)`` callback.

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
