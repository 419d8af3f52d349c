from __future__ import annotations

import re
import subprocess
import sys

import pytest

from esgp_sparse.__main__ import main


def test_main_trains_and_reports_the_facts(capsys):
    mse = main(["--steps", "250", "--hidden", "64", "--sparsity", "0.1", "--length", "20", "--batch", "16"])
    out = capsys.readouterr()
    assert "250/250" in out.err  # the progress bar (tqdm) reached the end
    for needle in ("test MSE", "nnz", "path", "spectral radius", "peak RSS", "learned parameters"):
        assert needle in out.out, needle
    # 64 units: every eigenvalue of the dense matrix, so the radius is exact to rounding
    assert re.search(r"spectral radius rho=0\.9 \(dense, error \d", out.out), out.out
    assert 0 <= mse < 0.05  # learned: predicting the mean scores about 0.17


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: expected a finite value >= 1, got 0"),
        (["--seconds", "inf"], "argument --seconds: expected a finite value > 0, got inf"),
        (["--hidden", "ten"], "argument --hidden: expected an integer, got 'ten'"),
        (["--seconds", "-1"], "argument --seconds: expected a finite value > 0, got -1"),
        (["--lr", "nan"], "argument --lr: expected a finite value > 0, got nan"),
        (["--hidden", "16"], "expected at least 1 recurrent connection per unit"),  # 16 x 0.05 < 1
        (["--sparsity", "2"], "expected sparsity in"),
    ],
    ids=["steps-0", "seconds-inf", "hidden-not-int", "seconds-negative", "lr-nan", "too-sparse", "sparsity-above-1"],
)
def test_bad_values_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m esgp_sparse" in err and message in err


def test_module_entry_point_help_is_plain_text_with_every_option():
    result = subprocess.run([sys.executable, "-m", "esgp_sparse", "--help"], capture_output=True, text=True, check=True)
    assert "``" not in result.stdout and ":func:" not in result.stdout  # no Sphinx markup
    lines = result.stdout.splitlines()
    for option in ("--seconds", "--steps", "--hidden", "--sparsity", "--gate", "--length", "--batch", "--lr", "--seed"):
        (line,) = [line for line in lines if line.strip().startswith(option)]
        index = lines.index(line)
        helped = line.split(option, 1)[1].strip() or lines[index + 1].strip()
        assert len(helped) > 10, f"{option} has no help line"
