import subprocess
import sys

import mobilekit


def test_every_public_name_resolves():
    for name in mobilekit.__all__:
        assert getattr(mobilekit, name) is not None, name


def test_import_is_cheap():
    code = ("import sys, mobilekit; heavy = [m for m in ('torch', 'executorch', 'coremltools', 'ai_edge_litert', "
            "'tensorflow', 'onnxruntime') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_calibrate_is_public_typed_and_documented():
    import inspect

    assert {"calibrate", "CalibrationResult"} <= set(mobilekit.__all__)
    sig = inspect.signature(mobilekit.calibrate)
    assert list(sig.parameters)[:3] == ["reports", "device", "store"]
    assert sig.return_annotation == "CalibrationResult"
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values())
    assert "Example:" in (mobilekit.calibrate.__doc__ or "")
    assert mobilekit.__all__ == sorted(mobilekit.__all__)
