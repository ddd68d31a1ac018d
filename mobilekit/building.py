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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilekit._io import write_json_atomic, write_text_atomic
from mobilekit.artifact import Artifact, Manifest
from mobilekit.build_config import BuildConfig, Budgets, ModelEntry, load_build_config
from mobilekit.cache import default_cache_dir
from mobilekit.errors import BackendUnavailableError, BudgetError, ConfigError, RuntimeCrashError
from mobilekit.profiling.budget import BudgetCheck

if TYPE_CHECKING:
    from mobilekit.plan import ExportPlan

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
BUILD_SCHEMA_VERSION = 1
HOST_FORMATS = {("executorch", "xnnpack"), ("tflite", None), ("onnx", None)}


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """What a build produced and whether it met its budgets.

    Attributes:
        config: the config path.
        out: the output directory.
        manifests: model name → its Manifest.
        reports: host LatencyReports (as dicts).
        estimates: per-target LatencyEstimates (as dicts).
        checks: every budget check.
        exported: artifacts built in this run (not from the cache).
        seconds: wall-clock seconds of the build.
        outputs: names of the files written (``build.json``, ``report.html``, ``report.md``).
    """

    config: str
    out: Path
    manifests: dict[str, Manifest]
    reports: list[dict[str, Any]] = field(default_factory=list)
    estimates: list[dict[str, Any]] = field(default_factory=list)
    checks: list[BudgetCheck] = field(default_factory=list)
    exported: int = 0
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[BudgetCheck]:
        """Budget checks that failed."""
        return [c for c in self.checks if not c.passed]

    @property
    def ok(self) -> bool:
        """True when every budget was met."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``build.json``."""
        return {"schema_version": BUILD_SCHEMA_VERSION, "config": self.config, "out": str(self.out), "ok": self.ok,
                "seconds": round(self.seconds, 3), "exported": self.exported,
                "manifests": {k: str(Path(k) / "manifest.json") for k in self.manifests},
                "artifacts": {k: [a.to_dict() for a in m.artifacts] for k, m in self.manifests.items()},
                "reports": self.reports, "estimates": self.estimates,
                "checks": [c.to_dict() for c in self.checks], "outputs": self.outputs}


def _json_cache(root: Path, kind: str, key: str) -> Path:
    return root / kind / key[:2] / f"{key}.json"


def _cached_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _host_id() -> str:
    from mobilekit.profiling.host import host_device

    return json.dumps(host_device(), sort_keys=True, default=str) + platform.python_version()


def _measure(artifact: Artifact, manifest: Manifest, entry: ModelEntry, config: BuildConfig,
             cache_root: Path) -> dict[str, Any] | None:
    """Host LatencyReport of one artifact (cached by its hash and the settings), or None without a runtime."""
    if (artifact.format, artifact.delegate) not in HOST_FORMATS:
        return None
    from mobilekit.profiling.host import profile

    key = hashlib.sha256(f"{artifact.sha256}|{config.max_seconds}|{_host_id()}".encode()).hexdigest()
    cached_path = _json_cache(cache_root, "measurements", key)
    hit = _cached_json(cached_path)
    if hit is not None:
        return {**hit, "artifact": artifact.path, "cached": True}
    try:
        # the Artifact (not just its path) carries extra files such as a shared ExecuTorch .ptd
        located = replace(artifact, path=str(manifest.path_of(artifact)))
        report = profile(artifact=located, target=artifact.targets[0], max_seconds=config.max_seconds)
    except (BackendUnavailableError, RuntimeCrashError) as exc:
        logger.warning("could not measure %s: %s", artifact.path, exc)
        return None
    data = report.to_dict() if hasattr(report, "to_dict") else dict(report)  # type: ignore[arg-type]
    data["model"] = entry.name
    write_json_atomic(cached_path, data)
    return {**data, "artifact": artifact.path, "cached": False}


def _estimate(artifact: Artifact, target: str, loaded: Any, entry: ModelEntry,
              cache_root: Path) -> dict[str, Any] | None:
    """Per-target LatencyEstimate of one artifact's model and recipe (cached by the export's key)."""
    from mobilekit import __version__

    key = hashlib.sha256(f"{artifact.cache_key}|{target}|{__version__}".encode()).hexdigest()
    cached_path = _json_cache(cache_root, "estimates", key)
    hit = _cached_json(cached_path)
    if hit is not None:
        return {**hit, "artifact": artifact.path, "cached": True}
    from mobilekit.estimation import estimate

    model = loaded()
    try:
        est = estimate(model.model, model.example_inputs, target=target, format=artifact.format,
                       precision=artifact.precision)
    except ConfigError as exc:  # e.g. the profile lacks the peak this unit and precision need
        logger.warning("no estimate of %s on %s: %s", artifact.path, target, exc)
        return None
    data = est.to_dict()
    data["model"] = entry.name
    write_json_atomic(cached_path, data)
    return {**data, "artifact": artifact.path, "cached": False}


