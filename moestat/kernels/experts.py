"""Expert densities and M-steps written once for numpy and torch.

The Gaussian noise of the regression experts and the one-unit ReLU mean of
DeepSeekMoE's experts, as functions of the Python array API standard
(through ``array_api_compat``). The numpy families of
:mod:`moestat.experts` call them on one data set: parameters of shape
``(m, ...)``, a design ``(n, q)``, responses ``(n,)`` and responsibilities
``(n, m)``. The torch engine (:mod:`moestat.torch`) calls the same
functions on a batch of data sets, with a leading axis ``B`` on every
argument: ``(B, m, ...)``, ``(B, n, q)``, ``(B, n)``, ``(B, n, m)``. Any
leading axes are batch axes.

Per-sample arrays are ``(..., n, m)``: with numpy they are stored
experts-major, the layout of the E-step.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import array_api_compat
import numpy as np

from moestat._math import array_namespace, solve_spd, unpack_symmetric
from moestat.kernels.gates import affine_scores, log_sum_exp

__all__ = [
    "normal_log_density",
    "halve_per_expert",
    "relu_unit",
    "relu_squared_error",
    "relu_gauss_newton_step",
    "relu_m_step",
    "glm_cumulant",
    "glm_mean",
    "glm_log_density",
    "glm_objective",
    "glm_newton_step",
    "multinomial_log_probabilities",
    "multinomial_log_density",
    "multinomial_fisher_step",
    "log_excess_variance",
    "excess_variance",
    "EMPTY_EXPERT",
]

_LOG_2PI = math.log(2.0 * math.pi)

#: An expert whose total responsibility is at most this fraction of the
#: sample size has no M-step: it keeps its parameters.
EMPTY_EXPERT = 1e-10


def halve_per_expert(
    objective: Any,
    coef: Any,
    direction: Any,
    current: Any,
    *,
    tries: int,
    maximise: bool,
) -> tuple[Any, Any]:
    """Step halving, expert by expert: ``coef + t d`` with the first good ``t``.

    Each expert (of each data set) takes the first of the steps ``1, 1/2,
    1/4, ...`` (``tries`` of them) at which its objective is no worse than
    ``current``; an expert none of them suits keeps its coefficients.

    Parameters
    ----------
    objective : callable
        Coefficients (..., m, q) to each expert's objective (..., m).
    coef, direction : arrays of shape (..., m, q)
    current : array of shape (..., m)
        ``objective(coef)``.
    tries : int
        Steps tried at most.
    maximise : bool
        Whether the objective is to rise (True) or fall (False).

    Returns
    -------
    coef, value : arrays of shape (..., m, q) and (..., m)
        The kept coefficients and their objective.
    """
    xp = array_namespace(coef, direction, current)
    new, value_new = coef, current
    step = xp.ones_like(current)
    accepted = xp.zeros_like(current, dtype=xp.bool)
    for _ in range(tries):
        candidate = coef + step[..., None] * direction
        value = objective(candidate)
        good = value >= current if maximise else value <= current
        better = ~accepted & good
        new = xp.where(better[..., None], candidate, new)
        value_new = xp.where(better, value, value_new)
        accepted = accepted | better
        if bool(xp.all(accepted)):
            break
        step = xp.where(accepted, step, 0.5 * step)
    return new, value_new


def normal_log_density(mean: Any, var: Any, y: Any) -> Any:
    """``log N(y_t | mean_ti, var_i)`` of every sample and expert.

    Parameters
    ----------
    mean : array of shape (..., n, m)
        The experts' conditional means. With numpy it is overwritten (the
        E-step's fresh means: one (n, m) array allocated, not two).
    var : array of shape (..., m)
        The experts' variances.
    y : array of shape (..., n)
        Responses.

    Returns
    -------
    array of shape (..., n, m)

    Examples
    --------
    >>> import numpy as np
    >>> float(normal_log_density(np.zeros((1, 1)), np.ones(1), np.zeros(1))[0, 0])
    -0.9189385332046727
    """
    xp = array_namespace(mean, var, y)
    if array_api_compat.is_numpy_namespace(xp):
        resid = xp.subtract(y[..., None], mean, out=mean)
        resid *= resid
        resid /= var[..., None, :]
        resid += xp.log(var[..., None, :]) + _LOG_2PI
        resid *= -0.5
        return resid
    resid = y[..., None] - mean
    var = var[..., None, :]
    return -0.5 * (resid * resid / var + (xp.log(var) + _LOG_2PI))


def log_excess_variance(var: Any, var_floor: Any) -> Any:
    """Packed variances ``u = log(nu - nu_min)``, kept finite at the floor.

    Parameters
    ----------
    var : array of shape (..., m)
        Variances, at least the floor.
    var_floor : float or array of shape (...)
        The floor ``nu_min``.

    Returns
    -------
    array of shape (..., m)
    """
    xp = array_namespace(var)
    floor = xp.asarray(var_floor, dtype=var.dtype, device=_device(var))[..., None]
    tiny = 1e-12 * xp.maximum(
        floor, xp.asarray(1e-300, dtype=var.dtype, device=_device(var))
    )
    return xp.log(xp.maximum(var - floor, tiny))


def excess_variance(u: Any, var_floor: Any) -> Any:
    """Variances ``nu = nu_min + exp(u)`` from their packed values.

    Parameters
    ----------
    u : array of shape (..., k)
        Packed variances.
    var_floor : float or array of shape (...)

    Returns
    -------
    array of shape (..., k)
    """
    xp = array_namespace(u)
    floor = xp.asarray(var_floor, dtype=u.dtype, device=_device(u))[..., None]
    return floor + xp.exp(u)


# -- ReLU experts ----------------------------------------------------------------
def relu_unit(coef: Any, inner_design: Any) -> tuple[Any, Any]:
    """Inner activations ``z_ti = eta_1i^T x_t (+ eta_0i)`` and ``max(0, z)``.

    Parameters
    ----------
    coef : array of shape (..., m, q + 1)
        Each expert's inner weights, then its outer weight (not used here).
    inner_design : array of shape (..., n, q)
        The columns the inner weights multiply.

    Returns
    -------
    z, relu : arrays of shape (..., n, m)
    """
    xp = array_namespace(coef, inner_design)
    z = affine_scores(inner_design, coef[..., :-1])
    return z, xp.maximum(z, 0.0)


def relu_squared_error(coef: Any, inner_design: Any, y: Any, resp: Any) -> Any:
    """Each expert's ``sum_t r_ti (y_t - eta_2i max(0, z_ti))^2``.

    Parameters
    ----------
    coef : array of shape (..., m, q + 1)
    inner_design : array of shape (..., n, q)
    y : array of shape (..., n)
    resp : array of shape (..., n, m)
        Responsibilities (weights of the squared errors).

    Returns
    -------
    array of shape (..., m)
    """
    xp = array_namespace(coef, inner_design, y, resp)
    _, relu = relu_unit(coef, inner_design)
    resid = y[..., None] - relu * coef[..., None, :, -1]
    return xp.sum(resp * resid * resid, axis=-2)


def relu_gauss_newton_step(
    coef: Any,
    inner_design: Any,
    y: Any,
    resp: Any,
    current: Any,
    max_halvings: int,
) -> tuple[Any, Any]:
    """One damped Gauss-Newton step on every expert's weighted squared error.

    The direction solves the Gauss-Newton system of each expert (the
    Jacobian of ``h = eta_2 max(0, z)``: ``eta_2 1[z > 0] x`` for the inner
    weights, ``max(0, z)`` for the outer one); the step is halved, expert
    by expert, until the squared error does not increase, at most
    ``max_halvings`` times (then the expert keeps its coefficients).

    Parameters
    ----------
    coef : array of shape (..., m, q + 1)
    inner_design : array of shape (..., n, q)
    y : array of shape (..., n)
    resp : array of shape (..., n, m)
    current : array of shape (..., m)
        :func:`relu_squared_error` at ``coef``.
    max_halvings : int

    Returns
    -------
    coef, value : arrays of shape (..., m, q + 1) and (..., m)
        The new coefficients and their squared errors.
    """
    xp = array_namespace(coef, inner_design, y, resp, current)
    z, relu = relu_unit(coef, inner_design)
    outer = coef[..., -1]
    resid = y[..., None] - relu * outer[..., None, :]
    # Jacobian of h, (..., m, n, q + 1): eta_2 1[z > 0] Pin, then max(0, z)
    active = xp.astype(z > 0, coef.dtype) * outer[..., None, :]
    slope = xp.matrix_transpose(active)[..., None] * inner_design[..., None, :, :]
    jac = xp.concat([slope, xp.matrix_transpose(relu)[..., None]], axis=-1)
    weighted = xp.matrix_transpose(resp)[..., None] * jac
    gram = xp.matmul(xp.matrix_transpose(weighted), jac)
    rhs = xp.matmul(
        xp.matrix_transpose(weighted), xp.matrix_transpose(resid)[..., None]
    )
    rhs = rhs[..., 0]
    direction = solve_spd(gram, rhs, ridge=1e-9)
    return halve_per_expert(
        lambda candidate: relu_squared_error(candidate, inner_design, y, resp),
        coef,
        direction,
        current,
        tries=max_halvings + 1,
        maximise=False,
    )


def relu_m_step(
    coef: Any,
    var: Any,
    inner_design: Any,
    y: Any,
    resp: Any,
    var_floor: Any,
    n_samples: Any,
    *,
    steps: int,
    max_halvings: int,
    hold_empty: bool = True,
) -> tuple[Any, Any]:
    """The ReLU experts' M-step from their current parameters.

    ``steps`` damped Gauss-Newton steps (:func:`relu_gauss_newton_step`) on
    each expert's weighted squared error, then the weighted variance,
    clamped at the floor. An expert whose total responsibility is at most
    :data:`EMPTY_EXPERT` times the sample size keeps ``coef`` and ``var``.

    Parameters
    ----------
    coef : array of shape (..., m, q + 1)
        Current coefficients: the start of the steps.
    var : array of shape (..., m)
        Current variances (kept by empty experts).
    inner_design : array of shape (..., n, q)
    y : array of shape (..., n)
    resp : array of shape (..., n, m)
    var_floor : float or array of shape (...)
        Lower bound ``nu_min`` on the variances.
    n_samples : float or array of shape (...)
        The sample size (sum of the weights) that "empty" is relative to.
    steps, max_halvings : int
    hold_empty : bool, default=True
        Whether empty experts keep ``coef`` and ``var``; False leaves them
        the fit to the pooled data (a fit from a start, with no current
        parameters to keep).

    Returns
    -------
    coef, var : arrays of shape (..., m, q + 1) and (..., m)
    """
    xp = array_namespace(coef, var, inner_design, y, resp)
    var_floor = xp.asarray(var_floor, dtype=var.dtype, device=_device(var))
    n_samples = xp.asarray(n_samples, dtype=var.dtype, device=_device(var))
    weight = xp.sum(resp, axis=-2)
    empty = weight <= EMPTY_EXPERT * n_samples[..., None]
    if bool(xp.any(empty)):
        # An expert with no data has no M-step: fit it to the pooled data
        # (the value is discarded below; it keeps the arrays finite).
        resp = xp.where(empty[..., None, :], xp.ones_like(resp), resp)
        weight = xp.where(empty, n_samples[..., None] * xp.ones_like(weight), weight)
    value = relu_squared_error(coef, inner_design, y, resp)
    new = coef
    for _ in range(steps):
        new, value = relu_gauss_newton_step(
            new, inner_design, y, resp, value, max_halvings
        )
    new_var = xp.maximum(value / weight, var_floor[..., None])
    if hold_empty:
        new = xp.where(empty[..., None], coef, new)
        new_var = xp.where(empty, var, new_var)
    return new, new_var


def _device(x: Any) -> Any:
    return array_api_compat.device(x)


# -- GLM experts (Poisson, Bernoulli) --------------------------------------------
def _quiet(xp: Any) -> Any:
    """Numpy's overflow warnings off (an overflowing ``exp`` is dealt with)."""
    if xp is np:
        return np.errstate(over="ignore", invalid="ignore")
    return contextlib.nullcontext()


