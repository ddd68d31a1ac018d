"""Base training and LoRA adaptation run under torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.xdist_group("e2gan_distributed")]

SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from mobilekit.train.e2gan.loop import LoopConfig
    from mobilekit.train.e2gan.models import E2GANConfig, PatchDiscriminatorConfig
    from mobilekit.train.e2gan.train import AdaptConfig, BaseTrainConfig, train_base
    from mobilekit.train.e2gan.adapt import adapt
    out = Path(sys.argv[1])
    cfg = BaseTrainConfig(generator=E2GANConfig.tiny(), discriminator=PatchDiscriminatorConfig(base_width=8, num_layers=2),
                          concepts=("invert", "blur"), pairs_per_concept=4, image_size=16,
                          loop=LoopConfig(steps=3, batch_size=2, checkpoint_every=3))
    train_base(cfg, out / "base")
    from mobilekit.train.distributed import barrier, init_distributed
    barrier(init_distributed("cpu"))
    adapt(out / "base", AdaptConfig(concept="sepia", pairs=4, image_size=16, budget=400,
                                    loop=LoopConfig(steps=2, batch_size=2, checkpoint_every=0)), out / "sepia")
""")


def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the Python interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "o" / "base" / "run.json").read_text())
    assert run["world_size"] == 2
    assert (tmp_path / "o" / "sepia" / "adapter" / "adapter.safetensors").is_file()
    assert json.loads((tmp_path / "o" / "sepia" / "run.json").read_text())["world_size"] == 2
