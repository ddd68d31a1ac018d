"""Accuracy of the latency estimator -> benchmarks/results/estimate.json.

Two checks:

1. Calibration set, leave-one-model-out: every published latency is predicted by a fit that
   never saw its architecture; median absolute percentage error (MdAPE) and the share within
   ±25 %, overall and per platform × compute unit and per family; plus how often the band
   holds the held-out value (nested leave-one-model-out) against the share it claims. The same
   leave-one-device-out (a fit that never saw the phone), with the bands shipped for phones
   outside the calibration set.
2. This host described as a profile (``mobilekit.estimation.host.measure_host``): estimates of
   the built-in models (and two small calibration architectures) against their .pte (XNNPACK)
   and .onnx (ONNX Runtime) artifacts timed with a plain loop at the same thread count, at fp32
   and at int8-dynamic (built by ``mobilekit.export``; the ONNX estimate reads the artifact).

Run:  nice -n 10 .venv/bin/python benchmarks/estimate_bench.py [--threads 1] [--iters 30]
      [--precisions fp32,int8-dynamic] [--baseline OLD_estimate.json --baseline-label REF] [--skip-host]
      [--render-only]   (rewrite results/estimate.md from results/estimate.json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import rewrite_markdown, write_json_and_markdown  # noqa: E402
from mobilekit._deps import toolchain_versions  # noqa: E402


def _ape_stats(measured: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    ape = np.abs(predicted - measured) / measured
    return {"n": int(ape.size), "mdape": float(np.median(ape)) if ape.size else None,
            "within_25pct": float(np.mean(ape <= 0.25)) if ape.size else None,
            "within_2x": float(np.mean(np.abs(np.log(predicted / measured)) <= np.log(2))) if ape.size else None}


def calibration_section() -> dict[str, Any]:
    from mobilekit.estimation.bands import COVERAGE, build_table, nested_coverage
    from mobilekit.estimation.fit import (device_group, leave_one_device_out, leave_one_model_out, load_features,
                                          rows_of)

    doc = load_features()
    rows = rows_of(doc)
    t0 = time.perf_counter()
    pred = leave_one_model_out(rows, doc["archs"])
    secs = time.perf_counter() - t0
    pred_dev = leave_one_device_out(rows, doc["archs"])
    meas = np.array([r.latency_ms for r in rows])
    by_pu: dict[str, list[int]] = defaultdict(list)
    by_fam: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_pu[f"{r.platform}/{'cpu' if r.unit == 'cpu1' else r.unit}"].append(i)
        by_fam[r.family].append(i)
    cols = ([r.family for r in rows], [r.arch for r in rows], list(meas), list(pred))
    table = build_table(*cols)
    cols_dev = ([r.family for r in rows], [device_group(r) for r in rows], list(meas), list(pred_dev))
    table_dev = build_table(*cols_dev)
    by_dev: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_dev[device_group(r)].append(i)
    return {
        "method": "leave-one-model-out grouped by architecture; fit = calibrated roofline per (platform, unit, "
                  "precision) family, shrunk to the unit-wide fit; every op priced at its own precision "
                  "(estimation/precision.py)",
        "rows": len(rows), "architectures": len({r.arch for r in rows}),
        "skipped_rows": doc.get("skipped", []),
        "overall": _ape_stats(meas, pred),
        "by_platform_unit": {k: _ape_stats(meas[v], pred[v]) for k, v in sorted(by_pu.items())},
        "by_family": {k: _ape_stats(meas[v], pred[v]) for k, v in sorted(by_fam.items())},
        "band": {"target_coverage": COVERAGE,
                 "method": "per group (family, else platform/unit, unit, all): 10th-90th percentile of the group's "
                           "held-out log residuals, width scaled until nested leave-one-model-out coverage reaches "
                           "80 % (at most x2); claimed coverage = that measured coverage; groups with < 5 rows or "
                           "< 3 models borrow a parent's band widened x1.5",
                 "groups": {k: {kk: v for kk, v in e.items() if kk != "reason"} | {"reason": e.get("reason")}
                            for k, e in sorted(table.items())},
                 "nested_loo_coverage": nested_coverage(*cols, table=table)},
        "loo_seconds": secs,
        "leave_one_device_out": {
            "method": "each phone (phones mapping to one profile together) predicted by a fit without it, so "
                      "without its device factor; bands: the table built from these residuals nested by phone "
                      "(what estimate() ships for phones outside the calibration set)",
            "devices": len(by_dev),
            "overall": _ape_stats(meas, pred_dev),
            "by_platform_unit": {k: _ape_stats(meas[v], pred_dev[v]) for k, v in sorted(by_pu.items())},
            "by_family": {k: _ape_stats(meas[v], pred_dev[v]) for k, v in sorted(by_fam.items())},
            "by_device": {k: _ape_stats(meas[v], pred_dev[v]) for k, v in sorted(by_dev.items())},
            "band": {"groups": {k: {kk: v for kk, v in e.items() if kk != "reason"} | {"reason": e.get("reason")}
                                for k, e in sorted(table_dev.items())},
                     "nested_lodo_coverage": nested_coverage(*cols_dev, table=table_dev)},
        },
    }


def _export_pte(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    prog = to_edge_transform_and_lower(torch.export.export(model, inputs), partitioner=[XnnpackPartitioner()])
    path.write_bytes(prog.to_executorch().buffer)


def _export_onnx(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    torch.onnx.export(model, inputs, str(path), dynamo=True)


def _time(runner: Any, feeds: list[np.ndarray], iters: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        runner.run(feeds)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.run(feeds)
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "n": iters}


def _host_models() -> list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]]:
    from mobilekit.builtins import build
    from mobilekit.estimation.archs import ARCHS

    out = []
    for name in ("dit-tiny", "gan-tiny"):
        m, x = build(name)
        out.append((f"builtin:{name}", m.eval(), tuple(x)))
    for arch in ("mnasnet-0.5@224", "efficientnet-lite0@224"):
        torch.manual_seed(0)
        m, x = ARCHS[arch][0]()
        out.append((arch, m.eval(), tuple(torch.randn_like(t) for t in x)))
    return out


def _export_recipe(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: Path, fmt: str,
                   precision: str) -> Path:
    """Build one artifact with mobilekit's own converter for ``fmt`` at ``precision`` (pixel-8's recipes)."""
    from mobilekit import export

    manifest = export(model, inputs, targets=["pixel-8"], out_dir=out, precision=precision, formats=[fmt],
                      verify=False, use_cache=False)
    ext = ".pte" if fmt == "executorch" else ".onnx"
    (art,) = [a for a in manifest.artifacts if a.path.endswith(ext)]
    return out / art.path


def host_section(threads: int, iters: int, precisions: list[str]) -> dict[str, Any]:
    from mobilekit.estimation.api import estimate
    from mobilekit.estimation.host import measure_host
    from mobilekit.runtime.runners import ExecuTorchRunner, OnnxRuntimeRunner

    torch.set_num_threads(threads)
    host = measure_host(threads=threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, inputs in _host_models():
            feeds = [t.numpy() for t in inputs]
            for prec in precisions:
                for fmt, export, runner_cls in (("executorch", _export_pte, ExecuTorchRunner),
                                                ("onnx", _export_onnx, OnnxRuntimeRunner)):
                    stem = f"{name.replace(':', '_').replace('@', '_')}_{prec}"
                    path = Path(tmp) / f"{stem}.{'pte' if fmt == 'executorch' else 'onnx'}"
                    entry: dict[str, Any] = {"model": name, "format": fmt, "precision": prec}
                    try:
                        if prec == "fp32":
                            export(model, inputs, path)
                        else:
                            path = _export_recipe(model, inputs, Path(tmp) / f"{stem}_{fmt}", fmt, prec)
                        est = estimate(model, inputs, target=host, format=fmt, precision=prec, compute_unit="cpu",
                                       name=name, artifact=path if fmt == "onnx" else None)
                        entry.update({"estimate_ms": est.ms, "band_ms": [est.low_ms, est.high_ms],
                                      "coverage": est.coverage, "gflops": est.roofline["flops"] / 1e9,
                                      "flops_by_precision": est.roofline["flops_by_precision"],
                                      "precision_from": est.roofline["precision_from"]})
                        timing = _time(runner_cls(path, threads=threads), feeds, iters)
                        entry.update(timing)
                        entry["ape"] = abs(est.ms - timing["median_ms"]) / timing["median_ms"]
                        entry["inside_band"] = est.low_ms <= timing["median_ms"] <= est.high_ms
                    except Exception as exc:  # record, don't hide, an export/runtime failure
                        entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    results.append(entry)
                    print(json.dumps(entry), flush=True)
    ok = [r for r in results if "ape" in r]
    by_prec = {p: [r for r in ok if r["precision"] == p] for p in precisions}
    return {"host": host.to_dict(), "threads": threads, "iters": iters, "results": results,
            "mdape": statistics.median(r["ape"] for r in ok) if ok else None,
            "within_25pct": sum(r["ape"] <= 0.25 for r in ok) / len(ok) if ok else None,
            "inside_band": sum(bool(r["inside_band"]) for r in ok) / len(ok) if ok else None,
            "int8_dynamic_vs_fp32": int8_vs_fp32(results),
            "by_precision": {p: {"n": len(v), "mdape": statistics.median(r["ape"] for r in v) if v else None,
                                 "inside_band": sum(bool(r["inside_band"]) for r in v) / len(v) if v else None}
                             for p, v in by_prec.items()}}


def int8_vs_fp32(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per model and format: int8-dynamic / fp32 latency, measured and estimated."""
    ok = {(r["model"], r["format"], r["precision"]): r for r in results if "ape" in r}
    out = {}
    for (model, fmt, prec), r in sorted(ok.items()):
        base = ok.get((model, fmt, "fp32"))
        if prec == "int8-dynamic" and base:
            out[f"{model}/{fmt}"] = {"measured": r["median_ms"] / base["median_ms"],
                                     "estimated": r["estimate_ms"] / base["estimate_ms"]}
    return out


