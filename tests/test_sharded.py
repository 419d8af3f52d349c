"""ShardedESGP and ShardedLinear on 2 gloo processes: the same model as one ESGP, split by units.

One spawn runs every case (each spawn costs a few seconds of imports): outputs, h_n, the radius
and every gradient of a loss on a ShardedLinear readout against ESGP + nn.Linear in float64, with
the dense, ARPACK and power radius methods, both scalable gates, checkpointing, an uneven split
(padding) and reservoirs drawn in several row blocks.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import socket
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _testing import kept_bytes
from torch import nn

import esgp_sparse.init.reservoir as reservoir_module
import esgp_sparse.ops.sequence as sequence_module
from esgp_sparse import ESGP
from esgp_sparse.distributed import ShardedESGP, ShardedLinear, shard_bounds
from esgp_sparse.init import drawn_rows, random_reservoir

WORLD = 2
DEFAULT_CHUNK_BYTES = sequence_module.CHUNK_BYTES
DEFAULT_BLOCK_ROWS = reservoir_module.BLOCK_ROWS
CASES = [
    # hidden, sparsity, gate, radius method, checkpoint, rows per block, initialisation knobs, and
    # the bytes of a work chunk (ops.sequence.CHUNK_BYTES; None: the default, one chunk here)
    (301, 0.05, "diagonal", "auto", False, None, {}, None),  # dense eigenvalues; 151 + 150 units (padded)
    (1000, 0.01, "sparse", "arpack", True, 128, dict(input_scaling=0.3, gate_bias_init=2.0), None),  # 8 blocks
    (3001, 0.004, "diagonal", "power", False, 256, dict(input_scaling=0.1, gate_bias_init=-1.0), None),
    (3001, 0.004, "sparse", "power", False, 256, {}, None),
    # Chunks of 3 steps of 151 x 5 float64 values: by its own 150 units the second rank would take 4
    # (and its collectives would no longer meet the first rank's).
    (301, 0.05, "sparse", "auto", True, None, {}, 24_000),
    (301, 0.05, "sparse", "auto", False, None, {}, 24_000),
]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _case(
    rank: int,
    hidden: int,
    sparsity: float,
    gate: str,
    method: str,
    checkpoint: bool,
    block,
    knobs: dict,
    chunk_bytes: int | None,
) -> dict:
    reservoir_module.BLOCK_ROWS = block or DEFAULT_BLOCK_ROWS
    sequence_module.CHUNK_BYTES = chunk_bytes or DEFAULT_CHUNK_BYTES
    kwargs = dict(sparsity=sparsity, spectral_radius=0.9, gate=gate, seed=11, radius_method=method, dtype=torch.float64)
    kwargs.update(knobs)
    torch.manual_seed(5)
    reference = ESGP(3, hidden, checkpoint=checkpoint, **kwargs)
    head_reference = nn.Linear(hidden, 4, dtype=torch.float64)
    torch.manual_seed(5)
    sharded = ShardedESGP(3, hidden, checkpoint=checkpoint, **kwargs)
    head = ShardedLinear(hidden, 4, dtype=torch.float64)
    units = slice(sharded.start, sharded.stop)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 3, generator=generator, dtype=torch.float64)
    h_0 = torch.randn(1, 5, hidden, generator=generator, dtype=torch.float64)
    out_ref, h_n_ref = reference(x, h_0)
    loss_ref = head_reference(out_ref[:, -1]).square().sum() + out_ref.sin().sum()
    loss_ref.backward()
    out, h_n = sharded(x, h_0[..., units].contiguous())
    loss = head(out[:, -1]).square().sum() + cast_total(out.sin().sum())
    loss.backward()

    # A deep copy (an EMA, say) runs in the same group, and a state_dict loads into it.
    clone = copy.deepcopy(sharded)
    with torch.no_grad():
        clone.values.mul_(2.0)
    clone.load_state_dict(sharded.state_dict())
    x.requires_grad_(True)
    clone_loss = clone(x, h_0[..., units].contiguous())[0].sin().sum()
    (clone_grad,) = torch.autograd.grad(cast_total(clone_loss), x)
    (x_grad_ref,) = torch.autograd.grad(reference(x, h_0)[0].sin().sum(), x)  # the whole gradient, on every rank
    # What the backward keeps: the reference's for this rank's units (states, candidates, gates,
    # reservoir, Win, gate), and the input x, which every rank holds whole.
    kept = kept_bytes(sharded, x, h_0[..., units].contiguous())
    kept_share = (kept_bytes(reference, x, h_0) - x.nbytes) * (sharded.stop - sharded.start) / hidden + x.nbytes
    cell = reference.cells[0]
    gate_weight = cell.gate.weight if gate == "diagonal" else cell.gate.weight_values
    offset = int(cell.gate.crow_indices[sharded.start]) if gate == "sparse" else sharded.start
    gate_units = slice(offset, offset + sharded.gate_weight.numel())
    errors = {
        "output": _relative(out, out_ref[..., units]),
        "h_n": _relative(h_n, h_n_ref[..., units]),
        "loss": abs(float(loss) - float(loss_ref)) / abs(float(loss_ref)),
        "Win": _relative(sharded.Win.grad, cell.Win.weight.grad[units]),
        "gate_weight": _relative(sharded.gate_weight.grad, gate_weight.grad[gate_units]),
        "gate_bias": _relative(sharded.gate_bias.grad, cell.gate.bias.grad[units]),
        "head_weight": _relative(head.weight.grad, head_reference.weight.grad[:, units]),
        "head_bias": _relative(head.bias.grad, head_reference.bias.grad),
        "radius": abs(sharded.radius - cell.radius) / cell.radius,
        "copy_input_grad": _relative(clone_grad, x_grad_ref),
    }
    errors["kept_bytes_over_the_share"] = max(0.0, kept / kept_share - 1.03)  # 3 %: uneven nnz, padding
    return dict(
        errors=errors,
        method=sharded.radius_measured_with,
        reference_method=cell.radius_measured_with,
        units=[sharded.start, sharded.stop],
        values_equal_to=_relative(
            sharded.values, cell.values[cell.crow_indices[sharded.start] : cell.crow_indices[sharded.stop]]
        ),
    )


def _autocast_case(rank: int) -> dict:
    """Float32 modules under torch.autocast(bfloat16): the sharded layer computes in bfloat16 (as
    ESGP does) and returns float32; its error against the float32 output, and its gradients' sizes."""
    reservoir_module.BLOCK_ROWS = DEFAULT_BLOCK_ROWS
    sequence_module.CHUNK_BYTES = DEFAULT_CHUNK_BYTES
    result = {}
    for gate in ("diagonal", "sparse"):
        torch.manual_seed(5)
        sharded = ShardedESGP(3, 301, sparsity=0.05, gate=gate, seed=11)
        x = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(0))
        exact = sharded(x)[0].detach()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sharded(x)[0]
        cast_total(out.sum()).backward()
        result[gate] = dict(
            dtype=str(out.dtype),
            error=_relative(out.detach(), exact),
            finite_grads=all(bool(p.grad.isfinite().all()) for p in sharded.parameters()),
        )
    return result


