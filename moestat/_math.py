"""Small numerical kernels shared by the gates, experts and fitting engines."""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat
import numpy as np
from numpy.typing import NDArray


def array_namespace(*arrays: Any) -> Any:
    """The array API namespace of ``arrays``: numpy itself for numpy arrays.

    numpy (2.0 and later) implements the Python array API standard in its
    main namespace, so numpy arrays skip the wrappers of
    ``array_api_compat`` (a few microseconds a call, which the small arrays
    of an M-step feel); other arrays get ``array_api_compat``'s namespace.

    Parameters
    ----------
    *arrays : arrays (Python scalars are ignored)

    Returns
    -------
    module

    Examples
    --------
    >>> import numpy as np
    >>> array_namespace(np.ones(2)) is np
    True
    """
    if all(isinstance(a, np.ndarray | np.generic | float | int) for a in arrays):
        return np
    xp = array_api_compat.array_namespace(*arrays)
    return np if array_api_compat.is_numpy_namespace(xp) else xp


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


#: Steps of iterative refinement in :func:`solve_spd`.
REFINEMENT_STEPS = 3


def solve_spd(matrix: Any, rhs: Any, ridge: float = 1e-10, refine: bool = False) -> Any:
    """Solve symmetric positive (semi-)definite systems, batched.

    The systems are Jacobi-equilibrated (scaled to unit diagonal) before a
    tiny ridge ``ridge * I`` is added, so that polynomial designs whose
    columns differ by orders of magnitude stay well conditioned and an
    empty column gives a zero coefficient rather than an error. With
    ``refine`` a few steps of iterative refinement remove the ridge's bias
    from a nonsingular system: an M-step that must be the maximiser (weighted
    least squares) asks for it; a Fisher-scoring direction, which is only
    an ascent direction, keeps the ridge's damping.

    Written over the Python array API standard: numpy arrays and torch
    tensors go through the same steps (an LU solve of each system), so the
    numpy and torch engines solve their M-steps alike.

    Parameters
    ----------
    matrix : array of shape (..., p, p)
    rhs : array of shape (..., p)
    ridge : float, default=1e-10
        Relative ridge added to the unit diagonal.
    refine : bool, default=False
        Refine the solution against the system without the ridge.

    Returns
    -------
    array of shape (..., p)
        In the namespace, dtype and device of ``matrix``.
    """
    xp = array_namespace(matrix, rhs)
    diag = xp.linalg.diagonal(matrix)
    scale = 1.0 / xp.sqrt(xp.where(diag > 0, diag, xp.ones_like(diag)))
    scaled = matrix * scale[..., :, None] * scale[..., None, :]
    p = matrix.shape[-1]
    device = array_api_compat.device(matrix)
    ridged = scaled + ridge * xp.eye(p, dtype=matrix.dtype, device=device)
    target = (rhs * scale)[..., None]
    try:
        z = xp.linalg.solve(ridged, target)
        # Iterative refinement against the system without the ridge: each
        # step shrinks the ridge's bias by ridge / (lambda + ridge) along an
        # eigenvalue lambda, so a nonsingular system is solved exactly (the
        # M-step is then the maximiser EM's monotonicity needs), while an
        # exactly singular direction, which the residual never enters,
        # stays at zero.
        for _ in range(REFINEMENT_STEPS if refine else 0):
            z = z + xp.linalg.solve(ridged, target - xp.matmul(scaled, z))
    except _singular_errors(xp):
        # exactly singular even with the ridge (an expert whose gate weight
        # underflowed everywhere): the minimum-norm solution
        z = xp.matmul(xp.linalg.pinv(ridged), target)
    return z[..., 0] * scale


def _singular_errors(xp: Any) -> tuple[type[BaseException], ...]:
    """The exceptions ``xp.linalg.solve`` raises on a singular system."""
    errors: tuple[type[BaseException], ...] = (np.linalg.LinAlgError,)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        errors += (torch.linalg.LinAlgError,)
    return errors


