"""Targets: the device profiles shipped in ``mobilekit.profiles`` (one TOML file per phone).

A :class:`Target` says what a phone can run (formats and delegates), how fast its compute
units are on paper (peak GFLOP/s or GOP/s per precision), its memory bandwidth, and which
export recipe to try first. Every number in a profile carries a source; the schema is
described field by field in ``profiles/README.md``.

Example:
    >>> from mobilekit.targets import get_target
    >>> t = get_target("pixel-8")
    >>> t.platform, t.default_recipe
    ('android', 'executorch-xnnpack-int8-dynamic')
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilekit.errors import ConfigError
from mobilekit.recipe import FORMATS, PRECISIONS, Recipe

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

__all__ = [
    "COMPUTE_KINDS",
    "FORMATS",
    "PEAK_PRECISIONS",
    "PLATFORMS",
    "PRECISIONS",
    "ComputeUnit",
    "Target",
    "get_target",
    "list_targets",
    "load_target_file",
]

PLATFORMS = ("ios", "android")
# The format/precision vocabulary is the recipe module's; re-exported here for profile readers.
COMPUTE_KINDS = ("cpu", "gpu", "npu")
# Keys of ComputeUnit.peak_gops: arithmetic precisions of the hardware, not export recipes.
PEAK_PRECISIONS = ("fp32", "fp16", "int8")
SCHEMA_VERSION = 1
# Top-level numeric fields that must each have an entry in [sources].
_SOURCED_NUMBERS = ("year", "ram_gb", "memory_bandwidth_gbps")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_COREML_TARGET_RE = re.compile(r"^iOS\d{2}$")
_PROFILE_PACKAGE = "mobilekit.profiles"


@dataclass(frozen=True)
class ComputeUnit:
    """One compute unit of a phone's SoC.

    Attributes:
        kind: ``"cpu"``, ``"gpu"`` or ``"npu"`` (the Apple Neural Engine is an ``"npu"``).
        name: what the unit is, e.g. ``"1x Cortex-X3 @2.91GHz + 4x Cortex-A715 @2.37GHz"``.
        peak_gops: dense peak throughput per arithmetic precision (``"fp32"``, ``"fp16"``,
            ``"int8"``) in GFLOP/s (floating point) or GOP/s (int8); a precision whose peak
            is not published is absent.
        delegates: runtimes/delegates that reach this unit, e.g. ``("xnnpack",)``.
        source: where each number comes from, with the arithmetic when derived.
    """

    kind: str
    name: str
    peak_gops: dict[str, float]
    delegates: tuple[str, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of this unit."""
        return {"kind": self.kind, "name": self.name, "peak_gops": dict(self.peak_gops),
                "delegates": list(self.delegates), "source": self.source}


