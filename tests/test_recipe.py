import pytest

from mobilekit.errors import ConfigError
from mobilekit.recipe import Recipe


def test_parse_names_round_trip():
    for name in ["executorch-xnnpack-int8-dynamic", "executorch-coreml-fp16", "coreml-fp16", "tflite-int8-static",
                 "onnx-fp32"]:
        assert Recipe.parse(name).name == name


def test_parse_fills_default_delegate_and_ignores_target_prefix():
    r = Recipe.parse("pixel-8/executorch-fp32")
    assert (r.format, r.delegate, r.precision) == ("executorch", "xnnpack", "fp32")


def test_unknown_precision_suggests_nearest():
    with pytest.raises(ConfigError) as info:
        Recipe.parse("onnx-int8-dynamc")
    assert "int8-dynamic" in str(info.value) and "precision" in str(info.value)


def test_delegate_on_format_without_delegates_is_refused():
    with pytest.raises(ConfigError, match="takes no delegate"):
        Recipe(format="onnx", delegate="xnnpack")


def test_coreml_options_dropped_where_meaningless():
    r = Recipe(format="tflite", precision="fp32", deployment_target="iOS17", compute_units="ALL")
    assert r.deployment_target is None and r.compute_units is None
    assert Recipe(format="coreml", deployment_target="iOS17") != Recipe(format="coreml", deployment_target="iOS18")


def test_dict_round_trip_and_unknown_key():
    r = Recipe.parse("coreml-int8-weight", deployment_target="iOS18", compute_units="CPU_AND_NE")
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ConfigError, match="unknown recipe key"):
        Recipe.from_dict({**r.to_dict(), "bogus": 1})
