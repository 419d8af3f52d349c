"""Peak resident memory of one model in a fresh process: build it, run train steps (or forwards), and
report the process's peak RSS (VmHWM on Linux, which starts afresh at exec; ru_maxrss elsewhere),
which no earlier allocation can hide.

    python benchmarks/peak_memory.py                          # the million-unit case: H=1e6, 10/unit,
                                                              # diagonal gate, B=8, T=32, Adam, 2 steps
    python benchmarks/peak_memory.py --gate sparse --checkpoint
    python benchmarks/peak_memory.py --model original --hidden 4096 --sparsity 0.01 --input-size 64 \\
        --steps 100 --batch 32

Prints one JSON line. A train step is a linear readout at every step and an MSE (then an Adam step
unless ``--no-optimizer``); ``--forward`` runs forwards without autograd instead.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from esgp_sparse._memory import peak_rss_mib


def _rounded(mib: float | None) -> float | None:
    return None if mib is None else round(mib, 1)


def build(args: argparse.Namespace) -> torch.nn.Module:
    sparsity = args.sparsity if args.sparsity is not None else args.per_unit / args.hidden
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
    parser.add_argument("--gate", choices=("dense", "diagonal", "sparse"), default="diagonal")
    parser.add_argument("--path", choices=("auto", "dense", "sparse"), default="auto")
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=32, help="sequence length T")
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="train steps (or forwards) to run")
    parser.add_argument("--forward", action="store_true", help="forwards without autograd instead of train steps")
    parser.add_argument("--no-optimizer", dest="optimizer", action="store_false", help="no Adam step")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = peak_rss_mib()
    start = time.perf_counter()
    model = build(args)
    built = time.perf_counter() - start
    readout = torch.nn.Linear(args.hidden, 1)
    params = [*model.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3) if args.optimizer else None
    x = torch.randn(args.batch, args.steps, args.input_size)
    y = torch.randn(args.batch, args.steps, 1)
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
            torch.nn.functional.mse_loss(readout(output), y).backward()  # a linear readout at every step
            if optimizer is not None:
                optimizer.step()
        times.append(time.perf_counter() - start)
    info = dict(
        vars(args),
        build_s=round(built, 2),
        step_s=[round(t, 2) for t in times],
        peak_rss_mib=_rounded(peak_rss_mib()),
        import_rss_mib=_rounded(base),
    )
    if args.model == "esgp_sparse":
        cell = model.cells[0]
        info.update(
            nnz=cell.nnz,
            path_used=cell.path,
            radius=cell.radius,
            radius_error=cell.radius_error,
            radius_measured_with=cell.radius_measured_with,
        )
    print(json.dumps(info))


if __name__ == "__main__":
    main()
