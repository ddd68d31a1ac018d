"""ExecuTorch converter: PyTorch → ``torch.export`` → edge dialect + delegate → ``.pte``.

Stages: ``prepare`` (copy, eval, fp16 wrapper), ``quantize`` (PT2E or torchao), ``lower``
(capture with ``torch.export`` and ``to_edge_transform_and_lower`` with the delegate's
partitioner), ``serialize`` (``to_executorch`` and the files).

Delegates and precisions (executorch 1.5.1, checked on this toolchain):

* ``xnnpack``:
  ``fp32``; ``fp16`` (the model runs in float16 inside a wrapper that keeps float32 inputs and
  outputs; XNNPACK takes the float16 ops); ``int8-dynamic`` and ``int8-static`` through the
  PT2E ``XNNPACKQuantizer`` (symmetric, per-channel weights). ``int8-weight`` is refused: the
  XNNPACK quantizer has no weight-only configuration, and torchao's ``IntxWeightOnlyConfig``
  leaves ``torchao::dequantize_affine`` outside the delegate with no ExecuTorch kernel.
* ``coreml``:
  ``fp32`` and ``fp16`` (Core ML compute precision), ``int8-weight`` (torchao
  ``IntxWeightOnlyConfig``, per-channel int8, consumed by the Core ML delegate) and
  ``int8-static`` (the PT2E ``CoreMLQuantizer``, int8 activations calibrated on samples).
  ``int8-dynamic`` is refused: Core ML has no run-time activation quantization. The ``.pte``
  holds a Core ML model; it runs only where ExecuTorch has the Core ML backend (Apple hosts).
  Known limits of ``int8-static`` here: the Core ML quantizer captures ~400 pattern graphs with
  ``torch.export`` on every call (about a minute on an idle core, whatever the model size), and
  coremltools 9 rejects the int32 ``quantize`` it places on a diffusers DiT's integer path (an
  ExportError; use ``int8-weight`` for DiTs).

``float_modules`` (XNNPACK int8) leaves the ops of named modules unquantized: the XNNPACK
quantizer's filter rejects every node whose module stack holds one of them. Before lowering, a
reshape between two int8 encodings gets one (``_pt2e_passes``): XNNPACK refuses to load it.

``external_weights=True`` writes the weights into ``model.ptd`` beside ``model.pte`` (program–
data separation: several programs, e.g. LoRA variants, can share one weight file); load it
with ``ExecuTorchRunner(path, data_path=...)``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from mobilekit.converters._pt2e_passes import requantize_before_reshapes
from mobilekit.converters._torch_common import (
    HalfPrecision,
    capture,
    check_calibration,
    check_inputs,
    check_module_paths,
    first_line,
    io_names,
    map_backend_error,
    op_histogram,
    prepared_model,
    release_memory,
    within_module,
)
from mobilekit.converters.base import ConvertResult, StageTimer, Support, ensure_supported, supports_from_table
from mobilekit._deps import require
from mobilekit._io import atomic_path
from mobilekit.errors import ConfigError, ExportError
from mobilekit.recipe import Recipe

logger = logging.getLogger(__name__)

PRECISIONS: dict[str | None, tuple[str, ...]] = {
    "xnnpack": ("fp32", "fp16", "int8-dynamic", "int8-static"),
    "coreml": ("fp32", "fp16", "int8-weight", "int8-static"),
}
# Why a (delegate, precision) pair is refused, beyond "not in the table".
_REFUSED: dict[tuple[str, str], str] = {
    ("xnnpack", "int8-weight"): (
        "executorch-xnnpack cannot build int8-weight: the XNNPACK quantizer has no weight-only config and "
        "torchao weight-only quantization leaves torchao::dequantize_affine outside the delegate, with no "
        "ExecuTorch kernel; int8-dynamic also stores int8 weights and runs in XNNPACK"),
    ("coreml", "int8-dynamic"): (
        "executorch-coreml cannot build int8-dynamic: Core ML has no run-time activation quantization; "
        "use int8-weight (int8 weights, float activations) or int8-static"),
}
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
DEFAULT_COMPUTE_UNITS = "ALL"
_COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
_TARGET_RE = re.compile(r"^(iOS|macOS|tvOS|watchOS)(\d+)$")
# Lowest iOS major version each Core ML delegate precision needs (int8 ops in ML Programs).
_COREML_MIN_IOS = {"fp32": 15, "fp16": 15, "int8-weight": 16, "int8-static": 17}
_IOS_EQUIVALENT = {"iOS": 0, "tvOS": 0, "macOS": 3, "watchOS": 7}  # macOS14 ≈ iOS17, watchOS10 ≈ iOS17
DATA_TAG = "model"  # the .ptd file is named after this tag


class ExecuTorchConverter:
    """Exports a model to an ExecuTorch ``.pte`` with the XNNPACK or Core ML delegate.

    Args:
        external_weights: write the weights to ``model.ptd`` beside the program instead of
            inside ``model.pte`` (``convert(..., external_weights=...)`` overrides it per call).

    Example:
        >>> conv = ExecuTorchConverter()
        >>> conv.supports(Recipe.parse("executorch-xnnpack-int8-dynamic")).ok
        True
        >>> conv.supports(Recipe.parse("executorch-xnnpack-int8-weight")).reason[:44]
        'executorch-xnnpack cannot build int8-weight:'
    """

    format: ClassVar[str] = "executorch"
    precisions: ClassVar[dict[str | None, tuple[str, ...]]] = PRECISIONS
    # The XNNPACK quantizer annotates only the nodes its filter accepts, and PT2E records each
    # node's module path: any module can be left in float (``float_modules``). The Core ML
    # quantizer has no such filter.
    float_module_precisions: ClassVar[frozenset[str]] = frozenset({"int8-dynamic", "int8-static"})
    float_module_delegates: ClassVar[frozenset[str]] = frozenset({"xnnpack"})

    def __init__(self, *, external_weights: bool = False) -> None:
        self.external_weights = bool(external_weights)

    def supports(self, recipe: Recipe) -> Support:
        """Whether ``recipe`` can be built here, with the reason and the buildable recipes when not."""
        if recipe.format != self.format:
            return Support(False, f"the ExecuTorch converter builds format executorch, not {recipe.format}",
                           _names())
        answer = supports_from_table(self.format, PRECISIONS, recipe)
        reason = _REFUSED.get((str(recipe.delegate), recipe.precision))
        if not answer.ok and reason:
            return Support(False, reason, answer.supported)
        return answer

    def convert(self, model: torch.nn.Module, example_inputs: tuple[Any, ...], recipe: Recipe, workdir: Path, *,
                calibration: Sequence[tuple[Any, ...]] | None = None, external_weights: bool | None = None,
                float_modules: Sequence[str] = (), **options: Any) -> ConvertResult:
        """Quantize, lower and serialize ``model`` into ``workdir/model.pte`` (and ``model.ptd``).

        Args:
            model: the PyTorch module; it is copied, never modified.
            example_inputs: one tensor per positional argument of ``forward`` (fixes the shapes).
            recipe: an ``executorch`` recipe (delegate ``xnnpack`` or ``coreml``).
            workdir: an existing, empty directory the files are written into.
            calibration: input batches for ``int8-static`` (None: the example inputs).
            external_weights: weights into ``model.ptd`` (None: the converter's setting).
            float_modules: module paths (``model.named_modules()`` names) whose ops stay float in an
                XNNPACK int8 recipe; export chooses them when the whole model would miss the parity floor.
            **options: options meant for other converters; ignored.

        Returns:
            The files written (relative to ``workdir``), seconds per stage, input/output names, notes.

        Raises:
            ConfigError: unsupported recipe, bad inputs or Core ML settings.
            UnsupportedOpError: the model calls an op the backend cannot lower (names op and module path).
            ExportError: capture, quantization or lowering failed for another reason.

        Example:
            >>> res = ExecuTorchConverter().convert(model, (x,), Recipe.parse("executorch-xnnpack-fp32"),
            ...                                     Path("work"))  # doctest: +SKIP
        """
        if options:
            logger.debug("ignoring options for other converters: %s", sorted(options))
        ensure_supported(self, recipe)
        external = self.external_weights if external_weights is None else bool(external_weights)
        inputs = check_inputs(example_inputs)
        workdir = Path(workdir)
        delegate = str(recipe.delegate)
        floats = _check_float_modules(model, float_modules, recipe)
        require("executorch.exir", extra="executorch", purpose="to export .pte files")
        backend = recipe.name
        coreml_specs = _coreml_compile_specs(recipe) if delegate == "coreml" else None
        timer = StageTimer()
        notes: list[str] = []

        with timer("prepare"):
            module = prepared_model(model, mutates=recipe.precision in ("fp16", "int8-weight"))
            if recipe.precision == "fp16" and delegate == "xnnpack":
                module = HalfPrecision(module)
                notes.append("runs in float16 inside XNNPACK; inputs and outputs stay float32")
        with timer("quantize"):
            module = _quantize(module, inputs, recipe, calibration, notes, floats)
        with timer("lower"):
            program = capture(module, inputs, backend=backend)
            del module  # a quantized module's own weights live on in the program
            if external:
                program = _tag_external_weights(program, inputs, backend)
            precisions = op_precisions(program)
            in_names, out_names = io_names(program, model)
            edge = _lower(program, delegate, coreml_specs, backend, dynamic=recipe.precision == "int8-dynamic")
            # the edge program keeps what it needs; the aten program and the lowering's scratch
            # copies go before serialization adds the program's own buffers
            del program
            release_memory()
            notes.extend(_delegation_notes(edge, delegate))
        with timer("serialize"):
            filename, extra = _serialize(edge, workdir, external, backend, delegate)
            del edge
            _forget_lowered_nodes()  # serialization ran fake-tensor ops on the lowered modules again
            release_memory()  # the caller goes on to run the .pte in a child process
        if external:
            notes.append(f"weights in {extra[0]}: load with data_path" if extra
                         else "external_weights: the delegate kept its weights inside the program")
        return ConvertResult(filename=filename, extra_files=extra, stages=timer.stages, input_names=in_names,
                             output_names=out_names, notes=notes, op_precisions=precisions)


def _names() -> tuple[str, ...]:
    return tuple(f"executorch-{d}-{p}" for d, ps in PRECISIONS.items() for p in ps)


def _coreml_compile_specs(recipe: Recipe) -> list[Any]:
    """Core ML compile specs from the recipe's deployment target, compute units and precision."""
    target = recipe.deployment_target or DEFAULT_DEPLOYMENT_TARGET
    units = (recipe.compute_units or DEFAULT_COMPUTE_UNITS).upper()
    match = _TARGET_RE.match(target)
    if match is None:
        raise ConfigError(f"unknown Core ML deployment target {target!r}", where="deployment_target",
                          fix="write it like iOS17, iOS18 or macOS15")
    ios = int(match.group(2)) + _IOS_EQUIVALENT[match.group(1)]
    need = _COREML_MIN_IOS[recipe.precision]
    if ios < need:
        raise ConfigError(f"{recipe.name} needs deployment target iOS{need} or later, got {target}",
                          where="deployment_target", fix=f"set deployment_target to iOS{need} or later")
    if units not in _COMPUTE_UNITS:
        raise ConfigError(f"unknown Core ML compute units {units!r}", where="compute_units",
                          fix=f"known: {', '.join(_COMPUTE_UNITS)}")
    ct = require("coremltools", extra="coreml", purpose="for the ExecuTorch Core ML delegate")
    from executorch.backends.apple.coreml.compiler import CoreMLBackend

    ct_target = getattr(ct.target, target, None)
    if ct_target is None:
        raise ConfigError(f"coremltools {ct.__version__} does not know deployment target {target}",
                          where="deployment_target", fix="choose an older target or upgrade coremltools")
    precision = ct.precision.FLOAT32 if recipe.precision == "fp32" else ct.precision.FLOAT16
    return list(CoreMLBackend.generate_compile_specs(compute_unit=getattr(ct.ComputeUnit, units),
                                                     minimum_deployment_target=ct_target,
                                                     compute_precision=precision))


def _check_float_modules(model: torch.nn.Module, float_modules: Sequence[str], recipe: Recipe) -> tuple[str, ...]:
    """``float_modules`` checked before any work: modules of ``model``, and a recipe that can keep them float."""
    if isinstance(float_modules, str):
        float_modules = (float_modules,)
    floats = tuple(float_modules)
    if not floats:
        return floats
    if str(recipe.delegate) not in ExecuTorchConverter.float_module_delegates or \
            recipe.precision not in ExecuTorchConverter.float_module_precisions:
        raise ConfigError(f"float_modules: {recipe.name} cannot keep modules in float (only the XNNPACK "
                          f"quantizer filters by module, at {', '.join(sorted(ExecuTorchConverter.float_module_precisions))})",
                          where="float_modules", fix="drop float_modules, or use executorch-xnnpack-int8-static")
    check_module_paths(model, floats)
    return floats


def _float_filter(floats: Sequence[str]) -> Any:
    """A node filter for the XNNPACK quantizer: True (quantize) unless the node runs inside a float module.

    The node's module stack is matched by path prefix (``within_module``), so a container that is
    never called (ModuleList, ModuleDict), and has no entry of its own in the stack, still counts.
    """
    def quantize(node: torch.fx.Node) -> bool:
        stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
        return not any(within_module(p, m) for p in stack for m in floats)

    return quantize


def _quantize(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], recipe: Recipe,
              calibration: Sequence[tuple[Any, ...]] | None, notes: list[str],
              float_modules: Sequence[str] = ()) -> torch.nn.Module:
    """Apply the recipe's quantization; return the module to capture for lowering.

    ``float_modules``: module paths whose ops the XNNPACK quantizer leaves unannotated (float).
    """
    precision, delegate = recipe.precision, str(recipe.delegate)
    if precision in ("fp32", "fp16"):
        return module
    if precision == "int8-weight":  # Core ML delegate only (see _REFUSED)
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerAxis

        try:
            quantize_(module, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)))
        except Exception as exc:
            raise ExportError(f"torchao weight-only int8 quantization failed: {first_line(exc)}",
                              where=recipe.name, fix="try executorch-coreml-fp16") from exc
        notes.append("int8 per-channel weights (torchao IntxWeightOnlyConfig), float16 compute")
        return module
    batches = check_calibration(calibration, inputs) if precision == "int8-static" else [inputs]
    quantizer = _pt2e_quantizer(delegate, dynamic=precision == "int8-dynamic")
    if float_modules:  # _check_float_modules let only the XNNPACK quantizer through
        quantizer.set_filter_function(_float_filter(float_modules))
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = capture(module, inputs, backend=recipe.name).module()
    try:
        prepared = prepare_pt2e(graph, quantizer)  # type: ignore[arg-type]
        with torch.no_grad():
            for batch in batches:
                prepared(*batch)
        converted = convert_pt2e(prepared)
        if delegate == "xnnpack":
            requantized = requantize_before_reshapes(converted)
            if requantized:
                notes.append(f"requantized before {len(requantized)} reshape(s) between two int8 encodings, which "
                             f"XNNPACK cannot load ({', '.join(sorted(set(requantized)))})")
    except Exception as exc:
        raise ExportError(f"PT2E {precision} quantization for {delegate} failed: {first_line(exc)}",
                          where=recipe.name, fix="try another precision (e.g. fp32 or fp16)") from exc
    finally:
        _forget_quantized_modules()
    del graph, prepared  # the observed module; ``converted`` holds the int8 weights
    release_memory()
    what = "run-time (dynamic)" if precision == "int8-dynamic" else f"calibrated on {len(batches)} batch(es)"
    notes.append(f"int8 activations {what}, int8 per-channel weights (PT2E {type(quantizer).__name__})")
    if float_modules:
        notes.append(f"float_modules: {len(float_modules)} module(s) left in float: {', '.join(float_modules)}")
    return converted  # type: ignore[no-any-return]


