"""Device profiles (Targets): every shipped file loads, is sourced and consistent; the loader
rejects bad files naming the key; lookups suggest near names; ``mobilekit targets`` lists them."""

from __future__ import annotations

import csv
import importlib.resources
import json
from collections import Counter
from pathlib import Path

import pytest

from mobilekit.errors import ConfigError
from mobilekit.recipe import Recipe
from mobilekit.targets import (
    COMPUTE_KINDS,
    FORMATS,
    PEAK_PRECISIONS,
    PRECISIONS,
    get_target,
    list_targets,
    load_target_file,
)

PROFILE_DIR = Path(str(importlib.resources.files("mobilekit.profiles")))
PROFILE_FILES = sorted(PROFILE_DIR.glob("*.toml"))
from mobilekit.estimation.fit import CALIBRATION_CSV  # noqa: E402
REQUIRED = ["iphone-12-pro", "iphone-15-pro", "iphone-16-pro", "iphone-17-pro", "pixel-8", "pixel-10",
            "galaxy-s24", "galaxy-s25"]


def test_required_profiles_ship():
    names = {t.name for t in list_targets()}
    assert set(REQUIRED) <= names
    assert len(PROFILE_FILES) == len(names) >= 14


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_file_loads_and_name_matches_file(path):
    target = load_target_file(path)
    assert target.name == path.stem
    assert target.platform in ("ios", "android")
    assert target.unit("cpu") is not None
    assert all(u.kind in COMPUTE_KINDS for u in target.compute_units)


def test_list_is_sorted_unique_and_aliases_unique():
    targets = list_targets()
    names = [t.name for t in targets]
    assert names == sorted(names)
    keys = Counter(k.lower() for t in targets for k in (t.name, *t.aliases))
    assert [k for k, n in keys.items() if n > 1] == []
    assert list_targets()[0] is targets[0]  # cached


@pytest.mark.parametrize("target", list_targets(), ids=lambda t: t.name)
def test_every_number_has_a_source(target):
    for key in ("year", "ram_gb", "memory_bandwidth_gbps"):
        if getattr(target, key) is not None:
            assert "http" in target.sources[key], f"{target.name}: sources.{key} has no URL"
    # A missing bandwidth must still say why it is missing.
    assert target.sources.get("memory_bandwidth_gbps")
    for unit in target.compute_units:
        assert set(unit.peak_gops) <= set(PEAK_PRECISIONS)
        if unit.peak_gops:
            assert "http" in unit.source, f"{target.name} {unit.kind}: peaks without a URL in source"
            assert all(v > 0 for v in unit.peak_gops.values())
        else:
            assert unit.source, f"{target.name} {unit.kind}: say why no peak is given"
    if target.platform == "ios":
        assert target.coreml_deployment_target and target.sources["coreml_deployment_target"]


@pytest.mark.parametrize("target", list_targets(), ids=lambda t: t.name)
def test_recipes_fit_formats(target):
    assert target.recipes[0] == target.default_recipe
    assert len(set(target.recipes)) == len(target.recipes)
    for recipe in target.recipes:
        parsed = Recipe.parse(recipe)
        assert parsed.name == recipe or parsed.name == recipe.replace("executorch-", "executorch-xnnpack-", 1)
        assert parsed.format in target.formats and parsed.format in FORMATS
        assert parsed.delegate is None or parsed.delegate in target.formats[parsed.format]
        assert parsed.precision in PRECISIONS
    if target.platform == "ios":
        assert "coreml" in target.formats
    else:
        assert "coreml" not in target.formats and target.coreml_deployment_target is None


def test_derived_cpu_peaks_show_their_arithmetic():
    for target in list_targets():
        cpu = target.unit("cpu")
        assert cpu is not None
        if "fp32" in cpu.peak_gops:
            assert f"= {cpu.peak_gops['fp32']} GFLOP/s" in cpu.source, target.name
            assert cpu.peak_gops["fp16"] == pytest.approx(2 * cpu.peak_gops["fp32"], abs=0.11)


def test_neural_engine_is_an_npu_reached_by_coreml():
    ane = get_target("iphone-15-pro").unit("npu")
    assert ane is not None and ane.name.startswith("Apple Neural Engine")
    assert "coreml" in ane.delegates
    assert ane.peak_gops["int8"] == 35000.0


@pytest.mark.parametrize("query, expected", [
    ("pixel-8", "pixel-8"), ("PIXEL-8", "pixel-8"), ("Google Pixel 8", "pixel-8"),
    ("Samsung Galaxy S24", "galaxy-s24"), ("Galaxy S24 (Snapdragon 8 Gen 3)", "galaxy-s24"),
    ("  iPhone 15 Pro Max ", "iphone-15-pro"), ("Snapdragon 8 Elite Gen 5 QRD", "snapdragon-8-elite-gen5-qrd"),
])
def test_get_target_names_and_aliases(query, expected):
    assert get_target(query).name == expected


