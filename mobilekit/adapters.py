"""Adapter packaging: export a base model with its peft LoRA adapters, fused or sharing the base weights.

Adapters are peft LoRAs on any ``nn.Module`` (``mobilekit.lora``): a model with LoRA layers, a
peft ``save_pretrained`` folder, a diffusers LoRA file, or a layout a training package registered.
All are read and checked against the base (target modules, shapes) before any export work.

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

import datetime as _dt
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mobilekit._deps import toolchain_versions
from mobilekit._io import copy_atomic, ensure_writable_dir, write_json_atomic
from mobilekit.artifact import Artifact, Manifest, TensorSpec, sha256_of, size_of
from mobilekit.errors import ConfigError, ParityError
from mobilekit.lora import BASE, LoRA, apply_lora, load_adapters, register_adapter_layout  # noqa: F401

if TYPE_CHECKING:
    from mobilekit.build_config import ModelEntry
    from mobilekit.images import ImageOutput
    from mobilekit.spec import LoadedSpec

ProgressFn = Callable[[str, int, int], None]
SIDECAR = "adapters.json"
SIDECAR_SCHEMA_VERSION = 1
SHARING = {"executorch": "program-data-separation", "tflite": "multi-signature", "coreml": "multifunction"}


def export_adapters(base: torch.nn.Module, adapters: Mapping[str, Any], example_inputs: Sequence[torch.Tensor], *,
                    targets: Sequence[str], out_dir: str | Path, precision: str | Sequence[str] | None = None,
                    formats: Sequence[str] | None = None, policy: str = "separate",
                    calibration: Sequence[Sequence[torch.Tensor]] | None = None, verify: bool = True,
                    tolerances: Mapping[str, Mapping[str, float]] | None = None, cache_dir: str | Path | None = None,
                    workers: int = 1, model_name: str | None = None, input_names: Sequence[str] | None = None,
                    measure_fused: bool = True, parity_inputs: Sequence[Sequence[torch.Tensor]] | None = None,
                    parity_samples: int = 4, on_progress: ProgressFn | None = None,
                    image: ImageOutput | None = None) -> Manifest:
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
        image: as in ``mobilekit.export``: each variant's output images are compared as 8-bit pictures.

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
              "parity_samples": parity_samples, "image": image}
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
               **({"image": common["image"].to_dict()} if common.get("image") else {}),
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
        _run_parity
    from mobilekit.images import ImageParity, compare_images, image_tolerance_for
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
    parities, images = {}, {}
    image = common.get("image")
    for v in variants:
        own = [out / placed[f] for f in res.files[v]]
        if not common["verify"]:
            parities[v] = Parity.not_run("not run: verify=False")
            continue
        parities[v], outputs = _run_parity(own[0], recipe, feeds[v], references[v], common["tolerances"],
                                           own[1:] + [out / placed[f] for f in res.shared],
                                           options=res.entry.get(v, {}))
        if image is not None:
            tol = image_tolerance_for(recipe.precision, common["tolerances"])
            images[v] = (compare_images(references[v], outputs, image=image, tolerance=tol) if outputs is not None
                         else ImageParity(status="not-run", output=image.output, low=image.low, high=image.high,
                                          tolerance=tol, reason=parities[v].reason))
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
            parity=parities[v], images=images.get(v), export_seconds=round(seconds, 3),
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
                         cache_dir: str | Path | None = None, workers: int = 1, parity_samples: int = 4,
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
                           calibration=(spec.load_batches(entry.calibration, "calibration") if entry.calibration
                                        else spec.calibration or None),
                           parity_inputs=(spec.load_batches(entry.parity_inputs, "parity inputs")
                                          if entry.parity_inputs else None), parity_samples=parity_samples,
                           cache_dir=cache_dir, workers=workers,
                           model_name=entry.name, input_names=list(spec.input_names) or None,
                           on_progress=on_progress, image=entry.image or spec.image)
