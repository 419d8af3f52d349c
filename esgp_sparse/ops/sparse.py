"""Sparse products on CSR arrays held as plain dense tensors, as ``torch.library`` custom ops.

torch.compile cannot trace sparse tensor layouts, so the CSR pieces (``crow``, ``col``,
``values``) travel as ordinary tensors and each op builds its ``torch.sparse_csr_tensor`` view
inside, where the compiler does not look. Every op has a fake (meta) implementation for tracing;
:func:`sparse_linear` also has its autograd formula. The backward of ``W @ x`` needs ``W.T @ g``:
a CSR copy of the transpose (built once by :func:`csr_transpose`) runs as fast as the forward,
while ``torch.sparse`` on the transposed (CSC) view ran 8-30x slower on CPU
(H=1024-4096, B=32, torch 2.13).

Reference twins: :func:`esgp_sparse.ops.naive.naive_linear` for all of them.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor

# The CSR view is built inside the ops on every call; torch warns once per process that CSR is a
# beta feature, which tells our users nothing they can act on.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


class CSR(NamedTuple):
    """A fixed sparsity pattern (n_rows x n_cols) and its transpose, as plain index tensors.

    The values live apart (they may be a learned Parameter); the transpose's values are
    ``values[perm_t]``.

    Attributes:
        crow: (n_rows + 1,) int32 or int64.
        col: (nnz,) same dtype.
        crow_t: (n_cols + 1,) the transpose's row pointers.
        col_t: (nnz,) the transpose's column indices.
        perm_t: (nnz,) int64 positions of the transpose's entries in ``values``.
    """

    crow: Tensor
    col: Tensor
    crow_t: Tensor
    col_t: Tensor
    perm_t: Tensor


def csr_row_indices(crow: Tensor, nnz: int | None = None) -> Tensor:
    """The row index of every stored entry (int64, length nnz)."""
    n_rows = crow.numel() - 1
    counts = crow[1:] - crow[:-1]
    rows = torch.arange(n_rows, device=crow.device)
    return torch.repeat_interleave(rows, counts.long(), output_size=nnz)


def csr_transpose(crow: Tensor, col: Tensor, n_cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR pattern of the transpose: ``(crow_t, col_t, perm_t)`` in O(nnz log nnz).

    ``perm_t`` maps the transpose's entries to the original's: ``values_t = values[perm_t]``.
    """
    nnz = col.numel()
    rows = csr_row_indices(crow, nnz)
    # A stable sort by column keeps the rows ascending within each column: valid CSR order.
    perm_t = torch.sort(col.long(), stable=True).indices
    col_t = rows[perm_t].to(col.dtype)
    counts = torch.bincount(col.long(), minlength=n_cols)
    crow_t = torch.zeros(n_cols + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(counts, 0, out=crow_t[1:])
    return crow_t, col_t, perm_t


def make_csr(crow: Tensor, col: Tensor, n_cols: int) -> CSR:
    """Pattern plus transpose, ready for :func:`sparse_linear`."""
    return CSR(crow, col, *csr_transpose(crow, col, n_cols))


def csr_to_dense(crow: Tensor, col: Tensor, values: Tensor, n_cols: int, rows: Tensor | None = None) -> Tensor:
    """The dense ``(n_rows, n_cols)`` matrix; differentiable with respect to ``values``."""
    if rows is None:
        rows = csr_row_indices(crow, col.numel())
    dense = values.new_zeros((crow.numel() - 1, n_cols))
    return dense.index_put((rows, col.long()), values)


def _csr(crow: Tensor, col: Tensor, values: Tensor, n_cols: int) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, values, (crow.numel() - 1, n_cols), check_invariants=False)


#: torch 2.13's CSR kernels (CPU: ``addmm_out_sparse_csr_impl_mkl``, ``sampled_addmm``) have no
#: bfloat16 or float16. For those dtypes the sparse products run in float32, as dense bf16/fp16
#: GEMMs accumulate in float32, and return the caller's dtype: one rounding per product.
_ACCUMULATE = {torch.bfloat16: torch.float32, torch.float16: torch.float32}


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return _ACCUMULATE.get(dtype, dtype)


