"""One EM sweep of a Gaussian MoE and its M-step, written once for numpy and torch.

Both M-steps of a softmax gate (or a dense normalized sigmoid gate) with
Gaussian experts need only a few hundred weighted sums over the data. A
*sweep* makes one pass over the rows, chunk by chunk, and adds up each
chunk's share of them; nothing of size ``n * m`` or ``n * p^2`` is kept.
The functions use only the Python array API standard (through
``array_api_compat``), so the numpy EM (:func:`moestat.fit.em` at large
``n``) and the torch one (:func:`moestat.torch.fused.em_chunked`) run
the same code. Any leading axes are batch axes (data sets fitted
together).

The sums (:class:`SweepStatistics`), at the current gate coefficients
``beta`` and expert coefficients ``a_i`` and variances ``nu_i``:

- ``sum_t w_t log p(y_t | x_t)``, the (weighted) log-likelihood;
- per expert ``sum_t r_ti``, ``sum_t r_ti phi_t phi_t^T``,
  ``sum_t r_ti e_ti phi_t`` and ``sum_t r_ti e_ti^2``, with
  ``e_ti = y_t - a_i^T phi_t`` the residual at the current coefficients;
- for the gate's free rows ``1..m-1`` the Fisher-scoring gradient
  ``sum_t (r_ti - rho_t g_ti) z_t`` and information
  ``sum_t rho_t g_ti (delta_ij - g_tj) z_t z_t^T``, ``rho_t = sum_i r_ti``.

A dense normalized sigmoid gate (``gate="normalized_sigmoid"``), with log
weights ``log sigma(s_i) - log sum_j sigma(s_j)``, has all ``m`` rows free;
with ``a = 1 - sigma(s)`` its gradient is ``sum_t a_ti (r_ti - rho_t g_ti)
z_t`` and its information ``sum_t (diag(d_t) - v_t v_t^T) kron z_t z_t^T``
with ``d = |a (r - rho g)| sigma + rho g a^2`` and ``v = sqrt(rho) g a``
(:func:`moestat.kernels.gates.normalized_sigmoid_fisher_weights`).

Each sum with a design factor is one matrix product over the chunk's rows:
per-sample weights times the chunk's products of design columns
(``c x p(p+1)/2`` for a chunk of ``c`` rows).

The M-step from the sums (:func:`em_proposal`: :func:`gaussian_expert_step`
and :func:`gate_direction`): the experts' weighted least squares, taken about
the current coefficients (``sum r phi y = S_e + G a`` and
``sum r y^2 = s_e + 2 a^T S_e + a^T G a`` with ``G`` the weighted Gram
matrix, ``S_e`` and ``s_e`` the residual sums), so the update is ``a + d``
with ``d = G^{-1} S_e`` and the new residual sum of squares
``s_e - 2 d^T S_e + d^T G d``; this avoids the cancellation of
``sum r y^2 - b^T G^{-1} b`` when ``y`` is large against its noise. The
gate takes one Fisher-scoring step, solved as
:func:`moestat._math.fisher_direction` solves it; in a box ``|beta| <=
bound`` the coefficients at the bound that the gradient pushes out of it
are held (:func:`moestat._math.hold_at_box`). The products of design
columns are :func:`moestat._math.pair_products`, in the order of
:func:`moestat._math.upper_triangle`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from moestat._math import hold_at_box, pair_products, solve_spd, upper_triangle
from moestat.kernels.gates import _sigmoid_complement

__all__ = [
    "SweepStatistics",
    "chunk_statistics",
    "soft_label_statistics",
    "unflatten_soft_label",
    "statistics_size",
    "unflatten_statistics",
    "sweep",
    "gaussian_expert_step",
    "gate_direction",
    "em_proposal",
    "chunk_rows",
    "GATES",
    "EXPERTS",
    "free_rows",
]

#: The gates a sweep serves: a softmax gate (reference row 0) and the
#: dense normalized sigmoid gate (every row free).
GATES = ("softmax", "normalized_sigmoid")

#: The expert families a sweep serves: Gaussian experts whose mean is linear
#: in their design (one variance per expert, one shared, or a known one).
EXPERTS = ("gaussian",)


def free_rows(m: int, gate: str = "softmax") -> int:
    """Free gate rows of ``m`` experts: ``m - 1`` (softmax) or ``m`` (sigmoid).

    Examples
    --------
    >>> free_rows(4), free_rows(4, "normalized_sigmoid")
    (3, 4)
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}; got {gate!r}.")
    return m if gate == "normalized_sigmoid" else m - 1


