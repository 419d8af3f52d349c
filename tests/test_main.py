from __future__ import annotations

import subprocess
import sys

import torch

from esgp_sparse import datasets
from esgp_sparse.__main__ import main


def test_adding_problem():
    x, y = datasets.adding_problem(64, 30, seed=3)
    assert x.shape == (64, 30, 2) and y.shape == (64, 1)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((64,), 2.0))
    assert bool((markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all())
    torch.testing.assert_close(y[:, 0], (x[..., 0] * markers).sum(1))
    again = datasets.adding_problem(64, 30, seed=3)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, datasets.adding_problem(64, 30, seed=4)[0])


def test_main_trains_and_reports_the_facts(capsys):
    mse = main(["--seconds", "3", "--hidden", "64", "--sparsity", "0.1", "--length", "20", "--batch", "16"])
    out = capsys.readouterr()
    assert "step" in out.err  # the progress bar
    for needle in ("test MSE", "nnz", "path", "measured spectral radius 0.9000", "peak RSS", "learned parameters"):
        assert needle in out.out, needle
    assert 0 <= mse < 0.2


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "esgp_sparse", "--help"], capture_output=True, text=True, check=True)
    assert "--seconds" in result.stdout and "--gate" in result.stdout
