"""Expert families on the torch engine through their own batched kernels.

A family that implements :class:`moestat.protocols.BatchedExpertFamily`
(its kernel written over the array API, such as
:class:`~moestat.experts.ReLUExpert`) runs on the torch engine as it is:
:class:`FamilyOnBatches` hands it torch tensors. A stack of shared and
routed experts (:class:`~moestat.protocols.CompositeExpertFamily`) runs
when both its parts do: :class:`StackOnBatches` splits the packed
parameters and the responsibilities between them, as the numpy
:class:`~moestat.experts.StackedExperts` does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["FamilyOnBatches", "StackOnBatches"]


class FamilyOnBatches:
    """A family's batch hooks on (B, ...) tensors, in the torch pieces' interface.

    Parameters
    ----------
    expert : BatchedExpertFamily
    n_experts, n_design : int
    """

    def __init__(self, expert: Any, n_experts: int, n_design: int) -> None:
        self.expert, self.m, self.p = expert, n_experts, n_design
        self.n_params = expert.n_free_parameters(n_experts, n_design)

    def log_density(
        self, theta: Tensor, Phi: Tensor, y: Tensor, var_floor: Tensor
    ) -> Tensor:
        """``log f`` (B, n, m) from packed parameters (B, P)."""
        return self.expert.batch_log_density(theta, Phi, y, var_floor, self.m)

    def m_step(
        self, theta: Tensor, Phi: Tensor, y: Tensor, resp: Tensor, var_floor: Tensor
    ) -> Tensor:
        """The family's M-step from ``theta``, packed (B, P)."""
        return self.expert.batch_m_step(theta, Phi, y, resp, var_floor, self.m)


class StackOnBatches:
    """Shared experts of one torch piece beside routed experts of another.

    Parameters
    ----------
    shared, routed : torch expert pieces
        The pieces of the first ``n_shared`` experts and of the others.
    n_shared : int
    """

    def __init__(self, shared: Any, routed: Any, n_shared: int) -> None:
        self.shared, self.routed, self.k = shared, routed, n_shared
        self.n_params = shared.n_params + routed.n_params

    def _split(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        size = self.shared.n_params
        return theta[..., :size], theta[..., size:]

    def log_density(
        self, theta: Tensor, Phi: Tensor, y: Tensor, var_floor: Tensor
    ) -> Tensor:
        """Shared experts' columns, then the routed experts', (B, n, m)."""
        shared, routed = self._split(theta)
        return torch.cat(
            [
                self.shared.log_density(shared, Phi, y, var_floor),
                self.routed.log_density(routed, Phi, y, var_floor),
            ],
            dim=-1,
        )

    def m_step(
        self, theta: Tensor, Phi: Tensor, y: Tensor, resp: Tensor, var_floor: Tensor
    ) -> Tensor:
        """Each part's M-step on its own columns of the responsibilities."""
        shared, routed = self._split(theta)
        k = self.k
        return torch.cat(
            [
                self.shared.m_step(shared, Phi, y, resp[..., :k], var_floor),
                self.routed.m_step(routed, Phi, y, resp[..., k:], var_floor),
            ],
            dim=-1,
        )
