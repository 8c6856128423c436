"""Gating functions: the mixing weights g_i(x) of a mixture of experts.

A gate is a small stateless piece. It builds its own design from the raw
covariates, evaluates ``log g(x)`` for all experts at once as an (n, m)
array, maximises the weighted soft-label objective of EM (its M-step),
gives the gradient of that objective, and packs its free parameters for
direct likelihood maximisation. The fitting engines call only these hooks.

Notes
-----
All gates share one parameter container, :class:`GateParams`, whose
``coef`` has one row per expert: ``coef[i] = (beta_0i, beta_1i)``, the
intercept first and then one slope per column of the gate design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat._math import (
    logsumexp_rows,
    pair_products,
    solve_spd,
    unpack_symmetric,
)

__all__ = ["GateParams", "SoftmaxGate", "resolve_gate", "GATE_NAMES"]


@dataclass(frozen=True)
class GateParams:
    """Parameters of a gate.

    Parameters
    ----------
    coef : ndarray of shape (n_experts, 1 + n_gate_features)
        Row ``i`` holds ``(beta_0i, beta_1i)``: the intercept, then the
        slopes on the gate's design.
    """

    coef: NDArray[np.float64]

    @property
    def n_experts(self) -> int:
        """Number of experts the gate routes to."""
        return self.coef.shape[0]


def affine_design(X: NDArray[np.float64]) -> NDArray[np.float64]:
    """Prepend a column of ones to ``X``: the design ``[1, x]`` of the gate."""
    return np.hstack([np.ones((X.shape[0], 1)), X])


@dataclass(frozen=True)
class SoftmaxGate:
    """Softmax gate, ``g_i(x) = exp(s_i(x)) / sum_j exp(s_j(x))``.

    The score of expert ``i`` is affine in the covariates,
    ``s_i(x) = beta_0i + beta_1i^T x``. The gate is unchanged when the same
    vector is added to every row of parameters, so the first expert's
    parameters are fixed at zero (the reference expert).

    Notes
    -----
    The EM M-step maximises ``Q(beta) = sum_t sum_i r_ti log g_i(x_t)``, a
    multinomial logistic regression with soft labels ``r``. It is concave
    in the free rows; each M-step takes one Newton step (generalised EM)
    and halves it until ``Q`` does not decrease, which keeps EM monotone.

    With soft labels summing to ``rho_t`` (1 without shared experts) the
    gradient in row ``i`` is ``sum_t (r_ti - rho_t g_ti) x~_t`` and the
    Hessian blocks are ``-sum_t rho_t g_ti (delta_ij - g_tj) x~_t x~_t^T``,
    with ``x~ = (1, x)``.

    References
    ----------
    .. [1] Jordan, M. I. and Jacobs, R. A. (1994). Hierarchical mixtures of
       experts and the EM algorithm. Neural Computation 6(2), 181-214.
    """

    name: ClassVar[str] = "softmax"
    newton_steps: int = 1
    max_halvings: int = 30

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return the gate design ``[1, x]`` of shape (n, 1 + d)."""
        return affine_design(X)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the gate design's columns."""
        return ["const", *feature_names]

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Free parameters: every row but the reference expert's."""
        return (n_experts - 1) * n_design

    def fixed_rows(self, n_experts: int) -> NDArray[np.bool_]:
        """Boolean mask of the rows held at zero for identifiability."""
        mask = np.zeros(n_experts, dtype=bool)
        mask[0] = True
        return mask

    # -- density -----------------------------------------------------------
    def log_weights(
        self, params: GateParams, Z: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Return ``log g(x)`` of shape (n, n_experts)."""
        # (coef @ Z.T).T is stored experts-major, which makes the row-wise
        # log-sum-exp fast (see moestat._math.experts_major).
        scores = (params.coef @ Z.T).T
        return scores - logsumexp_rows(scores)[:, None]

    # -- fitting -----------------------------------------------------------
    def init_params(
        self, Z: NDArray[np.float64], resp: NDArray[np.float64], max_steps: int = 25
    ) -> GateParams:
        """Fit the gate to soft labels from a zero start (for initialisation)."""
        params = GateParams(np.zeros((resp.shape[1], Z.shape[1])))
        log_g = self.log_weights(params, Z)
        features = self.sufficient_features(Z)
        for _ in range(max_steps):
            new, log_g_new = self._newton(params, Z, resp, log_g, features)
            gain = np.sum(resp * (log_g_new - log_g))
            params, log_g = new, log_g_new
            if gain <= 1e-10 * Z.shape[0]:
                break
        return params

    def m_step(
        self,
        params: GateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64] | None = None,
        features: NDArray[np.float64] | None = None,
    ) -> tuple[GateParams, NDArray[np.float64]]:
        """Increase ``sum r log g`` by damped Newton steps.

        Parameters
        ----------
        params : GateParams
            Current parameters (the Newton start).
        Z : ndarray of shape (n, p)
            Gate design.
        resp : ndarray of shape (n, m)
            Responsibilities (soft labels).
        log_weights : ndarray of shape (n, m), optional
            ``log g`` at ``params`` if already known (saves one evaluation).
        features : ndarray, optional
            :meth:`sufficient_features` of ``Z``, computed once per fit.

        Returns
        -------
        params : GateParams
            Parameters whose objective is not below the start's.
        log_weights : ndarray of shape (n, m)
            ``log g`` at the returned parameters, for the next E-step.
        """
        if log_weights is None:
            log_weights = self.log_weights(params, Z)
        for _ in range(self.newton_steps):
            params, log_weights = self._newton(params, Z, resp, log_weights, features)
        return params, log_weights

    def sufficient_features(self, Z: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per-sample products ``Z_a Z_b`` (a <= b) reused by every M-step."""
        return pair_products(Z)

    def _newton(self, params, Z, resp, log_g, features=None):
        if features is None:
            features = self.sufficient_features(Z)
        direction = _softmax_newton_direction(Z, features, np.exp(log_g), resp)
        objective = np.sum(resp * log_g)
        step = 1.0
        for _ in range(self.max_halvings):
            candidate = GateParams(params.coef + step * direction)
            log_g_new = self.log_weights(candidate, Z)
            if np.sum(resp * log_g_new) >= objective:
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
        rho = resp.sum(axis=1)
        full = (resp - rho[:, None] * np.exp(log_weights)).T @ Z
        return full[1:].ravel()

    # -- parametrisation ---------------------------------------------------
    def pack(self, params: GateParams) -> NDArray[np.float64]:
        """Free parameters as a flat vector (the reference row dropped)."""
        return params.coef[1:].ravel().copy()

    def unpack(
        self, theta: NDArray[np.float64], n_experts: int, n_design: int
    ) -> GateParams:
        """Inverse of :meth:`pack`."""
        coef = np.zeros((n_experts, n_design))
        coef[1:] = theta.reshape(n_experts - 1, n_design)
        return GateParams(coef)

    def permute(self, params: GateParams, perm: ArrayLike) -> GateParams:
        """Reorder the experts and re-anchor on the new first expert."""
        coef = params.coef[np.asarray(perm)]
        return GateParams(coef - coef[0])

    def check_params(self, params: GateParams) -> None:
        """Raise ``ValueError`` unless the reference row is zero."""
        if np.any(params.coef[0] != 0):
            raise ValueError(
                "SoftmaxGate fixes the first expert's gate parameters at zero; "
                f"got coef[0] = {params.coef[0]!r}. Subtract coef[0] from every "
                "row (the gate is unchanged by this shift)."
            )


def _softmax_newton_direction(
    Z: NDArray[np.float64],
    features: NDArray[np.float64],
    g: NDArray[np.float64],
    resp: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Newton direction for the soft-label multinomial logit, free rows only.

    The information matrix has blocks
    ``sum_t w_t^{ij} x~_t x~_t^T`` with ``w^{ij} = rho g_i (delta_ij - g_j)``;
    all of them come from one product ``W.T @ features`` of the weights of
    the pairs ``i <= j`` with the per-sample products ``x~_a x~_b``.

    Returns an (m, p) array whose first (reference) row is zero.
    """
    n, p = Z.shape
    m = g.shape[1]
    rho = resp.sum(axis=1)
    rho_g = rho[:, None] * g
    grad = ((resp[:, 1:] - rho_g[:, 1:]).T @ Z).ravel()
    pairs = [(i, j) for i in range(1, m) for j in range(i, m)]
    weights = np.empty((len(pairs), n))
    for k, (i, j) in enumerate(pairs):
        np.multiply(rho_g[:, i], -g[:, j], out=weights[k])
        if i == j:
            weights[k] += rho_g[:, i]
    blocks = unpack_symmetric(weights @ features, p)
    q = (m - 1) * p
    information = np.empty((q, q))
    for k, (i, j) in enumerate(pairs):
        si = slice((i - 1) * p, i * p)
        sj = slice((j - 1) * p, j * p)
        information[si, sj] = blocks[k]
        information[sj, si] = blocks[k]
    direction = np.zeros((m, p))
    direction[1:] = solve_spd(information, grad, ridge=1e-9).reshape(m - 1, p)
    return direction


GATE_NAMES = {"softmax": SoftmaxGate}


def resolve_gate(gate: object) -> SoftmaxGate:
    """Return a gate object from a name or a gate instance.

    Parameters
    ----------
    gate : str or gate object
        ``"softmax"``, or an instance such as ``SoftmaxGate()``.

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
    if isinstance(gate, tuple(GATE_NAMES.values())):
        return gate
    raise ValueError(
        f"gate must be one of {sorted(GATE_NAMES)} or a gate object; got {gate!r}."
    )
