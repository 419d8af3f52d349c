"""Peak resident memory of one model in a fresh process: build it, run train steps (or forwards), and
report the process's peak RSS (VmHWM on Linux, which starts afresh at exec; ru_maxrss elsewhere),
which no earlier allocation can hide; on Linux also the build's peak and the steps' own peak (the
high-water mark is reset after the build, so the latter starts from the built model's RSS).

    python benchmarks/peak_memory.py                          # the million-unit case: H=1e6, 10/unit,
                                                              # diagonal gate, B=8, T=32, Adam, 2 steps
    python benchmarks/peak_memory.py --gate sparse --checkpoint
    python benchmarks/peak_memory.py --model original --hidden 4096 --sparsity 0.01 --input-size 64 \\
        --steps 100 --batch 32

    python benchmarks/peak_memory.py --hidden 10000000 --per-unit 10 --checkpoint --batch 4 --readout last
    python benchmarks/peak_memory.py --hidden 10000000 --per-unit 10 --checkpoint --batch 4 --readout last \
        --ranks 2                                             # ShardedESGP on 2 gloo processes

Prints one JSON line. A train step is a linear readout (at every step, or of the last state with
``--readout last``) and an MSE (then an Adam step unless ``--no-optimizer``); ``--forward`` runs
forwards without autograd instead. With ``--ranks N`` the model is a ShardedESGP with a
ShardedLinear readout on N gloo processes of this machine, each of which reports its own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import torch

from esgp_sparse._memory import peak_rss_mib, reset_peak_rss


def _rounded(mib: float | None) -> float | None:
    return None if mib is None else round(mib, 1)


def build(args: argparse.Namespace) -> torch.nn.Module:
    sparsity = args.sparsity if args.sparsity is not None else args.per_unit / args.hidden
    if args.ranks > 1:
        from esgp_sparse.distributed import ShardedESGP

        return ShardedESGP(
            args.input_size, args.hidden, sparsity=sparsity, gate=args.gate, seed=0, checkpoint=args.checkpoint
        )
    if args.model == "esgp_sparse":
        from esgp_sparse import ESGP

        return ESGP(
            args.input_size,
            args.hidden,
            sparsity=sparsity,
            gate=args.gate,
            path=args.path,
            seed=0,
            checkpoint=args.checkpoint,
        )
    if args.model == "original":
        import esgp

        return esgp.ESGP(args.input_size, args.hidden, sparsity=sparsity)
    return {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[args.model](args.input_size, args.hidden, batch_first=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("esgp_sparse", "original", "gru", "lstm"), default="esgp_sparse")
    parser.add_argument("--hidden", type=int, default=1_000_000)
    parser.add_argument("--per-unit", type=float, default=10.0, help="recurrent connections per unit (default 10)")
    parser.add_argument("--sparsity", type=float, help="fraction of connections present (overrides --per-unit)")
    parser.add_argument("--gate", choices=("dense", "diagonal", "sparse", "lowrank"), default="diagonal")
    parser.add_argument("--path", choices=("auto", "dense", "sparse"), default="auto")
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32, help="sequence length T")
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="train steps (or forwards) to run")
    parser.add_argument("--forward", action="store_true", help="forwards without autograd instead of train steps")
    parser.add_argument("--no-optimizer", dest="optimizer", action="store_false", help="no Adam step")
    parser.add_argument("--readout", choices=("every", "last"), default="every", help="read out every step or the last")
    parser.add_argument("--ranks", type=int, default=1, help="shard the units over this many gloo processes")
    args = parser.parse_args()
    if args.ranks < 1:
        parser.error(f"argument --ranks: expected >= 1, got {args.ranks}")
    if args.ranks > 1 and (args.model != "esgp_sparse" or args.path != "auto" or args.gate == "dense"):
        parser.error("argument --ranks: shards esgp_sparse's ShardedESGP (gate diagonal or sparse, path auto) only")
    if args.ranks == 1:
        print(json.dumps(run(args)))
        return
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank, args=(args, port, queue), nprocs=args.ranks, join=True)
    ranks = sorted((queue.get() for _ in range(args.ranks)), key=lambda info: info["rank"])
    print(json.dumps(dict(vars(args), ranks=ranks)))


def _rank(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.ranks))
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    info = run(args)
    queue.put(dict(rank=rank, **{k: v for k, v in info.items() if k not in vars(args)}))
    dist.barrier()
    dist.destroy_process_group()


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    base = peak_rss_mib()
    start = time.perf_counter()
    model = build(args)
    built = time.perf_counter() - start
    build_peak = peak_rss_mib()
    # From here the peak covers the steps alone (and the readout's and optimizer's allocation).
    steps_apart = reset_peak_rss()
    if args.ranks > 1:
        from esgp_sparse.distributed import ShardedLinear

        readout: torch.nn.Module = ShardedLinear(args.hidden, 1)
    else:
        readout = torch.nn.Linear(args.hidden, 1)
    params = [*model.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3) if args.optimizer else None
    x = torch.randn(args.batch, args.steps, args.input_size)
    y = torch.randn(args.batch, args.steps if args.readout == "every" else 1, 1)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        if args.forward:
            with torch.no_grad():
                model(x)
        else:
            for p in params:
                p.grad = None
            output = model(x)[0]
            read = output if args.readout == "every" else output[:, -1:]
            torch.nn.functional.mse_loss(readout(read), y).backward()
            if optimizer is not None:
                optimizer.step()
        times.append(time.perf_counter() - start)
    info = dict(
        vars(args),
        build_s=round(built, 2),
        step_s=[round(t, 2) for t in times],
        peak_rss_mib=_rounded(max(build_peak or 0.0, peak_rss_mib() or 0.0) if steps_apart else peak_rss_mib()),
        build_peak_rss_mib=_rounded(build_peak),
        steps_peak_rss_mib=_rounded(peak_rss_mib()) if steps_apart else None,
        import_rss_mib=_rounded(base),
    )
    if args.ranks > 1:
        info.update(
            units=[model.start, model.stop],
            nnz=model.nnz,
            radius=model.radius,
            radius_error=model.radius_error,
            radius_measured_with=model.radius_measured_with,
        )
    elif args.model == "esgp_sparse":
        cell = model.cells[0]
        info.update(
            nnz=cell.nnz,
            path_used=cell.path,
            radius=cell.radius,
            radius_error=cell.radius_error,
            radius_measured_with=cell.radius_measured_with,
        )
    return info


if __name__ == "__main__":
    main()