def _check(entry: ModelEntry, artifact: Artifact, budgets: Budgets, reports: list[dict[str, Any]],
           estimates: list[dict[str, Any]]) -> list[BudgetCheck]:
    """Apply the model's budgets to one artifact: size, parity, host p50 and each target's estimate."""
    checks = []

    def add(metric: str, limit: float | None, value: float | None, source: str, floor: bool = False) -> None:
        if limit is None:
            return
        label = f"{entry.name}/{artifact.path} ({source})"
        if value is None:
            checks.append(BudgetCheck(report=label, artifact=artifact.path, metric=metric, limit=limit, value=None,
                                      status="skipped", message=f"{label}: {metric} not available"))
            return
        failed = value < limit if floor else value > limit
        relation = ("<" if failed else ">=") if floor else (">" if failed else "<=")
        checks.append(BudgetCheck(report=label, artifact=artifact.path, metric=metric, limit=limit,
                                  value=round(value, 6), status="fail" if failed else "pass",
                                  message=f"{label}: {metric} {value:.4g} {relation} {limit:g}"))

    add("artifact_size_mb", budgets.size_mb, artifact.size_bytes / 2**20, "file")
    if artifact.parity.status != "not-run":
        add("min_cosine", budgets.min_cosine, artifact.parity.cosine, "parity", floor=True)
        add("min_psnr_db", budgets.min_psnr_db, artifact.parity.psnr_db, "parity", floor=True)
    for r in reports:
        if r["artifact"] == artifact.path:
            add("latency_p50_ms", budgets.latency_ms, r["p50_ms"], "host")
    for e in estimates:
        if e["artifact"] == artifact.path:
            add("latency_p50_ms", budgets.latency_ms, e["ms"], f"estimate {e['target']}")
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
        BudgetError: is not raised; check ``result.ok`` (the CLI turns failures into a non-zero exit).

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
    reports: list[dict[str, Any]] = []
    estimates: list[dict[str, Any]] = []
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
                                            workers=config.workers)
        else:
            manifest = export(spec.model, spec.example_inputs, targets=list(entry.targets), out_dir=out,
                              precision=list(entry.precisions) or None, formats=list(entry.formats) or None,
                              calibration=spec.calibration or None, cache_dir=config.cache_dir,
                              workers=config.workers, model_name=entry.name,
                              input_names=spec.input_names or None, adapter_policy=entry.adapter_policy)
        manifests[entry.name] = manifest
        exported += sum(not a.cached for a in manifest.artifacts)
        model_reports, model_estimates = [], []
        for a in manifest.artifacts:
            if config.measure:
                progress(f"measure {a.path}", i, total)
                r = _measure(a, manifest, entry, config, cache_root)
                if r is not None:
                    model_reports.append(r)
            if config.estimate and a.adapter is None:
                for t in a.targets:
                    e = _estimate(a, t, loaded, entry, cache_root)
                    if e is not None:
                        model_estimates.append(e)
        for a in manifest.artifacts:
            checks.extend(_check(entry, a, entry.budgets, model_reports, model_estimates))
        reports.extend(model_reports)
        estimates.extend(model_estimates)
    result = BuildResult(config=str(config.path), out=config.out, manifests=manifests, reports=reports,
                         estimates=estimates, checks=checks, exported=exported,
                         seconds=time.perf_counter() - start)
    outputs = _write_reports(result)
    result = BuildResult(**{**result.__dict__, "outputs": outputs, "seconds": time.perf_counter() - start})
    write_json_atomic(config.out / "build.json", {**result.to_dict(),
                                                  "created": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    progress("done", total, total)
    return result


def _write_reports(result: BuildResult) -> dict[str, str]:
    """Write ``report.md`` and ``report.html`` next to ``build.json``."""
    from mobilekit.reporting import build_html, build_markdown

    md = write_text_atomic(result.out / "report.md", build_markdown(result))
    html = write_text_atomic(result.out / "report.html", build_html(result))
    return {"build": "build.json", "markdown": md.name, "html": html.name}


def raise_for_budgets(result: BuildResult) -> None:
    """Raise BudgetError summarising every failed budget (for callers that want an exception)."""
    if result.ok:
        return
    raise BudgetError(f"{len(result.failures)} budget(s) exceeded: " + "; ".join(c.message for c in result.failures),
                      where=result.config, fix="raise the budget in the config, or choose a smaller model or precision")
