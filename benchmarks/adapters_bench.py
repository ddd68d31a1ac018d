"""Adapter packaging benchmark: bytes of N separate adapters vs N fused copies, and parity of both.

For the E²GAN ``small`` generator (≈0.18M parameters, 64×64) and N LoRA adapters (uniform rank
on every crucial layer, LoRA B randomised so each adapter changes the output), export with
``mobilekit.adapters.export_adapters`` under both policies for each format and record:

* bytes on disk: the separate total (shared base counted once) and each variant's own files,
  against the fused total (the base plus one fused copy per adapter);
* parity per variant against PyTorch (the unfused LoRA model), through the real runtime;
* fused vs separate: max |difference| between the two artifacts' outputs per adapter;
* ExecuTorch only: the alternative to program–data separation, one multi-method ``.pte``
  (a method per variant; XNNPACK's named data store keys weights by sha256, so identical base
  weights are stored once in the program).

Run:  nice -n 10 .venv/bin/python benchmarks/adapters_bench.py
      (options: --adapters N, --rank R, --formats executorch tflite onnx coreml, --config tiny|small)
Writes benchmarks/results/adapters.json (the command is recorded in it).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilekit._deps import toolchain_versions  # noqa: E402
from mobilekit._io import write_json_atomic  # noqa: E402
from mobilekit.adapters import export_adapters  # noqa: E402
from mobilekit.train.e2gan.lora import (LoRAConfig, attach_lora, lora_targets, make_adapter,  # noqa: E402
                                        save_adapter)
from mobilekit.train.e2gan.models import E2GANConfig, build_generator, sha256_of_state  # noqa: E402

log = logging.getLogger("adapters_bench")
TARGETS = {"executorch": ("pixel-8", "fp32"), "tflite": ("pixel-8", "fp32"), "onnx": ("pixel-8", "fp32"),
           "coreml": ("iphone-15-pro", "fp16")}


def _adapters(base: torch.nn.Module, n: int, rank: int, root: Path) -> dict[str, Path]:
    names = lora_targets(base)
    out = {}
    for i in range(n):
        cfg = LoRAConfig(ranks={m: rank for m in names})
        model = attach_lora(base, cfg)
        gen = torch.Generator().manual_seed(100 + i)
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        ad = make_adapter(model, cfg, concept=f"concept{i}", prompt=f"concept {i}",
                          base_sha256=sha256_of_state(base.state_dict()))
        out[f"concept{i}"] = save_adapter(ad, root / f"concept{i}")
    return out


def _run(manifest: Any, artifact: Any, x: tuple[torch.Tensor, ...]) -> np.ndarray | None:
    from mobilekit.runtime import run_artifact

    if artifact.format == "coreml":
        return None
    options: dict[str, Any] = {}
    ptd = [f for f in artifact.extra_files if f.endswith(".ptd")]
    if ptd:
        options["data_path"] = str(manifest.root / ptd[0])
    sig = [n.split(": ", 1)[1] for n in artifact.notes if n.startswith("signature: ")]
    if sig:
        options["signature"] = sig[0]
    return run_artifact(manifest.path_of(artifact), [t.numpy() for t in x], **options)[0]


def _multi_method_pte(base: torch.nn.Module, adapters: dict[str, Path], x: tuple[torch.Tensor, ...],
                      dest: Path) -> dict[str, Any]:
    """One .pte with a method per variant (the alternative to .ptd sharing); its bytes and parity."""
    from mobilekit.converters._torch_common import capture, prepared_copy
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from mobilekit.adapters import apply_lora, load_adapters

    ads = load_adapters(adapters, base)
    variants = {"base": base, **{n: apply_lora(base, a, fuse=False) for n, a in ads.items()}}
    t0 = time.perf_counter()
    programs = {n: capture(prepared_copy(m), x, backend="executorch-xnnpack-fp32") for n, m in variants.items()}
    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
    buf = edge.to_executorch(ExecutorchBackendConfig()).buffer
    dest.write_bytes(buf)
    seconds = time.perf_counter() - t0
    program = Runtime.get().load_program(dest)
    errs = {}
    for n, m in variants.items():
        with torch.no_grad():
            ref = m(*x).numpy()
        out = program.load_method(n).execute(list(x))[0].numpy()
        errs[n] = float(np.abs(out - ref).max())
    return {"bytes": len(buf), "export_seconds": round(seconds, 2), "max_abs_error": errs,
            "methods": sorted(variants)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--config", choices=("tiny", "small"), default="small")
    ap.add_argument("--formats", nargs="+", default=["executorch", "tflite", "onnx", "coreml"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adapters.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    config = E2GANConfig.small() if args.config == "small" else E2GANConfig.tiny()
    base = build_generator(config, seed=0).eval()
    x = base.example_inputs()
    results: dict[str, Any] = {
        "command": "nice -n 10 .venv/bin/python benchmarks/adapters_bench.py " + " ".join(sys.argv[1:]),
        "model": f"E2GANGenerator({args.config}), {sum(p.numel() for p in base.parameters())} parameters, "
                 f"{config.image_size}x{config.image_size}",
        "adapters": args.adapters, "rank": args.rank, "toolchain": toolchain_versions(),
        "host": "shared 2-core x86-64 Linux, 1 torch thread, nice 10", "formats": {}}
    with tempfile.TemporaryDirectory(prefix="adapters-bench-") as tmp:
        root = Path(tmp)
        dirs = _adapters(base, args.adapters, args.rank, root / "adapters")
        results["adapter_file_bytes"] = {n: (d / "adapter.safetensors").stat().st_size for n, d in dirs.items()}
        for fmt in args.formats:
            target, precision = TARGETS[fmt]
            rec: dict[str, Any] = {"target": target, "precision": precision}
            manifests = {}
            for policy in ("separate", "fuse"):
                t0 = time.perf_counter()
                log.info("%s %s", fmt, policy)
                m = export_adapters(base, dirs, x, targets=[target], out_dir=root / f"{fmt}-{policy}",
                                    formats=[fmt], precision=precision, policy=policy,
                                    cache_dir=root / "cache", measure_fused=False)
                side = json.loads((root / f"{fmt}-{policy}" / "adapters.json").read_text())["recipes"][0]
                files = {f for a in m.artifacts for f in (a.path, *a.extra_files)}
                from mobilekit.artifact import size_of

                total = sum(size_of(m.root / f) for f in files)
                rec[policy] = {"seconds": round(time.perf_counter() - t0, 1), "total_bytes": total,
                               "sharing": side.get("sharing"), "fallback": side.get("fallback"),
                               "shared_bytes": side.get("shared_bytes"),
                               "variants": {k: {"own_bytes": v["own_bytes"], "files": v["files"],
                                                "parity_status": v["parity"]["status"],
                                                "max_abs_error": v["parity"].get("max_abs_error"),
                                                "psnr_db": v["parity"].get("psnr_db")}
                                            for k, v in side["variants"].items()}}
                manifests[policy] = m
            sep, fus = rec["separate"], rec["fuse"]
            rec["separate_over_fused"] = round(sep["total_bytes"] / fus["total_bytes"], 4)
            if sep["fallback"] is None:
                rec["bytes_per_adapter_separate"] = round(
                    (sep["total_bytes"] - fus["variants"]["base"]["own_bytes"]) / args.adapters)
            rec["bytes_per_adapter_fused"] = round(
                sum(v["own_bytes"] for k, v in fus["variants"].items() if k != "base") / args.adapters)
            diffs = {}
            for a in manifests["separate"].artifacts:
                b = next(b for b in manifests["fuse"].artifacts if b.adapter == a.adapter)
                ya, yb = _run(manifests["separate"], a, x), _run(manifests["fuse"], b, x)
                if ya is not None and yb is not None:
                    diffs[a.adapter or "base"] = float(np.abs(ya - yb).max())
            rec["fused_vs_separate_max_abs_diff"] = diffs or "not run: needs macOS (Core ML)"
            if fmt == "executorch":
                log.info("executorch multi-method")
                rec["multi_method_alternative"] = _multi_method_pte(base, dirs, x, root / "multi.pte")
            results["formats"][fmt] = rec
            write_json_atomic(args.out, results)
            shutil.rmtree(root / f"{fmt}-separate", ignore_errors=True)
            shutil.rmtree(root / f"{fmt}-fuse", ignore_errors=True)
    write_json_atomic(args.out, results)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
