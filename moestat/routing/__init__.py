"""Sparse routers of large mixture-of-experts models, as PyTorch modules.

Every router maps tokens ``x`` of shape (B, n, d) to a :class:`Routing`
(dispatch and combine tensors, auxiliary losses, statistics). A
:class:`MoELayer` applies experts to a routing by sorting tokens per
expert; the diagnostics (utilization, saturation, change rate) follow the
DeepSeekMoE analysis and work for every router. The routers' softmax
and normalized sigmoid weights are those of the statistical gates
(:class:`~moestat.gates.SoftmaxGate`,
:class:`~moestat.gates.NormalizedSigmoidGate`): both compute them with
the functions of :mod:`moestat.kernels`.

Needs PyTorch (``pip install 'moestat[torch]'``); the rest of moestat never
imports torch. :mod:`moestat.routing.experiment` trains a small model with
each router and compares them.

Routers
-------
- :class:`TopKSoftmaxRouter`: top-k softmax with capacity (Switch top-1,
  GShard top-2, ST-MoE; M6-T's k and capacity knobs).
- :class:`NoisyTopKRouter`: Shazeer et al.'s noisy top-k gate.
- :class:`PrototypeRouter`: M6-T's expert prototyping ("k top-1").
- :class:`ExpertChoiceRouter`: experts choose their tokens.
- :class:`DenseToSparseRouter`: EvoMoE's dense-to-sparse gate.
- :class:`TsallisHybridRouter`: DynMoLE's Tsallis-entropy hybrid routing.
- :class:`NormalizedSigmoidRouter`: DeepSeek-V3's normalized sigmoid
  top-K with bias balancing (shared experts live in :class:`MoELayer`).
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without torch only
    raise ImportError(
        "moestat.routing needs PyTorch. Install it with "
        "`pip install 'moestat[torch]'` (or `pip install torch`)."
    ) from error

from moestat.routing._base import (  # noqa: E402
    Router,
    Routing,
    capacity_for,
    keep_within_capacity,
    load_balance_loss,
    router_z_loss,
)
from moestat.routing.dense_to_sparse import (
    DenseToSparseRouter,
    spawn_experts,
    temperature_schedule,
)
from moestat.routing.diagnostics import (
    RoutingRecorder,
    coactivation,
    expert_utilization,
    jain_index,
    load_balance_statistic,
    max_violation,
    relative_perplexity,
    router_change_rate,
    router_entropy,
    router_saturation,
    selected_experts,
    utilization_summary,
)
from moestat.routing.expert_choice import ExpertChoiceRouter
from moestat.routing.layer import (
    ExpertMLP,
    LinearExperts,
    MoELayer,
    SharedExperts,
)
from moestat.routing.prototype import PrototypeRouter
from moestat.routing.sigmoid import NormalizedSigmoidRouter
from moestat.routing.topk import NoisyTopKRouter, TopKSoftmaxRouter
from moestat.routing.tsallis import TsallisHybridRouter, tsallis_entropy

__all__ = [
    "Routing",
    "Router",
    "TopKSoftmaxRouter",
    "NoisyTopKRouter",
    "PrototypeRouter",
    "ExpertChoiceRouter",
    "DenseToSparseRouter",
    "TsallisHybridRouter",
    "NormalizedSigmoidRouter",
    "MoELayer",
    "ExpertMLP",
    "LinearExperts",
    "SharedExperts",
    "RoutingRecorder",
    "capacity_for",
    "keep_within_capacity",
    "load_balance_loss",
    "router_z_loss",
    "temperature_schedule",
    "spawn_experts",
    "tsallis_entropy",
    "selected_experts",
    "expert_utilization",
    "router_saturation",
    "router_change_rate",
    "router_entropy",
    "coactivation",
    "jain_index",
    "relative_perplexity",
    "load_balance_statistic",
    "max_violation",
    "utilization_summary",
]
