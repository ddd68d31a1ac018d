"""``mobilekit estimate SPEC``: estimated latency on a phone (or every phone), without the phone."""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer


class _Format(str, Enum):
    human = "human"
    json = "json"


class _Unit(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    npu = "npu"


def _load(spec: str, inputs: list[str] | None) -> tuple[str, Any, tuple[Any, ...]]:
    try:
        from mobilekit.spec import load_spec
    except ImportError:  # spec loader not there: built-ins only
        from mobilekit.builtins import build

        name = spec.removeprefix("builtin:")
        model, example = build(name)
        return name, model, example
    loaded = load_spec(spec, inputs=inputs)
    return loaded.name, loaded.model, loaded.example_inputs


def _row(e: Any) -> list[str]:
    bound = max(e.per_layer, key=lambda r: r["ms"])["name"] if e.per_layer else "-"
    cov = f"{e.coverage:.0%}" + ("*" if getattr(e, "band_reason", None) else "")
    return [e.target, e.compute_unit, e.precision, f"{e.ms:.2f}", f"{e.low_ms:.2f} – {e.high_ms:.2f}", cov,
            f"{e.roofline.get('achieved_gops', 0.0):.1f}", bound]


def estimate(
    spec: str = typer.Argument(..., help="builtin:NAME, package.module:function, or a diffusers model folder."),
    target: str | None = typer.Option(None, "--target", "-t", help="Profile name, e.g. pixel-8 (see `mobilekit targets`)."),
    compute_unit: _Unit | None = typer.Option(None, "--compute-unit", help="cpu, gpu or npu (default: where the "
                                                                            "target's default recipe runs)."),
    precision: str | None = typer.Option(None, "--precision", "-p", help="fp32, fp16, int8-weight, int8-dynamic, "
                                                                         "int8-static or w8a16."),
    all_targets: bool = typer.Option(False, "--all-targets", help="Estimate on every profile; one table."),
    inputs: list[str] | None = typer.Option(None, "--input", help="Input shape for a model folder: "
                                                                  "\\[name=]1x4x32x32[:dtype]; repeat per input."),
    top: int = typer.Option(10, "--top", help="Slowest ops to list (human format, one target)."),
    format: _Format = typer.Option(_Format.human, "--format", help="human: tables; json: LatencyEstimate dicts."),
    calibration: bool = typer.Option(True, "--calibration/--no-calibration",
                                     help="Use the target's calibration from your own reports "
                                          "(`mobilekit calibrate`) when one is stored."),
) -> None:
    """Estimate latency from the model's graph and a roofline calibrated on published phone latencies."""
    from mobilekit.cli._output import err_console, print_json, print_table
    from mobilekit.errors import ConfigError
    from mobilekit.estimation.api import estimate as _estimate
    from mobilekit.estimation.api import estimate_all

    if not all_targets and not target:
        raise ConfigError("no target given", where="--target", fix="pass --target pixel-8 or --all-targets")
    name, model, example = _load(spec, inputs)
    unit = compute_unit.value if compute_unit else None
    if all_targets:
        results = estimate_all(model, example, precision=precision, compute_unit=unit, name=name,
                               calibration=calibration)
    else:
        results = [_estimate(model, example, target=target, precision=precision, compute_unit=unit, name=name,
                             calibration=calibration)]
    if format is _Format.json:
        print_json([r.to_dict() for r in results] if all_targets else results[0].to_dict())
        return
    print_table(f"Estimated latency of {name} (coverage: share of held-out calibration latencies inside "
                "the band, leave-one-model-out)",
                ["target", "unit", "precision", "ms", "band ms", "coverage", "GOP/s", "slowest op"],
                [_row(e) for e in results])
    reasons = sorted({e.band_reason for e in results if e.band_reason})
    for why in reasons:
        err_console().print(f"* {why}", style="yellow")
    for note in sorted({n for e in results for n in e.notes}):
        err_console().print(note, style="green", highlight=False)
    if len(results) == 1 and results[0].per_layer:
        e = results[0]
        ops = sorted(e.per_layer, key=lambda r: r["ms"], reverse=True)[:top]
        print_table(f"Slowest ops on {e.target} {e.compute_unit}",
                    ["op", "aten op", "MFLOP", "KiB", "ms", "bound", "unit", "precision"],
                    [[r["name"], r["op"], f"{r['flops'] / 1e6:.2f}", f"{r['bytes'] / 1024:.1f}", f"{r['ms']:.3f}",
                      r["bound"], r["unit"], r.get("precision", e.precision)] for r in ops])
    if not any(e.calibration for e in results):
        err_console().print("estimates come from published latencies of other models; measure with "
                            "`mobilekit profile` before relying on them, and `mobilekit calibrate` on what you "
                            "measured", style="dim")


def register(app: typer.Typer) -> None:
    """Add the ``estimate`` command to the mobilekit CLI."""
    app.command("estimate")(estimate)
