"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _own_calibration_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the user's own stored calibrations (``mobilekit calibrate``) out of every test's estimates."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MOBILEKIT_CALIBRATION_DIR", str(tmp_path_factory.mktemp("calibration_store")))
    yield
    mp.undo()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch thread: exact comparisons of float results don't depend on the
    machine's thread count (reductions split across threads sum in another order)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
