"""Sampling-loop parity: a diffusion denoiser checked over the loop it runs in, not one step.

One forward pass within tolerance says little about a denoiser: each step feeds the artifact's
own output back as the next step's latents, so small per-step errors compound (or, for some
quantization errors, cancel). ``sampling_parity`` runs ``steps`` denoising steps of a diffusers
scheduler with the artifact in its real runtime (in a child process) and with PyTorch, from the
same noise and conditioning, and compares the final samples (cosine, PSNR) and every step's.

The loop is defined once (``denoise``) and runs on both sides: the child calls the runtime, the
parent calls the PyTorch model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilekit.errors import ConfigError
from mobilekit.parity import SAMPLE_TOLERANCES, compare

__all__ = ["SAMPLE_TOLERANCES", "Sampling", "SamplingParity", "artifact_trajectory", "compare_trajectories",
           "denoise", "reference_trajectory"]

SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler"}

@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How to run a denoiser in a sampling loop.

    Attributes:
        steps: denoising steps.
        scheduler: ``ddim`` (deterministic, default), ``euler`` or ``dpm`` (diffusers schedulers).
        latents_input: index of the latents among the model's inputs.
        timestep_input: index of the timestep among the model's inputs.
        seed: seed of the starting noise.
        num_train_timesteps: the scheduler's training horizon.
    """

    steps: int = 8
    scheduler: str = "ddim"
    latents_input: int = 0
    timestep_input: int = 1
    seed: int = 0
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"sampling steps must be an integer >= 1, got {self.steps!r}", where="sampling.steps")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown sampling scheduler {self.scheduler!r}", where="sampling.scheduler",
                              fix=f"use one of {', '.join(SCHEDULERS)}")
        if self.latents_input == self.timestep_input:
            raise ConfigError("the latents and the timestep must be different inputs", where="sampling")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and the child job."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class SamplingParity:
    """Agreement of an artifact with PyTorch over a sampling loop.

    Attributes:
        status: ``pass``, ``fail`` or ``not-run``.
        steps, scheduler: the loop that was run.
        cosine, psnr_db, max_abs_error: the final samples compared (PSNR against the reference's range).
        step_psnr_db: PSNR of the latents after each step (how the error grows along the loop).
        tolerance: the floors applied to the final sample.
        reason: why it was not run, or what failed.
    """

    status: str
    steps: int = 0
    scheduler: str = ""
    cosine: float | None = None
    psnr_db: float | None = None
    max_abs_error: float | None = None
    step_psnr_db: list[float] = field(default_factory=list)
    tolerance: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def _scheduler(spec: Mapping[str, Any]) -> Any:
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[spec["scheduler"]])
    sched = cls(num_train_timesteps=int(spec["num_train_timesteps"]))
    sched.set_timesteps(int(spec["steps"]))
    return sched


def denoise(call: Callable[[list[np.ndarray]], list[np.ndarray]], inputs: Sequence[np.ndarray],
            spec: Mapping[str, Any]) -> list[np.ndarray]:
    """Run the sampling loop with ``call`` as the denoiser; return the latents after every step.

    ``call`` takes the model's inputs (numpy, in order) and returns its outputs; output 0 is the
    noise prediction. A model that learns its variance returns twice the latent channels; the
    first half is the noise prediction.
    """
    import torch

    sched = _scheduler(spec)
    li, ti = int(spec["latents_input"]), int(spec["timestep_input"])
    shape, dtype = inputs[li].shape, inputs[li].dtype
    g = torch.Generator().manual_seed(int(spec["seed"]))
    latents = torch.randn(shape, generator=g) * float(getattr(sched, "init_noise_sigma", 1.0))
    t_template = np.asarray(inputs[ti])
    trajectory = []
    for t in sched.timesteps:
        model_in = sched.scale_model_input(latents, t)
        feed = list(inputs)
        feed[li] = model_in.numpy().astype(dtype)
        feed[ti] = np.full(t_template.shape, float(t), dtype=np.float64).astype(t_template.dtype)
        out = np.asarray(call(feed)[0])
        eps = out[:, : shape[1]] if out.ndim == len(shape) and out.shape[1] == 2 * shape[1] else out
        if eps.shape != shape:
            raise ConfigError(f"the denoiser's output 0 has shape {eps.shape}, the latents {shape}",
                              where="sampling", fix="sampling needs output 0 to be the noise prediction")
        latents = sched.step(torch.from_numpy(np.ascontiguousarray(eps)).float(), t, latents).prev_sample
        trajectory.append(latents.numpy().copy())
    return trajectory


def sample_job(job: dict[str, Any], inputs: list[np.ndarray], workdir: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Child-process job: the sampling loop with the artifact in its runtime."""
    from mobilekit.runtime.runners import open_runner

    runner = open_runner(Path(job["path"]), threads=job.get("threads"), **job.get("options", {}))
    return {"runtime": runner.runtime}, denoise(runner.run, inputs, job["sampling"])


def compare_trajectories(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], *,
                         sampling: Sampling, tolerance: Mapping[str, float]) -> SamplingParity:
    """Compare two sampling trajectories (``parity.compare`` on each step); the final sample decides."""
    each = [compare([r], [a], tolerance=tolerance, runtime="") for r, a in zip(reference, actual, strict=True)]
    final = each[-1]
    reason = None if final.status == "pass" else (
        f"final sample after {sampling.steps} {sampling.scheduler} steps: cosine {final.cosine:.5f} "
        f"(floor {tolerance['cosine']}), PSNR {final.psnr_db:.1f} dB (floor {tolerance['psnr_db']})")
    return SamplingParity(status=final.status, steps=sampling.steps, scheduler=sampling.scheduler,
                          cosine=final.cosine, psnr_db=final.psnr_db, max_abs_error=final.max_abs_error,
                          step_psnr_db=[round(p.psnr_db, 3) for p in each], tolerance=dict(tolerance), reason=reason)


def reference_trajectory(model: Any, example: Sequence[Any], sampling: Sampling) -> list[np.ndarray]:
    """The sampling loop with the PyTorch model (the reference every artifact is compared with)."""
    import torch

    from mobilekit.converters._torch_common import flatten_outputs  # torch: kept off artifact.py's import

    def call(feed: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(*[torch.from_numpy(np.ascontiguousarray(a)) for a in feed])
        return [flatten_outputs(out)[0].detach().float().numpy()]

    _check_inputs(example, sampling)
    return denoise(call, [t.detach().numpy() for t in example], sampling.to_dict())


def _check_inputs(example: Sequence[Any], sampling: Sampling) -> None:
    n = len(example)
    for what, i in (("latents_input", sampling.latents_input), ("timestep_input", sampling.timestep_input)):
        if not 0 <= i < n:
            raise ConfigError(f"sampling {what} {i} is out of range: the model has {n} inputs", where=f"sampling.{what}")
    if example[sampling.latents_input].dim() < 2:
        raise ConfigError(f"input {sampling.latents_input} is not latents (shape {tuple(example[sampling.latents_input].shape)})",
                          where="sampling.latents_input", fix="point latents_input at the [B, C, ...] latents")


def artifact_trajectory(path: Path, example: Sequence[Any], sampling: Sampling,
                        options: Mapping[str, Any] | None = None) -> list[np.ndarray]:
    """The sampling loop with the artifact in its runtime, in a child process."""
    from mobilekit.runtime.child import run_in_child

    job = {"job": "sample", "path": str(Path(path).resolve()), "options": dict(options or {}),
           "sampling": sampling.to_dict()}
    _, trajectory = run_in_child(job, [t.detach().numpy() for t in example])
    return trajectory
