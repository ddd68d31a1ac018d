"""Export seconds of mobilekit's ExecuTorch and ONNX converters vs calling the libraries bare.

mobilekit's overhead (deep copy, input checks, delegation notes, atomic writes, value_info
cleanup) should stay within 10 % of the bare library calls on the same model. After one warm-up
of each, runs alternate (mobilekit first, then bare first, ...), each on a fresh copy of the model
made before the clock starts, and the median and minimum of the repeats are reported; on a shared
machine the minimum is the steadier figure.

Run:
    nice -n 10 .venv/bin/python benchmarks/export_backends_bench.py --repeats 3

Writes benchmarks/results/export_backends_executorch_onnx.json (with the command that made it).
"""

from __future__ import annotations

import argparse
import copy
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

import torch  # noqa: E402

from mobilekit._deps import toolchain_versions  # noqa: E402
from mobilekit.recipe import Recipe  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "export_backends_executorch_onnx.json"
RECIPES = ("executorch-xnnpack-fp32", "executorch-xnnpack-int8-dynamic", "onnx-fp32", "onnx-int8-dynamic")


def _models(names: list[str]) -> dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    from tests.fixtures.models import DiTWrapper, tiny_dit, tiny_dit_inputs

    out: dict[str, tuple[torch.nn.Module, tuple[torch.Tensor, ...]]] = {}
    for name in names:
        if name == "dit-fixture":
            out[name] = (DiTWrapper(tiny_dit()).eval(), tiny_dit_inputs())
        else:
            from mobilekit.builtins import build

            out[name] = build(name)
    return out


# ---------------------------------------------------------------- bare library calls

def bare_executorch(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], precision: str, work: Path) -> None:
    """What a user would write with ExecuTorch alone (XNNPACK delegate)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = model.eval()
    if precision == "int8-dynamic":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = torch.export.export(model, inputs).module()
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                    is_dynamic=True))
        graph = prepare_pt2e(graph, quantizer)
        graph(*inputs)
        model = convert_pt2e(graph)
    program = torch.export.export(model, inputs)
    buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    (work / "model.pte").write_bytes(buffer)


def bare_onnx(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], precision: str, work: Path) -> None:
    """What a user would write with torch.onnx (and onnxruntime.quantization) alone."""
    program = torch.onnx.export(model.eval(), inputs, dynamo=True, verbose=False)
    program.save(str(work / "model.onnx"))
    if precision == "int8-dynamic":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        proto = onnx.load(str(work / "model.onnx"))
        del proto.graph.value_info[:]  # without this, ORT's shape inference rejects diffusers' DiT export
        onnx.save(proto, str(work / "model.onnx"))
        quantize_dynamic(str(work / "model.onnx"), str(work / "model.int8.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])


def mobilekit_convert(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], recipe: Recipe, work: Path) -> None:
    from mobilekit.converters import get_converter

    get_converter(recipe.format).convert(model, inputs, recipe, work)


def _timed(fn: Callable[[torch.nn.Module, Path], None], model: torch.nn.Module) -> float:
    """Seconds of ``fn(fresh_model, workdir)``; the fresh copy is made before the clock starts.

    Both sides get a module that was never exported: torch.export is faster on a module it has
    already traced in this process, which would favour whichever side reuses the same object.
    """
    fresh = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="mk-bench-") as tmp:
        start = time.perf_counter()
        fn(fresh, Path(tmp))
        return time.perf_counter() - start


def bench(name: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], recipe_name: str,
          repeats: int) -> dict[str, Any]:
    recipe = Recipe.parse(recipe_name)
    bare_fn = bare_executorch if recipe.format == "executorch" else bare_onnx

    def mk(m: torch.nn.Module, work: Path) -> None:
        mobilekit_convert(m, inputs, recipe, work)

    def bare(m: torch.nn.Module, work: Path) -> None:
        bare_fn(m, inputs, recipe.precision, work)

    _timed(mk, model), _timed(bare, model)  # warm-up: imports, kernels, caches
    mk_s, bare_s = [], []
    for i in range(repeats):  # alternate which side goes first
        if i % 2 == 0:
            mk_s.append(_timed(mk, model))
            bare_s.append(_timed(bare, model))
        else:
            bare_s.append(_timed(bare, model))
            mk_s.append(_timed(mk, model))
    row = {"model": name, "recipe": recipe_name, "repeats": repeats,
           "mobilekit_seconds": mk_s, "bare_seconds": bare_s,
           "mobilekit_median_s": statistics.median(mk_s), "bare_median_s": statistics.median(bare_s),
           "mobilekit_min_s": min(mk_s), "bare_min_s": min(bare_s)}
    row["overhead_median_pct"] = 100 * (row["mobilekit_median_s"] / row["bare_median_s"] - 1)
    row["overhead_min_pct"] = 100 * (row["mobilekit_min_s"] / row["bare_min_s"] - 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dit-fixture", "gan-tiny", "dit-tiny"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "nice -n 10 .venv/bin/python " + " ".join(shlex.quote(a) for a in
                                                        ["benchmarks/export_backends_bench.py", *sys.argv[1:]])
    rows: list[dict[str, Any]] = []
    for name, (model, inputs) in _models(args.models).items():
        for recipe in args.recipes:
            row = bench(name, model, inputs, recipe, args.repeats)
            rows.append(row)
            sys.stderr.write(f"{name:12s} {recipe:32s} mobilekit {row['mobilekit_min_s']:7.2f} s  bare "
                             f"{row['bare_min_s']:7.2f} s  overhead(min) {row['overhead_min_pct']:+6.1f} %  "
                             f"(median {row['overhead_median_pct']:+6.1f} %)\n")
            _write(args.out, command, rows)  # after every row, so an interrupted run keeps what it measured


def _write(out: Path, command: str, rows: list[dict[str, Any]]) -> None:
    result = {
        "benchmark": "export seconds: mobilekit ExecuTorch/ONNX converters vs bare library calls",
        "command": command,
        "target_overhead_pct": 10.0,
        "host": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "torch_threads": 1, "note": "2 shared cores; other jobs ran at the same time"},
        "toolchain": toolchain_versions(),
        "rows": rows,
        "worst_overhead_min_pct": max(r["overhead_min_pct"] for r in rows),
        "worst_overhead_median_pct": max(r["overhead_median_pct"] for r in rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
