"""Core ML converter: PyTorch → ``torch.export`` → coremltools ML Program → ``.mlpackage``.

Path choice: the model is captured with ``torch.export`` (the frontend coremltools develops
going forward, and the one whose graph carries ``nn_module_stack``, so an unsupported op is
reported with the module path that calls it). When coremltools' torch.export frontend lacks
an op, the converter retries once through ``torch.jit.trace`` (coremltools' older, broader
TorchScript frontend) and records that in the notes; if both fail the first error is raised
as an ``UnsupportedOpError`` naming the op and module path.

Precisions:

* ``fp32``: float32 compute.
* ``fp16``: float16 compute (the Neural Engine's precision); inputs and outputs stay float32.
* ``int8-weight``: fp16 compute with per-channel symmetric int8 weights
  (``coremltools.optimize.coreml.linear_quantize_weights``), needs iOS16+.
* ``int8-static``: int8 activations calibrated on samples plus int8 weights
  (``linear_quantize_activations``), needs iOS17+. Calibration *runs* the model with the Core
  ML runtime, which exists only on macOS, so it is refused elsewhere.
* ``int8-dynamic``: refused; Core ML has no run-time activation quantization.

Core ML cannot run on Linux (no ``libcoremlpython``), so ``validate_mlpackage`` checks a
package structurally there; ``save_multifunction`` merges packages that share weights (used for
LoRA adapters over one base).
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mobilekit.converters._torch_common import input_names_of, prepared_model
from mobilekit.converters.base import ConvertResult, StageTimer, Support, ensure_supported, supports_from_table
from mobilekit._deps import require
from mobilekit._io import atomic_path
from mobilekit.errors import ConfigError, ExportError, UnsupportedOpError
from mobilekit.recipe import Recipe

logger = logging.getLogger(__name__)

PRECISIONS: dict[str | None, tuple[str, ...]] = {None: ("fp32", "fp16", "int8-weight", "int8-static")}
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
DEFAULT_COMPUTE_UNITS = "ALL"
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
# Smallest weight (in elements) that int8 quantization touches; smaller ones (biases, norms) stay fp16.
MIN_QUANTIZED_WEIGHT_ELEMENTS = 256
# Lowest OS major version (iOS numbering) each precision needs in an ML Program.
_MIN_IOS = {"fp32": 15, "fp16": 15, "int8-weight": 16, "int8-static": 17}
# macOS / tvOS / watchOS / visionOS versions with the same Core ML spec as iOS N.
_OS_OFFSET = {"ios": 0, "tvos": 0, "macos": -(13 - 16), "watchos": -(9 - 16), "visionos": -(1 - 17)}
_TARGET_RE = re.compile(r"^(iOS|macOS|tvOS|watchOS|visionOS)(\d+)(?:_\d+)?$")
_UNSUPPORTED_FX = re.compile(r"Unsupported fx node (\S+?),? kind (\S+)")
_TS_UNSUPPORTED = re.compile(r"PyTorch convert function for op '([A-Za-z0-9_.:]+)' not implemented")


def _ios_level(target: str) -> int | None:
    """The iOS-equivalent major version of a Core ML deployment target name, or None if unknown."""
    m = _TARGET_RE.match(target)
    if m is None:
        return None
    return int(m.group(2)) + _OS_OFFSET[m.group(1).lower()]


class CoreMLConverter:
    """Exports a model to a Core ML ``.mlpackage`` (ML Program).

    Example:
        >>> conv = CoreMLConverter()
        >>> conv.supports(Recipe.parse("coreml-int8-dynamic")).ok
        False
    """

    format: ClassVar[str] = "coreml"
    precisions: ClassVar[dict[str | None, tuple[str, ...]]] = PRECISIONS

    def supports(self, recipe: Recipe) -> Support:
        """Whether ``recipe`` can be built on this host, with the reason and the alternatives when not.

        Args:
            recipe: a recipe whose format is ``coreml``.

        Returns:
            A Support; ``supported`` lists the recipe names this host can build.
        """
        here = tuple(p for p in PRECISIONS[None] if p != "int8-static" or sys.platform == "darwin")
        names = tuple(f"coreml-{p}" for p in here)
        if recipe.format != "coreml":
            return Support(False, f"the Core ML converter builds format coreml, not {recipe.format}", names)
        if recipe.precision == "int8-dynamic":
            return Support(False, "Core ML has no dynamic (run-time) activation quantization; use int8-weight "
                                  "(int8 weights, fp16 activations) or int8-static (calibrated int8 activations, "
                                  "macOS only)", names)
        if recipe.precision == "int8-static" and sys.platform != "darwin":
            return Support(False, "Core ML int8-static calibrates activations by running the model with the Core ML "
                                  f"runtime, which exists only on macOS (this host is {sys.platform}); build it on a "
                                  "Mac, or use int8-weight here", names)
        basic = supports_from_table("coreml", PRECISIONS, recipe)
        if not basic:
            return Support(False, basic.reason, names)
        target = recipe.deployment_target or DEFAULT_DEPLOYMENT_TARGET
        level = _ios_level(target)
        if level is None:
            return Support(False, f"unknown Core ML deployment target {target!r}; write e.g. iOS17, macOS14", names)
        if level < _MIN_IOS[recipe.precision]:
            return Support(False, f"Core ML {recipe.precision} needs deployment target iOS{_MIN_IOS[recipe.precision]} "
                                  f"or later (got {target})", names)
        units = recipe.compute_units or DEFAULT_COMPUTE_UNITS
        if units not in COMPUTE_UNITS:
            return Support(False, f"unknown Core ML compute units {units!r}; known: {', '.join(COMPUTE_UNITS)}", names)
        return Support(True)

    def convert(self, model: torch.nn.Module, example_inputs: tuple[Any, ...], recipe: Recipe, workdir: Path, *,
                calibration: Sequence[tuple[Any, ...]] | None = None) -> ConvertResult:
        """Convert ``model`` to ``workdir/model.mlpackage``.

        Args:
            model: the PyTorch model; not modified (converted in eval mode; copied only if in training mode).
            example_inputs: a tuple of tensors the model is called with (shapes are fixed from them).
            recipe: a ``coreml-*`` recipe; ``deployment_target`` defaults to iOS17, ``compute_units`` to ALL.
            workdir: an empty directory to write into.
            calibration: input tuples for int8-static (None: the example inputs).

        Returns:
            A ConvertResult whose ``filename`` is the ``.mlpackage`` folder name.

        Raises:
            ConfigError: the recipe cannot be built here (see ``supports``) or the inputs are not tensors.
            UnsupportedOpError: coremltools cannot convert an op (names the op and module path).
            ExportError: any other conversion failure.

        Example:
            >>> res = CoreMLConverter().convert(model, (x,), Recipe.parse("coreml-fp16"), tmp)  # doctest: +SKIP
        """
        ensure_supported(self, recipe)
        ct = require("coremltools", extra="coreml", purpose="to export Core ML models")
        timer = StageTimer()
        notes: list[str] = []
        inputs = _check_inputs(example_inputs)
        with timer("prepare"):
            model = prepared_model(model)
            names = input_names_of(model, len(inputs))
            program = _export(model, inputs)
            n_out = len(program.graph_signature.user_outputs)
            out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        target = recipe.deployment_target or DEFAULT_DEPLOYMENT_TARGET
        units = recipe.compute_units or DEFAULT_COMPUTE_UNITS
        if not hasattr(ct.target, target):
            raise ConfigError(f"coremltools {ct.__version__} has no deployment target {target!r}",
                              where="deployment_target",
                              fix=f"use one of {', '.join(t.name for t in ct.target)} (or the macOS equivalents)")
        ct_inputs = [ct.TensorType(name=n, shape=tuple(t.shape), dtype=_ct_dtype(t))
                     for n, t in zip(names, inputs, strict=True)]
        kwargs = {"convert_to": "mlprogram", "skip_model_load": True,
                  "minimum_deployment_target": getattr(ct.target, target),
                  "compute_units": getattr(ct.ComputeUnit, units), "inputs": ct_inputs,
                  "outputs": [ct.TensorType(name=n, dtype=np.float32) for n in out_names],
                  "compute_precision": ct.precision.FLOAT32 if recipe.precision == "fp32" else ct.precision.FLOAT16}
        with timer("lower"), _quiet():
            mlmodel = self._lower(ct, model, program, inputs, kwargs, notes)
        if recipe.precision in ("int8-weight", "int8-static"):
            with timer("quantize"), _quiet():
                mlmodel = _quantize(ct, mlmodel, recipe.precision, names, calibration or [tuple(inputs)])
        filename = "model.mlpackage"
        with timer("serialize"):
            try:
                _save_package(lambda out: mlmodel.save(str(out)), Path(workdir) / filename)
            except Exception as exc:
                raise ExportError(f"coremltools could not save the package: {exc}", where=str(workdir),
                                  fix="check the disk space and that the directory is writable") from exc
        with timer("validate"):
            info = validate_mlpackage(Path(workdir) / filename, inputs=list(zip(names, [t.shape for t in inputs],
                                                                                strict=True)),
                                      outputs=[(n, None) for n in out_names])
        notes.append(f"structurally valid mlProgram: {info['op_count']} ops, weights {info['weight_dtypes']}"
                     + ("; parity not run: needs macOS (no Core ML runtime on this host)"
                        if sys.platform != "darwin" else ""))
        notes.append(f"deployment target {target}, compute units {units}")
        return ConvertResult(filename=filename, stages=timer.stages, input_names=names, output_names=out_names,
                             notes=notes, input_dtypes=[np.dtype(_ct_dtype(t)).name for t in inputs])

    @staticmethod
    def _lower(ct: Any, model: torch.nn.Module, program: Any, inputs: list[torch.Tensor], kwargs: dict[str, Any],
               notes: list[str]) -> Any:
        """ct.convert on the ExportedProgram; on an unsupported op, retry once via TorchScript."""
        try:
            with warnings.catch_warnings():  # fp16 range folding in coremltools' passes warns on overflow casts
                warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"coremltools\.")
                return ct.convert(program, **kwargs)
        except Exception as first:  # coremltools raises bare Exception/NotImplementedError/ValueError/AssertionError
            error = _op_error(first, program)
            if error is None:
                raise ExportError(f"coremltools failed to convert the model: {type(first).__name__}: {first}",
                                  where="coremltools.convert (torch.export frontend)",
                                  fix="report it with MOBILEKIT_DEBUG=1, or try another format") from first
            logger.info("torch.export frontend lacks %s; retrying through torch.jit.trace", error.op)
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
                    traced = torch.jit.trace(model, tuple(inputs), check_trace=False)
                mlmodel = ct.convert(traced, **kwargs)
            except Exception as second:
                raise error from second
            notes.append(f"converted through torch.jit.trace: coremltools' torch.export frontend lacks {error.op}")
            return mlmodel


def _save_package(write: Any, dest: Path) -> None:
    """Write a package with ``write(path)`` (coremltools wants a ``.mlpackage`` name) and move it onto ``dest``."""
    import shutil

    with atomic_path(dest) as tmp:
        out = tmp.parent / (tmp.name + ".mlpackage")
        try:
            write(out)
            out.rename(tmp)
        finally:
            if out.exists():
                shutil.rmtree(out, ignore_errors=True)


def _check_inputs(example_inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise ConfigError("example_inputs must be a non-empty tuple of tensors", where="example_inputs",
                          fix="pass e.g. (torch.randn(1, 3, 64, 64),)")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"example input {i} is a {type(t).__name__}, not a tensor", where=f"example_inputs[{i}]",
                              fix="pass tensors only (wrap the model so it takes positional tensors)")
    return list(example_inputs)


def _ct_dtype(t: torch.Tensor) -> Any:
    if t.dtype.is_floating_point:
        return np.float32
    if t.dtype == torch.bool:
        return np.bool_
    return np.int32  # Core ML has no int64 inputs; ids and timesteps arrive as int32


def _export(model: torch.nn.Module, inputs: list[torch.Tensor]) -> Any:
    try:
        return torch.export.export(model, tuple(inputs)).run_decompositions({})
    except Exception as exc:
        raise ExportError(f"torch.export could not capture the model: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                          where=type(model).__name__,
                          fix="make forward traceable (no data-dependent Python control flow), "
                              "or see https://pytorch.org/docs/stable/export.html") from exc


def _op_error(exc: BaseException, program: Any) -> UnsupportedOpError | None:
    """An UnsupportedOpError for a coremltools 'unsupported op' failure, naming the op and module path."""
    text = str(exc)
    m = _UNSUPPORTED_FX.search(text)
    node_name = m.group(1) if m else None
    m2 = _TS_UNSUPPORTED.search(text)
    if node_name is None and m2 is None:
        return None
    op, path = (m2.group(1) if m2 else node_name), None
    for node in program.graph.nodes:
        if node.op == "call_function" and node.name == node_name:
            op = str(node.target)
            stack = node.meta.get("nn_module_stack") or {}
            path = (re.sub(r"^L\['self'\]\.?|^self\.?", "", str(list(stack.values())[-1][0])) or "<root>") \
                if stack else "<root>"
            break
    return UnsupportedOpError(f"Core ML (coremltools) cannot convert op {op}", op=op, module_path=path,
                              backend="coreml", where=path or "unknown module",
                              fix="rewrite that module with supported ops, or choose another format "
                                  "(tflite, onnx, executorch)")


def _quantize(ct: Any, mlmodel: Any, precision: str, names: list[str],
              calibration: Sequence[tuple[Any, ...]]) -> Any:
    from coremltools.optimize import coreml as cto

    if precision == "int8-static":  # macOS only: calibration runs the model
        samples = [{n: np.asarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t)
                    .astype(np.float32 if np.asarray(t).dtype.kind == "f" else np.int32)
                    for n, t in zip(names, batch, strict=True)} for batch in calibration]
        act = cto.OptimizationConfig(global_config=cto.experimental.OpActivationLinearQuantizerConfig(
            mode="linear_symmetric", weight_threshold=MIN_QUANTIZED_WEIGHT_ELEMENTS))
        mlmodel = cto.experimental.linear_quantize_activations(mlmodel, act, samples)
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel",
        weight_threshold=MIN_QUANTIZED_WEIGHT_ELEMENTS))
    try:
        return cto.linear_quantize_weights(mlmodel, config=config)
    except Exception as exc:
        raise ExportError(f"coremltools could not quantize the weights to int8: {exc}", where="linear_quantize_weights",
                          fix="use coreml-fp16, or report it with MOBILEKIT_DEBUG=1") from exc


@contextmanager
def _quiet() -> Iterator[None]:
    """Catch coremltools' tqdm progress bars and prints (library code draws none); log them at DEBUG."""
    buf = io.StringIO()
    try:
        with redirect_stderr(buf), redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            logger.debug("coremltools said: %s", text[-4000:])


