"""Gaussian experts whose mean is one ReLU unit (the DeepSeekMoE experts).

``f(y | x; eta_i, nu_i) = N(y | eta_2i max(0, eta_1i^T x + eta_0i), nu_i)``:
the shared expert ``h_1`` of DeepSeekMoE has the inner bias ``eta_0``, its
routed expert ``h_2`` has none (theory.md section 2.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat._math import array_namespace, solve_spd
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
from moestat.kernels.experts import (
    EMPTY_EXPERT,
    excess_variance,
    relu_m_step,
    relu_squared_error,
    relu_unit,
)

__all__ = ["ReLUExpert", "ReLUExpertParams"]


@dataclass(frozen=True)
class ReLUExpertParams:
    """Parameters of ReLU experts.

    Parameters
    ----------
    coef : ndarray of shape (n_experts, d + 2) or (n_experts, d + 1)
        Row ``i`` holds ``(eta_0i, eta_1i, eta_2i)``: the inner bias (only
        for ``ReLUExpert(bias=True)``), the ``d`` inner slopes, then the
        outer weight.
    var : ndarray of shape (n_experts,)
        Noise variances ``nu_i``.
    """

    coef: NDArray[np.float64]
    var: NDArray[np.float64]

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return self.coef.shape[0]


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


@dataclass(frozen=True)
class ReLUExpert:
    """Gaussian experts with a one-unit ReLU mean, ``eta_2 max(0, eta_1^T x + eta_0)``.

    Parameters
    ----------
    bias : bool, default=True
        Whether the unit has an inner bias ``eta_0``: True gives
        DeepSeekMoE's shared expert ``h_1(x) = kappa_2 ReLU(kappa_1^T x +
        kappa_0)``, False its routed expert ``h_2(x) = eta_2 ReLU(eta_1^T x)``.
    newton_steps : int, default=5
        Gauss-Newton steps per M-step from the current parameters
        (generalised EM); the fit from a partition, without current
        parameters, takes 25.
    max_halvings : int, default=12
        Step halvings before a Gauss-Newton step is given up.

    Notes
    -----
    **Design and layout.** The experts work on the affine design
    ``phi(x) = [1, x]``, the same matrix as ``GaussianExpert(degree=1)``
    builds, so ReLU and linear experts can share one expert design. Row
    ``i`` of ``coef`` is ``(eta_0, eta_1[0], ..., eta_1[d-1], eta_2)``
    with ``bias=True`` and ``(eta_1[0], ..., eta_1[d-1], eta_2)`` without.

    **M-step** (theory.md section 4.3). For each expert a few Gauss-Newton
    steps on the weighted squared error
    ``S_i(eta) = sum_t r_ti (y_t - h(x_t; eta))^2`` from the current
    parameters, with the subgradient 0 at the kink: the Jacobian of
    ``h`` is ``eta_2 1[z > 0] (1, x)`` in the inner weights and
    ``max(0, z)`` in ``eta_2``, ``z = eta_1^T x + eta_0``. The normal
    equations are solved with a 1e-9 relative ridge (they are always
    singular, see below), and each step is halved until ``S_i`` does not
    increase. Then ``nu_i = S_i / sum_t r_ti`` clamped at the variance
    floor. Both steps never decrease ``sum_t r_ti log f``, so EM stays
    monotone. An expert whose total responsibility is numerically zero
    keeps its previous parameters.

    Without current parameters (the fit from a partition) each expert
    starts from its weighted least-squares line ``l(x) = a^T phi(x)``
    (through the origin without bias): ``eta_2 = s sqrt(|a|)`` and the
    inner weights ``a / eta_2``, so that the mean is ``l`` where
    ``s l > 0`` and 0 elsewhere, with the sign ``s`` of the two that fits
    better; then 25 Gauss-Newton steps. A unit inactive on all of its
    expert's data has zero gradient and stays so (a dead unit).

    **Identifiability.** ``max(0, .)`` is positively homogeneous, so
    ``(c eta_0, c eta_1, eta_2 / c)`` gives the same mean for every
    ``c > 0``: each expert has one direction of parameters that the data
    cannot see (the observed information is singular along it, and
    :meth:`n_free_parameters` counts the packed parameters, one more per
    expert than :meth:`degrees_of_freedom`). The truths of DeepSeekMoE do
    not fix the scale either, so :meth:`atoms` and :meth:`atom_blocks`
    report the scale-free form (``v = eta_2 (eta_0, eta_1)``,
    ``eta_2 |(eta_0, eta_1)|``, ``nu``). The product ``v`` alone would not
    tell ``ReLU(v^T x)`` (``eta_2 > 0``) from ``-ReLU(-v^T x)``
    (``eta_2 < 0``): ``-8 ReLU(6x)`` and ``4 ReLU(-12x)`` share ``v = -48``;
    the signed norm ``eta_2 |(eta_0, eta_1)| = sign(eta_2) |v|`` carries the
    sign and keeps the map continuous (every vanishing unit maps to 0). The
    map is one-to-one on mean functions and smooth wherever ``v != 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import ReLUExpert, ReLUExpertParams
    >>> expert = ReLUExpert(bias=True)
    >>> params = ReLUExpertParams(np.array([[0.0, 6.0, -8.0]]), np.array([0.25]))
    >>> Phi = expert.design(np.array([[0.5], [1.0]]))
    >>> expert.mean(params, Phi)[:, 0]
    array([-24., -48.])
    >>> expert.atoms(params)  # eta_2 eta_0, eta_2 eta_1, eta_2 |eta|, nu
    array([[  0.  , -48.  , -48.  ,   0.25]])
    """

    name: ClassVar[str] = "relu"
    #: The response's distribution, read by the density losses.
    response_family: ClassVar[str | None] = "gaussian"
    #: The Voronoi loss catalogue's name for the atoms (strongly identifiable).
    voronoi_signature: ClassVar[str | None] = "relu"
    bias: bool = True
    newton_steps: int = field(default=5, kw_only=True)
    max_halvings: int = field(default=12, kw_only=True)
    initial_steps: ClassVar[int] = 25

    def __post_init__(self) -> None:
        if not isinstance(self.bias, bool | np.bool_):
            raise ValueError(f"bias must be True or False; got {self.bias!r}.")
        if not _is_int(self.newton_steps) or self.newton_steps < 1:
            raise ValueError(
                f"newton_steps must be an int >= 1; got {self.newton_steps!r}."
            )
        if not _is_int(self.max_halvings) or self.max_halvings < 0:
            raise ValueError(
                f"max_halvings must be an int >= 0; got {self.max_halvings!r}."
            )

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return the affine design ``[1, x]`` of shape (n, d + 1)."""
        return polynomial_design(X, 1)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the design columns (``const``, ``x0``, ...)."""
        return polynomial_names(feature_names, 1)

    def coef_shape(self, n_experts: int, n_design: int) -> tuple[int, int]:
        """Shape of ``coef``: the inner weights and the outer weight per row."""
        return (n_experts, n_design + 1 if self.bias else n_design)

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Packed parameters: every coefficient and every variance."""
        rows, width = self.coef_shape(n_experts, n_design)
        return rows * width + n_experts

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """Identifiable parameters: one scale per expert fewer (see Notes)."""
        return self.n_free_parameters(n_experts, n_design) - n_experts

    def _inner_design(self, Phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """The columns the inner weights multiply (no constant without bias)."""
        return Phi if self.bias else Phi[:, 1:]

    # -- density -----------------------------------------------------------
    def mean(
        self, params: ReLUExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Conditional mean of each expert, shape (n, n_experts)."""
        _, relu = relu_unit(params.coef, self._inner_design(Phi))
        relu *= params.coef[:, -1]
        return relu

    def log_density(
        self,
        params: ReLUExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """``log f(y_t | x_t; theta_i)`` of shape (n, n_experts)."""
        return normal_log_density(self.mean(params, Phi), params.var, y)

    def sample(
        self,
        params: ReLUExpertParams,
        Phi: NDArray[np.float64],
        labels: NDArray[np.intp],
        rng: np.random.Generator,
    ) -> NDArray[np.float64]:
        """Draw ``y_t`` from expert ``labels[t]`` at each design row."""
        return normal_sample(self.mean(params, Phi), params.var, labels, rng)

    # -- fitting -----------------------------------------------------------
    def sufficient_features(
        self, Phi: NDArray[np.float64], y: NDArray[np.float64]
    ) -> None:
        """Nothing to precompute: the Jacobian changes with the parameters."""
        return None

    def _start(self, Pin, y, resp):
        """Deterministic start from each expert's weighted least-squares line."""
        p = Pin.shape[1]
        weighted = resp.T[:, :, None] * Pin[None, :, :]  # (m, n, p)
        gram = np.matmul(weighted.transpose(0, 2, 1), Pin)
        line = solve_spd(gram, weighted.transpose(0, 2, 1) @ y, refine=True)  # (m, p)
        size = np.sqrt(np.linalg.norm(line, axis=1))
        size = np.where(size > 0, size, 1.0)
        best, best_value = None, None
        for sign in (1.0, -1.0):
            outer = sign * size
            candidate = np.column_stack([line / outer[:, None], outer])
            value = relu_squared_error(candidate, Pin, y, resp)
            if best is None:
                best, best_value = candidate, value
            else:
                better = value < best_value
                best[better] = candidate[better]
        # A unit inactive on every sample (a zero line) would never move:
        # restart it active (inner weights (1, 0, ...)) with outer weight 0.
        _, relu = relu_unit(best, Pin)
        dead = np.sum(resp * relu, axis=0) <= 0
        if dead.any():
            fallback = np.zeros(p + 1)
            fallback[0] = 1.0
            best[dead] = fallback
        return best

    def m_step(
        self,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
        previous: ReLUExpertParams | None = None,
        features: None = None,
    ) -> ReLUExpertParams:
        """Damped Gauss-Newton on the weighted squared error, then the variance.

        Parameters
        ----------
        Phi : ndarray of shape (n, d + 1)
            Expert design ``[1, x]``.
        y : ndarray of shape (n,)
            Responses.
        resp : ndarray of shape (n, m)
            Responsibilities.
        var_floor : float
            Lower bound ``nu_min`` on the variances.
        previous : ReLUExpertParams, optional
            Start of the Gauss-Newton steps; experts with (numerically) no
            responsibility keep these parameters. Without it, 25 steps from
            the start of the Notes (such experts get the pooled fit).
        features : None, optional
            :meth:`sufficient_features` (nothing); kept for the common
            signature.

        Returns
        -------
        ReLUExpertParams
        """
        n = Phi.shape[0]
        Pin = self._inner_design(Phi)
        if previous is None:
            weight = resp.sum(axis=0)
            pooled = np.where(weight <= EMPTY_EXPERT * n, 1.0, resp)
            coef, steps = self._start(Pin, y, pooled), self.initial_steps
            var = np.ones(resp.shape[1])
        else:
            coef, var = np.array(previous.coef, dtype=float), previous.var
            steps = self.newton_steps
        coef, var = relu_m_step(
            coef,
            var,
            Pin,
            y,
            resp,
            var_floor,
            float(n),
            steps=steps,
            max_halvings=self.max_halvings,
            hold_empty=previous is not None,
        )
        return ReLUExpertParams(coef, var)

    # -- the kernel on batches (numpy or torch) ----------------------------
    #: The batch hooks apply to every configuration.
    runs_batched: ClassVar[bool] = True

    def _batch_unpack(
        self, theta: Any, n_experts: int, n_design: int, var_floor: Any
    ) -> tuple[Any, Any]:
        """Coefficients (..., m, w) and variances (..., m) from packed rows."""
        xp = array_namespace(theta)
        rows, width = self.coef_shape(n_experts, n_design)
        k = rows * width
        coef = xp.reshape(theta[..., :k], (*theta.shape[:-1], rows, width))
        return coef, excess_variance(theta[..., k:], var_floor)

    def _batch_inner_design(self, Phi: Any) -> Any:
        return Phi if self.bias else Phi[..., 1:]

    def batch_log_density(
        self, theta: Any, Phi: Any, y: Any, var_floor: Any, n_experts: int
    ) -> Any:
        """``log f`` of a batch of data sets from packed parameters.

        Parameters
        ----------
        theta : array of shape (..., P)
            Packed parameters (:meth:`pack`'s layout).
        Phi : array of shape (..., n, d + 1)
            Expert designs ``[1, x]``.
        y : array of shape (..., n)
        var_floor : array of shape (...)
        n_experts : int

        Returns
        -------
        array of shape (..., n, m)
        """
        coef, var = self._batch_unpack(theta, n_experts, Phi.shape[-1], var_floor)
        _, relu = relu_unit(coef, self._batch_inner_design(Phi))
        return normal_log_density(relu * coef[..., None, :, -1], var, y)

    def batch_m_step(
        self,
        theta: Any,
        Phi: Any,
        y: Any,
        resp: Any,
        var_floor: Any,
        n_experts: int,
    ) -> Any:
        """:meth:`m_step` from current parameters on a batch, packed.

        ``newton_steps`` Gauss-Newton steps from ``theta``; experts with no
        responsibility keep their parameters.

        Parameters
        ----------
        theta : array of shape (..., P)
        Phi : array of shape (..., n, d + 1)
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
        coef, var = self._batch_unpack(theta, n_experts, Phi.shape[-1], var_floor)
        coef, var = relu_m_step(
            coef,
            var,
            self._batch_inner_design(Phi),
            y,
            resp,
            var_floor,
            xp.sum(resp, axis=(-2, -1)),
            steps=self.newton_steps,
            max_halvings=self.max_halvings,
        )
        flat = xp.reshape(coef, (*coef.shape[:-2], -1))
        return xp.concat([flat, log_excess(var, var_floor)], axis=-1)

    def gradient(
        self,
        params: ReLUExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
    ) -> NDArray[np.float64]:
        """Gradient of ``sum r log f`` in the packed free parameters.

        At the kink (``z = 0``) the subgradient 0 is used for the inner
        weights.
        """
        Pin = self._inner_design(Phi)
        z, relu = relu_unit(params.coef, Pin)
        outer = params.coef[:, -1]
        resid = y[:, None] - relu * outer
        scaled = resp * resid / params.var
        grad_inner = ((scaled * (z > 0)).T @ Pin) * outer[:, None]
        grad_outer = np.sum(scaled * relu, axis=0)
        grad_u = variance_score(resp, resid, params.var, var_floor)
        grad_coef = np.column_stack([grad_inner, grad_outer])
        return np.concatenate([grad_coef.ravel(), grad_u])

    def penalty(self, params: ReLUExpertParams, Phi: NDArray[np.float64]) -> float:
        """No ridge penalty: the experts are fitted unpenalised.

        Parameters
        ----------
        params : ReLUExpertParams
        Phi : ndarray of shape (n, p)
            Expert design.

        Returns
        -------
        float
            Always 0.0.
        """
        return 0.0

    # -- parametrisation ---------------------------------------------------
    def pack(self, params: ReLUExpertParams, var_floor: float) -> NDArray[np.float64]:
        """Coefficients, then the variances as ``log(nu - nu_min)``."""
        return np.concatenate([params.coef.ravel(), log_excess(params.var, var_floor)])

    def unpack(
        self,
        theta: NDArray[np.float64],
        n_experts: int,
        n_design: int,
        var_floor: float,
    ) -> ReLUExpertParams:
        """Inverse of :meth:`pack`."""
        shape = self.coef_shape(n_experts, n_design)
        k = shape[0] * shape[1]
        coef = theta[:k].reshape(shape).copy()
        return ReLUExpertParams(coef, var_floor + np.exp(theta[k:]))

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Lower and upper bounds of the packed parameters (none)."""
        return unbounded(self.n_free_parameters(n_experts, n_design))

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Typical sizes: inner weights their column's, outer weight and log var 1."""
        inner = column_scales if self.bias else column_scales[1:]
        row = np.concatenate([inner, [1.0]])
        return np.concatenate([np.tile(row, n_experts), np.ones(n_experts)])

    def natural(
        self, theta: NDArray[np.float64], n_experts: int, var_floor: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Reported values and ``d value / d theta`` (variances, not log)."""
        return natural_variances(theta, n_experts, var_floor)

    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Readable names, e.g. ``expert1[inner_x0]``, ``expert1[outer]``.

        Experts are numbered from ``offset + 1``.
        """
        inner = design_names if self.bias else design_names[1:]
        row = [f"inner_{name}" for name in inner] + ["outer"]
        numbers = range(offset + 1, offset + n_experts + 1)
        names = [f"expert{i}[{name}]" for i in numbers for name in row]
        return names + [f"expert{i}[variance]" for i in numbers]

    def check_response(self, y: NDArray[np.float64]) -> None:
        """Any finite real response is in the support."""

    def variance_floor(self, y: NDArray[np.float64], reg_var: float) -> float:
        """The floor ``nu_min = reg_var * Var(y)`` on every variance."""
        return variance_floor(y, reg_var)

    def at_variance_floor(
        self, params: ReLUExpertParams, var_floor: float
    ) -> NDArray[np.intp]:
        """Experts whose variance sits at the floor (a collapsing expert)."""
        return at_floor(params.var, var_floor)

    def check_params(self, params: object, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this family."""
        if not isinstance(params, ReLUExpertParams):
            raise ValueError(
                f"ReLUExpert needs ReLUExpertParams; got {type(params).__name__}."
            )
        layout = "(eta_0, eta_1, eta_2)" if self.bias else "(eta_1, eta_2)"
        for name, got, want in [
            ("expert coef", params.coef.shape, self.coef_shape(n_experts, n_design)),
            ("expert var", params.var.shape, (n_experts,)),
        ]:
            if got != want:
                raise ValueError(
                    f"init: the {name} has shape {got}, expected {want} (rows "
                    f"{layout} for ReLUExpert(bias={self.bias}))."
                )
        if np.any(params.var <= 0):
            raise ValueError("init: expert variances must be positive.")

    def permute(self, params: ReLUExpertParams, perm: ArrayLike) -> ReLUExpertParams:
        """Reorder the experts."""
        perm = np.asarray(perm)
        return ReLUExpertParams(params.coef[perm], params.var[perm])

    def split_atoms(
        self, params: ReLUExpertParams, index: ArrayLike
    ) -> ReLUExpertParams:
        """Parameters whose expert ``i`` copies expert ``index[i]``.

        Indices may repeat (an over-specified layout of a smaller model).
        """
        return self.permute(params, index)

    # -- atoms ---------------------------------------------------------------
    def _scale_free(self, params):
        """``eta_2 (eta_0, eta_1)`` and ``eta_2 |(eta_0, eta_1)|``, per expert."""
        inner, outer = params.coef[:, :-1], params.coef[:, -1]
        product = inner * outer[:, None] + 0.0  # no negative zeros
        signed_norm = outer * np.linalg.norm(inner, axis=1)
        return product, signed_norm

    def atoms(self, params: ReLUExpertParams) -> NDArray[np.float64]:
        """Scale-free per-expert vectors used for matching (see Notes).

        Row ``i``: ``eta_2 eta_0`` (with bias), ``eta_2 eta_1``,
        ``eta_2 |(eta_0, eta_1)|`` and ``nu``: unchanged when the inner
        weights are multiplied by ``c > 0`` and the outer one divided by it.
        """
        product, signed_norm = self._scale_free(params)
        return np.column_stack([product, signed_norm, params.var])

    def atom_blocks(
        self, params: ReLUExpertParams
    ) -> list[dict[str, NDArray[np.float64]]]:
        """Each expert's scale-free atom split into the Voronoi-loss blocks.

        Returns
        -------
        list of dict
            One dict per expert: ``"inner_bias"`` (``eta_2 eta_0``, length 1;
            only with bias), ``"inner_slope"`` (``eta_2 eta_1``, length d),
            ``"outer"`` (``eta_2 |(eta_0, eta_1)|``, length 1) and ``"var"``
            (length 1); the same numbers as :meth:`atoms`.
        """
        product, signed_norm = self._scale_free(params)
        start = 1 if self.bias else 0
        blocks = []
        for i in range(params.n_experts):
            block = {}
            if self.bias:
                block["inner_bias"] = product[i, :1].astype(float)
            block["inner_slope"] = product[i, start:].astype(float)
            block["outer"] = signed_norm[i : i + 1].astype(float)
            block["var"] = params.var[i : i + 1].astype(float)
            blocks.append(block)
        return blocks