@dataclass(frozen=True)
class Target:
    """A device profile: what a phone runs and how fast it is on paper.

    Attributes:
        name: profile name, equal to the file stem (``"iphone-15-pro"``).
        display_name: marketing name (``"Apple iPhone 15 Pro"``).
        platform: ``"ios"`` or ``"android"``.
        soc: system on chip (``"Apple A17 Pro"``).
        year: launch year of the phone.
        aliases: other names this profile answers to (case-insensitive), e.g. the device
            names used in published latency tables.
        memory_bandwidth_gbps: peak DRAM bandwidth in GB/s (10^9 bytes/s), or None when
            not published.
        ram_gb: installed RAM in GB, or None when unknown (reference designs).
        formats: format -> delegates the device runs, e.g. ``{"coreml": ("cpu", "gpu", "ane")}``.
        default_recipe: recipe name ``<format>[-<delegate>]-<precision>`` to try first.
        recipes: recipe names in preference order, default first.
        coreml_deployment_target: Core ML minimum deployment target (iOS only), e.g. ``"iOS17"``.
        compute_units: the CPU, GPU and NPU(s), each with its peaks and sources.
        sources: field -> source for every top-level number.
        raw: the whole parsed file, for extra fields (``notes``, cluster details).
    """

    name: str
    display_name: str
    platform: str
    soc: str
    year: int
    aliases: tuple[str, ...]
    memory_bandwidth_gbps: float | None
    ram_gb: float | None
    formats: dict[str, tuple[str, ...]]
    default_recipe: str
    recipes: tuple[str, ...]
    coreml_deployment_target: str | None
    compute_units: tuple[ComputeUnit, ...]
    sources: dict[str, str]
    raw: dict = field(repr=False, compare=False)

    def unit(self, kind: str) -> ComputeUnit | None:
        """Return the first compute unit of ``kind`` (``"cpu"``, ``"gpu"``, ``"npu"``), or None.

        Example:
            >>> get_target("iphone-15-pro").unit("npu").name
            'Apple Neural Engine (16-core)'
        """
        if kind not in COMPUTE_KINDS:
            raise ConfigError(f"unknown compute unit kind {kind!r}", where="Target.unit",
                              fix=f"use one of {', '.join(COMPUTE_KINDS)}")
        return next((u for u in self.compute_units if u.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of this target (without ``raw``)."""
        return {
            "name": self.name, "display_name": self.display_name, "platform": self.platform,
            "soc": self.soc, "year": self.year, "aliases": list(self.aliases),
            "memory_bandwidth_gbps": self.memory_bandwidth_gbps, "ram_gb": self.ram_gb,
            "formats": {k: list(v) for k, v in self.formats.items()},
            "default_recipe": self.default_recipe, "recipes": list(self.recipes),
            "coreml_deployment_target": self.coreml_deployment_target,
            "compute_units": [u.to_dict() for u in self.compute_units],
            "sources": dict(self.sources),
        }


class _FileReader:
    """Typed accessors over one parsed profile that raise ConfigError naming file and key."""

    def __init__(self, path: str, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def fail(self, key: str, problem: str, fix: str | None = None) -> ConfigError:
        return ConfigError(f"profile {self.path}: key {key!r} {problem}", where=f"{self.path}:{key}",
                           fix=fix or "fix the file; profiles/README.md describes every key")

    def get(self, table: dict[str, Any], key: str, types: type | tuple[type, ...], *, prefix: str = "",
            required: bool = True) -> Any:
        full = f"{prefix}{key}"
        if key not in table:
            if required:
                raise self.fail(full, "is missing")
            return None
        value = table[key]
        # bool is an int subclass; never accept it for a number.
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(full, f"must be {_type_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise self.fail(full, f"must be {_type_names(types)}, got {type(value).__name__} {value!r}")
        return value

    def str_list(self, table: dict[str, Any], key: str, *, prefix: str = "", required: bool = True,
                 allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.get(table, key, list, prefix=prefix, required=required)
        if value is None:
            return ()
        full = f"{prefix}{key}"
        for item in value:
            if not isinstance(item, str) or not item:
                raise self.fail(full, f"must be a list of non-empty strings, has {item!r}")
            if allowed is not None and item not in allowed:
                raise self.fail(full, f"has unknown value {item!r}", fix=f"use one of {', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise self.fail(full, "has duplicates")
        return tuple(value)


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table",
             bool: "true/false"}
    seq = types if isinstance(types, tuple) else (types,)
    if set(seq) == {int, float}:
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in seq)


def _parse_unit(r: _FileReader, table: Any, index: int) -> ComputeUnit:
    prefix = f"compute_units[{index}]."
    if not isinstance(table, dict):
        raise r.fail(f"compute_units[{index}]", "must be a table ([[compute_units]])")
    kind = r.get(table, "kind", str, prefix=prefix)
    if kind not in COMPUTE_KINDS:
        raise r.fail(prefix + "kind", f"is {kind!r}", fix=f"use one of {', '.join(COMPUTE_KINDS)}")
    name = r.get(table, "name", str, prefix=prefix)
    delegates = r.str_list(table, "delegates", prefix=prefix)
    source = r.get(table, "source", str, prefix=prefix).strip()
    peaks_raw = r.get(table, "peak_gops", dict, prefix=prefix, required=False) or {}
    peaks: dict[str, float] = {}
    for precision, value in peaks_raw.items():
        key = f"{prefix}peak_gops.{precision}"
        if precision not in PEAK_PRECISIONS:
            raise r.fail(key, "is not a known precision", fix=f"use one of {', '.join(PEAK_PRECISIONS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise r.fail(key, f"must be a positive number (GFLOP/s or GOP/s), got {value!r}")
        peaks[precision] = float(value)
    if peaks and not source:
        raise r.fail(prefix + "source", "is empty but the unit has peak numbers",
                     fix="say where each peak comes from (URL or document, and the arithmetic)")
    return ComputeUnit(kind=kind, name=name, peak_gops=peaks, delegates=delegates, source=source)


def _parse_target(path: str, stem: str, data: dict[str, Any]) -> Target:
    r = _FileReader(path, data)
    version = r.get(data, "schema_version", int)
    if version != SCHEMA_VERSION:
        raise r.fail("schema_version", f"is {version}, this mobilekit reads {SCHEMA_VERSION}",
                     fix="upgrade mobilekit or rewrite the profile for this schema")
    name = r.get(data, "name", str)
    if not _NAME_RE.match(name):
        raise r.fail("name", f"{name!r} is not lowercase-kebab (e.g. 'pixel-8')")
    if name != stem:
        raise r.fail("name", f"is {name!r} but the file is named {stem!r}.toml",
                     fix=f"rename the file to {name}.toml or set name = {stem!r}")
    platform = r.get(data, "platform", str)
    if platform not in PLATFORMS:
        raise r.fail("platform", f"is {platform!r}", fix=f"use one of {', '.join(PLATFORMS)}")
    display_name = r.get(data, "display_name", str)
    soc = r.get(data, "soc", str)
    year = r.get(data, "year", int)
    if not 2010 <= year <= 2100:
        raise r.fail("year", f"is {year}, expected a launch year like 2023")
    aliases = r.str_list(data, "aliases", required=False)
    ram = r.get(data, "ram_gb", (int, float), required=False)
    bandwidth = r.get(data, "memory_bandwidth_gbps", (int, float), required=False)
    for key, value in (("ram_gb", ram), ("memory_bandwidth_gbps", bandwidth)):
        if value is not None and value <= 0:
            raise r.fail(key, f"must be positive, got {value!r}")

    formats_raw = r.get(data, "formats", dict)
    if not formats_raw:
        raise r.fail("formats", "is empty", fix="list at least one format and its delegates")
    formats: dict[str, tuple[str, ...]] = {}
    for fmt in formats_raw:
        if fmt not in FORMATS:
            raise r.fail(f"formats.{fmt}", "is not a known format", fix=f"use one of {', '.join(FORMATS)}")
        formats[fmt] = r.str_list(formats_raw, fmt, prefix="formats.")

    recipes = r.str_list(data, "recipes")
    default_recipe = r.get(data, "default_recipe", str)
    if not recipes or recipes[0] != default_recipe:
        raise r.fail("recipes", f"must start with the default recipe {default_recipe!r}")
    for i, recipe in enumerate(recipes):
        key = "default_recipe" if i == 0 else f"recipes[{i}]"
        try:
            parsed = Recipe.parse(recipe)
        except ConfigError as exc:
            raise r.fail(key, exc.message, fix=exc.fix) from None
        fmt, delegate = parsed.format, parsed.delegate
        if fmt not in formats:
            raise r.fail(key, f"uses format {fmt!r}, which is not in [formats]")
        if delegate is not None and delegate not in formats[fmt]:
            raise r.fail(key, f"uses delegate {delegate!r}, which is not in formats.{fmt}")

    coreml_target = r.get(data, "coreml_deployment_target", str, required=False)
    if coreml_target is not None:
        if platform != "ios":
            raise r.fail("coreml_deployment_target", "is only for ios profiles")
        if not _COREML_TARGET_RE.match(coreml_target):
            raise r.fail("coreml_deployment_target", f"is {coreml_target!r}, expected e.g. 'iOS17'")
    elif "coreml" in formats:
        raise r.fail("coreml_deployment_target", "is missing but the profile lists the coreml format")

    units_raw = r.get(data, "compute_units", list)
    units = tuple(_parse_unit(r, t, i) for i, t in enumerate(units_raw))
    if not any(u.kind == "cpu" for u in units):
        raise r.fail("compute_units", "has no cpu unit")

    sources_raw = r.get(data, "sources", dict)
    sources: dict[str, str] = {}
    for key, value in sources_raw.items():
        if not isinstance(value, str) or not value.strip():
            raise r.fail(f"sources.{key}", "must be a non-empty string")
        sources[key] = value.strip()
    for key, value in (("year", year), ("ram_gb", ram), ("memory_bandwidth_gbps", bandwidth)):
        if value is not None and key not in sources:
            raise r.fail(f"sources.{key}", "is missing", fix=f"say where {key} = {value} comes from")
    if bandwidth is None and "memory_bandwidth_gbps" not in sources:
        raise r.fail("sources.memory_bandwidth_gbps", "is missing",
                     fix="when the bandwidth is unknown, say so (and why) in sources.memory_bandwidth_gbps")

    return Target(name=name, display_name=display_name, platform=platform, soc=soc, year=year,
                  aliases=aliases, memory_bandwidth_gbps=None if bandwidth is None else float(bandwidth),
                  ram_gb=None if ram is None else float(ram), formats=formats,
                  default_recipe=default_recipe, recipes=recipes, coreml_deployment_target=coreml_target,
                  compute_units=units, sources=sources, raw=data)


def load_target_file(path: str | Path) -> Target:
    """Load and validate one profile file.

    Args:
        path: a ``<name>.toml`` profile (the file stem must equal its ``name``).

    Returns:
        The validated Target.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is missing or invalid;
            the message names the file and the key.

    Example:
        >>> load_target_file("profiles/pixel-8.toml").soc
        'Google Tensor G3'
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc.strerror or exc}", where=str(path),
                          fix="check the path") from exc
    return _load_text(str(path), path.stem, text)


