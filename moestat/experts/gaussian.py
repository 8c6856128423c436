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
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat._math import array_namespace, pair_products, solve_spd, unpack_symmetric
from moestat.experts._basis import polynomial_design, polynomial_names
from moestat.experts._normal import (
    at_floor,
    log_excess,
    natural_variances,
    normal_log_density,
    normal_sample,
    unbounded,
    variance_floor,
    variance_score,
)
from moestat.kernels.experts import excess_variance
from moestat.kernels.gates import affine_scores
from moestat.kernels.sweep import SweepStatistics, gaussian_expert_step

__all__ = ["GaussianExpert", "GaussianExpertParams"]


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
    variance : float or None, default=None
        A known noise variance ``nu`` shared by every expert (the
        one-parameter Gaussian family of Mendes and Jiang): it is neither
        estimated nor packed, and ``params.var`` must hold it for every
        expert. ``None`` estimates the variances.

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

    With a known ``variance`` the M-step is the weighted least squares alone
    (theory.md section 4.3) and the variance never meets the floor; the
    free parameters are the coefficients only, and ``shared_variance`` has
    nothing left to pool.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert
    >>> expert = GaussianExpert(variance=0.25)
    >>> expert.n_free_parameters(n_experts=2, n_design=2)
    4
    """

    name: ClassVar[str] = "gaussian"
    #: The response's distribution, read by the density losses.
    response_family: ClassVar[str | None] = "gaussian"
    #: The Voronoi loss catalogue's name for the atoms (a polynomial mean).
    voronoi_signature: ClassVar[str | None] = "linear"
    #: The sweep kernel of the M-step (:class:`moestat.protocols.SweepExpertFamily`).
    sweep_kernel: ClassVar[str | None] = "gaussian"
    degree: int = 1
    shared_variance: bool = False
    variance: float | None = None

    def __post_init__(self) -> None:
        if self.variance is None:
            return
        value = self.variance
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | np.integer | np.floating)
            or not np.isfinite(value)
            or value <= 0
        ):
            raise ValueError(
                "variance must be None (estimated) or a positive finite number "
                f"(known); got {value!r}."
            )
        object.__setattr__(self, "variance", float(value))

    @property
    def known_variance(self) -> bool:
        """Whether the variance is known and fixed (``variance`` given)."""
        return self.variance is not None

    def _n_variances(self, n_experts: int) -> int:
        """Packed variance parameters: none, one shared, or one per expert."""
        if self.known_variance:
            return 0
        return 1 if self.shared_variance else n_experts

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return the polynomial basis ``phi(x)`` of shape (n, n_basis)."""
        return polynomial_design(X, self.degree)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the basis columns (``const``, ``x0``, ``x0^2``, ...)."""
        return polynomial_names(feature_names, self.degree)

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Free parameters: the coefficients and the variance(s), if estimated."""
        return n_experts * n_design + self._n_variances(n_experts)

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
        return normal_log_density(self.mean(params, Phi), params.var, y)

    def sample(
        self,
        params: GaussianExpertParams,
        Phi: NDArray[np.float64],
        labels: NDArray[np.intp],
        rng: np.random.Generator,
    ) -> NDArray[np.float64]:
        """Draw ``y_t`` from expert ``labels[t]`` at each design row."""
        return normal_sample(self.mean(params, Phi), params.var, labels, rng)

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
            Lower bound ``nu_min`` on the variances (unused when the
            variance is known).
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
        coef = solve_spd(gram, rhs, refine=True)
        # sum_t r (y - phi coef)^2 from the sufficient statistics
        ss = stats[:, -1] - 2.0 * np.sum(coef * rhs, axis=1)
        ss += np.einsum("ia,iab,ib->i", coef, gram, coef)
        ss = np.maximum(ss, 0.0)
        if self.known_variance:
            if previous is not None and empty.any():
                coef[empty] = previous.coef[empty]
            return GaussianExpertParams(coef, np.full(m, self.variance))
        if self.shared_variance:
            var = np.full(m, ss[~empty].sum() / weight[~empty].sum())
        else:
            var = ss / weight
        if previous is not None and empty.any():
            coef[empty] = previous.coef[empty]
            if not self.shared_variance:  # a shared variance is every expert's
                var[empty] = previous.var[empty]
        return GaussianExpertParams(coef, np.maximum(var, var_floor))

    # -- the kernel on batches (numpy or torch) ----------------------------
    #: The batch hooks apply to every configuration.
    runs_batched: ClassVar[bool] = True

    @property
    def variance_kind(self) -> str:
        """``"known"``, ``"shared"`` or ``"per_expert"``: the variances estimated."""
        if self.known_variance:
            return "known"
        return "shared" if self.shared_variance else "per_expert"

    def batch_unpack(
        self, theta: Any, n_experts: int, n_design: int, var_floor: Any
    ) -> tuple[Any, Any]:
        """Coefficients and variances of a batch from packed rows.

        Parameters
        ----------
        theta : array of shape (..., P)
            Packed parameters (:meth:`pack`'s layout).
        n_experts, n_design : int
        var_floor : float or array of shape (...)

        Returns
        -------
        coef : array of shape (..., m, p)
        var : array of shape (..., m)
        """
        xp = array_namespace(theta)
        k = n_experts * n_design
        coef = xp.reshape(theta[..., :k], (*theta.shape[:-1], n_experts, n_design))
        if self.known_variance:
            return coef, xp.full_like(coef[..., 0], self.variance)
        var = excess_variance(theta[..., k:], var_floor)
        if self.shared_variance:
            var = xp.broadcast_to(var, coef.shape[:-1])
        return coef, var

    def batch_pack(self, coef: Any, var: Any, var_floor: Any) -> Any:
        """Inverse of :meth:`batch_unpack`: packed rows (..., P).

        Parameters
        ----------
        coef : array of shape (..., m, p)
        var : array of shape (..., m)
        var_floor : float or array of shape (...)

        Returns
        -------
        array of shape (..., P)
        """
        xp = array_namespace(coef, var)
        flat = xp.reshape(coef, (*coef.shape[:-2], -1))
        if self.known_variance:
            return flat
        var = var[..., :1] if self.shared_variance else var
        return xp.concat([flat, log_excess(var, var_floor)], axis=-1)

    def batch_log_density(
        self, theta: Any, Phi: Any, y: Any, var_floor: Any, n_experts: int
    ) -> Any:
        """``log f`` of a batch of data sets from packed parameters.

        Parameters
        ----------
        theta : array of shape (..., P)
        Phi : array of shape (..., n, p)
        y : array of shape (..., n)
        var_floor : array of shape (...)
        n_experts : int

        Returns
        -------
        array of shape (..., n, m)
        """
        coef, var = self.batch_unpack(theta, n_experts, Phi.shape[-1], var_floor)
        return normal_log_density(affine_scores(Phi, coef), var, y)

    def batch_m_step(
        self,
        theta: Any,
        Phi: Any,
        y: Any,
        resp: Any,
        var_floor: Any,
        n_experts: int,
    ) -> Any:
        """Weighted least squares and variances on a batch, packed.

        Each expert's weighted sums about its current coefficients (Gram
        matrix, score, squared residuals) go through the closed-form step
        of the chunked EM (:func:`moestat.kernels.sweep.gaussian_expert_step`):
        the exact least-squares solution, its variance (per expert, pooled
        or known) at the floor at least; empty experts keep ``theta``.

        Parameters
        ----------
        theta : array of shape (..., P)
        Phi : array of shape (..., n, p)
        y : array of shape (..., n)
        resp : array of shape (..., n, m)
            Responsibilities (zero on padding rows).
        var_floor : array of shape (...)
        n_experts : int

        Returns
        -------
        array of shape (..., P)
        """
        xp = array_namespace(theta, Phi, y, resp)
        coef, var = self.batch_unpack(theta, n_experts, Phi.shape[-1], var_floor)
        resid = y[..., None] - affine_scores(Phi, coef)
        weighted = xp.matrix_transpose(resp)[..., None] * Phi[..., None, :, :]
        stats = SweepStatistics(
            log_likelihood=None,
            expert_weight=xp.sum(resp, axis=-2),
            expert_gram=xp.matmul(xp.matrix_transpose(weighted), Phi[..., None, :, :]),
            expert_score=xp.matmul(
                xp.matrix_transpose(weighted), xp.matrix_transpose(resid)[..., None]
            )[..., 0],
            expert_ss=xp.sum(resp * resid * resid, axis=-2),
            gate_gradient=None,
            gate_information=None,
        )
        n = xp.sum(stats.expert_weight, axis=-1)
        coef, var = gaussian_expert_step(
            stats, coef, var, var_floor, n, self.variance_kind
        )
        return self.batch_pack(coef, var, var_floor)

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
        if self.known_variance:
            return grad_coef.ravel()
        grad_u = variance_score(resp, resid, params.var, var_floor)
        if self.shared_variance:
            grad_u = np.array([grad_u.sum()])
        return np.concatenate([grad_coef.ravel(), grad_u])

    def penalty(self, params: GaussianExpertParams, Phi: NDArray[np.float64]) -> float:
        """No ridge penalty: least squares has an interior maximum.

        Parameters
        ----------
        params : GaussianExpertParams
        Phi : ndarray of shape (n, p)
            Expert design.

        Returns
        -------
        float
            Always 0.0.
        """
        return 0.0

    # -- parametrisation ---------------------------------------------------
    def pack(
        self, params: GaussianExpertParams, var_floor: float
    ) -> NDArray[np.float64]:
        """Free parameters as a flat vector, variances as ``log(nu - nu_min)``.

        A known variance is not packed: the vector holds the coefficients.
        """
        if self.known_variance:
            return params.coef.ravel().copy()
        var = params.var[:1] if self.shared_variance else params.var
        return np.concatenate([params.coef.ravel(), log_excess(var, var_floor)])

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
        if self.known_variance:
            return GaussianExpertParams(coef.copy(), np.full(n_experts, self.variance))
        var = var_floor + np.exp(theta[k:])
        if self.shared_variance:
            var = np.full(n_experts, var[0])
        return GaussianExpertParams(coef.copy(), var)

    def check_response(self, y: NDArray[np.float64]) -> None:
        """Any finite real response is in the support."""

    def variance_floor(self, y: NDArray[np.float64], reg_var: float) -> float:
        """The floor ``nu_min = reg_var * Var(y)`` on every variance."""
        return variance_floor(y, reg_var)

    def at_variance_floor(
        self, params: GaussianExpertParams, var_floor: float
    ) -> NDArray[np.intp]:
        """Experts whose variance sits at the floor (a collapsing expert).

        None when the variance is known: it is never estimated.
        """
        if self.known_variance:
            return np.array([], dtype=np.intp)
        return at_floor(params.var, var_floor)

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Lower and upper bounds of the packed parameters (none)."""
        return unbounded(self.n_free_parameters(n_experts, n_design))

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Typical size of each packed parameter (log variances: 1)."""
        n_var = self._n_variances(n_experts)
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
        if self.known_variance and not np.allclose(
            params.var, self.variance, rtol=1e-12, atol=0.0
        ):
            raise ValueError(
                f"init: GaussianExpert(variance={self.variance!r}) fixes every "
                f"expert variance at {self.variance!r}; got var = "
                f"{params.var.tolist()!r}. Pass var=np.full(n_experts, "
                f"{self.variance!r}) or variance=None to estimate it."
            )

    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Readable names of the packed parameters, e.g. ``expert1[x0]``.

        Experts are numbered from ``offset + 1``.
        """
        numbers = range(offset + 1, offset + n_experts + 1)
        names = [f"expert{i}[{name}]" for i in numbers for name in design_names]
        if self.known_variance:
            return names
        if self.shared_variance:
            return [*names, "variance"]
        return names + [f"expert{i}[variance]" for i in numbers]

    def natural(
        self, theta: NDArray[np.float64], n_experts: int, var_floor: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Reported values and ``d value / d theta`` (variances, not log)."""
        return natural_variances(theta, self._n_variances(n_experts), var_floor)

    def permute(
        self, params: GaussianExpertParams, perm: ArrayLike
    ) -> GaussianExpertParams:
        """Reorder the experts."""
        perm = np.asarray(perm)
        return GaussianExpertParams(params.coef[perm], params.var[perm])

    def split_atoms(
        self, params: GaussianExpertParams, index: ArrayLike
    ) -> GaussianExpertParams:
        """Parameters whose expert ``i`` copies expert ``index[i]``.

        Indices may repeat (an over-specified layout of a smaller model).
        """
        return self.permute(params, index)

    def atoms(self, params: GaussianExpertParams) -> NDArray[np.float64]:
        """Per-expert parameter vectors ``(coef, var)`` used for matching.

        A known variance is left out (it is the same for every expert).
        """
        if self.known_variance:
            return params.coef.copy()
        return np.column_stack([params.coef, params.var])

    def atom_blocks(
        self, params: GaussianExpertParams
    ) -> list[dict[str, NDArray[np.float64]]]:
        """Each expert's atom split into the blocks of the Voronoi losses.

        Returns
        -------
        list of dict
            One dict per expert: ``"intercept"`` (length 1), ``"slope"`` (the
            other basis coefficients) and ``"var"`` (length 1; left out when
            the variance is known).
        """
        blocks = []
        for i in range(params.n_experts):
            block = {
                "intercept": params.coef[i, :1].astype(float),
                "slope": params.coef[i, 1:].astype(float),
            }
            if not self.known_variance:
                block["var"] = params.var[i : i + 1].astype(float)
            blocks.append(block)
        return blocks
