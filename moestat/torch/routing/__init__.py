"""Sparse routers of large mixture-of-experts models, as ``torch.nn.Module``s.

Every router maps tokens ``x`` of shape (B, n, d) to a :class:`Routing`
(routing.md section 0). :class:`MoELayer` applies experts by sorting tokens
per expert; the diagnostics follow the DeepSeekMoE analysis.
"""

from __future__ import annotations

from moestat.torch.routing._base import (
    Router,
    Routing,
    capacity_for,
    keep_within_capacity,
    load_balance_loss,
    router_z_loss,
)

__all__ = [
    "Routing",
    "Router",
    "capacity_for",
    "keep_within_capacity",
    "load_balance_loss",
    "router_z_loss",
]
