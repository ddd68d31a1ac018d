"""Per-module parity map: where, along the graph, an artifact's error against PyTorch enters.

The model is wrapped so that the outputs of chosen modules ("taps") become extra graph outputs,
that tapped model is converted with the artifact's own recipe (format, delegate, precision,
calibration) by the same converter, run in its real runtime in a child process, and every tap is
compared with PyTorch's output of the same module, in execution order.

Taps are extra graph outputs: a backend can no longer fuse (or, for int8, requantize) across a
tap boundary the way it does in the shipped artifact, so the tapped artifact's numbers can differ
slightly from the shipped one's. The tapped artifact's final output is compared too, and a
``ParityMap`` says so when it disagrees with the shipped artifact's parity.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilekit._io import write_json_atomic
from mobilekit.errors import BackendUnavailableError, ConfigError, ExportError, RuntimeCrashError
from mobilekit.parity import Parity, compare_many, tolerance_for
from mobilekit.recipe import Recipe

ProgressFn = Callable[[str, int, int], None]

CAVEAT = ("taps are extra graph outputs: fusion (and int8 requantization) across a tap boundary can differ "
          "slightly from the shipped artifact")
_CONTAINERS = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)


@dataclass(frozen=True, kw_only=True)
class ModuleParity:
    """Agreement of one module's output (one tap) with PyTorch, worst over the compared inputs.

    Attributes:
        module: the module's path in the model (``dit.transformer_blocks.2``).
        type: the module's class name.
        shape: shape of its output.
        status: ``pass`` or ``fail`` against the precision's tolerance, or ``error`` when the backend
            could not build or run the model with this module tapped, even alone (``reason`` says why;
            the numbers are None).
        cosine: cosine similarity with PyTorch's output (lowest over the inputs).
        psnr_db: PSNR in dB against the reference's range (lowest over the inputs; 999 = exact).
        max_abs_error: largest absolute difference.
        rel_error: ``||artifact - pytorch|| / ||pytorch||`` (largest over the inputs).
        growth: ``rel_error`` divided by the previous row's (None for the first row or after an exact one).
        reason: what is out of tolerance (``fail``), or the backend's message (``error``).
    """

    module: str
    type: str
    shape: tuple[int, ...]
    status: str
    cosine: float | None
    psnr_db: float | None
    max_abs_error: float | None
    rel_error: float | None
    growth: float | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when this tap is within tolerance."""
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON; a non-finite number (a runtime that returned NaN or inf) becomes null."""
        return {"module": self.module, "type": self.type, "shape": list(self.shape), "status": self.status,
                "ok": self.ok, "cosine": _finite(self.cosine), "psnr_db": _finite(self.psnr_db),
                "max_abs_error": _finite(self.max_abs_error), "rel_error": _finite(self.rel_error),
                "growth": _finite(self.growth), "reason": self.reason}


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


@dataclass(frozen=True, kw_only=True)
class ParityMap:
    """Per-module parity of one recipe against PyTorch, in execution order.

    Attributes:
        recipe: the recipe the tapped model was converted with.
        runtime: the runtime that ran it (``onnxruntime``, ``ai-edge-litert``, ``executorch``).
        tolerance: the floors every tap is held to (``cosine``, ``psnr_db``).
        rows: one ModuleParity per tap, in the order the modules finished in PyTorch's forward.
        final: the tapped artifact's final output(s) against PyTorch.
        first_over: path of the first module over tolerance (status ``fail``), or None when every tap
            that could be built is within it.
        inputs: how many inputs were compared (the example inputs and held-out ones).
        artifact: the shipped artifact this map explains, when there is one.
        shipped: the shipped artifact's recorded parity, when known.
        notes: remarks (the tap caveat, skipped modules, a disagreement with the shipped artifact).
    """

    recipe: Recipe
    runtime: str
    tolerance: dict[str, float]
    rows: tuple[ModuleParity, ...]
    final: Parity
    first_over: str | None
    inputs: int = 1
    artifact: str | None = None
    shipped: Parity | None = None
    notes: tuple[str, ...] = ()
    version: int = field(default=1, compare=False)

    @property
    def passed(self) -> bool:
        """True when no tap is over tolerance and the final output is within it (``error`` rows aside)."""
        return self.first_over is None and self.final.status != "fail"

    @property
    def growth(self) -> list[float | None]:
        """Each row's relative error divided by the previous row's (None where undefined)."""
        return [r.growth for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (``parity_map.json``)."""
        return {"version": self.version, "artifact": self.artifact, "recipe": self.recipe.to_dict(),
                "recipe_name": self.recipe.name, "runtime": self.runtime, "tolerance": dict(self.tolerance),
                "inputs": self.inputs, "first_over": self.first_over, "passed": self.passed,
                "rows": [r.to_dict() for r in self.rows], "growth": [_finite(g) for g in self.growth],
                "final": {k: _finite(v) if isinstance(v, float) else v for k, v in self.final.to_dict().items()},
                "shipped": self.shipped.to_dict() if self.shipped else None, "notes": list(self.notes),
                "caveat": CAVEAT}

    def write_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` to ``path`` atomically (sorted, indented) and return the path."""
        return write_json_atomic(Path(path), self.to_dict())


def default_modules(model: torch.nn.Module) -> list[str]:
    """The block-level modules of ``model``: the children of its first module with several children.

    Wrappers with one child are looked through (``DiTForExport`` → ``dit``); containers
    (``ModuleList``, ``Sequential``, ``ModuleDict``) are expanded into their elements, so a
    transformer gives its embedding, each block, the final norm and the output projections.

    Example:
        >>> default_modules(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
        ['0', '1']
    """
    prefix, mod = "", model
    while True:
        kids = list(mod.named_children())
        if len(kids) != 1:
            break
        prefix, mod = _join(prefix, kids[0][0]), kids[0][1]
    if not list(mod.named_children()):
        return [prefix] if prefix else []
    out: list[str] = []
    for name, child in mod.named_children():
        path = _join(prefix, name)
        if isinstance(child, _CONTAINERS):
            out.extend(_join(path, n) for n, _ in child.named_children())
        else:
            out.append(path)
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def select_modules(model: torch.nn.Module, modules: str | Sequence[str] | None) -> list[str]:
    """Module paths to tap: ``default_modules``, every path matching a regex (``re.search``), or a list.

    Raises:
        ConfigError: a regex that matches no module, or a listed path the model does not have.
    """
    named = {n for n, _ in model.named_modules() if n}
    if modules is None:
        return default_modules(model)
    if isinstance(modules, str):
        try:
            pattern = re.compile(modules)
        except re.error as exc:
            raise ConfigError(f"--modules {modules!r} is not a regular expression: {exc}", where="--modules") from exc
        chosen = [n for n, _ in model.named_modules() if n and pattern.search(n)]
        if not chosen:
            some = ", ".join(default_modules(model)[:6])
            raise ConfigError(f"--modules {modules!r} matches no module of the model", where="--modules",
                              fix=f"match module paths such as {some}")
        return chosen
    missing = [m for m in modules if m not in named]
    if missing:
        raise ConfigError(f"the model has no module {missing[0]!r}", where="modules",
                          fix=f"module paths look like {', '.join(default_modules(model)[:6])}")
    return list(modules)


class _Tapped(torch.nn.Module):
    """Returns ``(outputs..., tap_1, ..., tap_k)``: the model's flat outputs, then the tapped modules' outputs.

    Hooks are registered for one forward only and removed after it, so the wrapped model is left
    as it was. A module called more than once contributes its last call.
    """

    def __init__(self, model: torch.nn.Module, taps: Sequence[str], input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.taps = list(taps)
        self.mobilekit_input_names = list(input_names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from mobilekit.converters._torch_common import flatten_outputs

        stash: dict[str, torch.Tensor] = {}
        handles = [self.model.get_submodule(p).register_forward_hook(_stasher(stash, p)) for p in self.taps]
        try:
            out = flatten_outputs(self.model(*args))
        finally:
            for h in handles:
                h.remove()
        return (*out, *[stash[p] for p in self.taps])


def _stasher(stash: dict[str, Any], path: str) -> Callable[..., None]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        stash[path] = output
    return hook


def _probe(model: torch.nn.Module, candidates: Sequence[str], example: tuple[torch.Tensor, ...]
           ) -> tuple[list[str], list[str]]:
    """Run PyTorch once; keep the candidates whose output is a new float tensor, in the order they finished."""
    order: list[str] = []
    outputs: dict[str, Any] = {}
    calls: dict[str, int] = {}

    def make(path: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if path in order:
                order.remove(path)
            order.append(path)
            outputs[path] = (output, args)
            calls[path] = calls.get(path, 0) + 1
        return hook

    handles = [model.get_submodule(p).register_forward_hook(make(p)) for p in candidates]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in handles:
            h.remove()
    notes, kept, seen = [], [], {id(t) for t in example}
    never = [p for p in candidates if p not in outputs]
    if never:
        notes.append(f"not called in forward, not tapped: {', '.join(never[:8])}" + (" …" if len(never) > 8 else ""))
    skipped = []
    for path in order:
        out, args = outputs[path]
        if not (isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel() > 0):
            skipped.append(f"{path} (returns {type(out).__name__ if not isinstance(out, torch.Tensor) else out.dtype})")
            continue
        if id(out) in seen or any(out is a for a in args if isinstance(a, torch.Tensor)):
            skipped.append(f"{path} (passes a tensor through)")
            continue
        seen.add(id(out))
        kept.append(path)
        if calls[path] > 1:
            notes.append(f"{path} is called {calls[path]} times; its last call is compared")
    if skipped:
        notes.append(f"not tapped (no new float tensor output): {', '.join(skipped[:8])}"
                     + (" …" if len(skipped) > 8 else ""))
    return kept, notes


def _rel_error(ref: np.ndarray, out: np.ndarray) -> float:
    r = np.asarray(ref, dtype=np.float64).ravel()
    a = np.asarray(out, dtype=np.float64).reshape(np.asarray(ref).shape).ravel()
    norm = float(np.linalg.norm(r))
    err = float(np.linalg.norm(a - r))
    if not math.isfinite(err):
        return math.inf
    return err / norm if norm > 0 else (0.0 if err == 0 else math.inf)


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]


def _group_runner(model: torch.nn.Module, names: Sequence[str], example: tuple[torch.Tensor, ...], recipe: Recipe,
                  cal: list[tuple[torch.Tensor, ...]] | None, options: dict[str, Any],
                  feeds: Sequence[tuple[torch.Tensor, ...]], n_final: int
                  ) -> Callable[[list[str]], tuple[list[list[np.ndarray]], str]]:
    """A function converting the model tapped at a group of modules and running it on every feed."""
    from mobilekit.exporting import _convert, _runtime_options
    from mobilekit.runtime import run_artifact_many
    from mobilekit.runtime.runners import runtime_name

    def run(group: list[str]) -> tuple[list[list[np.ndarray]], str]:
        with tempfile.TemporaryDirectory(prefix="mobilekit-parity-map-") as tmp:
            workdir = Path(tmp)
            result = _convert(_Tapped(model, group, names).eval(), example, recipe, workdir, cal, options)
            main = workdir / result.filename
            try:
                actual = run_artifact_many(main, [[t.detach().numpy() for t in f] for f in feeds],
                                           **_runtime_options([workdir / f for f in result.extra_files]))
            except RuntimeCrashError as exc:
                raise ExportError(f"the tapped {recipe.name} artifact failed in its runtime: {exc.message}",
                                  where=recipe.name, fix="tap fewer modules (--modules REGEX)") from exc
        if any(len(a) != n_final + len(group) for a in actual):
            raise ExportError(f"the tapped {recipe.name} artifact returns {len(actual[0])} outputs, expected "
                              f"{n_final + len(group)} ({n_final} final + {len(group)} taps)", where=recipe.name,
                              fix="tap fewer modules (--modules REGEX)")
        return actual, runtime_name(main)
    return run


def _run_in_groups(run: Callable[[list[str]], tuple[list[list[np.ndarray]], str]], taps: list[str]
                   ) -> tuple[dict[str, list[np.ndarray]], list[list[np.ndarray]], dict[str, str], int, str]:
    """All taps in one artifact; where the converter or runtime rejects that, halves of the group, recursively.

    Some backends refuse a graph output in some places (XNNPACK partitions that would pass an input
    through; LiteRT int8 kernels whose output became a float graph output). Splitting keeps every
    tap that works alone; a tap that fails even alone is reported, not dropped.

    Returns:
        Per tap its output on each feed, the final outputs on each feed, the reason per tap that
        failed alone, how many artifacts were built, and the runtime's name.
    """
    from mobilekit.errors import UnsupportedOpError

    got: dict[str, list[np.ndarray]] = {}
    errors: dict[str, str] = {}
    final: list[list[np.ndarray]] | None = None
    runtime, built, first_exc = "", 0, None
    queue = [list(taps)]
    while queue:
        group = queue.pop(0)
        try:
            actual, runtime = run(group)
        except (ExportError, UnsupportedOpError) as exc:
            first_exc = first_exc or exc
            if len(group) == 1:
                errors[group[0]] = _short(exc)
            else:
                queue[:0] = [group[:len(group) // 2], group[len(group) // 2:]]
            continue
        built += 1
        n_final = len(actual[0]) - len(group)
        if final is None:
            final = [a[:n_final] for a in actual]
        for j, path in enumerate(group):
            got[path] = [a[n_final + j] for a in actual]
    if final is None:  # not one tap converts and runs: the model itself fails in this recipe
        raise first_exc if first_exc is not None else ExportError("no tap to convert", where="modules")
    return got, final, errors, built, runtime


def parity_map(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], recipe: Recipe | str, *,
               modules: str | Sequence[str] | None = None,
               calibration: Sequence[Sequence[torch.Tensor]] | None = None,
               parity_inputs: Sequence[Sequence[torch.Tensor]] | None = None, parity_samples: int = 1,
               tolerances: Mapping[str, Mapping[str, float]] | None = None, input_names: Sequence[str] | None = None,
               converter_options: Mapping[str, Any] | None = None, artifact: str | None = None,
               shipped: Parity | None = None, on_progress: ProgressFn | None = None) -> ParityMap:
    """Compare module outputs of ``recipe``'s artifact with PyTorch's, module by module, in execution order.

    The model is converted again with the outputs of the tapped modules as extra graph outputs
    (same converter, recipe and calibration), run in its real runtime in a child process, and each
    tap is held to the precision's tolerance. ``first_over`` names where the error enters.

    Args:
        model: the PyTorch model (not modified; hooks live for one forward only).
        example_inputs: tensors in forward order, as at export.
        recipe: a Recipe or its name (``onnx-int8-dynamic``, ``executorch-xnnpack-fp32``).
        modules: a regex over module paths (``re.search``), a list of paths, or None for the
            block-level modules (``default_modules``). Modules that return no new float tensor are skipped.
        calibration: batches for ``int8-static`` (default: held-out batches, as ``export`` makes them).
        parity_inputs: more inputs to compare on besides the example (default: ``parity_samples - 1``
            held-out batches).
        parity_samples: how many inputs to compare when ``parity_inputs`` is None (>= 1).
        tolerances: per-precision overrides, e.g. ``{"int8-static": {"psnr_db": 12}}``.
        input_names: the inputs' names in the artifact (default: forward's parameter names).
        converter_options: keyword options passed to the converter, as at export.
        artifact: path of the shipped artifact this map explains (recorded only).
        shipped: the shipped artifact's parity; a disagreement with the tapped final output is noted.
        on_progress: ``on_progress(stage, done, total)`` callback.

    Returns:
        A ParityMap.

    Raises:
        ConfigError: no module to tap, a regex matching none, inputs the model rejects.
        BackendUnavailableError: the recipe's runtime cannot run here (Core ML off macOS).
        UnsupportedOpError, ExportError: the tapped model does not convert.

    Example:
        >>> pm = parity_map(model, (x,), "onnx-int8-dynamic")  # doctest: +SKIP
        >>> pm.first_over  # doctest: +SKIP
        'blocks.2'
    """
    from mobilekit.converters._torch_common import check_inputs, input_names_of, prepared_model
    from mobilekit.exporting import _needs_apple, _parity_feeds
    from mobilekit.inputs import CALIBRATION_SEED, held_out_inputs

    recipe = Recipe.parse(recipe) if isinstance(recipe, str) else recipe
    if _needs_apple(recipe):
        import sys

        if sys.platform != "darwin":
            raise BackendUnavailableError(f"{recipe.name} artifacts run only in Apple's Core ML runtime",
                                          where=recipe.name, fix="run the per-module map on a Mac, or map "
                                          "another format to see where the error enters")
    progress = on_progress or (lambda stage, done, total: None)
    example = check_inputs(tuple(example_inputs))
    model = prepared_model(model)
    names = list(input_names) if input_names else input_names_of(model, len(example))
    tol = tolerance_for(recipe.precision, tolerances)

    progress("reference", 0, 4)
    try:
        taps, notes = _probe(model, select_modules(model, modules), example)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"the model rejects the example inputs: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}", where="example_inputs",
                          fix="pass the inputs the artifact was exported with") from exc
    if not taps:
        raise ConfigError("no module to tap: none of the chosen modules returns a float tensor", where="modules",
                          fix="pick modules with --modules REGEX (e.g. 'blocks\\.\\d+$')")
    tapped = _Tapped(model, taps, names).eval()
    with torch.no_grad():
        plain = [t.detach().float().numpy() for t in tapped(*example)]
    n_final = len(plain) - len(taps)
    feeds, references = _parity_feeds(tapped, example, plain, parity_inputs, parity_samples)
    cal = [tuple(b) for b in calibration] if calibration else None
    if cal is None and recipe.precision == "int8-static":
        cal = held_out_inputs(example, 8, seed=CALIBRATION_SEED)

    progress("convert", 1, 4)
    run = _group_runner(model, names, example, recipe, cal, dict(converter_options or {}), feeds, n_final)
    got, final_actual, errors, groups, runtime = _run_in_groups(run, taps)
    if groups > 1:
        notes.append(f"the {recipe.name} converter or runtime rejected the model with all {len(taps)} taps; "
                     f"the taps were split over {groups} artifacts")

    progress("compare", 3, 4)
    final = compare_many([r[:n_final] for r in references], final_actual, tolerance=tol, runtime=runtime)
    kinds = {p: type(model.get_submodule(p)).__name__ for p in taps}
    rows: list[ModuleParity] = []
    prev: float | None = None
    for k, path in enumerate(taps, start=n_final):
        shape = tuple(references[0][k].shape)
        if path in errors:
            rows.append(ModuleParity(module=path, type=kinds[path], shape=shape, status="error", cosine=None,
                                     psnr_db=None, max_abs_error=None, rel_error=None, reason=errors[path]))
            prev = None
            continue
        outs = got[path]
        p = compare_many([[r[k]] for r in references], [[a] for a in outs], tolerance=tol, runtime=runtime)
        rel = (max(_rel_error(r[k], a) for r, a in zip(references, outs, strict=True))
               if p.cosine is not None else None)
        growth = (rel / prev) if rel is not None and prev not in (None, 0.0) and math.isfinite(rel) else None
        rows.append(ModuleParity(module=path, type=kinds[path], shape=shape, status=p.status, cosine=p.cosine,
                                 psnr_db=p.psnr_db, max_abs_error=p.max_abs_error, rel_error=rel, growth=growth,
                                 reason=p.reason))
        prev = rel
    first_over = next((r.module for r in rows if r.status == "fail"), None)
    notes = [CAVEAT, *notes]
    if errors:
        notes.append(f"{len(errors)} module(s) could not be tapped in {recipe.name} even alone (status error): "
                     + ", ".join(errors))
    if first_over is None and final.status == "fail":
        notes.append("every tap is within tolerance but the final output is not: the error enters after the "
                     "last tap (ops between modules or after them); tap finer modules with --modules")
    if shipped is not None and shipped.status in ("pass", "fail") and shipped.status != final.status:
        verb = "passes" if final.status == "pass" else "fails"
        if shipped.inputs != final.inputs:
            notes.append(f"the tapped artifact's final output {verb} on {final.inputs} input(s) while the shipped "
                         f"artifact's parity over {shipped.inputs} is {shipped.status}: compare the same inputs "
                         f"(--parity-samples {shipped.inputs})")
        else:
            notes.append(f"the tapped artifact's final output {verb} while the shipped artifact's parity "
                         f"is {shipped.status}: the taps changed how the graph was fused or quantized; read the map "
                         "as indicative")
    progress("done", 4, 4)
    return ParityMap(recipe=recipe, runtime=runtime, tolerance=tol, rows=tuple(rows), final=final,
                     first_over=first_over, inputs=len(feeds), artifact=artifact, shipped=shipped,
                     notes=tuple(notes))


def locate_artifact(path: str | Path) -> tuple[Any, Any]:
    """The Manifest of the export directory holding ``path``, and ``path``'s Artifact in it.

    ``path`` is an artifact file (or .mlpackage folder) next to a ``manifest.json``, or an export
    directory holding exactly one artifact.

    Raises:
        ConfigError: no such file, no manifest beside it, or a file the manifest does not list.
    """
    from mobilekit.artifact import Manifest

    path = Path(path)
    if not path.exists():
        raise ConfigError("artifact not found", where=str(path),
                          fix="pass an artifact file of an export directory (mobilekit export -o DIR)")
    folder = path if path.is_dir() and (path / "manifest.json").exists() else path.parent
    if not (folder / "manifest.json").exists():
        raise ConfigError("no manifest.json beside the artifact", where=str(folder),
                          fix="pass an artifact inside the directory `mobilekit export` wrote")
    manifest = Manifest.read(folder)
    if path == folder:
        if len(manifest.artifacts) != 1:
            raise ConfigError(f"the export directory holds {len(manifest.artifacts)} artifacts", where=str(folder),
                              fix="name one: " + ", ".join(str(folder / a.path) for a in manifest.artifacts))
        return manifest, manifest.artifacts[0]
    for a in manifest.artifacts:
        if manifest.path_of(a).resolve() == path.resolve():
            return manifest, a
    raise ConfigError("the manifest does not list this file", where=str(path),
                      fix="known artifacts: " + ", ".join(a.path for a in manifest.artifacts))


def spec_candidates(model_name: str, root: Path | None = None) -> list[str]:
    """SPECs that may rebuild the model a manifest names (``Manifest.model``), most likely first."""
    from mobilekit.builtins import BUILTINS

    out = []
    if ":" in model_name:
        out.append(model_name)
    if model_name in BUILTINS:
        out.append(f"builtin:{model_name}")
    try:
        from mobilekit.zoo import ZOO

        if model_name.partition("@")[0] in ZOO:
            out.append(f"zoo:{model_name}")
    except ImportError:
        pass
    for base in ([root] if root else []) + [Path.cwd()]:
        if (base / model_name / "config.json").exists():
            out.append(str(base / model_name))
    return out


def load_model_for(manifest: Any, artifact: Any, spec: str | None = None) -> Any:
    """Rebuild the model of ``artifact`` from ``spec`` or from the manifest's model name; check its inputs.

    Returns:
        A ``mobilekit.spec.LoadedSpec`` whose example inputs match the artifact's input specs.

    Raises:
        ConfigError: the model can't be rebuilt (pass ``--spec``), or its inputs differ from the artifact's.
    """
    from mobilekit.spec import load_spec

    where = str((manifest.root or Path(".")) / "manifest.json")
    tried = [spec] if spec else spec_candidates(manifest.model, manifest.root)
    if not tried:
        raise ConfigError(f"cannot rebuild model {manifest.model!r} from the manifest", where=where,
                          fix="pass --spec SPEC (builtin:NAME, zoo:NAME, package.module:function or a model folder)"
                              " that builds the exported model with its weights")
    shapes = [(tuple(s.shape)) for s in artifact.inputs]
    inputs = ([f"{s.name}={'x'.join(map(str, s.shape))}:{s.dtype}" for s in artifact.inputs]
              if tried[0] and Path(tried[0]).is_dir() else None)
    loaded = load_spec(tried[0], inputs=inputs)
    got = [tuple(t.shape) for t in loaded.example_inputs]
    if got != shapes:
        raise ConfigError(f"{tried[0]} gives inputs of shapes {got}, the artifact takes {shapes}", where=where,
                          fix="pass --spec for the model this artifact was exported from")
    return loaded


def artifact_parity(path: str | Path, *, spec: str | None = None, parity_samples: int | None = None,
                    tolerances: Mapping[str, Mapping[str, float]] | None = None) -> Parity:
    """Run the parity check of a shipped artifact again, in its real runtime, against the rebuilt model.

    Args:
        path: an artifact file inside an export directory (with ``manifest.json``).
        spec: the SPEC that builds the exported model (default: from the manifest's model name).
        parity_samples: inputs to compare (default: as many as at export, so the same inputs).
        tolerances: per-precision overrides.

    Raises:
        ConfigError: see ``locate_artifact`` and ``load_model_for``.
    """
    from mobilekit.converters._torch_common import flatten_outputs
    from mobilekit.exporting import _parity_feeds, _verify

    manifest, art = locate_artifact(path)
    loaded = load_model_for(manifest, art, spec)
    model, example = loaded.model.eval(), loaded.example_inputs
    with torch.no_grad():
        reference = [t.detach().float().numpy() for t in flatten_outputs(model(*example))]
    feeds, references = _parity_feeds(model, example, reference, None, parity_samples or max(1, art.parity.inputs))
    root = manifest.root or Path(".")
    return _verify(manifest.path_of(art), art.recipe, feeds, references, tolerances,
                   [root / f for f in art.extra_files])


def artifact_parity_map(path: str | Path, *, spec: str | None = None, modules: str | Sequence[str] | None = None,
                        parity_samples: int | None = None, tolerances: Mapping[str, Mapping[str, float]] | None = None,
                        on_progress: ProgressFn | None = None) -> ParityMap:
    """``parity_map`` for a shipped artifact: its recipe from the manifest, its model rebuilt from ``spec``.

    Args:
        path: an artifact file inside an export directory (with ``manifest.json``).
        spec: the SPEC that builds the exported model (default: from the manifest's model name).
        modules: as in ``parity_map``.
        parity_samples: inputs to compare (the example first, then held-out ones; default: as many as the
            shipped artifact's parity compared, so the same inputs).
        tolerances: per-precision overrides.
        on_progress: ``on_progress(stage, done, total)`` callback.

    Raises:
        ConfigError: see ``locate_artifact`` and ``load_model_for``.

    Example:
        >>> pm = artifact_parity_map("out/dit-tiny-onnx-int8-dynamic.onnx")  # doctest: +SKIP
    """
    manifest, art = locate_artifact(path)
    loaded = load_model_for(manifest, art, spec)
    return parity_map(loaded.model, loaded.example_inputs, art.recipe, modules=modules,
                      calibration=loaded.calibration or None,
                      parity_samples=parity_samples or max(1, art.parity.inputs), tolerances=tolerances,
                      input_names=loaded.input_names or None, artifact=art.path, shipped=art.parity,
                      on_progress=on_progress)
