"""Benchmark mobilekit's host profiler: agreement with a plain timing loop, run-to-run spread, DiT efficiency.

For each built-in model (``dit-tiny``, ``gan-tiny``) and each host runtime (ONNX Runtime, LiteRT,
ExecuTorch+XNNPACK), the artifact is measured

* by ``mobilekit.profile`` ``--repeats`` times (each a fresh child process), giving the run-to-run
  CV of the p50, and
* by an independent plain loop in a fresh ``python -c`` process that imports only the runtime
  (no mobilekit), same inputs, same threads, same warm-up, ``--plain-iters`` timed runs; the
  agreement is mobilekit's median p50 over the plain loops' median p50.

The two kinds of runs are interleaved so a change in the shared machine's load hits both.
Finally the DiT's achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on the PyTorch
model, over the best runtime's p50) is compared with this host's measured fp32 matmul peak at the
same thread count.

Usage:
    nice -n 10 .venv/bin/python benchmarks/profile_bench.py [--repeats 5] [--max-seconds 3] [--threads 1]
Writes ``benchmarks/results/profile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAIN_LOOP = r"""
import json, sys, time
import numpy as np
path, npz, threads, warmup, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
with np.load(npz) as d:
    xs = [d[f"arr_{i}"] for i in range(len(d.files))]
if path.endswith(".onnx"):
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads
    s = ort.InferenceSession(path, sess_options=o, providers=["CPUExecutionProvider"])
    feed = {m.name: x for m, x in zip(s.get_inputs(), xs)}
    run = lambda: s.run(None, feed)
elif path.endswith(".tflite"):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=threads); it.allocate_tensors()
    ins = it.get_input_details()
    def run():
        for d, x in zip(ins, xs):
            it.set_tensor(d["index"], x.astype(d["dtype"]))
        it.invoke()
else:
    import torch
    from executorch.runtime import Runtime
    from executorch.extension.pybindings import portable_lib
    portable_lib._unsafe_reset_threadpool(threads)
    m = Runtime.get().load_program(path).load_method("forward")
    ts = [torch.from_numpy(x) for x in xs]
    run = lambda: m.execute(ts)
for _ in range(1 + warmup):
    run()
out, cpu = [], []
for _ in range(iters):
    c, t = time.process_time_ns(), time.perf_counter_ns(); run()
    out.append((time.perf_counter_ns() - t) / 1e6); cpu.append((time.process_time_ns() - c) / 1e6)
