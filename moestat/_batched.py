"""Gates and expert families on batches of data sets, through their own hooks.

A gate with batched kernels (:class:`moestat.protocols.BatchedGate`) and an
expert family with them (:class:`moestat.protocols.BatchedExpertFamily`)
are written over the Python array API, so the batch engines hand them
arrays of any namespace: :class:`GateOnBatches` and :class:`FamilyOnBatches`
fix the number of experts and the design's width and call the piece's
hooks. A stack of shared and routed experts
(:class:`~moestat.protocols.CompositeExpertFamily`) runs when both its
parts do: :class:`StackOnBatches` splits the packed parameters and the
responsibilities between them, as the numpy
:class:`~moestat.experts.StackedExperts` does. :func:`batched_gate` and
:func:`batched_expert` choose the wrapper or say what a piece lacks.

Batched arrays have a leading axis ``B`` (replications, restarts or cells):
parameters (B, P) in the numpy piece's packed layout, designs (B, n, p),
responses (B, n), log weights and log densities (B, n, m).
"""

from __future__ import annotations

from typing import Any

from moestat._math import array_namespace
from moestat.protocols import (
    BatchedExpertFamily,
    BatchedGate,
    CompositeExpertFamily,
    missing_members,
)

__all__ = [
    "GateOnBatches",
    "FamilyOnBatches",
    "StackOnBatches",
    "batched_gate",
    "batched_expert",
    "BUILT_IN_EXPERTS",
    "BUILT_IN_GATES",
]

#: The gates of moestat with batched kernels (each without a ridge).
BUILT_IN_GATES = (
    "SoftmaxGate",
    "ModifiedSoftmaxGate",
    "NormalizedSigmoidGate",
    "SharedExpertsGate",
)
#: The expert families of moestat with batched kernels (GLM and multinomial
#: without a ridge), and stacks of them.
BUILT_IN_EXPERTS = (
    "GaussianExpert",
    "GLMExpert",
    "MultinomialLogisticExpert",
    "ReLUExpert",
    "StackedExperts",
)


class GateOnBatches:
    """A gate's batch hooks for given numbers of experts and design columns.

    Parameters
    ----------
    gate : BatchedGate
    n_experts, n_design : int

    Attributes
    ----------
    n_params : int
        Length of the packed parameters.
    """

    def __init__(self, gate: Any, n_experts: int, n_design: int) -> None:
        self.gate, self.m, self.p = gate, n_experts, n_design
        self.n_params = int(gate.n_free_parameters(n_experts, n_design))

    def log_weights(self, theta: Any, Z: Any) -> Any:
        """``log g`` (B, n, m) from packed parameters (B, P)."""
        return self.gate.batch_log_weights(theta, Z, self.m)

    def m_step(
        self,
        theta: Any,
        Z: Any,
        weight: Any,
        resp: Any,
        log_g: Any,
        log_f: Any,
        background: Any = None,
    ) -> tuple[Any, Any]:
        """The gate's M-step from ``theta``: packed parameters and their ``log g``."""
        return self.gate.batch_m_step(
            theta, Z, weight, resp, log_g, log_f, self.m, background
        )

    def project(self, theta: Any) -> Any:
        """Packed parameters inside the gate's parameter space."""
        return self.gate.batch_project(theta)


class FamilyOnBatches:
    """A family's batch hooks for given numbers of experts and design columns.

    Parameters
    ----------
    expert : BatchedExpertFamily
    n_experts, n_design : int

    Attributes
    ----------
    n_params : int
        Length of the packed parameters.
    """

    def __init__(self, expert: Any, n_experts: int, n_design: int) -> None:
        self.expert, self.m, self.p = expert, n_experts, n_design
        self.n_params = int(expert.n_free_parameters(n_experts, n_design))

    def log_density(self, theta: Any, Phi: Any, y: Any, var_floor: Any) -> Any:
        """``log f`` (B, n, m) from packed parameters (B, P)."""
        return self.expert.batch_log_density(theta, Phi, y, var_floor, self.m)

    def m_step(self, theta: Any, Phi: Any, y: Any, resp: Any, var_floor: Any) -> Any:
        """The family's M-step from ``theta``, packed (B, P)."""
        return self.expert.batch_m_step(theta, Phi, y, resp, var_floor, self.m)