def _special(xp: Any, name: str) -> Any:
    """``expit`` or ``gammaln`` of the namespace: scipy's for numpy, torch's own."""
    if xp is np:
        import scipy.special

        return getattr(scipy.special, name)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return {"expit": torch.sigmoid, "gammaln": torch.lgamma}[name]
    raise TypeError(f"no {name} for the array namespace {xp.__name__}.")


def glm_cumulant(family: str, eta: Any) -> Any:
    """``b(eta)``: ``exp(eta)`` (Poisson) or ``log(1 + exp(eta))`` (Bernoulli).

    Parameters
    ----------
    family : {"poisson", "bernoulli"}
    eta : array
        Linear predictors.

    Returns
    -------
    array of the shape of ``eta``
    """
    xp = array_namespace(eta)
    if family == "poisson":
        return xp.exp(eta)
    return xp.logaddexp(xp.zeros_like(eta), eta)


def glm_mean(family: str, eta: Any) -> Any:
    """``b'(eta)``: the conditional mean ``exp(eta)`` or ``expit(eta)``.

    Parameters
    ----------
    family : {"poisson", "bernoulli"}
    eta : array

    Returns
    -------
    array of the shape of ``eta``
    """
    xp = array_namespace(eta)
    return xp.exp(eta) if family == "poisson" else _special(xp, "expit")(eta)


