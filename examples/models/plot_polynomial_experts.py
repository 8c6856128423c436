"""
Polynomial experts and choosing their order k
=============================================

A mixture of experts can follow a curved regression function in two ways:
with more experts, each a simple (linear) piece, or with fewer, richer
experts whose means are polynomials of order :math:`k`. We simulate from a
mixture of two quadratic Gaussian experts, fit
:class:`moestat.PolynomialMoE` over a grid of numbers of experts and orders
with :func:`moestat.select_model`, and compare the fit BIC chooses with an
under-fitted linear one.
"""

# %%
# Two quadratic experts
# ---------------------
# :math:`p(y \mid x) = g_1(x)\, N(y \mid 1 + 2x - 3x^2, 0.05) + g_2(x)\,
# N(y \mid -1 - x + 2.5x^2, 0.05)`, with the softmax gate
# :math:`g_2(x) = 1 / (1 + e^{-6x})` handing the right half of
# :math:`[-1, 1]` to the second expert.
import matplotlib.pyplot as plt
import numpy as np

from moestat import (
    GateParams,
    GaussianExpertParams,
    MoEParams,
    PolynomialMoE,
    select_model,
)
from moestat.datasets import make_moe_regression
from moestat.plotting import plot_fit, plot_selection

true_params = MoEParams(
    GateParams(np.array([[0.0, 0.0], [0.0, 6.0]])),
    GaussianExpertParams(
        np.array([[1.0, 2.0, -3.0], [-1.0, -1.0, 2.5]]), np.array([0.05, 0.05])
    ),
)
X, y, truth = make_moe_regression(
    n_samples=1000, degree=2, params=true_params, random_state=4
)

# %%
# A grid of numbers of experts and orders
# ---------------------------------------
# Every pair :math:`(m, k)` with :math:`m \le 4` experts and order
# :math:`k \le 3` is fitted (3 restarts each) and scored by
# :math:`\mathrm{BIC} = -2 \log L + p \log n`, where :math:`p` counts the
# free parameters: :math:`2(m - 1)` for the gate and :math:`k + 2` (the
# coefficients and the variance) for each expert.
template = PolynomialMoE(n_init=3, random_state=0)
table, best = select_model(
    template,
    X,
    y,
    n_experts=range(1, 5),
    degree=range(0, 4),
    criterion="bic",
    progress=False,
)
print(table.round(3).to_string())
print(f"BIC chooses m = {best.n_experts} experts of order k = {best.degree}")

# %%
# The criterion over the grid
# ---------------------------
# One line per order. Constant and linear experts (:math:`k = 0, 1`) need
# ever more experts to follow the two parabolas, and still fit far worse
# than two quadratic ones; cubic experts fit as well as quadratic ones but
# pay for coefficients the data do not need.
fig, ax = plt.subplots(figsize=(6, 4))
plot_selection(table, ax=ax)
ax.set_yscale("log")
ax.set_xticks(range(1, 5))
fig.tight_layout()

# %%
# The chosen fit beside an under-fitted one
# -----------------------------------------
# Two linear experts (right) must split the data by their straight lines:
# each expert's line is a compromise over a curved stretch of data, and
# the residual curvature inflates the variances. The chosen quadratic
# experts (left) follow the truth (dashed).
linear = PolynomialMoE(n_experts=2, degree=1, n_init=3, random_state=0).fit(X, y)
print("fitted variances, k = 2:", np.round(best.expert_var_, 3))
print("fitted variances, k = 1:", np.round(linear.expert_var_, 3))

fig, (ax_best, ax_linear) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
plot_fit(best, X, y, truth=truth, ax=ax_best)
ax_best.set_title(f"m = {best.n_experts}, k = {best.degree} (BIC's choice)")
plot_fit(linear, X, y, truth=truth, ax=ax_linear)
ax_linear.set_title("m = 2, k = 1")
fig.tight_layout()

# %%
# More experts or richer experts?
# -------------------------------
# Mendes and Jiang (2012) bound the Kullback-Leibler risk of the maximum
# likelihood fit with :math:`m` experts of order :math:`k` by two terms,
#
# .. math::
#
#    \mathrm{KL} \lesssim C_a\, m^{-2\lambda/s}
#    + C_e\, (m J_k + v_m) \frac{\log n}{n}, \qquad
#    \lambda = \min(\alpha, k + 1),
#
# for a truth of smoothness :math:`\alpha` in :math:`s` covariates, with
# :math:`J_k` coefficients per expert and :math:`v_m` gate parameters. The
# approximation term falls faster in :math:`m` the higher the order (up to
# the smoothness of the truth), while every parameter costs
# :math:`\log n / n`: for a smooth regression function a few richer experts
# beat many linear ones with the same number of parameters. Here the truth
# lies in the model at :math:`(m, k) = (2, 2)`, so its approximation term is
# zero there and BIC, which charges :math:`\log n` per parameter like the
# estimation term, finds it; linear experts would need many more pieces to
# follow the parabolas.

plt.show()
