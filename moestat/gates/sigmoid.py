"""The normalized sigmoid gate of DeepSeek-V3, dense or top-K."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, logit

from moestat._math import logsumexp_rows
from moestat.gates._base import GateParams, _AffineGate, observed_objective
from moestat.kernels import (
    affine_scores,
    normalized_sigmoid_log_weights,
    top_k_mask,
)
from moestat.kernels.gates import normalized_sigmoid_fisher_weights

__all__ = ["NormalizedSigmoidGate"]


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
    alpha : float, default=0.0
        Ridge penalty on the slopes of every row, as for
        :class:`SoftmaxGate`.

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
    have more local maxima than dense ones (the line search stops after 2
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
    #: The Voronoi loss catalogue's name for the gate's parametrisation.
    voronoi_signature: ClassVar[str] = "normalized_sigmoid"
    #: Each row of ``coef`` counts on its own: no translation leaves the
    #: weights unchanged.
    translation_invariant: ClassVar[bool] = False
    top_k: int | None = None
    bound: float | None = field(default=20.0, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
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

    @property
    def sweep_kernel(self) -> str | None:
        """The sweep kernel of these weights: ``"normalized_sigmoid"`` when dense.

        None for a top-K gate (its selection is not a sum over rows) and
        with a ridge (:class:`moestat.protocols.SweepGate`).
        """
        return None if self.top_k is not None or self.alpha else "normalized_sigmoid"

    def describe(self) -> str:
        """``normalized_sigmoid`` or ``normalized_sigmoid (top 2)``."""
        return self.name + (f" (top {self.top_k})" if self.top_k else "")

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """``m (d + 1)``; zero for a single expert (the gate is then 1)."""
        return 0 if n_experts == 1 else n_experts * n_design

    def selection(self, s: NDArray[np.float64]) -> NDArray[np.bool_] | None:
        """Mask of the ``top_k`` highest scores on the last axis (None when dense).

        :func:`~moestat.kernels.top_k_mask`: ties go to the lower index.
        """
        if self.top_k is None or self.top_k >= s.shape[-1]:
            return None
        return top_k_mask(s, self.top_k)

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
        fresh = np.exp(np.maximum(joint - total[:, None], -700.0))

        def objective(log_g_new):
            return observed_objective(log_g_new, log_f, log_background)

        return fresh, objective

    def _halvings(self) -> int:
        # With a selection the likelihood jumps where a sample changes
        # experts, so a direction that fails at a half step rarely
        # succeeds at a smaller one: stop the line search early.
        return self.max_halvings if self.top_k is None else min(self.max_halvings, 2)

    def _mass_from_intercepts(self, beta0):
        return expit(beta0)

    def _intercepts_from_mass(self, mass):
        return logit(mass)

    def log_weights(
        self, params: GateParams, Z: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Return ``log g(x)`` of shape (n, n_experts), stored experts-major.

        The kernels :func:`~moestat.kernels.affine_scores` and
        :func:`~moestat.kernels.normalized_sigmoid_log_weights` (on the
        :meth:`selection` for top-K), which
        :class:`~moestat.routing.NormalizedSigmoidRouter` shares.
        """
        return self._log_weights_from_scores(affine_scores(Z, params.coef))

    def _log_weights_from_scores(self, s):
        return normalized_sigmoid_log_weights(s, self.selection(s))

    def _score_gradient_and_fisher(self, params, Z, resp, log_g):
        return normalized_sigmoid_fisher_weights(self.scores(params, Z), resp, log_g)

    def _batch_fisher_weights(self, coef, Z, resp, log_g):
        return normalized_sigmoid_fisher_weights(affine_scores(Z, coef), resp, log_g)

    def _ecme(self) -> bool:
        # top-K: the soft labels cannot bring an expert into a selection
        return self.top_k is not None
