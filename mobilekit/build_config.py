"""The build config: models, targets, precisions, adapters and budgets in one TOML file.

Read from ``mobilekit.toml`` or from ``[tool.mobilekit]`` in ``pyproject.toml``. Every table
has a fixed set of keys; an unknown key, target or precision is rejected with the file and
line it stands on.

Example ``mobilekit.toml``::

    [build]
    out = "build/mobilekit"
    targets = ["iphone-15-pro", "pixel-8"]
    precisions = ["fp32", "int8-dynamic"]

    [budgets]
    latency_ms = 50
    size_mb = 20

    [models.dit]
    spec = "builtin:dit-tiny"
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilekit.errors import ConfigError
from mobilekit.recipe import FORMATS, PRECISION_ALIASES, PRECISIONS, AdapterPolicy

BUILD_KEYS = {"out": "output directory (relative to the config file)",
              "targets": "target names", "formats": "formats to build (default: each target's default recipe)",
              "precisions": "precisions to build", "measure": "measure on this host where a runtime exists",
              "estimate": "estimate latency per target", "max_seconds": "seconds of timed runs per artifact",
              "cache_dir": "export cache directory", "workers": "parallel export processes"}
BUDGET_KEYS = {"latency_ms": "p50 ms, host measurement and per-target estimate",
               "size_mb": "artifact size in MiB (all files of an artifact)",
               "min_cosine": "lowest cosine similarity with PyTorch", "min_psnr_db": "lowest PSNR against PyTorch, dB"}
MODEL_KEYS = {"spec": "builtin:NAME, package.module:function, or a model folder",
              "inputs": "input shapes for a model folder", "targets": "override [build].targets",
              "formats": "override [build].formats", "precisions": "override [build].precisions",
              "adapters": "name -> adapter file or folder (LoRA)", "adapter_policy": "fuse or separate",
              "budgets": "override [budgets]"}
TOP_KEYS = {"build", "budgets", "models"}
_PRECISIONS = PRECISIONS + tuple(PRECISION_ALIASES)


@dataclass(frozen=True, kw_only=True)
class Budgets:
    """Limits a build must meet; None means no limit.

    Attributes:
        latency_ms: most p50 latency, ms (host measurements and per-target estimates).
        size_mb: most artifact size, MiB.
        min_cosine: least cosine similarity of outputs with PyTorch.
        min_psnr_db: least PSNR of outputs against PyTorch, dB.
    """

    latency_ms: float | None = None
    size_mb: float | None = None
    min_cosine: float | None = None
    min_psnr_db: float | None = None

    def merged(self, override: Budgets) -> Budgets:
        """These budgets with every non-None field of ``override`` applied."""
        return Budgets(**{k: getattr(override, k) if getattr(override, k) is not None else getattr(self, k)
                          for k in BUDGET_KEYS})


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One model of a build.

    Attributes:
        name: the table name (``[models.NAME]``), used in file names.
        spec: what to load (see ``mobilekit.spec.load_spec``).
        inputs: input shapes for a model folder.
        targets, formats, precisions: what to build.
        adapters: adapter name → path of a LoRA adapter.
        adapter_policy: ``fuse`` or ``separate``.
        budgets: the limits this model's artifacts must meet.
    """

    name: str
    spec: str
    inputs: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    adapters: dict[str, Path] = field(default_factory=dict)
    adapter_policy: str = "fuse"
    budgets: Budgets = field(default_factory=Budgets)


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """A whole build, read from one file.

    Attributes:
        path: the file it was read from.
        out: output directory (absolute).
        models: the models to build.
        measure: measure on this host where a runtime exists.
        estimate: estimate latency per target.
        max_seconds: seconds of timed runs per artifact.
        cache_dir: export cache directory, or None for the default.
        workers: parallel export processes.
    """

    path: Path
    out: Path
    models: tuple[ModelEntry, ...]
    measure: bool = True
    estimate: bool = True
    max_seconds: float = 2.0
    cache_dir: Path | None = None
    workers: int = 1


def _line_of(text: str, table: str, key: str) -> int | None:
    """1-based line of ``key = ...`` inside ``[table]`` (or the table header when key is empty)."""
    current = ""
    for i, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).replace('"', "").replace(" ", "")
            if not key and current == table:
                return i
            continue
        if current == table and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return i
    return None


