"""The layer in the form torch.onnx exports (ops/scan.py) against its twin, and ONNX files run in
onnxruntime at other lengths and batch sizes."""

from __future__ import annotations

import pytest
import torch
from _testing import TOL, pattern

from esgp_sparse import ESGP
from esgp_sparse.ops import LayerSpec, lowrank_matrix, naive_layer
from esgp_sparse.ops.scan import gather_matmul, scan_layer
from esgp_sparse.ops.sparse import csr_to_dense

H, I = 12, 3


@pytest.mark.parametrize("gate, sparse", [("dense", False), ("diagonal", True), ("sparse", True), ("lowrank", True)])
def test_scan_layer_equals_the_naive_layer(gate, sparse):
    torch.manual_seed(0)
    dtype = torch.float64
    recurrent_csr, gate_csr = pattern(H, 0.3, seed=1), pattern(H, 0.4, seed=2)
    values = torch.randn(recurrent_csr.col.numel(), dtype=dtype) * 0.4
    dense = csr_to_dense(recurrent_csr.crow, recurrent_csr.col, values, H)
    gate_values = torch.randn(gate_csr.col.numel(), dtype=dtype)
    gate_weight = {
        "dense": torch.randn(H, H, dtype=dtype) * 0.3,
        "diagonal": torch.randn(H, dtype=dtype),
        "lowrank": torch.randn(H, 7, dtype=dtype) * 0.5,  # rank 3
    }.get(gate, gate_values)
    gate_dense = {
        "dense": lambda: gate_weight,
        "diagonal": lambda: torch.diag(gate_weight),
        "sparse": lambda: csr_to_dense(gate_csr.crow, gate_csr.col, gate_values, H),
        "lowrank": lambda: lowrank_matrix(gate_weight),
    }[gate]()
    spec = LayerSpec(recurrent_csr if sparse else None, gate, gate_csr if gate == "sparse" else None)
    x, h0 = torch.randn(7, 2, I, dtype=dtype), torch.randn(2, H, dtype=dtype)
    input_weight, bias = torch.randn(H, I, dtype=dtype), torch.randn(H, dtype=dtype)
    got = scan_layer(x, h0, input_weight, values if sparse else dense, gate_weight, bias, spec)
    torch.testing.assert_close(got, naive_layer(x, h0, input_weight, dense, gate_dense, bias), **TOL[dtype])
    batch_first = scan_layer(
        x.transpose(0, 1), h0, input_weight, values if sparse else dense, gate_weight, bias, spec, True
    )
    torch.testing.assert_close(batch_first, got.transpose(0, 1), **TOL[dtype])


def test_gather_matmul_equals_the_dense_product():
    crow = torch.tensor([0, 0, 2, 2, 5, 6, 6], dtype=torch.int32)  # empty rows first, between and last
    col = torch.tensor([1, 4, 0, 2, 5, 3], dtype=torch.int32)
    values, h = torch.randn(6, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    want = csr_to_dense(crow, col, values, 6) @ h
    torch.testing.assert_close(gather_matmul(h, values, crow.long(), col.long()), want, **TOL[torch.float64])


ONNX_EXTRA = "ONNX export needs the onnx extra: pip install -e '.[onnx]'"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=2),
        dict(gate="diagonal", path="sparse"),
        dict(gate="sparse", path="sparse", bidirectional=True),
        dict(gate="lowrank", gate_rank=4, path="sparse"),
    ],
    ids=[
        "dense-path-2-layers",
        "sparse-path-diagonal-gate",
        "sparse-path-sparse-gate-bidirectional",
        "sparse-path-lowrank-gate",
    ],
)
def test_onnx_file_runs_at_other_lengths(kwargs, tmp_path):
    """``torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...)`` with nothing turned off
    (the parameters require grad), then onnxruntime at other batch sizes and lengths: equal to eager
    within 1e-5 in float32."""
    onnxruntime = pytest.importorskip("onnxruntime", reason=ONNX_EXTRA)
    pytest.importorskip("onnxscript", reason=ONNX_EXTRA)
    torch.manual_seed(0)
    model = ESGP(I, 32, sparsity=0.2, seed=3, **kwargs).eval()
    dims = {0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("steps", min=1, max=4096)}
    program = torch.onnx.export(
        model,
        (torch.randn(4, 6, I),),
        dynamo=True,
        dynamic_shapes=(dims,),
        input_names=["input"],
        output_names=["output", "h_n"],
        verbose=False,
    )
    path = tmp_path / "esgp.onnx"
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, steps in ((2, 1), (3, 25)):
        x = torch.randn(batch, steps, I)
        out, h_n = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            ref, ref_h = model(x)
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(h_n), ref_h, rtol=1e-5, atol=1e-5)
