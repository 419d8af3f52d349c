"""A fixed CSR pattern held by a module as plain buffers: the reservoir's and the sparse gate's.

torch.compile cannot trace sparse layouts, so a pattern lives as dense int buffers (``crow_indices``,
``col_indices``) plus the ones each path derives from it (the transpose for the sparse path's
backward, the row of every entry for the dense path's scatter), rebuilt after every device move.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .ops import CSR, Path, csr_row_indices, csr_transpose

_DERIVED = ("crow_indices_t", "col_indices_t", "perm_t", "row_indices")


class FixedBuffers(nn.Module):
    """A module all of whose buffers are fixed and identical on every rank by construction (a
    reservoir and what derives from it), and says so to DistributedDataParallel, which would
    otherwise broadcast them on every forward. See esgp_sparse.distributed.ignore_fixed_buffers for a
    model that holds such a module, and for the check that the ranks' buffers agree."""

    _ddp_also_ignored: set[str] = set()

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:  # read by DistributedDataParallel
        return sorted({name for name, _ in self.named_buffers()} | self._ddp_also_ignored)

    @_ddp_params_and_buffers_to_ignore.setter
    def _ddp_params_and_buffers_to_ignore(self, names: list[str]) -> None:
        # DistributedDataParallel._set_params_and_buffers_to_ignore_for_model assigns: keep ours too.
        self._ddp_also_ignored = set(names)


class PatternModule(nn.Module):
    """Base of the modules that own a fixed CSR pattern (H x H).

    Attributes:
        crow_indices: (H + 1,) int32 (int64 when nnz >= 2^31), persistent.
        col_indices: (nnz,) same dtype, persistent.
        crow_indices_t, col_indices_t, perm_t: the transpose (sparse path), non-persistent.
        row_indices: (nnz,) int64, the row of every entry (dense path), non-persistent.
    """

    crow_indices: Tensor
    col_indices: Tensor
    crow_indices_t: Tensor | None
    col_indices_t: Tensor | None
    perm_t: Tensor | None
    row_indices: Tensor | None

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    def register_pattern(
        self, crow: np.ndarray | Tensor, col: np.ndarray | Tensor, device: torch.device | str | None
    ) -> None:
        """Store the pattern as the persistent buffers ``crow_indices`` and ``col_indices``."""
        self.register_buffer("crow_indices", torch.as_tensor(crow, device=device))
        self.register_buffer("col_indices", torch.as_tensor(col, device=device))

    def derive_pattern(self, path: Path) -> None:
        """(Re)build the non-persistent buffers that ``path`` needs from the stored pattern.

        ``"sparse"``: the transpose (``crow_indices_t``, ``col_indices_t``, ``perm_t``) for backward
        products; ``"dense"``: the row of every entry (``row_indices``), to scatter values densely.
        """
        crow, col = self.crow_indices, self.col_indices
        derived: dict[str, Tensor | None]
        if path == "sparse":
            derived = dict(zip(_DERIVED, (*csr_transpose(crow, col, crow.numel() - 1), None), strict=True))
        else:
            derived = dict.fromkeys(_DERIVED[:3]) | {"row_indices": csr_row_indices(crow, col.numel())}
        for name, tensor in derived.items():
            self.register_buffer(name, tensor, persistent=False)

    def pattern_csr(self) -> CSR:
        """The pattern and its transpose as ``esgp_sparse.ops`` takes them (after ``derive_pattern("sparse")``)."""
        if self.crow_indices_t is None or self.col_indices_t is None or self.perm_t is None:
            raise RuntimeError(f"{type(self).__name__}: the sparse path's transpose was not derived")
        return CSR(self.crow_indices, self.col_indices, self.crow_indices_t, self.col_indices_t, self.perm_t)

    def resize_to_state(self, state_dict: dict[str, Any], prefix: str, names: tuple[str, ...]) -> None:
        """Reshape the tensors ``names`` to the incoming ones, so that ``load_state_dict`` takes a pattern
        of another nnz: two draws with the same settings differ in nnz."""
        for name in names:
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(incoming, Tensor) and incoming.shape != current.shape:
                current.data = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
