"""Atomic file writes: write a temporary sibling, then rename, so a kill leaves no partial file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mobilekit.errors import ConfigError


def ensure_writable_dir(path: Path, *, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check it can be written, or raise ConfigError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mk-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the {what}: {exc.strerror or exc}", where=str(path),
                          fix="choose a writable directory") from exc
    return path


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed onto ``dest``.

    Works for files and directories (an ``.mlpackage`` is a directory). On error the
    temporary is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            old = dest.parent / f".{dest.name}.old-{os.urandom(4).hex()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_bytes_atomic(dest: Path, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically and return ``dest``."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(dest)


def write_text_atomic(dest: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically and return ``dest``."""
    return write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: Path, obj: Any) -> Path:
    """Write ``obj`` as sorted, indented JSON to ``dest`` atomically."""
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def copy_atomic(src: Path, dest: Path) -> Path:
    """Copy a file or directory to ``dest`` atomically."""
    src = Path(src)
    with atomic_path(dest) as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
    return Path(dest)


def names_in_file(path: Path, names: Iterable[bytes], *, chunk: int = 1 << 24) -> set[bytes]:
    """Which of ``names`` occur in the file at ``path``, read in ``chunk``-byte pieces.

    A multi-GB artifact is never held whole: reading it into one bytes object (or mapping it,
    which counts in RSS as its pages are touched) would add its size to the caller's peak memory,
    just to look for a backend's name before a runtime child loads the file.
    """
    wanted = set(names)
    overlap = max((len(n) for n in wanted), default=1) - 1  # a name split across two chunks is still found
    found: set[bytes] = set()
    tail = b""
    with open(path, "rb") as fh:
        while wanted - found:
            piece = fh.read(chunk)
            if not piece:
                break
            window = tail + piece
            found.update(n for n in wanted - found if n in window)
            tail = window[-overlap:] if overlap else b""
    return found


@contextlib.contextmanager
def native_output_captured() -> Iterator[list[str]]:
    """Send what native code writes to file descriptors 1 and 2 into a list of one string.

    Converters' C++ cores (TFLite's MLIR passes, absl) print straight to the process's stderr,
    below Python's ``sys.stderr``; a CLI user would see pages of it. The text is handed back so the
    caller can log it at DEBUG.
    """
    import sys

    captured: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))
