"""Build config validation: every bad key, target or precision is named with its file and line."""

import pytest

from mobilekit.build_config import load_build_config
from mobilekit.errors import ConfigError

GOOD = """
[build]
targets = ["iphone-15-pro", "pixel-8"]
precisions = ["fp32", "int8"]

[budgets]
host_latency_ms = 50
phone_latency_ms = { pixel-8 = 40, iphone-15-pro = 25 }
size_mb = 4

[models.dit]
spec = "builtin:dit-tiny"

[models.gan]
spec = "builtin:gan-tiny"
formats = ["tflite"]
budgets = { phone_latency_ms = 10 }
"""


def _write(tmp_path, text, name="mobilekit.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config(tmp_path):
    cfg = load_build_config(_write(tmp_path, GOOD))
    dit, gan = cfg.models
    assert dit.targets == ("iphone-15-pro", "pixel-8") and dit.precisions == ("fp32", "int8")
    assert gan.formats == ("tflite",) and gan.budgets.size_mb == 4
    # the model's plain phone limit replaces the global one; per-target overrides still win
    assert gan.budgets.phone_ms == 10 and gan.budgets.host_ms == 50
    assert dit.budgets.phone_limit("pixel-8") == 40 and dit.budgets.phone_limit("iphone-15-pro") == 25
    assert dit.budgets.phone_limit("galaxy-s24") is None and not cfg.allow_errors
    assert cfg.out == (tmp_path / "build" / "mobilekit").resolve()


def test_pyproject_table(tmp_path):
    text = "[project]\nname='x'\n" + GOOD.replace("[build]", "[tool.mobilekit.build]").replace(
        "[budgets]", "[tool.mobilekit.budgets]").replace("[models.", "[tool.mobilekit.models.")
    cfg = load_build_config(_write(tmp_path, text, "pyproject.toml"))
    assert [m.name for m in cfg.models] == ["dit", "gan"]
    with pytest.raises(ConfigError, match=r"\[tool.mobilekit\]"):
        load_build_config(_write(tmp_path / "..", "[project]\nname='y'\n", "pyproject.toml"))


@pytest.mark.parametrize("old, new, needle, line", [
    ('spec = "builtin:gan-tiny"', 'spec = "builtin:gan-tiny"\nprecison = ["fp32"]', "unknown key 'precison' in [models.gan]", 16),
    ('host_latency_ms = 50', 'host_latency_ms = 50\nlatnecy = 3', "unknown key 'latnecy' in [budgets]", 8),
    ('host_latency_ms = 50', 'latency_ms = 50', "latency_ms in [budgets] is ambiguous", 7),
    ('pixel-8 = 40', 'pixle-8 = 40', "unknown target 'pixle-8'", 8),
    ('size_mb = 4', 'size_mb = 4\nlatency_stat = "p42"', "unknown latency statistic 'p42'", 10),
    ('"pixel-8"]', '"pixle-8"]', "unknown target 'pixle-8'", 3),
    ('"int8"]', '"int9"]', "unknown precision 'int9' in [build]", 4),
    ('formats = ["tflite"]', 'formats = ["tflight"]', "unknown format 'tflight' in [models.gan]", 16),
    ('size_mb = 4', 'size_mb = -4', "size_mb in [budgets] must be a number >= 0", 9),
    ('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "int8"]\nallow_errors = ["latency"]',
     "unknown allow_error 'latency' in [build]", 5),
    ('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "int8"]\nmeasure = false',
     "models.dit has host_latency_ms but [build] measure = false", 5),
])
def test_bad_values_name_key_and_line(tmp_path, old, new, needle, line):
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_build_config(path)
    assert needle in str(info.value)
    assert f"{path}:{line}" in str(info.value)


def test_no_models_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="names no model"):
        load_build_config(_write(tmp_path, "[build]\ntargets=['pixel-8']\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_build_config(_write(tmp_path, "[build\n"))
    with pytest.raises(ConfigError, match="has no targets"):
        load_build_config(_write(tmp_path, "[models.a]\nspec='builtin:dit-tiny'\n"))


def test_image_output_and_its_budget(tmp_path):
    text = GOOD.replace('formats = ["tflite"]', 'formats = ["tflite"]\nimage_output = [0, 1]').replace(
        "size_mb = 4", "size_mb = 4\nmin_image_psnr_db = 30")
    dit, gan = load_build_config(_write(tmp_path, text)).models
    assert gan.image is not None and (gan.image.low, gan.image.high) == (0.0, 1.0) and dit.image is None
    assert gan.budgets.min_image_psnr_db == 30
    bad = GOOD.replace('formats = ["tflite"]', 'formats = ["tflite"]\nimage_output = "bright"')
    with pytest.raises(ConfigError,
                       match=r"image_output in \[models.gan\]: cannot read image output 'bright'.*mobilekit.toml:17"):
        load_build_config(_write(tmp_path, bad))
