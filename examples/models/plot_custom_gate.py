"""
A gate of your own: a mixture of regressions with constant proportions
======================================================================

A gate is any object with the hooks of :class:`moestat.protocols.Gate`: a
design, log weights, an M-step, a gradient, and the packing of its free
parameters. Here we write one that moestat does not have, the gate of a
finite mixture of linear regressions (the default model of R's flexmix),
whose mixing proportions :math:`\\pi_i` do not depend on :math:`x`. We check
it with :func:`moestat.utils.check_gate`, simulate data with it, fit it with
:class:`moestat.MixtureOfExpertsRegressor`, read standard errors from the
observed information, and compare them with the spread of estimates over
data sets simulated from the fit (a parametric bootstrap).
"""

# %%
# The gate
# --------
# The parameters are the logits :math:`\log(\pi_i / \pi_1)`, the first fixed at
# zero, kept as an :math:`(m, 1)` column ``coef`` like the intercepts of the
# built-in gates' :class:`~moestat.GateParams`. Given responsibilities
# :math:`r_{ti}` the M-step is exact, :math:`\pi_i \propto \sum_t r_{ti}`, and
# the gradient of
# :math:`\sum_t \sum_i r_{ti} \log \pi_i` in the free logits is
# :math:`\sum_t r_{ti} - \pi_i \sum_t \sum_j r_{tj}`. The design is a column of
# ones: the weights do not look at :math:`x`.
from dataclasses import dataclass
from typing import ClassVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.special import logsumexp
from sklearn.base import clone

from moestat import (
    GaussianExpert,
    GaussianExpertParams,
    MixtureOfExpertsRegressor,
    MoEParams,
)
from moestat.datasets import make_moe_regression
from moestat.protocols import Gate
from moestat.utils import check_gate


@dataclass(frozen=True)
class ProportionParams:
    """Logits of the mixing proportions as an (m, 1) column, the first 0."""

    coef: np.ndarray

    @property
    def n_experts(self) -> int:
        return self.coef.shape[0]

    @property
    def logits(self) -> np.ndarray:
        return self.coef[:, 0]


@dataclass(frozen=True)
class ConstantGate:
    """Mixing proportions that do not depend on x."""

    name: ClassVar[str] = "constant"

    # -- design and weights
    def design(self, X):
        return np.ones((X.shape[0], 1))

    def design_names(self, feature_names):
        return ["const"]

    def describe(self):
        return "constant proportions"

    def log_weights(self, params, Z):
        log_pi = params.logits - logsumexp(params.logits)
        return np.asfortranarray(np.tile(log_pi, (Z.shape[0], 1)))

    # -- fitting
    def sufficient_features(self, Z):
        return None

    def _proportions_of(self, resp):
        mass = np.maximum(resp.sum(axis=0), 1e-300)
        return ProportionParams((np.log(mass) - np.log(mass[0]))[:, None])

    def init_params(self, Z, resp):
        return self._proportions_of(resp)

    def m_step(self, params, Z, resp, log_weights=None, features=None, *more):
        new = self._proportions_of(resp)
        return new, self.log_weights(new, Z)

    def gradient(self, params, Z, resp, log_weights):
        pi = np.exp(params.logits - logsumexp(params.logits))
        return (resp.sum(axis=0) - resp.sum() * pi)[1:]

    def penalty(self, params, Z):
        return 0.0

    # -- parametrisation
    def pack(self, params):
        return params.logits[1:].copy()

    def unpack(self, theta, n_experts, n_design):
        return ProportionParams(np.concatenate([[0.0], theta])[:, None])

    def pack_scales(self, column_scales, n_experts):
        return np.ones(n_experts - 1)

    def pack_bounds(self, n_experts, n_design):
        return np.full(n_experts - 1, -np.inf), np.full(n_experts - 1, np.inf)

    def n_free_parameters(self, n_experts, n_design):
        return n_experts - 1

    def degrees_of_freedom(self, n_experts, n_design):
        return n_experts - 1

    def random_params(self, n_experts, n_design, scale, rng):
        logits = rng.normal(0.0, scale, size=n_experts)
        return ProportionParams((logits - logits[0])[:, None])

    def permute(self, params, perm):
        logits = params.logits[np.asarray(perm)]
        return ProportionParams((logits - logits[0])[:, None])

    def expert_groups(self, n_experts):
        return np.zeros(n_experts, dtype=np.intp)

    def check_n_experts(self, n_experts, for_fit=True):
        pass

    def check_params(self, params, n_experts, n_design):
        if not isinstance(params, ProportionParams) or params.coef.shape != (
            n_experts,
            1,
        ):
            raise ValueError(f"expected ProportionParams of {n_experts} logits")
        if params.logits[0] != 0:
            raise ValueError("the first logit is fixed at zero")

    def parameter_names(self, n_experts, design_names, offset=0):
        return [f"gate{i + 1 + offset}[const]" for i in range(1, n_experts)]


