"""Export seconds of mobilekit's Core ML and TFLite converters vs calling the libraries bare.

mobilekit's overhead (deep copy, a reference forward pass, int32 wrapping, input/output checks,
atomic writes) should stay within 10 % of the bare library calls on the same model. Runs are
interleaved (mobilekit, bare, mobilekit, bare, ...) after one warm-up of each, and the median and
minimum of the repeats are reported; the machine may be shared, so the minimum is the steadier figure.

Run:
    nice -n 10 .venv/bin/python benchmarks/export_backends_coreml_tflite_bench.py --repeats 3

Writes benchmarks/results/export_backends_coreml_tflite.json (with the command that made it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mobilekit._deps import toolchain_versions  # noqa: E402
from mobilekit.recipe import Recipe  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "export_backends_coreml_tflite.json"


def _models(names: list[str]) -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    from tests.fixtures.models import DiTWrapper, tiny_convnet, tiny_dit, tiny_dit_inputs

    out: dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]] = {}
    for name in names:
        if name == "convnet":
            out[name] = tiny_convnet()
        elif name == "dit-fixture":
            out[name] = (DiTWrapper(tiny_dit()).eval(), tiny_dit_inputs())
        else:
            from mobilekit.builtins import build

            out[name] = build(name)
    return out


# ---------------------------------------------------------------- bare library calls

def bare_coreml(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], precision: str, work: Path) -> None:
    """What a user would write with coremltools alone."""
    import coremltools as ct
    from coremltools.optimize import coreml as cto

    program = torch.export.export(model.eval(), inputs).run_decompositions({})
    ml = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                    compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                    skip_model_load=True)
    if precision == "int8-weight":
        cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=256))
        ml = cto.linear_quantize_weights(ml, config=cfg)
    ml.save(str(work / "bare.mlpackage"))


class _Int32(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, longs: list[int]) -> None:
        super().__init__()
        self.model, self.longs = model, set(longs)

    def forward(self, *args: torch.Tensor) -> Any:
        return self.model(*(a.long() if i in self.longs else a for i, a in enumerate(args)))


def bare_tflite(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], precision: str, work: Path) -> None:
    """What a user would write with litert-torch and ai-edge-quantizer alone."""
    import litert_torch

    longs = [i for i, t in enumerate(inputs) if t.dtype == torch.int64]
    args = tuple(t.int() if i in longs else t for i, t in enumerate(inputs))
    edge = litert_torch.convert(_Int32(model.eval(), longs) if longs else model.eval(), args)
    if precision == "fp32":
        edge.export(str(work / "bare.tflite"))
        return
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(bytearray(edge.model_content()))
    q.load_quantization_recipe({"int8-dynamic": recipe.dynamic_wi8_afp32,
                                "int8-weight": recipe.weight_only_wi8_afp32}[precision]())
    (work / "bare.tflite").write_bytes(bytes(q.quantize(enable_progress_report=False).quantized_model))


STAGES: list[dict[str, float]] = []  # ConvertResult.stages of each mobilekit run


def ours(fmt: str) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...], str, Path], None]:
    from mobilekit.converters import get_converter

    conv = get_converter(fmt)

    def run(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], precision: str, work: Path) -> None:
        STAGES.append(conv.convert(model, inputs, Recipe.parse(f"{fmt}-{precision}"), work).stages)

    return run


def _time(fn: Callable[..., None], *args: Any) -> float:
    with tempfile.TemporaryDirectory(prefix="mk-bench-") as tmp:
        start = time.perf_counter()
        fn(*args, Path(tmp))
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="convnet,dit-fixture,dit-tiny,gan-tiny")
    parser.add_argument("--backends", default="coreml,tflite")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    torch.set_num_threads(1)
    models = _models(args.models.split(","))
    precisions = {"coreml": ("fp16", "int8-weight"), "tflite": ("fp32", "int8-dynamic")}
    bare = {"coreml": bare_coreml, "tflite": bare_tflite}
    rows = []
    for fmt in args.backends.split(","):
        mine = ours(fmt)
        warm_model, warm_inputs = models[next(iter(models))]
        _time(mine, warm_model, warm_inputs, precisions[fmt][0])  # imports and first-call costs, both sides
        _time(bare[fmt], warm_model, warm_inputs, precisions[fmt][0])
        for name, (model, inputs) in models.items():
            for precision in precisions[fmt]:
                t_ours, t_bare = [], []
                STAGES.clear()
                for _ in range(args.repeats):
                    t_ours.append(_time(mine, model, inputs, precision))
                    t_bare.append(_time(bare[fmt], model, inputs, precision))
                row = {"format": fmt, "model": name, "precision": precision, "repeats": args.repeats,
                       "mobilekit_s": [round(t, 3) for t in t_ours], "bare_s": [round(t, 3) for t in t_bare],
                       "mobilekit_median_s": round(statistics.median(t_ours), 3),
                       "bare_median_s": round(statistics.median(t_bare), 3),
                       "overhead_median_pct": round(100 * (statistics.median(t_ours) / statistics.median(t_bare) - 1),
                                                    1),
                       "overhead_min_pct": round(100 * (min(t_ours) / min(t_bare) - 1), 1),
                       "params": int(sum(p.numel() for p in model.parameters())),
                       # seconds per converter stage (median over repeats): prepare/lower/quantize are mostly
                       # library work both sides do; validate is mobilekit's own check
                       "mobilekit_stages_median_s": {k: round(statistics.median(st.get(k, 0.0) for st in STAGES), 4)
                                                     for k in sorted({k for st in STAGES for k in st})}}
                rows.append(row)
                print(json.dumps(row), flush=True)  # noqa: T201 - benchmark script, not library code
    result = {
        "benchmark": "export_backends_coreml_tflite",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.replace(str(ROOT) + "/", ""),
                                                       *[a.replace(str(ROOT) + "/", "") for a in sys.argv]]),
        "what": "export seconds: mobilekit converter vs the bare library calls on the same model; "
                "overhead target <= 10 %",
        "host": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "torch_threads": 1},
        "toolchain": toolchain_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
        "summary": {"max_overhead_min_pct": max(r["overhead_min_pct"] for r in rows),
                    "mean_overhead_min_pct": round(float(np.mean([r["overhead_min_pct"] for r in rows])), 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from mobilekit._io import write_json_atomic

    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