print(json.dumps([out, cpu]))
"""


def export_all(name: str, out: Path) -> tuple[dict[str, Path], list[np.ndarray], Any]:
    """The built-in model exported to .onnx, .tflite and .pte (XNNPACK), fp32, and its example inputs."""
    import torch

    from mobilekit.builtins import build_builtin

    b = build_builtin(name)
    model, inputs = b.model.eval(), tuple(b.example_inputs)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    p = out / f"{name}.onnx"
    torch.onnx.export(model, inputs, str(p), dynamo=True, external_data=False)
    paths["onnx"] = p
    import litert_torch

    p = out / f"{name}.tflite"
    litert_torch.convert(model, inputs).export(str(p))
    paths["tflite"] = p
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    prog = to_edge_transform_and_lower(torch.export.export(model, inputs),
                                       partitioner=[XnnpackPartitioner()]).to_executorch()
    p = out / f"{name}.pte"
    p.write_bytes(prog.buffer)
    paths["executorch"] = p
    return paths, [x.numpy() for x in inputs], (model, inputs)


def plain_p50(path: Path, inputs: list[np.ndarray], *, threads: int, warmup: int,
              iters: int) -> tuple[float, float]:
    """Median wall ms and median process-CPU ms of ``iters`` runs in a fresh process without mobilekit."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, *inputs)
        proc = subprocess.run([sys.executable, "-c", PLAIN_LOOP, str(path), str(npz), str(threads), str(warmup),
                               str(iters)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        wall, cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    return statistics.median(wall), statistics.median(cpu)


def matmul_peak_gflops(threads: int, sizes: tuple[int, ...] = (256, 512, 1024), seconds: float = 2.0) -> dict[str, float]:
    """Best fp32 GFLOP/s of n×n matmuls on this host at ``threads`` threads (PyTorch), per size and the max."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[str(n)] = 2 * n**3 / best / 1e9
    out["max"] = max(out.values())
    return out


def count_flops(model: Any, inputs: tuple) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--plain-iters", type=int, default=200)
    ap.add_argument("--models", default="dit-tiny,gan-tiny")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile.json")
    args = ap.parse_args()

    from mobilekit.profiling.host import host_device, profile

    command = "nice -n 10 .venv/bin/python benchmarks/profile_bench.py " + " ".join(sys.argv[1:])
    result: dict[str, Any] = {"command": command.strip(), "host": host_device(), "threads": args.threads,
                              "repeats": args.repeats, "max_seconds": args.max_seconds,
                              "loadavg_start": os.getloadavg(), "python": platform.python_version(),
                              "models": {}}
    work = Path(tempfile.mkdtemp(prefix="mk-profile-bench-"))
    for name in args.models.split(","):
        paths, inputs, (model, tinputs) = export_all(name, work / name)
        entry: dict[str, Any] = {"flops": count_flops(model, tinputs), "artifacts": {}}
        for fmt, path in paths.items():
            mk, plain, reports, mk_cpu, plain_cpu = [], [], [], [], []
            for i in range(args.repeats):
                if i < 3:
                    wall, cpu = plain_p50(path, inputs, threads=args.threads, warmup=args.warmup,
                                          iters=args.plain_iters)
                    plain.append(wall)
                    plain_cpu.append(cpu)
                r = profile(path, warmup=args.warmup, max_seconds=args.max_seconds, threads=args.threads,
                            inputs=inputs, per_op=(i == 0))
                mk.append(r.p50_ms)
                mk_cpu.append(r.cpu_p50_ms)
                reports.append(r)
            mk_p50, plain_p50_ = statistics.median(mk), statistics.median(plain)
            first = reports[0]
            entry["artifacts"][fmt] = {
                "path_size_bytes": path.stat().st_size,
                "mobilekit_p50_ms": mk, "plain_loop_p50_ms": plain,
                "agreement_ratio": mk_p50 / plain_p50_,
                "within_5pct": abs(mk_p50 / plain_p50_ - 1) <= 0.05,
                "p50_cv_over_repeats": statistics.stdev(mk) / statistics.mean(mk) if len(mk) > 1 else 0.0,
                "within_3pct_cv": (statistics.stdev(mk) / statistics.mean(mk) if len(mk) > 1 else 0.0) <= 0.03,
                "mobilekit_cpu_p50_ms": mk_cpu, "plain_loop_cpu_p50_ms": plain_cpu,
                "cpu_agreement_ratio": statistics.median(mk_cpu) / statistics.median(plain_cpu),
                "cpu_p50_cv_over_repeats": statistics.stdev(mk_cpu) / statistics.mean(mk_cpu) if len(mk) > 1 else 0.0,
                "samples_per_run": [len(r.samples_ms) for r in reports],
                "stop_reasons": [r.stop_reason for r in reports],
                "ci95_rel_half_width": [max(r.p50_ms - r.ci95_low_ms, r.ci95_high_ms - r.p50_ms) / r.p50_ms
                                        for r in reports],
                "cold_load_ms": first.cold_load_ms, "first_inference_ms": first.first_inference_ms,
                "peak_memory_mb": first.peak_memory_mb, "memory_delta_mb": first.memory_delta_mb,
                "per_op_source": first.per_op_source, "per_op_entries": len(first.per_op),
            }
            a = entry["artifacts"][fmt]
            print(name, fmt, f"wall ratio {a['agreement_ratio']:.3f} cv {a['p50_cv_over_repeats']:.3f} | "
                  f"cpu ratio {a['cpu_agreement_ratio']:.3f} cv {a['cpu_p50_cv_over_repeats']:.3f}", flush=True)
        result["models"][name] = entry
    peaks = matmul_peak_gflops(args.threads)
    peak = peaks["max"]
    dit = result["models"].get("dit-tiny")
    if dit:
        best_fmt = min(dit["artifacts"], key=lambda f: statistics.median(dit["artifacts"][f]["mobilekit_p50_ms"]))
        best_ms = statistics.median(dit["artifacts"][best_fmt]["mobilekit_p50_ms"])
        achieved = dit["flops"] / (best_ms / 1e3) / 1e9
        result["dit_efficiency"] = {
            "best_runtime": best_fmt, "p50_ms": best_ms, "gflop": dit["flops"] / 1e9,
            "achieved_gflops": achieved, "host_matmul_peak_gflops": peak, "fraction_of_peak": achieved / peak,
            "per_runtime_fraction": {f: dit["flops"] / (statistics.median(a["mobilekit_p50_ms"]) / 1e3) / 1e9 / peak
                                     for f, a in dit["artifacts"].items()}}
    result["host_matmul_gflops_by_size"] = peaks
    result["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from mobilekit._io import write_json_atomic

    write_json_atomic(args.out, result)
    print(json.dumps(result.get("dit_efficiency"), indent=2))


if __name__ == "__main__":
    main()
