"""The LoRA-placement ablation's statistics (paired by seed) and one smoke-size seed through every
placement (benchmarks/e2gan_lora_placement_bench.py)."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.benches import load_bench

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    return load_bench("e2gan_lora_placement_bench")


RANKS = {"crucial": {"ds.0": 1}, "resnet": {"res1.conv1": 1}, "both": {"ds.0": 1, "res1.conv1": 1}}


def _seed(psnrs: dict[str, dict[str, float]]) -> dict:
    return {"concepts": {c: {"runs": {p: {"psnr": v, "lora_parameters_spent": 100, "trainable_parameters": 110,
                                          "seconds": 1.0, "ranks": RANKS[p]} for p, v in per.items()}}
                         for c, per in psnrs.items()}}


def test_analyse_pairs_by_seed_after_averaging_concepts(bench):
    # seed noise shared by all placements (+0 / +5 dB) must cancel in the paired difference
    seeds = {"0": _seed({"a": {"crucial": 10.0, "resnet": 11.0, "both": 10.0},
                         "b": {"crucial": 20.0, "resnet": 21.0, "both": 19.0}}),
             "1": _seed({"a": {"crucial": 15.0, "resnet": 16.0, "both": 15.0},
                         "b": {"crucial": 25.0, "resnet": 26.0, "both": 25.0}})}
    an = bench.analyse(seeds, "tiny")
    d = an["averaged"]["resnet_minus_crucial"]
    assert d["values"] == [1.0, 1.0] and d["ci95"] == 0.0
    assert an["averaged"]["both_minus_crucial"]["values"] == [-0.5, 0.0]
    assert an["averaged"]["crucial"]["mean"] == pytest.approx(17.5)
    assert an["per_concept"]["b"]["both_minus_crucial"]["values"] == [-1.0, 0.0]
    assert "crucial_minus_crucial" not in an["averaged"]
    share = {p: an["parameters"][p]["resnet_share"]["mean"] for p in RANKS}
    assert share["crucial"] == 0.0 and share["resnet"] == 1.0 and 0.0 < share["both"] < 1.0


def test_resnet_share_weighs_ranks_by_layer_cost(bench):
    from mobilekit.train.e2gan.lora import layer_lora_cost
    from mobilekit.train.e2gan.models import E2GANConfig, build_generator

    g = build_generator(E2GANConfig.tiny())
    mods = dict(g.named_modules())
    a, b = layer_lora_cost(mods["res1.conv1"]), layer_lora_cost(mods["head.conv_out"])
    assert bench.resnet_share({"res1.conv1": 2, "head.conv_out": 1}, g) == pytest.approx(2 * a / (2 * a + b))


@pytest.mark.slow
def test_smoke_seed_places_lora_where_named_within_one_budget(bench, tmp_path):
    res = bench.main(["--mode", "smoke", "--seeds", "0", "--work", str(tmp_path / "w"),
                      "--out", str(tmp_path / "out.json")])
    seed = res["seeds"]["0"]
    budget = seed["budget"]
    for c in seed["concepts"].values():
        runs = c["runs"]
        assert set(runs) == {"crucial", "resnet", "both"}
        assert all(re.fullmatch(r"res\d\.conv[12]", n) for n in runs["resnet"]["ranks"])
        assert not any(n.startswith("res") for n in runs["crucial"]["ranks"])
        for r in runs.values():
            assert r["lora_parameters_spent"] <= budget
    assert (tmp_path / "out.md").read_text().count("| 0 |") == 3 * len(seed["concepts"])
    # a second run finds the seed's base in --work and reuses it (not rewritten): the same numbers
    weights = tmp_path / "w" / "seed0" / "base" / "generator" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = bench.main(["--mode", "smoke", "--seeds", "0", "--work", str(tmp_path / "w"),
                        "--out", str(tmp_path / "out2.json")])
    assert weights.stat().st_mtime_ns == stamp
    first = [r["psnr"] for c in seed["concepts"].values() for r in c["runs"].values()]
    assert [r["psnr"] for c in again["seeds"]["0"]["concepts"].values() for r in c["runs"].values()] == first
