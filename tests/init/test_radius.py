from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from esgp_sparse.init import has_cycle, make_rng, random_pattern, spectral_radius


def random_matrix(hidden, per_row, seed):
    crow, col = random_pattern(hidden, per_row / hidden, make_rng(seed))
    values = make_rng(seed, 9).standard_normal(col.size)
    return sp.csr_array((values, col, crow), shape=(hidden, hidden))


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


def study_matrix(n, per_row, seed):
    """The matrices of the validation study in benchmarks/test_radius.py."""
    crow, col = random_pattern(n, per_row / n, make_rng(seed))
    return sp.csr_array((make_rng(seed, 5).standard_normal(col.size), col, crow), shape=(n, n))


@pytest.mark.parametrize("n, per_row, seed", [(10_000, 10, 0), (10_000, 3, 3)], ids=["bulk", "outlier"])
def test_power_iteration_is_within_half_a_percent_of_arpack(n, per_row, seed):
    # (10000, 3, 3) has an eigenvalue 9 % outside the bulk's circle: a bulk estimate misses it.
    matrix = study_matrix(n, per_row, seed)
    reference = spectral_radius(matrix, "arpack", tol=1e-8)
    circle = np.sqrt((matrix.data**2).sum() / n)
    if seed == 3:
        assert circle < 0.92 * reference
    assert spectral_radius(matrix, "power") == pytest.approx(reference, rel=5e-3)


def test_auto_switches_to_power_above_the_arpack_size(monkeypatch):
    import esgp_sparse.init.radius as radius

    matrix = random_matrix(600, 10, 0)
    assert spectral_radius(matrix) == spectral_radius(matrix, "arpack")
    monkeypatch.setattr(radius, "ARPACK_MAX_SIZE", 599)
    assert spectral_radius(matrix) == spectral_radius(matrix, "power")


def test_power_window_is_checked():
    with pytest.raises(ValueError, match=r"expected 1 <= window <= iterations, got window=20, iterations=10"):
        spectral_radius(random_matrix(600, 10, 0), "power", iterations=10, window=20)
