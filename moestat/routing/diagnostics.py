"""Router diagnostics: saturation, change rate, utilization, entropy, co-activation.

Everything here is a function of routing records (routing.md section 3), so
it serves every router and the statistical gates alike. Inputs are torch
tensors or numpy arrays; results are plain numpy values and pandas tables,
so plotting (:mod:`moestat.plotting`) needs no torch.

A *selection* is either an integer array of expert ids of shape (..., N, K)
(-1 marks an empty slot) or a boolean mask of shape (..., N, m) (for
variable-K routers). The definitions of router saturation and change rate
follow the analysis code released with Nguyen et al. 2025 (Fsoft-AIC/LibMoE,
``router_saturation_plot.ipynb``) **[code]**; saturation is OLMoE's notion
(arXiv 2409.02060, section 5). Statistics are computed per layer first, then
averaged over layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.special import entr, softmax
from torch import Tensor

from moestat.routing._base import Router, Routing

__all__ = [
    "selected_experts",
    "selection_mask",
    "router_saturation",
    "router_change_rate",
    "expert_utilization",
    "relative_perplexity",
    "jain_index",
    "load_balance_statistic",
    "utilization_summary",
    "max_violation",
    "router_entropy",
    "coactivation",
    "RoutingRecorder",
]


def _numpy(values: Any) -> np.ndarray:
    """A numpy view of a tensor (detached, on the CPU) or an array-like."""
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _expert_ids(selection: np.ndarray, n_experts: int) -> np.ndarray:
    """Integer expert ids as int64; an id of ``n_experts`` or more is an error."""
    ids = selection.astype(np.int64)
    if ids.size and ids.max() >= n_experts:
        raise ValueError(
            f"Expert id {ids.max()} is out of range for n_experts={n_experts}."
        )
    return ids


def selected_experts(logits: Any, k: int) -> Any:
    """The ``k`` experts with the largest logits, best first; ties to the lower index.

    Parameters
    ----------
    logits : Tensor or array-like of shape (..., m)
        Router logits (or scores: any increasing transform selects the same).
    k : int
        Experts per token, ``1 <= k <= m``.

    Returns
    -------
    Tensor or ndarray of shape (..., k)
        Expert ids (int64), a tensor for a tensor input.

    Examples
    --------
    >>> import numpy as np
    >>> selected_experts(np.array([[0.1, 0.5, 0.5, 0.2]]), 2)
    array([[1, 2]])
    """
    m = logits.shape[-1]
    if not 1 <= int(k) <= m:
        raise ValueError(f"k must be between 1 and m={m}; got {k!r}.")
    if isinstance(logits, Tensor):
        order = torch.argsort(logits, dim=-1, descending=True, stable=True)
        return order[..., : int(k)]
    logits = np.asarray(logits)
    # a stable ascending sort of -z keeps equal logits in index order
    return np.argsort(-logits, axis=-1, kind="stable")[..., : int(k)]


def selection_mask(selection: Any, n_experts: int) -> NDArray[np.bool_]:
    """A selection as a boolean mask (..., N, m); ids below 0 are empty slots.

    Parameters
    ----------
    selection : array-like of int of shape (..., N, K) or of bool (..., N, m)
        Expert ids per slot, or a mask (returned as is).
    n_experts : int
        ``m``.

    Returns
    -------
    ndarray of bool of shape (..., N, m)

    Examples
    --------
    >>> selection_mask([[2, 0], [1, -1]], 3).astype(int)
    array([[1, 0, 1],
           [0, 1, 0]])
    """
    selection = _numpy(selection)
    if selection.dtype == bool:
        if selection.shape[-1] != n_experts:
            raise ValueError(
                f"A mask selection must have m={n_experts} columns; got "
                f"{selection.shape[-1]}."
            )
        return selection
    ids = _expert_ids(selection, n_experts)
    mask = np.zeros((*ids.shape[:-1], n_experts + 1), dtype=bool)
    # empty slots (-1) land in an extra last column, dropped below
    np.put_along_axis(mask, np.where(ids < 0, n_experts, ids), True, axis=-1)
    return mask[..., :n_experts]


def _overlap_percent(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per layer: 100 sum_x |A(x) & B(x)| / sum_x |B(x)| for (L, N, K|m) inputs."""
    if a.dtype == bool or b.dtype == bool:
        m = a.shape[-1] if a.dtype == bool else b.shape[-1]
        a, b = selection_mask(a, m), selection_mask(b, m)
        hits, total = (a & b).sum(axis=(-2, -1)), b.sum(axis=(-2, -1))
    else:
        a = a.astype(np.int64)
        b = b.astype(np.int64)
        same = (a[..., :, None] == b[..., None, :]) & (b[..., None, :] >= 0)
        hits, total = same.sum(axis=(-3, -2, -1)), (b >= 0).sum(axis=(-2, -1))
    return 100.0 * hits / np.maximum(total, 1)


