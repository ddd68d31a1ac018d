import json

import pytest

from mobilekit.artifact import Artifact, Manifest, TensorSpec, sha256_of, size_of
from mobilekit.errors import ConfigError
from mobilekit.parity import Parity
from mobilekit.recipe import Recipe


def _artifact(path="m.onnx"):
    return Artifact(path=path, targets=("pixel-8",), recipe=Recipe.parse("onnx-fp32"), sha256="ab", size_bytes=3,
                    inputs=(TensorSpec(name="x", shape=(1, 3), dtype="float32"),),
                    outputs=(TensorSpec(name="y", shape=(1, 2), dtype="float32"),),
                    parity=Parity(status="pass", runtime="onnxruntime", cosine=1.0), export_seconds=1.5)


def test_manifest_round_trip(tmp_path):
    m = Manifest(model="tiny", artifacts=(_artifact(),), toolchain={"torch": "2"}, created="now")
    m.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back.artifacts == m.artifacts and back.root == tmp_path
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["schema_version"] == 1 and data["artifacts"][0]["recipe_name"] == "onnx-fp32"


def test_manifest_with_other_schema_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99, "model": "x", "artifacts": []}))
    with pytest.raises(ConfigError, match="schema_version"):
        Manifest.read(tmp_path)


def test_hash_and_size_of_directories(tmp_path):
    d = tmp_path / "pkg.mlpackage"
    (d / "Data").mkdir(parents=True)
    (d / "Data" / "w.bin").write_bytes(b"12345")
    (d / "Manifest.json").write_text("{}")
    assert size_of(d) == 7
    h = sha256_of(d)
    (d / "Data" / "w.bin").write_bytes(b"12346")
    assert sha256_of(d) != h


def test_artifact_label_names_the_variant_only_when_the_file_does_not():
    from mobilekit.artifact import artifact_label

    assert artifact_label("gan-coreml-fp16-model.mlpackage", None) == "gan-coreml-fp16-model.mlpackage"
    assert artifact_label("gan-coreml-fp16-model.mlpackage", "sepia") == "gan-coreml-fp16-model.mlpackage · sepia"
    assert artifact_label("sub/gan-executorch-xnnpack-fp32-sepia.pte", "sepia") == "gan-executorch-xnnpack-fp32-sepia.pte"