def cast_total(partial: torch.Tensor) -> torch.Tensor:
    """A sum over this rank's units made the sum over every unit (replicated), differentiably."""
    from esgp_sparse.sharded import _AllReduce, _Group

    return _AllReduce.apply(partial, _Group(None, WORLD, "test"))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # no deprecated collective (torch 2.13 renamed two)
            results = [_case(rank, *case) for case in CASES] + [_autocast_case(rank)]
    except BaseException:
        traceback.print_exc()
        os._exit(1)  # at once: mp.spawn then stops the other rank, which waits in a collective
    Path(out, f"{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[list[dict]]:
    out = tmp_path_factory.mktemp("sharded")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(out)), nprocs=WORLD, join=True)
    return [json.loads(Path(out, f"{rank}.json").read_text()) for rank in range(WORLD)]


CASE_IDS = [f"{c[0]}-{c[2]}-{c[3]}" + "-checkpoint" * c[4] + f"-chunks{c[7]}" * bool(c[7]) for c in CASES]


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_sharded_equals_the_single_process_model(results, index):
    hidden = CASES[index][0]
    bounds = shard_bounds(hidden, WORLD)
    for rank in range(WORLD):
        result = results[rank][index]
        assert result["units"] == bounds[rank : rank + 2]
        assert result["method"] == result["reference_method"]
        assert result["values_equal_to"] < 1e-12
        for name, error in result["errors"].items():
            assert error < 1e-10, (rank, name, error)


def test_under_autocast_the_layer_computes_in_bfloat16_and_returns_float32(results):
    for rank in range(WORLD):
        for gate, result in results[rank][len(CASES)].items():
            assert result["dtype"] == "torch.float32", (rank, gate)
            assert 1e-4 < result["error"] < 3e-2, (rank, gate, result["error"])  # bfloat16's rounding, no more
            assert result["finite_grads"], (rank, gate)


