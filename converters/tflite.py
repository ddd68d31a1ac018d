"""TFLite / LiteRT converter: PyTorch → ``litert_torch.convert`` → ``.tflite``, quantized by ai-edge-quantizer.

litert-torch lowers integer tensors as int32, so int64 inputs (DiT timesteps, class labels) are
taken as int32 by a thin wrapper that casts them back to int64 inside the graph; the artifact's
inputs are float32 / int32 (recorded in ``ConvertResult.input_dtypes``).

Precisions (ai-edge-quantizer recipes on the float flatbuffer):

* ``fp32``: the float model as converted.
* ``fp16``: float16 weights, float32 compute (weight-only ``FLOAT_CASTING`` to 16 bits; the
  weights of fully-connected, conv, transposed-conv and embedding ops).
* ``int8-weight``: ``weight_only_wi8_afp32`` (int8 weights dequantized to float for compute).
* ``int8-dynamic``: ``dynamic_wi8_afp32`` (int8 weights, activations quantized at run time).
* ``int8-static``: ``static_wi8_ai8`` calibrated on the calibration batches (each tensor's
  range is the min/max over all of them); the model's own inputs and outputs stay float
  (quantize/dequantize ops are inserted at the edges) so apps and the runtime feed the same
  tensors as for fp32.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mobilekit.converters._torch_common import capture, float64_as_float32, input_names_of, prepared_model, weight_bytes
from mobilekit.converters.base import (ConvertResult, StageTimer, Support, ensure_supported, module_path_of_op,
                             supports_from_table)
from mobilekit._deps import require
from mobilekit._io import native_output_captured, write_bytes_atomic
from mobilekit.errors import ConfigError, ExportError, UnsupportedOpError
from mobilekit.recipe import Recipe

logger = logging.getLogger(__name__)

PRECISIONS: dict[str | None, tuple[str, ...]] = {None: ("fp32", "fp16", "int8-weight", "int8-dynamic", "int8-static")}
SIGNATURE = "serving_default"
_INT32 = (-(2**31), 2**31 - 1)
_LOWERING = re.compile(r"Lowering not found:\s*(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)")


class Int32Inputs(torch.nn.Module):
    """Takes int32 where the wrapped model takes int64 and casts back inside the graph.

    Args:
        model: the model to call.
        long_inputs: positions of the inputs the model expects as int64.
    """

    def __init__(self, model: torch.nn.Module, long_inputs: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.long_inputs = frozenset(long_inputs)

    def forward(self, *args: torch.Tensor) -> Any:
        """Call the model with the int64 inputs restored."""
        return self.model(*(a.long() if i in self.long_inputs else a for i, a in enumerate(args)))


# A flatbuffer's offsets are 32-bit signed: 2 GB in all, less the graph itself.
FLATBUFFER_LIMIT = 2**31 - 2**26


class TFLiteConverter:
    """Exports a model to a LiteRT (TFLite) flatbuffer.

    Example:
        >>> TFLiteConverter().supports(Recipe.parse("tflite-int8-dynamic")).ok
        True
    """

    format: ClassVar[str] = "tflite"
    precisions: ClassVar[dict[str | None, tuple[str, ...]]] = PRECISIONS
    # ai-edge-quantizer picks a recipe per op by its output tensors' names, which litert-torch
    # writes with the module path: any module can be left in float (``float_modules``).
    float_module_precisions: ClassVar[frozenset[str]] = frozenset({"int8-weight", "int8-dynamic", "int8-static"})

    def supports(self, recipe: Recipe) -> Support:
        """Whether ``recipe`` can be built, with the reason and the alternatives when not.

        Args:
            recipe: a recipe whose format is ``tflite``.
        """
        if recipe.format != "tflite":
            return Support(False, f"the TFLite converter builds format tflite, not {recipe.format}",
                           tuple(f"tflite-{p}" for p in PRECISIONS[None]))
        return supports_from_table("tflite", PRECISIONS, recipe)

    def check_model(self, model: torch.nn.Module, recipe: Recipe) -> Support:
        """Whether the model fits a TFLite flatbuffer, answered from its weight bytes before any work.

        A flatbuffer addresses at most 2 GB, and litert-torch always writes the float32 model first
        (quantization rewrites that flatbuffer), so the float32 weight bytes decide for every precision.
        """
        weights = weight_bytes(model, as_dtype=torch.float32)
        if weights <= FLATBUFFER_LIMIT:
            return Support(True)
        return Support(False, f"TFLite flatbuffers hold at most 2 GB and litert-torch writes the float32 model "
                              f"first; this model's float32 weights are {weights / 2**30:.2f} GB",
                       ("onnx-fp32 (external weights)", "executorch-xnnpack-fp32", "coreml-fp16"))

    def convert(self, model: torch.nn.Module, example_inputs: tuple[Any, ...], recipe: Recipe, workdir: Path, *,
                calibration: Sequence[tuple[Any, ...]] | None = None,
                float_modules: Sequence[str] = ()) -> ConvertResult:
        """Convert ``model`` to ``workdir/model.tflite``.

        Args:
            model: the PyTorch model; not modified (converted in eval mode; copied only if in training mode).
            example_inputs: a tuple of tensors (float, or integer ids which become int32 inputs).
            recipe: a ``tflite-*`` recipe.
            workdir: an empty directory to write into.
            calibration: input tuples for int8-static activation ranges (None: the example inputs).
            float_modules: module paths (``model.named_modules()`` names) whose ops stay float in an
                int8 recipe; export chooses them when the whole model would miss the parity floor.

        Returns:
            A ConvertResult naming ``model.tflite``, its input/output names and input dtypes.

        Raises:
            ConfigError: the recipe is not supported, or inputs are not tensors / don't fit int32.
            UnsupportedOpError: litert-torch has no lowering for an op (names the op and module path).
            ExportError: any other conversion or quantization failure.

        Example:
            >>> res = TFLiteConverter().convert(model, (x,), Recipe.parse("tflite-int8-dynamic"), tmp)  # doctest: +SKIP
        """
        ensure_supported(self, recipe)
        fits = self.check_model(model, recipe)
        if not fits:
            raise ConfigError(fits.reason, where=recipe.name, fix=f"use {' or '.join(fits.supported)}")
        with native_output_captured():  # TensorFlow's runtime prints absl/oneDNN banners on import
            litert_torch = require("litert_torch", extra="tflite", purpose="to export TFLite models")
        timer = StageTimer()
        notes: list[str] = []
        with timer("prepare"):
            inputs = _as_int32(example_inputs, "example_inputs")
            long_pos = [i for i, t in enumerate(example_inputs) if _is_long(t)]
            original = prepared_model(model)
            wrapped = Int32Inputs(original, long_pos).eval() if long_pos else original
            names = input_names_of(original, len(inputs))
            # resolved before lowering: a module name that is not in the model is refused before work
            scopes = {m: module_scope_regex(wrapped, m) for m in float_modules}
        with timer("lower"):
            try:
                flatbuffer = _lower(litert_torch, wrapped, tuple(inputs))
            except ConfigError:
                raise
            except Exception as exc:
                # No float64 kernels on phones ("failed to legalize operation 'tfl.pow'" on tensor<f64>):
                # retry once with float64 computed in float32. Only then is the extra capture paid.
                program = capture(wrapped, tuple(inputs), backend=recipe.name)
                if not float64_as_float32(program):
                    raise _map_error(exc, original, tuple(example_inputs)) from exc
                try:
                    flatbuffer = _lower(litert_torch, program.module(), tuple(inputs))
                except Exception:
                    raise _map_error(exc, original, tuple(example_inputs)) from exc
                notes.append("float64 ops computed in float32 (no float64 kernels on phones)")
        if recipe.precision != "fp32":
            with timer("quantize"):
                batches = (calibration or [tuple(example_inputs)]) if recipe.precision == "int8-static" else []
                cal = [_as_int32(b, f"calibration[{k}]") for k, b in enumerate(batches)]
                floats = list(scopes.values())
                notes.extend(_unmatched_scopes(flatbuffer, scopes) if scopes else [])
                quantized = _quantize(flatbuffer, recipe.precision, cal, float_scopes=floats)
                if recipe.precision == "int8-static":
                    quantized = _static_with_fallback(flatbuffer, quantized, wrapped, cal, workdir, notes, floats)
                flatbuffer = quantized
        with timer("validate"):
            in_names, out_names, in_dtypes = _io_details(flatbuffer, inputs)
        filename = "model.tflite"
        with timer("serialize"):
            write_bytes_atomic(Path(workdir) / filename, flatbuffer)
        notes.append("signature serving_default: " + ", ".join(f"{s}={n}" for s, n in zip(in_names, names,
                                                                                          strict=True)))
        if long_pos:
            notes.append(f"int64 inputs {[names[i] for i in long_pos]} are int32 in the artifact (cast inside)")
        return ConvertResult(filename=filename, stages=timer.stages, input_names=in_names, output_names=out_names,
                             notes=notes, input_dtypes=in_dtypes)


def _is_long(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.int64


def _as_int32(batch: Sequence[Any], where: str) -> list[torch.Tensor]:
    """Tensors of ``batch`` with int64 ones cast to int32 (after a range check)."""
    if not isinstance(batch, (tuple, list)) or not batch:
        raise ConfigError(f"{where} must be a non-empty tuple of tensors", where=where,
                          fix="pass e.g. (torch.randn(1, 3, 64, 64),)")
    out = []
    for i, t in enumerate(batch):
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"input {i} is a {type(t).__name__}, not a tensor", where=f"{where}[{i}]",
                              fix="pass tensors only (wrap the model so it takes positional tensors)")
        if t.dtype == torch.int64:
            if t.numel() and (int(t.min()) < _INT32[0] or int(t.max()) > _INT32[1]):
                raise ConfigError(f"input {i} holds values outside the int32 range", where=f"{where}[{i}]",
                                  fix="TFLite takes int32 ids; keep integer inputs within ±2^31")
            t = t.to(torch.int32)
        out.append(t)
    return out


def _lower(litert_torch: Any, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """litert-torch's conversion to a float flatbuffer, with its output kept off the terminal."""
    with _quiet():
        return bytes(litert_torch.convert(module, inputs).model_content())