@torch.library.custom_op("esgp_sparse::csr_matmul", mutates_args=())
def csr_matmul(crow: Tensor, col: Tensor, values: Tensor, x: Tensor) -> Tensor:
    """``W @ x`` for the CSR matrix ``W`` (n_rows x n_cols) and a dense ``x`` (n_cols, N).

    Differentiable in ``values`` and ``x`` to any order (see below); :func:`sparse_linear` is the
    fast differentiable product, with a CSR copy of the transpose for its backward. In bfloat16 and
    float16 the product is computed in float32 and rounded once to ``x.dtype``.
    """
    compute = _accumulation_dtype(x.dtype)
    if compute != x.dtype:
        return (_csr(crow, col, values.to(compute), x.shape[0]) @ x.to(compute)).to(x.dtype)
    return _csr(crow, col, values, x.shape[0]) @ x


@csr_matmul.register_fake
def _(crow: Tensor, col: Tensor, values: Tensor, x: Tensor) -> Tensor:
    return x.new_empty((crow.shape[0] - 1, x.shape[1]))


@torch.library.custom_op("esgp_sparse::csr_matmul_add_", mutates_args=("acc",))
def csr_matmul_add_(acc: Tensor, crow: Tensor, col: Tensor, values: Tensor, x: Tensor) -> None:
    """``acc += W @ x`` in place: :func:`csr_matmul` without a fresh (n_rows, N) result, for the
    sequence layer's hand-written kernels (no autograd). On Linux with glibc a fresh result of 32 MiB
    or more is a new ``mmap``, faulted in page by page on every call
    (``benchmarks/results/step_allocation_65536.txt``). In bfloat16 and float16 the product is
    :func:`csr_matmul`'s (in float32, with its temporaries), then added."""
    if _accumulation_dtype(x.dtype) != x.dtype:
        acc.add_(csr_matmul(crow, col, values, x))
    else:
        acc.addmm_(_csr(crow, col, values, x.shape[0]), x)


@csr_matmul_add_.register_fake
def _(acc: Tensor, crow: Tensor, col: Tensor, values: Tensor, x: Tensor) -> None:
    return None


