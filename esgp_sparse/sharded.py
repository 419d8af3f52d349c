"""The ESGP layer with its units sharded over the ranks of a torch.distributed process group.

Rank ``r`` of ``R`` holds a contiguous, balanced block of the H units: its rows of the reservoir
``W``, of ``W_in`` and of the gate, and its units' states. A step needs the whole previous state,
so the forward all-gathers the (H, B) state once per step (twice with the sparse gate, which reads
the whole candidate state too) and the backward reduce-scatters the (H, B) gradient as often. The
states travel in "rows" layout (unit-major, (H, B)), which the CSR product reads and writes: each
rank's columns of ``W`` are renumbered into the gathered buffer's layout (ranks padded to the same
number of rows), so neither a gather nor a reduce-scatter copies anything but the padding.

Everything is drawn so that the ranks' outputs, concatenated, equal ``ESGP(...)``'s for the same
seed and ``torch`` generator state: the reservoir's rows come in blocks with their own random
streams (:func:`esgp_sparse.init.drawn_rows`), so each rank draws only its rows, and the radius is
measured on the distributed matrix (:func:`esgp_sparse.init.measure_radius_rows`). The learned
parameters are drawn whole from torch's generator on every rank, as ``ESGP`` draws them, and
sliced (an O(H I + gate nnz) transient per rank).
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _checks
from .cell import autocast_dtype, run_in_autocast_dtype
from .init import RADIUS_METHODS, RadiusMethod, check_connections, derive_seed, drawn_rows, random_reservoir_rows
from .ops import CSR, LayerSpec, csr_transpose, esgp_layer
from .pattern import FixedBuffers

__all__ = ["ShardedESGP", "ShardedLinear", "shard_bounds"]

_OWNER = "ShardedESGP"
# torch 2.13 renamed the single-tensor collectives (the old names warn); torch >= 2.6 has the old ones.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
ShardedGate = Literal["diagonal", "sparse"]
# The layer is the single-process one (ops.sequence) with its products exchanging states through the
# group (LayerSpec.exchange), which runs eagerly: under torch.compile the graph breaks around it.
_sharded_layer = torch.compiler.disable(esgp_layer)


def shard_bounds(size: int, world: int) -> list[int]:
    """The first unit of every rank, and ``size`` last: rank ``r`` holds units ``[b[r], b[r + 1])``,
    contiguous and balanced (the first ``size % world`` ranks hold one more)."""
    base, extra = divmod(size, world)
    return [r * base + min(r, extra) for r in range(world + 1)]


class _Group:
    """A process group, this rank's place in it, and the device its collectives run on."""

    def __init__(self, group: dist.ProcessGroup | None, size: int, owner: str, name: str = "hidden_size") -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"{owner}: needs an initialised torch.distributed process group (init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        if size < self.world:
            raise ValueError(f"{owner}: expected {name} >= the group's {self.world} ranks, got {name}={size}")
        self.bounds = shard_bounds(size, self.world)
        self.start, self.stop = self.bounds[self.rank], self.bounds[self.rank + 1]
        self.padded = self.bounds[1] - self.bounds[0]  # the most units any rank holds
        # The rows of a gathered buffer that hold units (all of them unless the split is uneven).
        self.keep = (
            None
            if size % self.world == 0
            else np.concatenate(
                [
                    np.arange(r * self.padded, r * self.padded + self.bounds[r + 1] - self.bounds[r])
                    for r in range(self.world)
                ]
            )
        )
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def __deepcopy__(self, memo: dict) -> _Group:
        return self  # a copy of a module (an EMA, say) runs in the same process group

    @property
    def local(self) -> int:
        return self.stop - self.start

    def padded_index(self, unit: np.ndarray) -> np.ndarray:
        """Unit numbers -> rows of the gathered buffer (rank ``r``'s units at ``r * padded``)."""
        owner = np.searchsorted(np.asarray(self.bounds), unit, side="right") - 1
        return unit - np.asarray(self.bounds)[owner] + owner * self.padded

    # ---- numpy collectives, for the radius measurement
    def gather_numpy(self, local: np.ndarray) -> np.ndarray:
        # Real arrays only: Rows.apply gathers a complex vector's parts apart.
        out = self.gather(torch.from_numpy(np.ascontiguousarray(local)).to(self.device)).cpu().numpy()
        return out if self.keep is None else out[self.keep]

    def total_numpy(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array)
        if np.iscomplexobj(array):
            return self.total_numpy(array.real) + 1j * self.total_numpy(array.imag)
        tensor = torch.from_numpy(np.array(array, dtype=np.float64, ndmin=1)).to(self.device)
        dist.all_reduce(tensor, group=self.group)
        return tensor.cpu().numpy().reshape(array.shape)

    # ---- tensor collectives in rows layout: (units, ...) with ranks padded to ``padded`` rows
    def gather(self, local: Tensor) -> Tensor:
        if local.shape[0] != self.padded:
            local = torch.cat([local, local.new_zeros((self.padded - local.shape[0], *local.shape[1:]))])
        out = local.new_empty((self.world * self.padded, *local.shape[1:]))
        _all_gather_single(out, local.contiguous(), group=self.group)
        return out

    def reduce_scatter(self, full: Tensor) -> Tensor:
        out = full.new_empty((self.padded, *full.shape[1:]))
        _reduce_scatter_single(out, full.contiguous(), group=self.group)
        return out[: self.local]

    def all_reduce(self, tensor: Tensor) -> Tensor:
        tensor = tensor.contiguous().clone()
        dist.all_reduce(tensor, group=self.group)
        return tensor


