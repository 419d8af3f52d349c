from __future__ import annotations

import warnings

import pytest
import torch
from _testing import TOL, cuda
from torch import nn

from esgp_sparse import ESGP, ESGPCell

GATES = ["dense", "diagonal", "sparse", "lowrank"]


def loop_reference(model: ESGP, x: torch.Tensor, h_0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain loop the class docstring promises: cells stepped over time-major input."""
    seq = x.transpose(0, 1) if model.batch_first else x
    h = list(h_0)
    outputs = []
    for x_t in seq:
        for layer, cell in enumerate(model.cells):
            h[layer] = cell(x_t, h[layer])
            x_t = h[layer]
        outputs.append(x_t)
    out = torch.stack(outputs)
    return (out.transpose(0, 1) if model.batch_first else out), torch.stack(h)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "gate, path",
    [
        ("dense", "dense"),
        ("dense", "sparse"),
        ("diagonal", "sparse"),
        ("sparse", "dense"),
        ("sparse", "sparse"),
        ("lowrank", "dense"),
        ("lowrank", "sparse"),
    ],
)
def test_stack_equals_the_loop_of_cells_outputs_and_gradients(gate, path, batch_first):
    model = ESGP(
        3, 23, num_layers=3, sparsity=0.2, batch_first=batch_first, gate=gate, path=path, seed=4, dtype=torch.float64
    )
    T, B = 9, 2
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), dtype=torch.float64, requires_grad=True)
    h_0 = torch.randn(3, B, 23, dtype=torch.float64, requires_grad=True)
    out, h_n = model(x, h_0)
    ref_out, ref_h = loop_reference(model, x, h_0)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    torch.testing.assert_close(h_n, ref_h, **TOL[torch.float64])
    inputs = [x, h_0, *model.parameters()]
    g_out, g_h = torch.randn_like(out), torch.randn_like(h_n)
    got = torch.autograd.grad((out, h_n), inputs, (g_out, g_h))
    want = torch.autograd.grad((ref_out, ref_h), inputs, (g_out, g_h))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


def test_shapes_like_nn_gru():
    for batch_first in (True, False):
        model = ESGP(4, 16, num_layers=2, sparsity=0.2, batch_first=batch_first, seed=0)
        gru = nn.GRU(4, 16, num_layers=2, batch_first=batch_first)
        x = torch.randn((3, 7, 4) if batch_first else (7, 3, 4))
        out, h_n = model(x)
        ref_out, ref_h = gru(x)
        assert out.shape == ref_out.shape and h_n.shape == ref_h.shape
        assert out.is_contiguous()
        last = out[:, -1] if batch_first else out[-1]
        torch.testing.assert_close(h_n[-1], last)
        unbatched = x[0] if batch_first else x[:, 0]
        out_u, h_u = model(unbatched)
        assert out_u.shape == gru(unbatched)[0].shape and h_u.shape == (2, 16)
        torch.testing.assert_close(out_u, out[0] if batch_first else out[:, 0])
        torch.testing.assert_close(
            model(unbatched, h_u)[0],
            model(unbatched[None] if batch_first else unbatched[:, None], h_u[:, None])[0].squeeze(
                0 if batch_first else 1
            ),
        )


def test_h0_defaults_to_zeros_and_is_used():
    model = ESGP(2, 12, sparsity=0.3, seed=0)
    x = torch.randn(2, 5, 2)
    torch.testing.assert_close(model(x)[0], model(x, torch.zeros(1, 2, 12))[0])
    assert not torch.allclose(model(x)[0], model(x, torch.ones(1, 2, 12))[0])


def test_non_contiguous_input():
    model = ESGP(3, 20, sparsity=0.2, seed=0)
    x = torch.randn(6, 4, 3).transpose(0, 1)  # (4, 6, 3), not contiguous
    torch.testing.assert_close(model(x)[0], model(x.contiguous())[0])


def test_cells_are_a_module_list_with_own_reservoirs():
    model = ESGP(3, 40, num_layers=3, sparsity=0.1, seed=0)
    assert isinstance(model.cells, nn.ModuleList) and all(isinstance(c, ESGPCell) for c in model.cells)
    assert model.cells[0].input_size == 3 and model.cells[1].input_size == 40
    assert len({c.seed for c in model.cells}) == 3
    assert not torch.equal(model.cells[1].col_indices[:50], model.cells[2].col_indices[:50])


def test_dropout_between_layers_like_nn_gru():
    model = ESGP(3, 30, num_layers=2, sparsity=0.2, dropout=0.5, seed=0)
    x = torch.randn(2, 6, 3)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    torch.manual_seed(0)
    a = model(x)[0]
    assert not torch.allclose(a, model(x)[0])
    full = ESGP(3, 30, num_layers=2, sparsity=0.2, dropout=1.0, seed=0)
    # everything dropped: the second layer sees zeros, whatever the input
    torch.testing.assert_close(full(x)[0], full(torch.randn(2, 6, 3))[0])
    with pytest.warns(UserWarning, match=r"ESGP: dropout=0.3 acts between layers, and num_layers=1 has none"):
        ESGP(3, 30, sparsity=0.2, dropout=0.3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ESGP(3, 30, num_layers=2, sparsity=0.2, dropout=0.3, seed=0)


def test_seed_fixes_every_layer():
    a, b = ESGP(3, 40, num_layers=2, sparsity=0.1, seed=5), ESGP(3, 40, num_layers=2, sparsity=0.1, seed=5)
    for ca, cb in zip(a.cells, b.cells, strict=True):
        assert torch.equal(ca.values, cb.values) and torch.equal(ca.col_indices, cb.col_indices)
    torch.manual_seed(3)
    c = ESGP(3, 40, num_layers=2, sparsity=0.1)
    torch.manual_seed(3)
    d = ESGP(3, 40, num_layers=2, sparsity=0.1)
    assert c.seed == d.seed and torch.equal(c.state_dict()["cells.1.values"], d.state_dict()["cells.1.values"])


def test_state_dict_round_trip_and_double():
    source = ESGP(3, 60, num_layers=2, sparsity=0.1, gate="sparse", seed=1)
    target = ESGP(3, 60, num_layers=2, sparsity=0.1, gate="sparse", seed=2)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 5, 3)
    assert torch.equal(source(x)[0], target(x)[0])
    source.double()
    out, h_n = source(x.double())
    assert out.dtype == h_n.dtype == torch.float64
    torch.testing.assert_close(out.float(), target(x)[0], **TOL[torch.float32])


def test_whole_model_pickles_and_deep_copies(tmp_path):
    import copy

    model = ESGP(3, 300, num_layers=2, sparsity=0.02, gate="sparse", seed=0)
    x = torch.randn(2, 5, 3)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    twin = copy.deepcopy(model)
    for other in (loaded, twin):
        assert torch.equal(other(x)[0], model(x)[0])
        other.load_state_dict(model.state_dict())  # the post-load hook survives the round trip
        assert other.cells[1].path == "sparse"


def test_gradcheck_float64():
    model = ESGP(2, 10, num_layers=2, sparsity=0.3, gate="sparse", path="sparse", seed=0, dtype=torch.float64)
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 2, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: model(x, h), (x, h))


def test_checkpoint_gives_the_same_gradients():
    model = ESGP(3, 300, num_layers=2, sparsity=0.02, gate="sparse", seed=0, dtype=torch.float64)
    light = ESGP(3, 300, num_layers=2, sparsity=0.02, gate="sparse", seed=0, checkpoint=True, dtype=torch.float64)
    light.load_state_dict(model.state_dict())
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    grads = []
    for m in (model, light):
        out, h_n = m(x)
        (out.square().sum() + h_n.sum()).backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, **TOL[torch.float64])
    assert "checkpoint=True" in repr(light)


def test_no_grad_forward_matches():
    model = ESGP(3, 20, num_layers=2, sparsity=0.2, seed=0)
    x = torch.randn(2, 8, 3)
    with torch.no_grad():
        a = model(x)[0]
    torch.testing.assert_close(a, model(x)[0].detach())


BAD_ARGS = [
    (dict(num_layers=0), ValueError, r"expected num_layers >= 1, got num_layers=0"),
    (dict(batch_first=1), TypeError, r"expected batch_first to be a bool, got 1 \(int\)"),
    (dict(dropout=1.5), ValueError, r"expected dropout in \[0, 1\], got dropout=1.5"),
    (dict(compile="yes"), TypeError, r"expected compile to be a bool, got 'yes' \(str\)"),
    (dict(checkpoint=None), TypeError, r"expected checkpoint to be a bool, got None \(NoneType\)"),
    (dict(sparsity=0), ValueError, r"expected sparsity in \(0, 1\], got sparsity=0"),
    (dict(hidden_size=-3), ValueError, r"expected hidden_size >= 1, got hidden_size=-3"),
    (dict(gate="full"), ValueError, r"expected gate to be one of"),
    (dict(seed="0"), TypeError, r"expected seed to be a non-negative int or None"),
    (dict(hidden_size=50, sparsity=0.01), ValueError, r"expected at least 1 recurrent connection per unit"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGS, ids=[str(k) for k, _, _ in BAD_ARGS])
def test_bad_arguments(kwargs, error, match):
    args = dict(input_size=3, hidden_size=20, sparsity=0.2) | kwargs
    with pytest.raises(error, match="ESGP: " + match):
        ESGP(**args)


BAD_INPUTS = [
    (lambda: (torch.randn(2, 3, 4, 5), None), ValueError, r"expected input to be 2-D or 3-D, got shape \(2, 3, 4, 5\)"),
    (lambda: (torch.randn(2, 3, 5), None), ValueError, r"expected input.size\(-1\) == input_size=4, got 5"),
    (
        lambda: (torch.randn(2, 0, 4), None),
        ValueError,
        r"expected a non-empty sequence and batch, got input of shape \(2, 0, 4\)",
    ),
    (lambda: (torch.randn(2, 3, 4).double(), None), ValueError, r"expected input.dtype == torch.float32"),
    (lambda: (torch.randn(2, 3, 4).half(), None), ValueError, r"expected input.dtype == torch.float32"),
    (lambda: (torch.full((2, 3, 4), float("nan")), None), ValueError, r"expected finite values in input"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(2, 20)), ValueError, r"expected h_0 to be 3-D, got shape \(2, 20\)"),
    (
        lambda: (torch.randn(2, 3, 4), torch.randn(1, 2, 20)),
        ValueError,
        r"expected h_0 of shape \(2, 2, 20\), got \(1, 2, 20\)",
    ),
    (lambda: (torch.randn(3, 4), torch.randn(2, 1, 20)), ValueError, r"expected h_0 to be 2-D, got shape \(2, 1, 20\)"),
    (
        lambda: (torch.randn(2, 3, 4), torch.randn(2, 2, 20).double()),
        ValueError,
        r"expected h_0.dtype == torch.float32",
    ),
    (
        lambda: (torch.randn(2, 3, 4), torch.full((2, 2, 20), float("-inf"))),
        ValueError,
        r"expected finite values in h_0",
    ),
    (lambda: ((1, 2, 3), None), TypeError, r"expected input to be a torch.Tensor, got tuple"),
]


@pytest.mark.parametrize("make, error, match", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_inputs(make, error, match):
    model = ESGP(4, 20, num_layers=2, sparsity=0.2, seed=0)
    x, h = make()
    with pytest.raises(error, match="ESGP: " + match):
        model(x, h)


@cuda
def test_cuda_matches_cpu():
    model = ESGP(3, 600, num_layers=2, sparsity=0.01, gate="sparse", seed=0)
    x = torch.randn(4, 12, 3)
    out, h_n = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.cuda()
    out_c, h_c = model(x.cuda())
    out_c.square().sum().backward()
    torch.testing.assert_close(out_c.cpu(), out, rtol=1e-4, atol=1e-4)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad.cpu(), g, rtol=1e-3, atol=1e-4)


def test_compile_flag_does_not_shadow_module_compile():
    model = ESGP(3, 16, sparsity=0.25, seed=0, compile=True)
    assert model.compile_steps is True and callable(model.compile)
    assert "compile=True" in model.extra_repr()


def test_double_backward_says_what_to_do_instead():
    model = ESGP(3, 16, sparsity=0.25, seed=0)
    x = torch.randn(2, 4, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0].sum(), x, create_graph=False)
    assert grad.shape == x.shape
    (grad,) = torch.autograd.grad(model(x)[0].square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) is not supported.*ESGPCell"):
        grad.square().sum().backward()  # a gradient penalty


def test_hx_is_nn_grus_name_for_h_0():
    model = ESGP(3, 16, num_layers=2, sparsity=0.25, seed=0)
    x, h = torch.randn(2, 4, 3), torch.randn(2, 2, 16)
    torch.testing.assert_close(model(x, hx=h)[0], model(x, h)[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"ESGP: got both h_0 and hx"):
        model(x, h, hx=h)


@pytest.mark.parametrize("batch_first", [True, False])
def test_bidirectional_has_nn_grus_shapes_and_semantics(batch_first):
    torch.manual_seed(0)
    model = ESGP(3, 16, num_layers=2, sparsity=0.25, batch_first=batch_first, bidirectional=True, seed=4)
    gru = torch.nn.GRU(3, 16, num_layers=2, batch_first=batch_first, bidirectional=True)
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    h_0 = torch.randn(4, 2, 16)
    out, h_n = model(x, h_0)
    ref_out, ref_h = gru(x, h_0)
    assert out.shape == ref_out.shape and h_n.shape == ref_h.shape
    assert [cell.input_size for cell in model.cells] == [3, 3, 32, 32]
    assert len({cell.seed for cell in model.cells}) == 4  # each direction its own reservoir
    # Layer 0 by hand: forward cell over x, reverse cell over x backwards.
    time = 1 if batch_first else 0
    steps = [x.select(time, t) for t in range(5)]
    h, forward = h_0[0], []
    for x_t in steps:
        h = model.cells[0](x_t, h)
        forward.append(h)
    h, backward = h_0[1], []
    for x_t in reversed(steps):
        h = model.cells[1](x_t, h)
        backward.insert(0, h)
    layer0 = torch.stack([torch.cat(pair, -1) for pair in zip(forward, backward, strict=True)], time)
    h, top = h_0[2], []
    for t in range(5):
        h = model.cells[2](layer0.select(time, t), h)
        top.append(h)
    torch.testing.assert_close(out[..., :16], torch.stack(top, time), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_n[0], forward[-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_n[1], backward[0], rtol=1e-5, atol=1e-6)  # the reverse's last: step 0
    unidirectional = ESGP(3, 16, num_layers=2, sparsity=0.25, seed=4)
    assert torch.equal(unidirectional.cells[0].values, model.cells[0].values)  # the same forward reservoir
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(4, 2, 16\), got \(2, 2, 16\)"):
        model(x, torch.zeros(2, 2, 16))


def test_double_backward_is_never_silently_zero():
    """A loss linear in the output: its gradient needs no grad of its own, yet it depends on the
    parameters; differentiating it again must raise, not return zero."""
    model = ESGP(3, 16, sparsity=0.25, seed=0)
    x = torch.randn(2, 4, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) is not supported"):
        grad.square().sum().backward()
    # Asked for by name, the parameters are not reached: torch says so (an error all the same).
    (grad,) = torch.autograd.grad(model(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"not have been used in the graph"):
        torch.autograd.grad(grad.square().sum(), list(model.parameters()))


def test_autocast_takes_inputs_already_in_the_autocast_dtype():
    """As nn.GRU: an autocast op before the model hands it bfloat16."""
    model = ESGP(3, 16, sparsity=0.25, seed=0)
    projection = torch.nn.Linear(5, 3)
    x = torch.randn(2, 4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = projection(x)
        assert features.dtype == torch.bfloat16
        out, h_n = model(features)
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, _ = model(features.float())
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
