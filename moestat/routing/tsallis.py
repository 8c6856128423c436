"""DynMoLE's hybrid router: soft when the Tsallis entropy is high, else top-p.

routing.md section 2.6. Defaults come from ``DynMoleConfig`` in
TUDB-Labs/MoE-PEFT (``DynMole``, ``_dynamic_routing``,
``DynMoleRouterLoss``) **[code]**.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from moestat.routing._base import (
    Router,
    Routing,
    as_logits,
    check_positive_float,
)

__all__ = ["tsallis_entropy", "TsallisHybridRouter"]


def tsallis_entropy(
    p: Tensor, q: float = 1.1, normalized: bool = True, *, dim: int = -1
) -> Tensor:
    r"""Tsallis entropy ``S_q`` of distributions, or its normalized ``S_q / max``.

    Parameters
    ----------
    p : Tensor
        Probabilities along ``dim`` (non-negative, summing to 1).
    q : float, default=1.1
        Entropic index, ``q > 0``; ``q = 1`` gives the Shannon entropy. The
        default is DynMoLE's **[code]**.
    normalized : bool, default=True
        Divide by the entropy of the uniform distribution over the ``m``
        entries along ``dim``, so that the result lies in [0, 1] (0 for a
        one-hot ``p``, 1 for the uniform one). With ``m = 1`` the result is 0.
    dim : int, default=-1
        Axis holding the distribution.

    Returns
    -------
    Tensor
        ``p``'s shape without ``dim``.

    Raises
    ------
    ValueError
        If ``q <= 0``.

    Notes
    -----
    .. math::

        S_q(p) = \frac{1 - \sum_i p_i^q}{q - 1}
        \xrightarrow[q \to 1]{} -\sum_i p_i \log p_i,
        \qquad \max_p S_q = \frac{1 - m^{1-q}}{q - 1}.

    Both are evaluated as ``-sum_i p_i expm1((q - 1) log p_i) / (q - 1)`` and
    ``-expm1((1 - q) log m) / (q - 1)``, which stay accurate as ``q -> 1``
    (no cancellation in ``1 - sum_i p_i^q``); ``q = 1`` itself takes the
    Shannon branch. Zero probabilities contribute 0.

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.tsallis import tsallis_entropy
    >>> round(float(tsallis_entropy(torch.full((4,), 0.25), q=1.1)), 6)
    1.0
    >>> round(float(tsallis_entropy(torch.tensor([1.0, 0.0, 0.0]), q=2.0)), 6)
    0.0
    """
    q = float(q)
    if not q > 0 or not math.isfinite(q):
        raise ValueError(f"q must be a positive finite float; got {q!r}.")
    m = p.shape[dim]
    if q == 1.0:
        entropy = -torch.xlogy(p, p).sum(dim=dim)
        top = math.log(m)
    else:
        # clamp so that log(0) stays finite; p_i = 0 then contributes 0 * finite
        log_p = torch.log(p.clamp(min=torch.finfo(p.dtype).tiny))
        entropy = -(p * torch.expm1((q - 1.0) * log_p)).sum(dim=dim) / (q - 1.0)
        top = -math.expm1((1.0 - q) * math.log(m)) / (q - 1.0)
    entropy = entropy + 0.0  # a one-hot p gives -0.0; report it as 0.0
    if not normalized:
        return entropy
    if top <= 0.0:
        return torch.zeros_like(entropy)
    return entropy / top


class TsallisHybridRouter(Router):
    """DynMoLE's router: every expert for unsure tokens, top-p for the others.

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m`` (at least ``k_min``).
    q : float, default=1.1
        Index of the Tsallis entropy **[code]**.
    entropy_threshold : float, default=0.9
        ``tau_H`` in [0, 1]: a token whose normalized entropy exceeds it is
        routed to every expert **[code]**.
    top_p : float, default=0.75
        ``p_top`` in (0, 1]: cumulative probability kept by the top-p rule
        **[code]**.
    k_min : int, default=2
        Experts a top-p token always keeps **[code]**.
    inclusive_top_p : bool, default=False
        False (the code's rule): keep the experts whose cumulative probability
        is ``<= top_p``, so the expert that crosses ``top_p`` is dropped. True:
        keep it too, as nucleus sampling does **[proposal]**.
    bias : bool, default=False
        Whether the gate projection has a bias.
    loss_weights : dict, optional
        Coefficients of ``"tsallis"`` (default 0.01, ``router_dyn_loss_coef``)
        and ``"load_balance"`` (default 1e-3, ``router_aux_loss_coef``)
        **[code]**.
    random_state : int or None, default=None
        Seed of the router's generator (this router draws nothing).

    Notes
    -----
    With ``p_t = softmax(z_t)`` and ``H_t`` the normalized Tsallis entropy
    of ``p_t`` (:func:`tsallis_entropy`), token ``t`` is dispatched to every
    expert when ``H_t > tau_H`` and otherwise to the experts kept by the
    top-p rule (at least ``k_min``). The combine weights are ``p_t`` on the
    dispatched experts, not renormalized **[code]**. Dropless; the number of
    experts varies per token, so ``topk_idx`` is None.

    Auxiliary losses (unweighted in ``Routing.aux``, averaged over groups):

    - ``"tsallis"``: ``mean_t H_t``; minimizing it makes the router confident.
    - ``"load_balance"``: ``m sum_i f_i P_i`` with ``f_i = mean_t p_ti
      mask_ti`` (the masked weights, as the code has it, not counts) and
      ``P_i = mean_t p_ti`` **[code]**.

    Statistics: ``tokens_per_expert`` (B, m); per group (B,):
    ``dense_fraction`` (tokens routed to every expert), ``experts_per_token_min``,
    ``experts_per_token_mean``, ``experts_per_token_max`` and
    ``tsallis_entropy_mean``.

    References
    ----------
    Li et al. 2025, "DynMoLE: Boosting Mixture of LoRA Experts Fine-Tuning
    with a Hybrid Routing Mechanism".

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.tsallis import TsallisHybridRouter
    >>> router = TsallisHybridRouter(d_model=4, n_experts=4)
    >>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, 3.0, 0.0, 0.0]])
    >>> routing = router.route(logits)
    >>> routing.dispatch.sum(-1).tolist()
    [[4, 2]]
    """

    default_loss_weights = {"tsallis": 0.01, "load_balance": 1e-3}

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        *,
        q: float = 1.1,
        entropy_threshold: float = 0.9,
        top_p: float = 0.75,
        k_min: int = 2,
        inclusive_top_p: bool = False,
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
        check_positive_float("q", q)
        if not (
            isinstance(entropy_threshold, int | float) and 0 <= entropy_threshold <= 1
        ):
            raise ValueError(
                f"entropy_threshold must be a float in [0, 1]; got "
                f"{entropy_threshold!r}."
            )
        if not (isinstance(top_p, int | float) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be a float in (0, 1]; got {top_p!r}.")
        if isinstance(k_min, bool) or not isinstance(k_min, int):
            raise ValueError(f"k_min must be an int; got {k_min!r}.")
        if not 1 <= k_min <= self.n_experts:
            raise ValueError(
                f"k_min must be in [1, n_experts={self.n_experts}]; got {k_min!r}."
            )
        self.q = float(q)
        self.entropy_threshold = float(entropy_threshold)
        self.top_p = float(top_p)
        self.k_min = int(k_min)
        self.inclusive_top_p = bool(inclusive_top_p)

    def _top_p_mask(self, probs: Tensor) -> Tensor:
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        cumulative = sorted_p.cumsum(dim=-1)
        if self.inclusive_top_p:
            keep = (cumulative - sorted_p) < self.top_p
        else:
            keep = cumulative <= self.top_p
        rank = torch.arange(probs.shape[-1], device=probs.device)
        keep = keep | (rank < self.k_min)
        return torch.zeros_like(keep).scatter(-1, order, keep)

    def route(self, logits: Tensor) -> Routing:
        """Route from logits (B, n, m) or (n, m).

        Parameters
        ----------
        logits : Tensor of shape (B, n, m) or (n, m)
            Router logits; cast to the router's dtype.

        Returns
        -------
        Routing
            ``topk_idx`` and ``topk_weight`` are None (variable K).
        """
        z = as_logits(logits, self.n_experts, self.dtype)
        probs = torch.softmax(z, dim=-1)
        entropy = tsallis_entropy(probs, self.q, normalized=True)
        dense = entropy > self.entropy_threshold
        dispatch = self._top_p_mask(probs.detach()) | dense.unsqueeze(-1)
        combine = torch.where(dispatch, probs, torch.zeros_like(probs))

        m = self.n_experts
        # f_i from the masked weights, not from counts (the code's choice)
        f_masked = combine.mean(dim=1)
        balance = (m * (f_masked * probs.mean(dim=1)).sum(dim=-1)).mean()
        aux = {"tsallis": entropy.mean(), "load_balance": balance}

        with torch.no_grad():
            per_token = dispatch.sum(dim=-1)
            stats = {
                "tokens_per_expert": dispatch.sum(dim=1),
                "dense_fraction": dense.float().mean(dim=1),
                "experts_per_token_min": per_token.amin(dim=1),
                "experts_per_token_mean": per_token.float().mean(dim=1),
                "experts_per_token_max": per_token.amax(dim=1),
                "tsallis_entropy_mean": entropy.detach().mean(dim=1),
            }
        routing = Routing(
            logits=z,
            probs=probs,
            dispatch=dispatch,
            combine=combine,
            capacity=None,
            aux=aux,
            stats=stats,
        )
        return self._finish(routing)
