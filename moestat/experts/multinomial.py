"""Multinomial logistic experts: classification with K classes.

``f(y = c | x; A_i) = exp(a_ic^T phi(x)) / sum_l exp(a_il^T phi(x))`` with the
first class as reference (``a_i1 = 0``), so each expert has
``(K - 1) p`` free coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from moestat._math import array_namespace, fisher_direction
from moestat.boundary import check_alpha, ridge_penalty, ridge_weights
from moestat.experts._base import CoefficientExpert
from moestat.kernels.experts import (
    multinomial_fisher_step,
    multinomial_log_density,
    multinomial_log_probabilities,
)

__all__ = ["MultinomialLogisticExpert", "MultinomialExpertParams"]


@dataclass(frozen=True)
class MultinomialExpertParams:
    """Parameters of multinomial logistic experts.

    Parameters
    ----------
    coef : ndarray of shape (n_experts, n_classes - 1, n_basis)
        ``coef[i, c - 1]`` holds expert ``i``'s coefficients of class ``c``
        (classes ``1 .. K-1``; class 0 is the reference, fixed at zero).
    """

    coef: NDArray[np.float64]

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return self.coef.shape[0]


@dataclass(frozen=True)
class MultinomialLogisticExpert(CoefficientExpert):
    """Multinomial logit experts over ``n_classes`` classes.

    Parameters
    ----------
    n_classes : int
        Number of classes ``K`` (at least 2); responses are the codes
        ``0 .. K-1``.
    degree : int, default=1
        Order of the polynomial basis of the class scores.
    newton_steps : int, default=1
        Newton steps per M-step (generalised EM); initial fits take up to 25.
    max_halvings : int, default=12
        Step halvings before a Newton step is given up.
    alpha : float, default=0.0
        Ridge penalty ``(alpha / 2) sum_icj (sd_j a_icj)^2`` on the free
        class slopes, ``sd_j`` the spread of basis column ``j`` (unit-free;
        intercepts are not penalised). Fits maximise the log-likelihood
        minus it; ``alpha > 0`` keeps the coefficients finite when an
        expert's classes are separated (see :mod:`moestat.boundary`).

    Notes
    -----
    M-step: for each expert a multinomial logistic regression of the one-hot
    classes with prior weights ``r_i``, by Newton's method: gradient
    ``sum_t r_ti (e_y - p_t)_{1:K-1} kron phi_t``, Hessian
    ``-sum_t r_ti (diag(p_t) - p_t p_t^T)_{1:K-1} kron phi_t phi_t^T``
    (theory.md; the responsibilities weigh the one-hot labels, never replace
    them). A tiny ridge in the solve keeps the step finite under separation,
    where the maximum is at infinity: the coefficients then grow as EM runs,
    every quantity finite, until the engines find them walking out
    (:mod:`moestat.boundary`); ``alpha > 0`` keeps them finite.
    """

    name: ClassVar[str] = "multinomial"
    #: The response's distribution, read by the density losses.
    response_family: ClassVar[str | None] = "categorical"
    #: The Voronoi loss catalogue's name for the atoms.
    voronoi_signature: ClassVar[str | None] = "multinomial"
    params_type: ClassVar[type] = MultinomialExpertParams
    n_classes: int = 2
    degree: int = 1
    newton_steps: int = field(default=1, kw_only=True)
    max_halvings: int = field(default=12, kw_only=True)
    alpha: float = field(default=0.0, kw_only=True)

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if not isinstance(self.n_classes, int | np.integer) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2; got {self.n_classes!r}.")

    # -- design and counts -------------------------------------------------
    def check_response(self, y: NDArray[np.float64]) -> None:
        """Raise ``ValueError`` unless ``y`` holds class codes ``0 .. K-1``."""
        if np.any(y != np.round(y)) or np.any((y < 0) | (y >= self.n_classes)):
            raise ValueError(
                f"Multinomial experts need class codes 0 .. {self.n_classes - 1}; "
                "encode the labels first (MultinomialLogisticMoE does)."
            )

    def coef_shape(self, n_experts: int, n_design: int) -> tuple[int, ...]:
        """Shape of the coefficient array."""
        return (n_experts, self.n_classes - 1, n_design)

    # -- density -----------------------------------------------------------
    def _class_major_log_probabilities(self, coef, Phi):
        """``log p(c | x)`` stored class-major, shape (K, n) + coef.shape[:-2].

        ``coef`` is (..., K-1, p). Reductions over the K classes then run as
        element-wise operations over contiguous blocks, not as many tiny
        reductions over a short last axis.
        """
        k1, p = coef.shape[-2:]
        lead = coef.shape[:-2]
        flat = coef.reshape(-1, p) @ Phi.T  # (prod(lead) * (K-1), n)
        scores = np.zeros((k1 + 1, Phi.shape[0], *lead))
        scores[1:] = np.moveaxis(flat.reshape(*lead, k1, -1), [-2, -1], [0, 1])
        top = scores.max(axis=0)
        shifted = scores - top
        norm = np.log(np.exp(shifted).sum(axis=0))
        shifted -= norm
        return shifted

    def class_log_probabilities(
        self, params: MultinomialExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """``log p_i(c | x)`` of shape (n, n_experts, n_classes)."""
        log_probs = self._class_major_log_probabilities(params.coef, Phi)
        return np.moveaxis(log_probs, 0, -1)

    def class_probabilities(
        self, params: MultinomialExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """``p_i(c | x)`` of shape (n, n_experts, n_classes)."""
        return np.exp(self.class_log_probabilities(params, Phi))

    def mean(
        self, params: MultinomialExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Each expert's expected class code ``sum_c c p_i(c | x)``, (n, m)."""
        probs = self.class_probabilities(params, Phi)
        return np.asfortranarray(probs @ np.arange(self.n_classes, dtype=float))

    def log_density(
        self,
        params: MultinomialExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """``log p_i(y_t | x_t)`` of shape (n, n_experts)."""
        log_probs = self._class_major_log_probabilities(params.coef, Phi)
        codes = y.astype(np.intp)
        out = np.empty(log_probs.shape[1:], order="F")
        for c in range(self.n_classes):
            rows = codes == c
            out[rows] = log_probs[c, rows]
        return out

    def sample(
        self,
        params: MultinomialExpertParams,
        Phi: NDArray[np.float64],
        labels: NDArray[np.intp],
        rng: np.random.Generator,
    ) -> NDArray[np.float64]:
        """Draw a class code for each row from expert ``labels[t]``."""
        probs = self.class_probabilities(params, Phi)[np.arange(Phi.shape[0]), labels]
        cumulative = np.cumsum(probs, axis=1)
        u = rng.random(Phi.shape[0]) * cumulative[:, -1]
        codes = (cumulative < u[:, None]).sum(axis=1)
        return np.minimum(codes, self.n_classes - 1).astype(float)

    # -- fitting -----------------------------------------------------------
    def _objective(self, coef, Phi, codes, weights, log_probs=None):
        if log_probs is None:
            log_probs = self._class_major_log_probabilities(coef, Phi)
        value = float(weights @ log_probs[codes, np.arange(len(codes))])
        if self.alpha:
            value -= ridge_penalty(coef, ridge_weights(Phi, self.alpha))
        return value

    def _newton_one(self, coef, Phi, codes, one_hot, weights, features):
        """One damped Newton step for one expert's (K-1, p) coefficients."""
        log_probs = self._class_major_log_probabilities(coef, Phi)
        current = self._objective(coef, Phi, codes, weights, log_probs)
        probs = np.asfortranarray(np.exp(log_probs).T)  # (n, K), classes contiguous
        score_grad = weights[:, None] * (one_hot - probs)
        diag = weights[:, None] * probs
        vec = np.sqrt(weights)[:, None] * probs
        rows = np.arange(1, self.n_classes)
        ridge = {}
        if self.alpha:
            penalty = ridge_weights(Phi, self.alpha)
            ridge = {
                "penalty_diagonal": np.tile(penalty, len(rows)),
                "penalty_gradient": -(coef * penalty).ravel(),
            }
        direction, gain = fisher_direction(
            Phi, features, score_grad, diag, vec, rows, **ridge
        )
        if not gain > 0:
            return coef
        step = 1.0
        for _ in range(self.max_halvings):
            candidate = coef + step * direction[1:]
            if self._objective(candidate, Phi, codes, weights) >= current:
                return candidate
            step *= 0.5
        return coef

    def m_step(
        self,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float = 0.0,
        previous: MultinomialExpertParams | None = None,
        features: NDArray[np.float64] | None = None,
    ) -> MultinomialExpertParams:
        """Weighted multinomial logit for every expert (Newton, damped).

        Parameters
        ----------
        Phi : ndarray of shape (n, p)
            Expert design.
        y : ndarray of shape (n,)
            Class codes ``0 .. K-1``.
        resp : ndarray of shape (n, m)
            Responsibilities: the prior weights of each expert's fit.
        var_floor : float
            Ignored; kept for the common signature.
        previous : MultinomialExpertParams, optional
            Start of the Newton steps; without it, up to 25 steps from zero.
        features : ndarray, optional
            :meth:`sufficient_features` of ``(Phi, y)``.

        Returns
        -------
        MultinomialExpertParams
        """
        if features is None:
            features = self.sufficient_features(Phi, y)
        m, p = resp.shape[1], Phi.shape[1]
        codes = y.astype(np.intp)
        one_hot = np.asfortranarray(np.eye(self.n_classes)[codes])
        if previous is None:
            coef, steps = np.zeros((m, self.n_classes - 1, p)), 25
        else:
            coef, steps = previous.coef.copy(), self.newton_steps
        for i in range(m):
            weights = np.ascontiguousarray(resp[:, i])
            for _ in range(steps):
                coef[i] = self._newton_one(
                    coef[i], Phi, codes, one_hot, weights, features
                )
        return MultinomialExpertParams(coef)

    # -- the kernel on batches (numpy or torch) ----------------------------
    @property
    def runs_batched(self) -> bool:
        """Whether the batch hooks apply: without a ridge (``alpha = 0``)."""
        return not self.alpha

    def _batch_coef(self, theta: Any, n_experts: int, n_design: int) -> Any:
        xp = array_namespace(theta)
        shape = (*theta.shape[:-1], n_experts, self.n_classes - 1, n_design)
        return xp.reshape(theta, shape)

    def batch_log_density(
        self, theta: Any, Phi: Any, y: Any, var_floor: Any, n_experts: int
    ) -> Any:
        """``log p_i(y_t | x_t)`` of a batch of data sets from packed coefficients.

        Parameters
        ----------
        theta : array of shape (..., m (K - 1) p)
            Packed coefficients (:meth:`pack`'s layout).
        Phi : array of shape (..., n, p)
        y : array of shape (..., n)
            Class codes.
        var_floor : array of shape (...)
            Not used (no variance).
        n_experts : int

        Returns
        -------
        array of shape (..., n, m)
        """
        coef = self._batch_coef(theta, n_experts, Phi.shape[-1])
        return multinomial_log_density(multinomial_log_probabilities(coef, Phi), y)

    def batch_m_step(
        self,
        theta: Any,
        Phi: Any,
        y: Any,
        resp: Any,
        var_floor: Any,
        n_experts: int,
    ) -> Any:
        """``newton_steps`` damped Fisher steps from ``theta`` on a batch, packed.

        Parameters
        ----------
        theta : array of shape (..., m (K - 1) p)
        Phi : array of shape (..., n, p)
        y : array of shape (..., n)
        resp : array of shape (..., n, m)
            Responsibilities (zero on padding rows).
        var_floor : array of shape (...)
            Not used.
        n_experts : int

        Returns
        -------
        array of shape (..., m (K - 1) p)
        """
        xp = array_namespace(theta, Phi, y, resp)
        coef = self._batch_coef(theta, n_experts, Phi.shape[-1])
        for _ in range(self.newton_steps):
            coef = multinomial_fisher_step(coef, Phi, y, resp, self.max_halvings)
        return xp.reshape(coef, theta.shape)

    def gradient(
        self,
        params: MultinomialExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float = 0.0,
    ) -> NDArray[np.float64]:
        """Gradient of ``sum r log f`` minus :meth:`penalty`, packed."""
        probs = self.class_probabilities(params, Phi)
        one_hot = np.eye(self.n_classes)[y.astype(np.intp)]
        residual = resp[:, :, None] * (one_hot[:, None, :] - probs)
        grad = np.einsum("tic,ta->ica", residual[:, :, 1:], Phi)
        if self.alpha:
            grad -= params.coef * ridge_weights(Phi, self.alpha)
        return grad.ravel()

    # -- parametrisation ---------------------------------------------------
    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Readable names, e.g. ``expert1[class2:x0]`` (class codes from 0).

        Experts are numbered from ``offset + 1``.
        """
        return [
            f"expert{i + 1 + offset}[class{c}:{name}]"
            for i in range(n_experts)
            for c in range(1, self.n_classes)
            for name in design_names
        ]

    def atom_blocks(
        self, params: MultinomialExpertParams
    ) -> list[dict[str, NDArray[np.float64]]]:
        """Each expert's free coefficients split into the Voronoi-loss blocks.

        Returns
        -------
        list of dict
            One dict per expert: ``"intercept"`` (the ``K - 1`` free class
            intercepts) and ``"slope"`` (the free class slopes, class by
            class, flattened).
        """
        return [
            {
                "intercept": coef[:, 0].astype(float),
                "slope": coef[:, 1:].ravel().astype(float),
            }
            for coef in params.coef
        ]
