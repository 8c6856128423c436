"""The EM sweep of :mod:`moestat.kernels.sweep`, specialised for numpy.

The same sums (:class:`~moestat.kernels.sweep.SweepStatistics`) as
:func:`moestat.kernels.sweep.sweep`, from a pass that works in place: each
chunk's rows are copied, transposed, into buffers made once per data set,
and every elementwise step writes into one of four (m, c) buffers (ufuncs
with ``out=``), so a sweep allocates nothing of the chunk's size. Sums over
the experts and over the rows are matrix products with a vector of ones
(faster than numpy's reductions along either axis).

The E-step takes two exponentials per entry: the gate's ``exp(s - s*)``,
``s*`` the row's largest score, and ``J = exp(s - s* - h e^2) <= 1``, with
``h_i = 1 / (2 nu_i)`` and ``e`` the residual: the unnormalised joint
``exp(s_i) f_i`` over ``e^{s*}`` and the constant ``c_i = (2 pi
nu_i)^{-1/2}``. No second maximum is needed, as ``J <= 1``; a row whose
joint sum underflows (below the square root of the smallest normal
number: residuals tens of standard deviations from every expert it is
gated to) is recomputed less its own maximum. Every sum is linear in the
responsibilities, so ``c_i`` scales the (m,)-sized totals, not the (m, c)
arrays.

Residuals are formed scaled, ``sqrt(h_i) (y - a_i^T phi)``, by one matrix
product of ``[-sqrt(h) a, sqrt(h)]`` with the chunk's ``[phi; y]``, so the
Gaussian exponent is one square.

A dense normalized sigmoid gate (``gate="normalized_sigmoid"``) takes
``log sigma(s)`` for the scores ``s`` in the E-step (the rest is the
same), keeps the affine scores in a fifth (m, c) buffer for ``a = 1 -
sigma(s)``, and sums its gradient ``a (r - rho g)`` and information weights
``d = |a (r - rho g)| sigma + rho g a^2``, ``v = sqrt(rho) g a`` over all
``m`` rows (:mod:`moestat.kernels.sweep`).

``dtype`` sets the arithmetic of a chunk (float64 by default; float32
halves the bytes moved and doubles the exponentials' width), while the
sums across chunks are always float64.

The gate information takes ``k(k+1)/2`` pair weights (or ``(k p)^2/2``
products in Khatri-Rao form, ``k = m - 1`` free rows) per row, against
``O(m)`` work for everything else. From :data:`INFORMATION_ROWS` rows on,
it is summed over every ``stride``-th row (:func:`information_stride`) and
scaled by ``stride``: an unbiased estimate of the Fisher information,
symmetric positive definite like it, so the gate's Fisher step stays an
ascent direction (the gradient is always the whole sum) and the maximum is
the same; only the path differs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moestat._math import pair_products, upper_triangle
from moestat.kernels.sweep import (
    WIDE_DESIGN,
    SweepStatistics,
    _khatri_rao,
    free_rows,
    unflatten_statistics,
)

__all__ = ["NumpySweep", "information_stride", "numpy_chunk_rows", "INFORMATION_ROWS"]

_LOG_2PI = math.log(2.0 * math.pi)

#: Fewest rows the gate information is summed over; data sets below twice
#: this take every row.
INFORMATION_ROWS = 2**16

#: Free-row design entries ``k p_gate`` per step of the information's
#: stride: up to this many, every row counts.
INFORMATION_WIDTH = 8


def information_stride(n: int, k: int, p_gate: int) -> int:
    """Every how many rows the gate information is summed (1: every row).

    ``k p_gate // INFORMATION_WIDTH`` (the information's work per row,
    ``(k p_gate)^2 / 2`` multiply-adds, then stays of the order of the
    E-step's ``O(m)``), but never so large that fewer than
    :data:`INFORMATION_ROWS` rows remain.

    Parameters
    ----------
    n : int
        Rows.
    k : int
        Free gate rows (``m - 1``).
    p_gate : int
        Columns of the gate design.

    Returns
    -------
    int

    Examples
    --------
    >>> information_stride(1_000_000, 31, 3), information_stride(1_000_000, 3, 3)
    (11, 1)
    >>> information_stride(100_000, 31, 3)
    1
    """
    return max(1, min(k * p_gate // INFORMATION_WIDTH, n // INFORMATION_ROWS))


#: Bytes of a chunk's buffers in :func:`numpy_chunk_rows`: a few MiB, within
#: a core's share of the last-level cache (measured best on the benchmark
#: of ``benchmarks/bench_large_n.py`` between 1 and 16 MiB).
CHUNK_BYTES = 2**22


def numpy_chunk_rows(
    n: int,
    m: int,
    p_gate: int,
    p_expert: int,
    itemsize: int = 8,
    stride: int = 1,
    gate: str = "softmax",
) -> int:
    """Rows per chunk of :class:`NumpySweep`: buffers of :data:`CHUNK_BYTES`.

    Four (m, c) buffers, the chunk's design rows and their products, and
    the information's pair weights or Khatri-Rao columns over every
    ``stride``-th row. At least 1024 rows (fewer calls per sweep), chunks
    about equal, a multiple of 128 rows.

    Parameters
    ----------
    n, m, p_gate, p_expert : int
        Rows, experts and design widths.
    itemsize : int, default=8
        Bytes per number of the chunk's arithmetic.
    stride : int, default=1
        The information's stride (:func:`information_stride`).
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        The gate (a sigmoid gate has ``m`` free rows and a fifth buffer).

    Returns
    -------
    int

    Examples
    --------
    >>> numpy_chunk_rows(1_000_000, 4, 3, 3)
    11136
    """
    k = free_rows(m, gate)
    width = k * p_gate if _khatri_rao(k, p_gate) else k * (k + 1) // 2
    buffers = 4 if gate == "softmax" else 5
    per_row = buffers * m + p_gate + p_expert + 7 + -(-width // stride)
    for p in (p_gate, p_expert):
        per_row += p if p >= WIDE_DESIGN else p * (p + 1) // 2
    rows = max(1024, CHUNK_BYTES // (per_row * itemsize))
    n_chunks = max(1, -(-n // rows))
    rows = -(-n // n_chunks)
    return min(n, -(-rows // 128) * 128) if n > 0 else 1


def _log_sigmoid(S: NDArray, scratch: NDArray) -> NDArray:
    """``log sigma(s) = min(s, 0) - log(1 + exp(-|s|))`` of ``S`` in place.

    One ``exp`` and one ``log1p`` per entry (numpy's ``logaddexp`` takes
    about thirty times as long); ``scratch`` is a buffer of ``S``'s shape.
    """
    np.abs(S, out=scratch)
    np.negative(scratch, out=scratch)
    np.exp(scratch, out=scratch)
    np.log1p(scratch, out=scratch)
    np.minimum(S, 0.0, out=S)
    return np.subtract(S, scratch, out=S)


class _Grams:
    """Weighted Gram sums ``sum_t w_t a_t a_t^T`` of one chunk, upper triangles.

    Narrow designs (below :data:`~moestat.kernels.sweep.WIDE_DESIGN`
    columns) multiply the weights by the chunk's column products; wide
    ones take one ``(A * w) A^T`` product per weight vector.
    """

    def __init__(self, p: int, rows: int, dtype: Any) -> None:
        self.p, self.wide = p, p >= WIDE_DESIGN
        q = p * (p + 1) // 2
        size = p if self.wide else q
        self.buffer = np.empty(size * rows, dtype=dtype)
        rows_, cols = upper_triangle(p)
        self.upper = np.asarray([a * p + b for a, b in zip(rows_, cols, strict=True)])
        self.At: NDArray | None = None
        self.pairs: NDArray | None = None

    def load(self, At: NDArray) -> None:
        """Take a chunk's design (p, c); narrow designs form their products now."""
        self.At = At
        if not self.wide:
            q, c = self.p * (self.p + 1) // 2, At.shape[1]
            self.pairs = pair_products(At, 0, out=self.buffer[: q * c].reshape(q, c))

    def sums(self, weights: NDArray, step: int = 1) -> NDArray:
        """(w, q) sums for weights (w, c) over every ``step``-th row."""
        At = self.At[:, ::step]
        if not self.wide:
            return np.matmul(weights, self.pairs[:, ::step].T)
        p, c = self.p, At.shape[1]
        weighted = self.buffer[: p * c].reshape(p, c)
        out = np.empty((weights.shape[0], p * p), dtype=weights.dtype)
        for index, w in enumerate(weights):
            np.multiply(At, w, out=weighted)
            out[index] = np.matmul(weighted, At.T).ravel()
        return out[:, self.upper]


