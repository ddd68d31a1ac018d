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
    host_latency_ms = 50      # measured on this host
    phone_latency_ms = 30     # each phone target's estimate (or { pixel-8 = 40, iphone-15-pro = 25 })
    size_mb = 20

    [models.dit]
    spec = "builtin:dit-tiny"
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilekit.errors import ConfigError
from mobilekit.profiling.budget import CHECK_KINDS, Budget
from mobilekit.images import ImageOutput
from mobilekit.sampling import Sampling
from mobilekit.recipe import FORMATS, PRECISION_ALIASES, PRECISIONS, AdapterPolicy

BUILD_KEYS = {"out": "output directory (relative to the config file)",
              "targets": "target names", "formats": "formats to build (default: each target's default recipe)",
              "precisions": "precisions to build", "measure": "measure on this host where a runtime exists",
              "estimate": "estimate latency per target", "max_seconds": "seconds of timed runs per artifact",
              "cache_dir": "export cache directory", "workers": "parallel export processes",
              "parity_samples": "inputs parity compares when a model gives no parity_inputs (default 4)",
              "allow_errors": f"true, or check kinds ({', '.join(CHECK_KINDS)}) whose 'could not be evaluated' "
                              "does not fail the build"}
BUDGET_KEYS = {"host_latency_ms": "most latency measured on this host, ms",
               "phone_latency_ms": "most latency on each phone target (estimated), ms; a number or {target = ms}",
               "latency_stat": "the latency statistic the limits apply to: p50 (default), p90, p99, mean",
               "size_mb": "artifact size in MiB (all files of an artifact)",
               "memory_mb": "peak memory the model adds while running on this host, MiB",
               "min_cosine": "lowest cosine similarity with PyTorch", "min_psnr_db": "lowest PSNR against PyTorch, dB",
               "min_sample_cosine": "lowest cosine of a denoiser's final sample after the sampling loop",
               "min_sample_psnr_db": "lowest PSNR of a denoiser's final sample after the sampling loop, dB",
               "min_image_psnr_db": "lowest PSNR of an image model's output as 8-bit pictures (peak 255), dB"}
# Budget keys as the TOML names them → the Budget field they fill
_BUDGET_FIELDS = {"host_latency_ms": "host_ms", "phone_latency_ms": "phone_ms", "latency_stat": "stat",
                  "size_mb": "size_mb", "memory_mb": "memory_mb", "min_cosine": "min_cosine",
                  "min_psnr_db": "min_psnr_db", "min_sample_cosine": "min_sample_cosine",
                  "min_sample_psnr_db": "min_sample_psnr_db", "min_image_psnr_db": "min_image_psnr_db"}
MODEL_KEYS = {"spec": "builtin:NAME, package.module:function, or a model folder",
              "inputs": "input shapes for a model folder", "targets": "override [build].targets",
              "formats": "override [build].formats", "precisions": "override [build].precisions",
              "adapters": "name -> adapter file or folder (LoRA)", "adapter_policy": "fuse or separate",
              "budgets": "override [budgets]",
              "sampling": "check a diffusion denoiser over a sampling loop: true, or {steps, scheduler, "
                          "latents_input, timestep_input, seed}",
              "image_output": "compare an image model's output as 8-bit pictures: true ([-1, 1]), [low, high], "
                              "or {output, range}",
              "calibration": "int8-static calibration batches: .npz/.safetensors, input name -> [N, *shape]",
              "parity_inputs": "inputs parity is checked on besides the example: .npz/.safetensors, input name -> "
                               "[N, *shape] (kept apart from calibration)"}
