"""The E²GAN base-selection ablation (benchmarks/e2gan_base_ablation_bench.py): how each base kind
picks its concepts, the paired statistics, and one smoke-size seed end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fixtures.benches import load_bench

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def abl():
    return load_bench("e2gan_base_ablation_bench")


def test_pool_excludes_the_held_out_concepts(abl):
    from mobilekit.train.e2gan import concepts as cc

    pool = abl.base_pool()
    assert pool and not set(pool) & set(cc.DEFAULT_HELD_OUT)
    assert set(pool) | set(cc.DEFAULT_HELD_OUT) == set(cc.builtin_concepts())


def test_random_concepts_have_the_count_are_distinct_from_the_pool_and_seeded(abl):
    pool = abl.base_pool()
    for seed in range(5):
        got = abl.random_concepts(pool, 6, seed)
        assert len(got) == len(set(got)) == 6 and set(got) <= set(pool)
        assert got == abl.random_concepts(pool, 6, seed)  # same seed, same draw
    draws = {tuple(abl.random_concepts(pool, 6, s)) for s in range(5)}
    assert len(draws) > 1  # different seeds draw differently
    with pytest.raises(ValueError):
        abl.random_concepts(pool, len(pool) + 1, 0)


def test_base_concepts_per_kind(abl):
    pool = abl.base_pool()
    assert abl.base_concepts_for("clustered", pool, 6, 0, "x") is None  # train_base runs k-means
    assert abl.base_concepts_for("random", pool, 6, 3, "x") == abl.random_concepts(pool, 6, 3)
    assert abl.base_concepts_for("single", pool, 6, 3, pool[0]) == [pool[0]]


def test_central_concept_is_the_one_nearest_the_mean_descriptor(abl):
    pool = ["a", "b", "c", "d"]
    desc = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [4.0, 4.0]])  # mean (3.5, 3.5): d is nearest
    assert abl.central_concept(pool, desc) == "d"
    desc2 = np.array([[4.0, 4.0], [10.0, 0.0], [0.0, 10.0], [0.0, 0.0]])
    assert abl.central_concept(pool, desc2) == "a"


def test_nearest_base_concept_uses_descriptor_distance(abl):
    pool = ["a", "b", "c"]
    desc = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert abl.nearest_base_concept("t", ["b", "c"], pool, desc, np.array([0.9, 0.1])) == "b"
    assert abl.nearest_base_concept("t", ["b", "c"], pool, desc, np.array([0.1, 0.9])) == "c"


def _fake_seeds(vals):
    """vals: seed -> kind -> psnr (same for every concept)."""
    from mobilekit.train.e2gan import concepts as cc

    def run(p):
        return {"psnr": p, "l1": 0.1, "fd": 1.0, "zero_shot_psnr": p - 5, "zero_shot_nearest_psnr": p - 4,
                "zero_shot_minus_identity": -1.0, "identity_psnr": p - 4}

    return {str(s): {"bases": {k: {"concepts": {c: run(p) for c in cc.DEFAULT_HELD_OUT}} for k, p in kv.items()}}
            for s, kv in vals.items()}


def test_analysis_pairs_the_differences_per_seed(abl):
    seeds = _fake_seeds({0: {"clustered": 20.0, "random": 19.0, "single": 10.0},
                         1: {"clustered": 30.0, "random": 29.0, "single": 18.0},
                         2: {"clustered": 25.0, "random": 24.0, "single": 16.0}})
    an = abl.analyse(seeds)
    assert an["n_seeds"] == 3
    assert an["averaged"]["clustered"]["psnr"]["mean"] == pytest.approx(25.0)
    d = an["averaged"]["contrasts"]["clustered_minus_random"]["psnr"]
    assert d["mean"] == pytest.approx(1.0) and d["ci95"] == pytest.approx(0.0)  # paired: no spread
    d2 = an["averaged"]["contrasts"]["clustered_minus_single"]["psnr"]
    assert d2["values"] == [10.0, 12.0, 9.0]


def test_smoke_seed_end_to_end(abl, tmp_path):
    out = tmp_path / "abl.json"
    res = abl.main(["--mode", "smoke", "--seeds", "0", "--work", str(tmp_path / "w"), "--out", str(out)])
    assert set(res["seeds"]["0"]["bases"]) == set(abl.KINDS)
    b = res["seeds"]["0"]["bases"]
    assert b["single"]["base"]["concepts"] == [res["single_concept"]]
    assert len(b["random"]["base"]["concepts"]) == res["settings"]["num_concepts"]
    # the same pair budget for every kind
    budgets = {k: len(v["base"]["concepts"]) * v["base"]["pairs_per_concept"] for k, v in b.items()}
    assert len(set(budgets.values())) == 1
    for kind in abl.KINDS:
        for c, r in b[kind]["concepts"].items():
            assert np.isfinite(r["psnr"]) and r["nearest_base_concept"] in b[kind]["base"]["concepts"]
    assert json.loads(out.read_text())["complete"] is True
    assert out.with_suffix(".md").read_text().startswith("# E²GAN base-selection ablation")
