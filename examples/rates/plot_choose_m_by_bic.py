"""
Choosing the number of experts by BIC as n grows
================================================

When the true regression function lies outside every mixture of experts,
there is no "true" number of experts: more experts approximate the truth
better but cost more parameters to estimate. Mendes and Jiang (2012) make
this trade-off explicit for mixtures of polynomial experts, and it implies
that the best number of experts grows like a power of the sample size,
faster for constant experts than for linear ones. This example draws
samples of growing size from a smooth curve with Gaussian noise, selects
``m`` by BIC with :func:`moestat.select_model` for constant (``k = 0``) and
linear (``k = 1``) experts, and shows the selected ``m`` growing with ``n``.
The setting is that of moestat's MJ-2 and MJ-3 scenarios, our own design
(the paper has no simulation study).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from moestat import PolynomialMoE, select_model
from moestat.simulation import SCENARIOS

# %%
# The trade-off in theory
# -----------------------
# Fit a mixture of ``m`` experts of order ``k`` with a softmax gate to ``n``
# observations of a smooth conditional density in one covariate. The
# expected KL divergence from the truth is, roughly, an approximation term
# plus an estimation term,
#
# .. math::
#
#    \mathrm{E}\,\mathrm{KL}(m, k, n) \approx C_k\, m^{-2(k+1)}
#    + \frac{m J_k}{2n}.
#
# The first term is the error of the best mixture of that size (the MJ-2
# scenario measures its slope, see the example on the Mendes–Jiang rates),
# the second the price of estimating it: the number of free parameters over
# :math:`2n` (MJ-1), about ``J_k`` per expert, its ``k + 1`` polynomial
# coefficients plus its gate row (and its variance when it is estimated).
# Minimising in ``m`` gives :math:`m^* \propto n^{1/(2k+3)}`:
# :math:`n^{1/3}` for constant experts and :math:`n^{1/5}` for linear ones,
# with a best KL of order :math:`n^{-2(k+1)/(2k+3)}`. BIC,
# :math:`-2\log L + p\log n`, is on the scale of :math:`2n\,\mathrm{KL}`,
# where the estimation term charges one per parameter: BIC charges
# :math:`\log n`, so the ``m`` it selects grows like
# :math:`(n/\log n)^{1/(2k+3)}`, a little more slowly, but still as a power
# of ``n``.
#
# The data
# --------
# The truth of MJ-2 and MJ-3: ``x ~ U[0, 1]`` and
# :math:`Y \mid X = x \sim N(h(x), 0.25^2)` with
# :math:`h(x) = \sin(2\pi x) + x/2`. We draw one sample of 1,000 points and
# use its first ``n`` points for ``n = 100, 300, 1000``, so that the larger
# samples extend the smaller ones.
scenario = SCENARIOS["MJ-3"]
truth, covariates = scenario.truth, scenario.covariates
print(f"covariates {covariates.describe()}, noise variance {truth.variance}")

rng = np.random.default_rng(0)
X_all = covariates.sample(1_000, rng)
y_all, _ = truth.sample(X_all, rng)
SIZES = (100, 300, 1_000)

# %%
# Selection by BIC
# ----------------
# For each ``n`` and ``k`` we fit :class:`moestat.PolynomialMoE` for every
# ``m`` of a grid, by EM from three restarts each, and keep the ``m`` with
# the smallest BIC. Constant experts need many pieces to follow the sine,
# so their grid goes to ``m = 12``; linear experts stop at ``m = 8``. The
# experts' variances are estimated, as they would be on real data.
GRIDS = {0: range(1, 13), 1: range(1, 9)}  # k: the m tried
tables = []
for n in SIZES:
    X, y = X_all[:n], y_all[:n]
    for k, grid in GRIDS.items():
        table, _ = select_model(
            PolynomialMoE(degree=k, n_init=3, polish=False, random_state=0),
            X,
            y,
            n_experts=grid,
            degree=[k],
            criterion="bic",
            n_jobs=1,
            progress=False,
        )
        tables.append(table.assign(n=n))
bic = pd.concat(tables, ignore_index=True)

chosen = bic.loc[bic.groupby(["n", "degree"])["bic"].idxmin()]
summary = chosen.pivot(index="n", columns="degree", values="n_experts")
summary.columns = [f"m chosen (k = {k})" for k in summary.columns]
best_k = chosen.loc[chosen.groupby("n")["bic"].idxmin()].set_index("n")["degree"]
summary["k with the smaller BIC"] = best_k
print(summary.to_string())

# %%
# The BIC curves, each drawn as its difference from its own minimum (the
# selected ``m``, starred), on a scale that is linear below 10 and
# logarithmic above. At every ``n`` a curve falls steeply while the
# approximation error dominates and rises slowly once the parameter penalty
# takes over; the minimum moves to the right as ``n`` grows, by several
# experts for ``k = 0`` and by about one for ``k = 1``, as the exponents
# ``1/3`` and ``1/5`` say. Near its minimum the curve of ``k = 0`` is
# flat (at ``n = 300`` seven and eight experts lie within one unit, six and
# nine within seven; at ``n = 1000`` ten and eleven within three), so the
# selected ``m`` of one sample is noisy; its growth is not. Across ``k``
# (the table above), linear experts
# reach the smaller BIC, with fewer experts, at every ``n``: three linear
# pieces already follow the two bends of the sine.
fig, axes = plt.subplots(1, len(SIZES), figsize=(13, 4.2), sharey=True)
for ax, n in zip(axes, SIZES, strict=True):
    for k, part in bic[bic["n"] == n].groupby("degree"):
        part = part.sort_values("n_experts")
        gap = part["bic"] - part["bic"].min()
        line = ax.plot(part["n_experts"], gap, "o-", ms=4, label=f"k = {k}")[0]
        best = part.loc[part["bic"].idxmin(), "n_experts"]
        ax.plot(best, 0, "*", ms=15, color=line.get_color(), markeredgecolor="k")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xticks(list(GRIDS[0]))
    ax.set_xlabel("number of experts m")
    ax.set_title(f"n = {n}")
axes[0].set_ylabel("BIC - its minimum over m")
axes[0].legend()
fig.tight_layout()

# %%
# The selected ``m`` against ``n`` on log-log axes, beside the growth
# :math:`(n/\log n)^{1/(2k+3)}` of theory drawn through the first point.
# Three sizes and one sample per size can only show the direction and the
# order of magnitude of the growth; the MJ-3 scenario
# (:func:`moestat.simulation.tradeoff_summary`) follows the KL-optimal
# ``m`` over many replications.
fig, ax = plt.subplots(figsize=(6, 4.2))
sizes = np.asarray(SIZES, dtype=float)
for k in GRIDS:
    m_chosen = summary[f"m chosen (k = {k})"].to_numpy(float)
    line = ax.plot(sizes, m_chosen, "o-", label=f"selected m, k = {k}")[0]
    growth = (sizes / np.log(sizes)) ** (1 / (2 * k + 3))
    ax.plot(
        sizes,
        m_chosen[0] * growth / growth[0],
        "--",
        color=line.get_color(),
        label=f"(n / log n)^(1/{2 * k + 3})",
    )
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xticks(sizes, [f"{n:,}" for n in SIZES])
ax.set_yticks([2, 3, 4, 6, 8, 12], ["2", "3", "4", "6", "8", "12"])
ax.set_xlabel("n")
ax.set_ylabel("m selected by BIC")
ax.legend(fontsize="small")
fig.tight_layout()

plt.show()
