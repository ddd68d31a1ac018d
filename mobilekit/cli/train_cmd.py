"""``mobilekit prune`` and ``mobilekit distill``: TinyFusion depth pruning and recovery from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mobilekit.errors import ConfigError


def _load_model(spec: str, seed: int) -> Any:
    """Resolve SPEC to a model depth pruning supports (unwrapping export wrappers)."""
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        import diffusers

        class_name = json.loads((path / "config.json").read_text()).get("_class_name", "")
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise ConfigError(f"config.json names class {class_name!r}, which diffusers does not have",
                              where=str(path / "config.json"), fix="pass a diffusers model folder")
        return cls.from_pretrained(path).eval()
    from mobilekit.spec import load_spec
    from mobilekit.train.tinyfusion.blocks import BUILTIN_STACKS

    model = load_spec(spec, seed=seed).model
    if any(s.matches(model) for s in BUILTIN_STACKS):
        return model
    for child in model.children():  # e.g. the export wrapper around a diffusers DiT
        if any(s.matches(child) for s in BUILTIN_STACKS):
            return child
    return model  # prune_depth raises the clear "unsupported model" error


def _kept(text: str | None, option: str = "--kept") -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"cannot read block indices {text!r}", where=option, fix="write e.g. 0,2,4,7") from None


def register(app: typer.Typer) -> None:
    """Add ``mobilekit prune`` and ``mobilekit distill`` to the CLI."""

    @app.command("prune")
    def prune_cmd(
        spec: Annotated[str, typer.Argument(help="builtin:dit-tiny, a diffusers model folder, or package.module:function")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory (model/, prune.json, decisions.png)")] = Path("pruned"),
        pattern: Annotated[str, typer.Option("--pattern", help="N:M local pattern, e.g. 1:2, 2:4, or mixed 2:4,3:4")] = "1:2",
        method: Annotated[str, typer.Option("--method", help="sensitivity (default: best in the 5-seed reproduction), learnable (TinyFusion), shortgpt, flux-lite, oracle, random, indices")] = "sensitivity",
        steps: Annotated[int, typer.Option("--steps", help="search length in optimizer steps")] = 100,
        data: Annotated[str, typer.Option("--data", help="digits, an image folder DIR/<class>/*.png, or latents .safetensors")] = "digits",
        batch_size: Annotated[int, typer.Option("--batch-size", help="samples per step and process")] = 16,
        delta: Annotated[str, typer.Option("--delta", help="recoverability estimate: lora, full, frozen")] = "lora",
        lora_rank: Annotated[int, typer.Option("--lora-rank", help="LoRA rank on every linear layer")] = 8,
        lr: Annotated[float, typer.Option("--lr", help="ΔΦ learning rate (gates: 10x)")] = 1e-4,
        kept: Annotated[str | None, typer.Option("--kept", help="explicit kept indices for --method indices, e.g. 0,2,4")] = None,
        seed: Annotated[int, typer.Option("--seed", help="run seed")] = 0,
        checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="steps between resumable checkpoints (0: none)")] = 0,
        search_loss: Annotated[str, typer.Option("--search-loss", help="eps, or eps+vlb (adds the VLB term on a learned variance)")] = "eps",
        protect: Annotated[str | None, typer.Option("--protect", help="blocks every candidate must keep, e.g. 0 (learnable only)")] = None,
        baseline_scope: Annotated[str, typer.Option("--baseline-scope", help="global (baselines keep the best blocks anywhere) or groups (the best N of every group of M, as --pattern says)")] = "global",
        device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")] = None,
        precision: Annotated[str, typer.Option("--precision", help="fp32 or bf16 (autocast)")] = "fp32",
        grad_accum: Annotated[int, typer.Option("--grad-accum", help="micro-batches per optimizer step")] = 1,
        json_out: Annotated[bool, typer.Option("--json", help="print the result record as JSON on stdout")] = False,
    ) -> None:
        """Learn (or pick by a baseline) which transformer blocks to keep; save the shallower model."""
        from mobilekit.cli._output import err_console, print_json, print_table, progress_callback
        from mobilekit.train.tinyfusion import DepthPruneConfig, prune_depth

        config = DepthPruneConfig(method=method, pattern=pattern, steps=steps, batch_size=batch_size, delta=delta,
                                  lora_rank=lora_rank, lr=lr, kept=_kept(kept), seed=seed,
                                  checkpoint_every=checkpoint_every, log_every=max(1, steps // 50),
                                  search_loss=search_loss, protect=_kept(protect, "--protect"), precision=precision,
                                  grad_accum=grad_accum, baseline_scope=baseline_scope)
        model = _load_model(spec, seed)
        with progress_callback(f"prune {spec} ({method} {pattern})") as on_progress:
            result = prune_depth(model, data, config, out_dir=out, on_progress=on_progress, device=device)
        record = result.to_dict()
        if json_out:
            print_json({k: v for k, v in record.items() if k != "log"} | {"out_dir": str(out)})
            return
        conf = ", ".join(f"{c:.2f}" for c in result.confidences) if result.confidences else "-"
        print_table(f"{spec}: {result.depth_before} -> {len(result.kept)} blocks", ["kept", "confidence", "calibration loss", "seconds"],
                    [[str(result.kept), conf, f"{result.calibration_loss:.4f}", f"{result.seconds:.1f}"]])
        err_console().print(f"model: {out / 'model'}  record: {out / 'prune.json'}"
                            + (f"  plot: {out / 'decisions.png'}" if result.log else ""))

    @app.command("distill")
    def distill_cmd(
        student: Annotated[Path, typer.Argument(help="the pruned model folder (prune's OUT/model)")],
        teacher: Annotated[str | None, typer.Option("--teacher", help="the unpruned model SPEC (needed unless --mode finetune)")] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory (model/, distill.json, checkpoints)")] = Path("distilled"),
        mode: Annotated[str, typer.Option("--mode", help="masked-kd, kd, or finetune")] = "masked-kd",
        steps: Annotated[int, typer.Option("--steps", help="training length in optimizer steps")] = 100,
        data: Annotated[str, typer.Option("--data", help="digits, an image folder, or latents .safetensors")] = "digits",
        batch_size: Annotated[int, typer.Option("--batch-size", help="samples per step and process")] = 16,
        lr: Annotated[float, typer.Option("--lr", help="learning rate (cosine to half of it)")] = 2e-4,
        record: Annotated[Path | None, typer.Option("--record", help="prune.json with kept layers and groups (default: beside STUDENT)")] = None,
        seed: Annotated[int, typer.Option("--seed", help="run seed")] = 0,
        checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="steps between resumable checkpoints (0: none)")] = 50,
        gt_loss: Annotated[str, typer.Option("--gt-loss", help="eps, or eps+vlb (adds the VLB term on a learned variance)")] = "eps",
        kd_variance: Annotated[bool, typer.Option("--kd-variance", help="distil the teacher's learned variance (KL of the two p(x_t-1|x_t))")] = False,
        device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")] = None,
        precision: Annotated[str, typer.Option("--precision", help="fp32 or bf16 (autocast)")] = "fp32",
        grad_accum: Annotated[int, typer.Option("--grad-accum", help="micro-batches per optimizer step")] = 1,
        json_out: Annotated[bool, typer.Option("--json", help="print the result record as JSON on stdout")] = False,
    ) -> None:
        """Recover a pruned model by masked distillation from its teacher (or plain fine-tuning)."""
        from mobilekit.cli._output import err_console, print_json, print_table, progress_callback
        from mobilekit.train.tinyfusion import DistillConfig, distill

        config = DistillConfig(mode=mode, steps=steps, batch_size=batch_size, lr=lr, lr_min=lr / 2, seed=seed,
                               checkpoint_every=checkpoint_every, log_every=max(1, steps // 50), gt_loss=gt_loss,
                               kd_variance=kd_variance, precision=precision, grad_accum=grad_accum)
        student_model = _load_model(str(student), seed)
        teacher_model = _load_model(teacher, seed) if teacher else None
        rec_path = record or Path(student).parent / "prune.json"
        kept = groups = None
        if rec_path.is_file():
            rec = json.loads(rec_path.read_text())
            kept, groups = rec.get("kept"), rec.get("groups")
        elif record is not None:
            raise ConfigError("prune record not found", where=str(record), fix="pass the prune.json prune wrote")
        with progress_callback(f"{mode} {student}") as on_progress:
            result = distill(student_model, teacher_model, data, config, kept=kept, groups=groups, out_dir=out,
                             on_progress=on_progress, device=device)
        if json_out:
            print_json(result.to_dict() | {"out_dir": str(out)})
            return
        last = result.log[-1] if result.log else {}
        print_table(f"{mode}: {result.steps} steps", ["final loss", "ground-truth loss", "pairs", "s/step"],
                    [[f"{last.get('loss', float('nan')):.4f}", f"{last.get('gt', float('nan')):.4f}",
                      str(result.pairs), f"{result.seconds_per_step:.3f}"]])
        err_console().print(f"model: {out / 'model'}  record: {out / 'distill.json'}")
