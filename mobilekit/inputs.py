"""Input synthesis and input-batch files: the one place inputs are made up or read.

* ``random_inputs``: arrays for declared shapes and dtypes (a runtime's input table, a
  ``--input`` shape, a manifest's TensorSpecs): seeded standard-normal floats, integers drawn
  in ``[0, int_high)`` (zeros by default, the one index every embedding table has).
* ``held_out_inputs``: new inputs *like* the example inputs (same shapes and dtypes, floats with
  each tensor's mean and spread, integers within the example's range) from seeds that neither
  the example nor the calibration batches use, so parity is checked out of sample.
* ``load_batches``: batches from a ``.npz`` or ``.safetensors`` file that maps each input (by
  name, or ``input_0``, ``input_1``, …) to its samples stacked on a new first axis
  (``latents: [N, 1, 4, 32, 32]``) or, for a batch-1 input, along the batch axis (``[N, 4, 32, 32]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilekit.errors import ConfigError

# seed bases: parity inputs and default calibration batches never share a seed
PARITY_SEED = 1_000
CALIBRATION_SEED = 2_000


def random_inputs(specs: Sequence[tuple[Sequence[int], Any]], *, seed: int = 0, int_high: int = 1) -> list[np.ndarray]:
    """Arrays for ``(shape, dtype)`` pairs: standard-normal floats, integers in ``[0, int_high)``."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in specs:
        # torch dtypes print as "torch.float32"; numpy dtypes and their names pass straight through
        dt = np.dtype(str(dtype).removeprefix("torch.")) if isinstance(dtype, str) or hasattr(
            dtype, "is_floating_point") else np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        if dt.kind == "f":
            out.append(rng.standard_normal(shape).astype(dt))
        elif dt.kind == "b":
            out.append(np.zeros(shape, dtype=dt))
        else:
            out.append(rng.integers(0, max(int_high, 1), size=shape).astype(dt))
    return out


def held_out_inputs(example: Sequence[torch.Tensor], n: int, *, seed: int = PARITY_SEED) -> list[tuple[torch.Tensor, ...]]:
    """``n`` input tuples like ``example``: same shapes and dtypes, fresh values.

    Floats keep each tensor's mean and standard deviation (a latent stays a latent, an image an
    image); integers are drawn from ``[min, max]`` of the example tensor, so token ids,
    timesteps and class labels stay valid; booleans and constant tensors (position ids, masks)
    are kept as they are.
    """
    batches = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed + i)
        batch = []
        for t in example:
            std = float(t.float().std()) if t.dtype.is_floating_point and t.numel() > 1 else 0.0
            if std > 0:
                batch.append((torch.randn(t.shape, generator=g) * std + float(t.float().mean())).to(t.dtype))
            elif t.dtype.is_floating_point and t.numel() == 1:
                # a scalar float (a timestep, a guidance scale): vary it within [0, 2|t|]
                batch.append((torch.rand(t.shape, generator=g) * 2 * t.abs().clamp(min=1e-3)).to(t.dtype))
            elif not t.dtype.is_floating_point and t.dtype != torch.bool and t.numel() > 0 and (
                    t.numel() == 1 or int(t.min()) != int(t.max())):
                # one timestep or label: anything in [0, it]; a varied tensor (token ids): its own range
                lo, hi = (min(0, int(t.min())), int(t.max())) if t.numel() == 1 else (int(t.min()), int(t.max()))
                batch.append(torch.randint(lo, hi + 1, t.shape, generator=g, dtype=t.dtype))
            else:
                batch.append(t.clone())
        batches.append(tuple(batch))
    return batches


def load_batches(path: str | Path, names: Sequence[str], example: Sequence[torch.Tensor], *,
                 what: str = "inputs") -> list[tuple[torch.Tensor, ...]]:
    """Batches from a file mapping each input name to ``[N, *example_shape]`` (``.npz`` or ``.safetensors``).

    Raises:
        ConfigError: unreadable file, a missing or extra input name, a shape or sample count that
            does not match (names the key, what it holds and what was expected).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found", where=str(path),
                          fix="pass a .npz or .safetensors file mapping each input name to [N, *shape]")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            data = dict(load_file(str(path)))
        elif path.suffix == ".npz":
            with np.load(path) as z:
                data = {k: z[k] for k in z.files}
        else:
            raise ConfigError(f"cannot read {what} from a {path.suffix or 'suffix-less'} file", where=str(path),
                              fix="use .npz (numpy.savez) or .safetensors")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read {what}: {type(exc).__name__}: {exc}", where=str(path)) from exc
    positional = [f"input_{i}" for i in range(len(example))]
    keys = list(names) if set(data) == set(names) else positional if set(data) == set(positional) else None
    if keys is None:
        raise ConfigError(f"{what} keys {sorted(data)} do not match the model's inputs {list(names)}",
                          where=str(path), fix="name each array after an input: " + ", ".join(names))
    counts, samples = set(), []
    for key, ex in zip(keys, example, strict=True):
        arr = data[key]
        if tuple(arr.shape[1:]) == tuple(ex.shape):
            samples.append([arr[i] for i in range(arr.shape[0])])
        elif ex.dim() > 0 and ex.shape[0] == 1 and tuple(arr.shape[1:]) == tuple(ex.shape[1:]):
            samples.append([arr[i:i + 1] for i in range(arr.shape[0])])
        else:
            raise ConfigError(f"{what} {key!r} has shape {tuple(arr.shape)}, expected [N, "
                              f"{', '.join(map(str, ex.shape))}]", where=f"{path}:{key}",
                              fix="stack N samples of the example's shape along a new first axis")
        counts.add(arr.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(f"{what} arrays hold different or zero sample counts {sorted(counts)}", where=str(path),
                          fix="give every input the same number N > 0 of samples")
    return [tuple(torch.from_numpy(np.ascontiguousarray(col[i])).to(ex.dtype)
                  for col, ex in zip(samples, example, strict=True)) for i in range(counts.pop())]


def same_batch(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """True when two input tuples hold identical tensors."""
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
                                    for x, y in zip(a, b, strict=True))