def _map_error(exc: BaseException, model: torch.nn.Module, inputs: tuple[Any, ...]) -> Exception:
    """An UnsupportedOpError (with module path) for a missing lowering, else an ExportError."""
    m = _LOWERING.search(str(exc))
    if m is None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ExportError(f"litert-torch failed to convert the model: {type(exc).__name__}: {first}",
                           where="litert_torch.convert",
                           fix="run with MOBILEKIT_DEBUG=1 for the traceback, or choose another format")
    op = m.group(1)
    path = None
    try:  # find who calls the op: export again, decomposed like litert-torch does
        program = torch.export.export(model, inputs, strict=False)
        path = module_path_of_op(program, op) or module_path_of_op(program.run_decompositions(), op)
        if path is None:  # a decomposition renamed it (aten._linalg_det comes from aten.linalg_det)
            path = module_path_of_op(program, op.replace("aten._", "aten."))
    except Exception:  # the module path is a courtesy; the op name alone still helps
        logger.debug("could not locate op %s in the exported program", op, exc_info=True)
    return UnsupportedOpError(f"LiteRT (litert-torch) has no lowering for op {op}", op=op, module_path=path,
                              backend="tflite", where=path or "unknown module",
                              fix="rewrite that module with supported ops, or choose another format "
                                  "(onnx, executorch, coreml)")


