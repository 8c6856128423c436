"""Two expert families side by side: shared experts beside routed ones.

DeepSeekMoE mixes always-active shared experts of one form with routed
experts of another (theory.md sections 2.4 and 3.6): shared ReLU experts
with an inner bias beside routed ReLU experts without one, or shared ReLU
experts beside routed linear experts. :class:`StackedExperts` makes one
expert family of the two blocks, for use with
:class:`~moestat.gates.SharedExpertsGate` (the same ``n_shared``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat.experts._base import expert_degrees_of_freedom

__all__ = ["StackedExperts", "StackedExpertParams"]

# Covariates at which the two blocks' designs must agree: distinct values,
# none 0 or 1, so that x, x^2, x y, ... all differ from each other.
_PROBE = np.array([[0.5, -2.0], [3.0, 0.25], [-1.5, 1.75]])


@dataclass(frozen=True)
class StackedExpertParams:
    """Parameters of stacked experts: each block's own.

    Parameters
    ----------
    shared : parameters of the shared family
        The first ``n_shared`` experts.
    routed : parameters of the routed family
        The other experts.
    """

    shared: Any
    routed: Any

    @property
    def n_experts(self) -> int:
        """Number of experts, shared and routed."""
        return self.shared.n_experts + self.routed.n_experts


@dataclass(frozen=True)
class StackedExperts:
    """The first ``n_shared`` experts from one family, the rest from another.

    Parameters
    ----------
    shared : expert family
        Family of the shared experts, e.g. ``ReLUExpert(bias=True)``.
    routed : expert family
        Family of the routed experts, e.g. ``ReLUExpert(bias=False)`` or
        ``GaussianExpert()``.
    n_shared : int
        Number of shared experts (at least 1); pair with
        ``SharedExpertsGate(routed_gate, n_shared)``.

    Notes
    -----
    **One design.** A model has one expert design, so both families must
    build the same matrix from ``X``: at construction their design column
    names (for two covariates) and their designs at a fixed probe of three
    rows with distinct values must agree, else ``ValueError``. In practice
    both use the same polynomial basis: ``[1, x]`` for ReLU experts and
    ``GaussianExpert(degree=1)``. The design is then built by the shared
    family.

    **Every hook delegates.** Per-expert arrays (log densities, means,
    atoms) are the shared block's columns followed by the routed block's;
    packed vectors (parameters, gradients, bounds, scales) are the shared
    block's then the routed block's; the M-step gives each block its own
    columns of the responsibilities. Parameter names keep one global expert
    numbering (the routed experts after the shared ones, as the gate's
    names do); a name that belongs to no single expert (a pooled variance)
    gets the prefix ``shared:`` or ``routed:``. A permutation must keep the
    shared experts among themselves, as :class:`SharedExpertsGate` requires.

    Examples
    --------
    >>> from moestat import ReLUExpert, StackedExperts
    >>> expert = StackedExperts(ReLUExpert(bias=True), ReLUExpert(bias=False), 1)
    >>> expert.n_free_parameters(n_experts=3, n_design=2)
    10
    """

    shared: Any
    routed: Any
    n_shared: int
    name: ClassVar[str] = "stacked"

    @property
    def response_family(self) -> str | None:
        """The response family both parts declare; None where they differ."""
        family = getattr(self.shared, "response_family", None)
        same = getattr(self.routed, "response_family", None) == family
        return family if same else None

    @property
    def voronoi_signature(self) -> str | None:
        """The Voronoi signature both parts declare; None where they differ."""
        signature = getattr(self.shared, "voronoi_signature", None)
        same = getattr(self.routed, "voronoi_signature", None) == signature
        return signature if same else None

    def __post_init__(self) -> None:
        if isinstance(self.n_shared, bool) or not isinstance(
            self.n_shared, int | np.integer
        ):
            raise ValueError(f"n_shared must be an int; got {self.n_shared!r}.")
        if self.n_shared < 1:
            raise ValueError(f"n_shared must be at least 1; got {self.n_shared}.")
        names = [self.shared.design_names(["x0", "x1"])]
        names.append(self.routed.design_names(["x0", "x1"]))
        same = names[0] == names[1]
        if same:
            designs = [self.shared.design(_PROBE), self.routed.design(_PROBE)]
            same = designs[0].shape == designs[1].shape and np.allclose(*designs)
        if not same:
            raise ValueError(
                "The shared and routed expert families must build the same "
                f"design; {type(self.shared).__name__} has columns {names[0]} "
                f"and {type(self.routed).__name__} has {names[1]}. Use one "
                "basis for both (degree=1 beside ReLU experts)."
            )

    # -- blocks ------------------------------------------------------------
    def n_routed(self, n_experts: int) -> int:
        """Routed experts among ``n_experts`` in all."""
        return n_experts - self.n_shared

    def _sizes(self, n_experts: int, n_design: int) -> tuple[int, int]:
        """Packed lengths of the two blocks."""
        return (
            self.shared.n_free_parameters(self.n_shared, n_design),
            self.routed.n_free_parameters(self.n_routed(n_experts), n_design),
        )

    def _n_design(self, size: int, n_experts: int) -> int:
        """The design width whose packed length is ``size`` (for :meth:`natural`)."""
        for n_design in range(1, size + 1):
            total = self.n_free_parameters(n_experts, n_design)
            if total == size:
                return n_design
            if total > size:
                break
        raise ValueError(
            f"{size} packed parameters fit no design width for {n_experts} experts."
        )

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The common design, built by the shared family."""
        return self.shared.design(X)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the common design's columns."""
        return self.shared.design_names(feature_names)

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Free parameters of both blocks."""
        return sum(self._sizes(n_experts, n_design))

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """Identifiable parameters of both blocks (for information criteria)."""
        n_routed = n_experts - self.n_shared
        return sum(
            expert_degrees_of_freedom(family, count, n_design)
            for family, count in ((self.shared, self.n_shared), (self.routed, n_routed))
        )

    # -- density -----------------------------------------------------------
    def _columns(self, shared, routed):
        out = np.empty((shared.shape[0], shared.shape[1] + routed.shape[1]), order="F")
        out[:, : self.n_shared] = shared
        out[:, self.n_shared :] = routed
        return out

    def mean(
        self, params: StackedExpertParams, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Conditional mean of each expert, shape (n, n_experts)."""
        return self._columns(
            self.shared.mean(params.shared, Phi), self.routed.mean(params.routed, Phi)
        )

    def log_density(
        self,
        params: StackedExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """``log f(y_t | x_t; theta_i)`` of shape (n, n_experts)."""
        return self._columns(
            self.shared.log_density(params.shared, Phi, y),
            self.routed.log_density(params.routed, Phi, y),
        )

    def sample(
        self,
        params: StackedExpertParams,
        Phi: NDArray[np.float64],
        labels: NDArray[np.intp],
        rng: np.random.Generator,
    ) -> NDArray[np.float64]:
        """Draw ``y_t`` from expert ``labels[t]`` (shared rows drawn first)."""
        labels = np.asarray(labels)
        y = np.empty(len(labels))
        is_shared = labels < self.n_shared
        y[is_shared] = self.shared.sample(
            params.shared, Phi[is_shared], labels[is_shared], rng
        )
        y[~is_shared] = self.routed.sample(
            params.routed, Phi[~is_shared], labels[~is_shared] - self.n_shared, rng
        )
        return y

    # -- fitting -----------------------------------------------------------
    def sufficient_features(
        self, Phi: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[Any, Any]:
        """Each block's own features, as a pair."""
        return (
            self.shared.sufficient_features(Phi, y),
            self.routed.sufficient_features(Phi, y),
        )

    def m_step(
        self,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
        previous: StackedExpertParams | None = None,
        features: tuple[Any, Any] | None = None,
    ) -> StackedExpertParams:
        """Each block's M-step on its own columns of the responsibilities.

        Parameters
        ----------
        Phi : ndarray of shape (n, p)
            Expert design.
        y : ndarray of shape (n,)
            Responses.
        resp : ndarray of shape (n, m)
            Responsibilities, shared experts first.
        var_floor : float
            Lower bound on the variances, passed to both blocks.
        previous : StackedExpertParams, optional
            Current parameters, split between the blocks.
        features : tuple, optional
            :meth:`sufficient_features` of ``(Phi, y)``.

        Returns
        -------
        StackedExpertParams
        """
        k = self.n_shared
        shared_features, routed_features = features or (None, None)
        shared_prev = routed_prev = None
        if previous is not None:
            shared_prev, routed_prev = previous.shared, previous.routed
        shared = self.shared.m_step(
            Phi, y, resp[:, :k], var_floor, shared_prev, shared_features
        )
        routed = self.routed.m_step(
            Phi, y, resp[:, k:], var_floor, routed_prev, routed_features
        )
        return StackedExpertParams(shared, routed)

    def gradient(
        self,
        params: StackedExpertParams,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
    ) -> NDArray[np.float64]:
        """Gradient of ``sum r log f``: the shared block's, then the routed one's."""
        k = self.n_shared
        return np.concatenate(
            [
                self.shared.gradient(params.shared, Phi, y, resp[:, :k], var_floor),
                self.routed.gradient(params.routed, Phi, y, resp[:, k:], var_floor),
            ]
        )

    def penalty(self, params: StackedExpertParams, Phi: NDArray[np.float64]) -> float:
        """The shared block's ridge penalty plus the routed block's.

        Parameters
        ----------
        params : StackedExpertParams
        Phi : ndarray of shape (n, p)
            Expert design.

        Returns
        -------
        float
        """
        return self.shared.penalty(params.shared, Phi) + self.routed.penalty(
            params.routed, Phi
        )

    # -- parametrisation ---------------------------------------------------
    def pack(
        self, params: StackedExpertParams, var_floor: float
    ) -> NDArray[np.float64]:
        """The shared block's packed vector, then the routed block's."""
        return np.concatenate(
            [
                self.shared.pack(params.shared, var_floor),
                self.routed.pack(params.routed, var_floor),
            ]
        )

    def unpack(
        self,
        theta: NDArray[np.float64],
        n_experts: int,
        n_design: int,
        var_floor: float,
    ) -> StackedExpertParams:
        """Inverse of :meth:`pack`."""
        k = self._sizes(n_experts, n_design)[0]
        return StackedExpertParams(
            self.shared.unpack(theta[:k], self.n_shared, n_design, var_floor),
            self.routed.unpack(
                theta[k:], self.n_routed(n_experts), n_design, var_floor
            ),
        )

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Both blocks' bounds, concatenated."""
        lo_s, hi_s = self.shared.pack_bounds(self.n_shared, n_design)
        lo_r, hi_r = self.routed.pack_bounds(self.n_routed(n_experts), n_design)
        return np.concatenate([lo_s, lo_r]), np.concatenate([hi_s, hi_r])

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Both blocks' scales, concatenated."""
        return np.concatenate(
            [
                self.shared.pack_scales(column_scales, self.n_shared),
                self.routed.pack_scales(column_scales, self.n_routed(n_experts)),
            ]
        )

    def natural(
        self, theta: NDArray[np.float64], n_experts: int, var_floor: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Both blocks' reported values and Jacobians, concatenated.

        The split point follows from the length of ``theta``: the design
        width is the one whose packed length matches.
        """
        n_design = self._n_design(len(theta), n_experts)
        k = self._sizes(n_experts, n_design)[0]
        shared = self.shared.natural(theta[:k], self.n_shared, var_floor)
        routed = self.routed.natural(theta[k:], self.n_routed(n_experts), var_floor)
        return (
            np.concatenate([shared[0], routed[0]]),
            np.concatenate([shared[1], routed[1]]),
        )

    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Readable names, the experts numbered globally (shared first)."""
        shared = self.shared.parameter_names(self.n_shared, design_names, offset)
        routed = self.routed.parameter_names(
            self.n_routed(n_experts), design_names, offset + self.n_shared
        )

        def prefixed(names, prefix):
            return [n if n.startswith("expert") else f"{prefix}:{n}" for n in names]

        return prefixed(shared, "shared") + prefixed(routed, "routed")

    def check_response(self, y: NDArray[np.float64]) -> None:
        """Raise ``ValueError`` unless both families accept ``y``."""
        self.shared.check_response(y)
        self.routed.check_response(y)

    def variance_floor(self, y: NDArray[np.float64], reg_var: float) -> float:
        """The smaller of the blocks' positive floors (0 if neither has one)."""
        floors = [
            f
            for f in (
                self.shared.variance_floor(y, reg_var),
                self.routed.variance_floor(y, reg_var),
            )
            if f > 0
        ]
        return min(floors) if floors else 0.0

    def at_variance_floor(
        self, params: StackedExpertParams, var_floor: float
    ) -> NDArray[np.intp]:
        """Experts (global indices) whose variance sits at the floor."""
        shared = self.shared.at_variance_floor(params.shared, var_floor)
        routed = self.routed.at_variance_floor(params.routed, var_floor)
        return np.concatenate(
            [np.asarray(shared, dtype=np.intp), np.asarray(routed) + self.n_shared]
        ).astype(np.intp)

    def check_params(self, params: object, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit both blocks."""
        if not isinstance(params, StackedExpertParams):
            raise ValueError(
                f"StackedExperts needs StackedExpertParams; got "
                f"{type(params).__name__}."
            )
        if self.n_routed(n_experts) < 1:
            raise ValueError(
                f"init: {n_experts} experts leave no routed expert beside "
                f"{self.n_shared} shared ones."
            )
        if params.shared.n_experts != self.n_shared:
            raise ValueError(
                f"init: {params.shared.n_experts} shared experts in the "
                f"parameters; StackedExperts has n_shared={self.n_shared}."
            )
        self.shared.check_params(params.shared, self.n_shared, n_design)
        self.routed.check_params(params.routed, self.n_routed(n_experts), n_design)

    def split_atoms(
        self, params: StackedExpertParams, index: ArrayLike
    ) -> StackedExpertParams:
        """Parameters whose expert ``i`` copies expert ``index[i]`` of ``params``.

        ``params`` may have fewer shared experts than this family: the first
        ``n_shared`` entries of ``index`` pick shared experts, the rest
        routed ones (in ``params``' numbering); indices may repeat.
        """
        index = np.asarray(index, dtype=np.intp)
        k1, source = self.n_shared, params.shared.n_experts
        return StackedExpertParams(
            self.shared.split_atoms(params.shared, index[:k1]),
            self.routed.split_atoms(params.routed, index[k1:] - source),
        )

    def permute(
        self, params: StackedExpertParams, perm: ArrayLike
    ) -> StackedExpertParams:
        """Reorder experts within the shared and within the routed block."""
        perm = np.asarray(perm)
        k, m = self.n_shared, params.n_experts
        if not (
            np.array_equal(np.sort(perm), np.arange(m))
            and np.array_equal(np.sort(perm[:k]), np.arange(k))
        ):
            raise ValueError(
                "A permutation must keep the shared experts (the first "
                f"{k}) among themselves and the routed among themselves; got "
                f"{perm.tolist()}."
            )
        return StackedExpertParams(
            self.shared.permute(params.shared, perm[:k]),
            self.routed.permute(params.routed, perm[k:] - k),
        )

    # -- atoms ---------------------------------------------------------------
    def atoms(self, params: StackedExpertParams) -> NDArray[np.float64]:
        """Both blocks' atoms, the narrower padded with zeros on the right.

        Matching never pairs a shared with a routed expert (the gate's
        groups), so the padding never enters a comparison that matters.
        """
        shared = self.shared.atoms(params.shared)
        routed = self.routed.atoms(params.routed)
        width = max(shared.shape[1], routed.shape[1])
        out = np.zeros((shared.shape[0] + routed.shape[0], width))
        out[: shared.shape[0], : shared.shape[1]] = shared
        out[shared.shape[0] :, : routed.shape[1]] = routed
        return out

    def atom_blocks(
        self, params: StackedExpertParams
    ) -> list[dict[str, NDArray[np.float64]]]:
        """The shared block's atom blocks, then the routed block's."""
        return self.shared.atom_blocks(params.shared) + self.routed.atom_blocks(
            params.routed
        )
