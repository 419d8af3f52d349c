from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from _testing import complex_pair_matrix, outlier_matrix, random_matrix, study_matrix

from esgp_sparse.init import has_cycle, measure_radius, spectral_radius


@pytest.mark.parametrize("hidden, per_row", [(600, 3), (800, 10), (1000, 100), (2000, 5)], ids=lambda v: str(v))
@pytest.mark.parametrize("seed", [0, 1])
def test_arpack_finds_the_largest_eigenvalue(hidden, per_row, seed):
    # scipy's default ARPACK (k=1, ncv=20) settled on a smaller eigenvalue for several of these.
    matrix = random_matrix(hidden, per_row, seed)
    expected = np.abs(np.linalg.eigvals(matrix.toarray())).max()
    assert spectral_radius(matrix, "arpack") == pytest.approx(expected, rel=1e-6)


def test_auto_uses_dense_on_small_matrices_exactly():
    matrix = random_matrix(100, 5, 0)
    assert spectral_radius(matrix) == np.abs(np.linalg.eigvals(matrix.toarray())).max()


def test_deterministic():
    matrix = random_matrix(1200, 8, 3)
    assert spectral_radius(matrix, "arpack") == spectral_radius(matrix, "arpack")


def test_nilpotent_is_exactly_zero():
    strictly_lower = sp.csr_array(np.tril(np.ones((30, 30)), k=-1))
    assert not has_cycle(strictly_lower)
    assert spectral_radius(strictly_lower, "arpack") == 0.0
    assert has_cycle(sp.csr_array(np.diag([0.0, 2.0])))
    assert has_cycle(sp.csr_array(np.array([[0.0, 1.0], [1.0, 0.0]])))


def test_arpack_non_convergence_is_raised_with_a_hint():
    matrix = random_matrix(3000, 10, 0)
    with pytest.raises(RuntimeError, match=r"ARPACK did not converge on a 3000 x 3000 matrix.*raise maxiter or ncv"):
        spectral_radius(matrix, "arpack", tol=1e-14, ncv=8, k=1, maxiter=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"expected a square matrix, got shape \(2, 3\)"):
        spectral_radius(sp.csr_array(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"expected method in \('auto', 'dense', 'arpack', 'power'\), got 'lanczos'"):
        spectral_radius(sp.csr_array(np.ones((2, 2))), "lanczos")


@pytest.mark.parametrize(
    "make",
    [
        lambda: random_matrix(1500, 1.5, 0),
        lambda: random_matrix(1500, 10, 1),
        lambda: random_matrix(1500, 100, 2),
        lambda: complex_pair_matrix(1500, 0.01, 10),
        lambda: complex_pair_matrix(1500, 0.05, 100),
        lambda: outlier_matrix(1500, 10, 0.15),
    ],
    ids=["random-1.5", "random-10", "random-100", "pair-0.01-c10", "pair-0.05-c100", "outlier"],
)
def test_power_finds_the_dominant_eigenvalue(make):
    matrix = make()
    expected = np.abs(np.linalg.eigvals(matrix.toarray())).max()
    estimate = measure_radius(matrix, "power")
    assert estimate.method == "power+ritz"
    assert estimate.radius == pytest.approx(expected, rel=1e-4)
    assert estimate.error <= 1e-4
    # The reported pair really is one, to the stated residual.
    v = estimate.vector
    residual = np.linalg.norm(matrix @ v - (matrix @ v) @ v.conj() / (v @ v.conj()) * v) / np.linalg.norm(v)
    assert residual <= 2 * estimate.error * estimate.radius


def test_power_matches_arpack_on_a_large_random_reservoir():
    matrix = study_matrix(10_000, 10, 0)
    reference = measure_radius(matrix, "arpack", tol=1e-10)
    assert reference.method == "arpack" and reference.error < 1e-8
    assert spectral_radius(matrix, "power") == pytest.approx(reference.radius, rel=1e-4)


def test_power_without_a_converged_pair_warns_and_says_so(monkeypatch):
    import esgp_sparse.init.radius as radius

    monkeypatch.setattr(radius, "RITZ_SIZE", 2)  # too small a space to converge a pair
    matrix = random_matrix(1000, 10, 0)
    with pytest.warns(RuntimeWarning, match=r"no converged dominant eigenvalue in 200 steps on a 1000 x 1000"):
        estimate = measure_radius(matrix, "power", max_iterations=200)
    assert estimate.method == "power" and estimate.error >= 1e-3
    assert estimate.radius == pytest.approx(np.abs(np.linalg.eigvals(matrix.toarray())).max(), rel=5e-2)


def test_the_power_step_limit_is_longer_on_smaller_matrices(monkeypatch):
    import esgp_sparse.init.radius as radius

    limit = radius.default_max_iterations
    assert limit(1) == limit(radius.POWER_LONG_MAX_NNZ) == radius.POWER_LONG_ITERATIONS == 12_800
    assert limit(3_000_000) == 8_947  # 3x10^5 units at 10 per unit: the same work as 12,800 steps on 2^21
    assert limit(4 * radius.POWER_LONG_MAX_NNZ) == limit(10**8) == radius.POWER_MAX_ITERATIONS == 3_200
    steps = [limit(nnz) for nnz in range(radius.POWER_LONG_MAX_NNZ, 4 * radius.POWER_LONG_MAX_NNZ, 99_991)]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) > 50
    monkeypatch.setattr(radius, "RITZ_SIZE", 2)
    # one cycle through 300 units: every eigenvalue on the unit circle, so no pair converges
    matrix = sp.csr_array((np.ones(300), (np.arange(300), np.roll(np.arange(300), 1))))
    with pytest.warns(RuntimeWarning, match=r"no converged dominant eigenvalue in 12800 steps on a 300 x 300"):
        assert measure_radius(matrix, "power").products >= 12_800
    monkeypatch.setattr(radius, "POWER_WORK", 300 * 5_000)  # the limit follows the work: 5,000 steps
    with pytest.warns(RuntimeWarning, match=r"no converged dominant eigenvalue in 5000 steps on a 300 x 300"):
        measure_radius(matrix, "power")


