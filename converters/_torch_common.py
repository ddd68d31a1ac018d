"""Helpers shared by the converters that start from ``torch.export`` (ExecuTorch, ONNX).

Input checks, the float16 wrapper, capture with errors mapped to mobilekit errors, and the
names of a captured program's inputs and outputs.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import logging
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mobilekit.converters.base import unsupported_op_error
from mobilekit.errors import ConfigError, ExportError, MobilekitError

logger = logging.getLogger(__name__)


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """A model's outputs as a flat list of tensors (tensors, ``.sample`` dataclasses, dicts, nested tuples)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "sample") and isinstance(out.sample, torch.Tensor):
        return [out.sample]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    raise ExportError(f"the model returns {type(out).__name__}, not tensors", where="forward",
                      fix="wrap the model so forward returns a tensor or a tuple of tensors")


def within_module(scope: str, module: str) -> bool:
    """Whether module path ``scope`` is ``module`` or one of its submodules (``blocks.1`` holds
    ``blocks.1.conv``, not ``blocks.10``).

    Containers that are never called (ModuleList, ModuleDict) have no entry of their own in a
    node's module stack, so a node is matched through its submodules' paths. A strict-mode
    capture's ``L['self'].`` prefix is ignored.
    """
    scope = scope.removeprefix("L['self'].")
    return scope == module or scope.startswith(module + ".")


def check_module_paths(model: torch.nn.Module, paths: Sequence[str], *, where: str = "float_modules") -> None:
    """Refuse, before any work, a module path that ``model.named_modules()`` does not have."""
    names = {n for n, _ in model.named_modules()}
    missing = [m for m in paths if m not in names]
    if missing:
        raise ConfigError(f"{where}: the model has no module {missing[0]!r}", where=where,
                          fix="name modules as model.named_modules() does")


