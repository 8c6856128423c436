"""Losses between a true and a fitted mixture of experts (theory.md section 5).

Two families of losses measure how far an estimate is from the truth:

- **density discrepancies** averaged over the covariate law (section 5.1):
  the Kullback-Leibler divergence, the Hellinger distance and the total
  variation, computed by quadrature in both the covariates and the
  response, never by Monte Carlo on the response;
- **Voronoi losses** between the mixing measures (section 5.2), which
  compare parameters through the Voronoi cells of the true atoms and so
  stay meaningful when the fit has more experts than the truth, and the
  per-parameter errors of section 5.3.

The covariate integral is a weighted sum over points ``X`` with weights
``w`` (Gauss-Legendre nodes from :func:`uniform_quadrature`, or a fixed
Monte-Carlo sample with equal weights). The response integral is an exact
sum for discrete responses and a dense trapezoid rule for continuous ones
(:func:`density_losses`); :func:`response_quadrature` gives a compact rule
under one model's density (Gauss-Hermite), e.g. for population EM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.stats import poisson

from moestat._math import logsumexp_rows
from moestat.experts import (
    GaussianExpert,
    GLMExpert,
    MultinomialLogisticExpert,
    ReLUExpert,
    StackedExperts,
)
from moestat.gates import (
    GateParams,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SoftmaxGate,
)
from moestat.model import MixtureOfExperts

__all__ = [
    "uniform_quadrature",
    "response_quadrature",
    "kl_divergence",
    "hellinger_distance",
    "total_variation",
    "density_losses",
    "VoronoiLoss",
    "voronoi_cells",
    "voronoi_loss",
    "per_parameter_errors",
    "DENSITY_LOSSES",
    "VORONOI_KINDS",
    "ANCHORS",
    "CELL_METRICS",
]

#: Names of the losses :func:`density_losses` computes.
DENSITY_LOSSES = ("kl", "hellinger", "tv", "mass_defect")
#: Voronoi losses of the catalogue, the ``kind`` of :func:`voronoi_loss`.
VORONOI_KINDS = (
    "auto",
    "softmax_gaussian",
    "ds_strong",
    "ds_linear",
    "ds_sigmoid_sparse",
    "ds_sigmoid_dense",
    "multinomial",
)
#: Anchorings of the softmax gate's translation, the ``anchor`` of
#: :func:`voronoi_loss`.
ANCHORS = ("none", "paper", "optimal")
#: Distances that assign fitted atoms to Voronoi cells
#: (:func:`voronoi_cells`).
CELL_METRICS = ("euclid", "block_l1")

_FAMILIES = ("gaussian", "poisson", "bernoulli", "categorical")
# Poisson responses are summed up to the count whose upper tail is below this
# under every component (theory.md section 5.1).
_POISSON_TAIL = 1e-14
# Continuous responses: a grid this many standard deviations beyond the extreme
# means (theory.md section 5.1); components whose gate weight is below
# _NEGLIGIBLE_WEIGHT do not widen it. Its step is at most the finest
# component's sd over _GRID_STEP_SD (KL, Hellinger: the trapezoid rule is then
# exact to rounding) or over _TV_STEP_SD (TV: kink error ~ 1e-7 relative),
# and it has at most _MAX_GRID points.
_SPAN_SD = 10.0
_NEGLIGIBLE_WEIGHT = 1e-14
_GRID_STEP_SD = 4.0
_TV_STEP_SD = 16.0
_MAX_GRID = 100_000
# Elements per chunk of the dense grid (keeps the arrays in cache).
_GRID_CHUNK = 1 << 15
# Exponents r(|A_j|) of the over-specified cells (theory.md section 5.2.5).
_DEFAULT_EXPONENTS = {2: 4.0, 3: 6.0}
# Above this error of the response rule on int p_hat = 1, the KL and the
# Hellinger integrands subtract it (see density_losses, Notes).
_DEFECT_TOL = 1e-13


# =============================================================================
# Quadrature
# =============================================================================
def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}.")
    return int(value)


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


def _covariates(
    X: ArrayLike, weights: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Check the covariate points and weights; weights normalised to sum 1."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(
            "X must be a non-empty 2-D array (n_points, n_features); got shape "
            f"{X.shape}. Use X[:, None] for one covariate."
        )
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values.")
    if weights is None:
        return X, np.full(X.shape[0], 1.0 / X.shape[0])
    w = np.asarray(weights, dtype=float)
    if w.shape != (X.shape[0],):
        raise ValueError(
            f"weights must have shape ({X.shape[0]},), one per row of X; got {w.shape}."
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(
            "weights must be finite, non-negative and not all zero (they are "
            "normalised to sum to one)."
        )
    return X, w / w.sum()


# -- response families ---------------------------------------------------------
def _expert_family(expert: Any) -> str | None:
    """Response family of an expert family, or None if unknown or mixed."""
    if isinstance(expert, GaussianExpert | ReLUExpert):
        return "gaussian"
    if isinstance(expert, StackedExperts):
        parts = {_expert_family(expert.shared), _expert_family(expert.routed)}
        return parts.pop() if len(parts) == 1 else None
    if isinstance(expert, GLMExpert):
        return expert.family
    if isinstance(expert, MultinomialLogisticExpert):
        return "categorical"
    return None


def _family(model: Any) -> str | None:
    if isinstance(model, MixtureOfExperts):
        return _expert_family(model.expert)
    family = getattr(model, "response_family", None)
    return family if family in _FAMILIES else None


def _common_family(true: Any, fitted: Any) -> str:
    """The response family both models share (ValueError if they differ)."""
    ft, ff = _family(true), _family(fitted)
    if ft is not None and ff is not None and ft != ff:
        raise ValueError(
            f"Mismatched model families: the true model has {ft!r} responses "
            f"and the fitted one {ff!r}; both densities must live on the same "
            "response space."
        )
    family = ft or ff
    if family is None:
        raise ValueError(
            "Cannot tell the response family of the models: use a "
            "MixtureOfExperts with Gaussian, ReLU, GLM or multinomial experts, "
            "or give a custom model a response_family attribute in "
            f"{_FAMILIES}."
        )
    if family == "categorical":
        classes = {
            m.expert.n_classes
            for m in (true, fitted)
            if isinstance(m, MixtureOfExperts)
        }
        if len(classes) > 1:
            raise ValueError(
                f"Mismatched model families: multinomial experts over "
                f"{sorted(classes)} classes."
            )
    return family


def _params(model: MixtureOfExperts) -> Any:
    if model.params is None:
        raise ValueError(
            "The model has no parameter values; losses need a true model and "
            "a fitted model with params."
        )
    return model.params


def _variances(expert_params: Any) -> NDArray[np.float64]:
    """Noise variances of Gaussian-type experts (stacked: shared, routed)."""
    if hasattr(expert_params, "var"):
        return np.atleast_1d(np.asarray(expert_params.var, dtype=float))
    return np.concatenate(
        [_variances(expert_params.shared), _variances(expert_params.routed)]
    )


def _gaussian_parts(
    model: MixtureOfExperts, X: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``log g`` (n, m), expert means (n, m) and variances (m,)."""
    params = _params(model)
    design = model.design(X)
    log_g = np.asarray(model.gate.log_weights(params.gate, design.gate))
    mu = model.expert.mean(params.expert, design.expert)
    var = np.broadcast_to(_variances(params.expert), (mu.shape[1],))
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
        classes = [
            m.expert.n_classes for m in models if isinstance(m, MixtureOfExperts)
        ]
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
            "use a MixtureOfExperts with Gaussian, ReLU, GLM or multinomial "
            "experts, or give the model a response_quadrature(X, n_nodes) method."
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
    theory.md section 5.1.

    - Gaussian-type experts (:class:`~moestat.GaussianExpert`,
      :class:`~moestat.ReLUExpert`, :class:`~moestat.StackedExperts`):
      Gauss-Hermite per component, nodes ``mu_j(x) + sqrt(2 nu_j) z_k`` and
      weights ``g_j(x) w_k / sqrt(pi)`` (``q = m n_nodes``); exact for
      ``f`` a polynomial of degree below ``2 n_nodes``.
    - Poisson experts: every count from 0 to the point where the upper tail
      of every component is below ``1e-14`` (one grid for all rows).
    - Bernoulli experts: ``{0, 1}``; multinomial experts: the ``K`` class
      codes. Both exact.

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