class _AllReduce(torch.autograd.Function):
    """The sum of every rank's ``partial``; the gradient passes through (the loss on the replicated
    result is the same on every rank)."""

    @staticmethod
    def forward(ctx: Any, partial: Tensor, group: _Group) -> Tensor:
        return group.all_reduce(partial)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _Replicated(torch.autograd.Function):
    """The identity on an input every rank holds alike; the backward sums the ranks' gradients, each
    of which covers only the paths through that rank's units, so that every rank gets the whole
    gradient (and a replicated module upstream stays the same on every rank)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: _Group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.group.all_reduce(grad), None


class ShardedESGP(FixedBuffers):
    """:class:`esgp_sparse.ESGP` (one layer) with its units split over the ranks of a process group.

    Every rank builds the module at once (a collective). Rank ``r`` holds units
    ``shard_bounds(H, R)[r] : shard_bounds(H, R)[r + 1]`` (:attr:`start`, :attr:`stop`): its rows of the
    reservoir, of ``Win`` and of the gate, drawn alone (see the module's docstring). The input is
    the same on every rank (its batch size and length must be: a rank that differs waits in a
    collective), and its gradient is the whole one on every rank (all-reduced in the backward); the
    output and ``h_n`` hold this rank's units. For the same ``seed`` and
    torch generator state, the ranks' outputs concatenated along the hidden dimension equal
    ``ESGP(input_size, hidden_size, ..., gate=gate, seed=seed)``'s, and so do the gradients of a
    loss on a :class:`ShardedLinear` readout (to rounding: the sums over ranks run in another
    order).

    Args:
        input_size, hidden_size, num_layers, sparsity, spectral_radius, batch_first, seed,
            radius_method, input_scaling, gate_bias_init, dtype, device: as in
            :class:`esgp_sparse.ESGP`; ``num_layers`` must be 1.
            ``seed=None`` draws one on the group's first rank and broadcasts it.
        gate: ``"diagonal"`` (the default here) or ``"sparse"``: the gates that scale (a dense gate
            would need every unit's candidate state on every rank, and H^2 weights).
        checkpoint: keep only the states for the backward and recompute the candidates and gates
            there (with their all-gathers), as ``ESGP``'s ``checkpoint``.
        process_group: the group to shard over (None: the default group).

    Shape:
        input: (B, T, I) if ``batch_first`` else (T, B, I), the same on every rank.
        h_0: (1, B, H_rank), this rank's units, or None (zeros).
        output: (B, T, H_rank) if ``batch_first`` else (T, B, H_rank); h_n: (1, B, H_rank).

    Attributes:
        start, stop: the units this rank holds. radius, radius_error, radius_measured_with: the
            spectral radius measured on the whole (distributed) reservoir, as in ``ESGPCell``.

    Communication per step: one all-gather of the (B, H) state in the forward and one
    reduce-scatter of its gradient in the backward (two of each with the sparse gate, whose weight
    gradient gathers the candidates once more), each of B x H x itemsize bytes over the group.

    Memory for the backward: ``ESGP``'s, for this rank's units (the states, candidates and gates:
    12 bytes per unit and step in float32, 4 with ``checkpoint``); the layer is ``ESGP``'s
    hand-written backward through time (:func:`esgp_sparse.ops.esgp_layer`) with its products
    exchanging states through the group, and runs eagerly (under torch.compile, a graph break).
    """

    values: Tensor
    crow_indices: Tensor
    col_indices: Tensor
    perm_t: Tensor

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        sparsity: float = 0.1,
        spectral_radius: float = 0.9,
        batch_first: bool = True,
        *,
        gate: ShardedGate = "diagonal",
        checkpoint: bool = False,
        seed: int | None = None,
        radius_method: RadiusMethod = "auto",
        input_scaling: float = 1.0,
        gate_bias_init: float | None = None,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_scaling, self.gate_bias_init = _checks.check_initialisation(_OWNER, input_scaling, gate_bias_init)
        self.input_size = _checks.check_int(_OWNER, "input_size", input_size, 1)
        self.hidden_size = _checks.check_int(_OWNER, "hidden_size", hidden_size, 1)
        if _checks.check_int(_OWNER, "num_layers", num_layers, 1) != 1:
            raise ValueError(f"{_OWNER}: expected num_layers=1 (one sharded layer), got num_layers={num_layers}")
        self.num_layers = 1
        self.sparsity = _checks.check_real(_OWNER, "sparsity", sparsity, 0.0, 1.0, low_open=True)
        self.spectral_radius = _checks.check_real(_OWNER, "spectral_radius", spectral_radius, 0.0)
        self.batch_first = _checks.check_bool(_OWNER, "batch_first", batch_first)
        self.gate_type = _checks.check_choice(_OWNER, "gate", gate, ("diagonal", "sparse"))
        self.checkpoint = _checks.check_bool(_OWNER, "checkpoint", checkpoint)
        self.radius_method = _checks.check_choice(_OWNER, "radius_method", radius_method, RADIUS_METHODS)
        dtype = _checks.check_dtype(_OWNER, dtype)
        device = torch.device(device) if device is not None else torch.empty(0).device
        check_connections(self.hidden_size, self.sparsity, _OWNER)
        seed = _checks.check_seed(_OWNER, seed)
        self._group = _Group(process_group, self.hidden_size, _OWNER)
        g = self._group
        if g.device.type == "cuda" and device.type != "cuda":
            raise ValueError(
                f"{_OWNER}: expected device on cuda for an NCCL process group, got device={str(device)!r}; "
                "pass device=torch.device('cuda', local_rank), or use a gloo group on the CPU"
            )
        self.start, self.stop = g.start, g.stop
        self.seed = self._broadcast_seed() if seed is None else seed
        cell_seed = derive_seed(self.seed, 0)  # what ESGP gives its first layer

        reservoir = random_reservoir_rows(
            self.hidden_size,
            self.sparsity,
            self.spectral_radius,
            cell_seed,
            (g.start, g.stop),
            g.gather_numpy,
            g.total_numpy,
            key=(0,),
            radius_method=self.radius_method,
            threads=torch.get_num_threads(),
        )
        self.radius = float(reservoir.radius)
        self.radius_error = float(reservoir.radius_error)
        self.radius_measured_with = reservoir.radius_method
        self._register_rows("", reservoir.crow_indices, reservoir.col_indices, device)
        self.register_buffer("values", torch.as_tensor(reservoir.values, device=device).to(dtype))

        # The learned parameters, drawn whole in ESGPCell's order from torch's generator, then sliced.
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        rows = slice(g.start, g.stop)
        win = torch.empty(self.hidden_size, self.input_size, **factory)
        nn.init.kaiming_uniform_(win, a=math.sqrt(5))  # nn.Linear's initialisation
        self.Win = nn.Parameter(win[rows].clone())
        if gate == "diagonal":
            weight = torch.empty(self.hidden_size, **factory).uniform_(-1.0, 1.0)
            bias = torch.empty(self.hidden_size, **factory).uniform_(-1.0, 1.0)
            self.gate_weight = nn.Parameter(weight[rows].clone())
        else:
            crow, col, _ = drawn_rows(self.hidden_size, self.sparsity, cell_seed, (1,), (g.start, g.stop))
            self._register_rows("gate_", crow, col, device)
            counts = g.total_numpy(np.eye(g.world)[g.rank] * col.shape[0])  # every rank's gate nnz
            total, offset = int(counts.sum()), int(counts[: g.rank].sum())
            bound = 1.0 / math.sqrt(max(1.0, total / self.hidden_size))  # as SparseGate
            weight = torch.empty(total, **factory).uniform_(-bound, bound)
            bias = torch.empty(self.hidden_size, **factory).uniform_(-bound, bound)
            self.gate_weight = nn.Parameter(weight[offset : offset + col.shape[0]].clone())
        self.gate_bias = nn.Parameter(bias[rows].clone())
        with torch.no_grad():  # as ESGPCell: after the usual initialisation
            self.Win.mul_(self.input_scaling)
            if self.gate_bias_init is not None:
                self.gate_bias.fill_(self.gate_bias_init)

    def _broadcast_seed(self) -> int:
        g = self._group
        seed = torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).to(g.device)
        dist.broadcast(seed, src=dist.get_global_rank(g.group, 0) if g.group is not None else 0, group=g.group)
        return int(seed.item())

    def _register_rows(self, prefix: str, crow: np.ndarray, col: np.ndarray, device: torch.device) -> None:
        """This rank's rows of a fixed pattern, its columns renumbered to the gathered layout, and
        their transpose (for the backward)."""
        col = self._group.padded_index(col.astype(np.int64)).astype(col.dtype)
        crow_t, col_t, perm_t = csr_transpose(
            torch.as_tensor(crow), torch.as_tensor(col), self._group.world * self._group.padded
        )
        for name, array in (("crow_indices", crow), ("col_indices", col)):
            self.register_buffer(prefix + name, torch.as_tensor(array, device=device))
        for name, tensor in (("crow_indices_t", crow_t), ("col_indices_t", col_t), ("perm_t", perm_t)):
            self.register_buffer(prefix + name, tensor.to(device), persistent=False)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "units": [self.start, self.stop, self.hidden_size],
            "radius": self.radius,
            "radius_error": self.radius_error,
            "radius_measured_with": self.radius_measured_with,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if list(state["units"]) != [self.start, self.stop, self.hidden_size]:
            raise ValueError(
                f"{_OWNER}.load_state_dict: the state holds units {state['units'][0]}:{state['units'][1]} of "
                f"{state['units'][2]}, this rank units {self.start}:{self.stop} of {self.hidden_size}; load each "
                "rank's own state into a model sharded over as many ranks"
            )
        self.seed = state["seed"]
        self.radius, self.radius_error = float(state["radius"]), float(state["radius_error"])
        self.radius_measured_with = str(state["radius_measured_with"])

    @property
    def nnz(self) -> int:
        """This rank's stored reservoir entries."""
        return self.col_indices.numel()

    def _spec(self) -> LayerSpec:
        def pattern(prefix: str) -> CSR:
            names = ("crow_indices", "col_indices", "crow_indices_t", "col_indices_t", "perm_t")
            return CSR(*(getattr(self, prefix + name) for name in names))

        gate = pattern("gate_") if self.gate_type == "sparse" else None
        return LayerSpec(pattern(""), cast(ShardedGate, self.gate_type), gate, exchange=self._group)

    def forward(self, input: Tensor, h_0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _checks.check_tensor(_OWNER, "input", input, (3,), self.Win)
        x = input if self.batch_first else input.transpose(0, 1)
        if x.shape[2] != self.input_size or x.shape[1] == 0:
            raise ValueError(
                f"{_OWNER}: expected input with {self.input_size} features (input_size) and at least one step, "
                f"got shape {tuple(input.shape)}"
            )
        batch = x.shape[0]
        if h_0 is None:
            h = x.new_zeros((batch, self.stop - self.start))
        else:
            expected = (1, batch, self.stop - self.start)
            if tuple(h_0.shape) != expected:
                raise ValueError(
                    f"{_OWNER}: expected h_0 of shape {expected} (1, batch, this rank's units), got {tuple(h_0.shape)}"
                )
            h = _checks.check_tensor(_OWNER, "h_0", h_0, (3,), self.Win)[0]
        if input.requires_grad:
            input = _Replicated.apply(input, self._group)
        spec = self._spec()

        def run(x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:  # in x's dtype, as ESGP's layers run
            def cast(tensor: Tensor) -> Tensor:
                return tensor if tensor.dtype == x.dtype else tensor.to(x.dtype)

            weights = (cast(self.Win), cast(self.values), cast(self.gate_weight), cast(self.gate_bias))
            output = _sharded_layer(x, h, *weights, spec, self.batch_first, self.checkpoint)
            return output, (output[:, -1] if self.batch_first else output[-1]).unsqueeze(0)

        # Under torch.autocast the layer runs in its dtype (bfloat16, say) and returns the module's.
        return run_in_autocast_dtype(autocast_dtype(input.device.type, self.Win.dtype), self.Win.dtype, run, input, h)

    def extra_repr(self) -> str:
        g = self._group
        return (
            f"{self.input_size}, {self.hidden_size}, sparsity={self.sparsity}, spectral_radius={self.spectral_radius}, "
            f"gate={self.gate_type!r}, "
            + "".join(part + ", " for part in _checks.initialisation_repr(self.input_scaling, self.gate_bias_init))
            + f"units {self.start}:{self.stop} of rank {g.rank}/{g.world}, nnz={self.nnz}, "
            f"radius={self.radius:.6g} (error {self.radius_error:.2g}, {self.radius_measured_with})"
        )


class ShardedLinear(nn.Module):
    """A readout whose input features are the units of a :class:`ShardedESGP`: rank ``r`` holds the
    weight's columns for its units, and the forward all-reduces the partial products, so every rank
    gets the same, whole result (replicated logits). Drawn as ``nn.Linear(in_features,
    out_features)`` is from torch's generator, then sliced. The backward passes the gradient of the
    result through unchanged, which is right when every rank computes the same loss from it (the
    same targets on every rank, as the input is the same).

    Shape: input (..., H_rank) on every rank; output (..., out_features), the same on every rank.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = "ShardedLinear"
        self.in_features = _checks.check_int(owner, "in_features", in_features, 1)
        self.out_features = _checks.check_int(owner, "out_features", out_features, 1)
        self._group = _Group(process_group, self.in_features, owner, "in_features")
        full = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight = nn.Parameter(full.weight[:, self._group.start : self._group.stop].detach().clone())
        self.bias = full.bias
        self.start, self.stop = self._group.start, self._group.stop

    def forward(self, input: Tensor) -> Tensor:
        if input.shape[-1] != self.stop - self.start:
            raise ValueError(
                f"ShardedLinear: expected input with this rank's {self.stop - self.start} features, "
                f"got shape {tuple(input.shape)}"
            )
        out = cast(Tensor, _AllReduce.apply(input @ self.weight.t(), self._group))
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"features {self.start}:{self.stop}"
        )
