"""Gating functions: the mixing weights g_i(x) of a mixture of experts.

A gate is a small stateless piece. It builds its own design from the raw
covariates, evaluates ``log g(x)`` for all experts at once as an (n, m)
array, maximises the weighted soft-label objective of EM (its M-step),
gives the gradient of that objective, and packs its free parameters for
direct likelihood maximisation. The fitting engines call only these hooks.

Gates
-----
- :class:`SoftmaxGate`: ``g_i = exp(s_i) / sum_j exp(s_j)``.
- :class:`ModifiedSoftmaxGate`: the softmax of scores on a transformed
  input ``M(x)``.
- :class:`NormalizedSigmoidGate`: ``g_i = sigma(s_i) / sum_j sigma(s_j)``,
  dense or over the top-K experts.
- :class:`SharedExpertsGate`: always-active shared experts beside the
  experts routed by any of the gates above (DeepSeekMoE).

Notes
-----
The affine gates share one parameter container, :class:`GateParams`, whose
``coef`` has one row per expert: ``coef[i] = (beta_0i, beta_1i)``, the
intercept first and then one slope per column of the gate's input.

Every M-step takes damped Fisher-scoring steps on
``Q(beta) = sum_t sum_i r_ti log g_i(x_t)`` and accepts a step only if the
gate's *true* ``Q`` (top-K selection recomputed at the candidate) does not
decrease, so EM never decreases the likelihood for any gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat._math import (
    logsumexp_rows,
    pair_products,
    solve_spd,
    unpack_symmetric,
)

__all__ = [
    "GateParams",
    "SharedGateParams",
    "SoftmaxGate",
    "ModifiedSoftmaxGate",
    "NormalizedSigmoidGate",
    "SharedExpertsGate",
    "TRANSFORMS",
    "GATE_NAMES",
    "resolve_gate",
]

# Stands in for log(0) in weighted sums, where 0 * (-inf) would give NaN.
_LOG_ZERO = -1e300


@dataclass(frozen=True)
class GateParams:
    """Parameters of an affine gate.

    Parameters
    ----------
    coef : ndarray of shape (n_experts, 1 + n_gate_features)
        Row ``i`` holds ``(beta_0i, beta_1i)``: the intercept, then the
        slopes on the gate's input.
    """

    coef: NDArray[np.float64]

    @property
    def n_experts(self) -> int:
        """Number of experts the gate routes to."""
        return self.coef.shape[0]


def affine_design(X: NDArray[np.float64]) -> NDArray[np.float64]:
    """Prepend a column of ones to ``X``: the design ``[1, x]`` of a gate."""
    return np.hstack([np.ones((X.shape[0], 1)), X])


def gate_objective(resp: NDArray[np.float64], log_g: NDArray[np.float64]) -> float:
    """``sum_t sum_i r_ti log g_i(x_t)``, with ``0 * log 0 = 0``."""
    return float(np.einsum("ij,ij->", resp, np.maximum(log_g, _LOG_ZERO)))


def observed_objective(
    log_g: NDArray[np.float64],
    log_f: NDArray[np.float64],
    log_background: NDArray[np.float64] | None = None,
) -> float:
    """``sum_t log(sum_i g_i f_i + b_t)``: the log-likelihood as a gate sees it.

    ``log_background`` holds ``log b_t``, the density of components outside
    this gate (shared experts), or None.
    """
    values = logsumexp_rows(log_g + log_f)
    if log_background is not None:
        values = np.logaddexp(values, log_background)
    return float(values.sum())


def _fisher_direction(
    Z: NDArray[np.float64],
    features: NDArray[np.float64],
    score_grad: NDArray[np.float64],
    diag: NDArray[np.float64],
    vec: NDArray[np.float64],
    rows: NDArray[np.intp],
) -> NDArray[np.float64]:
    """Fisher-scoring direction for the free rows ``rows`` of a gate.

    The information is ``sum_t (diag(d_t) - v_t v_t^T) kron x~_t x~_t^T``
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


