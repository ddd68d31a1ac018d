"""Fixtures for tests that drive a real phone. Each skips with the reason when the phone or tool is missing.

Run with ``pytest device_tests -m device``. Android needs ``adb`` and one attached phone, plus
Android arm64 runner binaries: ``MOBILEKIT_BENCHMARK_MODEL`` (LiteRT ``benchmark_model``) and/or
``MOBILEKIT_EXECUTOR_RUNNER`` (ExecuTorch ``executor_runner``), or those names on PATH. iOS needs
macOS, Xcode (``xcrun devicectl``), a connected iPhone and ``MOBILEKIT_IOS_TEAM`` (signing team id).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from mobilekit.errors import DeviceError


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def adb():
    from mobilekit.profiling.android import Adb, find_adb

    try:
        find_adb()
    except DeviceError as exc:
        pytest.skip(f"no adb: {exc}")
    try:
        return Adb(os.environ.get("ANDROID_SERIAL"))
    except DeviceError as exc:
        pytest.skip(f"no Android phone: {exc}")


def _runner(tool: str, env: str) -> Path:
    found = os.environ.get(env) or shutil.which(tool)
    if not found or not Path(found).is_file():
        pytest.skip(f"no Android {tool} binary: set {env} to an Android arm64 build")
    return Path(found)


@pytest.fixture(scope="session")
def benchmark_model_bin() -> Path:
    return _runner("benchmark_model", "MOBILEKIT_BENCHMARK_MODEL")


@pytest.fixture(scope="session")
def executor_runner_bin() -> Path:
    return _runner("executor_runner", "MOBILEKIT_EXECUTOR_RUNNER")


@pytest.fixture(scope="session")
def iphone():
    if sys.platform != "darwin":
        pytest.skip(f"iPhone profiling needs macOS with Xcode; this host is {sys.platform}")
    from mobilekit.profiling.ios import connected_iphones

    try:
        phones = connected_iphones()
    except DeviceError as exc:
        pytest.skip(f"iOS tools unavailable: {exc}")
    if not phones:
        pytest.skip("no iPhone is connected (xcrun devicectl list devices)")
    if not os.environ.get("MOBILEKIT_IOS_TEAM"):
        pytest.skip("set MOBILEKIT_IOS_TEAM to an Apple development team id to sign the modelrunner app")
    return phones[0]


@pytest.fixture(scope="session")
def convnet_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny conv net as .tflite and .pte (whichever backends are installed)."""
    import torch

    from tests.fixtures.models import tiny_convnet

    out = tmp_path_factory.mktemp("device_artifacts")
    model, inputs = tiny_convnet()
    paths: dict[str, Path] = {}
    try:
        import litert_torch

        litert_torch.convert(model, inputs).export(str(out / "convnet.tflite"))
        paths["tflite"] = out / "convnet.tflite"
    except ImportError:
        pass
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        prog = to_edge_transform_and_lower(torch.export.export(model, inputs),
                                           partitioner=[XnnpackPartitioner()]).to_executorch()
        (out / "convnet.pte").write_bytes(prog.buffer)
        paths["pte"] = out / "convnet.pte"
    except ImportError:
        pass
    return paths
