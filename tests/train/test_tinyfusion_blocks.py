"""Gated blocks, surgery and reload: the pruned model equals the original with the other blocks skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train.tinyfusion import masks as mk
from mobilekit.train.tinyfusion.blocks import DiTStack, PixArtStack, gated_copy, resolve_stack
from mobilekit.train.tinyfusion.config import DepthPruneConfig
from mobilekit.train.tinyfusion.search import GateSearchModule, attach_delta
from mobilekit.train.tinyfusion.surgery import build_pruned, save_pruned
from tests.train._tf_models import tiny_dit, tiny_pixart

ATOL = 1e-5


def _inputs(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randint(0, 10, (batch,), generator=g))


@pytest.mark.parametrize("kept", [[0, 2], [1, 3], [1, 2], [0, 1, 3]])
def test_pruned_dit_equals_original_with_other_blocks_skipped_and_reloads(kept: list[int], tmp_path: Path) -> None:
    from diffusers import DiTTransformer2DModel

    model = tiny_dit(4)
    stack = resolve_stack(model)
    assert isinstance(stack, DiTStack)
    x, t, y = _inputs()
    pruned = build_pruned(model, kept, stack)
    assert type(pruned) is DiTTransformer2DModel
    assert len(pruned.transformer_blocks) == len(kept) == pruned.config.num_layers
    assert len(model.transformer_blocks) == 4  # the original is untouched
    gated, state = gated_copy(model, stack)
    mask = torch.zeros(4)
    mask[kept] = 1.0
    with torch.no_grad():
        state.masks = mask
        ref = stack.predict(gated, x, t, y)
        # per-sample masks: the same mask repeated per sample gives the same answer
        state.masks = mask.repeat(x.shape[0], 1)
        ref_per_sample = stack.predict(gated, x, t, y)
        state.masks = None
        out = stack.predict(pruned, x, t, y)
        full = stack.predict(model, x, t, y)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(ref_per_sample, ref, atol=ATOL, rtol=0)
    assert (out - full).abs().max() > 1e-3  # skipping blocks changes the output
    save_pruned(pruned, tmp_path, {"kept": kept})
    again = DiTTransformer2DModel.from_pretrained(tmp_path / "model").eval()
    assert again.config.num_layers == len(kept)
    with torch.no_grad():
        torch.testing.assert_close(stack.predict(again, x, t, y), out, atol=ATOL, rtol=0)
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").is_file()


def test_per_sample_masks_mix_different_subnetworks_in_one_batch() -> None:
    model = tiny_dit(4)
    stack = resolve_stack(model)
    gated, state = gated_copy(model, stack)
    x, t, y = _inputs(2)
    masks = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    with torch.no_grad():
        state.masks = masks
        mixed = stack.predict(gated, x, t, y)
        for i, kept in enumerate(([0, 2], [1, 3])):
            alone = stack.predict(build_pruned(model, kept, stack), x[i:i + 1], t[i:i + 1], y[i:i + 1])
            torch.testing.assert_close(mixed[i:i + 1], alone, atol=ATOL, rtol=0)


def test_pruned_pixart_equals_original_with_other_blocks_skipped_and_reloads(tmp_path: Path) -> None:
    from diffusers import PixArtTransformer2DModel

    model = tiny_pixart(4)
    stack = resolve_stack(model)
    assert isinstance(stack, PixArtStack)
    x, t, _ = _inputs()
    cond = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(3))
    kept = [1, 2]
    pruned = build_pruned(model, kept, stack)
    gated, state = gated_copy(model, stack)
    with torch.no_grad():
        state.masks = torch.tensor([0.0, 1.0, 1.0, 0.0])
        ref = stack.predict(gated, x, t, cond)
        out = stack.predict(pruned, x, t, cond)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    save_pruned(pruned, tmp_path, {"kept": kept})
    again = PixArtTransformer2DModel.from_pretrained(tmp_path / "model").eval()
    assert again.config.num_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(stack.predict(again, x, t, cond), out, atol=ATOL, rtol=0)


def test_gradients_reach_gates_and_lora() -> None:
    model = tiny_dit(4)
    stack = resolve_stack(model)
    pattern = mk.parse_pattern("1:2", 4)
    gated, state = gated_copy(model, stack)
    params = attach_delta(gated, DepthPruneConfig(method="learnable", lora_rank=2))
    assert params and all(p.requires_grad for p in params)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(params) == 2 * n_linear  # A and B on every linear layer
    module = GateSearchModule(gated, stack, state, pattern, 0.02)
    # B starts at zero; nudge it so gradients reach A too
    with torch.no_grad():
        for n, p in gated.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    x, t, y = _inputs(8)
    gen = torch.Generator().manual_seed(0)
    gumbel = [mk.sample_gumbel((8, 2), gen) for _ in pattern]
    pred, masks = module(x, t, y, gumbel, tau=1.0, scaling=100.0)
    assert torch.all(masks.detach().reshape(8, 2, 2).sum(-1) == 1)
    pred.pow(2).mean().backward()
    for g in module.gates:
        assert g.grad is not None and g.grad.abs().sum() > 0
    lora_grads = {n: p.grad for n, p in gated.named_parameters() if "lora_" in n}
    assert all(gr is not None for gr in lora_grads.values())
    assert sum(float(gr.abs().sum()) for n, gr in lora_grads.items() if "lora_A" in n) > 0
    assert sum(float(gr.abs().sum()) for n, gr in lora_grads.items() if "lora_B" in n) > 0
    base = [p for n, p in gated.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in base)
    assert not any(p.requires_grad is False for p in model.parameters())  # original untouched


def test_unsupported_model_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="does not know where the blocks of Sequential are") as exc:
        resolve_stack(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert "DiTTransformer2DModel" in str(exc.value) and "GenericBlockStack" in str(exc.value)


def test_surgery_rejects_bad_indices() -> None:
    model = tiny_dit(4)
    with pytest.raises(ConfigError, match="sorted, distinct and within 0..3"):
        build_pruned(model, [0, 4], DiTStack())
    with pytest.raises(ConfigError, match="sorted"):
        build_pruned(model, [2, 1], DiTStack())
