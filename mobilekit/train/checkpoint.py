"""Atomic, resumable training checkpoints.

A checkpoint is one ``torch.save`` file written to a temporary name and renamed, so a run
killed mid-write keeps its previous checkpoint. Loading uses ``weights_only=True``: state
must be tensors, numbers, strings and containers of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from mobilekit._io import atomic_path
from mobilekit.errors import ConfigError

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Path of the checkpoint for optimizer step ``step`` inside ``run_dir``."""
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``state`` for ``step`` atomically, keeping only the newest ``keep`` checkpoints.

    Args:
        run_dir: the run's output directory.
        step: optimizer steps done so far.
        state: model/optimizer state dicts, counters; add RNG states with ``rng_state()``.
        keep: how many checkpoints to keep (older ones are deleted after the write).

    Returns:
        The checkpoint's path.
    """
    dest = checkpoint_path(run_dir, step)
    with atomic_path(dest) as tmp:
        torch.save({"step": step, **state}, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return dest


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of ``run_dir``, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def load_latest(run_dir: Path) -> dict[str, Any] | None:
    """Load the newest checkpoint of ``run_dir``, or None when there is none."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    try:
        return torch.load(found[-1], map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file must name itself, not crash the run opaquely
        raise ConfigError(f"cannot read checkpoint: {exc}", where=str(found[-1]),
                          fix="delete it to resume from the one before, or start a new run") from exc


def rng_state() -> dict[str, Any]:
    """The torch RNG states to store in a checkpoint."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states saved by ``rng_state()``."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
