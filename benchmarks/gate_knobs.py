"""What lets a scalable gate learn: input scaling, the gate's initial bias, the radius.

    # train (the tasks runner's data, loop and budget), variants name:input_scaling:gate_bias:radius
    python benchmarks/gate_knobs.py train --hidden 1024 --gate diagonal \\
        --variants base:1:none:0.9,in0.1:0.1:none:0.9,leak-2:1:-2:0.9,in0.1leak-2:0.1:-2:0.9,in0.1leak-2r.99:0.1:-2:0.99
    python benchmarks/gate_knobs.py train --hidden 1024 --gate diagonal \\
        --variants open3:1:3:0.9,open3in0.1:0.1:3:0.9,open5:1:5:0.9,open3in0.3:0.3:3:0.9
    # no training: the best ridge readout on the untrained model's states (how much memory it has)
    python benchmarks/gate_knobs.py ridge --hidden 1024

Delayed response (5,000 training sequences, T=100, delay 10), 10 connections per unit, seed 0. Each
line is one JSON record (``benchmarks/results/gate_knobs.jsonl``); a gate bias of "none" keeps
nn.Linear's uniform initialisation. The knobs are applied after the model is built, exactly as
``ESGP(..., input_scaling=, gate_bias_init=)`` applies them.
"""

from __future__ import annotations

import argparse
import json

import torch

from esgp_sparse import ESGP
from esgp_sparse.tasks import TASKS, SequenceModel, train

TASK = TASKS["delayed_response"]


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def build(hidden: int, gate: str, scale: float, bias: str, radius: float) -> ESGP:
    torch.manual_seed(0)
    core = ESGP(1, hidden, sparsity=min(1.0, 10 / hidden), spectral_radius=radius, gate=gate, seed=0)
    with torch.no_grad():
        core.cells[0].Win.weight.mul_(scale)
        if bias != "none":
            core.cells[0].gate.bias.fill_(float(bias))
    return core


def train_variants(args: argparse.Namespace, data: tuple) -> None:
    for spec in args.variants.split(","):
        name, scale, bias, radius = spec.split(":")
        core = build(args.hidden, args.gate, float(scale), bias, float(radius))
        model = SequenceModel(core, args.hidden, TASK.output_size)
        parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        row = train(model, TASK, data, 10, 0, f"{name} H={args.hidden}")
        emit(
            dict(
                study="train",
                hidden=args.hidden,
                gate=args.gate,
                variant=name,
                input_scale=float(scale),
                gate_bias=bias,
                radius=float(radius),
                parameters=parameters,
                final=row["curve"][-1],
                seconds=round(row["seconds"], 1),
                curve=row["curve"],
            )
        )


@torch.no_grad()
def ridge(args: argparse.Namespace, data: tuple) -> None:
    x, y, x_test, y_test = data
    scored, h = y.shape[1], args.hidden

    def features(core: ESGP, inputs: torch.Tensor) -> torch.Tensor:
        states = core(inputs)[0][:, -scored:].reshape(-1, h)
        return torch.cat([states, torch.ones(states.shape[0], 1)], 1).double()

    for label, gate_open in (("diagonal gate as drawn", False), ("gate held open (an ESN)", True)):
        for scale in (1.0, 0.1):
            core = build(h, "diagonal", scale, "none", 0.9)
            if gate_open:
                core.cells[0].gate.weight.zero_()
                core.cells[0].gate.bias.fill_(40.0)
            train_x, test_x = features(core, x[:2000]), features(core, x_test)
            gram, target = train_x.T @ train_x, train_x.T @ y[:2000].reshape(-1, 1).double()
            errors = []
            for lam in (1e-8, 1e-6, 1e-4, 1e-2, 1.0):
                w = torch.linalg.solve(gram + lam * torch.eye(h + 1, dtype=gram.dtype), target)
                errors.append(float(((test_x @ w - y_test.reshape(-1, 1).double()) ** 2).mean()))
            emit(dict(study="ridge", hidden=h, model=label, input_scale=scale, best_test_mse=min(errors)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", choices=("train", "ridge"))
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--gate", default="diagonal")
    parser.add_argument("--variants", default="base:1:none:0.9")
    args = parser.parse_args()
    data = TASK.data(False, 0, None)
    (train_variants if args.study == "train" else ridge)(args, data)


if __name__ == "__main__":
    main()
