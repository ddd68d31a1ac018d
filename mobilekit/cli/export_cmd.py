"""``mobilekit export``: one model to the artifacts each named phone ships."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mobilekit.errors import ConfigError


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def manifest_rows(manifest: Any) -> list[list[Any]]:
    """Table rows for a manifest: artifact, targets, recipe, size, parity, seconds."""
    from mobilekit.reporting import images_text, parity_text, sampling_text

    sampled = any(a.sampling for a in manifest.artifacts)
    imaged = any(a.images for a in manifest.artifacts)
    rows = []
    for a in manifest.artifacts:
        rows.append([a.path, ", ".join(a.targets), a.recipe.name, _human_bytes(a.size_bytes), parity_text(a)]
                    + ([sampling_text(a)] if sampled else []) + ([images_text(a)] if imaged else [])
                    + ["cached" if a.cached else f"{a.export_seconds:.1f}s"])
    return rows


def manifest_columns(manifest: Any) -> list[str]:
    """Column names for ``manifest_rows`` (sampling and image columns only when those checks ran)."""
    sampled = any(a.sampling for a in manifest.artifacts)
    imaged = any(a.images for a in manifest.artifacts)
    return ["artifact", "targets", "recipe", "size", "parity vs PyTorch"] + (
        ["sampling loop vs PyTorch"] if sampled else []) + (["output images (8-bit)"] if imaged else []) + ["export"]


def parse_tolerances(items: list[str]) -> dict[str, dict[str, float]]:
    """Parse ``PRECISION:metric=value`` items (e.g. ``int8-static:cosine=0.9``)."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        try:
            prec, _, rest = item.partition(":")
            metric, _, value = rest.partition("=")
            if metric not in ("cosine", "psnr_db", "image_psnr_db"):
                raise ValueError(metric)
            out.setdefault(prec, {})[metric] = float(value)
        except ValueError as exc:
            raise ConfigError(f"cannot read tolerance {item!r}", where="--tolerance",
                              fix="write PRECISION:cosine=0.99, PRECISION:psnr_db=30 or PRECISION:image_psnr_db=30") from exc
    return out