def _summary(cal: dict[str, Any]) -> dict[str, Any]:
    """The accuracy numbers of a calibration section, for a before/after comparison."""
    band = cal.get("band", {})
    nested = band.get("nested_loo_coverage", {})
    fams = nested.get("by_family", {})
    claimed = {k: (v["claimed"] if isinstance(v, dict) else band.get("claimed_coverage", 0.8)) for k, v in fams.items()}
    measured = {k: (v["measured"] if isinstance(v, dict) else v) for k, v in fams.items()}
    lodo = cal.get("leave_one_device_out") or {}
    lodo_cov = lodo.get("band", {}).get("nested_lodo_coverage", {})
    return {"overall": cal.get("overall"), "by_platform_unit": cal.get("by_platform_unit"),
            "by_family": cal.get("by_family"), "band_claimed_by_family": claimed,
            "band_measured_by_family": measured, "band_measured_overall": nested.get("measured"),
            "rows": cal.get("rows"),
            "lodo_overall": lodo.get("overall"), "lodo_by_platform_unit": lodo.get("by_platform_unit"),
            "lodo_band_measured_overall": lodo_cov.get("measured"),
            "lodo_band_by_family": lodo_cov.get("by_family")}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _ape_table(title: str, stats: dict[str, dict[str, Any]], before: dict[str, Any] | None) -> list[str]:
    out = [f"| {title} | rows | MdAPE | within ±25 % | within 2× |", "|---|---|---|---|---|"]
    for k, s in stats.items():
        b = (before or {}).get(k) or {}
        cell = [(f"{_pct(b.get(m))} → " if b else "") + _pct(s.get(m))
                for m in ("mdape", "within_25pct", "within_2x")]
        out.append(f"| {k} | {(str(b['n']) + ' → ') if b else ''}{s['n']} | " + " | ".join(cell) + " |")
    return out


