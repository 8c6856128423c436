"""Inference for fitted mixtures of experts: information, standard errors, tables.

The observed information is the negative Hessian of the log-likelihood at
the estimate, on the identifiable, unconstrained parametrisation the MLE
engine uses (the softmax reference row dropped, variances as
``log(nu - nu_min)``). It is computed by central finite differences of the
analytic gradient (Fisher's identity). Standard errors are reported on the
natural scale (variances, not their logarithms) by the delta method.

The covariance is the inverse information only where the information is
finite and positive definite. Directions in which it is singular (an empty
expert, an over-specified number of experts, a gate that separates) get NaN
standard errors, for the parameters that load on them only, and a
:class:`~moestat.exceptions.SingularInformationWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.stats import norm

from moestat.exceptions import SingularInformationWarning
from moestat.fit import (
    log_likelihood_and_gradient,
    pack,
    parameter_scales,
    unpack,
)
from moestat.model import Design, MixtureOfExperts

__all__ = [
    "observed_information",
    "covariance_from_information",
    "parameter_names",
    "MoEInferenceResults",
    "infer",
]


def parameter_names(model: MixtureOfExperts, design_names: tuple[list, list]) -> list:
    """Names of the packed parameters: the gate's, then the experts'.

    Parameters
    ----------
    model : MixtureOfExperts
        A model with parameter values.
    design_names : (list of str, list of str)
        Names of the gate's and the experts' design columns.

    Returns
    -------
    list of str
        One readable name per packed parameter, such as ``gate2[const]`` or
        ``expert1[x0]``, in the order of the packed vector.
    """
    m = model.params.n_experts
    gate_names, expert_names = design_names
    return model.gate.parameter_names(m, gate_names) + model.expert.parameter_names(
        m, expert_names
    )


def observed_information(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    var_floor: float = 0.0,
    relative_step: float = 1e-5,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Negative Hessian of the log-likelihood in the packed parameters.

    Central differences of the analytic gradient, step
    ``relative_step * max(|theta_j|, s_j)`` with ``s_j`` the parameter's
    typical scale; the result is symmetrised.

    Parameters
    ----------
    model : MixtureOfExperts
        Model at the estimate.
    design : Design
        Its designs on the data.
    y : ndarray of shape (n,)
        Responses.
    var_floor : float, default=0.0
        The variance floor of the parametrisation.
    relative_step : float, default=1e-5
        Relative finite-difference step.

    Returns
    -------
    theta : ndarray of shape (k,)
        The packed estimate.
    information : ndarray of shape (k, k)
    """
    m = model.params.n_experts
    shapes = (m, design.gate.shape[1], design.expert.shape[1])
    theta = pack(model, var_floor)
    steps = relative_step * np.maximum(np.abs(theta), parameter_scales(model, design))

    def gradient(point):
        candidate = model.with_params(unpack(model, point, shapes, var_floor))
        return log_likelihood_and_gradient(candidate, design, y, var_floor)[1]

    hessian = np.empty((theta.size, theta.size))
    for j, h in enumerate(steps):
        shift = np.zeros_like(theta)
        shift[j] = h
        hessian[:, j] = (gradient(theta + shift) - gradient(theta - shift)) / (2 * h)
    return theta, -0.5 * (hessian + hessian.T)