def parse_adapters(items: list[str]) -> dict[str, Path]:
    """Parse ``NAME=PATH`` items (``--adapter style=lora/pytorch_lora_weights.safetensors``)."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"cannot read adapter {item!r}", where="--adapter",
                              fix="write NAME=PATH, e.g. --adapter style=lora/adapter_dir")
        if name in out:
            raise ConfigError(f"adapter {name!r} given twice", where="--adapter", fix="give each adapter its own name")
        out[name] = Path(path)
    return out


def register(app: typer.Typer) -> None:
    """Add ``mobilekit export`` to the CLI."""

    @app.command("export")
    def export_cmd(
        spec: Annotated[str, typer.Argument(help="builtin:dit-tiny, builtin:gan-tiny, package.module:function, or a diffusers model folder")],
        target: Annotated[list[str], typer.Option("--target", "-t", help="target phone (repeatable); see `mobilekit targets`")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("out"),
        format: Annotated[list[str] | None, typer.Option("--format", "-f", help="executorch, coreml, tflite, onnx (repeatable); default: each target's default recipe")] = None,
        precision: Annotated[str | None, typer.Option("--precision", "-p", help="fp32, fp16, int8-weight, int8-dynamic, int8-static, or int8 (the best int8 each format builds)")] = None,
        input: Annotated[list[str] | None, typer.Option("--input", help="input shape for a model folder: [name=]1x4x32x32[:dtype]")] = None,
        calibration: Annotated[Path | None, typer.Option("--calibration", help=".npz/.safetensors of calibration batches for int8-static (input name -> [N, *shape])")] = None,
        parity_inputs: Annotated[Path | None, typer.Option("--parity-inputs", help=".npz/.safetensors of inputs parity is checked on, besides the example (input name -> [N, *shape])")] = None,
        parity_samples: Annotated[int, typer.Option("--parity-samples", help="inputs parity compares when --parity-inputs is not given: the example and N-1 held-out ones")] = 4,
        tolerance: Annotated[list[str] | None, typer.Option("--tolerance", help="PRECISION:cosine=0.99, PRECISION:psnr_db=30 or PRECISION:image_psnr_db=30 (8-bit output images)")] = None,
        sampling_steps: Annotated[int, typer.Option("--sampling-steps", help="for a diffusion denoiser: also compare N steps of a sampling loop with PyTorch (0: off)")] = 0,
        sampling_scheduler: Annotated[str, typer.Option("--sampling-scheduler", help="ddim, euler or dpm (diffusers schedulers)")] = "ddim",
        image_range: Annotated[str | None, typer.Option("--image-range", help="for an image-to-image model: output 0 is an image with values LOW,HIGH (e.g. -1,1); parity also compares it as 8-bit pictures. Built-in GANs set it themselves")] = None,
        no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the parity check entirely (artifacts are marked unverified)")] = False,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="rebuild even when cached")] = False,
        workers: Annotated[int, typer.Option("--workers", help="parallel export processes")] = 1,
        adapter: Annotated[list[str] | None, typer.Option("--adapter", help="NAME=PATH of a LoRA adapter (repeatable): a peft save_pretrained folder, a diffusers LoRA .safetensors file, or an E²GAN adapter folder")] = None,
        adapter_policy: Annotated[str, typer.Option("--adapter-policy", help="with --adapter: fuse (one artifact per adapter) or separate (share the base weights where the format can)")] = "fuse",
        json_out: Annotated[bool, typer.Option("--json", help="print the manifest as JSON on stdout")] = False,
    ) -> None:
        """Export a model for named phones: quantized, checked against PyTorch, listed in manifest.json."""
        from mobilekit.cli._output import err_console, print_json, print_table, progress_callback
        from mobilekit.exporting import export
        from mobilekit.images import ImageOutput
        from mobilekit.plan import plan_exports
        from mobilekit.sampling import Sampling
        from mobilekit.spec import load_spec

        loaded = load_spec(spec, inputs=input)
        cal = loaded.load_batches(calibration, "calibration") if calibration else (loaded.calibration or None)
        held = loaded.load_batches(parity_inputs, "parity inputs") if parity_inputs else None
        plan = plan_exports(target, formats=format, precision=precision)
        for line in plan.describe():
            err_console().print(f"plan: {line}", highlight=False)
        image = ImageOutput.parse(image_range, where="--image-range") if image_range else loaded.image
        adapters = parse_adapters(adapter or [])
        if adapters and sampling_steps:
            raise ConfigError("--sampling-steps cannot be combined with --adapter", where="--adapter",
                              fix="check the sampling loop with a plain export of each fused model")
        with progress_callback(f"export {loaded.name}") as on_progress:
            if adapters:
                from mobilekit.adapters import export_adapters

                manifest = export_adapters(loaded.model, adapters, loaded.example_inputs, targets=target,
                                           out_dir=out, precision=precision, formats=format, policy=adapter_policy,
                                           calibration=cal, verify=not no_verify,
                                           tolerances=parse_tolerances(tolerance or []), workers=workers,
                                           model_name=loaded.name, input_names=loaded.input_names or None,
                                           parity_inputs=held, parity_samples=parity_samples, on_progress=on_progress,
                                           image=image)
            else:
                manifest = export(loaded.model, loaded.example_inputs, targets=target, out_dir=out, precision=precision,
                                  formats=format, calibration=cal, verify=not no_verify,
                                  tolerances=parse_tolerances(tolerance or []), use_cache=not no_cache, workers=workers,
                                  model_name=loaded.name, input_names=loaded.input_names or None,
                                  on_progress=on_progress, parity_inputs=held, parity_samples=parity_samples,
                                  sampling=Sampling(steps=sampling_steps, scheduler=sampling_scheduler)
                                  if sampling_steps else None, image=image)
        if json_out:
            print_json(manifest.to_dict())
        else:
            print_table(f"{loaded.name}: {len(manifest.artifacts)} artifact(s) in {out}", manifest_columns(manifest),
                        manifest_rows(manifest))
            err_console().print(f"manifest: {out / 'manifest.json'}")