def _by_checkpoint(selections: Any) -> np.ndarray:
    """Selections over checkpoints as (S, L, N, K|m); a 3-D input is one layer."""
    if isinstance(selections, Sequence) and not isinstance(selections, np.ndarray):
        selections = np.stack([_numpy(s) for s in selections])
    selections = _numpy(selections)
    if selections.ndim == 3:
        selections = selections[:, None]
    if selections.ndim != 4:
        raise ValueError(
            "selections must have shape (S, L, N, K) (or (S, N, K) for one "
            f"layer); got {selections.shape}."
        )
    return selections


def router_saturation(
    selections: Any, final: Any = None, *, per_layer: bool = False
) -> NDArray[np.float64]:
    """Router saturation (%) of each checkpoint against the final one.

    ``Sat(s) = (1/L) sum_l [sum_x |A_s(x) & A_S(x)| / sum_x |A_S(x)|] * 100``.
    100% means the router at ``s`` already picks the experts it picks at
    the end (the weights may still move).

    Parameters
    ----------
    selections : array-like of shape (S, L, N, K), or a sequence of S (L, N, K)
        Selected experts per checkpoint ``s``, layer ``l`` and probe input
        ``x``; a (S, N, K) array is one layer. Boolean (…, N, m) masks are
        accepted for variable-K routers.
    final : array-like of shape (L, N, K), optional
        The final checkpoint's selection ``A_S``; by default the last of
        ``selections``.
    per_layer : bool, default=False
        Return the (S, L) per-layer values instead of their layer mean.

    Returns
    -------
    ndarray of shape (S,) or (S, L)

    Examples
    --------
    >>> sel = [[[[0], [1]]], [[[0], [2]]]]  # 2 checkpoints, 1 layer, 2 inputs, K=1
    >>> router_saturation(sel)
    array([ 50., 100.])
    """
    selections = _by_checkpoint(selections)
    final = selections[-1] if final is None else _numpy(final)
    if final.ndim == 2:
        final = final[None]
    # one checkpoint at a time: the pairwise comparison is (L, N, K, K)
    values = np.stack([_overlap_percent(chosen, final) for chosen in selections])
    return values if per_layer else values.mean(axis=1)


