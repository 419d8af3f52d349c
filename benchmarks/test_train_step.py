"""One training step (forward, MSE on the last state, backward) against the original and nn.GRU/LSTM.

    python -m pytest benchmarks/test_train_step.py --benchmark-json=.results/train.json
    python benchmarks/report.py .results/train.json

Shapes: the original's sequential-MNIST setting (I=1, H=128, T=784, B=128, sparsity 0.1), and
I=64, T=100, B=32, sparsity 0.01 at H=1024 and H=4096. ``esgp_sparse`` is the published model (dense
gate, ``path="auto"``); ``esgp_sparse-sparse-gate`` swaps in the learned sparse gate; ``-bf16``
is the same model in bfloat16 (inputs and target too), ``-compiled`` with ``compile=True``. H256 is
the sMNIST setting at H=256, B=64 (the sparse path: CSR from H=256 at this density).
"""

from __future__ import annotations

import pytest
import torch
from _bench import cuda_peak_mib, devices, peak_rss_mib, synchronize
from torch import nn

from esgp_sparse import ESGP

esgp = pytest.importorskip("esgp", reason="the original package comes with the bench extra: pip install -e '.[bench]'")

SHAPES = {
    "smnist": dict(input_size=1, hidden=128, steps=784, batch=128, sparsity=0.1),
    "H256": dict(input_size=1, hidden=256, steps=784, batch=64, sparsity=0.1),
    "H1024": dict(input_size=64, hidden=1024, steps=100, batch=32, sparsity=0.01),
    "H4096": dict(input_size=64, hidden=4096, steps=100, batch=32, sparsity=0.01),
}
MODELS = [
    "esgp_sparse",
    "esgp_sparse-sparse-gate",
    "esgp_sparse-compiled",
    "esgp_sparse-sparse-gate-compiled",
    "original",
    "gru",
    "lstm",
]
QUICK = {
    ("smnist", "esgp_sparse"),
    ("smnist", "original"),
    ("smnist", "gru"),
    ("H1024", "esgp_sparse"),
    ("H1024", "esgp_sparse-sparse-gate"),
    ("H1024", "original"),
    ("H1024", "gru"),
}


def build(model: str, s: dict) -> nn.Module:
    i, h = s["input_size"], s["hidden"]
    if model in BF16:
        return build(model.removesuffix("-bf16"), s).to(torch.bfloat16)
    if model == "esgp_sparse":
        return ESGP(i, h, sparsity=s["sparsity"], seed=0)
    if model == "esgp_sparse-sparse-gate":
        return ESGP(i, h, sparsity=s["sparsity"], seed=0, gate="sparse")
    if model == "esgp_sparse-compiled":
        return ESGP(i, h, sparsity=s["sparsity"], seed=0, compile=True)
    if model == "esgp_sparse-sparse-gate-compiled":
        return ESGP(i, h, sparsity=s["sparsity"], seed=0, gate="sparse", compile=True)
    if model == "original":
        return esgp.ESGP(i, h, sparsity=s["sparsity"])
    return {"gru": nn.GRU, "lstm": nn.LSTM}[model](i, h, batch_first=True)


BF16 = ["esgp_sparse-bf16", "esgp_sparse-sparse-gate-bf16"]
CASES = [(s, m) for s in SHAPES for m in MODELS] + [
    ("smnist", "esgp_sparse-bf16"),
    ("smnist", "esgp_sparse-sparse-gate-bf16"),
    ("H1024", "esgp_sparse-sparse-gate-bf16"),
    ("H4096", "esgp_sparse-sparse-gate-bf16"),
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize(
    "shape, model", [pytest.param(*c, marks=pytest.mark.quick) if c in QUICK else c for c in CASES]
)
def test_train_step(benchmark, shape, model, device):
    torch.manual_seed(0)
    s = SHAPES[shape]
    net = build(model, s).to(device)
    dtype = torch.bfloat16 if model in BF16 else torch.float32
    x = torch.randn(s["batch"], s["steps"], s["input_size"], device=device, dtype=dtype)
    target = torch.randn(s["batch"], s["hidden"], device=device, dtype=dtype)

    def step():
        net.zero_grad(set_to_none=True)
        out = net(x)[0]
        loss = nn.functional.mse_loss(out[:, -1], target)
        loss.backward()
        synchronize(device)
        return loss

    assert torch.isfinite(step())  # warm-up (and compilation), checked once before timing
    benchmark.group = f"train-step-{shape}" + ("" if device == "cpu" else f"-{device}")
    info = dict(model=model, shape=shape, device=device, dtype=str(dtype), **s)
    if isinstance(net, ESGP):
        info.update(path=net.cells[0].path, nnz=net.cells[0].nnz, gate=net.gate_type)
    if device == "cuda":
        info.update(peak_mib=cuda_peak_mib(step))
    elif (
        not model.endswith("-compiled") and model not in BF16
    ):  # a fresh process builds and steps the same model (no compile)
        kind = {"esgp_sparse": ("esgp_sparse", "dense"), "esgp_sparse-sparse-gate": ("esgp_sparse", "sparse")}
        name, gate = kind.get(model, (model, None))
        info.update(
            peak_mib=peak_rss_mib(
                model=name,
                gate=gate,
                hidden=s["hidden"],
                sparsity=s["sparsity"],
                input_size=s["input_size"],
                steps=s["steps"],
                batch=s["batch"],
                repeats=1,
                no_optimizer=True,
            )
        )
    benchmark.extra_info.update(info)
    rounds = {"smnist": 5, "H256": 5, "H1024": 3, "H4096": 2}[shape]
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