def _load_text(path: str, stem: str, text: str) -> Target:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {path} is not valid TOML: {exc}", where=path,
                          fix="fix the TOML syntax") from exc
    return _parse_target(path, stem, data)


@functools.cache
def _all_targets() -> tuple[Target, ...]:
    root = importlib.resources.files(_PROFILE_PACKAGE)
    targets = []
    for entry in root.iterdir():
        if entry.name.endswith(".toml"):
            stem = entry.name[: -len(".toml")]
            targets.append(_load_text(f"{_PROFILE_PACKAGE}/{entry.name}", stem, entry.read_text(encoding="utf-8")))
    targets.sort(key=lambda t: t.name)
    _check_unique(targets)
    logger.debug("loaded %d device profiles", len(targets))
    return tuple(targets)


def _check_unique(targets: list[Target]) -> None:
    owner: dict[str, str] = {}
    for t in targets:
        for key in (t.name, *t.aliases):
            k = key.lower()
            if k in owner and owner[k] != t.name:
                raise ConfigError(f"profiles {owner[k]!r} and {t.name!r} both answer to {key!r}",
                                  where=f"{_PROFILE_PACKAGE}/{t.name}.toml:aliases",
                                  fix="remove the alias from one of them")
            owner[k] = t.name


@functools.cache
def _index() -> dict[str, Target]:
    index: dict[str, Target] = {}
    for t in _all_targets():
        index[t.name.lower()] = t
        for alias in t.aliases:
            index[alias.lower()] = t
    return index


