"""Kernels: the recurrent and gate products (dense, sparse custom ops), the ESGP step and layer, and
their plain references. Only torch is imported here."""

from .cell import esgp_cell
from .naive import lowrank_matrix, naive_cell, naive_layer, naive_linear
from .path import PATHS, Path, PathRequest, choose_path
from .sequence import GATES, GateKind, LayerSpec, esgp_layer, split_lowrank
from .sparse import (
    CSR,
    csr_matmul,
    csr_matmul_t,
    csr_row_indices,
    csr_sampled_matmul,
    csr_to_dense,
    csr_transpose,
    make_csr,
    sparse_linear,
)

__all__ = [
    "CSR",
    "GATES",
    "GateKind",
    "LayerSpec",
    "PATHS",
    "Path",
    "PathRequest",
    "choose_path",
    "csr_matmul",
    "csr_matmul_t",
    "csr_row_indices",
    "csr_sampled_matmul",
    "csr_to_dense",
    "csr_transpose",
    "esgp_cell",
    "esgp_layer",
    "lowrank_matrix",
    "make_csr",
    "naive_cell",
    "naive_layer",
    "naive_linear",
    "sparse_linear",
    "split_lowrank",
]