def glm_log_density(family: str, eta: Any, y: Any) -> Any:
    """``y eta - b(eta)`` (minus ``log y!`` for Poisson) of every expert.

    Parameters
    ----------
    family : {"poisson", "bernoulli"}
    eta : array of shape (..., n, m)
    y : array of shape (..., n)

    Returns
    -------
    array of shape (..., n, m)
    """
    xp = array_namespace(eta, y)
    with _quiet(xp):
        out = y[..., None] * eta - glm_cumulant(family, eta)
    if family == "poisson":
        out = out - _special(xp, "gammaln")(y + 1.0)[..., None]
    return out


def glm_objective(
    family: str, coef: Any, Phi: Any, y: Any, resp: Any, ridge: Any = None
) -> Any:
    """Each expert's ``sum_t r_ti [y_t eta_ti - b(eta_ti)]`` minus its ridge.

    Parameters
    ----------
    family : {"poisson", "bernoulli"}
    coef : array of shape (..., m, p)
    Phi : array of shape (..., n, p)
    y : array of shape (..., n)
    resp : array of shape (..., n, m)
    ridge : array of shape (p,), optional
        Weights of the penalty ``0.5 sum_j ridge_j c_ij^2`` (None: none).

    Returns
    -------
    array of shape (..., m)
        ``-inf`` where the objective is not finite.
    """
    xp = array_namespace(coef, Phi, y, resp)
    eta = affine_scores(Phi, coef)
    with _quiet(xp):
        values = resp * (y[..., None] * eta - glm_cumulant(family, eta))
        totals = xp.sum(values, axis=-2)
    if ridge is not None:
        totals = totals - 0.5 * xp.sum(ridge * coef**2, axis=-1)
    return xp.where(xp.isfinite(totals), totals, -math.inf)