class StackOnBatches:
    """Shared experts of one family beside routed experts of another, batched.

    Parameters
    ----------
    shared, routed : FamilyOnBatches or StackOnBatches
        The batched pieces of the first ``n_shared`` experts and of the
        others.
    n_shared : int
    """

    def __init__(self, shared: Any, routed: Any, n_shared: int) -> None:
        self.shared, self.routed, self.k = shared, routed, n_shared
        self.n_params = shared.n_params + routed.n_params

    def _split(self, theta: Any) -> tuple[Any, Any]:
        size = self.shared.n_params
        return theta[..., :size], theta[..., size:]

    def log_density(self, theta: Any, Phi: Any, y: Any, var_floor: Any) -> Any:
        """Shared experts' columns, then the routed experts', (B, n, m)."""
        xp = array_namespace(theta, Phi, y)
        shared, routed = self._split(theta)
        return xp.concat(
            [
                self.shared.log_density(shared, Phi, y, var_floor),
                self.routed.log_density(routed, Phi, y, var_floor),
            ],
            axis=-1,
        )

    def m_step(self, theta: Any, Phi: Any, y: Any, resp: Any, var_floor: Any) -> Any:
        """Each part's M-step on its own columns of the responsibilities."""
        xp = array_namespace(theta, Phi, y, resp)
        shared, routed = self._split(theta)
        k = self.k
        return xp.concat(
            [
                self.shared.m_step(shared, Phi, y, resp[..., :k], var_floor),
                self.routed.m_step(routed, Phi, y, resp[..., k:], var_floor),
            ],
            axis=-1,
        )


def _lacks(piece: Any, protocol: type) -> str:
    """What ``piece`` lacks of ``protocol``: missing hooks, or ``runs_batched``."""
    missing = missing_members(piece, protocol)
    if missing:
        return f"it lacks {', '.join(missing)}"
    return (
        "its runs_batched is False (a ridge, alpha > 0, is fitted one data set "
        "at a time)"
    )


def batched_gate(gate: Any, n_experts: int, n_design: int) -> GateOnBatches:
    """The batched piece of a gate.

    Parameters
    ----------
    gate : BatchedGate
        A gate with batched kernels whose ``runs_batched`` is true (every
        gate of :data:`BUILT_IN_GATES` without a ridge, and user-written
        gates with the hooks).
    n_experts : int
        Number of experts ``m``.
    n_design : int
        Columns of the gate design.

    Returns
    -------
    GateOnBatches

    Raises
    ------
    ValueError
        Naming the gate and what it lacks.
    """
    if isinstance(gate, BatchedGate) and gate.runs_batched:
        return GateOnBatches(gate, n_experts, n_design)
    raise ValueError(
        f"The {type(gate).__name__} gate has no batched kernels, so the torch "
        f"backend and numpy's batches cannot run it: {_lacks(gate, BatchedGate)} "
        f"(moestat.protocols.BatchedGate: {', '.join(BUILT_IN_GATES)}, without "
        "a ridge). backend='numpy' fits it one data set at a time."
    )


def batched_expert(
    expert: Any, n_experts: int, n_design: int
) -> FamilyOnBatches | StackOnBatches:
    """The batched piece of an expert family.

    Parameters
    ----------
    expert : BatchedExpertFamily or CompositeExpertFamily
        A family with batched kernels whose ``runs_batched`` is true (every
        family of :data:`BUILT_IN_EXPERTS` but a GLM or multinomial family
        with a ridge, and user-written families with the hooks), or a stack
        of shared and routed experts of such families.
    n_experts : int
        Number of experts ``m``.
    n_design : int
        Columns of the experts' basis.

    Returns
    -------
    FamilyOnBatches or StackOnBatches

    Raises
    ------
    ValueError
        Naming the family and what it lacks.
    """
    if isinstance(expert, CompositeExpertFamily):
        n_shared = int(expert.n_shared)
        return StackOnBatches(
            batched_expert(expert.shared, n_shared, n_design),
            batched_expert(expert.routed, n_experts - n_shared, n_design),
            n_shared,
        )
    if isinstance(expert, BatchedExpertFamily) and expert.runs_batched:
        return FamilyOnBatches(expert, n_experts, n_design)
    raise ValueError(
        f"The {type(expert).__name__} experts have no batched kernels, so the "
        "torch backend and numpy's batches cannot run them: "
        f"{_lacks(expert, BatchedExpertFamily)} (moestat.protocols."
        f"BatchedExpertFamily: {', '.join(BUILT_IN_EXPERTS)}, without a ridge, "
        "and stacks of them). backend='numpy' fits them one data set at a time."
    )