def check_inputs(example_inputs: Any, *, what: str = "example_inputs") -> tuple[torch.Tensor, ...]:
    """Return ``example_inputs`` as a tuple of tensors, or raise ConfigError naming the bad entry.

    Args:
        example_inputs: a tuple (or list) of tensors, one per positional argument of ``forward``.
        what: the name used in error messages.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise ConfigError(f"{what} must be a non-empty tuple of tensors, got {type(example_inputs).__name__}",
                          where=what, fix="pass (tensor, ...) in the order forward() takes them")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"{what}[{i}] is a {type(x).__name__}, not a tensor", where=f"{what}[{i}]",
                              fix="pass every input of forward() as a tensor")
    return tuple(example_inputs)


def check_calibration(calibration: Sequence[Any] | None, example_inputs: tuple[torch.Tensor, ...]
                      ) -> list[tuple[torch.Tensor, ...]]:
    """Return the calibration batches (``[example_inputs]`` when None), each checked like the example.

    Raises:
        ConfigError: a batch has the wrong number of inputs or a non-tensor entry.
    """
    if calibration is None:
        return [example_inputs]
    batches = []
    for j, batch in enumerate(calibration):
        batch = check_inputs(batch, what=f"calibration[{j}]")
        if len(batch) != len(example_inputs):
            raise ConfigError(f"calibration[{j}] has {len(batch)} inputs, the example has {len(example_inputs)}",
                              where=f"calibration[{j}]", fix="give each calibration batch every model input")
        batches.append(batch)
    if not batches:
        raise ConfigError("calibration is empty", where="calibration",
                          fix="pass at least one batch, or None to calibrate on the example inputs")
    return batches


def prepared_model(model: torch.nn.Module, *, mutates: bool = False) -> torch.nn.Module:
    """``model`` ready to capture, in eval mode; the caller's model is never changed.

    A copy is made only when needed: when the recipe changes the module in place (float16 casts,
    torchao's in-place quantization) or when the model is in training mode. Capturing and lowering
    do not touch the weights, so an eval-mode model is used as it is: a copy of a DiT-XL/2 costs
    3 GB of memory for nothing.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}", where="model")
    if not mutates and not any(m.training for m in model.modules()):
        return model
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # a module holding an uncopyable handle
        raise ExportError(f"cannot copy the model: {type(exc).__name__}: {exc}", where=type(model).__name__,
                          fix="make the model deep-copyable (no open files or locks held as attributes)") from exc
    return clone.eval()


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, between the stages of a big export.

    Lowering a model builds graphs that refer to each other in cycles, so a stage's copies of the
    weights outlive it until the collector runs; and glibc keeps freed heap memory in its arenas
    (the process's RSS does not fall) unless asked with ``malloc_trim``. Both matter for a
    multi-GB model: the next stage, or a runtime child process, otherwise starts on top of them.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


def weight_bytes(model: torch.nn.Module, *, as_dtype: torch.dtype | None = None) -> int:
    """Bytes of a model's parameters and buffers (counted at ``as_dtype`` for floating tensors when given)."""
    as_size = torch.empty((), dtype=as_dtype).element_size() if as_dtype else None
    return sum(t.numel() * (as_size if as_size and t.is_floating_point() else t.element_size())
               for t in [*model.parameters(), *model.buffers()])


class HalfPrecision(torch.nn.Module):
    """Runs a module in float16 while keeping float32 inputs and outputs.

    Floating inputs are cast to float16 on the way in, floating outputs back to float32 on the
    way out; integer inputs (timesteps, class labels) pass unchanged.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module.half()

    def forward(self, *args: torch.Tensor) -> Any:
        cast = [a.half() if a.is_floating_point() else a for a in args]
        out = self.module(*cast)
        return _tree_float(out)


def _tree_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_tree_float(o) for o in out)
    return out


def capture(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *, backend: str
            ) -> torch.export.ExportedProgram:
    """``torch.export.export`` the model, mapping failures to UnsupportedOpError or ExportError."""
    try:
        with torch.no_grad():
            return torch.export.export(model, example_inputs, strict=False)
    except MobilekitError:
        raise
    except Exception as exc:
        mapped = unsupported_op_error(exc, backend=backend)
        if mapped is not None:
            raise mapped from exc
        raise ExportError(f"torch.export could not capture the model: {first_line(exc)}", where=type(model).__name__,
                          fix="make forward() traceable by torch.export (no data-dependent Python control flow, "
                              "tensor inputs only); see https://pytorch.org/docs/stable/export.html") from exc


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (backend messages run to pages)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def map_backend_error(exc: BaseException, *, backend: str, program: Any, stage: str, where: str,
                      fix: str) -> MobilekitError:
    """The mobilekit error for a backend failure: UnsupportedOpError if it names an aten op, else ExportError."""
    if isinstance(exc, MobilekitError):
        return exc
    mapped = unsupported_op_error(exc, backend=backend, program=program)
    if mapped is not None:
        return mapped
    return ExportError(f"{backend} {stage} failed: {first_line(exc)}", where=where, fix=fix)


def io_names(program: torch.export.ExportedProgram, model: torch.nn.Module | None = None
             ) -> tuple[list[str], list[str]]:
    """Names of the user inputs and outputs of a captured program.

    Inputs take the names of ``model.forward``'s positional parameters when ``model`` is given and
    they can be read (a wrapper taking ``*args`` would otherwise name them ``args_0``...).
    """
    sig = program.graph_signature
    inputs = [str(name) for name in sig.user_inputs]
    if model is not None:
        names = forward_arg_names(model)
        if len(names) >= len(inputs):
            inputs = names[:len(inputs)]
    n_out = len(sig.user_outputs)
    outputs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    return inputs, outputs


_EDGE_OP = re.compile(r"<EdgeOpOverload: ([\w.:]+)>")


def forward_arg_names(model: torch.nn.Module) -> list[str]:
    """Positional parameter names of ``model.forward`` (empty if it takes ``*args``)."""
    import inspect

    named = getattr(model, "mobilekit_input_names", None)  # wrappers taking *args keep the inner names
    if named:
        return list(named)
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def input_names_of(model: torch.nn.Module, n: int) -> list[str]:
    """Names for ``n`` inputs: ``forward``'s positional parameters, then ``input_i`` for the rest."""
    names = forward_arg_names(model)[:n]
    return names + [f"input_{i}" for i in range(len(names), n)]


def op_histogram(graph: Any, *, skip: Sequence[str] = ("getitem", "call_delegate")) -> Counter[str]:
    """Count call_function targets of ``graph`` by op name (``aten.native_layer_norm``)."""
    counts: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        text = str(node.target)
        match = _EDGE_OP.match(text)
        name = match.group(1) if match else getattr(node.target, "__name__", text)
        if any(s in name for s in skip):
            continue
        counts[name.removesuffix(".default")] += 1
    return counts


def static_reshapes(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Rewrite ``view`` and ``squeeze(dim)`` nodes as ``reshape`` to the static shape, in place.

    Two ONNX exporter failures on models people ship, both fixed by saying "reshape":

    * ``x.squeeze(1)`` on a dimension that is not 1 is a no-op in PyTorch (PixArt's output head),
      but the exporter's optimizer turns it into a ``Squeeze`` that ONNX Runtime refuses
      ("Dimension of input 1 must be 1 instead of 16").
    * ``reshape`` of a transposed tensor is captured as ``view`` (transformers' Swin attention); the
      exporter's re-trace with other strides then fails ("Cannot view a tensor with shape ...").

    ``reshape`` equals ``view`` wherever a view is valid, and ONNX has one ``Reshape`` for both.
    Nodes keep their names, so the program's signature holds.
    """
    aten = torch.ops.aten
    changed = False
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == aten.view.default:
            node.target = aten.reshape.default
            changed = True
        elif node.target in (aten.squeeze.dim, aten.squeeze.dims):
            val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
            if val is None or any(not isinstance(d, int) for d in val.shape):
                continue  # symbolic shapes: leave it to the exporter
            rank = max(val.dim(), 1)
            dims = node.args[1] if len(node.args) > 1 else ()
            dims = {d % rank for d in ([dims] if isinstance(dims, int) else dims)}
            node.target = aten.reshape.default
            node.args = (node.args[0], [s for i, s in enumerate(val.shape) if not (i in dims and s == 1)])
            changed = True
    if changed:
        program.graph_module.recompile()
    return program


def float64_as_float32(program: torch.export.ExportedProgram) -> bool:
    """Compute in float32 where the graph asks for float64, in place; whether anything changed.

    Phones' runtimes have no float64 kernels (TFLite: "failed to legalize operation 'tfl.pow'" on
    ``tensor<f64>``). diffusers builds rotary embeddings in float64 on every device but MPS and
    NPU (Flux's ``FluxPosEmbed``); float32 there changes outputs by ~1e-6.
    """
    changed = False
    for node in program.graph.nodes:
        if node.op == "call_function" and node.kwargs.get("dtype") is torch.float64:
            node.kwargs = {**node.kwargs, "dtype": torch.float32}
            changed = True
        elif node.op == "call_function" and torch.float64 in node.args:
            node.args = tuple(torch.float32 if a is torch.float64 else a for a in node.args)
            changed = True
    if changed:
        program.graph_module.recompile()
    return changed


def calibration_parity(model: torch.nn.Module, calibration: Sequence[Sequence[torch.Tensor]], *,
                       runtime: str) -> Any:
    """A function measuring an artifact file against ``model`` on the calibration batches.

    The int8-static fallbacks (TFLite, ONNX) choose between candidate quantizations with it: the
    returned ``measure(path)`` runs the file on every batch in one child process (a native crash
    raises RuntimeCrashError, it cannot take the export down) and compares with PyTorch against
    the default int8-static floor. Only calibration batches are used: the held-out parity inputs
    of the export's own check stay unseen.
    """
    from pathlib import Path

    from mobilekit.parity import Parity, compare_many, tolerance_for
    from mobilekit.runtime import run_artifact_many

    feeds = [[t.detach().cpu().numpy() for t in batch] for batch in calibration]
    with torch.no_grad():
        references = [[t.detach().float().cpu().numpy() for t in flatten_outputs(model(*batch))]
                      for batch in calibration]
    floor = tolerance_for("int8-static")

    def measure(path: Path) -> Parity:
        return compare_many(references, run_artifact_many(Path(path), feeds), tolerance=floor, runtime=runtime)

    return measure


def choose_int8_static(full: Any, make_mixed: Any, measure: Any, notes: list[str], *, whole: str, runtime: str,
                       compute_ops: Sequence[str], kept_mixed: str, kept_full: str) -> Any:
    """The int8-static fallback both TFLite and ONNX use: ``full``, or the compute-ops-only model.

    ``measure(candidate)`` checks a candidate on the calibration batches (``calibration_parity``);
    ``full`` is kept when it holds the int8-static floor, or when the runtime cannot even run it
    (the export's own parity check reports that). Otherwise ``make_mixed()`` builds the model with
    only ``compute_ops`` in int8, and the one that passes, else the closer one, is returned. The
    choice and both cosines go into ``notes``; ``whole`` names the full model in them.
    """
    from mobilekit.errors import RuntimeCrashError

    try:
        first = measure(full)
    except RuntimeCrashError:
        return full
    if first.status == "pass":
        notes.append(f"{whole} (calibration batches: cosine {first.cosine:.4f})")
        return full
    lost = f"{whole} lost the int8-static floor on the calibration batches (cosine {first.cosine:.4f})"
    mixed = make_mixed()
    try:
        second = measure(mixed)
    except RuntimeCrashError:
        notes.append(f"{lost}; the int8-matmul/conv fallback did not run in {runtime}, so it was not kept")
        return full
    keep_mixed = second.status == "pass" or second.cosine > first.cosine
    notes.append(f"{lost}; with only {', '.join(compute_ops)} in int8 and the rest float: cosine "
                 f"{second.cosine:.4f}; kept the " + (kept_mixed if keep_mixed else kept_full))
    return mixed if keep_mixed else full
