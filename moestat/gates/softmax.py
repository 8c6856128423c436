"""Softmax gates: the plain softmax and the softmax on a transformed input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_compat
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit

from moestat._math import array_namespace
from moestat.gates._base import GateParams, _AffineGate
from moestat.kernels import affine_scores, softmax_log_weights
from moestat.kernels.gates import softmax_fisher_weights

__all__ = ["SoftmaxGate", "ModifiedSoftmaxGate", "TRANSFORMS"]


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
    bound : float or None, default=None
        Box ``[-bound, bound]`` on every gate coefficient: M-step candidates
        are clipped into it and direct maximisation is bounded by it. None
        for no box.
    alpha : float, default=0.0
        Ridge penalty ``(alpha / 2) sum_ij (sd_j beta_ij)^2`` on the free
        slopes, ``sd_j`` the spread of the gate's input ``j`` (unit-free;
        intercepts are not penalised). Fits maximise the log-likelihood
        minus it; ``alpha > 0`` keeps the gate finite when it could split
        the data cleanly between experts (see :mod:`moestat.boundary`).

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
    #: The Voronoi loss catalogue's name for the gate's parametrisation.
    voronoi_signature: ClassVar[str] = "softmax"
    #: Adding one vector to every row of ``coef`` leaves the weights unchanged.
    translation_invariant: ClassVar[bool] = True

    @property
    def sweep_kernel(self) -> str | None:
        """The sweep kernel of these weights: ``"softmax"``; None with a ridge.

        :class:`moestat.protocols.SweepGate`: the chunked path of
        :func:`moestat.fit.em` computes the weights with it.
        """
        return None if self.alpha else "softmax"

    def free_rows(self, n_experts: int) -> NDArray[np.intp]:
        """Every row but the first (the reference expert, fixed at zero)."""
        return np.arange(1, n_experts)

    def log_weights(
        self, params: GateParams, Z: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Return ``log g(x)`` of shape (n, n_experts), stored experts-major.

        The kernels :func:`~moestat.kernels.affine_scores` and
        :func:`~moestat.kernels.softmax_log_weights`, which the softmax
        routers of :mod:`moestat.routing` share.
        """
        return self._log_weights_from_scores(affine_scores(Z, params.coef))

    def _log_weights_from_scores(self, s):
        return softmax_log_weights(s)

    def _mass_from_intercepts(self, beta0):
        # exp(beta_0i): the masses change under the gate's translation, so
        # the losses anchor the gate first (theory.md section 5.2.4).
        return np.exp(beta0)

    def _intercepts_from_mass(self, mass):
        return np.log(mass)

    def _score_gradient_and_fisher(self, params, Z, resp, log_g):
        return softmax_fisher_weights(resp, log_g)

    def _batch_fisher_weights(self, coef, Z, resp, log_g):
        return softmax_fisher_weights(resp, log_g)

    def _batch_coef(self, theta: Any, n_experts: int, n_design: int) -> Any:
        """Coefficients (..., m, p) from packed parameters, the first row zero."""
        xp = array_namespace(theta)
        lead = theta.shape[:-1]
        free = xp.reshape(theta, (*lead, n_experts - 1, n_design))
        zero = xp.zeros(
            (*lead, 1, n_design),
            dtype=theta.dtype,
            device=array_api_compat.device(theta),
        )
        return xp.concat([zero, free], axis=-2)

    def _batch_rows(self, n_experts: int) -> slice:
        return slice(1, n_experts)

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


#: Named gate-input transforms ``M`` of :class:`ModifiedSoftmaxGate`.
TRANSFORMS: dict[str, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
    "identity": lambda X: X,
    "tanh": np.tanh,
    "sigmoid": expit,
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
    bound : float or None, default=None
        As for :class:`SoftmaxGate`.
    alpha : float, default=0.0
        As for :class:`SoftmaxGate` (spreads of ``M(x)``).

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
    #: The Voronoi loss catalogue's name for the gate's parametrisation (its
    #: slopes act on the transformed covariates).
    voronoi_signature: ClassVar[str] = "modified_softmax"
    transform: str | Callable[[NDArray[np.float64]], NDArray[np.float64]] = "tanh"

    def __post_init__(self) -> None:
        super().__post_init__()
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

    def describe(self) -> str:
        """``modified_softmax (tanh)`` and the like."""
        label = self.transform if isinstance(self.transform, str) else "callable"
        return f"{self.name} ({label})"

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
