"""DeepSeek routers: normalized sigmoid top-K with a balancing bias, or softmax.

routing.md section 2.7. The sigmoid path follows DeepSeek-V3's
``inference/model.py`` (``Gate``) and ``config_671B.json`` **[code]**; the
softmax path is DeepSeekMoE / DeepSeek-V2's top-K of the softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moestat.kernels import normalized_sigmoid_log_weights, softmax_log_weights
from moestat.routing._base import (
    PRIORITIES,
    Router,
    Routing,
    as_logits,
    capacity_for,
    check_nonnegative_float,
    check_positive_float,
    drop_over_capacity,
    index_mask,
    is_int,
    load_balance_loss,
    warn_constant_weight,
)

__all__ = ["NormalizedSigmoidRouter", "SCORES"]

#: Affinity functions of :class:`NormalizedSigmoidRouter` (``score``).
SCORES = ("sigmoid", "softmax")


class NormalizedSigmoidRouter(Router):
    r"""Top-K of sigmoid scores plus a balancing bias, weights renormalized.

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m`` (shared experts are the layer's business).
    top_k : int, default=2
        Experts per token ``K``, in [1, m]. ``top_k = n_experts`` with
        ``score="sigmoid"`` is the dense normalized sigmoid gate
        ``g_i = sigma(z_i) / sum_j sigma(z_j)`` of ``theory.md``.
        (DeepSeek-V3: K = 8 of m = 256 **[code]**.) With ``top_k=1`` the
        sigmoid weight is the constant ``route_scale``, so the task loss
        cannot train the router: a ``UserWarning`` says so.
    score : {"sigmoid", "softmax"}, default="sigmoid"
        ``"sigmoid"`` (DeepSeek-V3): ``s = sigma(z)``, the weights are the
        selected ``s`` renormalized to sum 1. ``"softmax"`` (DeepSeekMoE,
        DeepSeek-V2): ``s = softmax(z)``, the weights are the selected ``s``
        as they are (not renormalized).
    route_scale : float, default=1.0
        Factor on every routed weight (DeepSeek-V3 uses 2.5 **[code]**; 1.0
        here so that the sigmoid weights sum to 1 per token).
    n_groups : int, optional
        Group-limited routing: the experts form ``n_groups`` consecutive
        groups of equal size (V3: 8 **[code]**). None: no groups.
    topk_groups : int, optional
        Groups kept per token, ``G'`` in [1, n_groups] (V3: 4 **[code]**);
        required with ``n_groups``.
    bias_update_rate : float, default=0.001
        ``gamma`` of :meth:`update_bias` (V3 report; LibMoE; arXiv
        2408.15664) **[code; report value unverified]**.
    capacity_factor : float, optional
        Expert capacity factor ``cf`` (routing.md section 1.1); None (the
        default) is dropless, as DeepSeek-V3 is.
    capacity : int, optional
        Absolute capacity ``C``, overriding ``capacity_factor``.
    min_capacity : int, default=4
        Lower bound on ``C`` when ``capacity_factor`` sets it.
    priority : {"position", "score", "random"}, default="position"
        Who is dropped when an expert overflows (:func:`keep_within_capacity`).
    n_shared_experts : int, default=0
        Recorded only: shared experts are applied by the layer, with weight 1.
    bias : bool, default=False
        Whether the gate projection has a bias (not the balancing bias).
    loss_weights : dict, optional
        Coefficients of ``"sequence_balance"`` (default 1e-4 **[unverified]**)
        and, with ``score="softmax"``, ``"load_balance"`` (``alpha_1``,
        default 0.01: DeepSeekMoE 2B's value **[unverified]**). With
        ``score="softmax"`` the default of ``"sequence_balance"`` is 0.
    random_state : int or None, default=None
        Seed of the router's generator (used by ``priority="random"``).

    Attributes
    ----------
    expert_bias : Tensor of shape (m,)
        The balancing bias ``b`` (a buffer, no gradient; zeros at start),
        changed only by :meth:`update_bias`.

    Notes
    -----
    Selection ranks the experts by ``s_ti + b_i``; the weights use ``s``
    alone, so the bias changes which experts are chosen, never their
    weights **[code]**. With ``score="sigmoid"``

    .. math::

        g_{ti} = \mathrm{route\_scale} \cdot
        \frac{s_{ti}}{\sum_{j \in \mathrm{TopK}_t} s_{tj}},
        \quad i \in \mathrm{TopK}_t .

    These are the weights of :class:`~moestat.gates.NormalizedSigmoidGate`
    (with ``top_k=K``, or dense for ``K = m``) at the same coefficients,
    computed by the same function,
    :func:`moestat.kernels.normalized_sigmoid_log_weights`; with a zero
    bias and no groups the selection is the gate's too (up to ties).

    Group-limited routing scores a group by the sum of its top-2 of
    ``s + b`` (``score="sigmoid"``; V3 with its bias) or by its largest
    ``s`` (``score="softmax"``; V3's code without a bias), keeps the best
    ``topk_groups`` groups and chooses top-K inside them **[code]**.

    Auxiliary losses (unweighted in ``Routing.aux``; groups are sequences):

    - ``"sequence_balance"`` (DeepSeek-V3): ``sum_i f_i P_i`` with
      ``f_i = m / (K T) sum_t 1[i in TopK_t]``, ``P_i = mean_t s'_ti`` and
      ``s'_t = s_t / sum_j s_tj``, per group and averaged over groups.
    - ``"load_balance"`` (``score="softmax"`` only; DeepSeekMoE's
      expert-level loss): the same formula with ``s' = softmax(z)``. Per
      group, as every balance statistic here; it then equals the sequence
      loss, hence the sequence loss's default weight 0 with softmax scores.

    Both count the selections before any capacity drop. Statistics (no
    gradient): ``tokens_per_expert`` (B, m) after capacity,
    ``selected_per_expert`` (B, m) before it, ``dropped`` (B,) the slots
    dropped at capacity and ``dropped_fraction`` (B,) their share of the
    selected slots (the top-k routers' statistic),
    ``max_violation`` (B,) ``= max_i c_i / mean(c) - 1`` from
    ``tokens_per_expert`` **[proposal: name from arXiv 2408.15664]**, and the
    bias's ``expert_bias_norm``, ``expert_bias_min``, ``expert_bias_max``.

    References
    ----------
    DeepSeek-AI 2024, "DeepSeek-V3 Technical Report"; Dai et al. 2024,
    "DeepSeekMoE"; Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing
    Strategy for Mixture-of-Experts" (arXiv 2408.15664).

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.sigmoid import NormalizedSigmoidRouter
    >>> router = NormalizedSigmoidRouter(d_model=4, n_experts=4, top_k=2)
    >>> routing = router.route(torch.tensor([[2.0, 0.0, 1.0, -1.0]]))
    >>> routing.topk_idx.tolist()
    [[[0, 2]]]
    >>> round(float(routing.combine.sum()), 6)
    1.0
    """

    default_loss_weights = {"sequence_balance": 1e-4, "load_balance": 1e-2}

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        *,
        top_k: int = 2,
        score: str = "sigmoid",
        route_scale: float = 1.0,
        n_groups: int | None = None,
        topk_groups: int | None = None,
        bias_update_rate: float = 1e-3,
        capacity_factor: float | None = None,
        capacity: int | None = None,
        min_capacity: int = 4,
        priority: str = "position",
        n_shared_experts: int = 0,
        bias: bool = False,
        loss_weights: dict[str, float] | None = None,
        random_state: int | None = None,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}; got {score!r}.")
        if score == "sigmoid" and loss_weights and "load_balance" in loss_weights:
            raise ValueError(
                "loss_weights: 'load_balance' exists only with score='softmax'; "
                "the sigmoid router has 'sequence_balance'."
            )
        super().__init__(
            d_model,
            n_experts,
            bias=bias,
            loss_weights=loss_weights,
            random_state=random_state,
        )
        m = self.n_experts
        if not is_int(top_k) or not 1 <= top_k <= m:
            raise ValueError(
                f"top_k must be an int in [1, n_experts={m}]; got {top_k!r}."
            )
        check_positive_float("route_scale", route_scale)
        if n_groups is None:
            if topk_groups is not None:
                raise ValueError(
                    "topk_groups needs n_groups; got n_groups=None and "
                    f"topk_groups={topk_groups!r}."
                )
        else:
            if not is_int(n_groups) or n_groups < 1 or m % n_groups:
                raise ValueError(
                    f"n_groups must be a positive int dividing n_experts={m}; got "
                    f"{n_groups!r}."
                )
            if not is_int(topk_groups) or not 1 <= topk_groups <= n_groups:
                raise ValueError(
                    f"topk_groups must be an int in [1, n_groups={n_groups}]; got "
                    f"{topk_groups!r}."
                )
            if top_k > topk_groups * (m // n_groups):
                raise ValueError(
                    f"top_k={top_k} exceeds the experts of the kept groups "
                    f"(topk_groups * n_experts / n_groups = "
                    f"{topk_groups * (m // n_groups)}); raise topk_groups or "
                    "lower top_k."
                )
        check_nonnegative_float("bias_update_rate", bias_update_rate)
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}; got {priority!r}.")
        if not is_int(min_capacity) or min_capacity < 1:
            raise ValueError(
                f"min_capacity must be a positive int; got {min_capacity!r}."
            )
        if not is_int(n_shared_experts) or n_shared_experts < 0:
            raise ValueError(
                f"n_shared_experts must be an int >= 0; got {n_shared_experts!r}."
            )
        # checks capacity_factor and capacity once, with their own messages
        capacity_for(m, m, top_k, capacity_factor, capacity=capacity)

        if score == "sigmoid" and top_k == 1:
            # s_i / s_i = 1: the task loss cannot reach the router
            warn_constant_weight("NormalizedSigmoidRouter(score='sigmoid', top_k=1)")
        if score == "sigmoid":
            del self.loss_weights["load_balance"]
        elif not (loss_weights and "sequence_balance" in loss_weights):
            self.loss_weights["sequence_balance"] = 0.0
        self.top_k = int(top_k)
        self.score = score
        self.route_scale = float(route_scale)
        self.n_groups = n_groups
        self.topk_groups = topk_groups
        self.bias_update_rate = float(bias_update_rate)
        self.capacity_factor = capacity_factor
        self.capacity = capacity
        self.min_capacity = int(min_capacity)
        self.priority = priority
        self.n_shared_experts = int(n_shared_experts)
        self.register_buffer("expert_bias", torch.zeros(m, dtype=torch.float32))

    selection_scores_are_logits = False

    def selection_scores(self, routing: Routing) -> Tensor:
        """``s + b``: the balancing bias steers the choice, never the weights.

        Parameters
        ----------
        routing : Routing
            A routing this router made (``routing.probs`` are the scores).

        Returns
        -------
        Tensor of shape (B, n, m)
        """
        return routing.probs + self.expert_bias.to(routing.probs.device)

    def scores(self, logits: Tensor) -> Tensor:
        """``sigmoid(z)`` or ``softmax(z)``, in the router's dtype."""
        z = logits.to(self.dtype)
        if self.score == "sigmoid":
            return torch.sigmoid(z)
        return softmax_log_weights(z).exp()

    def _select(self, scores: Tensor) -> Tensor:
        """Top-K expert indices (B, n, K) by ``s + b``, within the kept groups."""
        ranked = scores.detach() + self.expert_bias.to(scores.device)
        if self.n_groups is not None and self.n_groups > 1:
            batch, n, m = ranked.shape
            size = m // self.n_groups
            grouped = ranked.view(batch, n, self.n_groups, size)
            if self.score == "sigmoid":
                group_score = grouped.topk(min(2, size), dim=-1).values.sum(dim=-1)
            else:
                group_score = scores.detach().view_as(grouped).amax(dim=-1)
            best = group_score.topk(self.topk_groups, dim=-1).indices
            kept = index_mask(best, group_score).repeat_interleave(size, dim=-1)
            ranked = ranked.masked_fill(~kept, float("-inf"))
        return ranked.topk(self.top_k, dim=-1).indices

    def route(self, logits: Tensor) -> Routing:
        """Route from logits (B, n, m) or (n, m).

        Parameters
        ----------
        logits : Tensor of shape (B, n, m) or (n, m)
            Router logits; cast to the router's dtype.

        Returns
        -------
        Routing
            With ``topk_idx``/``topk_weight`` of shape (B, n, K), slots in
            decreasing ``s + b``; a slot dropped by capacity has index -1 and
            weight 0.
        """
        z = as_logits(logits, self.n_experts, self.dtype)
        s = self.scores(z)
        batch, n, m = z.shape
        idx = self._select(s)
        dense = None
        if self.score == "sigmoid":
            # the normalized sigmoid gate's weights (moestat.kernels, as
            # NormalizedSigmoidGate): over every expert, and over the K
            # selected ones, in slot order
            dense = normalized_sigmoid_log_weights(z).exp()
            if self.top_k == m:
                weight = dense.gather(-1, idx)
            else:
                weight = normalized_sigmoid_log_weights(z.gather(-1, idx)).exp()
        else:
            weight = s.gather(-1, idx)
        weight = weight * self.route_scale

        cap = capacity_for(
            n,
            m,
            self.top_k,
            self.capacity_factor,
            min_capacity=self.min_capacity,
            capacity=self.capacity,
        )
        topk_idx, topk_weight = drop_over_capacity(
            idx,
            weight,
            cap,
            m,
            priority=self.priority,
            scores=s.detach().gather(-1, idx[..., :1]).squeeze(-1),
            generator=self.generator(z.device) if self.priority == "random" else None,
            renormalize=False,
        )

        selected = torch.zeros(batch, n, m, dtype=s.dtype, device=s.device).scatter(
            -1, idx, 1.0
        )
        normalized = s if dense is None else dense
        # load_balance_loss's m sum_i f_i P_i, f_i the share of the n K
        # selections, is DeepSeek's sum_i f_i P_i with f_i = m/(K T) * count
        aux = {"sequence_balance": load_balance_loss(normalized, selected)}
        if self.score == "softmax":
            aux["load_balance"] = load_balance_loss(s, selected)

        routing = self._slot_routing(z, s, topk_idx, topk_weight, cap, aux)
        with torch.no_grad():
            tokens = routing.dispatch.sum(dim=1)
            counts = tokens.float()
            mean = counts.mean(dim=-1).clamp(min=torch.finfo(counts.dtype).tiny)
            b = self.expert_bias
            routing.stats = {
                "tokens_per_expert": tokens,
                "selected_per_expert": selected.sum(dim=1).long(),
                # every selected slot is valid, so a slot at -1 was dropped
                "dropped": (topk_idx < 0).sum(dim=(1, 2)),
                # the top-k routers' name: dropped share of the selected slots
                "dropped_fraction": (topk_idx < 0).float().mean(dim=(1, 2)),
                "max_violation": counts.amax(dim=-1) / mean - 1.0,
                "expert_bias_norm": b.norm().clone(),
                "expert_bias_min": b.min().clone(),
                "expert_bias_max": b.max().clone(),
            }
        return routing

    @torch.no_grad()
    def update_bias(self, routing: Routing, rate: float | None = None) -> Tensor:
        """Auxiliary-loss-free balancing step: ``b_i += gamma sign(mean(c) - c_i)``.

        Call it from the training loop after the optimizer step; ``forward``
        never calls it, and evaluation must not.

        Parameters
        ----------
        routing : Routing
            This router's output for the batch just trained on. ``c_i`` is
            the number of tokens that selected expert ``i`` (before capacity)
            per group, averaged over the ``B`` groups.
        rate : float, optional
            ``gamma``; default ``bias_update_rate``.

        Returns
        -------
        Tensor of shape (m,)
            ``sign(mean(c) - c)``; the bias moved by ``gamma`` times it.

        Raises
        ------
        RuntimeError
            In evaluation mode (``router.eval()``).
        ValueError
            If ``routing`` has another number of experts, or ``rate < 0``.

        Examples
        --------
        >>> import torch
        >>> from moestat.routing.sigmoid import NormalizedSigmoidRouter
        >>> router = NormalizedSigmoidRouter(d_model=4, n_experts=3, top_k=2)
        >>> routing = router.route(torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, -1.0]]))
        >>> router.update_bias(routing, rate=0.5).tolist()
        [-1.0, -1.0, 1.0]
        >>> router.expert_bias.tolist()
        [-0.5, -0.5, 0.5]
        """
        if not self.training:
            raise RuntimeError(
                "update_bias is a training step; the router is in evaluation "
                "mode (call router.train() to update the bias)."
            )
        gamma = self.bias_update_rate if rate is None else rate
        if not (isinstance(gamma, int | float) and gamma >= 0):
            raise ValueError(f"rate must be a float >= 0; got {rate!r}.")
        counts = routing.stats.get("selected_per_expert")
        if counts is None:
            counts = routing.dispatch.sum(dim=1)
        counts = counts.float()
        if counts.shape[-1] != self.n_experts:
            raise ValueError(
                f"routing has {counts.shape[-1]} experts; this router has "
                f"{self.n_experts}."
            )
        c = counts.reshape(-1, self.n_experts).mean(dim=0).to(self.expert_bias.device)
        step = torch.sign(c.mean() - c)
        self.expert_bias.add_(float(gamma) * step)
        return step