def test_every_method_reports_its_residual():
    matrix = random_matrix(600, 10, 0)
    expected = np.abs(np.linalg.eigvals(matrix.toarray())).max()
    for method in ("dense", "arpack", "power"):
        estimate = measure_radius(matrix, method)
        assert estimate.radius == pytest.approx(expected, rel=1e-6), method
        assert estimate.method.startswith(method) and 0.0 <= estimate.error < 1e-4, method
    assert measure_radius(matrix, "dense").products == 0 < measure_radius(matrix, "arpack").products


def test_auto_switches_to_power_above_the_arpack_size(monkeypatch):
    import esgp_sparse.init.radius as radius

    matrix = random_matrix(600, 10, 0)
    assert measure_radius(matrix).method == "arpack"
    monkeypatch.setattr(radius, "ARPACK_MAX_SIZE", 599)
    assert measure_radius(matrix).method == "power+ritz"


def test_power_arguments_are_checked():
    matrix = random_matrix(600, 10, 0)
    with pytest.raises(ValueError, match=r"expected max_iterations >= 200, got max_iterations=10"):
        measure_radius(matrix, "power", max_iterations=10)
    with pytest.raises(ValueError, match=r"expected power_tol in \(0, 1\), got power_tol=0"):
        measure_radius(matrix, "power", power_tol=0)


@pytest.mark.parametrize("n", [3, 10, 22, 23])
def test_arpack_on_small_matrices(n):
    """k and ncv are capped to what ARPACK accepts (k + 1 < ncv <= n) however small the matrix."""
    matrix = random_matrix(n, min(3, n - 1), 1)
    expected = np.abs(np.linalg.eigvals(matrix.toarray())).max()
    estimate = measure_radius(matrix, "arpack")
    assert estimate.radius == pytest.approx(expected, rel=1e-8) and estimate.method in ("arpack", "acyclic")


def test_arpack_arguments_are_checked():
    matrix = random_matrix(600, 10, 0)
    with pytest.raises(ValueError, match=r"expected tol >= 0 \(0: machine precision\), got tol=-1"):
        measure_radius(matrix, "arpack", tol=-1)
    with pytest.raises(ValueError, match=r"expected k, ncv and maxiter >= 1, got k=0, ncv=64, maxiter=None"):
        measure_radius(matrix, "arpack", k=0, ncv=64)


def test_threads_split_the_product_and_change_nothing(monkeypatch):
    import esgp_sparse.init.radius as radius

    monkeypatch.setattr(radius, "THREADED_MIN_NNZ", 1)
    matrix = outlier_matrix(1500, 10, 0.15)
    x = np.random.default_rng(0).standard_normal(1500)
    with radius.threaded_rows(radius.whole_rows(matrix), 3) as rows:
        assert len(rows.parts) == 3 and sum(part.shape[0] for part in rows.parts) == 1500
        assert max(part.nnz for part in rows.parts) <= matrix.nnz / 3 + 15  # balanced by entries
        assert all(np.shares_memory(part.data, rows.matrix.data) for part in rows.parts)  # views, not copies
        np.testing.assert_array_equal(rows.times(x), matrix @ x)
    assert rows.pool is not None and rows.pool._shutdown  # the threads end with the block
    one, three = (measure_radius(matrix, "power", threads=count) for count in (1, 3))
    assert (one.radius, one.error, one.products) == (three.radius, three.error, three.products)
    np.testing.assert_array_equal(one.vector, three.vector)


def test_threads_argument_is_checked():
    matrix = random_matrix(600, 10, 0)
    with pytest.raises(ValueError, match=r"expected threads >= 1 or None \(every usable CPU\), got threads=0"):
        measure_radius(matrix, threads=0)
    with pytest.raises(TypeError, match=r"expected threads to be an int or None, got 2.0 \(float\)"):
        measure_radius(matrix, threads=2.0)
