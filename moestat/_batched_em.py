"""EM on a batch of problems, written once for numpy and torch (array API).

``B`` problems (restarts on one data set, or replications on several) are
fitted together: arrays carry a leading batch axis, data sets of different
sizes are padded with rows of weight zero, and every step is one call on the
whole batch. The gate and the expert family take part through their batched
kernels (:class:`moestat.protocols.BatchedGate`,
:class:`moestat.protocols.BatchedExpertFamily`, wrapped by
:mod:`moestat._batched`), so the loop below runs unchanged on numpy arrays
(:func:`moestat.fit.batch_em_engine`) and on torch tensors
(:mod:`moestat.torch.fit`).

EM steps are plain (no SQUAREM acceleration); the stopping rule is
:func:`moestat.fit.aitken_converged` per problem. A problem that has
converged leaves the batch and keeps its own iteration count, convergence
flag and parameters while the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
from numpy.typing import NDArray

from moestat._math import array_namespace
from moestat._stopping import aitken_converged
from moestat.kernels.gates import log_sum_exp
from moestat.model import Design

__all__ = ["BatchedData", "BatchedFit", "e_step", "decreased", "em", "stack_arrays"]


@dataclass(frozen=True)
class BatchedData:
    """B data sets, padded to a common size.

    Parameters
    ----------
    gate : array of shape (B, n, p_gate)
        The gate designs.
    expert : array of shape (B, n, p_expert)
        The experts' bases.
    y : array of shape (B, n)
        Responses.
    weight : array of shape (B, n)
        Sample weights; 0 on padding rows.
    var_floor : array of shape (B,)
        Each data set's variance floor.
    """

    gate: Any
    expert: Any
    y: Any
    weight: Any
    var_floor: Any

    @property
    def n_samples(self) -> Any:
        """Total weight of each data set, (B,)."""
        xp = array_namespace(self.weight)
        return xp.sum(self.weight, axis=1)

    def take(self, keep: Any) -> BatchedData:
        """The data sets ``keep`` (a boolean mask) selects, padding cut off."""
        xp = array_namespace(self.weight)
        weight = self.weight[keep]
        counted = xp.nonzero(xp.any(weight > 0, axis=0))[0]
        length = int(xp.max(counted)) + 1 if counted.shape[0] else 1
        return BatchedData(
            self.gate[keep][:, :length],
            self.expert[keep][:, :length],
            self.y[keep][:, :length],
            weight[:, :length],
            self.var_floor[keep],
        )


@dataclass(frozen=True)
class BatchedFit:
    """The outcome of a batched fit, one entry per problem.

    Parameters
    ----------
    theta_gate, theta_expert : array of shape (B, P)
        Packed parameters (the pieces' ``pack`` layout).
    log_likelihood : array of shape (B,)
        Weighted log-likelihood at the returned parameters.
    trace : array of shape (T + 1, B)
        Log-likelihood after each iteration (NaN once a problem stopped).
    n_iter : array of shape (B,)
        Iterations taken.
    converged, monotone : array of shape (B,), bool
        As for :class:`moestat.fit.FitResult`.
    expert_weight : array of shape (B, m)
        Total responsibility of each expert at the end.
    """

    theta_gate: Any
    theta_expert: Any
    log_likelihood: Any
    trace: Any
    n_iter: Any
    converged: Any
    monotone: Any
    expert_weight: Any


def e_step(joint: Any, weight: Any) -> tuple[Any, Any]:
    """Weighted responsibilities (B, n, m) and log-likelihoods (B,).

    Parameters
    ----------
    joint : array of shape (B, n, m)
        ``log g + log f``.
    weight : array of shape (B, n)
        Sample weights (0 on padding rows).

    Returns
    -------
    resp : array of shape (B, n, m)
        ``weight_t * r_ti``; zero on rows of weight zero or of no density.
    log_likelihood : array of shape (B,)
        ``sum_t weight_t log sum_i exp(joint_ti)``, summed in float64.
    """
    xp = array_namespace(joint, weight)
    per_sample = log_sum_exp(joint)[..., 0]
    finite = xp.isfinite(per_sample)
    safe = xp.where(finite, per_sample, xp.zeros_like(per_sample))
    resp = xp.exp(joint - safe[..., None]) * weight[..., None]
    resp = xp.where(xp.isnan(resp), xp.zeros_like(resp), resp)
    # a row of no density counts -inf (log sum exp of -inf entries)
    per_sample = xp.where(
        xp.isnan(per_sample), xp.full_like(per_sample, -float("inf")), per_sample
    )
    counted = weight > 0
    total = xp.where(counted, weight * per_sample, xp.zeros_like(per_sample))
    # summed in float64: the stopping rule compares changes of 1e-6 and less
    return resp, xp.sum(xp.astype(total, xp.float64), axis=1)


def decreased(prev: Any, curr: Any, n: Any) -> Any:
    """Whether each log-likelihood fell by more than round-off, (B,) bool."""
    xp = array_namespace(prev, curr)
    prev, curr = prev / n, curr / n
    scale = xp.maximum(xp.maximum(xp.abs(prev), xp.abs(curr)), xp.ones_like(n))
    return curr < prev - 1e-10 * scale


def em(
    gate: Any,
    expert: Any,
    data: BatchedData,
    theta_gate: Any,
    theta_expert: Any,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
) -> BatchedFit:
    """Plain EM on a batch of problems from packed starting parameters.

    Parameters
    ----------
    gate : batched gate
        ``log_weights(theta, Z)`` and ``m_step(theta, Z, weight, resp,
        log_g, log_f) -> (theta, log_g)`` on (B, ...) arrays
        (:class:`moestat._batched.GateOnBatches`).
    expert : batched expert family
        ``log_density(theta, Phi, y, var_floor)`` and ``m_step(theta, Phi,
        y, resp, var_floor)`` (:class:`moestat._batched.FamilyOnBatches`).
    data : BatchedData
    theta_gate, theta_expert : array of shape (B, P)
        Starting parameters in the pieces' packed layout.
    tol : float, default=1e-6
        Largest gain per sample still to come (the stopping rule).
    max_iter : int, default=1000

    Returns
    -------
    BatchedFit
        Arrays of the data's namespace and device.
    """
    xp = array_namespace(data.y)
    n = xp.astype(data.n_samples, xp.float64)
    log_g = gate.log_weights(theta_gate, data.gate)
    log_f = expert.log_density(theta_expert, data.expert, data.y, data.var_floor)
    resp, ll = e_step(log_g + log_f, data.weight)
    batch = ll.shape[0]
    device = array_api_compat.device(ll)
    history = [ll]
    # full-size results; the loop works on the problems still running only
    # (finished ones leave the batch, so they cost nothing more)
    final_gate, final_expert = (
        xp.asarray(theta_gate, copy=True),
        xp.asarray(theta_expert, copy=True),
    )
    final_ll, final_weight = xp.asarray(ll, copy=True), xp.sum(resp, axis=1)
    converged = xp.zeros(batch, dtype=xp.bool, device=device)
    fell = xp.zeros(batch, dtype=xp.bool, device=device)
    n_iter = xp.zeros(batch, dtype=xp.int64, device=device)
    rows = xp.arange(batch, device=device)
    ll_before = xp.full_like(ll, -float("inf"))
    for iteration in range(1, max_iter + 1):
        theta_expert = expert.m_step(
            theta_expert, data.expert, data.y, resp, data.var_floor
        )
        log_f = expert.log_density(theta_expert, data.expert, data.y, data.var_floor)
        theta_gate, log_g = gate.m_step(
            theta_gate, data.gate, data.weight, resp, log_g, log_f
        )
        resp, ll_new = e_step(log_g + log_f, data.weight)
        fell[rows] = fell[rows] | decreased(ll, ll_new, n)
        done = aitken_converged(ll_before, ll, ll_new, n, tol)
        ll_before, ll = ll, ll_new
        n_iter[rows] = iteration
        record = xp.full_like(final_ll, float("nan"))
        record[rows] = ll
        history.append(record)
        finished = done | (iteration == max_iter)
        if bool(xp.any(finished)):
            index = rows[finished]
            final_gate[index] = theta_gate[finished]
            final_expert[index] = theta_expert[finished]
            final_ll[index] = ll[finished]
            final_weight[index] = xp.sum(resp[finished], axis=1)
            converged[rows[done]] = True
            if bool(xp.all(finished)):
                break
            keep = ~finished
            rows = rows[keep]
            data = data.take(keep)
            length = data.y.shape[1]
            theta_gate, theta_expert = theta_gate[keep], theta_expert[keep]
            resp, log_g, log_f = (
                resp[keep][:, :length],
                log_g[keep][:, :length],
                log_f[keep][:, :length],
            )
            ll, ll_before, n = ll[keep], ll_before[keep], n[keep]
    return BatchedFit(
        theta_gate=final_gate,
        theta_expert=final_expert,
        log_likelihood=final_ll,
        trace=xp.stack(history),
        n_iter=n_iter,
        converged=converged,
        monotone=~fell,
        expert_weight=final_weight,
    )


def stack_arrays(
    designs: Sequence[Design],
    ys: Sequence[NDArray[np.float64]],
    *,
    var_floor: float | Sequence[float] = 0.0,
    sample_weight: Sequence[NDArray[np.float64] | None] | None = None,
) -> BatchedData:
    """Stack designs and responses into one padded numpy batch.

    Parameters
    ----------
    designs : sequence of Design
        ``model.design(X_b)`` for each data set (the same columns for all).
    ys : sequence of ndarray of shape (n_b,)
    var_floor : float or sequence of float, default=0.0
    sample_weight : sequence of (ndarray or None), optional

    Returns
    -------
    BatchedData
        numpy arrays; rows past a data set's size have weight zero.
    """
    if len(designs) != len(ys) or not designs:
        raise ValueError(
            f"Need one response per design and at least one data set; got "
            f"{len(designs)} designs and {len(ys)} responses."
        )
    n_max = max(len(y) for y in ys)
    batch = len(designs)
    floors = np.array(np.broadcast_to(np.asarray(var_floor, dtype=float), (batch,)))
    gate = np.zeros((batch, n_max, designs[0].gate.shape[1]))
    expert = np.zeros((batch, n_max, designs[0].expert.shape[1]))
    y_all = np.zeros((batch, n_max))
    weight = np.zeros((batch, n_max))
    for b, (design, y) in enumerate(zip(designs, ys, strict=True)):
        n = len(y)
        gate[b, :n], expert[b, :n], y_all[b, :n] = design.gate, design.expert, y
        w = None if sample_weight is None else sample_weight[b]
        weight[b, :n] = 1.0 if w is None else w
    return BatchedData(gate, expert, y_all, weight, floors)
