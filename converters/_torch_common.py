"""Helpers shared by the converters that start from ``torch.export`` (ExecuTorch, ONNX).

Input checks, the float16 wrapper, capture with errors mapped to mobilekit errors, and the
names of a captured program's inputs and outputs.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from converters.base import unsupported_op_error
from mobilekit.errors import ConfigError, ExportError, MobilekitError

logger = logging.getLogger(__name__)


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


def prepared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode (the caller's model is never touched)."""
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}", where="model")
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # a module holding an uncopyable handle
        raise ExportError(f"cannot copy the model: {type(exc).__name__}: {exc}", where=type(model).__name__,
                          fix="make the model deep-copyable (no open files or locks held as attributes)") from exc
    return clone.eval()


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

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


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
