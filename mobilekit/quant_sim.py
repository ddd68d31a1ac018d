"""Int8 simulated in PyTorch before any conversion: refuse a precision the model itself cannot hold.

Lowering a model to ExecuTorch or LiteRT takes minutes at real sizes; an int8 artifact whose
model loses the precision's parity floor *in PyTorch*, with the gentlest quantization any
backend applies, will fail parity after all that work (or, for Core ML, which cannot run on
Linux, would ship unchecked). So before building an int8 recipe, the export runs the parity
inputs once through the model with weights and activations rounded as the recipe's backend
rounds them, compares with the float outputs on the recipe's own floors, and refuses the recipe
when even that simulation is out of tolerance, naming the modules that lose the most alone.

The simulation is deliberately the *best case* of what the backends do, so a refusal is never a
backend's fault:

* weights: symmetric int8 per output channel (every backend's finest weight scheme);
* ``int8-dynamic``: activations at the inputs of the modules the format quantizes dynamically,
  rounded per row with that row's own range (finer than any backend's per-tensor or per-token);
* ``int8-static``: activations at the inputs of Conv/Linear, affine per tensor with the min/max
  of the calibration batches (backends quantize more tensors than these).

Which module types each (format, precision) touches follows what the converters build: ONNX
Runtime's and XNNPACK's dynamic quantization leave convolutions in float (see
``mobilekit.estimation.precision``), LiteRT's dynamic-range quantization does not.

When the whole model misses the floor and the format's converter can leave named modules in
float (``float_module_precisions``), ``float_fallback`` finds the fewest most-sensitive modules
that make the simulation hold it with headroom, within a small share of the weights, and export
builds the recipe with those in float instead of refusing it.

Weights are rounded one module at a time inside forward hooks and put back after, so no copy of
the model is made (a DiT-XL/2 copy is 3 GB).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mobilekit.converters._torch_common import flatten_outputs
from mobilekit.parity import Parity, compare_many

_CONV = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_CONV_T = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
_WEIGHTED = (torch.nn.Linear, *_CONV, *_CONV_T)
# A module whose own int8 output keeps this SQNR loses ~0.01% of its signal's power; when every
# module does at least this well and the outputs still fail, the error grows along the graph.
AMPLIFIED_DB = 35.0


@dataclass(frozen=True)
class QuantScheme:
    """What one recipe quantizes: weights of ``weight_types``, activations entering ``act_types``.

    Attributes:
        precision: ``int8-weight``, ``int8-dynamic`` or ``int8-static``.
        weight_types: module classes whose weights are int8.
        act_types: module classes whose inputs are int8 (empty for weight-only).
        activations: ``none``, ``dynamic`` (per row, own range) or ``static`` (per tensor, calibrated).
        min_elements: weights with fewer elements stay float (the converter's own threshold).
        linear_block: Linear weights get one scale per block of this many inputs (ONNX's
            ``MatMulNBits``) instead of one per output channel; None: per channel.
    """

    precision: str
    weight_types: tuple[type, ...]
    act_types: tuple[type, ...] = ()
    activations: str = "none"
    min_elements: int = 0
    linear_block: int | None = None

    def describe(self) -> str:
        """One line for messages: what the simulation rounded."""
        names = sorted({t.__name__.rstrip("123d") for t in self.weight_types})
        grain = f"blocks of {self.linear_block} for Linear, per channel otherwise" if self.linear_block \
            else "per channel"
        acts = {"none": "float activations", "dynamic": "activations rounded per row with their own range",
                "static": "activations rounded per tensor with the calibration min/max"}[self.activations]
        small = f" of {self.min_elements}+ elements" if self.min_elements else ""
        return f"int8 weights ({grain}) of {'/'.join(names)}{small}, {acts}"


def scheme_for(fmt: str, precision: str) -> QuantScheme | None:
    """The gentlest quantization the ``fmt`` converter applies at ``precision``; None when nothing is int8."""
    from mobilekit.converters.onnx import MATMUL_NBITS_BLOCK, MIN_QUANTIZED_WEIGHT_ELEMENTS as ONNX_MIN
    from mobilekit.converters.coreml import MIN_QUANTIZED_WEIGHT_ELEMENTS as COREML_MIN

    if precision == "int8-weight":
        if fmt == "onnx":  # MatMulNBits for Linear; Conv/Gemm per channel; small weights stay float
            return QuantScheme(precision, _WEIGHTED, min_elements=ONNX_MIN, linear_block=MATMUL_NBITS_BLOCK)
        if fmt == "coreml":
            return QuantScheme(precision, _WEIGHTED, min_elements=COREML_MIN)
        if fmt == "executorch":  # torchao's quantize_ filters to nn.Linear
            return QuantScheme(precision, (torch.nn.Linear,))
        return QuantScheme(precision, _WEIGHTED)
    if precision == "int8-dynamic":
        # ONNX Runtime and XNNPACK quantize only Linear/MatMul dynamically; LiteRT's
        # dynamic-range mode also runs convolutions on int8 inputs.
        types = _WEIGHTED if fmt == "tflite" else (torch.nn.Linear,)
        return QuantScheme(precision, types, types, "dynamic")
    if precision == "int8-static":
        return QuantScheme(precision, _WEIGHTED, _WEIGHTED, "static")
    return None


@dataclass(frozen=True, kw_only=True)
class ModuleLoss:
    """How much one module's output changes when only its own op is quantized (local SQNR)."""

    module: str
    op: str
    sqnr_db: float


@dataclass(frozen=True, kw_only=True)
class QuantSimulation:
    """The outcome of simulating one recipe's int8 in PyTorch.

    Attributes:
        precision: the simulated precision.
        scheme: what was rounded, in words.
        parity: the simulated outputs against the float outputs, on the recipe's floors.
        modules: how many modules were quantized.
        worst: the modules with the lowest local SQNR, worst first.
    """

    precision: str
    scheme: str
    parity: Parity
    modules: int
    worst: tuple[ModuleLoss, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return self.parity.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "parity": self.parity.to_dict()}

    def explain(self) -> str:
        """Why the recipe is refused: the simulated numbers and the modules that lose the most."""
        worst = ", ".join(f"{w.module} ({w.op}, {w.sqnr_db:.1f} dB alone)" for w in self.worst) or "none"
        text = (f"{self.precision} loses the parity floor in PyTorch itself, before any conversion: with "
                f"{self.scheme}, the simulated outputs fall short on {self.parity.reason}. Modules that lose "
                f"the most on their own (local SQNR): {worst}")
        if self.worst and self.worst[0].sqnr_db >= AMPLIFIED_DB:
            text += (f". No module loses much by itself (all >= {AMPLIFIED_DB:.0f} dB): the model amplifies "
                     "small rounding errors, as randomly initialised or untrained weights often do")
        return text


def _fake_weight(w: torch.Tensor, axis: int, block: int | None = None) -> torch.Tensor:
    """Symmetric int8 per channel along ``axis`` (scale = channel max / 127), or per ``block`` of a row."""
    if block and w.dim() == 2 and w.shape[1] % block == 0:
        rows = w.reshape(w.shape[0], -1, block)
        scale = rows.detach().abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / 127.0
        return ((rows / scale).round().clamp(-127, 127) * scale).reshape(w.shape)
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.detach().abs().amax(dim=dims, keepdim=True) if dims else w.detach().abs()
    scale = amax.clamp(min=1e-12) / 127.0
    return (w / scale).round().clamp(-127, 127) * scale


def _fake_affine(x: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """Affine 8-bit rounding of ``x`` onto [lo, hi] (range widened to hold 0, as backends do)."""
    lo = torch.clamp(torch.as_tensor(lo, dtype=x.dtype), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=x.dtype), min=0.0)
    scale = ((hi - lo) / 255.0).clamp(min=1e-12)
    zero = (-lo / scale).round()
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


def _fake_dynamic(x: torch.Tensor) -> torch.Tensor:
    """Per-row dynamic rounding: each row (last dim for Linear, each sample for conv) its own range."""
    rows = x.reshape(-1, x.shape[-1]) if x.dim() >= 2 else x.reshape(1, -1)
    lo = rows.amin(dim=1, keepdim=True)
    hi = rows.amax(dim=1, keepdim=True)
    return _fake_affine(rows, lo, hi).reshape(x.shape)


def _targets(model: torch.nn.Module, scheme: QuantScheme) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, scheme.weight_types) and isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.numel() >= scheme.min_elements]