def _forget_quantized_modules() -> None:
    """Empty the ``assert_and_get_unique_device`` caches, which keep every module PT2E passed them.

    torchao's (``torchao.utils``) and torch's (``torch.ao.quantization.fx.utils``) are each a
    ``functools.cache`` keyed by the module: the captured, observed and converted graph modules
    (the int8 weights, 0.7 GB for DiT-XL/2) would otherwise outlive the export.
    """
    import importlib

    for module_name, name in (("torchao.utils", "_assert_and_get_unique_device"),
                              ("torch.ao.quantization.fx.utils", "assert_and_get_unique_device")):
        try:
            cached = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
        clear = getattr(cached, "cache_clear", None)
        if clear is not None:
            clear()


def _pt2e_quantizer(delegate: str, *, dynamic: bool) -> Any:
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
        if dynamic:
            # XNNPACK's dynamic int8 kernels are for fully connected layers; dynamically quantized
            # convolutions fail at run time in ExecuTorch 1.5 (conv → GroupNorm blocks), so convs stay float.
            return XNNPACKQuantizer().set_module_type(torch.nn.Linear, config)
        return XNNPACKQuantizer().set_global(config)
    ct = require("coremltools", extra="coreml", purpose="for the Core ML quantizer")
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    cfg = ct.optimize.torch.quantization.LinearQuantizerConfig(
        global_config=ct.optimize.torch.quantization.ModuleLinearQuantizerConfig(
            quantization_scheme="symmetric", activation_dtype=torch.quint8, weight_dtype=torch.qint8,
            weight_per_channel=True))
    return CoreMLQuantizer(cfg)