def glm_newton_step(
    family: str,
    coef: Any,
    Phi: Any,
    y: Any,
    resp: Any,
    max_halvings: int,
    ridge: Any = None,
    features: Any = None,
) -> Any:
    """One damped IRLS (Newton) step on every expert's weighted GLM objective.

    The direction solves each expert's weighted normal equations
    ``(Phi^T W_i Phi + diag(ridge)) d = Phi^T R_i (y - mu_i) - ridge c_i``
    with ``W_i = diag(r_ti b''(eta_ti))``; the step is halved, expert by
    expert, until :func:`glm_objective` does not decrease, at most
    ``max_halvings`` times (then the expert keeps its coefficients).

    Parameters
    ----------
    family : {"poisson", "bernoulli"}
    coef : array of shape (..., m, p)
    Phi : array of shape (..., n, p)
    y : array of shape (..., n)
    resp : array of shape (..., n, m)
    max_halvings : int
    ridge : array of shape (p,), optional
    features : ndarray of shape (n, p (p + 1) / 2), optional
        numpy, one data set: the products of design columns
        (:func:`moestat._math.pair_products`, computed once per fit), so that
        every expert's weighted Gram matrix is one matrix product. Without
        them each expert's ``Phi^T W_i Phi`` is formed directly.

    Returns
    -------
    array of shape (..., m, p)
    """
    xp = array_namespace(coef, Phi, y, resp)
    eta = affine_scores(Phi, coef)
    with _quiet(xp):
        mu = glm_mean(family, eta)
    variance = mu if family == "poisson" else mu * (1.0 - mu)
    grad = xp.matmul(xp.matrix_transpose(resp * (y[..., None] - mu)), Phi)
    weights = resp * variance
    if features is not None:
        hessian = unpack_symmetric(
            xp.matmul(xp.matrix_transpose(weights), features), Phi.shape[-1]
        )
    else:
        weighted = xp.matrix_transpose(weights)[..., None] * Phi[..., None, :, :]
        hessian = xp.matmul(xp.matrix_transpose(weighted), Phi[..., None, :, :])
    if ridge is not None:
        grad = grad - coef * ridge
        hessian = hessian + ridge * xp.eye(
            Phi.shape[-1], dtype=Phi.dtype, device=_device(Phi)
        )
    direction = solve_spd(hessian, grad, ridge=1e-9)
    current = glm_objective(family, coef, Phi, y, resp, ridge)
    new, _ = halve_per_expert(
        lambda candidate: glm_objective(family, candidate, Phi, y, resp, ridge),
        coef,
        direction,
        current,
        tries=max_halvings,
        maximise=True,
    )
    return new