def test_unknown_target_suggests_nearest():
    with pytest.raises(ConfigError) as info:
        get_target("pixel8")
    err = info.value
    assert "'pixel8'" in str(err) and "pixel-8" in str(err)
    assert "mobilekit targets" in err.fix
    with pytest.raises(ConfigError, match="iphone-15-pro"):
        get_target("iphone-15")
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        get_target("toaster-9000")


def test_unit_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="tpu"):
        get_target("pixel-8").unit("tpu")


def test_profile_with_an_unparseable_recipe_names_file_and_key(tmp_path):
    text = (PROFILE_DIR / "pixel-8.toml").read_text()
    bad = tmp_path / "pixel-8.toml"
    bad.write_text(text.replace('"tflite-fp16"', '"tflite-gpu-fp16"', 1))
    with pytest.raises(ConfigError, match=r"recipes\[\d\].*precision"):
        load_target_file(bad)


# ---- malformed files: each edit of a real profile must fail naming the file and the key ----

BASE = (PROFILE_DIR / "pixel-8.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize("old, new, key", [
    ('platform = "android"', 'platform = "windows"', "platform"),
    ('platform = "android"\n', "", "platform"),
    ("year = 2023", 'year = "2023"', "year"),
    ("ram_gb = 8", "ram_gb = -8", "ram_gb"),
    ('default_recipe = "executorch-xnnpack-int8-dynamic"', 'default_recipe = "executorch-qnn-int8-static"',
     "recipes"),
    ('  "tflite-fp16",', '  "tflite-hexagon-fp16",', "recipes[2]"),
    ('  "onnx-fp32",', '  "onnx-int4",', "recipes[5]"),
    ('onnx = ["cpu", "nnapi"]', 'onnx = ["cpu", "nnapi"]\nncnn = ["cpu"]', "formats.ncnn"),
    ("peak_gops = {fp32 = 244.8,", "peak_gops = {fp32 = 0,", "compute_units[0].peak_gops.fp32"),
    ("peak_gops = {fp32 = 244.8,", "peak_gops = {bf16 = 1.0, fp32 = 244.8,", "compute_units[0].peak_gops.bf16"),
    ('kind = "gpu"', 'kind = "dsp"', "compute_units[1].kind"),
    ('ram_gb = "GSMArena', 'ram_gbx = "GSMArena', "sources.ram_gb"),
    ('name = "pixel-8"', 'name = "pixel-eight"', "name"),
    ("schema_version = 1", "schema_version = 2", "schema_version"),
    ('notes = "', 'coreml_deployment_target = "iOS17"\nnotes = "', "coreml_deployment_target"),
])
def test_malformed_file_names_its_key(tmp_path, old, new, key):
    assert old in BASE, old
    path = tmp_path / "pixel-8.toml"
    path.write_text(BASE.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_target_file(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert info.value.where == f"{path}:{key}"


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("name = [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_target_file(bad)
    with pytest.raises(ConfigError, match="cannot read profile"):
        load_target_file(tmp_path / "absent.toml")


# ---- the calibration data names devices the latency estimator needs profiles for ----

def test_calibration_devices_with_many_rows_resolve():
    with CALIBRATION_CSV.open(newline="", encoding="utf-8") as f:
        counts = Counter(row["device"] for row in csv.DictReader(f))
    frequent = [device for device, n in counts.items() if n >= 5]
    assert frequent
    for device in frequent:
        assert get_target(device).name


# ---- CLI ----

def _cli_app():
    try:
        from mobilekit.cli.main import app
    except ModuleNotFoundError as exc:  # another command module is not written yet
        if not (exc.name or "").startswith("mobilekit.cli."):
            raise
        import typer

        from mobilekit.cli import targets_cmd

        app = typer.Typer()
        app.callback()(lambda: None)
        targets_cmd.register(app)
    return app


def test_cli_targets_json_lists_all():
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli_app(), ["targets", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["name"] for d in data] == [t.name for t in list_targets()]
    s24 = next(d for d in data if d["name"] == "galaxy-s24")
    assert s24["platform"] == "android" and s24["default_recipe"] == get_target("galaxy-s24").default_recipe
    assert s24["compute_units"][0]["peak_gops"]["int8"] > 0


def test_cli_targets_platform_filter_and_table():
    from typer.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(_cli_app(), ["targets", "--format", "json", "--platform", "ios"])
    assert result.exit_code == 0, result.output
    assert {d["platform"] for d in json.loads(result.stdout)} == {"ios"}
    table = runner.invoke(_cli_app(), ["targets", "--platform", "android"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "pixel-8" in table.stdout and "iphone" not in table.stdout
    bad = runner.invoke(_cli_app(), ["targets", "--platform", "windows"])
    assert bad.exit_code != 0