# ---------------------------------------------------------------- structural validation (Linux)

_DTYPE_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "BFLOAT16": 2, "FLOAT64": 8, "INT8": 1, "UINT8": 1, "INT16": 2,
                "UINT16": 2, "INT32": 4, "UINT32": 4, "INT64": 8, "BOOL": 1, "INT4": 0.5, "UINT4": 0.5}
_SHORT = {"FLOAT32": "fp32", "FLOAT16": "fp16", "INT8": "int8", "UINT8": "uint8", "INT4": "int4", "UINT4": "uint4"}


_FIX = "re-export the model; the package is incomplete or was not written by coremltools"
# constexpr ops that rebuild a float weight from integer data when the program loads: int8 (iOS16/17's
# affine dequantize, iOS18's blockwise shift-scale) or palettized (a look-up table over n-bit indices)
WEIGHT_DEQUANT_OPS = frozenset({"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
                                "constexpr_lut_to_dense"})


def _read_spec(path: Path) -> tuple[Any, Path]:
    """The ``Model`` protobuf of an ``.mlpackage`` and the file it came from (Manifest.json names it).

    Raises:
        ExportError: no Manifest.json, an unreadable one, or a missing or unparsable model spec.
    """
    manifest_file = path / "Manifest.json"
    if not path.is_dir() or not manifest_file.is_file():
        raise ExportError("not an .mlpackage folder (no Manifest.json)", where=str(path), fix=_FIX)
    try:
        manifest = json.loads(manifest_file.read_text())
        root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"Manifest.json is unreadable: {exc}", where=str(manifest_file), fix=_FIX) from exc
    model_file = path / "Data" / root["path"]
    if not model_file.is_file():
        raise ExportError(f"the model spec {root['path']} named by Manifest.json is missing", where=str(path), fix=_FIX)
    require("coremltools", extra="coreml", purpose="to read Core ML packages")
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(model_file.read_bytes())
    except Exception as exc:
        raise ExportError(f"model.mlmodel is not a Core ML protobuf: {exc}", where=str(model_file), fix=_FIX) from exc
    return spec, model_file


