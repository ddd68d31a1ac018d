"""The tiny E²GAN generator exports through each backend and matches PyTorch in its real runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilekit.train.e2gan.models import E2GANConfig, build_generator

pytestmark = pytest.mark.xdist_group("e2gan_export")


@pytest.fixture(scope="module")
def tiny():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    g = build_generator(E2GANConfig.tiny()).eval()
    inputs = g.example_inputs()
    with torch.no_grad():
        ref = g(*inputs).numpy()
    yield g, inputs, ref
    torch.set_num_threads(n)


@pytest.mark.slow
def test_torch_export(tiny):
    g, inputs, ref = tiny
    ep = torch.export.export(g, inputs)
    out = ep.module()(*inputs).detach().numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.slow
@pytest.mark.backend_onnx
def test_onnx_runtime_parity(tiny, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="pip install mobilekit[onnx]")
    g, inputs, ref = tiny
    path = tmp_path / "g.onnx"
    torch.onnx.export(g, inputs, str(path), dynamo=True)
    sess = ort.InferenceSession(str(path))
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
    out = sess.run(None, feeds)[0]
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.slow
@pytest.mark.backend_executorch
def test_executorch_xnnpack_parity(tiny, tmp_path):
    pytest.importorskip("executorch", reason="pip install mobilekit[executorch]")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    g, inputs, ref = tiny
    prog = to_edge_transform_and_lower(torch.export.export(g, inputs), partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp_path / "g.pte"
    path.write_bytes(prog.buffer)
    method = Runtime.get().load_program(str(path)).load_method("forward")
    out = method.execute(list(inputs))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.slow
@pytest.mark.backend_tflite
def test_litert_parity(tiny):
    litert_torch = pytest.importorskip("litert_torch", reason="pip install mobilekit[tflite]")
    g, inputs, ref = tiny
    edge = litert_torch.convert(g, inputs)
    out = np.asarray(edge(*inputs))
    np.testing.assert_allclose(out, ref, atol=1e-4)
