"""Fitting engines: EM, direct MLE, initialisation and restarts.

Both engines are generic over the pieces: they call only the gate's and the
expert family's hooks (log density, M-step, gradient, pack/unpack) and know
nothing about Gaussians or softmax.

Stopping rule (shared by EM, MLE and the torch engines)
-------------------------------------------------------
With ``L_t`` the total log-likelihood after iteration ``t`` and ``n`` the
number of samples, Aitken's acceleration (Böhning et al. 1994; McNicholas
et al. 2010) estimates the limit of a linearly converging sequence from
its last three values: with increments ``d1 = L_{t-1} - L_{t-2}`` and
``d2 = L_t - L_{t-1}`` and rate ``a = d2 / d1``, the gain still to come is
about ``d2 / (1 - a)``. A fit has converged when::

    0 <= d2 < d1   and   d2 / (1 - a) <= tol * n,

that is, when the increments shrink geometrically and the gain they
predict, per sample, is at most ``tol`` -- or when ``L_t`` no longer moves
beyond round-off (an exact fixed point). The rule is on log-likelihood
*differences*, so it does not depend on the units of ``x`` or ``y``; and on
a plateau, where the increments are small but do not shrink (``a`` near or
above one), the predicted gain is large and the fit goes on. Reaching
``max_iter`` is never convergence.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import DTypeLike, NDArray
from scipy.optimize import minimize
from sklearn.cluster import KMeans

from moestat._batched import batched_expert, batched_gate
from moestat._batched_em import BatchedFit, stack_arrays
from moestat._batched_em import em as batched_em
from moestat._stopping import ROUNDOFF, aitken_converged
from moestat._sweep_em import (
    default_chunk_size,
    full_path_entries,
    start_from_labels,
    sweep_round_off,
    sweep_steps,
    sweeps_by_default,
)
from moestat._sweep_em import supports as supports_sweeps
from moestat.boundary import (
    boundary_message,
    column_spreads,
    diverging_parameters,
    is_penalised,
    walking_the_ridge,
)
from moestat.exceptions import DegenerateFitWarning
from moestat.model import (
    Design,
    MixtureOfExperts,
    MoEParams,
    log_joint,
    responsibilities_from_log_joint,
)

__all__ = [
    "ConvergenceMonitor",
    "FitResult",
    "em",
    "mle",
    "initial_params",
    "log_likelihood_and_gradient",
    "fit_restarts",
    "BatchEngine",
    "batch_em_engine",
    "batched_em_fits",
    "batched_fit_results",
    "runs_batched",
    "restart_starts",
    "best_restart",
    "is_degenerate",
    "aitken_converged",
    "penalty",
    "polish_fit",
    "keep_polished",
]


#: ``FitResult.stop_reason`` of a fit whose coefficients walk to infinity.
DIVERGE = "the coefficients diverge (no interior maximum)"


@dataclass
class ConvergenceMonitor:
    """Record a log-likelihood history and apply the stopping rule.

    Parameters
    ----------
    tol : float
        Tolerance of the stopping rule (module docstring).
    n_samples : int
        Number of samples: the rule's threshold is ``tol * n_samples``.
    decrease_tol : float, default=1e-10
        A decrease larger than ``decrease_tol * max(|l|, 1)`` (per sample) is
        flagged: exact EM never decreases the likelihood.
    history : list of float, optional
        Total log-likelihoods reported so far (empty at the start).
    decreased : bool, default=False
        Set once a decrease beyond ``decrease_tol`` has been reported.
    roundoff : float, default=ROUNDOFF
        Relative round-off of a total log-likelihood (:func:`aitken_converged`).
    """

    tol: float
    n_samples: int
    decrease_tol: float = 1e-10
    history: list[float] = field(default_factory=list)
    decreased: bool = False
    roundoff: float = ROUNDOFF

    def report(self, log_likelihood: float) -> bool:
        """Record a total log-likelihood and apply the stopping rule.

        Parameters
        ----------
        log_likelihood : float
            Total log-likelihood after the latest iteration.

        Returns
        -------
        bool
            True when the rule (:func:`aitken_converged`) fires on the last
            three values (on the last two, only at an exact fixed point;
            never for the first value).
        """
        self.history.append(float(log_likelihood))
        if len(self.history) < 2:
            return False
        prev, curr = (v / self.n_samples for v in self.history[-2:])
        if curr < prev - self.decrease_tol * max(abs(prev), abs(curr), 1.0):
            self.decreased = True
        l0 = self.history[-3] if len(self.history) > 2 else -np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            return bool(
                aitken_converged(
                    l0,
                    self.history[-2],
                    self.history[-1],
                    self.n_samples,
                    self.tol,
                    self.roundoff,
                )
            )


@dataclass(frozen=True)
class FitResult:
    """Outcome of one fit from one start.

    Parameters
    ----------
    model : MixtureOfExperts
        The model with the fitted parameters.
    log_likelihood : float
        Total log-likelihood at ``model.params``.
    trace : ndarray
        Total log-likelihood after each iteration (the start first).
    n_iter : int
        Iterations taken.
    converged : bool
        Whether the stopping rule fired (in every engine that ran) before
        any cap was reached.
    monotone : bool
        False if the likelihood decreased beyond round-off (EM only).
    expert_weight : ndarray of shape (n_experts,)
        Total responsibility of each expert at the end (its effective size).
    n_iter_polish : int, default=0
        L-BFGS iterations of the polish (:func:`polish_fit`), counted apart
        from ``n_iter``.
    stop_reason : str, default=""
        Why the fit stopped without converging (a cap reached, a failed line
        search, a boundary); empty when the stopping rule fired.
    boundary : tuple of str, default=()
        Parameters found walking off to infinity, each with its cause
        (:mod:`moestat.boundary`); a fit with any is degenerate.
    capped : bool, default=False
        Whether the engine stopped at its ``max_iter``.
    """

    model: MixtureOfExperts
    log_likelihood: float
    trace: NDArray[np.float64]
    n_iter: int
    converged: bool
    monotone: bool
    expert_weight: NDArray[np.float64]
    n_iter_polish: int = 0
    stop_reason: str = ""
    boundary: tuple[str, ...] = ()
    capped: bool = False


def _evaluate(model, params, design, y):
    values = log_joint(model.gate, model.expert, params, design, y)
    return responsibilities_from_log_joint(values)


@dataclass(frozen=True)
class _EMState:
    """One point of an EM run: parameters and what the E-step made of them."""

    params: MoEParams
    log_g: NDArray[np.float64]
    resp: NDArray[np.float64]
    log_likelihood: float

    @property
    def expert_weight(self) -> NDArray[np.float64]:
        """Total responsibility of each expert."""
        return self.resp.sum(axis=0)


def em(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    var_floor: float = 0.0,
    sample_weight: NDArray[np.float64] | None = None,
    accelerate: bool = True,
    stop_on_ridge: bool = True,
    chunk_size: int | None = None,
    sweep_dtype: DTypeLike = np.float64,
) -> FitResult:
    """Fit by the EM algorithm from ``model.params``.

    Parameters
    ----------
    model : MixtureOfExperts
        The model with its starting parameters.
    design : Design
        The designs built by ``model.design(X)``.
    y : ndarray of shape (n,)
        Responses.
    tol : float, default=1e-6
        Stopping tolerance (module docstring).
    max_iter : int, default=1000
        Maximum number of E-steps (EM iterations; with ``accelerate`` the
        extrapolated points count too).
    var_floor : float, default=0.0
        Lower bound on expert variances.
    sample_weight : ndarray of shape (n,), optional
        Non-negative weights: EM then maximises ``sum_t w_t log p(y_t|x_t)``
        (the responsibilities are multiplied by ``w_t`` before the
        M-steps). With the weights of a quadrature rule this is population
        EM on a pseudo-sample (theory.md §5.2.3). A top-K gate's ECME step
        judges its candidates on the unweighted likelihood, so use weights
        with dense gates. Scale them to average about one: the pieces'
        guards (an expert with no responsibility) are relative to ``n``.
    accelerate : bool, default=True
        SQUAREM (Varadhan and Roland 2008) with its monotone safeguard:
        every two EM steps, an extrapolated point along the squared
        iteration is tried and kept only if its likelihood is not below the
        second step's. The likelihood stays non-decreasing; slow EM (a
        nearly singular information, a plateau) needs several times fewer
        iterations. False gives plain EM.
    stop_on_ridge : bool, default=True
        Stop once the coefficients walk out a ridge to infinity
        (:func:`moestat.boundary.walking_the_ridge`, checked every few
        iterations). False walks on to the stopping rule or ``max_iter``
        (as the batched torch engine does); the boundary is reported
        either way.
    chunk_size : int or None, default=None
        The path: ``None`` sweeps the data in chunks (the chunked path,
        below) when the model allows it and the full path would store at
        least :data:`CHUNKED_ENTRIES` numbers (``n (m + q_gate +
        q_expert)``, ``q = p (p + 1) / 2`` the products of a design's
        columns), and keeps the (n, m) arrays whole otherwise; a positive
        number takes the chunked path with that many
        rows per chunk (``ValueError`` if its pieces declare no sweep
        kernel);
        ``0`` takes the full path.
    sweep_dtype : {np.float64, np.float32}, default=np.float64
        Arithmetic within a chunk of the chunked path (the sums across
        chunks are float64 either way; the full path ignores it). float32
        moves half the bytes and takes the exponentials twice as wide:
        measured 1.3 times faster per iteration at m = 4 and 2 times at
        m = 32 (n = 10^6), with the log-likelihood at the maximum within
        about ``2e-7`` per sample of float64's (the residuals
        ``y - a^T phi`` lose ``log2(|y| / sigma)`` of float32's 24 bits;
        centre a response with a large mean). Its monotonicity check
        allows falls of ``100 eps`` per sample, and its stopping rule
        takes changes below ``2 eps (|L| + n)`` as a fixed point.

    Returns
    -------
    FitResult
        With weights, ``log_likelihood`` and ``trace`` are weighted sums and
        ``expert_weight`` the weighted responsibilities.

    Raises
    ------
    ValueError
        For bad ``sample_weight`` or ``chunk_size``.

    Notes
    -----
    E-step: responsibilities by log-sum-exp of ``log g + log f``. Then two
    conditional maximisation steps: the expert family's weighted M-step,
    and the gate's damped Fisher-scoring step, accepted only if it does not
    decrease ``sum r log g`` (generalised EM) or, for a top-K gate, the
    observed log-likelihood with the new experts held fixed (an ECME step,
    Liu and Rubin 1994; the gate receives the new experts' log densities
    and chooses). The log-likelihood is therefore non-decreasing for every
    gate; the monitor flags any decrease beyond round-off. With
    ``accelerate`` the stopping rule is applied to the likelihood at the
    start of each SQUAREM cycle (three E-steps), whose increments shrink
    geometrically as plain EM's do.

    The chunked path serves the pieces that declare a sweep kernel
    (:class:`moestat.protocols.SweepGate`,
    :class:`moestat.protocols.SweepExpertFamily`): a softmax gate (plain or
    modified) or a dense normalized sigmoid gate (``top_k=None``, any
    ``bound``), with ``alpha=0``, and Gaussian experts, or pieces of one's
    own that declare theirs. Each iteration is one pass over the data in
    chunks of a few thousand rows (:mod:`moestat.kernels.sweep_numpy`, the
    numpy form of :mod:`moestat.kernels.sweep`, which the torch engine
    :func:`moestat.torch.fused.em_chunked` runs): the chunk's
    log-likelihood and its share of the weighted sums both M-steps need
    (from 2^17 rows on, with many experts, the gate information over every
    few rows: another path, the same maximum). Nothing of size ``n * m``
    or ``n * p^2`` is stored, so memory beyond the data and designs stays
    a few megabytes. The gate
    takes one Fisher step per iteration, judged by the next sweep and
    halved while the log-likelihood falls (:mod:`moestat._sweep_em`; a
    sigmoid gate's step is first clipped into its box), so
    the likelihood is still non-decreasing; SQUAREM applies as on the
    full path. Both paths climb to the same maximum, along slightly
    different paths where the full path takes more Newton steps or halves
    a gate step.
    """
    weight = _check_sample_weight(sample_weight, design.n_samples)
    n = design.n_samples if weight is None else float(weight.sum())
    sweep_dtype = _check_sweep_dtype(sweep_dtype)
    penalised = _is_penalised(model)
    if _chunked(model, design, chunk_size):
        monitor = ConvergenceMonitor(
            tol,
            n,
            decrease_tol=sweep_round_off(sweep_dtype),
            roundoff=max(ROUNDOFF, 2 * float(np.finfo(sweep_dtype).eps)),
        )
        e_step, em_step = sweep_steps(
            model, design, y, weight, var_floor, chunk_size, sweep_dtype
        )
    else:
        monitor = ConvergenceMonitor(tol, n)
        e_step, em_step = _full_steps(model, design, y, weight, var_floor, penalised)

    def on_ridge(previous, current):
        if penalised or not stop_on_ridge:
            return False
        return walking_the_ridge(model, previous, current, design)

    state = e_step(model.params)
    monitor.report(state.log_likelihood)
    run = _squarem if accelerate else _plain_em
    state, n_iter, converged = run(
        state, em_step, e_step, monitor, model, design, var_floor, max_iter, on_ridge
    )
    fitted = model.with_params(state.params)
    boundary = _boundary(fitted, design)
    if not np.isfinite(state.log_likelihood):
        stop_reason = _not_finite(state.log_likelihood, n_iter, var_floor)
    elif boundary:
        stop_reason = DIVERGE
    else:
        stop_reason = "" if converged else f"EM reached max_iter={max_iter}"
    return FitResult(
        model=fitted,
        log_likelihood=state.log_likelihood,
        trace=np.asarray(monitor.history),
        n_iter=n_iter,
        converged=converged and not boundary,
        monotone=not monitor.decreased,
        expert_weight=state.expert_weight,
        stop_reason=stop_reason,
        boundary=boundary,
        capped=not converged and n_iter >= max_iter,
    )


#: Short runs go in one numpy batch while the batch's (B, n, ...) arrays
#: hold fewer numbers than this (``B n (m + q_gate + q_expert)``). There the
#: cost of a call outweighs its arithmetic and one call for all starts pays
#: (benchmarks/bench_batched.py: 5 starts x 10 iterations, d = 2, 2.4-3.2x
#: faster at n = 200, 1.2-1.9x at n = 1000, 0.6-0.9x at n = 5000).
BATCHED_ENTRIES = 2**17


def _check_sweep_dtype(sweep_dtype: DTypeLike) -> np.dtype:
    """The chunked path's arithmetic as a dtype: float64 or float32."""
    try:
        dtype = np.dtype(sweep_dtype)
    except TypeError:
        dtype = np.dtype(object)
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise ValueError(
            f"sweep_dtype must be np.float64 or np.float32; got {sweep_dtype!r}."
        )
    return dtype


def _chunked(model: MixtureOfExperts, design: Design, chunk_size: int | None) -> bool:
    """Whether :func:`em` takes the chunked path (see its ``chunk_size``)."""
    if chunk_size is None:
        return sweeps_by_default(model, design, model.params.n_experts)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be None or an int >= 0; got {chunk_size!r}.")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be None or an int >= 0; got {chunk_size}.")
    if chunk_size > 0 and not supports_sweeps(model):
        raise ValueError(
            "em(chunk_size > 0) sweeps a gate and experts that declare sweep "
            "kernels (moestat.protocols.SweepGate, SweepExpertFamily): a softmax "
            "gate (plain or modified) or a dense normalized sigmoid gate, alpha=0, "
            f"with Gaussian experts; got {model.gate.describe()} (sweep_kernel="
            f"{getattr(model.gate, 'sweep_kernel', None)!r}) and "
            f"{type(model.expert).__name__} (sweep_kernel="
            f"{getattr(model.expert, 'sweep_kernel', None)!r}). "
            "Use chunk_size=None or 0."
        )
    return chunk_size > 0


