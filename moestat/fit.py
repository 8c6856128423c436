"""Fitting engines: EM, direct MLE, initialisation and restarts.

Both engines are generic over the pieces: they call only the gate's and the
expert family's hooks (log density, M-step, gradient, pack/unpack) and know
nothing about Gaussians or softmax.

Stopping rule (shared by EM and MLE)
------------------------------------
With ``l_t`` the mean per-sample log-likelihood after iteration ``t``, a
fit has converged when::

    |l_t - l_{t-1}| <= tol * max(|l_{t-1}|, |l_t|, 1),

a relative change for large ``|l|`` and an absolute one near zero. This is
the rule of scipy's L-BFGS-B ``ftol``, so EM and MLE stop alike. Reaching
``max_iter`` is not convergence.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from sklearn.cluster import KMeans

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
    "restart_starts",
    "best_restart",
    "polish_fit",
    "keep_polished",
]


@dataclass
class ConvergenceMonitor:
    """Record a log-likelihood history and apply the stopping rule.

    Parameters
    ----------
    tol : float
        Tolerance of the stopping rule (module docstring).
    n_samples : int
        Used to turn totals into per-sample means.
    decrease_tol : float, default=1e-10
        A decrease larger than ``decrease_tol * max(|l|, 1)`` (per sample) is
        flagged: exact EM never decreases the likelihood.
    history : list of float, optional
        Total log-likelihoods reported so far (empty at the start).
    decreased : bool, default=False
        Set once a decrease beyond ``decrease_tol`` has been reported.
    """

    tol: float
    n_samples: int
    decrease_tol: float = 1e-10
    history: list[float] = field(default_factory=list)
    decreased: bool = False

    def report(self, log_likelihood: float) -> bool:
        """Record a total log-likelihood and apply the stopping rule.

        Parameters
        ----------
        log_likelihood : float
            Total log-likelihood after the latest iteration.

        Returns
        -------
        bool
            True when the change from the previous value meets the stopping
            rule (never for the first value).
        """
        self.history.append(float(log_likelihood))
        if len(self.history) < 2:
            return False
        prev, curr = (v / self.n_samples for v in self.history[-2:])
        scale = max(abs(prev), abs(curr), 1.0)
        if curr < prev - self.decrease_tol * scale:
            self.decreased = True
        return abs(curr - prev) <= self.tol * scale


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
        Whether the stopping rule was met before ``max_iter``.
    monotone : bool
        False if the likelihood decreased beyond round-off (EM only).
    expert_weight : ndarray of shape (n_experts,)
        Total responsibility of each expert at the end (its effective size).
    """

    model: MixtureOfExperts
    log_likelihood: float
    trace: NDArray[np.float64]
    n_iter: int
    converged: bool
    monotone: bool
    expert_weight: NDArray[np.float64]


def _evaluate(model, params, design, y):
    values = log_joint(model.gate, model.expert, params, design, y)
    return responsibilities_from_log_joint(values)