def router_change_rate(
    selections: Any, ordered: bool = False, *, per_layer: bool = False
) -> NDArray[np.float64]:
    """Router change rate (%) between consecutive checkpoints.

    ``Chg(s) = 100 - (1/L) sum_l [sum_x |A_s(x) & A_{s-1}(x)| /
    sum_x |A_{s-1}(x)|] * 100`` for ``s = 1..S-1``. With ``ordered=True``,
    the position-wise switch fraction instead: the share of the K ordered
    slots whose expert differs from the previous checkpoint's.

    Parameters
    ----------
    selections : array-like of shape (S, L, N, K), or a sequence of S (L, N, K)
        Selected experts per checkpoint (a (S, N, K) array is one layer);
        ids best first for ``ordered=True``.
    ordered : bool, default=False
        Compare slot by slot (needs id arrays, not masks).
    per_layer : bool, default=False
        Return the (S-1, L) per-layer values instead of their layer mean.

    Returns
    -------
    ndarray of shape (S-1,) or (S-1, L)

    Examples
    --------
    >>> sel = [[[[0, 1]]], [[[1, 0]]], [[[2, 3]]]]  # 1 layer, 1 input, K=2
    >>> router_change_rate(sel)
    array([  0., 100.])
    >>> router_change_rate(sel, ordered=True)
    array([100., 100.])
    """
    selections = _by_checkpoint(selections)
    if selections.shape[0] < 2:
        raise ValueError("The change rate needs at least two checkpoints.")
    before, after = selections[:-1], selections[1:]
    if ordered:
        if selections.dtype == bool:
            raise ValueError("ordered=True needs expert ids, not masks.")
        values = 100.0 * (after != before).mean(axis=(-2, -1))
    else:
        values = 100.0 - np.stack(
            [_overlap_percent(a, b) for a, b in zip(after, before, strict=True)]
        )
    return values if per_layer else values.mean(axis=1)


def expert_utilization(selection: Any, n_experts: int) -> NDArray[np.float64]:
    """Each expert's share of the routing slots, per layer.

    ``u_i = (1/(N K)) sum_x 1[i in A(x)]`` for id arrays (an empty slot, -1,
    belongs to no expert, so ``sum_i u_i < 1`` when slots were dropped); for
    a mask, the share of all selections.

    Parameters
    ----------
    selection : array-like of shape (..., N, K) of ids or (..., N, m) of bool
        One checkpoint's selection (leading axes: layers).
    n_experts : int
        ``m``.

    Returns
    -------
    ndarray of shape (..., m)

    Examples
    --------
    >>> expert_utilization([[0, 1], [0, 2]], 4)
    array([0.5 , 0.25, 0.25, 0.  ])
    """
    selection = _numpy(selection)
    if selection.dtype == bool:
        counts = selection_mask(selection, n_experts).sum(axis=-2).astype(float)
        slots = counts.sum(axis=-1, keepdims=True)
    else:
        counts = _slot_counts(selection, n_experts).astype(np.float64)
        slots = np.full(counts.shape[:-1] + (1,), np.prod(selection.shape[-2:]))
    return counts / np.maximum(slots, 1)


def _slot_counts(ids: np.ndarray, n_experts: int) -> np.ndarray:
    """Slots held by each expert, (..., N, K) ids -> (..., m), by one bincount."""
    ids = _expert_ids(ids, n_experts)
    lead = ids.shape[:-2]
    n_lead = int(np.prod(lead))
    bins = n_experts + 1  # the last bin takes the empty slots (-1)
    flat = np.where(ids < 0, n_experts, ids).reshape(n_lead, -1)
    flat = flat + (np.arange(n_lead) * bins)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_lead * bins)
    return counts.reshape(*lead, bins)[..., :n_experts]


def relative_perplexity(utilization: ArrayLike) -> NDArray[np.float64] | float:
    """Relative perplexity ``exp(H(u)) / m``: 1 when balanced, 1/m for one expert.

    ``H(u)`` is the Shannon entropy of ``u`` normalized to sum 1.

    Parameters
    ----------
    utilization : array-like of shape (..., m)

    Returns
    -------
    float or ndarray of shape (...)

    Examples
    --------
    >>> float(relative_perplexity([0.5, 0.5, 0.0, 0.0]))
    0.5
    """
    u = np.asarray(utilization, dtype=np.float64)
    share = u / np.maximum(u.sum(axis=-1, keepdims=True), np.finfo(float).tiny)
    return np.exp(entr(share).sum(axis=-1)) / u.shape[-1]


def jain_index(utilization: ArrayLike) -> NDArray[np.float64] | float:
    """Jain's fairness index ``(sum_i u_i)^2 / (m sum_i u_i^2)``: 1 when balanced.

    Parameters
    ----------
    utilization : array-like of shape (..., m)

    Returns
    -------
    float or ndarray of shape (...)

    Examples
    --------
    >>> float(jain_index([0.5, 0.5, 0.0, 0.0]))
    0.5
    """
    u = np.asarray(utilization, dtype=np.float64)
    squares = np.square(u).sum(axis=-1)
    return np.square(u.sum(axis=-1)) / (u.shape[-1] * np.maximum(squares, 1e-300))


