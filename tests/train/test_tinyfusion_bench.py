"""The TinyFusion benchmark's rendering: extra N:M-pattern runs get 95% intervals and per-seed kept
sets in the markdown, and go under ``patterns`` in tinyfusion_summary.json without changing the
1:2 ``methods`` (benchmarks/tinyfusion_bench.py)."""

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


def test_summary_keeps_methods_and_adds_patterns(bench):
    s = bench.summary_file(_result())
    assert s["methods"]["learnable"]["fd"] == [300.0, 301.0, 302.0]  # the 1:2 run, unchanged shape
    assert set(s["methods"]) == {"learnable", "sensitivity", "random"}
    p = s["patterns"]["2:4"]
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
    p = s["patterns"]["2:4"]
    assert {"learnable", "sensitivity-groups"} <= set(p["methods"]) and p["command"] == "cmd2"
    assert p["more_runs"][0]["label"] == "pattern-2:4-groups" and p["more_runs"][0]["methods"] == ["sensitivity-groups"]
    assert set(s["patterns"]["1:2"]["methods"]) == {"sensitivity-groups"}
    assert "sensitivity-groups" not in s["methods"]  # the main run stays as it was


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
