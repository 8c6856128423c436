"""
Comparing sparse routers on one small task
==========================================

The routers of ``moestat.routing`` (Switch/GShard-style top-k
softmax, Shazeer's noisy top-k, M6-T's expert prototyping, expert choice,
EvoMoE's dense-to-sparse gate, DynMoLE's Tsallis hybrid and DeepSeek-V3's
normalized sigmoid with shared experts) and a dense softmax gate, each
training the same small mixture-of-experts model on the same data, from the
same initial weights and with the same batches. We compare how well and how
fast they learn, and how their routing settles, with the router diagnostics
of the DeepSeekMoE analysis: saturation, change rate and expert
utilization.
"""

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from moestat.plotting import (
    plot_router_change_rate,
    plot_router_comparison,
    plot_router_saturation,
    plot_training_curves,
)
from moestat.routing.experiment import compare_routers

pd.set_option("display.width", 200)

# The matrices here are tiny: on the CPU one thread is the fastest (and
# stays fast when other jobs share the cores). Leave torch's default on a GPU.
torch.set_num_threads(1)

# %%
# The task and the run
# --------------------
# The truth is itself a mixture of experts: ``x`` in R^4 is standard
# normal, a softmax gate of ``x`` splits the space into 4 regions (each ``x``
# belongs to the region of its largest gate score) and in each region the
# response is a different linear function of ``x`` plus N(0, 0.1^2) noise.
# The model embeds ``x`` in 16 features, adds the output of an MoE layer of
# 8 MLP experts (a residual connection) and reads out ``y`` linearly. Every
# router gives each token a compute budget of k = 2 experts (the dense
# reference uses all 8); each step draws 256 samples and routes them as 4
# groups of 64, so capacity limits and balance losses act on 64 tokens.
# The routing of 512 held-out probe samples is recorded every 10 steps.
#
# These sizes run in about ten seconds on one CPU core. On a GPU, scale
# them up, for example::
#
#     SIZES = dict(n_train=200_000, n_probe=4096, n_features=32,
#                  n_true_experts=16, d_model=256, n_experts=64, k=4,
#                  d_hidden=512, steps=3000, batch_size=8192, groups=8,
#                  record_every=100)
#     DEVICE = "cuda"
SIZES = dict(
    n_train=4096,
    n_probe=512,
    n_features=4,
    n_true_experts=4,
    d_model=16,
    n_experts=8,
    k=2,
    d_hidden=32,
    steps=300,
    batch_size=256,
    groups=4,
    record_every=10,
)
DEVICE = "cpu"
result = compare_routers("regression", device=DEVICE, progress=False, **SIZES)

# %%
# Final metrics
# -------------
# ``mse`` is the validation mean squared error on the probe samples at the
# end (the truth's own prediction scores about 0.01, the noise variance),
# ``loss`` the training loss over the last 30 steps. ``experts_per_token``
# and ``dropped_fraction`` are what the routers did with the training
# batches; ``jain``, ``rel_perplexity`` and ``dead_experts`` describe how
# evenly the top-2 choices of the probe samples spread over the 8 experts
# (1, 1 and 0 when perfectly balanced).
columns = [
    "mse",
    "loss",
    "experts_per_token",
    "dropped_fraction",
    "jain",
    "rel_perplexity",
    "dead_experts",
    "saturation_half",
    "change_rate_last",
]
print(f"truth's mse on the probe set: {result.truth_metric:.4f}")
print(result.final[columns].round(3).to_string())

# %%
# Training curves
# ---------------
# The training loss (a rolling mean over 10 steps) and the validation error,
# one line per router. In this run the top-k softmax router ends level with
# the dense gate although capacity drops about 9% of its assignments. The
# dense-to-sparse router lags in the middle of training: it trains with
# several experts per token while its temperature is high, but is evaluated
# on each token's top-1 expert (EvoMoE's evaluation path); the gap closes
# as the temperature falls. This is one seed and 300 steps: differences of a
# few hundredths in mse are within run-to-run variation, so rerun with other
# ``random_state`` values before ranking routers.
fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
plot_training_curves(result.history, "loss", window=10, ax=ax_loss)
plot_training_curves(result.history, "mse", ax=ax_val)
for ax in (ax_loss, ax_val):
    ax.set_yscale("log")
ax_val.get_legend().remove()
ax_val.set_ylabel("validation mse")
fig.tight_layout()

# %%
# Router saturation and change rate
# ---------------------------------
# Saturation at step s is the share of the probe samples' final top-2
# choices that the router already makes at s; the change rate is the share
# that changed since the previous record, 10 steps earlier. Routing is
# settled where saturation nears 100% and the change rate nears 0. The
# noisy router starts lowest: its gate starts at zero, so at step 0 every
# sample's top-2 are experts 0 and 1 (ties go to the lower index), and most
# choices change in the first 10 steps. The sigmoid router settles last: its
# saturation is the lowest through the second half and its change rate the
# highest at the end, since its bias update moves every expert's score by a
# fixed step at every step, however close to balance the batch already is.
fig, (ax_sat, ax_chg) = plt.subplots(1, 2, figsize=(11, 4))
plot_router_comparison(result, "saturation", ax=ax_sat)
plot_router_comparison(result, "change_rate", ax=ax_chg)
ax_chg.get_legend().remove()
fig.tight_layout()

# %%
# For one router, the top-1 and top-2 choices side by side, with the
# per-router tables and :mod:`moestat.plotting`'s own diagnostics plots.
# The first choice settles later than the pair: which of its two experts a
# token ranks first is the less certain decision.
name = "top-k softmax"
fig, (ax_sat, ax_chg) = plt.subplots(1, 2, figsize=(11, 4))
plot_router_saturation(
    result.saturation[result.saturation["router"] == name], ax=ax_sat
)
plot_router_change_rate(
    result.change_rate[result.change_rate["router"] == name], ax=ax_chg
)
ax_sat.set_title(name)
fig.tight_layout()

# %%
# Expert utilization
# ------------------
# The share of the probe samples' top-2 slots each expert holds at the end,
# one row per router (0.125 everywhere would be perfect balance). Without a
# balance loss the dense gate favours one expert with twice its fair share;
# the sigmoid router's bias and the noisy router's importance and load
# losses spread the choices most evenly (Jain's index about 0.97 and 0.99
# in the table above). Expert choice balances the tokens each expert
# *processes* by construction (see ``max_violation`` in
# ``result.routing_stats``), whatever the tokens' own preferences drawn here.
fig, ax = plt.subplots(figsize=(7, 4))
plot_router_comparison(result, "utilization", ax=ax)
fig.tight_layout()

# %%
# The per-step routing statistics of the training batches are in
# ``result.routing_stats``; for example the experts per token of the
# dense-to-sparse router, from dense at the start to about one at the end.
dts = result.routing_stats[result.routing_stats["router"] == "dense-to-sparse"]
print(dts.set_index("step")["experts_per_token"].iloc[[0, 99, 199, 299]].round(2))

plt.show()
