"""
Heteroscedastic food expenditure: a mixture of experts on real data
===================================================================

Engel's 1857 data (235 Belgian households, shipped with statsmodels): food
expenditure grows with income, and so does its spread. One linear
regression with one variance cannot say both; a mixture of linear Gaussian
experts with a softmax gate on income can. We choose the number of experts
by BIC and draw the chosen fit.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import statsmodels.api as sm

from moestat import GaussianMoE
from moestat.plotting import plot_fit, plot_gate

engel = sm.datasets.engel.load_pandas().data
X = engel[["income"]] / 1000.0  # thousands of Belgian francs
y = engel["foodexp"] / 1000.0

# %%
# Choosing the number of experts by BIC
# -------------------------------------
fits = {m: GaussianMoE(n_experts=m, random_state=0).fit(X, y) for m in (1, 2, 3)}
table = pd.DataFrame(
    {
        "log-likelihood": [f.log_likelihood_ for f in fits.values()],
        "parameters": [f.n_parameters_ for f in fits.values()],
        "BIC": [f.bic(X, y) for f in fits.values()],
    },
    index=pd.Index(list(fits), name="n_experts"),
)
print(table.round(2).to_string())
best = fits[int(table["BIC"].idxmin())]
print(f"BIC chooses {best.n_experts} experts; variances", np.round(best.expert_var_, 4))

# %%
# The chosen fit
# --------------
# With three experts the gate becomes a sharp switch near an income of 2:
# the dozen richest households get an expert of their own. The likelihood
# keeps rising as that switch sharpens (the gate slope grows without bound),
# a separation of the gate like that of a logistic regression; read the
# gate's slope there as "a step", not as a finite estimate.
fig, (ax_fit, ax_gate) = plt.subplots(
    2, 1, figsize=(6, 6), sharex=True, height_ratios=[2, 1]
)
plot_fit(best, X.to_numpy(), y.to_numpy(), ax=ax_fit)
ax_fit.set_xlabel("")
ax_fit.set_ylabel("food expenditure (thousands)")
plot_gate(best, X.to_numpy(), ax=ax_gate)
ax_gate.set_xlabel("income (thousands)")
fig.tight_layout()

plt.show()