_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class SweepStatistics:
    """The weighted sums of one sweep (leading axes: data sets).

    The expert sums are taken with the residuals ``e_ti = y_t - phi_t^T a_i``
    at the coefficients ``a_i`` the sweep ran at; the gate's are over its
    free rows ``1..m-1``, flattened row by row as its packed parameters.

    Parameters
    ----------
    log_likelihood : array of shape (...)
        ``sum_t w_t log p(y_t | x_t)``.
    expert_weight : array of shape (..., m)
        ``sum_t r_ti`` (responsibilities include the sample weights).
    expert_gram : array of shape (..., m, p_expert, p_expert)
        ``sum_t r_ti phi_t phi_t^T``.
    expert_score : array of shape (..., m, p_expert)
        ``sum_t r_ti e_ti phi_t``.
    expert_ss : array of shape (..., m)
        ``sum_t r_ti e_ti^2``.
    gate_gradient : array of shape (..., k p_gate)
        ``sum_t (r_ti - rho_t g_ti) z_t`` over the ``k = m - 1`` free rows
        of a softmax gate (every row of the sigmoid gate, module docstring).
    gate_information : array of shape (..., k p_gate, k p_gate)
        ``sum_t rho_t g_ti (delta_ij - g_tj) z_t z_t^T`` (softmax).
    """

    log_likelihood: Any
    expert_weight: Any
    expert_gram: Any
    expert_score: Any
    expert_ss: Any
    gate_gradient: Any
    gate_information: Any


# -- layout of the flattened statistics ---------------------------------------
def _index(xp: Any, values: list[int], device: Any) -> Any:
    """Integer indices as an array (int64 also when ``values`` is empty)."""
    return xp.asarray(values, dtype=xp.int64, device=device)


def _pair_lookup(p: int) -> list[int]:
    """For each entry of a p x p matrix (row-major), its upper-triangle position."""
    position = {}
    for index, (a, b) in enumerate(zip(*upper_triangle(p), strict=True)):
        position[a, b] = position[b, a] = index
    return [position[a, b] for a in range(p) for b in range(p)]


def statistics_size(m: int, p_gate: int, p_expert: int, gate: str = "softmax") -> int:
    """Length of the flattened statistics of one data set.

    Parameters
    ----------
    m, p_gate, p_expert : int
        Experts and the widths of the gate's and the experts' designs.
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        The gate (its number of free rows, :func:`free_rows`).

    Returns
    -------
    int

    Examples
    --------
    >>> statistics_size(2, 2, 2)  # 1 + 2 + 2*3 + 2*2 + 2 + 1*2 + 1*3
    20
    """
    k = free_rows(m, gate)
    q_expert = p_expert * (p_expert + 1) // 2
    return (
        1
        + m
        + m * q_expert
        + m * p_expert
        + m
        + k * p_gate
        + _information_size(k, p_gate)
    )


def _khatri_rao(k: int, p_gate: int) -> bool:
    """Whether the gate information is summed in Khatri-Rao form.

    With ``k`` free rows and ``p`` design columns the pair weights
    ``rho g_i (delta_ij - g_j)`` take ``k(k+1)/2`` numbers per sample; from
    ``k >= 2p`` on, the ``k p`` entries ``sqrt(rho) g_i z`` of the low-rank
    part are fewer and their product ``U^T U`` is one matrix product (the
    rule of :func:`moestat._math.fisher_information`).
    """
    return k >= 2 * p_gate


def _information_size(k: int, p_gate: int) -> int:
    """Numbers of a chunk's gate-information sums."""
    q_gate = p_gate * (p_gate + 1) // 2
    if _khatri_rao(k, p_gate):
        return k * q_gate + (k * p_gate) ** 2
    return k * (k + 1) // 2 * q_gate


def _symmetric_from_pairs(xp: Any, packed: Any, p: int) -> Any:
    """(..., p, p) symmetric matrices from (..., p(p+1)/2) upper triangles."""
    lookup = _index(xp, _pair_lookup(p), array_api_compat.device(packed))
    full = xp.take(packed, lookup, axis=packed.ndim - 1)
    return xp.reshape(full, (*packed.shape[:-1], p, p))


def _information_from_pairs(xp: Any, packed: Any, k: int, p_gate: int) -> Any:
    """The (..., k p, k p) gate information from its (..., q_free q_gate) pair sums.

    ``information[(i, a), (j, b)] = sum rho g_i (delta_ij - g_j) z_a z_b``.
    """
    batch = tuple(packed.shape[:-1])
    q_free, q_gate = k * (k + 1) // 2, p_gate * (p_gate + 1) // 2
    info = _symmetric_from_pairs(
        xp, xp.reshape(packed, (*batch, q_free, q_gate)), p_gate
    )
    info = xp.reshape(info, (*batch, q_free, p_gate * p_gate))
    info = _symmetric_from_pairs(xp, xp.matrix_transpose(info), k)  # (..., pp, k, k)
    info = xp.reshape(info, (*batch, p_gate, p_gate, k, k))
    axes = (*range(len(batch)), *(len(batch) + a for a in (2, 0, 3, 1)))
    return xp.reshape(xp.permute_dims(info, axes), (*batch, k * p_gate, k * p_gate))


