"""Block-stack adapters: where a model's transformer blocks are, how to run it, how to skip a block.

Depth pruning needs three things from a model, and nothing else:

1. ``blocks(model)``: the ``nn.ModuleList`` of blocks run in sequence, each mapping the
   hidden state (first positional argument) to a hidden state of the same shape;
2. ``predict(model, x_t, t, cond)``: the model's noise prediction for noisy inputs;
3. ``set_blocks(model, blocks)``: put a shorter list back and record the new depth in the
   model's config so that ``save_pretrained``/``from_pretrained`` rebuild it.

Skipping a block means replacing it by the identity (a residual skip): ``x -> x``.

Built in: diffusers ``DiTTransformer2DModel`` and ``PixArtTransformer2DModel``. Any other
stack plugs in by passing an object with the same methods (see :class:`BlockStack`), e.g. a
:class:`GenericBlockStack` naming the attribute that holds the blocks::

    stack = GenericBlockStack(blocks_attr="layers", depth_key="depth",
                              predict_fn=lambda m, x, t, y: m(x, t, y))
    prune_depth(model, data, config, stack=stack)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)


@runtime_checkable
class BlockStack(Protocol):
    """What depth pruning needs to know about a model family."""

    name: str

    def matches(self, model: nn.Module) -> bool:
        """True when this adapter handles ``model``."""

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The blocks, in execution order."""

    def set_blocks(self, model: nn.Module, blocks: nn.ModuleList) -> None:
        """Replace the blocks (in place) and record the new depth in the model's config."""

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The model's output tensor for noisy inputs ``x_t`` at timesteps ``t`` with condition ``cond``."""

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input sample."""

    def num_classes(self, model: nn.Module) -> int | None:
        """How many class labels the model takes (None when unconditional)."""

    def null_class(self, model: nn.Module) -> int | None:
        """The label id meaning "no class" (classifier-free guidance), or None."""

    def install_gates(self, model: nn.Module, state: GateState) -> None:
        """Wrap every block in a :class:`GatedBlock` reading ``state`` (in place)."""


@dataclass
class GateState:
    """Per-call switches shared by the gated blocks of one model.

    Attributes:
        masks: ``[B, L]`` keep-weights (1 keep, 0 skip; may carry straight-through gradients),
            or ``[L]`` shared by the batch, or None to run every block.
        record: when True, every block appends ``(input, output)`` to ``trace``.
        trace: recorded ``(block input, block output)`` pairs, in block order.
    """

    masks: torch.Tensor | None = None
    record: bool = False
    trace: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class GatedBlock(nn.Module):
    """A block whose output is mixed per sample with its input: ``m * block(x) + (1 - m) * x``."""

    def __init__(self, block: nn.Module, index: int, state: GateState) -> None:
        super().__init__()
        self.block = block
        self.index = index
        object.__setattr__(self, "_state", state)  # plain object, not a submodule

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        state: GateState = self._state
        m = None if state.masks is None else (state.masks[..., self.index])
        if m is not None and m.dim() == 0 and not m.requires_grad and float(m) == 0.0:
            out = hidden_states  # skipped for the whole batch: do not even run it
        else:
            out = self.block(hidden_states, *args, **kwargs)
            if isinstance(out, tuple):
                out = out[0]
            if m is not None:
                m = m.to(out.dtype).reshape(-1, *([1] * (out.dim() - 1)))
                out = m * out + (1 - m) * hidden_states
        if state.record:
            state.trace.append((hidden_states.detach(), out.detach()))
        return out


def _install_generic(model: nn.Module, stack: BlockStack, state: GateState) -> None:
    blocks = stack.blocks(model)
    wrapped = nn.ModuleList([GatedBlock(b, i, state) for i, b in enumerate(blocks)])
    for i, b in enumerate(blocks):
        if isinstance(b, GatedBlock):
            raise ConfigError("the model's blocks are already gated", where=f"block {i}",
                              fix="pass the original model, not one returned by a previous search")
    _replace_list(model, stack, wrapped)


def _replace_list(model: nn.Module, stack: BlockStack, blocks: nn.ModuleList) -> None:
    attr = getattr(stack, "blocks_attr", "transformer_blocks")
    parent = model
    *path, last = attr.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, blocks)


class _DiffusersStack:
    """Shared parts of the diffusers adapters (blocks in ``transformer_blocks``, depth ``num_layers``)."""

    name = "diffusers"
    class_name = ""
    blocks_attr = "transformer_blocks"
    depth_key = "num_layers"

    def matches(self, model: nn.Module) -> bool:  # noqa: D102
        return type(model).__name__ == self.class_name and hasattr(model, "transformer_blocks")

    def blocks(self, model: nn.Module) -> nn.ModuleList:  # noqa: D102
        return model.transformer_blocks

    def set_blocks(self, model: nn.Module, blocks: nn.ModuleList) -> None:  # noqa: D102
        model.transformer_blocks = blocks
        model.register_to_config(**{self.depth_key: len(blocks)})

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:  # noqa: D102
        size = model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(model.config.in_channels), int(h), int(w)

    def install_gates(self, model: nn.Module, state: GateState) -> None:  # noqa: D102
        _install_generic(model, self, state)


class DiTStack(_DiffusersStack):
    """diffusers ``DiTTransformer2DModel`` (adaLN-Zero, class labels).

    Its output layer reads the timestep/label embedding of ``transformer_blocks[0]``; after
    pruning that is the first *kept* block, so the gated model does the same per sample.
    """

    name = "dit"
    class_name = "DiTTransformer2DModel"

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        return model(x_t, timestep=t, class_labels=cond).sample

    def num_classes(self, model: nn.Module) -> int | None:  # noqa: D102
        return int(model.config.num_embeds_ada_norm)

    def null_class(self, model: nn.Module) -> int | None:  # noqa: D102
        table = self.blocks(model)[0]
        table = getattr(table, "block", table).norm1.emb.class_embedder
        return int(table.num_classes) if table.dropout_prob > 0 else None

    def install_gates(self, model: nn.Module, state: GateState) -> None:  # noqa: D102
        _install_generic(model, self, state)
        wrapped = self.blocks(model)
        object.__setattr__(wrapped[0], "norm1", _HeadNorm(wrapped, state))


class _HeadNorm:
    """Stands in for ``transformer_blocks[0].norm1`` of a gated DiT: its ``emb`` is the first kept block's."""

    def __init__(self, wrapped: nn.ModuleList, state: GateState) -> None:
        self.wrapped = wrapped
        self.state = state

    def emb(self, timestep: torch.Tensor, class_labels: torch.Tensor, hidden_dtype: Any = None) -> torch.Tensor:
        embs = [w.block.norm1.emb for w in self.wrapped]
        masks = self.state.masks
        if masks is None:
            return embs[0](timestep, class_labels, hidden_dtype=hidden_dtype)
        keep = masks.detach() > 0.5
        if keep.dim() == 1:
            first = int(keep.float().argmax())
            return embs[first](timestep, class_labels, hidden_dtype=hidden_dtype)
        first = keep.float().argmax(dim=1)
        out = None
        for j in torch.unique(first).tolist():
            e = embs[j](timestep, class_labels, hidden_dtype=hidden_dtype)
            sel = (first == j).reshape(-1, 1).to(e.dtype)
            out = e * sel if out is None else out + e * sel
        return out