# -- multinomial logistic experts -------------------------------------------------
def multinomial_log_probabilities(coef: Any, Phi: Any) -> Any:
    """``log p_i(c | x_t)`` of every sample, expert and class (class 0 the reference).

    Parameters
    ----------
    coef : array of shape (..., m, K - 1, p)
        Each expert's coefficients of the classes ``1 .. K-1``.
    Phi : array of shape (..., n, p)

    Returns
    -------
    array of shape (..., n, m, K)
    """
    xp = array_namespace(coef, Phi)
    m, k1, p = coef.shape[-3:]
    flat = xp.reshape(coef, (*coef.shape[:-3], m * k1, p))
    scores = affine_scores(Phi, flat)
    scores = xp.reshape(scores, (*scores.shape[:-1], m, k1))
    scores = xp.concat([xp.zeros_like(scores[..., :1]), scores], axis=-1)
    return scores - log_sum_exp(scores)


def _class_indicators(codes: Any, n_classes: int, dtype: Any) -> Any:
    """One-hot rows (..., n, K) of class codes (..., n)."""
    xp = array_namespace(codes)
    classes = xp.arange(n_classes, dtype=codes.dtype, device=_device(codes))
    return xp.astype(codes[..., None] == classes, dtype)


def multinomial_log_density(log_probs: Any, codes: Any) -> Any:
    """Each expert's log probability of the observed class, (..., n, m).

    Parameters
    ----------
    log_probs : array of shape (..., n, m, K)
        :func:`multinomial_log_probabilities`.
    codes : array of shape (..., n)
        Class codes ``0 .. K-1`` (a float array of whole numbers).

    Returns
    -------
    array of shape (..., n, m)
    """
    xp = array_namespace(log_probs, codes)
    observed = _class_indicators(codes, log_probs.shape[-1], log_probs.dtype)
    picked = xp.where(observed[..., None, :] > 0, log_probs, xp.zeros_like(log_probs))
    return xp.sum(picked, axis=-1)


def _multinomial_objective(coef: Any, Phi: Any, codes: Any, resp: Any) -> Any:
    """Each expert's ``sum_t r_ti log p_i(y_t | x_t)``, (..., m)."""
    xp = array_namespace(coef, resp)
    log_f = multinomial_log_density(multinomial_log_probabilities(coef, Phi), codes)
    return xp.sum(resp * log_f, axis=-2)


