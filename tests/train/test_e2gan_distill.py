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


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from tests.fixtures.e2gan import tiny_instruct_pix2pix

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_instruct_pix2pix(tmp_path_factory.mktemp("pipe"))
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
    # every run's throughput is kept in the folder's summary, the resumed one too
    runs = json.loads((out / "distill.json").read_text())["runs"]
    assert [r["written"] for r in runs] == [3, 1] and rep.seconds > 0
    assert runs[0]["seconds_per_pair"] == pytest.approx(rep.seconds / 3, rel=1e-2, abs=1e-3)


@pytest.mark.slow
def test_cli_distill_data_feeds_adapt(pipe, tmp_path, capsys):
    """A saved pipeline folder -> `gan distill-data` -> `gan adapt --data` on those pairs."""
    from mobilekit.cli.main import main

    pipe.save_pretrained(tmp_path / "ip2p")
    pairs = tmp_path / "pairs"
    main(["gan", "distill-data", "--model", str(tmp_path / "ip2p"), "--out", str(pairs), "--concept", "glow",
          "--prompt", "make it glow", "--sources", "builtin:3", "--size", "16", "--steps", "2", "--format", "json"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["written"] == 3 and rep["pairs_per_second"] > 0 and rep["seconds_per_pair"] > 0
    summary = json.loads((pairs / "distill.json").read_text())
    assert summary["model"] == str(tmp_path / "ip2p") and summary["runs"][-1]["written"] == 3
    main(["gan", "train-base", "--out", str(tmp_path / "b"), "--size", "tiny", "--concepts", "invert,blur",
          "--image-size", "16", "--pairs-per-concept", "2", "--steps", "2", "--batch-size", "2",
          "--no-adversarial", "--format", "json"])
    main(["gan", "adapt", "--concept", "glow", "--base", str(tmp_path / "b"), "--data", str(pairs),
          "--out", str(tmp_path / "a"), "--image-size", "16", "--steps", "2", "--batch-size", "2",
          "--budget", "400", "--no-adversarial", "--format", "json"])
    assert (tmp_path / "a" / "adapter" / "adapter.safetensors").is_file()
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["data"] == {"kind": "pairs", "path": str(pairs), "distilled_from": str(tmp_path / "ip2p")}
    assert run["num_pairs"] == 3 and run["eval"]["split"] == "training pairs"


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
