"""A reservoir sharded over processes: each rank holds a block of the units, and the model ends in
replicated logits.

    torchrun --nproc_per_node=2 examples/sharded.py      # gloo on CPU; NCCL where CUDA is

Every rank sees the same data (the input is replicated); rank r draws only its rows of the
reservoir, computes its units' states, and the ShardedLinear readout all-reduces the partial
products, so the loss, and the update of every replicated parameter, is the same on every rank.
In its 31 steps the loss falls from 1.5 to about the level of predicting the mean (1/6); learning
the adding problem takes longer. It shows the mechanics, not a recipe.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from esgp_sparse.datasets import adding_problem
from esgp_sparse.distributed import ShardedESGP, ShardedLinear


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same learned initialisation on every rank (each keeps its slice)
    core = ShardedESGP(2, 20_000, sparsity=5e-4, gate="diagonal", seed=0, device=device)
    head = ShardedLinear(20_000, 1, device=device)
    optimizer = torch.optim.Adam([*core.parameters(), *head.parameters()], lr=1e-4)
    x, y = adding_problem(512, 50, seed=0)  # the same data on every rank
    x, y = x.to(device), y.to(device)
    for step in range(31):
        batch = slice(64 * (step % 8), 64 * (step % 8 + 1))
        loss = torch.nn.functional.mse_loss(head(core(x[batch])[0][:, -1]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 and dist.get_rank() == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    print(
        f"rank {dist.get_rank()}: units {core.start}:{core.stop} of {core.hidden_size}, {core.nnz:,} reservoir "
        f"entries, radius {core.radius:.6f} ({core.radius_measured_with})"
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
