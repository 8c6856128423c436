"""Batches of data sets, a model specification in torch, and batched results.

What both EM engines (:mod:`moestat.torch.fit` and
:mod:`moestat.torch.fused`) share: padded data, a numpy model's pieces on
batches of tensors (their own array-API hooks, :mod:`moestat._batched`), the
result container, the weighted E-step and the stopping rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from moestat._batched import batched_expert, batched_gate
from moestat.fit import aitken_converged
from moestat.model import Design, MixtureOfExperts
from moestat.torch._device import resolve_device, resolve_dtype

__all__ = ["BatchedData", "BatchedModel", "BatchedFit", "stack_data"]


@dataclass(frozen=True)
class BatchedData:
    """B data sets, padded to a common size.

    Parameters
    ----------
    gate : Tensor of shape (B, n, p_gate)
        The gate designs.
    expert : Tensor of shape (B, n, p_expert)
        The experts' bases.
    y : Tensor of shape (B, n)
        Responses.
    weight : Tensor of shape (B, n)
        Sample weights; 0 on padding rows.
    var_floor : Tensor of shape (B,)
        Each data set's variance floor.
    """

    gate: Tensor
    expert: Tensor
    y: Tensor
    weight: Tensor
    var_floor: Tensor

    @property
    def n_samples(self) -> Tensor:
        """Total weight of each data set, (B,)."""
        return self.weight.sum(dim=1)


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
    if len(designs) != len(ys) or not designs:
        raise ValueError(
            f"Need one response per design and at least one data set; got "
            f"{len(designs)} designs and {len(ys)} responses."
        )
    n_max = max(len(y) for y in ys)
    batch = len(designs)
    floors = np.broadcast_to(np.asarray(var_floor, dtype=float), (batch,))
    gate = np.zeros((batch, n_max, designs[0].gate.shape[1]))
    expert = np.zeros((batch, n_max, designs[0].expert.shape[1]))
    y_all = np.zeros((batch, n_max))
    weight = np.zeros((batch, n_max))
    for b, (design, y) in enumerate(zip(designs, ys, strict=True)):
        n = len(y)
        gate[b, :n], expert[b, :n], y_all[b, :n] = design.gate, design.expert, y
        w = None if sample_weight is None else sample_weight[b]
        weight[b, :n] = 1.0 if w is None else w

    def put(a):
        return torch.as_tensor(np.array(a), dtype=dtype, device=device)

    return BatchedData(put(gate), put(expert), put(y_all), put(weight), put(floors))


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


@dataclass(frozen=True)
class BatchedFit:
    """The outcome of a batched fit, one entry per data set.

    Parameters
    ----------
    theta_gate, theta_expert : Tensor of shape (B, P)
        Packed parameters (the numpy pieces' layout).
    log_likelihood : Tensor of shape (B,)
        Weighted log-likelihood at the returned parameters.
    trace : Tensor of shape (T + 1, B)
        Log-likelihood after each iteration (NaN once a data set stopped).
    n_iter : Tensor of shape (B,)
        Iterations taken.
    converged, monotone : Tensor of shape (B,), bool
        As for :class:`moestat.fit.FitResult`.
    expert_weight : Tensor of shape (B, m)
        Total responsibility of each expert at the end.
    """

    theta_gate: Tensor
    theta_expert: Tensor
    log_likelihood: Tensor
    trace: Tensor
    n_iter: Tensor
    converged: Tensor
    monotone: Tensor
    expert_weight: Tensor


def _e_step(joint: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted responsibilities (B, n, m) and log-likelihoods (B,)."""
    per_sample = torch.logsumexp(joint, dim=-1)
    finite = torch.isfinite(per_sample)
    safe = torch.where(finite, per_sample, torch.zeros_like(per_sample))
    resp = torch.exp(joint - safe.unsqueeze(-1)) * weight.unsqueeze(-1)
    resp = torch.nan_to_num(resp, nan=0.0)
    counted = weight > 0
    total = torch.where(counted, weight * per_sample, torch.zeros_like(per_sample))
    # summed in float64: the stopping rule compares changes of 1e-6 and less
    return resp, total.sum(dim=1, dtype=torch.float64)


def _converged(
    before: Tensor, prev: Tensor, curr: Tensor, n: Tensor, tol: float
) -> Tensor:
    """The stopping rule of :func:`moestat.fit.aitken_converged`, batched.

    ``before``, ``prev`` and ``curr`` are the last three total
    log-likelihoods of each data set (``before`` is ``-inf`` at the start).
    """
    return aitken_converged(before, prev, curr, n, tol)


def _decreased(prev: Tensor, curr: Tensor, n: Tensor) -> Tensor:
    prev, curr = prev / n, curr / n
    scale = torch.maximum(torch.maximum(prev.abs(), curr.abs()), torch.ones_like(n))
    return curr < prev - 1e-10 * scale
