"""SPEC: how the CLI names a model.

- ``builtin:dit-tiny`` / ``builtin:gan-tiny``: the built-in models.
- ``zoo:NAME`` (``zoo:NAME@real`` for the published size): an architecture of ``mobilekit.zoo``.
- ``package.module:function``: a function returning ``(model, example_inputs)``.
- a diffusers model folder (``config.json`` + weights), with input shapes from ``--input``.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mobilekit.inputs import random_inputs
from mobilekit.errors import ConfigError
from mobilekit.images import ImageOutput


@dataclass
class LoadedSpec:
    """A model resolved from a SPEC, with what export needs."""

    name: str
    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    calibration: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    input_names: tuple[str, ...] = ()
    image: ImageOutput | None = None  # the image output of an image-to-image model, for 8-bit image parity

    def names(self) -> list[str]:
        """The inputs' names: the spec's own, else forward's parameter names."""
        from mobilekit.converters._torch_common import input_names_of

        return list(self.input_names) or input_names_of(self.model, len(self.example_inputs))

    def load_batches(self, path: str | Path, what: str) -> list[tuple[torch.Tensor, ...]]:
        """Input batches for this model from a ``.npz``/``.safetensors`` file (see ``mobilekit.inputs``)."""
        from mobilekit.inputs import load_batches

        return load_batches(path, self.names(), self.example_inputs, what=what)


_SHAPE = re.compile(r"^(?:(?P<name>[A-Za-z_][\w]*)=)?(?P<shape>\d+(?:x\d+)*)(?::(?P<dtype>\w+))?$")
_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32, "int64": torch.int64,
           "long": torch.int64, "int32": torch.int32, "int": torch.int64}


def parse_input(text: str) -> tuple[str | None, tuple[int, ...], torch.dtype]:
    """Parse ``[name=]1x4x16x16[:dtype]`` into (name, shape, dtype).

    Example:
        >>> parse_input("timestep=1:int64")[1]
        (1,)
    """
    m = _SHAPE.match(text.strip())
    if not m:
        raise ConfigError(f"cannot read input shape {text!r}", where="--input",
                          fix="write [name=]DIMxDIM...[:dtype], e.g. latents=1x4x32x32 or timestep=1:int64")
    dtype_name = (m.group("dtype") or "float32").lower()
    if dtype_name not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype_name!r} in {text!r}", where="--input", fix=f"known: {sorted(_DTYPES)}")
    return m.group("name"), tuple(int(d) for d in m.group("shape").split("x")), _DTYPES[dtype_name]


def _load_function(spec: str) -> LoadedSpec:
    module_name, _, func_name = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", where=f"SPEC {spec}",
                          fix="check the module is on PYTHONPATH and imports cleanly") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"{module_name} has no function {func_name!r}", where=f"SPEC {spec}",
                          fix="SPEC is package.module:function returning (model, example_inputs)")
    result = func()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise ConfigError(f"{spec} must return (model, example_inputs)", where=f"SPEC {spec}",
                          fix="return a tuple: an nn.Module and a tuple of example tensors")
    model, inputs = result
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return LoadedSpec(spec, model.eval(), inputs)


# Models mobilekit itself saves (config.json "kind"), loaded with example inputs from their config.
_MOBILEKIT_KINDS = {"E2GANGenerator": "mobilekit.train.e2gan.models:E2GANGenerator"}


def _load_mobilekit_folder(folder: Path, kind: str, seed: int) -> LoadedSpec:
    from mobilekit.builtins import GAN_IMAGE, gan_inputs

    module, cls_name = _MOBILEKIT_KINDS[kind].split(":")
    model = getattr(importlib.import_module(module), cls_name).from_pretrained(folder).eval()
    config = model.config
    return LoadedSpec(folder.name, model, gan_inputs(config, seed=seed),
                      [gan_inputs(config, seed=seed + 1 + i) for i in range(8)], ("image", "text_embeds"), GAN_IMAGE)


def _load_diffusers_folder(folder: Path, inputs: list[str]) -> LoadedSpec:
    config = json.loads((folder / "config.json").read_text())
    class_name = config.get("_class_name")
    import diffusers

    cls = getattr(diffusers, class_name or "", None)
    if cls is None:
        raise ConfigError(f"config.json names class {class_name!r}, which diffusers does not have",
                          where=str(folder / "config.json"), fix="pass a diffusers model folder")
    model = cls.from_pretrained(folder).eval()
    if not inputs:
        raise ConfigError("a model folder needs its input shapes", where="--input",
                          fix="add --input for each forward argument, e.g. --input latents=1x4x32x32 "
                              "--input timestep=1:int64 --input class_labels=1:int64")
    parsed = [parse_input(t) for t in inputs]
    # integers in [0, 10): timesteps and class labels a diffusers model accepts without a vocabulary check
    example = tuple(torch.from_numpy(a) for a in random_inputs([(shape, dtype) for _, shape, dtype in parsed],
                                                                 int_high=10))
    names = tuple(n or f"input_{i}" for i, (n, _, _) in enumerate(parsed))
    wrapped = _PositionalDiffusers(model, names)
    return LoadedSpec(folder.name, wrapped.eval(), example, input_names=names)


class _PositionalDiffusers(torch.nn.Module):
    """Calls a diffusers model with keyword inputs from positional tensors; returns a plain tensor."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        first, rest = args[0], dict(zip(self.names[1:], args[1:], strict=True))
        out = self.model(first, **rest)
        return out.sample if hasattr(out, "sample") else out[0]


def load_spec(spec: str, *, inputs: list[str] | None = None, seed: int = 0) -> LoadedSpec:
    """Resolve a SPEC into a model and example inputs.

    Args:
        spec: ``builtin:NAME``, ``package.module:function`` or a diffusers model folder.
        inputs: input shapes for a model folder (``[name=]1x4x32x32[:dtype]``).
        seed: seed for built-ins and generated example inputs.

    Raises:
        ConfigError: the SPEC doesn't resolve (message names it and what to pass instead).

    Example:
        >>> load_spec("builtin:dit-tiny").name  # doctest: +SKIP
        'dit-tiny'
    """
    if spec.startswith("builtin:"):
        from mobilekit.builtins import build_builtin

        b = build_builtin(spec, seed=seed)
        return LoadedSpec(b.name, b.model, b.example_inputs, b.calibration, b.input_names, b.image)
    if spec.startswith("zoo:"):
        from mobilekit.zoo import build_zoo_model

        name, _, size = spec.partition("@")  # zoo:dit@real is the published size
        b = build_zoo_model(name, size=size or "tiny", seed=seed)
        return LoadedSpec(b.name, b.model, b.example_inputs, b.calibration, b.input_names, b.image)
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError("model folder has no config.json", where=str(path),
                              fix="pass a diffusers model folder (save_pretrained output)")
        try:
            kind = json.loads((path / "config.json").read_text()).get("kind")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config.json is not valid JSON: {exc}", where=str(path / "config.json")) from exc
        if kind in _MOBILEKIT_KINDS:
            return _load_mobilekit_folder(path, kind, seed)
        return _load_diffusers_folder(path, inputs or [])
    if ":" in spec and re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", spec):
        return _load_function(spec)
    raise ConfigError(f"cannot resolve SPEC {spec!r}", where="SPEC",
                      fix="use builtin:dit-tiny, builtin:gan-tiny, zoo:NAME[@real], package.module:function, or a model folder")
