"""benchmarks/real_size_bench.py's sampler: which child is which, and forks that never exec'd."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mobilekit._io import names_in_file
from tests.fixtures.benches import load_bench

psutil = pytest.importorskip("psutil")
bench = load_bench("real_size_bench")

# Holds 300 MB, forks a child that sleeps without exec (it shares the parent's pages), and while it
# lives runs /bin/sleep (a child that exec'd).
_PARENT = """
import os, subprocess, time
big = bytearray(300 * 2**20)
for i in range(0, len(big), 4096):
    big[i] = 1
pid = os.fork()
if pid == 0:
    time.sleep(2.0)
    os._exit(0)
subprocess.run(["sleep", "1"])
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork semantics and /proc are Linux's")
def test_a_fork_that_never_exec_d_is_kept_out_of_the_tree() -> None:
    code, peaks = bench._run_sampled([sys.executable, "-c", _PARENT], timeout=60)
    assert code == 0
    # the fork reads as the parent's whole RSS, though it adds no memory
    assert peaks["peak_rss_unexeced_fork"] > 200 * 2**20
    assert peaks["largest_child_role"] == "sleep", peaks["children"]
    assert peaks["peak_rss_largest_child"] < 100 * 2**20
    assert peaks["peak_rss_process_tree_counting_forks"] > peaks["peak_rss_process_tree"] + 200 * 2**20
    assert peaks["tree_at_peak"][0].startswith("exporter ")


def test_a_runtime_child_is_named_by_its_job(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(json.dumps({"job": "measure", "path": "/x/model.pte"}))
    cmd = ["/venv/bin/python", "-m", "mobilekit.runtime.child", str(tmp_path)]
    assert bench._role(cmd) == "runtime child: measure"
    assert bench._role(["/usr/bin/flatc", "--binary", "x.fbs"]) == "flatc"


def test_names_in_file_finds_a_name_split_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "model.pte"
    path.write_bytes(b"x" * 10 + b"CoreMLBackend" + b"y" * 10)
    assert names_in_file(path, [b"CoreMLBackend", b"QnnBackend"], chunk=16) == {b"CoreMLBackend"}
    assert names_in_file(path, [b"QnnBackend"], chunk=4) == set()