def _information(xp: Any, packed: Any, k: int, p_gate: int) -> Any:
    """The (..., k p, k p) gate information from a sweep's information sums."""
    if not _khatri_rao(k, p_gate):
        return _information_from_pairs(xp, packed, k, p_gate)
    batch = tuple(packed.shape[:-1])
    q_gate, size = p_gate * (p_gate + 1) // 2, k * p_gate
    blocks = xp.reshape(packed[..., : k * q_gate], (*batch, k, q_gate))
    blocks = _symmetric_from_pairs(xp, blocks, p_gate)  # (..., k, p, p)
    eye = xp.eye(k, dtype=packed.dtype, device=array_api_compat.device(packed))
    diagonal = blocks[..., :, :, None, :] * eye[:, None, :, None]
    low_rank = xp.reshape(packed[..., k * q_gate :], (*batch, size, size))
    return xp.reshape(diagonal, (*batch, size, size)) - low_rank


def unflatten_statistics(
    flat: Any, m: int, p_gate: int, p_expert: int, gate: str = "softmax"
) -> SweepStatistics:
    """Split flattened sums (the output of :func:`chunk_statistics`) into their parts.

    Parameters
    ----------
    flat : array of shape (..., S)
        ``S = statistics_size(m, p_gate, p_expert)``.
    m, p_gate, p_expert : int
        Experts and design widths.
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        The gate (its number of free rows, :func:`free_rows`).

    Returns
    -------
    SweepStatistics
        Symmetric matrices rebuilt from their upper triangles.
    """
    xp = array_api_compat.array_namespace(flat)
    k = free_rows(m, gate)
    q_expert = p_expert * (p_expert + 1) // 2
    sizes = [
        1,
        m,
        m * q_expert,
        m * p_expert,
        m,
        k * p_gate,
        _information_size(k, p_gate),
    ]
    batch = tuple(flat.shape[:-1])
    parts, start = [], 0
    for size in sizes:
        parts.append(flat[..., start : start + size])
        start += size
    ll, weight, gram, score, ss, grad, info = parts
    gram = _symmetric_from_pairs(xp, xp.reshape(gram, (*batch, m, q_expert)), p_expert)
    info = _information(xp, info, k, p_gate)
    return SweepStatistics(
        log_likelihood=ll[..., 0],
        expert_weight=weight,
        expert_gram=gram,
        expert_score=xp.reshape(score, (*batch, m, p_expert)),
        expert_ss=ss,
        gate_gradient=grad,
        gate_information=info,
    )


# -- the per-chunk work --------------------------------------------------------
def _device(x: Any) -> Any:
    """The array's device (None for numpy before 2.0, whose arrays have none).

    Read as an attribute, not with ``array_api_compat.device``, which
    ``torch.compile`` cannot trace.
    """
    return getattr(x, "device", None)


#: From this many design columns on, weighted Gram matrices are formed as
#: ``(A * w)^T A`` per weight vector (matrix products, no gathered column
#: products); below it as ``w @ pairs(A)`` (fewer operations for narrow
#: designs).
WIDE_DESIGN = 8


class _Grams:
    """Weighted Gram matrices ``sum_t w_t a_t a_t^T`` of one chunk's design.

    ``At`` is the design (..., p, c), experts-major. Each call takes
    weights (..., w, c) and returns the upper triangles (..., w, q),
    ``q = p (p + 1) / 2``, in the order of :func:`moestat._math.upper_triangle`.
    """

    def __init__(self, xp: Any, At: Any) -> None:
        self.xp, self.At = xp, At
        p = At.shape[-2]
        self.wide = p >= WIDE_DESIGN
        self.pairs = None
        if self.wide:
            rows, cols = upper_triangle(p)
            self.upper = _index(
                xp, [a * p + b for a, b in zip(rows, cols, strict=True)], _device(At)
            )

    def __call__(self, weights: Any) -> Any:
        xp, At = self.xp, self.At
        if not self.wide:
            if self.pairs is None:
                self.pairs = pair_products(At, axis=-2, xp=xp)
            return xp.matmul(weights, xp.matrix_transpose(self.pairs))
        p = At.shape[-2]
        weighted = At[..., None, :, :] * weights[..., :, None, :]
        full = xp.matmul(weighted, xp.matrix_transpose(At)[..., None, :, :])
        full = xp.reshape(full, (*full.shape[:-2], p * p))
        return xp.take(full, self.upper, axis=full.ndim - 1)


