"""Gate weights from affine scores, written once for numpy and torch.

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
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from moestat._math import array_namespace

__all__ = [
    "affine_scores",
    "log_sum_exp",
    "softmax_log_weights",
    "log_sigmoid",
    "top_k_mask",
    "normalized_sigmoid_log_weights",
    "UNDERFLOW",
]

#: Log terms this far below their row's largest are raised to it before
#: ``exp``: they cannot change the sum, and ``exp`` of values that
#: underflow takes a slow path in numpy.
UNDERFLOW = -700.0

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
