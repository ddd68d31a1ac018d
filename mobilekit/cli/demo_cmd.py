"""``mobilekit demo``: the README's main job on built-in defaults, nothing downloaded."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``mobilekit demo`` to the CLI."""

    @app.command("demo")
    def demo_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("demo-out"),
        target: Annotated[list[str] | None, typer.Option("--target", "-t", help="targets (default: iphone-15-pro and pixel-8)")] = None,
    ) -> None:
        """Prune the built-in DiT, adapt the built-in GAN, build both for an iPhone and an Android phone."""
        from mobilekit.cli._output import err_console, print_table, progress_callback
        from mobilekit.demo import DEMO_TARGETS, run_demo
        from mobilekit.reporting import ARTIFACT_COLUMNS, artifact_rows, latency_rows, LATENCY_COLUMNS

        with progress_callback("demo") as on_progress:
            result = run_demo(out, targets=tuple(target or DEMO_TARGETS), on_progress=on_progress)
        print_table(f"artifacts: {result.exported} built, the rest from the cache ({result.seconds:.1f} s)",
                    ARTIFACT_COLUMNS, artifact_rows(result))
        print_table("latency: measured on this host and estimated per target", LATENCY_COLUMNS, latency_rows(result))
        verdict = "all budgets met" if result.ok else f"{len(result.failures)} budget(s) exceeded"
        err_console().print(f"{verdict}; report: {result.out / 'report.html'}")
        if not result.ok:
            sys.exit(7)
