"""Base training and adaptation end to end on tiny settings; resume; CLI; concept set and encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train.e2gan import concepts as cc
from mobilekit.train.e2gan.adapt import adapt, load_adapted
from mobilekit.train.e2gan.loop import LoopConfig
from mobilekit.train.e2gan.metrics import psnr
from mobilekit.train.e2gan.models import E2GANConfig, PatchDiscriminatorConfig, sha256_of_state
from mobilekit.train.e2gan.train import AdaptConfig, BaseTrainConfig, load_base, train_base

pytestmark = pytest.mark.xdist_group("e2gan_train")

TINY_D = PatchDiscriminatorConfig(base_width=8, num_layers=2)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("base")
    cfg = BaseTrainConfig(generator=E2GANConfig.tiny(), discriminator=TINY_D, concepts=("invert", "blur"),
                          pairs_per_concept=6, image_size=32,
                          loop=LoopConfig(steps=4, batch_size=4, checkpoint_every=2))
    train_base(cfg, out)
    yield out
    torch.set_num_threads(n)


def test_base_outputs_and_resume(base_dir):
    for f in ("generator/model.safetensors", "discriminator/model.safetensors", "concepts.json", "grid.png",
              "run.json"):
        assert (base_dir / f).is_file(), f
    run = json.loads((base_dir / "run.json").read_text())
    assert run["concepts"] == ["invert", "blur"] and run["seed"] == 0 and "torch" in json.dumps(run["toolchain"])
    base = load_base(base_dir)
    assert base.embeddings.concepts == ["invert", "blur"] and base.learned
    # resume: a longer run in the same directory continues from the last checkpoint
    cfg = BaseTrainConfig(generator=E2GANConfig.tiny(), discriminator=TINY_D, concepts=("invert", "blur"),
                          pairs_per_concept=6, image_size=32, loop=LoopConfig(steps=6, batch_size=4, checkpoint_every=2))
    train_base(cfg, base_dir)
    assert json.loads((base_dir / "run.json").read_text())["resumed_from"] == 4


def test_adapt_lora_searched_ranks_subset_and_base_unchanged(base_dir, tmp_path):
    base = load_base(base_dir)
    before = sha256_of_state(base.generator.state_dict())
    cfg = AdaptConfig(concept="sepia", pairs=12, image_size=32, subset=6, budget=600, max_rank=4,
                      loop=LoopConfig(steps=3, batch_size=4, lr=1e-3, checkpoint_every=0))
    res = adapt(base, cfg, tmp_path / "sepia")
    assert sha256_of_state(base.generator.state_dict()) == before
    assert res.subset is not None and len(set(res.subset)) == 6
    assert res.ranks and sum(res.ranks.values()) >= 1
    from peft.tuners.lora import LoraLayer

    placed = {n: int(m.r["default"]) for n, m in res.generator.named_modules() if isinstance(m, LoraLayer)}
    assert placed == res.ranks and not any(n.startswith("res") for n in placed)
    assert res.stored_parameters < 0.2 * base.generator.num_parameters()
    meta = json.loads((tmp_path / "sepia" / "adapter" / "adapter.json").read_text())
    assert meta["lora"]["ranks"] == res.ranks and meta["base_sha256"] == before and meta["concept"] == "sepia"
    fused, emb = load_adapted(base_dir, tmp_path / "sepia" / "adapter")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    e = emb.expand(2, -1, -1)
    with torch.no_grad():
        assert torch.allclose(fused(x, e), res.generator(x, e), atol=1e-5)
    # run.json says how the adapted model does on photos training never saw, beside the identity map
    ev = json.loads((tmp_path / "sepia" / "run.json").read_text())["eval"]
    assert ev["split"] == "held-out photos" and ev["pairs"] == 16
    held = cc.builtin_pairs("sepia", 16, 32, seed=10_007, held_out_photos=True)
    assert ev["identity_psnr_db"] == pytest.approx(psnr(held.sources, held.targets), abs=1e-3)
    assert ev["gain_over_identity_db"] == pytest.approx(ev["psnr_db"] - ev["identity_psnr_db"], abs=2e-3)


def test_adapt_gives_one_adapter_per_seed_whatever_ran_before(base_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = AdaptConfig(concept="sepia", pairs=8, image_size=32, budget=600, max_rank=4,
                      loop=LoopConfig(steps=2, batch_size=4, lr=1e-3, checkpoint_every=0))
    weights = []
    for i, draws in enumerate((0, 1000)):
        torch.rand(draws)  # another run consumed the global generator before this one
        adapt(load_base(base_dir), cfg, tmp_path / f"run{i}")
        weights.append(load_file(str(tmp_path / f"run{i}" / "adapter" / "adapter.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("placement", ["resnet", "both"])
def test_adapt_named_lora_placement_wraps_exactly_its_layers(base_dir, tmp_path, placement):
    from peft.tuners.lora import LoraLayer

    base = load_base(base_dir)
    # uniform ranks give every target rank ≥ 1, so the wrapped set is the whole placement
    cfg = AdaptConfig(concept="sepia", pairs=4, image_size=32, ranks="uniform", lora_layers=placement,
                      loop=LoopConfig(steps=1, batch_size=2, adversarial=False, checkpoint_every=0))
    res = adapt(base, cfg, tmp_path / placement)
    placed = {n for n, m in res.generator.named_modules() if isinstance(m, LoraLayer)}
    convs = {f"res{i}.conv{j}" for i in (1, 2, 3) for j in (1, 2)}
    crucial = {n for n, m in base.generator.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
               and not n.startswith("res")}
    assert placed == (convs if placement == "resnet" else convs | crucial)
    assert set(res.ranks) == placed
    run = json.loads((tmp_path / placement / "run.json").read_text())
    assert run["config"]["lora_layers"] == placement


def test_lora_placement_names_are_checked():
    assert AdaptConfig(concept="sepia").lora_patterns is None  # crucial: the generator's own declaration
    with pytest.raises(ConfigError, match="unknown LoRA placement 'attention'") as exc:
        AdaptConfig(concept="sepia", lora_layers="attention")
    assert "crucial" in str(exc.value) and "resnet" in str(exc.value) and "both" in str(exc.value)
    with pytest.raises(ConfigError, match="both target_patterns and lora_layers"):
        AdaptConfig(concept="sepia", lora_layers="resnet", target_patterns=(r"^head\.",))


def test_cli_adapt_refuses_an_unknown_lora_placement(base_dir, tmp_path, capsys):
    from mobilekit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["gan", "adapt", "--concept", "sepia", "--base", str(base_dir), "--out", str(tmp_path / "o"),
              "--steps", "1", "--lora-layers", "everywhere"])
    assert exc.value.code == 2
    assert "everywhere" in capsys.readouterr().err and not (tmp_path / "o" / "run.json").exists()


@pytest.mark.parametrize("method", ["full", "scratch"])
def test_adapt_full_and_scratch_store_a_generator(base_dir, tmp_path, method):
    cfg = AdaptConfig(concept="sepia", method=method, pairs=4, image_size=32,
                      loop=LoopConfig(steps=2, batch_size=2, adversarial=False, checkpoint_every=0))
    res = adapt(base_dir, cfg, tmp_path / method)
    assert (tmp_path / method / "generator" / "model.safetensors").is_file()
    assert res.adapter is None and res.stored_parameters > res.generator.num_parameters() - 1


def test_adapt_errors(base_dir, tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        adapt(base_dir, AdaptConfig(concept="hulk"), tmp_path / "x")
    with pytest.raises(ConfigError, match="method"):
        AdaptConfig(concept="sepia", method="qlora")
    with pytest.raises(ConfigError, match="subset_method"):
        AdaptConfig(concept="sepia", subset=4, subset_method="median")
    with pytest.raises(ConfigError, match="ranks"):
        AdaptConfig(concept="sepia", ranks="greedy")
    with pytest.raises(ConfigError, match="concepts.json"):
        load_base(tmp_path)


def test_cli_adapt_with_a_bad_data_folder(base_dir, tmp_path, capsys):
    from mobilekit.cli.main import main

    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["gan", "adapt", "--concept", "sepia", "--base", str(base_dir), "--data", str(tmp_path / "photos"),
              "--out", str(tmp_path / "o"), "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "photos" in err


def test_cli_train_base_and_adapt(tmp_path, capsys):
    from mobilekit.cli.main import main

    torch.set_num_threads(1)
    main(["gan", "train-base", "--out", str(tmp_path / "b"), "--size", "tiny", "--concepts", "invert,blur",
          "--image-size", "16", "--pairs-per-concept", "4", "--steps", "2", "--batch-size", "2",
          "--no-adversarial", "--format", "json"])
    assert json.loads(capsys.readouterr().out)["concepts"] == "invert, blur"
    main(["gan", "adapt", "--concept", "sepia", "--base", str(tmp_path / "b"), "--out", str(tmp_path / "a"),
          "--image-size", "16", "--pairs", "4", "--steps", "2", "--batch-size", "2", "--budget", "400",
          "--format", "json"])
    rec = json.loads(capsys.readouterr().out)
    assert rec["method"] == "lora" and (tmp_path / "a" / "adapter" / "adapter.safetensors").is_file()
    assert (tmp_path / "a" / "grid.png").is_file()


def test_builtin_concepts_are_deterministic_and_in_range():
    names = cc.builtin_concepts()
    assert len(names) >= 12 and set(cc.DEFAULT_HELD_OUT) <= set(names)
    a = cc.builtin_pairs("pencil_sketch", 3, 24, seed=1)
    b = cc.builtin_pairs("pencil_sketch", 3, 24, seed=1)
    assert torch.equal(a.targets, b.targets) and a.sources.shape == (3, 3, 24, 24)
    photo = cc.load_photo("astronaut")[180:244, 180:244]
    for c in names:
        p = cc.builtin_pairs(c, 2, 16, seed=0)
        assert p.targets.min() >= -1 and p.targets.max() <= 1, c
        edited = cc.apply_edit(c, photo)
        assert edited.shape == photo.shape and np.abs(edited - photo).mean() > 0.01, c
    with pytest.raises(ConfigError, match="unknown built-in concept"):
        cc.builtin_pairs("hulk", 1, 16, seed=0)


def test_choose_concepts_by_clustering():
    pool = ["invert", "solarize", "blur", "grayscale", "warm", "cool"]
    got = cc.choose_concepts(pool, 3, seed=0)
    assert len(got) == 3 and set(got) <= set(pool)
    with pytest.raises(ConfigError, match="cannot choose"):
        cc.choose_concepts(pool, 7)


def test_clip_text_encoder_from_a_tiny_config():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=8))
    enc = cc.CLIPTextEncoder(model, max_length=8)
    ids = torch.randint(0, 50, (2, 8))
    emb = enc.encode_ids(ids)
    assert emb.shape == (2, 8, 16) and enc.hidden_size == 16
    with pytest.raises(ConfigError, match="encode_ids"):
        enc.encode(["make it sepia"])
    from mobilekit.train.e2gan.train import _embedding_table

    with pytest.raises(ConfigError, match="text_dim"):
        class _Enc:
            hidden_size = 32

            def encode(self, prompts):
                return torch.zeros(len(prompts), 4, 32)

        _embedding_table(["a"], {"a": "p"}, E2GANConfig.tiny(), _Enc(), 0)


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """Two tiny CLIP text encoders saved as folders: the base's, and a different one of the same width."""
    from tests.fixtures.e2gan import save_tiny_clip

    root = tmp_path_factory.mktemp("clip")
    return save_tiny_clip(root / "clip_a", seed=0), save_tiny_clip(root / "clip_b", seed=1)


