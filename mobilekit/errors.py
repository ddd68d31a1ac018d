"""Every error mobilekit raises, under one root.

Each class also inherits the builtin a caller would already catch (``ValueError`` for bad
configuration, ``ImportError`` for a missing backend), and keeps the parts of its message
(what, where, fix) as attributes so tools can render them.
"""

from __future__ import annotations


class MobilekitError(Exception):
    """Root of every mobilekit error.

    Args:
        message: what went wrong.
        where: the place: a module path, op, config key, file or line.
        fix: what to do about it.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        text = self.message
        if self.where:
            text += f" (at {self.where})"
        if self.fix:
            text += f". {self.fix}"
        return text


class MobilekitWarning(UserWarning):
    """Something the user can act on: a fallback to a slower path, a deprecation."""


class ConfigError(MobilekitError, ValueError):
    """A configuration value, CLI argument or input is invalid."""

    exit_code = 2


class BackendUnavailableError(MobilekitError, ImportError):
    """A backend package is not installed or cannot run on this host."""

    exit_code = 2


class UnsupportedOpError(MobilekitError):
    """A backend cannot lower an op of the model."""

    exit_code = 3

    def __init__(self, message: str, *, op: str | None = None, module_path: str | None = None,
                 backend: str | None = None, where: str | None = None, fix: str | None = None) -> None:
        self.op = op
        self.module_path = module_path
        self.backend = backend
        super().__init__(message, where=where or module_path, fix=fix)


class ExportError(MobilekitError):
    """An export failed for a reason other than an unsupported op."""

    exit_code = 3


class ParityError(MobilekitError):
    """An artifact's outputs differ from PyTorch beyond the tolerance."""

    exit_code = 4


class DeviceError(MobilekitError):
    """A phone or its tools could not be reached or failed."""

    exit_code = 5


class RuntimeCrashError(MobilekitError):
    """A native runtime crashed or failed while loading or running an artifact."""

    exit_code = 6


class BudgetError(MobilekitError):
    """A latency, size or parity budget was exceeded."""

    exit_code = 7


class InternalError(MobilekitError):
    """A bug in mobilekit; please report it with the traceback (MOBILEKIT_DEBUG=1)."""

    exit_code = 70