def upper_triangle(p: int) -> tuple[list[int], list[int]]:
    """The pairs ``a <= b < p`` of design columns, row by row: ``(rows, cols)``.

    The order of every pair product and packed symmetric matrix in moestat
    (:func:`pair_products`, :func:`unpack_symmetric`, the sweeps of
    :mod:`moestat.kernels.sweep`).

    Examples
    --------
    >>> upper_triangle(3)
    ([0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2])
    """
    rows = [a for a in range(p) for _ in range(a, p)]
    cols = [b for a in range(p) for b in range(a, p)]
    return rows, cols


@functools.cache
def _pairs(p: int) -> tuple[tuple[int, int], ...]:
    """The pairs of :func:`upper_triangle`, made once per ``p`` (a sweep's chunks)."""
    return tuple(zip(*upper_triangle(p), strict=True))


def pair_products(A: Any, axis: int = -1, *, out: Any = None, xp: Any = None) -> Any:
    """Products ``A_a A_b`` for every ``a <= b`` of the columns along ``axis``.

    The ``p`` columns along ``axis`` give ``p (p + 1) / 2`` products there,
    in the order of :func:`upper_triangle`. Weighted Gram matrices of many
    weight vectors at once then cost one matrix product: for ``A`` of shape
    (n, p), ``W.T @ pair_products(A)`` holds, in row ``i``, the upper
    triangle of ``A.T @ diag(W[:, i]) @ A`` (see :func:`unpack_symmetric`).

    Written over the Python array API standard (numpy arrays and torch
    tensors, also inside ``torch.compile``).

    Parameters
    ----------
    A : array of shape (..., p, ...)
    axis : int, default=-1
        The axis of the columns: -1 for (n, p) rows of a design, -2 for a
        transposed (..., p, c) chunk.
    out : ndarray, optional
        numpy only: the array of the result's shape to write into, one
        product at a time (no gathered copies of ``A``).
    xp : namespace, optional
        ``A``'s array namespace, found from it by default (``torch.compile``
        needs it given: it cannot trace the look-up).

    Returns
    -------
    array
        ``A``'s shape with ``p (p + 1) / 2`` along ``axis``; ``out`` when
        given.

    Examples
    --------
    >>> pair_products(np.array([[1.0, 2.0, 3.0]]))
    array([[1., 2., 3., 4., 6., 9.]])
    """
    axis = axis % A.ndim
    if out is not None:
        columns = A if axis == 0 else np.moveaxis(A, axis, 0)
        products = out if axis == 0 else np.moveaxis(out, axis, 0)
        for index, (a, b) in enumerate(_pairs(A.shape[axis])):
            np.multiply(columns[a], columns[b], out=products[index])
        return out
    rows, cols = upper_triangle(A.shape[axis])
    if isinstance(A, np.ndarray):
        # numpy's own indexing: its result's layout sets the round-off of the
        # matrix products the pairs go into
        where = (slice(None),) * axis
        return A[(*where, np.asarray(rows))] * A[(*where, np.asarray(cols))]
    if xp is None:
        xp = array_namespace(A)
    # the device as an attribute: torch.compile cannot trace the look-up
    device = getattr(A, "device", None)
    first = xp.take(A, xp.asarray(rows, dtype=xp.int64, device=device), axis=axis)
    second = xp.take(A, xp.asarray(cols, dtype=xp.int64, device=device), axis=axis)
    return first * second


def unpack_symmetric(packed: NDArray[np.float64], p: int) -> NDArray[np.float64]:
    """Rebuild symmetric (..., p, p) matrices from their upper triangles.

    The upper triangles in the order of :func:`upper_triangle`.
    """
    rows, cols = upper_triangle(p)
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


#: Bytes of the Khatri-Rao rows built at once by :func:`khatri_rao_information`.
CHUNK_BYTES = 32 * 2**20


