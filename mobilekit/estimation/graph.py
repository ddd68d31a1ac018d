"""FLOPs and bytes moved per op, read from a model's exported ATen graph.

``analyze(model, example_inputs)`` runs ``torch.export.export`` (shapes only: it works on
``meta`` tensors too, so calibration models of a billion parameters cost no memory) and walks
the ATen nodes. Each op gets a *kind* (``matmul``, ``conv``, ``attention``, ``norm``,
``elementwise``, ``pool``, ``copy``, ``other``; ``dwconv`` for depthwise convolutions), its
FLOPs (one multiply-add = 2 FLOPs) and
the element counts it reads and writes, split into weights and activations so that bytes can
be priced later at any precision (``bytes_moved``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mobilekit.errors import ConfigError, ExportError

logger = logging.getLogger(__name__)

# Kinds an op can have; the roofline prices them the same way but delegates take some, not others.
KINDS = ("matmul", "conv", "dwconv", "attention", "norm", "elementwise", "pool", "copy", "other")

# Bytes per element of (weights, activations) for each precision the estimator knows.
PRECISION_BYTES: dict[str, tuple[float, float]] = {
    "fp32": (4.0, 4.0),
    "fp16": (2.0, 2.0),
    "int8-weight": (1.0, 4.0),
    "int8-dynamic": (1.0, 4.0),
    "int8-static": (1.0, 1.0),
    "w8a16": (1.0, 2.0),
}

_MATMUL = {"linear", "mm", "addmm", "bmm", "matmul", "baddbmm", "einsum", "_int_mm"}
_CONV = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
         "conv_transpose3d", "_convolution"}
_ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention"}
_NORM = {"layer_norm", "group_norm", "batch_norm", "native_layer_norm", "native_group_norm",
         "native_batch_norm", "_native_batch_norm_legit_no_training", "rms_norm", "instance_norm",
         "_fused_rms_norm", "softmax", "_softmax", "log_softmax", "_log_softmax"}
_POOL = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool1d",
         "avg_pool1d", "mean", "sum", "amax", "max_pool2d_with_indices", "_adaptive_avg_pool2d"}
# Views cost nothing: a runtime folds them into the neighbouring kernels.
_VIEW = {"view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "flatten", "unflatten",
         "expand", "alias", "t", "transpose", "permute", "select", "slice", "detach", "lift_fresh_copy",
         "dropout", "clone", "contiguous", "to", "_to_copy", "type_as", "sym_size", "getitem",
         "_assert_tensor_metadata", "sym_constrain_range_for_size", "dim", "size", "numel",
         "_assert_scalar", "scalar_tensor", "lift_fresh", "feature_dropout", "identity"}
_COPY = {"cat", "stack", "pad", "constant_pad_nd", "upsample_nearest2d", "upsample_bilinear2d",
         "interpolate", "pixel_shuffle", "pixel_unshuffle", "repeat", "roll", "index_select", "gather",
         "embedding", "split", "split_with_sizes", "chunk", "unbind", "narrow", "tile", "reflection_pad2d",
         "replication_pad2d", "flip"}
_OTHER = {"index", "index_put", "nonzero", "sort", "topk", "argmax", "argmin", "cumsum", "scatter",
          "scatter_add", "where", "masked_fill", "arange", "full", "zeros", "ones", "empty", "randn",
          "rand", "normal", "bernoulli", "multinomial", "unique", "searchsorted", "bucketize", "_local_scalar_dense",
          "item", "full_like", "zeros_like", "ones_like", "empty_like"}
# Approximate FLOPs per output element of elementwise ops that are not one add or multiply.
_EW_FLOPS = {"gelu": 8.0, "silu": 4.0, "sigmoid": 4.0, "tanh": 4.0, "exp": 4.0, "log": 4.0, "erf": 6.0,
             "softplus": 5.0, "mish": 8.0, "hardswish": 3.0, "hardsigmoid": 2.0, "pow": 2.0, "sqrt": 2.0,
             "rsqrt": 2.0, "div": 1.0, "sin": 4.0, "cos": 4.0}


@dataclass(frozen=True, kw_only=True)
class OpCost:
    """What one ATen op computes and moves.

    Attributes:
        name: module path of the op followed by the op, e.g. ``blocks.0.attn.to_q:linear``.
        op: the ATen op name without namespace and overload, e.g. ``linear``.
        kind: one of ``KINDS``.
        flops: floating-point (or integer) operations, one multiply-add counted as 2.
        weight_elems: elements of parameters, buffers and constants the op reads.
        act_elems: elements of activations the op reads and writes.
        int_only: True when every tensor of the op is an integer or bool tensor (index math), or
            the op reads no tensor at all (``arange``, ``full``): exporters fold these into
            constants, so the roofline prices them at zero.
    """

    name: str
    op: str
    kind: str
    flops: float
    weight_elems: float
    act_elems: float
    int_only: bool = False

    def bytes_moved(self, precision: str) -> float:
        """Bytes this op reads and writes at ``precision`` (a key of ``PRECISION_BYTES``)."""
        wb, ab = precision_bytes(precision)
        return self.weight_elems * wb + self.act_elems * ab

    def to_row(self) -> list[Any]:
        """A compact list ``[kind, flops, weight_elems, act_elems, int_only]`` for data files."""
        return [self.kind, self.flops, self.weight_elems, self.act_elems, int(self.int_only)]


@dataclass(frozen=True, kw_only=True)
class GraphCost:
    """Every costed op of one model, in graph order.

    Attributes:
        ops: the ops (views and other free ops are left out).
        params: parameter count of the model (elements).
    """

    ops: tuple[OpCost, ...]
    params: float

    @property
    def flops(self) -> float:
        """Total FLOPs of one forward pass."""
        return float(sum(o.flops for o in self.ops))

    @property
    def macs(self) -> float:
        """Total multiply-accumulates of matmul, conv and attention ops (FLOPs / 2 of those)."""
        return float(sum(o.flops for o in self.ops if o.kind in ("matmul", "conv", "dwconv", "attention")) / 2.0)

    def bytes_moved(self, precision: str) -> float:
        """Total bytes read and written at ``precision``."""
        return float(sum(o.bytes_moved(precision) for o in self.ops))


def precision_bytes(precision: str) -> tuple[float, float]:
    """Bytes per element of (weights, activations) at ``precision``.

    Raises:
        ConfigError: the precision is unknown.
    """
    try:
        return PRECISION_BYTES[precision]
    except KeyError:
        raise ConfigError(f"unknown precision {precision!r}", where="precision",
                          fix=f"use one of {', '.join(sorted(PRECISION_BYTES))}") from None


def _numel(val: Any) -> float:
    shape = getattr(val, "shape", None)
    if shape is None:
        return 0.0
    try:
        return float(math.prod(int(s) for s in shape))
    except (TypeError, ValueError):  # symbolic sizes: take their hint
        return float(math.prod(int(getattr(s, "node", s).hint if hasattr(s, "node") else 1) for s in shape))


def _is_int(val: Any) -> bool:
    dtype = getattr(val, "dtype", None)
    return dtype is not None and not (dtype.is_floating_point or dtype.is_complex)


def _flat_tensors(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        out: list[Any] = []
        for item in obj:
            out.extend(_flat_tensors(item))
        return out
    return [obj] if hasattr(obj, "shape") and hasattr(obj, "dtype") else []


def op_name(target: Any) -> str:
    """The bare ATen op name of a graph node target (``aten.conv2d.default`` → ``conv2d``)."""
    name = getattr(target, "__name__", str(target))
    base = name.split(".")[0]
    if base.endswith("_") and not base.startswith("_"):
        base = base[:-1]  # in-place variants cost like their functional op
    return base


def classify(op: str) -> str | None:
    """The kind of op ``op`` (see ``KINDS``), or None for free view-like ops."""
    if op in _VIEW:
        return None
    if op in _MATMUL:
        return "matmul"
    if op in _CONV:
        return "conv"
    if op in _ATTENTION:
        return "attention"
    if op in _NORM:
        return "norm"
    if op in _POOL:
        return "pool"
    if op in _COPY:
        return "copy"
    if op in _OTHER:
        return "other"
    return "elementwise"


def _flops(op: str, kind: str, args: Sequence[Any], out_elems: float, in_elems: float) -> float:
    vals = [getattr(a, "meta", {}).get("val") if hasattr(a, "meta") else None for a in args]
    if kind == "matmul":
        if op in ("linear", "mm", "matmul", "_int_mm"):
            k = vals[0].shape[-1] if vals and vals[0] is not None else 0
        elif op in ("addmm", "baddbmm"):
            k = vals[1].shape[-1] if len(vals) > 1 and vals[1] is not None else 0
        elif op == "bmm":
            k = vals[0].shape[-1] if vals and vals[0] is not None else 0
        else:  # einsum: no cheap closed form; count one MAC per input element pair bound
            return 2.0 * out_elems
        return 2.0 * out_elems * float(int(k))
    if kind == "conv":
        w = vals[1] if len(vals) > 1 else None
        if w is None:
            return 2.0 * out_elems
        per_out = float(math.prod(int(s) for s in w.shape[1:]))  # Cin/groups * k...
        transposed = op.startswith("conv_transpose") or (op in ("convolution", "_convolution") and len(args) > 6
                                                         and bool(args[6]))
        if transposed:  # weight [Cin, Cout/groups, k...]: each input element feeds Cout/groups * k outputs
            kernel = float(math.prod(int(d) for d in w.shape[1:]))
            return 2.0 * _numel(vals[0]) * kernel
        return 2.0 * out_elems * per_out
    if kind == "attention":
        q, k, v = vals[0], vals[1], vals[2]
        if q is None or k is None or v is None:
            return 2.0 * out_elems
        lq, e = int(q.shape[-2]), int(q.shape[-1])
        s, ev = int(k.shape[-2]), int(v.shape[-1])
        batch = float(math.prod(int(d) for d in q.shape[:-2]))
        scores = batch * lq * s
        return 2.0 * scores * e + 2.0 * scores * ev + 5.0 * scores
    if kind == "norm":
        return 5.0 * out_elems
    if kind == "pool":
        return max(in_elems, out_elems)
    if kind == "elementwise":
        return _EW_FLOPS.get(op, 1.0) * out_elems
    return 0.0


def _is_depthwise(node: Any) -> bool:
    """A grouped conv with one input channel per group (weight ``[C, 1, k...]``, groups > 1)."""
    if len(node.args) < 2 or not hasattr(node.args[1], "meta"):
        return False
    w = node.args[1].meta.get("val")
    op = op_name(node.target)
    pos = 8 if op in ("convolution", "_convolution") else 6
    groups = node.args[pos] if len(node.args) > pos else node.kwargs.get("groups", 1)
    return (w is not None and len(w.shape) >= 3 and int(w.shape[1]) == 1 and isinstance(groups, int)
            and groups > 1)


def analyze(model: Any, example_inputs: Sequence[Any], *, strict: bool = False) -> GraphCost:
    """Export ``model`` and cost every ATen op of its graph.

    Args:
        model: a ``torch.nn.Module`` in eval mode (tensors may live on the ``meta`` device).
        example_inputs: positional inputs for one forward pass.
        strict: passed to ``torch.export.export``.

    Returns:
        The ops of one forward pass with their FLOPs and element counts.

    Raises:
        ExportError: ``torch.export`` could not capture the model.

    Example:
        >>> cost = analyze(torch.nn.Linear(8, 4), (torch.randn(2, 8),))
        >>> cost.flops
        128.0
    """
    import torch

    try:
        ep = torch.export.export(model, tuple(example_inputs), strict=strict)
    except Exception as exc:  # torch raises many types here
        raise ExportError(f"torch.export could not capture the model for estimation: {exc}",
                          where=type(model).__name__,
                          fix="make the model exportable (static shapes, no data-dependent control flow)") from exc
    return analyze_exported(ep)


def analyze_exported(ep: Any) -> GraphCost:
    """Cost the ATen ops of an already exported program (``torch.export.ExportedProgram``)."""
    sig = ep.graph_signature
    weight_names = set(sig.inputs_to_parameters) | set(sig.inputs_to_buffers)
    weight_names |= set(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
    params = float(sum(p.numel() for p in ep.state_dict.values()
                       if hasattr(p, "numel")) if ep.state_dict else 0.0)
    ops: list[OpCost] = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        op = op_name(node.target)
        kind = classify(op)
        if kind is None:
            continue
        out_vals = _flat_tensors(node.meta.get("val"))
        out_elems = float(sum(_numel(v) for v in out_vals))
        if not out_vals:
            continue
        w_elems = 0.0
        a_in = 0.0
        ints = all(_is_int(v) for v in out_vals)
        tensor_inputs = [a for a in node.all_input_nodes if _flat_tensors(a.meta.get("val"))]
        if not tensor_inputs:
            ints = True  # arange, full, zeros: constants an exporter folds away
        for arg in node.all_input_nodes:
            vals = _flat_tensors(arg.meta.get("val"))
            n = float(sum(_numel(v) for v in vals))
            if arg.op == "placeholder" and arg.name in weight_names:
                w_elems += n
            else:
                a_in += n
                ints = ints and all(_is_int(v) for v in vals)
        flops = _flops(op, kind, node.args, out_elems, a_in)
        if kind == "conv" and _is_depthwise(node):
            kind = "dwconv"
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        ops.append(OpCost(name=f"{path}:{op}" if path else op, op=op, kind=kind, flops=float(flops),
                          weight_elems=w_elems, act_elems=a_in + out_elems, int_only=ints))
    logger.debug("costed %d ops, %.3g FLOPs", len(ops), sum(o.flops for o in ops))
    return GraphCost(ops=tuple(ops), params=params)