@dataclass(frozen=True)
class _AffineGate:
    """Machinery shared by the gates whose scores are affine in their input.

    Subclasses say which rows are free, how scores become ``log g``, and the
    score gradient and Fisher weights of the soft-label objective.
    """

    newton_steps: int = field(default=1, kw_only=True)
    max_halvings: int = field(default=12, kw_only=True)
    bound: float | None = field(default=None, kw_only=True)

    # -- design and counts -------------------------------------------------
    def gate_input(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The covariates the gate's scores are affine in (here ``x``)."""
        return X

    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return the gate design ``[1, input]``."""
        return affine_design(self.gate_input(X))

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the gate design's columns."""
        return ["const", *feature_names]

    def free_rows(self, n_experts: int) -> NDArray[np.intp]:
        """Indices of the rows of ``coef`` that are estimated."""
        return np.arange(n_experts)

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Length of the packed parameter vector."""
        return len(self.free_rows(n_experts)) * n_design

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """Free parameters counted by the information criteria."""
        return self.n_free_parameters(n_experts, n_design)

    def expert_groups(self, n_experts: int) -> NDArray[np.intp]:
        """Group of each expert; relabelling never mixes groups."""
        return np.zeros(n_experts, dtype=np.intp)

    # -- density -----------------------------------------------------------
    def scores(self, params: GateParams, Z: NDArray[np.float64]) -> NDArray[np.float64]:
        """Affine scores ``s_i(x)`` of shape (n, m), stored experts-major."""
        return (params.coef @ Z.T).T

    def log_weights(
        self, params: GateParams, Z: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Return ``log g(x)`` of shape (n, n_experts)."""
        return self._log_weights_from_scores(self.scores(params, Z))

    def _log_weights_from_scores(self, s):
        raise NotImplementedError

    def _score_gradient_and_fisher(self, params, Z, resp, log_g):
        """(n, m) score gradient of Q and the Fisher weights (diag, vec)."""
        raise NotImplementedError

    # -- fitting -----------------------------------------------------------
    def sufficient_features(self, Z: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per-sample products ``Z_a Z_b`` (a <= b) reused by every M-step."""
        return pair_products(Z)

    def init_params(
        self,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        max_steps: int = 10,
        tol: float = 1e-6,
    ) -> GateParams:
        """Fit the gate to soft labels from a zero start (for initialisation).

        Steps stop once ``Q`` gains less than ``tol * (|Q| + n)``.
        """
        params = GateParams(np.zeros((resp.shape[1], Z.shape[1])))
        log_g = self.log_weights(params, Z)
        features = self.sufficient_features(Z)
        objective = gate_objective(resp, log_g)
        for _ in range(max_steps):
            params, log_g = self._step(params, Z, resp, log_g, features)
            new_objective = gate_objective(resp, log_g)
            gain, objective = new_objective - objective, new_objective
            if gain <= tol * (abs(objective) + Z.shape[0]):
                break
        return params

    def m_step(
        self,
        params: GateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64] | None = None,
        features: NDArray[np.float64] | None = None,
        log_f: NDArray[np.float64] | None = None,
        log_background: NDArray[np.float64] | None = None,
    ) -> tuple[GateParams, NDArray[np.float64]]:
        """Damped Fisher-scoring steps that never decrease the objective.

        Parameters
        ----------
        params : GateParams
            Current parameters (the start).
        Z : ndarray of shape (n, p)
            Gate design.
        resp : ndarray of shape (n, m)
            Responsibilities (soft labels; rows may sum to less than one
            when shared experts take the rest); they set the direction.
        log_weights : ndarray of shape (n, m), optional
            ``log g`` at ``params`` if already known (saves one evaluation).
        features : ndarray, optional
            :meth:`sufficient_features` of ``Z``, computed once per fit.
        log_f : ndarray of shape (n, m), optional
            The experts' log densities at their new parameters. Dense gates
            ignore them and take a GEM step (``sum r log g`` must not
            decrease); a top-K gate takes an ECME step on the observed
            log-likelihood with these experts.
        log_background : ndarray of shape (n,), optional
            Log density of components outside this gate (shared experts),
            used with ``log_f``.

        Returns
        -------
        params : GateParams
            Parameters whose objective is not below the start's.
        log_weights : ndarray of shape (n, m)
            ``log g`` at the returned parameters, for the next E-step.
        """
        if log_weights is None:
            log_weights = self.log_weights(params, Z)
        if features is None:
            features = self.sufficient_features(Z)
        resp, objective = self._step_objective(resp, log_weights, log_f, log_background)
        for _ in range(self.newton_steps):
            params, log_weights = self._step(
                params, Z, resp, log_weights, features, objective
            )
        return params, log_weights

    def _step_objective(self, resp, log_g, log_f, log_background):
        """Soft labels for the direction and the objective a step must keep.

        Dense gates take GEM steps on ``sum r log g``; the experts' densities
        are not needed (see :class:`NormalizedSigmoidGate` for top-K).
        """

        def objective(log_g):
            return gate_objective(resp, log_g)

        return resp, objective

    def _step(self, params, Z, resp, log_g, features, objective=None):
        if objective is None:

            def objective(log_g):
                return gate_objective(resp, log_g)

        score_grad, diag, vec = self._score_gradient_and_fisher(params, Z, resp, log_g)
        rows = self.free_rows(params.coef.shape[0])
        direction, gain = _fisher_direction(Z, features, score_grad, diag, vec, rows)
        if not gain > 1e-14 * Z.shape[0]:
            # No ascent predicted (a flat objective, e.g. at the optimum).
            return params, log_g
        current = objective(log_g)
        step = 1.0
        for _ in range(self._halvings()):
            candidate = GateParams(self._project(params.coef + step * direction))
            log_g_new = self.log_weights(candidate, Z)
            if objective(log_g_new) >= current:
                return candidate, log_g_new
            step *= 0.5
        return params, log_g

    def gradient(
        self,
        params: GateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """Gradient of ``sum r log g`` in the packed free parameters."""
        score_grad, _, _ = self._score_gradient_and_fisher(params, Z, resp, log_weights)
        full = score_grad.T @ Z
        return full[self.free_rows(params.coef.shape[0])].ravel()

    def _halvings(self) -> int:
        return self.max_halvings

    def _project(self, coef: NDArray[np.float64]) -> NDArray[np.float64]:
        """Clip the coefficients into the box ``[-bound, bound]`` (if any)."""
        if self.bound is None:
            return coef
        return np.clip(coef, -self.bound, self.bound)

    # -- parametrisation ---------------------------------------------------
    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Lower and upper bounds of the packed parameters."""
        size = self.n_free_parameters(n_experts, n_design)
        limit = np.inf if self.bound is None else self.bound
        return np.full(size, -limit), np.full(size, limit)

    def pack(self, params: GateParams) -> NDArray[np.float64]:
        """Free parameters as a flat vector."""
        return params.coef[self.free_rows(params.coef.shape[0])].ravel().copy()

    def unpack(
        self, theta: NDArray[np.float64], n_experts: int, n_design: int
    ) -> GateParams:
        """Inverse of :meth:`pack`."""
        coef = np.zeros((n_experts, n_design))
        rows = self.free_rows(n_experts)
        coef[rows] = theta.reshape(len(rows), n_design)
        return GateParams(coef)

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Typical size of each packed parameter, from its column's scale."""
        return np.tile(column_scales, len(self.free_rows(n_experts)))

    def permute(self, params: GateParams, perm: ArrayLike) -> GateParams:
        """Reorder the experts."""
        return GateParams(params.coef[np.asarray(perm)])

    def check_params(self, params: Any, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this gate."""
        if not isinstance(params, GateParams):
            raise ValueError(
                f"{type(self).__name__} needs GateParams; got {type(params).__name__}."
            )
        if params.coef.shape != (n_experts, n_design):
            raise ValueError(
                f"init: the gate coef has shape {params.coef.shape}, expected "
                f"{(n_experts, n_design)}."
            )


@dataclass(frozen=True)
class SoftmaxGate(_AffineGate):
    """Softmax gate, ``g_i(x) = exp(s_i(x)) / sum_j exp(s_j(x))``.

    The score of expert ``i`` is affine in the covariates,
    ``s_i(x) = beta_0i + beta_1i^T x``. The gate is unchanged when the same
    vector is added to every row of parameters, so the first expert's
    parameters are fixed at zero (the reference expert).

    Parameters
    ----------
    newton_steps : int, default=1
        Newton steps per M-step (one gives generalised EM).
    max_halvings : int, default=12
        Step halvings before a step is given up (the last tries 1/4096 of
        the Fisher step).

    Notes
    -----
    The EM M-step maximises ``Q(beta) = sum_t sum_i r_ti log g_i(x_t)``, a
    multinomial logistic regression with soft labels ``r``. It is concave
    in the free rows, and Fisher scoring is Newton's method here. With soft
    labels summing to ``rho_t`` (1 without shared experts) the gradient in
    row ``i`` is ``sum_t (r_ti - rho_t g_ti) x~_t`` and the Hessian blocks
    are ``-sum_t rho_t g_ti (delta_ij - g_tj) x~_t x~_t^T``, ``x~ = (1, x)``.

    References
    ----------
    .. [1] Jordan, M. I. and Jacobs, R. A. (1994). Hierarchical mixtures of
       experts and the EM algorithm. Neural Computation 6(2), 181-214.
    """

    name: ClassVar[str] = "softmax"

    def free_rows(self, n_experts: int) -> NDArray[np.intp]:
        """Every row but the first (the reference expert, fixed at zero)."""
        return np.arange(1, n_experts)

    def _log_weights_from_scores(self, s):
        return s - logsumexp_rows(s)[:, None]

    def _score_gradient_and_fisher(self, params, Z, resp, log_g):
        g = np.exp(log_g)
        rho = resp.sum(axis=1)
        rho_g = rho[:, None] * g
        return resp - rho_g, rho_g, np.sqrt(rho)[:, None] * g

    def permute(self, params: GateParams, perm: ArrayLike) -> GateParams:
        """Reorder the experts and re-anchor on the new first expert."""
        coef = params.coef[np.asarray(perm)]
        return GateParams(coef - coef[0])

    def check_params(self, params: Any, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless the shapes fit and the reference row is 0."""
        super().check_params(params, n_experts, n_design)
        if np.any(params.coef[0] != 0):
            raise ValueError(
                f"{type(self).__name__} fixes the first expert's gate parameters "
                f"at zero; got coef[0] = {params.coef[0]!r}. Subtract coef[0] "
                "from every row (the gate is unchanged by this shift)."
            )


def _logistic(X: NDArray[np.float64]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * X))


TRANSFORMS: dict[str, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
    "identity": lambda X: X,
    "tanh": np.tanh,
    "sigmoid": _logistic,
}


@dataclass(frozen=True)
class ModifiedSoftmaxGate(SoftmaxGate):
    """Softmax gate on a transformed input, ``softmax(beta_1^T M(x) + beta_0)``.

    The experts still see the raw ``x``; only the gate's scores are affine in
    ``M(x)``. With a bounded, non-affine ``M`` the interaction between gate
    and expert parameters that slows softmax gating (``d/d beta_1`` bringing
    down ``x``) is broken.

    Parameters
    ----------
    transform : {"tanh", "sigmoid", "identity"} or callable, default="tanh"
        ``M``, applied to the (n, d) covariates; a callable must return a
        finite (n, d') array. ``"identity"`` gives the plain softmax gate
        exactly.
    newton_steps, max_halvings : int
        As for :class:`SoftmaxGate`.

    Notes
    -----
    The conditions on ``M`` (bounded, and products ``M(x)^a x^b`` linearly
    independent) follow our reading of Nguyen, Akbarian, Nguyen and Ho
    (ICML 2024), whose full text we could not check; treat them as a
    proposal.

    References
    ----------
    .. [1] Nguyen, H., Akbarian, P., Nguyen, T. and Ho, N. (2024). A general
       theory for softmax gating multinomial logistic mixture of experts.
       ICML 2024, arXiv:2310.14188.
    """

    name: ClassVar[str] = "modified_softmax"
    transform: str | Callable[[NDArray[np.float64]], NDArray[np.float64]] = "tanh"

    def __post_init__(self) -> None:
        if isinstance(self.transform, str):
            if self.transform not in TRANSFORMS:
                raise ValueError(
                    f"Unknown transform {self.transform!r}; choose one of "
                    f"{sorted(TRANSFORMS)} or pass a callable (n, d) -> (n, d')."
                )
        elif not callable(self.transform):
            raise ValueError(
                "transform must be a name or a callable mapping the (n, d) "
                f"covariates to an (n, d') array; got {self.transform!r}."
            )

    def gate_input(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """``M(x)``, checked for shape and finiteness."""
        fn = (
            TRANSFORMS[self.transform]
            if isinstance(self.transform, str)
            else self.transform
        )
        out = np.asarray(fn(X), dtype=float)
        if out.ndim != 2 or out.shape[0] != X.shape[0]:
            raise ValueError(
                f"The gate transform must map the ({X.shape[0]}, {X.shape[1]}) "
                f"covariates to a 2-D array with {X.shape[0]} rows; it returned "
                f"shape {out.shape}."
            )
        if not np.all(np.isfinite(out)):
            raise ValueError(
                "The gate transform returned non-finite values (NaN or inf); "
                "use a bounded transform such as 'tanh' or 'sigmoid'."
            )
        return out

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names ``M(x)`` of the gate design's columns."""
        if self.transform == "identity":
            return ["const", *feature_names]
        label = self.transform if isinstance(self.transform, str) else "M"
        width = self.gate_input(np.zeros((1, len(feature_names)))).shape[1]
        if width == len(feature_names):
            return ["const", *(f"{label}({f})" for f in feature_names)]
        return ["const", *(f"{label}(x)[{j}]" for j in range(width))]


@dataclass(frozen=True)
class NormalizedSigmoidGate(_AffineGate):
    """Normalized sigmoid gate, ``g_i(x) = sigma(s_i) / sum_j sigma(s_j)``.

    As in DeepSeek-V3, each expert's affinity is a sigmoid of an affine
    score, normalised to sum to one over all experts, or over the ``top_k``
    experts with the largest scores (the others get weight zero).

    Parameters
    ----------
    top_k : int or None, default=None
        Route each input to its ``top_k`` highest-scoring experts only
        (``top_k >= 2`` to fit one; ``top_k=1`` serves for sampling).
    bound : float or None, default=20.0
        Box ``|beta| <= bound`` on every gate coefficient (the compact
        parameter space the theory assumes); it keeps the fit away from the
        gate's flat directions (below). Scale the covariates (e.g. with
        ``StandardScaler``) so that the box is wide, or raise it.
    newton_steps, max_halvings : int
        As for :class:`SoftmaxGate`.

    Notes
    -----
    **Identifiability.** Unlike softmax the gate is not translation
    invariant, so every expert's parameters are free (``m (d + 1)``
    parameters). It has near-flat directions instead: when every score is
    very negative, ``sigma(s) ~ exp(s)`` and the gate behaves like a
    softmax, invariant to a common shift. With one expert the gate is
    constant and has no free parameter for the information criteria. The
    softmax-like limit can represent many of the gate's own functions, so
    without a bound the likelihood can drift to it along an almost flat
    path (coefficients in the hundreds that fit no better); the default box
    is our choice, following the compactness assumption of the theory.

    **M-step.** ``Q`` is not concave. Its score gradient is
    ``a_i (r_i - rho g_i)`` with ``a = 1 - sigma(s)``, and its negative
    Hessian in the scores is
    ``rho [diag(g a^2) - (g a)(g a)^T] + diag(sigma a (r - rho g))``. The
    step uses that matrix with ``|r - rho g|`` in the last term: positive
    semi-definite (so the direction is an ascent direction) and never below
    the observed curvature; it is halved until the true ``Q`` does not
    decrease.

    **Top-K.** The selection is not differentiable. Within an M-step the
    direction is computed with the selection of the current parameters held
    fixed (gradients flow through the selected scores only). A step is
    accepted only if the observed log-likelihood, with the experts' new
    parameters and the selection recomputed at the candidate, does not
    decrease (an ECME step): the soft-label objective could never bring an
    expert into a sample's selection, since its responsibility there is
    zero. The likelihood still never decreases. It is, however,
    discontinuous in the gate parameters: where a sample's selection
    changes, its density jumps from one expert's to another's. Ascent can
    therefore stall at such a jump a little below a maximum, and top-K fits
    have more local maxima than dense ones (the line search stops after 3
    halvings here). This procedure is our proposal: the theory analyses
    the estimator, not an algorithm. Direct MLE uses
    the same gradient, which is the gradient wherever the selection is
    locally constant (almost everywhere). Ties in the scores are broken by
    expert order.

    References
    ----------
    .. [1] Nguyen, H., Doan, T. T., Pham, Q., Bui, N. D. Q., Ho, N. and
       Rinaldo, A. (2025). On DeepSeekMoE: statistical benefits of shared
       experts and normalized sigmoid gating. arXiv:2505.10860.
    """

    name: ClassVar[str] = "normalized_sigmoid"
    top_k: int | None = None
    bound: float | None = field(default=20.0, kw_only=True)

    def __post_init__(self) -> None:
        if self.top_k is not None and (
            isinstance(self.top_k, bool)
            or not isinstance(self.top_k, int | np.integer)
            or self.top_k < 1
        ):
            raise ValueError(
                f"top_k must be None or a positive int; got {self.top_k!r}."
            )

    def check_n_experts(self, n_experts: int, for_fit: bool = True) -> None:
        """Raise ``ValueError`` unless ``2 <= top_k <= n_experts``.

        ``top_k=1`` is refused only for a fit (``for_fit=True``).
        """
        if self.top_k is not None and self.top_k > n_experts:
            raise ValueError(
                f"top_k={self.top_k} is out of range for {n_experts} routed "
                f"experts; use 2 <= top_k <= {n_experts}."
            )
        if for_fit and self.top_k == 1 and n_experts > 1:
            raise ValueError(
                "top_k=1 cannot be fitted: every gate weight is then 0 or 1, so "
                "the likelihood is piecewise constant in the gate parameters "
                "and gives them no gradient. Use top_k >= 2."
            )

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """``m (d + 1)``; zero for a single expert (the gate is then 1)."""
        return 0 if n_experts == 1 else n_experts * n_design

    def selection(self, s: NDArray[np.float64]) -> NDArray[np.bool_] | None:
        """Mask of the ``top_k`` highest scores per row (None when dense)."""
        m = s.shape[1]
        if self.top_k is None or self.top_k >= m:
            return None
        kth = np.partition(s, m - self.top_k, axis=1)[:, m - self.top_k]
        mask = s >= kth[:, None]
        tied = mask.sum(axis=1) != self.top_k
        if tied.any():
            # ties at the threshold: a stable sort keeps the first experts
            order = np.argsort(-s[tied], axis=1, kind="stable")[:, : self.top_k]
            rows = np.zeros((tied.sum(), m), dtype=bool)
            np.put_along_axis(rows, order, True, axis=1)
            mask[tied] = rows
        return mask

    def _step_objective(self, resp, log_g, log_f, log_background):
        """Top-K: an ECME step on the observed log-likelihood.

        With a selection, ``sum r log g`` forbids bringing an expert into a
        sample's selection (its responsibility there is zero), so the step
        is judged by the log-likelihood with the experts' new densities,
        and its direction uses the responsibilities recomputed at them.
        """
        if self.top_k is None or log_f is None:
            return super()._step_objective(resp, log_g, log_f, log_background)
        joint = log_g + log_f
        total = logsumexp_rows(joint)
        if log_background is not None:
            total = np.logaddexp(total, log_background)
        fresh = np.exp(joint - total[:, None])

        def objective(log_g_new):
            return observed_objective(log_g_new, log_f, log_background)

        return fresh, objective

    def _halvings(self) -> int:
        # With a selection the likelihood jumps where a sample changes
        # experts, so a direction that fails at a quarter step rarely
        # succeeds at a smaller one: stop the line search early.
        return self.max_halvings if self.top_k is None else min(self.max_halvings, 3)

    def _log_weights_from_scores(self, s):
        log_sigma = np.minimum(s, 0.0) - np.log1p(np.exp(-np.abs(s)))
        mask = self.selection(s)
        if mask is not None:
            log_sigma[~mask] = -np.inf
        return log_sigma - logsumexp_rows(log_sigma)[:, None]

    def _score_gradient_and_fisher(self, params, Z, resp, log_g):
        # In-place arithmetic on (n, m) arrays: this runs at every M-step.
        a = self.scores(params, Z)
        with np.errstate(over="ignore"):
            np.exp(a, out=a)
        a += 1.0
        np.reciprocal(a, out=a)  # a = 1 - sigma(s) = 1 / (1 + exp(s))
        g = np.exp(log_g)  # zero outside the top-K selection
        rho = resp.sum(axis=1)[:, None]
        excess = np.multiply(g, rho)
        np.subtract(resp, excess, out=excess)  # r - rho g
        score_grad = excess * a
        # Expected information plus |sigma a (r - rho g)| on the diagonal: a
        # positive semi-definite matrix that dominates the observed one, so a
        # full step rarely overshoots.
        ga = np.multiply(g, a, out=g)
        diag = np.abs(score_grad)
        diag *= 1.0 - a
        diag += ga * a * rho
        return score_grad, diag, ga * np.sqrt(rho)


@dataclass(frozen=True)
class SharedGateParams:
    """Parameters of the shared-expert arrangement.

    Parameters
    ----------
    routed : GateParams
        Parameters of the gate over the routed experts.
    shared_weights : ndarray of shape (n_shared,)
        ``omega``: positive weights of the shared experts, summing to one.
    shared_share : float
        Total weight of the shared block (``1/2`` in DeepSeekMoE).
    """

    routed: GateParams
    shared_weights: NDArray[np.float64]
    shared_share: float = 0.5

    @property
    def n_experts(self) -> int:
        """Number of experts, shared and routed."""
        return len(self.shared_weights) + self.routed.n_experts

    @property
    def coef(self) -> NDArray[np.float64]:
        """The routed gate's coefficients."""
        return self.routed.coef


@dataclass(frozen=True)
class SharedExpertsGate:
    """Always-active shared experts beside routed experts (DeepSeekMoE).

    ``p(y | x) = lambda sum_i omega_i f(y | x; kappa_i)
    + (1 - lambda) sum_j g_j(x) f(y | x; eta_j)``: the ``n_shared``
    shared experts (listed first) get constant weights ``omega`` that do not
    depend on x; the routed experts are mixed by any other gate.

    Parameters
    ----------
    routed : gate object
        The gate over the routed experts (softmax, modified softmax,
        normalized sigmoid with or without top-K).
    n_shared : int
        Number of shared experts (at least 1).
    shared_weight : {"fixed_half", "learned"}, default="fixed_half"
        ``lambda = 1/2`` as in DeepSeekMoE, or estimated.

    Notes
    -----
    M-step: the routed gate takes its own step on the routed
    responsibilities (whose rows sum to ``rho_t < 1``), and
    ``omega_i = sum_t r_ti / sum_{shared} sum_t r_ti`` exactly; a learned
    ``lambda`` is the mean shared responsibility. The learned split is our
    extension, outside the DeepSeekMoE analysis.
    """

    routed: Any
    n_shared: int
    shared_weight: str = "fixed_half"
    name: ClassVar[str] = "shared"

    def __post_init__(self) -> None:
        if isinstance(self.n_shared, bool) or not isinstance(
            self.n_shared, int | np.integer
        ):
            raise ValueError(f"n_shared must be an int; got {self.n_shared!r}.")
        if self.n_shared < 1:
            raise ValueError(
                f"n_shared must be at least 1; got {self.n_shared}. Use the "
                "routed gate alone for no shared experts."
            )
        if self.shared_weight not in ("fixed_half", "learned"):
            raise ValueError(
                "shared_weight must be 'fixed_half' or 'learned'; got "
                f"{self.shared_weight!r}."
            )

    @property
    def learned(self) -> bool:
        """Whether the split between the blocks is estimated."""
        return self.shared_weight == "learned"

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The routed gate's design."""
        return self.routed.design(X)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """The routed gate's design names."""
        return self.routed.design_names(feature_names)

    def n_routed(self, n_experts: int) -> int:
        """Routed experts among ``n_experts`` in all."""
        return n_experts - self.n_shared

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Routed gate, ``n_shared - 1`` weights, and ``lambda`` if learned."""
        routed = self.routed.n_free_parameters(self.n_routed(n_experts), n_design)
        return routed + self.n_shared - 1 + int(self.learned)

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """Free parameters counted by the information criteria."""
        routed = self.routed.degrees_of_freedom(self.n_routed(n_experts), n_design)
        return routed + self.n_shared - 1 + int(self.learned)

    def expert_groups(self, n_experts: int) -> NDArray[np.intp]:
        """Shared experts form group 0, routed experts group 1."""
        return np.repeat([0, 1], [self.n_shared, self.n_routed(n_experts)])

    def check_n_experts(self, n_experts: int, for_fit: bool = True) -> None:
        """Check the routed gate against the number of routed experts."""
        check = getattr(self.routed, "check_n_experts", None)
        if check is not None:
            check(self.n_routed(n_experts), for_fit)

    # -- density -----------------------------------------------------------
    def log_weights(
        self, params: SharedGateParams, Z: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """``log(lambda omega_i)`` for shared, ``log((1 - lambda) g_j)`` routed."""
        routed = self.routed.log_weights(params.routed, Z)
        return self._assemble(routed, params.shared_weights, params.shared_share)

    def _assemble(self, routed_log, omega, share):
        out = np.empty((routed_log.shape[0], self.n_shared + routed_log.shape[1]))
        out = np.asfortranarray(out)
        out[:, : self.n_shared] = np.log(share) + np.log(omega)
        out[:, self.n_shared :] = np.log1p(-share) + routed_log
        return out

    # -- fitting -----------------------------------------------------------
    def sufficient_features(self, Z: NDArray[np.float64]) -> NDArray[np.float64]:
        """The routed gate's features."""
        return self.routed.sufficient_features(Z)

    def _closed_form(self, resp):
        shared_mass = resp[:, : self.n_shared].sum(axis=0)
        omega = shared_mass / shared_mass.sum()
        omega = np.maximum(omega, 1e-300)
        share = float(shared_mass.sum() / resp.shape[0]) if self.learned else 0.5
        return omega / omega.sum(), float(np.clip(share, 1e-12, 1 - 1e-12))

    def init_params(
        self, Z: NDArray[np.float64], resp: NDArray[np.float64]
    ) -> SharedGateParams:
        """Routed gate fitted to the routed labels; closed-form weights."""
        routed = resp[:, self.n_shared :]
        routed = routed / np.maximum(routed.sum(axis=1, keepdims=True), 1e-300)
        omega, share = self._closed_form(resp)
        return SharedGateParams(self.routed.init_params(Z, routed), omega, share)

    def m_step(
        self,
        params: SharedGateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64] | None = None,
        features: NDArray[np.float64] | None = None,
        log_f: NDArray[np.float64] | None = None,
        log_background: NDArray[np.float64] | None = None,
    ) -> tuple[SharedGateParams, NDArray[np.float64]]:
        """Exact shared weights from ``resp``, then the routed gate's step.

        With ``log_f`` the routed step is judged by the observed
        log-likelihood, the shared experts entering as its background.
        """
        k1 = self.n_shared
        omega, share = self._closed_form(resp)
        routed_log = None
        if log_weights is not None:
            routed_log = log_weights[:, k1:] - np.log1p(-params.shared_share)
        routed_log_f = background = None
        if log_f is not None:
            routed_log_f = log_f[:, k1:] + np.log1p(-share)
            shared_terms = log_f[:, :k1] + (np.log(share) + np.log(omega))
            background = (
                shared_terms[:, 0]
                if k1 == 1
                else logsumexp_rows(np.asfortranarray(shared_terms))
            )
        routed, routed_log = self.routed.m_step(
            params.routed,
            Z,
            resp[:, k1:],
            routed_log,
            features,
            routed_log_f,
            background,
        )
        new = SharedGateParams(routed, omega, share)
        return new, self._assemble(routed_log, omega, share)

    def gradient(
        self,
        params: SharedGateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """Gradient in (routed gate, omega logits, logit lambda)."""
        routed_log = log_weights[:, self.n_shared :] - np.log1p(-params.shared_share)
        routed = self.routed.gradient(
            params.routed, Z, resp[:, self.n_shared :], routed_log
        )
        shared_resp = resp[:, : self.n_shared].sum(axis=0)
        omega_grad = shared_resp - shared_resp.sum() * params.shared_weights
        parts = [routed, omega_grad[1:]]
        if self.learned:
            total_shared = shared_resp.sum()
            parts.append([total_shared - resp.shape[0] * params.shared_share])
        return np.concatenate(parts)

    # -- parametrisation ---------------------------------------------------
    def pack(self, params: SharedGateParams) -> NDArray[np.float64]:
        """Routed gate, then ``log(omega_i / omega_0)``, then ``logit lambda``."""
        logits = np.log(params.shared_weights[1:] / params.shared_weights[0])
        parts = [self.routed.pack(params.routed), logits]
        if self.learned:
            share = params.shared_share
            parts.append([np.log(share / (1 - share))])
        return np.concatenate(parts)

    def unpack(
        self, theta: NDArray[np.float64], n_experts: int, n_design: int
    ) -> SharedGateParams:
        """Inverse of :meth:`pack`."""
        n_routed = self.n_routed(n_experts)
        k = self.routed.n_free_parameters(n_routed, n_design)
        routed = self.routed.unpack(theta[:k], n_routed, n_design)
        logits = np.concatenate([[0.0], theta[k : k + self.n_shared - 1]])
        omega = np.exp(logits - logsumexp_rows(logits[None, :])[0])
        share = 0.5
        if self.learned:
            share = float(_logistic(theta[k + self.n_shared - 1]))
        return SharedGateParams(routed, omega, share)

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Routed gate's scales, then 1 for the weights."""
        routed = self.routed.pack_scales(column_scales, self.n_routed(n_experts))
        return np.concatenate([routed, np.ones(self.n_shared - 1 + int(self.learned))])

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The routed gate's bounds; the weights are unbounded."""
        lo, hi = self.routed.pack_bounds(self.n_routed(n_experts), n_design)
        extra = np.full(self.n_shared - 1 + int(self.learned), np.inf)
        return np.concatenate([lo, -extra]), np.concatenate([hi, extra])

    def permute(self, params: SharedGateParams, perm: ArrayLike) -> SharedGateParams:
        """Reorder experts within the shared and the routed block."""
        perm = np.asarray(perm)
        k1 = self.n_shared
        if not np.array_equal(np.sort(perm[:k1]), np.arange(k1)):
            raise ValueError(
                "A permutation must keep the shared experts (the first "
                f"{k1}) among themselves; got {perm.tolist()}."
            )
        routed = self.routed.permute(params.routed, perm[k1:] - k1)
        return SharedGateParams(
            routed, params.shared_weights[perm[:k1]], params.shared_share
        )

    def check_params(self, params: Any, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this arrangement."""
        if not isinstance(params, SharedGateParams):
            raise ValueError(
                f"SharedExpertsGate needs SharedGateParams; got "
                f"{type(params).__name__}."
            )
        if len(params.shared_weights) != self.n_shared:
            raise ValueError(
                f"init: {len(params.shared_weights)} shared weights for "
                f"{self.n_shared} shared experts."
            )
        if not np.isclose(params.shared_weights.sum(), 1.0) or np.any(
            params.shared_weights <= 0
        ):
            raise ValueError("init: shared weights must be positive and sum to 1.")
        self.routed.check_params(params.routed, self.n_routed(n_experts), n_design)


GATE_NAMES: dict[str, type] = {
    "softmax": SoftmaxGate,
    "modified_softmax": ModifiedSoftmaxGate,
    "normalized_sigmoid": NormalizedSigmoidGate,
}
GATE_TYPES = (SoftmaxGate, NormalizedSigmoidGate, SharedExpertsGate)


def resolve_gate(gate: object) -> Any:
    """Return a gate object from a name or a gate instance.

    Parameters
    ----------
    gate : str or gate object
        ``"softmax"``, ``"modified_softmax"`` (the ``tanh`` transform),
        ``"normalized_sigmoid"``, or an instance such as
        ``NormalizedSigmoidGate(top_k=2)``.

    Raises
    ------
    ValueError
        For an unknown name or an object that is not a gate.
    """
    if isinstance(gate, str):
        if gate not in GATE_NAMES:
            raise ValueError(
                f"Unknown gate {gate!r}; choose one of {sorted(GATE_NAMES)} "
                "or pass a gate object such as moestat.SoftmaxGate()."
            )
        return GATE_NAMES[gate]()
    if isinstance(gate, GATE_TYPES):
        return gate
    raise ValueError(
        f"gate must be one of {sorted(GATE_NAMES)} or a gate object; got {gate!r}."
    )


def with_shared_experts(
    gate: Any, n_shared_experts: int, shared_weight: str = "fixed_half"
) -> Any:
    """The gate with ``n_shared_experts`` shared experts added (0: unchanged)."""
    if n_shared_experts == 0:
        return gate
    return SharedExpertsGate(gate, n_shared_experts, shared_weight)
