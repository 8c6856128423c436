"""Shared experts beside routed ones (DeepSeekMoE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit

from moestat._math import array_namespace, logsumexp_rows
from moestat.gates._base import GateParams
from moestat.kernels.gates import (
    SHARE_MIN,
    log_sigmoid,
    log_sum_exp,
    shared_expert_weights,
    shared_gate_log_weights,
    softmax_log_weights,
)
from moestat.protocols import BatchedGate, Penalised

__all__ = ["SharedGateParams", "SharedExpertsGate"]


# the learned share of the shared block stays inside (0, 1), as in the M-step
_SHARE_MIN = SHARE_MIN


@dataclass(frozen=True)
class SharedGateParams:
    """Parameters of the shared-expert arrangement.

    Parameters
    ----------
    routed : GateParams
        Parameters of the gate over the routed experts.
    shared_weights : ndarray of shape (n_shared,)
        ``omega``: positive weights of the shared experts, summing to one.
    shared_share : float
        Total weight of the shared block (``1/2`` in DeepSeekMoE).
    """

    routed: GateParams
    shared_weights: NDArray[np.float64]
    shared_share: float = 0.5

    @property
    def n_experts(self) -> int:
        """Number of experts, shared and routed."""
        return len(self.shared_weights) + self.routed.n_experts

    @property
    def coef(self) -> NDArray[np.float64]:
        """The routed gate's coefficients."""
        return self.routed.coef