def block_ops(block: Any) -> Iterator[Any]:
    """Every operation of a MIL block in program order, those of nested blocks (cond, while) included."""
    for op in block.operations:
        yield op
        for nested in op.blocks:
            yield from block_ops(nested)


def program_ops(path: Path) -> list[Any] | None:
    """The MIL operations of an ``.mlpackage``'s default function, at the opset it was built for.

    Returns:
        The operations (``MIL_pb2.Operation``) in program order; None when ``path`` holds no
        readable ML Program (an empty or foreign folder, a neural-network model).
    """
    try:
        spec, _ = _read_spec(Path(path))
    except ExportError:
        return None
    if spec.WhichOneof("Type") != "mlProgram":
        return None
    fns = spec.mlProgram.functions
    fn = fns.get(spec.description.defaultFunctionName or "main") or next(iter(fns.values()), None)
    if fn is None:
        return None
    block = fn.block_specializations.get(fn.opset) or next(iter(fn.block_specializations.values()), None)
    return list(block_ops(block)) if block is not None else None


def validate_mlpackage(path: Path, *, inputs: Sequence[Any] | None = None,
                       outputs: Sequence[Any] | None = None) -> dict[str, Any]:
    """Check an ``.mlpackage`` structurally, without the Core ML runtime (works on Linux).

    Reads ``Manifest.json`` and the ``model.mlmodel`` protobuf: the model must be an ML Program
    with a weights file, and its inputs/outputs must match ``inputs``/``outputs`` when given.

    Args:
        path: the ``.mlpackage`` folder.
        inputs: expected inputs, each a ``TensorSpec``-like object (``.name``, ``.shape``) or a
            ``(name, shape)`` pair, in order.
        outputs: expected outputs, same form (shape may be None to skip the shape check).

    Returns:
        A dict: ``status`` (``structurally-valid``), ``parity`` (``not-run: needs macOS`` off macOS),
        ``spec_version``, ``functions``, ``inputs``/``outputs`` (name, shape, dtype), ``op_count``,
        ``op_types`` (type → count), ``weight_bytes`` (dtype → bytes in the weights file),
        ``weight_dtypes`` (sorted short names, e.g. ``["fp16", "int8"]``), ``quantized`` (constexpr
        dequantize ops present), ``weights_file_bytes``.

    Raises:
        ExportError: the package is malformed or does not match (message names what and where).

    Example:
        >>> info = validate_mlpackage(Path("out/model.mlpackage"), inputs=[("x", (1, 3, 64, 64))])  # doctest: +SKIP
        >>> info["weight_dtypes"]  # doctest: +SKIP
        ['fp16']
    """
    path = Path(path)
    spec, model_file = _read_spec(path)
    weight_files = [p for p in (model_file.parent / "weights").glob("*.bin")]
    if not weight_files:
        raise ExportError("the package has no weights file (weights/*.bin)", where=str(path), fix=_FIX)
    from coremltools.proto import MIL_pb2, Model_pb2

    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise ExportError(f"the model is a {kind}, not an mlProgram", where=str(model_file),
                          fix="convert with convert_to='mlprogram'")
    dtype_name = MIL_pb2.DataType.Name

    def features(fs: Any) -> list[dict[str, Any]]:
        out = []
        for f in fs:
            arr = f.type.multiArrayType
            out.append({"name": f.name, "shape": [int(s) for s in arr.shape],
                        "dtype": Model_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()})
        return out

    # A multifunction package describes each function separately; check them all, report the default.
    described = {f.name: f for f in spec.description.functions} or {"main": spec.description}
    default_fn = spec.description.defaultFunctionName or next(iter(described))
    for fn_name, desc in described.items():
        where = path if len(described) == 1 else Path(f"{path}#{fn_name}")
        _match("input", features(desc.input), inputs, where)
        _match("output", features(desc.output), outputs, where)
    found_in = features(described[default_fn].input)
    found_out = features(described[default_fn].output)
    op_types: Counter[str] = Counter()
    weight_bytes: Counter[str] = Counter()

    functions = list(spec.mlProgram.functions.keys())
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block_ops(block):
                op_types[op.type] += 1
                inline = [a.value for arg in op.inputs.values() for a in arg.arguments
                          if a.WhichOneof("binding") == "value"]
                for value in [*op.attributes.values(), *inline]:  # iOS18 constexpr ops take weights as inline inputs
                    if value.WhichOneof("value") != "blobFileValue":
                        continue
                    tt = value.type.tensorType
                    name = dtype_name(tt.dataType)
                    n = int(np.prod([d.constant.size for d in tt.dimensions])) if tt.dimensions else 1
                    weight_bytes[_SHORT.get(name, name.lower())] += int(n * _DTYPE_BYTES.get(name, 4))
    op_count = sum(op_types.values())
    if op_count == 0:
        raise ExportError("the ML Program has no operations", where=str(model_file), fix=_FIX)
    return {
        "status": "structurally-valid",
        "parity": "not-run: needs macOS" if sys.platform != "darwin" else "run with CoreMLRunner",
        "spec_version": int(spec.specificationVersion),
        "functions": sorted(functions),
        "default_function": default_fn,
        "inputs": found_in,
        "outputs": found_out,
        "op_count": op_count,
        "op_types": dict(sorted(op_types.items())),
        "weight_bytes": dict(sorted(weight_bytes.items())),
        "weight_dtypes": sorted(weight_bytes),
        "quantized": any(t in WEIGHT_DEQUANT_OPS and t != "constexpr_lut_to_dense" for t in op_types),
        "weights_file_bytes": sum(p.stat().st_size for p in weight_files),
    }


