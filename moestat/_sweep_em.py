"""EM steps from sweeps: the chunked path of :func:`moestat.fit.em`.

For a gate and an expert family that declare sweep kernels
(:class:`moestat.protocols.SweepGate`,
:class:`moestat.protocols.SweepExpertFamily`: a softmax gate, plain or
modified, or a dense normalized sigmoid gate, any ``bound``, without a
ridge penalty, and Gaussian experts), an EM
iteration needs only the weighted sums of :mod:`moestat.kernels.sweep`,
which one pass over the data adds up chunk by chunk
(:class:`moestat.kernels.sweep_numpy.NumpySweep`, in float64 or float32
within a chunk). The (n, m) arrays of the full path and the per-sample
products of design columns are then never stored: beside the data and their
designs, a fit holds one chunk's buffers (a few MiB) and a few hundred sums.
The starting values' sums take chunks of :data:`CHUNK_BYTES`.

An EM step here is the experts' closed-form M-step and one Fisher-scoring
step of the gate, both from the sums at the current point, followed by the
sweep at the new point, which gives its log-likelihood and the next sums.
The gate step is judged by that sweep (lazy halving): if the log-likelihood
fell beyond round-off, the step is halved and the sweep repeated, up to the
gate's ``max_halvings`` times, and then the old gate is kept, which cannot
lower the likelihood (the expert step maximises the expected complete-data
log-likelihood in the experts). A gate with a box ``|beta| <= bound`` (the
sigmoid gate's default) takes a projected Newton step
(:func:`moestat.kernels.sweep.gate_direction` with the box): the
coefficients at the box that the gradient pushes out of it stay, the
others take the Fisher step of their own block, and the step is clipped
into the box before it is judged. The M-step is
:func:`moestat.kernels.sweep.em_proposal`, which the torch engine
(:func:`moestat.torch.fused.em_chunked`) takes too, batched. The log-likelihood
therefore never decreases. The gate takes one Fisher step per iteration,
whatever its ``newton_steps``.

Starting values (:func:`start_from_labels`) take the M-steps of
:func:`moestat.fit.initial_params` from sums over chunks of their labels,
so no (n, m) array is made before the fit either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
from numpy.typing import NDArray

from moestat._math import hold_at_box, pair_products, solve_spd
from moestat.experts.gaussian import GaussianExpertParams
from moestat.gates._base import GateParams
from moestat.kernels.sweep import (
    EXPERTS,
    GATES,
    SweepStatistics,
    _symmetric_from_pairs,
    chunk_rows,
    em_proposal,
    free_rows,
    gaussian_expert_step,
    soft_label_statistics,
    unflatten_soft_label,
)
from moestat.kernels.sweep_numpy import NumpySweep
from moestat.model import Design, MixtureOfExperts, MoEParams
from moestat.protocols import SweepExpertFamily, SweepGate

#: Bytes of one chunk's intermediates: small enough to stay in a CPU's cache.
CHUNK_BYTES = 2**22

#: Relative round-off of a per-sample log-likelihood: a fall smaller than
#: this (times ``max(|l|, 1)``) is no fall.
ROUND_OFF = 1e-10


def sweep_round_off(dtype: Any) -> float:
    """Per-sample round-off of a sweep's log-likelihood in ``dtype`` arithmetic.

    :data:`ROUND_OFF` for float64; ``100 eps`` of a coarser dtype.

    Examples
    --------
    >>> sweep_round_off(np.float64), round(sweep_round_off(np.float32), 7)
    (1e-10, 1.19e-05)
    """
    return max(ROUND_OFF, 100 * float(np.finfo(dtype).eps))


def supports(model: MixtureOfExperts) -> bool:
    """Whether the chunked path fits ``model``: both pieces declare a sweep kernel.

    The gate declares one of :data:`moestat.kernels.sweep.GATES`
    (:class:`moestat.protocols.SweepGate`: a softmax gate, plain or
    modified, or a dense normalized sigmoid gate, any ``bound``, without a
    ridge penalty) and the expert family ``"gaussian"``
    (:class:`moestat.protocols.SweepExpertFamily`: Gaussian experts of any
    degree; per-expert, shared or known variance). A top-K sigmoid gate is
    not served (its selection is not a sum over rows).
    """
    gate, expert = _sweep_gate(model.gate), _sweep_experts(model.expert)
    return gate is not None and expert is not None


def _declared(piece: Any, protocol: type, kernels: tuple[str, ...]) -> str | None:
    """The sweep kernel ``piece`` declares (None without a declaration).

    Raises ``ValueError`` for a name no kernel has.
    """
    if not isinstance(piece, protocol):
        return None
    kernel = piece.sweep_kernel
    if kernel is not None and kernel not in kernels:
        raise ValueError(
            f"{type(piece).__name__} declares sweep_kernel={kernel!r}; the sweep "
            f"kernels are {kernels} (or None for none)."
        )
    return kernel


def _sweep_gate(gate: Any) -> str | None:
    """The sweep kernel ``gate`` declares (:data:`moestat.kernels.sweep.GATES`).

    None for a gate that declares none (:class:`moestat.protocols.SweepGate`).
    """
    return _declared(gate, SweepGate, GATES)


def _sweep_experts(expert: Any) -> str | None:
    """The sweep kernel ``expert`` declares (:data:`moestat.kernels.sweep.EXPERTS`).

    None for a family that declares none
    (:class:`moestat.protocols.SweepExpertFamily`).
    """
    return _declared(expert, SweepExpertFamily, EXPERTS)


def kernel_rows(kernel: str, m: int) -> NDArray[np.intp]:
    """The gate rows the kernel estimates: ``1..m-1`` (softmax) or all ``m``.

    Examples
    --------
    >>> kernel_rows("softmax", 3).tolist()
    [1, 2]
    >>> kernel_rows("normalized_sigmoid", 3).tolist()
    [0, 1, 2]
    """
    return np.arange(m - free_rows(m, kernel), m)


def gate_bound(gate: Any) -> float | None:
    """The box ``|beta| <= bound`` of a gate's coefficients (None: none)."""
    return getattr(gate, "bound", None)


