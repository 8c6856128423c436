"""
Fitting a Gaussian mixture of experts
=====================================

Two linear experts, each in charge of one side of the covariate range, mixed
by a softmax gate. We simulate from this known model, fit a
:class:`moestat.GaussianMoE` by EM, and compare the fitted parameters with
the truth (after matching the experts, since their labels are arbitrary).

Run as a script it writes ``demo_parameters.csv`` and ``demo_fit.png`` to
the folder given by ``--out`` (default ``results/``).
"""

# %%
# The true model
# --------------
# ``p(y | x) = g_1(x) N(y | 1 + 2x, 0.09) + g_2(x) N(y | -1 - 1.5x, 0.25)``
# with ``g_2(x) = 1 / (1 + exp(-(0.5 + 4x)))``.
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
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

parser = argparse.ArgumentParser(description="Fit a Gaussian MoE to simulated data.")
parser.add_argument("--out", default="results", help="folder for the table and plot")
parser.add_argument("--n", type=int, default=2000, help="number of samples")
args, _ = parser.parse_known_args()

true_params = MoEParams(
    GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
    GaussianExpertParams(np.array([[1.0, 2.0], [-1.0, -1.5]]), np.array([0.09, 0.25])),
)
X, y, truth = make_moe_regression(
    n_samples=args.n, params=true_params, random_state=2024
)
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
# Expert labels are arbitrary: align the fit to the truth first.
fitted = est.model_.align_to(truth).params


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
# The fit, drawn
# --------------
fig, (ax_fit, ax_gate) = plt.subplots(
    2, 1, figsize=(6, 6), sharex=True, height_ratios=[2, 1]
)
plot_fit(est, X, y, truth=truth, ax=ax_fit)
ax_fit.set_title(f"Gaussian MoE, n = {len(y)}")
plot_gate(est, X, truth=truth, ax=ax_gate)
fig.tight_layout()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
table.to_csv(out / "demo_parameters.csv")
fig.savefig(out / "demo_fit.png", dpi=120)
plt.close(fig)
print(f"wrote {out / 'demo_parameters.csv'} and {out / 'demo_fit.png'}")
