"""Content-addressed export cache.

An entry is a directory named by the export's key (model weights + traced graph + recipe +
toolchain versions + inputs) holding the artifact files and ``entry.json``. Entries appear
by an atomic rename of a finished work directory, so a killed export never leaves a partial
entry; its abandoned work directory (``.incoming-<pid>-…``) is swept by the next export.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

_INCOMING = re.compile(r"^\.incoming-(\d+)-[0-9a-f]+$")


def default_cache_dir() -> Path:
    """``$MOBILEKIT_CACHE_DIR``, else ``~/.cache/mobilekit``."""
    env = os.environ.get("MOBILEKIT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mobilekit"


def hash_tensors(tensors: Iterable[tuple[str, torch.Tensor]], h: Any = None) -> Any:
    """Feed named tensors (name, dtype, shape, bytes) into a sha256 object and return it."""
    h = h or hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1) first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h


def model_fingerprint(model: torch.nn.Module, graph_code: str) -> str:
    """Hash of a model's weights and buffers plus its traced graph."""
    h = hashlib.sha256(graph_code.encode())
    state = model.state_dict(keep_vars=False)
    return hash_tensors(sorted(state.items()), h).hexdigest()


def inputs_fingerprint(example_inputs: Sequence[torch.Tensor], calibration: Sequence[Sequence[torch.Tensor]] | None) -> str:
    """Hash of example inputs and calibration batches (they shape parity and int8 scales)."""
    h = hash_tensors((f"in{i}", t) for i, t in enumerate(example_inputs))
    for b, batch in enumerate(calibration or ()):
        hash_tensors(((f"cal{b}.{i}", t) for i, t in enumerate(batch)), h)
    return h.hexdigest()


def cache_key(model_fp: str, inputs_fp: str, recipe: dict[str, Any], toolchain: dict[str, Any],
              options: dict[str, Any] | None = None) -> str:
    """The content address of one export."""
    blob = json.dumps({"model": model_fp, "inputs": inputs_fp, "recipe": recipe, "toolchain": toolchain,
                       "options": options or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ExportCache:
    """A directory of finished exports keyed by content."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def entry(self, key: str) -> Path:
        """Directory of entry ``key`` (may not exist)."""
        return self.root / key[:2] / key

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The record of entry ``key`` if it is complete, else None."""
        meta = self.entry(key) / "entry.json"
        if not meta.is_file():
            return None
        try:
            return json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def new_workdir(self) -> Path:
        """A fresh work directory inside the cache (same filesystem, so the final rename is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        path = self.root / f".incoming-{os.getpid()}-{os.urandom(4).hex()}"
        path.mkdir()
        return path

    def commit(self, workdir: Path, key: str, record: dict[str, Any]) -> Path:
        """Write ``entry.json`` and rename ``workdir`` into place as entry ``key``."""
        (workdir / "entry.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        dest = self.entry(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # another process finished the same export first
            shutil.rmtree(workdir, ignore_errors=True)
            return dest
        os.replace(workdir, dest)
        return dest

    def sweep(self) -> None:
        """Remove work directories of processes that no longer run."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            m = _INCOMING.match(p.name)
            if m and not _alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
