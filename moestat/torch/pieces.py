"""The gates in torch, batched, on packed parameters; the families' dispatch.

Each torch gate mirrors one numpy gate of :mod:`moestat.gates` and reads
the *same* packed vector (the numpy gate's ``pack``: its free rows). The
expert families need no torch code: :func:`torch_expert` hands a family
with batched kernels (:class:`~moestat.protocols.BatchedExpertFamily`) to
:mod:`moestat.torch._generic`, which calls the family's own array-API
hooks on tensors in its packed layout (variances as ``log(nu - nu_min)``). Batched
arrays have a leading dimension ``B`` (replications, restarts or cells):
parameters (B, P), designs (B, n, p), responses (B, n), log densities
(B, n, m). Converting a torch fit back to numpy is the numpy piece's
``unpack`` of one row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from moestat._math import solve_spd
from moestat.gates import NormalizedSigmoidGate, SharedExpertsGate, SoftmaxGate
from moestat.protocols import BatchedExpertFamily, CompositeExpertFamily
from moestat.torch._generic import FamilyOnBatches, StackOnBatches

__all__ = [
    "torch_gate",
    "torch_expert",
    "fisher_information",
    "SUPPORTED_GATES",
    "SUPPORTED_EXPERTS",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _scores(coef: Tensor, Z: Tensor) -> Tensor:
    """Affine scores (B, n, m) from coefficients (B, m, p) and design (B, n, p)."""
    return torch.einsum("bnp,bmp->bnm", Z, coef)


def q_objective(resp: Tensor, log_values: Tensor) -> Tensor:
    """``sum_t sum_i r_ti log v_ti`` per batch row, with ``0 log 0 = 0``."""
    terms = torch.where(resp > 0, resp * log_values, torch.zeros_like(resp))
    return terms.sum(dim=(1, 2))


def _ascend(
    evaluate: Callable[[Tensor], Tensor],
    score: Callable[[Tensor], Tensor],
    theta: Tensor,
    values: Tensor,
    direction: Tensor,
    todo: Tensor,
    max_halvings: int,
    project: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Step halving: keep ``theta + t d`` where ``score`` does not decrease.

    ``evaluate`` maps parameters to the (B, n, m) array ``score`` reads
    (``log g``); ``values`` is that array at ``theta``. Returns the new
    parameters and the array at them, so the caller need not evaluate again.
    """
    current = score(values)
    step = torch.ones_like(current)
    for _ in range(max_halvings):
        if not bool(todo.any()):
            break
        candidate = project(theta + step.unsqueeze(-1) * direction)
        candidate_values = evaluate(candidate)
        ok = todo & (score(candidate_values) >= current)
        theta = torch.where(ok.unsqueeze(-1), candidate, theta)
        values = torch.where(ok[:, None, None], candidate_values, values)
        todo = todo & ~ok
        step = torch.where(todo, 0.5 * step, step)
    return theta, values