def _full_steps(model, design, y, weight, var_floor, penalised):
    """``(e_step, em_step)`` of the full path: (n, m) arrays kept whole."""
    gate, expert = model.gate, model.expert
    gate_features = gate.sufficient_features(design.gate)
    expert_features = expert.sufficient_features(design.expert, y)

    def e_step(params, log_g=None, log_f=None):
        if log_g is None:
            log_g = gate.log_weights(params.gate, design.gate)
        if log_f is None:
            log_f = expert.log_density(params.expert, design.expert, y)
        resp, log_lik = _weigh(*responsibilities_from_log_joint(log_g + log_f), weight)
        objective = float(log_lik.sum())
        if penalised:
            objective -= penalty(model, params, design)
        return _EMState(params, log_g, resp, objective)

    def em_step(state):
        expert_params = expert.m_step(
            design.expert,
            y,
            state.resp,
            var_floor,
            state.params.expert,
            expert_features,
        )
        log_f = expert.log_density(expert_params, design.expert, y)
        gate_params, log_g = gate.m_step(
            state.params.gate,
            design.gate,
            state.resp,
            state.log_g,
            gate_features,
            log_f,
        )
        return e_step(MoEParams(gate_params, expert_params), log_g, log_f)

    return e_step, em_step


def _is_penalised(model: MixtureOfExperts) -> bool:
    return is_penalised(model.gate) or is_penalised(model.expert)