@contextmanager
def _hooks(mods: Sequence[tuple[str, torch.nn.Module]], pre: Any, post: Any = None) -> Iterator[None]:
    handles = []
    try:
        for name, m in mods:
            handles.append(m.register_forward_pre_hook(lambda mod, args, _n=name: pre(_n, mod, args)))
            if post is not None:
                handles.append(m.register_forward_hook(lambda mod, args, out, _n=name: post(_n, mod, args, out)))
        yield
    finally:
        for h in handles:
            h.remove()


def _calibrate(mods: Sequence[tuple[str, torch.nn.Module]], model: torch.nn.Module,
               batches: Sequence[tuple[torch.Tensor, ...]]) -> dict[str, tuple[float, float]]:
    """Min/max of each module's input over the calibration batches (what a MinMax observer sees)."""
    ranges: dict[str, tuple[float, float]] = {}

    def pre(name: str, mod: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        lo, hi = ranges.get(name, (math.inf, -math.inf))
        ranges[name] = (min(lo, float(x.min())), max(hi, float(x.max())))

    with torch.no_grad(), _hooks(mods, pre):
        for batch in batches:
            model(*batch)
    return ranges


def calibrate_ranges(model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, ...]], scheme: QuantScheme,
                     names: Collection[str] | None = None) -> dict[str, tuple[float, float]]:
    """The ``int8-static`` input range of every module ``scheme`` rounds activations of (or of ``names``)."""
    mods = [(n, m) for n, m in _targets(model, scheme)
            if scheme.act_types and isinstance(m, scheme.act_types) and (names is None or n in names)]
    return _calibrate(mods, model, batches)


