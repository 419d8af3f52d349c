"""Reservoir construction: random sparse patterns and spectral radii (numpy and scipy only)."""

from .radius import (
    ARPACK_MAX_SIZE,
    DENSE_MAX_SIZE,
    RADIUS_METHODS,
    RadiusEstimate,
    RadiusMethod,
    has_cycle,
    measure_radius,
    spectral_radius,
)
from .reservoir import (
    Reservoir,
    check_connections,
    derive_seed,
    index_dtype,
    make_rng,
    measured_on,
    random_pattern,
    random_reservoir,
    reservoir_from_matrix,
)

__all__ = [
    "ARPACK_MAX_SIZE",
    "DENSE_MAX_SIZE",
    "RADIUS_METHODS",
    "RadiusEstimate",
    "RadiusMethod",
    "Reservoir",
    "check_connections",
    "derive_seed",
    "has_cycle",
    "index_dtype",
    "make_rng",
    "measure_radius",
    "measured_on",
    "random_pattern",
    "random_reservoir",
    "reservoir_from_matrix",
    "spectral_radius",
]