class _Reader:
    """Validates one table of the file and names file:line in every error."""

    def __init__(self, path: Path, text: str, prefix: str) -> None:
        self.path, self.text, self.prefix = path, text, prefix

    def where(self, table: str, key: str = "") -> str:
        full = ".".join(p for p in (self.prefix, table) if p)
        line = _line_of(self.text, full, key)
        return f"{self.path}:{line}" if line else str(self.path)

    def check_keys(self, table: str, data: Any, known: dict[str, str] | set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ConfigError(f"[{table}] must be a table", where=self.where(table))
        for key in data:
            if key not in known:
                near = difflib.get_close_matches(key, list(known), n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(f"unknown key {key!r} in [{table}]", where=self.where(table, key),
                                  fix=f"{hint}known keys: {', '.join(sorted(known))}")
        return data

    def strings(self, table: str, key: str, value: Any, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} in [{table}] must be a list of strings", where=self.where(table, key))
        if allowed is not None:
            for v in value:
                if v not in allowed:
                    near = difflib.get_close_matches(v, allowed, n=1)
                    raise ConfigError(f"unknown {key[:-1] if key.endswith('s') else key} {v!r} in [{table}]",
                                      where=self.where(table, key),
                                      fix=(f"did you mean {near[0]!r}? " if near else "") + f"known: {', '.join(allowed)}")
        return tuple(value)

    def targets(self, table: str, value: Any) -> tuple[str, ...]:
        from mobilekit.targets import get_target

        names = self.strings(table, "targets", value)
        out = []
        for n in names:
            try:
                out.append(get_target(n).name)
            except ConfigError as exc:
                raise ConfigError(exc.message, where=self.where(table, "targets"), fix=exc.fix) from exc
        return tuple(out)

    def budgets(self, table: str, data: Any) -> Budgets:
        data = self.check_keys(table, data, BUDGET_KEYS)
        for k, v in data.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{k} in [{table}] must be a number >= 0, got {v!r}", where=self.where(table, k))
        return Budgets(**{k: float(v) for k, v in data.items()})


def load_build_config(path: str | Path) -> BuildConfig:
    """Read and validate a build config.

    Args:
        path: ``mobilekit.toml`` (or any TOML with the same tables), or ``pyproject.toml`` holding
            ``[tool.mobilekit]``, or a directory holding one of them.

    Raises:
        ConfigError: unreadable file, unknown key, target or precision (with ``file:line``).

    Example:
        >>> config = load_build_config("mobilekit.toml")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        for name in ("mobilekit.toml", "pyproject.toml"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ConfigError("no mobilekit.toml or pyproject.toml here", where=str(path),
                              fix="pass --config FILE")
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read build config: {exc.strerror or exc}", where=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"build config is not valid TOML: {exc}", where=str(path)) from exc
    prefix = ""
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("mobilekit")
        prefix = "tool.mobilekit"
        if data is None:
            raise ConfigError("pyproject.toml has no [tool.mobilekit] table", where=str(path),
                              fix="add [tool.mobilekit.build] and [tool.mobilekit.models.NAME] tables")
    r = _Reader(path, text, prefix)
    r.check_keys(prefix or "<top level>", data, TOP_KEYS)
    build = r.check_keys("build", data.get("build", {}), BUILD_KEYS)
    budgets = r.budgets("budgets", data.get("budgets", {}))
    targets = r.targets("build", build["targets"]) if "targets" in build else ()
    formats = r.strings("build", "formats", build["formats"], FORMATS) if "formats" in build else ()
    precisions = r.strings("build", "precisions", build["precisions"], _PRECISIONS) if "precisions" in build else ()
    models_data = data.get("models", {})
    if not isinstance(models_data, dict) or not models_data:
        raise ConfigError("the build names no model", where=r.where("models") if models_data else str(path),
                          fix='add a table [models.NAME] with spec = "builtin:dit-tiny" (or your own)')
    models = []
    for name, entry in models_data.items():
        table = f"models.{name}"
        entry = r.check_keys(table, entry, MODEL_KEYS)
        if "spec" not in entry or not isinstance(entry["spec"], str):
            raise ConfigError(f"[{table}] needs spec = \"...\"", where=r.where(table),
                              fix="spec is builtin:NAME, package.module:function or a model folder")
        m_targets = r.targets(table, entry["targets"]) if "targets" in entry else targets
        if not m_targets:
            raise ConfigError(f"[{table}] has no targets", where=r.where(table),
                              fix="set targets in [build] or in the model's table")
        policy = entry.get("adapter_policy", "fuse")
        if policy not in {p.value for p in AdapterPolicy}:
            raise ConfigError(f"unknown adapter_policy {policy!r} in [{table}]", where=r.where(table, "adapter_policy"),
                              fix="use fuse or separate")
        adapters = entry.get("adapters", {})
        if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
            raise ConfigError(f"adapters in [{table}] must map names to paths", where=r.where(table, "adapters"))
        model_budgets = r.budgets(f"{table}.budgets", entry["budgets"]) if "budgets" in entry else Budgets()
        spec = entry["spec"]
        if not spec.startswith("builtin:") and ":" not in spec and not Path(spec).is_absolute():
            spec = str((path.parent / spec).resolve())
        models.append(ModelEntry(
            name=name, spec=spec, inputs=r.strings(table, "inputs", entry.get("inputs", [])),
            targets=m_targets,
            formats=r.strings(table, "formats", entry["formats"], FORMATS) if "formats" in entry else formats,
            precisions=(r.strings(table, "precisions", entry["precisions"], _PRECISIONS) if "precisions" in entry
                        else precisions),
            adapters={k: (path.parent / v).resolve() for k, v in adapters.items()}, adapter_policy=policy,
            budgets=budgets.merged(model_budgets)))
    for key, kind in (("measure", bool), ("estimate", bool), ("max_seconds", (int, float)), ("workers", int)):
        if key in build and not isinstance(build[key], kind):
            raise ConfigError(f"{key} in [build] has the wrong type: {build[key]!r}", where=r.where("build", key))
    out = path.parent / build.get("out", "build/mobilekit")
    cache_dir = (path.parent / build["cache_dir"]) if "cache_dir" in build else None
    return BuildConfig(path=path, out=out.resolve(), models=tuple(models), measure=build.get("measure", True),
                       estimate=build.get("estimate", True), max_seconds=float(build.get("max_seconds", 2.0)),
                       cache_dir=cache_dir, workers=int(build.get("workers", 1)))