def simulate(model: torch.nn.Module, feeds: Sequence[tuple[torch.Tensor, ...]],
             references: Sequence[Sequence[np.ndarray]], *, fmt: str, precision: str,
             tolerance: Mapping[str, float], calibration: Sequence[tuple[torch.Tensor, ...]] | None = None,
             worst: int = 3, keep_float: Collection[str] = (),
             act_ranges: Mapping[str, tuple[float, float]] | None = None) -> QuantSimulation | None:
    """Run ``feeds`` through ``model`` with ``fmt``'s int8 at ``precision`` and compare with ``references``.

    Args:
        model: the float model (left unchanged: weights are rounded inside hooks and restored).
        feeds: the parity inputs.
        references: the float outputs on each feed (flattened, as the parity check compares them).
        fmt: the recipe's format (which module types are quantized depends on it).
        precision: the recipe's precision.
        tolerance: the recipe's parity floors.
        calibration: batches for ``int8-static`` ranges (default: the feeds, which only flatters it).
        worst: how many modules to name.
        keep_float: module paths left in float (what ``float_fallback`` chose).
        act_ranges: ``int8-static`` input ranges already measured by ``calibrate_ranges`` (they
            depend only on the float model and the calibration batches, so repeated simulations
            of one model share them).

    Returns:
        The simulation, or None when the precision quantizes nothing (fp32, fp16) or the model
        has no module the scheme touches.
    """
    scheme = scheme_for(fmt, precision)
    if scheme is None:
        return None
    mods = [(n, m) for n, m in _targets(model, scheme) if n not in keep_float]
    if not mods:
        return None
    acts = {n for n, m in mods if scheme.act_types and isinstance(m, scheme.act_types)}
    if scheme.activations != "static":
        ranges: Mapping[str, tuple[float, float]] = {}
    elif act_ranges is not None:
        ranges = act_ranges
    else:
        ranges = calibrate_ranges(model, calibration or feeds, scheme, [n for n, _ in mods])
    stash: dict[str, tuple[torch.Tensor, tuple[Any, ...]]] = {}
    local: dict[str, list[float]] = {}
    track = {"local": True}

    def quant_input(name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in acts or not torch.is_floating_point(x):
            return x
        if scheme.activations == "dynamic":
            return _fake_dynamic(x)
        lo, hi = ranges.get(name, (float(x.min()), float(x.max())))
        return _fake_affine(x, lo, hi)

    def pre(name: str, mod: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        w = mod.weight.data
        stash[name] = (w, args)
        block = scheme.linear_block if isinstance(mod, torch.nn.Linear) else None
        mod.weight.data = _fake_weight(w, 1 if isinstance(mod, _CONV_T) else 0, block)
        return (quant_input(name, args[0]), *args[1:])

    def post(name: str, mod: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        w, orig_args = stash.pop(name)
        mod.weight.data = w
        if track["local"] and isinstance(out, torch.Tensor):
            # the float op on the same (already rounded-upstream) input: this module's own loss
            ref = mod.forward(*orig_args)
            noise = float((ref - out).float().pow(2).sum())
            sig = float(ref.float().pow(2).sum())
            local.setdefault(name, []).append(999.0 if noise == 0 else 10 * math.log10(max(sig, 1e-30) / noise))

    actual = []
    with torch.no_grad(), _hooks(mods, pre, post):
        for j, feed in enumerate(feeds):
            track["local"] = j == 0  # one input ranks the modules; the rest only count for parity
            actual.append([t.detach().float().numpy() for t in flatten_outputs(model(*feed))])
    parity = compare_many(references, actual, tolerance=tolerance, runtime="pytorch-int8-simulation")
    ops = dict(mods)
    ranked = sorted(local.items(), key=lambda kv: min(kv[1]))[:worst]
    return QuantSimulation(precision=precision, scheme=scheme.describe(), parity=parity, modules=len(mods),
                           worst=tuple(ModuleLoss(module=n, op=type(ops[n]).__name__, sqnr_db=round(min(v), 2))
                                       for n, v in ranked))


# Float modules a fallback may keep, as a share of the weights the recipe would quantize: beyond
# this the artifact is no longer the int8 model the user asked for (size, NPU placement).
MAX_FLOAT_FRACTION = 0.05
# Ranking costs one forward pass per module; past this many, a fallback is not attempted.
MAX_RANKED_MODULES = 256
# The simulation is the gentlest int8 any backend applies, so a fallback that only just holds the
# floor there misses it in the runtime (MobileViT's LiteRT int8-dynamic: simulated 0.988, LiteRT
# 0.972 on a 0.98 floor). A fallback must leave at most this share of the allowed error.
FALLBACK_HEADROOM = 0.5


def _with_headroom(tolerance: Mapping[str, float], headroom: float) -> dict[str, float]:
    """``tolerance`` tightened so the error allowed is ``headroom`` times the original."""
    tight = dict(tolerance)
    if "cosine" in tight:
        tight["cosine"] = 1.0 - headroom * (1.0 - tight["cosine"])
    if "psnr_db" in tight:
        tight["psnr_db"] = tight["psnr_db"] + 10.0 * math.log10(1.0 / headroom)
    return tight


@dataclass(frozen=True, kw_only=True)
class FloatFallback:
    """The modules kept in float so that the rest of the model holds the precision's floor.

    Attributes:
        modules: module paths left in float, most sensitive first.
        weight_fraction: their weights' share of the weights the recipe would quantize.
        simulation: the simulation with those modules in float (it passes).
    """

    modules: tuple[str, ...]
    weight_fraction: float
    simulation: QuantSimulation

    def describe(self) -> str:
        """One line for the artifact's notes."""
        return (f"{len(self.modules)} module(s) kept in float, the most sensitive to {self.simulation.precision} "
                f"({100 * self.weight_fraction:.2f}% of the weights it would quantize): {', '.join(self.modules)}; "
                f"PyTorch simulation with them float: cosine {self.simulation.parity.cosine:.6f}, "
                f"PSNR {self.simulation.parity.psnr_db:.1f} dB")


def float_fallback(model: torch.nn.Module, feeds: Sequence[tuple[torch.Tensor, ...]],
                   references: Sequence[Sequence[np.ndarray]], *, fmt: str, precision: str,
                   tolerance: Mapping[str, float], calibration: Sequence[tuple[torch.Tensor, ...]] | None = None,
                   max_fraction: float = MAX_FLOAT_FRACTION, headroom: float = FALLBACK_HEADROOM
                   ) -> FloatFallback | None:
    """The fewest most-sensitive modules to keep in float so the simulated int8 holds the floor.

    Each module is ranked by the output cosine on the first parity input with *only* that module
    quantized: the output's own sensitivity, not the module's local SQNR, because in an amplifying
    network a module that rounds well by itself (a stem convolution with three input channels) can
    still be the one whose error grows the most downstream. Modules are then kept float in that
    order until the simulation over every parity input holds the floor with ``headroom`` (the
    simulation is a best case, so just holding it is not enough).

    Returns:
        The fallback, or None when no set within ``max_fraction`` of the quantized weights holds
        the floor (checked first in one simulation: when every module the budget admits, kept
        float together, does not hold it, no smaller set is tried), or the model has more than
        ``MAX_RANKED_MODULES`` modules to rank.
    """
    scheme = scheme_for(fmt, precision)
    if scheme is None:
        return None
    mods = _targets(model, scheme)
    if not mods or len(mods) > MAX_RANKED_MODULES:
        return None
    names = [n for n, _ in mods]
    sizes = {n: m.weight.numel() for n, m in mods}
    total = sum(sizes.values())
    # one calibration for every simulation below: the ranges depend only on the float model, and
    # re-measuring them per ranked module cost 2.6x (zoo MobileNetV2, int8-static: 5.3 s -> 2.0 s)
    ranges = calibrate_ranges(model, calibration or feeds, scheme) if scheme.activations == "static" else None

    def alone(name: str) -> float:
        sim = simulate(model, feeds[:1], references[:1], fmt=fmt, precision=precision, tolerance=tolerance,
                       worst=0, keep_float=set(names) - {name}, act_ranges=ranges)
        return math.inf if sim is None else sim.parity.cosine

    order = sorted(names, key=alone)
    tight = _with_headroom(tolerance, headroom)
    # Every module the budget admits, in that order: the largest set the loop below can reach. When
    # even it misses the floor, smaller sets (less float) miss it too in practice, and one simulation
    # answers instead of one per module (MobileNetV2's int8-static: minutes of refusals otherwise).
    admitted: list[str] = []
    for name in order:
        if sum(sizes[n] for n in admitted) + sizes[name] <= max_fraction * total:
            admitted.append(name)
    if not admitted:
        return None
    widest = simulate(model, feeds, references, fmt=fmt, precision=precision, tolerance=tight,
                      worst=0, keep_float=set(admitted), act_ranges=ranges)
    if widest is None or not widest.passed:
        return None
    kept: list[str] = []
    for name in order:
        if sum(sizes[n] for n in kept) + sizes[name] > max_fraction * total:
            continue  # too large to keep float; a smaller, less sensitive one may still do
        kept.append(name)
        sim = simulate(model, feeds, references, fmt=fmt, precision=precision, tolerance=tight,
                       keep_float=set(kept), act_ranges=ranges)
        if sim is not None and sim.passed:
            return FloatFallback(modules=tuple(kept), weight_fraction=sum(sizes[n] for n in kept) / total,
                                 simulation=sim)
    return None
