"""The Qualcomm AI Hub runner against a fake ``qai-hub`` client replaying recorded client responses.

Fixtures and where they came from: tests/fixtures/qaihub/SOURCES.md. Expected numbers are read from
the fixture file (µs → ms, bytes → MiB), not typed in.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mobilekit.errors import ConfigError, DeviceError
from mobilekit.profiling.qaihub import AIHUB_DEVICES, profile_qaihub, report_from_profile, resolve_device

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "qaihub"


def _recorded_profile() -> dict[str, Any]:
    """The recorded ``download_profile()`` dict, with ``*_range`` values as tuples as the client returns them."""
    profile = json.loads((FIXTURES / "profile_tflite_client_test.json").read_text())
    summary = profile["execution_summary"]
    for key, value in summary.items():
        if key.endswith("_range") and isinstance(value, list):
            summary[key] = tuple(value)
    return profile


class FakeStatus:
    """``qai_hub.JobStatus``: ``code`` (state name), ``message``, ``success``, ``failure``."""

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code, self.message = code, message

    @property
    def success(self) -> bool:
        return self.code == "SUCCESS"

    @property
    def failure(self) -> bool:
        return self.code == "FAILED"


class FakeJob:
    def __init__(self, job_id: str, status: FakeStatus, profile: dict[str, Any] | None = None,
                 target_model: Any = None, device: Any = None, wait_raises: Exception | None = None) -> None:
        self.job_id = job_id
        self.url = f"https://workbench.aihub.qualcomm.com/jobs/{job_id}/"
        self._status, self._profile, self._target_model = status, profile, target_model
        self.device = device
        self.wait_raises = wait_raises
        self.waited: list[Any] = []

    def wait(self, timeout: int | None = None) -> FakeStatus:
        self.waited.append(timeout)
        if self.wait_raises is not None:
            raise self.wait_raises
        return self._status

    def get_status(self) -> FakeStatus:
        return self._status

    def download_profile(self) -> dict[str, Any]:
        assert self._profile is not None, "download_profile on a job without a profile"
        return self._profile

    def get_target_model(self) -> Any:
        return self._target_model


class FakeClient:
    """The parts of ``qai_hub`` the runner calls; records every submit (an upload in the real client)."""

    DEVICES = {"Samsung Galaxy S24 (Family)", "Samsung Galaxy S22 5G", "Snapdragon 8 Elite Gen 5 QRD"}

    def __init__(self, profile_status: FakeStatus | None = None, compile_status: FakeStatus | None = None,
                 profile: dict[str, Any] | None = None, wait_raises: Exception | None = None) -> None:
        self.profile_status = profile_status or FakeStatus("SUCCESS")
        self.compile_status = compile_status or FakeStatus("SUCCESS")
        self.profile = _recorded_profile() if profile is None else profile
        self.wait_raises = wait_raises
        self.submits: list[tuple[str, dict[str, Any]]] = []
        self.jobs: list[FakeJob] = []

    def Device(self, name: str) -> Any:  # noqa: N802 - the qai_hub module's class name
        return SimpleNamespace(name=name, os="", attributes=[])

    def get_devices(self, name: str = "", os: str = "", attributes: Any = ()) -> list[Any]:
        if name not in self.DEVICES:
            return []
        return [SimpleNamespace(name=name, os="14",
                                attributes=["chipset:qualcomm-snapdragon-8gen3", "os:android", "vendor:samsung"])]

    def submit_compile_job(self, **kwargs: Any) -> FakeJob:
        self.submits.append(("compile", kwargs))
        job = FakeJob("jcompile1", self.compile_status, target_model=SimpleNamespace(model_id="mcompiled"))
        self.jobs.append(job)
        return job

    def submit_profile_job(self, **kwargs: Any) -> FakeJob:
        self.submits.append(("profile", kwargs))
        ran_on = SimpleNamespace(name="Samsung Galaxy S24", os="14",
                                 attributes=["chipset:qualcomm-snapdragon-8gen3", "os:android"])
        job = FakeJob("jprofile1", self.profile_status, profile=self.profile, device=ran_on,
                      wait_raises=self.wait_raises)
        self.jobs.append(job)
        return job


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A token in the client's own config file (``$QAIHUB_CLIENT_INI``), none in the environment."""
    ini = tmp_path / "client.ini"
    ini.write_text("[api]\napi_token = test-token\napi_url = https://workbench.aihub.qualcomm.com\n"
                   "web_url = https://workbench.aihub.qualcomm.com\nverbose = True\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    monkeypatch.delenv("QAI_HUB_API_TOKEN", raising=False)
    return "test-token"


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing" / "client.ini"))
    monkeypatch.delenv("QAI_HUB_API_TOKEN", raising=False)


def _artifact(tmp_path: Path, name: str = "model.tflite") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\x00\x00\x00\x00TFL3" + b"\x00" * 56)
    return path


def test_report_numbers_are_the_recorded_profile(tmp_path: Path, token: str) -> None:
    from mobilekit.profiling.report import validate

    recorded = json.loads((FIXTURES / "profile_tflite_client_test.json").read_text())
    summary, detail = recorded["execution_summary"], recorded["execution_detail"]
    client = FakeClient()
    path = _artifact(tmp_path)
    r = profile_qaihub(path, device="galaxy-s24", client=client)

    # one upload, of this file, to the mapped device, no compile job for a .tflite
    assert [kind for kind, _ in client.submits] == ["profile"]
    sent = client.submits[0][1]
    assert sent["model"] == str(path) and sent["device"].name == AIHUB_DEVICES["galaxy-s24"]
    assert r.source == "device" and r.format == "tflite" and r.runtime == "qai-hub:tflite"
    assert r.target == "galaxy-s24" and r.stop_reason == "fixed"
    # times: all_inference_times (µs) → samples (ms); the estimate is only in the notes
    runs_ms = [t / 1000 for t in summary["all_inference_times"]]
    assert r.samples_ms == pytest.approx(runs_ms)
    assert r.min_ms == pytest.approx(min(runs_ms)) and r.max_ms == pytest.approx(max(runs_ms))
    assert r.mean_ms == pytest.approx(sum(runs_ms) / len(runs_ms))
    assert r.p50_ms == pytest.approx(sum(sorted(runs_ms)) / 2)  # median of two runs
    assert any(f"{summary['estimated_inference_time'] / 1000:g} ms" in n for n in r.notes)
    assert r.cold_load_ms == pytest.approx(summary["first_load_time"] / 1000)
    assert r.peak_memory_mb == pytest.approx(summary["inference_memory_peak_range"][1] / 2**20)
    # per-op rows: one per timed layer, with its compute unit
    assert [(o["name"], o["op"], o["compute_unit"], o["delegated"]) for o in r.per_op] == [
        (d["name"], d["type"], d["compute_unit"], d["compute_unit"] != "CPU") for d in detail]
    assert [o["ms"] for o in r.per_op] == pytest.approx([d["execution_time"] / 1000 for d in detail])
    assert r.per_op_source == "qai-hub"
    # the device that ran it and the job the user can open
    assert r.device["name"] == "Samsung Galaxy S24" and r.device["hub_chipset"] == "qualcomm-snapdragon-8gen3"
    assert r.device["hub_profile_job"] == "jprofile1"
    assert r.device["hub_profile_url"] == "https://workbench.aihub.qualcomm.com/jobs/jprofile1/"
    assert any("jobs/jprofile1/" in n for n in r.notes)
    assert r.artifact_size_bytes == path.stat().st_size
    validate(r.to_dict())
    validate(json.loads(json.dumps(r.to_dict())))  # as written to disk


def test_estimated_time_only_when_no_run_times(tmp_path: Path) -> None:
    """Profiles before ProfileDetail v1.2 have no all_inference_times: the estimate alone, said so."""
    from mobilekit.profiling.report import validate

    profile = _recorded_profile()
    del profile["execution_summary"]["all_inference_times"]
    estimated = profile["execution_summary"]["estimated_inference_time"]
    r = report_from_profile(profile, artifact=tmp_path / "m.tflite", format_="tflite", runtime="qai-hub:tflite",
                            device={"name": "Samsung Galaxy S24 (Family)"})
    assert r.p50_ms == pytest.approx(estimated / 1000)
    assert r.samples_ms == () and r.mean_ms is None and r.min_ms is None
    assert any("estimated_inference_time only" in n for n in r.notes)
    validate(r.to_dict())


def test_profile_without_any_time_is_a_device_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no inference time"):
        report_from_profile({"execution_summary": {}, "execution_detail": []}, artifact=tmp_path / "m.tflite",
                            format_="tflite", runtime="qai-hub:tflite", device={"name": "x"})


def test_failed_job_is_a_device_error_with_message_and_url(tmp_path: Path, token: str) -> None:
    failed = json.loads((FIXTURES / "job_failed_client_test.json").read_text())
    client = FakeClient(profile_status=FakeStatus(failed["state"], failed["message"]))
    with pytest.raises(DeviceError) as info:
        profile_qaihub(_artifact(tmp_path), device="Samsung Galaxy S24 (Family)", client=client)
    assert failed["message"] in str(info.value)
    assert info.value.where == "https://workbench.aihub.qualcomm.com/jobs/jprofile1/"


def test_client_exception_on_submit_is_a_device_error(tmp_path: Path, token: str) -> None:
    class UserError(Exception):  # stands for qai_hub.UserError
        pass

    client = FakeClient()

    def refuse(**kwargs: Any) -> Any:
        raise UserError("Failed to authenticate.")

    client.submit_profile_job = refuse  # type: ignore[method-assign]
    with pytest.raises(DeviceError, match="refused the profile job: Failed to authenticate") as info:
        profile_qaihub(_artifact(tmp_path), device="galaxy-s24", client=client)
    assert "UserError" in str(info.value.where)


def test_wait_timeout_is_a_device_error(tmp_path: Path, token: str) -> None:
    client = FakeClient(wait_raises=TimeoutError("timed out"))
    with pytest.raises(DeviceError, match="did not finish within 5 s"):
        profile_qaihub(_artifact(tmp_path), device="galaxy-s24", client=client, timeout=5)
    assert client.jobs[0].waited == [5]


def test_no_token_is_refused_before_upload(tmp_path: Path, no_token: None) -> None:
    client = FakeClient()
    with pytest.raises(ConfigError, match="no Qualcomm AI Hub API token") as info:
        profile_qaihub(_artifact(tmp_path), device="galaxy-s24", client=client)
    assert "qai-hub configure --api_token" in str(info.value)
    assert client.submits == []


def test_token_from_environment_or_argument(tmp_path: Path, no_token: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilekit.profiling.qaihub import find_api_token

    assert find_api_token("abc") == ("abc", "api_token")
    monkeypatch.setenv("QAI_HUB_API_TOKEN", "envtok")
    assert find_api_token() == ("envtok", "QAI_HUB_API_TOKEN")
    client = FakeClient()
    profile_qaihub(_artifact(tmp_path), device="galaxy-s24", client=client)
    assert len(client.submits) == 1


def test_config_without_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ini = tmp_path / "client.ini"
    ini.write_text("[api]\napi_url = https://workbench.aihub.qualcomm.com\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    monkeypatch.delenv("QAI_HUB_API_TOKEN", raising=False)
    client = FakeClient()
    with pytest.raises(ConfigError, match="no \\[api\\] api_token"):
        profile_qaihub(_artifact(tmp_path), device="galaxy-s24", client=client)
    assert client.submits == []


@pytest.mark.parametrize("name, reason", [("model.pte", "ExecuTorch"), ("model.mlpackage", "Core ML")])
def test_unprofilable_format_is_refused_with_reason(tmp_path: Path, token: str, name: str, reason: str) -> None:
    client = FakeClient()
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match=reason) as info:
        profile_qaihub(path, device="galaxy-s24", client=client)
    assert "TFLite" in str(info.value) and client.submits == []


def test_unknown_device_is_refused_before_upload(tmp_path: Path, token: str) -> None:
    client = FakeClient()
    with pytest.raises(DeviceError, match="no device named 'Nokia 3310'"):
        profile_qaihub(_artifact(tmp_path), device="Nokia 3310", client=client)
    assert client.submits == []


def test_family_name_accepted_when_the_list_has_its_base_phone(tmp_path: Path, token: str) -> None:
    client = FakeClient()
    client.DEVICES = {"Samsung Galaxy S25"}  # the device list names the phone, not its "(Family)"
    r = profile_qaihub(_artifact(tmp_path), device="galaxy-s25", client=client)
    assert client.submits[0][1]["device"].name == "Samsung Galaxy S25 (Family)"
    assert r.target == "galaxy-s25"


def test_target_not_on_aihub_is_refused(tmp_path: Path, token: str) -> None:
    client = FakeClient()
    with pytest.raises(ConfigError, match="pixel-8 .*Tensor"):
        profile_qaihub(_artifact(tmp_path), device="pixel-8", client=client)
    assert client.submits == []


def test_device_resolution() -> None:
    assert resolve_device("galaxy-s24") == ("Samsung Galaxy S24 (Family)", "galaxy-s24")
    assert resolve_device(None, "galaxy-s22") == ("Samsung Galaxy S22 5G", "galaxy-s22")
    assert resolve_device("Snapdragon 8 Elite Gen 5 QRD") == ("Snapdragon 8 Elite Gen 5 QRD", None)
    with pytest.raises(ConfigError, match="no AI Hub device"):
        resolve_device(None, None)


def test_compile_job_then_profile_of_its_target_model(tmp_path: Path, token: str) -> None:
    client = FakeClient()
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    (tmp_path / "model.onnx.data").write_bytes(b"weights")
    uploaded: list[list[str]] = []
    orig = client.submit_compile_job

    def spy(**kwargs: Any) -> FakeJob:
        staged = Path(kwargs["model"])  # the ONNX + external data directory AI Hub expects
        uploaded.append(sorted(p.name for p in staged.iterdir()) if staged.is_dir() else [staged.name])
        return orig(**kwargs)

    client.submit_compile_job = spy  # type: ignore[method-assign]
    r = profile_qaihub(path, device="galaxy-s24", client=client, compile_to="qnn_dlc",
                       compile_options="--quantize_full_type float16")
    assert [k for k, _ in client.submits] == ["compile", "profile"]
    assert client.submits[0][1]["options"] == "--target_runtime qnn_dlc --quantize_full_type float16"
    assert uploaded == [["model.onnx", "model.onnx.data"]]
    assert client.submits[1][1]["model"].model_id == "mcompiled"
    assert r.runtime == "qai-hub:qnn_dlc" and r.format is None
    assert r.device["hub_compile_job"] == "jcompile1"
    assert r.artifact_size_bytes == len(b"onnx") + len(b"weights")


def test_failed_compile_job_stops_before_profile(tmp_path: Path, token: str) -> None:
    client = FakeClient(compile_status=FakeStatus("FAILED", "Unsupported op"))
    with pytest.raises(DeviceError, match="compile job jcompile1 failed: Unsupported op"):
        profile_qaihub(_artifact(tmp_path), device="galaxy-s24", client=client, compile_to="qnn_dlc")
    assert [k for k, _ in client.submits] == ["compile"]


def test_unknown_compile_runtime_is_refused(tmp_path: Path, token: str) -> None:
    client = FakeClient()
    with pytest.raises(ConfigError, match="unknown AI Hub target runtime"):
        profile_qaihub(_artifact(tmp_path), device="galaxy-s24", client=client, compile_to="coreml")
    assert client.submits == []


def test_cli_device_qaihub(tmp_path: Path, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--device qaihub:NAME`` and ``--device qaihub --target T`` reach the runner; the report is written."""
    from typer.testing import CliRunner

    import mobilekit.profiling.qaihub as qaihub
    from mobilekit.cli.main import app

    calls: list[dict[str, Any]] = []
    real = qaihub.profile_qaihub

    def fake(artifact: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(artifact, client=FakeClient(), **{k: v for k, v in kwargs.items() if k != "client"})

    monkeypatch.setattr(qaihub, "profile_qaihub", fake)
    path = _artifact(tmp_path)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["profile", str(path), "--device", "qaihub:Samsung Galaxy S24 (Family)",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert calls[-1]["device"] == "Samsung Galaxy S24 (Family)"
    doc = json.loads(out.read_text())
    assert doc["reports"][0]["runtime"] == "qai-hub:tflite"
    res = CliRunner().invoke(app, ["profile", str(path), "--device", "qaihub", "--target", "galaxy-s24"])
    assert res.exit_code == 0, res.output
    assert calls[-1]["device"] is None and calls[-1]["target"] == "galaxy-s24"