def test_clip_text_encoder_from_a_saved_folder(clip_dirs, tmp_path):
    enc = cc.CLIPTextEncoder(clip_dirs[0])
    emb = enc.encode(["make it glow", "make it dark"])
    assert emb.shape == (2, 16, 16) and enc.name == "clip_a"
    assert not torch.allclose(emb[0], emb[1])
    assert enc.identity()["sha256"] != cc.CLIPTextEncoder(clip_dirs[1]).identity()["sha256"]
    with pytest.raises(ConfigError, match="does not exist") as exc:
        cc.CLIPTextEncoder(tmp_path / "nowhere")
    assert "nowhere" in str(exc.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load") as exc:
        cc.CLIPTextEncoder(tmp_path / "broken")
    assert "broken" in str(exc.value)


def test_cli_text_encoder_base_adapt_and_mismatches(clip_dirs, base_dir, tmp_path, capsys):
    """train-base and adapt --text-encoder DIR; the adapter follows the prompt; mismatched encoders are refused."""
    from mobilekit.cli.main import main

    torch.set_num_threads(1)
    clip_a, clip_b = (str(d) for d in clip_dirs)
    main(["gan", "train-base", "--out", str(tmp_path / "b"), "--size", "tiny", "--concepts", "invert,blur",
          "--image-size", "16", "--pairs-per-concept", "2", "--steps", "2", "--batch-size", "2",
          "--no-adversarial", "--text-encoder", clip_a, "--format", "json"])
    assert json.loads(capsys.readouterr().out)["text_encoder"] == "clip_a"
    base = load_base(tmp_path / "b")
    assert not base.learned and base.text_encoder["name"] == "clip_a" and base.text_encoder["hidden_size"] == 16
    assert json.loads((tmp_path / "b" / "run.json").read_text())["text_encoder"] == base.text_encoder
    main(["gan", "adapt", "--concept", "sepia", "--base", str(tmp_path / "b"), "--out", str(tmp_path / "a"),
          "--image-size", "16", "--pairs", "2", "--steps", "2", "--batch-size", "2", "--budget", "400",
          "--no-adversarial", "--text-encoder", clip_a, "--format", "json"])
    capsys.readouterr()
    enc = cc.CLIPTextEncoder(clip_a)
    gen, emb = load_adapted(tmp_path / "b", tmp_path / "a" / "adapter", text_encoder=enc)
    assert torch.allclose(emb, enc.encode([cc.concept_prompt("sepia")])[0])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        outs = [gen(x, enc.encode([p])) for p in ("make it a sepia-toned old photograph", "invert the colours")]
    assert (outs[0] - outs[1]).abs().max() > 1e-4  # the prompt steers the output
    cfg = AdaptConfig(concept="sepia", pairs=2, image_size=16, loop=LoopConfig(steps=1, batch_size=2))
    with pytest.raises(ConfigError, match="trained on text-encoder embeddings"):
        adapt(tmp_path / "b", cfg, tmp_path / "x1")
    with pytest.raises(ConfigError, match="differs from the base's 'clip_a'"):
        adapt(tmp_path / "b", cfg, tmp_path / "x2", text_encoder=cc.CLIPTextEncoder(clip_b))
    with pytest.raises(ConfigError, match="learned concept embeddings"):
        adapt(base_dir, cfg, tmp_path / "x3", text_encoder=enc)