def test_the_methods_measured_are_those_asked_for(results):
    methods = [results[0][i]["method"] for i in range(len(CASES))]
    assert methods == ["dense", "arpack", "power+ritz", "power+ritz", "dense", "dense"]


def test_shard_bounds_are_contiguous_and_balanced():
    assert shard_bounds(10, 3) == [0, 4, 7, 10]
    assert shard_bounds(4, 4) == [0, 1, 2, 3, 4]
    for size, world in [(1000, 7), (65_537, 2)]:
        sizes = np.diff(shard_bounds(size, world))
        assert sizes.sum() == size and sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize(
    "rows", [(0, 1000), (0, 130), (100, 700), (256, 512), (999, 1000), (500, 500), (512, 512), (0, 0)]
)
def test_any_range_of_rows_is_drawn_as_in_the_whole_matrix(monkeypatch, rows):
    monkeypatch.setattr(reservoir_module, "BLOCK_ROWS", 128)
    crow, col, values = drawn_rows(1000, 0.02, 7, (0,), values=True)
    whole = sp.csr_array((values, col, crow), shape=(1000, 1000))
    crow_r, col_r, values_r = drawn_rows(1000, 0.02, 7, (0,), rows, values=True)
    part = sp.csr_array((values_r, col_r, crow_r), shape=(rows[1] - rows[0], 1000))
    assert (whole[rows[0] : rows[1]] != part).nnz == 0
    assert crow_r.dtype == col_r.dtype == np.int32


# Made by esgp_sparse 0.1.0 (commit 6682856): sha256 (first 16 hex digits) of the reservoir's CSR
# arrays and of the sparse gate's pattern, random_reservoir(n, 10 / n, 0.9, seed=3, key=(0,)) and
# random_pattern(n, 10 / n, make_rng(3, 1)), and the sums of the values and of their squares.
GOLDEN_0_1 = {
    500: ("d146617871a3db71", "21f1dd5d18e46e88", "69137a401ca5b1f9", -13.39737458755492, 402.6311972120958,
          "25e5124a02007211", "f22391a865bea5c5"),
    5000: ("645ed21caba5cd0c", "b1c3fe6eb49945ce", "e4136fb29cc611ed", 25.951184880048253, 3896.862692920654,
           "5fe3905f7120b196", "e1ad3551d283c813"),
    30000: ("699a6db75c409ac3", "f0eb0a1fa3fa5a10", "d6b4ff9600c0fe6f", -244.19720851286093, 23996.92642301992,
            "c25eda7098aa239b", "656eb2316238c27c"),
}  # fmt: skip


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("n", sorted(GOLDEN_0_1))
def test_a_reservoir_of_one_block_is_the_one_0_1_drew(n):
    crow, col, _, total, squares, gate_crow, gate_col = GOLDEN_0_1[n]
    drawn = random_reservoir(n, 10 / n, 0.9, 3, key=(0,))
    pattern = drawn_rows(n, 10 / n, 3, (1,))
    assert (_sha(drawn.crow_indices), _sha(drawn.col_indices)) == (crow, col)
    assert (_sha(pattern[0]), _sha(pattern[1])) == (gate_crow, gate_col)
    # The values are the same draws times a scale from an eigensolver, whose last bits depend on the
    # BLAS threads (and the power iteration's sums now run in another order): equal to rounding.
    assert float(drawn.values.sum()) == pytest.approx(total, rel=1e-12)
    assert float(np.square(drawn.values).sum()) == pytest.approx(squares, rel=1e-12)


def test_bad_arguments_are_refused_before_any_collective():
    with pytest.raises(
        ValueError, match=r"ShardedESGP: expected gate to be one of \('diagonal', 'sparse'\), got gate='dense'"
    ):
        ShardedESGP(3, 100, gate="dense")
    with pytest.raises(ValueError, match=r"expected num_layers=1 \(one sharded layer\), got num_layers=2"):
        ShardedESGP(3, 100, num_layers=2)
    with pytest.raises(ValueError, match=r"at least 1 recurrent connection per unit"):
        ShardedESGP(3, 100, sparsity=0.001)
    with pytest.raises(RuntimeError, match=r"ShardedESGP: needs an initialised torch.distributed process group"):
        ShardedESGP(3, 100)
    with pytest.raises(RuntimeError, match=r"ShardedLinear: needs an initialised torch.distributed process group"):
        ShardedLinear(100, 2)