def _fisher_pair_weights(xp: Any, rho_g: Any, g: Any) -> Any:
    """Weights ``rho g_i (delta_ij - g_j)`` of the free rows' pairs ``i <= j``.

    ``rho_g`` and ``g`` are (..., m - 1, c); the result is (..., q, c) with
    ``q = (m - 1) m / 2``, in the order of :func:`moestat._math.upper_triangle`.
    """
    rows, cols = upper_triangle(g.shape[-2])
    device = _device(g)
    g_cols = xp.take(g, _index(xp, cols, device), axis=g.ndim - 2)
    diagonal = xp.reshape(
        xp.asarray(
            [float(a == b) for a, b in zip(rows, cols, strict=True)],
            dtype=g.dtype,
            device=device,
        ),
        (len(rows), 1),
    )
    return xp.take(rho_g, _index(xp, rows, device), axis=g.ndim - 2) * (
        diagonal - g_cols
    )


def _information_parts(xp: Any, rho: Any, g: Any, Zt: Any, grams: Any) -> tuple:
    """A chunk's sums of the gate information (layout of :func:`_information`).

    ``rho`` is (..., 1, c), ``g`` the free rows' weights (..., k, c), ``Zt``
    the design (..., p, c) and ``grams`` its :class:`_Grams`.
    """
    k, p_gate = g.shape[-2], Zt.shape[-2]
    rho_g = rho * g
    if not _khatri_rao(k, p_gate):
        weights = _fisher_pair_weights(xp, rho_g, g)
        return (grams(weights),)
    # diag(rho g) kron z z^T block by block, less U^T U with rows
    # kron(sqrt(rho) g, z)
    blocks = grams(rho_g)
    root = xp.sqrt(rho) * g
    batch, c = tuple(g.shape[:-2]), g.shape[-1]
    Ut = xp.reshape(
        root[..., :, None, :] * Zt[..., None, :, :], (*batch, k * p_gate, c)
    )
    return blocks, xp.matmul(Ut, xp.matrix_transpose(Ut))


def _weight_information_parts(
    xp: Any, diag: Any, vec: Any, Zt: Any, grams: Any
) -> tuple:
    """A chunk's information sums from per-row weights ``diag(d) - v v^T``.

    ``diag`` and ``vec`` are (..., k, c) (every free row), ``Zt`` the
    design (..., p, c) and ``grams`` its :class:`_Grams`; the layout of
    :func:`_information`.
    """
    k, p_gate = vec.shape[-2], Zt.shape[-2]
    if not _khatri_rao(k, p_gate):
        rows, cols = upper_triangle(k)
        device = _device(vec)
        indicator = xp.reshape(
            xp.asarray(
                [float(a == b) for a, b in zip(rows, cols, strict=True)],
                dtype=vec.dtype,
                device=device,
            ),
            (len(rows), 1),
        )
        weights = indicator * xp.take(
            diag, _index(xp, rows, device), axis=vec.ndim - 2
        ) - xp.take(vec, _index(xp, rows, device), axis=vec.ndim - 2) * xp.take(
            vec, _index(xp, cols, device), axis=vec.ndim - 2
        )
        return (grams(weights),)
    batch, c = tuple(vec.shape[:-2]), vec.shape[-1]
    Ut = xp.reshape(vec[..., :, None, :] * Zt[..., None, :, :], (*batch, k * p_gate, c))
    return grams(diag), xp.matmul(Ut, xp.matrix_transpose(Ut))


def _log_sigmoid(xp: Any, scores: Any) -> Any:
    """``log sigma(s) = -log(1 + exp(-s))``, without overflow."""
    return -xp.logaddexp(xp.zeros_like(scores), -scores)


def _sigmoid_gate_parts(
    xp: Any, scores: Any, g: Any, resp: Any, rho: Any, Z: Any, Zt: Any, grams: Any
) -> tuple:
    """The normalized sigmoid gate's gradient and information sums of a chunk.

    ``scores`` are the affine scores (..., m, c), ``g`` the gate weights,
    ``resp`` the responsibilities (or soft labels) and ``rho`` their sums
    over the experts (..., 1, c).
    """
    a = _sigmoid_complement(xp, scores)
    excess = a * (resp - rho * g)
    rho_g_a = rho * g * a
    diag = xp.abs(excess) * (1.0 - a) + rho_g_a * a
    vec = xp.sqrt(rho) * g * a
    return (
        xp.matmul(excess, Z),
        *_weight_information_parts(xp, diag, vec, Zt, grams),
    )


