"""Issue 12 benchmark: does ``mobilekit.profile`` on this host agree with an independent timing loop?

For each artifact (the built-in DiT and GAN in ONNX, TFLite and ExecuTorch-XNNPACK, fp32), each
round runs, in an order that alternates between rounds:

* ``mobilekit.profile(path, threads=T, per_op=False)``: its own child process, its stopping rule;
* an independent loop in a fresh ``python -c`` process that shares no mobilekit code: the
  runtime's own Python API (``onnxruntime.InferenceSession``, ``ai_edge_litert`` ``Interpreter``,
  ``executorch.runtime``), the same thread count, 5 warm-up runs, then the median of N timed
  ``perf_counter`` runs.

Interleaving fresh processes makes both see the same machine drift. Reported per artifact: the
median over rounds of each p50, their ratio, and each method's spread across rounds (max/min).
The goal is agreement within ±5%.

Run:
    .venv/bin/python benchmarks/host_agreement_bench.py                 # 5 rounds, 1 thread
    .venv/bin/python benchmarks/host_agreement_bench.py --rounds 3 --threads 2
Writes ``benchmarks/results/host_agreement.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

# The independent loop: only the runtime's own API, inputs from a .npz, median of N perf_counter runs.
LOOP = r"""
import json, statistics, sys, time
import numpy as np
path, feed, threads, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with np.load(feed) as d:
    xs = [d[f"arr_{i}"] for i in range(len(d.files))]
if path.endswith(".onnx"):
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(s.get_inputs(), xs)}
    run = lambda: s.run(None, feeds)
elif path.endswith(".tflite"):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=threads); it.allocate_tensors()
    for det, x in zip(it.get_input_details(), xs):
        it.set_tensor(det["index"], x.astype(det["dtype"]))
    run = it.invoke
else:
    import torch
    from executorch.runtime import Runtime
    from executorch.extension.pybindings import portable_lib
    portable_lib._unsafe_reset_threadpool(threads)
    m = Runtime.get().load_program(path).load_method("forward")
    ts = [torch.from_numpy(x) for x in xs]
    run = lambda: m.execute(ts)
for _ in range(5):
    run()
t = []
for _ in range(n):
    t0 = time.perf_counter(); run(); t.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"p50_ms": statistics.median(t), "samples": n}))
"""


def independent_p50(path: Path, feed: Path, threads: int, n: int) -> float:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", LOOP, str(path), str(feed), str(threads), str(n)],
                          capture_output=True, text=True, env=env, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["p50_ms"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loop-runs", type=int, default=200, help="timed runs of the independent loop")
    args = ap.parse_args()

    import numpy as np

    import mobilekit
    from mobilekit.builtins import build_builtin
    from mobilekit.profiling.host import inputs_from_specs

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mk-agree-") as tmp:
        work = Path(tmp)
        arts = []
        for name in ("dit-tiny", "gan-tiny"):
            b = build_builtin(name)
            m = mobilekit.export(b.model, b.example_inputs, targets=["pixel-8"],
                                 formats=["onnx", "tflite", "executorch"], precision="fp32", out_dir=work / name,
                                 cache_dir=work / "cache", model_name=name, input_names=b.input_names)
            for a in m.artifacts:
                arts.append((f"{name} {a.recipe.name}", work / name / a.path, a.inputs))
        for label, path, specs in arts:
            # the same inputs for both, built from the artifact's input specs (as mobilekit.profile does)
            # and saved once: no native runtime is loaded in this parent process
            feed = path.with_suffix(".inputs.npz")
            xs = inputs_from_specs(specs)
            np.savez(feed, *xs)
            prof, loop = [], []
            for r in range(args.rounds):
                order = ("profile", "loop") if r % 2 == 0 else ("loop", "profile")
                for what in order:
                    if what == "profile":
                        rep = mobilekit.profile(path, threads=args.threads, per_op=False, max_seconds=5.0,
                                                inputs=xs)
                        prof.append(rep.p50_ms)
                    else:
                        loop.append(independent_p50(path, feed, args.threads, args.loop_runs))
            p, q = statistics.median(prof), statistics.median(loop)
            rows.append({"artifact": label, "profile_p50_ms": prof, "loop_p50_ms": loop,
                         "profile_median_ms": p, "loop_median_ms": q, "ratio": p / q,
                         "within_5pct": abs(p / q - 1) <= 0.05,
                         "profile_spread": max(prof) / min(prof), "loop_spread": max(loop) / min(loop)})
            print(f"{label:45s} profile {p:8.3f} ms  loop {q:8.3f} ms  ratio {p / q:.3f}", flush=True)
    summary = {"within_5pct": sum(r["within_5pct"] for r in rows), "artifacts": len(rows),
               "median_abs_deviation_pct": 100 * statistics.median(abs(r["ratio"] - 1) for r in rows)}
    out = write_result("host_agreement.json", {"rounds": args.rounds, "threads": args.threads,
                                               "loop_runs": args.loop_runs, "loadavg_before": load_before,
                                               "loadavg_after": os.getloadavg(), "summary": summary, "rows": rows})
    res = json.loads(out.read_text())
    lines = ["# Host measurement vs an independent timing loop", "",
             f"Command: `{res['command']}`", "",
             f"{args.rounds} interleaved rounds of fresh processes, {args.threads} thread(s); load average "
             f"{load_before[0]:.2f} before, {res['loadavg_after'][0]:.2f} after (other jobs were running on this "
             "2-core machine when the load is above ~1).", "",
             f"**{summary['within_5pct']} of {len(rows)} artifacts agree within ±5%**; median |ratio − 1| "
             f"{summary['median_abs_deviation_pct']:.1f}%.", "",
             "| artifact | mobilekit.profile p50 (ms, median of rounds) | independent loop p50 (ms) | ratio "
             "| profile spread (max/min) | loop spread |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['profile_median_ms']:.3f} | {r['loop_median_ms']:.3f} | "
                     f"{r['ratio']:.3f}{'' if r['within_5pct'] else ' ✗'} | {r['profile_spread']:.2f} | "
                     f"{r['loop_spread']:.2f} |")
    (RESULTS / "host_agreement.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
