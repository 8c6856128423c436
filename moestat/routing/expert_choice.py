"""Expert-choice routing of Zhou et al. (2022): each expert picks its tokens.

Provenance tags in the docstrings: **[paper]** stated in the paper,
**[code]** read in a public implementation, **[unverified]** recalled only,
**[proposal]** this package's choice where the sources are silent.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moestat.routing._base import (
    Router,
    Routing,
    as_logits,
    descending_rank,
    experts_per_token_hist,
    router_z_loss,
)
from moestat.routing.topk import _check_factor, _check_int

__all__ = ["ExpertChoiceRouter", "expert_choice_capacity"]


def expert_choice_capacity(
    n_tokens: int,
    n_experts: int,
    capacity_factor: float,
    *,
    min_capacity: int = 4,
    capacity: int | None = None,
) -> int:
    """Tokens per expert ``C = max(round(cf n / m), min_capacity)``, clamped to n.

    Parameters
    ----------
    n_tokens, n_experts : int
        Tokens per group ``n`` and experts ``m``.
    capacity_factor : float
        ``cf`` (``c`` of the paper, where ``k = n c / e``) **[paper]**.
    min_capacity : int, default=4
        Lower bound on ``C`` (TF Model Garden) **[code]**.
    capacity : int, optional
        An absolute capacity overriding ``capacity_factor``.

    Returns
    -------
    int

    Examples
    --------
    >>> from moestat.routing.expert_choice import expert_choice_capacity
    >>> expert_choice_capacity(64, 8, 2.0)
    16
    >>> expert_choice_capacity(3, 8, 2.0)
    3
    """
    if capacity is not None:
        return min(capacity, n_tokens)
    # Python's round (half to even) as int(round(...)) in the TF router
    c = max(round(capacity_factor * n_tokens / n_experts), min_capacity)
    return min(c, n_tokens)


def capped_expert_choice(scores: Tensor, capacity: int, max_per_token: int) -> Tensor:
    """Greedy expert choice with at most ``max_per_token`` experts per token.

    Parameters
    ----------
    scores : Tensor of shape (B, n, m)
        Router scores ``S``.
    capacity : int
        ``C``, the most tokens an expert takes.
    max_per_token : int
        ``b``, the most experts a token keeps.

    Returns
    -------
    BoolTensor of shape (B, n, m)
        The dispatch mask.

    Notes
    -----
    **[proposal]** In each round every expert with free places offers them
    to its best tokens (by ``S[:, i]``) among those it has not offered yet
    and that still have room; each token keeps its best offers (by
    ``S[t, :]``) up to ``b`` and frees the rest, which become places the
    experts offer again in the next round. A round accepts at least one
    offer, so the loop ends; every expert ends with ``C`` tokens unless no
    token with room is left for it.
    """
    batch, n, m = scores.shape
    scores = scores.detach()
    accepted = torch.zeros_like(scores, dtype=torch.bool)
    offered = torch.zeros_like(accepted)
    neg_inf = torch.tensor(-torch.inf, dtype=scores.dtype, device=scores.device)
    for _ in range(n * m):
        expert_room = capacity - accepted.sum(dim=1, keepdim=True)  # (B, 1, m)
        token_room = max_per_token - accepted.sum(dim=2, keepdim=True)  # (B, n, 1)
        candidate = ~offered & (token_room > 0) & (expert_room > 0)
        if not bool(candidate.any()):
            break
        rank = descending_rank(torch.where(candidate, scores, neg_inf), dim=1)
        offer = candidate & (rank < expert_room)
        token_rank = descending_rank(torch.where(offer, scores, neg_inf), dim=2)
        accepted |= offer & (token_rank < token_room)
        offered |= offer
    return accepted


class ExpertChoiceRouter(Router):
    r"""Expert-choice router: each expert takes the ``C`` tokens it scores highest.

    ``S = softmax(z)`` over experts for each token **[paper]**; expert ``i``
    keeps the ``C`` tokens with the largest ``S[:, i]`` in its group (ties:
    lower token index), and the selected ``S`` values are the combine
    weights, used as-is (routing.md section 2.4). A token may get 0 to
    ``m`` experts; a token chosen by none outputs 0.

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m``.
    capacity_factor : float, default=2.0
        ``cf``: ``C = max(round(cf n / m), min_capacity)``, clamped to ``n``
        (TF Model Garden's ``ExpertsChooseMaskedRouter``) **[code]**. 2 is
        the paper's main setting **[paper, via secondary page]**.
    capacity : int, optional
        An absolute capacity, overriding ``capacity_factor``.
    min_capacity : int, default=4
        Lower bound on ``C`` from the factor **[code]**.
    max_experts_per_token : int, optional
        Cap ``b`` on the experts of one token, by the greedy rule of
        :func:`capped_expert_choice` **[proposal]** (the paper solves an
        entropy-regularized linear program **[unverified details]**).
    bias : bool, default=False
        Whether the gate projection has a bias.
    loss_weights : dict, optional
        Coefficient of the optional ``"z_loss"`` (default 0.0). There is no
        load-balancing loss: balance holds by construction.
    random_state : int or None, default=None
        Seed of the router's generator (unused by the routing itself).

    Notes
    -----
    A token's routing depends on the other tokens of its group, so this
    router cannot be used for autoregressive decoding (the TF / flaxformer
    router's note) **[code]**. For i.i.d. regression samples this is
    harmless while fitting, but a fitted model's prediction for one new
    ``x`` depends on the batch it comes in: route a new ``x`` against a
    stored reference batch (append it to that group) or fall back to token
    choice (e.g. top-K of the same logits).

    Every expert has exactly ``C`` distinct tokens when ``n >= C`` (without
    ``max_experts_per_token``). ``topk_idx`` and ``topk_weight`` are None.
    ``Routing.stats``: ``tokens_per_expert`` (B, m), ``experts_per_token``
    (B, n), ``experts_per_token_hist`` (B, m + 1; tokens with 0..m experts),
    and per group ``tokens_left_behind`` (fraction of tokens with no
    expert), ``mean_experts_per_token`` and ``mean_confidence``
    (``sum combine / number of dispatches``), as the TF router logs them
    **[code]**. The TF router splits tokens in groups of at most 4096
    (``max_group_size``) **[code]**; here the caller's B groups are used.

    References
    ----------
    Zhou et al. (2022), Mixture-of-experts with expert choice routing.

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.expert_choice import ExpertChoiceRouter
    >>> router = ExpertChoiceRouter(8, 4)
    >>> routing = router(torch.zeros(2, 16, 8))
    >>> routing.capacity, routing.dispatch.sum(1).tolist()
    (8, [[8, 8, 8, 8], [8, 8, 8, 8]])
    >>> routing.topk_idx is None
    True
    """

    default_loss_weights = {"z_loss": 0.0}

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        *,
        capacity_factor: float = 2.0,
        capacity: int | None = None,
        min_capacity: int = 4,
        max_experts_per_token: int | None = None,
        bias: bool = False,
        loss_weights: dict[str, float] | None = None,
        random_state: int | None = None,
    ) -> None:
        super().__init__(
            d_model,
            n_experts,
            bias=bias,
            loss_weights=loss_weights,
            random_state=random_state,
        )
        if capacity_factor is None:
            raise ValueError(
                "capacity_factor must be a positive finite float; got None "
                "(expert choice has no dropless mode)."
            )
        _check_factor("capacity_factor", capacity_factor, negative_ok=False)
        if capacity is not None:
            _check_int("capacity", capacity, 1)
        _check_int("min_capacity", min_capacity, 1)
        if max_experts_per_token is not None:
            _check_int("max_experts_per_token", max_experts_per_token, 1)
        self.capacity_factor = float(capacity_factor)
        self.capacity = capacity
        self.min_capacity = min_capacity
        self.max_experts_per_token = max_experts_per_token

    def route(self, logits: Tensor) -> Routing:
        """Route from logits (B, n, m) or (n, m).

        Parameters
        ----------
        logits : Tensor of shape (B, n, m) or (n, m)
            Router logits ``z``; cast to the router's dtype.

        Returns
        -------
        Routing
        """
        z = as_logits(logits, self.n_experts, self.dtype)
        _, n, m = z.shape
        s = torch.softmax(z, dim=-1)
        capacity = expert_choice_capacity(
            n,
            m,
            self.capacity_factor,
            min_capacity=self.min_capacity,
            capacity=self.capacity,
        )
        b = self.max_experts_per_token
        if b is None or b >= m:
            rank = descending_rank(s.detach(), dim=1)
            dispatch = rank < capacity
        else:
            dispatch = capped_expert_choice(s, capacity, b)
        combine = torch.where(dispatch, s, torch.zeros_like(s))
        return self._finish(
            Routing(
                logits=z,
                probs=s,
                dispatch=dispatch,
                combine=combine,
                capacity=capacity,
                aux={"z_loss": router_z_loss(z)},
                stats=_stats(dispatch, combine),
            )
        )


def _stats(dispatch: Tensor, combine: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        m = dispatch.shape[-1]
        per_token = dispatch.sum(dim=2)
        hist = experts_per_token_hist(per_token, m)
        n_dispatch = dispatch.sum(dim=(1, 2))
        return {
            "tokens_per_expert": dispatch.sum(dim=1),
            "experts_per_token": per_token,
            "experts_per_token_hist": hist,
            "tokens_left_behind": (per_token == 0).float().mean(dim=1),
            "mean_experts_per_token": per_token.float().mean(dim=1),
            "mean_confidence": combine.sum(dim=(1, 2)) / n_dispatch.clamp(min=1),
        }
