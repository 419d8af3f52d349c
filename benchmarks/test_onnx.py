"""Inference: the model exported to ONNX and run in onnxruntime, against eager PyTorch (no grad).

    python -m pytest benchmarks/test_onnx.py --benchmark-json=.results/onnx.json

Shapes: small, the original's sequential-MNIST setting (I=1, H=128, T=784, B=128, sparsity 0.1, dense
gate, dense path); large, I=64, H=4096, T=100, B=32, sparsity 0.01 with the sparse gate (sparse
path, where ONNX computes each CSR product as a gather, a running sum and a difference).
"""

from __future__ import annotations

import pytest
import torch

from esgp_sparse import ESGP

ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install -e '.[onnx]'")

SHAPES = {
    "smnist": dict(input_size=1, hidden=128, steps=784, batch=128, sparsity=0.1, gate="dense"),
    "H4096-sparse-gate": dict(input_size=64, hidden=4096, steps=100, batch=32, sparsity=0.01, gate="sparse"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every shape's model and the path of its ONNX file, exported once."""
    models = {}
    for name, s in SHAPES.items():
        torch.manual_seed(0)
        model = ESGP(s["input_size"], s["hidden"], sparsity=s["sparsity"], gate=s["gate"], seed=0).eval()
        dims = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("steps", min=1, max=100_000)}
        program = torch.onnx.export(
            model, (torch.randn(2, 5, s["input_size"]),), dynamo=True, dynamic_shapes=(dims,), verbose=False
        )
        path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
        program.save(str(path))
        models[name] = model, path
    return models


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_inference(benchmark, exported, shape, runtime):
    s = SHAPES[shape]
    model, path = exported[shape]
    x = torch.randn(s["batch"], s["steps"], s["input_size"])
    with torch.no_grad():
        reference = model(x)[0]
    if runtime == "eager":

        def run():
            with torch.no_grad():
                return model(x)[0]

    else:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}

        def run():
            return torch.from_numpy(session.run(None, feed)[0])

    torch.testing.assert_close(run(), reference, rtol=1e-4, atol=1e-4)  # checked once before timing
    benchmark.group = f"inference-{shape}"
    benchmark.extra_info.update(
        shape=shape,
        runtime=runtime,
        path=model.cells[0].path,
        onnxruntime=ort.__version__,
        torch=torch.__version__,
        **s,
    )
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
