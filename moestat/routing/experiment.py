"""Train one small MoE model with each router on one synthetic task, and compare.

:func:`compare_routers` trains the same model (a linear embedding, an
:class:`~moestat.routing.MoELayer` with a residual connection, a
linear head) on the same data, from the same initial weights and with the
same batches, once per router, and records on a fixed probe set the router
diagnostics (saturation, change rate, utilization) with a
:class:`~moestat.routing.RoutingRecorder`. The results are tidy pandas
tables (:class:`RouterComparison`) that :mod:`moestat.plotting` draws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moestat._progress import progress_bar
from moestat.routing import (
    DenseToSparseRouter,
    ExpertChoiceRouter,
    ExpertMLP,
    MoELayer,
    NoisyTopKRouter,
    NormalizedSigmoidRouter,
    PrototypeRouter,
    RoutingRecorder,
    SharedExperts,
    TopKSoftmaxRouter,
    TsallisHybridRouter,
    max_violation,
)
from moestat.routing._base import Routing
from moestat.torch._device import resolve_device

__all__ = [
    "TASKS",
    "RouterSpec",
    "RouterComparison",
    "default_routers",
    "compare_routers",
]

#: The synthetic tasks of :func:`compare_routers`.
TASKS = ("regression", "classification")

_METRICS = {"regression": "mse", "classification": "accuracy"}
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}
_N_CLASSES = 3
_NOISE_SD = 0.1


@dataclass(frozen=True)
class RouterSpec:
    """How to build one router of a comparison.

    Parameters
    ----------
    build : callable
        ``build(d_model, n_experts, k, random_state)`` returns the router
        (a :class:`~moestat.routing.Router` or any module mapping
        ``(B, n, d_model)`` to a :class:`~moestat.routing.Routing`).
        A router with an ``update_bias(routing)`` method has it called
        after every optimizer step; one with ``advance()`` (a schedule) has
        it called once per step.
    n_shared_experts : int, default=0
        Always-on shared experts of the layer
        (:class:`~moestat.routing.SharedExperts`, width ``d_hidden``).
    """

    build: Callable[[int, int, int, int], nn.Module]
    n_shared_experts: int = 0


def default_routers(
    n_experts: int = 8, k: int = 2, steps: int = 300, n_shared_experts: int = 1
) -> dict[str, RouterSpec]:
    """The seven routers and a dense softmax reference, set for a small task.

    Parameters
    ----------
    n_experts : int, default=8
        Routed experts ``m``.
    k : int, default=2
        Experts per token ``K`` (the compute budget every router gets).
    steps : int, default=300
        Training steps (the dense-to-sparse temperature decays over the
        first three quarters of them).
    n_shared_experts : int, default=1
        Shared experts of the DeepSeek-V3-style sigmoid router.

    Returns
    -------
    dict of str to RouterSpec
        In order:

        - ``"dense softmax"``: ``TopKSoftmaxRouter`` with ``K = m``, dropless,
          no balance loss, i.e. the classical dense softmax gate (the
          reference);
        - ``"top-k softmax"``: ``TopKSoftmaxRouter(k=K)`` with its defaults
          (weights renormalized over the K choices for ``K >= 2``, capacity
          factor 1.25 in training and 2.0 in evaluation, balance loss 1e-2);
        - ``"noisy top-k"``: ``NoisyTopKRouter(k=K)`` (zero initial gate,
          importance and load losses 0.1 each);
        - ``"prototype"``: ``PrototypeRouter`` with ``Z = K`` prototypes
          and one expert in each (M6-T's "k top-1"; ``m`` must be a
          multiple of ``K``);
        - ``"expert choice"``: ``ExpertChoiceRouter`` with capacity factor
          ``K``, so that every token gets ``K`` experts on average;
        - ``"dense-to-sparse"``: ``DenseToSparseRouter`` with temperature
          2.0 down to 0.1 over ``3 steps / 4`` steps (the repository's
          1.0 to 0.5 stays nearly dense at this size);
        - ``"tsallis hybrid"``: ``TsallisHybridRouter`` with ``k_min = K``;
        - ``"sigmoid + shared"``: ``NormalizedSigmoidRouter(top_k=K)`` with
          bias balancing (rate 1e-3) and ``n_shared_experts`` shared experts.

    Raises
    ------
    ValueError
        If ``k`` is not in ``[1, n_experts]``.

    Notes
    -----
    With ``k = 1`` the noisy top-k and sigmoid routers warn that their
    weights are constant (the task loss then does not train them).

    Examples
    --------
    >>> from moestat.routing.experiment import default_routers
    >>> list(default_routers())[:3]
    ['dense softmax', 'top-k softmax', 'noisy top-k']
    """
    _check_int("n_experts", n_experts, 1)
    _check_int("k", k, 1)
    _check_int("steps", steps, 1)
    _check_int("n_shared_experts", n_shared_experts, 0)
    if k > n_experts:
        raise ValueError(f"k must be <= n_experts={n_experts}; got k={k}.")
    decay = max(1, (3 * steps) // 4)
    return {
        "dense softmax": RouterSpec(
            lambda d, m, _k, seed: TopKSoftmaxRouter(
                d,
                m,
                k=m,
                capacity_factor=None,
                loss_weights={"load_balance": 0.0},
                random_state=seed,
            )
        ),
        "top-k softmax": RouterSpec(
            lambda d, m, kk, seed: TopKSoftmaxRouter(d, m, k=kk, random_state=seed)
        ),
        "noisy top-k": RouterSpec(
            lambda d, m, kk, seed: NoisyTopKRouter(d, m, k=kk, random_state=seed)
        ),
        "prototype": RouterSpec(
            lambda d, m, kk, seed: PrototypeRouter(
                d, m, n_prototypes=kk, k=1, random_state=seed
            )
        ),
        "expert choice": RouterSpec(
            lambda d, m, kk, seed: ExpertChoiceRouter(
                d, m, capacity_factor=float(kk), random_state=seed
            )
        ),
        "dense-to-sparse": RouterSpec(
            lambda d, m, _k, seed: DenseToSparseRouter(
                d, m, tau_max=2.0, tau_min=0.1, decay_steps=decay, random_state=seed
            )
        ),
        "tsallis hybrid": RouterSpec(
            lambda d, m, kk, seed: TsallisHybridRouter(
                d, m, k_min=kk, random_state=seed
            )
        ),
        "sigmoid + shared": RouterSpec(
            lambda d, m, kk, seed: NormalizedSigmoidRouter(
                d,
                m,
                top_k=kk,
                n_shared_experts=n_shared_experts,
                random_state=seed,
            ),
            n_shared_experts=n_shared_experts,
        ),
    }


@dataclass
class RouterComparison:
    """Results of :func:`compare_routers`: tidy tables, one ``router`` column.

    Parameters
    ----------
    history : pandas.DataFrame
        One row per router and step (``step`` = updates done, 1..steps):
        ``loss`` (the task loss of the step's training batch, before the
        update), ``aux_loss`` (the router's weighted auxiliary losses) and
        the validation metric (column named by ``metric``) on the probe
        set after the update.
    final : pandas.DataFrame
        One row per router (the index): the metric at the end, ``loss``,
        ``experts_per_token``, ``dropped_fraction`` and
        ``tokens_left_behind`` (means over the last tenth of the steps),
        ``jain``, ``rel_perplexity`` and ``dead_experts`` of the top-``k``
        probe selection at the end, ``saturation_half`` (top-``k``
        saturation at the recorded step nearest to ``steps / 2``),
        ``change_rate_last`` (top-``k`` change rate over the last recorded
        interval), ``n_parameters`` and ``seconds`` (training time; the
        one value that differs between runs).
    saturation, change_rate : pandas.DataFrame
        The recorder's
        :meth:`~moestat.routing.RoutingRecorder.saturation` and
        :meth:`~moestat.routing.RoutingRecorder.change_rate` for
        ``k = 1`` and the comparison's ``k``, with a ``router`` column.
    utilization, utilization_summary : pandas.DataFrame
        The recorder's
        :meth:`~moestat.routing.RoutingRecorder.utilization` and
        :meth:`~moestat.routing.RoutingRecorder.utilization_summary`
        (top-``k``).
        ``load_balance`` is NaN for routers whose recorded scores are not
        softmax logits (see Notes of :func:`compare_routers`).
    routing_stats : pandas.DataFrame
        Per router and step, from the training batch: ``experts_per_token``
        (mean dispatched experts), ``dropped_fraction`` (token-choice
        assignments dropped by capacity; 0 for dropless routers and for
        expert choice), ``tokens_left_behind`` (share of tokens with no
        expert), ``max_violation`` (``max_i c_i / mean(c) - 1`` of the
        dispatched counts, mean over groups).
    task : str
        ``"regression"`` or ``"classification"``.
    metric : str
        ``"mse"`` (lower is better) or ``"accuracy"`` (higher is better).
    truth_metric : float
        The metric of the true model's prediction on the probe set (the
        conditional mean, or the most probable class): the best any model
        can do on average.
    k : int
        Experts per token of the comparison (and of the diagnostics).
    config : dict
        The arguments of the run.
    """

    history: pd.DataFrame
    final: pd.DataFrame
    saturation: pd.DataFrame
    change_rate: pd.DataFrame
    utilization: pd.DataFrame
    utilization_summary: pd.DataFrame
    routing_stats: pd.DataFrame
    task: str
    metric: str
    truth_metric: float
    k: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def routers(self) -> list[str]:
        """Router names, in the order they were trained."""
        return list(self.final.index)


# --------------------------------------------------------------------------
# argument checks


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
    return int(value)


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(
        f"dtype must be one of {sorted(_DTYPES)} (or the torch dtype); got {dtype!r}."
    )


def _resolve_routers(
    routers: Any, n_experts: int, k: int, steps: int
) -> dict[str, RouterSpec]:
    known = default_routers(n_experts, k, steps)
    if routers is None:
        return known
    if isinstance(routers, str):
        routers = [routers]

    def lookup(name: Any) -> RouterSpec:
        if name not in known:
            raise ValueError(
                f"Unknown router {name!r}; use one of {list(known)}, or pass a "
                "mapping of names to RouterSpec objects or builder callables."
            )
        return known[name]

    if isinstance(routers, Mapping):
        specs = {}
        for name, value in routers.items():
            if isinstance(value, RouterSpec):
                specs[str(name)] = value
            elif isinstance(value, str):
                specs[str(name)] = lookup(value)
            elif callable(value):
                specs[str(name)] = RouterSpec(value)
            else:
                raise ValueError(
                    f"routers[{name!r}] must be a RouterSpec, a builder callable "
                    f"or a default router's name; got {type(value).__name__}."
                )
    elif isinstance(routers, Sequence):
        specs = {str(name): lookup(name) for name in routers}
    else:
        raise ValueError(
            "routers must be None, a sequence of router names or a mapping of "
            f"names to RouterSpec objects; got {type(routers).__name__}."
        )
    if not specs:
        raise ValueError("routers is empty; name at least one router.")
    return specs


# --------------------------------------------------------------------------
# data and model


def _make_task(
    task: str,
    n_samples: int,
    n_features: int,
    n_true_experts: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Covariates, targets and the truth's best prediction of a hard-gated MoE.

    ``x ~ N(0, I_d)``; the region of ``x`` is the argmax of a softmax gate
    ``softmax(x W + c)`` over ``n_true_experts`` regions; within region
    ``r`` the target is ``x beta_r + b_r + N(0, 0.1^2)`` (regression) or a
    class drawn from ``softmax(3 (x B_r + c_r))`` over three classes.
    """
    rng = np.random.default_rng(seed)
    m, d = n_true_experts, n_features
    gate_w = rng.normal(size=(d, m))
    gate_c = rng.normal(scale=0.5, size=m)
    X = rng.normal(size=(n_samples, d))
    region = np.argmax(X @ gate_w + gate_c, axis=1)
    if task == "regression":
        beta = rng.normal(size=(m, d))
        intercept = rng.normal(size=m)
        mean = np.einsum("nd,nd->n", X, beta[region]) + intercept[region]
        y = mean + _NOISE_SD * rng.normal(size=n_samples)
        return X, y, mean
    coef = rng.normal(size=(m, d, _N_CLASSES))
    bias = rng.normal(size=(m, _N_CLASSES))
    logits = 3.0 * (np.einsum("nd,ndc->nc", X, coef[region]) + bias[region])
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    # inverse-cdf draw of one class per row
    u = rng.random(n_samples)[:, None]
    y = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), _N_CLASSES - 1)
    return X, y, probs.argmax(axis=1)