def load_balance_statistic(logits: Any, k: int) -> NDArray[np.float64] | float:
    """``m sum_i f_i P_i`` from probe logits: 1 when balanced.

    ``f_i`` is expert ``i``'s share of the top-``k`` slots (all slots, as
    MegaBlocks counts them, routing.md section 1.2) and ``P_i`` the mean
    softmax score.

    Parameters
    ----------
    logits : Tensor or array-like of shape (..., N, m)
        Router logits of the probe inputs (leading axes: layers).
    k : int
        Experts per token.

    Returns
    -------
    float or ndarray of shape (...)
    """
    z = _numpy(logits).astype(np.float64)
    m = z.shape[-1]
    f = expert_utilization(selected_experts(z, k), m)
    p_mean = softmax(z, axis=-1).mean(axis=-2)
    return m * (f * p_mean).sum(axis=-1)


def _utilization_stats(u: np.ndarray) -> dict[str, np.ndarray]:
    mean = u.mean(axis=-1)
    return {
        "rel_perplexity": relative_perplexity(u),
        "jain": jain_index(u),
        "dead_experts": (u == 0).sum(axis=-1),
        "cv": u.std(axis=-1) / np.maximum(mean, np.finfo(float).tiny),
    }


def utilization_summary(logits: Any, k: int) -> pd.DataFrame:
    """Balance summaries of the top-``k`` selection of probe logits, per layer.

    Parameters
    ----------
    logits : Tensor or array-like of shape (N, m) or (L, N, m)
        Router logits of the probe inputs, for one layer or ``L`` layers.
    k : int
        Experts per token.

    Returns
    -------
    pandas.DataFrame
        One row per layer: ``layer``, ``load_balance`` (``m sum f_i P_i``,
        1 when balanced), ``rel_perplexity`` (``exp(H(u))/m``), ``jain``
        (Jain's index), ``dead_experts`` (``u_i = 0``) and ``cv`` (std/mean
        of ``u``).

    Examples
    --------
    >>> import numpy as np
    >>> table = utilization_summary(np.eye(4), 1)
    >>> table[["load_balance", "jain", "dead_experts"]].round(3).to_numpy().tolist()
    [[1.0, 1.0, 0.0]]
    """
    z = _numpy(logits).astype(np.float64)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3:
        raise ValueError(f"logits must be (N, m) or (L, N, m); got {z.shape}.")
    u = expert_utilization(selected_experts(z, k), z.shape[-1])
    table = {"layer": np.arange(z.shape[0])}
    table["load_balance"] = load_balance_statistic(z, k)
    table.update(_utilization_stats(u))
    return pd.DataFrame(table)


def max_violation(counts: Any) -> NDArray[np.float64] | float:
    """MaxVio ``max_i c_i / mean(c) - 1`` over the last axis.

    Parameters
    ----------
    counts : Tensor or array-like of shape (..., m)
        Tokens assigned to each expert (a training batch's
        ``tokens_per_expert``).

    Returns
    -------
    float or ndarray of shape (...)
        0 when balanced; ``m - 1`` when one expert takes everything.

    Examples
    --------
    >>> float(max_violation([4, 2, 0, 2]))
    1.0
    """
    c = _numpy(counts).astype(np.float64)
    mean = c.mean(axis=-1)
    return c.max(axis=-1) / np.maximum(mean, np.finfo(float).tiny) - 1.0


