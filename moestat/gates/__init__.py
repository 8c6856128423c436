"""Gating functions: the mixing weights g_i(x) of a mixture of experts.

A gate is a small stateless piece. It builds its own design from the raw
covariates, evaluates ``log g(x)`` for all experts at once as an (n, m)
array, maximises the weighted soft-label objective of EM (its M-step),
gives the gradient of that objective, and packs its free parameters for
direct likelihood maximisation. The fitting engines call only these hooks,
declared by :class:`moestat.protocols.Gate`: any object that has them, one
written outside moestat included, is a gate
(:func:`moestat.utils.check_gate` tests one).

Gates
-----
- :class:`SoftmaxGate`: ``g_i = exp(s_i) / sum_j exp(s_j)``.
- :class:`ModifiedSoftmaxGate`: the softmax of scores on a transformed
  input ``M(x)``.
- :class:`NormalizedSigmoidGate`: ``g_i = sigma(s_i) / sum_j sigma(s_j)``,
  dense or over the top-K experts.
- :class:`SharedExpertsGate`: always-active shared experts beside the
  experts routed by any of the gates above (DeepSeekMoE).

Notes
-----
The affine gates share one parameter container, :class:`GateParams`, whose
``coef`` has one row per expert: ``coef[i] = (beta_0i, beta_1i)``, the
intercept first and then one slope per column of the gate's input.

Every M-step takes damped Fisher-scoring steps on
``Q(beta) = sum_t sum_i r_ti log g_i(x_t)`` and accepts a step only if the
gate's *true* ``Q`` (top-K selection recomputed at the candidate) does not
decrease, so EM never decreases the likelihood for any gate.
"""

from __future__ import annotations

from moestat.gates._base import (
    GateParams,
    affine_design,
    gate_objective,
    observed_objective,
)
from moestat.gates.shared import SharedExpertsGate, SharedGateParams
from moestat.gates.sigmoid import NormalizedSigmoidGate
from moestat.gates.softmax import TRANSFORMS, ModifiedSoftmaxGate, SoftmaxGate
from moestat.protocols import Gate

__all__ = [
    "GateParams",
    "SharedGateParams",
    "SoftmaxGate",
    "ModifiedSoftmaxGate",
    "NormalizedSigmoidGate",
    "SharedExpertsGate",
    "TRANSFORMS",
    "GATE_NAMES",
    "resolve_gate",
    "with_shared_experts",
    "affine_design",
    "gate_objective",
    "observed_objective",
]


#: Gate classes by name, as accepted by :func:`resolve_gate`.
GATE_NAMES: dict[str, type] = {
    "softmax": SoftmaxGate,
    "modified_softmax": ModifiedSoftmaxGate,
    "normalized_sigmoid": NormalizedSigmoidGate,
}


def resolve_gate(gate: str | Gate) -> Gate:
    """Return a gate object from a name or a gate instance.

    Parameters
    ----------
    gate : str or gate object
        ``"softmax"``, ``"modified_softmax"`` (the ``tanh`` transform),
        ``"normalized_sigmoid"``, or any object that satisfies
        :class:`~moestat.protocols.Gate`, such as
        ``NormalizedSigmoidGate(top_k=2)`` or a gate written by the user.

    Returns
    -------
    gate object
        A new gate with default settings for a name; the instance itself
        otherwise.

    Raises
    ------
    ValueError
        For an unknown name or an object that is not a gate.
    """
    if isinstance(gate, str):
        if gate not in GATE_NAMES:
            raise ValueError(
                f"Unknown gate {gate!r}; choose one of {sorted(GATE_NAMES)} "
                "or pass a gate object such as moestat.SoftmaxGate()."
            )
        return GATE_NAMES[gate]()
    if isinstance(gate, Gate):
        return gate
    raise ValueError(
        f"gate must be one of {sorted(GATE_NAMES)} or a gate object (one with "
        f"every hook of moestat.protocols.Gate); got {gate!r}."
    )


def with_shared_experts(
    gate: Gate, n_shared_experts: int, shared_weight: str = "fixed_half"
) -> Gate:
    """The gate with ``n_shared_experts`` shared experts added (0: unchanged).

    Parameters
    ----------
    gate : gate object
        The gate over the routed experts.
    n_shared_experts : int
        Number of always-active shared experts.
    shared_weight : {"fixed_half", "learned"}, default="fixed_half"
        Total weight of the shared block: ``1/2`` or estimated.

    Returns
    -------
    gate object
        ``gate`` itself when ``n_shared_experts`` is 0, otherwise a
        :class:`SharedExpertsGate` around it.
    """
    if n_shared_experts == 0:
        return gate
    return SharedExpertsGate(gate, n_shared_experts, shared_weight)