def _truth_metric(task: str, best: np.ndarray, y: np.ndarray) -> float:
    if task == "regression":
        return float(np.mean((best - y) ** 2))
    return float(np.mean(best == y))


class _Net(nn.Module):
    """Embedding, MoE layer with a residual connection, head."""

    def __init__(self, embed: nn.Linear, moe: MoELayer, head: nn.Linear) -> None:
        super().__init__()
        self.embed = embed
        self.moe = moe
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Routing]:
        h = self.embed(x)
        y, routing = self.moe(h)
        return self.head(h + y), routing


def _build_net(
    spec: RouterSpec,
    d_in: int,
    d_out: int,
    d_model: int,
    n_experts: int,
    k: int,
    d_hidden: int,
    dtype: torch.dtype,
    seed: int,
) -> _Net:
    # torch's global generator draws nn.Linear's initial weights; a forked
    # state seeded here makes every router's run start from the same model
    # and leaves the caller's generator as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embed = nn.Linear(d_in, d_model, dtype=dtype)
        head = nn.Linear(d_model, d_out, dtype=dtype)
        experts = ExpertMLP(
            n_experts, d_model, d_hidden, dtype=dtype, random_state=seed
        )
        shared = None
        if spec.n_shared_experts:
            shared = SharedExperts(
                d_model,
                d_hidden,
                spec.n_shared_experts,
                dtype=dtype,
                random_state=seed + 1,
            )
        router = spec.build(d_model, n_experts, k, seed)
    return _Net(embed, MoELayer(router, experts, shared), head)