def em(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    var_floor: float = 0.0,
    sample_weight: NDArray[np.float64] | None = None,
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
        Maximum number of EM iterations.
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

    Returns
    -------
    FitResult
        With weights, ``log_likelihood`` and ``trace`` are weighted sums and
        ``expert_weight`` the weighted responsibilities.

    Notes
    -----
    E-step: responsibilities by log-sum-exp of ``log g + log f``. Then two
    conditional maximisation steps: the expert family's weighted M-step,
    and the gate's damped Fisher-scoring step, accepted only if it does not
    decrease ``sum r log g`` (generalised EM) or, for a top-K gate, the
    observed log-likelihood with the new experts held fixed (an ECME step,
    Liu and Rubin 1994; the gate receives the new experts' log densities
    and chooses). The log-likelihood is therefore non-decreasing for every
    gate; the monitor flags any decrease beyond round-off.
    """
    gate, expert = model.gate, model.expert
    params = model.params
    weight = _check_sample_weight(sample_weight, design.n_samples)
    n = design.n_samples if weight is None else float(weight.sum())
    monitor = ConvergenceMonitor(tol, n)
    gate_features = gate.sufficient_features(design.gate)
    expert_features = expert.sufficient_features(design.expert, y)
    log_g = gate.log_weights(params.gate, design.gate)
    values = log_g + expert.log_density(params.expert, design.expert, y)
    resp, log_lik = _weigh(*responsibilities_from_log_joint(values), weight)
    monitor.report(log_lik.sum())
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        expert_params = expert.m_step(
            design.expert, y, resp, var_floor, params.expert, expert_features
        )
        log_f = expert.log_density(expert_params, design.expert, y)
        gate_params, log_g = gate.m_step(
            params.gate, design.gate, resp, log_g, gate_features, log_f
        )
        params = MoEParams(gate_params, expert_params)
        resp, log_lik = _weigh(*responsibilities_from_log_joint(log_g + log_f), weight)
        if monitor.report(log_lik.sum()):
            converged = True
            break
    return FitResult(
        model=model.with_params(params),
        log_likelihood=monitor.history[-1],
        trace=np.asarray(monitor.history),
        n_iter=n_iter,
        converged=converged,
        monotone=not monitor.decreased,
        expert_weight=resp.sum(axis=0),
    )


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


def parameter_scales(model: MixtureOfExperts, design: Design) -> NDArray[np.float64]:
    """Typical size of each packed parameter: 1 / spread of its design column.

    A coefficient of a column with spread ``s`` gets scale ``1 / s`` (constant
    columns 1); each piece lays these out as it packs its parameters.
    """
    m = model.params.n_experts

    def column_scales(A):
        sd = A.std(axis=0)
        return 1.0 / np.where(sd > 1e-12 * max(np.abs(A).max(), 1.0), sd, 1.0)

    return np.concatenate(
        [
            model.gate.pack_scales(column_scales(design.gate), m),
            model.expert.pack_scales(column_scales(design.expert), m),
        ]
    )


def log_likelihood_and_gradient(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    var_floor: float = 0.0,
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

    Returns
    -------
    log_likelihood : float
    gradient : ndarray of shape (n_free_parameters,)
    """
    params = model.params
    log_g = model.gate.log_weights(params.gate, design.gate)
    values = log_g + model.expert.log_density(params.expert, design.expert, y)
    resp, log_lik = responsibilities_from_log_joint(values)
    grad = np.concatenate(
        [
            model.gate.gradient(params.gate, design.gate, resp, log_g),
            model.expert.gradient(params.expert, design.expert, y, resp, var_floor),
        ]
    )
    return float(log_lik.sum()), grad


def mle(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    var_floor: float = 0.0,
) -> FitResult:
    """Fit by direct maximisation of the log-likelihood (L-BFGS-B).

    The optimiser works on the packed free parameters (the gate's reference
    row dropped, variances as ``log(nu - nu_min)``) with the analytic
    gradient of :func:`log_likelihood_and_gradient`, on the mean per-sample
    log-likelihood; its ``ftol`` is the shared stopping rule.

    Parameters
    ----------
    model, design, y, tol, max_iter, var_floor
        As for :func:`em`; ``max_iter`` counts L-BFGS iterations.

    Returns
    -------
    FitResult
    """
    n = design.n_samples
    shapes = _shapes(model, design)
    # Optimise phi = theta / scale: coefficients of a design column are
    # measured in units of that column's spread, which is what standardising
    # the covariates would do (L-BFGS, unlike Newton, is not affine invariant).
    scale = parameter_scales(model, design)
    m, p_gate, p_expert = shapes
    lower, upper = (
        np.concatenate(pair)
        for pair in zip(
            model.gate.pack_bounds(m, p_gate),
            model.expert.pack_bounds(m, p_expert),
            strict=True,
        )
    )
    phi0 = np.clip(pack(model, var_floor), lower, upper) / scale

    def objective(phi):
        theta = phi * scale
        candidate = model.with_params(unpack(model, theta, shapes, var_floor))
        with np.errstate(over="ignore", invalid="ignore"):
            ll, grad = log_likelihood_and_gradient(candidate, design, y, var_floor)
        if not np.isfinite(ll) or not np.all(np.isfinite(grad)):
            return np.inf, np.zeros_like(phi)
        return -ll / n, -grad * scale / n

    monitor = ConvergenceMonitor(tol, n)
    monitor.report(-objective(phi0)[0] * n)

    def record(intermediate_result):
        monitor.report(-intermediate_result.fun * n)

    result = minimize(
        objective,
        phi0,
        jac=True,
        method="L-BFGS-B",
        callback=record,
        bounds=list(zip(lower / scale, upper / scale, strict=True)),
        options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-12, "maxcor": 20},
    )
    fitted = model.with_params(unpack(model, result.x * scale, shapes, var_floor))
    resp, log_lik = _evaluate(fitted, fitted.params, design, y)
    # L-BFGS-B may end in a failed line search at the optimum (status 2);
    # the shared rule on the recorded history decides then.
    settled = len(monitor.history) > 1 and (
        abs(monitor.history[-1] - monitor.history[-2]) / n
        <= tol * max(abs(monitor.history[-1]) / n, 1.0)
    )
    converged = result.status == 0 or (result.status == 2 and settled)
    return FitResult(
        model=fitted,
        log_likelihood=float(log_lik.sum()),
        trace=np.asarray(monitor.history),
        n_iter=int(result.nit),
        converged=bool(converged),
        monotone=True,
        expert_weight=resp.sum(axis=0),
    )


