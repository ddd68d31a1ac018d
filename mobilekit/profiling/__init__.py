"""Profiling: measured latency on this host or on a phone (adb, Xcode, Qualcomm AI Hub), reports
(JSON, HTML, Markdown) and budgets.

Heavy work (runtimes, adb) happens in submodules imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mobilekit.profiling.budget import Budget, check_budgets, write_junit
    from mobilekit.profiling.host import profile
    from mobilekit.profiling.report import LatencyReport

_LAZY = {
    "Budget": "mobilekit.profiling.budget:Budget",
    "LatencyReport": "mobilekit.profiling.report:LatencyReport",
    "check_budgets": "mobilekit.profiling.budget:check_budgets",
    "profile": "mobilekit.profiling.host:profile",
    "profile_android": "mobilekit.profiling.android:profile_android",
    "profile_ios": "mobilekit.profiling.ios:profile_ios",
    "profile_qaihub": "mobilekit.profiling.qaihub:profile_qaihub",
    "render_html": "mobilekit.profiling.html:render_html",
    "render_markdown": "mobilekit.profiling.markdown:render_markdown",
    "write_junit": "mobilekit.profiling.budget:write_junit",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mobilekit.profiling' has no attribute {name!r}")
    module, attr = _LAZY[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
