from __future__ import annotations

import subprocess
import sys

from esgp_sparse.__main__ import main


def test_main_trains_and_reports_the_facts(capsys):
    mse = main(["--steps", "250", "--hidden", "64", "--sparsity", "0.1", "--length", "20", "--batch", "16"])
    out = capsys.readouterr()
    assert "step" in out.err  # the progress bar
    for needle in ("test MSE", "nnz", "path", "measured spectral radius 0.9000", "peak RSS", "learned parameters"):
        assert needle in out.out, needle
    assert 0 <= mse < 0.05  # learned: predicting the mean scores about 0.17


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "esgp_sparse", "--help"], capture_output=True, text=True, check=True)
    assert "--seconds" in result.stdout and "--gate" in result.stdout