def covariance_from_information(
    information: NDArray[np.float64], rtol: float = 1e-10
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Invert the information where it is positive definite.

    Parameters
    ----------
    information : ndarray of shape (k, k)
    rtol : float, default=1e-10
        Eigenvalues below ``rtol`` times the largest count as zero.

    Returns
    -------
    covariance : ndarray of shape (k, k)
        NaN in the rows and columns of the affected parameters.
    affected : ndarray of shape (k,)
        Parameters loading on a singular (or negative) direction.
    """
    k = information.shape[0]
    if not np.all(np.isfinite(information)):
        return np.full((k, k), np.nan), np.ones(k, dtype=bool)
    eigenvalues, vectors = np.linalg.eigh(information)
    bad = eigenvalues <= rtol * max(eigenvalues.max(), 0.0)
    affected = (
        (vectors[:, bad] ** 2).sum(axis=1) > 1e-6
        if bad.any()
        else np.zeros(k, dtype=bool)
    )
    covariance = np.full((k, k), np.nan)
    keep = ~affected
    if keep.any():
        block = information[np.ix_(keep, keep)]
        values, vecs = np.linalg.eigh(block)
        if values.min() > rtol * max(values.max(), 0.0):
            covariance[np.ix_(keep, keep)] = (vecs / values) @ vecs.T
        else:
            affected[:] = True
    return covariance, affected


@dataclass
class MoEInferenceResults:
    """Estimates with their uncertainty, in the manner of statsmodels' results.

    Parameters
    ----------
    params : pandas.Series
        Estimates on the natural scale, indexed by readable names such as
        ``expert1[x0]``, ``gate2[const]``, ``expert1[variance]``.
    bse : pandas.Series
        Standard errors (NaN where the information is singular).
    covariance : pandas.DataFrame
        Covariance of the estimates on the natural scale (delta method),
        rows and columns named like ``params``; NaN in the rows and columns
        of parameters on a singular direction.
    llf : float
        Log-likelihood.
    nobs : int
        Number of observations.
    df_model : int
        Number of free parameters.
    converged : bool
        Whether the fit met its stopping rule.
    n_iter : int
        Iterations of the fit.
    info : dict
        Model description shown at the top of the summary.
    """

    params: pd.Series
    bse: pd.Series
    covariance: pd.DataFrame
    llf: float
    nobs: int
    df_model: int
    converged: bool
    n_iter: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tvalues(self) -> pd.Series:
        """Wald statistics ``params / bse``."""
        return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided p-values of the Wald statistics (normal reference)."""
        return pd.Series(2 * norm.sf(np.abs(self.tvalues)), index=self.params.index)

    @property
    def aic(self) -> float:
        """Akaike information criterion."""
        return -2 * self.llf + 2 * self.df_model

    @property
    def bic(self) -> float:
        """Bayesian information criterion."""
        return -2 * self.llf + np.log(self.nobs) * self.df_model

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald confidence intervals, columns ``0`` (lower) and ``1`` (upper).

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the coverage.

        Returns
        -------
        pandas.DataFrame
            One row per parameter, indexed like ``params``.
        """
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}.")
        z = norm.ppf(1 - alpha / 2)
        return pd.DataFrame(
            {0: self.params - z * self.bse, 1: self.params + z * self.bse}
        )

    def cov_params(self) -> pd.DataFrame:
        """Covariance of the estimates, named by parameter.

        Returns
        -------
        pandas.DataFrame of shape (n_params, n_params)
            The ``covariance`` field.
        """
        return self.covariance

    def to_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        """The summary's numbers as one table, one row per parameter.

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the coverage of the intervals.

        Returns
        -------
        pandas.DataFrame
            Columns ``coef``, ``std err``, ``z``, ``P>|z|`` and the interval
            bounds, named by their levels (``[0.025`` and ``0.975]`` for the
            default ``alpha``).
        """
        ci = self.conf_int(alpha)
        return pd.DataFrame(
            {
                "coef": self.params,
                "std err": self.bse,
                "z": self.tvalues,
                "P>|z|": self.pvalues,
                f"[{alpha / 2:g}": ci[0],
                f"{1 - alpha / 2:g}]": ci[1],
            }
        )

    def summary(self, alpha: float = 0.05):
        """A statsmodels ``Summary``: model facts, then a block per component.

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the coverage of the intervals.

        Returns
        -------
        statsmodels.iolib.summary.Summary
            Has ``as_text()``, ``as_html()`` and ``as_latex()``.
        """
        from statsmodels.iolib.summary import Summary
        from statsmodels.iolib.table import SimpleTable

        facts = [
            *self.info.items(),
            ("No. observations", self.nobs),
            ("Parameters", self.df_model),
            ("Log-likelihood", f"{self.llf:.4f}"),
            ("AIC", f"{self.aic:.4f}"),
            ("BIC", f"{self.bic:.4f}"),
            ("Converged", self.converged),
            ("Iterations", self.n_iter),
        ]
        half = (len(facts) + 1) // 2
        left, right = facts[:half], facts[half:] + [("", "")] * (2 * half - len(facts))
        rows = [
            [f"{a}:", str(b), f"{c}:" if c else "", str(d)]
            for (a, b), (c, d) in zip(left, right, strict=True)
        ]
        summary = Summary()
        summary.tables.append(
            SimpleTable(rows, title=self.info.get("Model", "Mixture of experts"))
        )
        frame = self.to_frame(alpha)
        blocks = frame.index.str.extract(r"^([^\[]+)", expand=False).fillna("other")
        for block in dict.fromkeys(blocks):
            part = frame[blocks == block]
            stubs = [name[len(block) :].strip("[]") or name for name in part.index]
            data = [
                [_fmt(v) for v in row]
                for row in part.itertuples(index=False, name=None)
            ]
            summary.tables.append(
                SimpleTable(data, headers=list(part.columns), stubs=stubs, title=block)
            )
        return summary

    def __repr__(self) -> str:
        return (
            f"<MoEInferenceResults: {len(self.params)} parameters, llf={self.llf:.4f}>"
        )


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "nan"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def infer(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    design_names: tuple[list, list],
    *,
    var_floor: float = 0.0,
    df_model: int,
    converged: bool,
    n_iter: int,
    info: dict[str, Any] | None = None,
) -> MoEInferenceResults:
    """Observed information, covariance and the results object for a fit.

    Parameters
    ----------
    model : MixtureOfExperts
        Fitted model.
    design : Design
        Its designs on the training data.
    y : ndarray of shape (n,)
        Training responses (class codes for classifiers).
    design_names : (list of str, list of str)
        Names of the gate's and the experts' design columns.
    var_floor : float
        The variance floor of the fit.
    df_model : int
        Free parameters of the model (for AIC and BIC).
    converged, n_iter
        From the fit.
    info : dict, optional
        Model facts for the summary header.

    Returns
    -------
    MoEInferenceResults
    """
    theta, information = observed_information(model, design, y, var_floor)
    covariance, affected = covariance_from_information(information)
    if affected.any():
        names = np.array(parameter_names(model, design_names))[affected]
        warnings.warn(
            "The observed information is singular in the direction of "
            f"{names.tolist()[:8]}{' ...' if len(names) > 8 else ''}: their "
            "standard errors are NaN (an empty or duplicated expert, more experts "
            "than the data support, or a separated gate).",
            SingularInformationWarning,
            stacklevel=3,
        )
    m = model.params.n_experts
    k_gate = model.gate.n_free_parameters(m, design.gate.shape[1])
    values, jacobian = theta.copy(), np.ones_like(theta)
    expert_values, expert_jacobian = model.expert.natural(theta[k_gate:], m, var_floor)
    values[k_gate:], jacobian[k_gate:] = expert_values, expert_jacobian
    covariance = covariance * jacobian[:, None] * jacobian[None, :]
    index = pd.Index(parameter_names(model, design_names), name="parameter")
    bse = np.sqrt(np.where(np.diag(covariance) >= 0, np.diag(covariance), np.nan))
    ll = log_likelihood_and_gradient(model, design, y, var_floor)[0]
    return MoEInferenceResults(
        params=pd.Series(values, index=index, name="coef"),
        bse=pd.Series(bse, index=index, name="std err"),
        covariance=pd.DataFrame(covariance, index=index, columns=index),
        llf=ll,
        nobs=len(y),
        df_model=df_model,
        converged=converged,
        n_iter=n_iter,
        info=dict(info or {}),
    )
