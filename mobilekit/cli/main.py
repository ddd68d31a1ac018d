"""Entry point of the ``mobilekit`` command.

Each command group lives in its own module with a ``register(app)`` function; this file
only wires them together and turns mobilekit errors into one clear line and an exit code
(``MOBILEKIT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from mobilekit.errors import MobilekitError

app = typer.Typer(
    name="mobilekit",
    help="Take generative image models from PyTorch to phones: train smaller, convert, profile, ship.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules under mobilekit.cli that add commands; each defines register(app).
_COMMAND_MODULES = [
    "targets_cmd",
    "export_cmd",
    "demo_cmd",
    "build_cmd",
    "gan_cmd",
    "profile_cmd",
    "estimate_cmd",
    "calibrate_cmd",
    "parity_cmd",
    "train_cmd",
]


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"mobilekit.cli.{name}").register(app)


_register_all()


def _quiet_third_party() -> None:
    """Hide other libraries' warnings and log noise unless MOBILEKIT_VERBOSITY asks for them."""
    import logging
    import warnings

    level = os.environ.get("MOBILEKIT_VERBOSITY", "").lower()
    if level in ("debug", "info", "2", "3"):
        logging.basicConfig(level=logging.DEBUG if level in ("debug", "3") else logging.INFO)
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=__import__("mobilekit.errors", fromlist=["x"]).MobilekitWarning)
    # Native runtimes read these when they load (children inherit them): TensorFlow Lite / absl C++
    # logs, and tqdm progress bars coremltools draws for every conversion pass. diffusers and
    # transformers reset their root logger's level from these on first use (diffusers' import warns
    # that this torchao lacks tensor classes it never needs here), so a level set below is not enough.
    for key, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GLOG_minloglevel", "2"), ("TQDM_DISABLE", "1"),
                       ("DIFFUSERS_VERBOSITY", "error"), ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(key, value)
    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    for name in ("torch", "torchao", "executorch", "coremltools", "onnxscript", "diffusers", "transformers",
                 "absl", "tensorflow", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # torch re-sets its loggers' levels and handlers when it is imported; a filter stays. torchao's
    # import logs a deprecation through this one on every run.
    # torch.onnx's exporter warns once per export that torchvision (not a dependency) is missing.
    for name in ("torch.utils._pytree", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).addFilter(errors_only)
    # Some libraries set their own module loggers to INFO on import (ExecuTorch's Core ML partitioner)
    # and call basicConfig: own the root handler first, and let through only mobilekit below ERROR.
    handler = logging.StreamHandler()
    handler.addFilter(lambda record: errors_only(record) or record.name.startswith("mobilekit"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(levelname)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; mobilekit errors become one line on stderr and their exit code."""
    _quiet_third_party()
    try:
        app(args=argv, standalone_mode=False)
    except MobilekitError as exc:
        if os.environ.get("MOBILEKIT_DEBUG") == "1":
            raise
        from rich.markup import escape

        from mobilekit.cli._output import err_console

        # escape: messages carry brackets (pip install 'mobilekit[tflite]') that are not markup
        err_console().print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False,
                            markup=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
