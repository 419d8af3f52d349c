"""The gates that scale: a learned per-unit (diagonal) gate and a learned sparse gate.

The published model's gate is ``nn.Linear(hidden_size, hidden_size)`` (``gate="dense"``); it needs
H^2 weights, 4 TB at a million units. These two keep ``g = sigmoid(W_g h~ + b_g)`` with a ``W_g``
that grows with H (diagonal) or with nnz (sparse).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .ops import CSR, csr_row_indices, csr_transpose

_DERIVED = ("crow_indices_t", "col_indices_t", "perm_t", "row_indices")


def register_pattern(module: nn.Module, crow: np.ndarray | Tensor, col: np.ndarray | Tensor, device: torch.device | None) -> None:
    """Store a CSR pattern on ``module`` as persistent int buffers ``crow_indices``, ``col_indices``."""
    module.register_buffer("crow_indices", torch.as_tensor(crow, device=device))
    module.register_buffer("col_indices", torch.as_tensor(col, device=device))


def derive_pattern(module: nn.Module, path: str) -> None:
    """(Re)build the non-persistent buffers that ``path`` needs from ``module``'s stored pattern.

    ``"sparse"``: the transpose (``crow_indices_t``, ``col_indices_t``, ``perm_t``) for backward
    products; ``"dense"``: the row of every entry (``row_indices``), to scatter values densely.
    """
    crow, col = module.crow_indices, module.col_indices
    if path == "sparse":
        derived = dict(zip(_DERIVED, (*csr_transpose(crow, col, crow.numel() - 1), None)))
    else:
        derived = dict.fromkeys(_DERIVED[:3]) | {"row_indices": csr_row_indices(crow, col.numel())}
    for name, tensor in derived.items():
        module.register_buffer(name, tensor, persistent=False)


def pattern_csr(module: nn.Module) -> CSR:
    return CSR(module.crow_indices, module.col_indices, module.crow_indices_t, module.col_indices_t, module.perm_t)


def resize_to_state(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Reshape ``module``'s tensors ``names`` to the incoming ones, so that ``load_state_dict`` takes a
    reservoir (or sparse gate) of another nnz: two draws with the same settings differ in nnz."""
    for name in names:
        incoming = state_dict.get(prefix + name)
        current = getattr(module, name)
        if isinstance(incoming, Tensor) and incoming.shape != current.shape:
            current.data = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)


class DiagonalGate(nn.Module):
    """``g = sigmoid(weight * h~ + bias)``: one learned weight and bias per unit (2H parameters).

    Attributes:
        weight: (H,) learned, initialised U(-1, 1) as ``nn.Linear(1, 1)`` would be.
        bias: (H,) learned, U(-1, 1).
    """

    def __init__(self, hidden_size: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.weight, -1.0, 1.0)
        nn.init.uniform_(self.bias, -1.0, 1.0)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}"


class SparseGate(nn.Module):
    """``g = sigmoid(W_g h~ + bias)`` with ``W_g`` learned on a fixed random CSR pattern.

    Attributes:
        values: (nnz,) learned, U(-1/sqrt(k), 1/sqrt(k)) with k the mean entries per row (the fan-in,
            as nn.Linear scales its initialisation).
        bias: (H,) learned, same bound.
        crow_indices: (H + 1,) int32/int64 buffer; col_indices: (nnz,) buffer (the fixed pattern).
    """

    def __init__(self, hidden_size: int, crow: np.ndarray, col: np.ndarray, *, device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        register_pattern(self, crow, col, device)
        self.values = nn.Parameter(torch.empty(col.shape[0], device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(max(1.0, self.nnz / self.hidden_size))
        nn.init.uniform_(self.values, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> Tensor:
        """The gate matrix (H x H) as a torch sparse CSR tensor (shares ``values``)."""
        return torch.sparse_csr_tensor(
            self.crow_indices, self.col_indices, self.values, (self.hidden_size, self.hidden_size),
            check_invariants=False,  # valid by construction
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_to_state(self, state_dict, prefix, ("crow_indices", "col_indices", "values"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, nnz={self.nnz}"
