"""Spectral radius of a sparse matrix: ARPACK on the CSR matrix, dense eigenvalues when tiny."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as sla

RadiusMethod = Literal["auto", "dense", "arpack", "power"]
RADIUS_METHODS: tuple[RadiusMethod, ...] = ("auto", "dense", "arpack", "power")

#: Up to this size ``method="auto"`` takes all eigenvalues of the dense matrix (well under 0.1 s).
DENSE_MAX_SIZE = 512
#: Up to this size ``method="auto"`` runs ARPACK (about 1 s at 10-20 connections per unit); above
#: it, the power iteration (ARPACK took 20-160 s at 1e5 units on a 2-core CPU, and did not finish
#: in 10 minutes at 1e6).
ARPACK_MAX_SIZE = 20_000

# ARPACK settings of the reference method. With scipy's defaults (k=1, ncv=20) ARPACK converged to
# an eigenvalue 1-2 % below the largest on 7 of 18 random reservoirs (n = 1000-3000, 3-100
# connections per row, scipy 1.17): their spectra crowd at the edge of a disc. Six Ritz values in a
# 64-vector Krylov space found the largest on all 18 within 2e-7; tests/init/test_radius.py checks
# this configuration against dense eigenvalues.
ARPACK_K = 6
ARPACK_NCV = 64
ARPACK_TOL = 1e-6
_START_SEED = 20251129

# The power iteration: the radius is the geometric mean growth per step over the last POWER_WINDOW
# of POWER_ITERATIONS steps. Against ARPACK at tol=1e-8 on 31 random reservoirs (1e4-1e5 units,
# 3-20 connections per unit, two of them with an eigenvalue 9-11 % outside the bulk's circle) its
# largest error was 0.47 % (an underestimate; benchmarks/test_radius.py measures it). A bulk estimate
# from the circular law missed those two outliers by 9-11 %: it is not used.
POWER_ITERATIONS = 500
POWER_WINDOW = 200


def _start_vector(n: int) -> np.ndarray:
    # Deterministic, so that the same matrix always gives the same radius (and reservoir) bitwise.
    return np.random.default_rng(_START_SEED).standard_normal(n)


def has_cycle(matrix: sp.csr_array | sp.csr_matrix) -> bool:
    """Whether the directed graph of the stored entries has a cycle (a self-loop counts).

    Without a cycle the matrix is nilpotent: its spectral radius is exactly zero.
    """
    n = matrix.shape[0]
    if n == 0 or matrix.nnz == 0:
        return False
    if np.any(matrix.diagonal() != 0):
        return True
    n_components, _ = csgraph.connected_components(matrix, directed=True, connection="strong")
    return n_components < n


def spectral_radius(
    matrix: sp.csr_array | sp.csr_matrix,
    method: RadiusMethod = "auto",
    *,
    tol: float = ARPACK_TOL,
    k: int = ARPACK_K,
    ncv: int = ARPACK_NCV,
    maxiter: int | None = None,
    iterations: int = POWER_ITERATIONS,
    window: int = POWER_WINDOW,
) -> float:
    """The largest absolute eigenvalue of a square sparse matrix.

    Args:
        matrix: square scipy sparse matrix (CSR preferred).
        method: ``"dense"`` takes every eigenvalue of the dense matrix (O(n^3), exact to rounding);
            ``"arpack"`` runs ``scipy.sparse.linalg.eigs`` on the sparse matrix itself with a
            deterministic start vector (the reference); ``"power"`` runs ``POWER_ITERATIONS``
            products with the sparse matrix (O(nnz) each; within 0.5 % of ARPACK on random
            reservoirs, see ``POWER_ITERATIONS``); ``"auto"`` is ``"dense"`` up to
            ``DENSE_MAX_SIZE`` units, ``"arpack"`` up to ``ARPACK_MAX_SIZE``, then ``"power"``.
        tol: ARPACK's relative accuracy of the Ritz values.
        k: how many eigenvalues of largest magnitude ARPACK computes (the largest is returned);
            more than one keeps it from settling on a neighbour of the largest.
        ncv: ARPACK's Krylov subspace size (capped at ``n - 1``).
        maxiter: ARPACK's restart limit (scipy's default when None).
        iterations, window: the power iteration's steps, and how many of the last it averages.

    Returns:
        The spectral radius as a Python float. A matrix whose graph has no cycle is nilpotent and
        returns exactly 0.0 without an eigensolver.

    Raises:
        ValueError: for a non-square matrix or an unknown method.
        RuntimeError: when ARPACK does not converge (the message says what to change).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"spectral_radius: expected a square matrix, got shape {matrix.shape}")
    if method not in RADIUS_METHODS:
        raise ValueError(f"spectral_radius: expected method in {RADIUS_METHODS}, got {method!r}")
    matrix = sp.csr_array(matrix)
    n = matrix.shape[0]
    if not has_cycle(matrix):
        return 0.0
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_SIZE else "arpack" if n <= ARPACK_MAX_SIZE else "power"
    if method == "dense" or n < 3:  # ARPACK needs k < n - 1
        return float(np.abs(np.linalg.eigvals(matrix.toarray())).max())
    if method == "power":
        return _power_radius(matrix, iterations, window)
    k = min(k, n - 2)
    ncv = min(max(ncv, 2 * k + 1), n - 1)
    try:
        eigenvalues = sla.eigs(
            matrix,
            k=k,
            which="LM",
            v0=_start_vector(n),
            tol=tol,
            ncv=ncv,
            maxiter=maxiter,
            return_eigenvectors=False,
        )
    except sla.ArpackNoConvergence as error:
        raise RuntimeError(
            f"spectral_radius: ARPACK did not converge on a {n} x {n} matrix with "
            f"{matrix.nnz} entries (tol={tol}, k={k}, ncv={ncv}, maxiter={maxiter}); "
            "raise maxiter or ncv, loosen tol, or use method='dense' if the matrix is small"
        ) from error
    return float(np.abs(eigenvalues).max())


def _power_radius(matrix: sp.csr_array, iterations: int, window: int) -> float:
    """Geometric mean of ``|A x| / |x|`` over the last ``window`` of ``iterations`` power steps."""
    if not 1 <= window <= iterations:
        raise ValueError(
            f"spectral_radius: expected 1 <= window <= iterations, got window={window}, iterations={iterations}"
        )
    x = _start_vector(matrix.shape[0])
    x /= np.linalg.norm(x)
    log_growth = np.empty(iterations)
    for i in range(iterations):
        y = matrix @ x
        norm = float(np.linalg.norm(y))
        if norm == 0.0:  # the start vector was annihilated: A^i x = 0
            return 0.0
        log_growth[i] = np.log(norm)
        x = y / norm
    return float(np.exp(log_growth[-window:].mean()))
