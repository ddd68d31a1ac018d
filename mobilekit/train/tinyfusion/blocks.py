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

    # Optional attribute ``outside_reads: tuple[str, ...]``: submodule paths of ``blocks[0]`` the
    # model calls from outside the blocks (diffusers DiT: ``("norm1.emb",)``, the head's conditioning).


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
                m = m.to(out.device, out.dtype).reshape(-1, *([1] * (out.dim() - 1)))
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
    _install_outside_reads(wrapped, state, tuple(getattr(stack, "outside_reads", ())))


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

    outside_reads: tuple[str, ...] = ()

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:  # noqa: D102
        size = model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(model.config.in_channels), int(h), int(w)

    def install_gates(self, model: nn.Module, state: GateState) -> None:  # noqa: D102
        _install_generic(model, self, state)


class DiTStack(_DiffusersStack):
    """diffusers ``DiTTransformer2DModel`` (adaLN-Zero, class labels).

    Its output head is conditioned by ``transformer_blocks[0].norm1.emb`` (each block owns a
    timestep/label embedder; there is none at model level). After pruning, index 0 is the first
    *kept* block, so the head reads that block's embedder. The adapter declares this
    (``outside_reads``) and the gated model reproduces it differentiably (see
    :class:`_FirstKeptRead`), so the search pays for dropping block 0.

    Why not keep the original head conditioning after dropping block 0: a vanilla
    ``DiTTransformer2DModel`` has one embedder per block, and the first block's embedder feeds
    both that block's adaLN and the head, so no weights of the shallower model give the kept
    block its own modulation and the head block 0's (the two are non-linear in ``(t, y)``).
    The pruned model therefore stays exactly what diffusers computes (and loads with
    ``from_pretrained``); the search sees that exact cost; ``DepthPruneConfig(protect=(0,))``
    keeps block 0 when the head's trained conditioning must survive unchanged.
    """

    name = "dit"
    class_name = "DiTTransformer2DModel"
    outside_reads: tuple[str, ...] = ("norm1.emb",)

    def predict(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        return model(x_t, timestep=t, class_labels=cond).sample

    def num_classes(self, model: nn.Module) -> int | None:  # noqa: D102
        return int(model.config.num_embeds_ada_norm)

    def null_class(self, model: nn.Module) -> int | None:  # noqa: D102
        table = self.blocks(model)[0]
        table = getattr(table, "block", table).norm1.emb.class_embedder
        return int(table.num_classes) if table.dropout_prob > 0 else None


def first_kept_weights(masks: torch.Tensor) -> torch.Tensor:
    """``w_j = m_j * prod_{i<j} (1 - m_i)``: which block is the first kept one, per sample.

    For hard 0/1 masks this is the one-hot of the first kept block, so a mixture weighted by
    it equals what the pruned model computes; it stays differentiable in every ``m_i``
    (straight-through masks carry the gate-logit gradient). ``masks`` is ``[B, L]`` or ``[L]``.
    """
    survive = torch.cumprod(1 - masks, dim=-1)
    before = torch.cat([torch.ones_like(survive[..., :1]), survive[..., :-1]], dim=-1)
    return masks * before


def _resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class _FirstKeptRead:
    """Stands in for ``blocks[0].<path>`` of a gated model when the model calls it from outside the blocks.

    A pruned model's ``blocks[0]`` is its first kept block, so the original model's code (e.g.
    the diffusers DiT head, ``transformer_blocks[0].norm1.emb(...)``) then runs that block's
    module. Here every block's module runs and the outputs are mixed with
    :func:`first_kept_weights` of the sampled masks: with hard masks the result is exactly the
    pruned model's, and the gradient reaches the gate logits, so dropping block 0 is charged
    the cost of re-conditioning the head. (Before, the choice was made on ``masks.detach()``
    and the search never saw that cost.) Without gradient the first kept block alone is run.
    """

    def __init__(self, wrapped: nn.ModuleList, state: GateState, path: str) -> None:
        self.wrapped = wrapped
        self.state = state
        self.path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mods = [_resolve(w.block, self.path) for w in self.wrapped]
        masks = self.state.masks
        if masks is None:
            return mods[0](*args, **kwargs)
        if not (masks.requires_grad and torch.is_grad_enabled()):
            keep = masks.detach() > 0.5
            if keep.dim() == 1:
                return mods[int(keep.float().argmax())](*args, **kwargs)
            first = keep.float().argmax(dim=1)
            out = None
            for j in torch.unique(first).tolist():
                e = mods[j](*args, **kwargs)
                sel = (first == j).to(e.device, e.dtype).reshape(-1, *([1] * (e.dim() - 1)))
                out = e * sel if out is None else out + e * sel
            return out
        w = first_kept_weights(masks)
        out = None
        for j, mod in enumerate(mods):
            e = mod(*args, **kwargs)
            wj = w[..., j].to(e.device, e.dtype).reshape(-1, *([1] * (e.dim() - 1)))
            out = wj * e if out is None else out + wj * e
        return out


class _Namespace:
    """Attribute holder standing in for the intermediate objects of a dotted path."""


def _install_outside_reads(wrapped: nn.ModuleList, state: GateState, paths: tuple[str, ...]) -> None:
    """Route each ``blocks[0].<path>`` read from outside the blocks to a :class:`_FirstKeptRead`."""
    for path in paths:
        *parents, leaf = path.split(".")
        holder: Any = wrapped[0]
        for part in parents:
            nxt = holder.__dict__.get(part)
            if not isinstance(nxt, _Namespace):
                nxt = _Namespace()
                object.__setattr__(holder, part, nxt)
            holder = nxt
        object.__setattr__(holder, leaf, _FirstKeptRead(wrapped, state, path))


def outside_block_calls(model: nn.Module, stack: BlockStack, run: Callable[[], Any]) -> list[str]:
    """Submodules of the blocks that ``run()`` calls from outside their block's forward.

    Such a call (e.g. the diffusers DiT head running ``transformer_blocks[0].norm1.emb``) ties the
    model's output to whichever block ends up at that index after pruning. Returns the paths as
    ``"<block index>.<submodule path>"``, outermost only.
    """
    blocks = stack.blocks(model)
    active: list[int] = []
    found: list[str] = []
    handles = []

    def enter(i: int) -> Callable[..., None]:
        return lambda *_: active.append(i)

    def leave(i: int) -> Callable[..., None]:
        return lambda *_: active.remove(i)

    def check(i: int, name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if i not in active and not any(f"{i}.{name}".startswith(f + ".") for f in found):
                found.append(f"{i}.{name}")
        return hook

    try:
        for i, blk in enumerate(blocks):
            handles.append(blk.register_forward_pre_hook(enter(i)))
            handles.append(blk.register_forward_hook(leave(i)))
            for name, sub in blk.named_modules():
                if name:
                    handles.append(sub.register_forward_pre_hook(check(i, name)))
        run()
    finally:
        for h in handles:
            h.remove()
    return found


def check_outside_reads(model: nn.Module, stack: BlockStack, run: Callable[[], Any]) -> None:
    """Raise unless every outside-the-blocks call ``run()`` makes is one the adapter declares.

    Raises:
        ConfigError: the model runs part of a block from outside the block and the adapter does
            not say so (``outside_reads``); pruning would silently change what that part feeds.
    """
    declared = tuple(getattr(stack, "outside_reads", ()))
    bad = [p for p in outside_block_calls(model, stack, run)
           if not any(p == f"0.{d}" or p.startswith(f"0.{d}.") for d in declared)]
    if bad:
        raise ConfigError(f"{type(model).__name__} calls block parts {bad} from outside their blocks; pruning "
                          "would change what they feed", where=f"stack {stack.name!r}",
                          fix="if the model reads them from blocks[0] (the first kept block after pruning), "
                              "declare the paths in the adapter's outside_reads (e.g. GenericBlockStack("
                              "outside_reads=('norm1.emb',))); otherwise move them out of the blocks")


class PixArtStack(_DiffusersStack):
    """diffusers ``PixArtTransformer2DModel`` (adaLN-single, cross-attention on text embeddings).

    ``cond`` may be text embeddings ``[B, T, caption_channels]``; integer class labels are
    mapped to a fixed (seeded, not learned) embedding per class so labelled images can drive it.
    Its timestep conditioning (``adaln_single``, ``scale_shift_table``) sits at model level, so
    no block is read from outside the stack and pruning never touches the head's conditioning
    (``check_outside_reads`` verifies this on every prune).
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
            added = {"resolution": torch.tensor([[h * 8, w * 8]] * b, dtype=x_t.dtype, device=x_t.device),
                     "aspect_ratio": torch.ones(b, 1, dtype=x_t.dtype, device=x_t.device)}
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
        outside_reads: submodule paths of ``blocks[0]`` that the model calls from outside the
            blocks (e.g. a head conditioned by ``blocks[0].emb``); after pruning they belong to
            the first kept block, and the gated model mirrors that differentiably.
    """

    blocks_attr: str
    predict_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    sample_shape: tuple[int, int, int]
    depth_key: str | None = None
    classes: int | None = None
    null_label: int | None = None
    name: str = "generic"
    outside_reads: tuple[str, ...] = ()

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
