"""The export pipeline: one PyTorch model → the artifacts each target ships, checked against PyTorch.

Stages, in order, each producing the next stage's input:
  plan (targets × formats × precisions → recipes, deduplicated across targets; what no target can
  get is refused, see mobilekit.plan) → size checks (TFLite's 2 GB) → reference run + trace →
  per recipe: cache lookup | convert → verify parity in a child process → cache commit →
  copy into the output directory → manifest (with the plan).

The caller's model is never modified and, in eval mode, never copied: at DiT-XL/2 size a copy
is 3 GB. Outputs that are not tensors (Hugging Face ``ModelOutput``, dicts, nested tuples) are
flattened by a thin wrapper before any exporter sees the model.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import importlib
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilekit._deps import toolchain_versions
from mobilekit._io import copy_atomic, ensure_writable_dir
from mobilekit.artifact import Artifact, Manifest, TensorSpec, sha256_of, size_of
from mobilekit.cache import ExportCache, cache_key, inputs_fingerprint, model_fingerprint
from mobilekit.converters._torch_common import flatten_outputs as _flatten_outputs
from mobilekit.errors import ConfigError, ExportError, MobilekitError, ParityError, RuntimeCrashError
from mobilekit.inputs import CALIBRATION_SEED, PARITY_SEED, held_out_inputs, same_batch
from mobilekit.parity import Parity, compare_many, tolerance_for
from mobilekit.images import ImageOutput, ImageParity, compare_images, image_tolerance_for
from mobilekit.sampling import (SAMPLE_TOLERANCES, Sampling, SamplingParity, artifact_trajectory,
                                compare_trajectories, reference_trajectory)
from mobilekit.plan import plan_exports
from mobilekit.recipe import Recipe

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


def _plain_outputs(out: Any) -> bool:
    """Whether ``out`` is a tensor or a flat tuple/list of tensors (what every exporter takes)."""
    return isinstance(out, torch.Tensor) or (isinstance(out, (tuple, list)) and bool(out)
                                             and all(isinstance(t, torch.Tensor) for t in out))


class TensorOutputs(torch.nn.Module):
    """Returns a model's outputs as a flat tuple of tensors (a single tensor when there is one).

    ``mobilekit_input_names`` keeps the wrapped model's input names for the artifact, since this
    ``forward`` takes ``*args``.
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.mobilekit_input_names = list(input_names)

    def forward(self, *args: torch.Tensor) -> Any:
        flat = _flatten_outputs(self.model(*args))
        return flat[0] if len(flat) == 1 else tuple(flat)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _convert(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], recipe: Recipe, workdir: Path,
             calibration: list[tuple[torch.Tensor, ...]] | None, options: dict[str, Any]) -> Any:
    from mobilekit.converters import get_converter
    from mobilekit.converters.base import unsupported_op_error

    converter = get_converter(recipe.format)
    try:
        return converter.convert(model, example_inputs, recipe, workdir, calibration=calibration, **options)
    except MobilekitError:
        raise
    except Exception as exc:
        program = None
        try:
            program = torch.export.export(model, example_inputs, strict=False)
        except Exception:
            pass
        mapped = unsupported_op_error(exc, backend=recipe.name, program=program)
        if mapped is not None:
            raise mapped from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{recipe.name} export failed: {type(exc).__name__}: {first}", where=recipe.name,
                          fix="run with MOBILEKIT_DEBUG=1 for the traceback, or choose another recipe") from exc


def _verify(path: Path, recipe: Recipe, feeds: Sequence[tuple[torch.Tensor, ...]],
            references: Sequence[list[np.ndarray]], tolerances: Mapping[str, Mapping[str, float]] | None,
            extra: Sequence[Path], io: tuple[list[Any] | None, list[Any] | None] = (None, None),
            options: Mapping[str, Any] | None = None) -> Parity:
    """Run the artifact on every parity input with its real runtime in a child process; compare with PyTorch.

    ``options`` go to the runner besides those ``extra`` implies (e.g. a TFLite ``signature``).
    """
    return _run_parity(path, recipe, feeds, references, tolerances, extra, io, options)[0]


