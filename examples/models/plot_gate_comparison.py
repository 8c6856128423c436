"""
Comparing gates: softmax, modified softmax, normalized sigmoid and shared experts
=================================================================================

Every estimator of moestat takes any of its gates. We fit one simulated data
set with three linear Gaussian experts under five gates: the softmax gate,
the modified softmax gate, the normalized sigmoid gate, its top-2 version,
and a softmax gate beside a shared expert (DeepSeekMoE). We compare them by
their training log-likelihood, their number of parameters, BIC and the
log-likelihood of held-out data, and draw the gate weights each one fitted.
"""

# %%
# The data
# --------
# Three linear experts with variance 0.05, each in charge of one third of
# :math:`[-1, 1]`, mixed by a softmax gate with scores
# :math:`s_1 = 0`, :math:`s_2 = 2 + 6x`, :math:`s_3 = 12x`. Half of the 1,500
# samples are used for fitting, the other half to judge the fits.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from moestat import (
    GateParams,
    GaussianExpertParams,
    GaussianMoE,
    MoEParams,
    NormalizedSigmoidGate,
)
from moestat.datasets import make_moe_regression
from moestat.plotting import plot_gate

true_params = MoEParams(
    GateParams(np.array([[0.0, 0.0], [2.0, 6.0], [0.0, 12.0]])),
    GaussianExpertParams(
        np.array([[1.0, 2.0], [-1.0, -1.0], [0.5, -2.0]]), np.full(3, 0.05)
    ),
)
X, y, truth = make_moe_regression(n_samples=1500, params=true_params, random_state=0)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0)

# %%
# Five gates
# ----------
# With scores :math:`s_i(x) = \beta_{0i} + \beta_{1i}^\top x`:
#
# - **softmax**: :math:`g_i(x) = e^{s_i(x)} / \sum_j e^{s_j(x)}`; adding the
#   same vector to every row changes nothing, so the first row is fixed at
#   zero.
# - **modified softmax**: the softmax of
#   :math:`\beta_{0i} + \beta_{1i}^\top M(x)` with a bounded transform, here
#   :math:`M(x) = \tanh(x)`; only the gate sees :math:`M(x)`, the experts
#   see :math:`x`.
# - **normalized sigmoid**:
#   :math:`g_i(x) = \sigma(s_i(x)) / \sum_j \sigma(s_j(x))` with
#   :math:`\sigma` the logistic function; no translation invariance, so
#   every row is free (two more parameters here).
# - **top-2 normalized sigmoid**
#   (:class:`moestat.NormalizedSigmoidGate` with ``top_k=2``): the same
#   ratio taken over :math:`T_2(x)`, the two experts with the highest
#   scores, and :math:`g_i(x) = 0` for the others.
# - **shared experts** (``n_shared_experts=1``):
#   :math:`p(y \mid x) = \lambda f_0(y \mid x) + (1 - \lambda)
#   \sum_{j=1}^{2} g_j(x) f_j(y \mid x)`, one always-active expert
#   :math:`f_0` beside two routed ones with a softmax gate, and
#   :math:`\lambda = 1/2`. Three experts in all, as in the other fits.
#
# Top-K fits have more local maxima (the likelihood jumps where a sample's
# selection changes), so the top-2 fit starts from the dense normalized
# sigmoid fit, as the user guide advises.
gates = {
    "softmax": {"gate": "softmax"},
    "modified softmax": {"gate": "modified_softmax"},
    "normalized sigmoid": {"gate": "normalized_sigmoid"},
    "top-2 sigmoid": {"gate": NormalizedSigmoidGate(top_k=2)},
    "shared + softmax": {"n_experts": 2, "n_shared_experts": 1},
}
fits = {}
for name, options in gates.items():
    options = {"n_experts": 3, **options}
    if name == "top-2 sigmoid":
        options["init"] = fits["normalized sigmoid"].params_
    fits[name] = GaussianMoE(n_init=5, random_state=0, **options).fit(X_train, y_train)

# %%
# Likelihood, size and held-out fit
# ---------------------------------
# ``heldout`` is the mean of ``score_samples`` on the test half, the
# log-density per sample of data the fit has not seen (higher is better;
# the truth scores the value printed below the table).
table = pd.DataFrame(
    {
        "log-likelihood": [f.log_likelihood_ for f in fits.values()],
        "parameters": [f.n_parameters_ for f in fits.values()],
        "BIC": [f.bic(X_train, y_train) for f in fits.values()],
        "heldout": [f.score_samples(X_test, y_test).mean() for f in fits.values()],
    },
    index=pd.Index(list(fits), name="gate"),
)
print(table.round(3).to_string())
print(f"truth, held out: {truth.log_pdf(X_test, y_test).mean():.3f}")

# %%
# The three dense gates fit equally well: the softmax truth is in the
# softmax and normalized sigmoid families, and :math:`\tanh` is nearly
# linear on :math:`[-1, 1]`. BIC prefers the softmax gates, whose free
# reference row saves two parameters. In the middle of the range the true
# gate gives each outer expert a weight of about 0.1; the top-2 gate keeps
# only one of them (the jump at :math:`x = 0` below), so the samples drawn
# from the other are poorly explained. The shared expert gets weight 1/2 at
# every :math:`x`, which no regime of these data has, and fits worst.
#
# The gate weights
# ----------------
# The fits with three routed experts are relabelled to the truth's order
# (:meth:`moestat.GaussianMoE.align_to`), so colours match across panels.
# For the shared-expert fit the first curve is the shared expert's constant
# weight :math:`\lambda = 1/2` and the others are the routed weights
# :math:`(1 - \lambda)\, g_j(x)`.
for est in fits.values():
    if not est.n_shared_experts:
        est.align_to(truth)

fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True, sharey=True)
plot_gate(truth, X, ax=axes[0, 0])
axes[0, 0].set_title("truth (softmax)")
for ax, (name, est) in zip(axes.flat[1:], fits.items(), strict=True):
    plot_gate(est, X, ax=ax)
    ax.set_title(name)
for ax in axes.flat:
    ax.label_outer()
fig.tight_layout()

plt.show()
