"""The export plan: which target gets which recipe, and what was skipped and why.

Asking for several targets and several formats means "each target gets the formats it runs":
``--target iphone-15-pro --target pixel-8 --format coreml --format tflite`` builds Core ML and
TFLite for the iPhone and TFLite for the Pixel, and records that the Pixel skipped Core ML. Only
a format (or precision) that *no* requested target can get is refused, before any work.

Without formats, each target gets its default recipe; with a precision its default format
cannot build (Core ML has no ``int8-dynamic``), the target's first listed recipe whose format
can is used instead, and the plan says so.

The plan is printed before work starts (CLI, ``mobilekit build``) and recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mobilekit.errors import ConfigError
from mobilekit.recipe import DELEGATES, PRECISION_ALIASES, Recipe, recipe_for_target


@dataclass
class PlannedRecipe:
    """One recipe to build, the targets it serves, and why it was chosen when not asked for by name.

    Attributes:
        recipe: what to build.
        targets: names of the targets that get this artifact.
        notes: e.g. ``iphone-15-pro: coreml cannot build int8-dynamic; using its recipe executorch-…``.
        key: the cache key, filled in by the export.
    """

    recipe: Recipe
    targets: list[str]
    notes: list[str] = field(default_factory=list)
    key: str = ""


@dataclass(frozen=True)
class Skipped:
    """A (target, format, precision) cell that was asked for but is not built, and why."""

    target: str
    format: str | None
    precision: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "format": self.format, "precision": self.precision, "reason": self.reason}


@dataclass
class ExportPlan:
    """Every recipe an export builds (deduplicated across targets) and every cell it skips."""

    builds: list[PlannedRecipe]
    skipped: list[Skipped] = field(default_factory=list)

    def describe(self) -> list[str]:
        """Human lines: one per recipe with its targets, then one per skipped cell with the reason."""
        lines = [f"build {p.recipe.name} for {', '.join(p.targets)}" + (f" ({'; '.join(p.notes)})" if p.notes else "")
                 for p in self.builds]
        lines += [f"skip {s.target}/{s.format or 'default'}" + (f" at {s.precision}" if s.precision else "")
                  + f": {s.reason}" for s in self.skipped]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        return {"builds": [{"recipe": p.recipe.name, "targets": list(p.targets), "notes": list(p.notes)}
                           for p in self.builds],
                "skipped": [s.to_dict() for s in self.skipped]}


def _supports(recipe: Recipe) -> Any:
    from mobilekit.converters import get_converter

    return get_converter(recipe.format).supports(recipe)


def _resolve(target: Any, fmt: str | None, precision: str | None, adapter_policy: str) -> tuple[Recipe, str | None]:
    """The target's recipe for a format and precision, and a note when it is not the obvious one.

    A generic ``int8`` takes the first int8 variant the backend builds. A precision the target's
    preferred recipe can't build falls back to the target's other listed recipes (any format when
    none was asked for), then to the other delegates it runs for the format (an iPhone runs
    ExecuTorch with XNNPACK as well as Core ML).
    """
    precisions = PRECISION_ALIASES.get(precision or "", (precision,))
    first: Recipe | None = None
    for p in precisions:
        recipe = recipe_for_target(target, format=fmt, precision=p, adapter_policy=adapter_policy)
        first = first or recipe
        if _supports(recipe):
            return recipe, None
    assert first is not None
    if precision is None:
        return first, None
    options = [(r.format, r.delegate) for r in map(Recipe.parse, target.recipes) if fmt is None or r.format == fmt]
    if fmt is not None:
        options += [(fmt, d) for d in DELEGATES[fmt] if d in target.formats.get(fmt, ())]
    for f, d in dict.fromkeys(options):
        for p in precisions:
            recipe = recipe_for_target(target, format=f, delegate=d, precision=p, adapter_policy=adapter_policy)
            if _supports(recipe):
                if fmt is None:
                    return recipe, (f"{target.name}: its default format {first.format} cannot build {precision}; "
                                    f"using its listed recipe {recipe.name}")
                preferred = f"{fmt}-{first.delegate}" if first.delegate else fmt
                return recipe, f"{target.name}: {preferred} cannot build {precision}; using {recipe.name}"
    return first, None


def plan_exports(targets: Sequence[str], *, formats: Sequence[str] | None = None,
                 precision: str | Sequence[str] | None = None, adapter_policy: str = "fuse") -> ExportPlan:
    """Resolve targets × formats × precisions into recipes; a recipe several targets need is built once.

    Args:
        targets: target names (``profiles/``).
        formats: formats to build for every target that runs them; None: each target's default.
        precision: a precision, a list of them, or None for each recipe's own.
        adapter_policy: ``fuse`` or ``separate``.

    Raises:
        ConfigError: an unknown target; a format no requested target runs; a format × precision no
            backend builds (with the recipes that can be built); nothing left to build.

    Example:
        >>> plan = plan_exports(["iphone-15-pro", "pixel-8"], formats=["coreml", "tflite"])  # doctest: +SKIP
        >>> [s.target for s in plan.skipped]  # doctest: +SKIP
        ['pixel-8']
    """
    from mobilekit.targets import get_target

    if not targets:
        raise ConfigError("no target given", where="targets", fix="name at least one, e.g. --target pixel-8")
    precisions = [precision] if precision is None or isinstance(precision, str) else list(precision)
    resolved = [get_target(name) for name in dict.fromkeys(targets)]
    builds: dict[Recipe, PlannedRecipe] = {}
    skipped: list[Skipped] = []
    refusals: dict[tuple[str | None, str | None], list[str]] = {}
    built: set[tuple[str | None, str | None]] = set()
    for target in resolved:
        for fmt in formats or [None]:
            if fmt is not None and fmt.lower() not in target.formats:
                reason = f"{target.name} does not run {fmt} (it runs {', '.join(target.formats)})"
                skipped.append(Skipped(target.name, fmt, None, reason))
                refusals.setdefault((fmt, None), []).append(reason)
                continue
            for prec in precisions:
                recipe, note = _resolve(target, fmt, prec, adapter_policy)
                support = _supports(recipe)
                if not support:
                    reason = f"{support.reason} (buildable: {', '.join(support.supported)})"
                    skipped.append(Skipped(target.name, fmt or recipe.format, prec, reason))
                    refusals.setdefault((fmt, prec), []).append(reason)
                    continue
                built.add((fmt, prec))
                plan = builds.setdefault(recipe, PlannedRecipe(recipe, []))
                if target.name not in plan.targets:
                    plan.targets.append(target.name)
                if note and note not in plan.notes:
                    plan.notes.append(note)
    # Refuse, before any work, whatever no requested target can get.
    for fmt in formats or [None]:
        for prec in precisions:
            if (fmt, prec) in built:
                continue
            reasons = refusals.get((fmt, prec)) or refusals.get((fmt, None)) or ["no recipe"]
            what = f"format {fmt}" if prec is None else f"{fmt or 'the default format'} at {prec}"
            raise ConfigError(f"no requested target can get {what}: {'; '.join(dict.fromkeys(reasons))}",
                              where="/".join(t.name for t in resolved),
                              fix="drop it, or add a target that runs it (`mobilekit targets` lists what each runs)")
    if not builds:
        raise ConfigError("nothing to build", where="targets", fix="check the targets, formats and precisions")
    return ExportPlan(list(builds.values()), skipped)