def list_targets() -> list[Target]:
    """Return every shipped device profile, sorted by name (loaded once, then cached).

    Raises:
        ConfigError: a shipped profile is invalid or two profiles share a name or alias.

    Example:
        >>> [t.name for t in list_targets()][:2]
        ['galaxy-s22', 'galaxy-s23']
    """
    return list(_all_targets())


def get_target(name: str) -> Target:
    """Return the profile called ``name`` (case-insensitive; aliases such as "Google Pixel 8" work).

    Args:
        name: a profile name (``"pixel-8"``) or one of its aliases.

    Returns:
        The Target.

    Raises:
        ConfigError: no profile has that name; the message suggests the nearest names.

    Example:
        >>> get_target("Samsung Galaxy S24").name
        'galaxy-s24'
    """
    if isinstance(name, Target):
        return name
    key = str(name).strip().lower()
    index = _index()
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, list(index), n=5, cutoff=0.5)
    suggestions: list[str] = []
    for c in close:
        if index[c].name not in suggestions:
            suggestions.append(index[c].name)
    hint = f"; did you mean {', '.join(repr(s) for s in suggestions[:3])}?" if suggestions else ""
    raise ConfigError(f"unknown target {name!r}{hint}", where="target",
                      fix="run `mobilekit targets` to list the device profiles")
