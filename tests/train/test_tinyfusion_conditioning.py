"""The head's conditioning under pruning: diffusers DiT reads ``transformer_blocks[0].norm1.emb``.

After pruning, index 0 is the first kept block. The gated model must (a) compute exactly what
the pruned model computes for a hard mask and (b) let the gate logits feel the cost of
changing which embedder conditions the head (it used ``masks.detach()`` before).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train import DepthPruneConfig, prune_depth
from mobilekit.train.tinyfusion import blocks as blk
from mobilekit.train.tinyfusion import masks as mk
from mobilekit.train.tinyfusion.blocks import gated_copy, outside_block_calls, resolve_stack
from mobilekit.train.tinyfusion.search import GateSearchModule
from mobilekit.train.tinyfusion.surgery import build_pruned, save_pruned
from tests.train._tf_models import HeadReadsFirstBlock, head_reads_adapter, tiny_dit_sigma, tiny_pixart

ATOL = 1e-5


def _inputs(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randint(0, 10, (batch,), generator=g))


def _head_conditioning(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What conditions the DiT head: the input of ``proj_out_1`` is ``silu(conditioning)``."""
    seen: list[torch.Tensor] = []
    h = model.proj_out_1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(x, timestep=t, class_labels=y)
    finally:
        h.remove()
    return seen[0]