def _run_parity(path: Path, recipe: Recipe, feeds: Sequence[tuple[torch.Tensor, ...]],
                references: Sequence[list[np.ndarray]], tolerances: Mapping[str, Mapping[str, float]] | None,
                extra: Sequence[Path], io: tuple[list[Any] | None, list[Any] | None] = (None, None),
                options: Mapping[str, Any] | None = None) -> tuple[Parity, list[list[np.ndarray]] | None]:
    """``_verify`` that also returns the artifact's outputs per input (None when it could not run here)."""
    from mobilekit.runtime import run_artifact_many

    tol = tolerance_for(recipe.precision, tolerances)
    if _needs_apple(recipe):
        if sys.platform != "darwin":
            reason = "not run: needs macOS (Core ML runtime)"
            if recipe.format == "coreml":
                try:
                    from mobilekit.converters.coreml import validate_mlpackage

                    # off macOS the package can't run, but its declared inputs and outputs can still be
                    # held to the model's: names and shapes an app will bind to
                    info = validate_mlpackage(path, inputs=io[0], outputs=io[1])
                    reason += (f"; structurally valid mlProgram with {info.get('op_count', '?')} ops"
                               + (", inputs and outputs match the model's" if io[0] is not None else ""))
                except MobilekitError as exc:
                    return Parity(status="fail", runtime="coremltools", tolerance=tol,
                                  reason=f"structural check failed: {exc}"), None
                except ImportError:
                    pass
            return Parity(status="not-run", tolerance=tol, reason=reason), None
    try:
        outputs = run_artifact_many(path, [[t.detach().numpy() for t in feed] for feed in feeds],
                                    **{**_runtime_options(extra), **(options or {})})
    except RuntimeCrashError as exc:
        raise ExportError(f"the {recipe.name} artifact failed in its runtime during the parity check: {exc.message}",
                          where=recipe.name, fix="choose another precision or format for this model, or pass "
                          "--no-verify to keep the artifact unchecked") from exc
    from mobilekit.runtime.runners import runtime_name

    return compare_many(references, outputs, tolerance=tol, runtime=runtime_name(path)), outputs


def _build_one(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], recipe: Recipe, workdir: Path,
               calibration: list[tuple[torch.Tensor, ...]] | None, feeds: Sequence[tuple[torch.Tensor, ...]],
               references: Sequence[list[np.ndarray]], verify: bool,
               tolerances: Mapping[str, Mapping[str, float]] | None,
               options: dict[str, Any], sampling: Sampling | None = None,
               sample_ref: list[np.ndarray] | None = None, image: ImageOutput | None = None) -> dict[str, Any]:
    """Convert and verify one recipe inside ``workdir``; return the cache record. Runs in a worker too."""
    start = time.perf_counter()
    result = _convert(model, example_inputs, recipe, workdir, calibration, options)
    main = workdir / result.filename
    extra = [workdir / f for f in result.extra_files]
    if not main.exists():
        raise ExportError(f"the {recipe.format} converter wrote no {result.filename}", where=recipe.name)
    t0 = time.perf_counter()
    io = ([(n, tuple(t.shape)) for n, t in zip(result.input_names, example_inputs)] if result.input_names else None,
          [(n, tuple(r.shape)) for n, r in zip(result.output_names, references[0])]
          if result.output_names and len(result.output_names) == len(references[0]) else None)
    parity, outputs = (_run_parity(main, recipe, feeds, references, tolerances, extra, io) if verify
                       else (Parity.not_run("not run: --no-verify"), None))
    images = None
    if image is not None:
        tol = image_tolerance_for(recipe.precision, tolerances)
        images = (compare_images(references, outputs, image=image, tolerance=tol) if outputs is not None
                  else ImageParity(status="not-run", output=image.output, low=image.low, high=image.high,
                                   tolerance=tol, reason=parity.reason)).to_dict()
    stages = dict(result.stages)
    stages["validate"] = time.perf_counter() - t0
    sampled = None
    if verify and sampling is not None and sample_ref is not None:
        t1 = time.perf_counter()
        sampled = _verify_sampling(main, recipe, example_inputs, sampling, sample_ref, extra).to_dict()
        stages["sample"] = time.perf_counter() - t1
    return {"filename": result.filename, "extra_files": list(result.extra_files), "stages": stages,
            "input_names": list(result.input_names), "output_names": list(result.output_names),
            "input_dtypes": result.input_dtypes, "notes": list(result.notes), "parity": parity.to_dict(),
            "op_precisions": result.op_precisions,
            "sampling": sampled, "images": images,
            "export_seconds": time.perf_counter() - start, "sha256": sha256_of(main),
            "size_bytes": size_of(main) + sum(size_of(p) for p in extra)}


