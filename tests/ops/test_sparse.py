from __future__ import annotations

import pytest
import torch
from _testing import TOL, cuda, pattern, reservoir_tensors

from esgp_sparse.ops import (
    csr_matmul,
    csr_matmul_t,
    csr_row_indices,
    csr_sampled_matmul,
    csr_to_dense,
    csr_transpose,
    naive_linear,
    sparse_linear,
)
from esgp_sparse.ops.sparse import csr_matmul_add_


@pytest.mark.parametrize("hidden, density, batch", [(1, 1.0, 1), (13, 0.3, 5), (257, 0.02, 3)], ids=lambda v: str(v))
def test_csr_matmul_equals_dense(hidden, density, batch):
    crow, col, values, dense = reservoir_tensors(hidden, density)
    x = torch.randn(hidden, batch, dtype=torch.float64)
    torch.testing.assert_close(csr_matmul(crow, col, values, x), dense @ x, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_csr_matmul_add_adds_the_product_in_place(dtype):
    crow, col, values, dense = reservoir_tensors(37, 0.1, dtype=dtype)
    x, acc = torch.randn(37, 6, dtype=dtype), torch.randn(37, 6, dtype=dtype)
    into = acc.clone()
    csr_matmul_add_(into, crow, col, values, x)
    # bfloat16 as csr_matmul does it: the product in float32, rounded once, then added
    product = (dense.float() @ x.float()).to(dtype) if dtype == torch.bfloat16 else dense @ x
    torch.testing.assert_close(into, acc + product, **TOL.get(dtype, {}))  # bfloat16: torch's default
    torch.library.opcheck(csr_matmul_add_, (acc.clone(), crow, col, values, x))


def test_int64_indices_work_too():
    crow, col, values, dense = reservoir_tensors(50, 0.1)
    x = torch.randn(50, 4, dtype=torch.float64)
    torch.testing.assert_close(csr_matmul(crow.long(), col.long(), values, x), dense @ x, **TOL[torch.float64])


def test_transpose_and_rows():
    crow, col, values, dense = reservoir_tensors(41, 0.2)
    crow_t, col_t, perm_t = csr_transpose(crow, col, 41)
    assert crow_t.dtype == crow.dtype and col_t.dtype == col.dtype
    torch.testing.assert_close(csr_to_dense(crow_t, col_t, values[perm_t], 41), dense.T)
    rows = csr_row_indices(crow)
    torch.testing.assert_close(dense[rows, col.long()], values)


def test_sampled_matmul_is_the_product_at_the_pattern():
    crow, col, values, dense = reservoir_tensors(30, 0.2)
    a, b = torch.randn(30, 6, dtype=torch.float64), torch.randn(6, 30, dtype=torch.float64)
    expected = (a @ b)[csr_row_indices(crow), col.long()]
    torch.testing.assert_close(csr_sampled_matmul(crow, col, a, b), expected, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_linear_equals_naive_outputs_and_gradients(dtype):
    csr = pattern(63, 0.1)
    _, _, values, _ = reservoir_tensors(63, 0.1, dtype=dtype)
    values = values.clone().requires_grad_()
    x = torch.randn(5, 63, dtype=dtype, requires_grad=True)
    out = sparse_linear(x, values, *csr)
    dense = csr_to_dense(csr.crow, csr.col, values, 63)
    ref = naive_linear(x, dense)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, values), grad)
    want = torch.autograd.grad(ref, (x, values), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[dtype])


def test_sparse_linear_gradcheck():
    csr = pattern(17, 0.3)
    values = torch.randn(csr.col.numel(), dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v: sparse_linear(x, v, *csr), (x, values))


def test_opcheck():
    csr = pattern(23, 0.2)
    values = torch.randn(csr.col.numel(), dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 23, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(sparse_linear, (x, values, *csr))
    torch.library.opcheck(csr_matmul, (csr.crow, csr.col, values.detach(), x.detach().t().contiguous()))
    torch.library.opcheck(csr_sampled_matmul, (csr.crow, csr.col, torch.randn(23, 4, dtype=torch.float64), x.detach()))
    torch.library.opcheck(
        csr_matmul_t, (csr.crow, csr.col, values.detach(), torch.randn(23, 3, dtype=torch.float64), 23)
    )


def test_csr_matmul_t_equals_the_transposed_dense_product():
    crow, col, values, dense = reservoir_tensors(29, 0.2)
    x = torch.randn(29, 4, dtype=torch.float64)
    torch.testing.assert_close(csr_matmul_t(crow, col, values, x, 29), dense.T @ x, **TOL[torch.float64])


@pytest.mark.parametrize("op", ["csr_matmul", "csr_matmul_t", "csr_sampled_matmul", "sparse_linear"])
def test_every_product_is_twice_differentiable(op):
    """Gradient penalties and Hessian-vector products need the backward itself to be differentiable."""
    csr = pattern(11, 0.3)
    values = torch.randn(csr.col.numel(), dtype=torch.float64, requires_grad=True)
    x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    functions = {
        "csr_matmul": lambda v, x: csr_matmul(csr.crow, csr.col, v, x),
        "csr_matmul_t": lambda v, x: csr_matmul_t(csr.crow, csr.col, v, x, 11),
        "csr_sampled_matmul": lambda v, x: csr_sampled_matmul(csr.crow, csr.col, x * v.sum(), x.t()),
        "sparse_linear": lambda v, x: sparse_linear(x.t().contiguous(), v, *csr),
    }
    assert torch.autograd.gradgradcheck(functions[op], (values, x))


@cuda
def test_cuda_matches_cpu():
    csr = pattern(300, 0.02)
    values = torch.randn(csr.col.numel(), dtype=torch.float32, requires_grad=True)
    x = torch.randn(8, 300, requires_grad=True)
    out = sparse_linear(x, values, *csr)
    grads = torch.autograd.grad(out.square().sum(), (x, values))
    dev = [t.detach().cuda().requires_grad_(t.requires_grad) for t in (x, values)]
    out_cuda = sparse_linear(dev[0], dev[1], *(t.cuda() for t in csr))
    grads_cuda = torch.autograd.grad(out_cuda.square().sum(), dev)
    torch.testing.assert_close(out_cuda.cpu(), out, rtol=1e-4, atol=1e-4)
    for g, h in zip(grads, grads_cuda, strict=True):
        torch.testing.assert_close(h.cpu(), g, rtol=1e-4, atol=1e-4)