def hold_at_box(grad: Any, information: Any, theta: Any, bound: float | None) -> tuple:
    """The Fisher system with the coefficients held at the box ``|beta| <= bound``.

    A coefficient at the bound whose gradient points out of the box is held:
    its gradient entry becomes zero and its row and column of the
    information those of the identity, so that the solve moves only the
    other coefficients, by the Fisher step of their block. Without the hold,
    a clipped step at a maximum on the box moves the free coefficients as if
    the held ones moved too, and stalls below the maximum.

    Parameters
    ----------
    grad : array of shape (..., P)
        Gradient in the packed coefficients.
    information : array of shape (..., P, P)
    theta : array of shape (..., P)
        The packed coefficients (the layout of ``grad``).
    bound : float or None
        The box; None leaves the system as it is.

    Returns
    -------
    grad, information : arrays
        The system to solve.
    """
    if bound is None:
        return grad, information
    xp = array_namespace(grad, information, theta)
    held = (xp.abs(theta) >= bound) & (grad * theta > 0)
    if not bool(xp.any(held)):
        return grad, information
    free = xp.astype(~held, information.dtype)
    eye = xp.eye(
        information.shape[-1],
        dtype=information.dtype,
        device=array_api_compat.device(information),
    )
    information = (
        information * free[..., :, None] * free[..., None, :]
        + eye * xp.astype(held, information.dtype)[..., None, :]
    )
    return grad * free, information


def fisher_direction(
    Z: NDArray[np.float64],
    features: NDArray[np.float64],
    score_grad: NDArray[np.float64],
    diag: NDArray[np.float64],
    vec: NDArray[np.float64],
    rows: NDArray[np.intp],
    penalty_diagonal: NDArray[np.float64] | None = None,
    penalty_gradient: NDArray[np.float64] | None = None,
    box: tuple[NDArray[np.float64], float | None] | None = None,
) -> tuple[NDArray[np.float64], float]:
    """Fisher-scoring direction for the free rows of a softmax-like block.

    Serves every multinomial-logit-like objective: a gate's rows (experts)
    or a multinomial expert's rows (classes).

    Parameters
    ----------
    Z : ndarray of shape (n, p)
        Design of the block.
    features : ndarray of shape (n, p(p+1)/2)
        ``pair_products(Z)``.
    score_grad : ndarray of shape (n, m)
        Per-sample gradient of the objective with respect to each row's score.
    diag, vec : ndarray of shape (n, m)
        Per-sample Fisher weights ``d_t`` and ``v_t``
        (see :func:`fisher_information`).
    rows : ndarray of int, shape (k,)
        The free rows, in increasing order.
    penalty_diagonal, penalty_gradient : ndarray of shape (k p,), optional
        A ridge penalty's curvature (added to the information's diagonal)
        and gradient (added to ``grad``), flat over the free rows.
    box : tuple, optional
        ``(coef, bound)``: the free rows' coefficients, flat, and the box
        ``|beta| <= bound`` they live in; coefficients at the box are held
        (:func:`hold_at_box`).

    Returns
    -------
    direction : ndarray of shape (m, p)
        Zero on the rows that are not free.
    predicted_gain : float
        ``grad . direction``, the first-order gain of a full step.
    """
    p = Z.shape[1]
    m = score_grad.shape[1]
    grad = (score_grad[:, rows].T @ Z).ravel()
    information = fisher_information(Z, features, diag, vec, rows)
    if penalty_diagonal is not None:
        information[np.diag_indices_from(information)] += penalty_diagonal
        grad = grad + penalty_gradient
    if box is not None:
        grad, information = hold_at_box(grad, information, *box)
    step = solve_spd(information, grad, ridge=1e-9)
    direction = np.zeros((m, p))
    direction[rows] = step.reshape(len(rows), p)
    return direction, float(grad @ step)


def fisher_information(
    Z: NDArray[np.float64],
    features: NDArray[np.float64],
    diag: NDArray[np.float64],
    vec: NDArray[np.float64],
    rows: NDArray[np.intp],
) -> NDArray[np.float64]:
    """Information ``sum_t (diag(d_t) - v_t v_t^T) kron z_t z_t^T`` on ``rows``.

    ``d_t = diag[t, rows]`` and ``v_t = vec[t, rows]``; entry
    ``(a p + i, b p + j)`` couples row ``a``'s coefficient ``i`` with row
    ``b``'s coefficient ``j``.

    With ``k`` free rows and ``p`` columns, the ``k(k+1)/2`` pair weights per
    sample of :func:`pairwise_information` take no more memory than the
    ``k p`` Khatri-Rao entries when ``k < 2 p``; there they are used, and
    they are also the faster form. Otherwise :func:`khatri_rao_information`
    keeps memory O(n k p) (see ``benchmarks/bench_fisher.py``).

    Parameters
    ----------
    Z : ndarray of shape (n, p)
    features : ndarray of shape (n, p(p+1)/2)
        ``pair_products(Z)``.
    diag, vec : ndarray of shape (n, m)
    rows : ndarray of int, shape (k,)

    Returns
    -------
    ndarray of shape (k p, k p)
    """
    if pairwise_is_smaller(len(rows), Z.shape[1]):
        return pairwise_information(Z, features, diag, vec, rows)
    return khatri_rao_information(Z, features, diag, vec, rows)


