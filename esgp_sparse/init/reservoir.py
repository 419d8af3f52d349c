"""Random sparse reservoirs, built in O(nnz) time and memory."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, cast

import numpy as np
import scipy.sparse as sp

from .radius import (
    RadiusEstimate,
    RadiusMethod,
    Rows,
    _residual,
    has_cycle,
    measure_radius,
    measure_radius_rows,
    whole_rows,
)

_INT32_MAX = int(np.iinfo(np.int32).max)

#: A reservoir's rows are drawn in blocks of this many, block ``b`` from its own random stream
#: (``key + (0xB10C, b)``; block 0 from ``key`` itself), so that any range of rows, one process's share of
#: a sharded reservoir, can be drawn alone in O(its nnz) and equals those rows of the whole draw.
#: A reservoir of up to ``BLOCK_ROWS`` units is one block: the one esgp_sparse 0.1 drew.
BLOCK_ROWS = 65_536
# Tags the blocks' spawn keys, so that no block's stream is another key's stream (key + (1,) is the
# sparse gate's pattern, for one).
_BLOCK_TAG = 0xB10C


class Reservoir(NamedTuple):
    """A square sparse matrix in CSR form and the facts measured on it.

    Attributes:
        crow_indices: (n + 1,) int32 where every index fits, else int64.
        col_indices: (nnz,) same dtype, sorted within each row.
        values: (nnz,) float64.
        size: n, the number of rows and columns.
        radius: the spectral radius of the matrix these values make, measured on it.
        radius_error: the measurement's relative error estimate (see
            :class:`~esgp_sparse.init.RadiusEstimate`; NaN where unknown).
        radius_method: the method that measured it: ``"dense"``, ``"arpack"``, ``"power"``,
            ``"power+ritz"``, ``"acyclic"`` (no cycle: exactly 0), ``"zero"`` (all values 0) or
            ``"unknown"``. The radius is that of these float64 values: a module's float32 copy
            differs by its rounding (about 6e-8 relative per entry), a bfloat16 copy by about 4e-3.
    """

    crow_indices: np.ndarray
    col_indices: np.ndarray
    values: np.ndarray
    size: int
    radius: float
    radius_error: float = float("nan")
    radius_method: str = "unknown"

    @property
    def nnz(self) -> int:
        return int(self.col_indices.shape[0])

    def to_scipy(self) -> sp.csr_array:
        return sp.csr_array((self.values, self.col_indices, self.crow_indices), shape=(self.size, self.size))


def make_rng(seed: int, *key: int) -> np.random.Generator:
    """An independent PCG64 stream for ``seed`` and a spawn ``key`` (e.g. layer, role)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def derive_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for the sub-stream ``key`` of ``seed`` (e.g. one layer of a stack)."""
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0] >> np.uint64(1))


def index_dtype(size: int, nnz: int) -> type[np.integer]:
    """int32 when every CSR index fits in it (half the index memory), else int64."""
    return np.int32 if max(size, nnz) <= _INT32_MAX else np.int64


def random_pattern(size: int, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size x size`` CSR pattern, each entry present independently with prob. ``density``.

    The positions of the present entries in row-major order form a Bernoulli process, whose gaps
    are geometric: drawing the gaps costs O(nnz) time and memory, never O(size^2).

    Returns:
        ``(crow_indices, col_indices)``, both of ``index_dtype(size, nnz)``.
    """
    return _bernoulli_rows(size, size, density, rng)


