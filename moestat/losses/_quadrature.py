"""Quadrature rules: the covariate law's and each model's response law's.

:func:`uniform_quadrature` is the Gauss-Legendre rule of a uniform
covariate; :func:`response_quadrature` a rule for the response under one
model's conditional density (Gauss-Hermite per component for Gaussian
responses, exact sums for discrete ones). The log densities of the models
on grids of responses are here too: every density loss evaluates them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import poisson

from moestat._math import logsumexp_rows
from moestat.losses._common import (
    _covariates,
    _expert_parts,
    _family,
    _n_classes,
    _params,
    _positive_int,
)
from moestat.model import MixtureOfExperts

# Poisson responses are summed up to the count whose upper tail is below this
# under every component (theory.md section 5.1).
_POISSON_TAIL = 1e-14


def uniform_quadrature(
    low: ArrayLike, high: ArrayLike, n_nodes: int = 200, n_features: int = 1
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gauss-Legendre rule for the uniform law on a box.

    Parameters
    ----------
    low, high : float or array-like of shape (n_features,)
        The box ``[low, high]`` (per coordinate when arrays).
    n_nodes : int, default=200
        Nodes per coordinate.
    n_features : int, default=1
        Dimension ``d``; the rule is the tensor product of the
        one-dimensional rules (``n_nodes ** d`` nodes).

    Returns
    -------
    X : ndarray of shape (n_nodes ** n_features, n_features)
        The nodes.
    weights : ndarray of shape (n_nodes ** n_features,)
        Positive weights summing to one: ``weights @ f(X)`` approximates
        ``E f(X)`` for ``X`` uniform on the box, exactly for polynomials of
        degree below ``2 n_nodes`` in each coordinate.

    Raises
    ------
    ValueError
        For an empty box, or more than ``10**7`` nodes (use a Monte-Carlo
        sample of covariates instead).

    Notes
    -----
    theory.md section 5.1: Gauss-Legendre with 200-400 nodes for a bounded
    uniform covariate in one dimension; beyond that a fixed Monte-Carlo
    sample with equal weights.

    Examples
    --------
    >>> from moestat.losses import uniform_quadrature
    >>> X, w = uniform_quadrature(0.0, 1.0, n_nodes=5)
    >>> X.shape, round(float(w.sum()), 12)
    ((5, 1), 1.0)
    >>> round(float(w @ X[:, 0] ** 3), 12)  # E X^3 for X ~ U(0, 1)
    0.25
    """
    n_nodes = _positive_int(n_nodes, "n_nodes")
    n_features = _positive_int(n_features, "n_features")
    try:
        lo = np.broadcast_to(np.asarray(low, dtype=float), (n_features,))
        hi = np.broadcast_to(np.asarray(high, dtype=float), (n_features,))
    except ValueError:
        raise ValueError(
            f"low and high must be scalars or arrays of length n_features="
            f"{n_features}; got {low!r} and {high!r}."
        ) from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
        raise ValueError(
            f"The box must be finite with low < high; got low={lo.tolist()}, "
            f"high={hi.tolist()}."
        )
    if float(n_nodes) ** n_features > 1e7:
        raise ValueError(
            f"{n_nodes}**{n_features} tensor-product nodes are too many; use a "
            "Monte-Carlo sample of covariates (equal weights) in high dimension."
        )
    z, w = np.polynomial.legendre.leggauss(n_nodes)
    unit = 0.5 * (z + 1.0)
    axes = [lo[k] + (hi[k] - lo[k]) * unit for k in range(n_features)]
    grids = np.meshgrid(*axes, indexing="ij")
    X = np.column_stack([g.ravel() for g in grids])
    weight_grids = np.meshgrid(*([0.5 * w] * n_features), indexing="ij")
    weights = np.prod([g.ravel() for g in weight_grids], axis=0)
    return X, weights / weights.sum()


def _variances(expert: Any, expert_params: Any) -> NDArray[np.float64]:
    """Noise variances of Gaussian-response experts (composite: shared, routed).

    Each family's parameters carry them as ``var``; a composite family's
    parameters hold its parts' as ``shared`` and ``routed``.
    """
    parts = _expert_parts(expert)
    if len(parts) == 2:
        return np.concatenate(
            [
                _variances(parts[0], expert_params.shared),
                _variances(parts[1], expert_params.routed),
            ]
        )
    var = getattr(expert_params, "var", None)
    if var is None:
        raise ValueError(
            f"{type(expert).__name__} declares Gaussian responses, but its "
            f"parameters ({type(expert_params).__name__}) carry no noise "
            "variances 'var'."
        )
    return np.atleast_1d(np.asarray(var, dtype=float))