class _AffineGateStep:
    """The M-step of the affine torch gates (softmax and normalized sigmoid).

    Subclasses give ``fisher_weights``, ``free_rows``, ``log_weights``,
    ``project``, ``ecme``, ``newton_steps`` and ``max_halvings``.
    """

    def m_step(
        self,
        theta: Tensor,
        Z: Tensor,
        weight: Tensor,
        resp: Tensor,
        log_g: Tensor,
        log_f: Tensor,
        background: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Fisher-scoring steps (GEM; ECME for top-K): parameters and ``log g``.

        The numpy gates' step: the direction solves their Fisher
        information, and a step is halved until ``sum r log g`` (top-K: the
        observed log-likelihood with the new experts, ``background`` the
        density of shared experts outside this gate) does not decrease.
        """
        if theta.shape[1] == 0:
            return theta, log_g  # nothing free (a gate over one expert)
        n = weight.sum(dim=1)

        def total(lg):
            per_sample = torch.logsumexp(lg + log_f, dim=-1)
            if background is not None:
                per_sample = torch.logaddexp(per_sample, background)
            return per_sample

        if self.ecme:
            # top-K: the direction from responsibilities at the new experts
            joint = log_g + log_f
            resp = torch.exp((joint - total(log_g).unsqueeze(-1)).clamp(min=-700.0))
            resp = resp * weight.unsqueeze(-1)

            def score(lg):
                per_sample = torch.where(weight > 0, weight * total(lg), 0.0)
                return per_sample.sum(dim=1, dtype=torch.float64)

        else:

            def score(lg):
                return q_objective(resp, lg)

        for _ in range(self.newton_steps):
            weights = self.fisher_weights(theta, Z, resp, log_g)
            grad, information = fisher_information(Z, *weights, self.free_rows())
            direction = _solve_spd(information, grad, ridge=1e-9)
            todo = (grad * direction).sum(dim=-1) > 1e-14 * n
            if not bool(todo.any()):
                break
            theta, log_g = _ascend(
                lambda t: self.log_weights(t, Z),
                score,
                theta,
                log_g,
                direction,
                todo,
                self.max_halvings,
                self.project,
            )
        return theta, log_g


class TorchSoftmaxGate(_AffineGateStep):
    """Softmax gate (plain or modified: the design carries the transform)."""

    def __init__(self, gate: SoftmaxGate, n_experts: int, n_design: int) -> None:
        self.gate, self.m, self.p = gate, n_experts, n_design
        self.n_params = (n_experts - 1) * n_design
        self.max_halvings = gate.max_halvings
        self.newton_steps = gate.newton_steps
        self.ecme = False

    def project(self, theta: Tensor) -> Tensor:
        """Parameters inside the parameter space (unbounded: unchanged)."""
        return theta

    def coef(self, theta: Tensor) -> Tensor:
        """Full (B, m, p) coefficients, the reference row zero."""
        free = theta.reshape(theta.shape[0], self.m - 1, self.p)
        return torch.cat([free.new_zeros(theta.shape[0], 1, self.p), free], dim=1)

    def log_weights(self, theta: Tensor, Z: Tensor) -> Tensor:
        """``log g`` of shape (B, n, m)."""
        return torch.log_softmax(_scores(self.coef(theta), Z), dim=-1)

    def fisher_weights(
        self, theta: Tensor, Z: Tensor, resp: Tensor, log_g: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Score gradient ``r - rho g`` and Fisher weights ``(rho g, sqrt(rho) g)``.

        The numpy gate's ``_score_gradient_and_fisher``: the gradient in row
        ``i`` is ``sum_t (r_ti - rho_t g_ti) z_t`` and the information blocks
        are ``sum_t rho_t g_ti (delta_ij - g_tj) z_t z_t^T``.
        """
        g = log_g.exp()
        rho = resp.sum(dim=-1, keepdim=True)
        return resp - rho * g, rho * g, rho.sqrt() * g

    def free_rows(self) -> slice:
        """Rows of the (m, p) coefficients that are packed."""
        return slice(1, self.m)


class TorchNormalizedSigmoidGate(_AffineGateStep):
    """Normalized sigmoid gate, dense or top-K, inside a box ``|beta| <= bound``."""

    def __init__(
        self, gate: NormalizedSigmoidGate, n_experts: int, n_design: int
    ) -> None:
        self.gate, self.m, self.p = gate, n_experts, n_design
        self.n_params = n_experts * n_design
        self.bound = gate.bound
        self.top_k = gate.top_k if gate.top_k and gate.top_k < n_experts else None
        self.ecme = self.top_k is not None
        self.max_halvings = (
            gate.max_halvings if self.top_k is None else min(gate.max_halvings, 2)
        )
        self.newton_steps = gate.newton_steps

    def project(self, theta: Tensor) -> Tensor:
        """Clip the coefficients into the box ``[-bound, bound]`` (if any)."""
        if self.bound is None:
            return theta
        return theta.clamp(-self.bound, self.bound)

    def coef(self, theta: Tensor) -> Tensor:
        """Coefficients (B, m, p)."""
        return theta.reshape(theta.shape[0], self.m, self.p)

    def log_weights(self, theta: Tensor, Z: Tensor) -> Tensor:
        """``log g`` of shape (B, n, m); ``-inf`` outside a top-K selection."""
        s = _scores(self.coef(theta), Z)
        log_sigma = torch.nn.functional.logsigmoid(s)
        if self.top_k is not None:
            # ties to the lower expert index, as the numpy gate
            order = torch.argsort(s.detach(), dim=-1, descending=True, stable=True)
            mask = torch.zeros_like(s, dtype=torch.bool)
            mask.scatter_(-1, order[..., : self.top_k], True)
            log_sigma = torch.where(
                mask, log_sigma, torch.full_like(log_sigma, -math.inf)
            )
        return log_sigma - torch.logsumexp(log_sigma, dim=-1, keepdim=True)

    def fisher_weights(
        self, theta: Tensor, Z: Tensor, resp: Tensor, log_g: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Score gradient and the numpy gate's positive semi-definite weights.

        With ``a = 1 - sigma(s)``: the score gradient is ``a (r - rho g)``,
        and the information ``rho [diag(g a^2) - (g a)(g a)^T] +
        diag(|sigma a (r - rho g)|)`` dominates the observed one.
        """
        a = torch.sigmoid(-_scores(self.coef(theta), Z))
        g = log_g.clamp(min=-700.0).exp()
        rho = resp.sum(dim=-1, keepdim=True)
        score_grad = (resp - rho * g) * a
        ga = g * a
        diag = score_grad.abs() * (1.0 - a) + ga * a * rho
        return score_grad, diag, ga * rho.sqrt()

    def free_rows(self) -> slice:
        """Every row is packed."""
        return slice(0, self.m)


def fisher_information(
    Z: Tensor, score_grad: Tensor, diag: Tensor, vec: Tensor, rows: slice
) -> tuple[Tensor, Tensor]:
    """Gradient (B, k p) and information (B, k p, k p) of a softmax-like block.

    The information is ``sum_t (diag(d_t) - v_t v_t^T) kron z_t z_t^T`` over
    the free rows, as numpy's ``moestat._math.fisher_direction``.

    Parameters
    ----------
    Z : Tensor of shape (B, n, p)
        Gate designs.
    score_grad : Tensor of shape (B, n, m)
        Per-sample score gradient in the gate scores.
    diag, vec : Tensor of shape (B, n, m)
        The Fisher weights ``d_t`` and ``v_t``.
    rows : slice
        The ``k`` free rows among the ``m``.

    Returns
    -------
    gradient : Tensor of shape (B, k p)
        ``sum_t score_grad_t kron z_t`` over the free rows, row by row.
    information : Tensor of shape (B, k p, k p)
        The information in the same layout.
    """
    score_grad, diag, vec = score_grad[..., rows], diag[..., rows], vec[..., rows]
    batch, _, p = Z.shape
    k = score_grad.shape[-1]
    grad = torch.einsum("bnm,bnp->bmp", score_grad, Z).reshape(batch, k * p)
    root = (vec.unsqueeze(-1) * Z.unsqueeze(-2)).reshape(batch, -1, k * p)
    information = -(root.transpose(1, 2) @ root).reshape(batch, k, p, k, p)
    blocks = torch.einsum("bnm,bnp,bnq->mbpq", diag, Z, Z)
    index = torch.arange(k, device=Z.device)
    information[:, index, :, index, :] += blocks
    return grad, information.reshape(batch, k * p, k * p)


class TorchSharedExpertsGate:
    """Shared experts with constant weights beside a routed gate (DeepSeekMoE)."""

    def __init__(self, gate: SharedExpertsGate, n_experts: int, n_design: int) -> None:
        self.gate = gate
        self.k = gate.n_shared
        self.routed = torch_gate(gate.routed, n_experts - self.k, n_design)
        self.n_params = self.routed.n_params + self.k - 1 + int(gate.learned)
        self.ecme = self.routed.ecme
        self.max_halvings = self.routed.max_halvings
        self.newton_steps = self.routed.newton_steps

    def project(self, theta: Tensor) -> Tensor:
        """The routed gate's box on its entries; the shared weights are free."""
        r = self.routed.n_params
        return torch.cat([self.routed.project(theta[:, :r]), theta[:, r:]], dim=1)

    def log_weights(self, theta: Tensor, Z: Tensor) -> Tensor:
        """``log(lambda omega_i)`` for shared, ``log((1 - lambda) g_j)`` routed."""
        r = self.routed.n_params
        routed = self.routed.log_weights(theta[:, :r], Z)
        logits = torch.cat(
            [torch.zeros_like(theta[:, :1]), theta[:, r : r + self.k - 1]], dim=1
        )
        log_omega = torch.log_softmax(logits, dim=1)
        return self.assemble(routed, log_omega, *self.log_shares(theta))

    def m_step(
        self,
        theta: Tensor,
        Z: Tensor,
        weight: Tensor,
        resp: Tensor,
        log_g: Tensor,
        log_f: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Closed-form shared weights, then the routed gate's step.

        As the numpy gate: ``omega`` and a learned share are exact maximisers
        of ``Q``; the routed gate steps on the routed responsibilities
        (judged, for top-K, by the observed likelihood with the shared
        experts as background).
        """
        k, r = self.k, self.routed.n_params
        routed_log_g = log_g[..., k:] - self.log_shares(theta)[1][:, None, None]
        shared_mass = resp[..., :k].sum(dim=1)
        omega = shared_mass / shared_mass.sum(dim=-1, keepdim=True)
        omega = omega.clamp(min=1e-300)
        omega = omega / omega.sum(dim=-1, keepdim=True)
        if self.gate.learned:
            share = shared_mass.sum(dim=-1) / weight.sum(dim=1)
        else:
            share = torch.full_like(shared_mass[:, 0], 0.5)
        share = share.clamp(1e-12, 1 - 1e-12)
        log_rest = torch.log1p(-share)
        routed_log_f = log_f[..., k:] + log_rest[:, None, None]
        shared_terms = log_f[..., :k] + (share.log()[:, None] + omega.log()).unsqueeze(
            1
        )
        routed, routed_log_g = self.routed.m_step(
            theta[:, :r],
            Z,
            weight,
            resp[..., k:],
            routed_log_g,
            routed_log_f,
            torch.logsumexp(shared_terms, dim=-1),
        )
        parts = [routed, (omega[:, 1:] / omega[:, :1]).log()]
        if self.gate.learned:
            parts.append((share / (1 - share)).log().unsqueeze(-1))
        log_g = self.assemble(routed_log_g, omega.log(), share.log(), log_rest)
        return torch.cat(parts, dim=1), log_g

    def log_shares(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(log lambda, log(1 - lambda))``, each (B,)."""
        if self.gate.learned:
            last = theta[:, -1]
            return (
                torch.nn.functional.logsigmoid(last),
                torch.nn.functional.logsigmoid(-last),
            )
        half = torch.full_like(theta[:, 0], math.log(0.5))
        return half, half

    @staticmethod
    def assemble(
        routed_log_g: Tensor, log_omega: Tensor, log_share: Tensor, log_rest: Tensor
    ) -> Tensor:
        """``log g`` (B, n, m) from the routed gate's and the shared weights."""
        shared = (log_share[:, None] + log_omega).unsqueeze(1)
        shared = shared.expand(-1, routed_log_g.shape[1], -1)
        return torch.cat([shared, log_rest[:, None, None] + routed_log_g], dim=-1)


def _solve_spd(
    matrix: Tensor, rhs: Tensor, ridge: float = 1e-10, refine: bool = False
) -> Tensor:
    """The numpy engine's solve (:func:`moestat._math.solve_spd`) on tensors."""
    return solve_spd(matrix, rhs, ridge=ridge, refine=refine)


_GATES: list[tuple[type, type]] = [
    (SharedExpertsGate, TorchSharedExpertsGate),
    (NormalizedSigmoidGate, TorchNormalizedSigmoidGate),
    (SoftmaxGate, TorchSoftmaxGate),
]
#: Names of the numpy gate classes the torch backend has (subclasses
#: included, such as ``ModifiedSoftmaxGate``).
SUPPORTED_GATES = tuple(numpy_type.__name__ for numpy_type, _ in _GATES)
#: The numpy expert families the torch backend runs: every family with
#: batched kernels (:class:`~moestat.protocols.BatchedExpertFamily`), and
#: stacks of them.
SUPPORTED_EXPERTS = (
    "GaussianExpert",
    "GLMExpert",
    "MultinomialLogisticExpert",
    "ReLUExpert",
    "StackedExperts",
)


def torch_gate(gate: Any, n_experts: int, n_design: int) -> Any:
    """The torch piece of a numpy gate.

    Parameters
    ----------
    gate : gate object
        A numpy gate whose class is, or derives from, one of
        :data:`SUPPORTED_GATES`.
    n_experts : int
        Number of experts ``m``.
    n_design : int
        Columns of the gate design.

    Returns
    -------
    object
        The gate's log weights, M-step and projection on batches of packed
        parameters of shape (B, P), in the numpy gate's layout.

    Raises
    ------
    ValueError
        For a gate the torch backend does not have.
    """
    for numpy_type, torch_type in _GATES:
        if isinstance(gate, numpy_type):
            return torch_type(gate, n_experts, n_design)
    raise ValueError(
        f"The torch backend has no {type(gate).__name__}; it supports "
        f"{', '.join(SUPPORTED_GATES)}. Use backend='numpy'."
    )


def torch_expert(expert: Any, n_experts: int, n_design: int) -> Any:
    """The torch piece of a numpy expert family.

    Parameters
    ----------
    expert : expert family
        A family with batched kernels
        (:class:`~moestat.protocols.BatchedExpertFamily`: every family of
        :data:`SUPPORTED_EXPERTS` but a GLM or multinomial family with a
        ridge, and user-written families with the two hooks), or a stack of
        shared and routed experts of such families.
    n_experts : int
        Number of experts ``m``.
    n_design : int
        Columns of the experts' basis.

    Returns
    -------
    object
        The family's log densities and M-step on batches of packed
        parameters of shape (B, P), in the numpy family's layout.

    Raises
    ------
    ValueError
        For a family the torch backend does not have.
    """
    if isinstance(expert, CompositeExpertFamily):
        n_shared = int(expert.n_shared)
        return StackOnBatches(
            torch_expert(expert.shared, n_shared, n_design),
            torch_expert(expert.routed, n_experts - n_shared, n_design),
            n_shared,
        )
    if isinstance(expert, BatchedExpertFamily) and expert.runs_batched:
        return FamilyOnBatches(expert, n_experts, n_design)
    raise ValueError(
        f"The torch backend has no {type(expert).__name__} experts; it runs "
        "every family with batched kernels (moestat.protocols.BatchedExpertFamily:"
        f" {', '.join(SUPPORTED_EXPERTS)}, without a ridge) and stacks of them. "
        "Use backend='numpy'."
    )
