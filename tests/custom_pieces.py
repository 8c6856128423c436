"""Gates and an expert family written outside moestat, on the protocols alone.

No class derives from a moestat class: they have the hooks of
:class:`moestat.protocols.Gate` and :class:`moestat.protocols.ExpertFamily`
(and a declaration of :class:`moestat.protocols.SweepGate`), as a user's
pieces would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from moestat import GateParams


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
class LogisticGate:
    """A multinomial logistic gate written by hand, declaring the softmax sweep.

    ``g = softmax(beta [1, x])`` with the first row of ``beta`` the zero
    reference; its M-step is one Fisher-scoring step, halved until
    ``sum r log g`` does not fall. It declares ``sweep_kernel = "softmax"``,
    so the chunked path of ``em`` fits it.
    """

    name: ClassVar[str] = "logistic"
    sweep_kernel: ClassVar[str] = "softmax"

    def design(self, X):
        return np.column_stack([np.ones(X.shape[0]), X])

    def design_names(self, feature_names):
        return ["const", *feature_names]

    def describe(self):
        return "hand-written logistic gate"

    def log_weights(self, params, Z):
        scores = Z @ params.coef.T
        return scores - logsumexp(scores, axis=1, keepdims=True)

    def sufficient_features(self, Z):
        return None

    def _objective(self, params, Z, resp):
        return float(np.sum(resp * self.log_weights(params, Z)))

    def _information(self, params, Z, resp, log_weights):
        """``sum_t rho_t g_ti (delta_ij - g_tj) z_t z_t^T`` over the free rows."""
        g = np.exp(log_weights)[:, 1:]
        rho = resp.sum(axis=1)
        k, p = g.shape[1], Z.shape[1]
        pair = rho[:, None, None] * (
            g[:, :, None] * np.eye(k) - g[:, :, None] * g[:, None, :]
        )
        return np.einsum("tij,ta,tb->iajb", pair, Z, Z).reshape(k * p, k * p)

    def _fisher_step(self, params, Z, resp, log_weights):
        grad = self.gradient(params, Z, resp, log_weights)
        info = self._information(params, Z, resp, log_weights)
        # equilibrated, with a 1e-9 ridge
        scale = 1.0 / np.sqrt(np.diag(info))
        system = info * np.outer(scale, scale) + 1e-9 * np.eye(len(grad))
        step = scale * np.linalg.solve(system, grad * scale)
        if not grad @ step > 1e-14 * Z.shape[0]:
            return params
        before = self._objective(params, Z, resp)
        size = 1.0
        for _ in range(12):
            coef = params.coef.copy()
            coef[1:] += size * step.reshape(coef.shape[0] - 1, -1)
            candidate = GateParams(coef)
            if self._objective(candidate, Z, resp) >= before:
                return candidate
            size *= 0.5
        return params

    def init_params(self, Z, resp):
        params = GateParams(np.zeros((resp.shape[1], Z.shape[1])))
        for _ in range(10):
            params = self._fisher_step(params, Z, resp, self.log_weights(params, Z))
        return params

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
        if log_weights is None:
            log_weights = self.log_weights(params, Z)
        new = self._fisher_step(params, Z, resp, log_weights)
        return new, self.log_weights(new, Z)

    def gradient(self, params, Z, resp, log_weights):
        g = np.exp(log_weights)
        rho = resp.sum(axis=1, keepdims=True)
        return ((resp - rho * g)[:, 1:].T @ Z).ravel()

    def penalty(self, params, Z):
        return 0.0

    def pack(self, params):
        return params.coef[1:].ravel().copy()

    def unpack(self, theta, n_experts, n_design):
        coef = np.zeros((n_experts, n_design))
        coef[1:] = np.reshape(theta, (n_experts - 1, n_design))
        return GateParams(coef)

    def pack_scales(self, column_scales, n_experts):
        return np.tile(column_scales, n_experts - 1)

    def pack_bounds(self, n_experts, n_design):
        size = (n_experts - 1) * n_design
        return np.full(size, -np.inf), np.full(size, np.inf)

    def n_free_parameters(self, n_experts, n_design):
        return (n_experts - 1) * n_design

    def degrees_of_freedom(self, n_experts, n_design):
        return (n_experts - 1) * n_design

    def random_params(self, n_experts, n_design, scale, rng):
        coef = rng.normal(0.0, scale, size=(n_experts, n_design))
        return GateParams(coef - coef[0])

    def permute(self, params, perm):
        coef = params.coef[np.asarray(perm)]
        return GateParams(coef - coef[0])

    def expert_groups(self, n_experts):
        return np.zeros(n_experts, dtype=np.intp)

    def check_n_experts(self, n_experts, for_fit=True):
        pass

    def check_params(self, params, n_experts, n_design):
        if not isinstance(params, GateParams) or params.coef.shape != (
            n_experts,
            n_design,
        ):
            raise ValueError(f"expected a ({n_experts}, {n_design}) coef.")
        if np.any(params.coef[0] != 0):
            raise ValueError("the first row is fixed at zero.")

    def parameter_names(self, n_experts, design_names, offset=0):
        return [
            f"gate{i + 1 + offset}[{name}]"
            for i in range(1, n_experts)
            for name in design_names
        ]


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
