"""Machinery shared by the gates: parameters, objectives, the Fisher step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat._math import (
    array_namespace,
    fisher_direction,
    logsumexp_rows,
    pair_products,
)
from moestat.boundary import check_alpha, ridge_penalty, ridge_weights
from moestat.kernels.gates import affine_scores, fisher_scoring_m_step

__all__ = ["GateParams", "affine_design", "gate_objective", "observed_objective"]

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
    """Prepend a column of ones to ``X``: the design ``[1, x]`` of a gate.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        The gate's input.

    Returns
    -------
    ndarray of shape (n, d + 1)
        ``[1, X]``.
    """
    return np.hstack([np.ones((X.shape[0], 1)), X])


def gate_objective(resp: NDArray[np.float64], log_g: NDArray[np.float64]) -> float:
    """The gate's EM objective ``Q = sum_t sum_i r_ti log g_i(x_t)``.

    Parameters
    ----------
    resp : ndarray of shape (n, m)
        Responsibilities ``r`` (soft labels).
    log_g : ndarray of shape (n, m)
        Log gate weights ``log g_i(x_t)``.

    Returns
    -------
    float
        ``Q``, with ``0 * log 0 = 0`` (zero weights are floored at
        ``log g = -1e300``).
    """
    return float(np.einsum("ij,ij->", resp, np.maximum(log_g, _LOG_ZERO)))


def observed_objective(
    log_g: NDArray[np.float64],
    log_f: NDArray[np.float64],
    log_background: NDArray[np.float64] | None = None,
) -> float:
    """``sum_t log(sum_i g_i f_i + b_t)``: the log-likelihood as a gate sees it.

    Parameters
    ----------
    log_g : ndarray of shape (n, m)
        Log gate weights ``log g_i(x_t)``.
    log_f : ndarray of shape (n, m)
        The experts' log densities ``log f_i(y_t | x_t)``.
    log_background : ndarray of shape (n,), optional
        ``log b_t``, the density of components outside this gate (shared
        experts); None for none.

    Returns
    -------
    float
        The observed log-likelihood.
    """
    values = logsumexp_rows(log_g + log_f)
    if log_background is not None:
        values = np.logaddexp(values, log_background)
    return float(values.sum())


@dataclass(frozen=True)
class _AffineGate:
    """Machinery shared by the gates whose scores are affine in their input.

    Subclasses say which rows are free, how scores become ``log g``, and the
    score gradient and Fisher weights of the soft-label objective. With
    ``alpha > 0`` every fitting step maximises the objective minus
    :meth:`penalty` (see :mod:`moestat.boundary`).
    """

    newton_steps: int = field(default=1, kw_only=True)
    max_halvings: int = field(default=12, kw_only=True)
    bound: float | None = field(default=None, kw_only=True)
    alpha: float = field(default=0.0, kw_only=True)

    def __post_init__(self) -> None:
        check_alpha(self.alpha)

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

    def check_n_experts(self, n_experts: int, for_fit: bool = True) -> None:
        """Raise ``ValueError`` if the gate cannot route to ``n_experts``."""

    def describe(self) -> str:
        """A short label for summaries."""
        return self.name

    def random_params(
        self, n_experts: int, n_design: int, scale: float, rng: np.random.Generator
    ) -> GateParams:
        """Random parameters: ``N(0, scale^2)`` on every free row."""
        coef = rng.normal(0.0, scale, size=(n_experts, n_design))
        return self.unpack(self.pack(GateParams(coef)), n_experts, n_design)

    def expert_groups(self, n_experts: int) -> NDArray[np.intp]:
        """Group of each expert; relabelling never mixes groups."""
        return np.zeros(n_experts, dtype=np.intp)

    # -- Voronoi losses ----------------------------------------------------
    def split_atoms(self, params: GateParams, index: ArrayLike) -> GateParams:
        """Gate parameters whose expert ``i`` copies expert ``index[i]``.

        Copies of one expert share its mass (its intercept is split), so
        with expert parameters copied alike the density is unchanged: an
        over-specified layout of a smaller model (the near-truth start of
        theory.md §4.5).
        """
        index = np.asarray(index, dtype=np.intp)
        counts = np.bincount(index, minlength=params.n_experts)[index]
        coef = params.coef[index].copy()
        masses = self._mass_from_intercepts(coef[:, 0]) / counts
        coef[:, 0] = self._intercepts_from_mass(masses)
        # permute() by the identity re-anchors a gate with a reference row.
        return self.permute(GateParams(coef), np.arange(len(index)))

    def voronoi_masses(self, params: GateParams) -> NDArray[np.float64]:
        """Mass ``w_i`` of each expert in the mixing measure, shape (n_experts,).

        The weight of expert ``i``'s atom in ``G = sum_i w_i delta_{zeta_i}``
        (theory.md sections 1 and 5.2.1): a function of the gate intercept
        ``beta_0i`` alone, ``exp`` for softmax gates and ``sigma`` for the
        normalized sigmoid.
        """
        return self._mass_from_intercepts(np.asarray(params.coef[:, 0], dtype=float))

    def voronoi_slopes(self, params: GateParams) -> NDArray[np.float64]:
        """The gate's part ``beta_1i`` of each expert's atom, (n_experts, p - 1).

        The slopes on the gate's input (theory.md section 5.2.1); the
        intercept is the mass, not part of the atom.
        """
        return np.asarray(params.coef[:, 1:], dtype=float)

    def _mass_from_intercepts(self, beta0: NDArray[np.float64]) -> NDArray[np.float64]:
        raise NotImplementedError

    def _intercepts_from_mass(self, mass: NDArray[np.float64]) -> NDArray[np.float64]:
        raise NotImplementedError

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
        objective = gate_objective(resp, log_g) - self.penalty(params, Z)
        for _ in range(max_steps):
            params, log_g = self._step(params, Z, resp, log_g, features)
            new_objective = gate_objective(resp, log_g) - self.penalty(params, Z)
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
            log-likelihood with these experts. Either objective has
            :meth:`penalty` subtracted when ``alpha > 0``.
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
        ridge = self._ridge_terms(params, Z, rows)
        box = (params.coef[rows].ravel(), self.bound)
        direction, gain = fisher_direction(
            Z, features, score_grad, diag, vec, rows, **ridge, box=box
        )
        if not gain > 1e-14 * Z.shape[0]:
            # No ascent predicted (a flat objective, e.g. at the optimum).
            return params, log_g
        current = objective(log_g) - self.penalty(params, Z)
        step = 1.0
        for _ in range(self._halvings()):
            candidate = GateParams(self._project(params.coef + step * direction))
            log_g_new = self.log_weights(candidate, Z)
            if objective(log_g_new) - self.penalty(candidate, Z) >= current:
                return candidate, log_g_new
            step *= 0.5
        return params, log_g

    def _ridge_terms(self, params, Z, rows):
        """The penalty's curvature and gradient for :func:`fisher_direction`."""
        if not self.alpha:
            return {}
        weights = ridge_weights(Z, self.alpha)
        return {
            "penalty_diagonal": np.tile(weights, len(rows)),
            "penalty_gradient": -(params.coef[rows] * weights).ravel(),
        }

    def penalty(self, params: GateParams, Z: NDArray[np.float64]) -> float:
        """Ridge penalty ``(alpha / 2) sum_ij (sd_j beta_ij)^2`` of the slopes.

        Over the free rows ``i`` and the design columns ``j``, ``sd_j`` the
        column's standard deviation (0 for the intercept), so the penalty
        does not depend on the covariates' units.

        Parameters
        ----------
        params : GateParams
        Z : ndarray of shape (n, p)
            Gate design.

        Returns
        -------
        float
            0.0 when ``alpha == 0``.
        """
        if not self.alpha:
            return 0.0
        rows = self.free_rows(params.coef.shape[0])
        return ridge_penalty(params.coef[rows], ridge_weights(Z, self.alpha))

    def gradient(
        self,
        params: GateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """Gradient of ``sum r log g`` minus :meth:`penalty`, packed free rows."""
        score_grad, _, _ = self._score_gradient_and_fisher(params, Z, resp, log_weights)
        full = score_grad.T @ Z
        if self.alpha:
            full -= params.coef * ridge_weights(Z, self.alpha)
        return full[self.free_rows(params.coef.shape[0])].ravel()

    def _halvings(self) -> int:
        return self.max_halvings

    def _project(self, coef: NDArray[np.float64]) -> NDArray[np.float64]:
        """Clip the coefficients into the box ``[-bound, bound]`` (if any)."""
        if self.bound is None:
            return coef
        return np.clip(coef, -self.bound, self.bound)

    # -- the kernel on batches (numpy or torch) ----------------------------
    @property
    def runs_batched(self) -> bool:
        """Whether the batch hooks apply: without a ridge (``alpha = 0``)."""
        return not self.alpha

    def batch_log_weights(self, theta: Any, Z: Any, n_experts: int) -> Any:
        """``log g`` of a batch of data sets from packed parameters.

        Parameters
        ----------
        theta : array of shape (..., P)
            Packed parameters (:meth:`pack`'s layout).
        Z : array of shape (..., n, p)
            Gate designs.
        n_experts : int

        Returns
        -------
        array of shape (..., n, m)
        """
        coef = self._batch_coef(theta, n_experts, Z.shape[-1])
        return self._log_weights_from_scores(affine_scores(Z, coef))

    def batch_m_step(
        self,
        theta: Any,
        Z: Any,
        weight: Any,
        resp: Any,
        log_weights: Any,
        log_f: Any,
        n_experts: int,
        log_background: Any = None,
    ) -> tuple[Any, Any]:
        """:meth:`m_step` on a batch of data sets, packed.

        The kernel :func:`~moestat.kernels.gates.fisher_scoring_m_step`:
        the same direction, step halving and objective as :meth:`m_step`.

        Parameters
        ----------
        theta : array of shape (..., P)
            Current packed parameters.
        Z : array of shape (..., n, p)
            Gate designs.
        weight : array of shape (..., n)
            Sample weights, zero on padding rows.
        resp : array of shape (..., n, m)
            Responsibilities (zero on padding rows).
        log_weights : array of shape (..., n, m)
            ``log g`` at ``theta``.
        log_f : array of shape (..., n, m)
            The experts' log densities at their new parameters.
        n_experts : int
        log_background : array of shape (..., n), optional
            Log density of components outside this gate (shared experts).

        Returns
        -------
        theta : array of shape (..., P)
        log_weights : array of shape (..., n, m)
            ``log g`` at the returned parameters.

        Raises
        ------
        ValueError
            With ``alpha > 0``: the ridge's weights come from one data set's
            design, so a batch of data sets is fitted without it only.
        """
        if self.alpha:
            raise ValueError(
                f"A {type(self).__name__} with alpha > 0 is fitted one data set "
                "at a time (m_step); batch_m_step takes alpha = 0."
            )
        p = Z.shape[-1]
        return fisher_scoring_m_step(
            theta,
            Z,
            weight,
            resp,
            log_weights,
            log_f,
            log_weights=lambda t: self.batch_log_weights(t, Z, n_experts),
            fisher_weights=lambda t, r, lg: self._batch_fisher_weights(
                self._batch_coef(t, n_experts, p), Z, r, lg
            ),
            rows=self._batch_rows(n_experts),
            project=self.batch_project,
            newton_steps=self.newton_steps,
            max_halvings=self._halvings(),
            ecme=self._ecme(),
            log_background=log_background,
            bound=self.bound,
        )

    def batch_project(self, theta: Any) -> Any:
        """Packed parameters clipped into the box ``[-bound, bound]`` (if any).

        Parameters
        ----------
        theta : array of shape (..., P)

        Returns
        -------
        array of shape (..., P)
        """
        if self.bound is None:
            return theta
        xp = array_namespace(theta)
        return xp.clip(theta, min=-self.bound, max=self.bound)

    def _batch_coef(self, theta: Any, n_experts: int, n_design: int) -> Any:
        """Coefficients (..., m, p) from packed parameters (every row free)."""
        xp = array_namespace(theta)
        return xp.reshape(theta, (*theta.shape[:-1], n_experts, n_design))

    def _batch_rows(self, n_experts: int) -> slice:
        """The free rows, as a slice."""
        return slice(0, n_experts)

    def _batch_fisher_weights(self, coef, Z, resp, log_g):
        """Score gradient and Fisher weights (diag, vec) on a batch."""
        raise NotImplementedError

    def _ecme(self) -> bool:
        """Whether a step is judged by the observed log-likelihood."""
        return False

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

    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Readable names of the packed parameters, e.g. ``gate2[const]``."""
        return [
            f"gate{i + 1 + offset}[{name}]"
            for i in self.free_rows(n_experts)
            for name in design_names
        ]

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