_CONVS = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                    "conv_transpose3d"})


def op_precisions(program: torch.export.ExportedProgram) -> dict[str, dict[str, int]]:
    """Weighted conv and linear ops of a (quantized) program, counted by the precision they run at.

    Read before lowering, since a delegate's payload hides the ops; the export records the counts in
    the manifest for the estimator (``estimation.precision.read_pte_precisions``). PT2E leaves a
    ``dequantize`` on each int8 weight and on each int8 activation, whose scale comes from a
    ``choose_qparams`` when it is computed at run time: weight and activation dequantized =
    ``int8-static`` (or ``int8-dynamic``), weight only = ``int8-weight`` (torchao), neither =
    ``"float"`` (the unit's float precision).

    Returns:
        ``{"conv": {"float": 1}, "matmul": {"int8-dynamic": 2}}``.
    """
    from torch.export.graph_signature import InputKind

    params = {s.arg.name for s in program.graph_signature.input_specs if s.kind != InputKind.USER_INPUT}
    # nodes computed from parameters and buffers only (a weight's dequantize, torchao's subclass
    # unpacking); one pass, as the graph is in topological order
    const: set[torch.fx.Node] = set()
    for n in program.graph.nodes:
        inputs = n.all_input_nodes
        if (n.op == "get_attr" or (n.op == "placeholder" and n.name in params)
                or (n.op == "call_function" and inputs and all(a in const for a in inputs))):
            const.add(n)

    def dq(n: Any) -> bool:
        return isinstance(n, torch.fx.Node) and n.op == "call_function" and "dequantize" in str(n.target)

    def run_time_scale(n: torch.fx.Node) -> bool:  # getitem(choose_qparams(x), i) feeds the dequantize
        return any(isinstance(a, torch.fx.Node) and a.args and "choose_qparams" in str(getattr(a.args[0], "target", ""))
                   for a in n.args[1:])

    out: dict[str, dict[str, int]] = {"conv": {}, "matmul": {}}
    for n in program.graph.nodes:
        name = str(n.target).split(".")
        op = name[1] if n.op == "call_function" and name[0] == "aten" and len(name) > 1 else ""
        kind = "matmul" if op == "linear" else "conv" if op in _CONVS else None
        if kind is None or len(n.args) < 2 or not isinstance(n.args[1], torch.fx.Node) or n.args[1] not in const:
            continue
        act, weight = n.args[0], n.args[1]
        if dq(weight) and dq(act):
            prec = "int8-dynamic" if run_time_scale(act) else "int8-static"
        else:
            prec = "int8-weight" if dq(weight) else "float"
        out[kind][prec] = out[kind].get(prec, 0) + 1
    return out


