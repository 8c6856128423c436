"""
Mendes–Jiang: estimation and approximation error
================================================

Mendes and Jiang (2012) bound the Kullback–Leibler divergence between a
smooth conditional density and a fitted mixture of ``m`` polynomial experts
of order ``k`` by the sum of two terms: an *approximation* term, the KL of
the best mixture of that size, which falls like :math:`m^{-2(k+1)}` for an
analytic truth in one covariate, and an *estimation* term, which falls like
:math:`1/n` with a constant proportional to the number of free parameters.
The paper has no simulation study; the scenarios MJ-1, MJ-2 and MJ-3 of
``moestat.simulation.SCENARIOS`` are moestat's own design (marked ``[P]``
in their ``source``). This example measures each term on a reduced grid:
the estimation term with a truth inside the model (MJ-1), the approximation
term with a truth outside it, fitted on the population rather than on a
sample (MJ-2).
"""

# %%
import tempfile
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np

from moestat.plotting import plot_rates
from moestat.simulation import (
    SCENARIOS,
    approximation_rates,
    best_of_restarts,
    estimate_rate,
    load_results,
    simulate,
)

# %%
# The estimation term (MJ-1)
# --------------------------
# The truth is itself a mixture of ``k* = 3`` linear experts with a softmax
# gate on ``x ~ U[0, 1]`` and the known noise variance ``0.25^2``; the fitted
# model is the same family (``m = 3``, ``k = 1``), started near the truth and
# fitted by EM. Its free parameters are ``m J_k = 6`` expert coefficients
# (two per expert) and ``v_m = 4`` gate parameters (two per gate row, one
# row being the reference), so the classical asymptotics of a correctly specified model
# give :math:`n\,\mathrm{E}[\mathrm{KL}] \to (m J_k + v_m)/2 = 5`: the KL
# falls like :math:`1/n`, and the Hellinger and total-variation distances
# like :math:`n^{-1/2}`. Six sample sizes from 500 to 16,000 with 40
# replications each take a few seconds (the registered scenario has 20 sizes
# up to 1e5 and 100 replications).
mj1 = SCENARIOS["MJ-1"]
print(mj1.title)
print(mj1.source)

N_GRID = [500, 1_000, 2_000, 4_000, 8_000, 16_000]
with tempfile.TemporaryDirectory() as tmp:
    simulate("MJ-1", tmp, n_grid=N_GRID, n_reps=40, progress=False)
    results = load_results(tmp)

rates = estimate_rate(results)
columns = ["loss", "slope", "ci_low", "ci_high", "theory", "verdict"]
print(rates[columns].round(3).to_string())

# %%
# The estimated slopes, with their replicate-bootstrap intervals, beside the
# theoretical ones (dashed); the band is the 2.5–97.5% range over
# replications. On the right, :math:`n` times the mean KL: it settles near
# the number of free parameters over two, the constant of the estimation
# term, with no trend in ``n`` (the error bars are two standard errors).
results["n_kl"] = results["n"] * results["kl"]
scaled = results.groupby("n")["n_kl"].agg(["mean", "sem"]).reset_index()
print(scaled.round(3).to_string())

fig, (ax_rate, ax_scaled) = plt.subplots(1, 2, figsize=(11, 4.5))
plot_rates(results, "kl", ax=ax_rate)
ax_rate.set_title("MJ-1: KL against n")
ax_scaled.errorbar(
    scaled["n"], scaled["mean"], yerr=2 * scaled["sem"], fmt="o-", capsize=3
)
ax_scaled.axhline(5.0, color="k", ls="--", label="(m J_k + v_m) / 2 = 5")
ax_scaled.set_xscale("log")
ax_scaled.set_ylim(0, 10)
ax_scaled.set_xlabel("n")
ax_scaled.set_ylabel("n × mean KL")
ax_scaled.set_title("MJ-1: n E[KL] settles at p / 2")
ax_scaled.legend()
fig.tight_layout()