def export(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *, targets: Sequence[str],
           out_dir: str | Path, precision: str | Sequence[str] | None = None, formats: Sequence[str] | None = None,
           calibration: Sequence[Sequence[torch.Tensor]] | None = None, verify: bool = True,
           tolerances: Mapping[str, Mapping[str, float]] | None = None, use_cache: bool = True,
           cache_dir: str | Path | None = None, workers: int = 1, model_name: str | None = None,
           input_names: Sequence[str] | None = None, adapter_policy: str = "fuse",
           converter_options: Mapping[str, Any] | None = None, on_progress: ProgressFn | None = None,
           parity_inputs: Sequence[Sequence[torch.Tensor]] | None = None, parity_samples: int = 4,
           sampling: Sampling | None = None, image: ImageOutput | None = None) -> Manifest:
    """Export ``model`` for each target and return the manifest written to ``out_dir/manifest.json``.

    Args:
        model: the PyTorch model (not modified).
        example_inputs: tensors in forward order; they fix the exported shapes and drive the parity check.
        targets: target names from ``profiles/`` (e.g. ``["iphone-15-pro", "pixel-8"]``).
        out_dir: where artifacts and ``manifest.json`` go.
        precision: ``fp32``, ``fp16``, ``int8-weight``, ``int8-dynamic``, ``int8-static``, or ``int8`` (the
            first int8 variant each format builds), or a list of them (each is built); None: each target's
            default recipe's precision.
        formats: formats to build for every target; None: each target's default recipe only.
        calibration: input batches for ``int8-static`` (default: 8 batches synthesized like the example
            inputs from seeds the parity inputs don't use). Must not contain a parity input.
        verify: run every artifact with its runtime and fail when out of tolerance.
        tolerances: per-precision overrides, e.g. ``{"int8-static": {"cosine": 0.9}}``.
        use_cache: serve unchanged exports from the content-addressed cache.
        cache_dir: cache location (default ``$MOBILEKIT_CACHE_DIR`` or ``~/.cache/mobilekit``).
        workers: worker processes for independent artifacts (1: in this process).
        model_name: name used in file names and the manifest (default: the class name).
        input_names: names of the inputs (default: forward's parameter names).
        adapter_policy: ``fuse`` or ``separate``.
        converter_options: keyword options passed to every converter (e.g. ``external_weights``).
        on_progress: ``on_progress(stage, done, total)`` callback.
        parity_inputs: input batches the artifacts are compared on, besides the example inputs
            (default: ``parity_samples - 1`` held-out batches like the example inputs).
        parity_samples: how many inputs parity compares when ``parity_inputs`` is None (>= 1).
        sampling: for a diffusion denoiser, also run this sampling loop with every artifact and with
            PyTorch from the same noise and compare the final samples (``Artifact.sampling``).
        image: for an image-to-image model, which output is an image and its value range; parity then
            also compares the output images as 8-bit pictures (``Artifact.images``).

    Returns:
        The Manifest (also written as ``out_dir/manifest.json``).

    Raises:
        ConfigError: unknown target, unsupported recipe, inputs the model rejects, unwritable out_dir.
        UnsupportedOpError: a backend can't lower an op (names the op and module path).
        ParityError: an artifact is out of tolerance (with its numbers), unless ``verify=False``.

    Example:
        >>> m = export(model, (x,), targets=["pixel-8"], out_dir="out")  # doctest: +SKIP
    """
    out = ensure_writable_dir(Path(out_dir))
    example = tuple(example_inputs)
    if not example or not all(isinstance(t, torch.Tensor) for t in example):
        raise ConfigError("example_inputs must be a non-empty sequence of tensors", where="example_inputs")
    export_plan = plan_exports(targets, formats=formats, precision=precision, adapter_policy=adapter_policy)
    plans = export_plan.builds
    for line in export_plan.describe():
        logger.info("plan: %s", line)
    name = model_name or type(model).__name__
    progress = on_progress or (lambda stage, done, total: None)
    total = len(plans)
    progress("trace", 0, total)

    from mobilekit.converters._torch_common import input_names_of, prepared_model

    model = prepared_model(model)  # no copy of an eval-mode model: real sizes can't afford two
    float_model = model  # before any output wrapper: module paths in messages are the user's
    _check_fits(model, plans)
    try:
        with torch.no_grad():
            raw_out = model(*example)
        reference_t = _flatten_outputs(raw_out)
    except MobilekitError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{tuple(t.shape)}:{_dtype_name(t.dtype)}" for t in example)
        raise ConfigError(f"the model rejects the example inputs ({shapes}): {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}", where="example_inputs",
                          fix="pass inputs of the shapes and dtypes forward expects (--input)") from exc
    reference = [t.detach().float().numpy() for t in reference_t]
    names = list(input_names) if input_names else input_names_of(model, len(example))
    if not _plain_outputs(raw_out):
        # Hugging Face ModelOutput, dicts, nested tuples: exporters want a flat tuple of tensors.
        model = TensorOutputs(model, names)
    try:
        graph_code = torch.export.export(model, example, strict=False).graph_module.code
    except Exception as exc:
        raise ExportError(f"torch.export cannot trace the model: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}", where=name,
                          fix="make forward traceable (no data-dependent control flow) or wrap it") from exc

    feeds, references = _parity_feeds(model, example, reference, parity_inputs, parity_samples)
    cal = [tuple(b) for b in calibration] if calibration else None
    if cal is None and any(p.recipe.precision == "int8-static" for p in plans):
        # never the example inputs: int8 scales fitted on the parity inputs would make parity in-sample
        cal = held_out_inputs(example, 8, seed=CALIBRATION_SEED)
    elif cal is not None:
        for b, batch in enumerate(cal):
            for j, feed in enumerate(feeds):
                if same_batch(batch, feed):
                    raise ConfigError(f"calibration batch {b} is also parity input {j}: its parity would be "
                                      "in-sample", where="calibration",
                                      fix="calibrate on data the parity check does not use (other samples)")
    toolchain = toolchain_versions()
    model_fp = model_fingerprint(model, graph_code)
    inputs_fp = inputs_fingerprint(example, cal)
    options_fp = {"parity_inputs": inputs_fingerprint(example, feeds),
                  "sampling": sampling.to_dict() if sampling else None,
                  **({"image": image.to_dict()} if image else {})}
    options = dict(converter_options or {})
    cache = ExportCache(Path(cache_dir) if cache_dir else None)

    records: dict[int, tuple[dict[str, Any], Path, bool]] = {}
    to_build = []
    for i, plan in enumerate(plans):
        plan.key = cache_key(model_fp, inputs_fp, plan.recipe.to_dict(), toolchain,
                             {**options, **options_fp, "verify": verify, "tolerances": tolerances,
                              "converter": _converter_fingerprint(plan.recipe.format)})
        hit = cache.lookup(plan.key) if use_cache else None
        if hit is not None and sha256_of(cache.entry(plan.key) / hit["filename"]) != hit["sha256"]:
            logger.warning("cache entry %s was modified; rebuilding", plan.key)
            shutil.rmtree(cache.entry(plan.key), ignore_errors=True)
            hit = None
        if hit is not None:
            records[i] = (hit, cache.entry(plan.key), True)
        else:
            to_build.append(i)

    simulated, floats = (_preflight_int8(float_model, plans, to_build, feeds, references, cal, tolerances)
                         if verify else ({}, {}))

    # the reference loop runs the model N times: only worth it when an artifact is built, not served
    sample_ref = (reference_trajectory(model, example, sampling)
                  if sampling is not None and verify and to_build else None)

    def options_for(i: int) -> dict[str, Any]:  # only the converters that can keep modules float get them
        return {**options, "float_modules": floats[i]} if i in floats else options

    def finish(i: int, record: dict[str, Any], workdir: Path) -> None:
        parity = Parity(**record["parity"])
        if parity.status == "fail":
            shutil.rmtree(workdir, ignore_errors=True)
            raise ParityError(f"{plans[i].recipe.name} differs from PyTorch: {parity.reason}; max abs error "
                              f"{parity.max_abs_error:.3g}", where=plans[i].recipe.name,
                              fix="loosen the tolerance (--tolerance), use calibration data, choose a higher "
                                  "precision, or pass --no-verify")
        if i in simulated:
            record["notes"] = [*record["notes"], simulated[i]]
        records[i] = (record, cache.commit(workdir, plans[i].key, record), False)

    done = len(records)
    progress("cached", done, total)
    if workers > 1 and len(to_build) > 1:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            jobs = {}
            for i in to_build:
                wd = cache.new_workdir()
                jobs[pool.submit(_build_one, model, example, plans[i].recipe, wd, cal, feeds, references, verify,
                                 tolerances, options_for(i), sampling, sample_ref, image)] = (i, wd)
            for fut in cf.as_completed(jobs):
                i, wd = jobs[fut]
                try:
                    finish(i, fut.result(), wd)
                except BaseException:
                    shutil.rmtree(wd, ignore_errors=True)
                    raise
                done += 1
                progress(plans[i].recipe.name, done, total)
    else:
        for i in to_build:
            progress(plans[i].recipe.name, done, total)
            wd = cache.new_workdir()
            try:
                finish(i, _build_one(model, example, plans[i].recipe, wd, cal, feeds, references, verify,
                                     tolerances, options_for(i), sampling, sample_ref, image), wd)
            except BaseException:
                shutil.rmtree(wd, ignore_errors=True)
                raise
            done += 1
            progress(plans[i].recipe.name, done, total)

    artifacts = []
    for i, plan in enumerate(plans):
        record, entry, cached = records[i]
        suffix = plan.recipe.suffix
        dest_name = f"{name}-{plan.recipe.name}" + (f"-{plan.recipe.deployment_target.lower()}"
                                                    if plan.recipe.deployment_target else "") + suffix
        sha256 = record["sha256"]
        extras = []
        if plan.recipe.format == "onnx" and record["extra_files"]:
            # An .onnx names its weight file inside: the placed copy must name the placed data file.
            from mobilekit.converters.onnx import relink_external_data

            extra_dest = f"{dest_name}.data"
            _place(entry / record["extra_files"][0], out / extra_dest)
            relink_external_data(entry / record["filename"], out / dest_name, extra_dest)
            sha256 = sha256_of(out / dest_name)
            extras.append(extra_dest)
        else:
            _place(entry / record["filename"], out / dest_name)
            for extra in record["extra_files"]:
                extra_dest = f"{name}-{plan.recipe.name}-{Path(extra).name}"
                _place(entry / extra, out / extra_dest)
                extras.append(extra_dest)
        in_dtypes = record.get("input_dtypes") or [_dtype_name(t.dtype) for t in example]
        out_names = record["output_names"] or [f"output_{k}" for k in range(len(reference))]
        artifacts.append(Artifact(
            path=dest_name, targets=tuple(plan.targets), recipe=plan.recipe, sha256=sha256,
            size_bytes=record["size_bytes"],
            inputs=tuple(TensorSpec(name=(record["input_names"] or names)[k] if k < len(record["input_names"] or names)
                                    else f"input_{k}", shape=tuple(t.shape), dtype=in_dtypes[k])
                         for k, t in enumerate(example)),
            outputs=tuple(TensorSpec(name=out_names[k] if k < len(out_names) else f"output_{k}", shape=tuple(r.shape),
                                     dtype="float32") for k, r in enumerate(reference)),
            parity=Parity(**record["parity"]), export_seconds=round(record["export_seconds"], 3),
            stages={k: round(v, 4) for k, v in record["stages"].items()}, toolchain=toolchain, cache_key=plan.key,
            cached=cached, extra_files=tuple(extras), notes=tuple(record["notes"]),
            sampling=SamplingParity(**record["sampling"]) if record.get("sampling") else None,
            images=ImageParity(**record["images"]) if record.get("images") else None,
            op_precisions=record.get("op_precisions")))
    manifest = Manifest(model=name, artifacts=tuple(artifacts), toolchain=toolchain, plan=export_plan.to_dict(),
                        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), root=out)
    manifest.write(out)
    progress("done", total, total)
    return manifest


