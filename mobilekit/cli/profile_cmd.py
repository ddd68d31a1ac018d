"""``mobilekit profile``: measure artifacts on this host or a phone, write reports, enforce budgets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def _load_estimates(path: Path | None) -> list[dict[str, Any]]:
    from mobilekit.errors import ConfigError

    if path is None:
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read estimates: {exc}", where=str(path),
                          fix="pass a JSON list of LatencyEstimate.to_dict() records") from exc
    if isinstance(data, dict):
        data = data.get("estimates", [data])
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ConfigError("estimates must be a JSON list of objects", where=str(path))
    return data


def profile_command(
    artifacts: Annotated[list[Path], typer.Argument(
        help="Artifacts (.pte/.tflite/.onnx/.mlpackage) or manifest.json files/dirs.")],
    target: Annotated[str | None, typer.Option(
        "--target", "-t", help="Target name, e.g. pixel-8 (filters a manifest).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the reports as JSON here.")] = None,
    html_out: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report here.")] = None,
    markdown_out: Annotated[Path | None, typer.Option(
        "--markdown", help="Write a Markdown summary here (CI logs, PR comments).")] = None,
    budget_ms: Annotated[float | None, typer.Option(
        "--budget-ms", help="Fail if the latency statistic (--budget-stat) exceeds this many ms.")] = None,
    budget_stat: Annotated[str, typer.Option(
        "--budget-stat", help="Latency statistic for --budget-ms: p50, p90, p99, mean.")] = "p50",
    budget_mb: Annotated[float | None, typer.Option(
        "--budget-mb", help="Fail if an artifact's size on disk exceeds this many MiB.")] = None,
    budget_memory_mb: Annotated[float | None, typer.Option(
        "--budget-memory-mb", help="Fail if the peak memory the model adds while running exceeds this many MiB.")
    ] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write the budget checks as JUnit XML here.")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="Measure on a phone: an adb serial, 'android' (the only one attached), "
                         "'ios' / an iPhone name (Core ML), or Qualcomm AI Hub: 'qaihub' (the --target's "
                         "phone) or 'qaihub:<AI Hub device name>' (uploads the model to Qualcomm's cloud).")] = None,
    qaihub_compile: Annotated[str | None, typer.Option(
        "--qaihub-compile", help="With --device qaihub: compile on AI Hub for this target runtime first "
                                 "(qnn_dlc, qnn_context_binary, tflite, onnx, precompiled_qnn_onnx).")] = None,
    host: Annotated[bool, typer.Option("--host", help="Measure on this host (the default).")] = False,
    runner: Annotated[Path | None, typer.Option(
        "--runner", help="Android runner binary (benchmark_model or executor_runner).")] = None,
    max_seconds: Annotated[float, typer.Option(
        "--max-seconds", help="Most seconds of timed runs per artifact.")] = 10.0,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="Runtime threads (default: the runtime's).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up runs before timing.")] = 5,
    per_op: Annotated[bool, typer.Option(
        "--per-op/--no-per-op", help="Collect per-op times when the runtime can.")] = True,
    estimates: Annotated[Path | None, typer.Option(
        "--estimates", help="JSON list of LatencyEstimate dicts to add to the HTML/Markdown.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="stdout: human or json.")] = "human",
) -> None:
    """Measure artifacts' latency with their real runtimes and gate on budgets.

    Exit code 7 when a budget fails (the JUnit file is still written).
    """
    from mobilekit.cli._output import err_console, print_json, print_table, progress_callback
    from mobilekit.errors import ConfigError
    from mobilekit.profiling.budget import Budget, check_budgets, enforce, write_junit
    from mobilekit.profiling.report import LatencyReport, reports_to_json

    if device and host:
        raise ConfigError("--device and --host exclude each other", where="--device", fix="pass one of them")
    if output_format not in ("human", "json"):
        raise ConfigError(f"unknown --format {output_format!r}", where="--format", fix="use human or json")
    # --budget-ms gates whatever this run measures: this host, or the phone passed with --device
    budget = Budget(host_ms=budget_ms, phone_ms=budget_ms, size_mb=budget_mb, memory_mb=budget_memory_mb,
                    stat=budget_stat)
    ests = _load_estimates(estimates)
    reports: list[LatencyReport] = []
    if device:
        reports = _profile_on_device(artifacts, device=device, target=target, runner=runner, warmup=warmup,
                                     max_seconds=max_seconds, threads=threads, qaihub_compile=qaihub_compile)
    else:
        from mobilekit.profiling.host import profile

        with progress_callback("profiling") as on_progress:
            for item in artifacts:
                got = profile(item, target=target, warmup=warmup, max_seconds=max_seconds, threads=threads,
                              per_op=per_op, on_progress=on_progress)
                reports.extend(got if isinstance(got, list) else [got])
    if not reports:
        raise ConfigError("nothing was measured", where=", ".join(map(str, artifacts)),
                          fix="check the artifacts can run on this host (Core ML needs macOS)")
    checks = check_budgets(reports, budget) if not budget.empty else []
    if json_out:
        from mobilekit._io import write_json_atomic

        doc = reports_to_json(reports)
        if checks:
            doc["budget"] = {"limits": budget.to_dict(), "checks": [c.to_dict() for c in checks]}
        write_json_atomic(json_out, doc)
    if html_out:
        from mobilekit.profiling.html import write_html

        write_html(html_out, reports, estimates=ests, checks=checks)
    if markdown_out:
        from mobilekit._io import write_text_atomic
        from mobilekit.profiling.markdown import render_markdown

        write_text_atomic(markdown_out, render_markdown(reports, estimates=ests, checks=checks))
    if junit:
        write_junit(checks, junit)
    if output_format == "json":
        doc = reports_to_json(reports)
        doc["budget"] = [c.to_dict() for c in checks]
        print_json(doc)
    else:
        rows = [(Path(r.artifact).name, r.target or "–", r.runtime, f"{r.p50_ms:.4f}",
                 f"{r.ci95_low_ms:.4f}–{r.ci95_high_ms:.4f}" if r.ci95_low_ms is not None else "–",
                 f"{r.p99_ms:.4f}" if r.p99_ms is not None else "–",
                 f"{r.cold_load_ms:.1f}" if r.cold_load_ms is not None else "–",
                 f"{r.peak_memory_mb:.1f}" if r.peak_memory_mb is not None else "–", len(r.samples_ms))
                for r in reports]
        devices = ", ".join(sorted({f"{r.source}: {r.device.get('name')}" for r in reports}))
        print_table(f"latency ({devices})", ["artifact", "target", "runtime", "p50 ms", "95% CI ms", "p99 ms",
                                             "load ms", "peak MiB", "samples"], rows)
        for c in checks:
            mark = {"pass": "[green]pass[/] ", "fail": "[red]FAIL[/] ", "error": "[red]ERROR[/] "}[c.status]
            err_console().print(mark + c.message, highlight=False)
    enforce(checks)


def _profile_on_device(artifacts: list[Path], *, device: str, target: str | None, runner: Path | None,
                       warmup: int, max_seconds: float, threads: int | None,
                       qaihub_compile: str | None = None) -> list[Any]:
    from mobilekit.errors import ConfigError
    from mobilekit.profiling.host import _resolve

    kind, sep, hub_name = device.partition(":")
    on_hub = kind.strip().lower() == "qaihub"
    if qaihub_compile and not on_hub:
        raise ConfigError("--qaihub-compile needs --device qaihub", where="--qaihub-compile",
                          fix="pass --device qaihub --target T or --device qaihub:'<AI Hub device>'")
    reports = []
    for item in artifacts:
        pairs, _ = _resolve(item)
        for path, art in pairs:
            if target is not None and art is not None and art.targets and target not in art.targets:
                continue
            if on_hub:
                from mobilekit.cli._output import err_console
                from mobilekit.profiling import qaihub

                def said(kind: str, job_id: str | None, url: str | None) -> None:
                    err_console().print(f"AI Hub {kind} job {job_id}: {url}", highlight=False)

                reports.append(qaihub.profile_qaihub(path, device=hub_name.strip() or None, target=target,
                                                     compile_to=qaihub_compile, on_submit=said))
            elif path.suffix in (".mlpackage", ".mlmodel") or device.lower() == "ios":
                from mobilekit.profiling.ios import profile_ios

                reports.append(profile_ios(path, device=None if device.lower() == "ios" else device, target=target))
            else:
                from mobilekit.profiling.android import profile_android

                serial = None if device.lower() == "android" else device
                reports.append(profile_android(path, serial=serial, runner=runner, target=target, warmup=warmup,
                                               max_seconds=max_seconds, threads=threads,
                                               extra_files=tuple(art.extra_files) if art is not None else ()))
    return reports


def register(app: typer.Typer) -> None:
    """Add ``mobilekit profile`` to the CLI."""
    app.command("profile", help="Measure artifacts on this host or a phone; write JSON/HTML/Markdown; "
                                "enforce budgets.")(profile_command)
