"""The converter contract: one class per backend turns (model, inputs, Recipe) into files.

A converter is cheap to construct and imports its backend only inside ``convert``.
``supports`` answers without heavy imports, with the reason when the answer is no, so a
combination a backend can't do is refused up front with the list of what it can do.
Stages run in order (prepare → quantize → lower → serialize) and each records its seconds;
parity and the manifest are the orchestrator's job (mobilekit.export).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from mobilekit.errors import ConfigError, UnsupportedOpError
from mobilekit.recipe import Recipe


@dataclass(frozen=True)
class Support:
    """Whether a converter can build a recipe, and why not."""

    ok: bool
    reason: str = ""
    supported: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class ConvertResult:
    """What ``Converter.convert`` wrote into its work directory.

    Attributes:
        filename: the main file (or .mlpackage folder), relative to the work directory.
        extra_files: other files that belong to it (e.g. .ptd weights), relative.
        stages: seconds per stage.
        input_names: input names in the artifact, in order.
        output_names: output names in the artifact, in order.
        notes: remarks for the manifest (fallbacks, ops left on the CPU).
        input_dtypes: input dtypes when the artifact's differ from PyTorch's (int64 -> int32).
        op_precisions: weighted ``conv``/``matmul`` op counts by precision, for formats whose file
            does not show them (an ExecuTorch delegate's payload); None when the file is read instead.
    """

    filename: str
    extra_files: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input_dtypes: list[str] | None = None  # when the artifact's inputs differ from PyTorch's (int64 → int32)
    op_precisions: dict[str, dict[str, int]] | None = None


class Converter(Protocol):
    """A backend: ``supports`` is cheap; ``convert`` does the work."""

    format: ClassVar[str]
    precisions: ClassVar[dict[str | None, tuple[str, ...]]]  # delegate -> precisions it can build

    def supports(self, recipe: Recipe) -> Support:
        """Whether ``recipe`` can be built, with the reason and the alternatives when not."""
        ...

    def convert(self, model: torch.nn.Module, example_inputs: tuple[Any, ...], recipe: Recipe, workdir: Path, *,
                calibration: Sequence[tuple[Any, ...]] | None = None) -> ConvertResult:
        """Quantize, lower and serialize ``model`` into ``workdir``."""
        ...


def supports_from_table(fmt: str, precisions: dict[str | None, tuple[str, ...]], recipe: Recipe) -> Support:
    """Answer ``supports`` from a delegate → precisions table."""
    allowed = precisions.get(recipe.delegate, ())
    if recipe.precision in allowed:
        return Support(True)
    names = tuple(f"{fmt}{'-' + d if d else ''}-{p}" for d, ps in precisions.items() for p in ps)
    return Support(False, f"{fmt}{' with ' + recipe.delegate if recipe.delegate else ''} cannot build "
                          f"precision {recipe.precision}", names)


def ensure_supported(converter: Converter, recipe: Recipe) -> None:
    """Raise ConfigError naming the recipe and the alternatives when ``converter`` can't build it."""
    support = converter.supports(recipe)
    if not support:
        raise ConfigError(support.reason, where=f"recipe {recipe.name}",
                          fix=f"choose one of: {', '.join(support.supported)}")


class StageTimer:
    """Records seconds per named stage: ``with timer("quantize"): ...``."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start


_OP = re.compile(r"(aten(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)")


def module_path_of_op(program: Any, op: str) -> str | None:
    """The PyTorch module path (e.g. ``transformer_blocks.3.attn1``) of the first node calling ``op``.

    Args:
        program: a ``torch.export.ExportedProgram`` (or a GraphModule).
        op: an op name such as ``aten.bucketize.Tensor`` or ``aten::bucketize``.
    """
    graph = getattr(program, "graph", None) or getattr(getattr(program, "graph_module", None), "graph", None)
    if graph is None:
        return None
    key = op.replace("::", ".").split(".")[1] if "." in op.replace("::", ".") else op
    for node in graph.nodes:
        if node.op != "call_function" or key not in str(node.target):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path = list(stack.values())[-1][0]
            return re.sub(r"^L\['self'\]\.?|^self\.?", "", str(path)) or "<root>"
        return "<root>"
    return None


def unsupported_op_error(exc: BaseException, *, backend: str, program: Any = None) -> UnsupportedOpError | None:
    """Turn a backend exception that names an aten op into an UnsupportedOpError with its module path."""
    match = _OP.search(str(exc))
    if match is None:
        return None
    op = match.group(1).replace("::", ".")
    path = module_path_of_op(program, op) if program is not None else None
    return UnsupportedOpError(f"{backend} cannot lower op {op}", op=op, module_path=path, backend=backend,
                              where=path or "unknown module",
                              fix="rewrite that module with supported ops, or choose another format/recipe")
