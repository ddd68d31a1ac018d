"""``mobilekit build``: the app build step (Gradle, Xcode, CI) driven by one config file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add ``mobilekit build`` to the CLI."""

    @app.command("build")
    def build_cmd(
        config: Annotated[Path, typer.Option("--config", "-c", help="mobilekit.toml, or pyproject.toml with [tool.mobilekit]")] = Path("mobilekit.toml"),
        json_out: Annotated[bool, typer.Option("--json", help="print build.json on stdout (for Gradle/Xcode)")] = False,
        junit: Annotated[Path | None, typer.Option("--junit", help="write budget results as JUnit XML")] = None,
    ) -> None:
        """Export, measure and estimate every model of the config; exit non-zero when a budget fails."""
        from mobilekit.building import build
        from mobilekit.cli._output import err_console, print_json, print_table, progress_callback
        from mobilekit.errors import BudgetError
        from mobilekit.reporting import ARTIFACT_COLUMNS, artifact_rows

        if not config.exists() and config == Path("mobilekit.toml") and Path("pyproject.toml").exists():
            config = Path("pyproject.toml")
        def on_plan(model: str, plan: Any) -> None:
            for line in plan.describe():
                err_console().print(f"plan {model}: {line}", highlight=False)

        with progress_callback("build") as on_progress:
            result = build(config, on_progress=on_progress, on_plan=on_plan)
        if junit is not None:
            from mobilekit.profiling.budget import write_junit

            # the same allow_errors as the build's verdict: an allowed error is skipped, not an <error>
            write_junit(result.checks, junit, suite="mobilekit.build", allow_errors=result.allow_errors)
        if json_out:
            print_json(result.to_dict())
        else:
            print_table(f"build: {result.exported} built, rest cached, {result.seconds:.1f} s", ARTIFACT_COLUMNS,
                        artifact_rows(result))
            if result.checks:
                print_table("budgets", ["check", "status"], [[c.message, c.status] for c in result.checks])
            err_console().print(f"reports: {result.out / 'report.html'}, {result.out / 'report.md'}")
        if not result.ok:
            err_console().print(f"[bold red]{result.verdict()}[/]")
            for c in result.failures:
                err_console().print(f"  {c.message}", highlight=False)
            sys.exit(BudgetError.exit_code)