def pairwise_is_smaller(k: int, p: int) -> bool:
    """Whether ``k(k+1)/2`` pair weights take no more room than ``k p`` entries.

    True exactly when ``k < 2 p``: :func:`fisher_information` then takes
    the pairwise form, which is also the faster one there.
    """
    return k < 2 * p


def pairwise_information(
    Z: NDArray[np.float64],
    features: NDArray[np.float64],
    diag: NDArray[np.float64],
    vec: NDArray[np.float64],
    rows: NDArray[np.intp],
) -> NDArray[np.float64]:
    """:func:`fisher_information` from the weights of every pair of rows.

    Block ``(a, b)`` is ``Z^T diag(delta_ab d_a - v_a v_b) Z``; all
    ``k(k+1)/2`` blocks come from one product of the (k(k+1)/2, n) pair
    weights with ``features``.
    """
    n, p = Z.shape
    k = len(rows)
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
    return information


def khatri_rao_information(
    Z: NDArray[np.float64],
    features: NDArray[np.float64],
    diag: NDArray[np.float64],
    vec: NDArray[np.float64],
    rows: NDArray[np.intp],
    chunk_bytes: int = CHUNK_BYTES,
) -> NDArray[np.float64]:
    """:func:`fisher_information` as ``blockdiag_a(Z^T diag(d_a) Z) - U^T U``.

    ``U`` is the (n, k p) row-wise Kronecker product of ``vec[:, rows]`` and
    ``Z`` (``U[t] = kron(v_t, z_t)``). It is built a chunk of samples at a
    time into one reused buffer of at most ``chunk_bytes``, and ``U^T U`` is
    accumulated by a symmetric rank-k BLAS update per chunk.
    """
    n, p = Z.shape
    k = len(rows)
    chunk = chunk_rows(k * p, chunk_bytes)
    buffer = np.empty((min(n, chunk), k * p))
    blocks = np.zeros((k, features.shape[1]))
    gram = np.zeros((k * p, k * p))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        part = slice(start, stop)
        blocks += diag[part, rows].T @ features[part]
        kron = row_kron(vec[part, rows], Z[part], out=buffer[: stop - start])
        gram += kron.T @ kron
    information = -gram
    free = np.arange(k)
    information.reshape(k, p, k, p)[free, :, free, :] += unpack_symmetric(blocks, p)
    return information


def chunk_rows(width: int, max_bytes: int) -> int:
    """Rows of a (rows, width) float64 array that fit in ``max_bytes`` (at least 1)."""
    return max(1, max_bytes // (8 * width))


def row_kron(
    A: NDArray[np.float64],
    B: NDArray[np.float64],
    out: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Row-wise Kronecker (Khatri-Rao) product: row ``t`` is ``kron(A[t], B[t])``.

    Parameters
    ----------
    A : ndarray of shape (n, k)
    B : ndarray of shape (n, p)
    out : ndarray of shape (n, k p), optional
        C-contiguous array to write into.

    Returns
    -------
    ndarray of shape (n, k p)

    Examples
    --------
    >>> row_kron(np.array([[1.0, 2.0]]), np.array([[1.0, 10.0]]))
    array([[ 1., 10.,  2., 20.]])
    """
    n, k = A.shape
    p = B.shape[1]
    if out is None:
        out = np.empty((n, k * p))
    cube = out.reshape(n, k, p)
    # one vectorised product per column of the narrower factor
    if p <= k:
        for j in range(p):
            np.multiply(A, B[:, j : j + 1], out=cube[:, :, j])
    else:
        for a in range(k):
            np.multiply(A[:, a : a + 1], B, out=cube[:, a, :])
    return out