# The op types whose int8 kernels carry a model's arithmetic. When full-integer int8-static loses
# parity, only these stay integer: measured on the zoo, CLIP's text encoder went from cosine 0.48
# to 0.999 (an int8 causal-mask add and softmax flatten attention; excluding op types one at a
# time did not recover it) and ResNet from 0.937 to a pass (its int8 global-average MEAN).
_COMPUTE_OPS = frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE",
                          "BATCH_MATMUL"})


def _static_with_fallback(float_fb: bytes, full: bytes, model: torch.nn.Module, calibration: list[list[torch.Tensor]],
                          workdir: Path, notes: list[str], float_scopes: Sequence[str] = ()) -> bytes:
    """Full-integer int8-static, or compute-ops-only int8 when the full one loses the parity floor.

    Both are checked on the calibration batches (the held-out parity inputs stay unseen) in a
    child process, against PyTorch; the one kept is the first that holds the default int8-static
    floor, else the closer one. The choice and both measurements go into the artifact's notes.
    """
    from mobilekit.converters._torch_common import calibration_parity, choose_int8_static

    measure = calibration_parity(model, calibration, runtime="ai-edge-litert")

    def measured(fb: bytes) -> Any:  # the runtime reads files: each candidate is written, measured, removed
        path = Path(workdir) / ".int8-candidate.tflite"
        write_bytes_atomic(path, fb)
        try:
            return measure(path)
        finally:
            path.unlink(missing_ok=True)

    # A model LiteRT cannot even prepare is the caller's to report (export's parity check and the
    # parity map, which splits tapped outputs LiteRT rejects, both handle it).
    return choose_int8_static(
        full, lambda: _quantize(float_fb, "int8-static", calibration, only=_COMPUTE_OPS, float_scopes=float_scopes),
        measured, notes,
        whole="full-integer int8", runtime="LiteRT", compute_ops=sorted(_COMPUTE_OPS),
        kept_mixed="mixed model (an NPU that needs full-integer models will not take it)",
        kept_full="full-integer model")


