"""Artifact and Manifest: what an export produced, as records an app build reads.

The manifest is JSON with a versioned schema (``MANIFEST_SCHEMA_VERSION``); paths in it are
relative to the manifest's directory so the folder can be moved or copied into an app.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobilekit._io import write_json_atomic
from mobilekit.errors import ConfigError
from mobilekit.parity import Parity
from mobilekit.images import ImageParity
from mobilekit.sampling import SamplingParity
from mobilekit.recipe import Recipe

MANIFEST_SCHEMA_VERSION = 1
logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """Name, shape and dtype of one input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        """Inverse of ``to_dict``."""
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files (sorted relative paths and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int:
    """Size in bytes of a file, or of all files in a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def artifact_label(path: str, variant: str | None) -> str:
    """How reports name an artifact: its file, plus the adapter variant when the file name lacks it.

    A Core ML multifunction package holds the base and every adapter in one ``.mlpackage``, so
    without the variant its rows in a report would be indistinguishable.
    """
    name = Path(path).name
    if variant is None or Path(name).stem.endswith(f"-{variant}"):
        return name
    return f"{name} · {variant}"


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One exported file (or .mlpackage folder) with what an app and a reviewer need to trust it.

    Attributes:
        path: the file, relative to the manifest directory once in a manifest.
        targets: the target names this artifact serves.
        recipe: the recipe that produced it.
        sha256: content hash of the file(s).
        size_bytes: bytes on disk (all files of a folder or of ``extra_files``).
        inputs: input specs, in call order.
        outputs: output specs, in return order.
        parity: agreement with PyTorch on the example inputs.
        export_seconds: wall-clock seconds the export took (0 when served from the cache... see ``cached``).
        stages: seconds per export stage (prepare, quantize, lower, serialize, validate).
        toolchain: versions of torch, executorch, coremltools, litert-torch, ai-edge-litert, onnx, onnxruntime, mobilekit.
        cache_key: content address of the export (model weights + graph + recipe + toolchain).
        cached: True when this export was served from the cache.
        extra_files: other files belonging to the artifact (e.g. ExecuTorch .ptd weights), relative paths.
        adapter: the adapter name when the artifact is for one adapter, else None.
        sampling: agreement with PyTorch over a sampling loop (denoisers exported with ``sampling``).
        images: agreement of the output images as 8-bit pictures (image models exported with ``image``).
        notes: human-readable remarks (fallbacks, skipped checks).
        op_precisions: weighted ``conv``/``matmul`` op counts by the precision they run at, recorded
            at export where the file hides them (ExecuTorch ``.pte``: ``{"matmul": {"int8-dynamic": 2}}``,
            ``"float"`` = unquantized); the latency estimator reads them. None for other formats.
    """

    path: str
    targets: tuple[str, ...]
    recipe: Recipe
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity: Parity
    export_seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    toolchain: dict[str, str | None] = field(default_factory=dict)
    cache_key: str = ""
    cached: bool = False
    extra_files: tuple[str, ...] = ()
    adapter: str | None = None
    notes: tuple[str, ...] = ()
    sampling: SamplingParity | None = None
    images: ImageParity | None = None
    op_precisions: dict[str, dict[str, int]] | None = None

    @property
    def label(self) -> str:
        """The name reports show: the file, and the adapter when several variants share the file."""
        return artifact_label(self.path, self.adapter)

    @property
    def format(self) -> str:
        """The recipe's format."""
        return self.recipe.format

    @property
    def precision(self) -> str:
        """The recipe's precision."""
        return self.recipe.precision

    @property
    def delegate(self) -> str | None:
        """The recipe's delegate."""
        return self.recipe.delegate

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        d["recipe_name"] = self.recipe.name
        d["format"], d["delegate"], d["precision"] = self.format, self.delegate, self.precision
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["outputs"] = [s.to_dict() for s in self.outputs]
        d["parity"] = self.parity.to_dict()
        d["sampling"] = self.sampling.to_dict() if self.sampling else None
        d["images"] = self.images.to_dict() if self.images else None
        d["targets"] = list(self.targets)
        d["extra_files"] = list(self.extra_files)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        """Inverse of ``to_dict``."""
        d = dict(d)
        for k in ("recipe_name", "format", "delegate", "precision"):
            d.pop(k, None)
        d["recipe"] = Recipe.from_dict(d["recipe"])
        d["inputs"] = tuple(TensorSpec.from_dict(s) for s in d["inputs"])
        d["outputs"] = tuple(TensorSpec.from_dict(s) for s in d["outputs"])
        d["parity"] = Parity(**d["parity"])
        d["sampling"] = SamplingParity(**d["sampling"]) if d.get("sampling") else None
        d["images"] = ImageParity(**d["images"]) if d.get("images") else None
        d["targets"] = tuple(d["targets"])
        d["extra_files"] = tuple(d.get("extra_files", ()))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The artifacts of one export or build, written as ``manifest.json``.

    Attributes:
        model: a name for the exported model (SPEC or class name).
        artifacts: every artifact, in build order.
        toolchain: versions of the toolchain packages.
        created: ISO-8601 UTC time of writing.
        root: the directory the manifest lives in (not serialised).
    """

    model: str
    artifacts: tuple[Artifact, ...]
    toolchain: dict[str, str | None] = field(default_factory=dict)
    created: str = ""
    plan: dict[str, Any] | None = None  # ExportPlan.to_dict(): which target got which recipe, what was skipped
    schema_version: int = MANIFEST_SCHEMA_VERSION
    root: Path | None = field(default=None, compare=False)

    def path_of(self, artifact: Artifact) -> Path:
        """Absolute path of an artifact of this manifest."""
        return (self.root or Path(".")) / artifact.path

    def for_target(self, target: str) -> list[Artifact]:
        """Artifacts that serve ``target``."""
        return [a for a in self.artifacts if target in a.targets]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        out = {"schema_version": self.schema_version, "model": self.model, "created": self.created,
               "toolchain": self.toolchain, "artifacts": [a.to_dict() for a in self.artifacts]}
        if self.plan is not None:
            out["plan"] = self.plan
        return out

    def write(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory`` atomically and return its path."""
        return write_json_atomic(Path(directory) / "manifest.json", self.to_dict())

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read a ``manifest.json`` (or the directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read manifest: {exc}", where=str(path)) from exc
        version = data.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            raise ConfigError(f"manifest schema_version {version!r} is not {MANIFEST_SCHEMA_VERSION}",
                              where=str(path), fix="re-export with this mobilekit version")
        return cls(model=data["model"], created=data.get("created", ""), toolchain=data.get("toolchain", {}),
                   plan=data.get("plan"),
                   artifacts=tuple(Artifact.from_dict(a) for a in data["artifacts"]), root=path.parent)

    @classmethod
    def merge(cls, model: str, parts: Iterable[Artifact], **kw: Any) -> Manifest:
        """A manifest of ``parts``."""
        return cls(model=model, artifacts=tuple(parts), **kw)


def manifest_entry(artifact: str | Path) -> tuple[Manifest | None, Artifact | None]:
    """The ``manifest.json`` beside an exported file, and its record of that file.

    Returns:
        ``(manifest, artifact)``; ``artifact`` is None when the manifest does not list the file,
        both are None when there is no readable manifest (a damaged one only loses what it records).
    """
    path = Path(artifact)
    mf = path.parent / "manifest.json"
    if not mf.is_file():
        return None, None
    try:
        manifest = Manifest.read(mf)
    except Exception as exc:
        logger.info("ignoring %s: %s", mf, exc)
        return None, None
    return manifest, next((a for a in manifest.artifacts if Path(a.path).name == path.name), None)
