"""``mobilekit.build``: the app build step. One config → artifacts, measurements, estimates, budgets, reports.

Incremental at every stage: exports come from the content-addressed export cache, host
measurements are cached by artifact hash and measurement settings, estimates by the
artifact's cache key and target. An unchanged config therefore rebuilds nothing; a changed
model re-exports only its own artifacts.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mobilekit._io import write_json_atomic, write_text_atomic
from mobilekit.artifact import Artifact, Manifest
from mobilekit.build_config import BuildConfig, ModelEntry, load_build_config
from mobilekit.build_result import BuildResult, HostLatency, PhoneEstimate
from mobilekit.cache import default_cache_dir
from mobilekit.errors import BackendUnavailableError, BudgetError, ConfigError, RuntimeCrashError
from mobilekit.profiling.budget import Budget, BudgetCheck, evaluate
from mobilekit.profiling.report import LatencyReport
from mobilekit.reporting import build_html, build_markdown

if TYPE_CHECKING:
    from mobilekit.estimation.api import LatencyEstimate
    from mobilekit.plan import ExportPlan

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
HOST_FORMATS = {("executorch", "xnnpack"), ("tflite", None), ("onnx", None)}


def _json_cache(root: Path, kind: str, key: str) -> Path:
    return root / kind / key[:2] / f"{key}.json"


T = TypeVar("T")


def _cached_json(path: Path, parse: Callable[[dict[str, Any]], T]) -> T | None:
    """A cache entry parsed by ``parse``, or None when it is missing, unreadable or of another schema."""
    try:
        return parse(json.loads(path.read_text())) if path.is_file() else None
    except (OSError, json.JSONDecodeError, ConfigError, TypeError, KeyError):
        return None


def _host_id() -> str:
    from mobilekit.profiling.host import host_device

    return json.dumps(host_device(), sort_keys=True, default=str) + platform.python_version()


def _measure(artifact: Artifact, manifest: Manifest, entry: ModelEntry, config: BuildConfig,
             cache_root: Path) -> tuple[HostLatency | None, str | None]:
    """Host measurement of one artifact (cached by its hash and the settings) and why there is none.

    Returns ``(measurement, None)``, ``(None, reason)`` when the measurement failed, or ``(None, None)``
    when the artifact's format has no runtime on this host (Core ML off macOS, a vendor delegate).
    """
    if (artifact.format, artifact.delegate) not in HOST_FORMATS:
        return None, None
    from mobilekit.profiling.host import profile

    key = hashlib.sha256(f"{artifact.sha256}|{config.max_seconds}|{_host_id()}".encode()).hexdigest()
    cached_path = _json_cache(cache_root, "measurements", key)
    hit = _cached_json(cached_path, LatencyReport.from_dict)
    if hit is not None:
        return HostLatency(model=entry.name, artifact=artifact.path, variant=artifact.adapter, report=hit, cached=True), None
    try:
        # the Artifact (not just its path) carries extra files such as a shared ExecuTorch .ptd;
        # no target: this is a measurement of this host, whatever phone the artifact is built for
        located = replace(artifact, path=str(manifest.path_of(artifact)))
        # profile() names the artifact's phone when it has one; the build's reports are of this host
        report = profile(artifact=located, target=None, max_seconds=config.max_seconds).with_(target=None)
    except (BackendUnavailableError, RuntimeCrashError, ConfigError) as exc:
        logger.warning("could not measure %s: %s", artifact.path, exc)
        return None, f"measuring on this host failed: {type(exc).__name__}: {exc.message}"
    write_json_atomic(cached_path, report.to_dict())
    return HostLatency(model=entry.name, artifact=artifact.path, variant=artifact.adapter, report=report), None


def _estimate(artifact: Artifact, target: str, loaded: Any, entry: ModelEntry,
              cache_root: Path, out_dir: Path | None = None) -> tuple[PhoneEstimate | None, str | None]:
    """Per-target estimate of one artifact's model and recipe (cached by the export's key), or why not."""
    from mobilekit import __version__
    from mobilekit.estimation.api import ESTIMATOR_REVISION, LatencyEstimate
    from mobilekit.estimation.calibration_store import calibration_fingerprint

    # a calibration stored (or reset) since the estimate was cached changes it
    cal = calibration_fingerprint(target)
    key = hashlib.sha256(f"{artifact.cache_key}|{target}|{__version__}|est{ESTIMATOR_REVISION}|cal{cal}"
                         .encode()).hexdigest()
    cached_path = _json_cache(cache_root, "estimates", key)
    hit = _cached_json(cached_path, LatencyEstimate.from_dict)
    if hit is not None:
        return PhoneEstimate(model=entry.name, artifact=artifact.path, variant=artifact.adapter, estimate=hit,
                             cached=True), None
    from mobilekit.estimation import estimate

    model = loaded()
    try:
        est = estimate(model.model, model.example_inputs, target=target, format=artifact.format,
                       precision=artifact.precision, delegate=getattr(artifact.recipe, "delegate", None),
                       artifact=(out_dir / artifact.path) if out_dir is not None else None)
    except ConfigError as exc:  # e.g. the profile lacks the peak this unit and precision need
        logger.warning("no estimate of %s on %s: %s", artifact.path, target, exc)
        return None, f"no estimate for {target}: {exc.message}"
    est = replace(est, model=entry.name)
    write_json_atomic(cached_path, est.to_dict())
    return PhoneEstimate(model=entry.name, artifact=artifact.path, variant=artifact.adapter, estimate=est), None


def _check(entry: ModelEntry, artifact: Artifact, budget: Budget, report: LatencyReport | None,
           estimates: dict[str, LatencyEstimate], errors: dict[str, str]) -> list[BudgetCheck]:
    """Every configured limit on one artifact: size, parity, host latency and memory, each target's estimate.

    A limit whose value is missing becomes an ``error`` check with the reason from ``errors``
    (keyed ``host`` or the target name), never a silent omission.
    """
    label = f"{entry.name}/{artifact.label}"
    path, stat = artifact.path, budget.stat
    checks: list[BudgetCheck] = []
    if budget.size_mb is not None:
        checks.append(evaluate(f"{label} (file)", path, "artifact_size_mb", budget.size_mb,
                               artifact.size_bytes / 2**20, kind="size", source="file", unit="MiB"))
    p = artifact.parity
    for metric, limit, value in (("min_cosine", budget.min_cosine, p.cosine), ("min_psnr_db", budget.min_psnr_db,
                                                                               p.psnr_db)):
        if limit is not None:
            checks.append(evaluate(f"{label} (parity vs PyTorch)", path, metric, limit,
                                   None if p.status == "not-run" else value, kind="parity", source="parity",
                                   floor=True, missing=p.reason or "parity was not run"))
    s = artifact.sampling
    for metric, limit, attr in (("min_sample_cosine", budget.min_sample_cosine, "cosine"),
                                ("min_sample_psnr_db", budget.min_sample_psnr_db, "psnr_db")):
        if limit is None:
            continue
        why = ("the model has no sampling = ... in its table" if s is None
               else f"the sampling loop was not run: {s.reason}" if s.status == "not-run"
               else s.reason or "")
        value = None if s is None or s.status == "not-run" or getattr(s, attr) is None else getattr(s, attr)
        where = f"{label} (sampling loop" + (f", {s.steps} {s.scheduler} steps)" if s else ")")
        checks.append(evaluate(where, path, metric, limit, value, kind="sampling", source="parity", floor=True,
                               missing=why))
    im = artifact.images
    if budget.min_image_psnr_db is not None:
        why = ("the model declares no image output (image_output = ... in its table)" if im is None
               else im.reason or "" if im.status == "not-run" else "")
        value = None if im is None or im.status == "not-run" else im.psnr_db
        checks.append(evaluate(f"{label} (output images, 8-bit)", path, "min_image_psnr_db", budget.min_image_psnr_db,
                               value, kind="images", source="parity", floor=True, missing=why))
    host_runs = (artifact.format, artifact.delegate) in HOST_FORMATS
    if host_runs:
        where = f"{label} (this host, measured)"
        missing = errors.get("host", "not measured")
        if budget.host_ms is not None:
            checks.append(evaluate(where, path, f"latency_{stat}_ms", budget.host_ms,
                                   None if report is None else getattr(report, f"{stat}_ms"), kind="host",
                                   source="host", unit="ms", missing=missing))
        if budget.memory_mb is not None:
            checks.append(evaluate(where, path, "memory_delta_mb", budget.memory_mb,
                                   None if report is None else report.memory_delta_mb, kind="memory",
                                   source="host", unit="MiB",
                                   missing=missing if report is None else "the runtime does not report peak memory"))
    for target in artifact.targets:
        limit = budget.phone_limit(target)
        if limit is None:
            continue
        est = estimates.get(target)
        # an estimate prices one number (its median); a p90/p99 limit is checked against its high end
        value = None if est is None else est.ms if stat in ("p50", "mean") else est.high_ms
        base = ", base architecture" if artifact.adapter else ""
        own = ", your calibration" if est is not None and est.calibration else ""
        checks.append(evaluate(f"{label} ({target}, estimate{own}{base})", path, f"latency_{stat}_ms", limit, value,
                               kind="phone", source="estimate", unit="ms", target=target,
                               missing=errors.get(target, "not estimated")))
    return checks


def build(config: BuildConfig | str | Path, *, on_progress: ProgressFn | None = None,
          on_plan: Callable[[str, ExportPlan], None] | None = None) -> BuildResult:
    """Run a build: export every model for its targets and precisions, measure, estimate, check budgets.

    Every model's export plan is made before any work, so a format or precision no target can get
    is refused up front; ``on_plan(model, plan)`` sees each plan (the CLI prints it).

    Args:
        config: a BuildConfig, or the path of ``mobilekit.toml`` / ``pyproject.toml`` (or their folder).
        on_progress: ``on_progress(stage, done, total)`` callback.
        on_plan: ``on_plan(model_name, ExportPlan)`` callback, called for every model before any export.

    Returns:
        The BuildResult; ``build.json``, ``report.md`` and ``report.html`` are written to the output directory,
        and each model's artifacts and ``manifest.json`` to ``OUT/<model>/``.

    Raises:
        ConfigError: the config is invalid (names the key and line).
        BudgetError: is not raised; check ``result.ok`` (the CLI turns failures, and checks that could
            not be evaluated, into a non-zero exit).

    Example:
        >>> result = build("mobilekit.toml")  # doctest: +SKIP
        >>> result.ok  # doctest: +SKIP
    """
    from mobilekit.exporting import export
    from mobilekit.plan import plan_exports
    from mobilekit.spec import load_spec

    start = time.perf_counter()
    if not isinstance(config, BuildConfig):
        config = load_build_config(config)
    progress = on_progress or (lambda stage, done, total: None)
    for entry in config.models:
        plan = plan_exports(list(entry.targets), formats=list(entry.formats) or None,
                            precision=list(entry.precisions) or None,
                            adapter_policy=entry.adapter_policy)
        if on_plan:
            on_plan(entry.name, plan)
    cache_root = config.cache_dir or default_cache_dir()
    manifests: dict[str, Manifest] = {}
    reports: list[HostLatency] = []
    estimates: list[PhoneEstimate] = []
    checks: list[BudgetCheck] = []
    exported = 0
    total = len(config.models)
    for i, entry in enumerate(config.models):
        progress(f"export {entry.name}", i, total)
        loaded_holder: dict[str, Any] = {}

        def loaded(entry: ModelEntry = entry, holder: dict[str, Any] = loaded_holder) -> Any:
            if "spec" not in holder:
                holder["spec"] = load_spec(entry.spec, inputs=list(entry.inputs) or None)
            return holder["spec"]

        spec = loaded()
        out = config.out / entry.name
        if entry.adapters:
            from mobilekit.adapters import export_with_adapters

            manifest = export_with_adapters(spec, entry, out_dir=out, cache_dir=config.cache_dir,
                                            workers=config.workers, parity_samples=config.parity_samples)
        else:
            cal = (spec.load_batches(entry.calibration, "calibration") if entry.calibration
                   else spec.calibration or None)
            held = spec.load_batches(entry.parity_inputs, "parity inputs") if entry.parity_inputs else None
            manifest = export(spec.model, spec.example_inputs, targets=list(entry.targets), out_dir=out,
                              precision=list(entry.precisions) or None, formats=list(entry.formats) or None,
                              calibration=cal, parity_inputs=held, parity_samples=config.parity_samples,
                              sampling=entry.sampling, image=entry.image or spec.image,
                              cache_dir=config.cache_dir,
                              workers=config.workers, model_name=entry.name,
                              input_names=spec.input_names or None, adapter_policy=entry.adapter_policy)
        manifests[entry.name] = manifest
        exported += sum(not a.cached for a in manifest.artifacts)
        for a in manifest.artifacts:
            errors: dict[str, str] = {}
            measured = None
            if config.measure:
                progress(f"measure {a.path}", i, total)
                measured, why = _measure(a, manifest, entry, config, cache_root)
                if measured is not None:
                    reports.append(measured)
                elif why:
                    errors["host"] = why
            by_target: dict[str, LatencyEstimate] = {}
            if config.estimate:
                for t in a.targets:
                    e, why = _estimate(a, t, loaded, entry, cache_root, Path(out))
                    if e is not None:
                        by_target[t] = e.estimate
                        estimates.append(e)
                    else:
                        errors[t] = why or "not estimated"
            checks.extend(_check(entry, a, entry.budgets, measured and measured.report, by_target, errors))
    result = BuildResult(config=str(config.path), out=config.out, manifests=manifests, reports=reports,
                         estimates=estimates, checks=checks, allow_errors=config.allow_errors, exported=exported,
                         seconds=time.perf_counter() - start)
    outputs = _write_reports(result)
    result = BuildResult(**{**result.__dict__, "outputs": outputs, "seconds": time.perf_counter() - start})
    write_json_atomic(config.out / "build.json", {**result.to_dict(),
                                                  "created": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    progress("done", total, total)
    return result


def _write_reports(result: BuildResult) -> dict[str, str]:
    """Write ``report.md`` and ``report.html`` next to ``build.json``."""
    md = write_text_atomic(result.out / "report.md", build_markdown(result))
    html = write_text_atomic(result.out / "report.html", build_html(result))
    return {"build": "build.json", "markdown": md.name, "html": html.name}


def raise_for_budgets(result: BuildResult) -> None:
    """Raise BudgetError summarising every failed or unevaluable check (for callers that want an exception)."""
    if result.ok:
        return
    raise BudgetError(f"{result.verdict()}: " + "; ".join(c.message for c in result.failures),
                      where=result.config, fix="raise the budget in the config, or choose a smaller model or precision")