@dataclass(frozen=True)
class SharedExpertsGate:
    """Always-active shared experts beside routed experts (DeepSeekMoE).

    ``p(y | x) = lambda sum_i omega_i f(y | x; kappa_i)
    + (1 - lambda) sum_j g_j(x) f(y | x; eta_j)``: the ``n_shared``
    shared experts (listed first) get constant weights ``omega`` that do not
    depend on x; the routed experts are mixed by any other gate.

    Parameters
    ----------
    routed : gate object
        The gate over the routed experts (softmax, modified softmax,
        normalized sigmoid with or without top-K).
    n_shared : int
        Number of shared experts (at least 1).
    shared_weight : {"fixed_half", "learned"}, default="fixed_half"
        ``lambda = 1/2`` as in DeepSeekMoE, or estimated.

    Notes
    -----
    M-step: the routed gate takes its own step on the routed
    responsibilities (whose rows sum to ``rho_t < 1``), and
    ``omega_i = sum_t r_ti / sum_{shared} sum_t r_ti`` exactly; a learned
    ``lambda`` is the mean shared responsibility. The learned split is our
    extension, outside the DeepSeekMoE analysis.
    """

    routed: Any
    n_shared: int
    shared_weight: str = "fixed_half"
    name: ClassVar[str] = "shared"

    @property
    def voronoi_signature(self) -> str:
        """The Voronoi signature of the routed gate."""
        return self.routed.voronoi_signature

    @property
    def translation_invariant(self) -> bool:
        """Whether the routed gate's weights ignore a common translation."""
        return self.routed.translation_invariant

    def __post_init__(self) -> None:
        if isinstance(self.n_shared, bool) or not isinstance(
            self.n_shared, int | np.integer
        ):
            raise ValueError(f"n_shared must be an int; got {self.n_shared!r}.")
        if self.n_shared < 1:
            raise ValueError(
                f"n_shared must be at least 1; got {self.n_shared}. Use the "
                "routed gate alone for no shared experts."
            )
        if self.shared_weight not in ("fixed_half", "learned"):
            raise ValueError(
                "shared_weight must be 'fixed_half' or 'learned'; got "
                f"{self.shared_weight!r}."
            )

    @property
    def learned(self) -> bool:
        """Whether the split between the blocks is estimated."""
        return self.shared_weight == "learned"

    @property
    def alpha(self) -> float:
        """The routed gate's ridge strength (the shared weights are free)."""
        return float(self.routed.alpha) if isinstance(self.routed, Penalised) else 0.0

    # -- design and counts -------------------------------------------------
    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The routed gate's design."""
        return self.routed.design(X)

    def design_names(self, feature_names: list[str]) -> list[str]:
        """The routed gate's design names."""
        return self.routed.design_names(feature_names)

    def n_routed(self, n_experts: int) -> int:
        """Routed experts among ``n_experts`` in all."""
        return n_experts - self.n_shared

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Routed gate, ``n_shared - 1`` weights, and ``lambda`` if learned."""
        routed = self.routed.n_free_parameters(self.n_routed(n_experts), n_design)
        return routed + self.n_shared - 1 + int(self.learned)

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """Free parameters counted by the information criteria."""
        routed = self.routed.degrees_of_freedom(self.n_routed(n_experts), n_design)
        return routed + self.n_shared - 1 + int(self.learned)

    def expert_groups(self, n_experts: int) -> NDArray[np.intp]:
        """Shared experts form group 0, routed experts group 1."""
        return np.repeat([0, 1], [self.n_shared, self.n_routed(n_experts)])

    def check_n_experts(self, n_experts: int, for_fit: bool = True) -> None:
        """Check the routed gate against the number of routed experts."""
        self.routed.check_n_experts(self.n_routed(n_experts), for_fit)

    def describe(self) -> str:
        """The routed gate's label and the number of shared experts."""
        return f"{self.routed.describe()} + {self.n_shared} shared"

    def random_params(
        self, n_experts: int, n_design: int, scale: float, rng: np.random.Generator
    ) -> SharedGateParams:
        """Random routed gate; equal shared weights and the split 1/2."""
        routed = self.routed.random_params(
            self.n_routed(n_experts), n_design, scale, rng
        )
        return SharedGateParams(routed, np.full(self.n_shared, 1.0 / self.n_shared))

    # -- Voronoi losses ----------------------------------------------------
    def split_atoms(
        self, params: SharedGateParams, index: ArrayLike
    ) -> SharedGateParams:
        """Parameters whose expert ``i`` copies expert ``index[i]`` of ``params``.

        ``params`` may have fewer shared experts than this gate: the first
        ``n_shared`` entries of ``index`` pick shared experts, the rest
        routed ones (in ``params``' numbering). Copies share the weight
        ``omega`` or the routed mass of the expert they copy.
        """
        index = np.asarray(index, dtype=np.intp)
        k1, source = self.n_shared, len(params.shared_weights)
        shared, routed = index[:k1], index[k1:] - source
        if shared.max() >= source or (routed.size and routed.min() < 0):
            raise ValueError(
                f"index {index.tolist()} maps shared experts to routed ones; the "
                f"first {k1} entries must be below {source}, the rest not."
            )
        counts = np.bincount(shared, minlength=source)[shared]
        return SharedGateParams(
            self.routed.split_atoms(params.routed, routed),
            params.shared_weights[shared] / counts,
            params.shared_share,
        )

    def voronoi_masses(self, params: SharedGateParams) -> NDArray[np.float64]:
        """Masses of the experts' atoms, shape (n_experts,).

        ``omega_i`` for the shared experts, then the routed gate's masses
        (theory.md section 3.6: ``G_1 = sum omega_i delta``, ``G_2 = sum
        exp(beta_0i) delta`` or ``sum sigma(beta_0i) delta``). The split
        ``lambda`` between the blocks is not part of either measure.
        """
        routed = self.routed.voronoi_masses(params.routed)
        return np.concatenate([np.asarray(params.shared_weights, dtype=float), routed])

    # -- density -----------------------------------------------------------
    def log_weights(
        self, params: SharedGateParams, Z: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """``log(lambda omega_i)`` for shared, ``log((1 - lambda) g_j)`` routed."""
        routed = self.routed.log_weights(params.routed, Z)
        return self._assemble(routed, params.shared_weights, params.shared_share)

    def _assemble(self, routed_log, omega, share):
        out = np.empty((routed_log.shape[0], self.n_shared + routed_log.shape[1]))
        out = np.asfortranarray(out)
        out[:, : self.n_shared] = np.log(share) + np.log(omega)
        out[:, self.n_shared :] = np.log1p(-share) + routed_log
        return out

    # -- fitting -----------------------------------------------------------
    def sufficient_features(self, Z: NDArray[np.float64]) -> NDArray[np.float64]:
        """The routed gate's features."""
        return self.routed.sufficient_features(Z)

    def _closed_form(self, resp):
        omega, share = shared_expert_weights(
            resp[:, : self.n_shared], resp.shape[0], self.learned
        )
        return omega, float(share)

    def init_params(
        self, Z: NDArray[np.float64], resp: NDArray[np.float64]
    ) -> SharedGateParams:
        """Routed gate fitted to the routed labels; closed-form weights."""
        routed = resp[:, self.n_shared :]
        routed = routed / np.maximum(routed.sum(axis=1, keepdims=True), 1e-300)
        omega, share = self._closed_form(resp)
        return SharedGateParams(self.routed.init_params(Z, routed), omega, share)

    def m_step(
        self,
        params: SharedGateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64] | None = None,
        features: NDArray[np.float64] | None = None,
        log_f: NDArray[np.float64] | None = None,
        log_background: NDArray[np.float64] | None = None,
    ) -> tuple[SharedGateParams, NDArray[np.float64]]:
        """Exact shared weights from ``resp``, then the routed gate's step.

        With ``log_f`` the routed step is judged by the observed
        log-likelihood, the shared experts entering as its background.
        """
        k1 = self.n_shared
        omega, share = self._closed_form(resp)
        routed_log = None
        if log_weights is not None:
            routed_log = log_weights[:, k1:] - np.log1p(-params.shared_share)
        routed_log_f = background = None
        if log_f is not None:
            routed_log_f = log_f[:, k1:] + np.log1p(-share)
            shared_terms = log_f[:, :k1] + (np.log(share) + np.log(omega))
            background = (
                shared_terms[:, 0]
                if k1 == 1
                else logsumexp_rows(np.asfortranarray(shared_terms))
            )
        routed, routed_log = self.routed.m_step(
            params.routed,
            Z,
            resp[:, k1:],
            routed_log,
            features,
            routed_log_f,
            background,
        )
        new = SharedGateParams(routed, omega, share)
        return new, self._assemble(routed_log, omega, share)

    # -- the kernel on batches (numpy or torch) ----------------------------
    @property
    def runs_batched(self) -> bool:
        """Whether the routed gate has batch hooks that apply."""
        return isinstance(self.routed, BatchedGate) and bool(self.routed.runs_batched)

    def _routed_size(self, n_experts: int, n_design: int) -> int:
        return self.routed.n_free_parameters(self.n_routed(n_experts), n_design)

    def _batch_log_shares(self, theta: Any) -> tuple[Any, Any]:
        """``(log lambda, log(1 - lambda))`` of each data set, (...,) each."""
        xp = array_namespace(theta)
        if self.learned:
            last = theta[..., -1]
            return log_sigmoid(last), log_sigmoid(-last)
        half = xp.full_like(theta[..., 0], float(np.log(0.5)))
        return half, half

    def batch_log_weights(self, theta: Any, Z: Any, n_experts: int) -> Any:
        """``log g`` of a batch of data sets from packed parameters.

        Parameters
        ----------
        theta : array of shape (..., P)
            Packed parameters (:meth:`pack`'s layout).
        Z : array of shape (..., n, p)
            The routed gate's designs.
        n_experts : int
            Experts in all, shared ones included.

        Returns
        -------
        array of shape (..., n, m)
            The shared experts first.
        """
        xp = array_namespace(theta, Z)
        r = self._routed_size(n_experts, Z.shape[-1])
        routed = self.routed.batch_log_weights(
            theta[..., :r], Z, self.n_routed(n_experts)
        )
        logits = xp.concat(
            [xp.zeros_like(theta[..., :1]), theta[..., r : r + self.n_shared - 1]],
            axis=-1,
        )
        return shared_gate_log_weights(
            routed, softmax_log_weights(logits), *self._batch_log_shares(theta)
        )

    def batch_m_step(
        self,
        theta: Any,
        Z: Any,
        weight: Any,
        resp: Any,
        log_weights: Any,
        log_f: Any,
        n_experts: int,
        log_background: Any = None,
    ) -> tuple[Any, Any]:
        """:meth:`m_step` on a batch of data sets, packed.

        The exact ``omega`` and ``lambda``
        (:func:`~moestat.kernels.gates.shared_expert_weights`), then the
        routed gate's ``batch_m_step`` on the routed responsibilities, the
        shared experts as its background density.

        Parameters
        ----------
        theta : array of shape (..., P)
        Z : array of shape (..., n, p)
        weight : array of shape (..., n)
            Sample weights, zero on padding rows.
        resp, log_weights, log_f : arrays of shape (..., n, m)
            Responsibilities, ``log g`` at ``theta`` and the experts' new
            log densities.
        n_experts : int
        log_background : array of shape (..., n), optional
            Not used (the shared experts are this gate's own background).

        Returns
        -------
        theta : array of shape (..., P)
        log_weights : array of shape (..., n, m)
        """
        xp = array_namespace(theta, Z, resp)
        k = self.n_shared
        r = self._routed_size(n_experts, Z.shape[-1])
        routed_log_g = (
            log_weights[..., k:] - self._batch_log_shares(theta)[1][..., None, None]
        )
        omega, share = shared_expert_weights(
            resp[..., :k], xp.sum(weight, axis=-1), self.learned
        )
        log_omega, log_share, log_rest = xp.log(omega), xp.log(share), xp.log1p(-share)
        shared_terms = log_f[..., :k] + (log_share[..., None] + log_omega)[..., None, :]
        routed, routed_log_g = self.routed.batch_m_step(
            theta[..., :r],
            Z,
            weight,
            resp[..., k:],
            routed_log_g,
            log_f[..., k:] + log_rest[..., None, None],
            self.n_routed(n_experts),
            log_sum_exp(shared_terms)[..., 0],
        )
        parts = [routed, xp.log(omega[..., 1:] / omega[..., :1])]
        if self.learned:
            parts.append(xp.log(share / (1.0 - share))[..., None])
        log_g = shared_gate_log_weights(routed_log_g, log_omega, log_share, log_rest)
        return xp.concat(parts, axis=-1), log_g

    def batch_project(self, theta: Any) -> Any:
        """The routed gate's box on its entries; the shared weights are free.

        Parameters
        ----------
        theta : array of shape (..., P)

        Returns
        -------
        array of shape (..., P)
        """
        xp = array_namespace(theta)
        r = theta.shape[-1] - self.n_shared + 1 - int(self.learned)
        routed = self.routed.batch_project(theta[..., :r])
        return xp.concat([routed, theta[..., r:]], axis=-1)

    def gradient(
        self,
        params: SharedGateParams,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """Gradient in (routed gate, omega logits, logit lambda)."""
        routed_log = log_weights[:, self.n_shared :] - np.log1p(-params.shared_share)
        routed = self.routed.gradient(
            params.routed, Z, resp[:, self.n_shared :], routed_log
        )
        shared_resp = resp[:, : self.n_shared].sum(axis=0)
        omega_grad = shared_resp - shared_resp.sum() * params.shared_weights
        parts = [routed, omega_grad[1:]]
        if self.learned:
            total_shared = shared_resp.sum()
            parts.append([total_shared - resp.shape[0] * params.shared_share])
        return np.concatenate(parts)

    def penalty(self, params: SharedGateParams, Z: NDArray[np.float64]) -> float:
        """The routed gate's ridge penalty (see ``_AffineGate.penalty``).

        Parameters
        ----------
        params : SharedGateParams
        Z : ndarray of shape (n, p)
            Gate design.

        Returns
        -------
        float
        """
        return self.routed.penalty(params.routed, Z)

    # -- parametrisation ---------------------------------------------------
    def pack(self, params: SharedGateParams) -> NDArray[np.float64]:
        """Routed gate, then ``log(omega_i / omega_0)``, then ``logit lambda``."""
        logits = np.log(params.shared_weights[1:] / params.shared_weights[0])
        parts = [self.routed.pack(params.routed), logits]
        if self.learned:
            # a share at 0 or 1 would pack to an infinite logit
            share = float(np.clip(params.shared_share, _SHARE_MIN, 1.0 - _SHARE_MIN))
            parts.append([np.log(share / (1 - share))])
        return np.concatenate(parts)

    def unpack(
        self, theta: NDArray[np.float64], n_experts: int, n_design: int
    ) -> SharedGateParams:
        """Inverse of :meth:`pack`."""
        n_routed = self.n_routed(n_experts)
        k = self.routed.n_free_parameters(n_routed, n_design)
        routed = self.routed.unpack(theta[:k], n_routed, n_design)
        logits = np.concatenate([[0.0], theta[k : k + self.n_shared - 1]])
        omega = np.exp(logits - logsumexp_rows(logits[None, :])[0])
        share = 0.5
        if self.learned:
            share = float(expit(theta[k + self.n_shared - 1]))
            share = float(np.clip(share, _SHARE_MIN, 1.0 - _SHARE_MIN))
        return SharedGateParams(routed, omega, share)

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Routed gate's scales, then 1 for the weights."""
        routed = self.routed.pack_scales(column_scales, self.n_routed(n_experts))
        return np.concatenate([routed, np.ones(self.n_shared - 1 + int(self.learned))])

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The routed gate's bounds; the weights are unbounded."""
        lo, hi = self.routed.pack_bounds(self.n_routed(n_experts), n_design)
        extra = np.full(self.n_shared - 1 + int(self.learned), np.inf)
        return np.concatenate([lo, -extra]), np.concatenate([hi, extra])

    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Routed gate rows (numbered after the shared experts), then weights."""
        names = self.routed.parameter_names(
            self.n_routed(n_experts), design_names, offset + self.n_shared
        )
        names += [
            f"shared{i + 1 + offset}[log(omega{i + 1}/omega1)]"
            for i in range(1, self.n_shared)
        ]
        if self.learned:
            names.append("shared[logit(lambda)]")
        return names

    def permute(self, params: SharedGateParams, perm: ArrayLike) -> SharedGateParams:
        """Reorder experts within the shared and the routed block."""
        perm = np.asarray(perm)
        k1 = self.n_shared
        if not np.array_equal(np.sort(perm[:k1]), np.arange(k1)):
            raise ValueError(
                "A permutation must keep the shared experts (the first "
                f"{k1}) among themselves; got {perm.tolist()}."
            )
        routed = self.routed.permute(params.routed, perm[k1:] - k1)
        return SharedGateParams(
            routed, params.shared_weights[perm[:k1]], params.shared_share
        )

    def check_params(self, params: Any, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this arrangement."""
        if not isinstance(params, SharedGateParams):
            raise ValueError(
                f"SharedExpertsGate needs SharedGateParams; got "
                f"{type(params).__name__}."
            )
        if len(params.shared_weights) != self.n_shared:
            raise ValueError(
                f"init: {len(params.shared_weights)} shared weights for "
                f"{self.n_shared} shared experts."
            )
        if not np.isclose(params.shared_weights.sum(), 1.0) or np.any(
            params.shared_weights <= 0
        ):
            raise ValueError("init: shared weights must be positive and sum to 1.")
        self.routed.check_params(params.routed, self.n_routed(n_experts), n_design)
