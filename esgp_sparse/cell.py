"""ESGPCell: one Echo State Gated Population step with a fixed sparse reservoir and a learned gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from . import _checks
from .gates import DiagonalGate, LowRankGate, SparseGate
from .init import (
    RADIUS_METHODS,
    RadiusMethod,
    Reservoir,
    check_connections,
    drawn_rows,
    random_reservoir,
    reservoir_from_matrix,
)
from .ops import (
    CSR,
    GATES,
    PATHS,
    GateKind,
    LayerSpec,
    Path,
    PathRequest,
    choose_path,
    csr_to_dense,
    esgp_cell,
    esgp_layer,
)
from .pattern import FixedBuffers, PatternModule

GateType = Literal["dense", "diagonal", "sparse", "lowrank"]

_OWNER = "ESGPCell"
_SCALABLE_GATES = "use gate='sparse', gate='diagonal' or gate='lowrank', which scale with nnz and H"


class ESGPCell(FixedBuffers, PatternModule):
    r"""One step of an Echo State Gated Population network.

    .. math::
        \tilde h_t = \tanh(W_{in} x_t + W h_{t-1}) \qquad
        g_t = \sigma(W_g \tilde h_t + b_g) \qquad
        h_t = g_t \odot \tilde h_t + (1 - g_t) \odot h_{t-1}

    ``W`` is fixed (a buffer, never trained), random and sparse: each of the H^2 connections is present
    with probability ``sparsity`` and drawn from N(0, 1), and the matrix is then scaled so that the
    spectral radius of **the matrix actually used** equals ``spectral_radius``: measured on the
    sparse matrix (dense eigenvalues, ARPACK, or a checked power iteration at large H), then measured
    again on the stored, scaled matrix, which :attr:`radius` reports with its error estimate (the
    original package measured before masking, which left its real radius near
    ``spectral_radius * sqrt(sparsity)``). ``W_in`` and the gate are learned.

    Args:
        input_size: I, features of ``x``.
        hidden_size: H, units of the reservoir.
        sparsity: the fraction of recurrent connections that are **present**, in (0, 1] (the original
            package's meaning: ``sparsity=0.1`` keeps 10 %). ``sparsity * hidden_size`` must be >= 1.
        spectral_radius: the spectral radius W is scaled to, >= 0.
        gate: ``"dense"`` (the published model: ``nn.Linear(H, H)``), ``"sparse"`` (learned values on a
            fixed random pattern of density ``sparsity``), ``"diagonal"`` (a learned weight and bias
            per unit) or ``"lowrank"`` (``W_g = U V^T + diag(d)``, rank ``gate_rank``:
            :class:`~esgp_sparse.gates.LowRankGate`).
        gate_rank: the low-rank gate's rank r, in [1, H] (default 16, or H if smaller); only with
            ``gate="lowrank"``.
        path: ``"dense"`` (W as an H x H matrix, GEMM), ``"sparse"`` (CSR product) or ``"auto"``
            (chosen from H, nnz and the device at the crossover measured by
            ``benchmarks/test_recurrent_product.py``; re-chosen after a device move). Applies to the
            sparse gate too. An explicit path is never overridden.
        seed: seed of the reservoir and of the sparse gate's pattern. ``None`` draws one from torch's
            global generator, so ``torch.manual_seed`` fixes it as well. The learned parameters are
            initialised from torch's generator as in ``torch.nn``.
        radius_method: how the radius is measured: ``"auto"``, ``"dense"``, ``"arpack"`` or ``"power"``
            (see :func:`esgp_sparse.init.measure_radius`).
        input_scaling: ``Win``'s initialisation (``nn.Linear``'s uniform one) multiplied by this, > 0;
            ReservoirPy's name. Small values keep ``tanh`` near its linear range, where a reservoir
            remembers its input longest.
        gate_bias_init: every unit's initial gate bias (the gate's weights keep their
            initialisation); None keeps ``nn.Linear``'s uniform one (the original's). A large value
            starts the gate open (``g`` near 1: the cell starts as an echo state network, with its
            memory), a negative one closed. README "Gates and sizes" measures both knobs.
        reservoir: use this reservoir (an :class:`esgp_sparse.init.Reservoir`, e.g. from
            :func:`esgp_sparse.init.reservoir_from_matrix`) as-is instead of drawing one; ``sparsity``
            and ``spectral_radius`` then only describe what was asked for.
        device, dtype: as in ``torch.nn``.

    Shape:
        x: (B, I), or (I,) unbatched
        h: (B, H), or (H,) unbatched; zeros if None
        output: (B, H), or (H,) unbatched

    Attributes:
        Win: ``nn.Linear(I, H, bias=False)``, the learned input weight (H, I).
        gate: ``nn.Linear(H, H)`` (dense), :class:`~esgp_sparse.gates.SparseGate`,
            :class:`~esgp_sparse.gates.DiagonalGate` or :class:`~esgp_sparse.gates.LowRankGate`.
        crow_indices: (H + 1,) int32 (int64 when nnz >= 2^31) buffer of the reservoir's CSR rows.
        col_indices: (nnz,) same dtype, the reservoir's columns.
        values: (nnz,) floating buffer, the reservoir's values.
        path: the path in use, ``"dense"`` or ``"sparse"``.
        radius: the spectral radius of the reservoir in use, measured on the stored matrix (its
            float64 values, before the cast to the module's dtype: float32 rounds each entry by
            about 6e-8 relative, bfloat16 by about 4e-3).
        radius_error: its relative error estimate (:class:`esgp_sparse.init.RadiusEstimate`; NaN
            for a state_dict saved by 0.1.0).
        radius_measured_with: the method that measured it (``"dense"``, ``"arpack"``, ``"power"``,
            ``"power+ritz"``, ...).
        seed: the seed the reservoir (unless given) and the sparse gate's pattern were drawn from.

    Raises:
        TypeError, ValueError: for a bad argument, naming it, its value and what is allowed; also
            for a dense gate (or dense path) larger than the device's memory, and for a reservoir
            with under one connection per unit (nearly nilpotent: nothing to scale).

    Example::

        >>> cell = ESGPCell(10, 200, sparsity=0.05, seed=0)
        >>> h = cell(torch.randn(3, 10))
        >>> h.shape
        torch.Size([3, 200])
    """

    values: Tensor
    dense_weight: Tensor | None
    gate: nn.Linear | DiagonalGate | SparseGate | LowRankGate
    path: Path

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        sparsity: float = 0.1,
        spectral_radius: float = 0.9,
        *,
        gate: GateType = "dense",
        gate_rank: int | None = None,
        path: PathRequest = "auto",
        seed: int | None = None,
        radius_method: RadiusMethod = "auto",
        reservoir: Reservoir | None = None,
        input_scaling: float = 1.0,
        gate_bias_init: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_size = _checks.check_int(_OWNER, "input_size", input_size, 1)
        self.input_scaling, self.gate_bias_init = _checks.check_initialisation(_OWNER, input_scaling, gate_bias_init)
        self.hidden_size = _checks.check_int(_OWNER, "hidden_size", hidden_size, 1)
        self.sparsity = _checks.check_real(_OWNER, "sparsity", sparsity, 0.0, 1.0, low_open=True)
        self.spectral_radius = _checks.check_real(_OWNER, "spectral_radius", spectral_radius, 0.0)
        self.gate_type = _checks.check_choice(_OWNER, "gate", gate, GATES)
        self.gate_rank = _checks.check_gate_rank(_OWNER, gate, gate_rank, self.hidden_size)
        self.path_request = _checks.check_choice(_OWNER, "path", path, PATHS)
        self.radius_method = _checks.check_choice(_OWNER, "radius_method", radius_method, RADIUS_METHODS)
        dtype = _checks.check_dtype(_OWNER, dtype)
        device = torch.device(device) if device is not None else torch.empty(0).device
        if gate == "dense":
            _checks.check_dense_fits(_OWNER, "gate", self.hidden_size, dtype, device, _SCALABLE_GATES)
        if path == "dense":
            _checks.check_dense_fits(
                _OWNER, "reservoir (path='dense')", self.hidden_size, dtype, device, "use path='sparse'"
            )

        seed = _checks.check_seed(_OWNER, seed)
        self.seed = _checks.draw_seed() if seed is None else seed
        self.seeded_reservoir = reservoir is None
        # On the meta device nothing is drawn or measured: to_empty() then reset_reservoir() does it.
        self.drawn = device.type != "meta" or reservoir is not None
        if reservoir is None:
            check_connections(self.hidden_size, self.sparsity, _OWNER)
            reservoir = self._draw_reservoir() if self.drawn else _undrawn(self.hidden_size)
        else:
            if not isinstance(reservoir, Reservoir):
                raise TypeError(
                    f"{_OWNER}: expected reservoir to be an esgp_sparse.init.Reservoir, got {type(reservoir).__name__}"
                )
            if reservoir.size != self.hidden_size:
                raise ValueError(
                    f"{_OWNER}: expected a reservoir of size hidden_size={self.hidden_size}, got size {reservoir.size}"
                )
        self._take_radius(reservoir)
        self.register_pattern(reservoir.crow_indices, reservoir.col_indices, device)
        self.register_buffer("values", torch.as_tensor(reservoir.values, device=device).to(dtype))

        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.Win = nn.Linear(self.input_size, self.hidden_size, bias=False, **factory)
        if gate == "dense":
            self.gate = nn.Linear(self.hidden_size, self.hidden_size, **factory)
        elif gate == "diagonal":
            self.gate = DiagonalGate(self.hidden_size, **factory)
        elif gate == "lowrank":
            self.gate = LowRankGate(self.hidden_size, cast(int, self.gate_rank), **factory)
        else:
            undrawn = _undrawn(self.hidden_size)
            crow, col = self._draw_gate_pattern() if self.drawn else (undrawn.crow_indices, undrawn.col_indices)
            self.gate = SparseGate(self.hidden_size, crow, col, **factory)
        self._initialise_knobs()
        self._use_path()
        self.register_load_state_dict_post_hook(_use_path_after_load)

    def _draw_reservoir(self) -> Reservoir:
        return random_reservoir(
            self.hidden_size,
            self.sparsity,
            self.spectral_radius,
            self.seed,
            key=(0,),
            radius_method=self.radius_method,
            threads=torch.get_num_threads(),  # as many as torch's own kernels use
        )

    def _draw_gate_pattern(self) -> tuple[np.ndarray, np.ndarray]:
        crow, col, _ = drawn_rows(self.hidden_size, self.sparsity, self.seed, (1,))
        return crow, col

    def reset_reservoir(self) -> None:
        """Draw the reservoir (and the sparse gate's pattern) from :attr:`seed` on the module's device,
        and measure its radius: exactly what building the module there with the same seed gives.

        For deferred initialisation: build on ``device="meta"`` (nothing is drawn or measured, at any
        size), then ``module.to_empty(device=...)``, ``module.reset_reservoir()`` and
        ``module.reset_parameters()`` (``to_empty`` leaves the learned parameters uninitialised). The
        sparse gate's values are created anew (and initialised) where the drawn pattern's nnz differs
        from theirs: build optimizers after this call.

        Raises:
            ValueError: on the meta device (nothing to draw into), or for a reservoir given as-is.
        """
        device = self.values.device
        if device.type == "meta":
            raise ValueError(
                f"{_OWNER}.reset_reservoir: the module is on the meta device; call to_empty(device=...) first"
            )
        if not self.seeded_reservoir:
            raise ValueError(
                f"{_OWNER}.reset_reservoir: the reservoir was given as-is (reservoir=...), not drawn from a seed"
            )
        reservoir = self._draw_reservoir()
        self._take_radius(reservoir)
        self.register_pattern(reservoir.crow_indices, reservoir.col_indices, device)
        self.register_buffer("values", torch.as_tensor(reservoir.values, device=device).to(self.values.dtype))
        if isinstance(self.gate, SparseGate):
            crow, col = self._draw_gate_pattern()
            self.gate.register_pattern(crow, col, device)
            if self.gate.weight_values.numel() != col.shape[0]:
                like = self.gate.weight_values
                self.gate.weight_values = nn.Parameter(like.new_empty(col.shape[0]), like.requires_grad)
                self.gate.reset_parameters()
                self._initialise_gate_bias()
        self.drawn = True
        self._use_path()

    def _take_radius(self, reservoir: Reservoir) -> None:
        self.radius = float(reservoir.radius)
        self.radius_error = float(reservoir.radius_error)
        self.radius_measured_with = reservoir.radius_method

    # ------------------------------------------------------------------ conversion from the original
    @classmethod
    def from_esgp(cls, cell: Any, **kwargs: Any) -> ESGPCell:
        """Convert an original ``esgp.ESGPCell`` (PyPI ``esgp`` 0.1.0) into an ``ESGPCell``.

        Its masked matrix ``W * mask`` is taken as-is (no renormalisation; :attr:`radius` reports
        what it really is), and its learned ``Win`` and ``gate`` are copied, so outputs and gradients
        match the original's. ``kwargs`` pass on (``path=``, ``device=``, ``dtype=``,
        ``radius_method=``, which measures the taken matrix); the gate is the original's dense one.
        """
        for name in ("W", "mask", "Win", "gate", "input_size", "hidden_size"):
            if not hasattr(cell, name):
                raise TypeError(
                    f"{_OWNER}.from_esgp: expected an esgp.ESGPCell (it has no {name!r}), got {type(cell).__name__}"
                )
        if kwargs.get("gate", "dense") != "dense":
            raise ValueError(f"{_OWNER}.from_esgp: the original's gate is dense, got gate={kwargs['gate']!r}")
        for name in ("seed", "reservoir"):
            if name in kwargs:
                raise TypeError(f"{_OWNER}.from_esgp: {name}= does not apply, the reservoir is the original's")
        for name in ("input_scaling", "gate_bias_init"):
            if name in kwargs:
                raise TypeError(f"{_OWNER}.from_esgp: {name}= does not apply, the learned weights are the original's")
        kwargs.setdefault("device", cell.Win.weight.device)
        kwargs.setdefault("dtype", cell.Win.weight.dtype)
        matrix = (cell.W * cell.mask).detach().cpu().double().numpy()
        new = cls(
            cell.input_size,
            cell.hidden_size,
            float(cell.sparsity),
            float(cell.spectral_radius),
            reservoir=reservoir_from_matrix(
                matrix, radius_method=kwargs.get("radius_method", "auto"), threads=torch.get_num_threads()
            ),
            **kwargs,
        )
        gate = cast(nn.Linear, new.gate)
        with torch.no_grad():
            new.Win.weight.copy_(cell.Win.weight)
            gate.weight.copy_(cell.gate.weight)
            gate.bias.copy_(cell.gate.bias)
        return new

    # ------------------------------------------------------------------ derived state
    def _use_path(self) -> None:
        """Choose the path (unless one was asked for) and rebuild the buffers that derive from it.

        Runs at construction, after every device or dtype move and after ``load_state_dict``.
        """
        device = self.values.device
        path: Path
        if not self.drawn:  # deferred (meta device): the path is known, nothing to derive from yet
            for name in ("crow_indices_t", "col_indices_t", "perm_t", "row_indices", "dense_weight"):
                self.register_buffer(name, None, persistent=False)
            if isinstance(self.gate, SparseGate):
                for name in ("crow_indices_t", "col_indices_t", "perm_t", "row_indices"):
                    self.gate.register_buffer(name, None, persistent=False)
            self.path = (
                choose_path(self.hidden_size, self.sparsity, device.type)
                if self.path_request == "auto"
                else self.path_request
            )
            return
        if self.path_request == "dense" or self.path_request == "sparse":
            path = self.path_request
        else:
            path = choose_path(self.hidden_size, self._density(), device.type)
            if path == "dense" and not _checks.dense_fits(self.hidden_size, self.values.dtype, device):
                path = "sparse"
        self.path = path
        if path == "sparse":
            self.derive_pattern("sparse")
            self.register_buffer("dense_weight", None, persistent=False)
        else:
            for name in ("crow_indices_t", "col_indices_t", "perm_t", "row_indices"):
                self.register_buffer(name, None, persistent=False)
            dense = csr_to_dense(self.crow_indices, self.col_indices, self.values, self.hidden_size)
            self.register_buffer("dense_weight", dense, persistent=False)
        if isinstance(self.gate, SparseGate):
            self.gate.derive_pattern(path)

    def _density(self) -> float:
        """The density the path is chosen from: the requested ``sparsity`` for a drawn reservoir (the
        same for every seed), the actual one for a reservoir given as-is."""
        return self.sparsity if self.seeded_reservoir else self.nnz / float(self.hidden_size) ** 2

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ESGPCell:
        super()._apply(fn, recurse)
        self._use_path()
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        self.resize_to_state(state_dict, prefix, ("crow_indices", "col_indices", "values"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "radius": self.radius,
            "radius_error": self.radius_error,
            "radius_measured_with": self.radius_measured_with,
            "seed": self.seed,
            "seeded_reservoir": self.seeded_reservoir,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.radius = float(state["radius"])
        # 0.1.0 stored the radius asked for, unmeasured: say so.
        self.radius_error = float(state.get("radius_error", float("nan")))
        self.radius_measured_with = str(state.get("radius_measured_with", "requested (0.1.0 state_dict)"))
        self.seed = state["seed"]
        self.seeded_reservoir = bool(state.get("seeded_reservoir", True))

    # ------------------------------------------------------------------ computation
    def operands(
        self, compiled: bool = False, dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor, Tensor, LayerSpec]:
        """``(recurrent, gate_weight, gate_bias, spec)`` as :mod:`esgp_sparse.ops` takes them, the
        floating ones cast (differentiably) to ``dtype`` if given."""
        recurrent, gate_weight, gate_bias, spec = self._operands(compiled)
        if dtype is None:
            return recurrent, gate_weight, gate_bias, spec
        return recurrent.to(dtype), gate_weight.to(dtype), gate_bias.to(dtype), spec

    def _operands(self, compiled: bool) -> tuple[Tensor, Tensor, Tensor, LayerSpec]:
        if not self.drawn:
            raise ValueError(
                f"{_OWNER}: the reservoir was not drawn yet (built on the meta device); "
                "call to_empty(device=...) and reset_reservoir() first"
            )
        recurrent_csr: CSR | None
        if self.path == "sparse":
            recurrent, recurrent_csr = self.values, self.pattern_csr()
        elif self.dense_weight is not None:
            recurrent, recurrent_csr = self.dense_weight, None
        else:
            raise RuntimeError(f"{_OWNER}: the dense path's weight was not derived")
        gate = self.gate
        if isinstance(gate, SparseGate):
            if self.path == "sparse":
                return (
                    recurrent,
                    gate.weight_values,
                    gate.bias,
                    LayerSpec(recurrent_csr, "sparse", gate.pattern_csr(), compiled),
                )
            weight = csr_to_dense(
                gate.crow_indices, gate.col_indices, gate.weight_values, self.hidden_size, gate.row_indices
            )
            return recurrent, weight, gate.bias, LayerSpec(recurrent_csr, "dense", None, compiled)
        kind: GateKind = (
            "dense" if isinstance(gate, nn.Linear) else "lowrank" if isinstance(gate, LowRankGate) else "diagonal"
        )
        return recurrent, gate.weight, gate.bias, LayerSpec(recurrent_csr, kind, None, compiled)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """One step: ``h' = g * h~ + (1 - g) * h``. See the class docstring for shapes."""
        weight = self.Win.weight
        if self.path == "sparse" or isinstance(self.gate, SparseGate):
            _checks.check_not_vmapped(_OWNER, "the CSR products are custom ops without a batching rule")
        low = autocast_dtype(x.device.type if isinstance(x, Tensor) else "cpu", weight.dtype)
        _checks.check_tensor(_OWNER, "input", x, (1, 2), weight, low)
        if x.size(-1) != self.input_size:
            raise ValueError(f"{_OWNER}: expected input.size(-1) == input_size={self.input_size}, got {x.size(-1)}")
        batched = x.dim() == 2
        expected = (x.size(0), self.hidden_size) if batched else (self.hidden_size,)
        if h is None:
            h = x.new_zeros(expected)
        else:
            _checks.check_tensor(_OWNER, "h", h, (x.dim(),), weight, low)
            if tuple(h.shape) != expected:
                raise ValueError(f"{_OWNER}: expected h of shape {expected}, got {tuple(h.shape)}")
        x, h = (x, h) if batched else (x[None], h[None])
        if low is None:
            new = esgp_cell(x, h, weight, *self.operands())
        else:  # the whole step in the autocast dtype, the result in the module's (as nn.GRUCell)
            with torch.autocast(x.device.type, enabled=False):
                new = esgp_cell(x.to(low), h.to(low), weight.to(low), *self.operands(dtype=low)).to(weight.dtype)
        return new if batched else new[0]

    def layer(
        self, x: Tensor, h0: Tensor, batch_first: bool, compiled: bool = False, checkpoint: bool = False
    ) -> Tensor:
        """This cell over a whole sequence (no checks; :class:`ESGP` checks its inputs).

        See :func:`esgp_sparse.ops.esgp_layer` for ``checkpoint``. The layer runs in ``x``'s dtype
        (the weights are cast to it where the module's differs, as under autocast).

        Shape:
            x: (B, T, I) if batch_first else (T, B, I); h0: (B, H); returns the states like ``x``.
        """
        weight = self.Win.weight
        dtype = None if x.dtype == weight.dtype else x.dtype
        recurrent, gate_weight, gate_bias, spec = self.operands(compiled, dtype)
        weight = weight if dtype is None else weight.to(dtype)
        return esgp_layer(x, h0, weight, recurrent, gate_weight, gate_bias, spec, batch_first, checkpoint)

    def recurrent_weight(self) -> Tensor:
        """The H x H reservoir actually used, as a torch sparse CSR tensor (a view of the buffers)."""
        return torch.sparse_csr_tensor(
            self.crow_indices,
            self.col_indices,
            self.values,
            (self.hidden_size, self.hidden_size),
            check_invariants=False,  # valid by construction
        )

    def radius_summary(self) -> str:
        """``rho=0.9 (arpack, error 3.1e-08)``: the measured radius, how, and its error estimate."""
        return f"rho={self.radius:.6g} ({self.radius_measured_with}, error {self.radius_error:.2g})"

    def reset_parameters(self) -> None:
        """Re-initialise the learned parameters (``Win`` and the gate); the reservoir stays."""
        self.Win.reset_parameters()
        self.gate.reset_parameters()
        self._initialise_knobs()

    @torch.no_grad()
    def _initialise_knobs(self) -> None:
        # After the usual initialisation, so that the defaults draw exactly what they always drew.
        if self.input_scaling != 1.0:
            self.Win.weight.mul_(self.input_scaling)
        self._initialise_gate_bias()

    @torch.no_grad()
    def _initialise_gate_bias(self) -> None:
        if self.gate_bias_init is not None:
            self.gate.bias.fill_(self.gate_bias_init)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.sparsity != 0.1:
            parts.append(f"sparsity={self.sparsity:g}")
        if self.spectral_radius != 0.9:
            parts.append(f"spectral_radius={self.spectral_radius:g}")
        if self.gate_type != "dense":
            parts.append(f"gate={self.gate_type!r}")
        rank = getattr(self, "gate_rank", None)  # a cell pickled before 0.2.0's low-rank gate has none
        if rank is not None:
            parts.append(f"gate_rank={rank}")
        if self.path_request != "auto":
            parts.append(f"path={self.path_request!r}")
        parts += _checks.initialisation_repr(self.input_scaling, self.gate_bias_init)
        parts.append(f"path_used={self.path!r}, nnz={self.nnz}, {self.radius_summary()}")
        return ", ".join(parts)


