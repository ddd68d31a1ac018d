"""``mobilekit prune`` and ``mobilekit distill`` on the built-in DiT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobilekit.cli.main import main


@pytest.mark.slow
@pytest.mark.xdist_group("tinyfusion-cli")
def test_prune_then_distill_builtin_dit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffusers import DiTTransformer2DModel

    main(["prune", "builtin:dit-tiny", "--pattern", "1:2", "--method", "learnable", "--steps", "3",
          "--batch-size", "4", "--lora-rank", "2", "--data", "digits", "--out", str(tmp_path / "p"), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["depth_before"] == 6 and len(record["kept"]) == 3
    assert record["model_class"] == "DiTTransformer2DModel"
    assert DiTTransformer2DModel.from_pretrained(tmp_path / "p" / "model").config.num_layers == 3
    assert (tmp_path / "p" / "decisions.png").is_file()
    main(["distill", str(tmp_path / "p" / "model"), "--teacher", "builtin:dit-tiny", "--steps", "2", "--batch-size", "4",
          "--out", str(tmp_path / "d"), "--json"])
    drec = json.loads(capsys.readouterr().out)
    assert drec["steps"] == 2 and len(drec["pairs"]) == 3  # 1:2 pairs read from prune.json
    assert (tmp_path / "d" / "model" / "config.json").is_file()


def test_prune_bad_pattern_exits_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prune", "builtin:dit-tiny", "--pattern", "1:4", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "does not divide the model depth 6" in err and "pattern" in err


def test_prune_unknown_method_exits_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prune", "builtin:dit-tiny", "--method", "magic", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown pruning method 'magic'" in capsys.readouterr().err
