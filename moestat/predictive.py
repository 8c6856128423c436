"""The predictive distribution of a fitted mixture of experts.

At each ``x`` the response follows the mixture
``F(y | x) = sum_i g_i(x) F_i(y | x)`` of the experts' distributions. Its
mean is the gate-weighted mean of the experts' means, and its variance
follows the law of total variance,
``Var(y | x) = sum_i g_i (v_i + mu_i^2) - (sum_i g_i mu_i)^2``, with
``mu_i`` and ``v_i`` expert ``i``'s conditional mean and variance.

Its quantiles lie between the smallest and the largest of the experts'
quantiles at the same level (there every ``F_i`` is at most, or at least,
``q``). For Gaussian experts they are found in that bracket by Newton's
method on ``F(y | x) - q``, a step that leaves the bracket being replaced by
bisection, for every row and level at once; for Poisson and Bernoulli
experts (a discrete mixture) the quantile is the smallest integer ``k``
with ``F(k | x) >= q``, found by bisection over the integers of the
bracket.

The experts' distributions are known for families that declare
``response_family = "gaussian"`` and carry variances (``var``: Gaussian and
ReLU experts, and stacks of them), and for GLM experts
(:class:`moestat.protocols.GLMFamily`: Poisson and Bernoulli). Other
families, including those over classes, are refused with a ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri, pdtr
from scipy.stats import poisson

from moestat.model import MixtureOfExperts
from moestat.protocols import CompositeExpertFamily, ExpertDeclarations

__all__ = [
    "predictive_moments",
    "predictive_cdf",
    "predictive_quantile",
]

#: Iterations of the safeguarded Newton search for Gaussian experts. Each
#: at least halves the bracket when Newton's step is refused, so the search
#: ends at round-off from any bracket.
NEWTON_ITER = 200
#: The Newton search stops once ``|F(y | x) - q|`` is at most this.
CDF_TOL = 1e-13


@dataclass(frozen=True)
class _Experts:
    """The experts' distributions at each row: kind, means, variances."""

    kind: str  # "normal", "poisson" or "bernoulli"
    weight: NDArray[np.float64]  # (n, m) gate weights
    mean: NDArray[np.float64]  # (n, m)
    var: NDArray[np.float64]  # (n, m)


def _kind_and_variance(expert: Any, params: Any) -> tuple[str, NDArray | None]:
    """The distribution of an expert family and its variances (None for GLMs).

    Read from the family's declared ``response_family``
    (:class:`moestat.protocols.ExpertDeclarations`; a stack declares its
    pieces' common one); Gaussian experts also need variances ``var`` in
    their parameters (a stack: in each piece's).
    """
    family = expert.response_family if isinstance(expert, ExpertDeclarations) else None
    if family in ("poisson", "bernoulli"):
        return family, None
    variances = _variances(expert, params) if family == "gaussian" else None
    if variances is None:
        raise ValueError(
            "The predictive distribution needs experts whose conditional "
            "distribution is known: Gaussian experts (response_family 'gaussian' "
            "with variances 'var') or Poisson and Bernoulli GLM experts; got "
            f"{type(expert).__name__}."
        )
    return "normal", variances


def _variances(expert: Any, params: Any) -> NDArray[np.float64] | None:
    """Every expert's variance, shared experts first (None where one has none)."""
    if isinstance(expert, CompositeExpertFamily):
        parts = [
            _variances(expert.shared, params.shared),
            _variances(expert.routed, params.routed),
        ]
        return None if any(p is None for p in parts) else np.concatenate(parts)
    var = getattr(params, "var", None)
    return None if var is None else np.asarray(var, dtype=float)


def _experts(model: MixtureOfExperts, X: ArrayLike) -> _Experts:
    params = model._require_params()
    kind, var = _kind_and_variance(model.expert, params.expert)
    design = model.design(X)
    weight = np.exp(model.gate.log_weights(params.gate, design.gate))
    mean = model.expert.mean(params.expert, design.expert)
    if kind == "normal":
        variance = np.broadcast_to(var, mean.shape)
    elif kind == "poisson":
        variance = mean
    else:
        variance = mean * (1.0 - mean)
    return _Experts(kind, weight, mean, variance)