TOP_KEYS = {"build", "budgets", "models"}
_PRECISIONS = PRECISIONS + tuple(PRECISION_ALIASES)


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
        calibration: file of int8-static calibration batches, or None (the spec's own, else synthesized).
        parity_inputs: file of parity inputs besides the example, or None (held-out ones synthesized).
        sampling: the sampling loop a denoiser is checked over, or None.
        image: which output is an image (and its range), for 8-bit image parity, or None.
    """

    name: str
    spec: str
    inputs: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    adapters: dict[str, Path] = field(default_factory=dict)
    adapter_policy: str = "fuse"
    budgets: Budget = field(default_factory=Budget)
    calibration: Path | None = None
    parity_inputs: Path | None = None
    sampling: Sampling | None = None
    image: ImageOutput | None = None


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
        parity_samples: inputs parity compares for a model without ``parity_inputs``.
        allow_errors: True, or the check kinds whose errors (a configured check that could not be
            evaluated) do not fail the build; False (the default) fails on every error.
    """

    path: Path
    out: Path
    models: tuple[ModelEntry, ...]
    measure: bool = True
    estimate: bool = True
    max_seconds: float = 2.0
    cache_dir: Path | None = None
    workers: int = 1
    allow_errors: bool | tuple[str, ...] = False
    parity_samples: int = 4


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

    def budgets(self, table: str, data: Any) -> Budget:
        if isinstance(data, dict) and "latency_ms" in data:
            # one number cannot bound both an x86 host measurement and a phone estimate
            raise ConfigError(f"latency_ms in [{table}] is ambiguous", where=self.where(table, "latency_ms"),
                              fix="use host_latency_ms (measured on this host) and/or phone_latency_ms "
                                  "(each phone target's estimate)")
        data = self.check_keys(table, data, BUDGET_KEYS)
        values: dict[str, Any] = {}
        for k, v in data.items():
            if k == "latency_stat":
                values["stat"] = v
                continue
            if k == "phone_latency_ms" and isinstance(v, dict):
                by_target = {}
                for target, ms in v.items():
                    try:
                        name = self.targets(table, [target])[0]
                    except ConfigError as exc:
                        raise ConfigError(exc.message, where=self.where(table, k), fix=exc.fix) from exc
                    by_target[name] = self.number(table, f"{k}.{target}", ms)
                values["phone_ms_by_target"] = by_target
                continue
            values[_BUDGET_FIELDS[k]] = self.number(table, k, v)
        try:
            return Budget(**values)
        except ConfigError as exc:
            key = next((k for k, f in _BUDGET_FIELDS.items() if f == exc.where), exc.where)
            raise ConfigError(f"{exc.message} ({key} in [{table}])", where=self.where(table, key), fix=exc.fix) from exc

    def number(self, table: str, key: str, v: Any) -> float:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{key} in [{table}] must be a number >= 0, got {v!r}",
                              where=self.where(table, key.split(".")[0]))
        return float(v)

    def file(self, table: str, key: str, value: Any, base: Path) -> Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key} in [{table}] must be a file path", where=self.where(table, key))
        found = (base / value).resolve()
        if not found.is_file():
            raise ConfigError(f"{key} file {value!r} in [{table}] does not exist", where=self.where(table, key),
                              fix=f"looked for {found}")
        return found

    def sampling(self, table: str, value: Any) -> Sampling | None:
        if value is False:
            return None
        if value is True:
            return Sampling()
        known = {f.name for f in dataclasses.fields(Sampling)}
        data = self.check_keys(f"{table}.sampling", value, known)
        try:
            return Sampling(**data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"sampling in [{table}]: {getattr(exc, 'message', exc)}",
                              where=self.where(table, "sampling"), fix=getattr(exc, "fix", None)) from exc

    def image(self, table: str, value: Any) -> ImageOutput | None:
        if value is False:
            return None
        try:
            return ImageOutput.parse(value)
        except ConfigError as exc:
            raise ConfigError(f"image_output in [{table}]: {exc.message}", where=self.where(table, "image_output"),
                              fix=exc.fix) from exc

    def allow_errors(self, value: Any) -> bool | tuple[str, ...]:
        if isinstance(value, bool):
            return value
        return self.strings("build", "allow_errors", value, CHECK_KINDS)


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
        model_budgets = r.budgets(f"{table}.budgets", entry["budgets"]) if "budgets" in entry else Budget()
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
            budgets=budgets.merged(model_budgets),
            sampling=r.sampling(table, entry["sampling"]) if "sampling" in entry else None,
            image=r.image(table, entry["image_output"]) if "image_output" in entry else None,
            **{key: r.file(table, key, entry[key], path.parent) for key in ("calibration", "parity_inputs")
               if key in entry}))
    for key, kind in (("measure", bool), ("estimate", bool), ("max_seconds", (int, float)), ("workers", int),
                      ("parity_samples", int)):
        if key in build and not isinstance(build[key], kind):
            raise ConfigError(f"{key} in [build] has the wrong type: {build[key]!r}", where=r.where("build", key))
    measure, estimate = build.get("measure", True), build.get("estimate", True)
    for m in models:
        # a limit nothing in this build would evaluate is refused now, not reported green later
        if m.budgets.host_ms is not None and not measure:
            raise ConfigError(f"models.{m.name} has host_latency_ms but [build] measure = false",
                              where=r.where("build", "measure"), fix="set measure = true or drop host_latency_ms")
        if (m.budgets.phone_ms is not None or m.budgets.phone_ms_by_target) and not estimate:
            raise ConfigError(f"models.{m.name} has phone_latency_ms but [build] estimate = false",
                              where=r.where("build", "estimate"), fix="set estimate = true or drop phone_latency_ms")
        if m.budgets.memory_mb is not None and not measure:
            raise ConfigError(f"models.{m.name} has memory_mb but [build] measure = false",
                              where=r.where("build", "measure"), fix="set measure = true or drop memory_mb")
    out = path.parent / build.get("out", "build/mobilekit")
    cache_dir = (path.parent / build["cache_dir"]) if "cache_dir" in build else None
    return BuildConfig(path=path, out=out.resolve(), models=tuple(models), measure=measure, estimate=estimate,
                       max_seconds=float(build.get("max_seconds", 2.0)), cache_dir=cache_dir,
                       workers=int(build.get("workers", 1)),
                       allow_errors=r.allow_errors(build["allow_errors"]) if "allow_errors" in build else False,
                       parity_samples=int(build.get("parity_samples", 4)))
