"""``BuildResult``: what ``mobilekit.build`` produced, passed on to the reports, the CLI and ``build.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilekit.artifact import Manifest, artifact_label
from mobilekit.profiling.budget import BudgetCheck, failed_checks
from mobilekit.profiling.report import LatencyReport

if TYPE_CHECKING:  # the estimator (and torch) load only when a build estimates
    from mobilekit.estimation.api import LatencyEstimate

BUILD_SCHEMA_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class HostLatency:
    """One artifact's latency measured on this host during a build.

    Attributes:
        model: the build's name for the model (its table in the config).
        artifact: the artifact's path, relative to the model's output directory.
        report: the measurement (``source="host"``, no phone target).
        cached: True when it was read from the measurement cache.
        variant: the adapter variant the artifact is for (None: the base model).
    """

    model: str
    artifact: str
    report: LatencyReport
    cached: bool = False
    variant: str | None = None

    @property
    def label(self) -> str:
        """The artifact as reports name it (see ``artifact_label``)."""
        return artifact_label(self.artifact, self.variant)

    def to_dict(self) -> dict[str, Any]:
        """The report's dict with the build's labels (as in ``build.json``)."""
        return {**self.report.to_dict(), "model": self.model, "artifact": self.artifact, "variant": self.variant,
                "cached": self.cached}


@dataclass(frozen=True, kw_only=True)
class PhoneEstimate:
    """One artifact's estimated latency on one of its phone targets during a build.

    Attributes:
        model: the build's name for the model.
        artifact: the artifact's path, relative to the model's output directory.
        estimate: the estimate (``source="estimate"``), whose ``model`` is the build's name too.
        cached: True when it was read from the estimate cache.
        variant: the adapter variant the artifact is for (None: the base model).
    """

    model: str
    artifact: str
    estimate: LatencyEstimate
    cached: bool = False
    variant: str | None = None

    @property
    def label(self) -> str:
        """The artifact as reports name it (see ``artifact_label``)."""
        return artifact_label(self.artifact, self.variant)

    def to_dict(self) -> dict[str, Any]:
        """The estimate's dict with the build's labels (as in ``build.json``)."""
        return {**self.estimate.to_dict(), "model": self.model, "artifact": self.artifact, "variant": self.variant,
                "cached": self.cached}


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """What a build produced and whether it met its budgets.

    Attributes:
        config: the config path.
        out: the output directory.
        manifests: model name → its Manifest.
        reports: every host measurement, labelled with its model and artifact.
        estimates: every phone target's estimate, labelled with its model and artifact.
        checks: every configured budget check: pass, fail or error (could not be evaluated, with the reason).
        allow_errors: the config's allow_errors (True, or the check kinds whose errors don't fail the build).
        exported: artifacts built in this run (not from the cache).
        seconds: wall-clock seconds of the build.
        outputs: names of the files written (``build.json``, ``report.html``, ``report.md``).
    """

    config: str
    out: Path
    manifests: dict[str, Manifest]
    reports: list[HostLatency] = field(default_factory=list)
    estimates: list[PhoneEstimate] = field(default_factory=list)
    checks: list[BudgetCheck] = field(default_factory=list)
    allow_errors: bool | tuple[str, ...] = False
    exported: int = 0
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[BudgetCheck]:
        """Checks that fail the build: every ``fail``, and every ``error`` the config does not allow."""
        return failed_checks(self.checks, self.allow_errors)

    @property
    def ok(self) -> bool:
        """True when every budget was met and every check could be evaluated (or its error is allowed)."""
        return not self.failures

    def verdict(self) -> str:
        """One line: all met, or how many checks failed and how many could not be evaluated."""
        if not self.checks:
            return "no budgets configured"
        failed = sum(c.status == "fail" for c in self.failures)
        errors = len(self.failures) - failed
        allowed = sum(c.status == "error" for c in self.checks) - errors
        if not self.failures:
            return "all budgets met" + (f" ({allowed} allowed error(s))" if allowed else "")
        parts = [f"{failed} budget(s) exceeded"] if failed else []
        parts += [f"{errors} check(s) could not be evaluated"] if errors else []
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``build.json``."""
        return {"schema_version": BUILD_SCHEMA_VERSION, "config": self.config, "out": str(self.out), "ok": self.ok,
                "verdict": self.verdict(), "allow_errors": self.allow_errors,
                "seconds": round(self.seconds, 3), "exported": self.exported,
                "manifests": {k: str(Path(k) / "manifest.json") for k in self.manifests},
                "artifacts": {k: [a.to_dict() for a in m.artifacts] for k, m in self.manifests.items()},
                "reports": [r.to_dict() for r in self.reports],
                "estimates": [e.to_dict() for e in self.estimates],
                "checks": [c.to_dict() for c in self.checks], "outputs": self.outputs}
