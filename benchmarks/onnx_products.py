"""The forms of a CSR product ``W @ h`` that ONNX can express, run in onnxruntime: time and error.

    python benchmarks/onnx_products.py      # one JSON line per form (ms: mean of 10 runs after one)

W: the reservoir of ``ESGP(4, 4096, sparsity=0.01, seed=0, path="sparse")`` (41 per row); h: (H, 32)
float32. ``max_error`` is the largest deviation from the float64 product over 200 runs: a form whose
threads race shows it there. esgp_sparse/ops/scan.py uses "running_sum" (see its docstring).
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import onnxruntime
import torch
from torch import nn

from esgp_sparse import ESGP
from esgp_sparse.ops import csr_row_indices, csr_to_dense


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cell = ESGP(4, 4096, sparsity=0.01, seed=0, path="sparse").cells[0]
    crow, col, values = cell.crow_indices.long(), cell.col_indices.long(), cell.values
    hidden = crow.numel() - 1
    rows = csr_row_indices(crow, col.numel())
    dense = csr_to_dense(crow, col, values, hidden)

    forms = {
        "running_sum": lambda h: (lambda r: (r[crow[1:]] - r[crow[:-1]]).float())(
            nn.functional.pad((h[col] * values[:, None]).double().cumsum(0), (0, 0, 1, 0))
        ),
        "index_add": lambda h: torch.zeros_like(h).index_add(0, rows, h[col] * values[:, None]),
        "scatter_add": lambda h: torch.zeros_like(h).scatter_add(
            0, rows[:, None].expand(-1, h.shape[1]), h[col] * values[:, None]
        ),
        "running_sum_batch_major": lambda h: (lambda r: (r[:, crow[1:]] - r[:, crow[:-1]]).float().t())(
            nn.functional.pad((h.t()[:, col] * values).double().cumsum(1), (1, 0))
        ),
        "dense": lambda h: dense @ h,
    }

    class Form(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.fn(h)

    h = torch.randn(hidden, 32)
    want = (dense.double() @ h.double()).numpy()
    for name, fn in forms.items():
        program = torch.onnx.export(Form(fn), (h,), dynamo=True, verbose=False)
        path = f"/tmp/onnx_product_{name}.onnx"
        program.save(path)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: h.numpy()}
        error = max(float(np.abs(session.run(None, feed)[0] - want).max()) for _ in range(200))
        start = time.perf_counter()
        for _ in range(10):
            session.run(None, feed)
        ms = (time.perf_counter() - start) / 10 * 1e3
        record = dict(form=name, ms=round(ms, 2), max_error=error, hidden=hidden, nnz=col.numel(), batch=32)
        print(json.dumps(record | dict(onnxruntime=onnxruntime.__version__, torch=torch.__version__)), flush=True)


if __name__ == "__main__":
    main()
