"""In-process runners, one per runtime. Use them only inside a child process (see ``child``):
a native crash here would take the caller down.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from mobilekit.errors import BackendUnavailableError, ConfigError


class Runner(Protocol):
    """Loads one artifact and runs it on numpy inputs."""

    runtime: ClassVar[str]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once and return the outputs in order."""
        ...


class ExecuTorchRunner:
    """ExecuTorch's Python runtime (portable kernels + XNNPACK; Core ML only on Apple hosts)."""

    runtime: ClassVar[str] = "executorch"

    def __init__(self, path: Path, *, threads: int | None = None, etdump: bool = False,
                 data_path: Path | None = None) -> None:
        from executorch.runtime import Runtime

        if threads:
            _set_executorch_threads(threads)
        self._runtime = Runtime.get()
        kwargs: dict[str, Any] = {"enable_etdump": etdump}
        if etdump:
            kwargs["debug_buffer_size"] = 0
        if data_path is not None:
            kwargs["data_path"] = str(data_path)
        self.program = self._runtime.load_program(Path(path), **kwargs)
        self.method = self.program.load_method("forward")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        outs = self.method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [o.detach().numpy().copy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]


def _set_executorch_threads(threads: int) -> None:
    try:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
    except Exception:  # older builds lack the hook; the default pool is then used
        pass


class LiteRTRunner:
    """ai-edge-litert's Interpreter (the successor of tflite-runtime), XNNPACK by default.

    ``signature`` runs that signature of a multi-signature model (default: the default signature).
    """

    runtime: ClassVar[str] = "ai-edge-litert"

    def __init__(self, path: Path, *, threads: int | None = None, signature: str | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._signature: Any = None  # a signature runner when ``signature`` names one
        if signature is not None:
            known = list(self.interpreter.get_signature_list())
            if signature not in known:
                raise ConfigError(f"no signature {signature!r} in the model", where=str(path),
                                  fix=f"known signatures: {', '.join(known) or 'none'}")
            self._signature = self.interpreter.get_signature_runner(signature)
            self._sig_inputs = list(self._signature.get_input_details())
            self._sig_outputs = list(self._signature.get_output_details())
            return
        self.interpreter.allocate_tensors()
        self._inputs = self.interpreter.get_input_details()
        self._outputs = self.interpreter.get_output_details()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._signature is not None:
            details = self._signature.get_input_details()
            if len(inputs) != len(self._sig_inputs):
                raise ConfigError(f"signature takes {len(self._sig_inputs)} inputs, got {len(inputs)}",
                                  where="inputs")
            feed = {name: np.ascontiguousarray(x, dtype=details[name]["dtype"])
                    for name, x in zip(self._sig_inputs, inputs, strict=True)}
            outs = self._signature(**feed)
            return [np.asarray(outs[name]).copy() for name in self._sig_outputs]
        if len(inputs) != len(self._inputs):
            raise ConfigError(f"the model takes {len(self._inputs)} inputs, got {len(inputs)}", where="inputs")
        for detail, x in zip(self._inputs, inputs, strict=True):
            self.interpreter.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=detail["dtype"]))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self._outputs]


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU execution provider."""

    runtime: ClassVar[str] = "onnxruntime"

    def __init__(self, path: Path, *, threads: int | None = None, profile_prefix: str | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._inputs = self.session.get_inputs()

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = {}
        for meta, x in zip(self._inputs, inputs, strict=True):
            want = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                    "tensor(int32)": np.int32}.get(meta.type)
            feed[meta.name] = np.ascontiguousarray(x, dtype=want) if want else x
        return [np.asarray(o) for o in self.session.run(None, feed)]


class CoreMLRunner:
    """coremltools' MLModel.predict: needs macOS (Linux has no Core ML runtime)."""

    runtime: ClassVar[str] = "coreml"

    def __init__(self, path: Path, *, threads: int | None = None, compute_units: str = "ALL") -> None:
        if sys.platform != "darwin":
            raise BackendUnavailableError("Core ML models run only on macOS", where=str(path),
                                          fix="run on a Mac, or rely on the structural check made on Linux")
        import coremltools as ct

        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self._in = [i.name for i in spec.description.input]
        self._out = [o.name for o in spec.description.output]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        pred = self.model.predict(dict(zip(self._in, inputs, strict=True)))
        return [np.asarray(pred[name]) for name in self._out]


def runtime_name(path: Path) -> str:
    """The runtime that runs ``path``, from its suffix."""
    suffix = Path(path).suffix.lower()
    table = {".pte": "executorch", ".tflite": "ai-edge-litert", ".onnx": "onnxruntime", ".mlpackage": "coreml",
             ".mlmodel": "coreml"}
    if suffix not in table:
        raise ConfigError(f"no runtime for files ending in {suffix!r}", where=str(path),
                          fix="pass a .pte, .tflite, .onnx or .mlpackage artifact")
    return table[suffix]


def open_runner(path: Path, *, threads: int | None = None, **options: Any) -> Runner:
    """Load ``path`` with the runner its suffix calls for."""
    name = runtime_name(path)
    cls: Any = {"executorch": ExecuTorchRunner, "ai-edge-litert": LiteRTRunner, "onnxruntime": OnnxRuntimeRunner,
                "coreml": CoreMLRunner}[name]
    return cls(Path(path), threads=threads, **options)


def pte_needs_backend(path: Path) -> str | None:
    """Name of a delegate backend ``path`` uses that this host's ExecuTorch runtime lacks, or None."""
    from executorch.runtime import Runtime

    from mobilekit._io import names_in_file

    backends = ("CoreMLBackend", "MPSBackend", "QnnBackend", "VulkanBackend")
    named = names_in_file(Path(path), [b.encode() for b in backends])  # scanned in chunks, never held whole
    registry = Runtime.get().backend_registry
    for backend in backends:
        if backend.encode() in named and not registry.is_available(backend):
            return backend
    return None
