"""A gate and an expert family written outside moestat, on the protocols alone.

Neither class derives from a moestat class: they have the hooks of
:class:`moestat.protocols.Gate` and :class:`moestat.protocols.ExpertFamily`
and nothing else, as a user's pieces would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp


@dataclass(frozen=True)
class ProportionParams:
    """Logits of constant mixing proportions, the first fixed at zero."""

    logits: np.ndarray

    @property
    def n_experts(self) -> int:
        return len(self.logits)


@dataclass(frozen=True)
class ConstantGate:
    """Mixing proportions that do not depend on x (a mixture of regressions)."""

    name: ClassVar[str] = "constant"

    def design(self, X):
        return np.ones((X.shape[0], 1))

    def design_names(self, feature_names):
        return ["const"]

    def describe(self):
        return "constant proportions"

    def log_weights(self, params, Z):
        log_pi = params.logits - logsumexp(params.logits)
        return np.asfortranarray(np.tile(log_pi, (Z.shape[0], 1)))

    def sufficient_features(self, Z):
        return None

    def _fit(self, resp):
        mass = np.maximum(resp.sum(axis=0), 1e-300)
        return ProportionParams(np.log(mass) - np.log(mass[0]))

    def init_params(self, Z, resp):
        return self._fit(resp)

    def m_step(
        self,
        params,
        Z,
        resp,
        log_weights=None,
        features=None,
        log_f=None,
        log_background=None,
    ):
        new = self._fit(resp)
        return new, self.log_weights(new, Z)

    def gradient(self, params, Z, resp, log_weights):
        pi = np.exp(params.logits - logsumexp(params.logits))
        return (resp.sum(axis=0) - resp.sum() * pi)[1:]

    def penalty(self, params, Z):
        return 0.0

    def pack(self, params):
        return params.logits[1:].copy()

    def unpack(self, theta, n_experts, n_design):
        return ProportionParams(np.concatenate([[0.0], theta]))

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
        return ProportionParams(logits - logits[0])

    def permute(self, params, perm):
        logits = params.logits[np.asarray(perm)]
        return ProportionParams(logits - logits[0])

    def expert_groups(self, n_experts):
        return np.zeros(n_experts, dtype=np.intp)

    def check_n_experts(self, n_experts, for_fit=True):
        pass

    def check_params(self, params, n_experts, n_design):
        if not isinstance(params, ProportionParams) or params.logits.shape != (
            n_experts,
        ):
            raise ValueError(f"expected {n_experts} logits; got {params!r}.")
        if params.logits[0] != 0:
            raise ValueError("the first logit is fixed at zero.")

    def parameter_names(self, n_experts, design_names, offset=0):
        return [f"gate{i + 1 + offset}[const]" for i in range(1, n_experts)]


@dataclass(frozen=True)
class LocationParams:
    """Means of unit-variance Gaussian experts."""

    loc: np.ndarray

    @property
    def n_experts(self) -> int:
        return len(self.loc)


@dataclass(frozen=True)
class UnitGaussianExpert:
    """Gaussian experts ``N(mu_i, 1)`` whose means do not depend on x."""

    name: ClassVar[str] = "unit_gaussian"
    response_family: ClassVar[str] = "gaussian"
    voronoi_signature: ClassVar[Any] = None

    def design(self, X):
        return np.ones((X.shape[0], 1))

    def design_names(self, feature_names):
        return ["const"]

    def mean(self, params, Phi):
        return np.asfortranarray(np.tile(params.loc, (Phi.shape[0], 1)))

    def log_density(self, params, Phi, y):
        resid = y[:, None] - self.mean(params, Phi)
        return -0.5 * (np.log(2 * np.pi) + resid**2)

    def sample(self, params, Phi, labels, rng):
        return params.loc[labels] + rng.standard_normal(Phi.shape[0])

    def sufficient_features(self, Phi, y):
        return None

    def m_step(self, Phi, y, resp, var_floor, previous=None, features=None):
        weight = resp.sum(axis=0)
        loc = (resp.T @ y) / np.maximum(weight, 1e-300)
        if previous is not None:
            loc = np.where(weight > 1e-10, loc, previous.loc)
        return LocationParams(loc)

    def gradient(self, params, Phi, y, resp, var_floor):
        return (resp * (y[:, None] - params.loc)).sum(axis=0)

    def penalty(self, params, Phi):
        return 0.0

    def check_response(self, y):
        pass

    def pack(self, params, var_floor):
        return params.loc.copy()

    def unpack(self, theta, n_experts, n_design, var_floor):
        return LocationParams(np.array(theta, dtype=float))

    def pack_scales(self, column_scales, n_experts):
        return np.ones(n_experts)

    def pack_bounds(self, n_experts, n_design):
        return np.full(n_experts, -np.inf), np.full(n_experts, np.inf)

    def n_free_parameters(self, n_experts, n_design):
        return n_experts

    def variance_floor(self, y, reg_var):
        return 0.0

    def at_variance_floor(self, params, var_floor):
        return np.array([], dtype=np.intp)

    def natural(self, theta, n_experts, var_floor):
        return theta.copy(), np.ones_like(theta)

    def permute(self, params, perm):
        return LocationParams(params.loc[np.asarray(perm)])

    def check_params(self, params, n_experts, n_design):
        if not isinstance(params, LocationParams) or params.loc.shape != (n_experts,):
            raise ValueError(f"expected {n_experts} means; got {params!r}.")

    def parameter_names(self, n_experts, design_names, offset=0):
        return [f"expert{i + 1 + offset}[mean]" for i in range(n_experts)]