def _tag_external_weights(program: torch.export.ExportedProgram, inputs: tuple[torch.Tensor, ...],
                          backend: str) -> torch.export.ExportedProgram:
    """Tag every constant so delegates store it in the named data file instead of their blob."""
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

    graph = program.module()
    delegate_external_constants_pass_unlifted(graph, gen_tag_fn=lambda _node: DATA_TAG)
    return capture(graph, inputs, backend=backend)  # type: ignore[arg-type]


def _lower(program: torch.export.ExportedProgram, delegate: str, coreml_specs: list[Any] | None,
           backend: str, *, dynamic: bool = False) -> Any:
    from executorch.exir import to_edge_transform_and_lower

    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners: list[Any] = [XnnpackPartitioner()]
        if dynamic:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackDynamicallyQuantizedPartitioner,
            )

            # Dynamically quantized linears first, in partitions of their own: one greedy partition
            # over mixed float and dynamic-int8 ops can form a dependency cycle (seen on PixArt's
            # adaLN-single, "Invalid partition, found dependency cycles").
            partitioners.insert(0, XnnpackDynamicallyQuantizedPartitioner())
    else:
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        partitioners = [CoreMLPartitioner(compile_specs=coreml_specs)]
    try:
        if delegate == "xnnpack":
            from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

            with _preprocess_shares_weights(XnnpackBackend):
                return to_edge_transform_and_lower(program, partitioner=partitioners)
        return to_edge_transform_and_lower(program, partitioner=partitioners)
    except Exception as exc:
        raise map_backend_error(exc, backend=backend, program=program, stage="lowering", where=backend,
                                fix="choose another precision or delegate") from exc
    finally:
        _forget_lowered_nodes()


