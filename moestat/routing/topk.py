"""Top-K softmax routers: Switch, GShard, ST-MoE and Shazeer's noisy top-K.

Both routers pick ``K`` experts per token from the scores of ``m`` experts
and may drop assignments that overflow an expert's capacity ``C``
(routing.md sections 1.1 and 2.1-2.2). Provenance tags in the docstrings:
**[paper]** stated in the paper, **[code]** read in a public
implementation, **[unverified]** recalled only, **[proposal]** this
package's choice where the sources are silent.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moestat.kernels import softmax_log_weights
from moestat.routing._base import (
    PRIORITIES,
    Router,
    Routing,
    as_groups,
    as_logits,
    capacity_for,
    check_nonnegative_float,
    cv_squared,
    drop_over_capacity,
    index_mask,
    is_int,
    load_balance_loss,
    router_z_loss,
    warn_constant_weight,
)

__all__ = ["TopKSoftmaxRouter", "NoisyTopKRouter", "SECOND_POLICIES", "LB_ON"]

#: Allowed ``second_policy`` values (routing.md section 2.1).
SECOND_POLICIES = ("all", "random", "gumbel")
#: Allowed ``lb_on`` values: first choices only, or every slot.
LB_ON = ("first", "all_slots")


# --------------------------------------------------------------------------
# argument checks and helpers shared by the fixed-K routers


def _check_int(name: str, value: Any, low: int) -> int:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
    return value


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}.")
    return value


def _check_k(k: Any, n_experts: int) -> int:
    """``k``, an int in [1, n_experts]: experts per token of a fixed-K router."""
    _check_int("k", k, 1)
    if k > n_experts:
        raise ValueError(f"k must be <= n_experts={n_experts}; got {k!r}.")
    return k


def _check_factor(name: str, value: Any, *, negative_ok: bool) -> float | None:
    if value is None:
        return None
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not math.isfinite(value) or value == 0 or (value < 0 and not negative_ok):
        allowed = (
            "a nonzero finite float (negative: dropless up to |cf| K ceil(n/m))"
            if negative_ok
            else "a positive finite float"
        )
        raise ValueError(f"{name} must be {allowed} or None; got {value!r}.")
    return float(value)


def _check_capacity_args(
    capacity_factor: float | None,
    eval_capacity_factor: float | None,
    capacity: int | None,
    min_capacity: int,
    priority: str,
) -> None:
    _check_factor("capacity_factor", capacity_factor, negative_ok=True)
    _check_factor("eval_capacity_factor", eval_capacity_factor, negative_ok=True)
    if capacity is not None:
        _check_int("capacity", capacity, 1)
    _check_int("min_capacity", min_capacity, 0)
    _check_choice("priority", priority, PRIORITIES)


def top_slots(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores on the last axis (ties: lower index)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def expert_counts(idx: Tensor, n_experts: int) -> Tensor:
    """Assignments per expert (B, m) of slot indices (B, ...); -1 is ignored."""
    flat = idx.reshape(idx.shape[0], -1)
    bins = torch.where(flat < 0, n_experts, flat)
    counts = torch.zeros(
        flat.shape[0], n_experts + 1, dtype=torch.long, device=idx.device
    )
    counts.scatter_add_(1, bins, torch.ones_like(bins))
    return counts[:, :n_experts]


def resolve_capacity(
    n_tokens: int,
    n_experts: int,
    k: int,
    capacity_factor: float | None,
    *,
    capacity: int | None,
    min_capacity: int,
    loads: Tensor,
) -> int | None:
    """Capacity ``C`` of routing.md section 1.1, including Tutel's negative cf.

    ``capacity`` wins; ``capacity_factor=None`` is dropless (None); a
    positive factor gives ``max(ceil(cf K n / m), min_capacity)`` clamped
    to ``n``; a negative one is dropless up to ``ceil(|cf| K ceil(n/m))``
    (Tutel) **[code]**: ``C`` is the largest load ``loads`` (B, m), capped.
    """
    if capacity is not None or (capacity_factor is not None and capacity_factor > 0):
        return capacity_for(
            n_tokens,
            n_experts,
            k,
            capacity_factor,
            min_capacity=min_capacity,
            capacity=capacity,
        )
    if capacity_factor is None:
        return None
    cap = math.ceil(-capacity_factor * k * math.ceil(n_tokens / n_experts))
    largest = int(loads.max()) if loads.numel() else 0
    return min(largest, cap)


def slot_stats(claimed: Tensor, kept: Tensor, n_experts: int) -> dict[str, Tensor]:
    """Capacity statistics of slot indices before (``claimed``) and after."""
    with torch.no_grad():
        was = claimed >= 0
        dropped = was & (kept < 0)
        n_claims = was.sum(dim=(1, 2))
        n_dropped = dropped.sum(dim=(1, 2))
        return {
            "tokens_per_expert_before_capacity": expert_counts(claimed, n_experts),
            "tokens_per_expert": expert_counts(kept, n_experts),
            "dropped_assignments": n_dropped,
            "dropped_fraction": n_dropped / n_claims.clamp(min=1),
            "tokens_with_dropped_slot": dropped.any(dim=-1).sum(dim=1),
            "tokens_all_dropped": (was.any(dim=-1) & ~(kept >= 0).any(dim=-1)).sum(
                dim=1
            ),
        }


def balance_and_z_losses(
    probs: Tensor, logits: Tensor, idx: Tensor, n_experts: int, lb_on: str
) -> dict[str, Tensor]:
    """Switch's ``"load_balance"`` and ST-MoE's ``"z_loss"`` of slot choices.

    ``f_i`` of the balance loss counts the first choices ``idx[..., 0]``
    (``lb_on="first"``) or every slot of ``idx`` (B, n, K).
    """
    slots = idx[..., :1] if lb_on == "first" else idx
    assigned = F.one_hot(slots, n_experts).sum(dim=-2)
    return {
        "load_balance": load_balance_loss(probs, assigned),
        "z_loss": router_z_loss(logits),
    }


class _CapacityMixin:
    """Capacity of the fixed-K routers: arguments, train/eval factor, drops.

    routing.md section 1.1. The router keeps ``k``, the capacity arguments
    and ``priority`` as attributes (:meth:`_set_capacity_args`).
    """

    training: bool
    k: int
    capacity_factor: float | None
    eval_capacity_factor: float | None
    capacity: int | None
    min_capacity: int
    priority: str

    def _set_capacity_args(
        self,
        capacity_factor: float | None,
        eval_capacity_factor: float | None,
        capacity: int | None,
        min_capacity: int,
        priority: str,
    ) -> None:
        """Check the capacity arguments and keep them as attributes."""
        _check_capacity_args(
            capacity_factor, eval_capacity_factor, capacity, min_capacity, priority
        )
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.capacity = capacity
        self.min_capacity = min_capacity
        self.priority = priority

    def current_capacity_factor(self) -> float | None:
        """The capacity factor of the current mode (train or eval).

        None (dropless) in both modes when ``capacity_factor`` is None;
        otherwise ``capacity_factor`` in training and
        ``eval_capacity_factor`` in evaluation.
        """
        if self.capacity_factor is None or self.training:
            return self.capacity_factor
        return self.eval_capacity_factor

    def _apply_capacity(
        self,
        idx: Tensor,
        weight: Tensor,
        n_experts: int,
        *,
        scores: Tensor,
        renormalize: bool,
    ) -> tuple[int | None, Tensor, Tensor]:
        """Capacity ``C`` of the current mode and the slots (B, n, K) within it.

        ``C`` comes from :func:`resolve_capacity` (the loads of ``idx`` serve a
        negative factor); the slots from :func:`drop_over_capacity`, with the
        router's generator for ``priority="random"``.

        Returns
        -------
        capacity : int or None
        kept_idx, kept_weight : Tensor of shape (B, n, K)
        """
        capacity = resolve_capacity(
            idx.shape[1],
            n_experts,
            self.k,
            self.current_capacity_factor(),
            capacity=self.capacity,
            min_capacity=self.min_capacity,
            loads=expert_counts(idx, n_experts),
        )
        generator = self.generator(idx.device) if self.priority == "random" else None
        kept_idx, kept_w = drop_over_capacity(
            idx,
            weight,
            capacity,
            n_experts,
            priority=self.priority,
            scores=scores,
            generator=generator,
            renormalize=renormalize,
        )
        return capacity, kept_idx, kept_w


# --------------------------------------------------------------------------
# Switch / GShard / ST-MoE


class TopKSoftmaxRouter(_CapacityMixin, Router):
    r"""Top-K softmax router with capacity: Switch top-1, GShard top-2, M6-T top-k.

    Scores are ``p = softmax(z)``, the weights of the statistical
    :class:`~moestat.gates.SoftmaxGate` (both from
    :func:`moestat.kernels.softmax_log_weights`); each token picks its ``K``
    largest scores (ties: lower index), and an expert keeps at most ``C``
    assignments per group (routing.md section 2.1).

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m``.
    k : int, default=1
        Experts per token ``K``.
    normalize : bool or None, default=None
        True: weights ``p_{t,i_j} / sum_l p_{t,i_l}`` over the K choices
        (GShard, Mixtral); False: ``p_{t,i_j}`` (Switch, DeepSeekMoE).
        None means False for ``K = 1`` and True for ``K >= 2``. With
        ``K = 1`` and True every weight is the constant 1 (a warning).
    second_policy : {"all", "random", "gumbel"}, default="all"
        Slots ``j >= 2``: keep them all; keep each with probability
        ``min(1, w_j / threshold)`` (GShard) **[code]**; or pick the later
        experts as the largest ``z + Gumbel`` among the others (DeepSpeed
        top-2) **[code]**.
    threshold : float, default=0.2
        ``theta`` of ``second_policy="random"``: 0.5 is GShard's
        "dispatch if 2 g2 > U", 0.2 the ST-MoE / lucidrains default **[code]**.
    eval_second_policy : {"all", "random", "gumbel"} or None, default=None
        Policy in evaluation mode; None uses ``second_policy``.
    capacity_factor : float or None, default=1.25
        ``cf`` in training: ``C = max(ceil(cf K n / m), min_capacity)``,
        clamped to ``n`` **[code]**. None: dropless. Negative: dropless up
        to ``ceil(|cf| K ceil(n / m))`` (Tutel) **[code]**.
    eval_capacity_factor : float or None, default=2.0
        ``cf`` in evaluation (ST-MoE via lucidrains) **[code]**; ignored
        when ``capacity_factor`` is None; None: dropless in evaluation.
    capacity : int, optional
        An absolute capacity ``C``, overriding both factors (M6-T varies
        ``k`` and ``C`` separately).
    min_capacity : int, default=4
        Lower bound on ``C`` from a factor (lucidrains, TF Model Garden)
        **[code]**.
    priority : {"position", "score", "random"}, default="position"
        Who is dropped when an expert overflows: slot-major then token order
        (GShard, Tutel); tokens by their largest score (Batch Prioritized
        Routing); uniform random (DeepSpeed RTS) **[code]**.
    renormalize_after_drop : bool, default=False
        Renormalize the surviving weights of a token after dropping
        (DeepSpeed top-2); by default weights are normalized before capacity
        so a drop lowers the token's total weight (Tutel, lucidrains)
        **[code]**.
    jitter : float, default=0.0
        ``epsilon`` of Switch's multiplicative jitter ``U(1 - eps, 1 + eps)``
        on the router input, in training only **[code]**.
    lb_on : {"first", "all_slots"}, default="first"
        ``f_i`` of the balance loss: share of first choices (Switch, GShard,
        DeepSpeed, Tutel) or of all K selected slots (MegaBlocks) **[code]**.
    bias : bool, default=False
        Whether the gate projection has a bias.
    loss_weights : dict, optional
        Coefficients of ``"load_balance"`` (default 1e-2, Switch and ST-MoE
        papers **[paper]**) and ``"z_loss"`` (default 0.0; 1e-3 in ST-MoE
        **[code]**).
    random_state : int or None, default=None
        Seed of the router's generator (jitter, random second choices,
        Gumbel noise, random priority).

    Notes
    -----
    ``Routing.aux`` holds ``"load_balance"``: ``m sum_i f_i P_i`` with
    ``P_i`` the mean score, per group and averaged over groups, 1 at perfect
    balance; and ``"z_loss"``: ``mean_t (logsumexp_i z_ti)^2``. ``f_i`` uses
    the selected experts before the random second policy and before
    capacity. ``Routing.stats`` holds ``tokens_per_expert_before_capacity``
    and ``tokens_per_expert`` (B, m), and per group ``dropped_assignments``,
    ``dropped_fraction``, ``tokens_with_dropped_slot``, ``tokens_all_dropped``
    and ``slots_skipped`` (second choices not claimed under the random
    policy). A slot skipped or dropped has index -1 and weight 0.

    References
    ----------
    Fedus, Zoph and Shazeer (2022), Switch Transformers. Lepikhin et al.
    (2021), GShard. Zoph et al. (2022), ST-MoE. Yang et al. (2021), M6-T.

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.topk import TopKSoftmaxRouter
    >>> router = TopKSoftmaxRouter(8, 4, k=2, capacity_factor=None, random_state=0)
    >>> routing = router(torch.zeros(2, 16, 8))
    >>> routing.combine.shape, routing.topk_idx.shape
    (torch.Size([2, 16, 4]), torch.Size([2, 16, 2]))
    >>> routing.dispatch.sum(-1).unique().tolist()
    [2]
    """

    default_loss_weights = {"load_balance": 1e-2, "z_loss": 0.0}

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        k: int = 1,
        *,
        normalize: bool | None = None,
        second_policy: str = "all",
        threshold: float = 0.2,
        eval_second_policy: str | None = None,
        capacity_factor: float | None = 1.25,
        eval_capacity_factor: float | None = 2.0,
        capacity: int | None = None,
        min_capacity: int = 4,
        priority: str = "position",
        renormalize_after_drop: bool = False,
        jitter: float = 0.0,
        lb_on: str = "first",
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
        _check_k(k, n_experts)
        if normalize is not None and not isinstance(normalize, bool):
            raise ValueError(
                f"normalize must be True, False or None; got {normalize!r}."
            )
        _check_choice("second_policy", second_policy, SECOND_POLICIES)
        if eval_second_policy is not None:
            _check_choice("eval_second_policy", eval_second_policy, SECOND_POLICIES)
        if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
            raise ValueError(f"threshold must be in (0, 1]; got {threshold!r}.")
        self._set_capacity_args(
            capacity_factor, eval_capacity_factor, capacity, min_capacity, priority
        )
        if not (isinstance(jitter, int | float) and 0 <= jitter < 1):
            raise ValueError(f"jitter must be in [0, 1); got {jitter!r}.")
        _check_choice("lb_on", lb_on, LB_ON)
        self.k = k
        self.normalize = (k >= 2) if normalize is None else normalize
        self.second_policy = second_policy
        self.threshold = float(threshold)
        self.eval_second_policy = eval_second_policy
        self.renormalize_after_drop = bool(renormalize_after_drop)
        self.jitter = float(jitter)
        self.lb_on = lb_on
        if n_experts == 1 or (k == 1 and (self.normalize or renormalize_after_drop)):
            warn_constant_weight(type(self).__name__)

    # presets -------------------------------------------------------------

    @classmethod
    def switch(cls, d_model: int, n_experts: int, **kw: Any) -> TopKSoftmaxRouter:
        """Switch Transformer router: K 1, cf 1.25, load balance 1e-2, jitter 1e-2.

        Parameters
        ----------
        d_model, n_experts : int
            Input features and experts.
        **kw
            Overrides of any constructor argument (``loss_weights`` are
            merged into the preset's).

        Returns
        -------
        TopKSoftmaxRouter

        Examples
        --------
        >>> from moestat.routing.topk import TopKSoftmaxRouter
        >>> r = TopKSoftmaxRouter.switch(8, 4)
        >>> r.k, r.normalize, r.jitter, r.loss_weights["load_balance"]
        (1, False, 0.01, 0.01)
        """
        preset = {"k": 1, "capacity_factor": 1.25, "jitter": 1e-2}
        return cls._preset(d_model, n_experts, preset, {"load_balance": 1e-2}, kw)

    @classmethod
    def gshard(cls, d_model: int, n_experts: int, **kw: Any) -> TopKSoftmaxRouter:
        """GShard router: K 2, normalized, random second choice (theta 0.5), cf 1.25.

        Parameters
        ----------
        d_model, n_experts : int
            Input features and experts.
        **kw
            Overrides of any constructor argument.

        Returns
        -------
        TopKSoftmaxRouter

        Examples
        --------
        >>> from moestat.routing.topk import TopKSoftmaxRouter
        >>> r = TopKSoftmaxRouter.gshard(8, 4)
        >>> r.k, r.second_policy, r.threshold, r.eval_capacity_factor
        (2, 'random', 0.5, 2.0)
        """
        preset = {
            "k": 2,
            "normalize": True,
            "second_policy": "random",
            "threshold": 0.5,
            "capacity_factor": 1.25,
            "eval_capacity_factor": 2.0,
        }
        return cls._preset(d_model, n_experts, preset, {"load_balance": 1e-2}, kw)

    @classmethod
    def st_moe(cls, d_model: int, n_experts: int, **kw: Any) -> TopKSoftmaxRouter:
        """ST-MoE router: GShard's with theta 0.2 and z-loss 1e-3 **[code]**.

        Parameters
        ----------
        d_model, n_experts : int
            Input features and experts.
        **kw
            Overrides of any constructor argument.

        Returns
        -------
        TopKSoftmaxRouter

        Examples
        --------
        >>> from moestat.routing.topk import TopKSoftmaxRouter
        >>> r = TopKSoftmaxRouter.st_moe(8, 4)
        >>> r.threshold, r.loss_weights["z_loss"]
        (0.2, 0.001)
        """
        kw = {"threshold": 0.2, **kw}
        weights = {"z_loss": 1e-3, **(kw.pop("loss_weights", None) or {})}
        return cls.gshard(d_model, n_experts, loss_weights=weights, **kw)

    @classmethod
    def _preset(
        cls,
        d_model: int,
        n_experts: int,
        preset: dict[str, Any],
        weights: dict[str, float],
        kw: dict[str, Any],
    ) -> TopKSoftmaxRouter:
        kw = dict(kw)
        merged = {**weights, **(kw.pop("loss_weights", None) or {})}
        return cls(d_model, n_experts, **{**preset, **kw}, loss_weights=merged)

    # routing -------------------------------------------------------------

    def _jitter(self, x: Tensor) -> Tensor:
        if not (self.training and self.jitter > 0):
            return x
        noise = torch.empty_like(x).uniform_(
            1.0 - self.jitter, 1.0 + self.jitter, generator=self.generator(x.device)
        )
        return x * noise

    def _select(self, z: Tensor, p: Tensor, policy: str) -> Tensor:
        """The K chosen experts (B, n, K), first choice = the largest score."""
        if policy != "gumbel" or self.k == 1:
            return top_slots(p, self.k)
        first = top_slots(p, 1)
        gumbel = (
            -torch.empty_like(z)
            .exponential_(generator=self.generator(z.device))
            .clamp(min=torch.finfo(z.dtype).tiny)
            .log()
        )
        noisy = (z.detach() + gumbel).scatter(-1, first, -torch.inf)
        return torch.cat([first, top_slots(noisy, self.k - 1)], dim=-1)

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
        m = z.shape[-1]
        # the softmax gate's weights (moestat.kernels, as SoftmaxGate)
        p = softmax_log_weights(z).exp()
        policy = self.second_policy
        if not self.training and self.eval_second_policy is not None:
            policy = self.eval_second_policy
        idx = self._select(z, p, policy)
        chosen = p.gather(-1, idx)
        weight = chosen / chosen.sum(-1, keepdim=True) if self.normalize else chosen

        claimed = idx
        if policy == "random" and self.k > 1:
            u = torch.rand(
                idx[..., 1:].shape, generator=self.generator(z.device), device=z.device
            )
            take = u < weight[..., 1:].detach() / self.threshold
            rest = torch.where(
                take, idx[..., 1:], torch.full_like(take, -1, dtype=idx.dtype)
            )
            claimed = torch.cat([idx[..., :1], rest], dim=-1)
            weight = torch.where(claimed >= 0, weight, torch.zeros_like(weight))

        capacity, kept_idx, kept_w = self._apply_capacity(
            claimed,
            weight,
            m,
            scores=p.detach().amax(dim=-1),
            renormalize=self.renormalize_after_drop,
        )
        aux = balance_and_z_losses(p, z, idx, m, self.lb_on)
        stats = slot_stats(claimed, kept_idx, m)
        stats["slots_skipped"] = (claimed < 0).sum(dim=(1, 2))
        return self._slot_routing(z, p, kept_idx, kept_w, capacity, aux, stats)


# --------------------------------------------------------------------------
# Shazeer et al. (2017)


def prob_in_top_k(
    clean: Tensor, noisy: Tensor, noise_std: Tensor, selected: Tensor, k: int
) -> Tensor:
    r"""Shazeer's smooth load ``P_{t,i} = Phi((z_{t,i} - theta_{t,i}) / s_{t,i})``.

    Parameters
    ----------
    clean : Tensor of shape (B, n, m)
        Logits ``z`` without noise.
    noisy : Tensor of shape (B, n, m)
        Noisy logits ``h``.
    noise_std : Tensor of shape (B, n, m)
        Noise scale ``s = softplus(x W_noise)``.
    selected : BoolTensor of shape (B, n, m)
        Whether expert ``i`` is among the ``k`` largest ``h_t``.
    k : int
        ``K < m``.

    Returns
    -------
    Tensor of shape (B, n, m)

    Notes
    -----
    ``theta_{t,i}`` is the K-th largest of ``h_t`` with component ``i`` left
    out: the (K+1)-th value of ``h_t`` when ``i`` is selected, the K-th
    otherwise. ``P_{t,i}`` is the probability that ``i`` stays selected
    when its own noise is redrawn.
    """
    top = torch.topk(noisy, k + 1, dim=-1).values
    threshold = torch.where(selected, top[..., k : k + 1], top[..., k - 1 : k])
    return torch.special.ndtr((clean - threshold) / noise_std)


class NoisyTopKRouter(_CapacityMixin, Router):
    r"""Noisy top-K gating of Shazeer et al. (2017), with importance and load losses.

    In training, ``h = z + eps * softplus(x W_noise)`` with ``eps ~ N(0, 1)``
    from the router's generator; in evaluation ``h = z``. The weights are a
    softmax over the ``K`` largest ``h_t`` (others exactly 0), i.e. the
    normalized top-K weights of the noisy logits (routing.md section 2.2).

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m``.
    k : int, default=2
        Experts per token ``K``. ``K = 1`` makes every weight the constant 1
        (a warning).
    noisy : bool, default=True
        Whether to add the noise in training.
    noise_epsilon : float, default=0.0
        Added to the noise scale ``softplus(x W_noise)`` (the widely copied
        davidmrau/mixture-of-experts adds 1e-2 **[code]**).
    zero_init : bool, default=True
        Start ``W_g`` and ``W_noise`` at zero **[unverified]**.
    capacity_factor : float or None, default=None
        No capacity in the original (None, dropless); otherwise as in
        :class:`TopKSoftmaxRouter`.
    eval_capacity_factor : float or None, default=2.0
        ``cf`` in evaluation; ignored when ``capacity_factor`` is None.
    capacity : int, optional
        Absolute capacity, overriding both factors.
    min_capacity : int, default=4
        Lower bound on ``C`` from a factor.
    priority : {"position", "score", "random"}, default="position"
        Who is dropped when an expert overflows; ``"score"`` orders tokens
        by their largest weight.
    renormalize_after_drop : bool, default=False
        Renormalize the surviving weights of a token after dropping.
    bias : bool, default=False
        Whether the gate projection has a bias.
    loss_weights : dict, optional
        Coefficients of ``"importance"`` and ``"load"``, 0.1 each
        **[unverified; paper]** (davidmrau uses one coefficient 1e-2 on
        the sum **[code]**).
    random_state : int or None, default=None
        Seed of the router's generator (noise, random priority).

    Attributes
    ----------
    w_noise : torch.nn.Linear
        The noise projection ``W_noise`` (no bias; float32 as built).

    Notes
    -----
    ``Importance_i = sum_t G_{t,i}`` and ``"importance"`` is its
    ``CV^2 = var / (mean^2 + 1e-10)`` across experts (0 when ``m = 1``),
    per group, averaged over groups. ``"load"`` is the ``CV^2`` of
    ``Load_i = sum_t P_{t,i}`` with ``P`` from :func:`prob_in_top_k`; without
    noise (evaluation, ``noisy=False``, :meth:`route` called without
    ``noise_std``) or with ``K = m``, the load is the count of assignments
    (no gradient). Both use the weights before capacity. ``Routing.probs``
    is ``softmax(z)`` of the noise-free logits.

    References
    ----------
    Shazeer et al. (2017), Outrageously large neural networks: the
    sparsely-gated mixture-of-experts layer.

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.topk import NoisyTopKRouter
    >>> router = NoisyTopKRouter(8, 4, k=2, random_state=0)
    >>> routing = router(torch.ones(16, 8))
    >>> routing.topk_weight.sum(-1).allclose(torch.ones(1, 16))
    True
    >>> sorted(routing.aux)
    ['importance', 'load']
    """

    default_loss_weights = {"importance": 0.1, "load": 0.1}

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        k: int = 2,
        *,
        noisy: bool = True,
        noise_epsilon: float = 0.0,
        zero_init: bool = True,
        capacity_factor: float | None = None,
        eval_capacity_factor: float | None = 2.0,
        capacity: int | None = None,
        min_capacity: int = 4,
        priority: str = "position",
        renormalize_after_drop: bool = False,
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
        _check_k(k, n_experts)
        check_nonnegative_float("noise_epsilon", noise_epsilon)
        self._set_capacity_args(
            capacity_factor, eval_capacity_factor, capacity, min_capacity, priority
        )
        self.k = k
        self.noisy = bool(noisy)
        self.noise_epsilon = float(noise_epsilon)
        self.renormalize_after_drop = bool(renormalize_after_drop)
        self.w_noise = nn.Linear(d_model, n_experts, bias=False, dtype=torch.float32)
        if zero_init:
            with torch.no_grad():
                self.gate.weight.zero_()
                if self.gate.bias is not None:
                    self.gate.bias.zero_()
                self.w_noise.weight.zero_()
        if k == 1:
            warn_constant_weight(type(self).__name__)

    def noise_std(self, x: Tensor) -> Tensor:
        """Noise scale ``softplus(x W_noise) + noise_epsilon`` (B, n, m).

        In the router's :attr:`~moestat.routing.Router.dtype`.
        """
        x = as_groups(x).to(self.dtype)
        return F.softplus(self.w_noise(x)) + self.noise_epsilon

    def forward(self, x: Tensor) -> Routing:
        """Route the tokens of ``x`` (n, d) or (B, n, d), with noise in training."""
        logits = self.logits(x)
        std = self.noise_std(x) if (self.training and self.noisy) else None
        return self.route(logits, noise_std=std)

    def route(self, logits: Tensor, noise_std: Tensor | None = None) -> Routing:
        """Route from logits (B, n, m) or (n, m).

        Parameters
        ----------
        logits : Tensor of shape (B, n, m) or (n, m)
            Noise-free router logits ``z``; cast to the router's dtype.
        noise_std : Tensor of shape (B, n, m) or (n, m), optional
            Noise scale; when given (and in training) ``h = z + eps * s``.

        Returns
        -------
        Routing
        """
        z = as_logits(logits, self.n_experts, self.dtype)
        m = z.shape[-1]
        std = None
        if noise_std is not None and self.training:
            std = noise_std.to(z.dtype)
            if std.dim() == 2:
                std = std.unsqueeze(0)
            if std.shape != z.shape:
                raise ValueError(
                    f"noise_std must have the shape of the logits {tuple(z.shape)}; "
                    f"got {tuple(noise_std.shape)}."
                )
            std = std.clamp(min=torch.finfo(std.dtype).tiny)
            eps = torch.randn(
                z.shape, generator=self.generator(z.device), device=z.device
            )
            h = z + eps * std
        else:
            h = z
        idx = top_slots(h, self.k)
        weight = torch.softmax(h.gather(-1, idx), dim=-1)
        gates = torch.zeros_like(z).scatter(-1, idx, weight)
        selected = index_mask(idx, z)

        importance = gates.sum(dim=1)
        if std is not None and self.k < m:
            load = prob_in_top_k(z, h, std, selected, self.k).sum(dim=1)
        else:
            load = selected.sum(dim=1).to(z.dtype)
        aux = {"importance": cv_squared(importance), "load": cv_squared(load)}

        capacity, kept_idx, kept_w = self._apply_capacity(
            idx,
            weight,
            m,
            scores=weight.detach()[..., 0],
            renormalize=self.renormalize_after_drop,
        )
        probs = torch.softmax(z, dim=-1)
        stats = slot_stats(idx, kept_idx, m)
        return self._slot_routing(z, probs, kept_idx, kept_w, capacity, aux, stats)