def _spec_pair(item: Any) -> tuple[str, tuple[int, ...] | None]:
    if isinstance(item, Mapping):
        name, shape = item["name"], item.get("shape")
    elif hasattr(item, "name"):
        name, shape = item.name, getattr(item, "shape", None)
    else:
        name, shape = item[0], item[1] if len(item) > 1 else None
    return str(name), tuple(int(s) for s in shape) if shape is not None else None


def _match(kind: str, found: list[dict[str, Any]], expected: Sequence[Any] | None, path: Path) -> None:
    if expected is None:
        return
    want = [_spec_pair(e) for e in expected]
    if len(want) != len(found):
        raise ExportError(f"the package has {len(found)} {kind}s {[f['name'] for f in found]}, "
                          f"expected {len(want)} {[w[0] for w in want]}", where=str(path),
                          fix="re-export with the same example inputs")
    for (name, shape), f in zip(want, found, strict=True):
        if f["name"] != name:
            raise ExportError(f"{kind} {f['name']!r} should be named {name!r}", where=str(path),
                              fix="re-export; the input names come from the model's forward arguments")
        if shape is not None and tuple(f["shape"]) != shape:
            raise ExportError(f"{kind} {name!r} has shape {tuple(f['shape'])}, expected {shape}", where=str(path),
                              fix="re-export with example inputs of the shape the app will feed")