def chunk_statistics(
    Z: Any,
    Phi: Any,
    y: Any,
    weight: Any,
    gate_coef: Any,
    expert_coef: Any,
    var: Any,
    accumulate_dtype: Any = None,
    xp: Any = None,
    gate: str = "softmax",
) -> Any:
    """The statistics of one chunk of rows, flattened to (..., S).

    Parameters
    ----------
    Z : array of shape (..., c, p_gate)
        The chunk's gate design rows.
    Phi : array of shape (..., c, p_expert)
        The chunk's expert design rows; pass ``Z`` itself when both designs
        are equal, and their products are formed once.
    y : array of shape (..., c)
        Responses.
    weight : array of shape (..., c) or None
        Sample weights (rows of weight zero do not count); None for none.
    gate_coef : array of shape (..., m, p_gate)
        Every gate row (a softmax gate's reference row, zeros, first).
    expert_coef : array of shape (..., m, p_expert)
        Expert coefficients.
    var : array of shape (..., m)
        Expert variances.
    accumulate_dtype : dtype, optional
        Dtype of the result (the chunk's own by default).
    xp : namespace, optional
        The arrays' ``array_api_compat`` namespace, found from them by
        default (``torch.compile`` needs it given: it cannot trace the
        look-up).
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        The gate: softmax weights, or the dense normalized sigmoid's
        ``sigma(s_i) / sum_j sigma(s_j)`` (every row free).

    Returns
    -------
    array of shape (..., S)
        The chunk's sums, laid out as :func:`unflatten_statistics` reads
        them; add the chunks' arrays for a sweep.

    Notes
    -----
    Pure array code without branches on values, so that ``torch.compile``
    can fuse it. Rows without a finite density get no responsibility.
    """
    if xp is None:
        xp = array_api_compat.array_namespace(Z, y, gate_coef)
    shared = Phi is Z
    # experts-major (..., m, c): reductions over the experts run along
    # contiguous rows, and each statistic is a (., c) @ (c, .) product
    Zt = xp.matrix_transpose(Z)
    Pt = Zt if shared else xp.matrix_transpose(Phi)
    var = var[..., None]
    # softmax with one exp; log g = scores - log(gate_sum), whose row
    # constant log(gate_sum) is left out of the joint and subtracted from
    # the per-sample log-likelihood (the sigmoid gate: log sigma(s) for s)
    scores = xp.matmul(gate_coef, Zt)
    affine = scores
    if gate == "normalized_sigmoid":
        scores = _log_sigmoid(xp, scores)
    scores = scores - xp.max(scores, axis=-2, keepdims=True)
    gate_exp = xp.exp(scores)
    gate_sum = xp.sum(gate_exp, axis=-2, keepdims=True)
    resid = y[..., None, :] - xp.matmul(expert_coef, Pt)
    joint = (scores + (-0.5 * (xp.log(var) + _LOG_2PI))) - (0.5 / var) * (resid * resid)
    # r = e / sum(e) for e = exp(joint - max): one exp; rows without a
    # finite density get r = 0
    top = xp.max(joint, axis=-2, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    joint_exp = xp.exp(joint - top)
    joint_sum = xp.sum(joint_exp, axis=-2, keepdims=True)
    per_sample = (top + xp.log(joint_sum) - xp.log(gate_sum))[..., 0, :]
    # row factors (c values, not m c): 1 / sum(e) times the sample weight
    alive = xp.isfinite(joint_sum) & (joint_sum > 0)
    safe_sum = xp.where(alive, joint_sum, xp.ones_like(joint_sum))
    if weight is None:
        counted = per_sample
        row_factor = xp.where(alive, 1.0 / safe_sum, xp.zeros_like(joint_sum))
    else:
        counted = xp.where(weight > 0, weight * per_sample, xp.zeros_like(per_sample))
        row_factor = xp.where(
            alive, weight[..., None, :] / safe_sum, xp.zeros_like(joint_sum)
        )
    resp = joint_exp * row_factor
    if accumulate_dtype is not None:
        counted = xp.astype(counted, accumulate_dtype)
    log_lik = xp.sum(counted, axis=-1, keepdims=True)

    # gate: soft-label gradient and Fisher pair weights rho g_i (delta_ij - g_j),
    # with rho = sum_i r_i = sum(e) * row_factor
    rho = joint_sum * row_factor
    gate_grams = _Grams(xp, Zt)
    expert_grams = gate_grams if shared else _Grams(xp, Pt)
    if gate == "normalized_sigmoid":
        g = gate_exp * (1.0 / gate_sum)
        gate_parts = _sigmoid_gate_parts(xp, affine, g, resp, rho, Z, Zt, gate_grams)
    else:
        g = gate_exp[..., 1:, :] * (1.0 / gate_sum)
        gate_parts = (
            xp.matmul(resp[..., 1:, :] - rho * g, Z),
            *_information_parts(xp, rho, g, Zt, gate_grams),
        )
    weighted_resid = resp * resid
    parts = (
        log_lik,
        xp.sum(resp, axis=-1),
        expert_grams(resp),
        xp.matmul(weighted_resid, Phi),
        xp.sum(weighted_resid * resid, axis=-1),
        *gate_parts,
    )
    batch = tuple(Z.shape[:-2])
    flat = [xp.reshape(part, (*batch, -1)) for part in parts]
    if accumulate_dtype is not None:
        flat = [xp.astype(part, accumulate_dtype) for part in flat]
    return xp.concat(flat, axis=-1)


def soft_label_statistics(
    Z: Any, resp: Any, gate_coef: Any, gate: str = "softmax"
) -> Any:
    """A gate's fit to given soft labels, on one chunk of rows.

    The sums of the gate's Fisher-scoring steps on fixed labels ``r`` (its
    initialisation): ``Q = sum_t sum_i r_ti log g_i(z_t)``, and the
    gradient and information of :class:`SweepStatistics` with ``r`` the
    labels.

    Parameters
    ----------
    Z : array of shape (..., c, p_gate)
        The chunk's gate design rows.
    resp : array of shape (..., m, c)
        Soft labels, experts first.
    gate_coef : array of shape (..., m, p_gate)
        Every gate row (a softmax gate's reference row, zeros, first).
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        The gate, as for :func:`chunk_statistics`.

    Returns
    -------
    array of shape (..., S)
        ``Q``, the gradient and the information's pair sums; add the
        chunks' arrays and read them with :func:`unflatten_soft_label`.
    """
    xp = array_api_compat.array_namespace(Z, resp, gate_coef)
    Zt = xp.matrix_transpose(Z)
    scores = xp.matmul(gate_coef, Zt)
    affine = scores
    if gate == "normalized_sigmoid":
        scores = _log_sigmoid(xp, scores)
    scores = scores - xp.max(scores, axis=-2, keepdims=True)
    gate_exp = xp.exp(scores)
    gate_sum = xp.sum(gate_exp, axis=-2, keepdims=True)
    rho = xp.sum(resp, axis=-2, keepdims=True)
    objective = xp.sum(
        xp.sum(resp * scores, axis=-2) - rho[..., 0, :] * xp.log(gate_sum[..., 0, :]),
        axis=-1,
    )
    if gate == "normalized_sigmoid":
        g = gate_exp * (1.0 / gate_sum)
        gate_parts = _sigmoid_gate_parts(
            xp, affine, g, resp, rho, Z, Zt, _Grams(xp, Zt)
        )
    else:
        g = gate_exp[..., 1:, :] * (1.0 / gate_sum)
        gate_parts = (
            xp.matmul(resp[..., 1:, :] - rho * g, Z),
            *_information_parts(xp, rho, g, Zt, _Grams(xp, Zt)),
        )
    parts = (objective[..., None], *gate_parts)
    batch = tuple(Z.shape[:-2])
    return xp.concat([xp.reshape(part, (*batch, -1)) for part in parts], axis=-1)


def unflatten_soft_label(
    flat: Any, m: int, p_gate: int, gate: str = "softmax"
) -> tuple[Any, Any, Any]:
    """``(Q, gradient, information)`` from summed :func:`soft_label_statistics`.

    Parameters
    ----------
    flat : array of shape (..., S)
    m, p_gate : int
        Experts and the gate design's width.
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        The gate (its ``k`` free rows, :func:`free_rows`).

    Returns
    -------
    tuple of arrays
        Shapes (...), (..., k p_gate) and (..., k p_gate, k p_gate).
    """
    xp = array_api_compat.array_namespace(flat)
    k = free_rows(m, gate)
    gradient = flat[..., 1 : 1 + k * p_gate]
    information = _information(xp, flat[..., 1 + k * p_gate :], k, p_gate)
    return flat[..., 0], gradient, information


def chunk_rows(
    n: int,
    m: int,
    p_gate: int,
    p_expert: int,
    itemsize: int,
    budget: int,
    batch: int = 1,
    min_rows: int = 1024,
) -> int:
    """Rows per chunk so that a chunk's intermediates stay within ``budget`` bytes.

    The chunks of a sweep are made about equal, each a whole multiple of 128
    rows (aligned starts for compiled kernels).

    Parameters
    ----------
    n, m, p_gate, p_expert : int
        Rows, experts and design widths.
    itemsize : int
        Bytes per number.
    budget : int
        Bytes a chunk's intermediates may take.
    batch : int, default=1
        Data sets swept together.
    min_rows : int, default=1024
        Fewest rows per chunk.

    Returns
    -------
    int

    Examples
    --------
    >>> chunk_rows(1_000_000, 4, 3, 3, 8, 2**22)
    8064
    """
    k = m - 1
    information = k * p_gate if _khatri_rao(k, p_gate) else k * (k + 1) // 2
    width = 12 * m + information
    # the column products of a narrow design, or the weighted copies of a
    # wide one (one per weight vector)
    for p, n_weights in ((p_gate, k + information), (p_expert, m)):
        width += p * n_weights if p >= WIDE_DESIGN else p * (p + 1) // 2
    rows = max(min_rows, budget // (batch * width * itemsize))
    n_chunks = max(1, -(-n // rows))
    rows = -(-n // n_chunks)
    return min(n, -(-rows // 128) * 128) if n > 0 else 1


def sweep(
    Z: Any,
    Phi: Any,
    y: Any,
    weight: Any,
    gate_coef: Any,
    expert_coef: Any,
    var: Any,
    chunk_size: int,
    accumulate_dtype: Any = None,
    kernel: Any = chunk_statistics,
    gate: str = "softmax",
) -> SweepStatistics:
    """One pass over the rows, chunk by chunk: the sums of :class:`SweepStatistics`.

    Parameters
    ----------
    Z, Phi, y, weight, gate_coef, expert_coef, var
        As for :func:`chunk_statistics`, over all ``n`` rows (the rows are
        the axis before the last of ``Z`` and ``Phi``, the last of ``y``).
    chunk_size : int
        Rows per chunk.
    accumulate_dtype : dtype, optional
        Dtype of the sums across chunks (the data's by default).
    kernel : callable, default=chunk_statistics
        The per-chunk function (a compiled :func:`chunk_statistics`, say).
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        The gate, passed to ``kernel`` when not softmax.

    Returns
    -------
    SweepStatistics
        In the namespace and on the device of the data.

    Examples
    --------
    >>> import numpy as np
    >>> Z = np.column_stack([np.ones(4), [-1.0, -0.5, 0.5, 1.0]])
    >>> y = np.array([-1.0, -0.4, 0.6, 1.0])
    >>> stats = sweep(Z, Z, y, None, np.zeros((2, 2)),
    ...               np.array([[0.0, 1.0], [0.0, -1.0]]), np.ones(2), 3)
    >>> stats.expert_gram.shape, stats.gate_information.shape
    ((2, 2, 2), (2, 2))
    """
    m, p_gate, p_expert = gate_coef.shape[-2], Z.shape[-1], Phi.shape[-1]
    n = y.shape[-1]
    shared = Phi is Z
    if gate != "softmax":
        kernel = functools.partial(kernel, gate=gate)
    total = None
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        Z_part = Z[..., start:stop, :]
        part = kernel(
            Z_part,
            Z_part if shared else Phi[..., start:stop, :],
            y[..., start:stop],
            None if weight is None else weight[..., start:stop],
            gate_coef,
            expert_coef,
            var,
            accumulate_dtype,
        )
        total = part if total is None else total + part
    return unflatten_statistics(total, m, p_gate, p_expert, gate)


# -- the M-step from the statistics -------------------------------------------
def gaussian_expert_step(
    stats: SweepStatistics,
    coef: Any,
    var: Any,
    var_floor: Any,
    n: Any,
    variance: str = "per_expert",
) -> tuple[Any, Any]:
    """Closed-form M-step of Gaussian experts from a sweep's statistics.

    Parameters
    ----------
    stats : SweepStatistics
        Taken at ``coef``.
    coef : array of shape (..., m, p_expert)
        The coefficients the sweep ran at.
    var : array of shape (..., m)
        The current variances (kept by an empty expert, and when known).
    var_floor : float or array of shape (...)
        Lower bound on the estimated variances.
    n : float or array of shape (...)
        The data's size: an expert whose total responsibility is at most
        ``1e-10 n`` is empty and keeps its parameters.
    variance : {"per_expert", "shared", "known"}
        One variance per expert, one shared by all, or none estimated.

    Returns
    -------
    coef, var : arrays of the shapes of the inputs
        The maximisers of the expected complete-data log-likelihood.
    """
    xp = array_api_compat.array_namespace(coef, stats.expert_gram)
    weight = stats.expert_weight
    if not hasattr(n, "shape"):
        n = xp.asarray(n, dtype=weight.dtype, device=array_api_compat.device(weight))
    empty = weight <= 1e-10 * n[..., None]
    gram, score = stats.expert_gram, stats.expert_score
    delta = solve_spd(gram, score, refine=True)
    delta = xp.where(empty[..., None], xp.zeros_like(delta), delta)
    new_coef = coef + delta
    if variance == "known":
        return new_coef, var
    quad = xp.sum(delta * xp.matmul(gram, delta[..., None])[..., 0], axis=-1)
    ss = stats.expert_ss - 2.0 * xp.sum(delta * score, axis=-1) + quad
    ss = xp.where(ss > 0, ss, xp.zeros_like(ss))
    if variance == "shared":
        kept = xp.astype(~empty, ss.dtype)
        pooled = xp.sum(ss * kept, axis=-1, keepdims=True) / xp.sum(
            weight * kept, axis=-1, keepdims=True
        )
        new_var = xp.broadcast_to(pooled, ss.shape)
    else:
        safe = xp.where(empty, xp.ones_like(weight), weight)
        new_var = xp.where(empty, var, ss / safe)
    floor = var_floor if not hasattr(var_floor, "shape") else var_floor[..., None]
    return new_coef, xp.maximum(new_var, xp.zeros_like(new_var) + floor)


def gate_direction(
    stats: SweepStatistics, n: Any, coef: Any = None, bound: float | None = None
) -> Any:
    """Fisher-scoring direction of the gate's free rows; zero where no ascent is due.

    In a box ``|beta| <= bound`` a coefficient at the bound whose gradient
    points out of the box is held (its direction is zero) and the others
    take the Fisher step of their own block of the information
    (:func:`moestat._math.hold_at_box`). Without the hold, a clipped step at
    a maximum on the box moves the free coefficients as if the held ones
    moved too, and can lose likelihood.

    Parameters
    ----------
    stats : SweepStatistics
    n : float or array of shape (...)
        The data's size: a step whose first-order gain is at most
        ``1e-14 n`` is not taken.
    coef : array of shape (..., k p_gate), optional
        The free rows' coefficients the sweep ran at, flattened row by row
        (the gate's packed parameters); needed with a ``bound``.
    bound : float or None, default=None
        The gate's box; None for none.

    Returns
    -------
    array of shape (..., k p_gate)
        Flattened row by row, as the gate's packed parameters.
    """
    xp = array_api_compat.array_namespace(stats.gate_gradient)
    grad, information = stats.gate_gradient, stats.gate_information
    if bound is not None:
        grad, information = hold_at_box(grad, information, coef, bound)
    direction = solve_spd(information, grad, ridge=1e-9)
    gain = xp.sum(grad * direction, axis=-1, keepdims=True)
    if not hasattr(n, "shape"):
        n = xp.asarray(n, dtype=grad.dtype, device=array_api_compat.device(grad))
    move = gain > 1e-14 * n[..., None]
    return xp.where(move, direction, xp.zeros_like(direction))


def em_proposal(
    stats: SweepStatistics,
    expert_coef: Any,
    var: Any,
    gate_coef: Any,
    var_floor: Any,
    n: Any,
    variance: str = "per_expert",
    bound: float | None = None,
) -> tuple[Any, Any, Any]:
    """The M-step of the chunked EM from one sweep's sums: the point to try next.

    The experts' closed form (:func:`gaussian_expert_step`) and the gate's
    Fisher-scoring direction (:func:`gate_direction`, held at the box
    ``|beta| <= bound`` when the gate has one), both at the point the sweep
    ran at. Leading axes are data sets: the numpy EM passes one
    (:class:`moestat._sweep_em.SweepSteps`), the torch one a batch
    (:func:`moestat.torch.fused.em_chunked`); each then projects
    ``gate_coef + step * direction`` into the gate's box and judges the
    step by the next sweep.

    Parameters
    ----------
    stats : SweepStatistics
        Taken at ``expert_coef``, ``var`` and ``gate_coef``.
    expert_coef : array of shape (..., m, p_expert)
    var : array of shape (..., m)
    gate_coef : array of shape (..., k p_gate)
        The gate's free rows, flattened row by row (its packed parameters).
    var_floor : float or array of shape (...)
    n : float or array of shape (...)
        The data's size (the thresholds of an empty expert and of a gate
        step worth taking).
    variance : {"per_expert", "shared", "known"}, default="per_expert"
    bound : float or None, default=None
        The gate's box.

    Returns
    -------
    coef, var : arrays of the shapes of ``expert_coef`` and ``var``
        The experts' new parameters.
    direction : array of the shape of ``gate_coef``
        The gate's direction (zero where no ascent is due).

    Examples
    --------
    >>> import numpy as np
    >>> Z = np.column_stack([np.ones(4), [-1.0, -0.5, 0.5, 1.0]])
    >>> y = np.array([-1.0, -0.4, 0.6, 1.0])
    >>> coef, var = np.array([[0.0, 1.0], [0.0, -1.0]]), np.ones(2)
    >>> stats = sweep(Z, Z, y, None, np.zeros((2, 2)), coef, var, 4)
    >>> new_coef, new_var, direction = em_proposal(
    ...     stats, coef, var, np.zeros(2), 0.0, 4.0)
    >>> new_coef.shape, new_var.shape, direction.shape
    ((2, 2), (2,), (2,))
    """
    coef, new_var = gaussian_expert_step(
        stats, expert_coef, var, var_floor, n, variance
    )
    return coef, new_var, gate_direction(stats, n, gate_coef, bound)
