"""``mobilekit demo``: the README's main job on a built-in default, nothing downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``mobilekit demo`` to the CLI."""

    @app.command("demo")
    def demo_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("demo-out"),
        spec: Annotated[str, typer.Option("--model", help="built-in model to export")] = "builtin:dit-tiny",
        target: Annotated[list[str] | None, typer.Option("--target", "-t", help="targets (default: an iPhone and an Android phone)")] = None,
    ) -> None:
        """Export a built-in model for an iPhone and an Android phone and print the manifest."""
        from mobilekit.cli._output import err_console, print_table, progress_callback
        from mobilekit.cli.export_cmd import MANIFEST_COLUMNS, manifest_rows
        from mobilekit.exporting import export
        from mobilekit.spec import load_spec

        targets = target or ["iphone-15-pro", "pixel-8"]
        loaded = load_spec(spec)
        with progress_callback(f"demo: export {loaded.name}") as on_progress:
            manifest = export(loaded.model, loaded.example_inputs, targets=targets, out_dir=out,
                              calibration=loaded.calibration or None, model_name=loaded.name,
                              input_names=loaded.input_names or None, on_progress=on_progress)
        print_table(f"{loaded.name} for {', '.join(targets)}", MANIFEST_COLUMNS, manifest_rows(manifest))
        err_console().print(f"manifest: {out / 'manifest.json'}")
