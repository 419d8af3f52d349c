"""The cost of sharding: ShardedESGP on 2 gloo ranks (loopback, one thread each) against ESGP in one
process (two threads), forward and train step, I=16, T=32, B=8, 10 connections per unit, diagonal
gate, a linear readout of the last state (10 outputs).

    python -m pytest benchmarks/test_distributed.py --benchmark-json=.results/distributed.json
    python -m pytest benchmarks/test_distributed.py -k 2000000 --benchmark-json=.results/distributed-2e6.json
    python -m pytest benchmarks/test_distributed.py -k "1000000 or 2000000" \
        --benchmark-json=.results/distributed-sequence.json   # after ShardedESGP became ESGP's sequence op

The sharded case's timed call sends "step" to both ranks and waits for both to finish (the pipe
round trip is well under a millisecond). Each rank also times its collectives (all-gather,
reduce-scatter, all-reduce, including any wait for the other rank): ``extra_info`` gives their
share of the step per rank (``communication_s``, mean over the timed rounds) beside the rest
(``compute_s``). The two ranks and the single process never run at once. gloo runs a
reduce-scatter as an all-reduce of the whole buffer (about twice the bytes of NCCL's), and both
ranks share this machine's 2 cores and memory bandwidth: the communication here is an upper figure.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import socket
import time

import pytest
import torch
from torch import nn

from esgp_sparse import ESGP

I, T, B, OUT, PER_UNIT = 16, 32, 8, 10, 10
WORLD = 2
SIZES = [
    pytest.param(100_000, marks=pytest.mark.quick),
    pytest.param(300_000),
    pytest.param(1_000_000),
    pytest.param(2_000_000),
]


def _rank(rank: int, port: int, hidden: int, pipe) -> None:
    import torch.distributed as dist

    from esgp_sparse.distributed import ShardedESGP, ShardedLinear
    from esgp_sparse.sharded import _Group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    spent = [0.0]
    for name in ("gather", "reduce_scatter", "all_reduce"):
        original = getattr(_Group, name)

        def timed(self, tensor, _original=original):
            start = time.perf_counter()
            try:
                return _original(self, tensor)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(_Group, name, timed)
    torch.manual_seed(0)
    start = time.perf_counter()
    core = ShardedESGP(I, hidden, sparsity=PER_UNIT / hidden, gate="diagonal", seed=0)
    head = ShardedLinear(hidden, OUT)
    build = time.perf_counter() - start
    optimizer = torch.optim.Adam([*core.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(B, T, I, generator=torch.Generator().manual_seed(1))
    pipe.send(dict(build_s=build, radius=core.radius, radius_error=core.radius_error, method=core.radius_measured_with))
    while (command := pipe.recv()) != "stop":
        spent[0] = 0.0
        start = time.perf_counter()
        if command == "forward":
            with torch.no_grad():
                core(x)
        else:
            loss = head(core(x)[0][:, -1]).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        pipe.send((time.perf_counter() - start, spent[0]))
    dist.destroy_process_group()


class Ranks:
    """WORLD processes holding one ShardedESGP and waiting for commands."""

    def __init__(self, hidden: int) -> None:
        context = multiprocessing.get_context("spawn")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.pipes, self.processes = [], []
        for rank in range(WORLD):
            here, there = context.Pipe()
            process = context.Process(target=_rank, args=(rank, port, hidden, there), daemon=True)
            process.start()
            self.pipes.append(here)
            self.processes.append(process)
        self.built = [pipe.recv() for pipe in self.pipes]
        self.times: list[list[tuple[float, float]]] = [[] for _ in range(WORLD)]

    def run(self, command: str) -> None:
        for pipe in self.pipes:
            pipe.send(command)
        for rank, pipe in enumerate(self.pipes):
            self.times[rank].append(pipe.recv())

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send("stop")
        for process in self.processes:
            process.join(timeout=60)


@pytest.fixture(scope="module")
def sharded_models():
    """The ranks of one size at a time, shared by its forward and train cases (a build at 1e6 units
    takes minutes); those of another size are stopped first, and all of them before a
    single-process case (two ranks of 1e6 units and idle ranks of smaller sizes once ran this
    machine out of memory)."""
    built: dict[int, Ranks] = {}

    def get(hidden: int | None) -> Ranks | None:
        for size in [size for size in built if size != hidden]:
            built.pop(size).close()
        if hidden is None:
            return None
        return built[hidden] if hidden in built else built.setdefault(hidden, Ranks(hidden))

    yield get
    get(None)


@functools.lru_cache(maxsize=1)  # one size at a time
def single(hidden: int) -> tuple[ESGP, nn.Linear, float]:
    torch.manual_seed(0)
    start = time.perf_counter()
    core = ESGP(I, hidden, sparsity=PER_UNIT / hidden, gate="diagonal", seed=0)
    return core, nn.Linear(hidden, OUT), time.perf_counter() - start


# Size by size: the sharded forward and train step, then the single process's.
ORDER = [("sharded", "forward"), ("sharded", "train"), ("single", "forward"), ("single", "train")]


@pytest.mark.parametrize("model, step", ORDER, ids=[f"{m}-{s}" for m, s in ORDER])
@pytest.mark.parametrize("hidden", SIZES)
def test_step(benchmark, sharded_models, hidden, model, step):
    if model == "sharded":
        sharded(benchmark, sharded_models(hidden), hidden, step)
    else:
        sharded_models(None)
        single_process(benchmark, hidden, step)


def sharded(benchmark, ranks: Ranks, hidden: int, step: str) -> None:
    ranks.run(step)  # warm-up, not counted
    for rank_times in ranks.times:
        rank_times.clear()
    benchmark.pedantic(ranks.run, args=(step,), rounds=5, iterations=1)
    per_rank = [
        dict(
            step_s=sum(t for t, _ in times) / len(times),
            communication_s=sum(c for _, c in times) / len(times),
            compute_s=sum(t - c for t, c in times) / len(times),
        )
        for times in ranks.times
    ]
    benchmark.extra_info.update(
        model="sharded",
        ranks=WORLD,
        backend="gloo",
        threads_per_rank=1,
        hidden=hidden,
        per_unit=PER_UNIT,
        batch=B,
        steps=T,
        step=step,
        build_s=max(b["build_s"] for b in ranks.built),
        radius=ranks.built[0]["radius"],
        radius_error=ranks.built[0]["radius_error"],
        radius_method=ranks.built[0]["method"],
        per_rank=per_rank,
        bytes_per_collective=B * hidden * 4,
    )


def single_process(benchmark, hidden: int, step: str) -> None:
    core, head, build = single(hidden)
    optimizer = torch.optim.Adam([*core.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(B, T, I, generator=torch.Generator().manual_seed(1))

    def forward() -> None:
        with torch.no_grad():
            core(x)

    def train() -> None:
        loss = head(core(x)[0][:, -1]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fn = forward if step == "forward" else train
    fn()  # warm-up
    benchmark.pedantic(fn, rounds=5, iterations=1)
    cell = core.cells[0]
    benchmark.extra_info.update(
        model="single",
        ranks=1,
        threads=torch.get_num_threads(),
        hidden=hidden,
        per_unit=PER_UNIT,
        batch=B,
        steps=T,
        step=step,
        build_s=build,
        radius=cell.radius,
        radius_error=cell.radius_error,
        radius_method=cell.radius_measured_with,
    )