def _boundary(model: MixtureOfExperts, design: Design) -> tuple[str, ...]:
    """One message per coefficient found walking to infinity (none: ``()``)."""
    findings = diverging_parameters(model, design)
    return (boundary_message(findings),) if findings else ()


#: EM iterations between two checks for coefficients walking out a ridge.
RIDGE_CHECK_EVERY = 5


def _not_finite(log_likelihood: float, n_iter: int, var_floor: float) -> str:
    """The stop reason of a fit whose log-likelihood stopped being finite."""
    cause = (
        " (with var_floor=0 an expert's variance can reach zero on a few "
        "points, its density there infinite; a floor, such as the estimators' "
        "reg_var sets, prevents it)"
        if var_floor <= 0
        else ""
    )
    return f"the log-likelihood became {log_likelihood} at iteration {n_iter}{cause}"


def _plain_em(
    state, em_step, e_step, monitor, model, design, var_floor, max_iter, on_ridge
):
    """Plain EM steps until the rule fires, a ridge, or ``max_iter``.

    The ridge (coefficients walking out to infinity) is checked every
    :data:`RIDGE_CHECK_EVERY` iterations.
    """
    for n_iter in range(1, max_iter + 1):
        previous, state = state, em_step(state)
        if monitor.report(state.log_likelihood):
            return state, n_iter, True
        if not np.isfinite(state.log_likelihood):
            return state, n_iter, False  # nothing more to climb (see em)
        if n_iter % RIDGE_CHECK_EVERY == 0 and on_ridge(previous.params, state.params):
            return state, n_iter, False
    return state, max_iter, False


def _squarem(
    state, em_step, e_step, monitor, model, design, var_floor, max_iter, on_ridge
):
    """SQUAREM cycles (scheme S3) with the monotone safeguard.

    Each cycle takes two EM steps ``theta_1 = F(theta_0)``,
    ``theta_2 = F(theta_1)``, then tries ``theta_0 - 2 a r + a^2 v`` with
    ``r = theta_1 - theta_0``, ``v = theta_2 - 2 theta_1 + theta_0`` and
    ``a = -|r| / |v|`` (at most -1, where the point is ``theta_2``) in the
    packed parameters, clipped into their bounds; the point is kept only
    if its likelihood is finite and not below ``theta_2``'s.

    The stopping rule judges EM's own rate, which a jump disturbs for a
    few steps: it is applied to the plain EM steps taken since the last
    jump, with the largest of their last ratios as the rate
    (:func:`_settled`). Once the three-point rule fires, jumps pause until
    that check has enough plain steps to confirm or refute it. A fit whose
    coefficients walk out a ridge (``on_ridge``) stops there.
    """
    shapes = _shapes(model, design)
    lower, upper = _pack_bounds(model, *shapes)
    n, tol = monitor.n_samples, monitor.tol
    plain = [state.log_likelihood]
    n_iter = 0
    while n_iter < max_iter:
        first = em_step(state)
        n_iter += 1
        monitor.report(first.log_likelihood)
        plain.append(first.log_likelihood)
        if n_iter >= max_iter or not np.isfinite(first.log_likelihood):
            return first, n_iter, _settled(plain, n, tol, monitor.roundoff)
        second = em_step(first)
        n_iter += 1
        monitor.report(second.log_likelihood)
        plain.append(second.log_likelihood)
        if not np.isfinite(second.log_likelihood):
            return second, n_iter, False
        if _settled(plain, n, tol, monitor.roundoff):
            return second, n_iter, True
        if on_ridge(first.params, second.params):
            return second, n_iter, False
        theta0, theta1, theta2 = (
            pack(model.with_params(s.params), var_floor) for s in (state, first, second)
        )
        state = second
        if (
            aitken_converged(*plain[-3:], n, tol, monitor.roundoff)
            or n_iter >= max_iter
        ):
            continue  # confirm with more plain steps before any jump
        r, v = theta1 - theta0, theta2 - 2.0 * theta1 + theta0
        r_norm, v_norm = np.linalg.norm(r), np.linalg.norm(v)
        if v_norm == 0 or r_norm == 0:
            continue
        alpha = min(-r_norm / v_norm, -1.0)
        if alpha == -1.0:
            continue
        jump = np.clip(theta0 - 2 * alpha * r + alpha**2 * v, lower, upper)
        candidate = _evaluate_packed(e_step, model, jump, shapes, var_floor)
        n_iter += 1
        if candidate is not None and candidate.log_likelihood >= second.log_likelihood:
            state = candidate
            monitor.report(state.log_likelihood)
            plain = [state.log_likelihood]
    return state, n_iter, False


def _settled(
    history: list[float],
    n: float,
    tol: float,
    roundoff: float = ROUNDOFF,
    window: int = 4,
) -> bool:
    """The stopping rule on a run of plain EM steps, with a cautious rate.

    An exact fixed point counts at once; otherwise the last ``window``
    increments must be non-negative and shrinking, and the gain they
    predict with the largest of their ratios as the rate,
    ``d / (1 - a)``, at most ``tol * n``.
    """
    if len(history) >= 2 and abs(history[-1] - history[-2]) <= roundoff * (
        abs(history[-1]) + n
    ):
        return True
    if len(history) < window + 1:
        return False
    steps = np.diff(history[-(window + 1) :])
    if np.any(steps[:-1] <= 0) or steps[-1] < 0:
        return False
    rate = float(np.max(steps[1:] / steps[:-1]))
    return rate < 1.0 and steps[-1] <= tol * n * (1.0 - rate)


def _evaluate_packed(e_step, model, theta, shapes, var_floor):
    """The E-step at packed parameters, or None where it is not finite."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        candidate = e_step(unpack(model, theta, shapes, var_floor))
    if not np.isfinite(candidate.log_likelihood):
        return None
    return candidate


#: Relative size of a log-likelihood change that a line search can still
#: resolve: below it, a failed line search is the maximum to round-off.
LINE_SEARCH_RESOLUTION = 1e-8


def _resolvable(log_likelihood: float, n: float, tol: float) -> float:
    """The smallest gain a failed line search can be said to have missed."""
    return max(tol * n, LINE_SEARCH_RESOLUTION * (abs(log_likelihood) + n))


def _pack_bounds(model, m, p_gate, p_expert):
    """Lower and upper bounds of the packed parameters of :func:`pack`."""
    lower, upper = (
        np.concatenate(pair)
        for pair in zip(
            model.gate.pack_bounds(m, p_gate),
            model.expert.pack_bounds(m, p_expert),
            strict=True,
        )
    )
    return lower, upper


def _check_sample_weight(
    sample_weight: NDArray[np.float64] | None, n: int
) -> NDArray[np.float64] | None:
    if sample_weight is None:
        return None
    weight = np.asarray(sample_weight, dtype=float)
    if weight.shape != (n,) or not np.all(np.isfinite(weight)) or weight.min() < 0:
        raise ValueError(
            f"sample_weight must be {n} finite non-negative numbers; got shape "
            f"{weight.shape}."
        )
    if not weight.sum() > 0:
        raise ValueError("sample_weight sums to zero; no sample would count.")
    return weight


def _weigh(resp, log_lik, weight):
    """Responsibilities and log-likelihoods times the sample weights."""
    if weight is None:
        return resp, log_lik
    return resp * weight[:, None], log_lik * weight


# -- direct maximum likelihood ---------------------------------------------
def _shapes(model: MixtureOfExperts, design: Design) -> tuple[int, int, int]:
    return model.params.n_experts, design.gate.shape[1], design.expert.shape[1]


def pack(model: MixtureOfExperts, var_floor: float) -> NDArray[np.float64]:
    """Flatten ``model.params`` into the free, unconstrained vector."""
    return np.concatenate(
        [
            model.gate.pack(model.params.gate),
            model.expert.pack(model.params.expert, var_floor),
        ]
    )


def unpack(
    model: MixtureOfExperts,
    theta: NDArray[np.float64],
    shapes: tuple[int, int, int],
    var_floor: float,
) -> MoEParams:
    """Inverse of :func:`pack` for a model with the given (m, p_gate, p_expert)."""
    m, p_gate, p_expert = shapes
    k = model.gate.n_free_parameters(m, p_gate)
    return MoEParams(
        model.gate.unpack(theta[:k], m, p_gate),
        model.expert.unpack(theta[k:], m, p_expert, var_floor),
    )


def parameter_scales(
    model: MixtureOfExperts,
    design: Design,
    sample_weight: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Typical size of each packed parameter: 1 / spread of its design column.

    A coefficient of a column with spread ``s`` gets scale ``1 / s`` (constant
    columns 1); each piece lays these out as it packs its parameters. With
    ``sample_weight`` the spreads are the weighted ones, so that a weighted
    fit takes the steps of the fit to the rows repeated by their weights.
    """
    m = model.params.n_experts
    gate_spreads, expert_spreads = design.gate_spreads, design.expert_spreads
    if sample_weight is not None:
        gate_spreads = column_spreads(design.gate, sample_weight)
        expert_spreads = column_spreads(design.expert, sample_weight)

    def column_scales(sd):
        return 1.0 / np.where(sd > 0, sd, 1.0)

    return np.concatenate(
        [
            model.gate.pack_scales(column_scales(gate_spreads), m),
            model.expert.pack_scales(column_scales(expert_spreads), m),
        ]
    )