def _straight_through(hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks with the value of ``hard`` and a gradient path (``hard - soft.detach() + soft``)."""
    logits = torch.zeros(hard.shape, requires_grad=True)
    soft = torch.sigmoid(logits)
    return hard - soft.detach() + soft, logits


def test_first_kept_weights_are_the_first_kept_one_hot_and_differentiable() -> None:
    m, logits = _straight_through(torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]]))
    w = blk.first_kept_weights(m)
    torch.testing.assert_close(w.detach(), torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    (w * torch.arange(1.0, 5.0)).sum().backward()
    assert logits.grad is not None and float(logits.grad[0, 0].abs()) > 0  # dropping block 0 has a price


def test_dit_head_reads_block_0_from_outside_and_pixart_reads_nothing() -> None:
    x, t, y = _inputs(2)
    dit = tiny_dit_sigma(4)
    stack = resolve_stack(dit)
    with torch.no_grad():
        calls = outside_block_calls(dit, stack, lambda: stack.predict(dit, x, t, y))
    assert calls == ["0.norm1.emb"]
    pix = tiny_pixart(4)
    pstack = resolve_stack(pix)
    cond = torch.randn(2, 3, 16)
    with torch.no_grad():
        assert outside_block_calls(pix, pstack, lambda: pstack.predict(pix, x, t, cond)) == []


def test_gated_dit_equals_pruned_dit_with_block_0_dropped_and_the_head_path_reaches_the_gates(tmp_path: Path) -> None:
    from diffusers import DiTTransformer2DModel

    model = tiny_dit_sigma(4)
    stack = resolve_stack(model)
    x, t, y = _inputs()
    kept = [1, 3]
    pruned = build_pruned(model, kept, stack)
    # what diffusers does after pruning: the head reads the first kept block's embedder
    with torch.no_grad():
        emb1 = model.transformer_blocks[1].norm1.emb(t, y, hidden_dtype=x.dtype)
        emb0 = model.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=x.dtype)
    cond = _head_conditioning(pruned, x, t, y)
    torch.testing.assert_close(cond, torch.nn.functional.silu(emb1))
    assert (cond - torch.nn.functional.silu(emb0)).abs().max() > 1e-2  # block 0's embedder is distinctive
    # (a) the gated model with a hard straight-through mask computes exactly the pruned model
    gated, state = gated_copy(model, stack)
    hard = torch.zeros(4, 4)
    hard[:, kept] = 1.0
    masks, logits = _straight_through(hard)
    state.masks = masks
    out = stack.predict(gated, x, t, y)
    state.masks = None
    with torch.no_grad():
        ref = stack.predict(pruned, x, t, y)
    torch.testing.assert_close(out.detach(), ref, atol=ATOL, rtol=0)
    # (b) the mask of block 0 gets gradient through the head's conditioning
    out.pow(2).mean().backward()
    full_grad = logits.grad[:, 0].clone()
    logits.grad = None
    gated2, state2 = gated_copy(model, stack)
    masks2, logits2 = _straight_through(hard)
    detached = blk.first_kept_weights
    try:
        blk.first_kept_weights = lambda m: detached(m.detach())  # the old, detached choice
        state2.masks = masks2
        stack.predict(gated2, x, t, y).pow(2).mean().backward()
    finally:
        blk.first_kept_weights = detached
        state2.masks = None
    head_part = full_grad - logits2.grad[:, 0]
    assert float(head_part.abs().max()) > 1e-6, "dropping block 0 must cost gradient through the head"
    # directly: what the gated model's head reads is exactly the first kept embedder, with gradient
    masks3, logits3 = _straight_through(hard)
    state.masks = masks3
    head_cond = gated.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=x.dtype)
    state.masks = None
    torch.testing.assert_close(head_cond.detach(), emb1, atol=ATOL, rtol=0)
    (head_cond * torch.randn(head_cond.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    assert logits3.grad is not None and float(logits3.grad[:, 0].abs().min()) > 0
    # the pruned model still round-trips through from_pretrained
    save_pruned(pruned, tmp_path, {"kept": kept})
    again = DiTTransformer2DModel.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(stack.predict(again, x, t, y), ref, atol=ATOL, rtol=0)


def test_search_module_gates_of_group_0_get_gradient_from_the_head() -> None:
    model = tiny_dit_sigma(4)
    stack = resolve_stack(model)
    pattern = mk.parse_pattern("1:2", 4)
    gated, state = gated_copy(model, stack)
    for p in gated.parameters():
        p.requires_grad_(False)
    module = GateSearchModule(gated, stack, state, pattern, 0.02)
    x, t, y = _inputs(8)
    gen = torch.Generator().manual_seed(0)
    gumbel = [mk.sample_gumbel((8, 2), gen) for _ in pattern]
    pred, masks = module(x, t, y, gumbel, tau=1.0, scaling=100.0)
    # the head term alone: the output's dependence on which embedder conditions the head
    pred.pow(2).mean().backward()
    assert module.gates[0].grad is not None and float(module.gates[0].grad.abs().sum()) > 0
    # per-sample outputs equal the pruned models of each sample's hard mask
    with torch.no_grad():
        for i in range(8):
            kept = torch.nonzero(masks[i].detach() > 0.5).flatten().tolist()
            alone = stack.predict(build_pruned(model, kept, stack), x[i:i + 1], t[i:i + 1], y[i:i + 1])
            torch.testing.assert_close(pred[i:i + 1].detach(), alone, atol=ATOL, rtol=0)


def test_protect_keeps_block_0_so_the_head_keeps_its_trained_conditioning(tmp_path: Path) -> None:
    model = tiny_dit_sigma(4)
    cfg = DepthPruneConfig(method="learnable", pattern="1:2", steps=2, batch_size=4, log_every=1, calib_samples=8, lora_rank=2,
                           protect=(0,))
    res = prune_depth(model, "digits", cfg, out_dir=tmp_path, device="cpu")
    assert res.kept[0] == 0 and len(res.kept) == 2
    x, t, y = _inputs()
    with torch.no_grad():
        emb0 = model.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=x.dtype)
    torch.testing.assert_close(_head_conditioning(res.model, x, t, y), torch.nn.functional.silu(emb0))
    assert res.to_dict()["config"]["data"]["protect"] == [0]
    with pytest.raises(ConfigError, match="keeps 1 blocks but 2 are protected"):
        prune_depth(model, "digits", DepthPruneConfig(method="learnable", pattern="1:2", steps=1, protect=(0, 1), calib_samples=8))
    with pytest.raises(ConfigError) as exc:
        DepthPruneConfig(method="shortgpt", protect=(0,))
    assert exc.value.where == "protect"


def test_generic_stack_reading_block_0_from_outside_must_declare_it() -> None:
    model = HeadReadsFirstBlock(4)
    with pytest.raises(ConfigError, match=r"\['0.emb'\]") as exc:
        prune_depth(model, "digits", DepthPruneConfig(method="learnable", pattern="1:2", steps=1, calib_samples=8),
                    stack=head_reads_adapter(declare=False))
    assert "outside_reads" in exc.value.fix
    stack = head_reads_adapter(declare=True)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 4, 4, 4, generator=g), torch.randint(0, 1000, (4,), generator=g)
    pruned = build_pruned(model, [1, 2], stack)
    gated, state = gated_copy(model, stack)
    hard = torch.tensor([0.0, 1.0, 1.0, 0.0]).repeat(4, 1)
    masks, logits = _straight_through(hard)
    state.masks = masks
    out = stack.predict(gated, x, t, None)
    state.masks = None
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), stack.predict(pruned, x, t, None), atol=ATOL, rtol=0)
    out.pow(2).mean().backward()
    assert float(logits.grad[:, 0].abs().sum()) > 0
    res = prune_depth(model, "digits", DepthPruneConfig(method="learnable", pattern="1:2", steps=2, batch_size=4, calib_samples=8,
                                                        lora_rank=2), stack=stack, device="cpu")
    assert len(res.kept) == 2
