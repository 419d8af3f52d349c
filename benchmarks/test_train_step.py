"""One training step (forward, MSE on the last state, backward) against the original and nn.GRU/LSTM.

    python -m pytest benchmarks/test_train_step.py --benchmark-json=.results/train.json
    python benchmarks/ratios.py .results/train.json

Shapes: the original's sequential-MNIST setting (I=1, H=128, T=784, B=128, sparsity 0.1) and
I=64, H=1024, T=100, B=32, sparsity 0.01.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _bench import synchronize
from esgp_sparse import ESGP

esgp = pytest.importorskip("esgp", reason="the original package comes with the bench extra: pip install -e '.[bench]'")

SHAPES = {
    "smnist": dict(input_size=1, hidden=128, steps=784, batch=128, sparsity=0.1),
    "H1024": dict(input_size=64, hidden=1024, steps=100, batch=32, sparsity=0.01),
}
MODELS = ["esgp_sparse", "esgp_sparse-compiled", "original", "gru", "lstm"]


def build(model: str, s: dict) -> nn.Module:
    i, h = s["input_size"], s["hidden"]
    if model == "esgp_sparse":
        return ESGP(i, h, sparsity=s["sparsity"], seed=0)
    if model == "esgp_sparse-compiled":
        return ESGP(i, h, sparsity=s["sparsity"], seed=0, compile=True)
    if model == "original":
        return esgp.ESGP(i, h, sparsity=s["sparsity"])
    return {"gru": nn.GRU, "lstm": nn.LSTM}[model](i, h, batch_first=True)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_step(benchmark, shape, model):
    torch.manual_seed(0)
    s = SHAPES[shape]
    net = build(model, s)
    x = torch.randn(s["batch"], s["steps"], s["input_size"])
    target = torch.randn(s["batch"], s["hidden"])

    def step():
        net.zero_grad(set_to_none=True)
        out = net(x)[0]
        loss = nn.functional.mse_loss(out[:, -1], target)
        loss.backward()
        synchronize("cpu")
        return loss

    assert torch.isfinite(step())  # warm-up (and compilation), checked once before timing
    benchmark.group = f"train-step-{shape}"
    info = dict(model=model, shape=shape, **s)
    if isinstance(net, ESGP):
        info.update(path=net.cells[0].path, nnz=net.cells[0].nnz, gate=net.gate_type)
    benchmark.extra_info.update(info)
    benchmark.pedantic(step, rounds=5 if shape == "smnist" else 3, iterations=1, warmup_rounds=1)