def log_likelihood_and_gradient(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    var_floor: float = 0.0,
    sample_weight: NDArray[np.float64] | None = None,
) -> tuple[float, NDArray[np.float64]]:
    """Observed log-likelihood and its gradient in the packed parameters.

    By Fisher's identity the gradient of the observed log-likelihood is the
    gradient of the complete-data log-likelihood weighted by the posterior
    responsibilities, so each piece's M-step gradient serves here.

    Parameters
    ----------
    model : MixtureOfExperts
        Model with parameters.
    design : Design
        Its designs.
    y : ndarray of shape (n,)
        Responses.
    var_floor : float, default=0.0
        The floor in the variance parametrisation ``nu = nu_min + exp(u)``.
    sample_weight : ndarray of shape (n,), optional
        Non-negative weights: the weighted log-likelihood
        ``sum_t w_t log p(y_t | x_t)`` and its gradient (the
        responsibilities times ``w_t``).

    Returns
    -------
    log_likelihood : float
        The log-likelihood minus the pieces' ridge penalties
        (:func:`penalty`; zero unless a piece has ``alpha > 0``).
    gradient : ndarray of shape (n_free_parameters,)
        Its gradient (the pieces' gradients include their penalties).
    """
    params = model.params
    total, grad = 0.0, 0.0
    for rows in _row_chunks(model, design):
        Z, Phi, y_part = design.gate[rows], design.expert[rows], y[rows]
        log_g = model.gate.log_weights(params.gate, Z)
        values = log_g + model.expert.log_density(params.expert, Phi, y_part)
        resp, log_lik = responsibilities_from_log_joint(values)
        if sample_weight is not None:
            resp, log_lik = _weigh(resp, log_lik, sample_weight[rows])
        total += float(log_lik.sum())
        grad = grad + np.concatenate(
            [
                model.gate.gradient(params.gate, Z, resp, log_g),
                model.expert.gradient(params.expert, Phi, y_part, resp, var_floor),
            ]
        )
    return total - penalty(model, params, design), grad


def _row_chunks(model: MixtureOfExperts, design: Design) -> list[slice]:
    """The rows of the data in the chunks the fit evaluates them in.

    One slice of every row, unless :func:`em` would sweep these data in
    chunks (:func:`sweeps_by_default`): then the chunks of its sweep, so
    that the log-likelihood and its gradient store nothing of size ``n *
    m``. Their sums are those over the whole arrays, to round-off.
    """
    n, m = design.n_samples, model.params.n_experts
    if not sweeps_by_default(model, design, m):
        return [slice(0, n)]
    chunk = default_chunk_size(n, m, design.gate.shape[1], design.expert.shape[1])
    return [slice(start, start + chunk) for start in range(0, n, chunk)]


def _log_likelihood_and_weight(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    sample_weight: NDArray[np.float64] | None = None,
) -> tuple[float, NDArray[np.float64]]:
    """Total log-likelihood and total responsibility of each expert, by chunks."""
    params, total, weight = model.params, 0.0, 0.0
    for rows in _row_chunks(model, design):
        part = Design(design.gate[rows], design.expert[rows])
        resp, log_lik = _evaluate(model, params, part, y[rows])
        if sample_weight is not None:
            resp, log_lik = _weigh(resp, log_lik, sample_weight[rows])
        total += float(log_lik.sum())
        weight = weight + resp.sum(axis=0)
    return total, weight


def penalty(model: MixtureOfExperts, params: MoEParams, design: Design) -> float:
    """The ridge penalties of the gate and of the experts at ``params``.

    ``(alpha / 2) sum (sd_j beta_ij)^2`` over each piece's slopes
    (:mod:`moestat.boundary`); zero for pieces without ``alpha``.

    Parameters
    ----------
    model : MixtureOfExperts
        Supplies the gate and the expert family.
    params : MoEParams
        The parameters.
    design : Design
        The designs (their column spreads scale the slopes).

    Returns
    -------
    float
    """
    return model.gate.penalty(params.gate, design.gate) + model.expert.penalty(
        params.expert, design.expert
    )


def mle(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    var_floor: float = 0.0,
    sample_weight: NDArray[np.float64] | None = None,
) -> FitResult:
    """Fit by direct maximisation of the log-likelihood (L-BFGS-B).

    The optimiser works on the packed free parameters (the gate's reference
    row dropped, variances as ``log(nu - nu_min)``) with the analytic
    gradient of :func:`log_likelihood_and_gradient`, on the mean per-sample
    log-likelihood; its ``ftol`` is the shared stopping rule.

    Parameters
    ----------
    model, design, y, tol, max_iter, var_floor, sample_weight
        As for :func:`em`; ``max_iter`` counts L-BFGS iterations.

    Returns
    -------
    FitResult
        With weights, ``log_likelihood`` and ``trace`` are weighted sums.
    """
    weight = _check_sample_weight(sample_weight, design.n_samples)
    n = design.n_samples if weight is None else float(weight.sum())
    shapes = _shapes(model, design)
    # Optimise phi = theta / scale: coefficients of a design column are
    # measured in units of that column's spread, which is what standardising
    # the covariates would do (L-BFGS, unlike Newton, is not affine invariant).
    scale = parameter_scales(model, design, weight)
    lower, upper = _pack_bounds(model, *shapes)
    phi0 = np.clip(pack(model, var_floor), lower, upper) / scale

    def objective(phi):
        theta = phi * scale
        candidate = model.with_params(unpack(model, theta, shapes, var_floor))
        with np.errstate(over="ignore", invalid="ignore"):
            ll, grad = log_likelihood_and_gradient(
                candidate, design, y, var_floor, weight
            )
        if not np.isfinite(ll) or not np.all(np.isfinite(grad)):
            return np.inf, np.zeros_like(phi)
        return -ll / n, -grad * scale / n

    monitor = ConvergenceMonitor(tol, n)
    monitor.report(-objective(phi0)[0] * n)
    stopped = []

    def record(intermediate_result):
        if monitor.report(-intermediate_result.fun * n):
            stopped.append(True)
            raise StopIteration

    # scipy's own ftol is off: the shared rule, applied in the callback,
    # decides (a StopIteration ends the run there).
    result = minimize(
        objective,
        phi0,
        jac=True,
        method="L-BFGS-B",
        callback=record,
        bounds=list(zip(lower / scale, upper / scale, strict=True)),
        options={"maxiter": max_iter, "ftol": 0.0, "gtol": 0.0, "maxcor": 20},
    )
    fitted = model.with_params(unpack(model, result.x * scale, shapes, var_floor))
    log_likelihood, expert_weight = _log_likelihood_and_weight(
        fitted, design, y, weight
    )
    converged, stop_reason = _lbfgs_verdict(result, bool(stopped), monitor, max_iter)
    boundary = _boundary(fitted, design) if not _is_penalised(model) else ()
    if boundary:
        stop_reason = DIVERGE
    return FitResult(
        model=fitted,
        log_likelihood=log_likelihood - penalty(fitted, fitted.params, design),
        trace=np.asarray(monitor.history),
        n_iter=min(int(result.nit), max_iter),
        converged=converged and not boundary,
        monotone=True,
        expert_weight=expert_weight,
        stop_reason=stop_reason,
        boundary=boundary,
        capped=not converged and (result.status == 1 or result.nit >= max_iter),
    )