def gate_halvings(gate: Any) -> int:
    """Halvings of a gate step before it is given up (the gate's, 12 by default)."""
    return int(getattr(gate, "max_halvings", 12))


def clip_to_box(coef: NDArray[np.float64], bound: float | None) -> NDArray[np.float64]:
    """``coef`` clipped into the box ``[-bound, bound]`` (unchanged without one)."""
    return coef if bound is None else np.clip(coef, -bound, bound)


def variance_kind(expert: Any) -> str:
    """``"per_expert"``, ``"shared"`` or ``"known"``: a Gaussian family's variances."""
    return getattr(expert, "variance_kind", "per_expert")


#: Numbers per fit, ``n (m + q_gate + q_expert)``, from which :func:`em`
#: sweeps the data in chunks by default (when the model allows it): the
#: (n, m) responsibilities and the per-sample products of design columns
#: (``q = p (p + 1) / 2`` per design) that the full path stores. About two
#: million: n = 131,072 with m = 4 and linear experts on two covariates
#: (``q = 6`` for both designs), or n = 489 with 64 covariates; there
#: the full path's arrays outgrow the caches and the sweep is the faster.
CHUNKED_ENTRIES = 2**21


def full_path_entries(design: Design, n_experts: int) -> int:
    """Numbers the full path stores: (n, m) arrays and products of design columns."""
    p_gate, p_expert = design.gate.shape[1], design.expert.shape[1]
    per_sample = n_experts + p_gate * (p_gate + 1) // 2 + p_expert * (p_expert + 1) // 2
    return design.n_samples * per_sample


def sweeps_by_default(model: MixtureOfExperts, design: Design, n_experts: int) -> bool:
    """Whether the data are large enough, and the model fit, for the chunked path."""
    large = full_path_entries(design, n_experts) >= CHUNKED_ENTRIES
    return large and supports(model)


def default_chunk_size(n: int, m: int, p_gate: int, p_expert: int) -> int:
    """Rows per chunk of a numpy sweep (:data:`CHUNK_BYTES` of intermediates)."""
    return chunk_rows(n, m, p_gate, p_expert, 8, CHUNK_BYTES)


@dataclass(frozen=True)
class SweepState:
    """One point of a chunked EM run: parameters and the sums of its sweep."""

    params: MoEParams
    stats: SweepStatistics
    log_likelihood: float

    @property
    def expert_weight(self) -> NDArray[np.float64]:
        """Total responsibility of each expert."""
        return np.asarray(self.stats.expert_weight)