def router_entropy(
    probs: Any, combine: Any = None, *, q: float | None = None
) -> dict[str, float]:
    """Mean over tokens of the Shannon entropy of the router's distributions.

    Parameters
    ----------
    probs : Tensor or array-like of shape (..., m)
        Router scores ``p_t`` (rows summing to 1).
    combine : Tensor or array-like of shape (..., m), optional
        Combine weights; their entropy after renormalizing each token's
        selected weights to sum 1 is the "router entropy" of the
        DeepSeekMoE analysis code. Tokens with no weight are left out.
    q : float, optional
        Also report the normalized Tsallis entropy ``S_q / max S_q`` of
        ``p_t`` (DynMoLE, routing.md section 2.6), ``q > 0``, ``q != 1``.

    Returns
    -------
    dict
        ``"full"``: mean entropy of ``p_t`` (nats); ``"selected"`` (with
        ``combine``): mean entropy of the renormalized selected weights;
        ``"tsallis"`` (with ``q``).

    Examples
    --------
    >>> out = router_entropy([[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.0]])
    >>> round(out["full"], 4), round(out["selected"], 4)
    (0.3466, 0.3466)
    """
    p = _numpy(probs).astype(np.float64)
    m = p.shape[-1]
    rows = p.reshape(-1, m)
    result = {"full": float(entr(rows).sum(axis=-1).mean())}
    if combine is not None:
        w = _numpy(combine).astype(np.float64).reshape(-1, m)
        total = w.sum(axis=-1)
        kept = total > 0
        share = w[kept] / total[kept, None]
        result["selected"] = (
            float(entr(share).sum(axis=-1).mean()) if kept.any() else 0.0
        )
    if q is not None:
        if not q > 0 or q == 1:
            raise ValueError(f"q must be positive and not 1; got {q!r}.")
        s_q = (1.0 - np.power(rows, q).sum(axis=-1)) / (q - 1.0)
        s_max = (1.0 - m ** (1.0 - q)) / (q - 1.0) if m > 1 else 1.0
        result["tsallis"] = float(s_q.mean() / s_max)
    return result


def coactivation(
    selection: Any, n_experts: int, normalize: bool = False
) -> NDArray[np.float64]:
    """Co-activation counts ``M_ij = sum_x 1[i in A(x)] 1[j in A(x)]``.

    Parameters
    ----------
    selection : array-like of shape (..., N, K) of ids or (..., N, m) of bool
        One checkpoint's selection (leading axes: layers).
    n_experts : int
        ``m``.
    normalize : bool, default=False
        Divide row ``i`` by ``M_ii`` (how often ``i`` is selected), so
        ``M_ij`` is the share of ``i``'s tokens that also go to ``j`` (rows
        of unused experts stay 0).

    Returns
    -------
    ndarray of shape (..., m, m)

    Examples
    --------
    >>> coactivation([[0, 1], [0, 2]], 3)
    array([[2., 1., 1.],
           [1., 1., 0.],
           [1., 0., 1.]])
    """
    mask = selection_mask(selection, n_experts).astype(np.float64)
    counts = np.swapaxes(mask, -1, -2) @ mask
    if not normalize:
        return counts
    diagonal = np.diagonal(counts, axis1=-2, axis2=-1)[..., :, None]
    return np.divide(counts, diagonal, out=np.zeros_like(counts), where=diagonal > 0)


def _router_of(layer: Any) -> Any:
    return getattr(layer, "router", layer)


def _probe_scores(router: Any, probe: Tensor) -> tuple[Tensor, bool]:
    """Selection scores of ``probe`` in eval mode (no jitter), no gradient.

    A :class:`Router` routes the probe and gives its
    :meth:`~Router.selection_scores` (whether they are logits too); any
    other module gives its logits.
    """
    params = list(router.parameters()) if hasattr(router, "parameters") else []
    if params:
        probe = probe.to(params[0].device)
    was_training = getattr(router, "training", False)
    if was_training:
        router.eval()
    try:
        with torch.no_grad():
            if isinstance(router, Router):
                scores = router.selection_scores(router(probe))
                return scores, router.selection_scores_are_logits
            if hasattr(router, "logits"):
                return router.logits(probe), True
            out = router(probe)
            return (out.logits if isinstance(out, Routing) else out), True
    finally:
        if was_training:
            router.train()


