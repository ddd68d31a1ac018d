import os
import subprocess
import sys

import torch

from mobilekit.cache import ExportCache, cache_key, inputs_fingerprint, model_fingerprint


def test_fingerprint_changes_with_weights_and_graph():
    m = torch.nn.Linear(3, 2)
    a = model_fingerprint(m, "graph")
    assert a == model_fingerprint(m, "graph")
    assert a != model_fingerprint(m, "other graph")
    with torch.no_grad():
        m.weight[0, 0] += 1
    assert a != model_fingerprint(m, "graph")


def test_key_depends_on_recipe_toolchain_and_inputs():
    base = cache_key("m", inputs_fingerprint((torch.zeros(1),), None), {"format": "onnx"}, {"torch": "1"})
    assert base != cache_key("m", inputs_fingerprint((torch.ones(1),), None), {"format": "onnx"}, {"torch": "1"})
    assert base != cache_key("m", inputs_fingerprint((torch.zeros(1),), None), {"format": "tflite"}, {"torch": "1"})
    assert base != cache_key("m", inputs_fingerprint((torch.zeros(1),), None), {"format": "onnx"}, {"torch": "2"})


def test_commit_is_atomic_and_abandoned_workdirs_are_swept(tmp_path):
    cache = ExportCache(tmp_path)
    wd = cache.new_workdir()
    (wd / "a.bin").write_bytes(b"x")
    assert cache.lookup("k" * 32) is None
    cache.commit(wd, "k" * 32, {"filename": "a.bin"})
    assert cache.lookup("k" * 32) == {"filename": "a.bin"}
    # a work directory left by a killed process is removed by the next export
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".incoming-{dead.stdout.strip()}-deadbeef"
    stale.mkdir()
    live = tmp_path / f".incoming-{os.getpid()}-cafebabe"
    live.mkdir()
    cache.sweep()
    assert not stale.exists() and live.exists()
