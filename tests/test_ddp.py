"""DistributedDataParallel on 2 gloo processes: the same reservoir on every rank without a common
seed, parameters identical after Adam steps, and no reservoir bytes broadcast per step."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from esgp_sparse import ESGP
from esgp_sparse.distributed import fixed_buffer_names, ignore_fixed_buffers

WORLD = 2


class Classifier(nn.Module):
    def __init__(self, esgp: ESGP) -> None:
        super().__init__()
        self.esgp, self.head = esgp, nn.Linear(esgp.hidden_size, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.esgp(x)[0][:, -1])


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _worker(rank: int, port: int, out: str) -> None:
    _in_process_group(_train, rank, port, out)


def _in_process_group(work, rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        work(rank, out)  # its DDP objects are gone when it returns, before the group is torn down
    finally:
        dist.barrier()  # no rank tears gloo down while another is still in a collective
        dist.destroy_process_group()


def _train(rank: int, out: str) -> None:
    torch.manual_seed(1000 + rank)  # the ranks are NOT seeded alike
    model = Classifier(ESGP(3, 32, num_layers=2, sparsity=0.2, gate="sparse", path="dense", seed=None))
    ignore_fixed_buffers(model)
    ddp = DistributedDataParallel(model)
    synced = [b for name, b in model.named_buffers() if name not in ddp.parameters_to_ignore]
    plain = DistributedDataParallel(ESGP(3, 16, sparsity=0.25, seed=None))  # ESGP at the top
    initial = _flat(model.parameters())
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(rank)  # each rank its own data
    for _ in range(4):
        x, y = torch.randn(5, 7, 3, generator=generator), torch.randint(0, 3, (5,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        optimizer.step()
    reservoirs = _flat(b for name, b in model.named_buffers() if name in fixed_buffer_names(model))
    params = _flat(model.parameters())
    gathered = {}
    for key, tensor in (("params", params), ("reservoirs", reservoirs)):
        parts = [torch.empty_like(tensor) for _ in range(WORLD)]
        dist.all_gather(parts, tensor)
        gathered[key] = float((parts[0] - parts[1]).abs().max())
    result = dict(
        gathered,
        seeds=[model.esgp.seed],
        synced_buffer_bytes=sum(b.numel() * b.element_size() for b in synced),
        all_buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        ignored=len(ddp.parameters_to_ignore),
        plain_synced=[n for n, _ in plain.module.named_buffers() if n not in plain.parameters_to_ignore],
        moved=float((params - initial).abs().max()),
    )
    Path(out, f"{rank}.json").write_text(json.dumps(result))


def _spawn(worker, tmp_path: Path) -> None:
    """Run ``worker(rank, port, out)`` on WORLD gloo processes on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)


def test_ddp_same_reservoir_synchronised_parameters_and_no_reservoir_broadcast(tmp_path):
    _spawn(_worker, tmp_path)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(WORLD)]
    for result in results:
        assert result["reservoirs"] == 0.0  # the seed drawn on rank 0 reached rank 1
        assert result["params"] == 0.0  # DDP kept the learned parameters in step
        assert result["synced_buffer_bytes"] == 0 and result["ignored"] > 0  # nothing fixed is re-sent
        assert result["plain_synced"] == [] and result["moved"] > 0  # and it trained
        assert result["all_buffer_bytes"] > 10_000  # what DDP re-sent on every forward before
    assert results[0]["seeds"] == results[1]["seeds"]


def _mismatched_worker(rank: int, port: int, out: str) -> None:
    _in_process_group(_refuse, rank, port, out)


def _refuse(rank: int, out: str) -> None:
    model = Classifier(ESGP(3, 32, sparsity=0.2, seed=rank))  # a different reservoir on each rank
    try:
        ignore_fixed_buffers(model)
        message = "nothing raised"
    except ValueError as error:
        message = str(error)
    Path(out, f"{rank}.txt").write_text(message)


def test_different_reservoirs_on_the_ranks_are_refused(tmp_path):
    _spawn(_mismatched_worker, tmp_path)
    for rank in range(WORLD):
        assert "rank 1 holds other fixed buffers (reservoirs) than rank 0" in (tmp_path / f"{rank}.txt").read_text()


def test_fixed_buffer_names_cover_every_layer():
    model = Classifier(ESGP(3, 32, num_layers=2, sparsity=0.2, gate="sparse", seed=0))
    names = fixed_buffer_names(model)
    assert "esgp.cells.0.values" in names and "esgp.cells.1.gate.col_indices" in names
    assert all(name.startswith("esgp.") for name in names)
    assert set(names) == {name for name, _ in model.named_buffers()}
    assert ignore_fixed_buffers(model) == names and model._ddp_params_and_buffers_to_ignore == names