def _gaussian_parts(
    model: MixtureOfExperts, X: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``log g`` (n, m), expert means (n, m) and variances (m,)."""
    params = _params(model)
    design = model.design(X)
    log_g = np.asarray(model.gate.log_weights(params.gate, design.gate))
    mu = model.expert.mean(params.expert, design.expert)
    var = np.broadcast_to(_variances(model.expert, params.expert), (mu.shape[1],))
    return log_g, mu, var


def _is_gaussian_moe(model: Any) -> bool:
    return isinstance(model, MixtureOfExperts) and _family(model) == "gaussian"


# -- densities on grids ----------------------------------------------------------
def _component_terms(log_g, mu, var, Y):
    """``log g_j + log N(Y | mu_j, var_j)`` for each component, (m, n, q)."""
    const = log_g - 0.5 * np.log(2.0 * np.pi * var)
    half_precision = 0.5 / var
    out = np.empty((mu.shape[1], *Y.shape))
    for j in range(mu.shape[1]):
        term = out[j]
        np.subtract(Y, mu[:, j : j + 1], out=term)
        np.square(term, out=term)
        term *= -half_precision[j]
        term += const[:, j : j + 1]
    return out


def _mixture_log_pdf(log_g, mu, var, Y):
    """``log sum_j g_j N(Y | mu_j, var_j)`` on a grid ``Y`` of shape (n, q)."""
    terms = _component_terms(log_g, mu, var, Y)
    if terms.shape[0] == 1:
        return terms[0]
    total = np.exp(terms[0])
    for term in terms[1:]:
        total += np.exp(term)
    if np.min(total) > 1e-290:  # no underflow: the plain sum is exact enough
        return np.log(total, out=total)
    top = terms.max(axis=0)
    terms -= top
    np.exp(terms, out=terms)
    return top + np.log(terms.sum(axis=0))


def _log_pdf_grid(model: Any, X: NDArray[np.float64], Y: NDArray[np.float64]):
    """``log p(Y[t, k] | X[t])`` of shape (n, q)."""
    n, q = Y.shape
    if _is_gaussian_moe(model):
        return _mixture_log_pdf(*_gaussian_parts(model, X), Y)
    if isinstance(model, MixtureOfExperts):
        params = _params(model)
        design = model.design(X)
        log_g = model.gate.log_weights(params.gate, design.gate)
        log_f = model.expert.log_density(
            params.expert, np.repeat(design.expert, q, axis=0), Y.ravel()
        )
        joint = log_f + np.repeat(np.asarray(log_g), q, axis=0)
        return logsumexp_rows(joint).reshape(n, q)
    values = model.log_pdf(np.repeat(X, q, axis=0), Y.ravel())
    return np.asarray(values, dtype=float).reshape(n, q)


# -- response quadrature ---------------------------------------------------------
def _gauss_hermite(log_g, mu, var, n_nodes):
    """Nodes, weights and log-weights of the per-component Gauss-Hermite rule."""
    z, w = np.polynomial.hermite.hermgauss(n_nodes)
    n, m = mu.shape
    Y = mu[:, :, None] + np.sqrt(2.0 * var)[None, :, None] * z
    log_w = np.log(w) - 0.5 * np.log(np.pi)
    with np.errstate(invalid="ignore"):
        log_W = log_g[:, :, None] + log_w  # -inf where a top-K gate is 0
    return Y.reshape(n, m * n_nodes), log_W.reshape(n, m * n_nodes)


def _poisson_support_max(model: Any, X: NDArray[np.float64], n_nodes: int) -> int:
    if isinstance(model, MixtureOfExperts):
        params = _params(model)
        rate = model.expert.mean(params.expert, model.design(X).expert)
        top = float(np.max(rate))
        if not np.isfinite(top):
            raise ValueError("A Poisson expert has an infinite mean at some X.")
        return int(poisson.isf(_POISSON_TAIL, top)) if top > 0 else 0
    Y, _ = _own_quadrature(model, X, n_nodes)
    return int(np.max(Y))


def _discrete_grid(
    family: str, models: Sequence[Any], X: NDArray[np.float64], n_nodes: int
) -> NDArray[np.float64]:
    """Every response value either model can produce (exact sums), shape (q,)."""
    if family == "bernoulli":
        return np.array([0.0, 1.0])
    if family == "categorical":
        classes = [_n_classes(m) for m in models]
        classes = [k for k in classes if k is not None]
        if classes:
            return np.arange(classes[0], dtype=float)
        Y, _ = _own_quadrature(models[0], X, n_nodes)
        return np.arange(int(np.max(Y)) + 1, dtype=float)
    top = max(_poisson_support_max(m, X, n_nodes) for m in models)
    return np.arange(top + 1, dtype=float)


def _own_quadrature(model: Any, X: NDArray[np.float64], n_nodes: int):
    """A custom model's own ``response_quadrature``, shape-checked."""
    Y, W = model.response_quadrature(X, n_nodes)
    Y = np.asarray(Y, dtype=float)
    W = np.asarray(W, dtype=float)
    if Y.ndim != 2 or Y.shape != W.shape or Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{type(model).__name__}.response_quadrature must return two arrays "
            f"of shape ({X.shape[0]}, q); got {Y.shape} and {W.shape}."
        )
    return Y, W


