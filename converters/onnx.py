"""ONNX converter: PyTorch → ``torch.export`` → ``torch.onnx.export(dynamo=True)`` → ``.onnx``.

Stages: ``prepare`` (copy, eval), ``lower`` (capture with ``torch.export``, translate with the
onnxscript-based exporter), ``quantize`` (ONNX Runtime's tools, on the ONNX graph),
``serialize`` (write ``model.onnx``, and ``model.onnx.data`` with ``external_weights``).

Precisions (onnxruntime 1.31, checked on this toolchain):

* ``fp32``: the exported graph.
* ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 inputs and
  outputs kept (casts at the edges); no extra package needed.
* ``int8-weight``: MatMuls with constant weights become ``MatMulNBits`` (8 bits, blocks of 32,
  symmetric); Gemm and Conv weights are stored int8 per output channel behind a
  ``DequantizeLinear``. Activations stay float.
* ``int8-dynamic``: ``quantize_dynamic`` (int8 per-channel weights, activations quantized at
  run time) on MatMul and Gemm.
* ``int8-static``: ``quantize_static`` in QDQ format, uint8 activations calibrated on the
  ``calibration`` batches, int8 per-channel weights. The result is measured against PyTorch on
  the calibration batches; when it loses the int8-static floor, only Conv/ConvTranspose/Gemm/MatMul
  are requantized in int8 and the closer model is kept (the notes say which, with both cosines).

``float_modules`` (int8 recipes) leaves the nodes of named modules float: the exporter writes each
node's module stack into its ``pkg.torch.onnx.name_scopes`` metadata, and ORT's quantizers take
the matching node names as ``nodes_to_exclude``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mobilekit.converters._torch_common import (
    capture,
    check_calibration,
    check_inputs,
    check_module_paths,
    first_line,
    forward_arg_names,
    map_backend_error,
    prepared_model,
    static_reshapes,
    weight_bytes,
    within_module,
)
from mobilekit.converters.base import ConvertResult, StageTimer, Support, ensure_supported, supports_from_table
from mobilekit._deps import require
from mobilekit._io import atomic_path
from mobilekit.errors import ConfigError, ExportError
from mobilekit.recipe import Recipe

logger = logging.getLogger(__name__)

PRECISIONS: dict[str | None, tuple[str, ...]] = {None: ("fp32", "fp16", "int8-weight", "int8-dynamic",
                                                        "int8-static")}
OPSET = 18
# Weights with fewer elements than this stay float in int8-weight (biases, norms, tiny layers).
MIN_QUANTIZED_WEIGHT_ELEMENTS = 256
MATMUL_NBITS_BLOCK = 32
# bytes; bigger models keep their weights in a .data file (protobuf cannot serialize a 2 GB message)
_PROTOBUF_LIMIT = 2**31 - 2**26
_DATA_FILE = "model.onnx.data"


class OnnxConverter:
    """Exports a model to ONNX, run by ONNX Runtime.

    Example:
        >>> conv = OnnxConverter()
        >>> conv.supports(Recipe.parse("onnx-int8-static")).ok
        True
    """

    format: ClassVar[str] = "onnx"
    precisions: ClassVar[dict[str | None, tuple[str, ...]]] = PRECISIONS
    # The exporter records each node's module path (``pkg.torch.onnx.name_scopes``) and ORT's
    # quantizers skip named nodes: any module can be left in float (``float_modules``).
    float_module_precisions: ClassVar[frozenset[str]] = frozenset({"int8-weight", "int8-dynamic", "int8-static"})

    def __init__(self, *, external_weights: bool = False, opset: int = OPSET) -> None:
        if not isinstance(opset, int) or opset < 17:
            raise ConfigError(f"opset must be an int >= 17, got {opset!r}", where="opset",
                              fix="use the default (18) unless a runtime needs another")
        self.external_weights = bool(external_weights)
        self.opset = opset

    def supports(self, recipe: Recipe) -> Support:
        """Whether ``recipe`` can be built here, with the reason and the buildable recipes when not."""
        if recipe.format != self.format:
            names = tuple(f"onnx-{p}" for p in PRECISIONS[None])
            return Support(False, f"the ONNX converter builds format onnx, not {recipe.format}", names)
        return supports_from_table(self.format, PRECISIONS, recipe)

    def convert(self, model: torch.nn.Module, example_inputs: tuple[Any, ...], recipe: Recipe, workdir: Path, *,
                calibration: Sequence[tuple[Any, ...]] | None = None, external_weights: bool | None = None,
                float_modules: Sequence[str] = (), **options: Any) -> ConvertResult:
        """Export ``model`` to ``workdir/model.onnx`` in the recipe's precision.

        Args:
            model: the PyTorch module; it is copied, never modified.
            example_inputs: one tensor per positional argument of ``forward`` (fixes the shapes).
            recipe: an ``onnx`` recipe.
            workdir: an existing, empty directory the files are written into.
            calibration: input batches for ``int8-static`` (None: the example inputs).
            external_weights: weights into ``model.onnx.data`` (None: the converter's setting;
                models over 2 GB always do this).
            float_modules: module paths (``model.named_modules()`` names) whose nodes stay float in an
                int8 recipe; export chooses them when the whole model would miss the parity floor.
            **options: options meant for other converters; ignored.

        Returns:
            The files written (relative to ``workdir``), seconds per stage, input/output names, notes.

        Raises:
            ConfigError: unsupported recipe or bad inputs.
            UnsupportedOpError: the exporter has no ONNX translation for an op (names op and module path).
            ExportError: capture, translation or quantization failed for another reason.

        Example:
            >>> res = OnnxConverter().convert(model, (x,), Recipe.parse("onnx-int8-dynamic"),
            ...                               Path("work"))  # doctest: +SKIP
        """
        if options:
            logger.debug("ignoring options for other converters: %s", sorted(options))
        ensure_supported(self, recipe)
        external = self.external_weights if external_weights is None else bool(external_weights)
        inputs = check_inputs(example_inputs)
        batches = check_calibration(calibration, inputs) if recipe.precision == "int8-static" else []
        floats = _check_float_modules(model, float_modules, recipe)
        workdir = Path(workdir)
        onnx = require("onnx", extra="onnx", purpose="to write .onnx files")
        require("onnxscript", extra="onnx", purpose="for torch.onnx.export(dynamo=True)")
        timer = StageTimer()
        notes: list[str] = []

        with timer("prepare"):
            module = prepared_model(model)
        with timer("lower"):
            program = static_reshapes(capture(module, inputs, backend=recipe.name))
            names = forward_arg_names(model)
            in_names = names[:len(inputs)] if len(names) >= len(inputs) else [f"input_{i}" for i in
                                                                              range(len(inputs))]
            onnx_program = _to_onnx(program, in_names, recipe.name, self.opset)
            float_nodes = _float_nodes(onnx_program, floats, notes) if floats else []
        big = weight_bytes(module) > _PROTOBUF_LIMIT
        if big:
            notes.append("weights over 2 GB (protobuf's limit): stored in the .data file beside the model")
        if recipe.precision == "fp32" and big:
            # Straight from the exporter's IR to disk: no in-memory protobuf, which can't exceed 2 GB.
            with timer("serialize"):
                filename, extra = _save_program(onnx_program, workdir)
            graph = onnx_program.model.graph
            return ConvertResult(filename=filename, extra_files=extra, stages=timer.stages,
                                 input_names=[str(v.name) for v in graph.inputs],
                                 output_names=[str(v.name) for v in graph.outputs], notes=notes)
        proto = onnx_program.model_proto
        del onnx_program
        # The exporter's optimizer can leave value_info shapes that ONNX shape inference rejects
        # (seen with diffusers' DiT); ORT's quantizers run shape inference, so drop them.
        del proto.graph.value_info[:]
        with timer("quantize"):
            with tempfile.TemporaryDirectory(prefix=".mk-onnx-", dir=workdir) as tmp:
                proto = _quantize(proto, recipe.precision, batches, Path(tmp), notes, big=big, model=module,
                                  float_nodes=float_nodes)
        with timer("serialize"):
            filename, extra = _save(onnx, proto, workdir, external or big)
        return ConvertResult(filename=filename, extra_files=extra, stages=timer.stages,
                             input_names=[i.name for i in proto.graph.input],
                             output_names=[o.name for o in proto.graph.output], notes=notes)


def _to_onnx(program: torch.export.ExportedProgram, in_names: list[str], backend: str, opset: int) -> Any:
    """Translate a captured program with the onnxscript-based exporter; returns its ``ONNXProgram``."""
    n_out = len(program.graph_signature.user_outputs)
    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]

    def translate(prog: torch.export.ExportedProgram) -> Any:
        return torch.onnx.export(prog, dynamo=True, input_names=in_names, output_names=out_names,
                                 opset_version=opset, optimize=True, verbose=False)

    try:
        onnx_program = translate(program)
    except Exception as exc:
        # The exporter re-traces with meta kernels whose strides can differ from the real ones
        # (attention outputs): a captured view then fails ("Cannot view a tensor with shape ...",
        # transformers' Swin). Decomposing here first and saying "reshape" for every view avoids it.
        try:
            onnx_program = translate(static_reshapes(program.run_decompositions()))
        except Exception:
            raise map_backend_error(exc, backend=backend, program=program, stage="translation", where=backend,
                                    fix="rewrite that module with ops ONNX has, or choose another format") from exc
        logger.debug("ONNX translation needed the decompose-first path: %s", first_line(exc))
    if onnx_program is None:
        raise ExportError("torch.onnx.export returned no program", where=backend, fix="report this with the model")
    return onnx_program


def _save_program(onnx_program: Any, workdir: Path) -> tuple[str, list[str]]:
    """Write an ``ONNXProgram`` with its weights in ``model.onnx.data`` (the work directory is private)."""
    graph = onnx_program.model.graph
    outputs = {id(v) for v in graph.outputs}
    for node in graph.all_nodes():  # same reason as the value_info drop on the protobuf path
        for value in node.outputs:
            if id(value) not in outputs:
                value.shape = None
                value.type = None
    try:
        onnx_program.save(str(workdir / "model.onnx"), external_data=True)
    except Exception as exc:
        raise ExportError(f"cannot write the ONNX model: {first_line(exc)}", where=str(workdir / "model.onnx"),
                          fix="check free disk space and permissions") from exc
    data = [p.name for p in workdir.iterdir() if p.name != "model.onnx" and p.is_file()]
    if data != [_DATA_FILE]:  # the exporter names the data file after the model file; keep one name
        raise ExportError(f"the ONNX exporter wrote {data}, expected {_DATA_FILE}", where=str(workdir))
    return "model.onnx", data


def _check_float_modules(model: torch.nn.Module, float_modules: Sequence[str], recipe: Recipe) -> tuple[str, ...]:
    """``float_modules`` checked before any work: modules of ``model``, and an int8 recipe."""
    floats = (float_modules,) if isinstance(float_modules, str) else tuple(float_modules)
    if not floats:
        return floats
    if recipe.precision not in OnnxConverter.float_module_precisions:
        raise ConfigError(f"float_modules: {recipe.name} quantizes nothing to keep float", where="float_modules",
                          fix="drop float_modules, or use an onnx-int8-* recipe")
    check_module_paths(model, floats)
    return floats


_FX_NAME = re.compile(r"^%(\S+) :")


def node_module_paths(onnx_program: Any) -> dict[str, set[str]]:
    """The module paths each node of an exported ``ONNXProgram`` runs inside, by node name.

    The exporter writes a node's module stack into ``pkg.torch.onnx.name_scopes``. A node an
    onnxscript rewrite fused (``FuseBatchNormIntoConv``: the Conv carries the BatchNorm's scope)
    belongs to its inputs' modules too, read from the exporter's own FX graph.
    """
    import ast

    fx = {n.name: n for n in onnx_program.exported_program.graph.nodes}

    def stack(fx_node: Any) -> set[str]:
        return {path for path, _ in (fx_node.meta.get("nn_module_stack") or {}).values()}

    out: dict[str, set[str]] = {}
    for node in onnx_program.model_proto.graph.node:
        meta = {e.key: e.value for e in node.metadata_props}
        try:  # the module stack, then the FX node's own name last
            paths = set(ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))[:-1])
        except (ValueError, SyntaxError):
            paths = set()
        m = _FX_NAME.match(meta.get("pkg.torch.onnx.fx_node", ""))
        if m and m.group(1) in fx and "pkg.onnxscript.rewriter.rule_name" in meta:
            for arg in fx[m.group(1)].all_input_nodes:
                paths |= stack(arg)
        out[node.name] = paths
    return out


def _float_nodes(onnx_program: Any, float_modules: Sequence[str], notes: list[str]) -> list[str]:
    """Names of the ONNX nodes inside ``float_modules``; a note for each module no node belongs to."""
    paths = node_module_paths(onnx_program)
    owned = {m: [name for name, scopes in paths.items() if name and any(within_module(s, m) for s in scopes)]
             for m in float_modules}
    nodes = sorted({n for ns in owned.values() for n in ns})
    # ORT's quantizers first rewrite a Gemm as MatMul + Add named after it, and match
    # nodes_to_exclude against those new names (seen: quantize_dynamic quantized an excluded Gemm)
    nodes += [f"{n}_MatMul" for n in nodes]
    notes.extend(f"float_modules: no node of the graph belongs to {m}; it is quantized like the rest"
                 for m, ns in owned.items() if not ns)
    notes.append(f"float_modules: {len(float_modules)} module(s) left in float ({len(nodes) // 2} ONNX nodes): "
                 f"{', '.join(float_modules)}")
    return nodes


def _quantize(proto: Any, precision: str, batches: list[tuple[torch.Tensor, ...]], tmp: Path,
              notes: list[str], *, big: bool = False, model: torch.nn.Module | None = None,
              float_nodes: Sequence[str] = ()) -> Any:
    """Apply the precision's transform to the ModelProto and return the new one.

    ``model``: the PyTorch model, for int8-static's measured fallback (None: no measurement, the
    QDQ model on every op type is returned as it is). ``float_nodes``: node names left in float.
    """
    import onnx

    if precision == "fp32":
        return proto
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            out = convert_float_to_float16(proto, keep_io_types=True)
        except Exception as exc:
            raise ExportError(f"float16 conversion failed: {first_line(exc)}", where="onnx-fp16",
                              fix="use onnx-fp32 or onnx-int8-weight") from exc
        notes.append("float16 weights and compute; inputs and outputs stay float32")
        return out
    if precision == "int8-weight":
        return _weight_only_int8(proto, notes, float_nodes)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    src, dst = tmp / "float.onnx", tmp / "quantized.onnx"
    if big:
        onnx.save(proto, str(src), save_as_external_data=True, all_tensors_to_one_file=True, location="float.data")
    else:
        onnx.save(proto, str(src))
    try:
        batched = _matmuls_on_batched_constants(proto)
        if batched:
            notes.append(f"{len(batched)} MatMul(s) on constant tensors of rank > 2 left in float "
                         "(ONNX Runtime's per-channel int8 MatMul takes 2-D weights)")
        if precision == "int8-dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=big,
                             nodes_to_exclude=batched + list(float_nodes))
            notes.append("int8 per-channel weights on MatMul/Gemm, activations quantized at run time")
        else:
            in_names = [i.name for i in proto.graph.input]
            keep_float = _shared_param_nodes_on_constants(proto) + batched
            pools = _ceil_mode_counted_pools(proto)

            exclude = keep_float + pools + list(float_nodes)

            def static(out: Path, op_types: Sequence[str] | None = None) -> None:
                quantize_static(str(src), str(out), _CalibrationReader(in_names, batches),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                                op_types_to_quantize=None if op_types is None else list(op_types),
                                use_external_data_format=big)

            static(dst)
            if keep_float:
                notes.append(f"{len(keep_float)} node(s) left in float (layout ops on constants, "
                             "InstanceNormalization)")
            if pools:
                notes.append(f"{len(pools)} AveragePool(s) with ceil_mode and count_include_pad left in float "
                             "(ONNX Runtime 1.31's QLinearAveragePool divides their partial windows by the whole "
                             "kernel: EfficientNet's pooler output came out all zeros)")
            notes.append(f"QDQ int8: uint8 activations calibrated on {len(batches)} batch(es), "
                         "int8 per-channel weights")
            if model is not None:
                dst = _static_with_fallback(dst, static, model, batches, notes)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime {precision} quantization failed: {first_line(exc)}",
                          where=f"onnx-{precision}", fix="try onnx-int8-weight or onnx-fp32") from exc
    return onnx.load(str(dst))


# The op types whose int8 kernels carry a model's arithmetic: when QDQ int8 on every op type ORT
# quantizes loses the int8-static floor on the calibration batches, only these stay int8 (the same
# rule as the TFLite converter's fallback).
_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _static_with_fallback(full: Path, requantize: Any, model: torch.nn.Module,
                          batches: list[tuple[torch.Tensor, ...]], notes: list[str]) -> Path:
    """The QDQ model at ``full``, or one with only ``_COMPUTE_OPS`` in int8 when ``full`` loses the floor.

    Both are measured on the calibration batches (the held-out parity inputs stay unseen) in a
    child process, against PyTorch; the one kept is the first that holds the default int8-static
    floor, else the closer one. ``requantize(path, op_types)`` writes the compute-ops model. The
    choice and both measurements go into the artifact's notes.
    """
    from mobilekit.converters._torch_common import calibration_parity, choose_int8_static

    mixed = full.with_name("compute-int8.onnx")

    def make_mixed() -> Path:
        requantize(mixed, _COMPUTE_OPS)
        return mixed

    return choose_int8_static(full, make_mixed, calibration_parity(model, batches, runtime="onnxruntime"), notes,
                              whole="int8 on every op type ONNX Runtime quantizes", runtime="ONNX Runtime",
                              compute_ops=_COMPUTE_OPS, kept_mixed="compute-ops model",
                              kept_full="all-op-types model")


def _ceil_mode_counted_pools(proto: Any) -> list[str]:
    """AveragePool nodes with ``ceil_mode`` and ``count_include_pad``: they must stay float.

    A window that runs past the input (ceil_mode) averages only the elements inside it, in
    PyTorch and in ORT's float AveragePool; ORT 1.31's QLinearAveragePool (what a QDQ AveragePool
    becomes) divides by the whole kernel instead. Transformers' EfficientNet pools a 2x2 map with
    a 320x320 ceil-mode kernel: quantized, its pooler output was all zeros.
    """
    def attr(node: Any, name: str) -> int:
        return next((a.i for a in node.attribute if a.name == name), 0)

    return [n.name for n in proto.graph.node if n.op_type == "AveragePool" and n.name
            and attr(n, "ceil_mode") and attr(n, "count_include_pad")]


# QDQ ops whose output reuses the input's quantization parameters; ORT 1.31 cannot do that when the
# input is a constant ("Quantization parameter shared mode is not supported for weight yet").
_SHARED_PARAM_OPS = frozenset({"AveragePool", "Flatten", "Gather", "GatherElements", "MaxPool", "Pad", "Reshape",
                               "Resize", "Slice", "Split", "Squeeze", "TopK", "Transpose", "Unsqueeze"})


def _shared_param_nodes_on_constants(proto: Any) -> list[str]:
    """Names of shared-parameter nodes whose data input is a constant: they must stay float."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    names = [n.name for n in proto.graph.node
             if n.op_type in _SHARED_PARAM_OPS and n.input and n.input[0] in constants and n.name]
    # ORT 1.31's QDQ InstanceNormalization makes its (reshaped) input share parameters with a tensor it
    # has turned into an initializer, and fails the same way (seen on the E2GAN generator): keep it float.
    names += [n.name for n in proto.graph.node if n.op_type == "InstanceNormalization" and n.name]
    return names


