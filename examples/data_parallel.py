"""Data-parallel training of an ESGP classifier with DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/data_parallel.py      # gloo on CPU; NCCL where CUDA is

Each rank draws its own data; the reservoir is the same on every rank (seed=None: drawn on rank 0
and broadcast at construction) and DDP never re-sends it; the learned weights stay in step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from esgp_sparse import ESGP
from esgp_sparse.datasets import adding_problem
from esgp_sparse.distributed import ignore_fixed_buffers


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.esgp = ESGP(2, 256, sparsity=0.05, gate="sparse", seed=None)
        self.head = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.esgp(x)[0][:, -1])


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(rank)  # the ranks' generators differ: the reservoir is the same anyway
    model = Regressor().to(device)
    ignore_fixed_buffers(model)  # the reservoir is fixed: no buffer broadcast on every forward
    model = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    for step in range(1, 201):
        x, y = adding_problem(32, 50, generator=generator)
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 and rank == 0:
            print(f"step {step}: loss {loss.item():.4f} (predicting the mean scores about 0.17)", flush=True)
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reservoir = model.module.esgp.cells[0].values
    for name, tensor in (("learned weights", weights), ("reservoir", reservoir)):
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor)
        if rank == 0:
            print(f"{name} identical on every rank: {all(torch.equal(gathered[0], t) for t in gathered)}")
    del model, optimizer  # DDP's reducer must go before its process group does
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
