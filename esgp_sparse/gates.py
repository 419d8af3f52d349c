"""The gates that scale: a learned per-unit (diagonal) gate, a learned sparse gate and a learned
low-rank plus diagonal gate.

The published model's gate is ``nn.Linear(hidden_size, hidden_size)`` (``gate="dense"``); it needs
H^2 weights, 4 TB at a million units. These three keep ``g = sigmoid(W_g h~ + b_g)`` with a ``W_g``
that grows with H (diagonal, low-rank) or with nnz (sparse).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .ops import lowrank_matrix
from .pattern import PatternModule


class DiagonalGate(nn.Module):
    """``g = sigmoid(weight * h~ + bias)``: one learned weight and bias per unit (2H parameters).

    Attributes:
        weight: (H,) learned, initialised U(-1, 1) as ``nn.Linear(1, 1)`` would be.
        bias: (H,) learned, U(-1, 1).
    """

    def __init__(
        self, hidden_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
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


class SparseGate(PatternModule):
    """``g = sigmoid(W_g h~ + bias)`` with ``W_g`` learned on a fixed random CSR pattern.

    Attributes:
        weight_values: (nnz,) learned (``values`` in 0.1.0, whose state_dicts still load),
            U(-1/sqrt(k), 1/sqrt(k)) with k the mean entries per row (the fan-in,
            as nn.Linear scales its initialisation).
        bias: (H,) learned, same bound.
        crow_indices: (H + 1,) int32/int64 buffer; col_indices: (nnz,) buffer (the fixed pattern).
    """

    def __init__(
        self,
        hidden_size: int,
        crow: np.ndarray,
        col: np.ndarray,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.register_pattern(crow, col, device)
        self.weight_values = nn.Parameter(torch.empty(col.shape[0], device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(max(1.0, self.nnz / self.hidden_size))
        nn.init.uniform_(self.weight_values, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> Tensor:
        """The gate matrix (H x H) as a torch sparse CSR tensor (shares ``weight_values``)."""
        return torch.sparse_csr_tensor(
            self.crow_indices,
            self.col_indices,
            self.weight_values,
            (self.hidden_size, self.hidden_size),
            check_invariants=False,  # valid by construction
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        old = prefix + "values"  # the name in 0.1.0, which shadowed nothing here but clashed in parametrize
        if old in state_dict and prefix + "weight_values" not in state_dict:
            state_dict[prefix + "weight_values"] = state_dict.pop(old)
        self.resize_to_state(state_dict, prefix, ("crow_indices", "col_indices", "weight_values"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, nnz={self.nnz}"


class LowRankGate(nn.Module):
    """``g = sigmoid(U V^T h~ + d * h~ + bias)``: a rank-``r`` matrix plus a diagonal, learned
    (H (2r + 2) parameters). Unlike the diagonal gate, every unit's gate reads every unit's candidate
    (through r shared directions), as the published dense gate does.

    The factors live in one parameter, so that the sequence layer takes the gate as one tensor:
    ``weight[:, :r]`` is U, ``weight[:, r:2r]`` is V and ``weight[:, 2r]`` is d, and
    ``W_g = U V^T + diag(d)`` (:meth:`matrix`). A parametrization of ``weight`` (``weight_norm``,
    ``spectral_norm``) therefore acts on that packed (H, 2r + 1) tensor, not on ``W_g``. Below 33
    units at the default rank (16, or H) it has more parameters than the dense gate.

    Attributes:
        weight: (H, 2r + 1) learned. V is drawn U(-1/sqrt(H), 1/sqrt(H)) (nn.Linear(H, r)'s
            bound), U U(-1/sqrt(r), 1/sqrt(r)) (nn.Linear(r, H)'s) and d U(-1, 1) (the diagonal
            gate's).
        bias: (H,) learned, U(-1/sqrt(H), 1/sqrt(H)) (nn.Linear(H, H)'s).
    """

    def __init__(
        self,
        hidden_size: int,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size, self.rank = hidden_size, rank
        self.weight = nn.Parameter(torch.empty(hidden_size, 2 * rank + 1, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r, h = self.rank, self.hidden_size
        with torch.no_grad():
            nn.init.uniform_(self.weight[:, :r], -1.0 / math.sqrt(r), 1.0 / math.sqrt(r))
            nn.init.uniform_(self.weight[:, r : 2 * r], -1.0 / math.sqrt(h), 1.0 / math.sqrt(h))
            nn.init.uniform_(self.weight[:, 2 * r], -1.0, 1.0)
        nn.init.uniform_(self.bias, -1.0 / math.sqrt(h), 1.0 / math.sqrt(h))

    def matrix(self) -> Tensor:
        """``W_g = U V^T + diag(d)`` as a dense (H, H) tensor (differentiable; for small H)."""
        return lowrank_matrix(self.weight)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, rank={self.rank}"
