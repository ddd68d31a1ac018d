"""Per-op precision (the artifact a recipe really builds) and per-group leave-one-model-out bands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilekit.estimation.api import estimate
from mobilekit.estimation.graph import GraphCost, OpCost, analyze
from tests.fixtures.models import ConvLinear


class _Convs(torch.nn.Module):
    """Convolutions only (about 0.3 GFLOP at 1x3x96x96)."""

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 32, 64, 64, 128]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = torch.relu(c(x))
        return x


class _Linears(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fcs = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcs(x)


@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_int8_dynamic_leaves_a_conv_only_model_at_fp32_cost(fmt: str) -> None:
    model, x = _Convs().eval(), (torch.randn(1, 3, 96, 96),)
    cost = analyze(model, x)
    fp32 = estimate(model, x, target="pixel-8", format=fmt, precision="fp32", compute_unit="cpu", cost=cost)
    dyn = estimate(model, x, target="pixel-8", format=fmt, precision="int8-dynamic", compute_unit="cpu", cost=cost)
    assert dyn.ms == pytest.approx(fp32.ms, rel=0.01), (dyn.ms, fp32.ms)
    assert {r["precision"] for r in dyn.per_layer if r["op"].startswith("conv")} == {"fp32"}
    # a real int8 conv (static) is cheaper: the table tells the two apart
    static = estimate(model, x, target="pixel-8", format=fmt, precision="int8-static", compute_unit="cpu", cost=cost)
    assert static.ms < 0.8 * fp32.ms


def test_int8_dynamic_makes_a_linear_only_model_cheaper() -> None:
    model, x = _Linears().eval(), (torch.randn(64, 1024),)
    cost = analyze(model, x)
    fp32 = estimate(model, x, target="pixel-8", format="executorch", precision="fp32", compute_unit="cpu", cost=cost)
    dyn = estimate(model, x, target="pixel-8", format="executorch", precision="int8-dynamic", compute_unit="cpu",
                   cost=cost)
    assert dyn.ms < 0.9 * fp32.ms, (dyn.ms, fp32.ms)
    lin = [r for r in dyn.per_layer if r["op"] == "linear"]
    assert lin and {r["precision"] for r in lin} == {"int8-dynamic"}
    assert dyn.roofline["peaks_used"]["cpu.int8"] > 0


def test_e2gan_int8_dynamic_rows_show_convs_at_fp32() -> None:
    from mobilekit.builtins import build

    model, x = build("gan-tiny")
    e = estimate(model.eval(), tuple(x), target="pixel-8", precision="int8-dynamic")  # the profile's default recipe
    assert e.format == "executorch" and e.compute_unit == "cpu"
    convs = [r for r in e.per_layer if r["op"].startswith("conv")]
    assert convs and {r["precision"] for r in convs} == {"fp32"}
    assert {r["precision"] for r in e.per_layer if r["op"] == "linear"} == {"int8-dynamic"}
    assert e.roofline["precision_from"] == "recipe table" and e.roofline["op_precisions"]["fp32"] > 0


def test_precision_table_follows_each_converter() -> None:
    from mobilekit.estimation.precision import kind_precision as kp

    # int8-dynamic: XNNPACK (nn.Linear only) and ORT (MatMul/Gemm with constant B) leave convs float, TFLite doesn't
    assert kp("conv", True, fmt="executorch", unit="cpu", precision="int8-dynamic") == "fp32"
    assert kp("conv", True, fmt="onnx", unit="cpu", precision="int8-dynamic") == "fp32"
    assert kp("conv", True, fmt="tflite", unit="cpu", precision="int8-dynamic") == "int8-dynamic"
    assert kp("matmul", True, fmt="onnx", unit="cpu", precision="int8-dynamic") == "int8-dynamic"
    assert kp("matmul", False, fmt="onnx", unit="cpu", precision="int8-dynamic") == "fp32"  # activation x activation
    # int8-weight: 1-byte weights, float compute; the Core ML delegate's torchao config takes Linear only
    assert kp("matmul", True, fmt="executorch", unit="npu", precision="int8-weight") == "int8-weight"
    assert kp("conv", True, fmt="executorch", unit="npu", precision="int8-weight") == "fp16"
    assert kp("conv", True, fmt="onnx", unit="cpu", precision="int8-weight") == "int8-weight"
    # int8-static on a CPU: conv and linear int8, norms and attention float; on an NPU everything int8
    assert kp("conv", True, fmt="executorch", unit="cpu", precision="int8-static") == "int8-static"
    assert kp("norm", True, fmt="executorch", unit="cpu", precision="int8-static") == "fp32"
    assert kp("attention", False, fmt="executorch", unit="cpu", precision="int8-static") == "fp32"
    assert kp("norm", True, fmt="qnn", unit="npu", precision="int8-static") == "int8-static"
    assert kp("conv", True, fmt="executorch", unit="cpu", precision="fp16") == "fp16"
    assert kp("conv", True, fmt="tflite", unit="cpu", precision="fp16") == "fp32"  # XNNPACK dequantizes at load


def test_fit_and_estimate_price_ops_through_the_same_function() -> None:
    """A calibration row (ExecuTorch XNNPACK int8, mixed int8/fp32 ops; and a transformer on NPUs,
    priced through the matmul factor and each phone's device factor) predicted by the fit's
    vectorised path and by estimate() on the same ops and phone gives the same milliseconds."""
    from mobilekit.estimation.fit import _prepare, fitted_params, load_features, predict_rows, rows_of

    doc = load_features()
    rows = [r for r in rows_of(doc) if (r.format == "executorch" and r.unit == "cpu" and r.precision == "int8-static")
            or (r.arch == "beit-base@224" and r.unit == "npu")]
    assert rows and any(r.unit == "npu" for r in rows)
    prep = _prepare(rows, doc["archs"])
    fitted = predict_rows(rows, prep, fitted_params(), np.ones(len(rows), dtype=bool))
    seen: set[str] = set()
    for r, want in zip(rows, fitted):
        ops = tuple(OpCost(name=f"op{i}", op=k, kind=k, flops=f, weight_elems=w, act_elems=a, int_only=bool(z))
                    for i, (k, f, w, a, z) in enumerate(doc["archs"][r.arch]["ops"]))
        e = estimate(None, (), target=r.device, format=r.format, precision=r.precision, compute_unit=r.unit,
                     cost=GraphCost(ops=ops, params=0.0))
        assert e.ms == pytest.approx(want, rel=1e-9), r.arch
        seen |= set(e.roofline["op_precisions"])
    assert {"fp32", "int8-static"} <= seen  # norms stay float in XNNPACK's static int8


def test_onnx_artifact_precision_is_read_from_the_exported_graph(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from mobilekit import export
    from mobilekit.estimation.precision import read_onnx_precisions

    torch.manual_seed(0)
    model, x = ConvLinear().eval(), (torch.randn(1, 3, 8, 8),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export(model, x, targets=["pixel-8"], out_dir=tmp_path, precision="int8-dynamic",
                          formats=["onnx"], verify=False, use_cache=False)
    (art,) = [a for a in manifest.artifacts if a.path.endswith(".onnx")]
    path = tmp_path / art.path
    counts = read_onnx_precisions(path)
    assert dict(counts["conv"]) == {"fp32": 1}
    assert dict(counts["matmul"]) == {"int8-dynamic": 1}
    e = estimate(model, x, target="pixel-8", format="onnx", precision="int8-dynamic", compute_unit="cpu",
                 artifact=path)
    assert e.roofline["precision_from"] == "onnx graph"
    assert e.roofline["artifact_precisions"] == {"conv": {"fp32": 1}, "matmul": {"int8-dynamic": 1}}
    by_op = {r["op"]: r["precision"] for r in e.per_layer}
    assert by_op["conv2d"] == "fp32" and by_op["linear"] == "int8-dynamic"
    # and an fp32 export reads as fp32 everywhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m32 = export(model, x, targets=["pixel-8"], out_dir=tmp_path / "fp32", precision="fp32", formats=["onnx"],
                     verify=False, use_cache=False)
    (a32,) = [a for a in m32.artifacts if a.path.endswith(".onnx")]
    c32 = read_onnx_precisions(tmp_path / "fp32" / a32.path)
    assert dict(c32["conv"]) == {"fp32": 1} and dict(c32["matmul"]) == {"fp32": 1}


# --- bands: claimed coverage = measured leave-one-model-out coverage, per group ---------------

def _shipped() -> dict:
    from mobilekit.estimation.bands import LOO_PATH

    return json.loads(LOO_PATH.read_text())


def _own_nested(res: np.ndarray, archs: list[str], widen: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent re-implementation: per row inside the band of the other models' residuals, and the
    row's distance (log) to the nearest edge of that band."""
    inside = np.zeros(len(res), dtype=bool)
    dist = np.full(len(res), np.inf)
    a = np.array(archs)
    for m in set(archs):
        held = a == m
        q = np.quantile(res[~held], [0.1, 0.9])
        lo, hi = widen * min(q[0], 0.0), widen * max(q[1], 0.0)
        inside[held] = (res[held] >= lo) & (res[held] <= hi)
        dist[held] = np.minimum(np.abs(res[held] - lo), np.abs(res[held] - hi))
    return inside, dist


def test_each_group_claims_the_coverage_it_measures_leave_one_model_out() -> None:
    from mobilekit.estimation.bands import COVERAGE, MAX_WIDEN, MIN_ARCHS, MIN_ROWS, _in_group

    doc = _shipped()
    rows, table = doc["rows"], doc["bands"]
    res = np.log(np.array([r["measured_ms"] / r["predicted_ms"] for r in rows]))
    fams = [r["family"] for r in rows]
    assert {f for f in fams} <= set(table)
    checked = 0
    for key, e in table.items():
        idx = np.array([_in_group(key, f) for f in fams])
        archs = [rows[i]["arch"] for i in np.flatnonzero(idx)]
        assert e["n"] == idx.sum(), key
        if not e["measured"]:
            assert idx.sum() < MIN_ROWS or len(set(archs)) < MIN_ARCHS, key
            assert e["reason"] and key in e["reason"]
            # the borrowed band holds every one of the group's own held-out rows, and claims no more
            # than the share of them its parent's band held
            assert np.all((res[idx] >= e["log_low"] - 1e-9) & (res[idx] <= e["log_high"] + 1e-9)), key
            assert e["coverage"] <= e["inside_before_stretch"] / idx.sum() + 1e-9, key
            continue
        inside, dist = _own_nested(res[idx], archs, e["widen"])
        # Tolerance: a row can only flip in or out when its residual sits within the jitter of a band
        # edge. Refits on other machines move predictions by < 1e-4 relative (BLAS); allow 1e-2 in log,
        # and count the rows that close to an edge: each can move the measured share by 1/n.
        tol = (np.sum(dist < 1e-2) + 1e-9) / idx.sum()
        measured = float(np.mean(inside))
        assert abs(e["coverage"] - measured) <= tol + 1e-9, (key, e["coverage"], measured, tol)
        # the width scale is the smallest reaching the claimed 80 % (or the cap, claiming less)
        assert e["coverage"] >= COVERAGE - tol or e["widen"] == pytest.approx(MAX_WIDEN)
        checked += 1
    assert checked >= 8


def test_band_table_is_what_the_code_builds_from_the_shipped_rows() -> None:
    from mobilekit.estimation.bands import build_table

    doc = _shipped()
    rows = doc["rows"]
    fresh = build_table([r["family"] for r in rows], [r["arch"] for r in rows], [r["measured_ms"] for r in rows],
                        [r["predicted_ms"] for r in rows])
    assert set(fresh) == set(doc["bands"])
    for key, e in fresh.items():
        s = doc["bands"][key]
        assert e["measured"] == s["measured"], key
        assert e["log_low"] == pytest.approx(s["log_low"], abs=1e-6) and e["log_high"] == pytest.approx(
            s["log_high"], abs=1e-6), key
        assert e["coverage"] == pytest.approx(s["coverage"], abs=1e-9), key


def test_estimates_carry_their_groups_band_and_say_when_it_is_borrowed() -> None:
    from mobilekit.estimation.bands import band_for

    doc = _shipped()
    fp32 = band_for("android", "cpu", "fp32")
    assert fp32.measured and fp32.reason is None
    assert fp32.coverage == pytest.approx(doc["bands"]["android/cpu/fp32"]["coverage"])
    dyn = band_for("android", "cpu", "int8-dynamic")  # no calibration latencies at all
    assert not dyn.measured and "no calibration latencies for android/cpu/int8-dynamic" in dyn.reason
    assert dyn.key == "android/cpu/fp32"
    assert np.log(dyn.high_factor / dyn.low_factor) > np.log(fp32.high_factor / fp32.low_factor) * 1.4
    gpu = band_for("ios", "gpu", "fp32")  # two rows: borrowed, and its coverage lowered to what they show
    assert not gpu.measured and gpu.reason and gpu.coverage < 0.8
    model = _Convs().eval()
    e = estimate(model, (torch.randn(1, 3, 32, 32),), target="pixel-8", precision="int8-dynamic")
    assert e.band_reason and "int8-dynamic" in e.band_reason and e.low_ms < e.ms < e.high_ms
    from mobilekit.estimation.api import LatencyEstimate

    assert LatencyEstimate.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    # pixel-8 is not a calibration phone: its band is the one measured leave-one-device-out
    unseen = band_for("android", "cpu", "fp32", seen_device=False)
    assert unseen.measured
    assert unseen.coverage == pytest.approx(doc["bands_unseen_device"]["android/cpu/fp32"]["coverage"])
    e32 = estimate(model, (torch.randn(1, 3, 32, 32),), target="pixel-8", precision="fp32", compute_unit="cpu")
    assert e32.band_reason is None and e32.coverage == pytest.approx(unseen.coverage)
    assert e32.high_ms / e32.low_ms == pytest.approx(unseen.high_factor / unseen.low_factor)
    # pixel-4 is one: its own fitted device factor and the leave-one-model-out band
    from mobilekit.estimation.fit import fitted_params

    assert fitted_params().device_factor["pixel-4/cpu"] != 1.0
    e4 = estimate(model, (torch.randn(1, 3, 32, 32),), target="pixel-4", precision="fp32", compute_unit="cpu")
    assert e4.coverage == pytest.approx(fp32.coverage)
    assert e4.roofline["format_factor"] == pytest.approx(
        fitted_params().format_factor["executorch"] * fitted_params().device_factor["pixel-4/cpu"])