class RoutingRecorder:
    """Probe-set routing records over training, for the section-3 diagnostics.

    At every ``record_every``-th step :meth:`record` routes the same probe
    inputs through every MoE layer's router (in eval mode, without
    gradient) and keeps its selection scores (float16; the logits, or what
    the router ranks instead, such as the sigmoid router's ``s + b``) or
    the top-``k`` expert ids
    (uint8, int16 when ``m > 256``). Results come back as numpy arrays and
    tidy pandas tables.

    Parameters
    ----------
    probe_x : Tensor of shape (N_p, d) or (B, n, d), or a sequence of them
        The fixed probe inputs: one tensor for every layer, or one per
        layer (the hidden states each layer sees).
    record_every : int, default=1
        Record at steps divisible by this.
    store : {"logits", "selections"}, default="logits"
        Keep the logits (any ``k`` can be derived later) or only the
        top-``k`` ids (``k`` is then required; 8 layers x 10^4 probes x
        K = 8 is 640 KB per checkpoint).
    k : int, optional
        Default experts per token of the tables (required with
        ``store="selections"``).

    Attributes
    ----------
    steps : list of int
        Recorded checkpoint steps.
    records : list of ndarray of shape (L, N_p, m) or (L, N_p, k)
        One per step: float16 logits or integer ids.
    scores_are_logits : bool
        Whether every record was softmax logits (a router whose choice
        is not the top-k of its logits records its own selection scores).

    Examples
    --------
    >>> import torch
    >>> gate = torch.nn.Linear(2, 3)
    >>> recorder = RoutingRecorder(torch.zeros(5, 2), store="selections", k=1)
    >>> recorder.record(0, [gate])
    True
    >>> recorder.records[0].dtype, recorder.records[0].shape
    (dtype('uint8'), (1, 5, 1))
    """

    def __init__(
        self,
        probe_x: Tensor | Sequence[Tensor],
        record_every: int = 1,
        store: str = "logits",
        k: int | None = None,
    ) -> None:
        if store not in ("logits", "selections"):
            raise ValueError(f"store must be 'logits' or 'selections'; got {store!r}.")
        if store == "selections" and k is None:
            raise ValueError("store='selections' needs k, the experts per token.")
        if int(record_every) < 1:
            raise ValueError(
                f"record_every must be a positive int; got {record_every!r}."
            )
        self.probe_x = probe_x
        self.record_every = int(record_every)
        self.store = store
        self.k = None if k is None else int(k)
        self.steps: list[int] = []
        self.records: list[np.ndarray] = []
        self.n_experts: int | None = None
        self.scores_are_logits = True
        self._stats: list[tuple[int, int, str, float]] = []

    # -- recording ---------------------------------------------------------

    def should_record(self, step: int) -> bool:
        """Whether :meth:`record` keeps ``step``."""
        return step % self.record_every == 0

    def _probe_for(self, layer: int, n_layers: int) -> Tensor:
        if isinstance(self.probe_x, Tensor):
            return self.probe_x
        if len(self.probe_x) != n_layers:
            raise ValueError(
                f"probe_x has {len(self.probe_x)} tensors for {n_layers} layers."
            )
        return self.probe_x[layer]

    def record(self, step: int, layers: Sequence[Any]) -> bool:
        """Route the probe inputs through every layer, if ``step`` is due.

        Parameters
        ----------
        step : int
            Training step (checkpoint) of the record.
        layers : sequence of routers or MoE layers
            The model's MoE layers in order; a layer's router is its
            ``.router`` attribute or the layer itself. Routers expose
            ``logits(x)`` (or return a :class:`Routing`); a plain module
            mapping ``x`` to logits also works.

        Returns
        -------
        bool
            Whether the step was recorded.
        """
        if not self.should_record(step):
            return False
        scores, are_logits = [], True
        for index, layer in enumerate(layers):
            probe = self._probe_for(index, len(layers))
            layer_scores, layer_logits = _probe_scores(_router_of(layer), probe)
            scores.append(layer_scores)
            are_logits = are_logits and layer_logits
        self.record_logits(step, scores, are_logits=are_logits)
        return True

    def record_logits(
        self, step: int, logits: Sequence[Any], *, are_logits: bool = True
    ) -> None:
        """Store given per-layer probe logits for ``step`` (always recorded).

        Parameters
        ----------
        step : int
            Training step; steps must increase.
        logits : sequence of Tensor or array-like of shape (..., m)
            One per layer, the same probe inputs at every step: scores whose
            top-k are the chosen experts (a router's
            :meth:`~moestat.routing.Router.selection_scores`).
        are_logits : bool, default=True
            Whether the scores are softmax logits; if not, the
            softmax-based ``load_balance`` summary is NaN.
        """
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"Steps must increase; got {step} after {self.steps[-1]}.")
        arrays = [_numpy(z).astype(np.float32) for z in logits]
        m = arrays[0].shape[-1]
        stacked = np.stack([z.reshape(-1, m) for z in arrays])
        if self.records and stacked.shape[:2] != self.records[0].shape[:2]:
            raise ValueError(
                f"Step {step} has (layers, probes) = {stacked.shape[:2]}; earlier "
                f"steps had {self.records[0].shape[:2]}."
            )
        self.n_experts = m
        self.scores_are_logits = self.scores_are_logits and bool(are_logits)
        if self.store == "logits":
            self.records.append(stacked.astype(np.float16))
        else:
            dtype = np.uint8 if m <= 256 else np.int16
            ids = selected_experts(stacked, self.k).astype(dtype)
            self.records.append(ids)
        self.steps.append(int(step))

    def log_stats(self, step: int, routing: Routing, layer: int = 0) -> None:
        """Log one training batch's routing statistics for ``(step, layer)``.

        Kept: every entry of ``routing.stats`` (a scalar, or the mean of a
        tensor), the auxiliary losses as ``aux_<name>``, and derived from
        the routing itself: ``experts_per_token`` (mean dispatched experts),
        ``tokens_left_behind`` (share of tokens with no expert),
        ``max_violation`` (MaxVio of the dispatched counts, mean over
        groups), ``mean_logsumexp`` (what the z-loss controls) and, for
        fixed-K routers, ``empty_slot_fraction`` (slots with index -1).
        """
        values: dict[str, float] = {}
        with torch.no_grad():
            dispatch = routing.dispatch
            per_token = dispatch.sum(dim=-1)
            values["experts_per_token"] = float(per_token.float().mean())
            values["tokens_left_behind"] = float((per_token == 0).float().mean())
            counts = dispatch.sum(dim=1)
            values["max_violation"] = float(np.mean(max_violation(counts)))
            lse = torch.logsumexp(routing.logits.float(), dim=-1)
            values["mean_logsumexp"] = float(lse.mean())
            if routing.topk_idx is not None:
                empty = (routing.topk_idx < 0).float().mean()
                values["empty_slot_fraction"] = float(empty)
            for name, value in routing.aux.items():
                values[f"aux_{name}"] = float(torch.as_tensor(value).float().mean())
            for name, value in routing.stats.items():
                values[name] = float(torch.as_tensor(value).float().mean())
        for name, value in values.items():
            self._stats.append((int(step), int(layer), name, value))

    # -- results -----------------------------------------------------------

    def _k(self, k: int | None) -> int:
        k = self.k if k is None else int(k)
        if k is None:
            raise ValueError("Give k, the experts per token.")
        if self.store == "selections" and k > self.k:
            raise ValueError(
                f"Only the top-{self.k} ids were stored; k={k} needs "
                "store='logits' or a larger k."
            )
        return k

    def _require(self, at_least: int = 1) -> None:
        if len(self.steps) < at_least:
            raise ValueError(
                f"Needs at least {at_least} recorded step(s); have {len(self.steps)}."
            )

    def logits(self) -> NDArray[np.float16]:
        """Recorded logits, (S, L, N_p, m) float16 (``store="logits"`` only)."""
        if self.store != "logits":
            raise ValueError("Only selections were stored (store='selections').")
        self._require()
        return np.stack(self.records)

    def selections(self, k: int | None = None) -> np.ndarray:
        """Top-``k`` expert ids, (S, L, N_p, k), best first."""
        k = self._k(k)
        self._require()
        if self.store == "selections":
            return np.stack(self.records)[..., :k]
        dtype = np.uint8 if self.n_experts <= 256 else np.int16
        return selected_experts(self.logits(), k).astype(dtype)

    @staticmethod
    def _per_layer_table(
        steps: Sequence[int], shape: tuple[int, ...], columns: dict[str, Any]
    ) -> pd.DataFrame:
        """A table of (S, L) values: columns ``step``, ``layer``, then ``columns``."""
        n_steps, n_layers = shape
        return pd.DataFrame(
            {
                "step": np.repeat(np.asarray(steps), n_layers),
                "layer": np.tile(np.arange(n_layers), n_steps),
                **columns,
            }
        )

    def saturation(self, k: int | None = None) -> pd.DataFrame:
        """Router saturation (%) against the last recorded step, per layer.

        Returns
        -------
        pandas.DataFrame
            Columns ``step``, ``layer``, ``k``, ``saturation``; the layer
            mean is ``table.groupby("step")["saturation"].mean()``.
        """
        k = self._k(k)
        values = router_saturation(self.selections(k), per_layer=True)
        columns = {"k": k, "saturation": values.ravel()}
        return self._per_layer_table(self.steps, values.shape, columns)

    def change_rate(self, k: int | None = None, ordered: bool = False) -> pd.DataFrame:
        """Router change rate (%) from the previous recorded step, per layer.

        Returns
        -------
        pandas.DataFrame
            Columns ``step`` (the later step), ``layer``, ``k``,
            ``change_rate``.
        """
        k = self._k(k)
        self._require(2)
        values = router_change_rate(self.selections(k), ordered, per_layer=True)
        columns = {"k": k, "change_rate": values.ravel()}
        return self._per_layer_table(self.steps[1:], values.shape, columns)

    def utilization(self, k: int | None = None) -> pd.DataFrame:
        """Expert utilization ``u_i`` per step and layer (the heatmap's data).

        Returns
        -------
        pandas.DataFrame
            Columns ``step``, ``layer``, ``expert``, ``utilization``.
        """
        k = self._k(k)
        u = expert_utilization(self.selections(k), self.n_experts)
        n_steps, n_layers, m = u.shape
        return pd.DataFrame(
            {
                "step": np.repeat(np.asarray(self.steps), n_layers * m),
                "layer": np.tile(np.repeat(np.arange(n_layers), m), n_steps),
                "expert": np.tile(np.arange(m), n_steps * n_layers),
                "utilization": u.ravel(),
            }
        )

    def utilization_summary(self, k: int | None = None) -> pd.DataFrame:
        """Balance summaries per step and layer (see :func:`utilization_summary`).

        ``load_balance`` needs softmax logits: it is left out with
        ``store="selections"`` and NaN when the recorded scores are not
        logits (``are_logits=False``).
        """
        k = self._k(k)
        if self.store == "logits":
            parts = [
                utilization_summary(z, k).assign(step=step)
                for step, z in zip(self.steps, self.records, strict=True)
            ]
            table = pd.concat(parts, ignore_index=True)
            if not self.scores_are_logits:
                table["load_balance"] = np.nan
        else:
            u = expert_utilization(self.selections(k), self.n_experts)
            stats = _utilization_stats(u)
            columns = {name: value.ravel() for name, value in stats.items()}
            table = self._per_layer_table(self.steps, u.shape[:2], columns)
        columns = ["step", *[c for c in table.columns if c != "step"]]
        return table[columns]

    def stats_table(self) -> pd.DataFrame:
        """Statistics logged by :meth:`log_stats`: ``step, layer, name, value``."""
        return pd.DataFrame(self._stats, columns=["step", "layer", "name", "value"])
