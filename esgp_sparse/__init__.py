"""esgp_sparse: Echo State Gated Population networks, sparse-first, for PyTorch.

    from esgp_sparse import ESGP, ESGPCell

A drop-in for the original ``esgp`` package (PyPI 0.1.0) whose reservoir is a CSR matrix scaled to
the spectral radius it promises, with a sequence-level backward and torch.compile support.
"""

from .cell import ESGPCell
from .esgp import ESGP

__version__ = "0.2.0"

__all__ = ["ESGP", "ESGPCell"]