gate = ConstantGate()
assert isinstance(gate, Gate)

# %%
# The conformance check
# ---------------------
# :func:`~moestat.utils.check_gate` runs the gate on simulated covariates:
# shapes, weights summing to one, the pack/unpack round trip, the gradient
# against finite differences, an M-step that never lowers its objective,
# relabelling. It raises an ``AssertionError`` naming the first rule broken.
check_gate(gate)
print("ConstantGate passes moestat.utils.check_gate")

# %%
# Simulated data
# --------------
# Two linear experts, :math:`N(y \mid 1 + 2x, 0.09)` with proportion 0.6 and
# :math:`N(y \mid -0.5 - x, 0.09)` with 0.4: the data generators take the gate
# like any built-in one.
true_params = MoEParams(
    ProportionParams(np.array([[0.0], [np.log(0.4 / 0.6)]])),
    GaussianExpertParams(np.array([[1.0, 2.0], [-0.5, -1.0]]), np.full(2, 0.09)),
)
X, y, truth = make_moe_regression(
    n_samples=600, gate=gate, params=true_params, random_state=0
)

# %%
# Fit and standard errors
# -----------------------
# :class:`moestat.MixtureOfExpertsRegressor` takes any gate object and any
# expert family; its engines call only their hooks. EM runs to a tight
# tolerance, since it moves the proportions slowly where the experts
# overlap. The summary's standard errors come from the observed information.
est = MixtureOfExpertsRegressor(
    2, gate=gate, expert=GaussianExpert(), tol=1e-10, random_state=0
).fit(X, y)
est.align_to(truth)
print(est.summary())

# %%
# A parametric bootstrap
# ----------------------
# A hundred data sets of the same size drawn from the fitted model by the
# data generator, each fitted from the fitted parameters (the truth of the
# bootstrap): the spread of the estimates should match the standard errors.
fitted = est.model_
estimates = []
for replicate in range(100):
    X_star, y_star, _ = make_moe_regression(
        n_samples=len(y), gate=gate, params=est.params_, random_state=replicate
    )
    refit = clone(est).set_params(n_init=1, init=est.params_).fit(X_star, y_star)
    params = refit.align_to(fitted).params_
    estimates.append(
        np.concatenate(
            [params.gate.logits[1:], params.expert.coef.ravel(), params.expert.var]
        )
    )
estimates = np.array(estimates)
frame = est.inference().to_frame()
comparison = pd.DataFrame(
    {"std err": frame["std err"], "bootstrap sd": estimates.std(axis=0, ddof=1)},
    index=frame.index,
)
print(comparison.round(3))

# %%
# The fit and the bootstrap
# -------------------------
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
grid = np.linspace(-1, 1, 50)[:, None]
left.scatter(X[:, 0], y, s=6, color="0.6")
for i, colour in enumerate(["C0", "C1"]):
    share = fitted.gate_weights(grid[:1])[0, i]
    label = f"expert {i + 1} ({share:.0%})"
    left.plot(grid, fitted.expert_means(grid)[:, i], colour, label=label)
    left.plot(grid, truth.expert_means(grid)[:, i], colour, ls="--", lw=1)
left.set(xlabel="x", ylabel="y", title="Fitted experts (dashed: truth)")
left.legend()
positions = np.arange(len(comparison))
right.bar(positions - 0.2, comparison["std err"], 0.4, label="standard error")
right.bar(positions + 0.2, comparison["bootstrap sd"], 0.4, label="bootstrap sd")
right.set_xticks(positions, comparison.index, rotation=60, ha="right", fontsize=8)
right.set(title="Standard errors against the bootstrap")
right.legend()
fig.tight_layout()