@contextlib.contextmanager
def _preprocess_shares_weights(backend_cls: type) -> Iterator[None]:
    """While lowering, hand ``backend_cls.preprocess`` a copy of each partition that shares its weights.

    ExecuTorch 1.5 deep-copies every partition's program, weights included, before the backend's
    ``preprocess`` ("in case backends change graph"): one whole extra copy of the weights (2.8 GB
    for DiT-XL/2) alive while XNNPACK serializes its own. XNNPACK's passes replace entries of the
    copy's state dict (new tensors for fused batch norms, unsqueezed conv1d kernels) but never write
    into a tensor, so the copy may share the tensors: the graph, signature and dicts are still
    copied, as ExecuTorch's CUDA backend does in its low-memory mode. The class attribute is put back
    on exit, so other lowerings in this process keep ExecuTorch's behaviour.
    """
    name = "copy_exported_program_for_preprocess"
    own = backend_cls.__dict__.get(name)

    def copy_sharing_tensors(cls: type, edge_program: Any, compile_specs: Any) -> Any:
        memo: dict[int, Any] = {id(t): t for values in (edge_program.state_dict, edge_program.constants)
                                for t in values.values() if isinstance(t, torch.Tensor)}
        return copy.deepcopy(edge_program, memo)

    setattr(backend_cls, name, classmethod(copy_sharing_tensors))
    try:
        yield
    finally:
        if own is None:
            delattr(backend_cls, name)
        else:
            setattr(backend_cls, name, own)


