"""Gate weights and gate M-steps, written once for numpy and torch.

The softmax gate and the normalized sigmoid gate (dense or top-K) map the
affine scores ``s = Z @ coef.T`` of ``m`` experts to log gate weights. The
functions here use only the Python array API standard (through
``array_api_compat``), so one definition serves the statistical gates on
numpy arrays (:mod:`moestat.gates`) and the sparse routers on torch
tensors (:mod:`moestat.routing`), where they are plain tensor operations
that autograd differentiates. Results stay in the namespace, dtype and
device of the input.

The experts are the last axis; any leading axes are batch axes (samples,
tokens, groups).

The M-step kernels serve the gates' batched hooks
(:class:`~moestat.protocols.BatchedGate`), which the torch engine calls on
a batch of data sets (arrays of shape (B, n, m)) and the numpy gates on
one: the Fisher weights of the softmax and normalized sigmoid gates
(:func:`softmax_fisher_weights`, :func:`normalized_sigmoid_fisher_weights`),
the gradient and information of a softmax-like block
(:func:`block_fisher_information`), the damped Fisher ascent of an affine
gate (:func:`fisher_scoring_m_step`: generalised EM on ``sum r log g``, ECME
on the observed log-likelihood for top-K) and the closed-form weights of
shared experts (:func:`shared_expert_weights`,
:func:`shared_gate_log_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from moestat._math import array_namespace, hold_at_box, solve_spd

__all__ = [
    "affine_scores",
    "log_sum_exp",
    "softmax_log_weights",
    "log_sigmoid",
    "top_k_mask",
    "normalized_sigmoid_log_weights",
    "softmax_fisher_weights",
    "normalized_sigmoid_fisher_weights",
    "block_fisher_information",
    "q_objective",
    "observed_log_likelihood",
    "halve_until_no_decrease",
    "fisher_scoring_m_step",
    "shared_expert_weights",
    "shared_gate_log_weights",
    "UNDERFLOW",
    "SHARE_MIN",
]

#: Log terms this far below their row's largest are raised to it before
#: ``exp``: they cannot change the sum, and ``exp`` of values that
#: underflow takes a slow path in numpy.
UNDERFLOW = -700.0

#: The share of a shared-expert block stays inside ``[SHARE_MIN, 1 - SHARE_MIN]``
#: (a share at 0 or 1 has an infinite logit).
SHARE_MIN = 1e-12

#: Up to this many experts :func:`top_k_mask` ranks the scores by column
#: comparisons (``m^2`` of them, without sorting); above it, it sorts for the
#: k-th largest score and counts the ties at it.
_FEW_EXPERTS = 16


def _in_place_if_numpy(xp: Any, func: Any, *args: Any, out: Any) -> Any:
    """``func(*args)``, written into ``out`` for numpy (ufuncs; large arrays).

    Other namespaces get a new array, so autograd can record the operation.
    """
    if array_api_compat.is_numpy_namespace(xp):
        return func(*args, out=out)
    return func(*args)


def _torch_function(name: str) -> Any:
    """The fused torch function ``torch.<name>`` (one kernel, one autograd node).

    The formula each kernel writes out in array-API operations is what
    these compute; torch's own versions take one pass over the data.
    """
    import torch

    function: Any = torch
    for part in name.split("."):
        function = getattr(function, part)
    return function


def affine_scores(Z: Any, coef: Any) -> Any:
    """Affine scores ``s_i(x) = beta_0i + beta_1i^T x`` of every expert.

    Parameters
    ----------
    Z : array of shape (..., n, p)
        Design rows ``(1, x)``.
    coef : array of shape (..., m, p)
        One row ``(beta_0i, beta_1i)`` per expert; leading axes broadcast
        against those of ``Z``.

    Returns
    -------
    array of shape (..., n, m)
        ``Z @ coef.T``, computed as ``(coef @ Z.T).T``: with numpy the
        result is stored experts-major (column by column), the layout of
        the E-step's (n, m) arrays.

    Examples
    --------
    >>> import numpy as np
    >>> Z = np.array([[1.0, 2.0], [1.0, -1.0]])
    >>> coef = np.array([[0.0, 0.0], [0.5, 1.0]])
    >>> affine_scores(Z, coef).tolist()
    [[0.0, 2.5], [0.0, -0.5]]
    """
    xp = array_namespace(Z, coef)
    return xp.matrix_transpose(xp.matmul(coef, xp.matrix_transpose(Z)))


def log_sum_exp(a: Any) -> Any:
    """``log(sum(exp(a)))`` over the last axis, without overflow.

    Parameters
    ----------
    a : array of shape (..., m)
        Finite or ``-inf`` entries; every row must have a finite entry.

    Returns
    -------
    array of shape (..., 1)
        Kept as a trailing axis of length 1, so it broadcasts against ``a``.

    Notes
    -----
    The row's largest entry is taken out before ``exp``; terms more than
    ``-UNDERFLOW`` below it are counted as ``exp(UNDERFLOW)``, which cannot
    change the sum.

    Examples
    --------
    >>> import numpy as np
    >>> float(log_sum_exp(np.array([1000.0, 1000.0]))[0])  # 1000 + log 2
    1000.6931471805599
    """
    xp = array_namespace(a)
    if array_api_compat.is_torch_namespace(xp):
        return _torch_function("logsumexp")(a, dim=-1, keepdim=True)
    a_max = xp.max(a, axis=-1, keepdims=True)
    terms = a - a_max
    terms = _in_place_if_numpy(xp, xp.maximum, terms, UNDERFLOW, out=terms)
    terms = _in_place_if_numpy(xp, xp.exp, terms, out=terms)
    return xp.log(xp.sum(terms, axis=-1, keepdims=True)) + a_max


def softmax_log_weights(scores: Any) -> Any:
    """Log softmax gate weights, ``log g_i = s_i - log sum_j exp(s_j)``.

    Parameters
    ----------
    scores : array of shape (..., m)
        Affine scores (router logits) of the ``m`` experts.

    Returns
    -------
    array of shape (..., m)

    Examples
    --------
    >>> import numpy as np
    >>> np.exp(softmax_log_weights(np.log([[1.0, 3.0]]))).round(12).tolist()
    [[0.25, 0.75]]
    """
    return scores - log_sum_exp(scores)


def log_sigmoid(scores: Any) -> Any:
    """``log sigma(s) = min(s, 0) - log(1 + exp(-|s|))``, stable for any ``s``.

    Parameters
    ----------
    scores : array
        Affine scores.

    Returns
    -------
    array of the same shape

    Examples
    --------
    >>> import numpy as np
    >>> log_sigmoid(np.array([0.0, -800.0])).tolist() == [-np.log(2.0), -800.0]
    True
    """
    xp = array_namespace(scores)
    if array_api_compat.is_torch_namespace(xp):
        return _torch_function("nn.functional.logsigmoid")(scores)
    return xp.minimum(scores, 0.0) - xp.log1p(xp.exp(-xp.abs(scores)))


def top_k_mask(scores: Any, k: int) -> Any:
    """Mask of the ``k`` largest scores on the last axis; ties go to the lower index.

    Parameters
    ----------
    scores : array of shape (..., m)
        Scores ranking the experts (the affine scores: ``sigma`` is
        increasing, so they rank as the sigmoid affinities do).
    k : int
        Experts kept per row, ``k >= 1``; ``k >= m`` keeps every expert.

    Returns
    -------
    bool array of shape (..., m)
        Exactly ``k`` entries true per row (``min(k, m)``). Of equal
        scores, the experts with the lower index are kept first. With
        numpy the mask is stored experts-major, as the scores are.

    Examples
    --------
    >>> import numpy as np
    >>> top_k_mask(np.array([[1.0, 3.0, 3.0, 2.0]]), 2).tolist()
    [[False, True, True, False]]
    >>> top_k_mask(np.array([[3.0, 1.0, 3.0, 3.0]]), 2).tolist()
    [[True, False, True, False]]
    """
    xp = array_namespace(scores)
    m = scores.shape[-1]
    if k >= m:
        return xp.ones_like(scores, dtype=xp.bool)
    # filled in place: with numpy it takes the memory layout of the scores
    mask = xp.zeros_like(scores, dtype=xp.bool)
    if m > _FEW_EXPERTS:
        # the k-th largest score; of the scores equal to it, the first ones
        # fill the places the larger scores leave
        kth = xp.sort(scores, axis=-1, stable=False)[..., m - k : m - k + 1]
        above = scores > kth
        tied = xp.astype(scores == kth, xp.int16)
        room = k - xp.sum(xp.astype(above, xp.int16), axis=-1, keepdims=True)
        first = xp.cumulative_sum(tied, axis=-1, dtype=xp.int16) <= room
        mask[...] = above | ((tied > 0) & first)
        return mask
    columns = [scores[..., i] for i in range(m)]
    for i in range(m):
        ahead = xp.zeros_like(columns[i], dtype=xp.int16)
        for j in range(m):
            if j != i:
                # experts ranked before i: higher scores, and equal scores
                # of a lower index
                beats = columns[j] > columns[i] if j > i else columns[j] >= columns[i]
                ahead = ahead + xp.astype(beats, xp.int16)
        mask[..., i] = ahead < k
    return mask


def normalized_sigmoid_log_weights(scores: Any, selected: Any = None) -> Any:
    """Log normalized sigmoid gate weights, dense or over selected experts.

    ``g_i = sigma(s_i) / sum_{j in S} sigma(s_j)`` for ``i`` in the
    selection ``S`` (every expert when ``selected`` is None), and
    ``g_i = 0`` (``log g_i = -inf``) outside it.

    Parameters
    ----------
    scores : array of shape (..., m)
        Affine scores (router logits) of the ``m`` experts.
    selected : bool array of shape (..., m), optional
        The experts of each row's selection, at least one per row, such as
        :func:`top_k_mask` of the scores. None for the dense gate.

    Returns
    -------
    array of shape (..., m)

    Notes
    -----
    ``log sigma`` comes from :func:`log_sigmoid` and the normalisation from
    :func:`log_sum_exp`, so very negative scores (where ``sigma`` underflows)
    keep their relative weights.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[0.0, 0.0, -800.0]])
    >>> np.exp(normalized_sigmoid_log_weights(s)).round(6).tolist()
    [[0.5, 0.5, 0.0]]
    >>> np.exp(normalized_sigmoid_log_weights(s, top_k_mask(s, 1))).tolist()
    [[1.0, 0.0, 0.0]]
    """
    xp = array_namespace(scores)
    log_sigma = log_sigmoid(scores)
    if selected is not None:
        log_sigma = xp.where(selected, log_sigma, -xp.inf)
    return log_sigma - log_sum_exp(log_sigma)


# -- the gates' M-steps ----------------------------------------------------------
def _floor(xp: Any, a: Any, low: float) -> Any:
    """``max(a, low)`` elementwise (numpy's ufunc; ``clip`` elsewhere)."""
    if array_api_compat.is_numpy_namespace(xp):
        return np.maximum(a, low)
    return xp.clip(a, min=low)


def _sigmoid_complement(xp: Any, scores: Any) -> Any:
    """``a = 1 - sigma(s) = 1 / (1 + exp(s))``.

    In place for numpy (it runs at every M-step); torch's fused
    ``sigmoid(-s)``.
    """
    if array_api_compat.is_torch_namespace(xp):
        return _torch_function("sigmoid")(-scores)
    if not array_api_compat.is_numpy_namespace(xp):
        return 1.0 / (1.0 + xp.exp(scores))
    with np.errstate(over="ignore"):
        a = np.exp(scores)
    a += 1.0
    return np.reciprocal(a, out=a)


def softmax_fisher_weights(resp: Any, log_g: Any) -> tuple[Any, Any, Any]:
    """Score gradient ``r - rho g`` and Fisher weights ``(rho g, sqrt(rho) g)``.

    For ``Q = sum_t sum_i r_ti log g_ti`` of a softmax gate, with soft labels
    summing to ``rho_t`` per sample: the gradient in the score of row ``i``
    is ``r_ti - rho_t g_ti`` and the information in the scores is
    ``rho_t [diag(g_t) - g_t g_t^T]``, i.e. ``diag(d_t) - v_t v_t^T`` with
    ``d = rho g`` and ``v = sqrt(rho) g``.

    Parameters
    ----------
    resp : array of shape (..., n, m)
        Responsibilities (soft labels).
    log_g : array of shape (..., n, m)
        Log gate weights.

    Returns
    -------
    score_grad, diag, vec : arrays of shape (..., n, m)

    Examples
    --------
    >>> import numpy as np
    >>> grad, diag, vec = softmax_fisher_weights(
    ...     np.array([[1.0, 0.0]]), np.log([[0.5, 0.5]])
    ... )
    >>> grad.tolist(), diag.tolist()
    ([[0.5, -0.5]], [[0.5, 0.5]])
    """
    xp = array_namespace(resp, log_g)
    g = xp.exp(log_g)
    rho = xp.sum(resp, axis=-1, keepdims=True)
    rho_g = rho * g
    return resp - rho_g, rho_g, xp.sqrt(rho) * g


def normalized_sigmoid_fisher_weights(
    scores: Any, resp: Any, log_g: Any
) -> tuple[Any, Any, Any]:
    """Score gradient and positive semi-definite Fisher weights of the sigmoid gate.

    With ``a = 1 - sigma(s)``, the gradient of ``Q`` in the scores is
    ``a (r - rho g)`` and its negative Hessian ``rho [diag(g a^2) - (g a)(g
    a)^T] + diag(sigma a (r - rho g))``. The weights use ``|r - rho g|`` in
    the last term: ``d = |a (r - rho g)| (1 - a) + rho g a^2`` and ``v =
    sqrt(rho) g a``, a positive semi-definite matrix that dominates the
    observed one.

    Parameters
    ----------
    scores : array of shape (..., n, m)
        Affine scores.
    resp : array of shape (..., n, m)
        Responsibilities.
    log_g : array of shape (..., n, m)
        Log gate weights (``-inf`` outside a top-K selection).

    Returns
    -------
    score_grad, diag, vec : arrays of shape (..., n, m)

    Examples
    --------
    >>> import numpy as np
    >>> grad, diag, vec = normalized_sigmoid_fisher_weights(
    ...     np.zeros((1, 2)), np.array([[1.0, 0.0]]), np.log([[0.5, 0.5]])
    ... )
    >>> grad.tolist(), vec.tolist()
    ([[0.25, -0.25]], [[0.25, 0.25]])
    """
    xp = array_namespace(scores, resp, log_g)
    a = _sigmoid_complement(xp, scores)
    g = xp.exp(_floor(xp, log_g, UNDERFLOW))  # ~0 outside a top-K selection
    rho = xp.sum(resp, axis=-1, keepdims=True)
    excess = g * rho
    excess = _in_place_if_numpy(xp, xp.subtract, resp, excess, out=excess)
    score_grad = excess * a
    ga = _in_place_if_numpy(xp, xp.multiply, g, a, out=g)
    diag = xp.abs(score_grad)
    diag = _in_place_if_numpy(xp, xp.multiply, diag, 1.0 - a, out=diag)
    diag = _in_place_if_numpy(xp, xp.add, diag, ga * a * rho, out=diag)
    return score_grad, diag, ga * xp.sqrt(rho)


def block_fisher_information(
    Z: Any, score_grad: Any, diag: Any, vec: Any, rows: slice
) -> tuple[Any, Any]:
    """Gradient and information of a softmax-like block, over its free rows.

    The information is ``sum_t (diag(d_t) - v_t v_t^T) kron z_t z_t^T`` on
    the free rows, as :func:`moestat._math.fisher_information` computes it
    for one data set; here over any leading batch axes, with matrix
    products only.

    Parameters
    ----------
    Z : array of shape (..., n, p)
        Designs.
    score_grad : array of shape (..., n, m)
        Per-sample gradient of the objective in each row's score.
    diag, vec : arrays of shape (..., n, m)
        The Fisher weights ``d_t`` and ``v_t``.
    rows : slice
        The ``k`` free rows among the ``m``.

    Returns
    -------
    gradient : array of shape (..., k p)
        ``sum_t score_grad_t kron z_t`` over the free rows, row by row.
    information : array of shape (..., k p, k p)
        The information in the same layout: entry ``(a p + i, b p + j)``
        couples row ``a``'s coefficient ``i`` with row ``b``'s ``j``.

    Examples
    --------
    >>> import numpy as np
    >>> Z = np.ones((2, 1))
    >>> w = np.full((2, 2), 0.5)
    >>> grad, info = block_fisher_information(Z, w, w, w, slice(1, 2))
    >>> grad.tolist(), info.tolist()
    ([1.0], [[0.5]])
    """
    xp = array_namespace(Z, score_grad, diag, vec)
    score_grad, diag, vec = score_grad[..., rows], diag[..., rows], vec[..., rows]
    *lead, n, p = Z.shape
    k = score_grad.shape[-1]
    grad = xp.reshape(xp.matmul(xp.matrix_transpose(score_grad), Z), (*lead, k * p))
    root = xp.reshape(vec[..., :, :, None] * Z[..., :, None, :], (*lead, n, k * p))
    outer = xp.matmul(xp.matrix_transpose(root), root)
    # the block sum_t d_ta z_t z_t^T of every free row a, (..., k, p, p)
    scaled = xp.matrix_transpose(diag)[..., None] * Z[..., None, :, :]
    blocks = xp.matmul(xp.matrix_transpose(scaled), Z[..., None, :, :])
    eye = xp.eye(k, dtype=Z.dtype, device=array_api_compat.device(Z))
    diagonal = eye[:, None, :, None] * blocks[..., :, :, None, :]
    return grad, xp.reshape(diagonal, (*lead, k * p, k * p)) - outer


def q_objective(resp: Any, log_g: Any) -> Any:
    """``Q = sum_t sum_i r_ti log g_ti`` of each data set, with ``0 log 0 = 0``.

    Parameters
    ----------
    resp, log_g : arrays of shape (..., n, m)

    Returns
    -------
    array of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> float(q_objective(np.array([[1.0, 0.0]]), np.array([[-0.5, -np.inf]])))
    -0.5
    """
    xp = array_namespace(resp, log_g)
    terms = xp.where(resp > 0, log_g, xp.zeros_like(log_g)) * resp
    return xp.sum(terms, axis=(-2, -1))


def observed_log_likelihood(
    log_g: Any, log_f: Any, weight: Any, log_background: Any = None
) -> Any:
    """``sum_t w_t log(sum_i g_ti f_ti + b_t)`` of each data set, in float64.

    The log-likelihood as a gate sees it: the experts' densities are fixed,
    ``b_t`` is the density of components outside the gate (shared
    experts). Rows of weight zero (padding) count for nothing.

    Parameters
    ----------
    log_g, log_f : arrays of shape (..., n, m)
        Log gate weights and the experts' log densities.
    weight : array of shape (..., n)
        Sample weights.
    log_background : array of shape (..., n), optional
        ``log b_t``; None for none.

    Returns
    -------
    array of shape (...)
        Summed in float64 (the stopping rule compares small changes).

    Examples
    --------
    >>> import numpy as np
    >>> log_g = np.log([[0.5, 0.5]])
    >>> float(observed_log_likelihood(log_g, np.zeros((1, 2)), np.ones(1)))
    0.0
    """
    xp = array_namespace(log_g, log_f, weight)
    per_sample = log_sum_exp(log_g + log_f)[..., 0]
    if log_background is not None:
        per_sample = xp.logaddexp(per_sample, log_background)
    per_sample = xp.where(weight > 0, weight * per_sample, xp.zeros_like(per_sample))
    return xp.sum(per_sample, axis=-1, dtype=xp.float64)


def _fresh_responsibilities(log_g, log_f, weight, log_background):
    """Weighted responsibilities at the experts' new densities (ECME)."""
    xp = array_namespace(log_g, log_f, weight)
    joint = log_g + log_f
    total = log_sum_exp(joint)
    if log_background is not None:
        total = xp.logaddexp(total, log_background[..., None])
    return xp.exp(_floor(xp, joint - total, UNDERFLOW)) * weight[..., None]


def halve_until_no_decrease(
    evaluate: Callable[[Any], Any],
    score: Callable[[Any], Any],
    theta: Any,
    values: Any,
    direction: Any,
    todo: Any,
    max_halvings: int,
    project: Callable[[Any], Any],
) -> tuple[Any, Any]:
    """Step halving per data set: keep ``theta + t d`` where ``score`` does not fall.

    Tries ``t = 1, 1/2, ...`` (``max_halvings`` tries) for the data sets in
    ``todo``; a data set that finds no such ``t`` keeps ``theta``.

    Parameters
    ----------
    evaluate : callable
        Maps parameters (B, P) to the (B, n, m) array ``score`` reads
        (``log g``).
    score : callable
        Maps that array to the objective of each data set, (B,).
    theta : array of shape (B, P)
        The start.
    values : array of shape (B, n, m)
        ``evaluate(theta)``.
    direction : array of shape (B, P)
        The ascent direction.
    todo : bool array of shape (B,)
        The data sets to move.
    max_halvings : int
        Candidates tried at most.
    project : callable
        Maps parameters into the parameter space (a box).

    Returns
    -------
    theta : array of shape (B, P)
    values : array of shape (B, n, m)
        ``evaluate`` at the returned parameters (the caller need not
        evaluate again).
    """
    xp = array_namespace(theta, direction)
    current = score(values)
    step = xp.ones(
        current.shape, dtype=theta.dtype, device=array_api_compat.device(theta)
    )
    for _ in range(max_halvings):
        if not bool(xp.any(todo)):
            break
        candidate = project(theta + step[..., None] * direction)
        candidate_values = evaluate(candidate)
        ok = todo & (score(candidate_values) >= current)
        theta = xp.where(ok[..., None], candidate, theta)
        values = xp.where(ok[..., None, None], candidate_values, values)
        todo = todo & ~ok
        step = xp.where(todo, 0.5 * step, step)
    return theta, values


def fisher_scoring_m_step(
    theta: Any,
    Z: Any,
    weight: Any,
    resp: Any,
    log_g: Any,
    log_f: Any,
    *,
    log_weights: Callable[[Any], Any],
    fisher_weights: Callable[[Any, Any, Any], tuple[Any, Any, Any]],
    rows: slice,
    project: Callable[[Any], Any],
    newton_steps: int,
    max_halvings: int,
    ecme: bool = False,
    log_background: Any = None,
    bound: float | None = None,
) -> tuple[Any, Any]:
    """Damped Fisher-scoring steps of an affine gate on a batch of data sets.

    The direction solves the Fisher information of the free rows
    (:func:`block_fisher_information`, a relative ridge of ``1e-9``); a
    data set whose predicted gain ``grad . direction`` is at most ``1e-14
    n`` stays. Each step is halved until the objective does not decrease
    (:func:`halve_until_no_decrease`): ``Q = sum r log g`` (generalised EM),
    or with ``ecme`` the observed log-likelihood with the experts' new
    densities, the direction then coming from the responsibilities
    recomputed at them (an ECME step, for a top-K gate).

    Parameters
    ----------
    theta : array of shape (B, P)
        Packed gate parameters.
    Z : array of shape (B, n, p)
        Gate designs.
    weight : array of shape (B, n)
        Sample weights, zero on padding rows.
    resp : array of shape (B, n, m)
        Responsibilities (zero on padding rows).
    log_g : array of shape (B, n, m)
        ``log g`` at ``theta``.
    log_f : array of shape (B, n, m)
        The experts' log densities at their new parameters (read with
        ``ecme`` only).
    log_weights : callable
        Maps parameters (B, P) to ``log g``.
    fisher_weights : callable
        Maps ``(theta, resp, log_g)`` to the score gradient and the Fisher
        weights ``(diag, vec)`` of :func:`block_fisher_information`.
    rows : slice
        The free rows of the gate's coefficients.
    project : callable
        Maps parameters into the parameter space.
    newton_steps, max_halvings : int
    ecme : bool, default=False
    log_background : array of shape (B, n), optional
        Log density of components outside the gate (shared experts).
    bound : float, optional
        The gate's box: coefficients at it are held (:func:`hold_at_box`).

    Returns
    -------
    theta : array of shape (B, P)
        Parameters whose objective is not below the start's.
    log_g : array of shape (B, n, m)
        ``log g`` at them.
    """
    xp = array_namespace(theta, Z, resp)
    if theta.shape[-1] == 0:
        return theta, log_g  # nothing free (a gate over one expert)
    n = xp.sum(weight, axis=-1)
    if ecme:
        resp = _fresh_responsibilities(log_g, log_f, weight, log_background)

        def score(values):
            return observed_log_likelihood(values, log_f, weight, log_background)

    else:

        def score(values):
            return q_objective(resp, values)

    for _ in range(newton_steps):
        grad, information = block_fisher_information(
            Z, *fisher_weights(theta, resp, log_g), rows
        )
        grad, information = hold_at_box(grad, information, theta, bound)
        direction = solve_spd(information, grad, ridge=1e-9)
        todo = xp.sum(grad * direction, axis=-1) > 1e-14 * n
        if not bool(xp.any(todo)):
            break
        theta, log_g = halve_until_no_decrease(
            log_weights, score, theta, log_g, direction, todo, max_halvings, project
        )
    return theta, log_g


def shared_expert_weights(
    shared_resp: Any, n_samples: Any, learned: bool
) -> tuple[Any, Any]:
    """The exact maximisers ``omega`` and ``lambda`` of ``Q`` for shared experts.

    ``omega_i = sum_t r_ti / sum_{shared} sum_t r_ti`` (floored at
    ``1e-300`` and renormalised), and a learned share ``lambda`` is the mean
    shared responsibility (``1/2`` when fixed), kept inside ``[SHARE_MIN,
    1 - SHARE_MIN]``.

    Parameters
    ----------
    shared_resp : array of shape (..., n, k)
        Responsibilities of the ``k`` shared experts.
    n_samples : array of shape (...)
        Total sample weight of each data set.
    learned : bool
        Whether ``lambda`` is estimated.

    Returns
    -------
    omega : array of shape (..., k)
    share : array of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> omega, share = shared_expert_weights(
    ...     np.array([[0.3, 0.1], [0.3, 0.1]]), 2.0, True
    ... )
    >>> omega.round(12).tolist(), round(float(share), 12)
    ([0.75, 0.25], 0.4)
    """
    xp = array_namespace(shared_resp)
    shared_mass = xp.sum(shared_resp, axis=-2)
    total = xp.sum(shared_mass, axis=-1)
    omega = _floor(xp, shared_mass / total[..., None], 1e-300)
    omega = omega / xp.sum(omega, axis=-1, keepdims=True)
    share = total / n_samples if learned else xp.full_like(total, 0.5)
    return omega, xp.clip(share, min=SHARE_MIN, max=1.0 - SHARE_MIN)


def shared_gate_log_weights(
    routed_log_g: Any, log_omega: Any, log_share: Any, log_rest: Any
) -> Any:
    """``log(lambda omega_i)`` for the shared experts, ``log((1 - lambda) g_j)`` routed.

    Parameters
    ----------
    routed_log_g : array of shape (..., n, m - k)
        The routed gate's ``log g``.
    log_omega : array of shape (..., k)
        Log weights of the shared experts.
    log_share, log_rest : arrays of shape (...)
        ``log lambda`` and ``log(1 - lambda)``.

    Returns
    -------
    array of shape (..., n, m)
        The shared experts first.

    Examples
    --------
    >>> import numpy as np
    >>> half = np.log(np.array(0.5))
    >>> out = shared_gate_log_weights(np.zeros((2, 1)), np.zeros(1), half, half)
    >>> np.exp(out).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    xp = array_namespace(routed_log_g, log_omega, log_share, log_rest)
    shared = (log_share[..., None] + log_omega)[..., None, :]
    shape = (*routed_log_g.shape[:-1], log_omega.shape[-1])
    shared = xp.broadcast_to(shared, shape)
    return xp.concat([shared, log_rest[..., None, None] + routed_log_g], axis=-1)