def module_scope_regex(model: torch.nn.Module, path: str) -> str:
    """A regex matching the tensor names litert-torch gives the ops of ``model``'s module ``path``.

    litert-torch names a tensor by the stack of modules whose forward was running, one
    ``<module>.<class>_<last path part>`` per level joined by ``/``, and joins fused ops' names with
    ``;`` (``...MobileViTConvLayer_conv_stem/torch.nn.modules.conv.Conv2d_convolution;2``).
    Containers that are never called (ModuleList, ModuleDict) have no level of their own, and
    wrappers above the user's model (output flattening, int32 inputs) may come first.

    Raises:
        ConfigError: ``path`` names no module of ``model``.
    """
    modules = dict(model.named_modules())
    full = next((n for n in modules if n == path or n.endswith("." + path)), None) if path else None
    if full is None:
        raise ConfigError(f"float_modules: the model has no module {path!r}", where="float_modules",
                          fix="name modules as model.named_modules() does")
    parts = full.split(".")
    levels = []
    for k in range(len(parts)):
        mod = modules[".".join(parts[:k + 1])]
        if isinstance(mod, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            continue
        cls = type(mod)
        levels.append(re.escape(f"{cls.__module__}.{cls.__qualname__}_{parts[k]}"))
    return r"(?:^|[/;])" + "/".join(levels) + r"(?:;|$)"


def _unmatched_scopes(flatbuffer: bytes, scopes: dict[str, str]) -> list[str]:
    """A note for each module kept float that no op of the graph belongs to (it stays quantized)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    graph = tfu.read_model(bytearray(flatbuffer))
    names = [tfu.get_op_scope(op, sg.tensors) for sg in graph.subgraphs for op in sg.operators]
    return [f"float_modules: no op of the graph belongs to {m}; it is quantized like the rest"
            for m, rx in scopes.items() if not any(re.search(rx, n) for n in names)]


def _quantize(flatbuffer: bytes, precision: str, calibration: list[list[torch.Tensor]], *,
              only: frozenset[str] | None = None, float_scopes: Sequence[str] = ()) -> bytes:
    """Apply the ai-edge-quantizer recipe for ``precision`` to a float flatbuffer.

    ``only``: for int8-static, the op types that are quantized; every other op type stays float.
    ``float_scopes``: ``module_scope_regex`` of modules whose ops stay float (entered last: later rules win).
    """
    require("ai_edge_quantizer", extra="tflite", purpose="to quantize TFLite models")
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = qtyping.TFLOperationName
    q = quantizer.Quantizer(bytearray(flatbuffer))
    if precision == "fp16":
        q.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=16,
                                 algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif precision == "int8-weight":
        q.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    elif precision == "int8-dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif precision == "int8-static":
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        for op in (ops.INPUT, ops.OUTPUT):  # keep float I/O: quantize/dequantize inside the model
            q.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE)
        for name in ([] if only is None else [n for n in ops.__members__ if n not in only | {"ALL_SUPPORTED"}]):
            q.update_quantization_recipe(regex=".*", operation_name=ops[name], algorithm_key=AlgorithmName.NO_QUANTIZE)
    else:  # supports() keeps other precisions out
        raise ConfigError(f"no TFLite quantization recipe for {precision}", where="precision")
    for scope in float_scopes:
        q.update_quantization_recipe(regex=scope, operation_name=ops.ALL_SUPPORTED,
                                     algorithm_key=AlgorithmName.NO_QUANTIZE)
    try:
        with _quiet(), warnings.catch_warnings():
            result = None
            if q.need_calibration:
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
                arg_names = _signature_inputs(flatbuffer)
                feeds = [{n: t.detach().numpy() for n, t in zip(arg_names, batch, strict=True)}
                         for batch in calibration]
                # One calibration per batch, ranges merged as min/max: across the batches of one
                # call ai-edge-quantizer keeps a moving average (0.95 on the earlier batches), so
                # the first batch's range clipped the others (EfficientNet: calibration cosine
                # 0.985, a held-out input 0.935).
                result = _merge_ranges([q.calibrate({SIGNATURE: [feed]}, num_threads=1) for feed in feeds])
            quantized = q.quantize(result, enable_progress_bar=False, enable_progress_report=False)
    except Exception as exc:
        raise ExportError(f"ai-edge-quantizer could not apply {precision}: {type(exc).__name__}: {exc}",
                          where="ai_edge_quantizer", fix="try int8-weight or int8-dynamic, or fp32") from exc
    return bytes(quantized.quantized_model)


def _merge_ranges(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-tensor calibration results merged: the lowest ``min`` and the highest ``max`` of each tensor."""
    merged: dict[str, Any] = {}
    for result in results:
        for name, qsv in result.items():
            have = merged.get(name)
            if not have:
                merged[name] = dict(qsv)
                continue
            have = dict(have)
            if "min" in qsv and "min" in have:
                have["min"] = np.minimum(have["min"], qsv["min"])
            if "max" in qsv and "max" in have:
                have["max"] = np.maximum(have["max"], qsv["max"])
            merged[name] = have
    return merged


def _signature_inputs(flatbuffer: bytes) -> list[str]:
    """Argument names of the ``serving_default`` signature, in the model's positional order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flatbuffer)
    by_index = {d["index"]: name for name, d in
                it.get_signature_runner(SIGNATURE).get_input_details().items()}
    return [by_index[d["index"]] for d in it.get_input_details()]


def _io_details(flatbuffer: bytes, inputs: list[torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Signature input names, output names and input dtypes of the flatbuffer, checked against ``inputs``.

    Names are those of the ``serving_default`` signature (``args_0``, ``output_0``), what an app's
    signature runner uses; the order is the model's positional order.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flatbuffer)
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != len(inputs):
        raise ExportError(f"the .tflite takes {len(ins)} inputs, the model {len(inputs)}", where="model.tflite",
                          fix="inputs the model ignores are dropped by litert-torch: remove them from forward")
    for k, (d, t) in enumerate(zip(ins, inputs, strict=True)):
        if tuple(d["shape"]) != tuple(t.shape):
            raise ExportError(f"input {k} of the .tflite has shape {tuple(d['shape'])}, the model's {tuple(t.shape)}",
                              where="model.tflite", fix="report it with MOBILEKIT_DEBUG=1")
    runner = it.get_signature_runner(SIGNATURE)
    in_by_index = {d["index"]: n for n, d in runner.get_input_details().items()}
    out_by_index = {d["index"]: n for n, d in runner.get_output_details().items()}
    return ([in_by_index.get(d["index"], d["name"]) for d in ins],
            [out_by_index.get(d["index"], d["name"]) for d in outs],
            [np.dtype(d["dtype"]).name for d in ins])


@contextmanager
def _quiet() -> Iterator[None]:
    """Switch off litert-torch's progress lines and catch quantizer prints; log them at DEBUG."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    buf = io.StringIO()
    native: list[str] = []
    try:
        with native_output_captured() as native, redirect_stderr(buf), redirect_stdout(buf):
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old
        text = (buf.getvalue() + "".join(native)).strip()
        if text:
            logger.debug("litert-torch/ai-edge-quantizer said: %s", text[-4000:])