class SweepSteps:
    """The E-step (a sweep) and the EM step of the chunked path for one data set.

    Parameters
    ----------
    model : MixtureOfExperts
        A model :func:`supports` accepts.
    design : Design
    y : ndarray of shape (n,)
    weight : ndarray of shape (n,) or None
        Sample weights.
    var_floor : float
    chunk_size : int or None
        Rows per chunk; None for
        :func:`moestat.kernels.sweep_numpy.numpy_chunk_rows`.
    dtype : numpy dtype, default=np.float64
        Arithmetic within a chunk (sums across chunks are float64).
    """

    def __init__(
        self,
        model: MixtureOfExperts,
        design: Design,
        y: NDArray[np.float64],
        weight: NDArray[np.float64] | None,
        var_floor: float,
        chunk_size: int | None,
        dtype: Any = np.float64,
    ) -> None:
        self.gate, self.expert = model.gate, model.expert
        Z, Phi = design.gate, design.expert
        # equal designs (an affine gate with linear experts): one array, so
        # a chunk forms its products of design columns once
        if Phi is not Z and Phi.shape == Z.shape and np.array_equal(Phi, Z):
            Phi = Z
        self.Z, self.Phi, self.y, self.weight = Z, Phi, y, weight
        self.var_floor = var_floor
        self.n = float(design.n_samples)
        m = model.params.n_experts
        self.variance = variance_kind(self.expert)
        kernel = _sweep_gate(self.gate)
        self.rows = kernel_rows(kernel, m)
        self.bound, self.max_halvings = gate_bound(self.gate), gate_halvings(self.gate)
        total = self.n if weight is None else float(weight.sum())
        self.n_total = total
        self.sweep = NumpySweep(
            Z, Phi, y, weight, m, chunk_size or None, dtype, gate=kernel
        )
        self.round_off = sweep_round_off(dtype)

    def e_step(self, params: MoEParams) -> SweepState:
        """The sweep at ``params``: its log-likelihood and sums."""
        stats = self.sweep(params.gate.coef, params.expert.coef, params.expert.var)
        return SweepState(params, stats, float(stats.log_likelihood))

    def em_step(self, state: SweepState) -> SweepState:
        """The M-step from ``state``'s sums, then the sweep at the new point.

        The gate step is halved while the log-likelihood falls, and given
        up after the gate's ``max_halvings`` (module docstring).
        """
        expert = state.params.expert
        old = state.params.gate.coef
        coef, var, free = em_proposal(
            state.stats,
            expert.coef,
            expert.var,
            old[self.rows].ravel(),
            self.var_floor,
            self.n,
            self.variance,
            self.bound,
        )
        expert_params = GaussianExpertParams(coef, var)
        direction = np.zeros_like(old)
        direction[self.rows] = free.reshape(len(self.rows), old.shape[1])
        moved = bool(np.any(direction != 0))
        step, halvings = 1.0, 0
        while True:
            gate_coef = clip_to_box(old + step * direction, self.bound) if step else old
            candidate = self.e_step(MoEParams(GateParams(gate_coef), expert_params))
            if not (moved and step) or not self._fell(state, candidate):
                return candidate
            if halvings < self.max_halvings:
                step, halvings = 0.5 * step, halvings + 1
            else:
                step = 0.0

    def _fell(self, before: SweepState, after: SweepState) -> bool:
        """Whether the per-sample log-likelihood fell beyond round-off."""
        prev = before.log_likelihood / self.n_total
        curr = after.log_likelihood / self.n_total
        scale = max(abs(prev), abs(curr), 1.0)
        return not curr >= prev - self.round_off * scale


def sweep_steps(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    weight: NDArray[np.float64] | None,
    var_floor: float,
    chunk_size: int | None,
    dtype: Any = np.float64,
) -> tuple[Any, Any]:
    """``(e_step, em_step)`` of the chunked path (see :class:`SweepSteps`)."""
    steps = SweepSteps(model, design, y, weight, var_floor, chunk_size, dtype)
    return steps.e_step, steps.em_step


# -- starting values from labels, chunk by chunk -------------------------------
def _soft_labels(labels: NDArray[np.intp], m: int, smoothing: float) -> NDArray:
    """(m, c) labels smoothed by ``smoothing``, experts first."""
    resp = np.full((m, labels.size), smoothing / m)
    resp[labels, np.arange(labels.size)] += 1.0 - smoothing
    return resp


def start_from_labels(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    labels: NDArray[np.intp],
    n_experts: int,
    smoothing: float,
    var_floor: float,
    chunk_size: int | None = None,
    sample_weight: NDArray[np.float64] | None = None,
) -> MoEParams:
    """The start of :func:`moestat.fit.initial_params` from hard labels, in chunks.

    The labels smoothed by ``smoothing`` (the share spread over all
    experts), fitted by :func:`start_from_soft_labels`: no (n, m) labels
    are stored.

    Parameters
    ----------
    model : MixtureOfExperts
        A model :func:`supports` accepts.
    design : Design
    y : ndarray of shape (n,)
    labels : ndarray of int, shape (n,)
        Each sample's expert.
    n_experts : int
    smoothing : float
        Label smoothing (the share spread over all experts).
    var_floor : float
    chunk_size : int, optional
        Rows per chunk; default :func:`default_chunk_size`.
    sample_weight : ndarray of shape (n,), optional
        Each sample's weight; its soft labels are multiplied by it.

    Returns
    -------
    MoEParams
    """

    def soft_labels(rows: slice) -> NDArray[np.float64]:
        labels_here = _soft_labels(labels[rows], n_experts, smoothing)
        if sample_weight is None:
            return labels_here
        return labels_here * sample_weight[rows]

    return start_from_soft_labels(
        model, design, y, soft_labels, n_experts, var_floor, chunk_size
    )


