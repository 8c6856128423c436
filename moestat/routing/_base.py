"""The one interface of the routers: ``Routing``, the ``Router`` base, capacity.

Shapes follow routing.md section 0: ``B`` independent groups (nothing crosses
groups), ``n`` tokens per group, ``m`` routed experts, ``K`` slots per token.
Router logits and scores are in the router's dtype: float32 as built, float64
after ``router.double()``. The small helpers the routers share (logits,
argument checks, masks, ranks, capacity drops) live here too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Routing",
    "Router",
    "as_groups",
    "as_logits",
    "is_int",
    "check_positive_float",
    "check_nonnegative_float",
    "index_mask",
    "descending_rank",
    "experts_per_token_hist",
    "capacity_for",
    "rank_within_expert",
    "keep_within_capacity",
    "drop_over_capacity",
    "dense_from_slots",
    "load_balance_loss",
    "router_z_loss",
    "cv_squared",
    "PRIORITIES",
]

PRIORITIES = ("position", "score", "random")


@dataclass
class Routing:
    """What a router decided for a batch of token groups.

    Parameters
    ----------
    logits : Tensor of shape (B, n, m)
        Router logits ``z`` (for the z-loss and the diagnostics), in the
        router's dtype (float32 unless the router was converted).
    probs : Tensor of shape (B, n, m)
        Router scores ``p`` before any masking (for balance losses).
    dispatch : Tensor of shape (B, n, m), bool
        Token ``t`` is processed by expert ``i`` (after capacity).
    combine : Tensor of shape (B, n, m)
        Weight of expert ``i``'s output in token ``t``'s output; 0 where
        not dispatched.
    topk_idx, topk_weight : Tensor of shape (B, n, K) or None
        Fixed-K routers only: expert index (-1 for a dropped slot) and
        weight (0 for a dropped slot) of each slot.
    capacity : int or None
        The capacity ``C`` used (None: dropless).
    aux : dict of str to Tensor
        Unweighted auxiliary losses (scalars).
    stats : dict of str to Tensor
        Statistics without gradient (tokens per expert, drops, ...).
    loss_weights : dict of str to float
        The router's coefficients of the auxiliary losses.
    """

    logits: Tensor
    probs: Tensor
    dispatch: Tensor
    combine: Tensor
    topk_idx: Tensor | None = None
    topk_weight: Tensor | None = None
    capacity: int | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)

    def total_aux(self) -> Tensor:
        """``sum_k loss_weights[k] * aux[k]`` (0 when there is none)."""
        total = self.logits.new_zeros(())
        for name, value in self.aux.items():
            total = total + self.loss_weights.get(name, 0.0) * value
        return total


def as_groups(x: Tensor) -> Tensor:
    """View a (n, d) input as one group (1, n, d); pass (B, n, d) through."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape (n, d) or (B, n, d); got {tuple(x.shape)}."
        )
    return x


