"""
Router diagnostics: saturation, change rate and expert utilization
==================================================================

How to watch the routing of your own mixture-of-experts model while it
trains. We build a small network with two
:class:`moestat.routing.MoELayer` blocks, train it twice in a plain
PyTorch loop, once with a top-k softmax router
(:class:`~moestat.routing.TopKSoftmaxRouter`) and once with
DeepSeek-V3's normalized sigmoid router with bias balancing and a shared
expert (:class:`~moestat.routing.NormalizedSigmoidRouter`), and let a
:class:`~moestat.routing.RoutingRecorder` keep the routing of a fixed
set of held-out probe inputs. From its records we draw the three diagnostics
of the DeepSeekMoE analysis: router saturation, router change rate and
expert utilization.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from moestat.datasets import make_moe_regression
from moestat.plotting import (
    plot_expert_utilization,
    plot_router_change_rate,
    plot_router_saturation,
)
from moestat.routing import (
    ExpertMLP,
    MoELayer,
    NormalizedSigmoidRouter,
    RoutingRecorder,
    SharedExperts,
    TopKSoftmaxRouter,
)

pd.set_option("display.width", 200)
# Tiny matrices: one CPU thread is the fastest.
torch.set_num_threads(1)

# %%
# Data
# ----
# A mixture-of-experts truth with 4 linear experts in 4 covariates, uniform
# on :math:`[-1, 1]^4`, and a sharp softmax gate
# (:func:`moestat.datasets.make_moe_regression`). The last 512 samples are
# held out: they are the probe inputs whose routing is recorded, and the
# validation set.
X, y, truth = make_moe_regression(
    4096 + 512,
    n_experts=4,
    n_features=4,
    gate_scale=16.0,
    noise_var=0.01,
    random_state=0,
)
X_t = torch.as_tensor(X, dtype=torch.float32)
y_t = torch.as_tensor(y, dtype=torch.float32)
x_train, y_train = X_t[:4096], y_t[:4096]
x_probe, y_probe = X_t[4096:], y_t[4096:]
truth_mse = np.mean((y[4096:] - truth.predict(X[4096:])) ** 2)
print(f"mse of the true conditional mean on the probe set: {truth_mse:.3f}")

# %%
# The model
# ---------
# An embedding to 16 features, two residual MoE blocks
# ``h <- h + MoELayer(h)`` of 8 two-layer MLP experts each (hidden width 32),
# and a linear read-out. Each layer has its own router, built by
# ``make_router``; ``n_shared`` adds always-on shared experts, which
# :class:`~moestat.routing.MoELayer` adds with weight 1 (they are not a
# router feature). ``forward`` returns the prediction and every layer's
# :class:`~moestat.routing.Routing`.
D_MODEL, N_EXPERTS, K, D_HIDDEN = 16, 8, 2, 32


class TwoLayerMoE(nn.Module):
    def __init__(self, make_router, n_shared=0, n_layers=2):
        super().__init__()
        self.embed = nn.Linear(X.shape[1], D_MODEL)
        self.layers = nn.ModuleList(
            MoELayer(
                make_router(),
                ExpertMLP(N_EXPERTS, D_MODEL, D_HIDDEN, random_state=layer),
                SharedExperts(D_MODEL, D_HIDDEN, n_shared, random_state=10 + layer)
                if n_shared
                else None,
            )
            for layer in range(n_layers)
        )
        self.head = nn.Linear(D_MODEL, 1)

    def forward(self, x):
        h = self.embed(x)
        routings = []
        for layer in self.layers:
            out, routing = layer(h)
            h = h + out
            routings.append(routing)
        return self.head(h).squeeze(-1), routings


# %%
# What the recorder should see
# ----------------------------
# The diagnostics compare *selections*: the set :math:`A(x)` of experts a
# token picks. A softmax router picks the top-k of its logits, so we record
# the logits themselves (``store="logits"``; any k can be derived later).
# The sigmoid router picks the top-k of :math:`\sigma(z_i) + b_i`, where the
# balancing bias :math:`b` moves between steps, so the raw logits would
# miss every choice the bias changes. Each router says what it ranks:
# :meth:`~moestat.routing.Router.selection_scores` gives the logits
# for the softmax router and :math:`\sigma(z) + b` for the sigmoid router,
# whose scores are not softmax logits, so there we keep only the top-k ids
# (``store="selections"``).
#
# The probe inputs of the second layer are hidden states, which change as
# the embedding and the first layer train. So instead of
# :meth:`~moestat.routing.RoutingRecorder.record` (which routes a
# fixed tensor through each router), we run the whole model on the probe
# set in evaluation mode and hand each layer's selection scores to
# :meth:`~moestat.routing.RoutingRecorder.record_logits`.


RUNS = {
    "top-k softmax": dict(
        # GShard-style top-2: weights renormalized over the two, capacity
        # factor 1.25, Switch's balance loss with weight 1e-2
        make_router=lambda: TopKSoftmaxRouter(D_MODEL, N_EXPERTS, k=K, random_state=0),
        n_shared=0,
        store="logits",
    ),
    "sigmoid + shared": dict(
        # DeepSeek-V3: top-2 of sigma(z) + b, dropless, bias step 1e-3
        make_router=lambda: NormalizedSigmoidRouter(
            D_MODEL, N_EXPERTS, top_k=K, n_shared_experts=1, random_state=0
        ),
        n_shared=1,
        store="selections",
    ),
}

# %%
# The training loop
# -----------------
# A plain loop: each step draws 256 training samples and routes them as 4
# groups of 64 tokens (capacity and balance statistics are per group); the
# loss is the mean squared error plus every layer's weighted auxiliary
# losses, ``routing.total_aux()``, minimized by Adam with a cosine learning
# rate schedule. After the optimizer step the sigmoid router's
# ``update_bias`` moves each :math:`b_i` by
# :math:`\gamma\,\mathrm{sign}(\bar c - c_i)`, with :math:`c_i` the tokens
# that chose expert :math:`i` in the batch (never in evaluation). The
# recorder takes the probe routing every 10 steps and each layer's
# training-batch statistics at every step (``log_stats``).
STEPS, BATCH, GROUPS, RECORD_EVERY = 400, 256, 4, 10


def train(make_router, n_shared, store, seed=0):
    torch.manual_seed(seed)  # same initial embedding, head and gates per run
    model = TwoLayerMoE(make_router, n_shared)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    recorder = RoutingRecorder(x_probe, record_every=RECORD_EVERY, store=store, k=K)
    batches = torch.Generator().manual_seed(seed)
    history = []

    def probe(step):
        model.eval()
        with torch.no_grad():
            pred, routings = model(x_probe)
        model.train()
        if recorder.should_record(step):
            routers = [layer.router for layer in model.layers]
            scores = [
                router.selection_scores(routing)
                for router, routing in zip(routers, routings, strict=True)
            ]
            recorder.record_logits(
                step, scores, are_logits=routers[0].selection_scores_are_logits
            )
        return float(((pred - y_probe) ** 2).mean())

    probe(0)
    for step in range(1, STEPS + 1):
        index = torch.randint(
            len(x_train), (GROUPS, BATCH // GROUPS), generator=batches
        )
        pred, routings = model(x_train[index])
        loss = ((pred - y_train[index]) ** 2).mean()
        aux = sum(routing.total_aux() for routing in routings)
        optimizer.zero_grad()
        (loss + aux).backward()
        optimizer.step()
        schedule.step()
        for number, layer in enumerate(model.layers):
            if hasattr(layer.router, "update_bias"):
                layer.router.update_bias(routings[number])
            recorder.log_stats(step, routings[number], layer=number)
        history.append((step, loss.item(), probe(step)))
    history = pd.DataFrame(history, columns=["step", "loss", "mse"])
    return model, recorder, history


results = {name: train(**run) for name, run in RUNS.items()}

# %%
# Both models learn the task about equally well; neither reaches the true
# conditional mean within 400 steps.
for name, (_, _, history) in results.items():
    print(f"{name:>16}: validation mse {history['mse'].iloc[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, (_, _, history) in results.items():
    ax.plot(history["step"], history["mse"], label=name)
ax.axhline(truth_mse, color="gray", ls=":", label="true conditional mean")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("validation mse")
ax.legend(fontsize="small")
fig.tight_layout()

# %%
# Router saturation
# -----------------
# Saturation at step :math:`s` is the share of the probe tokens' final
# expert choices (those at the last record) that the router already makes
# at :math:`s`: 100% means the routing has reached its final form, even if
# the weights still move. We draw it for the first choice alone (top-1) and
# for the pair (top-2); the faint lines are the two layers, the bold ones
# their mean. The softmax router's routing takes its final form earlier:
# halfway through training its top-2 saturation is about 92% against 85%
# for the sigmoid router, and in both the first choice settles after the
# pair (which of its two experts a token ranks first is the less certain
# decision).
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, (name, (_, recorder, _)) in zip(axes, results.items(), strict=True):
    table = pd.concat([recorder.saturation(1), recorder.saturation(2)])
    plot_router_saturation(table, ax=ax)
    ax.set_title(name)
fig.tight_layout()

# %%
# Router change rate
# ------------------
# The change rate at step :math:`s` is the share of the probe tokens'
# choices that changed since the previous record (10 steps earlier): where
# saturation says how far the routing is from its end point, the change
# rate says how fast it still moves. As the learning rate decays, the
# softmax router's change rate falls to about 0; the sigmoid router's stays
# near 2% to the end, because its bias moves every expert's score by the
# fixed step :math:`\gamma` at every step, however close to balance the
# batch already is, and tokens near a tie keep switching experts.
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, (name, (_, recorder, _)) in zip(axes, results.items(), strict=True):
    table = pd.concat([recorder.change_rate(1), recorder.change_rate(2)])
    plot_router_change_rate(table, ax=ax)
    ax.set_title(name)
    ax.set_ylim(-2, 60)
fig.tight_layout()

# %%
# Expert utilization
# ------------------
# Utilization :math:`u_i` is the share of the probe tokens' routing slots
# that expert :math:`i` holds, one row per layer; with 8 experts perfect
# balance is :math:`u_i = 1/8 = 0.125` everywhere and an expert at 0 is
# dead. The heatmaps show the last record. With its balance loss at weight
# 1e-2 the softmax router leaves two experts of the first layer nearly idle
# (:math:`u_i` of 0.01 and 0.003) and gives another 0.28; the sigmoid
# router's bias keeps every :math:`u_i` between 0.11 and 0.15 (its only
# balance loss, the sequence-wise one, has weight 1e-4).
fig, axes = plt.subplots(1, 2, figsize=(11, 3))
for ax, (name, (_, recorder, _)) in zip(axes, results.items(), strict=True):
    plot_expert_utilization(recorder.utilization(), ax=ax, vmin=0, vmax=0.35)
    ax.set_title(f"{name}, step {STEPS}")
    ax.set_yticks([0, 1])
fig.tight_layout()

# %%
# The same balance in numbers: the recorder's ``utilization_summary`` at the
# last record, one row per layer. ``rel_perplexity`` (:math:`e^{H(u)}/m`)
# and ``jain`` (Jain's index) are 1 under perfect balance, ``cv`` is the
# coefficient of variation of :math:`u`; ``load_balance`` (Switch's
# :math:`m \sum_i f_i P_i`, 1 when balanced) needs softmax logits, so only
# the softmax router's recorder has it.
summaries = []
for name, (_, recorder, _) in results.items():
    summary = recorder.utilization_summary()
    summaries.append(summary[summary["step"] == STEPS].assign(router=name))
summary = pd.concat(summaries).set_index(["router", "layer"]).drop(columns="step")
print(summary.round(3).to_string())

# %%
# Training-batch statistics
# -------------------------
# ``log_stats`` kept, at every step and for each layer, what the router did
# with the training batch: experts per token, the share of tokens left
# without any expert, the auxiliary losses (``aux_*``), MaxVio
# (:math:`\max_i c_i / \bar c - 1` of the tokens each expert processed;
# 0 when balanced) and the router's own ``Routing.stats`` (dropped
# assignments for the capacity router, the size of the balancing bias for
# the sigmoid router). ``stats_table()`` is a tidy table of
# ``step, layer, name, value``; here its means over the last 40 steps and
# both layers (the auxiliary losses unweighted; NaN where a router does not
# report the statistic).
names = [
    "experts_per_token",
    "tokens_left_behind",
    "max_violation",
    "dropped_fraction",
    "aux_load_balance",
    "aux_sequence_balance",
    "expert_bias_norm",
]
rows = {}
for name, (_, recorder, _) in results.items():
    stats = recorder.stats_table()
    last = stats[stats["step"] > STEPS - 40]
    rows[name] = last.groupby("name")["value"].mean().reindex(names)
print(pd.DataFrame(rows).round(3).to_string())

# %%
# MaxVio over training. The two routers keep the load down in different
# ways: the softmax router's capacity (20 assignments per expert and group,
# against 16 on average) caps MaxVio near 0.5 by dropping what overflows,
# about 15% of the assignments at the end; the sigmoid router is dropless,
# starts far from balance (its bias starts at zero) and is brought below
# the softmax router's level by its bias, without dropping a token.
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, (_, recorder, _) in results.items():
    stats = recorder.stats_table()
    vio = stats[stats["name"] == "max_violation"]
    curve = vio.groupby("step")["value"].mean().rolling(20, min_periods=1).mean()
    ax.plot(curve.index, curve.to_numpy(), label=name)
ax.set_xlabel("step")
ax.set_ylabel("MaxVio, layer mean (rolling mean of 20)")
ax.legend(fontsize="small")
fig.tight_layout()

plt.show()