def _needs_apple(recipe: Recipe) -> bool:
    """Whether the artifact needs Apple's Core ML runtime (a .mlpackage, or a .pte with the Core ML delegate)."""
    return recipe.format == "coreml" or recipe.delegate == "coreml"


def _runtime_options(extra: Sequence[Path]) -> dict[str, Any]:
    """Runner options for an artifact's extra files: a separate ExecuTorch weights file (.ptd)."""
    ptd = [p for p in extra if p.suffix == ".ptd"]
    return {"data_path": str(ptd[0])} if ptd else {}


def _verify_sampling(path: Path, recipe: Recipe, example: tuple[torch.Tensor, ...], sampling: Sampling,
                     reference: list[np.ndarray], extra: Sequence[Path]) -> SamplingParity:
    """The sampling loop with the artifact in its runtime, compared with PyTorch's loop."""
    tol = SAMPLE_TOLERANCES[recipe.precision]
    if _needs_apple(recipe) and sys.platform != "darwin":
        return SamplingParity(status="not-run", steps=sampling.steps, scheduler=sampling.scheduler, tolerance=tol,
                              reason="not run: needs macOS (Core ML runtime)")
    try:
        got = artifact_trajectory(path, example, sampling, _runtime_options(extra))
    except RuntimeCrashError as exc:
        return SamplingParity(status="fail", steps=sampling.steps, scheduler=sampling.scheduler, tolerance=tol,
                              reason=f"the runtime failed in the sampling loop: {exc.message}")
    return compare_trajectories(reference, got, sampling=sampling, tolerance=tol)


