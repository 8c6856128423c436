"""What a sweep computes from the truth: near-truth starts and best approximations.

The papers start a rate experiment near the truth (:func:`oracle_start`,
theory.md §4.5), so that optimisation failure stays out of the measured
rates. A misspecified fit is measured against the best approximation of the
truth within its model (:func:`population_fit`): EM weighted by a
quadrature rule on a pseudo-sample that integrates like the true law of
``(X, Y)`` (:func:`pseudo_sample`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moestat._validation import as_generator
from moestat.fit import em, pack, unpack
from moestat.losses import response_quadrature
from moestat.model import MixtureOfExperts, MoEParams

__all__ = ["oracle_params", "oracle_start", "pseudo_sample", "population_fit"]

# Perturbation of the near-truth start: sd = oracle_scale * n ** _ORACLE_POWER
# (CRPE-SGaME code, theory.md §4.5).
_ORACLE_POWER = -0.083


def oracle_params(
    truth: MixtureOfExperts, spec: MixtureOfExperts, assignment: Sequence[int]
) -> MoEParams:
    """The truth's parameters laid out for the fitted specification.

    Fitted expert ``i`` is true expert ``assignment[i]``; copies of one true
    expert share its mass, so the density is the truth's.

    Parameters
    ----------
    truth : MixtureOfExperts
        The true model.
    spec : MixtureOfExperts
        The fitted specification (``len(assignment)`` experts).
    assignment : sequence of int
        True expert of each fitted expert; shared experts map to shared
        ones, routed to routed.

    Returns
    -------
    MoEParams
    """
    if not isinstance(truth, MixtureOfExperts):
        raise TypeError(
            "the near-truth start lays out the truth's own experts, so the truth "
            f"must be a MixtureOfExperts, not {type(truth).__name__}; a truth "
            "outside the model (such as MJ-2's regression function) is fitted "
            "from random starts by simulate() with its scenario"
        )
    index = np.asarray(assignment, dtype=np.intp)
    true_params = truth._require_params()
    k_true, m = truth.n_experts, len(index)
    if index.min() < 0 or index.max() >= k_true or np.unique(index).size < k_true:
        raise ValueError(
            f"assignment {index.tolist()} must use every true expert 0..{k_true - 1}."
        )
    true_groups = truth.gate.expert_groups(k_true)[index]
    if not np.array_equal(true_groups, spec.gate.expert_groups(m)):
        raise ValueError(
            f"assignment {index.tolist()} maps shared experts to routed ones."
        )
    return MoEParams(
        spec.gate.split_atoms(true_params.gate, index),
        spec.expert.split_atoms(true_params.expert, index),
    )


def oracle_start(
    truth: MixtureOfExperts,
    spec: MixtureOfExperts,
    assignment: Sequence[int],
    X: NDArray[np.float64],
    *,
    scale: float,
    rng: np.random.Generator,
    var_floor: float = 0.0,
) -> MoEParams:
    """Near-truth start: :func:`oracle_params` perturbed by ``scale * n^-0.083``.

    The papers' oracle initialisation (theory.md §4.5), which keeps
    optimisation failure out of rate experiments. [P] The Gaussian noise is
    added to the packed free parameters (variances on the log scale, the
    softmax reference row fixed), so the start is always valid.

    Parameters
    ----------
    truth : MixtureOfExperts
        The true model.
    spec : MixtureOfExperts
        The fitted specification (``len(assignment)`` experts).
    assignment : sequence of int
        True expert of each fitted expert (see :func:`oracle_params`).
    X : ndarray of shape (n, d)
        The sample's covariates; ``n = len(X)`` sets the noise level.
    scale : float
        ``c`` of the noise's standard deviation ``c n^-0.083``.
    rng : numpy Generator
        Source of the noise.
    var_floor : float, default=0.0
        Variance floor of the packed parametrisation.

    Returns
    -------
    MoEParams
        The perturbed parameters.
    """
    params = oracle_params(truth, spec, assignment)
    model = spec.with_params(params)
    design = model.design(X[:1])
    shapes = (len(assignment), design.gate.shape[1], design.expert.shape[1])
    theta = pack(model, var_floor)
    sd = scale * len(X) ** _ORACLE_POWER
    theta = theta + rng.normal(0.0, sd, size=theta.shape)
    return unpack(model, theta, shapes, var_floor)


def pseudo_sample(
    truth: Any, covariates: Any, x_nodes: int = 400, y_nodes: int = 40
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """A weighted pseudo-sample that integrates like the true law of (X, Y).

    Covariate Gauss–Legendre nodes times response quadrature nodes under
    the true conditional density; the weights average one.

    Parameters
    ----------
    truth : MixtureOfExperts or object
        The true conditional density (see
        :func:`~moestat.losses.response_quadrature`).
    covariates : UniformCovariates
        The law of X; its ``quadrature(x_nodes)`` gives the covariate nodes.
    x_nodes : int, default=400
        Covariate nodes per coordinate.
    y_nodes : int, default=40
        Response nodes per component (Gaussian-type experts).

    Returns
    -------
    X : ndarray of shape (n_x * q, d)
        Each of the ``n_x`` covariate nodes repeated ``q`` times, ``q`` the
        number of response nodes per covariate node.
    y : ndarray of shape (n_x * q,)
        The response nodes.
    weight : ndarray of shape (n_x * q,)
        Products of covariate and response weights, scaled to average one.
    """
    Xq, wq = covariates.quadrature(x_nodes)
    Y, W = response_quadrature(truth, Xq, y_nodes)
    X = np.repeat(Xq, Y.shape[1], axis=0)
    weight = (wq[:, None] * W).ravel()
    return X, Y.ravel(), weight * (len(weight) / weight.sum())


def population_fit(
    truth: MixtureOfExperts,
    spec: MixtureOfExperts,
    assignment: Sequence[int],
    covariates: Any,
    *,
    x_nodes: int = 400,
    y_nodes: int = 24,
    perturbation: float = 0.1,
    random_state: Any = 0,
    tol: float = 1e-10,
    max_iter: int = 10_000,
) -> MixtureOfExperts:
    """The best approximation of ``truth`` within ``spec``, by population EM.

    EM with the weights of a quadrature rule on a pseudo-sample
    (:func:`pseudo_sample`; theory.md §5.2.3, [P]) maximises
    ``E log p_G(Y | X)``, i.e. minimises ``KL(p* || p_G)`` over ``spec``.
    It starts from :func:`oracle_params` with ``N(0, perturbation^2)`` added
    to the packed parameters: copies of one true expert must be pulled
    apart, since EM keeps exact copies together (a saddle point).

    Parameters
    ----------
    truth : MixtureOfExperts
        The true model.
    spec : MixtureOfExperts
        The fitted specification (``len(assignment)`` experts).
    assignment : sequence of int
        True expert of each fitted expert at the start (see
        :func:`oracle_params`).
    covariates : UniformCovariates
        The law of X.
    x_nodes : int, default=400
        Covariate nodes per coordinate of the pseudo-sample.
    y_nodes : int, default=24
        Response nodes per component of the pseudo-sample.
    perturbation : float, default=0.1
        Standard deviation of the noise added to the start.
    random_state : None, int or numpy Generator, default=0
        Source of the noise.
    tol : float, default=1e-10
        Stopping tolerance of EM.
    max_iter : int, default=10000
        Maximum number of EM iterations.

    Returns
    -------
    MixtureOfExperts
        ``spec`` with the population-optimal parameters.
    """
    X, y, weight = pseudo_sample(truth, covariates, x_nodes, y_nodes)
    start = oracle_start(
        truth,
        spec,
        assignment,
        X[:1],
        scale=perturbation,
        rng=as_generator(random_state),
    )
    model = spec.with_params(start)
    result = em(
        model,
        model.design(X),
        y,
        tol=tol,
        max_iter=max_iter,
        sample_weight=weight,
        accelerate=False,
        stop_on_ridge=False,
    )
    return result.model
