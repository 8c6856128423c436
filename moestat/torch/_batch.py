"""Batches of data sets, a model specification in torch, and batched results.

What both EM engines (:mod:`moestat.torch.fit` and
:mod:`moestat.torch.fused`) share: padded data, a numpy model's pieces on
batches of tensors (their own array-API hooks, :mod:`moestat._batched`), the
result container, the weighted E-step and the stopping rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from moestat._batched import batched_expert, batched_gate
from moestat._batched_em import BatchedData, BatchedFit, stack_arrays
from moestat._batched_em import e_step as _e_step
from moestat.model import Design, MixtureOfExperts
from moestat.torch._device import resolve_device, resolve_dtype

__all__ = ["BatchedData", "BatchedModel", "BatchedFit", "stack_data"]


def stack_data(
    designs: Sequence[Design],
    ys: Sequence[NDArray[np.float64]],
    *,
    var_floor: float | Sequence[float] = 0.0,
    sample_weight: Sequence[NDArray[np.float64] | None] | None = None,
    device: Any = None,
    dtype: Any = None,
) -> BatchedData:
    """Stack numpy designs and responses into one padded batch.

    Parameters
    ----------
    designs : sequence of Design
        ``model.design(X_b)`` for each data set.
    ys : sequence of ndarray of shape (n_b,)
    var_floor : float or sequence of float, default=0.0
    sample_weight : sequence of (ndarray or None), optional
    device : str or torch.device, optional
        Default CPU.
    dtype : {"float64", "float32"} or torch.dtype, optional
        Default float64.

    Returns
    -------
    BatchedData
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    host = stack_arrays(designs, ys, var_floor=var_floor, sample_weight=sample_weight)

    def put(a):
        return torch.as_tensor(a, dtype=dtype, device=device)

    return BatchedData(
        put(host.gate),
        put(host.expert),
        put(host.y),
        put(host.weight),
        put(host.var_floor),
    )


class BatchedModel:
    """A numpy model specification in torch, for a given (m, p_gate, p_expert).

    Parameters
    ----------
    model : MixtureOfExperts
        Its ``gate`` and ``expert`` pieces (parameters are not used).
    n_experts, n_gate_design, n_expert_design : int
    """

    def __init__(
        self,
        model: MixtureOfExperts,
        n_experts: int,
        n_gate_design: int,
        n_expert_design: int,
    ) -> None:
        self.spec = model
        self.shapes = (n_experts, n_gate_design, n_expert_design)
        self.gate = batched_gate(model.gate, n_experts, n_gate_design)
        self.expert = batched_expert(model.expert, n_experts, n_expert_design)

    def log_weights(self, theta_gate: Tensor, data: BatchedData) -> Tensor:
        """``log g`` (B, n, m)."""
        return self.gate.log_weights(theta_gate, data.gate)

    def log_density(self, theta_expert: Tensor, data: BatchedData) -> Tensor:
        """``log f`` (B, n, m)."""
        return self.expert.log_density(
            theta_expert, data.expert, data.y, data.var_floor
        )

    def log_likelihood(
        self, theta_gate: Tensor, theta_expert: Tensor, data: BatchedData
    ) -> Tensor:
        """Weighted log-likelihood of each data set, (B,)."""
        joint = self.log_weights(theta_gate, data) + self.log_density(
            theta_expert, data
        )
        return _e_step(joint, data.weight)[1]

    def project_gate(self, theta: Tensor) -> Tensor:
        """The gate parameters moved into the gate's parameter space."""
        return self.gate.project(theta)