@torch.library.custom_op("esgp_sparse::csr_sampled_matmul", mutates_args=())
def csr_sampled_matmul(crow: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``(a @ b)`` at the stored positions of the pattern, in CSR order: shape (nnz,).

    This is the gradient of ``W @ x`` with respect to W's values: ``a = grad (n_rows, N)``,
    ``b = x.T (N, n_cols)``; ``torch.sparse.sampled_addmm`` computes only the nnz dot products.
    """
    compute = _accumulation_dtype(a.dtype)
    pattern = _csr(crow, col, a.new_zeros(col.shape[0], dtype=compute), b.shape[1])
    return torch.sparse.sampled_addmm(pattern, a.to(compute), b.to(compute), beta=0.0).values().to(a.dtype)


@csr_sampled_matmul.register_fake
def _(crow: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(col.shape)


@torch.library.custom_op("esgp_sparse::csr_matmul_t", mutates_args=())
def csr_matmul_t(crow: Tensor, col: Tensor, values: Tensor, x: Tensor, n_cols: int) -> Tensor:
    """``W.T @ x`` for the CSR matrix ``W`` (n_rows x n_cols) and a dense ``x`` (n_rows, N), through
    the transposed (CSC) view: slower than a CSR copy of the transpose (:func:`csr_transpose`), so it
    serves only the second derivatives, where no such copy is at hand.
    """
    compute = _accumulation_dtype(x.dtype)
    return (_csr(crow, col, values.to(compute), n_cols).t() @ x.to(compute)).to(x.dtype)


@csr_matmul_t.register_fake
def _(crow: Tensor, col: Tensor, values: Tensor, x: Tensor, n_cols: int) -> Tensor:
    return x.new_empty((n_cols, x.shape[1]))


# Autograd of the three products, in terms of one another, so that every derivative is itself
# differentiable (gradient penalties, Hessian-vector products): with W the CSR matrix of `values`,
#   W @ x:           d values = (g @ x.T)[pattern],   d x = W.T @ g
#   W.T @ x:         d values = (x @ g.T)[pattern],   d x = W @ g
#   (a @ b)[pattern]: d a = G @ b.T,  d b = (G.T @ a).T,  G the CSR matrix of the incoming gradient.
def _save_all(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(*(t for t in inputs if isinstance(t, Tensor)))


def _csr_matmul_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    crow, col, values, x = ctx.saved_tensors
    grad_values = csr_sampled_matmul(crow, col, grad, x.t()) if ctx.needs_input_grad[2] else None
    grad_x = csr_matmul_t(crow, col, values, grad, x.shape[0]) if ctx.needs_input_grad[3] else None
    return None, None, grad_values, grad_x


def _csr_matmul_t_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    crow, col, values, x = ctx.saved_tensors
    grad_values = csr_sampled_matmul(crow, col, x, grad.t()) if ctx.needs_input_grad[2] else None
    grad_x = csr_matmul(crow, col, values, grad) if ctx.needs_input_grad[3] else None
    return None, None, grad_values, grad_x, None


def _csr_sampled_matmul_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    crow, col, a, b = ctx.saved_tensors
    grad_a = csr_matmul(crow, col, grad, b.t()) if ctx.needs_input_grad[2] else None
    grad_b = csr_matmul_t(crow, col, grad, a, b.shape[1]).t() if ctx.needs_input_grad[3] else None
    return None, None, grad_a, grad_b


csr_matmul.register_autograd(_csr_matmul_backward, setup_context=_save_all)
csr_matmul_t.register_autograd(_csr_matmul_t_backward, setup_context=_save_all)
csr_sampled_matmul.register_autograd(_csr_sampled_matmul_backward, setup_context=_save_all)


@torch.library.custom_op("esgp_sparse::sparse_linear", mutates_args=())
def sparse_linear(
    x: Tensor, values: Tensor, crow: Tensor, col: Tensor, crow_t: Tensor, col_t: Tensor, perm_t: Tensor
) -> Tensor:
    """``x @ W.T`` (like ``F.linear(x, W)``) for ``x`` (B, n_cols) and CSR ``W`` (n_rows x n_cols).

    Differentiable in ``x`` and ``values``. Equals :func:`esgp_sparse.ops.naive.naive_linear`.
    """
    return csr_matmul(crow, col, values, x.t().contiguous()).t().contiguous()


@sparse_linear.register_fake
def _(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, crow_t: Tensor, col_t: Tensor, perm_t: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], crow.shape[0] - 1))


def _sparse_linear_setup(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    x, values, crow, col, crow_t, col_t, perm_t = inputs
    ctx.save_for_backward(x, values, crow, col, crow_t, col_t, perm_t)


def _sparse_linear_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, values, crow, col, crow_t, col_t, perm_t = ctx.saved_tensors
    grad_x = grad_values = None
    grad_cols = grad.t().contiguous()  # (n_rows, B)
    if ctx.needs_input_grad[0]:
        grad_x = csr_matmul(crow_t, col_t, values[perm_t], grad_cols).t()
    if ctx.needs_input_grad[1]:
        grad_values = csr_sampled_matmul(crow, col, grad_cols, x)
    return grad_x, grad_values, None, None, None, None, None


sparse_linear.register_autograd(_sparse_linear_backward, setup_context=_sparse_linear_setup)


def sparse_linear_csr(x: Tensor, values: Tensor, csr: CSR) -> Tensor:
    """:func:`sparse_linear` with the pattern given as a :class:`CSR`."""
    return sparse_linear(x, values, *csr)