# ---------------------------------------------------------------- multifunction (shared weights)

def save_multifunction(packages: Mapping[str, Path], dest: Path, *, default: str | None = None) -> Path:
    """Merge several ``.mlpackage`` files into one multifunction package; identical weights are stored once.

    Each package's ``main`` function becomes a function named by its key (e.g. one per LoRA
    adapter over a shared base). Multifunction packages need iOS18 / macOS15 at run time.

    Args:
        packages: function name → ``.mlpackage`` path (at least one).
        dest: the ``.mlpackage`` to write (atomically).
        default: the default function name (None: the first key).

    Returns:
        ``dest``.

    Raises:
        ConfigError: no packages, a missing package, or an unknown default.
        ExportError: coremltools failed to merge them.

    Example:
        >>> save_multifunction({"base": a, "style": b}, Path("out/multi.mlpackage"))  # doctest: +SKIP
    """
    if not packages:
        raise ConfigError("no packages to merge", where="packages", fix="pass {function_name: path, ...}")
    for name, p in packages.items():
        if not (Path(p) / "Manifest.json").is_file():
            raise ConfigError(f"package for function {name!r} is not an .mlpackage", where=str(p),
                              fix="pass .mlpackage folders written by the Core ML converter")
    default = default or next(iter(packages))
    if default not in packages:
        raise ConfigError(f"default function {default!r} is not one of {sorted(packages)}", where="default")
    ct = require("coremltools", extra="coreml", purpose="to merge Core ML packages")
    desc = ct.utils.MultiFunctionDescriptor()
    for name, p in packages.items():
        desc.add_function(str(p), src_function_name="main", target_function_name=name)
    desc.default_function_name = default
    dest = Path(dest)
    try:
        with _quiet():
            _save_package(lambda out: ct.utils.save_multifunction(desc, str(out)), dest)
    except Exception as exc:
        raise ExportError(f"coremltools could not merge the packages: {exc}", where=str(dest),
                          fix="the packages must be ML Programs with the same deployment target") from exc
    return dest