def _bernoulli_rows(rows: int, size: int, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`random_pattern` for ``rows`` rows of ``size`` columns."""
    total = rows * size
    expected = total * density
    positions: list[np.ndarray] = []
    last = -1
    while last < total - 1:
        # Enough gaps to pass the end with overwhelming probability; loop in the rare other case.
        count = int(expected + 6.0 * math.sqrt(expected) + 16) if not positions else int(expected / 8 + 16)
        chunk = last + np.cumsum(rng.geometric(density, size=count))
        positions.append(chunk)
        last = int(chunk[-1])
    flat = np.concatenate(positions)
    flat = flat[: np.searchsorted(flat, total)]
    row, col = np.divmod(flat, size)
    dtype = index_dtype(size, flat.shape[0])
    crow = np.zeros(rows + 1, dtype=dtype)
    np.cumsum(np.bincount(row, minlength=rows), out=crow[1:])
    return crow, col.astype(dtype)


def drawn_rows(
    size: int,
    density: float,
    seed: int,
    key: tuple[int, ...] = (),
    rows: tuple[int, int] | None = None,
    *,
    values: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows ``start : stop`` (``rows``; all of them if None) of the random ``size x size`` pattern
    that ``(seed, key)`` gives, with its standard normal values if ``values``.

    The rows are drawn in blocks of :data:`BLOCK_ROWS`, each from its own stream (pattern, then
    values): only the blocks that ``rows`` touches are drawn, and the rows returned are those of the
    whole matrix, whatever range is asked for.

    Returns:
        ``(crow_indices, col_indices, values or None)``: the CSR arrays of the ``stop - start`` rows
        (``crow_indices`` from 0), indices of ``index_dtype(size, nnz)``, values float64.
    """
    start, stop = (0, size) if rows is None else rows
    if not 0 <= start <= stop <= size:
        raise ValueError(f"drawn_rows: expected 0 <= start <= stop <= size={size}, got rows={rows}")
    if start == stop:
        dtype = index_dtype(size, 0)
        return np.zeros(1, dtype), np.zeros(0, dtype), np.zeros(0) if values else None
    counts, cols, vals = [], [], []
    for block in range(start // BLOCK_ROWS, -(-stop // BLOCK_ROWS)):
        low = block * BLOCK_ROWS
        rng = make_rng(seed, *key) if block == 0 else make_rng(seed, *key, _BLOCK_TAG, block)
        crow, col = _bernoulli_rows(min(size, low + BLOCK_ROWS) - low, size, density, rng)
        drawn = rng.standard_normal((col.shape[0],)) if values else None
        first, last = max(start, low) - low, min(stop, low + BLOCK_ROWS) - low
        if first == 0 and last == crow.shape[0] - 1:  # the whole block: no copies
            counts.append(crow)
            cols.append(col)
            vals.append(drawn)
            continue
        kept = slice(int(crow[first]), int(crow[last]))
        counts.append(crow[first : last + 1] - crow[first])
        cols.append(col[kept])
        vals.append(None if drawn is None else drawn[kept])
    if len(counts) == 1:
        crow, col, value = counts[0], cols[0], vals[0]
        dtype = index_dtype(size, col.shape[0])
        return crow.astype(dtype, copy=False), col.astype(dtype, copy=False), value
    nnz = sum(col.shape[0] for col in cols)
    dtype = index_dtype(size, nnz)
    crow = np.zeros(stop - start + 1, dtype=dtype)
    np.cumsum(np.concatenate([np.diff(part) for part in counts]), out=crow[1:])
    col = np.concatenate(cols).astype(dtype, copy=False)
    return crow, col, np.concatenate(vals) if values else None  # type: ignore[arg-type]


def check_connections(size: int, sparsity: float, owner: str = "random_reservoir") -> None:
    """Refuse patterns with under one expected connection per unit: nearly nilpotent reservoirs.

    Such a graph has no giant cycle: its spectral radius comes from a few short loops (or is zero),
    so scaling it to a radius says nothing about the dynamics of the other units.
    """
    connections = sparsity * size
    # 1e-12: sparsity = 1 / size is one connection per unit, though (1 / 49) * 49 rounds to 1 - 1.1e-16.
    if connections < 1.0 - 1e-12:
        raise ValueError(
            f"{owner}: expected at least 1 recurrent connection per unit (sparsity * hidden_size >= 1), "
            f"got sparsity={sparsity} at hidden_size={size} ({connections:.3g} per unit): such a reservoir "
            f"is nearly nilpotent (spectral radius near zero); use sparsity >= 1 / hidden_size = {1.0 / size!r}"
        )


def random_reservoir(
    size: int,
    sparsity: float,
    radius: float,
    seed: int,
    *,
    key: tuple[int, ...] = (),
    radius_method: RadiusMethod = "auto",
    threads: int | None = None,
) -> Reservoir:
    """A random sparse reservoir whose spectral radius (of the matrix actually stored) is given.

    Each of the ``size^2`` connections is present with probability ``sparsity``; present values are
    standard normal (both drawn in blocks of :data:`BLOCK_ROWS` rows, see :func:`drawn_rows`), then
    scaled by ``radius / rho`` where ``rho`` is the radius measured on this very sparse matrix (see
    :func:`measure_radius`). The radius reported is then measured on the stored, scaled matrix
    (:func:`measured_on`), with its error estimate and method.

    Args:
        size: number of units n.
        sparsity: fraction of connections present, in (0, 1] (0.1 keeps 10 %).
        radius: target spectral radius, >= 0.
        seed: non-negative integer; the same ``(seed, key)`` gives a bitwise-identical reservoir.
        key: spawn key that separates streams drawn from one seed (layers, roles).
        radius_method: see :func:`spectral_radius`.
        threads: threads for the radius measurement's products (see :func:`measure_radius`).

    Raises:
        ValueError: under one expected connection per unit, or a drawn pattern without any cycle
            (radius exactly zero): nothing to scale. No silent redraw.
    """
    check_connections(size, sparsity)
    if not radius >= 0.0:
        raise ValueError(f"random_reservoir: expected radius >= 0, got radius={radius!r}")
    crow, col, drawn = drawn_rows(size, sparsity, seed, key, values=True)
    values = cast(np.ndarray, drawn)
    if radius == 0.0:
        return Reservoir(crow, col, np.zeros_like(values), size, 0.0, 0.0, "zero")
    matrix = sp.csr_array((values, col, crow), shape=(size, size))
    if not has_cycle(matrix):
        raise ValueError(
            f"random_reservoir: the pattern drawn for seed={seed} (hidden_size={size}, "
            f"sparsity={sparsity}, nnz={col.shape[0]}) has no cycle, so its spectral radius is 0 and "
            "cannot be scaled; use a higher sparsity or another seed"
        )
    estimate = measure_radius(matrix, radius_method, threads=threads)
    if not estimate.radius > 0.0:  # cycles whose products cancel: nilpotent all the same
        raise ValueError(
            f"random_reservoir: the matrix drawn for seed={seed} (hidden_size={size}, sparsity={sparsity}) has "
            "spectral radius 0, which cannot be scaled; use a higher sparsity or another seed"
        )
    scale = radius / estimate.radius
    values *= scale
    stored = measured_on(sp.csr_array((values, col, crow), shape=(size, size)), estimate.scaled(scale))
    return Reservoir(crow, col, values, size, stored.radius, stored.error, stored.method)


def measured_on(matrix: sp.csr_array | Rows, estimate: RadiusEstimate) -> RadiusEstimate:
    """``estimate`` (of another multiple of ``matrix``, already scaled) checked on ``matrix`` itself
    (a whole matrix, or one process's :class:`~esgp_sparse.init.Rows` of a distributed one).

    Where the estimate has an eigenvector ``v``, the radius is measured afresh on ``matrix``: the
    Rayleigh quotient ``|v^H A v| / |v|^2`` with its residual, one product. Without one (the power
    iteration's growth rate) the scaled estimate stands: that estimator is linear in the matrix,
    so running it on ``matrix`` would return the same figure to rounding.
    """
    if estimate.vector is None:
        return estimate
    rows = matrix if isinstance(matrix, Rows) else whole_rows(matrix)
    v = estimate.vector
    value = complex(rows.dot(v, rows.apply(v)) / rows.dot(v, v))
    return RadiusEstimate(abs(value), _residual(rows, value, v), estimate.method, estimate.products + 2, v)


class ReservoirRows(NamedTuple):
    """One process's rows ``start : start + m`` of a reservoir distributed by rows, and the facts
    measured on the whole (distributed) matrix; see :class:`Reservoir` for the attributes."""

    crow_indices: np.ndarray
    col_indices: np.ndarray
    values: np.ndarray
    size: int
    start: int
    radius: float
    radius_error: float = float("nan")
    radius_method: str = "unknown"


def random_reservoir_rows(
    size: int,
    sparsity: float,
    radius: float,
    seed: int,
    rows: tuple[int, int],
    gather: Callable[[np.ndarray], np.ndarray],
    total: Callable[[np.ndarray], np.ndarray],
    *,
    key: tuple[int, ...] = (),
    radius_method: RadiusMethod = "auto",
    threads: int | None = None,
) -> ReservoirRows:
    """Rows ``start : stop`` of :func:`random_reservoir`'s reservoir, drawn and scaled by one of the
    processes that hold it by rows; every process calls this at once, each with its own ``rows``
    (contiguous, in rank order, together every row), and the same other arguments.

    Each process draws only its rows (:func:`drawn_rows`, O(its nnz)); the radius is measured on the
    distributed matrix (:func:`~esgp_sparse.init.measure_radius_rows`, with ``gather`` and
    ``total`` the all-gather and all-reduce of :class:`~esgp_sparse.init.Rows`), scaled, and
    measured again on the stored rows. The values equal ``random_reservoir``'s to the rounding of
    the radius measured (the sums over processes run in another order). Without the whole graph
    there is no cycle test: a matrix whose radius measures 0 raises instead.
    """
    check_connections(size, sparsity)
    if not radius >= 0.0:
        raise ValueError(f"random_reservoir: expected radius >= 0, got radius={radius!r}")
    crow, col, drawn = drawn_rows(size, sparsity, seed, key, rows, values=True)
    values = cast(np.ndarray, drawn)
    if radius == 0.0:
        return ReservoirRows(crow, col, np.zeros_like(values), size, rows[0], 0.0, 0.0, "zero")
    local = Rows(sp.csr_array((values, col, crow), shape=(rows[1] - rows[0], size)), rows[0], gather, total)
    estimate = measure_radius_rows(local, radius_method, threads=threads)
    if not estimate.radius > 0.0:
        raise ValueError(
            f"random_reservoir: the matrix drawn for seed={seed} (hidden_size={size}, sparsity={sparsity}) has "
            "spectral radius 0, which cannot be scaled; use a higher sparsity or another seed"
        )
    scale = radius / estimate.radius
    values *= scale
    stored = measured_on(
        local._replace(matrix=sp.csr_array((values, col, crow), shape=local.matrix.shape)), estimate.scaled(scale)
    )
    return ReservoirRows(crow, col, values, size, rows[0], stored.radius, stored.error, stored.method)


def reservoir_from_matrix(
    matrix: np.ndarray | sp.sparray | sp.spmatrix, *, radius_method: RadiusMethod = "auto", threads: int | None = None
) -> Reservoir:
    """Take a given square matrix as-is (its zeros dropped, no rescaling) and measure its radius
    (:func:`measure_radius` with ``radius_method`` and ``threads``)."""
    csr = sp.csr_array(matrix, dtype=np.float64)
    if csr.ndim != 2 or csr.shape[0] != csr.shape[1]:
        raise ValueError(f"reservoir_from_matrix: expected a square matrix, got shape {csr.shape}")
    csr.eliminate_zeros()
    csr.sort_indices()
    dtype = index_dtype(csr.shape[0], csr.nnz)
    estimate = measure_radius(csr, radius_method, threads=threads)
    return Reservoir(
        csr.indptr.astype(dtype),
        csr.indices.astype(dtype),
        csr.data.copy(),
        csr.shape[0],
        estimate.radius,
        estimate.error,
        estimate.method,
    )
