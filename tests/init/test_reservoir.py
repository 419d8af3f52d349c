from __future__ import annotations

import hashlib
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

import esgp_sparse.init.radius as radius
from esgp_sparse.init import (
    check_connections,
    derive_seed,
    has_cycle,
    index_dtype,
    make_rng,
    random_pattern,
    random_reservoir,
    reservoir_from_matrix,
)


def dense_radius(matrix) -> float:
    return float(np.abs(np.linalg.eigvals(matrix.toarray())).max())


def digest(r) -> str:
    h = hashlib.sha256()
    for a in (r.crow_indices, r.col_indices, r.values):
        h.update(a.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "hidden, density",
    [(37, 0.2), (101, 0.05), (500, 0.01), (700, 0.02), (1500, 0.005)],
    ids=lambda v: str(v),
)
def test_radius_of_the_matrix_actually_used(hidden, density):
    r = random_reservoir(hidden, density, 0.9, seed=3)
    actual = dense_radius(r.to_scipy())
    assert abs(actual / 0.9 - 1) <= 1e-3  # the stored matrix has the requested radius
    assert r.radius == pytest.approx(actual, rel=1e-9)  # and the one reported is measured on it
    assert r.radius_method == ("dense" if hidden <= 512 else "arpack") and 0 <= r.radius_error < 1e-6
    # The float32 copy a default module holds is the same matrix to float32 rounding.
    as_f32 = sp.csr_array(
        (r.values.astype(np.float32).astype(np.float64), r.col_indices, r.crow_indices), shape=(hidden, hidden)
    )
    assert abs(dense_radius(as_f32) / 0.9 - 1) <= 1e-3


def test_each_connection_is_present_with_probability_sparsity():
    hidden, density, draws = 20, 0.3, 2000
    counts = np.zeros((hidden, hidden))
    totals = []
    for seed in range(draws):
        crow, col = random_pattern(hidden, density, make_rng(seed))
        counts += sp.csr_array((np.ones(col.size), col, crow), shape=(hidden, hidden)).toarray()
        totals.append(col.size)
    frequency = counts / draws
    sd = np.sqrt(density * (1 - density) / draws)
    assert np.abs(frequency - density).max() < 5 * sd  # every entry, the diagonal included
    n = hidden * hidden  # nnz is Binomial(n, density)
    assert abs(np.mean(totals) - n * density) < 5 * np.sqrt(n * density * (1 - density) / draws)
    assert abs(np.var(totals) / (n * density * (1 - density)) - 1) < 0.2


def test_pattern_is_valid_csr_with_sorted_columns():
    crow, col = random_pattern(300, 0.05, make_rng(1))
    matrix = sp.csr_array((np.ones(col.size), col, crow), shape=(300, 300))
    matrix.check_format(full_check=True)
    assert matrix.has_sorted_indices and matrix.nnz == col.size
    assert crow.dtype == col.dtype == np.int32


def test_full_density_is_the_dense_pattern():
    crow, col = random_pattern(7, 1.0, make_rng(0))
    assert col.size == 49 and np.array_equal(col, np.tile(np.arange(7), 7))


def test_values_are_standard_normal_before_scaling():
    r = random_reservoir(1000, 0.05, 0.9, seed=0)
    standardized = r.values / r.values.std()
    assert abs(standardized.mean()) < 5 / np.sqrt(r.nnz)
    assert scipy.stats.kstest(standardized, "norm").pvalue > 1e-3


def traced_peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_construction_is_linear_in_nnz_not_quadratic_in_hidden():
    # 1e5 units: an H x H array would hold 1e10 entries (40 GB as float32).
    hidden, density = 100_000, 6e-5
    (crow, col), peak = traced_peak(lambda: random_pattern(hidden, density, make_rng(0)))
    assert 550_000 < col.size < 650_000
    assert peak < 64 * col.size, f"pattern peak {peak / 2**20:.0f} MiB for nnz={col.size}"
    # ARPACK adds its Krylov basis (ncv vectors of H float64) and k complex eigenvectors: linear in H.
    hidden = 20_000
    r, peak = traced_peak(lambda: random_reservoir(hidden, 6 / hidden, 0.9, seed=0, radius_method="arpack"))
    krylov = (2 * radius.ARPACK_NCV * 8 + 2 * radius.ARPACK_K * 16) * hidden
    assert peak < 64 * r.nnz + krylov, f"reservoir peak {peak / 2**20:.0f} MiB for nnz={r.nnz}"


