"""Gaussian noise shared by the families with a variance per expert.

Gaussian (polynomial-mean) and ReLU experts differ in their means only; the
log density, sampling, the variance floor and the ``nu = nu_min + exp(u)``
parametrisation of the variances are these small pure functions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from moestat.kernels.experts import log_excess_variance as log_excess
from moestat.kernels.experts import normal_log_density

__all__ = [
    "normal_log_density",
    "normal_sample",
    "variance_score",
    "log_excess",
    "natural_variances",
    "variance_floor",
    "at_floor",
    "unbounded",
]


def normal_sample(
    mean: NDArray[np.float64],
    var: NDArray[np.float64],
    labels: NDArray[np.intp],
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """``y_t ~ N(mean[t, labels[t]], var[labels[t]])`` for each row."""
    centre = mean[np.arange(mean.shape[0]), labels]
    return centre + np.sqrt(var[labels]) * rng.standard_normal(len(labels))


def variance_score(
    resp: NDArray[np.float64],
    resid: NDArray[np.float64],
    var: NDArray[np.float64],
    var_floor: float,
) -> NDArray[np.float64]:
    """Gradient of ``sum r log f`` in ``u = log(nu - nu_min)``, one per expert."""
    grad_var = 0.5 * np.sum(resp * (resid * resid / var - 1.0), axis=0) / var
    return grad_var * (var - var_floor)


def natural_variances(
    theta: NDArray[np.float64], n_var: int, var_floor: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Reported values and ``d value / d theta`` of packed parameters.

    The last ``n_var`` entries are packed variances; the others are reported
    as they are.
    """
    values = theta.copy()
    jacobian = np.ones_like(theta)
    if n_var:
        excess = np.exp(theta[-n_var:])
        values[-n_var:] = var_floor + excess
        jacobian[-n_var:] = excess
    return values, jacobian


def variance_floor(y: NDArray[np.float64], reg_var: float) -> float:
    """The floor ``nu_min = reg_var * Var(y)`` on every variance."""
    return float(reg_var * np.var(y))


def at_floor(var: NDArray[np.float64], var_floor: float) -> NDArray[np.intp]:
    """Experts whose variance sits at a positive floor (a collapsing expert)."""
    if var_floor <= 0:
        return np.array([], dtype=np.intp)
    return np.flatnonzero(var <= var_floor * (1 + 1e-9))


def unbounded(size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Bounds ``(-inf, inf)`` for ``size`` packed parameters."""
    return np.full(size, -np.inf), np.full(size, np.inf)
