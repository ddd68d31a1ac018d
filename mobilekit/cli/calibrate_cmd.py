"""``mobilekit calibrate REPORTS...``: refit a device's estimator on your own measured reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _models(values: list[str] | None) -> dict[str, str] | str | None:
    """``--model NAME=SPEC`` pairs, or one bare ``--model SPEC`` for every report."""
    from mobilekit.errors import ConfigError

    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    out: dict[str, str] = {}
    for v in values:
        name, sep, spec = v.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--model {v!r} is not NAME=SPEC", where="--model",
                              fix="e.g. --model convnet.onnx=pkg.module:function (NAME: the report's model or "
                                  "artifact file name)")
        out[name] = spec
    return out


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def calibrate_command(
    reports: Annotated[list[Path] | None, typer.Argument(
        help="LatencyReport JSON files (`mobilekit profile --json` output), all from one device.")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="The device they were measured on: a profile name (see `mobilekit targets`) or 'host'; "
                         "default: from the reports.")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="How to rebuild a report's model for pricing when the report names none: NAME=SPEC "
                        "(NAME: its model or artifact file name), or one SPEC for every report.")] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="Precision of reports that record none (a plain artifact path was profiled).")] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", help="Calibration store directory (default: $MOBILEKIT_CALIBRATION_DIR, else "
                        "~/.cache/mobilekit/calibration).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Fit and show, but store nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    reset: Annotated[bool, typer.Option("--reset", help="Remove the device's stored calibration.")] = False,
) -> None:
    """Refit the latency estimator of one device on your own measured reports; later estimates use it."""
    from mobilekit.cli._output import err_console, print_json, print_table
    from mobilekit.errors import ConfigError
    from mobilekit.estimation.device_calibration import calibrate, format_error

    if reset:
        _reset(device, reports or [], store, json_out)
        return
    if not reports:
        raise ConfigError("no reports given", where="REPORTS",
                          fix="pass the JSON files `mobilekit profile --json` wrote (or --reset --device NAME)")
    from mobilekit.cli._output import progress_callback

    with progress_callback("calibrating") as on_progress:
        res = calibrate(reports, device=device, store=store, models=_models(model), precision=precision,
                        dry_run=dry_run, on_progress=on_progress)
    if json_out:
        print_json(res.to_dict())
        return
    print_table(f"Calibration of {res.device} on {len(res.rows)} report(s): estimates before and after "
                "(held out: predicted by a fit on the other models only)",
                ["report", "model", "family", "measured ms", "before ms", "after ms", "held-out ms",
                 "error before", "error after", "error held out"],
                [[Path(r.label).name, r.model, r.family, _ms(r.measured_ms), _ms(r.before_ms), _ms(r.after_ms),
                  _ms(r.held_out_ms), format_error(r.error_before), format_error(r.error_after),
                  format_error(r.error_held_out)] for r in res.rows])
    from mobilekit.cli._output import out_console

    held = res.median_error_held_out
    out_console().print(f"median |error|: {res.median_error_before:.0%} before -> {res.median_error_after:.0%} "
                        "after (in sample: fitted on these reports)"
                        + (f"; {held:.0%} held out" if held is not None else
                           "; held out: needs reports of at least 2 models per family"), highlight=False)
    for fam in res.calibration.families.values():
        band = ("band from your reports' held-out residuals" if fam.band else
                "shipped band kept (a band of your own needs >= 5 reports from >= 3 models)")
        err_console().print(f"{fam.family}: {fam.n} report(s) of {len(fam.models)} model(s); {band}", style="dim")
    if res.written:
        err_console().print(f"{'replaced' if res.replaced else 'stored'} {res.path}; `mobilekit estimate --target "
                            f"{res.device}` now uses it (undo: mobilekit calibrate --reset --device {res.device})",
                            style="green", highlight=False)
    else:
        err_console().print(f"dry run: nothing written (would write {res.path})", style="yellow", highlight=False)


def _reset(device: str | None, reports: list[Path], store: Path | None, json_out: bool) -> None:
    from mobilekit.cli._output import err_console, print_json
    from mobilekit.errors import ConfigError
    from mobilekit.estimation.calibration_store import reset_calibration, store_path

    if device is None:
        if not reports:
            raise ConfigError("--reset needs the device", where="--device",
                              fix="pass --device NAME (a profile name or 'host')")
        from mobilekit.estimation.device_calibration import device_of_reports

        device = device_of_reports(reports)
    elif device != "host":
        from mobilekit.targets import get_target

        device = get_target(device).name
    removed = reset_calibration(device, store)
    result: dict[str, Any] = {"device": device, "removed": str(removed) if removed else None,
                              "path": str(store_path(device, store))}
    if json_out:
        print_json(result)
    elif removed:
        err_console().print(f"removed {removed}: estimates of {device} use the shipped fit again", style="green",
                            highlight=False)
    else:
        err_console().print(f"no calibration of {device} stored ({result['path']})", style="yellow", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``calibrate`` command to the mobilekit CLI."""
    app.command("calibrate")(calibrate_command)