# -- initialisation ---------------------------------------------------------
def _standardize(a: NDArray[np.float64]) -> NDArray[np.float64]:
    sd = a.std(axis=0)
    return (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _smoothed_one_hot(labels: NDArray[np.intp], m: int, eps: float = 0.05):
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
    points = _standardize(np.column_stack([X, y]))
    if method == "kmeans":
        seed = int(rng.integers(2**31 - 1))
        labels = KMeans(n_experts, n_init=1, random_state=seed).fit_predict(points)
    elif method == "random":
        centres = points[rng.choice(len(points), n_experts, replace=False)]
        dist = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels = dist.argmin(axis=1)
    else:
        raise ValueError(f"Unknown init method {method!r}; use 'kmeans' or 'random'.")
    return _smoothed_one_hot(labels, n_experts)


def initial_params(
    model: MixtureOfExperts,
    design: Design,
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    n_experts: int,
    method: str,
    rng: np.random.Generator,
    var_floor: float = 0.0,
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

    Returns
    -------
    MoEParams
        The starting parameters.
    """
    resp = initial_responsibilities(X, y, n_experts, method, rng)
    expert = model.expert.m_step(design.expert, y, resp, var_floor)
    gate = model.gate.init_params(design.gate, resp)
    return MoEParams(gate, expert)


ENGINES = {"em": em, "mle": mle}
INIT_METHODS = ("auto", "kmeans", "random")
# L-BFGS-B iterations of the polish: enough to finish a slow EM tail.
POLISH_MAX_ITER = 200
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
) -> MoEParams:
    """The best of ``n_candidates`` starts after ``screen_iter`` EM iterations.

    The short-run screening of Biernacki, Celeux and Govaert (2003): many
    cheap EM runs from random starts, of which only the most promising is
    run to convergence.
    """
    best, best_ll = None, -np.inf
    for _ in range(n_candidates):
        start = initial_params(model, design, X, y, n_experts, method, rng, var_floor)
        short = em(
            model.with_params(start),
            design,
            y,
            tol=0.0,
            max_iter=screen_iter,
            var_floor=var_floor,
        )
        if short.log_likelihood > best_ll:
            best, best_ll = short.model.params, short.log_likelihood
    return best if best is not None else start


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
    batch_engine: Any = None,
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
        from k-means, the others as ``"random"``. Given parameters start the
        first restart; the others then follow ``"auto"``.
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
    batch_engine : callable, optional
        ``batch_engine(model, design, y, starts, solver=, tol=, max_iter=,
        var_floor=)`` returning one FitResult per start: all restarts are
        fitted together (the torch backend). The starts are drawn first, in
        the same order, so both paths begin from the same parameters. With
        ``polish`` the engine is called again with ``solver="mle"``.

    Returns
    -------
    best : FitResult
    all_results : list of FitResult
        One per restart, in order.
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
    )
    options = {"tol": tol, "max_iter": max_iter, "var_floor": var_floor}
    if batch_engine is None:
        engine = ENGINES[solver]
        results = [
            engine(model.with_params(start), design, y, **options) for start in starts
        ]
    else:
        results = batch_engine(model, design, y, starts, solver=solver, **options)
    best = best_restart(results)
    if polish:
        best = polish_fit(
            best,
            design,
            y,
            max_iter=min(max_iter, POLISH_MAX_ITER),
            var_floor=var_floor,
            batch_engine=batch_engine,
        )
    return best, results


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
                model, design, X, y, n_experts, "kmeans", rng, var_floor
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
            )
        starts.append(start)
    return starts


def best_restart(results: list[FitResult]) -> FitResult:
    """The restart with the largest finite log-likelihood.

    Parameters
    ----------
    results : list of FitResult
        One per restart.

    Returns
    -------
    FitResult
        The first of the results with the largest log-likelihood.

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
    return max(finite, key=lambda r: r.log_likelihood)


def polish_fit(
    result: FitResult,
    design: Design,
    y: NDArray[np.float64],
    *,
    tol: float = POLISH_TOL,
    max_iter: int = POLISH_ITER,
    var_floor: float = 0.0,
    batch_engine: Any = None,
) -> FitResult:
    """Finish a fit with L-BFGS-B on the log-likelihood (the EM-then-MLE hybrid).

    EM converges linearly, and slowly where the information is nearly
    singular, so a relative stopping rule can stop it short of the maximum.
    Quasi-Newton steps from its end reach the maximum itself. The polished
    fit is kept only if its likelihood is not lower; its iterations are
    added to the count and its history to the trace, and ``converged``
    stays the first engine's verdict unless the polish itself converged.
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

    Returns
    -------
    FitResult
        The joined fit (:func:`keep_polished`).
    """
    if batch_engine is None:
        polished = mle(
            result.model, design, y, tol=tol, max_iter=max_iter, var_floor=var_floor
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
        otherwise the polished model with the traces joined, the
        iterations added, ``converged`` true if either engine converged and
        ``monotone`` from the first engine.
    """
    if polished.log_likelihood < result.log_likelihood:
        return result
    return FitResult(
        model=polished.model,
        log_likelihood=polished.log_likelihood,
        trace=np.concatenate([result.trace, polished.trace[1:]]),
        n_iter=result.n_iter + polished.n_iter,
        converged=result.converged or polished.converged,
        monotone=result.monotone,
        expert_weight=polished.expert_weight,
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
            f"The variance of expert(s) {list(at_floor)} reached the floor "
            f"{var_floor:.3g} (reg_var * Var(y)): an expert is collapsing onto a "
            "few points. Try fewer experts or a larger reg_var.",
            DegenerateFitWarning,
            stacklevel=3,
        )