# =============================================================================
# Density discrepancies
# =============================================================================
def _expm1mx(u: NDArray[np.float64]) -> NDArray[np.float64]:
    """``exp(u) - 1 - u`` without cancellation, for ``|u| <= 1``."""
    small = np.abs(u) < 0.05
    # Taylor series u^2/2! + ... + u^9/9! (truncation below 1e-15 relative)
    us = np.where(small, u, 0.0)
    series = 1.0 + us / 9.0
    for k in (8, 7, 6, 5, 4, 3):
        series = 1.0 + us / k * series
    series *= 0.5 * us * us
    return np.where(small, series, np.expm1(u) - u)


def _node_losses(
    W: NDArray[np.float64],
    log_wr: NDArray[np.float64],
    u: NDArray[np.float64],
    which: Iterable[str],
) -> dict[str, NDArray[np.float64]]:
    """Per-covariate losses from the quadrature under the truth.

    ``W`` are the nodes' weights under ``p*``, ``u = log(p_hat / p*)`` at
    the nodes and ``log_wr = log(W p_hat / p*)`` (computed by the caller
    where ``p*`` may vanish). Each integrand is non-negative node by node
    and free of cancellation: ``W phi(u)`` with a series or ``expm1`` where
    ``|u| <= 1``, the plain difference of the two densities elsewhere (then
    nothing cancels). Both the KL and the Hellinger integrands use
    ``int p_hat = 1``; where the rule's own ``sum W r`` misses 1 by more
    than ``_DEFECT_TOL`` that known defect is subtracted (see
    :func:`density_losses`).
    """
    out = {}
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        small = np.abs(u) <= 1.0
        us = np.where(small, u, 0.0)
        wr = np.exp(log_wr)
        # W (r - 1) node by node, and D = sum W r - 1: the rule's error on
        # int p_hat (the sum of W is 1 up to rounding and the Poisson tail)
        excess = np.where(small, W * np.expm1(us), wr - W)
        defect = excess.sum(axis=1) + (W.sum(axis=1) - 1.0)
        corrected = np.abs(defect) > _DEFECT_TOL
        if "kl" in which:
            # W (r - 1 - log r): integrates to KL because int p_hat = 1.
            w_u = np.where(W > 0, W * u, 0.0)
            terms = np.where(small, W * _expm1mx(us), wr - W - w_u)
            kl = terms.sum(axis=1)
            out["kl"] = np.where(corrected, np.maximum(kl - defect, 0.0), kl)
        if "hellinger" in which:
            # W (sqrt(r) - 1)^2 integrates to 2 h^2 because int p_hat = 1.
            diff = np.where(
                small, np.sqrt(W) * np.expm1(0.5 * us), np.sqrt(wr) - np.sqrt(W)
            )
            h2 = 0.5 * np.einsum("ij,ij->i", diff, diff)
            h2 = np.where(corrected, np.maximum(h2 - 0.5 * defect, 0.0), h2)
            out["hellinger"] = np.sqrt(h2)
        if "tv" in which:
            out["tv"] = 0.5 * np.abs(excess).sum(axis=1)
        if "mass_defect" in which:
            out["mass_defect"] = np.abs(defect)
    return out


def _response_windows(model: Any, X: NDArray[np.float64], n_nodes: int):
    """Intervals holding the model's response mass at each row.

    Gaussian-type mixtures: ``mu_j -/+ 10 sd_max`` for every component whose
    gate weight exceeds ``1e-14`` at the row (``sd_max`` over those; the
    others get an empty window at the first relevant mean), and the smallest
    of their standard deviations. Other models: the span of their own
    response rule's nodes, and the finest spacing of those nodes as scale.

    Returns
    -------
    low, high : ndarray of shape (n, c)
        Window ends.
    sd_min : ndarray of shape (n,)
    """
    if _is_gaussian_moe(model):
        log_g, mu, var = _gaussian_parts(model, X)
        relevant = log_g > np.log(_NEGLIGIBLE_WEIGHT)
        sd = np.sqrt(var)
        sd_max = np.max(np.where(relevant, sd, 0.0), axis=1, keepdims=True)
        sd_min = np.min(np.where(relevant, sd, np.inf), axis=1)
        anchor = np.take_along_axis(mu, np.argmax(relevant, axis=1)[:, None], 1)
        center = np.where(relevant, mu, anchor)
        half = np.where(relevant, _SPAN_SD * sd_max, 0.0)
        return center - half, center + half, sd_min
    Y, _, _ = _response_nodes(model, X, n_nodes)
    low, high = Y.min(axis=1, keepdims=True), Y.max(axis=1, keepdims=True)
    # its scale: the finest spacing of its own nodes (for Gauss-Hermite,
    # ~pi sd / sqrt(n_nodes) near the centre: a conservative stand-in)
    gaps = np.diff(np.sort(Y, axis=1), axis=1)
    gaps = np.where(gaps > 0, gaps, np.inf)
    return low, high, gaps.min(axis=1) if gaps.shape[1] else np.full(len(Y), np.inf)


@dataclass(frozen=True)
class _GridPlan:
    """Where each row's response grid lies: the union of the windows.

    A grid uniform in the covered length ``t in [0, length]`` maps to
    ``y = start + t + sum_j gap_j [t >= cut_j]``: the empty gaps between
    windows (where both densities are below ``exp(-50)`` of their peaks)
    are skipped, so the points go where the mass is.
    """

    start: NDArray[np.float64]
    length: NDArray[np.float64]
    gaps: NDArray[np.float64]
    cuts: NDArray[np.float64]
    sd_min: NDArray[np.float64]

    def responses(self, rows: slice, size: int):
        """Grid ``Y`` (rows, size) and the step ``h`` of each row."""
        t = self.length[rows, None] * np.linspace(0.0, 1.0, size)
        Y = self.start[rows, None] + t
        gaps, cuts = self.gaps[rows], self.cuts[rows]
        for j in np.flatnonzero(np.any(gaps > 0, axis=0)):
            Y += gaps[:, j : j + 1] * (t >= cuts[:, j : j + 1])
        return Y, self.length[rows] / (size - 1)


def _grid_plan(true: Any, fitted: Any, X: NDArray[np.float64], n_nodes: int):
    lo_t, hi_t, sd_t = _response_windows(true, X, n_nodes)
    lo_f, hi_f, sd_f = _response_windows(fitted, X, n_nodes)
    low, high = np.hstack([lo_t, lo_f]), np.hstack([hi_t, hi_f])
    order = np.argsort(low, axis=1)
    low = np.take_along_axis(low, order, 1)
    reach = np.maximum.accumulate(np.take_along_axis(high, order, 1), axis=1)
    gaps = np.zeros_like(low)
    gaps[:, 1:] = np.maximum(low[:, 1:] - reach[:, :-1], 0.0)
    cuts = low - low[:, :1] - np.cumsum(gaps, axis=1)
    length = reach[:, -1] - low[:, 0] - gaps.sum(axis=1)
    return _GridPlan(low[:, 0], length, gaps, cuts, np.minimum(sd_t, sd_f))


def _log_pdf_on(model: Any, X: NDArray[np.float64]) -> Callable:
    """``f(rows, Y)``: the model's log density on a grid for a slice of rows."""
    if _is_gaussian_moe(model):
        log_g, mu, var = _gaussian_parts(model, X)
        return lambda rows, Y: _mixture_log_pdf(log_g[rows], mu[rows], var, Y)
    return lambda rows, Y: _log_pdf_grid(model, X[rows], Y)


def _abs_trapezoid(f: NDArray[np.float64], h: NDArray[np.float64]):
    """``int |f|`` row by row from a uniform grid of step ``h``.

    The trapezoid rule, except in cells where ``f`` changes sign: there the
    exact integral of ``|L|``, ``L`` the linear interpolant, replaces the
    trapezoid (which would miss the kink by ``O(h |f'|)`` per cell), and
    the Euler-Maclaurin term of the kink is added back. For ``f`` smooth
    and flat at both ends, ``int |L| - int |f| = -(h^2/12) int sign(f) f''
    + O(h^3) = -(h^2/6) sum_c |f'(c)|`` over the roots ``c``; ``f'(c)`` is
    taken as the crossing cell's slope. The error is then ``O(h^3)``.
    """
    a = np.abs(f)
    total = a.sum(axis=1) - 0.5 * (a[:, 0] + a[:, -1])
    rows, cols = np.nonzero(f[:, :-1] * f[:, 1:] < 0)  # the few sign changes
    left, right = f[rows, cols], f[rows, cols + 1]
    # trapezoid -> exact |L| in the cell, then + the kink's h^2/6 |f'(c)|
    correction = np.abs(right - left) / 6.0 - np.abs(left * right) / (
        np.abs(left) + np.abs(right)
    )
    total += np.bincount(rows, weights=correction, minlength=f.shape[0])
    return h * total


