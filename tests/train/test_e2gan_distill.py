"""InstructPix2Pix pair distillation with tiny random components: well-formed pairs, seeded, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train.e2gan.distill_data import DistillDataConfig, distill_pairs, source_images
from mobilekit.train.e2gan.pairs import PairDataset

pytestmark = pytest.mark.xdist_group("e2gan_distill")


def _byte_chars():
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def tiny_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"),
                         model_max_length=16), len(vocab)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tok, vocab = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab - 2,
                                      eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    sched = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    p = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                               safety_checker=None, feature_extractor=None,
                                               requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    yield p
    torch.set_num_threads(n)


@pytest.mark.slow
def test_distill_writes_pairs_and_resumes(pipe, tmp_path):
    cfg = DistillDataConfig(concept="sepia", prompt="make it sepia", size=32, num_inference_steps=2, seed=5)
    out = tmp_path / "pairs"
    calls = []
    rep = distill_pairs(pipe, "builtin:3", out, cfg, on_progress=lambda s, d, t: calls.append((s, d, t)))
    assert (rep.written, rep.skipped) == (3, 0)
    assert calls[-1] == ("distill", 3, 3)
    ds = PairDataset(out)
    assert len(ds) == 3 and ds.sources.shape == ds.targets.shape == (3, 3, 32, 32)
    assert set(ds.prompts) == {"make it sepia"} and set(ds.concepts) == {"sepia"}
    assert [r.extra["seed"] for r in ds.records] == [5, 6, 7]
    assert not torch.equal(ds.sources, ds.targets)
    first = (out / "target" / "sepia-00001.png").read_bytes()
    # interrupt: lose pair 1, then resume
    (out / "meta" / "sepia-00001.json").unlink()
    rep2 = distill_pairs(pipe, "builtin:3", out, cfg)
    assert (rep2.written, rep2.skipped) == (1, 2)
    assert (out / "target" / "sepia-00001.png").read_bytes() == first  # same seed, same pair
    assert len(PairDataset(out)) == 3


def test_sources_from_a_folder_and_errors(tmp_path):
    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "src" / "a.png")
    items = source_images(tmp_path / "src", size=16)
    assert items[0][0] == "a" and items[0][1].shape == (16, 16, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        source_images(tmp_path / "empty", size=16)
    with pytest.raises(ConfigError, match="builtin:N"):
        source_images("builtin:x", size=16)
    with pytest.raises(ConfigError, match="prompt"):
        DistillDataConfig(concept="a", prompt="")
    with pytest.raises(ConfigError, match="size"):
        DistillDataConfig(concept="a", prompt="b", size=30)
