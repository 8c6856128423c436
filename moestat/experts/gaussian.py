"""Gaussian regression experts with polynomial means.

Expert families: the component densities f(y | x; theta_i).

An expert family is a small stateless piece that works on all m experts at
once: the per-expert log density as an (n, m) array, the weighted M-step
(responsibilities in, new parameters out), the conditional means, sampling,
and the gradient of the weighted complete-data log-likelihood in its packed
free parameters (used by direct MLE, by Fisher's identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat._math import pair_products, solve_spd, unpack_symmetric
from moestat.experts._basis import polynomial_design, polynomial_names

__all__ = ["GaussianExpert", "GaussianExpertParams"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class GaussianExpertParams:
    """Parameters of Gaussian regression experts.

    Parameters
    ----------
    coef : ndarray of shape (n_experts, n_basis)
        Row ``i`` holds expert ``i``'s coefficients on the basis (the
        intercept first).
    var : ndarray of shape (n_experts,)
        Noise variances ``nu_i`` (equal entries when the variance is shared).
    """

    coef: NDArray[np.float64]
    var: NDArray[np.float64]

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return self.coef.shape[0]


@dataclass(frozen=True)
class GaussianExpert:
    """Gaussian experts whose mean is a polynomial of order ``degree`` in x.

    ``f(y | x; a_i, nu_i) = N(y | a_i^T phi(x), nu_i)`` where ``phi`` is the
    polynomial basis of total degree ``degree`` with an intercept
    (``degree=1`` gives linear experts ``b_i + a_i^T x``; ``degree=0``
    constant experts).

    Parameters
    ----------
    degree : int, default=1
        Order ``k`` of the polynomial mean.
    shared_variance : bool, default=False
        If True all experts share one variance.

    Notes
    -----
    M-step: weighted least squares per expert,
    ``a_i = (Phi^T R_i Phi)^{-1} Phi^T R_i y`` with ``R_i = diag(r_.i)``,
    solved on the Jacobi-equilibrated Gram matrix with a 1e-10 relative
    ridge; then ``nu_i = sum_t r_ti (y_t - a_i^T phi_t)^2 / sum_t r_ti``
    clamped at the variance floor. An expert whose total responsibility is
    numerically zero keeps its previous parameters.

    The packed parametrisation for direct MLE uses
    ``nu = nu_min + exp(u)`` so that the floor can never be crossed.
    """

    name: ClassVar[str] = "gaussian"
    degree: int = 1
    shared_variance: bool = False

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return the polynomial basis ``phi(x)`` of shape (n, n_basis)."""
        return polynomial_design(X, self.degree)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the basis columns (``const``, ``x0``, ``x0^2``, ...)."""
        return polynomial_names(feature_names, self.degree)

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Free parameters: the coefficients and the variance(s)."""
        n_var = 1 if self.shared_variance else n_experts
        return n_experts * n_design + n_var

    # -- density -----------------------------------------------------------
    def mean(
        self, params: GaussianExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Conditional mean of each expert, shape (n, n_experts)."""
        return (params.coef @ Phi.T).T  # experts-major storage

    def log_density(
        self,
        params: GaussianExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """``log f(y_t | x_t; theta_i)`` of shape (n, n_experts)."""
        resid = y[:, None] - self.mean(params, Phi)
        resid *= resid
        resid /= params.var
        resid += np.log(params.var) + _LOG_2PI
        resid *= -0.5
        return resid

    def sample(
        self,
        params: GaussianExpertParams,
        Phi: NDArray[np.float64],
        labels: NDArray[np.intp],
        rng: np.random.Generator,
    ) -> NDArray[np.float64]:
        """Draw ``y_t`` from expert ``labels[t]`` at each design row."""
        rows = np.arange(Phi.shape[0])
        mean = self.mean(params, Phi)[rows, labels]
        return mean + np.sqrt(params.var[labels]) * rng.standard_normal(len(labels))

    # -- fitting -----------------------------------------------------------
    def sufficient_features(
        self, Phi: NDArray[np.float64], y: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Per-sample statistics whose weighted sums make the M-step.

        Columns: the products ``phi_a phi_b`` (a <= b), then ``phi_a y``,
        then ``y^2``. ``resp.T @ features`` gives every expert's weighted
        Gram matrix, cross-product and sum of squares in one product.
        """
        return np.hstack([pair_products(Phi), Phi * y[:, None], (y * y)[:, None]])

    def m_step(
        self,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
        previous: GaussianExpertParams | None = None,
        features: NDArray[np.float64] | None = None,
    ) -> GaussianExpertParams:
        """Weighted least squares and weighted variance for every expert.

        Parameters
        ----------
        Phi : ndarray of shape (n, p)
            Expert design.
        y : ndarray of shape (n,)
            Responses.
        resp : ndarray of shape (n, m)
            Responsibilities.
        var_floor : float
            Lower bound ``nu_min`` on the variances.
        previous : GaussianExpertParams, optional
            Current parameters; experts with (numerically) no responsibility
            keep them. Without it such experts get the pooled fit.
        features : ndarray, optional
            :meth:`sufficient_features` of ``(Phi, y)``, computed once per fit.

        Returns
        -------
        GaussianExpertParams
        """
        n, p = Phi.shape
        m = resp.shape[1]
        if features is None:
            features = self.sufficient_features(Phi, y)
        weight = resp.sum(axis=0)
        empty = weight <= 1e-10 * n
        if empty.any():
            # An expert with no data has no M-step: hold it (or pool it).
            resp = np.where(empty, 1.0, resp)
            weight = np.where(empty, n, weight)
        stats = resp.T @ features
        q = p * (p + 1) // 2
        gram = unpack_symmetric(stats[:, :q], p)
        rhs = stats[:, q : q + p]
        coef = solve_spd(gram, rhs)
        # sum_t r (y - phi coef)^2 from the sufficient statistics
        ss = stats[:, -1] - 2.0 * np.sum(coef * rhs, axis=1)
        ss += np.einsum("ia,iab,ib->i", coef, gram, coef)
        ss = np.maximum(ss, 0.0)
        if self.shared_variance:
            var = np.full(m, ss[~empty].sum() / weight[~empty].sum())
        else:
            var = ss / weight
        if previous is not None and empty.any():
            coef[empty] = previous.coef[empty]
            var[empty] = previous.var[empty]
        return GaussianExpertParams(coef, np.maximum(var, var_floor))

    def gradient(
        self,
        params: GaussianExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
    ) -> NDArray[np.float64]:
        """Gradient of ``sum r log f`` in the packed free parameters."""
        resid = y[:, None] - self.mean(params, Phi)
        scaled = resp * resid / params.var
        grad_coef = scaled.T @ Phi
        grad_var = 0.5 * np.sum(resp * (resid * resid / params.var - 1.0), axis=0)
        grad_var = grad_var / params.var
        dvar_du = params.var - var_floor
        if self.shared_variance:
            grad_u = np.array([grad_var.sum() * dvar_du[0]])
        else:
            grad_u = grad_var * dvar_du
        return np.concatenate([grad_coef.ravel(), grad_u])

    # -- parametrisation ---------------------------------------------------
    def pack(
        self, params: GaussianExpertParams, var_floor: float
    ) -> NDArray[np.float64]:
        """Free parameters as a flat vector, variances as ``log(nu - nu_min)``."""
        var = params.var[:1] if self.shared_variance else params.var
        excess = np.maximum(var - var_floor, 1e-12 * max(var_floor, 1e-300))
        return np.concatenate([params.coef.ravel(), np.log(excess)])

    def unpack(
        self,
        theta: NDArray[np.float64],
        n_experts: int,
        n_design: int,
        var_floor: float,
    ) -> GaussianExpertParams:
        """Inverse of :meth:`pack`."""
        k = n_experts * n_design
        coef = theta[:k].reshape(n_experts, n_design)
        var = var_floor + np.exp(theta[k:])
        if self.shared_variance:
            var = np.full(n_experts, var[0])
        return GaussianExpertParams(coef.copy(), var)

    def check_response(self, y: NDArray[np.float64]) -> None:
        """Any finite real response is in the support."""

    def variance_floor(self, y: NDArray[np.float64], reg_var: float) -> float:
        """The floor ``nu_min = reg_var * Var(y)`` on every variance."""
        return float(reg_var * np.var(y))

    def at_variance_floor(
        self, params: GaussianExpertParams, var_floor: float
    ) -> NDArray[np.intp]:
        """Experts whose variance sits at the floor (a collapsing expert)."""
        if var_floor <= 0:
            return np.array([], dtype=np.intp)
        return np.flatnonzero(params.var <= var_floor * (1 + 1e-9))

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Lower and upper bounds of the packed parameters (none)."""
        size = self.n_free_parameters(n_experts, n_design)
        return np.full(size, -np.inf), np.full(size, np.inf)

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Typical size of each packed parameter (log variances: 1)."""
        n_var = 1 if self.shared_variance else n_experts
        return np.concatenate([np.tile(column_scales, n_experts), np.ones(n_var)])

    def check_params(self, params: object, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this family."""
        if not isinstance(params, GaussianExpertParams):
            raise ValueError(
                f"GaussianExpert needs GaussianExpertParams; got "
                f"{type(params).__name__}."
            )
        for name, got, want in [
            ("expert coef", params.coef.shape, (n_experts, n_design)),
            ("expert var", params.var.shape, (n_experts,)),
        ]:
            if got != want:
                raise ValueError(f"init: the {name} has shape {got}, expected {want}.")
        if np.any(params.var <= 0):
            raise ValueError("init: expert variances must be positive.")

    def parameter_names(self, n_experts: int, design_names: list[str]) -> list[str]:
        """Readable names of the packed parameters, e.g. ``expert1[x0]``."""
        names = [
            f"expert{i + 1}[{name}]" for i in range(n_experts) for name in design_names
        ]
        if self.shared_variance:
            return [*names, "variance"]
        return names + [f"expert{i + 1}[variance]" for i in range(n_experts)]

    def natural(
        self, theta: NDArray[np.float64], n_experts: int, var_floor: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Reported values and ``d value / d theta`` (variances, not log)."""
        n_var = 1 if self.shared_variance else n_experts
        values = theta.copy()
        jacobian = np.ones_like(theta)
        excess = np.exp(theta[-n_var:])
        values[-n_var:] = var_floor + excess
        jacobian[-n_var:] = excess
        return values, jacobian

    def permute(
        self, params: GaussianExpertParams, perm: ArrayLike
    ) -> GaussianExpertParams:
        """Reorder the experts."""
        perm = np.asarray(perm)
        return GaussianExpertParams(params.coef[perm], params.var[perm])

    def atoms(self, params: GaussianExpertParams) -> NDArray[np.float64]:
        """Per-expert parameter vectors ``(coef, var)`` used for matching."""
        return np.column_stack([params.coef, params.var])
