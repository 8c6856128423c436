"""
From flexmix to moestat: a concomitant-variable model from a formula
====================================================================

In R's flexmix a mixture of regressions whose component weights depend on
other covariates is written ``flexmix(y ~ x, k = 2, concomitant =
FLXPmultinom(~ z))``. In moestat the same model is a Gaussian mixture of
experts whose softmax gate sees its own covariates: a formula for the
experts and ``gate_formula=`` for the gate.

The data are scikit-learn's diabetes data (442 patients, shipped with
scikit-learn, in their original units): disease progression a year after
baseline, regressed on body-mass index and serum triglycerides (``s5``,
log scale), with the patients' age and blood pressure deciding which
regression a patient follows. We read the fit's summary with robust
(sandwich) standard errors beside the observed-information ones, and choose
the number of experts by the parametric-bootstrap likelihood-ratio test
(flexmix users know it from mixtools' ``boot.comp``).
"""

# %%
import matplotlib.pyplot as plt
import pandas as pd
from sklearn.datasets import load_diabetes

from moestat import GaussianMoE
from moestat.plotting import plot_partial
from moestat.selection import select_model

diabetes = load_diabetes(as_frame=True, scaled=False).frame
diabetes["progression"] = diabetes.pop("target") / 100.0  # hundreds

# %%
# The model from two formulas
# ---------------------------
# ``from_formula`` builds both designs with formulaic, as statsmodels'
# ``from_formula`` does with its formulas, and fits; the terms' names are
# the parameters' names in the summary.
fit = GaussianMoE.from_formula(
    "progression ~ bmi + s5",
    diabetes,
    gate_formula="~ age + bp",
    n_experts=2,
    n_init=5,
    random_state=0,
)
print(fit.summary())

# %%
# Robust standard errors
# ----------------------
# ``inference(cov_type="robust")`` gives Huber-White sandwich standard
# errors, valid when the model is not exactly true; with a well-specified
# model they are close to the observed-information ones, and a large ratio
# flags a part of the model the data do not support well. Here the two
# agree within 30% for every parameter (ratios from 0.74, the first
# expert's variance, to 1.10): no sign of a misspecified model, and blood
# pressure, not age, moves patients between the experts whichever the
# covariance.
oim = fit.inference()
robust = fit.inference(cov_type="robust")
print(robust.summary())
ratio = pd.DataFrame({"OIM": oim.bse, "robust": robust.bse})
ratio["robust / OIM"] = ratio["robust"] / ratio["OIM"]
print(ratio.round(3).to_string())

# %%
# How many experts: the bootstrap likelihood-ratio test
# -----------------------------------------------------
# Going up from one expert, each ``m`` is tested against ``m + 1`` with
# 19 bootstrap data sets drawn from the fitted ``m``-expert model (a
# p-value of at least 1/20, the level itself; use 99 or more for a
# report). The first ``m`` not rejected at the 5% level is kept. One
# expert is rejected against two (p = 0.05: every bootstrap statistic fell
# below the observed one), two are not rejected against three (p = 0.25):
# two experts, as BIC says too (733 against 776 and 753), while AIC would
# take three.
columns = ["bmi", "s5", "age", "bp"]
template = GaussianMoE(
    gate_features=["age", "bp"],
    expert_features=["bmi", "s5"],
    n_init=1,
    random_state=0,
)
table, chosen = select_model(
    template,
    diabetes[columns],
    diabetes["progression"],
    n_experts=range(1, 4),
    criterion="bootstrap_lrt",
    n_boot=19,
    random_state=0,
    progress=False,
)
print(table.round(3).to_string())
print(f"the bootstrap test keeps {chosen.n_experts} experts")

# %%
# The fit along one covariate
# ---------------------------
# With four covariates a fit cannot be drawn against one axis;
# ``plot_partial`` draws each expert's mean and the gate along one of them,
# the others held at their medians.
axes = plot_partial(chosen, diabetes[columns], "bmi")
fig = axes[0].figure
fig.tight_layout()

plt.show()
