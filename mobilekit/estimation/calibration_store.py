"""Per-device calibrations fitted from the user's own LatencyReports, and where they are kept.

``mobilekit calibrate`` (``device_calibration.calibrate``) writes one JSON file per device,
``<store>/<device>.json``, holding for each (compute unit, precision) family it saw the
refitted roofline params, the shipped ones they started from, how many reports and models they
came from, and, when there were enough, a band built from those reports' own held-out residuals.
``estimate()`` reads the file of its target on every call (it is small), so an estimate made
after a calibration uses it and says so.

The store is ``$MOBILEKIT_CALIBRATION_DIR``, else ``calibration/`` under the user cache
directory (``$MOBILEKIT_CACHE_DIR``, else ``~/.cache/mobilekit``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilekit.errors import ConfigError
from mobilekit.estimation.model import FamilyParams
from mobilekit.estimation.precision import float_precision

logger = logging.getLogger(__name__)

STORE_ENV = "MOBILEKIT_CALIBRATION_DIR"
STORE_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_store() -> Path:
    """``$MOBILEKIT_CALIBRATION_DIR``, else ``<user cache dir>/calibration``."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    cache = os.environ.get("MOBILEKIT_CACHE_DIR")  # as mobilekit.cache.default_cache_dir, without importing torch
    return (Path(cache) if cache else Path.home() / ".cache" / "mobilekit") / "calibration"


def store_path(device: str, store: str | Path | None = None) -> Path:
    """The file holding ``device``'s calibration in ``store`` (default: ``default_store()``)."""
    return Path(store if store is not None else default_store()) / f"{_SAFE.sub('_', device.lower())}.json"


@dataclass(frozen=True, kw_only=True)
class FamilyCalibration:
    """One (compute unit, precision) family of one device, refitted on the user's reports.

    Attributes:
        family: ``"<unit>/<precision>"``.
        params: the refitted roofline params ``estimate()`` uses for this family on this device.
        shipped: the params of the shipped fit the refit started from (and was shrunk toward).
        n: reports it was fitted on.
        models: the models those reports measured.
        band: ``log_low``, ``log_high``, ``coverage``, ``n``, ``archs`` built from the reports'
            leave-one-model-out residuals (``bands.measured_group``); None when too few reports,
            and the shipped band is kept.
    """

    family: str
    params: FamilyParams
    shipped: FamilyParams
    n: int
    models: tuple[str, ...] = ()
    band: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"family": self.family, "params": self.params.to_dict(), "shipped": self.shipped.to_dict(),
                "n": self.n, "models": list(self.models), "band": self.band}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FamilyCalibration:
        """Inverse of ``to_dict``."""
        return cls(family=str(d["family"]), params=FamilyParams.from_dict(d["params"]),
                   shipped=FamilyParams.from_dict(d["shipped"]), n=int(d["n"]),
                   models=tuple(d.get("models", ())), band=d.get("band"))


