"""Simulated data sets with a known true model.

Every generator returns the data and the :class:`~moestat.MixtureOfExperts`
that generated it, so examples and tests need no external data and the
truth can be compared with a fit through the same object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from moestat._validation import InstanceOf, Interval, as_generator, validate_params
from moestat.experts import (
    GaussianExpert,
    GaussianExpertParams,
    GLMExpert,
    GLMExpertParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
)
from moestat.gates import resolve_gate, with_shared_experts
from moestat.model import MixtureOfExperts, MoEParams
from moestat.protocols import Gate

__all__ = ["make_moe_regression", "make_moe_classification", "make_moe_glm"]

# The generators' arguments and what each may be, declared once.
_CONSTRAINTS = {
    "n_samples": (Interval("int", 1, None),),
    "n_experts": (Interval("int", 1, None),),
    "n_features": (Interval("int", 1, None),),
    "degree": (Interval("int", 0, None),),
    "n_shared_experts": (Interval("int", 0, None),),
    "n_classes": (Interval("int", 2, None),),
    "noise_var": (Interval("real", 0, None, closed="neither"),),
    "gate": (
        InstanceOf(str, "a gate name"),
        InstanceOf(Gate, "a gate object"),
    ),
}


def _check_arguments(owner: str, **values: Any) -> None:
    validate_params(owner, values, {name: _CONSTRAINTS[name] for name in values})


def make_moe_regression(
    n_samples: int = 1000,
    n_experts: int = 2,
    n_features: int = 1,
    *,
    degree: int = 1,
    gate: Any = "softmax",
    n_shared_experts: int = 0,
    params: MoEParams | None = None,
    noise_var: float = 0.1,
    gate_scale: float = 4.0,
    coef_scale: float = 2.0,
    x_low: float = -1.0,
    x_high: float = 1.0,
    random_state: Any = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], MixtureOfExperts]:
    """Draw a regression data set from a Gaussian mixture of experts.

    Covariates are uniform on ``[x_low, x_high]^n_features``; responses are
    drawn from the true model ``p(y | x)``.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of samples.
    n_experts : int, default=2
        Number of true experts.
    n_features : int, default=1
        Number of covariates ``d``.
    degree : int, default=1
        Order of the experts' polynomial mean.
    gate : {"softmax", "modified_softmax", "normalized_sigmoid"} or gate \