class PixArtStack(_DiffusersStack):
    """diffusers ``PixArtTransformer2DModel`` (adaLN-single, cross-attention on text embeddings).

    ``cond`` may be text embeddings ``[B, T, caption_channels]``; integer class labels are
    mapped to a fixed (seeded, not learned) embedding per class so labelled images can drive it.
    """

    name = "pixart"
    class_name = "PixArtTransformer2DModel"

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        b = x_t.shape[0]
        if cond is None or not torch.is_floating_point(cond):
            cond = self._label_embedding(model, cond, b).to(x_t.dtype)
        added: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
        if getattr(model, "use_additional_conditions", False):
            h, w = x_t.shape[-2:]
            added = {"resolution": torch.tensor([[h * 8, w * 8]] * b, dtype=x_t.dtype),
                     "aspect_ratio": torch.ones(b, 1, dtype=x_t.dtype)}
        out = model(x_t, encoder_hidden_states=cond, timestep=t, added_cond_kwargs=added).sample
        return out

    def _label_embedding(self, model: nn.Module, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        dim = int(model.config.caption_channels)
        device = next(model.parameters()).device
        if labels is None:
            return torch.zeros(batch, 1, dim, device=device)
        rows = [torch.randn(1, dim, generator=torch.Generator().manual_seed(1_000 + int(y))) for y in labels.tolist()]
        return torch.stack(rows).to(device)

    def num_classes(self, model: nn.Module) -> int | None:  # noqa: D102
        return None  # text-conditioned; labels map to fixed embeddings

    def null_class(self, model: nn.Module) -> int | None:  # noqa: D102
        return None


@dataclass
class GenericBlockStack:
    """Adapter for any model whose blocks sit in one ``nn.ModuleList`` attribute.

    Attributes:
        blocks_attr: dotted attribute path of the ``nn.ModuleList`` (e.g. ``"blocks"``).
        predict_fn: ``(model, x_t, t, cond) -> Tensor``, the model's noise prediction.
        sample_shape: ``(channels, height, width)`` of one input.
        depth_key: config key (diffusers ``register_to_config``) or attribute to set to the new depth.
        classes: number of class labels (None: unconditional).
        null_label: the "no class" label id, or None.
        name: shown in logs and result records.
    """

    blocks_attr: str
    predict_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    sample_shape: tuple[int, int, int]
    depth_key: str | None = None
    classes: int | None = None
    null_label: int | None = None
    name: str = "generic"

    def matches(self, model: nn.Module) -> bool:  # noqa: D102
        try:
            return isinstance(self.blocks(model), nn.ModuleList)
        except AttributeError:
            return False

    def blocks(self, model: nn.Module) -> nn.ModuleList:  # noqa: D102
        obj: Any = model
        for part in self.blocks_attr.split("."):
            obj = getattr(obj, part)
        return obj

    def set_blocks(self, model: nn.Module, blocks: nn.ModuleList) -> None:  # noqa: D102
        _replace_list(model, self, blocks)
        if self.depth_key:
            if hasattr(model, "register_to_config"):
                model.register_to_config(**{self.depth_key: len(blocks)})
            else:
                setattr(model, self.depth_key, len(blocks))

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        return self.predict_fn(model, x_t, t, cond)

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:  # noqa: D102
        return self.sample_shape

    def num_classes(self, model: nn.Module) -> int | None:  # noqa: D102
        return self.classes

    def null_class(self, model: nn.Module) -> int | None:  # noqa: D102
        return self.null_label

    def install_gates(self, model: nn.Module, state: GateState) -> None:  # noqa: D102
        _install_generic(model, self, state)


# Fixed table of built-in adapters; the first whose matches() is true wins.
BUILTIN_STACKS: tuple[BlockStack, ...] = (DiTStack(), PixArtStack())


def resolve_stack(model: nn.Module, stack: BlockStack | None = None) -> BlockStack:
    """Pick the adapter for ``model`` (the given one, else the first built-in that matches).

    Raises:
        ConfigError: no adapter handles the model; the message lists the supported types.
    """
    if stack is not None:
        if not stack.matches(model):
            raise ConfigError(f"the block-stack adapter {stack.name!r} does not match {type(model).__name__}",
                              where="stack", fix="check the adapter's blocks attribute")
        return stack
    for cand in BUILTIN_STACKS:
        if cand.matches(model):
            return cand
    supported = ", ".join(s.class_name for s in BUILTIN_STACKS if isinstance(s, _DiffusersStack))
    raise ConfigError(f"depth pruning does not know where the blocks of {type(model).__name__} are",
                      where=type(model).__module__ + "." + type(model).__name__,
                      fix=f"supported out of the box: {supported}; for another model pass "
                          "stack=GenericBlockStack(blocks_attr=..., predict_fn=..., sample_shape=...)")


def gated_copy(model: nn.Module, stack: BlockStack) -> tuple[nn.Module, GateState]:
    """A deep copy of ``model`` with gated blocks, and the state that drives them."""
    clone = copy.deepcopy(model)
    state = GateState()
    stack.install_gates(clone, state)
    return clone, state
