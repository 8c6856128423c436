"""EvoMoE's dense-to-sparse (DTS) gate, its temperature schedule, expert spawning.

routing.md section 2.5. Official code: codecaution/EvoMoE (a fairseq fork),
``fairseq/modules/moe/topkgate.py`` and the temperature schedule in
``fairseq_cli/train.py`` **[code]**.
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
    descending_rank,
    experts_per_token_hist,
    index_mask,
    is_int,
)

__all__ = [
    "DenseToSparseRouter",
    "temperature_schedule",
    "spawn_experts",
    "SCHEDULES",
    "EVAL_MODES",
    "DTS_MODES",
]

#: Shapes of the temperature decay (:func:`temperature_schedule`).
SCHEDULES = ("exponential", "linear")
#: Evaluation routings of :class:`DenseToSparseRouter` (``eval_mode``).
EVAL_MODES = ("top1", "dense")
#: Expert selection rules of :class:`DenseToSparseRouter` (``mode``).
DTS_MODES = ("threshold", "batch_k")


def _check_schedule(
    tau_max: float, tau_min: float, decay_steps: int, kind: str
) -> None:
    check_positive_float("tau_max", tau_max)
    check_positive_float("tau_min", tau_min)
    if tau_min > tau_max:
        raise ValueError(
            f"tau_min must not exceed tau_max; got tau_min={tau_min!r}, "
            f"tau_max={tau_max!r}."
        )
    if not is_int(decay_steps) or decay_steps < 1:
        raise ValueError(f"decay_steps must be a positive int; got {decay_steps!r}.")
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}; got {kind!r}.")


def _check_step(step: int) -> None:
    if not is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0; got {step!r}.")


def temperature_schedule(
    step: int,
    tau_max: float = 1.0,
    tau_min: float = 0.5,
    decay_steps: int = 10_000,
    kind: str = "exponential",
) -> float:
    r"""DTS temperature ``tau(s)``: from ``tau_max`` at step 0 down to ``tau_min``.

    Parameters
    ----------
    step : int
        Training step ``s >= 0``.
    tau_max, tau_min : float, default=1.0, 0.5
        Start and floor of the temperature (the repository's defaults; the
        paper's runs' values were not found **[unverified]**).
    decay_steps : int, default=10000
        Decay length ``D`` (``gumbel_decay_factor``) **[proposal: default]**.
    kind : {"exponential", "linear"}, default="exponential"
        Shape of the decay **[code]**.

    Returns
    -------
    float

    Notes
    -----
    .. math::

        \tau_{\exp}(s) = \max\bigl(\tau_{\max} (\tau_{\min} / \tau_{\max})^{s/D},
        \tau_{\min}\bigr), \qquad
        \tau_{\mathrm{lin}}(s) = \max\bigl(\tau_{\max} - s (\tau_{\max} -
        \tau_{\min}) / D, \tau_{\min}\bigr).

    Both reach ``tau_min`` at ``s = D`` and stay there.

    Examples
    --------
    >>> from moestat.routing.dense_to_sparse import temperature_schedule
    >>> temperature_schedule(0, decay_steps=100)
    1.0
    >>> temperature_schedule(50, decay_steps=100, kind="linear")
    0.75
    >>> temperature_schedule(500, decay_steps=100)
    0.5
    """
    _check_schedule(tau_max, tau_min, decay_steps, kind)
    _check_step(step)
    fraction = step / decay_steps
    if kind == "exponential":
        tau = tau_max * (tau_min / tau_max) ** fraction
    else:
        tau = tau_max - fraction * (tau_max - tau_min)
    return float(max(tau, tau_min))


class DenseToSparseRouter(Router):
    r"""EvoMoE's dense-to-sparse gate: Gumbel-softmax, threshold, annealed tau.

    Parameters
    ----------
    d_model : int
        Input features ``d``.
    n_experts : int
        Routed experts ``m``.
    tau_max, tau_min : float, default=1.0, 0.5
        Temperature schedule's start and floor (:func:`temperature_schedule`)
        **[code: repository defaults; paper values unverified]**.
    decay_steps : int, default=10000
        Decay length ``D`` of the schedule **[proposal: default]**.
    schedule : {"exponential", "linear"}, default="exponential"
        Shape of the decay **[code]**.
    threshold : float, default=0.001
        ``theta`` (``GUMBEL_THRESHOLD``): an expert is selected when its
        Gumbel-softmax value exceeds it **[code]**.
    use_gumbel_gates : bool, default=False
        Weight the selected experts by the Gumbel-softmax values ``g``
        (True) or by ``softmax(z)`` (False, the code's default) **[code]**.
    hard_after : int, optional
        From this step on, each token goes to one expert, the argmax of its
        Gumbel sample (``switch_to_hard_gumbel_softmax``) **[code]**.
    eval_mode : {"top1", "dense"}, default="top1"
        Evaluation: top-1 of ``z`` with no capacity limit (the code's eval
        path) or every expert (``dense_validate``) **[code]**; the weights
        are ``softmax(z)``.
    mode : {"threshold", "batch_k"}, default="threshold"
        ``"threshold"``: each token keeps its experts above ``theta``.
        ``"batch_k"``: one ``k = max(k_min, floor(mean_t #{i: g_ti > theta}))``
        per group, each token keeping its top-k of ``g`` (the FastMoE-based
        ``CustomDTSGate``, which weights by ``g``) **[code]**.
    k_min : int, default=1
        Smallest ``k`` of ``mode="batch_k"``, in [1, m] **[proposal: default]**.
    bias : bool, default=False
        Whether the gate projection has a bias.
    loss_weights : dict, optional
        Coefficient of ``"dts_balance"``, default 1e-2 **[proposal]** (the
        paper's was not found).
    random_state : int or None, default=None
        Seed of the router's generator (the Gumbel noise).

    Attributes
    ----------
    current_step : int
        Training step that sets the temperature (0 at start); change it with
        :meth:`set_step` or :meth:`advance`.

    Notes
    -----
    In training, with Gumbel noise ``gamma_ti`` drawn i.i.d. from the
    router's generator,

    .. math::

        g_t = \mathrm{softmax}\bigl((z_t + \gamma_t) / \tau\bigr), \qquad
        \mathrm{dispatch}_{ti} = [g_{ti} > \theta],

    so a large ``tau`` selects nearly every expert and a small one about one
    **[code]**. The weights are ``g`` or ``softmax(z)`` on the selected
    experts, not renormalized **[code]**. No capacity: the gate is dropless
    **[code]**. The number of experts varies per token, so ``topk_idx`` is
    None. A token whose every ``g_ti`` is below ``theta`` (possible only when
    ``m > 1 / theta``) keeps its argmax, so that no token is left unrouted
    **[proposal]**. ``tau`` is a plain float, never a parameter.

    Auxiliary loss ``"dts_balance"`` (unweighted, averaged over groups):
    ``m sum_i me_i ce_i`` with ``me_i = mean_t combine_ti`` (the masked
    weights) and ``ce_i`` the fraction of tokens that selected ``i``
    **[code]**.

    Statistics (no gradient): ``tokens_per_expert`` (B, m);
    ``experts_per_token_mean`` (B,); ``experts_per_token_hist`` (B, m + 1),
    tokens with 0, 1, ..., m experts; ``dense_fraction`` (B,), tokens routed
    to all m; ``temperature`` (the ``tau`` used; NaN in evaluation).

    References
    ----------
    Nie et al. 2021, "EvoMoE: An Evolutional Mixture-of-Experts Training
    Framework via Dense-To-Sparse Gate".

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.dense_to_sparse import DenseToSparseRouter
    >>> router = DenseToSparseRouter(d_model=4, n_experts=4, random_state=0)
    >>> router.set_step(10_000)
    >>> router.temperature
    0.5
    >>> router = router.eval()
    >>> routing = router.route(torch.tensor([[0.0, 3.0, 1.0, 0.0]]))
    >>> routing.dispatch.long().tolist()
    [[[0, 1, 0, 0]]]
    """

    default_loss_weights = {"dts_balance": 1e-2}

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        *,
        tau_max: float = 1.0,
        tau_min: float = 0.5,
        decay_steps: int = 10_000,
        schedule: str = "exponential",
        threshold: float = 1e-3,
        use_gumbel_gates: bool = False,
        hard_after: int | None = None,
        eval_mode: str = "top1",
        mode: str = "threshold",
        k_min: int = 1,
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
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}.")
        _check_schedule(tau_max, tau_min, decay_steps, schedule)
        if not (isinstance(threshold, int | float) and 0 < threshold < 1):
            raise ValueError(f"threshold must be a float in (0, 1); got {threshold!r}.")
        if hard_after is not None and (not is_int(hard_after) or hard_after < 0):
            raise ValueError(
                f"hard_after must be an int >= 0 or None; got {hard_after!r}."
            )
        if eval_mode not in EVAL_MODES:
            raise ValueError(
                f"eval_mode must be one of {EVAL_MODES}; got {eval_mode!r}."
            )
        if mode not in DTS_MODES:
            raise ValueError(f"mode must be one of {DTS_MODES}; got {mode!r}.")
        if not is_int(k_min) or not 1 <= k_min <= self.n_experts:
            raise ValueError(
                f"k_min must be an int in [1, n_experts={self.n_experts}]; got "
                f"{k_min!r}."
            )
        self.tau_max = float(tau_max)
        self.tau_min = float(tau_min)
        self.decay_steps = int(decay_steps)
        self.schedule = schedule
        self.threshold = float(threshold)
        self.use_gumbel_gates = bool(use_gumbel_gates)
        self.hard_after = hard_after
        self.eval_mode = eval_mode
        self.mode = mode
        self.k_min = int(k_min)
        self.current_step = 0

    def set_step(self, step: int) -> None:
        """Set the training step that sets the temperature.

        Parameters
        ----------
        step : int
            Step ``s >= 0``.
        """
        _check_step(step)
        self.current_step = int(step)

    def advance(self, steps: int = 1) -> None:
        """Move the training step forward by ``steps`` (call once per step)."""
        self.set_step(self.current_step + int(steps))

    @property
    def temperature(self) -> float:
        """The current ``tau``, a plain float (never a parameter)."""
        return temperature_schedule(
            self.current_step,
            self.tau_max,
            self.tau_min,
            self.decay_steps,
            self.schedule,
        )

    @property
    def hard(self) -> bool:
        """Whether the hard Gumbel phase (one expert per token) has begun."""
        return self.hard_after is not None and self.current_step >= self.hard_after

    def _gumbel(self, z: Tensor) -> Tensor:
        u = torch.rand(
            z.shape, generator=self.generator(z.device), device=z.device, dtype=z.dtype
        )
        # u < 1, so -log(u) > 0; the clamp keeps log(u) finite at u = 0
        return -torch.log(-torch.log(u.clamp(min=torch.finfo(z.dtype).tiny)))

    def _train_mask(self, g: Tensor) -> Tensor:
        argmax = index_mask(g.argmax(dim=-1, keepdim=True), g)
        if self.hard:
            return argmax
        above = g > self.threshold
        if self.mode == "threshold":
            return above | argmax
        # one k per group: floor of the mean count above theta, at least k_min
        k = above.sum(dim=-1).float().mean(dim=1).floor().long()
        k = k.clamp(min=self.k_min, max=self.n_experts)
        return descending_rank(g, dim=-1) < k.view(-1, 1, 1)

    def route(self, logits: Tensor) -> Routing:
        """Route from logits (B, n, m) or (n, m).

        Parameters
        ----------
        logits : Tensor of shape (B, n, m) or (n, m)
            Router logits; cast to the router's dtype. In training mode the Gumbel
            noise comes from the router's generator.

        Returns
        -------
        Routing
            ``topk_idx`` and ``topk_weight`` are None (variable K);
            ``capacity`` is None (dropless).
        """
        z = as_logits(logits, self.n_experts, self.dtype)
        probs = torch.softmax(z, dim=-1)
        if self.training:
            tau = self.temperature
            g = torch.softmax((z + self._gumbel(z)) / tau, dim=-1)
            dispatch = self._train_mask(g.detach())
            weights = g if self.use_gumbel_gates else probs
        else:
            tau = math.nan
            if self.eval_mode == "dense":
                dispatch = torch.ones_like(z, dtype=torch.bool)
            else:
                dispatch = index_mask(z.argmax(dim=-1, keepdim=True), z)
            weights = probs
        combine = torch.where(dispatch, weights, torch.zeros_like(weights))

        m = self.n_experts
        selected = dispatch.float()
        me = combine.mean(dim=1)
        ce = selected.mean(dim=1)
        aux = {"dts_balance": (m * (me * ce).sum(dim=-1)).mean()}

        with torch.no_grad():
            per_token = dispatch.sum(dim=-1)
            stats = {
                "tokens_per_expert": dispatch.sum(dim=1),
                "experts_per_token_mean": per_token.float().mean(dim=1),
                "experts_per_token_hist": experts_per_token_hist(per_token, m),
                "dense_fraction": (per_token == m).float().mean(dim=1),
                "temperature": z.new_tensor(tau),
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


@torch.no_grad()
def spawn_experts(
    base_weight: Tensor,
    n_experts: int,
    mask_ratio: float = 0.5,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Make ``n_experts`` diverse copies of a trained base expert's weight.

    EvoMoE's expert-diversify phase trains one base expert, then spawns m
    experts from it with random masks **[paper: abstract; mask recipe
    unverified]**. The recipe here is Drop-Upcycling's **[proposal]**:

    .. math::

        W_i = M_i \odot W + (1 - M_i) \odot W_i^{\mathrm{init}}, \qquad
        M_i \sim \mathrm{Bernoulli}(1 - r) \text{ per weight.}

    Parameters
    ----------
    base_weight : Tensor
        The trained base weight ``W`` (any shape).
    n_experts : int
        Experts ``m`` to spawn.
    mask_ratio : float, default=0.5
        ``r`` in [0, 1]: the expected fraction of each copy's weights that
        are re-initialized **[proposal]**.
    init : Tensor, optional
        ``W^init``, broadcastable to ``(n_experts, *base_weight.shape)``.
        None: fresh draws from ``N(mean(W), std(W)^2)``, the statistics of
        the base weight (Drop-Upcycling's re-initialization).
    generator : torch.Generator, optional
        Source of the masks and of the fresh draws, on ``base_weight``'s
        device; the same seeded generator gives the same experts.

    Returns
    -------
    Tensor of shape (n_experts, \*base_weight.shape)
        ``base_weight``'s dtype and device, without gradient history.

    Notes
    -----
    For the toolkit's linear-Gaussian experts the analogue is
    ``beta_i = beta + N(0, tau_beta^2)`` with ``sigma_i = sigma``
    **[proposal]**.

    References
    ----------
    Nakamura et al. 2025, "Drop-Upcycling: Training Sparse Mixture of
    Experts with Partial Re-initialization".

    Examples
    --------
    >>> import torch
    >>> from moestat.routing.dense_to_sparse import spawn_experts
    >>> gen = torch.Generator().manual_seed(0)
    >>> experts = spawn_experts(torch.ones(2, 3), 4, init=torch.zeros(()),
    ...                         generator=gen)
    >>> experts.shape
    torch.Size([4, 2, 3])
    >>> bool(((experts == 0) | (experts == 1)).all())
    True
    """
    if not isinstance(base_weight, Tensor):
        raise ValueError(
            f"base_weight must be a torch.Tensor; got {type(base_weight).__name__}."
        )
    if not is_int(n_experts) or n_experts < 1:
        raise ValueError(f"n_experts must be a positive int; got {n_experts!r}.")
    if not (isinstance(mask_ratio, int | float) and 0 <= mask_ratio <= 1):
        raise ValueError(f"mask_ratio must be a float in [0, 1]; got {mask_ratio!r}.")
    weight = base_weight.detach()
    shape = (n_experts, *weight.shape)
    device = weight.device
    keep = torch.rand(shape, generator=generator, device=device) >= mask_ratio
    if init is None:
        w = weight.float()
        std = w.std() if w.numel() > 1 else w.new_zeros(())
        fresh = w.mean() + std * torch.randn(shape, generator=generator, device=device)
    else:
        fresh = torch.as_tensor(init, device=device).detach()
        try:
            fresh = fresh.expand(shape)
        except RuntimeError as error:
            raise ValueError(
                f"init must broadcast to (n_experts, *base_weight.shape) = "
                f"{tuple(shape)}; got shape {tuple(fresh.shape)}."
            ) from error
    return torch.where(keep, weight, fresh.to(weight.dtype)).contiguous()
