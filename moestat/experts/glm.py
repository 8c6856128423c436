"""GLM experts: Poisson and Bernoulli regression with a polynomial predictor.

``f(y | x; c_i) = exp{ y eta_i(x) - b(eta_i(x)) + c(y) }`` with the canonical
link and ``eta_i(x) = c_i^T phi_k(x)``, ``phi_k`` every monomial of total
degree at most ``k`` (the polynomial experts of Mendes and Jiang).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from moestat._math import array_namespace
from moestat.boundary import check_alpha, ridge_weights
from moestat.experts._base import CoefficientExpert
from moestat.kernels.experts import (
    glm_log_density,
    glm_mean,
    glm_newton_step,
)
from moestat.kernels.gates import affine_scores

__all__ = ["GLMExpert", "GLMExpertParams", "GLM_FAMILIES"]

#: Response families of :class:`GLMExpert`.
GLM_FAMILIES = ("poisson", "bernoulli")


@dataclass(frozen=True)
class GLMExpertParams:
    """Parameters of GLM experts.

    Parameters
    ----------
    coef : ndarray of shape (n_experts, n_basis)
        Row ``i`` holds expert ``i``'s coefficients of the linear predictor
        on the basis (the intercept first).
    """

    coef: NDArray[np.float64]

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return self.coef.shape[0]


def _plain_values(values: NDArray[np.float64], limit: int = 5) -> str:
    """The distinct values, smallest first, as plain numbers: ``-3.0, -0.5``."""
    distinct = np.unique(values).tolist()
    shown = ", ".join(repr(float(v)) for v in distinct[:limit])
    more = len(distinct) - limit
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class GLMExpert(CoefficientExpert):
    """Poisson or Bernoulli experts with a polynomial linear predictor.

    Parameters
    ----------
    family : {"poisson", "bernoulli"}, default="poisson"
        Log link (counts) or logit link (0/1 responses).
    degree : int, default=1
        Order ``k`` of the polynomial predictor.
    newton_steps : int, default=1
        Newton steps per M-step from the current coefficients (generalised
        EM); initial fits take up to 25.
    max_halvings : int, default=12
        Step halvings before a Newton step is given up.
    alpha : float, default=0.0
        Ridge penalty ``(alpha / 2) sum_ij (sd_j c_ij)^2`` on the slopes,
        ``sd_j`` the spread of basis column ``j`` (unit-free; intercepts are
        not penalised). Fits maximise the log-likelihood minus it;
        ``alpha > 0`` keeps the coefficients finite under separation (see
        :mod:`moestat.boundary`).

    Notes
    -----
    M-step: weighted IRLS (Newton) on ``sum_t r_ti [y_t eta_ti - b(eta_ti)]``,
    concave in each expert's coefficients: gradient
    ``Phi^T (r_i (y - mu_i))``, Hessian ``-Phi^T diag(r_i b''(eta_i)) Phi``;
    every expert's Hessian comes from one product of the weights with the
    per-sample products of the basis columns. Each expert's step is halved
    until its objective does not decrease.

    Poisson responses need not be integers: non-negative real responses
    give the quasi-Poisson fit (as scikit-learn's ``PoissonRegressor`` and
    statsmodels' GLM do), with ``log f`` using ``log Gamma(y + 1)``.
    Bernoulli responses in ``[0, 1]`` likewise give the quasi-binomial fit
    for proportions. Under (quasi-)separation an expert's coefficients grow
    without bound as EM runs, every quantity finite, until the engines find
    them walking out (:mod:`moestat.boundary`) and stop with a
    ``DegenerateFitWarning``; ``alpha > 0`` keeps them finite.
    """

    name: ClassVar[str] = "glm"
    #: The Voronoi loss catalogue has no entry for GLM experts.
    voronoi_signature: ClassVar[str | None] = None
    params_type: ClassVar[type] = GLMExpertParams
    family: str = "poisson"
    degree: int = 1
    newton_steps: int = field(default=1, kw_only=True)
    max_halvings: int = field(default=12, kw_only=True)
    alpha: float = field(default=0.0, kw_only=True)

    @property
    def response_family(self) -> str:
        """The response's distribution, read by the density losses: ``family``."""
        return self.family

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if self.family not in GLM_FAMILIES:
            raise ValueError(
                f"Unknown GLM family {self.family!r}; choose one of {GLM_FAMILIES}."
            )

    # -- design and counts -------------------------------------------------
    def check_response(self, y: NDArray[np.float64]) -> None:
        """Raise ``ValueError`` for responses outside the family's support.

        Poisson needs ``y >= 0`` (non-integers give the quasi-Poisson fit),
        Bernoulli ``0 <= y <= 1`` (proportions give the quasi-binomial fit).
        The estimators apply this one rule at fit and when scoring new data.

        Parameters
        ----------
        y : ndarray of shape (n_samples,)
            Responses.

        Raises
        ------
        ValueError
            Naming the family and the values outside its support.
        """
        if self.family == "poisson":
            outside = ~(y >= 0)
            rule = "counts y >= 0 (non-integers give the quasi-Poisson fit)"
            hint = ""
        else:
            outside = ~((y >= 0) & (y <= 1))
            rule = "y in [0, 1] (0/1 labels or proportions)"
            hint = " For other labels use MultinomialLogisticMoE."
        if np.any(outside):
            raise ValueError(
                f"family={self.family!r} needs {rule}; got "
                f"{_plain_values(y[outside])}.{hint}"
            )

    def coef_shape(self, n_experts: int, n_design: int) -> tuple[int, ...]:
        """Shape of the coefficient array."""
        return (n_experts, n_design)

    # -- density -----------------------------------------------------------
    def linear_predictor(
        self, params: GLMExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """``eta`` of shape (n, n_experts), stored experts-major."""
        return (params.coef @ Phi.T).T

    def mean(
        self, params: GLMExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Conditional mean of each expert, shape (n, n_experts)."""
        with np.errstate(over="ignore"):
            return glm_mean(self.family, self.linear_predictor(params, Phi))

    def log_mean(
        self, params: GLMExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Logarithm of :meth:`mean`, without overflow, shape (n, n_experts).

        ``eta`` for Poisson experts, ``-log(1 + exp(-eta))`` for Bernoulli
        ones: a mixture's mean is summed from these in log space.
        """
        eta = self.linear_predictor(params, Phi)
        return eta if self.family == "poisson" else -np.logaddexp(0.0, -eta)

    def log_density(
        self,
        params: GLMExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """``log f(y_t | x_t; c_i)`` of shape (n, n_experts)."""
        return glm_log_density(self.family, self.linear_predictor(params, Phi), y)

    def sample(
        self,
        params: GLMExpertParams,
        Phi: NDArray[np.float64],
        labels: NDArray[np.intp],
        rng: np.random.Generator,
    ) -> NDArray[np.float64]:
        """Draw ``y_t`` from expert ``labels[t]``."""
        mu = self.mean(params, Phi)[np.arange(Phi.shape[0]), labels]
        if self.family == "poisson":
            return rng.poisson(mu).astype(float)
        return (rng.random(len(mu)) < mu).astype(float)

    # -- fitting -----------------------------------------------------------
    def _ridge(self, Phi: NDArray[np.float64]) -> NDArray[np.float64] | None:
        """The penalty's weights on the coefficients (None without ``alpha``)."""
        return ridge_weights(Phi, self.alpha) if self.alpha else None

    def _start(self, Phi, y, resp):
        """Intercept-only start at the pooled mean response."""
        mean = np.clip(y.mean(), 1e-3, None)
        if self.family == "bernoulli":
            mean = np.clip(mean, 1e-3, 1 - 1e-3)
            intercept = np.log(mean / (1 - mean))
        else:
            intercept = np.log(mean)
        coef = np.zeros((resp.shape[1], Phi.shape[1]))
        coef[:, 0] = intercept
        return coef

    def m_step(
        self,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float = 0.0,
        previous: GLMExpertParams | None = None,
        features: NDArray[np.float64] | None = None,
    ) -> GLMExpertParams:
        """Weighted IRLS for every expert (``var_floor`` is not used).

        Parameters
        ----------
        Phi : ndarray of shape (n, p)
            Expert design.
        y : ndarray of shape (n,)
            Responses.
        resp : ndarray of shape (n, m)
            Responsibilities.
        var_floor : float
            Ignored (no variance parameter); kept for the common signature.
        previous : GLMExpertParams, optional
            Start of the Newton steps; without it, 25 steps from an
            intercept-only fit.
        features : ndarray, optional
            :meth:`sufficient_features` of ``(Phi, y)``.

        Returns
        -------
        GLMExpertParams
        """
        if features is None:
            features = self.sufficient_features(Phi, y)
        if previous is None:
            coef, steps = self._start(Phi, y, resp), 25
        else:
            coef, steps = previous.coef, self.newton_steps
        ridge = self._ridge(Phi)
        for _ in range(steps):
            coef = glm_newton_step(
                self.family,
                coef,
                Phi,
                y,
                resp,
                self.max_halvings,
                ridge=ridge,
                features=features,
            )
        return GLMExpertParams(coef)

    # -- the kernel on batches (numpy or torch) ----------------------------
    @property
    def runs_batched(self) -> bool:
        """Whether the batch hooks apply: without a ridge (``alpha = 0``)."""
        return not self.alpha

    def batch_log_density(
        self, theta: Any, Phi: Any, y: Any, var_floor: Any, n_experts: int
    ) -> Any:
        """``log f`` of a batch of data sets from packed coefficients.

        Parameters
        ----------
        theta : array of shape (..., m p)
            Packed coefficients (:meth:`pack`'s layout).
        Phi : array of shape (..., n, p)
        y : array of shape (..., n)
        var_floor : array of shape (...)
            Not used (no variance).
        n_experts : int

        Returns
        -------
        array of shape (..., n, m)
        """
        coef = self._batch_coef(theta, n_experts, Phi.shape[-1])
        return glm_log_density(self.family, affine_scores(Phi, coef), y)

    def batch_m_step(
        self,
        theta: Any,
        Phi: Any,
        y: Any,
        resp: Any,
        var_floor: Any,
        n_experts: int,
    ) -> Any:
        """``newton_steps`` damped IRLS steps from ``theta`` on a batch, packed.

        Parameters
        ----------
        theta : array of shape (..., m p)
        Phi : array of shape (..., n, p)
        y : array of shape (..., n)
        resp : array of shape (..., n, m)
            Responsibilities (zero on padding rows).
        var_floor : array of shape (...)
            Not used.
        n_experts : int

        Returns
        -------
        array of shape (..., m p)

        Raises
        ------
        ValueError
            With ``alpha > 0``: the ridge's weights come from one data set's
            design, so a batch of data sets is fitted without it only.
        """
        if self.alpha:
            raise ValueError(
                "A GLM expert with alpha > 0 is fitted one data set at a time "
                "(m_step); batch_m_step takes alpha = 0."
            )
        xp = array_namespace(theta, Phi, y, resp)
        coef = self._batch_coef(theta, n_experts, Phi.shape[-1])
        for _ in range(self.newton_steps):
            coef = glm_newton_step(self.family, coef, Phi, y, resp, self.max_halvings)
        return xp.reshape(coef, theta.shape)

    def _batch_coef(self, theta: Any, n_experts: int, n_design: int) -> Any:
        xp = array_namespace(theta)
        return xp.reshape(theta, (*theta.shape[:-1], n_experts, n_design))

    def gradient(
        self,
        params: GLMExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float = 0.0,
    ) -> NDArray[np.float64]:
        """Gradient of ``sum r log f`` minus :meth:`penalty`, packed."""
        mu = self.mean(params, Phi)
        grad = (resp * (y[:, None] - mu)).T @ Phi
        if self.alpha:
            grad -= params.coef * ridge_weights(Phi, self.alpha)
        return grad.ravel()

    # -- parametrisation ---------------------------------------------------
    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Readable names of the packed parameters, e.g. ``expert1[x0]``.

        Experts are numbered from ``offset + 1``.
        """
        return [
            f"expert{i + 1 + offset}[{name}]"
            for i in range(n_experts)
            for name in design_names
        ]

    def atom_blocks(
        self, params: GLMExpertParams
    ) -> list[dict[str, NDArray[np.float64]]]:
        """Each expert's coefficients split into the Voronoi-loss blocks.

        Returns
        -------
        list of dict
            One dict per expert: ``"intercept"`` (length 1) and ``"slope"``
            (the other basis coefficients).
        """
        return [
            {"intercept": row[:1].astype(float), "slope": row[1:].astype(float)}
            for row in params.coef
        ]
