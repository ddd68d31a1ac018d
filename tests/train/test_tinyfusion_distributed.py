"""Two CPU processes (torchrun, gloo) search together and agree on the decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from mobilekit.train import DepthPruneConfig, prune_depth
from mobilekit.train.distributed import init_distributed, cleanup
from tests.train._tf_models import tiny_dit

out = Path(sys.argv[1])
ctx = init_distributed("cpu")
cfg = DepthPruneConfig(method="learnable", pattern="1:2", steps=4, batch_size=4, log_every=1, calib_samples=8, lora_rank=2)
res = prune_depth(tiny_dit(4), "digits", cfg, out_dir=out / "run", device="cpu")
(out / f"rank{ctx.rank}.json").write_text(json.dumps({"world": ctx.world_size, "kept": res.kept,
    "confidences": res.confidences, "probabilities": [e["probabilities"] for e in res.log]}))
cleanup(ctx)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_agree_on_the_decision(tmp_path: Path) -> None:
    script = tmp_path / "run_search.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["kept"] == r1["kept"] and len(r0["kept"]) == 2
    assert r0["probabilities"] == r1["probabilities"]  # gates stayed in sync step by step
    assert r0["confidences"] == r1["confidences"]
    assert (tmp_path / "run" / "prune.json").is_file()  # rank 0 wrote the outputs
