"""A packed batch against the padded batch of the same shape: one train step (forward, a loss on
every valid output and on h_n, backward).

    python -m pytest benchmarks/test_packed.py --benchmark-json=.results/packed.json

``lengths``: ``full`` (every sequence T long: the packed path's pure overhead) and ``mixed`` (lengths
spread evenly over [T/2, T]: the packed path skips the padding).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from esgp_sparse import ESGP

B, T, I = 32, 100, 16


def lengths(kind: str) -> torch.Tensor:
    if kind == "full":
        return torch.full((B,), T)
    return torch.linspace(T // 2, T, B).round().long()[torch.randperm(B, generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("kind", ["full", "mixed"])
@pytest.mark.parametrize("hidden, gate", [(128, "dense"), (1024, "sparse")], ids=["H128-dense", "H1024-sparse"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_packed_against_padded(benchmark, layout, hidden, gate, kind):
    torch.manual_seed(0)
    model = ESGP(I, hidden, num_layers=2, sparsity=10 / hidden if hidden > 128 else 0.1, gate=gate, seed=0)
    x = torch.randn(B, T, I)
    n = lengths(kind)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        if layout == "packed":
            out, h_n = model(pack_padded_sequence(x, n, batch_first=True, enforce_sorted=False))
            loss = out.data.square().mean() + h_n.square().mean()
        else:
            out, h_n = model(x)
            loss = out.square().mean() + h_n.square().mean()
        loss.backward()

    step()
    benchmark.group = f"packed-H{hidden}-{kind}"
    benchmark.extra_info.update(layout=layout, hidden=hidden, gate=gate, lengths=kind, batch=B, steps=T)
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
