"""Per-op precision: which arithmetic and which byte widths each op of a recipe really runs at.

A recipe's precision names what the converter was asked for, not what every op ends up
running at. ``op_precisions`` says, per op, which of ``graph.PRECISION_BYTES`` applies,
following what this repo's converters (and the runtimes of the calibration set) do:

* ``int8-dynamic`` quantizes only fully connected layers: ExecuTorch's ``XNNPACKQuantizer`` is
  set on ``torch.nn.Linear`` modules only (``converters/executorch.py``), and ONNX Runtime's
  ``quantize_dynamic`` on ``MatMul``/``Gemm`` with a constant weight (``MatMulConstBOnly`` is its
  default). Convolutions, norms and elementwise ops stay fp32. ai-edge-quantizer's
  ``dynamic_wi8_afp32`` (TFLite) also takes ``CONV_2D``, ``DEPTHWISE_CONV_2D`` and
  ``CONV_2D_TRANSPOSE``.
* ``int8-weight`` stores int8 weights and computes in float: weighted matmuls (torchao's
  ``IntxWeightOnlyConfig`` for the ExecuTorch Core ML delegate takes ``nn.Linear`` only), plus
  convolutions for ONNX (``DequantizeLinear`` on Conv/Gemm weights), TFLite and Core ML.
* ``int8-static`` on a CPU: XNNPACK's static quantizer annotates conv, linear, add, mul, pooling
  and cat; ONNX Runtime's QDQ ``quantize_static`` also every MatMul. Norms, attention and index
  ops stay float. On an NPU (HTP, ANE) and in full-integer TFLite, QNN and Core ML models, every
  op the delegate takes is int8.
* ``fp16`` is fp16 everywhere except TFLite on a CPU, whose fp16 recipe is weight-only casting
  that XNNPACK dequantizes to fp32 at load, so it runs (and moves bytes) as fp32.
* ``w8a16`` (QNN): weighted ops w8a16, the rest fp16.

When the exported artifact is at hand, what it really quantized overrides the table
(``artifact_overrides`` picks the reader by suffix; the estimate's ``precision_from`` names it):

* ``.onnx``: ``read_onnx_precisions`` reads the graph (``MatMulInteger``/``ConvInteger`` = dynamic,
  ``QLinear*`` or ``DequantizeLinear`` on both inputs = static, ``MatMulNBits`` or a dequantized
  weight with float activations = weight-only) for weighted conv and matmul ops.
* ``.tflite``: ``read_tflite_precisions`` reads the flatbuffer with LiteRT's generated schema (no
  interpreter) from tensor types: int8 activations = static, float activations on an int8
  weight = dynamic (hybrid kernels), a ``DEQUANTIZE`` on the weight = weight-only (int8) or float
  (float16). It also counts the other ops (``other``): the converter's int8-static fallback keeps
  only conv/matmul in int8 when the full-integer model loses parity, which the recipe name hides.
* ``.pte``: a delegate's payload is opaque, so the ExecuTorch converter counts weighted conv and
  linear ops by their dequantize patterns before lowering, the export stores them as the
  artifact's ``op_precisions`` in ``manifest.json``, and ``read_pte_precisions`` reads them there.
* ``.mlpackage``: ``read_coreml_precisions`` reads the ML Program's spec (no Core ML runtime):
  a weight rebuilt by a constexpr dequantize op = weight-only, activations from a ``dequantize`` =
  static, else the op's output type (fp16 or fp32 compute). What the package shows can differ from
  the table: ``linear_quantize_weights`` leaves weights under ``MIN_QUANTIZED_WEIGHT_ELEMENTS``
  (a small first conv) in fp16.

Anything else (a ``.pte`` without its manifest) is priced by the table.

Mixed artifacts are priced layer by layer, not by a vote of op counts: converters leave small
weights float (Core ML and ONNX int8-weight below ``MIN_QUANTIZED_WEIGHT_ELEMENTS``, TFLite's
``float_modules``), and those many small layers outnumber the few large int8 ones that hold the
bytes and MACs. Each reader sizes every op it finds (``BuiltOp``: weight elements of a conv or
matmul, output elements of another op); ``match_by_size`` gives each of the estimator's conv and
matmul layers the precision of the artifact's layer of its size, and the other ops take the
precision of most output elements. A ``.pte``'s manifest records counts only: its majority applies.

``plan`` turns the per-op precisions into per-op bytes and peaks; both the fit
(``fit.py``) and ``estimate()`` price ops through it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mobilekit.estimation.devices import peak_key
from mobilekit.estimation.graph import KINDS, PRECISION_BYTES

_K = {k: i for i, k in enumerate(KINDS)}
_CONV_KINDS = frozenset({"conv", "dwconv"})
# kinds XNNPACK's static quantizer (conv, linear, add/mul, pooling, cat) keeps in int8
_XNN_STATIC = frozenset({"conv", "dwconv", "elementwise", "pool", "copy"})
# ONNX Runtime's QDQ quantize_static: the same plus every MatMul (attention's too)
_ORT_STATIC = frozenset({"conv", "dwconv", "matmul", "attention", "elementwise", "pool", "copy"})
# formats whose int8-static models are full-integer (every delegated op in int8)
_FULL_INT = frozenset({"tflite", "qnn", "coreml"})
# what the artifact readers count: weighted ops by kind, and every other op
_WEIGHTED_KINDS = ("conv", "matmul")
_COMPUTE_KINDS = (*_WEIGHTED_KINDS, "other")


class BuiltOp(NamedTuple):
    """One op an artifact reader found: its kind (``conv``, ``matmul``, ``other``), the precision
    it runs at, and its size: the weight's elements for a conv or matmul, the output's for
    another op (0 when the artifact does not say)."""

    kind: str
    precision: str
    size: float


def tally(built: Sequence[BuiltOp], kinds: Sequence[str] = ()) -> dict[str, Counter[str]]:
    """Ops per kind and precision (``kinds`` listed even when empty): what the readers return."""
    out: dict[str, Counter[str]] = {k: Counter() for k in kinds}
    for b in built:
        out.setdefault(b.kind, Counter())[b.precision] += 1
    return out


def float_precision(precision: str, unit: str) -> str:
    """The float precision the ops a recipe leaves unquantized run at on ``unit``."""
    if precision in ("fp16", "w8a16") or unit == "npu":
        return "fp16"
    if unit == "gpu" and precision != "fp32":
        return "fp16"
    return "fp32"


def op_float_precision(precision: str, unit: str, fmt: str | None) -> str:
    """The float precision an artifact's unquantized ops run at: ``float_precision``, except TFLite on
    a CPU, where every float op runs at fp32 (its fp16 recipe only casts weights, which XNNPACK
    dequantizes to fp32 at load)."""
    if fmt == "tflite" and unit in ("cpu", "cpu1"):
        return "fp32"
    return float_precision(precision, unit)


def kind_precision(kind: str, weighted: bool, *, fmt: str | None, unit: str, precision: str) -> str:
    """Precision (a key of ``PRECISION_BYTES``) of one op of ``kind`` under a recipe.

    Args:
        kind: one of ``graph.KINDS``.
        weighted: the op reads a parameter or constant (a Linear, a Conv), not only activations.
        fmt: export format (``executorch``, ``onnx``, ``tflite``, ``coreml``, ``qnn``; None: ExecuTorch's rules).
        unit: ``cpu``, ``cpu1``, ``gpu`` or ``npu``.
        precision: the recipe's precision.
    """
    unit = "cpu" if unit == "cpu1" else unit
    flt = op_float_precision(precision, unit, fmt)
    if precision in ("fp32", "fp16"):
        return flt
    if precision == "w8a16":
        return "w8a16" if weighted else "fp16"
    if precision == "int8-weight":
        takes_conv = fmt in ("onnx", "tflite", "coreml")
        ok = weighted and (kind == "matmul" or (takes_conv and kind in _CONV_KINDS))
        return "int8-weight" if ok else flt
    if precision == "int8-dynamic":
        ok = weighted and (kind == "matmul" or (fmt == "tflite" and kind in _CONV_KINDS))
        return "int8-dynamic" if ok else flt
    if precision == "int8-static":
        if unit == "npu" or fmt in _FULL_INT:
            return "int8-static"
        if fmt == "onnx":
            return "int8-static" if kind in _ORT_STATIC else flt
        ok = kind in _XNN_STATIC or (kind == "matmul" and weighted)  # linear, not bmm
        return "int8-static" if ok else flt
    raise KeyError(precision)


def precision_table(*, fmt: str | None, unit: str, precision: str) -> dict[str, dict[str, str]]:
    """``{kind: {"weighted": precision, "activations": precision}}`` for a recipe (for docs and reports)."""
    return {k: {"weighted": kind_precision(k, True, fmt=fmt, unit=unit, precision=precision),
                "activations": kind_precision(k, False, fmt=fmt, unit=unit, precision=precision)} for k in KINDS}


# per kind: one precision, or the artifact's ops of that kind as (weight elements, precision)
Overrides = Mapping[str, str | Sequence[tuple[float, str]]]


def op_precisions(kind: np.ndarray, weight_elems: np.ndarray, *, fmt: str | None, unit: str, precision: str,
                  overrides: Overrides | None = None) -> np.ndarray:
    """Per-op precision (object array of ``PRECISION_BYTES`` keys).

    Args:
        kind: per-op index into ``graph.KINDS`` (``OpArrays.kind``).
        weight_elems: per-op weight elements (``OpArrays.weight_elems``).
        fmt, unit, precision: the recipe (see ``kind_precision``).
        overrides: ``{"conv"|"matmul"|"other": precision}`` read from an exported artifact;
            ``conv`` and ``matmul`` apply to weighted ops of that kind (``conv`` covers depthwise
            convs), ``other`` to every other op (a TFLite int8-static model that kept only its
            compute ops in int8 runs the rest in float). ``conv`` or ``matmul`` may instead be the
            artifact's ops of that kind as ``(weight elements, precision)``: see ``match_by_size``.
    """
    table = {(i, w): kind_precision(k, w, fmt=fmt, unit=unit, precision=precision)
             for i, k in enumerate(KINDS) for w in (False, True)}
    overrides = dict(overrides or {})
    if "other" in overrides:
        table = dict.fromkeys(table, overrides.pop("other")) | {
            (_K[k], True): table[(_K[k], True)] for k in ("conv", "dwconv", "matmul")}
    sized = {name: built for name, built in overrides.items() if not isinstance(built, str)}
    for name, prec in overrides.items():
        for k in (("conv", "dwconv") if name == "conv" else (name,)):
            if name not in sized:
                table[(_K[k], True)] = prec
    weight_elems = np.asarray(weight_elems, dtype=float)
    weighted = weight_elems > 0
    out = np.empty(len(kind), dtype=object)
    for j, (k, w) in enumerate(zip(np.asarray(kind).tolist(), weighted.tolist())):
        out[j] = table[(k, w)]
    for name, built in sized.items():
        kinds = [_K[k] for k in (("conv", "dwconv") if name == "conv" else (name,))]
        idx = np.flatnonzero(np.isin(kind, kinds) & weighted)
        if idx.size and built:
            out[idx] = match_by_size(weight_elems[idx], built)
    return out


def match_by_size(sizes: np.ndarray, built: Sequence[tuple[float, str]]) -> np.ndarray:
    """Precision of each of the estimator's weighted ops of one kind, from the artifact's ops of that kind.

    Both sides are ranked by weight size and each op takes the precision of the artifact op at the
    same point of the kind's cumulative weights (the middle of its own share): op for op when the
    artifact has the same layers, which is what a converter that leaves small weights float needs;
    when the artifact fused or split some layers, each precision still prices about its share of
    the weights.

    Args:
        sizes: weight elements of the estimator's ops (all > 0).
        built: ``(weight elements, precision)`` of the artifact's ops (all sizes > 0).
    """
    order = np.argsort(-sizes, kind="stable")
    ranked = sorted(built, key=lambda b: -b[0])
    edges = np.cumsum([b[0] for b in ranked]) / sum(b[0] for b in ranked)
    w = sizes[order]
    mids = (np.cumsum(w) - w / 2) / w.sum()
    pick = np.minimum(np.searchsorted(edges, mids, side="right"), len(ranked) - 1)
    out = np.empty(len(sizes), dtype=object)
    out[order] = [ranked[j][1] for j in pick.tolist()]
    return out


@dataclass(frozen=True)
class OpPlan:
    """Per-op precision, bytes moved and peak GOP/s of one model on one unit.

    Attributes:
        precision: per-op precision names.
        byts: per-op bytes at its precision.
        peak: per-op peak GOP/s of its arithmetic on the unit.
        keys: per-op peak key (``"cpu.int8"``).
    """

    precision: np.ndarray
    byts: np.ndarray
    peak: np.ndarray
    keys: np.ndarray


def peak_keys(precisions: np.ndarray, unit: str) -> np.ndarray:
    """Per-op peak key ``"<unit>.<fp32|fp16|int8>"`` for per-op precisions."""
    cache: dict[str, str] = {}
    return np.array([cache.setdefault(p, f"{unit}.{peak_key(p, 'cpu' if unit == 'cpu1' else unit)}")
                     for p in precisions.tolist()], dtype=object)


def plan(ops: Any, *, fmt: str | None, unit: str, precision: str, peaks: Mapping[str, float],
         overrides: Overrides | None = None) -> OpPlan:
    """Price every op of ``ops`` (an ``OpArrays``) at its own precision.

    Raises:
        KeyError: a peak key the ops need is missing from ``peaks`` (the message is the key).
    """
    prec = op_precisions(ops.kind, ops.weight_elems, fmt=fmt, unit=unit, precision=precision, overrides=overrides)
    wb = np.array([PRECISION_BYTES[p][0] for p in prec.tolist()], dtype=float)
    ab = np.array([PRECISION_BYTES[p][1] for p in prec.tolist()], dtype=float)
    keys = peak_keys(prec, unit)
    missing = sorted({k for k in keys.tolist() if k not in peaks})
    if missing:
        raise KeyError(missing[0])
    peak = np.array([float(peaks[k]) for k in keys.tolist()], dtype=float)
    return OpPlan(precision=prec, byts=ops.weight_elems * wb + ops.act_elems * ab, peak=peak, keys=keys)


def needed_keys(ops: Any, *, fmt: str | None, unit: str, precision: str,
                overrides: Overrides | None = None) -> tuple[str, ...]:
    """The peak keys ``plan`` will look up for these ops."""
    prec = op_precisions(ops.kind, ops.weight_elems, fmt=fmt, unit=unit, precision=precision, overrides=overrides)
    return tuple(sorted(set(peak_keys(prec, unit).tolist())))


# --- what an exported ONNX graph actually quantized ---------------------------------------------

_ONNX_KIND = {"Conv": "conv", "ConvTranspose": "conv", "ConvInteger": "conv", "QLinearConv": "conv",
              "MatMul": "matmul", "Gemm": "matmul", "MatMulInteger": "matmul", "QLinearMatMul": "matmul",
              "MatMulNBits": "matmul", "DynamicQuantizeMatMul": "matmul"}


# QOperator nodes whose weight is not their second input: (a, a_scale, a_zero_point, w, ...)
_ONNX_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3}


def read_onnx_precisions(path: str | Path, float_prec: str = "fp32") -> dict[str, Counter[str]]:
    """Count the weighted conv and matmul nodes of an ONNX file by the precision they run at.

    Only the graph is read (external weight data is not loaded). A Conv/MatMul/Gemm counts as
    weighted when its second input is an initializer or comes from a ``DequantizeLinear`` of one.

    Returns:
        ``{"conv": Counter({"fp32": 3}), "matmul": Counter({"int8-dynamic": 2})}``.
    """
    return tally(_onnx_ops(path, float_prec), _WEIGHTED_KINDS)


def _onnx_ops(path: str | Path, float_prec: str) -> list[BuiltOp]:
    """The weighted conv and matmul nodes of an ONNX graph (see ``read_onnx_precisions``), with their
    weight elements (from the initializer's dims, so external data is not needed)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    inits = {i.name: float(np.prod(i.dims)) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def from_dq(name: str) -> bool:
        n = producer.get(name)
        return n is not None and n.op_type == "DequantizeLinear"

    def const(name: str) -> bool:
        if name in inits:
            return True
        n = producer.get(name)
        if n is None:
            return False
        if n.op_type == "Constant":
            return True
        if n.op_type in ("DequantizeLinear", "Transpose", "Reshape", "Cast"):
            return bool(n.input) and const(n.input[0])
        return False

    def elems(name: str) -> float:
        """Elements of the constant behind ``name`` (0 when unknown)."""
        if name in inits:
            return inits[name]
        n = producer.get(name)
        if n is not None and n.op_type == "Constant":
            return next((float(np.prod(a.t.dims)) for a in n.attribute if a.name == "value"), 0.0)
        if n is not None and n.op_type in ("DequantizeLinear", "Transpose", "Reshape", "Cast") and n.input:
            return elems(n.input[0])
        return 0.0

    out: list[BuiltOp] = []
    for n in g.node:
        kind = _ONNX_KIND.get(n.op_type)
        if kind is None or len(n.input) < 2:
            continue
        op = n.op_type
        w_in = _ONNX_WEIGHT_INPUT.get(op, 1)
        if len(n.input) <= w_in:
            continue
        if op in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"):
            prec = "int8-dynamic"
        elif op in ("QLinearConv", "QLinearMatMul"):
            prec = "int8-static"
        elif op == "MatMulNBits":
            prec = "int8-weight"
        else:
            if not const(n.input[1]):
                continue  # activation x activation matmul: not a weighted op
            if from_dq(n.input[1]):
                prec = "int8-static" if from_dq(n.input[0]) else "int8-weight"
            else:
                prec = float_prec
        if op in ("MatMulInteger", "QLinearMatMul") and not (const(n.input[w_in]) or from_dq(n.input[w_in])):
            continue  # an integer matmul of two activations (attention): not a weighted op
        if op == "MatMulNBits":  # the packed weight's dims are blocks; K x N are attributes
            attr = {a.name: a.i for a in n.attribute}
            size = float(attr.get("K", 0) * attr.get("N", 0))
        else:
            size = elems(n.input[w_in])
        out.append(BuiltOp(kind, prec, size))
    return out


# --- what an exported TFLite flatbuffer actually quantized ------------------------------------

# weighted op -> (kind, index of its activation input, index of its weight input)
_TFL_WEIGHTED = {"CONV_2D": ("conv", 0, 1), "DEPTHWISE_CONV_2D": ("conv", 0, 1), "CONV_3D": ("conv", 0, 1),
                 "TRANSPOSE_CONV": ("conv", 2, 1), "CONV_3D_TRANSPOSE": ("conv", 2, 1),
                 "FULLY_CONNECTED": ("matmul", 0, 1), "BATCH_MATMUL": ("matmul", 0, 1)}
# conversions at the edges of int8 regions, not arithmetic of the model
_TFL_CASTS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def _tflite_schema() -> Any:
    """The flatbuffer schema module LiteRT ships (pure Python over ``flatbuffers``: no interpreter)."""
    from mobilekit._deps import require

    return require("ai_edge_litert.schema_py_generated", extra="tflite", purpose="to read .tflite graphs")


def _tflite_weighted_precision(act: str, weight: str, dequantized: bool, float_prec: str) -> str:
    """Precision of a conv/matmul from its activation and weight tensor types (schema names).

    ``dequantized``: the weight reaches the op through a DEQUANTIZE (the op itself computes in float).
    """
    if act in ("INT8", "UINT8"):
        return "int8-static"
    if weight in ("INT8", "INT4") and not dequantized:
        return "int8-dynamic"  # a hybrid kernel: float activations quantized at run time
    if weight in ("INT8", "INT4"):
        return "int8-weight"
    return float_prec  # float32, or float16 weights dequantized at load


def read_tflite_precisions(path: str | Path, float_prec: str = "fp32") -> dict[str, Counter[str]]:
    """Count the ops of a ``.tflite`` by the precision they run at, reading the flatbuffer directly.

    A conv (``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``TRANSPOSE_CONV``, 3-D ones) or matmul
    (``FULLY_CONNECTED``, ``BATCH_MATMUL``) is weighted when its weight is a constant buffer,
    directly or through a ``DEQUANTIZE``. Its precision comes from the tensor types, as
    ai-edge-quantizer writes them: int8 activations = ``int8-static``; float activations with an
    int8 weight = ``int8-dynamic`` (``dynamic_wi8_afp32``: hybrid kernels); an int8 weight through
    a ``DEQUANTIZE`` = ``int8-weight`` (``weight_only_wi8_afp32``); float32 or dequantized float16
    weights = ``float_prec``. Every other op (QUANTIZE/DEQUANTIZE and integer index ops aside) is
    counted under ``other``: ``int8-static`` on int8 inputs, else ``float_prec``; that is what
    tells a full-integer int8-static model from the converter's compute-ops-only fallback.

    Args:
        path: the ``.tflite`` file (memory-mapped, not loaded).
        float_prec: the precision float ops run at on the estimated unit.

    Returns:
        ``{"conv": Counter({"int8-dynamic": 1}), "matmul": Counter(...), "other": Counter(...)}``.
    """
    return tally(_tflite_ops(path, float_prec), _COMPUTE_KINDS)


def _tflite_ops(path: str | Path, float_prec: str) -> list[BuiltOp]:
    """The ops of a ``.tflite`` (see ``read_tflite_precisions``), sized by their weight tensor's
    elements (conv, matmul) or their first output's (other ops)."""
    import mmap

    s = _tflite_schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    out: list[BuiltOp] = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        model = s.Model.GetRootAs(buf, 0)
        for si in range(model.SubgraphsLength()):
            _tflite_subgraph_ops(model, model.Subgraphs(si), names, types, float_prec, out)
    return out


def _tflite_subgraph_ops(model: Any, g: Any, names: Mapping[int, str], types: Mapping[int, str],
                         float_prec: str, out: list[BuiltOp]) -> None:
    ops = [g.Operators(i) for i in range(g.OperatorsLength())]

    def op_name(op: Any) -> str:
        code = model.OperatorCodes(op.OpcodeIndex())
        # builtin codes past 127 live in BuiltinCode; older files only fill the deprecated byte
        return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")

    producer = {op.Outputs(j): op for op in ops for j in range(op.OutputsLength())}

    def const(t: int) -> bool:
        b = model.Buffers(g.Tensors(t).Buffer())
        return b is not None and (b.DataLength() > 0 or b.Size() > 0)  # Size: data past the 2 GB flatbuffer

    def ttype(t: int) -> str:
        return types.get(g.Tensors(t).Type(), "?")

    def elems(t: int) -> float:
        x = g.Tensors(t)
        return float(np.prod([max(x.Shape(i), 1) for i in range(x.ShapeLength())]))  # -1: a dynamic dim

    for op in ops:
        name = op_name(op)
        if name in _TFL_CASTS:
            continue
        inputs = [op.Inputs(j) for j in range(op.InputsLength())]
        weighted = _TFL_WEIGHTED.get(name)
        if weighted is not None and len(inputs) > max(weighted[1:]):
            kind, a, w = weighted
            src = producer.get(inputs[w])
            dequantized = src is not None and op_name(src) == "DEQUANTIZE" and src.InputsLength() > 0
            wt = src.Inputs(0) if dequantized else inputs[w]
            if const(wt):
                prec = _tflite_weighted_precision(ttype(inputs[a]), ttype(wt), dequantized, float_prec)
                out.append(BuiltOp(kind, prec, elems(wt)))
                continue
        act = next((ttype(t) for t in inputs if t >= 0 and not const(t)), None)
        size = elems(op.Outputs(0)) if op.OutputsLength() and op.Outputs(0) >= 0 else 0.0
        if act in ("INT8", "UINT8"):
            out.append(BuiltOp("other", "int8-static", size))
        elif act in ("FLOAT32", "FLOAT16"):
            out.append(BuiltOp("other", float_prec, size))
        # integer/bool inputs (shapes, indices) or only constants: nothing the estimator prices by precision


# --- what an ExecuTorch program was quantized to, recorded at export time -------------------------

# the placeholder the ExecuTorch converter records for unquantized ops (their float width is the unit's)
FLOAT = "float"


def read_pte_precisions(path: str | Path, float_prec: str = "fp32") -> dict[str, Counter[str]] | None:
    """Per-op precision counts of a ``.pte``, from the manifest the export wrote beside it.

    A delegate's payload (XNNPACK's, Core ML's) is opaque, so the ExecuTorch converter counts the
    weighted conv and linear ops of the quantized program before lowering and the export stores
    the counts as the artifact's ``op_precisions`` in ``manifest.json``.

    Returns:
        ``{"conv": Counter({"fp32": 1}), "matmul": Counter({"int8-dynamic": 1})}`` with
        ``FLOAT`` read as ``float_prec``; None when no manifest beside the file records its counts.
    """
    built = _pte_ops(path, float_prec)
    return None if built is None else tally(built, _WEIGHTED_KINDS)


def _pte_ops(path: str | Path, float_prec: str) -> list[BuiltOp] | None:
    """The counted ops of a ``.pte``'s manifest record, unsized (the record has counts only)."""
    from mobilekit.artifact import manifest_entry

    _, art = manifest_entry(path)
    if art is None or art.op_precisions is None:
        return None
    return [BuiltOp(kind, float_prec if prec == FLOAT else prec, 0.0)
            for kind, c in art.op_precisions.items() for prec, n in c.items() for _ in range(int(n))]


# --- what an exported Core ML ML Program computes in ----------------------------------------------

# weighted MIL op -> (kind, name of its weight input)
_MIL_WEIGHTED = {"conv": ("conv", "weight"), "conv_transpose": ("conv", "weight"),
                 "linear": ("matmul", "weight"), "matmul": ("matmul", "y")}
# ops that hold or convert values rather than compute: weights, precision casts (Core ML's fp16
# compute precision inserts them at the inputs and outputs), the edges of int8 activation regions
_MIL_NOT_COMPUTE = frozenset({"const", "cast", "quantize", "dequantize"})


def read_coreml_precisions(path: str | Path, float_prec: str = "fp32") -> dict[str, Counter[str]] | None:
    """Count the ops of an ``.mlpackage``'s ML Program by the precision they run at.

    Only the protobuf spec is read (coremltools parses it on any OS; nothing is compiled or run).
    A ``conv``/``conv_transpose``/``linear``/``matmul`` is weighted when its weight is a ``const``
    or comes from a constexpr op; its precision: activations from a ``dequantize`` (int8 activation
    quantization) = ``int8-static``; a weight rebuilt by ``constexpr_affine_dequantize``,
    ``constexpr_blockwise_shift_scale`` or ``constexpr_lut_to_dense`` (``linear_quantize_weights``;
    palettized weights too, which the estimator has no narrower width for) = ``int8-weight``; else
    the op's output type: float16 = ``fp16``, float32 = ``float_prec`` (the unit's: the Neural
    Engine runs an fp32 program in fp16). Every other op that computes (not ``const``, ``cast``,
    ``quantize``/``dequantize`` or a constexpr) counts under ``other`` the same way, by its inputs
    and output type (an op passing int8 values on between a ``quantize`` and its ``dequantize`` is
    ``int8-static``); other integer and bool ops (shapes, indices) are not counted. A matmul of two
    activations (attention) is one of the ``other`` ops, as the estimator's graph has it.

    Returns:
        ``{"conv": Counter({"fp16": 1}), "matmul": Counter({"int8-weight": 1}), "other": Counter(...)}``;
        None when the folder holds no ML Program or no op of it is counted.
    """
    built = _coreml_ops(path, float_prec)
    return tally(built, _COMPUTE_KINDS) if built else None


def _tensor_elems(value_type: Any) -> float:
    """Elements of a MIL ``ValueType``'s tensor (an unknown dim counts as 1; 0 for a non-tensor)."""
    if value_type.WhichOneof("type") != "tensorType":
        return 0.0
    return float(np.prod([d.constant.size if d.WhichOneof("dimension") == "constant" else 1
                          for d in value_type.tensorType.dimensions]))


def _coreml_ops(path: str | Path, float_prec: str) -> list[BuiltOp] | None:
    """The computing ops of an ``.mlpackage``'s ML Program (see ``read_coreml_precisions``), sized by
    their weight's elements (conv, matmul) or their first output's (other ops); None without a program."""
    from mobilekit.converters.coreml import WEIGHT_DEQUANT_OPS, program_ops

    ops = program_ops(Path(path))
    if not ops:
        return None
    from coremltools.proto import MIL_pb2  # program_ops has required coremltools

    producer = {o.name: op for op in ops for o in op.outputs}
    value_types = {o.name: o.type for op in ops for o in op.outputs}
    dtype = MIL_pb2.DataType.Name

    def args(op: Any, name: str) -> list[Any]:
        return list(op.inputs[name].arguments) if name in op.inputs else []

    def weight(arg: Any) -> str | None:
        """``"int"`` for a weight stored as integers, ``"float"`` for a float constant, None if not constant."""
        if arg.WhichOneof("binding") == "value":
            return "float"
        src = producer.get(arg.name)
        if src is None:
            return None  # a function input
        if src.type in WEIGHT_DEQUANT_OPS:
            return "int"
        if src.type == "const":
            return "float"
        if src.type.startswith("constexpr_"):  # iOS18 chains them (sparse over palettized): look through
            found = [weight(a) for v in src.inputs.values() for a in v.arguments]
            return "int" if "int" in found else "float"
        return None

    def out_type(op: Any) -> str:
        return dtype(op.outputs[0].type.tensorType.dataType) if op.outputs else ""

    # int8 activations: what ``quantize`` writes, and what ops moving those int8 values write
    # (linear_quantize_activations reshapes between a quantize and its dequantize)
    int8_vals = {o.name for op in ops if op.type == "quantize" for o in op.outputs}

    def int8_acts(op: Any) -> bool:
        names = [a.name for v in op.inputs.values() for a in v.arguments]
        if any(getattr(producer.get(n), "type", None) == "dequantize" for n in names):
            return True
        if out_type(op) in ("INT8", "UINT8") and any(n in int8_vals for n in names):
            int8_vals.update(o.name for o in op.outputs)
            return True
        return False

    out: list[BuiltOp] = []
    for op in ops:  # program order: an int8 value is marked before the ops that read it
        if op.type in _MIL_NOT_COMPUTE or op.type.startswith("constexpr_"):
            continue
        kind, wname = _MIL_WEIGHTED.get(op.type, ("other", None))
        warg = args(op, wname)[0] if wname and args(op, wname) else None
        w = weight(warg) if warg is not None else None
        if w is not None:  # the weight as the op reads it: a constexpr's output is the dense tensor
            size = _tensor_elems(warg.value.type if warg.WhichOneof("binding") == "value"
                                 else value_types[warg.name])
        else:
            kind, size = "other", _tensor_elems(op.outputs[0].type) if op.outputs else 0.0
        if int8_acts(op):
            prec: str | None = "int8-static"
        elif w == "int":
            prec = "int8-weight"
        else:
            prec = {"FLOAT16": "fp16", "FLOAT32": float_prec}.get(out_type(op))
        if prec is not None:
            out.append(BuiltOp(kind, prec, size))
    return out or None


def overrides_from_ops(built: Sequence[BuiltOp]) -> dict[str, str | tuple[tuple[float, str], ...]]:
    """What the artifact's ops say each kind of the estimator's ops runs at (``op_precisions``' overrides).

    ``conv`` and ``matmul``: every weighted op's (weight elements, precision) when the reader knew
    every size, so ``op_precisions`` gives each layer the precision of the artifact's layer of its
    size (a converter leaves small weights float: by op count those would outvote the few large
    int8 layers that hold the bytes and MACs); else the precision of most ops (a ``.pte``'s manifest
    records counts only). ``other``: the precision of most output elements (what those ops move
    and compute scales with), one precision for all of them as the table has.
    """
    out: dict[str, str | tuple[tuple[float, str], ...]] = {}
    for kind in dict.fromkeys(b.kind for b in built):
        mine = [b for b in built if b.kind == kind]
        if kind != "other" and all(b.size > 0 for b in mine):
            out[kind] = tuple((b.size, b.precision) for b in mine)
            continue
        share: Counter[str] = Counter()
        for b in mine:  # unknown sizes count as one op each
            share[b.precision] += b.size if kind == "other" and b.size > 0 else 1.0
        out[kind] = share.most_common(1)[0][0]
    return out


# artifact suffix -> (what reads its per-op precision, where that reader looks, the kinds its counts
# list even when the artifact has none of them)
_READERS = {".onnx": (_onnx_ops, "onnx graph", _WEIGHTED_KINDS),
            ".tflite": (_tflite_ops, "tflite graph", _COMPUTE_KINDS),
            ".pte": (_pte_ops, "export manifest", _WEIGHTED_KINDS),
            ".mlpackage": (_coreml_ops, "coreml graph", _COMPUTE_KINDS)}
# artifacts that are folders, not files
_PACKAGES = frozenset({".mlpackage"})


def artifact_overrides(artifact: str | Path | None, fmt: str | None, float_prec: str = "fp32",
                       ) -> tuple[Overrides, dict[str, dict[str, int]] | None, str]:
    """Overrides, raw counts and their source, read from an exported artifact.

    ``.onnx`` and ``.tflite`` graphs and ``.mlpackage`` ML Programs are read; a ``.pte`` by what its
    export recorded in the manifest beside it. Other files, a ``.pte`` without that record, or a
    package with no ML Program give no overrides and None counts: the estimate then prices the
    recipe table.

    Returns:
        ``(overrides, counts, source)``: overrides as ``overrides_from_ops`` makes them, counts the
        artifact's ops per kind and precision; source is ``"onnx graph"``, ``"tflite graph"``,
        ``"coreml graph"`` or ``"export manifest"`` when read, else ``"recipe table"``.
    """
    if artifact is None:
        return {}, None, "recipe table"
    p = Path(artifact)
    reader, source, kinds = _READERS.get(p.suffix, (None, "recipe table", ()))
    there = p.is_dir() if p.suffix in _PACKAGES else p.is_file()
    built = reader(p, float_prec) if reader is not None and there else None
    if built is None:
        return {}, None, "recipe table"
    counts = tally(built, kinds)
    return overrides_from_ops(built), {k: dict(v) for k, v in counts.items()}, source
