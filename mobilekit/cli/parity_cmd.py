"""``mobilekit parity``: re-check a shipped artifact against PyTorch, or map its error module by module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def register(app: typer.Typer) -> None:
    """Add ``mobilekit parity`` to the CLI."""

    @app.command("parity")
    def parity_cmd(
        artifact: Annotated[Path, typer.Argument(help="an artifact file inside an export directory (with manifest.json)")],
        by_module: Annotated[bool, typer.Option("--by-module", help="compare intermediate outputs module by module and show where the error enters")] = False,
        spec: Annotated[str | None, typer.Option("--spec", help="SPEC that builds the exported model, when the manifest's model name doesn't (builtin:NAME, zoo:NAME, package.module:function, model folder)")] = None,
        modules: Annotated[str | None, typer.Option("--modules", help="regex over module paths to tap (default: the block-level modules)")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="directory for parity_map.json and parity_map.html (default: beside the artifact, named after it)")] = None,
        parity_samples: Annotated[int | None, typer.Option("--parity-samples", help="inputs to compare: the example and N-1 held-out ones (default: as many as the shipped artifact's parity compared)")] = None,
        tolerance: Annotated[list[str] | None, typer.Option("--tolerance", help="PRECISION:cosine=0.99 or PRECISION:psnr_db=30")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout")] = False,
    ) -> None:
        """Check an artifact against PyTorch again; with --by-module, find the module where its error enters."""
        from mobilekit.cli._output import err_console, print_json, print_table, progress_callback
        from mobilekit.cli.export_cmd import parse_tolerances

        tolerances = parse_tolerances(tolerance or [])
        if not by_module:
            from mobilekit.module_parity import artifact_parity

            parity = artifact_parity(artifact, spec=spec, parity_samples=parity_samples, tolerances=tolerances)
            if json_out:
                print_json(parity.to_dict())
            else:
                print_table(f"parity of {artifact.name} vs PyTorch", ["status", "runtime", "cosine", "PSNR (dB)",
                                                                      "max abs", "inputs", "reason"],
                            [[parity.status, parity.runtime, _num(parity.cosine, 7), _num(parity.psnr_db),
                              _num(parity.max_abs_error, 3), parity.inputs, parity.reason or ""]])
                if parity.status == "fail":
                    err_console().print(f"hint: mobilekit parity {artifact} --by-module shows where the error "
                                        "enters", highlight=False)
            if parity.status == "fail":
                raise typer.Exit(4)
            return

        from mobilekit._io import ensure_writable_dir
        from mobilekit.module_parity import artifact_parity_map
        from mobilekit.module_parity_html import write_parity_map_html

        with progress_callback(f"parity map {artifact.name}") as on_progress:
            pm = artifact_parity_map(artifact, spec=spec, modules=modules, parity_samples=parity_samples,
                                     tolerances=tolerances, on_progress=on_progress)
        if out is not None:
            folder = ensure_writable_dir(out)
            json_path, html_path = folder / "parity_map.json", folder / "parity_map.html"
        else:
            json_path = artifact.parent / f"{artifact.name}.parity_map.json"
            html_path = artifact.parent / f"{artifact.name}.parity_map.html"
        pm.write_json(json_path)
        write_parity_map_html(html_path, pm)
        if json_out:
            print_json(pm.to_dict())
        else:
            rows = [[i, r.module, r.type, "×".join(map(str, r.shape)), _num(r.cosine, 7), _num(r.psnr_db),
                     _num(r.max_abs_error, 3), _num(r.growth, 3),
                     r.status + (" ◀ first over" if r.module == pm.first_over else "")]
                    for i, r in enumerate(pm.rows)]
            print_table(f"{artifact.name} ({pm.recipe.name}, {pm.runtime}) vs PyTorch, module by module",
                        ["#", "module", "type", "shape", "cosine", "PSNR (dB)", "max abs", "growth ×", "status"], rows)
            f = pm.final
            where = (f"error enters at {pm.first_over}" if pm.first_over else
                     "every tap within tolerance" + ("" if f.status != "fail" else ", final output is not"))
            untapped = sum(r.status == "error" for r in pm.rows)
            if untapped:
                where += f" ({untapped} module(s) could not be tapped, see the notes)"
            err_console().print(f"{where}; final output {f.status} (cos {_num(f.cosine, 7)}, "
                                f"{_num(f.psnr_db)} dB)", highlight=False)
            for note in pm.notes:
                err_console().print(f"note: {note}", highlight=False)
            err_console().print(f"map: {json_path}\nreport: {html_path}", highlight=False)
