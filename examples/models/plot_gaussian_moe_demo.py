"""
Fitting a Gaussian mixture of experts and reading its summary
=============================================================

Two linear experts, each in charge of one side of the covariate range, mixed
by a softmax gate. We simulate from this known model, fit a
:class:`moestat.GaussianMoE` by EM, compare the fitted parameters with the
truth (after matching the experts, since their labels are arbitrary), and
read the statsmodels-style summary: standard errors, Wald tests and
confidence intervals from the observed information.
"""

# %%
# The true model
# --------------
# :math:`p(y \mid x) = g_1(x)\, N(y \mid 1 + 2x, 0.09) + g_2(x)\,
# N(y \mid -1 - 1.5x, 0.25)` with :math:`g_2(x) = 1 / (1 + e^{-(0.5 + 4x)})`
# and :math:`g_1 = 1 - g_2`.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianExpertParams,
    GaussianMoE,
    MixtureOfExperts,
    MoEParams,
    SoftmaxGate,
)
from moestat.datasets import make_moe_regression
from moestat.plotting import plot_fit, plot_gate

true_params = MoEParams(
    GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
    GaussianExpertParams(np.array([[1.0, 2.0], [-1.0, -1.5]]), np.array([0.09, 0.25])),
)
X, y, truth = make_moe_regression(n_samples=2000, params=true_params, random_state=2024)
assert isinstance(truth, MixtureOfExperts)
assert isinstance(truth.gate, SoftmaxGate) and isinstance(truth.expert, GaussianExpert)

# %%
# Fit by EM with restarts
# -----------------------
est = GaussianMoE(n_experts=2, random_state=0).fit(X, y)
print(
    f"log-likelihood {est.log_likelihood_:.2f} after {est.n_iter_} iterations "
    f"(converged: {est.converged_}); at the truth: {truth.log_pdf(X, y).sum():.2f}"
)

# %%
# Fitted parameters next to the truth
# -----------------------------------
# Expert labels are arbitrary: a fit may call the truth's first expert its
# second (label switching). :meth:`moestat.GaussianMoE.align_to` relabels the
# fitted experts to the truth's order (Hungarian matching of the experts'
# parameters); everything read from ``est`` afterwards, the summary
# included, uses that order.
est.align_to(truth)
fitted = est.params_


def parameter_table(fitted: MoEParams, true: MoEParams) -> pd.DataFrame:
    """One row per parameter: its name, the truth, the estimate."""
    rows = []
    for i in range(true.n_experts):
        for j, name in enumerate(est.gate_feature_names_):
            rows.append(
                (f"gate{i + 1}[{name}]", true.gate.coef[i, j], fitted.gate.coef[i, j])
            )
        for j, name in enumerate(est.expert_feature_names_):
            rows.append(
                (
                    f"expert{i + 1}[{name}]",
                    true.expert.coef[i, j],
                    fitted.expert.coef[i, j],
                )
            )
        rows.append(
            (f"expert{i + 1}[variance]", true.expert.var[i], fitted.expert.var[i])
        )
    table = pd.DataFrame(rows, columns=["parameter", "truth", "estimate"])
    table["error"] = table["estimate"] - table["truth"]
    return table.set_index("parameter")


table = parameter_table(fitted, truth.params)
print(table.round(4).to_string())

# %%
# The summary
# -----------
# :meth:`moestat.GaussianMoE.summary` prints the model facts (log-likelihood,
# AIC, BIC, convergence), then one block for the gate and one for each
# expert. The first expert's gate row is the softmax reference, fixed at
# zero, so the gate block lists the second expert's intercept and slope
# only.
print(est.summary())

# %%
# Confidence intervals
# --------------------
# ``est.inference()`` returns the numbers behind the summary. Its
# ``conf_int()`` gives Wald intervals
# :math:`\hat\theta_j \pm z_{1-\alpha/2}\, \widehat{\mathrm{se}}_j`, where the
# standard errors are the square roots of the diagonal of the inverse
# observed information (the negative Hessian of the log-likelihood at the
# estimate); variances get theirs by the delta method. They are
# large-sample intervals: they assume the number of experts is right and
# the experts are distinct, and they cover the truth about 95% of the time
# at this sample size. Without ``align_to`` they would still be valid, but
# for the experts in the fit's own arbitrary order: compare them with the
# truth (or with another fit) only after aligning.
results = est.inference()
ci = results.conf_int(alpha=0.05).rename(columns={0: "2.5%", 1: "97.5%"})
ci.insert(0, "estimate", results.params)
ci["truth"] = table["truth"]
ci["covers"] = (ci["2.5%"] <= ci["truth"]) & (ci["truth"] <= ci["97.5%"])
print(ci.loc[["gate2[x0]", "expert1[x0]", "expert2[variance]"]].round(3).to_string())

# %%
# The fit, drawn
# --------------
# The fitted expert means (solid, each drawn where its gate weight exceeds
# 0.1) and gate weights, with the truth dashed.
fig, (ax_fit, ax_gate) = plt.subplots(
    2, 1, figsize=(6, 6), sharex=True, height_ratios=[2, 1]
)
plot_fit(est, X, y, truth=truth, ax=ax_fit)
ax_fit.set_title(f"Gaussian MoE, n = {len(y)}")
plot_gate(est, X, truth=truth, ax=ax_gate)
fig.tight_layout()

plt.show()
