"""The TinyFusion benchmark's rendering: extra N:M-pattern runs get 95% intervals and per-seed kept
sets in the markdown, and go under ``runs`` (keyed by pattern, teacher and budgets) in
tinyfusion_summary.json without changing the main ``methods`` (benchmarks/tinyfusion_bench.py)."""

from __future__ import annotations


import pytest

from tests.fixtures.benches import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("tinyfusion_bench")


def _rows(offset: float) -> list[dict]:
    rows = []
    for seed in (0, 1, 2):
        for method, fd, kept in (("learnable", 300.0 + seed + offset, [0, 3] if seed else [0, 2]),
                                 ("sensitivity", 200.0 + 2 * seed, [0, 1]),
                                 ("random-best-of-k", 250.0, [1, 2])):
            rows.append({"method": method, "seed": seed, "recovery": "finetune", "kept": kept,
                         "calibration_loss": 0.3, "heldout_loss_after_recovery": 0.08, "frechet_after_recovery": fd})
    return rows


def _result() -> dict:
    settings = {"pretrain_steps": 1, "recover_steps": 1, "seeds": [0, 1, 2], "search_steps": 1}
    summary = {m: {} for m in ("learnable", "sensitivity", "random-best-of-k")}
    return {"mode": "quick", "command": "cmd", "settings": settings, "pattern": "1:2",
            "classifier_heldout_accuracy": 0.9, "teacher": {"heldout_loss": 0.07, "frechet": 200.0},
            "sampler": {"samples": 3, "steps": 2}, "data": {"heldout": 3}, "rows": _rows(0.0), "summary": summary,
            "spearman_post_pruning_vs_recovered": 0.5,
            "search_cost": {"learnable_search_step_s": 0.1, "plain_train_step_s": 0.1, "ratio": 1.0, "batch": 2},
            "latency": {},
            "extra_runs": {"pattern-2:4": {"command": "cmd2", "settings": settings, "pattern": "2:4",
                                           "teacher": {"heldout_loss": 0.07, "frechet": 201.0},
                                           "rows": _rows(10.0), "summary": summary, "seconds": 5.0}}}


def test_extra_runs_render_intervals_and_kept_per_seed(bench):
    md = bench.to_markdown(_result())
    extra = md[md.index("Extra run `pattern-2:4`"):]
    m, h = bench.ci95([310.0, 311.0, 312.0])
    assert f"| learnable | [0, 2] (seed 0); [0, 3] (seeds 1, 2) | 0.3000 | 0.0800 | {m:.1f} ± {h:.1f} |" in extra
    d, dh = bench.ci95([110.0, 109.0, 108.0])
    assert f"paired by seed (3 seeds): {d:+.1f} ± {dh:.1f}" in extra
    assert "one global group" in md


def _key(pattern: str, pretrain: int = 1, recover: int = 1) -> str:
    return f"{pattern}, teacher {pretrain} steps, search 1 steps, recovery {recover} steps"


def test_summary_keeps_methods_and_adds_runs(bench):
    s = bench.summary_file(_result())
    assert s["methods"]["learnable"]["fd"] == [300.0, 301.0, 302.0]  # the 1:2 run, unchanged shape
    assert set(s["methods"]) == {"learnable", "sensitivity", "random"}
    assert s["key"] == _key("1:2")
    p = s["runs"][_key("2:4")]
    assert p["methods"]["learnable"]["fd"] == [310.0, 311.0, 312.0]
    assert p["methods"]["learnable"]["kept"] == [[0, 2], [0, 3], [0, 3]] and p["seeds"] == [0, 1, 2]
    assert p["teacher"]["fd"] == 201.0 and p["command"] == "cmd2"


def test_summary_merges_several_runs_of_one_pattern(bench):
    res = _result()
    grouped = [dict(r, method="sensitivity-groups") for r in _rows(20.0) if r["method"] == "sensitivity"]
    for label, pat in (("pattern-2:4-groups", "2:4"), ("pattern-1:2-groups", "1:2")):
        res["extra_runs"][label] = {**res["extra_runs"]["pattern-2:4"], "command": f"cmd-{label}", "pattern": pat,
                                    "rows": grouped}
    s = bench.summary_file(res)
    p = s["runs"][_key("2:4")]
    assert {"learnable", "sensitivity-groups"} <= set(p["methods"]) and p["command"] == "cmd2"
    assert p["more_runs"][0]["label"] == "pattern-2:4-groups" and p["more_runs"][0]["methods"] == ["sensitivity-groups"]
    assert set(s["runs"][_key("1:2")]["methods"]) == {"sensitivity-groups"}
    assert "sensitivity-groups" not in s["methods"]  # the main run stays as it was