def _grid_sizes(length, sd_min, n_points: int, resolution: float):
    """Points of each row's response grid.

    At least ``n_points``, with a step of at most ``sd_min / resolution``
    (the finest relevant standard deviation at the row), and at most
    ``_MAX_GRID``.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        needed = length * resolution / sd_min
    needed = np.where(np.isfinite(needed), np.ceil(needed) + 1, 0.0)
    return np.clip(needed, n_points, _MAX_GRID).astype(np.intp)


def _row_chunks(sizes: NDArray[np.intp]):
    """Consecutive rows grouped so that rows x points stays near _GRID_CHUNK."""
    start = 0
    while start < len(sizes):
        stop, size = start + 1, int(sizes[start])
        while stop < len(sizes) and (stop - start + 1) * max(
            size, int(sizes[stop])
        ) <= max(_GRID_CHUNK, size):
            size = max(size, int(sizes[stop]))
            stop += 1
        yield slice(start, stop), size
        start = stop


def _row_trapezoid(values: NDArray[np.float64], h: NDArray[np.float64]):
    """Trapezoid rule along the rows of a uniform grid of step ``h``."""
    return h * (values.sum(axis=1) - 0.5 * (values[:, 0] + values[:, -1]))


def _grid_integrals(lp_true, u, h, names) -> dict[str, NDArray[np.float64]]:
    """Per-row losses from log densities on a uniform grid (fast path).

    With ``e = expm1(u)``, ``p* e = p_hat - p*`` exactly and without
    cancellation, so one ``expm1`` gives every integrand: KL
    ``p* (e - u)``, Hellinger ``p* (sqrt(1 + e) - 1)^2`` written as
    ``p* e^2 / (sqrt(1 + e) + 1)^2``, TV ``|p* e|``. Needs finite log
    densities and ``u = log(p_hat / p*) <= 700`` (the caller checks).
    """
    p_true = np.exp(lp_true)
    e = np.expm1(u)
    diff = p_true * e  # p_hat - p*
    out = {}
    mass = _row_trapezoid(diff, h) + (_row_trapezoid(p_true, h) - 1.0)
    if "kl" in names:
        terms = e - u
        np.maximum(terms, 0.0, out=terms)  # exp(u) - 1 - u >= 0 after rounding
        terms *= p_true
        kl = _row_trapezoid(terms, h)
        out["kl"] = np.where(np.abs(mass) > _DEFECT_TOL, np.maximum(kl - mass, 0.0), kl)
    if "hellinger" in names:
        root = np.sqrt(1.0 + e)
        root += 1.0
        terms = e / root
        np.square(terms, out=terms)
        terms *= p_true
        h2 = 0.5 * _row_trapezoid(terms, h)
        h2 = np.where(np.abs(mass) > _DEFECT_TOL, np.maximum(h2 - 0.5 * mass, 0.0), h2)
        out["hellinger"] = np.sqrt(h2)
    if "tv" in names:
        out["tv"] = 0.5 * _abs_trapezoid(diff, h)
    if "mass_defect" in names:
        out["mass_defect"] = np.abs(mass)
    return out


def _continuous_losses(true, fitted, X, names, n_points, n_nodes):
    """Per-row losses of continuous responses on one dense grid per row.

    The trapezoid rule on a uniform grid over both models' mass: spectrally
    accurate for the smooth KL and Hellinger integrands (their tails vanish
    at both ends), and with the kink correction of :func:`_abs_trapezoid`
    for the TV.
    """
    plan = _grid_plan(true, fitted, X, n_nodes)
    resolution = _TV_STEP_SD if "tv" in names else _GRID_STEP_SD
    sizes = _grid_sizes(plan.length, plan.sd_min, n_points, resolution)
    log_true, log_fit = _log_pdf_on(true, X), _log_pdf_on(fitted, X)
    out = {name: np.empty(X.shape[0]) for name in names}
    for rows, size in _row_chunks(sizes):
        Y, h = plan.responses(rows, size)
        lp_true, lp_fit = log_true(rows, Y), log_fit(rows, Y)
        with np.errstate(invalid="ignore"):
            u = lp_fit - lp_true
            fast = np.max(u) <= 700.0 and np.isfinite(np.min(lp_true))
        if fast:
            values = _grid_integrals(lp_true, u, h, names)
        else:
            values = _generic_grid_integrals(lp_true, lp_fit, h, names)
        for name, value in values.items():
            out[name][rows] = value
    return out


def _generic_grid_integrals(lp_true, lp_fit, h, names):
    """:func:`_grid_integrals` where a density vanishes or the ratio is huge."""
    ends = np.ones(lp_true.shape[1])
    ends[[0, -1]] = 0.5
    log_coef = np.log(h[:, None] * ends)
    with np.errstate(invalid="ignore"):
        u = lp_fit - lp_true
    node_names = [name for name in names if name != "tv"]
    out = _node_losses(np.exp(lp_true + log_coef), lp_fit + log_coef, u, node_names)
    if "tv" in names:
        out["tv"] = 0.5 * _abs_trapezoid(np.exp(lp_fit) - np.exp(lp_true), h)
    return out


def _check_which(which: Any) -> tuple[str, ...]:
    names = (which,) if isinstance(which, str) else tuple(which)
    unknown = [name for name in names if name not in DENSITY_LOSSES]
    if unknown or not names:
        raise ValueError(
            f"which must name losses among {DENSITY_LOSSES}; got {which!r}."
        )
    return names


def density_losses(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    which: Sequence[str] = ("kl", "hellinger", "tv"),
    *,
    n_points: int = 1000,
    n_nodes: int = 64,
) -> dict[str, float]:
    """Density discrepancies between two conditional densities, averaged over X.

    Parameters
    ----------
    true : MixtureOfExperts or object
        The truth ``p*``: a model with parameters, or any object with
        ``log_pdf(X, y)`` and ``response_quadrature(X, n_nodes)`` (and, to
        name its response space, a ``response_family`` attribute such as
        ``"gaussian"``; otherwise the fitted model's family is assumed).
    fitted : MixtureOfExperts or object
        The estimate ``p_hat``, of the same kind.
    X : array-like of shape (n_x, n_features)
        Covariate points: quadrature nodes (:func:`uniform_quadrature`) or a
        fixed Monte-Carlo sample.
    weights : array-like of shape (n_x,), optional
        Covariate weights (normalised to sum to one); default ``1 / n_x``.
    which : sequence of str, default=("kl", "hellinger", "tv")
        Losses to compute, among:

        - ``"kl"``: ``E_X KL(p*(.|X) || p_hat(.|X))``;
        - ``"hellinger"``: ``E_X h``, ``h^2 = 1/2 int (sqrt p* - sqrt p_hat)^2``
          (the mean of ``h``, not the root of the mean of ``h^2``);
        - ``"tv"``: ``E_X V``, ``V = 1/2 int |p* - p_hat|``;
        - ``"mass_defect"``: ``E_X |int p_hat - 1|`` as the response rule
          computes it: a check of the rule (theory.md asks the harness to
          keep the quadrature error below 1% of the smallest KL plotted).
    n_points : int, default=1000
        Minimum number of points of the response grid of continuous
        responses; more are used where a component is narrow (see Notes).
    n_nodes : int, default=64
        Nodes per component asked of a truth's own ``response_quadrature``
        (used for the span of the grid of a truth that is not a mixture).

    Returns
    -------
    dict
        ``{name: value}`` for each name in ``which``.

    Raises
    ------
    ValueError
        For unknown loss names, bad covariates or weights, models without
        parameters or densities, or models whose response spaces differ.

    Notes
    -----
    theory.md section 5.1 [P]. The response integral at each covariate
    point comes from one rule shared by every loss:

    - **continuous responses**: the trapezoid rule on a grid uniform in
      ``y`` over the union of the windows ``mu_j -/+ 10 sd_max`` of both
      models' components whose gate weight exceeds ``1e-14`` at the row
      (theory.md's ``[min mu - 10 sd_max, max mu + 10 sd_max]`` without the
      empty gaps between far-apart components, where both densities are
      below ``exp(-50)`` of their peaks). It has ``n_points`` points or
      more: its step is at most ``sd_min / 16`` with ``"tv"``, ``sd_min /
      4`` without (``sd_min``: the smallest relevant standard deviation),
      with at most ``10**5`` points. For the smooth KL and Hellinger
      integrands, which vanish at the window ends, this rule converges
      faster than any power of the step; for ``|p* - p_hat|``, which has
      kinks, the cells where the difference changes sign are integrated
      exactly for the linear interpolant and their Euler-Maclaurin term
      ``(h^2/6) |f'(c)|`` is added back, leaving an ``O(h^4)`` error. (The
      Gauss-Hermite rule per true component that theory.md suggests was
      measured off by up to ``3e-4`` relative with 64 nodes on near fits of
      the DeepSeekMoE truths: the responsibilities switch sharply between
      separated components, which no low-degree polynomial follows.)
    - **discrete responses**: exact sums over every value either model can
      produce (Poisson counts until both upper tails are below ``1e-14``).

    With ``r = p_hat / p*`` and ``u = log r`` from the log densities, and
    ``e = expm1(u)`` (so that ``p* e = p_hat - p*`` without cancellation):

    - KL integrand ``p* (r - 1 - log r) = p* (e - u) >= 0``. It integrates
      to the KL because ``int p_hat = 1``; it has no cancellation, so
      ``KL(p, p) = 0`` exactly and a KL of ``1e-10`` keeps ~10 digits.
      Where the rule's ``int p_hat`` misses 1 by more than ``1e-13``
      (``"mass_defect"``) that known error is subtracted, which leaves the
      textbook form ``p* log(p* / p_hat)``.
    - Hellinger integrand ``p* (sqrt(r) - 1)^2 / 2 >= 0``, likewise.
    - TV integrand ``|p* - p_hat| / 2 = |p* e| / 2``.

    Accuracy, measured (tests/test_losses.py and the scenario truths):
    KL and Hellinger within ``1e-12`` relative of the closed forms of
    one-expert Gaussian models (variance ratios from 1/50 to 50, KL down
    to ``1e-10``), of adaptive quadrature on two-component mixtures
    (``1e-14``) and of a 40-times finer grid on near fits of the SG,
    DeepSeekMoE and Mendes-Jiang truths (``1e-15``, KL down to
    ``2e-6``); TV within ``2e-9`` of the closed form for equal variances
    and within ``1e-6`` (typically ``1e-7``) on mixtures, improving as
    ``n_points`` grows. Poisson and multinomial losses equal exact sums to
    ``1e-11``. Cost with 200 covariate nodes and three components per
    model: ~8 ms for all three losses (the DeepSeekMoE truths against
    five-expert fits: ~15 ms).

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import density_losses, uniform_quadrature
    >>> def model(mean):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GaussianExpertParams(np.array([[mean, 1.0]]),
    ...                                             np.array([1.0])))
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> X, w = uniform_quadrature(0.0, 1.0, n_nodes=20)
    >>> losses = density_losses(model(0.0), model(0.1), X, w)
    >>> round(losses["kl"], 12)  # 0.1^2 / 2
    0.005
    """
    X, w = _covariates(X, weights)
    names = _check_which(which)
    n_nodes = _positive_int(n_nodes, "n_nodes")
    n_points = _positive_int(n_points, "n_points", 3)
    family = _common_family(true, fitted)
    for role, model in (("true", true), ("fitted", fitted)):
        if not callable(getattr(model, "log_pdf", None)):
            raise ValueError(
                f"Cannot evaluate the {role} density: {type(model).__name__} has no "
                "log_pdf(X, y) method."
            )
    if family == "gaussian":
        per_x = _continuous_losses(true, fitted, X, names, n_points, n_nodes)
    else:
        grid = _discrete_grid(family, (true, fitted), X, n_nodes)
        Y = np.broadcast_to(grid, (X.shape[0], grid.size)).copy()
        lp_true = _log_pdf_grid(true, X, Y)
        lp_fit = _log_pdf_grid(fitted, X, Y)
        with np.errstate(invalid="ignore"):
            u = lp_fit - lp_true
        per_x = _node_losses(np.exp(lp_true), lp_fit, u, names)
    return {name: float(w @ per_x[name]) for name in names}


def kl_divergence(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    n_nodes: int = 64,
    *,
    n_points: int = 1000,
) -> float:
    """``E_X KL(p*(.|X) || p_hat(.|X))``, the Mendes-Jiang loss.

    Parameters
    ----------
    true, fitted, X, weights, n_nodes, n_points
        As for :func:`density_losses`.

    Returns
    -------
    float

    See Also
    --------
    density_losses : every density loss from one quadrature, with the
        accuracy measured.

    Notes
    -----
    theory.md section 5.1: ``E_X int p* log(p* / p_hat) dy``, integrated as
    ``int p* (r - 1 - log r)`` with ``r = p_hat / p*`` (non-negative node by
    node), on a dense response grid (continuous responses) or by exact sums
    (discrete ones).

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GLMExpert, GLMExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import kl_divergence
    >>> def poisson_model(log_rate):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GLMExpertParams(np.array([[log_rate, 0.0]])))
    ...     return MixtureOfExperts(SoftmaxGate(), GLMExpert("poisson"), params)
    >>> kl = kl_divergence(poisson_model(np.log(2.0)), poisson_model(0.0),
    ...                    np.zeros((1, 1)))
    >>> bool(np.isclose(kl, 2 * np.log(2) - 2 + 1))  # l* log(l*/l) - l* + l
    True
    """
    values = density_losses(
        true, fitted, X, weights, ("kl",), n_points=n_points, n_nodes=n_nodes
    )
    return values["kl"]


def hellinger_distance(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    n_nodes: int = 64,
    *,
    n_points: int = 1000,
) -> float:
    """``E_X h(p*(.|X), p_hat(.|X))`` with ``h^2 = 1/2 int (sqrt p* - sqrt p_hat)^2``.

    Parameters
    ----------
    true, fitted, X, weights, n_nodes, n_points
        As for :func:`density_losses`.

    Returns
    -------
    float
        The covariate mean of ``h`` (in ``[0, 1]``), not the root of the
        mean of ``h^2`` (theory.md section 5.1 table).

    See Also
    --------
    density_losses : every density loss from one quadrature.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import hellinger_distance
    >>> def model(mean):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GaussianExpertParams(np.array([[mean, 0.0]]),
    ...                                             np.array([1.0])))
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> h = hellinger_distance(model(0.0), model(1.0), np.zeros((1, 1)))
    >>> bool(np.isclose(h, np.sqrt(1 - np.exp(-1 / 8))))
    True
    """
    values = density_losses(
        true, fitted, X, weights, ("hellinger",), n_points=n_points, n_nodes=n_nodes
    )
    return values["hellinger"]


def total_variation(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    n_points: int = 1000,
) -> float:
    """``E_X V(p*(.|X), p_hat(.|X))`` with ``V = 1/2 int |p* - p_hat|``.

    Parameters
    ----------
    true, fitted, X, weights
        As for :func:`density_losses`.
    n_points : int, default=1000
        Minimum number of points of the response grid (continuous responses;
        discrete responses are summed exactly).

    Returns
    -------
    float
        The DeepSeekMoE density loss, in ``[0, 1]``.

    See Also
    --------
    density_losses : every density loss from one quadrature, with the
        accuracy measured.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import norm
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import total_variation
    >>> def model(mean):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GaussianExpertParams(np.array([[mean, 0.0]]),
    ...                                             np.array([1.0])))
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> tv = total_variation(model(0.0), model(1.0), np.zeros((1, 1)))
    >>> bool(np.isclose(tv, 2 * norm.cdf(0.5) - 1, rtol=1e-9))
    True
    """
    values = density_losses(true, fitted, X, weights, ("tv",), n_points=n_points)
    return values["tv"]


# =============================================================================
# Voronoi losses
# =============================================================================
@dataclass(frozen=True)
class VoronoiLoss:
    """A Voronoi loss value with the cells it was computed on.

    Parameters
    ----------
    value : float
        The loss.
    kind : str
        The loss of the catalogue that was computed (``"auto"`` resolved).
    cells : ndarray of shape (n_fitted_experts,)
        For each fitted expert, the index (in the true model's numbering,
        0-based) of the true expert whose Voronoi cell it falls in. Shared
        and routed experts are never mixed: a fitted shared expert's cell is
        a true shared expert.
    cell_sizes : ndarray of shape (n_true_experts,)
        ``|A_j|`` for each true expert ``j`` (0: an empty cell).
    anchor : str
        The softmax anchoring used (``"none"`` where it does not apply).
    shift : ndarray of shape (1 + n_gate_inputs,) or None
        For softmax routing: the translation ``(t_0, t_1)`` subtracted from
        the fitted gate rows, after re-expressing them with the reference
        row at zero (first row for ``"none"`` and ``"optimal"``, last row
        for ``"paper"``); zero except for ``"optimal"`` (where a perfect fit
        gives ``t_0 = log sum_j exp(beta*_0j)``, the truth's masses being
        normalised). None for other gates.
    errors : dict of str to float
        The per-parameter errors at these cells and this translation (see
        :func:`per_parameter_errors`).
    """

    value: float
    kind: str
    cells: NDArray[np.intp]
    cell_sizes: NDArray[np.intp]
    anchor: str = "none"
    shift: NDArray[np.float64] | None = None
    errors: dict[str, float] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)


def voronoi_cells(
    fitted_atoms: ArrayLike,
    true_atoms: ArrayLike,
    metric: str = "euclid",
    blocks: Sequence[int] | None = None,
) -> NDArray[np.intp]:
    """Voronoi cell of each fitted atom: the index of its nearest true atom.

    Parameters
    ----------
    fitted_atoms : array-like of shape (n_fitted, p)
        Fitted atoms, one per row (masses excluded).
    true_atoms : array-like of shape (n_true, p)
        True atoms.
    metric : {"euclid", "block_l1"}, default="euclid"
        ``"euclid"``: Euclidean distance on the stacked vector (the papers'
        definition); ``"block_l1"``: the sum of the blocks' Euclidean norms
        (the authors' code, e.g. ``|d beta_1| + |d b| + |d a| + |d nu|``).
    blocks : sequence of int, optional
        Lengths of the consecutive blocks of the atom (summing to ``p``),
        for ``"block_l1"``; default: every coordinate its own block (the
        L1 distance). Ignored by ``"euclid"``.

    Returns
    -------
    ndarray of shape (n_fitted,)
        ``j`` such that fitted atom ``i`` lies in the cell ``A_j``; ties go
        to the lowest ``j``, so the cells partition the fitted atoms.

    Notes
    -----
    theory.md section 5.2.1:
    ``A_j = {i : |zeta_i - zeta*_j| <= |zeta_i - zeta*_l| for all l}``.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat.losses import voronoi_cells
    >>> voronoi_cells(np.array([[0.1], [2.0], [-0.2], [1.0]]), np.array([[0.0], [2.0]]))
    array([0, 1, 0, 0])
    """
    F = np.asarray(fitted_atoms, dtype=float)
    T = np.asarray(true_atoms, dtype=float)
    if F.ndim != 2 or T.ndim != 2 or F.shape[1] != T.shape[1] or T.shape[0] == 0:
        raise ValueError(
            "fitted_atoms and true_atoms must be 2-D arrays with the same number "
            f"of columns and at least one true atom; got {F.shape} and {T.shape}."
        )
    _check_option(metric, CELL_METRICS, "metric")
    if blocks is None:
        sizes = [1] * F.shape[1]
    else:
        sizes = [_positive_int(int(b), "blocks entries") for b in blocks]
        if sum(sizes) != F.shape[1]:
            raise ValueError(
                f"blocks must sum to the atom length {F.shape[1]}; got {list(blocks)}."
            )
    edges = np.cumsum([0, *sizes])
    dist = [
        np.linalg.norm(F[:, None, a:b] - T[None, :, a:b], axis=2)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    return _cells_from_distances(dist, metric)


def _cells_from_distances(dist: Sequence[NDArray[np.float64]], metric: str):
    """Cells from per-block distance matrices (n_fitted, n_true)."""
    if metric == "euclid":
        cost = sum(d * d for d in dist)
    else:
        cost = sum(dist)
    return np.argmin(cost, axis=1)


def _check_option(value: Any, allowed: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {list(allowed)}.")
    return value


# -- the models' mixing measures -------------------------------------------------
@dataclass(frozen=True)
class _Group:
    """One block of experts of a model: all of them, the shared or the routed.

    ``blocks`` maps every block name to a (n_experts, dim) array: the atom
    blocks (``atom``, in order) and, for gated experts, ``gate_intercept``
    (in some losses' terms, never in the atom).
    """

    name: str
    index: NDArray[np.intp]
    blocks: dict[str, NDArray[np.float64]]
    atom: tuple[str, ...]
    masses: NDArray[np.float64]
    softmax: bool


def _stack_blocks(atoms: list[dict[str, NDArray]], owner: str) -> dict[str, NDArray]:
    names = list(atoms[0])
    if any(list(a) != names for a in atoms):
        raise ValueError(f"The {owner} experts do not all have the same atom blocks.")
    return {
        name: np.array([np.ravel(a[name]) for a in atoms], dtype=float)
        for name in names
    }


def _gated_group(name, gate, gate_params, atoms, offset, anchor) -> _Group:
    coef = np.asarray(gate_params.coef, dtype=float)
    softmax = isinstance(gate, SoftmaxGate)
    if softmax:
        # translation-invariant gate: re-express on a reference row (5.2.4)
        coef = coef - coef[-1 if anchor == "paper" else 0]
    params = GateParams(coef)
    expert_blocks = _stack_blocks(atoms, name)
    slopes = gate.voronoi_slopes(params)
    blocks = {"gate_slope": slopes} if slopes.shape[1] else {}
    blocks.update(expert_blocks)
    blocks["gate_intercept"] = coef[:, :1]
    atom = tuple(b for b in blocks if b != "gate_intercept")
    index = offset + np.arange(coef.shape[0])
    masses = np.asarray(gate.voronoi_masses(params), dtype=float)
    return _Group(name, index, blocks, atom, masses, softmax)


def _groups(model: MixtureOfExperts, anchor: str, role: str) -> list[_Group]:
    if not isinstance(model, MixtureOfExperts):
        raise ValueError(
            f"Voronoi losses compare mixing measures: the {role} model must be a "
            f"MixtureOfExperts; got {type(model).__name__}."
        )
    params = _params(model)
    atoms = model.expert.atom_blocks(params.expert)
    gate = model.gate
    if isinstance(gate, SharedExpertsGate):
        k1 = gate.n_shared
        masses = np.asarray(gate.voronoi_masses(params.gate), dtype=float)
        shared_blocks = _stack_blocks(atoms[:k1], "shared")
        shared = _Group(
            "shared",
            np.arange(k1),
            shared_blocks,
            tuple(shared_blocks),
            masses[:k1],
            False,
        )
        routed = _gated_group(
            "routed", gate.routed, params.gate.routed, atoms[k1:], k1, anchor
        )
        return [shared, routed]
    return [_gated_group("experts", gate, params.gate, atoms, 0, anchor)]


def _structure(model: MixtureOfExperts) -> tuple:
    gate = model.gate
    gates = (
        (type(gate), type(gate.routed)) if hasattr(gate, "routed") else (type(gate),)
    )
    expert = model.expert
    if isinstance(expert, StackedExperts):
        experts = (type(expert), type(expert.shared), type(expert.routed))
    else:
        experts = (type(expert),)
    return gates, experts


def _check_compatible(true, fitted, true_groups, fit_groups) -> None:
    def names(types):
        return "/".join(t.__name__ for t in types)

    (tg, te), (fg, fe) = _structure(true), _structure(fitted)
    if tg != fg or te != fe:
        raise ValueError(
            "Mismatched model families: the true model has gate "
            f"{names(tg)} and experts {names(te)}, the fitted one gate "
            f"{names(fg)} and experts {names(fe)}. Voronoi losses compare "
            "models of one family."
        )
    for t, f in zip(true_groups, fit_groups, strict=True):
        t_shapes = {b: v.shape[1] for b, v in t.blocks.items()}
        f_shapes = {b: v.shape[1] for b, v in f.blocks.items()}
        if t_shapes != f_shapes:
            raise ValueError(
                f"Mismatched model families: the {t.name} experts' atom blocks "
                f"differ (true {t_shapes}, fitted {f_shapes}); check the number "
                "of covariates, the degree and whether the variance is known."
            )


# -- the loss catalogue (theory.md section 5.2.2) --------------------------------
@dataclass(frozen=True)
class _Rule:
    """How one group of experts enters a loss.

    ``over`` gives the exponent of each atom block in over-specified cells:
    one number for every block, or a mapping ``block -> exponent`` whose
    entries ``("r", c)`` mean ``c r(|A_j|)`` (section 5.2.5). ``extra``
    blocks (``gate_intercept``) enter exact cells with exponent one.
    """

    weighted: bool = True
    mass: str = "all"
    over: float | Mapping[str, Any] = 2.0
    extra: tuple[str, ...] = ()
    all_exact: bool = False


_SG_OVER = {
    "gate_slope": ("r", 1.0),
    "intercept": ("r", 1.0),
    "slope": ("r", 0.5),
    "var": ("r", 0.5),
}
_DS_SHARED_LINEAR_OVER = {"slope": 2.0, "intercept": ("r", 1.0), "var": ("r", 0.5)}
_STRONG = _Rule()
_KINDS: dict[str, dict[str, _Rule]] = {
    "softmax_gaussian": {"experts": _Rule(over=_SG_OVER)},
    "ds_strong": {"shared": _STRONG, "routed": _STRONG},
    "ds_linear": {
        "shared": _Rule(over=_DS_SHARED_LINEAR_OVER),
        "routed": _Rule(over=_SG_OVER),
    },
    "ds_sigmoid_sparse": {
        "shared": _STRONG,
        "routed": _Rule(weighted=False, mass="over", extra=("gate_intercept",)),
    },
    "ds_sigmoid_dense": {
        "shared": _STRONG,
        "routed": _Rule(
            weighted=False, mass="none", extra=("gate_intercept",), all_exact=True
        ),
    },
    "multinomial": {"experts": _STRONG},
}


def _rule_for(kind: str, group: _Group) -> _Rule:
    rules = _KINDS[kind]
    name = "routed" if group.name == "experts" and "routed" in rules else group.name
    if name not in rules:
        raise ValueError(
            f"kind={kind!r} is for models without shared experts; for shared "
            "and routed experts use one of 'ds_strong', 'ds_linear', "
            "'ds_sigmoid_sparse', 'ds_sigmoid_dense'."
        )
    rule = rules[name]
    if isinstance(rule.over, Mapping):
        missing = [b for b in group.atom if b not in rule.over]
        if missing:
            raise ValueError(
                f"kind={kind!r} has no exponent for the atom blocks {missing} of "
                f"the {group.name} experts (it covers {list(rule.over)}: linear "
                "Gaussian experts). Use 'ds_strong' for strongly identifiable "
                "(ReLU) experts."
            )
    return rule


class _UnknownExponent(Exception):
    """A cell size with no exponent (r >= 7 for four atoms, unknown)."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__(sizes)
        self.sizes = sorted(set(int(s) for s in sizes))


def _exponent_table(exponents: Mapping[int, float] | None) -> dict[int, float]:
    table = dict(_DEFAULT_EXPONENTS)
    if exponents is None:
        return table
    if not isinstance(exponents, Mapping):
        raise ValueError(
            f"exponents must be a mapping {{cell size: r}}; got {exponents!r}."
        )
    for size, r in exponents.items():
        ok_size = isinstance(size, int | np.integer) and not isinstance(size, bool)
        if not ok_size or size < 2 or not (np.isfinite(r) and r > 0):
            raise ValueError(
                "exponents maps cell sizes >= 2 to positive exponents r, e.g. "
                f"{{4: 8.0}}; got {{{size!r}: {r!r}}}."
            )
        table[int(size)] = float(r)
    return table


def _over_exponents(rule, block, size_i, exact, table) -> NDArray[np.float64]:
    """Exponent of ``block`` for each fitted atom, given its cell's size."""
    spec = rule.over if not isinstance(rule.over, Mapping) else rule.over[block]
    if not isinstance(spec, tuple):
        return np.where(exact, 1.0, float(spec))
    unknown = [s for s in size_i[~exact] if int(s) not in table]
    if unknown:
        raise _UnknownExponent(unknown)
    r = np.array([table.get(int(s), 1.0) for s in size_i])
    return np.where(exact, 1.0, spec[1] * r)


@dataclass(frozen=True)
class _Terms:
    """One group's loss as a function of the mass scale ``a = exp(-t_0)``.

    ``value(a) = fixed + a scaled + sum_{j in mask} |a cell_mass_j - w*_j|``.
    """

    fixed: float
    scaled: float
    cell_mass: NDArray[np.float64]
    true_mass: NDArray[np.float64]
    mask: NDArray[np.bool_]
    cells: NDArray[np.intp]
    sizes: NDArray[np.intp]

    def value(self, a: float | NDArray[np.float64] = 1.0) -> Any:
        a = np.asarray(a, dtype=float)
        gap = np.abs(
            a[..., None] * self.cell_mass[self.mask] - self.true_mass[self.mask]
        )
        return self.fixed + a * self.scaled + gap.sum(axis=-1)


def _block_distances(fit: _Group, true: _Group) -> dict[str, NDArray[np.float64]]:
    """``|theta_i - theta*_j|`` for every block, shape (n_fitted, n_true)."""
    return {
        b: np.linalg.norm(fit.blocks[b][:, None, :] - true.blocks[b][None], axis=2)
        for b in fit.blocks
    }


def _group_terms(fit, true, rule, dist, metric, table) -> _Terms:
    cells = _cells_from_distances([dist[b] for b in true.atom], metric)
    k = len(true.index)
    sizes = np.bincount(cells, minlength=k)
    size_i = sizes[cells]
    exact = np.ones(len(cells), bool) if rule.all_exact else size_i == 1
    rows = np.arange(len(cells))
    per_atom = np.zeros(len(cells))
    for b in true.atom:
        e = _over_exponents(rule, b, size_i, exact, table)
        per_atom += dist[b][rows, cells] ** e
    for b in rule.extra:
        per_atom += np.where(exact, dist[b][rows, cells], 0.0)
    cell_mass = np.bincount(cells, weights=fit.masses, minlength=k)
    if rule.mass == "all":
        mask = np.ones(k, bool)
    elif rule.mass == "over":
        mask = sizes > 1
    else:
        mask = np.zeros(k, bool)
    if rule.weighted:
        fixed, scaled = 0.0, float(fit.masses @ per_atom)
    else:
        fixed, scaled = float(per_atom.sum()), 0.0
    return _Terms(fixed, scaled, cell_mass, true.masses, mask, cells, sizes)


@dataclass
class _Pair:
    """A fitted group against the matching true group, with its rule."""

    fit: _Group
    true: _Group
    rule: _Rule
    dist: dict[str, NDArray[np.float64]]

    def terms(self, metric, table, t1=None) -> _Terms:
        dist = self.dist
        if t1 is not None and "gate_slope" in dist:
            moved = self.fit.blocks["gate_slope"] - t1
            gs = np.linalg.norm(
                moved[:, None, :] - self.true.blocks["gate_slope"], axis=2
            )
            dist = {**dist, "gate_slope": gs}
        return _group_terms(self.fit, self.true, self.rule, dist, metric, table)


def _best_scale(terms: _Terms) -> tuple[float, float]:
    """Exact minimum over ``a = exp(-t_0)`` of a softmax group's loss.

    ``value(a)`` is convex and piecewise linear in ``a``, so its minimum is
    at a kink ``a = w*_j / S_j`` (a cell's fitted mass matched to its true
    mass) or, when it increases everywhere, as ``a -> 0``; that limit
    (every fitted mass sent to zero) is excluded, and ``a = 1`` (no shift)
    is always a candidate.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        kinks = terms.true_mass / terms.cell_mass
    keep = terms.mask & (terms.cell_mass > 0) & np.isfinite(kinks) & (kinks > 0)
    candidates = np.concatenate([[1.0], kinks[keep]])
    values = terms.value(candidates)
    best = int(np.argmin(values))
    return float(values[best]), float(candidates[best])


def _optimal_anchor(pair: _Pair, metric, table) -> tuple[float, float, NDArray]:
    """Minimise a softmax group's loss over the gate translation (t_0, t_1).

    Exact in ``t_0`` (:func:`_best_scale`), Nelder-Mead in ``t_1`` from the
    shift that matches the reference cell; the start and ``t_1 = 0`` stay
    candidates, so the result never exceeds the unshifted loss.
    """
    slopes = pair.fit.blocks.get("gate_slope")
    if slopes is None:
        value, a = _best_scale(pair.terms(metric, table))
        return value, a, np.zeros(0)
    start_terms = pair.terms(metric, table, np.zeros(slopes.shape[1]))
    ref = start_terms.cells == 0  # the true reference expert's cell
    if ref.any():
        w = pair.fit.masses[ref]
        t_start = (w @ slopes[ref]) / w.sum() - pair.true.blocks["gate_slope"][0]
    else:
        t_start = np.zeros(slopes.shape[1])

    def objective(t1):
        try:
            return _best_scale(pair.terms(metric, table, t1))[0]
        except _UnknownExponent:
            return np.inf

    scale = 1.0 + float(np.max(np.abs(pair.true.blocks["gate_slope"])))
    candidates = [t_start, np.zeros_like(t_start)]
    x, step = t_start, 0.1 * scale
    for _ in range(2):  # a coarse search, then a polish around its result
        simplex = x + np.vstack([np.zeros_like(x), step * np.eye(x.size)])
        # Stop on the simplex size alone: the loss has kinks (exponent-one
        # terms, cell changes) where its values never agree to a tolerance.
        result = minimize(
            objective,
            x,
            method="Nelder-Mead",
            options={
                "initial_simplex": simplex,
                "xatol": 1e-10 * scale,
                "fatol": np.inf,
                "maxfev": 400 * (x.size + 1),
            },
        )
        x, step = np.asarray(result.x, dtype=float), 1e-3 * step
        candidates.append(x)
    values = [objective(t) for t in candidates]
    t1 = candidates[int(np.argmin(values))]
    terms = pair.terms(metric, table, t1)  # raises for unknown cell sizes
    value, a = _best_scale(terms)
    return value, a, t1


def _auto_kind(fitted: MixtureOfExperts, pairs: list[_Pair], metric: str) -> str:
    """The catalogue's loss for the fitted model's structure (see voronoi_loss)."""
    expert, gate = fitted.expert, fitted.gate
    if isinstance(expert, MultinomialLogisticExpert):
        return "multinomial"
    shared = isinstance(gate, SharedExpertsGate)
    routed_gate = gate.routed if shared else gate
    families = (
        (expert.shared, expert.routed)
        if isinstance(expert, StackedExperts)
        else (expert,)
    )
    relu = all(isinstance(f, ReLUExpert) for f in families)
    linear = all(isinstance(f, GaussianExpert) for f in families)
    if not (relu or linear):
        if not all(isinstance(f, ReLUExpert | GaussianExpert) for f in families):
            raise ValueError(
                f"kind='auto' has no Voronoi loss for {type(expert).__name__} "
                "experts in the catalogue (theory.md section 5.2.2); pass kind= "
                "explicitly (e.g. 'multinomial' for exponent 2 on over-specified "
                "cells)."
            )
    if isinstance(routed_gate, NormalizedSigmoidGate) and (shared or relu):
        return _sigmoid_regime(pairs[-1], metric)
    if not shared and linear:
        return "softmax_gaussian"
    if relu:
        return "ds_strong"
    if linear:
        return "ds_linear"
    raise ValueError(
        "kind='auto': shared and routed experts of different families under "
        "softmax routing are outside the catalogue (theory.md section 5.2.2); "
        "pass kind= explicitly."
    )


def _sigmoid_regime(pair: _Pair, metric: str) -> str:
    """Sparse if every over-specified true routed atom has zero gate slopes."""
    cells = _cells_from_distances([pair.dist[b] for b in pair.true.atom], metric)
    sizes = np.bincount(cells, minlength=len(pair.true.index))
    slopes = pair.true.blocks.get("gate_slope")
    over = sizes > 1
    if slopes is None or not np.any(slopes[over]):
        return "ds_sigmoid_sparse"
    return "ds_sigmoid_dense"


def _evaluate(true, fitted, kind, anchor, cell_metric, exponents):
    """Every piece of a Voronoi loss: value, pairs, per-group terms, shift."""
    _check_option(kind, VORONOI_KINDS, "kind")
    _check_option(anchor, ANCHORS, "anchor")
    _check_option(cell_metric, CELL_METRICS, "cell_metric")
    table = _exponent_table(exponents)
    form = "paper" if anchor == "paper" else "none"
    true_groups = _groups(true, form, "true")
    fit_groups = _groups(fitted, form, "fitted")
    _check_compatible(true, fitted, true_groups, fit_groups)
    pairs = [
        _Pair(f, t, _STRONG, _block_distances(f, t))
        for f, t in zip(fit_groups, true_groups, strict=True)
    ]
    if kind == "auto":
        kind = _auto_kind(fitted, pairs, cell_metric)
    for pair in pairs:
        pair.rule = _rule_for(kind, pair.fit)
    total, shift, shifts = 0.0, None, {}
    all_terms = []
    try:
        for pair in pairs:
            if pair.fit.softmax and anchor == "optimal" and pair.rule.weighted:
                value, a, t1 = _optimal_anchor(pair, cell_metric, table)
                terms = pair.terms(cell_metric, table, t1)
                # the truth's masses scaled to sum to one: every term of the
                # group scales with them (the minimiser does not move)
                total_mass = float(pair.true.masses.sum())
                value /= total_mass
                shift = np.concatenate([[np.log(total_mass / a)], t1])
                shifts[pair.fit.name] = t1
            else:
                terms = pair.terms(cell_metric, table)
                value = terms.value(1.0)
                if pair.fit.softmax:
                    width = sum(
                        pair.fit.blocks[b].shape[1]
                        for b in ("gate_intercept", "gate_slope")
                        if b in pair.fit.blocks
                    )
                    shift = np.zeros(width)
            total += float(value)
            all_terms.append(terms)
    except _UnknownExponent as error:
        raise ValueError(
            f"Over-specified Voronoi cells of sizes {error.sizes} have no known "
            f"exponent for kind={kind!r}: r(|A_j|) is known for 2 and 3 atoms "
            "(4 and 6) and only bounded below (r >= 7) beyond (theory.md section "
            "5.2.5). Fit at most k* + 2 atoms, or pass exponents={4: r, ...} "
            "explicitly."
        ) from None
    return kind, total, pairs, all_terms, shift, shifts


def _global_cells(true, fitted, pairs, all_terms):
    cells = np.empty(fitted.n_experts, dtype=np.intp)
    sizes = np.zeros(true.n_experts, dtype=np.intp)
    for pair, terms in zip(pairs, all_terms, strict=True):
        cells[pair.fit.index] = pair.true.index[terms.cells]
        sizes[pair.true.index] = terms.sizes
    return cells, sizes


def voronoi_loss(
    true: MixtureOfExperts,
    fitted: MixtureOfExperts,
    kind: str = "auto",
    anchor: str = "optimal",
    cell_metric: str = "euclid",
    exponents: Mapping[int, float] | None = None,
) -> VoronoiLoss:
    """Voronoi loss between the fitted and the true mixing measures.

    Parameters
    ----------
    true : MixtureOfExperts
        The truth ``G*`` (for ``"ds_sigmoid_dense"``: the best approximation
        ``G-check`` of the truth within the fitted family, section 5.2.3).
    fitted : MixtureOfExperts
        The estimate, of the same family (gate and expert types, atom
        blocks); it may have more (or fewer) experts.
    kind : str, default="auto"
        The loss (theory.md section 5.2.2); every kind uses exponent one on
        every block of exact-specified cells (``|A_j| = 1``):

        - ``"softmax_gaussian"``: SG's ``D_1``/``D_2`` (linear Gaussian
          experts, any gate without shared experts). Weighted by the masses;
          over-specified cells
          ``|d beta_1|^r + |d slope|^(r/2) + |d intercept|^r + |d var|^(r/2)``
          with ``r = r(|A_j|)`` (4 for two atoms, 6 for three); mass term
          ``sum_j |sum_{i in A_j} w_i - w*_j|``.
        - ``"ds_strong"``: DeepSeekMoE ``D_1`` (strongly identifiable, e.g.
          ReLU, experts): exponent 2 on every block of over-specified cells,
          mass terms in ``omega`` and in ``exp(beta_0)``.
        - ``"ds_linear"``: DeepSeekMoE ``D_2`` (linear experts): shared
          over-specified cells ``|d kappa_1|^2 + |d kappa_0|^r1 +
          |d tau|^(r1/2)``; routed ones as ``"softmax_gaussian"`` with
          ``r2``; ``r1 = r2 = r(|A_j|)``.
        - ``"ds_sigmoid_sparse"``: ``D_3``: shared terms as ``D_1``; routed
          terms unweighted, exact cells
          ``|d beta_1| + |d beta_0| + |d eta| + |d nu|``, over-specified
          cells exponent 2 without ``beta_0``; routed mass term over the
          over-specified cells only.
        - ``"ds_sigmoid_dense"``: ``D_4``: shared terms as ``D_1``; routed
          terms unweighted with exponent one on every block and on
          ``beta_0``, for every routed atom, against the atoms of ``true``
          (pass ``G-check``); no routed mass term.
        - ``"multinomial"``: ``D_ML`` [M]: exponent 2 on ``beta_1``, slopes
          and intercepts of over-specified cells, mass ``exp(beta_0)``.
        - ``"auto"``: multinomial experts give ``"multinomial"``; a
          normalized sigmoid routing with shared or ReLU experts gives
          ``"ds_sigmoid_sparse"`` if every over-specified true routed atom
          has ``beta*_1 = 0`` (or none is over-specified), else
          ``"ds_sigmoid_dense"``; linear Gaussian experts without shared
          experts give ``"softmax_gaussian"`` (any gate); otherwise ReLU
          experts give ``"ds_strong"`` and linear Gaussian ones
          ``"ds_linear"``. Other expert families need an explicit kind.
    anchor : {"optimal", "none", "paper"}, default="optimal"
        Softmax anchoring of the masses ``exp(beta_0)`` (section 5.2.4;
        ignored by other gates):

        - ``"none"``: both models with their first gate row at zero
          (moestat's stored form);
        - ``"paper"``: both re-expressed with their last gate row at zero
          (the authors' EM);
        - ``"optimal"`` [P]: the truth's masses ``exp(beta*_0)`` scaled to
          sum to one, and the loss minimised over a translation
          ``(t_0, t_1)`` of the fitted gate rows, the cells recomputed at
          each shift (``beta_1`` is in the atom). See Notes.
    cell_metric : {"euclid", "block_l1"}, default="euclid"
        Distance defining the cells (:func:`voronoi_cells`).
    exponents : mapping of int to float, optional
        ``{cell size: r}`` added to (or overriding) ``{2: 4, 3: 6}`` for the
        kinds whose over-specified exponents depend on the cell size
        (``"softmax_gaussian"``, ``"ds_linear"``).

    Returns
    -------
    VoronoiLoss
        The value with the cells, their sizes, the kind and the shift.

    Raises
    ------
    ValueError
        For an unknown kind, anchor or metric; models of different families;
        a kind that does not fit the experts' blocks; cells of four or more
        atoms for a kind whose exponent there is unknown (section 5.2.5:
        fit at most ``k* + 2`` atoms, or pass ``exponents``).

    Notes
    -----
    Atoms exclude the mass (section 5.2.1): expert ``i``'s atom is its gate
    slopes ``beta_1i`` (none for shared experts) followed by the blocks of
    its expert family's ``atom_blocks`` (:class:`~moestat.ReLUExpert`:
    the scale-free ``inner_bias``, ``inner_slope``, ``outer``, ``var``).
    Masses come from the gate's ``voronoi_masses``: ``exp(beta_0)``
    (softmax), ``sigma(beta_0)`` (normalized sigmoid), ``omega`` (shared
    experts). Cells never mix shared and routed experts. Every block enters
    through its Euclidean norm. Cells of size ``>= 4`` have unknown
    exponents ``r >= 7`` except for the kinds with exponent 2.

    **Optimal anchoring** [P]. Translating every fitted gate row by
    ``(t_0, t_1)`` leaves the density unchanged but scales every mass by
    ``a = exp(-t_0)`` and moves every ``beta_1`` (and so the cells). For
    fixed ``t_1`` the loss is convex and piecewise linear in ``a``, and is
    minimised exactly over the kinks where a cell's fitted mass equals its
    true mass (``a = 1``, no shift, always a candidate; the degenerate
    ``a -> 0`` is excluded). ``t_1`` is found by Nelder-Mead started from
    the shift that matches the reference cell (the cell of the true first
    expert: mass-weighted mean of its fitted ``beta_1`` equal to the
    truth's) and polished once; the start and ``t_1 = 0`` stay candidates.
    Translating the *truth* by ``(s_0, s_1)`` only multiplies this minimum
    by ``exp(-s_0)``, so the truth is taken with its masses summing to one:
    the value then depends on neither model's stored translation nor on
    the experts' order, and never exceeds ``anchor="none"`` (where the
    truth's first mass is 1, so its masses sum to at least 1). Kinds whose
    routed terms are not mass-weighted (``"ds_sigmoid_*"``) are not
    anchored. With moestat's first-row convention the SG truth of theory.md
    section 6.C has masses ``(1, e^8)``: ``"none"`` weighs its second
    expert ~3000 times more than ``"optimal"`` does.

    References
    ----------
    .. [1] Nguyen, H., Nguyen, T. and Ho, N. (2023). Demystifying softmax
       gating function in Gaussian mixture of experts. NeurIPS 2023,
       arXiv:2305.03288.
    .. [2] Nguyen, H., Doan, T. T., Pham, Q., Bui, N. D. Q., Ho, N. and
       Rinaldo, A. (2025). On DeepSeekMoE: statistical benefits of shared
       experts and normalized sigmoid gating. arXiv:2505.10860.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import voronoi_loss
    >>> truth = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), MoEParams(
    ...     GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
    ...     GaussianExpertParams(np.array([[1.0, 2.0], [-1.0, -1.5]]),
    ...                          np.array([0.09, 0.25]))))
    >>> loss = voronoi_loss(truth, truth)
    >>> loss.value, loss.kind, loss.cell_sizes
    (0.0, 'softmax_gaussian', array([1, 1]))
    """
    kind, total, pairs, all_terms, shift, shifts = _evaluate(
        true, fitted, kind, anchor, cell_metric, exponents
    )
    cells, sizes = _global_cells(true, fitted, pairs, all_terms)
    used_anchor = anchor if any(p.fit.softmax for p in pairs) else "none"
    errors = _block_errors(pairs, all_terms, shifts)
    return VoronoiLoss(float(total), kind, cells, sizes, used_anchor, shift, errors)


def _block_errors(pairs, all_terms, shifts) -> dict[str, float]:
    """``max_{i in A_j} |theta_i - theta*_j|`` per block and true atom."""
    prefixed = len(pairs) > 1
    errors: dict[str, float] = {}
    for pair, terms in zip(pairs, all_terms, strict=True):
        prefix = f"{pair.true.name}_" if prefixed else ""
        for block in pair.true.atom:
            values = pair.fit.blocks[block]
            if block == "gate_slope" and pair.fit.name in shifts:
                values = values - shifts[pair.fit.name]
            for j, label in enumerate(pair.true.index):
                members = terms.cells == j
                if not members.any():
                    errors[f"{prefix}{block}[{label}]"] = float("nan")
                    continue
                gaps = values[members] - pair.true.blocks[block][j]
                errors[f"{prefix}{block}[{label}]"] = float(
                    np.max(np.linalg.norm(gaps, axis=1))
                )
    return errors


def per_parameter_errors(
    true: MixtureOfExperts,
    fitted: MixtureOfExperts,
    kind: str = "auto",
    anchor: str = "optimal",
    cell_metric: str = "euclid",
    exponents: Mapping[int, float] | None = None,
) -> dict[str, float]:
    """Worst error of each parameter block within each Voronoi cell.

    Parameters
    ----------
    true, fitted, kind, anchor, cell_metric, exponents
        As for :func:`voronoi_loss`, which fixes the cells and (for softmax
        gates) the gate's translation the errors are measured at.

    Returns
    -------
    dict of str to float
        ``e_theta(j) = max_{i in A_j} |theta_i - theta*_j|`` for every atom
        block ``theta`` and true expert ``j``, keyed ``"slope[1]"`` (block
        ``slope`` of true expert 1, 0-based in the true model's numbering);
        with shared experts the keys carry the group, ``"shared_slope[0]"``,
        ``"routed_gate_slope[1]"``. ``NaN`` for an empty cell (no fitted
        atom near that true expert). Blocks: ``gate_slope`` (``beta_1``)
        and the expert family's atom blocks; the masses are not included.

    Notes
    -----
    theory.md section 5.3 [P]: the different rates of the blocks in
    over-specified cells (e.g. ``b`` at ``n^(-1/8)`` against ``a`` at
    ``n^(-1/4)`` for two atoms, SG) show directly in these errors.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import per_parameter_errors
    >>> def model(b):
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), MoEParams(
    ...         GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
    ...         GaussianExpertParams(np.array([[b, 2.0], [-1.0, -1.5]]),
    ...                              np.array([0.09, 0.25]))))
    >>> errors = per_parameter_errors(model(1.0), model(1.25), anchor="none")
    >>> errors["intercept[0]"], errors["intercept[1]"]
    (0.25, 0.0)
    """
    return voronoi_loss(true, fitted, kind, anchor, cell_metric, exponents).errors
