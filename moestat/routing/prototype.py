"""Expert prototyping of M6-T: ``Z`` groups of experts, top-k' inside each.

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
    warn_constant_weight,
)
from moestat.routing.topk import (
    LB_ON,
    _CapacityMixin,
    _check_choice,
    _check_int,
    balance_and_z_losses,
    slot_stats,
    top_slots,
)

__all__ = ["PrototypeRouter"]


class PrototypeRouter(_CapacityMixin, Router):
    r"""M6-T expert prototyping ("k top-1"): top-k' inside each of Z expert groups.

    The ``m`` experts are split into ``Z`` prototypes of ``m / Z``
    consecutive experts. One projection gives logits (B, n, Z, m/Z);
    ``p^{(z)}`` is the softmax within prototype ``z``, and each token picks
    its ``k'`` largest ``p^{(z)}`` in every prototype: ``Z k'`` experts in
    all, the compute of top-``Z k'`` routing **[paper: abstract]**
    (routing.md section 2.3).

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m``, a multiple of ``n_prototypes``.
    n_prototypes : int
        Prototypes ``Z``.
    k : int, default=1
        Experts ``k'`` per prototype.
    capacity_factor : float or None, default=1.25
        ``cf`` in training (atorch's default **[code]**): the capacity of
        every expert is ``C = max(ceil(cf k' n / (m / Z)), min_capacity)``,
        clamped to ``n``, since each prototype spreads all ``n`` tokens
        over its ``m / Z`` experts. None: dropless; negative: dropless up to
        ``ceil(|cf| k' ceil(n Z / m))`` (Tutel's rule).
    eval_capacity_factor : float or None, default=2.0
        ``cf`` in evaluation; ignored when ``capacity_factor`` is None.
    capacity : int, optional
        Absolute capacity, overriding both factors.
    min_capacity : int, default=4
        Lower bound on ``C`` from a factor.
    priority : {"position", "score", "random"}, default="position"
        Who is dropped when an expert overflows; ``"score"`` orders tokens by
        their largest score within the expert's prototype.
    lb_on : {"first", "all_slots"}, default="first"
        ``f_i`` of the balance loss: first choices or all ``k'`` slots.
    bias : bool, default=False
        Whether the gate projection has a bias.
    loss_weights : dict, optional
        Coefficients of ``"load_balance"`` (default 1e-2) and ``"z_loss"``
        (default 0.0) **[proposal]**.
    random_state : int or None, default=None
        Seed of the router's generator (random priority).

    Notes
    -----
    The weight of expert ``j_z`` is ``w_{t,z} = p^{(z)}_{t,j_z}``, not
    renormalized **[proposal: the paper's exact weight was not found;
    atorch's M6-T gate renormalizes within each prototype, which for
    k' = 1 makes every weight 1 and cuts the router's gradient]**. With one
    expert per prototype every weight is 1 (a warning).

    Global expert id ``= z (m / Z) + j_z``; ``topk_idx`` has ``Z k'`` slots,
    prototype-major, and ``Routing.probs`` holds the per-prototype softmax
    (each block of ``m / Z`` sums to 1). ``"load_balance"`` is the
    Switch loss computed within each prototype (with ``m / Z`` experts) and
    averaged over prototypes and groups **[proposal]**; ``"z_loss"`` uses the
    logsumexp within each prototype. Capacity competition and priorities
    act within a prototype. ``Routing.stats`` holds the capacity statistics
    of :class:`~moestat.routing.topk.TopKSoftmaxRouter`.

    References
    ----------
    Yang et al. (2021), M6-T: exploring sparse expert models and beyond.

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.prototype import PrototypeRouter
    >>> router = PrototypeRouter(8, 6, n_prototypes=2, capacity_factor=None)
    >>> routing = router(torch.zeros(16, 8))
    >>> routing.topk_idx[0, 0].tolist()
    [0, 3]
    >>> routing.dispatch.sum(-1).unique().tolist()
    [2]
    """

    default_loss_weights = {"load_balance": 1e-2, "z_loss": 0.0}
    selection_scores_are_logits = False

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        n_prototypes: int,
        k: int = 1,
        *,
        capacity_factor: float | None = 1.25,
        eval_capacity_factor: float | None = 2.0,
        capacity: int | None = None,
        min_capacity: int = 4,
        priority: str = "position",
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
        _check_int("n_prototypes", n_prototypes, 1)
        if n_experts % n_prototypes:
            raise ValueError(
                f"n_experts={n_experts} must be divisible by n_prototypes; got "
                f"n_prototypes={n_prototypes!r}."
            )
        per = n_experts // n_prototypes
        _check_int("k", k, 1)
        if k > per:
            raise ValueError(
                f"k must be <= n_experts / n_prototypes = {per}; got {k!r}."
            )
        self._set_capacity_args(
            capacity_factor, eval_capacity_factor, capacity, min_capacity, priority
        )
        _check_choice("lb_on", lb_on, LB_ON)
        self.n_prototypes = n_prototypes
        self.experts_per_prototype = per
        self.k = k
        self.lb_on = lb_on
        if per == 1:
            warn_constant_weight(type(self).__name__)

    def _fold(self, t: Tensor) -> Tensor:
        """(B, n, Z, ...) -> (B Z, n, ...): prototypes become groups."""
        t = t.transpose(1, 2)
        return t.reshape(-1, *t.shape[2:])

    def _unfold(self, t: Tensor, batch: int) -> Tensor:
        """(B Z, n, ...) -> (B, n, Z, ...)."""
        t = t.reshape(batch, self.n_prototypes, *t.shape[1:])
        return t.transpose(1, 2)

    def selection_scores(self, routing: Routing) -> Tensor:
        """Scores whose top-k are each prototype's winners.

        Every prototype's top ``k`` experts get one added to their
        probability, so they rank first, in the order of their own score.

        Parameters
        ----------
        routing : Routing
            A routing this router made.

        Returns
        -------
        Tensor of shape (B, n, m)
        """
        per = self.experts_per_prototype
        probs = routing.probs.reshape(*routing.probs.shape[:-1], -1, per)
        rank = probs.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
        scores = probs + (rank < self.k).to(probs.dtype)
        return scores.reshape(routing.probs.shape)

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
        batch, n, m = z.shape
        n_proto, per = self.n_prototypes, self.experts_per_prototype
        zz = z.view(batch, n, n_proto, per)
        p = torch.softmax(zz, dim=-1)
        local = top_slots(p, self.k)  # (B, n, Z, k')
        weight = p.gather(-1, local)

        # each prototype is an independent routing problem over its experts
        local_f, weight_f = self._fold(local), self._fold(weight)
        p_f = self._fold(p)
        capacity, kept_f, kept_w_f = self._apply_capacity(
            local_f,
            weight_f,
            per,
            scores=p_f.detach().amax(dim=-1),
            renormalize=False,
        )
        offset = (torch.arange(n_proto, device=z.device) * per).view(1, 1, n_proto, 1)
        claimed = (local + offset).reshape(batch, n, n_proto * self.k)
        kept_local = self._unfold(kept_f, batch)
        kept_idx = torch.where(kept_local >= 0, kept_local + offset, kept_local)
        kept_idx = kept_idx.reshape(batch, n, n_proto * self.k)
        kept_w = self._unfold(kept_w_f, batch).reshape(batch, n, n_proto * self.k)

        aux = balance_and_z_losses(p_f, zz, local_f, per, self.lb_on)
        return self._slot_routing(
            z,
            p.reshape(batch, n, m),
            kept_idx,
            kept_w,
            capacity,
            aux,
            slot_stats(claimed, kept_idx, m),
        )
