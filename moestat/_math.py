"""Small numerical kernels shared by the gates, experts and fitting engines."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def logsumexp_rows(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``log(sum(exp(a), axis=1))`` without overflow.

    A lean version of :func:`scipy.special.logsumexp` for the (n, m) arrays
    of the E-step, where scipy's argument handling costs more than the sum.

    Parameters
    ----------
    a : ndarray of shape (n, m)
        Finite or ``-inf`` entries; every row must have a finite entry.

    Returns
    -------
    ndarray of shape (n,)
    """
    a_max = a.max(axis=1)
    shifted = a - a_max[:, None]
    # exp() of values that underflow takes a slow path in numpy; terms below
    # e^-700 (relative to the row's largest) cannot change the sum anyway.
    np.maximum(shifted, -700.0, out=shifted)
    np.exp(shifted, out=shifted)
    return np.log(shifted.sum(axis=1)) + a_max


def solve_spd(
    matrix: NDArray[np.float64], rhs: NDArray[np.float64], ridge: float = 1e-10
) -> NDArray[np.float64]:
    """Solve symmetric positive (semi-)definite systems, batched.

    The systems are Jacobi-equilibrated (scaled to unit diagonal) before a
    tiny ridge ``ridge * I`` is added, so that polynomial designs whose
    columns differ by orders of magnitude stay well conditioned and an
    empty column gives a zero coefficient rather than an error.

    Parameters
    ----------
    matrix : ndarray of shape (..., p, p)
    rhs : ndarray of shape (..., p)
    ridge : float, default=1e-10
        Relative ridge added to the unit diagonal.

    Returns
    -------
    ndarray of shape (..., p)
    """
    diag = np.diagonal(matrix, axis1=-2, axis2=-1)
    scale = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))
    scaled = matrix * scale[..., :, None] * scale[..., None, :]
    p = matrix.shape[-1]
    scaled = scaled + ridge * np.eye(p)
    try:
        z = np.linalg.solve(scaled, (rhs * scale)[..., None])[..., 0]
    except np.linalg.LinAlgError:
        # exactly singular even with the ridge (an expert whose gate weight
        # underflowed everywhere): the minimum-norm solution
        z = (np.linalg.pinv(scaled) @ (rhs * scale)[..., None])[..., 0]
    return z * scale


def pair_products(A: NDArray[np.float64]) -> NDArray[np.float64]:
    """Products ``A[:, a] * A[:, b]`` for every ``a <= b``, shape (n, p(p+1)/2).

    Weighted Gram matrices of many weight vectors at once then cost one
    matrix product: ``W.T @ pair_products(A)`` holds, in row ``i``, the upper
    triangle of ``A.T @ diag(W[:, i]) @ A`` (see :func:`unpack_symmetric`).
    """
    rows, cols = np.triu_indices(A.shape[1])
    return A[:, rows] * A[:, cols]


def unpack_symmetric(packed: NDArray[np.float64], p: int) -> NDArray[np.float64]:
    """Rebuild symmetric (..., p, p) matrices from their upper triangles."""
    rows, cols = np.triu_indices(p)
    out = np.empty((*packed.shape[:-1], p, p))
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out


def experts_major(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return an (n, m) array stored column by column (Fortran order).

    The E-step reduces over the m experts of each sample; with each expert's
    column contiguous those reductions run as vectorised sums of m columns
    instead of n tiny row reductions, which is several times faster.
    """
    return np.asfortranarray(a)


def fisher_direction(
    Z: NDArray[np.float64],
    features: NDArray[np.float64],
    score_grad: NDArray[np.float64],
    diag: NDArray[np.float64],
    vec: NDArray[np.float64],
    rows: NDArray[np.intp],
) -> NDArray[np.float64]:
    """Fisher-scoring direction for the free rows of a softmax-like block.

    Serves every multinomial-logit-like objective: a gate's rows (experts)
    or a multinomial expert's rows (classes). The information is
    ``sum_t (diag(d_t) - v_t v_t^T) kron x~_t x~_t^T``
    restricted to the free rows, with ``d = diag`` and ``v = vec`` per sample;
    its blocks come from one product of the pair weights with the per-sample
    products ``features`` of the design columns.

    Returns
    -------
    direction : ndarray of shape (m, p)
        Zero on the rows that are not free.
    predicted_gain : float
        ``grad . direction``, the first-order gain of a full step.
    """
    n, p = Z.shape
    m = score_grad.shape[1]
    k = len(rows)
    grad = (score_grad[:, rows].T @ Z).ravel()
    pairs = [(a, b) for a in range(k) for b in range(a, k)]
    weights = np.empty((len(pairs), n))
    for w, (a, b) in zip(weights, pairs, strict=True):
        np.multiply(vec[:, rows[a]], -vec[:, rows[b]], out=w)
        if a == b:
            w += diag[:, rows[a]]
    blocks = unpack_symmetric(weights @ features, p)
    information = np.empty((k * p, k * p))
    for block, (a, b) in zip(blocks, pairs, strict=True):
        information[a * p : (a + 1) * p, b * p : (b + 1) * p] = block
        information[b * p : (b + 1) * p, a * p : (a + 1) * p] = block
    step = solve_spd(information, grad, ridge=1e-9)
    direction = np.zeros((m, p))
    direction[rows] = step.reshape(k, p)
    return direction, float(grad @ step)