def multinomial_fisher_step(
    coef: Any, Phi: Any, codes: Any, resp: Any, max_halvings: int
) -> Any:
    """One damped Fisher-scoring step of every expert's weighted multinomial logit.

    The direction solves, per expert, the Fisher information of the free
    classes ``1 .. K-1``, ``sum_t r_ti [diag(p_t) - p_t p_t^T] kron
    phi_t phi_t^T``, against the score ``sum_t r_ti (e_{y_t} - p_t) kron
    phi_t`` (with a relative ridge of 1e-9); where no ascent is predicted the
    expert stays. The step is halved, expert by expert, until the weighted
    log-likelihood does not decrease (:func:`halve_per_expert`).

    Parameters
    ----------
    coef : array of shape (..., m, K - 1, p)
    Phi : array of shape (..., n, p)
    codes : array of shape (..., n)
    resp : array of shape (..., n, m)
    max_halvings : int

    Returns
    -------
    array of shape (..., m, K - 1, p)
    """
    xp = array_namespace(coef, Phi, codes, resp)
    m, k1, p = coef.shape[-3:]
    lead = coef.shape[:-3]
    probs = xp.exp(multinomial_log_probabilities(coef, Phi))[..., 1:]  # (.., n, m, K-1)
    observed = _class_indicators(codes, k1 + 1, coef.dtype)[..., 1:]  # (.., n, K-1)
    weight = resp[..., None]  # (..., n, m, 1)
    # per expert: move the experts ahead of the samples, (..., m, n, K-1)
    residual = xp.permute_dims(
        weight * (observed[..., None, :] - probs), _experts_first(len(lead))
    )
    weighted = xp.permute_dims(weight * probs, _experts_first(len(lead)))
    root = xp.permute_dims(xp.sqrt(weight) * probs, _experts_first(len(lead)))
    design = Phi[..., None, :, None, :]  # (..., 1, n, 1, p)
    grad = xp.sum(residual[..., None] * design, axis=-3)  # (..., m, K-1, p)
    kron = xp.reshape(root[..., None] * design, (*lead, m, -1, k1 * p))
    outer = xp.matmul(xp.matrix_transpose(kron), kron)
    # the block diagonal sum_t r p_c phi phi^T of every class c
    per_class = xp.permute_dims(
        weighted, (*range(len(lead) + 1), len(lead) + 2, len(lead) + 1)
    )
    scaled = per_class[..., None] * Phi[..., None, None, :, :]  # (..., m, K-1, n, p)
    blocks = xp.matmul(xp.matrix_transpose(scaled), Phi[..., None, None, :, :])
    eye = xp.eye(k1, dtype=coef.dtype, device=_device(coef))
    diagonal = eye[:, None, :, None] * blocks[..., :, :, None, :]
    information = xp.reshape(diagonal, (*lead, m, k1 * p, k1 * p)) - outer
    flat_grad = xp.reshape(grad, (*lead, m, k1 * p))
    direction = solve_spd(information, flat_grad, ridge=1e-9)
    gain = xp.sum(flat_grad * direction, axis=-1)
    direction = xp.where((gain > 0)[..., None], direction, xp.zeros_like(direction))

    def objective(flat: Any) -> Any:
        return _multinomial_objective(
            xp.reshape(flat, (*lead, m, k1, p)), Phi, codes, resp
        )

    flat_coef = xp.reshape(coef, (*lead, m, k1 * p))
    new, _ = halve_per_expert(
        objective,
        flat_coef,
        direction,
        objective(flat_coef),
        tries=max_halvings,
        maximise=True,
    )
    return xp.reshape(new, coef.shape)


def _experts_first(n_lead: int) -> tuple[int, ...]:
    """Axes that turn (..., n, m, K) into (..., m, n, K)."""
    lead = tuple(range(n_lead))
    return (*lead, n_lead + 1, n_lead, n_lead + 2)
