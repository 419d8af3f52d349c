"""torch.distributed helpers: data-parallel training without re-sending the fixed reservoirs.

Every rank builds the same reservoir: from the same ``seed``, or, with ``seed=None`` inside an
initialised process group, from a seed drawn on rank 0 and broadcast at construction. The
reservoir never changes, so DistributedDataParallel need not broadcast it (nor the buffers derived
from it) on every forward, as it does by default with every buffer. ``ESGP`` and ``ESGPCell`` tell
DDP so when they are the module it wraps; :func:`ignore_fixed_buffers` does it for a model that
holds them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .cell import ESGPCell
from .esgp import ESGP
from .sharded import ShardedESGP, ShardedLinear, shard_bounds

__all__ = [
    "ShardedESGP",
    "ShardedLinear",
    "check_same_reservoirs",
    "fixed_buffer_names",
    "ignore_fixed_buffers",
    "shard_bounds",
]


def fixed_buffer_names(model: nn.Module) -> list[str]:
    """The names (as ``model.named_buffers()`` gives them) of every buffer of every ``ESGP`` and
    ``ESGPCell`` inside ``model``: the reservoirs, the sparse gates' patterns and what the paths
    derive from them."""
    owners = [prefix for prefix, module in model.named_modules() if isinstance(module, ESGP | ESGPCell)]
    return sorted(
        name
        for name, _ in model.named_buffers()
        if any(prefix == "" or name.startswith(prefix + ".") for prefix in owners)
    )


def check_same_reservoirs(model: nn.Module) -> None:
    """Raise unless every rank of the default process group holds the same fixed buffers in
    ``model`` (compared by a checksum of each, all-gathered; nothing to do outside a process group).

    Once DDP ignores them it no longer broadcasts them at wrapping time either, so ranks that built
    different reservoirs (``seed=None`` before ``init_process_group``, say) would otherwise train
    different models silently.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    buffers = dict(model.named_buffers())
    checksums = torch.tensor(
        [
            [buffers[name].numel(), float(buffers[name].double().sum()), float(buffers[name].double().square().sum())]
            for name in fixed_buffer_names(model)
        ],
        dtype=torch.float64,
    )
    device = next((b.device for b in buffers.values()), torch.device("cpu"))
    if dist.get_backend() == "nccl":
        checksums = checksums.to(device)
    gathered = [torch.empty_like(checksums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksums)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise ValueError(
                f"ignore_fixed_buffers: rank {rank} holds other fixed buffers (reservoirs) than rank 0; build "
                "the model with the same seed on every rank, or with seed=None after init_process_group"
            )


def ignore_fixed_buffers(model: nn.Module) -> list[str]:
    """Tell ``DistributedDataParallel`` not to broadcast the fixed buffers of ``model``'s ESGP layers.

    Call it on the model you are about to wrap, after moving it to its device (a device move may
    change the path and so the derived buffers); learned parameters stay synchronised as usual, and
    any other buffer of ``model`` (batch-norm statistics, say) is still broadcast. Inside a process
    group it first checks that every rank holds the same reservoirs (:func:`check_same_reservoirs`,
    a collective). Returns the names.

    Example::

        model = Classifier(ESGP(16, 4096, sparsity=0.01, gate="sparse")).to(device)
        esgp_sparse.distributed.ignore_fixed_buffers(model)
        model = torch.nn.parallel.DistributedDataParallel(model)
    """
    names = fixed_buffer_names(model)
    check_same_reservoirs(model)
    existing = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    # An ESGP or ESGPCell at the top answers with a property of its own; elsewhere set the attribute.
    if not isinstance(model, ESGP | ESGPCell):
        model._ddp_params_and_buffers_to_ignore = sorted(set(existing) | set(names))  # type: ignore[assignment]
    return names
