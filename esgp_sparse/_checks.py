"""Argument and input checks shared by the modules: one wording, one exception type per fault."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from typing import TypeVar

import torch
from torch import Tensor

Choice = TypeVar("Choice", bound=str)


def check_int(owner: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: expected {name} to be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: expected {name} >= {minimum}, got {name}={value}")
    return int(value)


def check_real(
    owner: str,
    name: str,
    value: object,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the interval given by ``low``, ``high`` and the open/closed flags."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: expected {name} to be a real number, got {value!r} ({type(value).__name__})")
    number = float(value)
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if not math.isfinite(number) or below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or math.isinf(high) else ']'}"
        raise ValueError(f"{owner}: expected {name} in {interval}, got {name}={value!r}")
    return number


def check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: expected {name} to be a bool, got {value!r} ({type(value).__name__})")
    return value


def check_choice(owner: str, name: str, value: object, choices: Iterable[Choice]) -> Choice:
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{owner}: expected {name} to be one of {choices}, got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{owner}: expected {name} to be one of {choices}, got {name}={value!r}")
    return value


def check_seed(owner: str, seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"{owner}: expected seed to be a non-negative int or None, got {seed!r} ({type(seed).__name__})"
        )
    if seed < 0:
        raise ValueError(f"{owner}: expected seed to be a non-negative int or None, got seed={seed}")
    return int(seed)


def check_dtype(owner: str, dtype: object) -> torch.dtype:
    """The floating dtype to build with (torch's default when None)."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{owner}: expected dtype to be a torch.dtype or None, got {dtype!r} ({type(dtype).__name__})")
    if not dtype.is_floating_point:
        raise ValueError(f"{owner}: expected a floating point dtype, got dtype={dtype}")
    return dtype


def draw_seed() -> int:
    """A seed drawn from torch's global generator, so that ``torch.manual_seed`` fixes it.

    Inside an initialised ``torch.distributed`` process group the seed is drawn on rank 0 and
    broadcast, so that every rank builds the same reservoir even where the ranks' generators differ
    (a collective: every rank must build the model, as DistributedDataParallel requires anyway).
    """
    seed = torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        nccl = torch.distributed.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        seed = seed.to(device)
        torch.distributed.broadcast(seed, src=0)
    return int(seed.item())


def device_memory(device: torch.device) -> int | None:
    """Total memory of a device in bytes, or None where it cannot be told."""
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return None
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return None


def dense_fits(hidden_size: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a dense ``hidden_size x hidden_size`` matrix fits in the device's whole memory (True
    where that memory cannot be told)."""
    have = device_memory(device)
    return have is None or hidden_size * hidden_size * dtype.itemsize <= have


def check_dense_fits(
    owner: str, what: str, hidden_size: int, dtype: torch.dtype, device: torch.device, fix: str
) -> None:
    """Refuse a dense ``hidden_size x hidden_size`` matrix larger than the device's whole memory."""
    have = device_memory(device)
    if have is not None and not dense_fits(hidden_size, dtype, device):
        need = hidden_size * hidden_size * dtype.itemsize
        raise ValueError(
            f"{owner}: a dense {hidden_size} x {hidden_size} {what} needs {need / 2**30:,.1f} GiB, more than the "
            f"{have / 2**30:,.1f} GiB of the {device.type} device; {fix}"
        )


def check_tensor(
    owner: str, name: str, value: object, dims: tuple[int, ...], like: Tensor, also: torch.dtype | None = None
) -> Tensor:
    """A tensor with one of the allowed ``dims``, of ``like``'s dtype (or ``also``: the autocast dtype,
    where autocast is on) and device, with finite values.

    The finiteness check reads the data, so it runs only where that is free (:func:`finiteness_is_free`:
    CPU tensors, eager mode); elsewhere callers get the shape, dtype and device checks only.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: expected {name} to be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in dims:
        wanted = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{owner}: expected {name} to be {wanted}, got shape {tuple(value.shape)}")
    if value.dtype != like.dtype and value.dtype != also:
        raise ValueError(
            f"{owner}: expected {name}.dtype == {like.dtype} (the module's dtype), got {value.dtype}; "
            "convert the input or the module (e.g. module.double())"
        )
    if value.device != like.device:
        raise ValueError(
            f"{owner}: expected {name} on {like.device} (the module's device), got {value.device}; "
            "move the input or the module"
        )
    if finiteness_is_free(value) and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{owner}: expected finite values in {name}, got NaN or inf")
    return value


def finiteness_is_free(value: Tensor) -> bool:
    """Whether the NaN/inf check of an input may read its data: on CPU tensors in eager mode only.

    On an accelerator it would synchronise the device on every call (and forbid CUDA-graph capture);
    under torch.compile it would break the graph; under a torch.func transform (vmap, grad) a batched
    tensor cannot become a Python bool. There the check is skipped, not faked.
    """
    return (
        value.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def check_not_vmapped(owner: str, why: str) -> None:
    """Refuse to run under ``torch.func.vmap``, saying why and what to do instead."""
    if torch.compiler.is_compiling():  # Dynamo cannot trace the interpreter stack; vmap is not traced here
        return
    interpreter = torch._C._functorch.peek_interpreter_stack()
    if interpreter is not None and interpreter.key() == torch._C._functorch.TransformType.Vmap:
        raise NotImplementedError(
            f"{owner}: torch.func.vmap is not supported ({why}); put the vmapped dimension into the "
            "batch dimension B instead, which every op here handles in one call"
        )


def check_initialisation(owner: str, input_scaling: object, gate_bias_init: object) -> tuple[float, float | None]:
    """``input_scaling`` (finite, > 0) and ``gate_bias_init`` (finite, or None)."""
    scaling = check_real(owner, "input_scaling", input_scaling, 0.0, low_open=True)
    if gate_bias_init is None:
        return scaling, None
    return scaling, check_real(owner, "gate_bias_init", gate_bias_init, -math.inf, low_open=True)


#: The low-rank gate's rank when ``gate_rank`` is not given.
DEFAULT_GATE_RANK = 16


def check_gate_rank(owner: str, gate: str, gate_rank: object, hidden_size: int) -> int | None:
    """The low-rank gate's rank (None for the other gates): ``gate_rank`` in [1, hidden_size], or
    :data:`DEFAULT_GATE_RANK` (at most ``hidden_size``) when None."""
    if gate_rank is None:
        return min(DEFAULT_GATE_RANK, hidden_size) if gate == "lowrank" else None
    if gate != "lowrank":
        raise ValueError(
            f"{owner}: gate_rank applies to gate='lowrank' only, got gate_rank={gate_rank!r} with gate={gate!r}"
        )
    rank = check_int(owner, "gate_rank", gate_rank, 1)
    if rank > hidden_size:
        raise ValueError(f"{owner}: expected gate_rank <= hidden_size={hidden_size}, got gate_rank={rank}")
    return rank


def initialisation_repr(input_scaling: float, gate_bias_init: float | None) -> list[str]:
    """The ``extra_repr`` parts of the initialisation knobs that differ from their defaults."""
    parts = [] if input_scaling == 1.0 else [f"input_scaling={input_scaling:g}"]
    return parts if gate_bias_init is None else [*parts, f"gate_bias_init={gate_bias_init:g}"]
