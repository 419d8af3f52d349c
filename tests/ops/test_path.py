from __future__ import annotations

import pytest

from esgp_sparse.ops import choose_path
from esgp_sparse.ops.path import CROSSOVER


@pytest.mark.parametrize("device", ["cpu"])
def test_follows_the_measured_crossover(device):
    crossover = CROSSOVER[device]
    big = max(4096, crossover.min_hidden)
    assert choose_path(big, int(big * big * crossover.max_density), device) == "sparse"
    assert choose_path(big, int(big * big * crossover.max_density * 1.5) + 1, device) == "dense"
    assert choose_path(big, big * 10, device) == "sparse"
    small = crossover.min_hidden - 1
    assert choose_path(small, small, device) == "dense"


def test_unmeasured_devices_use_the_cpu_crossover():
    assert choose_path(4096, 4096 * 10, "cuda") == choose_path(4096, 4096 * 10, "cpu")
    assert choose_path(200, 4000, "cuda") == "dense"
    assert choose_path(64, 64, "xpu") == choose_path(64, 64, "cpu")
