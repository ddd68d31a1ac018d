"""Issue 2 benchmark: the export matrix of both built-in models.

Measures, through ``mobilekit.export`` with the real converters and runtimes:
- export seconds per format and precision (cold, no cache);
- the cache-hit seconds of the whole manifest (second export of the same matrix);
- artifact bytes per precision and int8 / fp32 ratios (target: int8 ≤ 30% of fp32);
- parity per precision (cosine, PSNR, max abs error);
- host latency (p50, mobilekit.profiling) of fp32 vs int8 ExecuTorch-XNNPACK and TFLite artifacts
  (target: int8 ≤ 0.7× fp32).
It also folds in mobilekit's overhead against the bare libraries, measured by
``export_backends_bench.py`` and ``export_backends_coreml_tflite_bench.py`` (target ≤ 10%).

Run:
    .venv/bin/python benchmarks/export_bench.py            # writes benchmarks/results/export.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import cpu_name as _cpu  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "export.json"
MATRIX = {  # format -> precisions built for both models
    "executorch": ["fp32", "int8-dynamic", "int8-static"],
    "tflite": ["fp32", "fp16", "int8-weight", "int8-dynamic", "int8-static"],
    "onnx": ["fp32", "int8-dynamic", "int8-static"],
    "coreml": ["fp32", "fp16", "int8-weight"],
}
TARGET = {"executorch": "pixel-8", "tflite": "pixel-8", "onnx": "pixel-8", "coreml": "iphone-15-pro"}


def main() -> int:
    import mobilekit
    from mobilekit._deps import toolchain_versions
    from mobilekit._io import write_json_atomic
    from mobilekit.spec import load_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["builtin:dit-tiny", "builtin:gan-tiny"])
    parser.add_argument("--max-seconds", type=float, default=5.0, help="timed seconds per latency measurement")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    cache_hits: dict[str, float] = {}
    latency: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mk-export-bench-") as tmp:
        cache = Path(tmp) / "cache"
        for spec_name in args.models:
            spec = load_spec(spec_name)
            out = Path(tmp) / spec.name
            for fmt, precisions in MATRIX.items():
                for prec in precisions:
                    start = time.perf_counter()
                    m = mobilekit.export(spec.model, spec.example_inputs, targets=[TARGET[fmt]], formats=[fmt],
                                         precision=prec, out_dir=out / f"{fmt}-{prec}", cache_dir=cache,
                                         calibration=spec.calibration, model_name=spec.name,
                                         input_names=spec.input_names, verify=True)
                    wall = time.perf_counter() - start
                    a = m.artifacts[0]
                    row = {"model": spec.name, "format": fmt, "precision": prec, "recipe": a.recipe.name,
                           "export_seconds": round(wall, 2), "stages": a.stages, "size_bytes": a.size_bytes,
                           "parity": a.parity.to_dict(), "path": str(m.path_of(a))}
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)  # noqa: T201
            # the whole matrix again: every artifact must come from the cache
            start = time.perf_counter()
            for fmt, precisions in MATRIX.items():
                m = mobilekit.export(spec.model, spec.example_inputs, targets=[TARGET[fmt]], formats=[fmt],
                                     precision=precisions, out_dir=out / f"hit-{fmt}", cache_dir=cache,
                                     calibration=spec.calibration, model_name=spec.name,
                                     input_names=spec.input_names)
                assert all(a.cached for a in m.artifacts), "cache miss on an unchanged export"
            cache_hits[spec.name] = round(time.perf_counter() - start, 3)
            for fmt in ("executorch", "tflite"):
                for prec in ("fp32", "int8-dynamic"):
                    path = next(r["path"] for r in rows if r["model"] == spec.name and r["format"] == fmt
                                and r["precision"] == prec)
                    report = mobilekit.profile(path, target="pixel-8", max_seconds=args.max_seconds)
                    latency.append({"model": spec.name, "format": fmt, "precision": prec,
                                    "p50_ms": round(report.p50_ms, 4), "ci95_ms": [report.ci95_low_ms,
                                                                                   report.ci95_high_ms],
                                    "cv": report.cv})
    size = {}
    for r in rows:
        base = next(x for x in rows if x["model"] == r["model"] and x["format"] == r["format"]
                    and x["precision"] == "fp32")
        size[f"{r['model']}/{r['format']}-{r['precision']}"] = round(r["size_bytes"] / base["size_bytes"], 3)
    speed = {}
    for r in latency:
        if r["precision"] != "fp32":
            base = next(x for x in latency if x["model"] == r["model"] and x["format"] == r["format"]
                        and x["precision"] == "fp32")
            speed[f"{r['model']}/{r['format']}-{r['precision']}"] = round(r["p50_ms"] / base["p50_ms"], 3)
    overhead = {}
    for name in ("export_backends_executorch_onnx.json", "export_backends_coreml_tflite.json"):
        p = ROOT / "benchmarks" / "results" / name
        if p.is_file():
            overhead[name] = json.loads(p.read_text()).get("summary", json.loads(p.read_text()))
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "host_cpu": _cpu(), "toolchain": toolchain_versions(),
        "targets": {"size_int8_over_fp32_max": 0.30, "latency_int8_over_fp32_max": 0.70, "cache_hit_seconds_max": 2.0,
                    "overhead_max": 0.10},
        "exports": rows, "cache_hit_seconds": cache_hits, "size_ratio_vs_fp32": size,
        "host_latency": latency, "latency_ratio_vs_fp32": speed, "overhead_vs_bare_library": overhead,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