def test_contrasts_pair_methods_across_runs_of_one_key(bench):
    """learnable (run pattern-2:4) against sensitivity-groups (run pattern-2:4-groups): same key, so paired."""
    res = _result()
    grouped = [dict(r, method="sensitivity-groups") for r in _rows(20.0) if r["method"] == "sensitivity"]
    res["extra_runs"]["pattern-2:4-groups"] = {**res["extra_runs"]["pattern-2:4"], "rows": grouped,
                                               "summary": {"sensitivity-groups": {}}}
    res["extra_runs"]["other-teacher"] = {**res["extra_runs"]["pattern-2:4-groups"],
                                          "settings": {**res["settings"], "pretrain_steps": 9}}
    md = bench.to_markdown(res)
    d, dh = bench.ci95([(310.0 + s) - (200.0 + 2 * s) for s in (0, 1, 2)])
    assert (f"Across runs `pattern-2:4` and `pattern-2:4-groups` ({_key('2:4')}): learnable minus "
            f"sensitivity-groups FD, paired by seed (3 seeds): {d:+.1f} ± {dh:.1f}") in md
    assert "other-teacher`" not in md.split("Across runs", 1)[1]  # another teacher is never paired with them
    res["extra_runs"]["pattern-2:4-groups"]["teacher"] = {"heldout_loss": 0.07, "frechet": 201.5}
    assert "Across runs" not in bench.to_markdown(res)  # same settings, but the teacher scored another FD


@pytest.mark.parametrize("field, value", [("pretrain_steps", 6000), ("recover_steps", 1000)])
def test_summary_never_pools_runs_of_another_teacher_or_recovery(bench, field, value):
    """Same pattern and methods, but another teacher (or recovery length): two entries, neither merged."""
    res = _result()
    other = {**res["extra_runs"]["pattern-2:4"], "command": "cmd3", "rows": _rows(50.0),
             "settings": {**res["settings"], field: value}}
    res["extra_runs"]["other"] = other
    s = bench.summary_file(res)
    first, second = s["runs"][_key("2:4")], s["runs"][bench.run_key(other)]
    assert bench.run_key(other) != _key("2:4") and str(value) in bench.run_key(other)
    assert first["methods"]["learnable"]["fd"] == [310.0, 311.0, 312.0] and "more_runs" not in first
    assert second["methods"]["learnable"]["fd"] == [350.0, 351.0, 352.0] and second["command"] == "cmd3"
    assert second["teacher"]["pretrain_steps"] == other["settings"]["pretrain_steps"]


def test_longer_recovery_is_set_beside_the_main_run(bench):
    """Only an extra run differing from the main one in recovery length gets the side-by-side lines."""
    res = _result()
    longer = [dict(r, frechet_after_recovery=400.0 - r["frechet_after_recovery"] + r["seed"]) for r in _rows(0.0)]
    res["extra_runs"]["recovery-5"] = {**res["extra_runs"]["pattern-2:4"], "pattern": "1:2", "rows": longer,
                                       "settings": {**res["settings"], "recover_steps": 5}}
    md = bench.to_markdown(res)
    assert md.count("Recovery 5 vs 1 steps") == 1  # the 2:4 run differs in pattern: no comparison
    d, dh = bench.ci95([(400.0 - 300.0 - s + s) - (300.0 + s) for s in (0, 1, 2)])
    assert f"| learnable | 301.0 ± " in md and f"{d:+.1f} ± {dh:.1f} |" in md
    # learnable ~100, sensitivity ~202, random 150 after the longer recovery: the ordering flips
    assert ("after 1 steps: sensitivity, random-best-of-k, learnable; after 5 steps: learnable, random-best-of-k, "
            "sensitivity (changed)") in md
    d0, h0 = bench.ci95([(250.0 - 200.0 - 2 * s) for s in (0, 1, 2)])  # random minus sensitivity after 1 step
    assert f"Swapped: random-best-of-k minus sensitivity FD, paired by seed: {d0:+.1f} ± {h0:.1f} after 1 steps" in md


def test_teacher_cache_is_found_only_for_the_same_pretraining(bench, tmp_path):
    """The teacher-curve bench's saved teacher is what tinyfusion_bench --pretrain-steps N loads."""
    from diffusers import DiTTransformer2DModel

    import torch

    torch.manual_seed(0)
    teacher = DiTTransformer2DModel(**bench.DIT).eval()
    cache = tmp_path / "teacher.pt"
    bench.save_teacher(cache, {"pretrain_steps": 6000, "batch": 32}, teacher, 0.18)
    loaded, step_s = bench.load_or_pretrain(None, {"pretrain_steps": 6000, "batch": 32}, cache)
    assert step_s == 0.18
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), teacher.state_dict().values()))
    with pytest.raises(TypeError):  # other settings: it pretrains (on data=None here), never serves it
        bench.load_or_pretrain(None, {"pretrain_steps": 800, "batch": 32}, cache)


def test_teacher_curve_says_whether_it_flattened():
    curve = load_bench("tinyfusion_teacher_curve_bench")

    def res(losses):
        return {"command": "x", "batch": 32, "every": 200, "steps": 200 * len(losses), "threads": 1,
                "complete": True, "seconds_per_step": 0.1, "quick_mode_pretrain_steps": 800,
                "points": [{"step": 200 * (i + 1), "heldout_loss": v} for i, v in enumerate(losses)]}

    falling = curve.to_markdown(res([0.2, 0.1, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03]))
    flat = curve.to_markdown(res([0.2, 0.1, 0.08, 0.07, 0.0700, 0.0700, 0.0699, 0.0699]))
    assert "**not converged**" in falling and "flattened" not in falling
    assert "the curve has flattened" in flat and "at 1600 it is 0.0699" in flat