def _markdown(doc: dict[str, Any]) -> str:
    """The per-group tables of a run (``results/estimate.md``; the write-up is ``benchmarks/estimate.md``)."""
    cal, before = doc["calibration_loo"], doc.get("before") or {}
    lodo = cal["leave_one_device_out"]
    lines = [f"# Latency estimator accuracy ({doc['date_utc']})", "", f"Command: `{doc['command']}`", "",
             f"Calibration set: {cal['rows']} rows, {cal['architectures']} architectures, {lodo['devices']} phones"
             + (f"; before = {before.get('label')}" if before else "") + ".", "",
             "## Leave-one-model-out", ""]
    lines += _ape_table("group", {"all": cal["overall"], **cal["by_platform_unit"], **cal["by_family"]},
                        {"all": before.get("overall"), **(before.get("by_platform_unit") or {}),
                         **(before.get("by_family") or {})} if before else None)
    lines += ["", "## Leave-one-device-out", ""]
    lines += _ape_table("group", {"all": lodo["overall"], **lodo["by_platform_unit"], **lodo["by_family"]},
                        {"all": before.get("lodo_overall"), **(before.get("lodo_by_platform_unit") or {})}
                        if before.get("lodo_overall") else None)
    lines += ["", "## Band coverage (claimed = measured nested coverage; target 80 %)", "",
              "| family | rows | LOMO claimed | LOMO measured | LODO claimed | LODO measured |",
              "|---|---|---|---|---|---|"]
    lomo_cov = cal["band"]["nested_loo_coverage"]
    lodo_cov = lodo["band"]["nested_lodo_coverage"]
    for fam, e in lomo_cov["by_family"].items():
        d = lodo_cov["by_family"].get(fam, {})
        lines.append(f"| {fam} | {e['n']} | {_pct(e['claimed'])} | {_pct(e['measured'])} | {_pct(d.get('claimed'))} | "
                     f"{_pct(d.get('measured'))} |")
    lines.append(f"| **all (row-weighted)** | {lomo_cov['n']} | {_pct(lomo_cov['claimed_mean'])} | "
                 f"{_pct(lomo_cov['measured'])} | {_pct(lodo_cov['claimed_mean'])} | {_pct(lodo_cov['measured'])} |")
    host = doc.get("host")
    if host:
        lines += ["", f"## This host as a profile (MdAPE {_pct(host['mdape'])}, "
                      f"inside band {_pct(host['inside_band'])})", "",
                  "| model | format | precision | estimate ms | band ms | measured median ms |",
                  "|---|---|---|---|---|---|"]
        for r in host["results"]:
            if "ape" in r:
                lines.append(f"| {r['model']} | {r['format']} | {r['precision']} | {r['estimate_ms']:.2f} | "
                             f"{r['band_ms'][0]:.1f}–{r['band_ms'][1]:.1f} | {r['median_ms']:.2f} |")
            else:
                lines.append(f"| {r['model']} | {r['format']} | {r['precision']} | "
                             f"error: {r.get('error', '')[:80]} | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--skip-host", action="store_true")
    ap.add_argument("--precisions", default="fp32,int8-dynamic",
                    help="host-section precisions (int8 ones are built with mobilekit.export)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="an earlier estimate.json whose calibration numbers are recorded as 'before'")
    ap.add_argument("--baseline-label", default="", help="where the baseline came from (e.g. a git ref)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "estimate.json")
    ap.add_argument("--render-only", action="store_true", help="rewrite results/estimate.md from results/estimate.json")
    args = ap.parse_args()
    if args.render_only:
        print(f"wrote {rewrite_markdown('estimate', _markdown)}")
        return
    doc: dict[str, Any] = {
        "command": "nice -n 10 .venv/bin/python benchmarks/estimate_bench.py " + " ".join(sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "toolchain": toolchain_versions(),
        "calibration_loo": calibration_section(),
    }
    cal = doc["calibration_loo"]
    print(json.dumps(cal["overall"]), json.dumps(cal["band"]["nested_loo_coverage"]["measured"]),
          json.dumps(cal["leave_one_device_out"]["overall"]))
    if args.baseline is not None:
        base = json.loads(args.baseline.read_text())
        doc["before"] = {"label": args.baseline_label, "date_utc": base.get("date_utc"), "command": base.get("command"),
                         **_summary(base["calibration_loo"])}
        doc["after"] = _summary(doc["calibration_loo"])
    if not args.skip_host:
        doc["host"] = host_section(args.threads, args.iters, [p for p in args.precisions.split(",") if p])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_and_markdown(args.out, doc, _markdown)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