# %%
# The approximation term (MJ-2)
# -----------------------------
# Now the truth is outside every mixture of experts:
# :math:`Y \mid X = x \sim N(h(x), 0.25^2)` with
# :math:`h(x) = \sin(2\pi x) + x/2` and ``x ~ U[0, 1]``. For each ``m`` and
# ``k`` the best approximation (the mixture closest to the truth in KL) is
# found by *population* EM: EM on a weighted pseudo-sample made of
# Gauss–Legendre nodes in ``x`` times quadrature nodes of the true
# conditional law in ``y`` (:func:`moestat.simulation.pseudo_sample`), which
# maximises :math:`\mathrm{E}\log p_G(Y \mid X)`, i.e. minimises
# :math:`\mathrm{KL}(p^* \,\|\, p_G)`. No sample is drawn, so there is no
# estimation error: the replications of the scenario are random restarts,
# and :func:`moestat.simulation.best_of_restarts` keeps the best.
#
# To fit the time budget of the gallery we keep ``k = 0`` with
# ``m = 1, 2, 3, 4, 6, 8, 12`` and ``k = 1`` with ``m`` up to 8 (the
# registered scenario goes to ``m = 16`` and ``k = 2``), four restarts per
# fit, 100 covariate nodes instead of 400, and stop EM at 1,000 iterations
# (the largest fits reach that cap: their KL is an upper bound on that of
# the best approximation). ``converged`` is False for them, and also for
# fits stopped earlier by the rule whose gate slopes walk out to infinity
# (a gate sharpening into a step, so that the best approximation is a
# limit, not an interior maximum).
mj2 = SCENARIOS["MJ-2"]
M_GRID = {0: (1, 2, 3, 4, 6, 8, 12), 1: (1, 2, 3, 4, 6, 8)}  # k: m
reduced = replace(
    mj2,
    fits=tuple(
        spec
        for spec in mj2.fits
        if spec.n_experts in M_GRID.get(spec.model.expert.degree, ())
    ),
    x_nodes=100,
    tol=1e-8,
    max_iter=1_000,
)
with tempfile.TemporaryDirectory() as tmp:
    simulate(reduced, tmp, n_reps=4, progress=False)
    population = load_results(tmp)

best = best_of_restarts(population, "kl")
best = best.rename(columns={"n_experts": "m", "degree": "k"})
best = best.sort_values(["k", "m"])[["k", "m", "kl", "n_iter", "converged"]]
print(best.round(5).to_string(index=False))

approx = approximation_rates(population, "kl")
print(approx.round(3).to_string())

# %%
# The KL of the best approximation against ``m`` on log-log axes, with the
# OLS line of :func:`moestat.simulation.approximation_rates` (solid) and a
# line of the theoretical slope :math:`-2(k+1)` through the same centre
# (dashed). Linear experts (``k = 1``) gain two orders of the rate over
# constant ones: already at ``m = 3`` three linear pieces follow the two
# bends of the sine, while piecewise constants need many more experts. The
# slopes over ``m <= 8`` are close to theory but uncertain: the first few
# ``m`` are not yet in the asymptotic regime (the best single linear expert
# and the best two cannot follow both bends), and the theory is a rate as
# :math:`m \to \infty`.
fig, ax = plt.subplots(figsize=(6.5, 4.5))
slopes = approx.set_index("degree")
for k, group in best.groupby("k"):
    row = slopes.loc[k]
    m, kl = group["m"].to_numpy(float), group["kl"].to_numpy(float)
    color = ax.plot(m, kl, "o", label=f"k = {k}")[0].get_color()
    grid = np.geomspace(m.min(), m.max(), 50)
    centre_x, centre_y = np.log(m).mean(), np.log(kl).mean()
    fitted = np.exp(centre_y + row["slope"] * (np.log(grid) - centre_x))
    theory = np.exp(centre_y + row["theory"] * (np.log(grid) - centre_x))
    ax.plot(
        grid,
        fitted,
        color=color,
        label=f"slope {row['slope']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]",
    )
    ax.plot(
        grid, theory, "--", color=color, alpha=0.7, label=f"theory {row['theory']:g}"
    )
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xticks(M_GRID[0], [str(m) for m in M_GRID[0]])
ax.set_xlabel("number of experts m")
ax.set_ylabel("KL of the best approximation")
ax.set_title("MJ-2: approximation error against m")
ax.legend(fontsize="small")
fig.tight_layout()

# %%
# Taken together, the two terms make the trade-off of Mendes and Jiang: at a
# fixed ``n`` the estimation term grows linearly in ``m`` while the
# approximation term falls like :math:`m^{-2(k+1)}`, so the best ``m`` grows
# with ``n`` (the MJ-3 scenario and
# :func:`moestat.simulation.tradeoff_summary`; see also the example on
# choosing ``m`` by BIC).
plt.show()