def _matmuls_on_batched_constants(proto: Any) -> list[str]:
    """MatMul nodes whose constant input has rank > 2 (seen: Swin's attention after decomposition).

    ONNX Runtime 1.31 quantizes them per channel with a zero-point shape its int8 MatMul kernels
    reject at run time ("MatmulInteger : b zero point is not valid"), so they stay float.
    """
    ranks = {t.name: len(t.dims) for t in proto.graph.initializer}
    ranks |= {o: len(a.t.dims) for n in proto.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value" for o in n.output}
    return [n.name for n in proto.graph.node
            if n.op_type == "MatMul" and n.name and any(ranks.get(i, 0) > 2 for i in n.input)]


class _CalibrationReader:
    """Feeds calibration batches to ``quantize_static`` (an ORT ``CalibrationDataReader``)."""

    def __init__(self, names: list[str], batches: list[tuple[torch.Tensor, ...]]) -> None:
        self._feeds = [{n: t.detach().cpu().numpy() for n, t in zip(names, batch, strict=True)}
                       for batch in batches]
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def _weight_only_int8(proto: Any, notes: list[str], float_nodes: Sequence[str] = ()) -> Any:
    """int8 weights, float activations: MatMulNBits for MatMul, DequantizeLinear for Gemm/Conv.

    ``float_nodes``: node names whose weights stay float.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    before = sum(1 for n in proto.graph.node if n.op_type == "MatMul")
    try:
        quantizer = MatMulNBitsQuantizer(proto, bits=8, block_size=MATMUL_NBITS_BLOCK, is_symmetric=True,
                                         nodes_to_exclude=list(float_nodes))
        quantizer.process()
        proto = quantizer.model.model
    except Exception as exc:
        raise ExportError(f"MatMulNBits int8 weight quantization failed: {first_line(exc)}", where="onnx-int8-weight",
                          fix="try onnx-int8-dynamic or onnx-fp32") from exc
    nbits = sum(1 for n in proto.graph.node if n.op_type == "MatMulNBits")
    dq = _dequantize_linear_weights(proto, set(float_nodes))
    notes.append(f"int8 weights: {nbits} of {before} MatMul as MatMulNBits (block {MATMUL_NBITS_BLOCK}), "
                 f"{dq} Gemm/Conv weights per-channel behind DequantizeLinear; activations float")
    if nbits + dq == 0:
        notes.append("no weight was large enough to quantize: the model is unchanged float32")
        logger.warning("onnx-int8-weight quantized no weight (all below %d elements or not constant)",
                       MIN_QUANTIZED_WEIGHT_ELEMENTS)
    return proto


def _dequantize_linear_weights(proto: Any, skip: Collection[str] = ()) -> int:
    """Store float Gemm/Conv weights as int8 (per output channel) + DequantizeLinear; return how many.

    ``skip``: node names whose weights stay float.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    new_nodes, done = [], 0
    for node in proto.graph.node:
        if node.op_type not in ("Gemm", "Conv") or len(node.input) < 2 or node.name in skip:
            continue
        name = node.input[1]
        tensor = inits.get(name)
        if tensor is None or tensor.data_type != TensorProto.FLOAT or users.get(name, 0) != 1:
            continue
        w = numpy_helper.to_array(tensor).astype(np.float32)
        if w.size < MIN_QUANTIZED_WEIGHT_ELEMENTS or w.ndim < 2:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 1 if node.op_type == "Gemm" and not trans_b else 0
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.maximum(np.abs(w).max(axis=reduce) / 127.0, 1e-12).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        proto.graph.initializer.remove(tensor)
        proto.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                        numpy_helper.from_array(scale, f"{name}_scale"),
                                        numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zp")])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zp"],
                                          [f"{name}_dq"], name=f"{name}_DequantizeLinear", axis=axis))
        node.input[1] = f"{name}_dq"
        done += 1
    for i, dq in enumerate(new_nodes):  # inputs are initializers: put them first, order stays topological
        proto.graph.node.insert(i, dq)
    return done


def _save(onnx: Any, proto: Any, workdir: Path, external: bool) -> tuple[str, list[str]]:
    """Write ``model.onnx`` (and ``model.onnx.data``); return their names relative to ``workdir``."""
    filename = "model.onnx"
    try:
        with atomic_path(workdir / filename) as tmp:
            if external:
                onnx.save(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                          location=_DATA_FILE, size_threshold=1024)
            else:
                onnx.save(proto, str(tmp))
    except Exception as exc:
        raise ExportError(f"cannot write the ONNX model: {first_line(exc)}", where=str(workdir / filename),
                          fix="check free disk space and permissions") from exc
    return filename, ([_DATA_FILE] if (workdir / _DATA_FILE).exists() else [])


def relink_external_data(src: Path, dest: Path, location: str) -> None:
    """Write a copy of ``src`` (an .onnx with external weights) whose tensors point at ``location``.

    Only the graph is rewritten (kilobytes); the weight file itself is placed by the caller.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    proto = onnx.load(str(src), load_external_data=False)
    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            info = ExternalDataInfo(tensor)
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", info.offset), ("length", info.length)):
                if value is not None:
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, str(value)
    with atomic_path(dest) as tmp:
        onnx.save(proto, str(tmp))