def _column_max(A: NDArray, out: NDArray) -> NDArray:
    """Maximum over the rows of ``A`` (m, c) into ``out`` (c,)."""
    if A.shape[0] > 8:
        return np.max(A, axis=0, out=out)
    np.copyto(out, A[0])
    for row in A[1:]:
        np.maximum(out, row, out=out)
    return out


class NumpySweep:
    """The sums of a sweep over one data set, from preallocated numpy buffers.

    Parameters
    ----------
    Z : ndarray of shape (n, p_gate)
        Gate design.
    Phi : ndarray of shape (n, p_expert)
        Expert design; ``Z`` itself when the designs are equal (their
        products are then formed once per chunk).
    y : ndarray of shape (n,)
    weight : ndarray of shape (n,) or None
        Sample weights.
    m : int
        Experts.
    chunk_size : int or None
        Rows per chunk; None for :func:`numpy_chunk_rows`.
    dtype : numpy dtype, default=np.float64
        Arithmetic of a chunk; sums across chunks are float64.
    stride : int or None, default=None
        Every how many rows the gate information is summed; None for
        :func:`information_stride`.
    gate : {"softmax", "normalized_sigmoid"}, default="softmax"
        A softmax gate (``gate_coef``'s first row the reference) or the
        dense normalized sigmoid gate (every row free).

    Examples
    --------
    >>> Z = np.column_stack([np.ones(4), [-1.0, -0.5, 0.5, 1.0]])
    >>> y = np.array([-1.0, -0.4, 0.6, 1.0])
    >>> sweep = NumpySweep(Z, Z, y, None, 2, 3)
    >>> stats = sweep(np.zeros((2, 2)), np.array([[0.0, 1.0], [0.0, -1.0]]), np.ones(2))
    >>> stats.expert_gram.shape, stats.gate_information.shape
    ((2, 2, 2), (2, 2))
    """

    def __init__(
        self,
        Z: NDArray[np.float64],
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        weight: NDArray[np.float64] | None,
        m: int,
        chunk_size: int | None,
        dtype: Any = np.float64,
        stride: int | None = None,
        gate: str = "softmax",
    ) -> None:
        self.Z, self.Phi, self.y, self.weight = Z, Phi, y, weight
        self.shared = Phi is Z
        self.n, self.m = y.shape[0], m
        self.p_gate, self.p_expert = Z.shape[1], Phi.shape[1]
        self.gate = gate
        self.sigmoid = gate == "normalized_sigmoid"
        self.k = free_rows(m, gate)
        self.dtype = np.dtype(dtype)
        self.stride = (
            information_stride(self.n, self.k, self.p_gate)
            if stride is None
            else stride
        )
        if chunk_size is None:
            chunk_size = numpy_chunk_rows(
                self.n,
                m,
                self.p_gate,
                self.p_expert,
                self.dtype.itemsize,
                self.stride,
                gate,
            )
        self.chunk = max(1, min(chunk_size, self.n))
        self.khatri_rao = _khatri_rao(self.k, self.p_gate)
        rows, dt = self.chunk, self.dtype
        # four (m, c) buffers: scores, residuals, joint, squares (and the
        # sigmoid gate's affine scores)
        self._mc = [np.empty(m * rows, dtype=dt) for _ in range(4)]
        self._affine = np.empty(m * rows, dtype=dt) if self.sigmoid else None
        # the chunk's design rows, transposed: [phi; y] and z
        self._py = np.empty((self.p_expert + 1) * rows, dtype=dt)
        self._z = self._py if self.shared else np.empty(self.p_gate * rows, dtype=dt)
        self._rows = [np.empty(rows, dtype=dt) for _ in range(7)]
        self._gate_grams = _Grams(self.p_gate, rows, dt)
        self._expert_grams = (
            self._gate_grams if self.shared else _Grams(self.p_expert, rows, dt)
        )
        width = self.k * self.p_gate if self.khatri_rao else self.k * (self.k + 1) // 2
        self._info = np.empty(width * (-(-rows // self.stride)), dtype=dt)
        self._ones_m = np.ones((1, m), dtype=dt)
        self._ones_c = np.ones(rows, dtype=dt)
        # a joint sum below this is recomputed less its own maximum
        self._tiny = np.sqrt(np.finfo(dt).tiny)
        self._pairs = tuple(zip(*upper_triangle(self.k), strict=True))

    # -- one chunk -------------------------------------------------------------
    def _load(self, start: int, stop: int) -> tuple[NDArray, NDArray, NDArray]:
        """Copy a chunk's rows, transposed: ([phi; y], z, weight or None)."""
        c = stop - start
        py = self._py[: (self.p_expert + 1) * c].reshape(self.p_expert + 1, c)
        np.copyto(py[: self.p_expert], self.Phi[start:stop].T)
        np.copyto(py[self.p_expert], self.y[start:stop])
        if self.shared:
            zt = py[: self.p_gate]
        else:
            zt = self._z[: self.p_gate * c].reshape(self.p_gate, c)
            np.copyto(zt, self.Z[start:stop].T)
        self._gate_grams.load(zt)
        if not self.shared:
            self._expert_grams.load(py[: self.p_expert])
        weight = None if self.weight is None else self.weight[start:stop]
        return py, zt, weight

    def _chunk(self, start: int, stop: int, B: NDArray, C: NDArray, c_row: NDArray):
        """One chunk's sums: log-likelihood, expert sums, gate gradient, information.

        The expert sums and the gradient's first term come out divided by
        ``c_i = (2 pi nu_i)^(-1/2)``, with the residual sums scaled by
        ``h_i`` (:meth:`__call__` undoes both on the totals).
        """
        m, c, dt = self.m, stop - start, self.dtype
        py, zt, weight = self._load(start, stop)
        S, R, J, Q = (buffer[: m * c].reshape(m, c) for buffer in self._mc)
        shift, top, gate_sum, joint_sum, factor, spare = (v[:c] for v in self._rows[:6])
        ones_m, ones_c = self._ones_m, self._ones_c[:c]
        # gate scores less their row maximum s*; scaled residuals and squares
        np.matmul(B, zt, out=S)
        if self.sigmoid:
            A = self._affine[: m * c].reshape(m, c)
            np.copyto(A, S)
            _log_sigmoid(S, J)
        _column_max(S, shift)
        S -= shift
        np.matmul(C, py, out=R)
        np.square(R, out=Q)
        # J_i = exp(s_i - s* - h_i e_i^2) = g_i f_i gate_sum / c_i <= 1
        np.subtract(S, Q, out=J)
        np.exp(J, out=J)
        np.matmul(c_row, J, out=joint_sum[None])
        # rows whose joint underflows: again, less the joint's own maximum
        low = ~(joint_sum >= self._tiny)
        any_low = bool(low.any())
        if any_low:
            self._rescale(low, J, S, Q, c_row, top, joint_sum)
        np.exp(S, out=S)
        np.matmul(ones_m, S, out=gate_sum[None])
        # per-sample log-likelihood log(joint_sum / gate_sum) (+ top)
        np.divide(joint_sum, gate_sum, out=spare)
        np.log(spare, out=spare)
        if any_low:
            spare += top
        alive = (joint_sum > 0) & np.isfinite(joint_sum) if any_low else None
        # row factors: r_i = c_i J_i w / joint_sum; rho = sum_i r_i
        if weight is None:
            log_lik = np.matmul(spare, ones_c)
            np.divide(1.0, joint_sum, out=factor)
            rho = None if alive is None or alive.all() else alive.astype(dt)
        else:
            w = weight.astype(dt, copy=False)
            log_lik = np.where(weight > 0, weight * spare.astype(np.float64), 0.0).sum()
            np.divide(w, joint_sum, out=factor)
            rho = w if alive is None else np.where(alive, w, 0)
        if alive is not None:
            factor[~alive] = 0.0
        J *= factor
        # experts (over c_i): weights, Grams, h e^2 and sqrt(h) e sums
        expert_weight = np.matmul(J, ones_c)
        gram = self._expert_grams.sums(J)
        ss = np.vecdot(J, Q)
        np.multiply(J, R, out=Q)
        score = np.matmul(Q, py[: self.p_expert].T)
        if self.sigmoid:
            gate_parts = self._sigmoid_gate(S, A, J, Q, R, gate_sum, rho, c_row, zt)
            return log_lik, expert_weight, gram, score, ss, *gate_parts
        # gate: u_i = sqrt(rho) g_i, rho g_i = sqrt(rho) u_i
        if rho is None:
            np.divide(1.0, gate_sum, out=factor)
        else:
            np.sqrt(rho, out=spare)
            np.divide(spare, gate_sum, out=factor)
        U = S[1:]
        U *= factor
        rho_g = U if rho is None else np.multiply(U, spare, out=R[1:])
        # the same product as rho_g_z's: their difference, the gate's
        # gradient, then cancels alike in float32 (read off the Gram sums,
        # it lost likelihood there)
        resp_z = np.matmul(J[1:], zt.T)
        rho_g_z = np.matmul(rho_g, zt.T)
        information = self._information(U, rho_g, zt)
        return (
            log_lik,
            expert_weight,
            gram,
            score,
            ss,
            resp_z,
            rho_g_z,
            *information,
        )

    def _sigmoid_gate(self, S, A, J, Q, R, gate_sum, rho, c_row, zt) -> tuple:
        """The sigmoid gate's gradient and information sums of one chunk.

        On entry ``S`` holds ``sigma(s_i)`` over the row's largest, ``A``
        the affine scores and ``J`` the responsibilities over ``c_i``;
        ``Q`` and ``R`` are free. With ``a = 1 - sigma(s)``: the gradient
        weights ``a (r - rho g)``, ``d = |a (r - rho g)| sigma + rho g a^2``
        and ``v = sqrt(rho) g a``.
        """
        factor, root = self._rows[4][: S.shape[1]], self._rows[6][: S.shape[1]]
        np.divide(1.0, gate_sum, out=factor)
        if rho is not None:
            np.sqrt(rho, out=root)
            factor *= root
        S *= factor  # sqrt(rho) g
        np.exp(A, out=A)
        A += 1.0
        np.reciprocal(A, out=A)  # a = 1 - sigma(s)
        S *= A  # v
        rho_g_a = S if rho is None else np.multiply(S, root, out=R)
        np.multiply(J, c_row.T, out=Q)  # r
        Q *= A
        Q -= rho_g_a  # a (r - rho g)
        gradient = np.matmul(Q, zt.T)
        np.abs(Q, out=Q)
        np.subtract(1.0, A, out=J)  # sigma(s)
        Q *= J
        np.multiply(rho_g_a, A, out=J)
        Q += J  # d
        return gradient, *self._information(S, Q, zt)

    def _rescale(self, low, J, S, Q, c_row, top, joint_sum) -> None:
        """Recompute the joint of underflowing rows less its own maximum ``top``.

        ``S`` holds the shifted scores (not yet exponentiated) and ``Q`` the
        scaled squared residuals; ``top`` is zero on the other rows.
        """
        top[:] = 0.0
        log_joint = S[:, low] - Q[:, low] + np.log(c_row.T)
        row_top = np.max(log_joint, axis=0)
        row_top = np.where(np.isfinite(row_top), row_top, 0.0)
        top[low] = row_top
        J[:, low] = np.exp(log_joint - row_top) / c_row.T
        joint_sum[low] = np.matmul(c_row, J[:, low])[0]

    def _information(self, U: NDArray, rho_g: NDArray, zt: NDArray) -> tuple:
        """The information's sums over every ``stride``-th row of the chunk.

        Khatri-Rao form: the diagonal blocks ``sum rho g_i z z^T`` and
        ``V V^T`` with the columns of ``V`` the products ``u_i z``; pair
        form: the pair weights ``rho g_i (delta_ij - g_j)``.
        """
        step, k, p = self.stride, self.k, self.p_gate
        grams = self._gate_grams
        U, rho_g = U[:, ::step], rho_g[:, ::step]
        c = U.shape[1]
        if self.khatri_rao:
            diagonal = grams.sums(rho_g, step)
            V = self._info[: k * p * c].reshape(k, p, c)
            np.multiply(U[:, None, :], zt[None, :, ::step], out=V)
            V = V.reshape(k * p, c)
            return diagonal, np.matmul(V, V.T)
        weights = self._info[: len(self._pairs) * c].reshape(-1, c)
        for index, (i, j) in enumerate(self._pairs):
            np.multiply(U[i], U[j], out=weights[index])
            if i == j:
                np.subtract(rho_g[i], weights[index], out=weights[index])
            else:
                np.negative(weights[index], out=weights[index])
        return (grams.sums(weights, step),)

    # -- a sweep ---------------------------------------------------------------
    def __call__(
        self,
        gate_coef: NDArray[np.float64],
        expert_coef: NDArray[np.float64],
        var: NDArray[np.float64],
    ) -> SweepStatistics:
        """The sweep's sums at the given parameters.

        Parameters
        ----------
        gate_coef : ndarray of shape (m, p_gate)
            Every gate row, the reference row (zeros) first.
        expert_coef : ndarray of shape (m, p_expert)
        var : ndarray of shape (m,)

        Returns
        -------
        SweepStatistics
            float64 sums over all rows (the information scaled by the
            stride's share of rows, see the module docstring).
        """
        dt = self.dtype
        root_h = np.sqrt(0.5 / var)
        B = np.ascontiguousarray(gate_coef, dtype=dt)
        C = np.column_stack([-root_h[:, None] * expert_coef, root_h]).astype(dt)
        c_row = np.exp(-0.5 * (np.log(var) + _LOG_2PI))[None, :].astype(dt)
        totals: list[Any] | None = None
        info_rows = 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for start in range(0, self.n, self.chunk):
                stop = min(self.n, start + self.chunk)
                info_rows += len(range(start, stop, self.stride))
                parts = self._chunk(start, stop, B, C, c_row)
                if totals is None:
                    totals = [np.array(part, dtype=np.float64) for part in parts]
                else:
                    for total, part in zip(totals, parts, strict=True):
                        total += part
        assert totals is not None
        ll, weight, gram, score, ss, *gate_sums = totals
        # undo the division by c_i and the residuals' scaling by sqrt(h)
        c = c_row[0].astype(np.float64)
        weight *= c
        gram *= c[:, None]
        score *= (c / root_h)[:, None]
        ss *= c / (root_h * root_h)
        if self.sigmoid:
            gradient, *information = gate_sums
        else:
            resp_z, rho_g_z, *information = gate_sums
            gradient = c[1:, None] * resp_z - rho_g_z
        scale = self.n / info_rows
        flat = np.concatenate(
            [
                np.atleast_1d(ll),
                weight,
                gram.ravel(),
                score.ravel(),
                ss,
                gradient.ravel(),
                *(scale * part.ravel() for part in information),
            ]
        )
        return unflatten_statistics(flat, self.m, self.p_gate, self.p_expert, self.gate)
