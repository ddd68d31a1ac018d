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
