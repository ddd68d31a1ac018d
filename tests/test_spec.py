import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.spec import load_spec, parse_input


def test_parse_input():
    assert parse_input("latents=1x4x8x8") == ("latents", (1, 4, 8, 8), torch.float32)
    assert parse_input("3:int64") == (None, (3,), torch.int64)
    with pytest.raises(ConfigError, match="--input"):
        parse_input("1x4xfoo")


def test_function_spec(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def small():\n"
        "    return torch.nn.Linear(4, 2), (torch.randn(1, 4),)\n"
        "def wrong():\n"
        "    return 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_spec("mymodels:small")
    assert isinstance(loaded.model, torch.nn.Linear) and loaded.example_inputs[0].shape == (1, 4)
    with pytest.raises(ConfigError, match="must return"):
        load_spec("mymodels:wrong")
    with pytest.raises(ConfigError, match="has no function"):
        load_spec("mymodels:absent")


def test_spec_that_does_not_import():
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg_xyz.mod'"):
        load_spec("no_such_pkg_xyz.mod:fn")


def test_unknown_builtin_and_unresolvable_spec(tmp_path):
    with pytest.raises(ConfigError, match="builtin:dit-tiny"):
        load_spec("builtin:nope")
    with pytest.raises(ConfigError, match="cannot resolve SPEC"):
        load_spec(str(tmp_path / "missing"))


def test_diffusers_folder_needs_inputs(tmp_path):
    from tests.fixtures.models import tiny_dit

    tiny_dit().save_pretrained(tmp_path / "dit")
    with pytest.raises(ConfigError, match="--input"):
        load_spec(str(tmp_path / "dit"))
    loaded = load_spec(str(tmp_path / "dit"), inputs=["latents=1x4x8x8", "timestep=1:int64", "class_labels=1:int64"])
    out = loaded.model(*loaded.example_inputs)
    assert out.shape == (1, 4, 8, 8) and loaded.input_names == ("latents", "timestep", "class_labels")
