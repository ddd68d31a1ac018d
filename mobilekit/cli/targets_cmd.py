"""``mobilekit targets``: list the device profiles (Targets) shipped with mobilekit."""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer


class _Format(str, Enum):
    human = "human"
    json = "json"


class _Platform(str, Enum):
    ios = "ios"
    android = "android"


def _fmt_gops(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}T" if value >= 1000 else f"{value:.0f}G"


def _units_cell(target: Any) -> str:
    parts = []
    for u in target.compute_units:
        fp16 = _fmt_gops(u.peak_gops.get("fp16"))
        int8 = _fmt_gops(u.peak_gops.get("int8"))
        parts.append(f"{u.kind.upper()} {fp16}/{int8}")
    return "\n".join(parts)


def targets(
    format: _Format = typer.Option(_Format.human, "--format", help="human: a table; json: the full profiles."),
    platform: _Platform | None = typer.Option(None, "--platform", help="Only list ios or android targets."),
) -> None:
    """List device profiles: platform, SoC, compute units with peak fp16/int8, bandwidth, default recipe."""
    from rich.table import Table

    from mobilekit.cli._output import out_console, print_json
    from mobilekit.targets import list_targets

    selected = [t for t in list_targets() if platform is None or t.platform == platform.value]
    if format is _Format.json:
        print_json([t.to_dict() for t in selected])
        return
    table = Table(title="Device profiles", caption="peak fp16/int8 per compute unit, dense, in FLOP/s or OP/s "
                  "(G = 1e9, T = 1e12; '-' = not published). --format json adds unit names and sources.")
    for column in ("name", "display name", "platform", "SoC"):
        table.add_column(column, overflow="fold")
    table.add_column("peak fp16/int8", no_wrap=True)
    table.add_column("bandwidth", overflow="fold")
    table.add_column("default recipe", overflow="fold")
    for t in selected:
        table.add_row(t.name, t.display_name, t.platform, t.soc, _units_cell(t),
                      "-" if t.memory_bandwidth_gbps is None else f"{t.memory_bandwidth_gbps:g} GB/s",
                      t.default_recipe)
    out_console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``targets`` command to the mobilekit CLI."""
    app.command("targets")(targets)