def predictive_moments(
    model: MixtureOfExperts, X: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and variance of ``y`` given ``x`` under the fitted mixture.

    Parameters
    ----------
    model : MixtureOfExperts
        A model with parameters.
    X : array-like of shape (n_samples, n_features)
        Covariates.

    Returns
    -------
    mean : ndarray of shape (n_samples,)
        ``sum_i g_i(x) mu_i(x)``.
    variance : ndarray of shape (n_samples,)
        ``sum_i g_i (v_i + mu_i^2) - mean^2`` (law of total variance),
        written as ``sum_i g_i (v_i + (mu_i - mean)^2)``, which is never
        negative.

    Raises
    ------
    ValueError
        For expert families whose distribution is not known (module
        docstring).
    """
    experts = _experts(model, X)
    g, mu = experts.weight, experts.mean
    mean = np.sum(g * mu, axis=1) / np.sum(g, axis=1)
    spread = experts.var + (mu - mean[:, None]) ** 2
    return mean, np.sum(g * spread, axis=1) / np.sum(g, axis=1)


def _cdf(experts: _Experts, y: NDArray[np.float64]) -> NDArray[np.float64]:
    """``F(y | x)`` at ``y`` of shape (n, k): shape (n, k)."""
    g, mu, var = (a[:, None, :] for a in (experts.weight, experts.mean, experts.var))
    y = y[:, :, None]
    if experts.kind == "normal":
        parts = ndtr((y - mu) / np.sqrt(var))
    elif experts.kind == "poisson":
        parts = np.where(y < 0, 0.0, pdtr(np.floor(np.maximum(y, 0.0)), mu))
    else:
        parts = np.where(y < 0, 0.0, np.where(y < 1, 1.0 - mu, 1.0))
    with np.errstate(invalid="ignore"):
        return np.sum(g * parts, axis=2) / np.sum(g, axis=2)


def predictive_cdf(
    model: MixtureOfExperts, X: ArrayLike, y: ArrayLike
) -> NDArray[np.float64]:
    """The predictive distribution function ``F(y | x) = sum_i g_i F_i(y | x)``.

    Parameters
    ----------
    model : MixtureOfExperts
        A model with parameters.
    X : array-like of shape (n_samples, n_features)
        Covariates.
    y : array-like of shape (n_samples,) or (n_samples, k)
        Values at which to evaluate it, one or ``k`` per row.

    Returns
    -------
    ndarray of the shape of ``y``
    """
    experts = _experts(model, X)
    y = np.asarray(y, dtype=float)
    values = _cdf(experts, y.reshape(y.shape[0], -1))
    return values.reshape(y.shape)


def _check_levels(q: ArrayLike) -> NDArray[np.float64]:
    levels = np.asarray(q, dtype=float)
    if levels.ndim > 1 or not np.all((levels > 0) & (levels < 1)):
        raise ValueError(
            "q must be a level or a 1-D array of levels strictly between 0 and "
            f"1; got {q!r}."
        )
    return np.atleast_1d(levels)


def _bracket(own: NDArray, weight: NDArray) -> tuple[NDArray, NDArray]:
    """The least and greatest of the experts' own quantiles ``own`` (n, k, m).

    Over the experts the gate gives weight: the mixture's quantile lies
    between them.
    """
    active = (weight > 0)[:, None, :]
    return (
        np.where(active, own, np.inf).min(axis=2),
        np.where(active, own, -np.inf).max(axis=2),
    )


def _normal_quantile(experts: _Experts, levels: NDArray) -> NDArray[np.float64]:
    """Safeguarded Newton search in the bracket of the experts' quantiles."""
    sd = np.sqrt(experts.var)
    # every expert's quantile at every level: (n, k, m); the bracket is taken
    # over the experts with weight (an expert the gate switches off is left
    # out unless every weight underflows)
    own = experts.mean[:, None, :] + sd[:, None, :] * ndtri(levels)[None, :, None]
    low, high = _bracket(own, experts.weight)
    y = 0.5 * (low + high)
    target = levels[None, :]
    g = experts.weight[:, None, :] / experts.weight.sum(axis=1)[:, None, None]
    mu, sd3 = experts.mean[:, None, :], sd[:, None, :]
    for _ in range(NEWTON_ITER):
        z = (y[:, :, None] - mu) / sd3
        excess = np.sum(g * ndtr(z), axis=2) - target
        done = np.abs(excess) <= CDF_TOL
        if np.all(done | (high - low <= 4 * np.spacing(np.abs(y) + 1.0))):
            break
        low = np.where(excess < 0, y, low)
        high = np.where(excess > 0, y, high)
        density = np.sum(g * np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * sd3), axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = y - excess / density
        inside = np.isfinite(step) & (step > low) & (step < high)
        y = np.where(done, y, np.where(inside, step, 0.5 * (low + high)))
    return y


def _discrete_quantile(experts: _Experts, levels: NDArray) -> NDArray[np.float64]:
    """Smallest integer ``k`` with ``F(k | x) >= q``, by bisection."""
    n, k = experts.mean.shape[0], levels.size
    if experts.kind == "bernoulli":
        at_zero = _cdf(experts, np.zeros((n, k)))
        return np.where(levels[None, :] <= at_zero, 0.0, 1.0)
    own = poisson.ppf(levels[None, :, None], experts.mean[:, None, :])
    low, high = _bracket(own, experts.weight)
    while np.any(low < high):
        middle = np.floor(0.5 * (low + high))
        enough = _cdf(experts, middle) >= levels[None, :]
        searching = low < high
        high = np.where(searching & enough, middle, high)
        low = np.where(searching & ~enough, middle + 1.0, low)
    return low


def predictive_quantile(
    model: MixtureOfExperts, X: ArrayLike, q: ArrayLike
) -> NDArray[np.float64]:
    """Quantiles of ``y`` given ``x``: the inverse of :func:`predictive_cdf`.

    Parameters
    ----------
    model : MixtureOfExperts
        A model with parameters.
    X : array-like of shape (n_samples, n_features)
        Covariates.
    q : float or array-like of shape (k,)
        Levels strictly between 0 and 1.

    Returns
    -------
    ndarray of shape (n_samples,) for a scalar ``q``, else (n_samples, k)
        For Gaussian experts the ``y`` with ``F(y | x) = q`` (to about
        ``1e-13`` in ``F``); for Poisson and Bernoulli experts the smallest
        integer ``y`` with ``F(y | x) >= q``.

    Raises
    ------
    ValueError
        For levels outside (0, 1), or expert families whose distribution is
        not known (module docstring).
    """
    levels = _check_levels(q)
    experts = _experts(model, X)
    if experts.kind == "normal":
        values = _normal_quantile(experts, levels)
    else:
        values = _discrete_quantile(experts, levels)
    return values[:, 0] if np.ndim(q) == 0 else values
