"""ESGP: a stack of ESGP cells run over whole sequences, with nn.GRU's conventions."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _checks
from .cell import ESGPCell, GateType, PathRequest, autocast_dtype, run_in_autocast_dtype
from .init import RADIUS_METHODS, RadiusMethod, check_connections, derive_seed
from .ops import GATES, PATHS
from .pattern import FixedBuffers

_OWNER = "ESGP"


class ESGP(FixedBuffers):
    r"""A multi-layer Echo State Gated Population network over sequences, like ``nn.GRU``.

    Each layer is an :class:`ESGPCell` (see it for the math and the reservoir); layer ``l > 0``
    reads the states of layer ``l - 1``, with dropout between layers as in ``nn.GRU``. A drop-in
    for the original ``esgp.ESGP``: same constructor, ``output, h_n = model(x, h_0)``, ``cells``.

    Each layer runs as one autograd node with a hand-written backward through time (see
    :func:`esgp_sparse.ops.esgp_layer`); the plain loop it equals is::

        h = h_0[l]
        for t in range(T):
            h = cells[l](x[t], h)

    Args:
        input_size: I, features of the input.
        hidden_size: H, units per layer.
        num_layers: stacked layers.
        sparsity: fraction of recurrent connections **present**, in (0, 1] (0.1 keeps 10 %), as in
            the original package.
        spectral_radius: the spectral radius of each reservoir as actually used.
        batch_first: input and output are (B, T, F) if True (the default, as in the original), else
            (T, B, F). ``h_0`` and ``h_n`` are (D * num_layers, B, H) either way.
        gate: ``"dense"`` (published model), ``"sparse"``, ``"diagonal"`` or ``"lowrank"``; see
            :class:`ESGPCell`.
        gate_rank: the low-rank gate's rank; see :class:`ESGPCell`.
        path: ``"auto"``, ``"dense"`` or ``"sparse"``; see :class:`ESGPCell`.
        bidirectional: a second stack of cells (each with its own reservoir and gate) reads the
            sequence backwards, as in ``nn.GRU``; layers above the first read both directions (2H).
        dropout: probability of dropout on the outputs of every layer but the last, in [0, 1].
        seed: seed of the whole stack (layer ``l`` draws from a sub-stream of it); ``None`` draws one
            from torch's global generator.
        compile: run each layer's steps through Inductor 16 at a time (see
            :mod:`esgp_sparse.ops.chunked`; the compiled functions are shared by every model in the
            process, with dynamic shapes); the first call compiles (about 20 s on a 2-core CPU).
        checkpoint: keep only the states for the backward (4 bytes per unit and step in float32, the
            output itself) instead of states, candidates and gates (12 bytes), and recompute the
            candidates and gates chunk by chunk in the backward: about one more forward pass, for
            the largest runs.
        radius_method: see :class:`ESGPCell`.
        input_scaling, gate_bias_init: how every layer's ``Win`` and gate bias start; see
            :class:`ESGPCell` (defaults: the original's initialisation).
        device, dtype: as in ``torch.nn``.

    Under ``torch.autocast`` a float32 model runs every layer in the autocast dtype (the state
    included) and returns float32, as ``nn.GRU`` does on CPU. NaN/inf in the input are checked on
    CPU tensors in eager mode only (elsewhere the check would synchronise the device or break a
    trace).

    Shape:
        input:  (B, T, I) if batch_first else (T, B, I); (T, I) unbatched
        h_0:    (D * num_layers, B, H), or (D * num_layers, H) unbatched; zeros if None
        output: (B, T, D * H) if batch_first else (T, B, D * H); (T, D * H) unbatched; the last
                layer's states (forward direction first, as nn.GRU)
        h_n:    (D * num_layers, B, H), or (D * num_layers, H) unbatched; every layer's and
                direction's last state (the reverse direction's is that of the first step)
        D is 2 if bidirectional else 1.

    Attributes:
        cells: ``nn.ModuleList`` of the :class:`ESGPCell` of each layer (``cells[layer * D + direction]``).

    Example::

        >>> model = ESGP(input_size=128, hidden_size=256, num_layers=2, sparsity=0.1, seed=0)
        >>> output, h_n = model(torch.randn(32, 10, 128))
        >>> output.shape, h_n.shape
        (torch.Size([32, 10, 256]), torch.Size([2, 32, 256]))
    """

    seed: int | None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        sparsity: float = 0.1,
        spectral_radius: float = 0.9,
        batch_first: bool = True,
        *,
        gate: GateType = "dense",
        gate_rank: int | None = None,
        path: PathRequest = "auto",
        dropout: float = 0.0,
        bidirectional: bool = False,
        seed: int | None = None,
        compile: bool = False,
        checkpoint: bool = False,
        radius_method: RadiusMethod = "auto",
        input_scaling: float = 1.0,
        gate_bias_init: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_scaling, self.gate_bias_init = _checks.check_initialisation(_OWNER, input_scaling, gate_bias_init)
        self._configure(
            input_size,
            hidden_size,
            num_layers,
            sparsity,
            spectral_radius,
            batch_first,
            gate,
            gate_rank,
            path,
            dropout,
            compile,
            checkpoint,
        )
        _checks.check_choice(_OWNER, "radius_method", radius_method, RADIUS_METHODS)
        check_connections(self.hidden_size, self.sparsity, _OWNER)
        self.bidirectional = _checks.check_bool(_OWNER, "bidirectional", bidirectional)
        seed = _checks.check_seed(_OWNER, seed)
        self.seed = _checks.draw_seed() if seed is None else seed
        directions = 2 if self.bidirectional else 1
        # cells[layer * directions + direction], as nn.GRU orders h_n; the forward direction of a
        # layer draws from the same sub-stream as a unidirectional stack's, the reverse from its own.
        self.cells = nn.ModuleList(
            ESGPCell(
                self.input_size if layer == 0 else self.hidden_size * directions,
                self.hidden_size,
                self.sparsity,
                self.spectral_radius,
                gate=gate,
                gate_rank=self.gate_rank,
                path=path,
                seed=derive_seed(self.seed, layer) if direction == 0 else derive_seed(self.seed, layer, 1),
                radius_method=radius_method,
                input_scaling=self.input_scaling,
                gate_bias_init=self.gate_bias_init,
                device=device,
                dtype=dtype,
            )
            for layer in range(self.num_layers)
            for direction in range(directions)
        )

    def _configure(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        sparsity: float,
        spectral_radius: float,
        batch_first: bool,
        gate: str,
        gate_rank: int | None,
        path: str,
        dropout: float,
        compile: bool,
        checkpoint: bool,
    ) -> None:
        self.input_size = _checks.check_int(_OWNER, "input_size", input_size, 1)
        self.hidden_size = _checks.check_int(_OWNER, "hidden_size", hidden_size, 1)
        self.num_layers = _checks.check_int(_OWNER, "num_layers", num_layers, 1)
        self.sparsity = _checks.check_real(_OWNER, "sparsity", sparsity, 0.0, 1.0, low_open=True)
        self.spectral_radius = _checks.check_real(_OWNER, "spectral_radius", spectral_radius, 0.0)
        self.batch_first = _checks.check_bool(_OWNER, "batch_first", batch_first)
        self.gate_type = _checks.check_choice(_OWNER, "gate", gate, GATES)
        self.gate_rank = _checks.check_gate_rank(_OWNER, gate, gate_rank, self.hidden_size)
        self.path_request = _checks.check_choice(_OWNER, "path", path, PATHS)
        self.dropout = _checks.check_real(_OWNER, "dropout", dropout, 0.0, 1.0)
        self.compile_steps = _checks.check_bool(_OWNER, "compile", compile)
        self.checkpoint = _checks.check_bool(_OWNER, "checkpoint", checkpoint)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"{_OWNER}: dropout={self.dropout:g} acts between layers, and num_layers=1 has none",
                UserWarning,
                stacklevel=3,
            )

    @classmethod
    def from_esgp(cls, module: Any, **kwargs: Any) -> ESGP:
        """Convert an original ``esgp.ESGP`` (PyPI ``esgp`` 0.1.0) into an ``ESGP``.

        Every layer's ``W * mask`` is taken as-is (no renormalisation) and its learned weights are
        copied (see :meth:`ESGPCell.from_esgp`), so outputs and gradients match the original's.
        ``kwargs``: ``dropout``, ``compile``, ``checkpoint`` for the stack; ``path``, ``device``,
        ``dtype``, ``radius_method`` pass on to every cell.
        """
        for name in ("cells", "input_size", "hidden_size", "num_layers", "sparsity", "spectral_radius", "batch_first"):
            if not hasattr(module, name):
                raise TypeError(
                    f"{_OWNER}.from_esgp: expected an esgp.ESGP (it has no {name!r}), got {type(module).__name__}"
                )
        dropout = kwargs.pop("dropout", 0.0)
        compile = kwargs.pop("compile", False)
        checkpoint = kwargs.pop("checkpoint", False)
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model._configure(
            module.input_size,
            module.hidden_size,
            module.num_layers,
            module.sparsity,
            module.spectral_radius,
            module.batch_first,
            kwargs.get("gate", "dense"),
            kwargs.get("gate_rank"),
            kwargs.get("path", "auto"),
            dropout,
            compile,
            checkpoint,
        )
        model.seed = None
        model.bidirectional = False
        model.input_scaling, model.gate_bias_init = 1.0, None  # the original's weights are copied
        model.cells = nn.ModuleList(ESGPCell.from_esgp(cell, **kwargs) for cell in module.cells)
        return model

    @overload
    def forward(self, input: Tensor, h_0: Tensor | None = None, hx: Tensor | None = None) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(
        self, input: PackedSequence, h_0: Tensor | None = None, hx: Tensor | None = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(
        self, input: Tensor | PackedSequence, h_0: Tensor | None = None, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """Run the stack over ``input``; returns ``(output, h_n)``. See the class docstring for shapes.

        The initial state is ``h_0`` (the original's name) or ``hx`` (nn.GRU's), not both. A
        ``PackedSequence`` gives a ``PackedSequence`` of the same batch sizes, and ``h_n`` holds every
        sequence's state at its own last step, as nn.GRU's.
        """
        if hx is not None:
            if h_0 is not None:
                raise TypeError(f"{_OWNER}: got both h_0 and hx, which name the same initial state; pass one")
            h_0 = hx
        _checks.check_not_vmapped(_OWNER, "each layer is one autograd node with a hand-written backward")
        cells = self._cells()
        like = cells[0].Win.weight
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, h_0, cells, like)
        low = autocast_dtype(input.device.type if isinstance(input, Tensor) else "cpu", like.dtype)
        _checks.check_tensor(_OWNER, "input", input, (2, 3), like, low)
        if input.size(-1) != self.input_size:
            raise ValueError(f"{_OWNER}: expected input.size(-1) == input_size={self.input_size}, got {input.size(-1)}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0 if self.batch_first else 1)
        steps, batch = (x.size(1), x.size(0)) if self.batch_first else (x.size(0), x.size(1))
        if steps == 0 or batch == 0:
            raise ValueError(
                f"{_OWNER}: expected a non-empty sequence and batch, got input of shape {tuple(input.shape)}"
            )
        states = self.num_layers * (2 if self.bidirectional else 1)
        h_shape = (states, batch, self.hidden_size) if batched else (states, self.hidden_size)
        h_0 = self._initial_state(h_0, h_shape, x, like, low)
        h_0 = h_0 if batched else h_0.unsqueeze(1)
        x, h_n = run_in_autocast_dtype(low, like.dtype, lambda x, h: self._layers(x, h, cells), x, h_0)
        if not batched:
            return x.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return x, h_n

    def _initial_state(
        self, h_0: Tensor | None, shape: tuple[int, ...], source: Tensor, like: Tensor, low: torch.dtype | None
    ) -> Tensor:
        """``h_0`` checked against ``shape``, or zeros of it."""
        if h_0 is None:
            return source.new_zeros(shape)
        _checks.check_tensor(_OWNER, "h_0", h_0, (len(shape),), like, low)
        if tuple(h_0.shape) != shape:
            raise ValueError(f"{_OWNER}: expected h_0 of shape {shape}, got {tuple(h_0.shape)}")
        return h_0

    def _layers(self, x: Tensor, h_0: Tensor, cells: list[ESGPCell]) -> tuple[Tensor, Tensor]:
        time = 1 if self.batch_first else 0
        # The reverse direction reads the sequence backwards and writes its states back in time
        # order; its last state is that of the first step.
        return self._stack(x, h_0, cells, self.batch_first, lambda a: a.flip(time), lambda a: a.select(time, -1))

    def _stack(
        self,
        x: Tensor,
        h_0: Tensor,
        cells: list[ESGPCell],
        batch_first: bool,
        reverse: Callable[[Tensor], Tensor],
        last: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Every layer and direction over ``x``: ``reverse`` turns a sequence around (and back),
        ``last`` takes a run's final states."""
        directions = 2 if self.bidirectional else 1
        finals = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                source = x if direction == 0 else reverse(x)
                run = cells[index].layer(source, h_0[index], batch_first, self.compile_steps, self.checkpoint)
                finals.append(last(run))
                outputs.append(run if direction == 0 else reverse(run))
            x = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        return x, torch.stack(finals)

    def _forward_packed(
        self, packed: PackedSequence, h_0: Tensor | None, cells: list[ESGPCell], like: Tensor
    ) -> tuple[PackedSequence, Tensor]:
        """The stack over a PackedSequence, by masking: the batch runs padded through each layer
        (time-major, in the caller's batch order), every sequence's state is read at its own last
        step, the reverse direction reads every sequence backwards from its own last step, and only
        the valid steps go back into the packed output. A step's state depends on earlier steps
        only, so the padding never reaches a valid output and gets no gradient."""
        data, batch_sizes = packed.data, packed.batch_sizes
        low = autocast_dtype(data.device.type, like.dtype)
        _checks.check_tensor(_OWNER, "input.data", data, (2,), like, low)
        if data.size(-1) != self.input_size:
            raise ValueError(
                f"{_OWNER}: expected input.data.size(-1) == input_size={self.input_size}, got {data.size(-1)}"
            )
        steps, batch = batch_sizes.numel(), int(batch_sizes[0])
        states = self.num_layers * (2 if self.bidirectional else 1)
        h_0 = self._initial_state(h_0, (states, batch, self.hidden_size), data, like, low)
        order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(batch)
        order = order.to(data.device)
        # Row t * B + b of the padded (T, B) grid for every packed row, in PackedSequence's order.
        flat = torch.cat([t * batch + order[:size] for t, size in enumerate(batch_sizes.tolist())])
        # Sorted position j is active at the steps whose batch size exceeds j.
        sorted_lengths = (batch_sizes[None, :] > torch.arange(batch)[:, None]).sum(1).to(data.device)
        lengths = torch.empty_like(sorted_lengths)
        lengths[order] = sorted_lengths
        padded = data.new_zeros((steps * batch, data.size(-1))).index_put((flat,), data).view(steps, batch, -1)
        out, h_n = run_in_autocast_dtype(
            low, like.dtype, lambda x, h: self._layers_masked(x, lengths, h, cells), padded, h_0
        )
        result = out.reshape(steps * batch, -1).index_select(0, flat)
        return PackedSequence(result, batch_sizes, packed.sorted_indices, packed.unsorted_indices), h_n

    def _layers_masked(self, x: Tensor, lengths: Tensor, h_0: Tensor, cells: list[ESGPCell]) -> tuple[Tensor, Tensor]:
        """``x`` (T, B, F) padded, time-major; ``lengths`` (B,). Returns the states (T, B, D*H), valid
        up to each length, and ``h_n`` at each sequence's own last step."""
        steps, batch = x.shape[:2]
        time = torch.arange(steps, device=x.device)[:, None]
        final = (lengths - 1).clamp(min=0)
        # Reverses each sequence within its own length (an involution; the padding stays in place).
        reverse = torch.where(time < lengths, final - time, time)  # (T, B)
        columns = torch.arange(batch, device=x.device)
        return self._stack(x, h_0, cells, False, lambda a: a[reverse, columns], lambda a: a[final, columns])

    def reset_parameters(self) -> None:
        """Re-initialise every layer's learned parameters; the reservoirs stay."""
        for cell in self._cells():
            cell.reset_parameters()

    def reset_reservoir(self) -> None:
        """Draw every layer's reservoir from the stack's seed (see :meth:`ESGPCell.reset_reservoir`):
        after building on ``device="meta"`` and ``to_empty(device=...)``, the model equals one built
        on that device with the same seed, but for the learned parameters (``reset_parameters()``)."""
        for cell in self._cells():
            cell.reset_reservoir()

    def _cells(self) -> list[ESGPCell]:
        return [cast(ESGPCell, cell) for cell in self.cells]

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        defaults = dict(
            num_layers=1,
            sparsity=0.1,
            spectral_radius=0.9,
            batch_first=True,
            gate_type="dense",
            gate_rank=None,
            path_request="auto",
            dropout=0.0,
            compile_steps=False,
            checkpoint=False,
        )
        names = dict(gate_type="gate", path_request="path", compile_steps="compile")
        if self.bidirectional:
            parts.append("bidirectional=True")
        parts += _checks.initialisation_repr(self.input_scaling, self.gate_bias_init)
        for attr, default in defaults.items():
            value = getattr(self, attr, default)  # a model pickled before an attribute existed lacks it
            if value != default:
                parts.append(f"{names.get(attr, attr)}={value!r}")
        return ", ".join(parts)