def _response_nodes(model: Any, X: NDArray[np.float64], n_nodes: int):
    """``(Y, W, log W)`` of the response quadrature under ``model``."""
    if callable(getattr(model, "response_quadrature", None)):
        Y, W = _own_quadrature(model, X, n_nodes)
        with np.errstate(divide="ignore"):
            return Y, W, np.log(W)
    family = _family(model)
    if not isinstance(model, MixtureOfExperts) or family is None:
        raise ValueError(
            f"Cannot integrate over the responses of a {type(model).__name__}: "
            "use a MixtureOfExperts whose expert family declares a "
            "response_family (Gaussian, ReLU, GLM and multinomial experts do), "
            "or give the model a response_quadrature(X, n_nodes) method."
        )
    if family == "gaussian":
        Y, log_W = _gauss_hermite(*_gaussian_parts(model, X), n_nodes)
        return Y, np.exp(log_W), log_W
    grid = _discrete_grid(family, [model], X, n_nodes)
    Y = np.broadcast_to(grid, (X.shape[0], grid.size)).copy()
    log_W = _log_pdf_grid(model, X, Y)
    return Y, np.exp(log_W), log_W


def response_quadrature(
    model: Any, X: ArrayLike, n_nodes: int = 64
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Quadrature rule for the response under the model's conditional density.

    Parameters
    ----------
    model : MixtureOfExperts or object
        A model with parameters, or any object with a method
        ``response_quadrature(X, n_nodes) -> (Y, W)`` (used as it is: this
        lets a simulation supply truths that are not mixtures of experts).
    X : array-like of shape (n_points, n_features)
        Covariates.
    n_nodes : int, default=64
        Gauss-Hermite nodes per component (Gaussian-type experts only).

    Returns
    -------
    Y : ndarray of shape (n_points, q)
        Response nodes at each covariate point.
    W : ndarray of shape (n_points, q)
        Weights: ``sum_k W[t, k] f(Y[t, k])`` approximates
        ``int p(y | X[t]) f(y) dy``; each row sums to one (up to the
        truncated Poisson tail, below ``1e-14``).

    Notes
    -----
    theory.md section 5.1. The rule follows the ``response_family`` the
    model's expert family declares:

    - ``"gaussian"`` (:class:`~moestat.GaussianExpert`,
      :class:`~moestat.ReLUExpert`, :class:`~moestat.StackedExperts` of
      them, or any family with a ``mean`` and parameters carrying ``var``):
      Gauss-Hermite per component, nodes ``mu_j(x) + sqrt(2 nu_j) z_k`` and
      weights ``g_j(x) w_k / sqrt(pi)`` (``q = m n_nodes``); exact for
      ``f`` a polynomial of degree below ``2 n_nodes``.
    - ``"poisson"``: every count from 0 to the point where the upper tail
      of every component is below ``1e-14`` (one grid for all rows).
    - ``"bernoulli"``: ``{0, 1}``; ``"categorical"`` (multinomial
      experts): the ``n_classes`` class codes. Both exact.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import response_quadrature
    >>> expert = GaussianExpertParams(np.array([[1.0, 2.0]]), np.array([0.5]))
    >>> params = MoEParams(GateParams(np.zeros((1, 2))), expert)
    >>> model = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> Y, W = response_quadrature(model, np.array([[0.0], [1.0]]), n_nodes=10)
    >>> np.round((W * Y).sum(axis=1), 12)  # E[y | x] = 1 + 2x
    array([1., 3.])
    """
    X, _ = _covariates(X, None)
    n_nodes = _positive_int(n_nodes, "n_nodes")
    Y, W, _ = _response_nodes(model, X, n_nodes)
    return Y, W
