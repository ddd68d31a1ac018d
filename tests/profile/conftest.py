"""Real artifacts of the tiny conv net for the profiling tests (built once per worker)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.fixtures.models import tiny_convnet


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("profile_artifacts")


@pytest.fixture(scope="session")
def onnx_artifact(artifact_dir: Path) -> Path:
    import torch

    model, inputs = tiny_convnet()
    path = artifact_dir / "convnet.onnx"
    torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=False)
    return path


@pytest.fixture(scope="session")
def tflite_artifact(artifact_dir: Path) -> Path:
    litert_torch = pytest.importorskip("litert_torch", reason="pip install 'mobilekit[tflite]'")
    model, inputs = tiny_convnet()
    path = artifact_dir / "convnet.tflite"
    litert_torch.convert(model, inputs).export(str(path))
    return path


@pytest.fixture(scope="session")
def pte_artifact(artifact_dir: Path) -> Path:
    import torch

    pytest.importorskip("executorch", reason="pip install 'mobilekit[executorch]'")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model, inputs = tiny_convnet()
    program = to_edge_transform_and_lower(torch.export.export(model, inputs),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    path = artifact_dir / "convnet.pte"
    path.write_bytes(program.buffer)
    return path


@pytest.fixture(scope="session")
def onnx_report(onnx_artifact: Path):
    from mobilekit.profiling.host import profile

    return profile(onnx_artifact, target="pixel-8", max_seconds=1.0, warmup=2)


def truncate_copy(src: Path, dest: Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``src`` to ``dest`` (a truncated artifact)."""
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


def manifest_for(paths: list[Path], root: Path, targets: list[str]) -> Path:
    """Copy ``paths`` into ``root`` and write a manifest.json describing them."""
    import numpy as np

    from mobilekit.artifact import Artifact, Manifest, TensorSpec, sha256_of, size_of
    from mobilekit.parity import Parity
    from mobilekit.recipe import Recipe

    fmt = {".onnx": "onnx", ".tflite": "tflite", ".pte": "executorch"}
    arts = []
    root.mkdir(parents=True, exist_ok=True)
    for p, t in zip(paths, targets, strict=True):
        dest = root / p.name
        shutil.copy(p, dest)
        arts.append(Artifact(path=p.name, targets=(t,), recipe=Recipe(format=fmt[p.suffix]), sha256=sha256_of(dest),
                             size_bytes=size_of(dest), inputs=(TensorSpec(name="x", shape=(1, 3, 16, 16),
                                                                          dtype=str(np.dtype(np.float32))),),
                             outputs=(TensorSpec(name="y", shape=(1, 4), dtype="float32"),),
                             parity=Parity.not_run("test fixture"), export_seconds=0.0))
    manifest = Manifest(model="convnet", artifacts=tuple(arts))
    out = manifest.write(root)
    json.loads(out.read_text())
    return out
