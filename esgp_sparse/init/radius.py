"""Spectral radius of a sparse matrix, with the method used and an error estimate.

Three methods: all eigenvalues of the dense matrix (small n), ARPACK on the CSR matrix (the
reference), and, for large n, power iteration with a convergence diagnostic and a Rayleigh-Ritz
refinement. Each reports how sure it is (:class:`RadiusEstimate`); none fails silently.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as sla

RadiusMethod = Literal["auto", "dense", "arpack", "power"]
RADIUS_METHODS: tuple[RadiusMethod, ...] = ("auto", "dense", "arpack", "power")

#: Up to this size ``method="auto"`` takes all eigenvalues of the dense matrix (well under 0.1 s).
DENSE_MAX_SIZE = 512
#: Up to this size ``method="auto"`` runs ARPACK; above it, the power iteration. ARPACK (tol=1e-10)
#: took 16-83 s at 1e5 units and 261 s at 2e5 on a 2-core CPU, the power iteration 1.4-15 s
#: (benchmarks/results/radius.json).
ARPACK_MAX_SIZE = 20_000

# ARPACK settings of the reference method. With scipy's defaults (k=1, ncv=20) ARPACK converged to
# an eigenvalue 1-2 % below the largest on 7 of 18 random reservoirs (n = 1000-3000, 3-100
# connections per row, scipy 1.17): their spectra crowd at the edge of a disc. Six Ritz values in a
# 64-vector Krylov space still missed the largest by 1.8e-3 at n=10,000 with 100 per row and by
# 4.9e-4 at n=30,000 with 10 per row (tol=1e-10; the power iteration's Rayleigh-Ritz pair, residual
# 7e-6 and 6e-13, was larger); 20 in a 200-vector space found it on both, agreeing with that pair to
# 7e-8 (benchmarks/radius_methods.py, benchmarks/results/radius_methods.jsonl).
# tests/init/test_radius.py checks this configuration against dense eigenvalues.
ARPACK_K = 20
ARPACK_NCV = 200
ARPACK_TOL = 1e-6
_START_SEED = 20251129

#: The relative accuracy the power iteration works to (see :func:`measure_radius`).
POWER_TOL = 1e-3
#: Power steps before the first Rayleigh-Ritz check (then at 4x, 16x, ... and at the end), and the most:
#: as many as cost ``POWER_WORK`` entry-products (12,800 steps on ``POWER_LONG_MAX_NNZ`` = 2^21 entries,
#: about 30 s on a 2-core CPU: benchmarks/results/radius_default.txt), but no fewer than
#: ``POWER_MAX_ITERATIONS`` and no more than ``POWER_LONG_ITERATIONS``: 12,800 up to 2^21 entries,
#: 3,200 from 2^23 (about 8.4x10^5 units at 10 per unit), between them ``POWER_WORK // nnz``.
#: A crowded edge needs them: on the 65,536-unit reservoir of ``ESGP(..., hidden_size=65536,
#: sparsity=10 / 65536, seed=0)`` no Ritz pair had converged after 3,200 steps (the growth rate was
#: 3.5e-4 low, with a warning), one did after 12,800, equal to ARPACK's at tol=1e-10
#: (``benchmarks/test_radius.py``, case ``model``); on the 3x10^5-unit reservoirs of
#: ``benchmarks/radius_crowded.py``'s seeds 1 and 2 (10 per unit) one converged after 6,400 steps,
#: not after 3,200 (``benchmarks/results/radius_crowded_300000.txt``).
POWER_FIRST_RITZ = 200
POWER_MAX_ITERATIONS = 3200
POWER_LONG_ITERATIONS = 12_800
POWER_LONG_MAX_NNZ = 1 << 21
POWER_WORK = POWER_LONG_ITERATIONS * POWER_LONG_MAX_NNZ
#: Size of the Krylov space of the Rayleigh-Ritz step, started from the power iterate. At 1e5 units
#: (10 per unit), after 3,200 power steps, 30 vectors left a residual of 4.1e-4 (not accepted) and
#: 100 one of 8.1e-7 (benchmarks/results/radius_methods.jsonl).
RITZ_SIZE = 100
#: Products of matrices with fewer entries run on one thread (see ``threads`` in
#: :func:`measure_radius`). Two threads against one, median of 21 products: 1.03x at 3.2e5 entries,
#: 1.29x at 6.4e5, 1.55x at 1.3e6, 1.78x at 1e7 (benchmarks/results/radius_threads.jsonl); from
#: 2^20 they pay clearly.
THREADED_MIN_NNZ = 1 << 20


class RadiusEstimate(NamedTuple):
    """A measured spectral radius and how far it can be trusted.

    Attributes:
        radius: the spectral radius (a float >= 0).
        error: a relative error estimate. Where the method returns an eigenpair (``"dense"``,
            ``"arpack"``, ``"power+ritz"``) it is the pair's relative residual
            ``|A v - lambda v| / (|lambda| |v|)``: ``radius`` is then exactly the modulus of an
            eigenvalue of a matrix within ``error * radius`` (2-norm) of ``A``. For ``"power"`` (no
            converged pair, which also warns) it is at least ``power_tol``, and at least the change
            of the growth rate between the last two quarters of the iteration.
        method: ``"dense"``, ``"arpack"``, ``"power"``, ``"power+ritz"``, or ``"acyclic"`` (no cycle in
            the graph: nilpotent, radius exactly 0).
        products: matrix-vector products spent (0 for ``"dense"`` and ``"acyclic"``).
        vector: the eigenvector of ``radius`` where the method has one, else None.
    """

    radius: float
    error: float
    method: str
    products: int
    vector: np.ndarray | None = None

    def scaled(self, factor: float) -> RadiusEstimate:
        """The estimate for ``factor * A`` (every method is linear in the matrix)."""
        return self._replace(radius=self.radius * abs(factor))


class Rows(NamedTuple):
    """Rows ``start : start + m`` of an ``n x n`` matrix, held by one of several processes, and how to
    combine them with the other processes' rows (the matrix distributed by rows).

    Attributes:
        matrix: the local rows, an (m, n) CSR array.
        start: the first row held here.
        gather: local (m, ...) array -> the (n, ...) array of every process's rows in row order,
            returned on every process (an all-gather).
        total: an array -> its elementwise sum over the processes, on every process (an all-reduce).

        parts, pool: row blocks of ``matrix`` (views of its arrays) whose products run at once on
            the threads of ``pool`` (scipy's product releases the GIL); ``()`` and None, the
            default: one product on the calling thread. See :func:`threaded_rows`.

    One process holding the whole matrix is ``Rows(matrix, 0, identity, identity)``
    (:func:`whole_rows`).
    """

    matrix: sp.csr_array
    start: int
    gather: Callable[[np.ndarray], np.ndarray]
    total: Callable[[np.ndarray], np.ndarray]
    parts: tuple[sp.csr_array, ...] = ()
    pool: Executor | None = None

    @property
    def size(self) -> int:
        return int(self.matrix.shape[1])

    def times(self, whole: np.ndarray) -> np.ndarray:
        """The local rows of ``A x`` for a real ``x`` given whole."""
        if self.pool is None or len(self.parts) < 2:
            return np.asarray(self.matrix @ whole)
        products = [self.pool.submit(part.__matmul__, whole) for part in self.parts]
        return np.concatenate([product.result() for product in products])

    def apply(self, local: np.ndarray) -> np.ndarray:
        """The local rows of ``A x`` for ``x`` given by its local rows."""
        if np.iscomplexobj(local):  # parts apart: scipy would copy the whole matrix to complex
            return self.apply(local.real) + 1j * self.apply(local.imag)
        return self.times(self.gather(local))

    def dot(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a^H b`` for vectors given by their local rows: the local products summed over the processes."""
        return self.total(np.asarray(a.conj().T @ b))

    def norm(self, local: np.ndarray) -> float:
        return float(np.sqrt(self.total(np.asarray(np.vdot(local, local).real))))


def _same(array: np.ndarray) -> np.ndarray:
    return array


def whole_rows(matrix: sp.csr_array) -> Rows:
    """The whole matrix held by one process."""
    return Rows(sp.csr_array(matrix), 0, _same, _same)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def threaded_rows(rows: Rows, threads: int | None) -> Iterator[Rows]:
    """``rows`` whose products run on ``threads`` threads (None: :func:`usable_cpus`), in row blocks
    of about equal nnz, for the duration of the ``with`` block (whose end stops the threads).

    One thread, or a matrix under :data:`THREADED_MIN_NNZ` entries, gives ``rows`` as they are. The
    products are the same to the last bit: each row's sum runs as in one product. ``threads`` is
    taken as checked (:func:`measure_radius_rows` checks it).
    """
    matrix = rows.matrix
    count = min(usable_cpus() if threads is None else threads, matrix.shape[0])
    if count < 2 or matrix.nnz < THREADED_MIN_NNZ:
        yield rows
        return
    indptr, m = matrix.indptr, matrix.shape[0]
    cuts = np.searchsorted(indptr, np.arange(1, count) * (matrix.nnz / count))
    bounds = np.unique(np.concatenate([[0], cuts.clip(0, m), [m]]))
    parts = []
    for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        low, high = int(indptr[first]), int(indptr[last])
        # Views set after construction: the constructor copies a view of under half its base.
        part = sp.csr_array((last - first, matrix.shape[1]), dtype=matrix.dtype)
        part.indptr = (indptr[first : last + 1] - low).astype(matrix.indices.dtype, copy=False)
        part.indices, part.data = matrix.indices[low:high], matrix.data[low:high]
        parts.append(part)
    with ThreadPoolExecutor(len(parts), thread_name_prefix="esgp_sparse-radius") as pool:
        yield rows._replace(parts=tuple(parts), pool=pool)


def _start_block(n: int, k: int) -> np.ndarray:
    # Deterministic, so that the same matrix always gives the same radius (and reservoir) bitwise.
    return np.random.default_rng(_START_SEED).standard_normal((k, n))


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
    return bool(n_components < n)


def _residual(rows: Rows, value: complex, vector: np.ndarray) -> float:
    """``|A v - value v| / (|value| |v|)``: the relative backward error of an eigenpair (``vector``
    given by its local rows)."""
    scale = abs(value) * rows.norm(vector)
    if scale == 0.0:
        return float("inf")
    return rows.norm(rows.apply(vector) - value * vector) / scale


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise TypeError(
            f"spectral_radius: expected threads to be an int or None, got {threads!r} ({type(threads).__name__})"
        )
    if threads is not None and threads < 1:
        raise ValueError(f"spectral_radius: expected threads >= 1 or None (every usable CPU), got threads={threads}")


def default_max_iterations(nnz: int) -> int:
    """The power iteration's step limit for a matrix of ``nnz`` entries (see :data:`POWER_WORK`)."""
    return min(POWER_LONG_ITERATIONS, max(POWER_MAX_ITERATIONS, POWER_WORK // max(nnz, 1)))


def _check_options(
    tol: float, k: int, ncv: int, maxiter: int | None, power_tol: float, max_iterations: int | None
) -> None:
    if not tol >= 0.0:
        raise ValueError(f"spectral_radius: expected tol >= 0 (0: machine precision), got tol={tol!r}")
    if k < 1 or ncv < 1 or (maxiter is not None and maxiter < 1):
        raise ValueError(f"spectral_radius: expected k, ncv and maxiter >= 1, got k={k}, ncv={ncv}, maxiter={maxiter}")
    if not 0.0 < power_tol < 1.0:
        raise ValueError(f"spectral_radius: expected power_tol in (0, 1), got power_tol={power_tol!r}")
    if max_iterations is not None and max_iterations < POWER_FIRST_RITZ:
        raise ValueError(
            f"spectral_radius: expected max_iterations >= {POWER_FIRST_RITZ}, got max_iterations={max_iterations}"
        )


def measure_radius(
    matrix: sp.csr_array | sp.csr_matrix,
    method: RadiusMethod = "auto",
    *,
    tol: float = ARPACK_TOL,
    k: int = ARPACK_K,
    ncv: int = ARPACK_NCV,
    maxiter: int | None = None,
    power_tol: float = POWER_TOL,
    max_iterations: int | None = None,
    threads: int | None = None,
) -> RadiusEstimate:
    """The largest absolute eigenvalue of a square sparse matrix, with its error estimate.

    Methods:
        ``"dense"``: every eigenvalue of the dense matrix (O(n^3); exact to rounding).
        ``"arpack"``: ``scipy.sparse.linalg.eigs`` on the sparse matrix itself (``k`` eigenvalues of
        largest magnitude in an ``ncv``-vector Krylov space, deterministic start vector): the
        reference.
        ``"power"``: power iteration (O(nnz) a step) to filter the spectrum towards its edge, and
        after ``POWER_FIRST_RITZ`` steps, 4 times as many, 16 times, ... and at ``max_iterations``, a
        Rayleigh-Ritz step: Arnoldi on a ``RITZ_SIZE``-vector Krylov space started from the
        iterate, whose Ritz pair of largest modulus is taken (``"power+ritz"``) once its residual
        is below ``power_tol / 10`` and it is at most ``5 power_tol`` below the growth rate. This
        resolves what plain power iteration cannot: a complex pair (on which the growth rate
        oscillates), an outlier, and a crowded edge (where the growth rate trails the largest
        eigenvalue for thousands of steps). Without a converged pair by ``max_iterations``, the
        growth rate over the last half of the steps is returned with ``error >= power_tol`` and a
        ``RuntimeWarning`` that gives the figure: never a silent miss.
        ``"auto"``: ``"dense"`` up to ``DENSE_MAX_SIZE`` units, ``"arpack"`` up to
        ``ARPACK_MAX_SIZE``, then ``"power"``.

    Args:
        matrix: square scipy sparse matrix (CSR preferred).
        method: see above.
        tol, k, ncv, maxiter: ARPACK's relative accuracy, number of eigenvalues (capped at
            ``n - 2``), Krylov space size (at least ``2k + 1``, at most ``n``) and restart limit
            (scipy's default when None).
        power_tol: the relative accuracy the power iteration works to.
        max_iterations: the power iteration's step limit; None: :func:`default_max_iterations` of
            the matrix's entries (12,800 steps up to 2^21 entries, 3,200 from 2^23, ``POWER_WORK // nnz``
            between).
        threads: threads that share each product of the power iteration (row blocks of equal nnz;
            None: every usable CPU). Any count gives the same estimate bitwise.

    Returns:
        A :class:`RadiusEstimate`. A matrix whose graph has no cycle is nilpotent: radius exactly 0.0,
        without an eigensolver.

    Raises:
        ValueError: for a non-square matrix, an unknown method or a bad tolerance.
        RuntimeError: when ARPACK does not converge (the message says what to change).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"spectral_radius: expected a square matrix, got shape {matrix.shape}")
    if method not in RADIUS_METHODS:
        raise ValueError(f"spectral_radius: expected method in {RADIUS_METHODS}, got {method!r}")
    _check_options(tol, k, ncv, maxiter, power_tol, max_iterations)
    _check_threads(threads)
    matrix = sp.csr_array(matrix)
    if not has_cycle(matrix):
        return RadiusEstimate(0.0, 0.0, "acyclic", 0)
    return measure_radius_rows(
        whole_rows(matrix),
        method,
        tol=tol,
        k=k,
        ncv=ncv,
        maxiter=maxiter,
        power_tol=power_tol,
        max_iterations=max_iterations,
        threads=threads,
    )


def measure_radius_rows(
    rows: Rows,
    method: RadiusMethod = "auto",
    *,
    tol: float = ARPACK_TOL,
    k: int = ARPACK_K,
    ncv: int = ARPACK_NCV,
    maxiter: int | None = None,
    power_tol: float = POWER_TOL,
    max_iterations: int | None = None,
    threads: int | None = None,
) -> RadiusEstimate:
    """:func:`measure_radius` on a matrix distributed by rows over processes (:class:`Rows`); every
    process calls it with the same arguments and gets the same estimate, whose ``vector`` holds
    the local rows of the eigenvector.

    The methods are those of :func:`measure_radius`, each on the distributed matrix: a product is
    the local rows times the all-gathered vector, an inner product an all-reduced sum. ``"dense"``
    gathers the whole matrix and ``"arpack"`` runs the same ARPACK on every process on whole
    vectors (both for the sizes ``"auto"`` gives them); the power iteration keeps its iterate whole
    on every process (one all-gather a step, no other collective but an all-reduce of the entries
    for its default step limit) and its Rayleigh-Ritz basis by rows. With one process
    (:func:`whole_rows`) this is :func:`measure_radius` exactly, less its cycle test, which needs
    the whole graph: here a nilpotent matrix shows as a radius of 0 (or a
    tiny one, with a warning, from the power iteration). ARPACK decides alone on every process
    when to stop, alike where the processes' BLAS round alike (one machine, one build); across
    machines whose BLAS differ, use ``"power"``, whose decisions are the first process's.
    ``threads`` share each process's local product in the power iteration (give each process its
    share of the CPUs).
    """
    if method not in RADIUS_METHODS:
        raise ValueError(f"spectral_radius: expected method in {RADIUS_METHODS}, got {method!r}")
    _check_options(tol, k, ncv, maxiter, power_tol, max_iterations)
    _check_threads(threads)
    n = rows.size
    local = slice(rows.start, rows.start + rows.matrix.shape[0])
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_SIZE else "arpack" if n <= ARPACK_MAX_SIZE else "power"
    if method == "dense" or n < 3:  # ARPACK needs k < n - 1
        dense = rows.gather(rows.matrix.toarray())
        values, vectors = la.eig(dense)
        i = int(np.argmax(np.abs(values)))
        v = vectors[:, i]
        scale = abs(values[i]) * float(np.linalg.norm(v))
        residual = float(np.linalg.norm(dense @ v - values[i] * v)) / scale if scale else float("inf")
        return RadiusEstimate(float(abs(values[i])), residual, "dense", 0, v[local])
    if method == "power":
        if max_iterations is None:  # the whole matrix's entries, the same on every process
            max_iterations = default_max_iterations(int(rows.total(np.asarray(rows.matrix.nnz))))
        return _power_radius(rows, power_tol, max_iterations, threads)
    k = min(k, n - 2)
    ncv = min(max(ncv, 2 * k + 1), n)  # scipy wants k + 1 < ncv <= n
    products = [0]

    def product(x: np.ndarray) -> np.ndarray:
        products[0] += 1
        return rows.gather(np.asarray(rows.matrix @ x))

    operator = sla.LinearOperator((n, n), matvec=product, dtype=rows.matrix.dtype)
    try:
        values, vectors = sla.eigs(
            operator, k=k, which="LM", v0=_start_block(n, 1)[0], tol=tol, ncv=ncv, maxiter=maxiter
        )
    except sla.ArpackNoConvergence as error:
        raise RuntimeError(
            f"spectral_radius: ARPACK did not converge on a {n} x {n} matrix with "
            f"{int(rows.total(np.asarray(rows.matrix.nnz)))} entries (tol={tol}, k={k}, ncv={ncv}, maxiter={maxiter}); "
            "raise maxiter or ncv, loosen tol, or use method='dense' if the matrix is small"
        ) from error
    i = int(np.argmax(np.abs(values)))
    vector = vectors[:, i][local]
    residual = _residual(rows, values[i], vector)
    return RadiusEstimate(float(abs(values[i])), residual, "arpack", products[0], vector)


def spectral_radius(matrix: sp.csr_array | sp.csr_matrix, method: RadiusMethod = "auto", **options: Any) -> float:
    """:func:`measure_radius`'s radius alone (a float); ``options`` pass on."""
    return measure_radius(matrix, method, **options).radius


def _ritz(rows: Rows, start: np.ndarray, size: int) -> tuple[complex, np.ndarray, float, int]:
    """The Ritz pair of largest modulus in the Krylov space of ``start`` (Arnoldi with DGKS
    reorthogonalisation), its relative residual, and the products spent."""
    size = min(size, rows.size - 1)
    basis = np.zeros((size + 1, start.shape[0]))
    hessenberg = np.zeros((size + 1, size))
    basis[0] = start / rows.norm(start)
    for j in range(size):
        w = rows.apply(basis[j])
        # classical Gram-Schmidt ... (the projections and |w|^2 summed over the processes at once)
        sums = rows.total(np.append(basis[: j + 1] @ w, w @ w))
        h, norm_before = sums[:-1], float(np.sqrt(sums[-1]))
        w -= h @ basis[: j + 1]
        hessenberg[: j + 1, j] = h
        norm = rows.norm(w)
        if norm < 0.7 * norm_before:  # ... repeated where cancellation lost accuracy (DGKS)
            h = rows.total(basis[: j + 1] @ w)
            w -= h @ basis[: j + 1]
            hessenberg[: j + 1, j] += h
            norm = rows.norm(w)
        hessenberg[j + 1, j] = norm
        if norm <= 1e-12 * norm_before:  # an invariant subspace: its Ritz values are eigenvalues
            size = j + 1
            break
        basis[j + 1] = w / norm
    values, vectors = la.eig(hessenberg[:size, :size])
    i = int(np.argmax(np.abs(values)))
    # Real and imaginary parts apart: a real basis times a complex vector would first copy the basis
    # to complex (16 bytes per unit and vector: 16 GB at 10^7 units).
    vector = basis[:size].T @ vectors[:, i].real + 1j * (basis[:size].T @ vectors[:, i].imag)
    return complex(values[i]), vector, _residual(rows, values[i], vector), size + 1


def _power_radius(rows: Rows, power_tol: float, max_iterations: int, threads: int | None) -> RadiusEstimate:
    """See :func:`measure_radius`, ``"power"``."""
    with threaded_rows(rows, threads) as threaded:
        return _power_steps(rows, threaded, power_tol, max_iterations)


def _norm(x: np.ndarray) -> float:
    # Not np.linalg.norm: after a BLAS call OpenBLAS's threads spin-wait for the next, on the cores
    # the product's threads need (the power steps then ran no faster on 2 threads than on 1).
    return math.sqrt(float(np.einsum("i,i->", x, x)))


def _power_steps(rows: Rows, threaded: Rows, power_tol: float, max_iterations: int) -> RadiusEstimate:
    """The power iteration, its products on ``threaded``'s threads; the Rayleigh-Ritz steps on
    ``rows``, single-threaded products beside BLAS's own threads (which their Gram-Schmidt uses)."""
    # The iterate is kept whole on every process: one all-gather a step and no other collective.
    x = _start_block(rows.size, 1)[0]
    x /= _norm(x)
    log_growth = np.empty(max_iterations)
    next_ritz = POWER_FIRST_RITZ
    products = 0
    estimate, diagnostic = float("nan"), float("inf")
    for step in range(max_iterations):
        image = rows.gather(threaded.times(x))
        norm = _norm(image)
        if norm == 0.0:  # A^i x = 0 for a random x: only a nilpotent matrix does that
            return RadiusEstimate(0.0, 0.0, "power", products + step + 1)
        log_growth[step] = np.log(norm)
        x = image / norm
        done = step + 1
        if done != next_ritz and done != max_iterations:
            continue
        next_ritz *= 4
        # The growth rate over the second half, and how far it moved from the quarter before.
        estimate = float(np.exp(log_growth[done // 2 : done].mean()))
        diagnostic = float(np.expm1(abs(np.log(estimate) - log_growth[done // 4 : done // 2].mean())))
        value, vector, residual, spent = _ritz(rows, x[rows.start : rows.start + rows.matrix.shape[0]], RITZ_SIZE)
        products += spent
        # A converged eigenvalue no smaller than the growth rate allows (the growth rate swings by
        # up to 0.9 % around a non-normal complex pair, and trails a crowded edge): the dominant one.
        accept = residual <= power_tol / 10 and abs(value) >= estimate * (1 - 5 * power_tol)
        # Every process takes the first one's decision and value (BLAS on other machines could round
        # them apart, and a process that stopped alone would leave the others in a collective).
        accept, radius = rows.total(np.array([float(accept), abs(value)]) if rows.start == 0 else np.zeros(2))
        if accept > 0:
            return RadiusEstimate(float(radius), residual, "power+ritz", products + done, vector)
    warnings.warn(
        f"spectral_radius: the power iteration found no converged dominant eigenvalue in {max_iterations} steps on a "
        f"{rows.size} x {rows.size} matrix; its growth rate {estimate:.6g} (relative change "
        f"{diagnostic:.2g} over the last quarter) is a lower estimate that can miss a crowded edge by more; "
        "use method='arpack', or raise max_iterations",
        RuntimeWarning,
        stacklevel=5,  # the caller of measure_radius
    )
    return RadiusEstimate(estimate, max(diagnostic, power_tol), "power", products + max_iterations)