def _lbfgs_verdict(
    result: Any, stopped: bool, monitor: ConvergenceMonitor, max_iter: int
) -> tuple[bool, str]:
    """Whether an L-BFGS-B run converged, and why not if it did not.

    Converged: the shared rule fired (``stopped``), or L-BFGS-B ended with
    no change at all (status 0 with ``ftol=0``: an exact fixed point), or
    its line search failed once the last increment was already below the
    rule's threshold or below :data:`LINE_SEARCH_RESOLUTION` relative (no
    more gain is resolvable in floating point).
    """
    if stopped:
        return True, ""
    if result.status == 1 or result.nit >= max_iter:
        return False, f"L-BFGS-B reached max_iter={max_iter}"
    if result.status == 0:
        return True, ""
    history = monitor.history
    # a line search that fails before any step: no gain is resolvable here
    last_gain = history[-1] - history[-2] if len(history) > 1 else 0.0
    if result.status == 2 and abs(last_gain) <= _resolvable(
        history[-1], monitor.n_samples, monitor.tol
    ):
        return True, ""
    return False, f"L-BFGS-B stopped: {result.message}"


# -- initialisation ---------------------------------------------------------
def _standardize(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Centre and scale the columns of ``a`` in place (and return it)."""
    sd = a.std(axis=0)
    a -= a.mean(axis=0)
    a /= np.where(sd > 0, sd, 1.0)
    return a


#: Share of a start's hard labels spread over all experts, so that no gate
#: logit starts infinite.
LABEL_SMOOTHING = 0.05


def _smoothed_one_hot(labels: NDArray[np.intp], m: int, eps: float = LABEL_SMOOTHING):
    resp = np.full((labels.size, m), eps / m)
    resp[np.arange(labels.size), labels] += 1.0 - eps
    return resp


def initial_responsibilities(
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    n_experts: int,
    method: str,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Starting responsibilities from a partition of the standardised (x, y).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    n_experts : int
    method : {"kmeans", "random"}
        ``"kmeans"``: k-means++ followed by Lloyd iterations on (x, y);
        ``"random"``: each sample goes to the nearest of ``n_experts``
        distinct data points drawn at random (a random Voronoi partition).
    rng : numpy Generator

    Returns
    -------
    ndarray of shape (n, n_experts)
        Hard labels smoothed by 5% so that no gate logit starts infinite.
    """
    return _smoothed_one_hot(_initial_labels(X, y, n_experts, method, rng), n_experts)


#: Rows of the distances to the random start's centres computed at once.
_LABEL_CHUNK = 65536


def _initial_labels(X, y, n_experts, method, rng, sample_weight=None):
    """Hard labels of :func:`initial_responsibilities` (before the smoothing).

    With weights, k-means weighs the points and the random centres are drawn
    among the points of positive weight, in proportion to it.
    """
    points = _standardize(np.column_stack([X, y]))
    if method == "kmeans":
        seed = int(rng.integers(2**31 - 1))
        # copy_x=False: k-means centres these (already standardised) points
        # in place rather than in a copy; the partition is the same
        kmeans = KMeans(n_experts, n_init=1, random_state=seed, copy_x=False)
        return kmeans.fit_predict(points, sample_weight=sample_weight)
    if method != "random":
        raise ValueError(f"Unknown init method {method!r}; use 'kmeans' or 'random'.")
    equal = sample_weight is None or np.all(sample_weight == sample_weight[0])
    chance = None if equal else sample_weight / sample_weight.sum()
    centres = points[rng.choice(len(points), n_experts, replace=False, p=chance)]
    labels = np.empty(len(points), dtype=np.intp)
    for start in range(0, len(points), _LABEL_CHUNK):
        part = points[start : start + _LABEL_CHUNK]
        dist = ((part[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels[start : start + _LABEL_CHUNK] = dist.argmin(axis=1)
    return labels


def initial_params(
    model: MixtureOfExperts,
    design: Design,
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    n_experts: int,
    method: str,
    rng: np.random.Generator,
    var_floor: float = 0.0,
    sample_weight: NDArray[np.float64] | None = None,
) -> MoEParams:
    """Starting parameters: a partition of the data, then one M-step.

    The experts get the expert family's M-step on the partition's soft
    labels (:func:`initial_responsibilities`) and the gate is fitted to the
    same labels from a zero start.

    Parameters
    ----------
    model : MixtureOfExperts
        The model specification (its gate and expert family).
    design : Design
        The designs built by ``model.design(X)``.
    X : ndarray of shape (n, d)
        Covariates.
    y : ndarray of shape (n,)
        Responses.
    n_experts : int
        Number of experts.
    method : {"kmeans", "random"}
        The partition (see :func:`initial_responsibilities`).
    rng : numpy Generator
        Source of randomness of the partition.
    var_floor : float, default=0.0
        Lower bound on expert variances.
    sample_weight : ndarray of shape (n,), optional
        Non-negative weights of the samples: the partition weighs them and
        the M-steps take the soft labels times the weights.

    Returns
    -------
    MoEParams
        The starting parameters.

    Notes
    -----
    Where :func:`em` would sweep the data in chunks (a softmax or dense
    normalized sigmoid gate with Gaussian experts on data of at least
    :data:`CHUNKED_ENTRIES` numbers), both
    M-steps are taken from sums over chunks of rows, so no (n, m) labels
    are stored.
    """
    labels = _initial_labels(X, y, n_experts, method, rng, sample_weight)
    if sweeps_by_default(model, design, n_experts):
        return start_from_labels(
            model,
            design,
            y,
            labels,
            n_experts,
            LABEL_SMOOTHING,
            var_floor,
            sample_weight=sample_weight,
        )
    resp = _smoothed_one_hot(labels, n_experts)
    if sample_weight is not None:
        resp *= sample_weight[:, None]
    expert = model.expert.m_step(design.expert, y, resp, var_floor)
    gate = model.gate.init_params(design.gate, resp)
    return MoEParams(gate, expert)


ENGINES = {"em": em, "mle": mle}
INIT_METHODS = ("auto", "kmeans", "random")
# polish_fit's own defaults (the cap above applies within fit_restarts)
POLISH_TOL = 1e-12
POLISH_ITER = 500


def screened_start(
    model: MixtureOfExperts,
    design: Design,
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    n_experts: int,
    method: str,
    rng: np.random.Generator,
    var_floor: float = 0.0,
    n_candidates: int = 5,
    screen_iter: int = 10,
    sample_weight: NDArray[np.float64] | None = None,
) -> MoEParams:
    """The best of ``n_candidates`` starts after ``screen_iter`` EM iterations.

    The short-run screening of Biernacki, Celeux and Govaert (2003): many
    cheap EM runs from random starts, of which only the most promising is
    run to convergence. The candidates are drawn first, in order; a model
    whose pieces have batched kernels (:func:`runs_batched`) then runs all
    short EM runs as one batch of plain EM steps (:func:`batched_em_fits`)
    while the batch holds fewer than :data:`BATCHED_ENTRIES` numbers per
    array; other models and larger data run one candidate at a time.
    ``sample_weight`` weighs the partitions and the short runs.
    """
    candidates = [
        initial_params(
            model, design, X, y, n_experts, method, rng, var_floor, sample_weight
        )
        for _ in range(n_candidates)
    ]
    if not candidates:
        raise ValueError(f"n_candidates must be at least 1; got {n_candidates}.")
    if _batches(model, design, n_experts, len(candidates)):
        short_runs = batched_em_fits(
            model,
            [design] * len(candidates),
            [y] * len(candidates),
            candidates,
            tol=0.0,
            max_iter=screen_iter,
            var_floor=var_floor,
            sample_weight=[sample_weight] * len(candidates),
        )
    else:
        short_runs = [
            em(
                model.with_params(start),
                design,
                y,
                tol=0.0,
                max_iter=screen_iter,
                var_floor=var_floor,
                sample_weight=sample_weight,
            )
            for start in candidates
        ]
    best, best_ll = candidates[-1], -np.inf
    for short in short_runs:
        if short.log_likelihood > best_ll:
            best, best_ll = short.model.params, short.log_likelihood
    return best


# Split-and-merge moves tried per round by init="auto"; EM iterations that
# screen each move.
SPLIT_MERGE_MOVES = 3
SPLIT_MERGE_SCREEN_ITER = 10


def _runner(model, design, y, solver, options, batch_engine, speed=None, weight=None):
    """``run(starts, max_iter)`` of :func:`moestat.starts.split_merge`.

    ``max_iter=None`` runs the fit's engine with its own options; a number
    runs exactly that many EM iterations. With a batch engine all starts
    are fitted together; without one, the short runs of a model with
    batched kernels are one numpy batch (as in :func:`screened_start`).
    """

    def run(starts, max_iter):
        if max_iter is None:
            name, opts = solver, options
        else:
            name, opts = "em", {**options, "tol": 0.0, "max_iter": max_iter}
        if weight is not None:
            opts = {**opts, "sample_weight": weight}
        if batch_engine is not None:
            return batch_engine(model, design, y, list(starts), solver=name, **opts)
        if max_iter is not None and _batches(
            model, design, starts[0].n_experts, len(starts)
        ):
            return batch_em_engine()(
                model, design, y, list(starts), solver=name, **opts
            )
        engine = ENGINES[name]
        if name == "em":
            opts = {**opts, **(speed or {})}
        return [engine(model.with_params(start), design, y, **opts) for start in starts]

    return run


@runtime_checkable
class BatchEngine(Protocol):
    """Fits several starts on one data set: a batch engine of :func:`fit_restarts`.

    :func:`moestat.torch.fit.batch_engine` gives one that fits the starts
    in one torch batch on a device; the sweeps' engines
    (:mod:`moestat.simulation.engines`) are batch engines too.
    """

    def __call__(
        self,
        model: MixtureOfExperts,
        design: Design,
        y: NDArray[np.float64],
        starts: list[MoEParams],
        *,
        solver: str,
        tol: float,
        max_iter: int,
        var_floor: float,
    ) -> list[FitResult]:
        """Fit ``model`` to ``(design, y)`` from each start.

        Parameters
        ----------
        model : MixtureOfExperts
            The gate and expert family (their parameters are not used).
        design : Design
            The model's designs on the data.
        y : ndarray of shape (n,)
            Responses.
        starts : list of MoEParams
            Starting parameters, one fit each.
        solver : {"em", "mle"}
            The engine.
        tol, max_iter, var_floor
            As for :func:`em` and :func:`mle`.

        Returns
        -------
        list of FitResult
            One per start, in order.

        Notes
        -----
        A weighted fit (``fit_restarts(sample_weight=)``) calls the engine
        with a further keyword, ``sample_weight``; the engines of
        :func:`batch_em_engine` and :func:`moestat.torch.fit.batch_engine`
        take it.
        """
        ...


def batched_fit_results(
    model: MixtureOfExperts,
    fit: BatchedFit,
    shapes: tuple[int, int, int],
    var_floor: NDArray[np.float64],
    designs: Sequence[Design] | None = None,
    max_iter: int | None = None,
) -> list[FitResult]:
    """One :class:`FitResult` per row of a batched fit of numpy arrays.

    With the data sets' ``designs``, a fit whose coefficients walk to
    infinity gets its ``boundary`` and ``converged=False``, as :func:`em`
    reports it (the batched EM does not stop on the ridge early).

    Parameters
    ----------
    model : MixtureOfExperts
        The gate and expert family of the fit.
    fit : BatchedFit
        numpy arrays (:func:`moestat._batched_em.em`).
    shapes : tuple of int
        ``(m, p_gate, p_expert)``.
    var_floor : ndarray of shape (B,)
        Each problem's variance floor.
    designs : sequence of Design, optional
        Each problem's designs (for the boundary check).
    max_iter : int, optional
        The iteration cap the fit ran under.

    Returns
    -------
    list of FitResult
    """
    m, p_gate, p_expert = shapes
    results = []
    for b in range(len(fit.log_likelihood)):
        params = MoEParams(
            model.gate.unpack(fit.theta_gate[b], m, p_gate),
            model.expert.unpack(fit.theta_expert[b], m, p_expert, float(var_floor[b])),
        )
        column = fit.trace[:, b]
        fitted = model.with_params(params)
        boundary = () if designs is None else _boundary(fitted, designs[b])
        converged, n_iter = bool(fit.converged[b]), int(fit.n_iter[b])
        capped = not converged and max_iter is not None and n_iter >= max_iter
        results.append(
            FitResult(
                model=fitted,
                log_likelihood=float(fit.log_likelihood[b]),
                trace=column[np.isfinite(column)],
                n_iter=n_iter,
                converged=converged and not boundary,
                monotone=bool(fit.monotone[b]),
                expert_weight=np.asarray(fit.expert_weight[b]),
                stop_reason=_batched_stop_reason(converged, boundary, capped, max_iter),
                capped=capped,
                boundary=boundary,
            )
        )
    return results


def _batched_stop_reason(
    converged: bool, boundary: tuple, capped: bool, max_iter: int | None
) -> str:
    """Why a batched fit stopped without converging, as numpy's engines say."""
    if boundary:
        return DIVERGE
    if converged:
        return ""
    if capped:
        return f"the batched engine reached max_iter={max_iter}"
    return "the batched L-BFGS line search failed with gain still resolvable"


def _batches(
    model: MixtureOfExperts, design: Design, n_experts: int, batch: int
) -> bool:
    """Whether ``batch`` short runs go in one numpy batch.

    When the model's pieces have batched kernels and the batch's arrays
    hold fewer than :data:`BATCHED_ENTRIES` numbers (larger data run one
    start at a time, in chunks where the model allows).
    """
    entries = batch * full_path_entries(design, n_experts)
    return batch > 1 and entries < BATCHED_ENTRIES and runs_batched(model)


def runs_batched(model: MixtureOfExperts) -> bool:
    """Whether the model's gate and expert family both have batched kernels.

    Such a model can fit several starts as one batch
    (:func:`batched_em_fits`); others are fitted start by start.
    """
    try:
        batched_gate(model.gate, 2, 1)
        batched_expert(model.expert, 2, 1)
    except ValueError:
        return False
    return True


def batched_em_fits(
    model: MixtureOfExperts,
    designs: Sequence[Design],
    ys: Sequence[NDArray[np.float64]],
    starts: Sequence[MoEParams],
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    var_floor: float | Sequence[float] = 0.0,
    sample_weight: Sequence[NDArray[np.float64] | None] | None = None,
) -> list[FitResult]:
    """Plain EM from B starts on B data sets, as one numpy batch.

    The loop of :func:`moestat._batched_em.em` on numpy arrays: the same
    steps as ``em(..., accelerate=False, stop_on_ridge=False)`` from each
    start, taken for the whole batch at once (one call per step instead of
    B), which is what pays at small n where each call costs more than its
    arithmetic. Problems of different sizes are padded with rows of weight
    zero.

    Parameters
    ----------
    model : MixtureOfExperts
        The gate and expert family (:func:`runs_batched`; its parameters are
        not used).
    designs : sequence of Design
        ``model.design(X_b)`` per problem (the same columns for all).
    ys : sequence of ndarray
        Responses per problem.
    starts : sequence of MoEParams
        Starting parameters per problem.
    tol, max_iter
        As for :func:`em`.
    var_floor : float or sequence of float, default=0.0
    sample_weight : sequence of (ndarray or None), optional

    Returns
    -------
    list of FitResult
        One per problem, in order.

    Raises
    ------
    ValueError
        For a model whose pieces have no batched kernels, or one start per
        problem missing.
    """
    if len(starts) != len(designs):
        raise ValueError(
            f"Need one start per data set; got {len(starts)} starts for "
            f"{len(designs)} data sets."
        )
    m = starts[0].n_experts
    shapes = (m, designs[0].gate.shape[1], designs[0].expert.shape[1])
    gate = batched_gate(model.gate, m, shapes[1])
    expert = batched_expert(model.expert, m, shapes[2])
    data = stack_arrays(designs, ys, var_floor=var_floor, sample_weight=sample_weight)
    theta_gate = np.stack([model.gate.pack(start.gate) for start in starts])
    theta_expert = np.stack(
        [
            model.expert.pack(start.expert, float(floor))
            for start, floor in zip(starts, data.var_floor, strict=True)
        ]
    )
    fit = batched_em(
        gate, expert, data, theta_gate, theta_expert, tol=tol, max_iter=max_iter
    )
    return batched_fit_results(model, fit, shapes, data.var_floor, designs, max_iter)


def batch_em_engine() -> BatchEngine:
    """A numpy :class:`BatchEngine`: every EM start in one batch.

    ``solver="em"`` fits all starts together (:func:`batched_em_fits`);
    ``solver="mle"`` fits them one by one (:func:`mle`).

    Returns
    -------
    BatchEngine
    """

    def engine(
        model,
        design,
        y,
        starts,
        *,
        solver,
        tol,
        max_iter,
        var_floor,
        sample_weight=None,
    ):
        if solver != "em":
            return [
                ENGINES[solver](
                    model.with_params(start),
                    design,
                    y,
                    tol=tol,
                    max_iter=max_iter,
                    var_floor=var_floor,
                    sample_weight=sample_weight,
                )
                for start in starts
            ]
        return batched_em_fits(
            model,
            [design] * len(starts),
            [y] * len(starts),
            starts,
            tol=tol,
            max_iter=max_iter,
            var_floor=var_floor,
            sample_weight=[sample_weight] * len(starts),
        )

    return engine


def fit_restarts(
    model: MixtureOfExperts,
    design: Design,
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    *,
    n_experts: int,
    solver: str = "em",
    init: Any = "auto",
    n_init: int = 1,
    rng: np.random.Generator,
    tol: float = 1e-6,
    max_iter: int = 1000,
    var_floor: float = 0.0,
    n_candidates: int = 5,
    screen_iter: int = 10,
    polish: bool = False,
    batch_engine: BatchEngine | None = None,
    n_moves: int | None = None,
    accelerate: bool = True,
    stop_on_ridge: bool = True,
    sample_weight: NDArray[np.float64] | None = None,
    sweep_dtype: DTypeLike = np.float64,
    report: Callable[[str], None] | None = None,
) -> tuple[FitResult, list[FitResult]]:
    """Fit from ``n_init`` starts and keep the best log-likelihood.

    Parameters
    ----------
    model, design, X, y
        The model specification, its designs and the data.
    n_experts : int
        Number of experts to fit.
    solver : {"em", "mle"}
        The engine.
    init : {"auto", "kmeans", "random"} or MoEParams
        ``"kmeans"``: each restart starts from a k-means partition of the
        standardised (x, y); ``"random"``: from the best of
        ``n_candidates`` random partitions after ``screen_iter`` EM
        iterations (:func:`screened_start`); ``"auto"``: the first restart
        from k-means, the others as ``"random"``, and the best restart is
        then improved by split-and-merge moves
        (:func:`moestat.starts.split_merge`). Given parameters start the
        first restart; the others then follow ``"auto"`` (without moves).
    n_init : int
        Number of restarts run to convergence.
    rng : numpy Generator
        The one stream every restart draws from, in turn.
    tol, max_iter, var_floor
        Passed to the engine.
    n_candidates, screen_iter : int
        Screening of random starts.
    polish : bool, default=False
        Finish the best restart with :func:`polish_fit`.
    batch_engine : BatchEngine, optional
        ``batch_engine(model, design, y, starts, solver=, tol=, max_iter=,
        var_floor=)`` returning one FitResult per start (:class:`BatchEngine`):
        all restarts are fitted together (the torch backend's
        :func:`moestat.torch.fit.batch_engine`). The starts are drawn first, in
        the same order, so both paths begin from the same parameters. With
        ``polish`` the engine is called again with ``solver="mle"``; the
        split-and-merge moves run on it too.
    n_moves : int, optional
        Split-and-merge moves tried per round on the best restart (0: none).
        Default 3 for ``init="auto"``, 0 otherwise.

    accelerate, stop_on_ridge : bool, default=True
        Passed to the numpy EM runs (:func:`em`); the batched torch engine
        takes plain EM steps and walks ridges on, so a sweep that compares
        backends passes False for both.
    sample_weight : ndarray of shape (n,), optional
        Non-negative weights: every stage maximises the weighted
        log-likelihood ``sum_t w_t log p(y_t | x_t)`` (the starts' partitions
        and M-steps, the screening, the restarts, the choice of the best,
        the moves' runs and the polish); a batch engine receives them as
        ``sample_weight=``. The moves are proposed from unweighted
        responsibilities and kept by the weighted likelihood.
    sweep_dtype : {np.float64, np.float32}, default=np.float64
        Arithmetic within a chunk of the numpy EM runs that sweep the data
        in chunks (:func:`em`); the full path and the batch engines work in
        float64 whatever it is.
    report : callable, optional
        Called with one line of progress after each restart (its
        log-likelihood, iterations and convergence), after the moves and
        after the polish.

    Returns
    -------
    best : FitResult
        The best restart, after the moves and the polish.
    all_results : list of FitResult
        One per restart, in order (before the moves).
    """
    starts = restart_starts(
        model,
        design,
        X,
        y,
        n_experts=n_experts,
        init=init,
        n_init=n_init,
        rng=rng,
        var_floor=var_floor,
        n_candidates=n_candidates,
        screen_iter=screen_iter,
        sample_weight=sample_weight,
    )
    options = {"tol": tol, "max_iter": max_iter, "var_floor": var_floor}
    weighted = {} if sample_weight is None else {"sample_weight": sample_weight}
    speed = (
        {
            "accelerate": accelerate,
            "stop_on_ridge": stop_on_ridge,
            "sweep_dtype": _check_sweep_dtype(sweep_dtype),
        }
        if solver == "em"
        else {}
    )
    say = report or (lambda line: None)
    if batch_engine is None:
        engine = ENGINES[solver]
        results = []
        for i, start in enumerate(starts):
            results.append(
                engine(
                    model.with_params(start), design, y, **options, **speed, **weighted
                )
            )
            say(_restart_line(i, len(starts), results[-1]))
    else:
        results = batch_engine(
            model, design, y, starts, solver=solver, **options, **weighted
        )
        for i, result in enumerate(results):
            say(_restart_line(i, len(starts), result))
    best = best_restart(results, var_floor)
    if n_moves is None:
        n_moves = SPLIT_MERGE_MOVES if isinstance(init, str) and init == "auto" else 0
    if n_moves > 0:
        from moestat.starts import split_merge

        best = split_merge(
            best,
            design,
            y,
            run=_runner(
                model, design, y, solver, options, batch_engine, speed, sample_weight
            ),
            n_moves=n_moves,
            short_iter=SPLIT_MERGE_SCREEN_ITER,
            var_floor=var_floor,
        )
        say(f"split-and-merge moves: log-likelihood {best.log_likelihood:.6f}")
    if polish:
        best = polish_fit(
            best,
            design,
            y,
            tol=POLISH_TOL,
            max_iter=max_iter,
            var_floor=var_floor,
            batch_engine=batch_engine,
            sample_weight=sample_weight,
        )
        say(
            f"polish: log-likelihood {best.log_likelihood:.6f} after "
            f"{best.n_iter_polish} iterations"
        )
    return best, results


def _restart_line(i: int, n: int, result: FitResult) -> str:
    """One line on restart ``i`` of ``n``: its log-likelihood and iterations."""
    state = "converged" if result.converged else "not converged"
    return (
        f"restart {i + 1}/{n}: log-likelihood {result.log_likelihood:.6f}, "
        f"{result.n_iter} iterations, {state}"
    )


def restart_starts(
    model: MixtureOfExperts,
    design: Design,
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    *,
    n_experts: int,
    init: Any = "auto",
    n_init: int = 1,
    rng: np.random.Generator,
    var_floor: float = 0.0,
    n_candidates: int = 5,
    screen_iter: int = 10,
    sample_weight: NDArray[np.float64] | None = None,
) -> list[MoEParams]:
    """The starting parameters of the ``n_init`` restarts of :func:`fit_restarts`.

    Drawn in order from ``rng``. Engines that fit all restarts together
    (the torch backend, the batched sweeps) start from exactly these.

    Parameters
    ----------
    model : MixtureOfExperts
        The model specification.
    design : Design
        The designs built by ``model.design(X)``.
    X : ndarray of shape (n, d)
        Covariates.
    y : ndarray of shape (n,)
        Responses.
    n_experts : int
        Number of experts.
    init : {"auto", "kmeans", "random"} or MoEParams, default="auto"
        As for :func:`fit_restarts`.
    n_init : int, default=1
        Number of starts.
    rng : numpy Generator
        The one stream every start draws from, in turn.
    var_floor : float, default=0.0
        Lower bound on expert variances.
    n_candidates, screen_iter : int
        Screening of random starts (:func:`screened_start`).
    sample_weight : ndarray of shape (n,), optional
        Weights of the samples (:func:`initial_params`).

    Returns
    -------
    list of MoEParams
        One start per restart, in order.
    """
    starts = []
    for restart in range(n_init):
        method = init if isinstance(init, str) else "auto"
        if isinstance(init, MoEParams) and restart == 0:
            start = init
        elif method == "kmeans" or (method == "auto" and restart == 0):
            start = initial_params(
                model, design, X, y, n_experts, "kmeans", rng, var_floor, sample_weight
            )
        else:
            start = screened_start(
                model,
                design,
                X,
                y,
                n_experts,
                "random",
                rng,
                var_floor,
                n_candidates,
                screen_iter,
                sample_weight,
            )
        starts.append(start)
    return starts


def best_restart(results: list[FitResult], var_floor: float | None = None) -> FitResult:
    """The restart with the largest finite log-likelihood, regular ones first.

    A degenerate restart -- coefficients walking to infinity
    (``FitResult.boundary``) or, given ``var_floor``, an expert variance at
    the floor -- never wins over a regular one, whatever its likelihood
    (a degenerate likelihood can be made as large as one likes).

    Parameters
    ----------
    results : list of FitResult
        One per restart.
    var_floor : float, optional
        The variance floor of the fit; None leaves variances unexamined.

    Returns
    -------
    FitResult
        The first of the regular results with the largest log-likelihood,
        or of all results when every one is degenerate.

    Raises
    ------
    FloatingPointError
        When every restart ended with a non-finite log-likelihood.
    """
    finite = [r for r in results if np.isfinite(r.log_likelihood)]
    if not finite:
        raise FloatingPointError(
            "Every restart ended with a non-finite log-likelihood; check the "
            "scale of X and y or raise reg_var."
        )
    regular = [r for r in finite if not is_degenerate(r, var_floor)]
    return max(regular or finite, key=lambda r: r.log_likelihood)


def is_degenerate(result: FitResult, var_floor: float | None = None) -> bool:
    """Whether a fit sits on a boundary of the parameter space.

    Parameters
    ----------
    result : FitResult
        A fit.
    var_floor : float, optional
        The variance floor; with it, an expert variance at the floor counts.

    Returns
    -------
    bool
        True for diverging coefficients (``result.boundary``) or a
        variance at ``var_floor``.
    """
    if result.boundary:
        return True
    if var_floor is None or var_floor <= 0:
        return False
    expert, params = result.model.expert, result.model.params.expert
    return len(expert.at_variance_floor(params, var_floor)) > 0


def polish_fit(
    result: FitResult,
    design: Design,
    y: NDArray[np.float64],
    *,
    tol: float = POLISH_TOL,
    max_iter: int = POLISH_ITER,
    var_floor: float = 0.0,
    batch_engine: Any = None,
    sample_weight: NDArray[np.float64] | None = None,
) -> FitResult:
    """Finish a fit with L-BFGS-B on the log-likelihood (the EM-then-MLE hybrid).

    EM converges linearly, and slowly where the information is nearly
    singular; quasi-Newton steps from its end reach the maximum itself.
    The polished fit is kept only if its likelihood is not lower; its
    iterations are counted in ``n_iter_polish`` and its history is added
    to the trace, and ``converged`` is true only if both the first engine
    and the polish met the stopping rule.
    ``batch_engine`` (see :func:`fit_restarts`) runs the polish instead of
    :func:`mle`.

    Parameters
    ----------
    result : FitResult
        The fit to finish.
    design : Design
        Its designs on the data.
    y : ndarray of shape (n,)
        Responses.
    tol : float, default=1e-12
        Stopping tolerance of the polish (module docstring).
    max_iter : int, default=500
        Maximum number of L-BFGS-B iterations.
    var_floor : float, default=0.0
        Lower bound on expert variances.
    batch_engine : callable, optional
        The engine that runs the polish (with ``solver="mle"``).
    sample_weight : ndarray of shape (n,), optional
        Weights of the samples (the weighted log-likelihood is maximised).

    Returns
    -------
    FitResult
        The joined fit (:func:`keep_polished`).
    """
    weighted = {} if sample_weight is None else {"sample_weight": sample_weight}
    if batch_engine is None:
        polished = mle(
            result.model,
            design,
            y,
            tol=tol,
            max_iter=max_iter,
            var_floor=var_floor,
            **weighted,
        )
    else:
        (polished,) = batch_engine(
            result.model,
            design,
            y,
            [result.model.params],
            solver="mle",
            tol=tol,
            max_iter=max_iter,
            var_floor=var_floor,
            **weighted,
        )
    return keep_polished(result, polished)


def keep_polished(result: FitResult, polished: FitResult) -> FitResult:
    """The polished fit joined to the first engine's, unless it is worse.

    The rule of :func:`polish_fit`, for engines that run the polish
    themselves (the batched sweeps).

    Parameters
    ----------
    result : FitResult
        The first engine's fit.
    polished : FitResult
        The polish started from ``result.model``.

    Returns
    -------
    FitResult
        ``result`` itself if the polish lowered the log-likelihood;
        otherwise the polished model with the traces joined, the polish's
        iterations in ``n_iter_polish`` (``n_iter`` stays the first
        engine's), ``converged`` the first engine's verdict unless the
        polish reached its cap (a cap reached in either is not
        convergence; a polish whose line search fails at a kink leaves the
        verdict standing) and ``monotone`` from the first engine.
    """
    if polished.log_likelihood < result.log_likelihood:
        return result
    # A polish whose line search fails (a kink of a top-K likelihood, say)
    # leaves the first engine's verdict standing; a polish cut off by its
    # cap does not.
    capped = polished.capped
    reasons = [result.stop_reason] if result.stop_reason else []
    if capped:
        reasons.append("the polish's " + polished.stop_reason)
    return FitResult(
        model=polished.model,
        log_likelihood=polished.log_likelihood,
        trace=np.concatenate([result.trace, polished.trace[1:]]),
        n_iter=result.n_iter,
        converged=result.converged and (polished.converged or not capped),
        monotone=result.monotone,
        expert_weight=polished.expert_weight,
        n_iter_polish=result.n_iter_polish + polished.n_iter,
        stop_reason="; ".join(reasons),
        boundary=polished.boundary,
        capped=result.capped or capped,
    )


def warn_on_degeneracy(result: FitResult, var_floor: float, min_weight: float) -> None:
    """Warn when the best fit has a collapsed expert or a variance at the floor."""
    small = np.flatnonzero(result.expert_weight < min_weight)
    if small.size:
        warnings.warn(
            f"Expert(s) {small.tolist()} have an effective sample size below "
            f"{min_weight:g} (total responsibilities "
            f"{np.round(result.expert_weight[small], 3).tolist()}): the model has "
            "more experts than the data support. Try fewer experts.",
            DegenerateFitWarning,
            stacklevel=3,
        )
    at_floor = result.model.expert.at_variance_floor(
        result.model.params.expert, var_floor
    )
    if len(at_floor):
        warnings.warn(
            f"The variance of expert(s) {np.asarray(at_floor).tolist()} reached "
            f"the floor {var_floor:.3g} (reg_var * Var(y)): an expert is "
            "collapsing onto a few points. Try fewer experts or a larger reg_var.",
            DegenerateFitWarning,
            stacklevel=3,
        )
