"""Training devices: explicit ``device="cpu"``, bf16 autocast, gradient accumulation, device-agnostic checkpoints.

The CUDA test runs only where CUDA is available; on CPU the same code paths run with
``device="cpu"`` (autocast on the CPU for bf16).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobilekit.cli.main import main
from mobilekit.train import DepthPruneConfig, DistillConfig, build_pruned, distill, prune_depth
from mobilekit.train.tinyfusion.blocks import DiTStack
from tests.train._tf_models import StopTraining, stop_at, tiny_dit, tiny_dit_sigma


def _cfg(**kw: object) -> DepthPruneConfig:
    base: dict[str, object] = {"method": "learnable", "pattern": "1:2", "steps": 4, "batch_size": 4, "log_every": 1, "calib_samples": 8,
                               "lora_rank": 2}
    base.update(kw)
    return DepthPruneConfig(**base)  # type: ignore[arg-type]


def _all_cpu(obj: object) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.device.type == "cpu"
    if isinstance(obj, dict):
        return all(_all_cpu(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_cpu(v) for v in obj)
    return True


@pytest.mark.xdist_group("tinyfusion-search")
def test_search_on_cpu_with_bf16_and_accumulation_resumes_from_a_cpu_loadable_checkpoint(tmp_path: Path) -> None:
    model = tiny_dit(4)
    cfg = _cfg(precision="bf16", grad_accum=2, checkpoint_every=2)
    full = prune_depth(model, "digits", cfg, out_dir=tmp_path / "a", device="cpu")
    assert full.device == "cpu" and next(full.model.parameters()).device.type == "cpu"
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in full.log)
    plain = prune_depth(model, "digits", _cfg(), device="cpu")
    assert full.log[0]["loss"] != plain.log[0]["loss"]  # two micro-batches in bf16, not one in fp32
    with pytest.raises(StopTraining):
        prune_depth(model, "digits", cfg, out_dir=tmp_path / "b", on_progress=stop_at(2), device="cpu")
    ck = torch.load(tmp_path / "b" / "checkpoints" / "step-00000002.pt", map_location="cpu", weights_only=True)
    assert _all_cpu(ck) and ck["objective"] == {"search_loss": "eps", "precision": "bf16", "grad_accum": 2}
    resumed = prune_depth(model, "digits", cfg, out_dir=tmp_path / "b", device="cpu")
    assert resumed.log == full.log and resumed.kept == full.kept
    rec = json.loads((tmp_path / "a" / "prune.json").read_text())
    assert rec["device"] == "cpu" and rec["config"]["data"]["precision"] == "bf16"


@pytest.mark.xdist_group("tinyfusion-distill")
def test_distill_on_cpu_with_accumulation_and_checkpoint_loads_on_cpu(tmp_path: Path) -> None:
    teacher = tiny_dit(4)
    student = build_pruned(teacher, [0, 3], DiTStack())
    cfg = DistillConfig(steps=3, batch_size=4, checkpoint_every=1, log_every=1, grad_accum=2, precision="bf16")
    res = distill(student, teacher, "digits", cfg, out_dir=tmp_path, device="cpu", kept=[0, 3])
    assert res.device == "cpu" and all(torch.isfinite(torch.tensor(e["loss"])) for e in res.log)
    assert next(teacher.parameters()).device.type == "cpu"  # the caller's teacher is back where it was
    ck = torch.load(sorted((tmp_path / "checkpoints").iterdir())[-1], map_location="cpu", weights_only=True)
    assert _all_cpu(ck) and ck["step"] == 3 and ck["objective"]["grad_accum"] == 2


def test_cli_takes_device_precision_and_objectives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["prune", "builtin:dit-tiny", "--method", "indices", "--kept", "0,2,4", "--device", "cpu",
          "--precision", "bf16", "--grad-accum", "2", "--search-loss", "eps", "--out", str(tmp_path / "p"), "--json"])
    rec = json.loads(capsys.readouterr().out)
    assert rec["device"] == "cpu" and rec["config"]["data"]["precision"] == "bf16"
    assert rec["config"]["data"]["grad_accum"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_search_and_distill_in_bf16_write_checkpoints_that_resume_on_cpu(tmp_path: Path) -> None:
    model = tiny_dit_sigma(4)
    cfg = _cfg(precision="bf16", search_loss="eps+vlb", checkpoint_every=2)
    res = prune_depth(model, "digits", cfg, out_dir=tmp_path / "p", device="cuda")
    assert res.device.startswith("cuda") and next(res.model.parameters()).is_cuda
    ck = torch.load(tmp_path / "p" / "checkpoints" / "step-00000004.pt", map_location="cpu", weights_only=True)
    assert _all_cpu(ck)
    # a CUDA run's checkpoint resumes on the CPU (here: nothing left to do, same decision)
    again = prune_depth(model, "digits", cfg, out_dir=tmp_path / "p", device="cpu")
    assert again.kept == res.kept
    dcfg = DistillConfig(steps=2, batch_size=4, checkpoint_every=1, log_every=1, precision="bf16",
                         gt_loss="eps+vlb", kd_variance=True)
    d = distill(res.model.cpu(), model, "digits", dcfg, out_dir=tmp_path / "d", device="cuda", kept=res.kept,
                groups=res.groups)
    assert d.device.startswith("cuda") and all(torch.isfinite(torch.tensor(e["loss"])) for e in d.log)
    assert next(model.parameters()).device.type == "cpu"