def _parity_feeds(model: torch.nn.Module, example: tuple[torch.Tensor, ...], reference: list[np.ndarray],
                  parity_inputs: Sequence[Sequence[torch.Tensor]] | None,
                  samples: int) -> tuple[list[tuple[torch.Tensor, ...]], list[list[np.ndarray]]]:
    """The inputs parity compares (the example first) and PyTorch's outputs on each."""
    if parity_inputs is None and (not isinstance(samples, int) or samples < 1):
        raise ConfigError(f"parity_samples must be an integer >= 1, got {samples!r}", where="parity_samples")
    extra = ([tuple(b) for b in parity_inputs] if parity_inputs is not None
             else held_out_inputs(example, samples - 1, seed=PARITY_SEED))
    feeds, references = [example], [reference]
    for j, feed in enumerate(extra, 1):
        if len(feed) != len(example) or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(feed, example)):
            got = ", ".join(f"{tuple(t.shape)}:{_dtype_name(t.dtype)}" for t in feed)
            raise ConfigError(f"parity input {j} ({got}) does not match the example inputs' shapes and dtypes",
                              where="parity_inputs", fix="give every parity batch the example inputs' shapes")
        try:
            with torch.no_grad():
                out = _flatten_outputs(model(*feed))
        except Exception as exc:
            raise ConfigError(f"the model rejects parity input {j}: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]}", where="parity_inputs",
                              fix="pass parity inputs the model accepts (--parity-inputs FILE), or "
                                  "parity_samples=1 to check the example inputs only") from exc
        feeds.append(feed)
        references.append([t.detach().float().numpy() for t in out])
    return feeds, references