def _forget_lowered_nodes() -> None:
    """Drop the graph nodes ExecuTorch keeps in globals once a lowering is over.

    Two globals keep nodes of the lowered graph, and through a node's graph the whole lowered
    program with its delegate payloads (the serialized weights, 2.8 GB for DiT-XL/2), after the
    export has returned: the unbounded ``lru_cache`` of ``exir.backend.utils.is_same_node`` (the
    check that a partitioner left the graph alone) and the module-level ``WhyNoPartition``
    loggers of XNNPACK's partitioner configs, which keep the last node they rejected. Torch's
    fake-tensor dispatch cache (class-wide) keeps a few too, in its keys.
    """
    import sys

    from executorch.exir.backend.utils import WhyNoPartition, is_same_node
    from torch._subclasses.fake_tensor import FakeTensorMode

    is_same_node.cache_clear()
    FakeTensorMode.cache_clear()
    for name, mod in list(sys.modules.items()):
        if mod is not None and name.startswith("executorch.backends.xnnpack.partition"):
            for value in list(vars(mod).values()):
                if isinstance(value, WhyNoPartition):
                    value.node = None


def _delegation_notes(edge: Any, delegate: str) -> list[str]:
    """A note listing the ops left outside the delegate (they run on ExecuTorch's portable kernels)."""
    graph = edge.exported_program().graph
    delegated = sum(1 for n in graph.nodes if n.op == "call_function" and "call_delegate" in str(n.target))
    left = op_histogram(graph)
    if delegated == 0:
        return [f"nothing was delegated to {delegate}: every op runs on portable kernels"]
    if not left:
        return [f"fully delegated to {delegate} ({delegated} partition(s))"]
    top = ", ".join(f"{op}×{n}" for op, n in left.most_common(6))
    return [f"{delegated} {delegate} partition(s); {sum(left.values())} ops on portable kernels ({top})"]


def _serialize(edge: Any, workdir: Path, external: bool, backend: str, delegate: str) -> tuple[str, list[str]]:
    """Write ``model.pte`` (and ``model.ptd``) into ``workdir``; return their relative names."""
    from executorch.exir import ExecutorchBackendConfig

    config = ExecutorchBackendConfig(external_constants=(lambda _node: DATA_TAG) if external else False)
    filename = "model.pte"
    try:
        program = edge.to_executorch(config)
        # Streamed from the program's segments: ``program.buffer`` would first join them into one
        # bytes object, a whole extra copy of the weights (3 GB for DiT-XL/2).
        with atomic_path(workdir / filename) as tmp, open(tmp, "wb") as fh:
            program.write_to_file(fh)
    except Exception as exc:
        raise map_backend_error(exc, backend=backend, program=edge.exported_program(), stage="serialization",
                                where=backend, fix="choose another precision or delegate") from exc
    extra: list[str] = []
    for tag, cord in (getattr(program, "_tensor_data", None) or {}).items():
        name = tag if str(tag).endswith(".ptd") else f"{tag}.ptd"
        with atomic_path(workdir / name) as tmp, open(tmp, "wb") as fh:
            cord.write_to_file(fh)
        extra.append(name)
    logger.debug("wrote %s (%d bytes) + %s for %s", filename, (workdir / filename).stat().st_size, extra, delegate)
    return filename, extra