object, default="softmax"
        The true gate over the routed experts.
    n_shared_experts : int, default=0
        Shared experts added to the ``n_experts`` routed ones (listed
        first), with equal weights ``omega`` and the split ``1/2``.
    params : MoEParams, optional
        True parameters. If omitted they are drawn at random: gate rows
        ``N(0, gate_scale^2)`` (the softmax reference row set to zero),
        expert coefficients
        ``N(0, coef_scale^2)`` with intercepts spread ``coef_scale`` apart,
        and every variance equal to ``noise_var``.
    noise_var : float, default=0.1
        Expert variance used when ``params`` is omitted.
    gate_scale, coef_scale : float, default=4.0, 2.0
        Scales of the random parameters.
    x_low, x_high : float, default=-1.0, 1.0
        Range of the uniform covariates.
    random_state : None, int or numpy Generator, default=None
        One stream for the parameters, the covariates and the responses.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    true_model : MixtureOfExperts
        The generating model with its parameters.

    Examples
    --------
    >>> from moestat.datasets import make_moe_regression
    >>> X, y, truth = make_moe_regression(n_samples=500, n_experts=3,
    ...                                   random_state=0)
    >>> X.shape, y.shape, truth.n_experts
    ((500, 1), (500,), 3)
    """
    _check_arguments(
        "make_moe_regression",
        n_samples=n_samples,
        n_experts=n_experts,
        n_features=n_features,
        degree=degree,
        noise_var=noise_var,
        gate=gate,
        n_shared_experts=n_shared_experts,
    )
    rng = as_generator(random_state)

    def expert_params(m, p):
        # Spread the intercepts so that the experts are distinct atoms.
        coef = rng.normal(0.0, coef_scale, size=(m, p))
        coef[:, 0] = coef_scale * (np.arange(m) - (m - 1) / 2)
        coef[:, 0] += rng.normal(0.0, 0.1 * coef_scale, size=m)
        return GaussianExpertParams(coef, np.full(m, float(noise_var)))

    return _draw(
        GaussianExpert(degree=degree),
        n_samples,
        n_experts,
        n_features,
        gate,
        n_shared_experts,
        params,
        expert_params,
        gate_scale,
        x_low,
        x_high,
        rng,
    )


def _draw(
    expert: Any,
    n_samples: int,
    n_experts: int,
    n_features: int,
    gate: Any,
    n_shared_experts: int,
    params: MoEParams | None,
    make_expert_params: Any,
    gate_scale: float,
    x_low: float,
    x_high: float,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], NDArray[np.float64], MixtureOfExperts]:
    """Covariates uniform on the box, responses from the (given or random) truth."""
    if not x_low < x_high:
        raise ValueError(f"x_low must be below x_high; got {x_low} and {x_high}.")
    routed = resolve_gate(gate)
    routed.check_n_experts(n_experts, for_fit=False)
    model = MixtureOfExperts(with_shared_experts(routed, n_shared_experts), expert)
    if params is None:
        m = n_experts + n_shared_experts
        design = model.design(np.zeros((1, n_features)))
        gate_params = model.gate.random_params(m, design.gate.shape[1], gate_scale, rng)
        params = MoEParams(gate_params, make_expert_params(m, design.expert.shape[1]))
    model = model.with_params(params)
    X = rng.uniform(x_low, x_high, size=(n_samples, n_features))
    y, _ = model.sample(X, rng)
    return X, y, model


def make_moe_classification(
    n_samples: int = 1000,
    n_experts: int = 2,
    n_classes: int = 3,
    n_features: int = 1,
    *,
    degree: int = 1,
    gate: Any = "softmax",
    n_shared_experts: int = 0,
    params: MoEParams | None = None,
    gate_scale: float = 3.0,
    coef_scale: float = 2.0,
    x_low: float = -1.0,
    x_high: float = 1.0,
    random_state: Any = None,
) -> tuple[NDArray[np.float64], NDArray[np.intp], MixtureOfExperts]:
    """Draw a classification data set from a multinomial logistic MoE.

    Parameters
    ----------
    n_samples, n_experts, n_features, degree, gate, n_shared_experts
        As for :func:`make_moe_regression`.
    n_classes : int, default=3
        Number of classes ``K``; labels are ``0 .. K-1``.
    params : MoEParams, optional
        True parameters (``MultinomialExpertParams`` for the experts). If
        omitted: gate rows ``N(0, gate_scale^2)``, class coefficients
        ``N(0, coef_scale^2)``.
    gate_scale, coef_scale : float
        Scales of the random parameters.
    x_low, x_high : float, default=-1.0, 1.0
        Range of the uniform covariates.
    random_state : None, int or numpy Generator, default=None
        One stream for parameters, covariates and labels.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        Integer labels.
    true_model : MixtureOfExperts

    Examples
    --------
    >>> from moestat.datasets import make_moe_classification
    >>> X, y, truth = make_moe_classification(200, n_classes=3, random_state=0)
    >>> sorted(set(y.tolist())) == [0, 1, 2]
    True
    """
    _check_arguments(
        "make_moe_classification",
        n_samples=n_samples,
        n_experts=n_experts,
        n_features=n_features,
        degree=degree,
        n_shared_experts=n_shared_experts,
        n_classes=n_classes,
    )
    rng = as_generator(random_state)
    expert = MultinomialLogisticExpert(n_classes, degree=degree)

    def expert_params(m, p):
        coef = rng.normal(0.0, coef_scale, size=(m, n_classes - 1, p))
        return MultinomialExpertParams(coef)

    X, y, model = _draw(
        expert,
        n_samples,
        n_experts,
        n_features,
        gate,
        n_shared_experts,
        params,
        expert_params,
        gate_scale,
        x_low,
        x_high,
        rng,
    )
    return X, y.astype(np.intp), model


def make_moe_glm(
    n_samples: int = 1000,
    n_experts: int = 2,
    n_features: int = 1,
    *,
    family: str = "poisson",
    degree: int = 1,
    gate: Any = "softmax",
    n_shared_experts: int = 0,
    params: MoEParams | None = None,
    gate_scale: float = 3.0,
    coef_scale: float = 1.0,
    x_low: float = -1.0,
    x_high: float = 1.0,
    random_state: Any = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], MixtureOfExperts]:
    """Draw counts (Poisson) or 0/1 responses (Bernoulli) from a GLM-expert MoE.

    Parameters
    ----------
    family : {"poisson", "bernoulli"}, default="poisson"
        The experts' distribution (log or logit link).
    n_samples, n_experts, n_features, degree, gate, n_shared_experts
        As for :func:`make_moe_regression`.
    params : MoEParams, optional
        True parameters (``GLMExpertParams`` for the experts). If omitted:
        gate rows ``N(0, gate_scale^2)``, predictor coefficients
        ``N(0, coef_scale^2)`` with intercepts spread ``coef_scale`` apart.
    gate_scale, coef_scale : float
        Scales of the random parameters.
    x_low, x_high : float, default=-1.0, 1.0
        Range of the uniform covariates.
    random_state : None, int or numpy Generator, default=None
        One stream for parameters, covariates and responses.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
    true_model : MixtureOfExperts

    Examples
    --------
    >>> from moestat.datasets import make_moe_glm
    >>> X, y, truth = make_moe_glm(300, family="poisson", random_state=0)
    >>> bool((y >= 0).all() and (y == y.round()).all())
    True
    """
    _check_arguments(
        "make_moe_glm",
        n_samples=n_samples,
        n_experts=n_experts,
        n_features=n_features,
        degree=degree,
        n_shared_experts=n_shared_experts,
    )
    rng = as_generator(random_state)
    expert = GLMExpert(family, degree=degree)

    def expert_params(m, p):
        coef = rng.normal(0.0, coef_scale, size=(m, p))
        coef[:, 0] = coef_scale * (np.arange(m) - (m - 1) / 2)
        return GLMExpertParams(coef)

    return _draw(
        expert,
        n_samples,
        n_experts,
        n_features,
        gate,
        n_shared_experts,
        params,
        expert_params,
        gate_scale,
        x_low,
        x_high,
        rng,
    )
