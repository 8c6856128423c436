"""What the experts whose parameters are coefficients alone have in common.

GLM and multinomial logistic experts carry one array of coefficients on a
polynomial basis (no variance). Packing, bounds, scales, relabelling and
the basis are the same for both; each family says the array's shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat._math import pair_products
from moestat.boundary import ridge_penalty, ridge_weights
from moestat.experts._basis import polynomial_design, polynomial_names
from moestat.experts._normal import unbounded
from moestat.protocols import CountsDegreesOfFreedom, ExpertFamily


def expert_degrees_of_freedom(
    expert: ExpertFamily, n_experts: int, n_design: int
) -> int:
    """Identifiable parameters of an expert family, for information criteria.

    The family's ``degrees_of_freedom`` hook where it has one
    (:class:`~moestat.protocols.CountsDegreesOfFreedom`: ReLU experts leave
    out their unidentifiable scale), else all its free parameters.
    """
    if isinstance(expert, CountsDegreesOfFreedom):
        return int(expert.degrees_of_freedom(n_experts, n_design))
    return int(expert.n_free_parameters(n_experts, n_design))


class CoefficientExpert:
    """Mixin for expert families parametrised by one ``coef`` array.

    Subclasses set ``params_type`` (a container with a ``coef`` field) and
    ``coef_shape(n_experts, n_design)``, and have ``degree`` and ``alpha``
    fields.
    """

    params_type: Any

    def coef_shape(self, n_experts: int, n_design: int) -> tuple[int, ...]:
        """Shape of the coefficient array."""
        raise NotImplementedError

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return the polynomial basis ``phi(x)`` of shape (n, n_basis)."""
        return polynomial_design(X, self.degree)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the basis columns."""
        return polynomial_names(feature_names, self.degree)

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Free parameters: the coefficients."""
        return int(np.prod(self.coef_shape(n_experts, n_design)))

    def sufficient_features(
        self, Phi: NDArray[np.float64], y: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Per-sample products ``phi_a phi_b`` (a <= b) for the Hessians."""
        return pair_products(Phi)

    def variance_floor(self, y: NDArray[np.float64], reg_var: float) -> float:
        """No variance parameter, so no floor."""
        return 0.0

    def at_variance_floor(self, params: Any, var_floor: float) -> NDArray[np.intp]:
        """No variance parameter: no expert sits at a floor."""
        return np.array([], dtype=np.intp)

    def penalty(self, params: Any, Phi: NDArray[np.float64]) -> float:
        """Ridge penalty ``(alpha / 2) sum (sd_j c_j)^2`` of the slopes.

        Over every coefficient of a non-constant basis column ``j`` (every
        expert, every class), ``sd_j`` the column's spread; the family's
        ``alpha`` field sets the weight.

        Parameters
        ----------
        params : parameters of the family (with ``coef``)
        Phi : ndarray of shape (n, p)
            Expert design; ``sd_j`` is the spread of its column ``j`` (0 for
            the intercept).

        Returns
        -------
        float
            0.0 when ``alpha == 0``.
        """
        if not self.alpha:
            return 0.0
        return ridge_penalty(params.coef, ridge_weights(Phi, self.alpha))

    # -- parametrisation ---------------------------------------------------
    def pack(self, params: Any, var_floor: float = 0.0) -> NDArray[np.float64]:
        """The coefficients as a flat vector."""
        return params.coef.ravel().copy()

    def unpack(
        self,
        theta: NDArray[np.float64],
        n_experts: int,
        n_design: int,
        var_floor: float = 0.0,
    ) -> Any:
        """Inverse of :meth:`pack`."""
        shape = self.coef_shape(n_experts, n_design)
        return self.params_type(theta.reshape(shape).copy())

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """No bounds."""
        return unbounded(self.n_free_parameters(n_experts, n_design))

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Typical size of each coefficient: its basis column's scale."""
        rows = self.n_free_parameters(n_experts, len(column_scales))
        return np.tile(column_scales, rows // len(column_scales))

    def natural(
        self, theta: NDArray[np.float64], n_experts: int, var_floor: float = 0.0
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Reported values (the coefficients themselves) and unit Jacobian."""
        return theta.copy(), np.ones_like(theta)

    def check_params(self, params: object, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this family."""
        name = self.params_type.__name__
        if not isinstance(params, self.params_type):
            raise ValueError(
                f"{type(self).__name__} needs {name}; got {type(params).__name__}."
            )
        want = self.coef_shape(n_experts, n_design)
        if params.coef.shape != want:
            raise ValueError(
                f"init: the expert coef has shape {params.coef.shape}, expected {want}."
            )

    def permute(self, params: Any, perm: ArrayLike) -> Any:
        """Reorder the experts."""
        return self.params_type(params.coef[np.asarray(perm)])

    def split_atoms(self, params: Any, index: ArrayLike) -> Any:
        """Parameters whose expert ``i`` copies expert ``index[i]``.

        Indices may repeat (an over-specified layout of a smaller model).
        """
        return self.permute(params, index)

    def atoms(self, params: Any) -> NDArray[np.float64]:
        """Per-expert parameter vectors used for matching."""
        return params.coef.reshape(params.coef.shape[0], -1)