def _undrawn(hidden_size: int) -> Reservoir:
    """An empty pattern standing for a reservoir not drawn yet (deferred initialisation)."""
    crow = np.zeros(hidden_size + 1, dtype=np.int32)
    return Reservoir(
        crow, np.zeros(0, dtype=np.int32), np.zeros(0), hidden_size, float("nan"), float("nan"), "deferred"
    )


def autocast_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a float32 module computes in under an enabled ``torch.autocast`` on ``device_type``
    (None when autocast is off or leaves it alone: autocast never lowers float64)."""
    if dtype != torch.float32 or not torch.amp.is_autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    low = torch.get_autocast_dtype(device_type)
    return None if low == dtype else low


def run_in_autocast_dtype(
    low: torch.dtype | None,
    dtype: torch.dtype,
    run: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    h: Tensor,
) -> tuple[Tensor, Tensor]:
    """``run(x, h)``; under autocast (``low`` not None) every layer runs in ``low`` with autocast off
    inside, and the results come back in the module's ``dtype`` (as nn.GRU's do on CPU)."""
    if low is None:
        return run(x, h)
    with torch.autocast(x.device.type, enabled=False):
        out, h_n = run(x.to(low), h.to(low))
    return out.to(dtype), h_n.to(dtype)


def _use_path_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    # A module-level function rather than a lambda, so that a whole model still pickles.
    if isinstance(module, ESGPCell):
        module.drawn = True  # the reservoir came with the state_dict
        module._use_path()
