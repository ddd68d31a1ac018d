"""The E²GAN benchmark's statistics: t-intervals, equal-seconds reading of curves, crucial-layer
evidence, and one smoke-size seed through every method (benchmarks/e2gan_bench.py)."""

from __future__ import annotations

import math

import pytest

from tests.fixtures.benches import load_bench

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    return load_bench("e2gan_bench")


def test_ci95_is_the_student_t_half_width(bench):
    m, h = bench.ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) · s / √n, s = 1
    assert bench.ci95([5.0]) == (5.0, 0.0)


def _run(setup, curve, initial=10.0):
    return {"initial_psnr": initial, "setup_seconds": setup, "seconds": setup + curve[-1][0],
            "history": [{"train_seconds": t, "psnr": p} for t, p in curve]}


def test_equal_seconds_reads_each_curve_at_the_shortest_total_time_setup_included(bench):
    runs = {"fast": _run(0.0, [(2.0, 11.0), (4.0, 12.0)]),
            "slow": _run(1.0, [(2.0, 13.0), (4.0, 15.0), (6.0, 16.0)]),
            "late": _run(5.0, [(1.0, 20.0)])}
    t, at = bench.equal_seconds(runs)
    assert t == 4.0
    assert at == {"fast": 12.0, "slow": 13.0, "late": 10.0}  # slow's 2 s point is at 3 s; late has not started


def test_crucial_layer_evidence_ranks_layers_and_separates_the_crucial_ones(bench):
    seeds = [{"crucial_layers": ["a.x", "b.y"],
              "concepts": {"c": {"full_finetune_weight_change": {"a.x": 0.3 + s, "b.y": 0.2, "r.z": 0.1}}}}
             for s in (0.0, 0.1)]
    ev = bench.crucial_layer_evidence(seeds)
    assert [r["layer"] for r in ev["layers"]] == ["a.x", "b.y", "r.z"]
    assert ev["crucial_in_top_k"] == ev["k"] == 2 and ev["auc_crucial_over_non_crucial"]["mean"] == 1.0
    assert ev["layers"][0]["mean"] == pytest.approx(0.35)
    seeds[0]["concepts"]["c"]["full_finetune_weight_change"]["r.z"] = 9.0  # a non-crucial layer changes most
    assert bench.crucial_layer_evidence(seeds)["auc_crucial_over_non_crucial"]["mean"] == 0.5


@pytest.mark.slow
def test_smoke_seeds_run_every_method_and_summarise(bench, tmp_path):
    mode = bench.MODES["smoke"]
    quality = bench.run_quality(mode, tmp_path, [0, 1])
    runs = quality["seeds"]["0"]["concepts"]["sepia"]["runs"]
    assert set(runs) == {m[0] for m in bench.METHODS}
    assert len(runs["lora-searched-random-subset"]["subset"]) == len(runs["lora-searched-subset"]["subset"]) \
        == mode["subset"]
    assert runs["lora-searched-random-subset"]["subset"] != runs["lora-searched-subset"]["subset"]
    assert runs["lora-random"]["ranks"] != runs["lora-uniform"]["ranks"]
    an = quality["analysis"]
    assert an["n_seeds"] == 2 and an["averaged"]["lora-uniform"]["psnr"]["n"] == 2
    assert set(an["averaged"]["lora-uniform"]["minus_lora-searched"]) == {"psnr", "psnr_equal_seconds"}
    summary = bench.summary_file({"quality": quality, "command": "x"})
    assert set(summary) == {"concepts", "command"}
    methods = summary["concepts"]["sepia"]["methods"]
    assert set(methods) == set(bench.ORDER) and all(len(m["psnr"]) == len(m["seconds"]) == 2 for m in methods.values())
    assert "| lora-random |" in bench.to_markdown({"quality": quality, "command": "x", "mode": "smoke",
                                                    "threads": 1, "generator": "tiny", "settings": mode})