def _preflight_int8(model: torch.nn.Module, plans: Sequence[Any], to_build: Sequence[int],
                    feeds: Sequence[tuple[torch.Tensor, ...]], references: Sequence[list[np.ndarray]],
                    calibration: list[tuple[torch.Tensor, ...]] | None,
                    tolerances: Mapping[str, Mapping[str, float]] | None
                    ) -> tuple[dict[int, str], dict[int, tuple[str, ...]]]:
    """Refuse, before any conversion, an int8 recipe the model loses its floor on in PyTorch itself.

    When the whole model misses the floor and the recipe's converter can leave named modules in
    float, the fewest most-sensitive modules that make the simulation hold it (within
    ``quant_sim.MAX_FLOAT_FRACTION`` of the weights) are kept float instead of refusing.

    Returns:
        A note per simulated recipe (recorded with its artifact: for Core ML, which cannot run off
        macOS, the simulation is the only numeric check the artifact gets here), and the module
        paths to keep float per recipe that needs them.
    """
    from mobilekit.converters import get_converter
    from mobilekit.quant_sim import MAX_FLOAT_FRACTION, float_fallback, simulate

    notes: dict[int, str] = {}
    floats: dict[int, tuple[str, ...]] = {}
    done: dict[tuple[str, str], Any] = {}
    for i in to_build:
        recipe = plans[i].recipe
        if not recipe.precision.startswith("int8"):
            continue
        key = (recipe.format, recipe.precision, recipe.delegate)
        tol = tolerance_for(recipe.precision, tolerances)
        if key not in done:
            sim = simulate(model, feeds, references, fmt=recipe.format, precision=recipe.precision,
                           tolerance=tol, calibration=calibration)
            fallback = None
            converter = get_converter(recipe.format)
            # a converter whose delegates differ says which can keep modules float (ExecuTorch: XNNPACK only)
            can_keep = (recipe.precision in getattr(converter, "float_module_precisions", ())
                        and (recipe.delegate is None
                             or recipe.delegate in getattr(converter, "float_module_delegates", {recipe.delegate})))
            if sim is not None and not sim.passed and can_keep:
                fallback = float_fallback(model, feeds, references, fmt=recipe.format, precision=recipe.precision,
                                          tolerance=tol, calibration=calibration)
            done[key] = (sim, fallback, can_keep)
        sim, fallback, can_keep = done[key]
        if sim is None:
            continue
        if fallback is not None:
            floats[i] = fallback.modules
            notes[i] = (f"PyTorch int8 simulation ({sim.scheme}) of the whole model misses the floor on "
                        f"{sim.parity.reason}; instead, {fallback.describe()}")
            continue
        if not sim.passed:
            tried = (f". Keeping the most sensitive modules in float, within {100 * MAX_FLOAT_FRACTION:.0f}% of "
                     "the weights, does not hold it either" if can_keep else "")
            raise ConfigError(sim.explain() + tried, where=f"{'/'.join(plans[i].targets)}/{recipe.name}",
                              fix="choose a higher precision (fp16/fp32) for this model, calibrate on "
                                  "representative data (int8-static), loosen the tolerance (--tolerance), "
                                  "or pass --no-verify to build it unchecked")
        notes[i] = (f"PyTorch int8 simulation ({sim.scheme}): cosine {sim.parity.cosine:.6f}, "
                    f"PSNR {sim.parity.psnr_db:.1f} dB")
    return notes, floats