@dataclass(frozen=True, kw_only=True)
class DeviceCalibration:
    """Everything ``mobilekit calibrate`` stored for one device.

    Attributes:
        device: profile name (``pixel-8``) or ``host``.
        families: ``{"<unit>/<precision>": FamilyCalibration}``.
        reports: one summary per report fitted on (artifact, model, family, measured and estimated ms).
        estimator_revision: ``api.ESTIMATOR_REVISION`` of the fit; a calibration from another
            revision is ignored (the shipped params it was refitted from have changed).
        created: ISO-8601 UTC time of the calibration.
        path: the file it was read from or written to (not serialised).
        version: file format version.
    """

    device: str
    families: dict[str, FamilyCalibration]
    reports: tuple[dict[str, Any], ...] = ()
    estimator_revision: int = 0
    created: str = ""
    path: Path | None = field(default=None, compare=False)
    version: int = STORE_VERSION

    def lookup(self, unit: str, precision: str) -> FamilyCalibration | None:
        """The family an estimate at (``unit``, ``precision``) uses: the exact one, else the one of the
        float precision its unquantized ops run at (the same back-off as ``calibrate.params_for``)."""
        exact = self.families.get(f"{unit}/{precision}")
        if exact is not None:
            return exact
        return self.families.get(f"{unit}/{float_precision(precision, unit)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"version": self.version, "device": self.device, "estimator_revision": self.estimator_revision,
                "created": self.created, "families": {k: v.to_dict() for k, v in sorted(self.families.items())},
                "reports": [dict(r) for r in self.reports]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> DeviceCalibration:
        """Inverse of ``to_dict``.

        Raises:
            ConfigError: another file format version, or a missing key.
        """
        where = str(path) if path else "DeviceCalibration"
        if d.get("version") != STORE_VERSION:
            raise ConfigError(f"calibration file version {d.get('version')!r} is not {STORE_VERSION}", where=where,
                              fix="run `mobilekit calibrate --reset --device NAME` and calibrate again")
        try:
            return cls(device=str(d["device"]), estimator_revision=int(d["estimator_revision"]),
                       created=str(d.get("created", "")), reports=tuple(d.get("reports", ())), path=path,
                       families={k: FamilyCalibration.from_dict(v) for k, v in d["families"].items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration file is damaged: {exc!r}", where=where,
                              fix="run `mobilekit calibrate --reset --device NAME` and calibrate again") from exc

    def fingerprint(self) -> str:
        """Content hash (keys cached estimates, so a new calibration invalidates them)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_device_calibration(device: str, store: str | Path | None = None
                            ) -> tuple[DeviceCalibration | None, str | None]:
    """The stored calibration of ``device`` an estimate may use, and why a stored one is not used.

    A calibration fitted by another estimator revision is not used (the shipped params it was
    refitted from have changed): the second item then names its file and both revisions, and the
    same message is logged as a warning (once per file and revision in a process).

    Returns:
        ``(calibration, None)``, ``(None, None)`` when none is stored, ``(None, message)`` when stale.

    Raises:
        ConfigError: the file exists but cannot be read.
    """
    from mobilekit.estimation.api import ESTIMATOR_REVISION

    path = store_path(device, store)
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the calibration of {device}: {exc}", where=str(path),
                          fix=f"run `mobilekit calibrate --reset --device {device}` and calibrate again") from exc
    cal = DeviceCalibration.from_dict(data, path)
    if cal.estimator_revision == ESTIMATOR_REVISION:
        return cal, None
    message = (f"ignored your calibration of {device} in {path}: it was fitted by estimator revision "
               f"{cal.estimator_revision}, this mobilekit's is {ESTIMATOR_REVISION}; the shipped fit priced "
               f"this estimate (run `mobilekit calibrate` on your reports again, or "
               f"`mobilekit calibrate --reset --device {device}`)")
    if (str(path), cal.estimator_revision) not in _WARNED:  # a build asks per artifact and target: say it once
        _WARNED.add((str(path), cal.estimator_revision))
        logger.warning("%s", message)
    return None, message


_WARNED: set[tuple[str, int]] = set()


def load_device_calibration(device: str, store: str | Path | None = None) -> DeviceCalibration | None:
    """The stored calibration of ``device``, or None when there is none (or it is from another
    estimator revision: see ``find_device_calibration``).

    Raises:
        ConfigError: the file exists but cannot be read.
    """
    return find_device_calibration(device, store)[0]


def write_device_calibration(cal: DeviceCalibration, store: str | Path | None = None) -> Path:
    """Write ``cal`` atomically to its file in ``store`` and return the path."""
    from mobilekit._io import ensure_writable_dir, write_json_atomic

    path = store_path(cal.device, store)
    ensure_writable_dir(path.parent, what="calibration store")
    return write_json_atomic(path, cal.to_dict())


def reset_calibration(device: str, store: str | Path | None = None) -> Path | None:
    """Remove ``device``'s stored calibration; returns the removed file, None when there was none."""
    path = store_path(device, store)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def calibration_fingerprint(device: str, store: str | Path | None = None) -> str:
    """``fingerprint()`` of ``device``'s stored calibration, ``shipped`` when it has none, ``stale-...``
    when an ignored one is stored (an estimate cached before it was stored lacks the note saying so)."""
    cal, stale = find_device_calibration(device, store)
    if cal is not None:
        return cal.fingerprint()
    return "stale-" + hashlib.sha256(stale.encode()).hexdigest()[:16] if stale else "shipped"