def test_same_seed_is_bitwise_identical_different_seed_differs():
    a = random_reservoir(600, 0.02, 0.9, seed=7)
    b = random_reservoir(600, 0.02, 0.9, seed=7)
    c = random_reservoir(600, 0.02, 0.9, seed=8)
    d = random_reservoir(600, 0.02, 0.9, seed=7, key=(1,))
    assert digest(a) == digest(b)
    assert digest(a) != digest(c) and digest(a) != digest(d)


def test_same_seed_is_bitwise_identical_in_another_process():
    code = (
        "import hashlib; from esgp_sparse.init import random_reservoir\n"
        "r = random_reservoir(600, 0.02, 0.9, seed=7)\n"
        "h = hashlib.sha256()\n"
        "[h.update(a.tobytes()) for a in (r.crow_indices, r.col_indices, r.values)]\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == digest(random_reservoir(600, 0.02, 0.9, seed=7))


def test_derive_seed_is_stable_and_separates_keys():
    assert derive_seed(5, 0) == derive_seed(5, 0)
    assert len({derive_seed(5, 0), derive_seed(5, 1), derive_seed(6, 0)}) == 3
    assert 0 <= derive_seed(2**70, 3) < 2**63


def test_index_dtype():
    assert index_dtype(10, 100) is np.int32
    assert index_dtype(2**31 - 1, 2**31 - 1) is np.int32
    assert index_dtype(10, 2**31) is np.int64
    assert index_dtype(2**31, 10) is np.int64


def test_under_one_connection_per_unit_is_refused():
    with pytest.raises(
        ValueError, match=r"sparsity=0\.001 at hidden_size=500 .*nearly nilpotent.*sparsity >= 1 / hidden_size = 0\.002"
    ):
        random_reservoir(500, 0.001, 0.9, seed=0)
    check_connections(500, 0.002)  # exactly one per unit is allowed
    for size in (49, 98, 103, 107):  # (1 / size) * size rounds to 1 - 1.1e-16 at these sizes
        assert (1 / size) * size < 1.0
        check_connections(size, 1 / size)
    for size in (3, 9, 49):  # the value the message suggests is accepted (a 3-digit one was not)
        with pytest.raises(ValueError, match=r"at hidden_size=\d+ .*use sparsity >= 1 / hidden_size = ") as error:
            check_connections(size, 0.9999 / size)
        check_connections(size, float(str(error.value).rsplit("= ", 1)[1]))


def test_acyclic_pattern_is_refused_not_redrawn():
    def acyclic(seed):
        crow, col = random_pattern(2, 0.5, make_rng(seed))
        return not has_cycle(sp.csr_array((np.ones(col.size), col, crow), shape=(2, 2)))

    seed = next(s for s in range(100) if acyclic(s))  # about 3 draws in 16 of a 2 x 2 pattern
    with pytest.raises(ValueError, match=rf"seed={seed} .*has no cycle.*radius is 0"):
        random_reservoir(2, 0.5, 0.9, seed=seed)


def test_zero_target_radius_gives_zero_matrix():
    r = random_reservoir(50, 0.2, 0.0, seed=0)
    assert r.nnz > 0 and not r.values.any() and r.radius == 0.0 and r.radius_method == "zero"


def test_reservoir_from_matrix_keeps_values_and_measures():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((40, 40)) * (rng.random((40, 40)) < 0.2)
    r = reservoir_from_matrix(dense)
    assert np.array_equal(r.to_scipy().toarray(), dense)
    assert r.nnz == np.count_nonzero(dense)
    assert r.radius == pytest.approx(np.abs(np.linalg.eigvals(dense)).max(), rel=1e-9)
    assert r.radius_method == "dense" and r.radius_error < 1e-9
    assert reservoir_from_matrix(dense, radius_method="arpack").radius_method == "arpack"
    with pytest.raises(ValueError, match=r"expected a square matrix, got shape \(3, 4\)"):
        reservoir_from_matrix(np.ones((3, 4)))


@pytest.mark.parametrize("method", ["arpack", "power"])
def test_radius_of_the_stored_matrix_at_the_fast_methods(method):
    """The ARPACK and power-iteration ranges (above DENSE_MAX_SIZE and ARPACK_MAX_SIZE) asked for by
    name at a size that dense eigenvalues can still check."""
    r = random_reservoir(1200, 8 / 1200, 0.9, seed=4, radius_method=method)
    actual = dense_radius(r.to_scipy())
    assert abs(actual / 0.9 - 1) <= 1e-3
    assert r.radius == pytest.approx(actual, rel=max(r.radius_error, 1e-9))
    assert r.radius_method.startswith(method) and r.radius_error < 1e-4