def _check_fits(model: torch.nn.Module, plans: Sequence[Any]) -> None:
    """Refuse, before any work, a recipe whose format can't hold this model (TFLite's 2 GB flatbuffer)."""
    from mobilekit.converters import get_converter

    for plan in plans:
        check = getattr(get_converter(plan.recipe.format), "check_model", None)
        fits = check(model, plan.recipe) if check else True
        if not fits:
            raise ConfigError(fits.reason, where=f"{'/'.join(plan.targets)}/{plan.recipe.name}",
                              fix=f"drop {plan.recipe.format} for this model, or use {' or '.join(fits.supported)}")


def _converter_fingerprint(fmt: str) -> str:
    """Hash of the converter's source files, so a changed converter never serves stale exports.

    ``quant_sim.py`` counts too: it picks the modules an int8 recipe keeps in float.
    """
    import hashlib

    from mobilekit.converters import REGISTRY

    module = importlib.import_module(REGISTRY[fmt].split(":")[0])
    h = hashlib.sha256()
    for path in sorted({Path(module.__file__ or ""), *Path(module.__file__ or "").parent.glob("_*.py"),
                        Path(__file__).parent / "parity.py", Path(__file__).parent / "quant_sim.py"}):
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _place(src: Path, dest: Path) -> None:
    """Put a cached file into the output directory (hard link when possible, else an atomic copy)."""
    if dest.exists() and src.is_file() and dest.is_file() and dest.stat().st_ino == src.stat().st_ino:
        return
    if src.is_file():
        tmp = dest.parent / f".{dest.name}.link-{os.getpid()}"
        try:
            tmp.unlink(missing_ok=True)
            tmp.hardlink_to(src)
            tmp.replace(dest)
            return
        except OSError:
            tmp.unlink(missing_ok=True)
    copy_atomic(src, dest)