def _batch_stats(routing: Routing) -> dict[str, float]:
    with torch.no_grad():
        per_token = routing.dispatch.sum(dim=-1)
        stats = routing.stats
        if "dropped_fraction" in stats:
            dropped = float(stats["dropped_fraction"].float().mean())
        else:
            dropped = 0.0
        counts = routing.dispatch.sum(dim=1)
        return {
            "experts_per_token": float(per_token.float().mean()),
            "dropped_fraction": dropped,
            "tokens_left_behind": float((per_token == 0).float().mean()),
            "max_violation": float(np.mean(max_violation(counts))),
        }


# --------------------------------------------------------------------------
# the comparison


def compare_routers(
    task: str = "regression",
    routers: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    n_train: int = 4096,
    n_probe: int = 512,
    n_features: int = 4,
    n_true_experts: int = 4,
    d_model: int = 16,
    n_experts: int = 8,
    k: int = 2,
    d_hidden: int = 32,
    steps: int = 300,
    batch_size: int = 256,
    groups: int = 4,
    lr: float = 1e-2,
    record_every: int = 10,
    device: Any = None,
    dtype: Any = None,
    random_state: int | None = 0,
    progress: bool = True,
) -> RouterComparison:
    """Train the same small MoE model with each router and compare them.

    The model is ``head(h + MoE(h))`` with ``h = embed(x)``: a linear
    embedding to ``d_model`` features, an
    :class:`~moestat.routing.MoELayer` of ``n_experts``
    :class:`~moestat.routing.ExpertMLP` experts (hidden width
    ``d_hidden``; plus shared experts where the router's spec asks), and a
    linear head. Every router gets the same data, initial weights (where
    the shapes agree) and batches; the loss is the task loss plus
    ``routing.total_aux()``, minimized by Adam.

    Parameters
    ----------
    task : {"regression", "classification"}, default="regression"
        The data come from a mixture-of-experts truth with a softmax gate
        over ``n_true_experts`` regions of the input: Gaussian linear
        experts (:func:`~moestat.datasets.make_moe_regression`; loss and
        metric: mean squared error) or three-class multinomial logistic
        experts (:func:`~moestat.datasets.make_moe_classification`; loss:
        cross-entropy, metric: accuracy). Covariates are uniform on
        ``[-1, 1]^n_features``.
    routers : sequence of str or mapping, optional
        Names from :func:`default_routers` (default: all of them, in that
        order), or a mapping of names to :class:`RouterSpec` objects,
        builder callables ``build(d_model, n_experts, k, random_state)``
        or default names.
    n_train, n_probe : int, default=4096, 512
        Training samples, and the held-out probe samples on which the
        metric and the router diagnostics are computed (one group).
    n_features, n_true_experts : int, default=4, 4
        Input features and experts of the truth.
    d_model, n_experts, k, d_hidden : int, default=16, 8, 2, 32
        Width of the embedding, routed experts ``m``, experts per token
        ``K`` and the experts' hidden width.
    steps : int, default=300
        Optimizer steps per router.
    batch_size, groups : int, default=256, 4
        Each step draws ``batch_size`` training samples (with replacement)
        and routes them as ``groups`` independent groups of
        ``batch_size / groups`` tokens (capacity and balance statistics
        are per group).
    lr : float, default=1e-2
        Adam's learning rate.
    record_every : int, default=10
        The probe routing is recorded at step 0, every ``record_every``
        steps and at the last step.
    device : str or torch.device, optional
        Where to train (default the CPU), e.g. ``"cuda"``.
    dtype : {"float32", "float64", "bfloat16"} or torch.dtype, optional
        Dtype of the model's weights and inputs (default float32); routers
        compute in float32 whatever it is.
    random_state : int or None, default=0
        Seed of the data, the initial weights, the batches and the routers'
        generators; None draws a fresh seed. On the CPU a run with an int
        seed repeats exactly.
    progress : bool, default=True
        Show a tqdm progress bar.

    Returns
    -------
    RouterComparison

    Raises
    ------
    ValueError
        For an unknown task or router name, or an out-of-range argument.

    Notes
    -----
    After each optimizer step a router's ``update_bias(routing)`` is called
    if it has one (DeepSeek-V3's bias balancing), and ``advance()`` if it
    has one (the dense-to-sparse temperature schedule). The metric and the
    probe routing are computed in evaluation mode (evaluation capacity
    factors, no noise, the dense-to-sparse router's top-1).

    The diagnostics (:class:`~moestat.routing.RoutingRecorder`) are
    those of each router's token-side choice: the top-``k`` of the probe
    logits for the softmax routers, of ``sigma(z) + b`` for the sigmoid
    router (the bias changes the choice) and of the prototype winners for
    the prototype router. For the variable-``k`` routers (expert choice,
    dense-to-sparse, Tsallis) they are the ``k`` experts a token scores
    highest; what the routers actually dispatch in training is in
    ``routing_stats``.

    Examples
    --------
    >>> from moestat.routing.experiment import compare_routers
    >>> result = compare_routers(
    ...     "regression", ["dense softmax", "top-k softmax"], n_train=128,
    ...     n_probe=32, steps=4, batch_size=32, groups=2, record_every=2,
    ...     progress=False)
    >>> result.routers, result.metric
    (['dense softmax', 'top-k softmax'], 'mse')
    >>> result.history.shape
    (8, 5)
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}.")
    n_train = _check_int("n_train", n_train, 1)
    n_probe = _check_int("n_probe", n_probe, 1)
    n_features = _check_int("n_features", n_features, 1)
    n_true_experts = _check_int("n_true_experts", n_true_experts, 1)
    d_model = _check_int("d_model", d_model, 1)
    n_experts = _check_int("n_experts", n_experts, 1)
    k = _check_int("k", k, 1)
    if k > n_experts:
        raise ValueError(f"k must be <= n_experts={n_experts}; got k={k}.")
    d_hidden = _check_int("d_hidden", d_hidden, 1)
    steps = _check_int("steps", steps, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    groups = _check_int("groups", groups, 1)
    if batch_size % groups:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of groups={groups}."
        )
    record_every = _check_int("record_every", record_every, 1)
    if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite float; got {lr!r}.")
    if random_state is not None:
        random_state = _check_int("random_state", random_state, 0)
    specs = _resolve_routers(routers, n_experts, k, steps)
    device = resolve_device(device)
    dtype = _resolve_dtype(dtype)
    if random_state is None:
        # fresh entropy from the OS (numpy's global generator stays untouched)
        seed = int(np.random.default_rng().integers(2**31 - 1))
    else:
        seed = random_state

    X, y, best = _make_task(task, n_train + n_probe, n_features, n_true_experts, seed)
    truth_metric = _truth_metric(task, best[n_train:], y[n_train:])
    x_all = torch.as_tensor(X, dtype=dtype, device=device)
    if task == "regression":
        y_all = torch.as_tensor(y, dtype=torch.float32, device=device)
        d_out = 1
    else:
        y_all = torch.as_tensor(y, dtype=torch.long, device=device)
        d_out = _N_CLASSES
    data = {
        "x_train": x_all[:n_train],
        "y_train": y_all[:n_train],
        "x_probe": x_all[n_train:].unsqueeze(0),
        "y_probe": y_all[n_train:],
    }
    shape = {
        "d_in": n_features,
        "d_out": d_out,
        "d_model": d_model,
        "n_experts": n_experts,
        "k": k,
        "d_hidden": d_hidden,
    }
    record_steps = {*range(0, steps + 1, record_every), steps}

    parts: dict[str, list[pd.DataFrame]] = {}
    finals = []
    bar = progress_bar(
        total=len(specs) * steps, disable=not progress, desc="compare_routers"
    )
    try:
        for name, spec in specs.items():
            bar.set_postfix_str(name)
            run = _train_one(
                task,
                spec,
                data,
                shape,
                dtype=dtype,
                device=device,
                seed=seed,
                steps=steps,
                batch_size=batch_size,
                groups=groups,
                lr=lr,
                record_steps=record_steps,
                bar=bar,
            )
            for key, table in run["tables"].items():
                parts.setdefault(key, []).append(table.assign(router=name))
            finals.append({"router": name, **run["final"]})
    finally:
        bar.close()

    def tidy(key: str) -> pd.DataFrame:
        table = pd.concat(parts[key], ignore_index=True)
        return table[["router", *[c for c in table.columns if c != "router"]]]

    metric = _METRICS[task]
    final = pd.DataFrame(finals).set_index("router")
    final = final[[metric, *[c for c in final.columns if c != metric]]]
    config = {
        "task": task,
        "routers": list(specs),
        "n_train": n_train,
        "n_probe": n_probe,
        "n_features": n_features,
        "n_true_experts": n_true_experts,
        **{key: shape[key] for key in ("d_model", "n_experts", "k", "d_hidden")},
        "steps": steps,
        "batch_size": batch_size,
        "groups": groups,
        "lr": lr,
        "record_every": record_every,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "random_state": random_state,
        "seed": seed,
    }
    return RouterComparison(
        history=tidy("history"),
        final=final,
        saturation=tidy("saturation"),
        change_rate=tidy("change_rate"),
        utilization=tidy("utilization"),
        utilization_summary=tidy("utilization_summary"),
        routing_stats=tidy("routing_stats"),
        task=task,
        metric=metric,
        truth_metric=truth_metric,
        k=k,
        config=config,
    )


def _task_loss(task: str, out: Tensor, target: Tensor) -> Tensor:
    out = out.float()
    if task == "regression":
        return F.mse_loss(out.squeeze(-1), target)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


def _metric(task: str, out: Tensor, target: Tensor) -> float:
    out = out.float().reshape(target.shape[0], -1)
    if task == "regression":
        return float(F.mse_loss(out.squeeze(-1), target))
    return float((out.argmax(dim=-1) == target).float().mean())


def _train_one(
    task: str,
    spec: RouterSpec,
    data: dict[str, Tensor],
    shape: dict[str, int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    steps: int,
    batch_size: int,
    groups: int,
    lr: float,
    record_steps: set[int],
    bar: Any,
) -> dict[str, Any]:
    """Train one router's model; its tables and final summary."""
    net = _build_net(spec, dtype=dtype, seed=seed, **shape).to(device)
    router = net.moe.router
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(seed)
    n_train = data["x_train"].shape[0]
    k = shape["k"]
    recorder = RoutingRecorder(data["x_probe"], store="logits", k=k)
    history, stats = [], []

    def evaluate(step: int) -> float:
        net.eval()
        with torch.no_grad():
            out, routing = net(data["x_probe"])
        net.train()
        if step in record_steps:
            recorder.record_logits(
                step,
                [router.selection_scores(routing)],
                are_logits=router.selection_scores_are_logits,
            )
        return _metric(task, out, data["y_probe"])

    start = time.perf_counter()
    net.train()
    evaluate(0)
    for step in range(1, steps + 1):
        index = torch.randint(
            n_train, (groups, batch_size // groups), generator=batches
        ).to(device)
        out, routing = net(data["x_train"][index])
        loss = _task_loss(task, out, data["y_train"][index])
        aux = routing.total_aux()
        optimizer.zero_grad(set_to_none=True)
        (loss + aux).backward()
        optimizer.step()
        if hasattr(router, "update_bias"):
            router.update_bias(routing)
        if hasattr(router, "advance"):
            router.advance()
        metric = evaluate(step)
        history.append((step, loss.item(), aux.item(), metric))
        stats.append({"step": step, **_batch_stats(routing)})
        bar.update()
    seconds = time.perf_counter() - start

    metric_name = _METRICS[task]
    history = pd.DataFrame(history, columns=["step", "loss", "aux_loss", metric_name])
    stats = pd.DataFrame(stats)
    ks = sorted({1, k})
    saturation = pd.concat([recorder.saturation(kk) for kk in ks], ignore_index=True)
    change = pd.concat([recorder.change_rate(kk) for kk in ks], ignore_index=True)
    summary = recorder.utilization_summary(k)
    tables = {
        "history": history,
        "saturation": saturation,
        "change_rate": change,
        "utilization": recorder.utilization(k),
        "utilization_summary": summary,
        "routing_stats": stats,
    }

    tail = max(1, steps // 10)
    last_stats = stats.tail(tail).mean()
    top_k_sat = saturation[saturation["k"] == k].groupby("step")["saturation"].mean()
    half = top_k_sat.index[np.abs(top_k_sat.index - steps / 2).argmin()]
    top_k_change = change[change["k"] == k].groupby("step")["change_rate"].mean()
    last_summary = summary[summary["step"] == summary["step"].max()].mean(
        numeric_only=True
    )
    final = {
        metric_name: history[metric_name].iloc[-1],
        "loss": history["loss"].tail(tail).mean(),
        "experts_per_token": last_stats["experts_per_token"],
        "dropped_fraction": last_stats["dropped_fraction"],
        "tokens_left_behind": last_stats["tokens_left_behind"],
        "jain": last_summary["jain"],
        "rel_perplexity": last_summary["rel_perplexity"],
        "dead_experts": int(last_summary["dead_experts"]),
        "saturation_half": float(top_k_sat.loc[half]),
        "change_rate_last": float(top_k_change.iloc[-1]),
        "n_parameters": sum(p.numel() for p in net.parameters()),
        "seconds": seconds,
    }
    return {"tables": tables, "final": final}