def start_from_soft_labels(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    soft_labels: Callable[[slice], NDArray[np.float64]],
    n_experts: int,
    var_floor: float,
    chunk_size: int | None = None,
) -> MoEParams:
    """One M-step of each piece on soft labels made chunk by chunk.

    The experts' weighted least squares and the gate's fit to the labels
    (at most ten Fisher-scoring steps from zero, each halved until the
    gate's objective does not fall, stopping once it gains less than
    ``1e-6 (|Q| + n)``), as the full path's M-steps (the expert family's
    ``m_step`` and the gate's ``init_params``) take them, from sums over
    chunks: the labels of one chunk of rows at a time are made by
    ``soft_labels``, and no (n, m) labels are stored.

    Parameters
    ----------
    model : MixtureOfExperts
        A model :func:`supports` accepts.
    design : Design
    y : ndarray of shape (n,)
    soft_labels : callable
        ``soft_labels(rows)``: the (m, c) labels of the rows of the slice
        ``rows``, experts first, each column summing to one. Called once
        per chunk for the experts and once per chunk for each evaluation
        of the gate's objective.
    n_experts : int
    var_floor : float
    chunk_size : int, optional
        Rows per chunk; default :func:`default_chunk_size`.

    Returns
    -------
    MoEParams
    """
    gate, expert = model.gate, model.expert
    Z, Phi = design.gate, design.expert
    n, m, p = design.n_samples, n_experts, Phi.shape[1]
    chunk = chunk_size or default_chunk_size(n, m, Z.shape[1], p)
    xp = array_api_compat.array_namespace(Phi)
    # the experts: weighted sums about zero coefficients, then the closed form
    q = p * (p + 1) // 2
    sums = np.zeros(m + m * q + m * p + m)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        resp = soft_labels(rows)
        y_part = y[rows]
        sums += np.concatenate(
            [
                resp.sum(axis=1),
                (resp @ pair_products(Phi[rows])).ravel(),
                ((resp * y_part) @ Phi[rows]).ravel(),
                resp @ (y_part * y_part),
            ]
        )
    weight, gram, score, ss = np.split(sums, np.cumsum([m, m * q, m * p]))
    stats = SweepStatistics(
        log_likelihood=0.0,
        expert_weight=weight,
        expert_gram=_symmetric_from_pairs(xp, gram.reshape(m, q), p),
        expert_score=score.reshape(m, p),
        expert_ss=ss,
        gate_gradient=None,
        gate_information=None,
    )
    kind = variance_kind(expert)
    known = expert.variance if kind == "known" else 1.0
    coef, var = gaussian_expert_step(
        stats, np.zeros((m, p)), np.full(m, known), var_floor, float(n), kind
    )
    return MoEParams(
        _gate_from_labels(gate, Z, soft_labels, m, chunk),
        GaussianExpertParams(coef, var),
    )


def _gate_from_labels(gate, Z, soft_labels, m, chunk, max_steps=10, tol=1e-6):
    """The gate's fit to soft labels from zero (``init_params``), in chunks."""
    n = Z.shape[0]
    kind = _sweep_gate(gate)
    rows, bound = kernel_rows(kind, m), gate_bound(gate)

    def sums(coef):
        total = 0.0
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            labels = soft_labels(part)
            total = total + soft_label_statistics(Z[part], labels, coef, kind)
        return unflatten_soft_label(total, m, Z.shape[1], kind)

    coef = np.zeros((m, Z.shape[1]))
    objective, grad, information = sums(coef)
    for _ in range(max_steps):
        # as the gate's own step: coefficients at its box are held
        grad, information = hold_at_box(grad, information, coef[rows].ravel(), bound)
        step_free = solve_spd(information, grad, ridge=1e-9)
        if not float(grad @ step_free) > 1e-14 * n:
            break
        direction = np.zeros_like(coef)
        direction[rows] = step_free.reshape(len(rows), -1)
        step = 1.0
        for _ in range(gate_halvings(gate)):
            candidate = clip_to_box(coef + step * direction, bound)
            new_objective, new_grad, new_information = sums(candidate)
            if new_objective >= objective:
                break
            step *= 0.5
        else:
            break
        gain = float(new_objective - objective)
        coef, objective = candidate, new_objective
        grad, information = new_grad, new_information
        if gain <= tol * (abs(objective) + n):
            break
    return GateParams(coef)