def as_logits(
    logits: Tensor, n_experts: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """View (n, m) logits as one group (1, n, m), in ``dtype`` (the router's)."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a torch.Tensor; got {type(logits)!r}.")
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    if logits.dim() != 3 or logits.shape[-1] != n_experts:
        raise ValueError(
            f"logits must have shape (n, {n_experts}) or (B, n, {n_experts}); "
            f"got {tuple(logits.shape)}."
        )
    return logits.to(dtype)


def is_int(value: object) -> bool:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_float(name: str, value: Any) -> None:
    """Raise a ValueError unless ``value`` is a positive finite number."""
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite float; got {value!r}.")


def check_nonnegative_float(name: str, value: Any) -> None:
    """Raise a ValueError unless ``value`` is a number ``>= 0``."""
    if not (isinstance(value, int | float) and value >= 0):
        raise ValueError(f"{name} must be a float >= 0; got {value!r}.")


def index_mask(idx: Tensor, like: Tensor) -> Tensor:
    """Boolean mask of ``like``'s shape, True at the last-axis indices ``idx``."""
    return torch.zeros_like(like, dtype=torch.bool).scatter(-1, idx, True)


def descending_rank(scores: Tensor, dim: int) -> Tensor:
    """0 for the largest entry along ``dim``, 1 for the next (ties: lower index)."""
    order = torch.sort(scores, dim=dim, descending=True, stable=True).indices
    return torch.argsort(order, dim=dim)


def experts_per_token_hist(per_token: Tensor, n_experts: int) -> Tensor:
    """Tokens with 0, 1, ..., m experts (B, m + 1) from the counts (B, n)."""
    hist = torch.zeros(
        per_token.shape[0], n_experts + 1, dtype=torch.long, device=per_token.device
    )
    return hist.scatter_add(1, per_token, torch.ones_like(per_token))


def capacity_for(
    n_tokens: int,
    n_experts: int,
    k: int,
    capacity_factor: float | None,
    *,
    min_capacity: int = 4,
    capacity: int | None = None,
) -> int | None:
    """Expert capacity ``C = max(ceil(cf * K * n / m), min_capacity)``, clamped to n.

    Parameters
    ----------
    n_tokens, n_experts, k : int
        Tokens per group ``n``, experts ``m`` and slots per token ``K``.
    capacity_factor : float or None
        ``cf``; None means dropless (returns None).
    min_capacity : int, default=4
        Lower bound on ``C`` (lucidrains and the TF Model Garden use 4).
    capacity : int, optional
        An absolute capacity, overriding ``capacity_factor`` (M6-T varies
        ``k`` and ``C`` separately).

    Returns
    -------
    int or None
    """
    if capacity is not None:
        if capacity < 1:
            raise ValueError(f"capacity must be a positive int; got {capacity!r}.")
        return min(int(capacity), n_tokens)
    if capacity_factor is None:
        return None
    if not capacity_factor > 0:
        raise ValueError(
            f"capacity_factor must be positive or None (dropless); got "
            f"{capacity_factor!r}."
        )
    c = math.ceil(capacity_factor * k * n_tokens / n_experts)
    return min(max(c, min_capacity), n_tokens)


def rank_within_expert(expert_idx: Tensor, priority: Tensor, n_experts: int) -> Tensor:
    """Place of each claim in its expert's queue, by ascending ``priority``.

    Parameters
    ----------
    expert_idx : LongTensor of shape (B, N)
        Expert claimed by each of ``N`` claims (-1: no claim).
    priority : Tensor of shape (B, N)
        Lower goes first; ties keep claim order (stable sorts).
    n_experts : int

    Returns
    -------
    LongTensor of shape (B, N)
        0 for the first claim on an expert, 1 for the next, ...; claims
        with ``expert_idx == -1`` get a rank that is never used.

    Notes
    -----
    Two stable sorts (by priority, then by expert) and a bincount replace
    the (claims x experts) one-hot cumulative sum of GShard: memory is
    O(B N), not O(B N m).
    """
    batch, n_claims = expert_idx.shape
    bins = torch.where(expert_idx < 0, n_experts, expert_idx)
    order = torch.argsort(priority, dim=1, stable=True)
    by_priority = bins.gather(1, order)
    regroup = torch.argsort(by_priority, dim=1, stable=True)
    sorted_bins = by_priority.gather(1, regroup)
    counts = torch.zeros(
        batch, n_experts + 1, dtype=torch.long, device=expert_idx.device
    )
    counts.scatter_add_(1, sorted_bins, torch.ones_like(sorted_bins))
    starts = torch.cumsum(counts, dim=1) - counts
    position = torch.arange(n_claims, device=expert_idx.device).expand(batch, -1)
    sorted_rank = position - starts.gather(1, sorted_bins)
    rank = torch.empty_like(sorted_rank)
    rank.scatter_(1, order.gather(1, regroup), sorted_rank)
    return rank


def keep_within_capacity(
    topk_idx: Tensor,
    capacity: int | None,
    n_experts: int,
    *,
    priority: str = "position",
    scores: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which (token, slot) assignments fit in their expert's capacity.

    Parameters
    ----------
    topk_idx : LongTensor of shape (B, n, K)
        Chosen experts (-1: no assignment).
    capacity : int or None
        ``C``; None keeps every assignment.
    n_experts : int
    priority : {"position", "score", "random"}, default="position"
        Who is dropped when an expert overflows (routing.md section 1.1):
        slot-major then token order (GShard, Tutel); tokens by their
        largest score, descending (Batch Prioritized Routing); or a
        uniform random priority per assignment (DeepSpeed RTS).
    scores : Tensor of shape (B, n), optional
        Each token's largest score, for ``priority="score"``.
    generator : torch.Generator, optional
        Source of the random priorities.

    Returns
    -------
    BoolTensor of shape (B, n, K)
    """
    valid = topk_idx >= 0
    if capacity is None:
        return valid
    batch, n, k = topk_idx.shape
    # slot-major flattening: all first choices before any second choice
    claims = topk_idx.transpose(1, 2).reshape(batch, k * n)
    if priority == "position":
        order = torch.arange(k * n, device=topk_idx.device).expand(batch, -1)
    elif priority == "score":
        if scores is None:
            raise ValueError("priority='score' needs each token's score.")
        token_rank = (-scores).argsort(dim=1, stable=True).argsort(dim=1)
        slot = torch.arange(k, device=topk_idx.device).view(1, k, 1)
        order = (slot * n + token_rank.unsqueeze(1)).reshape(batch, k * n)
    elif priority == "random":
        order = torch.rand(batch, k * n, device=topk_idx.device, generator=generator)
    else:
        raise ValueError(f"Unknown priority {priority!r}; use one of {PRIORITIES}.")
    rank = rank_within_expert(claims, order, n_experts)
    keep = (rank < capacity).reshape(batch, k, n).transpose(1, 2)
    return keep & valid


def drop_over_capacity(
    idx: Tensor,
    weight: Tensor,
    capacity: int | None,
    n_experts: int,
    *,
    priority: str,
    scores: Tensor,
    generator: torch.Generator | None,
    renormalize: bool,
) -> tuple[Tensor, Tensor]:
    """Slots (B, n, K) after capacity: index -1 and weight 0 where dropped.

    With ``renormalize`` the surviving weights of a token are divided by
    their sum (DeepSpeed's top-2); a token with no survivor keeps zeros.
    """
    keep = keep_within_capacity(
        idx,
        capacity,
        n_experts,
        priority=priority,
        scores=scores,
        generator=generator,
    )
    kept_idx = torch.where(keep, idx, torch.full_like(idx, -1))
    kept_w = torch.where(keep, weight, torch.zeros_like(weight))
    if renormalize:
        total = kept_w.sum(dim=-1, keepdim=True)
        tiny = torch.finfo(kept_w.dtype).tiny
        kept_w = torch.where(keep, kept_w / total.clamp(min=tiny), kept_w)
    return kept_idx, kept_w


def dense_from_slots(
    topk_idx: Tensor, topk_weight: Tensor, n_experts: int
) -> tuple[Tensor, Tensor]:
    """The (B, n, m) ``dispatch`` and ``combine`` of per-slot choices.

    Slots with index -1 are ignored. Gradients flow from ``combine`` to
    ``topk_weight``.
    """
    valid = topk_idx >= 0
    index = topk_idx.clamp(min=0)
    shape = (*topk_idx.shape[:2], n_experts)
    # scatter_add, not scatter_: a dropped slot (index clamped to 0) must
    # not overwrite another slot's claim on expert 0
    counts = torch.zeros(shape, dtype=torch.long, device=topk_idx.device)
    dispatch = counts.scatter_add(2, index, valid.long()) > 0
    weight = torch.where(valid, topk_weight, torch.zeros_like(topk_weight))
    combine = torch.zeros(
        shape, dtype=topk_weight.dtype, device=topk_weight.device
    ).scatter_add(2, index, weight)
    return dispatch, combine


def load_balance_loss(probs: Tensor, assigned: Tensor) -> Tensor:
    """Switch/GShard balance loss ``m sum_i f_i P_i``, averaged over groups.

    Parameters
    ----------
    probs : Tensor of shape (B, n, m)
        Router scores ``p``.
    assigned : Tensor of shape (B, n, m)
        Assignment counts (the first-choice one-hot, or all slots); ``f_i``
        is expert ``i``'s share of them.

    Returns
    -------
    Tensor
        A scalar, 1 at perfect balance.
    """
    m = probs.shape[-1]
    assigned = assigned.to(probs.dtype)
    f = assigned.sum(dim=1) / assigned.sum(dim=(1, 2)).clamp(min=1.0).unsqueeze(-1)
    p_mean = probs.mean(dim=1)
    return (m * (f * p_mean).sum(dim=-1)).mean()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss ``mean_t (logsumexp_i z_ti)^2``.

    Parameters
    ----------
    logits : Tensor of shape (..., m)
        Router logits ``z``; the mean runs over every leading axis.

    Returns
    -------
    Tensor
        A scalar.
    """
    return torch.logsumexp(logits, dim=-1).square().mean()


def cv_squared(values: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation over the last axis, averaged.

    ``variance / (mean^2 + eps)``; 0 for a single value (Shazeer et al.
    2017).
    """
    if values.shape[-1] == 1:
        return values.new_zeros(())
    var = values.var(dim=-1, unbiased=False)
    return (var / (values.mean(dim=-1).square() + eps)).mean()


class Router(nn.Module):
    """Base of the routers: a gate projection and a seeded generator.

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m``.
    bias : bool, default=False
        Whether the gate projection has a bias.
    loss_weights : dict, optional
        Coefficients of the auxiliary losses, by name.
    random_state : int or None, default=None
        Seed of the router's own ``torch.Generator`` (jitter, noise,
        random priorities): a run repeats bit for bit on one device.

    Notes
    -----
    Subclasses implement :meth:`route`, from logits (B, n, m) to a
    :class:`Routing`. The router computes in its :attr:`dtype`, whatever
    the input's: float32 as built (Switch's selective precision), float64
    after ``router.double()``.
    """

    default_loss_weights: dict[str, float] = {}
    #: Whether :meth:`selection_scores` are logits, to which softmax-based
    #: summaries (the load-balance statistic) apply.
    selection_scores_are_logits: bool = True

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        *,
        bias: bool = False,
        loss_weights: dict[str, float] | None = None,
        random_state: int | None = None,
    ) -> None:
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be a positive int; got {n_experts!r}.")
        self.d_model = int(d_model)
        self.n_experts = int(n_experts)
        self.gate = nn.Linear(d_model, n_experts, bias=bias, dtype=torch.float32)
        weights = dict(self.default_loss_weights)
        if loss_weights is not None:
            unknown = set(loss_weights) - set(weights)
            if unknown:
                raise ValueError(
                    f"Unknown auxiliary loss(es) {sorted(unknown)}; this router "
                    f"has {sorted(weights)}."
                )
            weights.update(loss_weights)
        self.loss_weights = weights
        self.random_state = random_state
        self._generators: dict[Any, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The router's generator on ``device`` (made and seeded on first use)."""
        key = str(device)
        if key not in self._generators:
            gen = torch.Generator(device=device)
            if self.random_state is None:
                gen.seed()
            else:
                gen.manual_seed(int(self.random_state))
            self._generators[key] = gen
        return self._generators[key]

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the logits and scores: the gate projection's (float32 as built)."""
        return self.gate.weight.dtype

    def logits(self, x: Tensor) -> Tensor:
        """Router logits ``z`` (B, n, m) in the router's :attr:`dtype`."""
        x = as_groups(x)
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x has {x.shape[-1]} features; the router was built for "
                f"d_model={self.d_model}."
            )
        return self.gate(self._jitter(x.to(self.dtype)))

    def _jitter(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Routing:
        """Route the tokens of ``x`` (n, d) or (B, n, d)."""
        return self.route(self.logits(x))

    def route(self, logits: Tensor) -> Routing:
        """Route from given logits (B, n, m) or (n, m)."""
        raise NotImplementedError

    def selection_scores(self, routing: Routing) -> Tensor:
        """Scores whose top-k are the experts each token chooses (B, n, m).

        What the routing diagnostics record: for a router that picks the
        top-k of its logits, the logits themselves. Routers that choose by
        something else (a balancing bias, prototypes) override it.

        Parameters
        ----------
        routing : Routing
            A routing this router made.

        Returns
        -------
        Tensor of shape (B, n, m)
        """
        return routing.logits

    def _finish(self, routing: Routing) -> Routing:
        routing.loss_weights = dict(self.loss_weights)
        return routing

    def _slot_routing(
        self,
        logits: Tensor,
        probs: Tensor,
        topk_idx: Tensor,
        topk_weight: Tensor,
        capacity: int | None,
        aux: dict[str, Tensor],
        stats: dict[str, Tensor] | None = None,
    ) -> Routing:
        """The finished :class:`Routing` of per-slot choices (B, n, K).

        ``dispatch`` and ``combine`` come from :func:`dense_from_slots`.
        """
        dispatch, combine = dense_from_slots(topk_idx, topk_weight, self.n_experts)
        return self._finish(
            Routing(
                logits=logits,
                probs=probs,
                dispatch=dispatch,
                combine=combine,
                topk_idx=topk_idx,
                topk_weight=topk_weight,
                capacity=capacity,
                aux=aux,
                stats={} if stats is None else stats,
            )
        )


def warn_constant_weight(router_name: str) -> None:
    """Warn that a router's combine weight is constant (no router gradient)."""
    warnings.warn(
        f"{router_name}: every combine weight is the constant 1, so the task "
        "loss sends no gradient to the router; only the auxiliary losses train "
        "it.",
        UserWarning,
        stacklevel=3,
    )
