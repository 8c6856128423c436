"""Inference for fitted mixtures of experts: information, standard errors, tables.

The observed information is the negative Hessian of the log-likelihood at
the estimate, on the identifiable, unconstrained parametrisation the MLE
engine uses (the softmax reference row dropped, variances as
``log(nu - nu_min)``). It is computed by central finite differences of the
analytic gradient (Fisher's identity). Standard errors are reported on the
natural scale (variances, not their logarithms) by the delta method.

The computation does not depend on units. The information is analysed and
inverted in scaled coordinates, each parameter measured in units of
``1 / sqrt(I_jj)`` (Jacobi equilibration: the scaled information has a unit
diagonal whatever the units of the covariates and of ``y``), and the
covariance is transformed back; the finite-difference steps are kept below
a fixed fraction of the same units. A change of units of a covariate or of
``y`` therefore rescales each standard error by the factor that rescales its
parameter and leaves every z statistic as it was.

The covariance is the inverse information only where the information is
finite and positive definite in scaled coordinates. Directions in which it
is singular get NaN standard errors, for the parameters that load on them
only, and a :class:`~moestat.exceptions.SingularInformationWarning` that
names the cause where it can be told: an empty expert, two experts that
duplicate each other, a gate that separates, or an estimate that is not a
maximum.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats

from moestat._progress import progress_bar
from moestat._validation import as_generator
from moestat.exceptions import ConvergenceWarning, SingularInformationWarning
from moestat.fit import (
    fit_restarts,
    log_likelihood_and_gradient,
    pack,
    parameter_scales,
    penalty,
    unpack,
)
from moestat.model import (
    Design,
    MixtureOfExperts,
    log_joint,
    responsibilities_from_log_joint,
)

__all__ = [
    "observed_information",
    "covariance_from_information",
    "sample_scores",
    "sandwich_covariance",
    "bootstrap_estimates",
    "parameter_names",
    "linear_constraint",
    "MoEInferenceResults",
    "infer",
]

# An expert whose total responsibility is below one observation per packed
# parameter is empty.
_EMPTY_PER_PARAMETER = 1.0
# Experts whose packed parameters all lie within this many conditional
# standard errors ``1 / sqrt(I_jj)`` of each other duplicate each other.
_DUPLICATE_DISTANCE = 3.0
# A gate whose log-odds between two experts change by more than this over
# one standard deviation of a covariate separates them.
_SEPARATING_SLOPE = 20.0
# A scaled eigenvalue below minus this is negative curvature, not noise.
_NEGATIVE_CURVATURE = 1e-6
# Rounds of shortening a finite-difference step that is too long.
_SHORTENINGS = 10
_NAME = re.compile(r"^(gate|expert)(\d+)\[(.*)\]$")
#: The covariances ``infer`` computes.
COV_TYPES = ("oim", "robust", "bootstrap")
#: How :func:`bootstrap_estimates` draws its data sets.
BOOTSTRAP_KINDS = ("nonparametric", "parametric")
_REFIT_DEFAULTS = {"solver": "em", "tol": 1e-6, "max_iter": 1000, "polish": False}


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


# -- the observed information ---------------------------------------------------


def _difference_columns(evaluate, theta, steps, columns, at_theta):
    """Central differences of the gradient along the given coordinates.

    Also returns, per coordinate, the drop of the log-likelihood from
    ``theta`` to the two points, ``l(theta) - (l(theta + h) + l(theta - h)) / 2``,
    about ``I_jj h^2 / 2``: a unit-free measure of the step's length.
    """
    out = np.empty((theta.size, len(columns)))
    drops = np.empty(len(columns))
    for i, j in enumerate(columns):
        shift = np.zeros_like(theta)
        shift[j] = steps[j]
        up, up_gradient = evaluate(theta + shift)
        down, down_gradient = evaluate(theta - shift)
        out[:, i] = (up_gradient - down_gradient) / (2 * steps[j])
        drops[i] = at_theta - 0.5 * (up + down)
    return out, drops


def _shorter_steps(steps, drops, scaled_step):
    """Steps of ``scaled_step / 10`` conditional standard errors, from the drops."""
    length = np.sqrt(2 * np.maximum(drops, 0.0))
    factor = np.where(np.isfinite(length), 0.1 * scaled_step / length, 1e-3)
    return steps * factor


def observed_information(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    var_floor: float = 0.0,
    relative_step: float = 1e-5,
    *,
    scaled_step: float | None = 1e-2,
    sample_weight: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Negative Hessian of the log-likelihood in the packed parameters.

    Central differences of the analytic gradient, first with the step
    ``relative_step * max(|theta_j|, s_j)``, ``s_j`` the parameter's typical
    scale (from its design column). A step's length in conditional standard
    errors ``1 / sqrt(I_jj)`` is read off the drop of the log-likelihood
    along it, which does not depend on units; a step longer than
    ``scaled_step`` of them (as when ``y`` is measured in small units) is
    shortened to a tenth of that and the column differenced again. The
    result is symmetrised.

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
        Relative finite-difference step of the first pass.
    scaled_step : float or None, default=1e-2
        Longest step kept, in conditional standard errors; None keeps the
        first pass's steps whatever their length.
    sample_weight : ndarray of shape (n,), optional
        Weights of the samples: the information of the weighted
        log-likelihood ``sum_t w_t log p(y_t | x_t)`` (with integer weights,
        that of the data with each row repeated ``w_t`` times).

    Returns
    -------
    theta : ndarray of shape (k,)
        The packed estimate.
    information : ndarray of shape (k, k)
    """
    theta, information, _ = _information_and_steps(
        model,
        design,
        y,
        var_floor,
        relative_step,
        scaled_step=scaled_step,
        sample_weight=sample_weight,
    )
    return theta, information


def _information_and_steps(
    model, design, y, var_floor, relative_step=1e-5, *, scaled_step, sample_weight
):
    """:func:`observed_information` and the finite-difference steps it kept."""
    m = model.params.n_experts
    shapes = (m, design.gate.shape[1], design.expert.shape[1])
    theta = pack(model, var_floor)
    scales = parameter_scales(model, design, sample_weight)
    steps = relative_step * np.maximum(np.abs(theta), scales)

    def evaluate(point):
        candidate = model.with_params(unpack(model, point, shapes, var_floor))
        return log_likelihood_and_gradient(
            candidate, design, y, var_floor, sample_weight
        )

    at_theta = evaluate(theta)[0]
    columns = np.arange(theta.size)
    hessian, drops = _difference_columns(evaluate, theta, steps, columns, at_theta)
    for _ in range(_SHORTENINGS if scaled_step is not None else 0):
        redo = np.flatnonzero(~(np.sqrt(2 * np.maximum(drops, 0.0)) <= scaled_step))
        if not redo.size:
            break
        steps[redo] = _shorter_steps(steps[redo], drops[redo], scaled_step)
        hessian[:, redo], drops[redo] = _difference_columns(
            evaluate, theta, steps, redo, at_theta
        )
    return theta, -0.5 * (hessian + hessian.T), steps


# -- its inverse, in scaled coordinates --------------------------------------
def _scaled(information):
    """Jacobi equilibration ``D I D``, ``D = diag(1 / sqrt(I_jj))``.

    Coordinates with a non-positive diagonal get ``D_jj = 0``.
    """
    diagonal = np.diag(information)
    scale = np.zeros_like(diagonal)
    positive = diagonal > 0
    scale[positive] = 1.0 / np.sqrt(diagonal[positive])
    return information * scale[:, None] * scale[None, :], scale


def _singular_directions(scaled, usable, rtol):
    """Scaled eigenvalues, and the coordinates loading on the singular ones."""
    k = scaled.shape[0]
    affected = ~usable
    index = np.flatnonzero(usable)
    if not index.size:
        return np.array([]), affected
    values, vectors = np.linalg.eigh(scaled[np.ix_(index, index)])
    bad = values <= rtol * max(values.max(), 0.0)
    if bad.any():
        loads = np.zeros(k, dtype=bool)
        loads[index] = (vectors[:, bad] ** 2).sum(axis=1) > 1e-6
        affected = affected | loads
    return values, affected


def covariance_from_information(
    information: NDArray[np.float64], rtol: float = 1e-10
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Invert the information where it is positive definite.

    The information is first scaled to a unit diagonal (each parameter
    measured in units of ``1 / sqrt(I_jj)``); singular directions are found
    and the inverse is taken in these coordinates and transformed back. The
    result is equivariant under any rescaling of the parameters: with
    ``I' = U^-1 I U^-1`` for a positive diagonal ``U`` the covariance is
    ``U C U`` and the same parameters are affected.

    Parameters
    ----------
    information : ndarray of shape (k, k)
    rtol : float, default=1e-10
        Eigenvalues of the scaled information below ``rtol`` times the
        largest count as zero.

    Returns
    -------
    covariance : ndarray of shape (k, k)
        NaN in the rows and columns of the affected parameters.
    affected : ndarray of shape (k,)
        Parameters with no positive information of their own or loading on a
        singular (or negative) direction of the scaled information.
    """
    k = information.shape[0]
    if not np.all(np.isfinite(information)):
        return np.full((k, k), np.nan), np.ones(k, dtype=bool)
    scaled, scale = _scaled(information)
    _, affected = _singular_directions(scaled, scale > 0, rtol)
    covariance = np.full((k, k), np.nan)
    keep = ~affected
    if keep.any():
        values, vectors = np.linalg.eigh(scaled[np.ix_(keep, keep)])
        if values.min() > rtol * max(values.max(), 0.0):
            inverse = (vectors / values) @ vectors.T
            covariance[np.ix_(keep, keep)] = (
                inverse * scale[keep, None] * scale[None, keep]
            )
        else:
            affected[:] = True
    return covariance, affected


# -- the sandwich ------------------------------------------------------------------
def _sample_log_likelihoods(model, design, y):
    """``log p(y_t | x_t)`` of every sample, shape (n,)."""
    values = log_joint(model.gate, model.expert, model.params, design, y)
    return responsibilities_from_log_joint(values)[1]


def sample_scores(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    var_floor: float = 0.0,
    steps: NDArray[np.float64] | None = None,
    *,
    sample_weight: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Per-sample scores: gradients of ``log p(y_t | x_t)`` in the packed parameters.

    Central differences of the per-sample log-likelihoods along each
    packed coordinate, with the steps of :func:`observed_information` (a
    fixed fraction of each parameter's conditional standard error, so the
    scores do not depend on units).

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
    steps : ndarray of shape (k,), optional
        Finite-difference steps; by default ``1e-5`` times each packed
        parameter's size or typical scale.
    sample_weight : ndarray of shape (n,), optional
        Weights: row ``t`` of the result is ``w_t`` times its score, the
        score of the weighted log-likelihood's ``t``-th term.

    Returns
    -------
    ndarray of shape (n, k)
        Their sum over the rows is the gradient of the (weighted)
        log-likelihood.
    """
    m = model.params.n_experts
    shapes = (m, design.gate.shape[1], design.expert.shape[1])
    theta = pack(model, var_floor)
    if steps is None:
        scales = parameter_scales(model, design, sample_weight)
        steps = 1e-5 * np.maximum(np.abs(theta), scales)
    scores = np.empty((design.n_samples, theta.size))
    for j in range(theta.size):
        shift = np.zeros_like(theta)
        shift[j] = steps[j]
        up, down = (
            _sample_log_likelihoods(
                model.with_params(unpack(model, point, shapes, var_floor)), design, y
            )
            for point in (theta + shift, theta - shift)
        )
        scores[:, j] = (up - down) / (2 * steps[j])
    if sample_weight is not None:
        scores *= sample_weight[:, None]
    return scores


def sandwich_covariance(
    bread: NDArray[np.float64], scores: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The robust (Huber-White) covariance ``H^-1 (sum_t s_t s_t^T) H^-1``.

    Parameters
    ----------
    bread : ndarray of shape (k, k)
        The inverse information (:func:`covariance_from_information`), NaN
        in the rows and columns of parameters on a singular direction.
    scores : ndarray of shape (n, k)
        Per-sample scores (:func:`sample_scores`).

    Returns
    -------
    ndarray of shape (k, k)
        NaN where ``bread`` is.
    """
    keep = np.isfinite(np.diag(bread))
    covariance = np.full_like(bread, np.nan)
    half = scores[:, keep] @ bread[np.ix_(keep, keep)]
    covariance[np.ix_(keep, keep)] = half.T @ half
    return covariance


# -- the bootstrap -----------------------------------------------------------------
def _sample_on_design(model, design, rng):
    """A response drawn from ``model`` at every row of its design."""
    params = model.params
    weights = np.exp(model.gate.log_weights(params.gate, design.gate))
    cumulative = np.cumsum(weights, axis=1)
    u = rng.random(design.n_samples) * cumulative[:, -1]
    labels = np.minimum((cumulative < u[:, None]).sum(axis=1), weights.shape[1] - 1)
    return model.expert.sample(params.expert, design.expert, labels, rng)


def _resample(model, design, y, sample_weight, kind, rng):
    """One bootstrap data set: its design, responses and weights."""
    if kind == "parametric":
        return design, _sample_on_design(model, design, rng), sample_weight
    # rows with replacement, each keeping its weight: a row drawn c times
    # enters the refit once with weight c w_t
    n = design.n_samples
    counts = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
    rows = np.flatnonzero(counts)
    weight = (
        counts[rows] if sample_weight is None else counts[rows] * sample_weight[rows]
    )
    part = Design(design.gate[rows], design.expert[rows])
    return part, y[rows], weight


def _natural(model, theta, var_floor, gate_columns):
    """Reported values of the packed parameters and the Jacobian to them."""
    m = model.params.n_experts
    p_gate = model.gate.n_free_parameters(m, gate_columns)
    values, jacobian = theta.copy(), np.ones_like(theta)
    values[p_gate:], jacobian[p_gate:] = model.expert.natural(
        theta[p_gate:], m, var_floor
    )
    return values, jacobian


def bootstrap_estimates(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    *,
    n_boot: int = 200,
    kind: str = "nonparametric",
    var_floor: float = 0.0,
    sample_weight: NDArray[np.float64] | None = None,
    fit_options: dict[str, Any] | None = None,
    random_state: Any = None,
    progress: bool = False,
) -> NDArray[np.float64]:
    """Estimates refitted on bootstrap data sets, experts aligned to the fit.

    Each refit starts from the fitted parameters (one run, no restarts and
    no split-and-merge moves); its experts are then relabelled to match
    the fit's (Hungarian matching on the experts' parameters,
    :meth:`MixtureOfExperts.align_to`).

    Parameters
    ----------
    model : MixtureOfExperts
        The fitted model.
    design : Design
        Its designs on the data.
    y : ndarray of shape (n,)
        Responses.
    n_boot : int, default=200
        Number of bootstrap data sets.
    kind : {"nonparametric", "parametric"}, default="nonparametric"
        ``"nonparametric"``: rows drawn with replacement, each keeping its
        weight (a row drawn ``c`` times enters the refit once, with weight
        ``c w_t``); ``"parametric"``: responses drawn from ``model`` at the
        same covariates, with the fit's weights.
    var_floor : float, default=0.0
        The variance floor of the fit.
    sample_weight : ndarray of shape (n,), optional
        Weights of the fit.
    fit_options : dict, optional
        ``solver``, ``tol``, ``max_iter``, ``polish`` of
        :func:`moestat.fit.fit_restarts`.
    random_state : None, int or numpy Generator, default=None
        Source of randomness.
    progress : bool, default=False
        Show a tqdm progress bar.

    Returns
    -------
    ndarray of shape (n_fits, k)
        One row per refit whose estimates are finite, on the natural scale
        (variances, not their logarithms), in the order of
        :func:`parameter_names`.
    """
    if kind not in BOOTSTRAP_KINDS:
        raise ValueError(f"kind must be one of {BOOTSTRAP_KINDS}; got {kind!r}.")
    if int(n_boot) < 2:
        raise ValueError(f"n_boot must be at least 2; got {n_boot!r}.")
    rng = as_generator(random_state)
    options = {**_REFIT_DEFAULTS, **(fit_options or {})}
    m = model.params.n_experts
    rows, unconverged = [], 0
    for _ in progress_bar(range(int(n_boot)), disable=not progress, desc="bootstrap"):
        part, part_y, part_weight = _resample(
            model, design, y, sample_weight, kind, rng
        )
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            best, _ = fit_restarts(
                model,
                part,
                None,
                part_y,
                n_experts=m,
                init=model.params,
                n_init=1,
                n_moves=0,
                rng=rng,
                var_floor=var_floor,
                sample_weight=part_weight,
                **options,
            )
        unconverged += not best.converged
        refit = best.model.align_to(model)
        values, _ = _natural(
            refit, pack(refit, var_floor), var_floor, design.gate.shape[1]
        )
        if np.all(np.isfinite(values)):
            rows.append(values)
    if len(rows) < int(n_boot):
        warnings.warn(
            f"{int(n_boot) - len(rows)} of {int(n_boot)} bootstrap refits gave "
            "estimates that are not finite and were left out.",
            UserWarning,
            stacklevel=2,
        )
    if unconverged:
        warnings.warn(
            f"{unconverged} of {int(n_boot)} bootstrap refits stopped before "
            f"their stopping rule fired (max_iter={options['max_iter']} or a "
            "ridge); their estimates are kept in the covariance.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return np.array(rows).reshape(len(rows), -1)


# -- naming the cause of a singular direction ------------------------------------
def _owners(names):
    """``(kind, expert number, label)`` of each name (kind None if neither)."""
    owners = []
    for name in names:
        match = _NAME.match(name)
        owners.append((match[1], int(match[2]), match[3]) if match else (None, 0, name))
    return owners


def _touches(owners, affected, experts):
    """Whether an affected parameter belongs to one of ``experts`` or its gate."""
    return any(
        affected[j] and number in experts for j, (_, number, _) in enumerate(owners)
    )


def _empty_experts(totals, owners, affected):
    """Experts with less responsibility than parameters, on a singular direction."""
    empty = []
    for number, total in enumerate(totals, start=1):
        size = sum(kind == "expert" and k == number for kind, k, _ in owners)
        threshold = max(1.0, _EMPTY_PER_PARAMETER * size)
        if total < threshold and _touches(owners, affected, {number}):
            empty.append(number)
    return empty


def _expert_coordinates(owners, kind="expert"):
    """``{expert number: {label: packed index}}`` for one kind of parameter."""
    table: dict[int, dict[str, int]] = {}
    for j, (owner, number, label) in enumerate(owners):
        if owner == kind:
            table.setdefault(number, {})[label] = j
    return table


def _duplicate_pairs(theta, curvature, owners, affected, skip):
    """Pairs of experts within a few conditional standard errors of each other."""
    experts = _expert_coordinates(owners)
    pairs = []
    for a, b in combinations(sorted(set(experts) - set(skip)), 2):
        labels = sorted(experts[a].keys() & experts[b].keys())
        first = np.array([experts[a][label] for label in labels], dtype=int)
        second = np.array([experts[b][label] for label in labels], dtype=int)
        unit = np.sqrt(np.maximum(curvature[first], curvature[second]))
        distance = np.abs(theta[first] - theta[second]) * unit
        if (
            labels
            and np.all(unit > 0)
            and np.all(distance < _DUPLICATE_DISTANCE)
            and _touches(owners, affected, {a, b})
        ):
            pairs.append((a, b))
    return pairs


def _gate_slopes(theta, spreads, owners, skip):
    """Gate log-odds changes per standard deviation of a covariate, by name.

    Rows against the reference and against each other; constant columns
    (spread 0) and the rows of ``skip`` are left out.
    """
    rows = _expert_coordinates(owners, kind="gate")
    rows = {k: v for k, v in rows.items() if k not in skip}
    slopes = {}
    for number, row in rows.items():
        for label, j in row.items():
            slopes[f"gate{number}[{label}]"] = abs(theta[j]) * spreads[j]
    for a, b in combinations(sorted(rows), 2):
        for label in sorted(rows[a].keys() & rows[b].keys()):
            i, j = rows[a][label], rows[b][label]
            slopes[f"gate{b}[{label}] - gate{a}[{label}]"] = (
                abs(theta[j] - theta[i]) * spreads[j]
            )
    return slopes


def _separation_cause(model, design, theta, owners, affected, skip):
    """The sharpest gate slope, when it is sharp and the gate is affected."""
    gate = np.array([kind == "gate" for kind, _, _ in owners], dtype=bool)
    if not (affected & gate).any():
        return []
    spreads = model.gate.pack_scales(design.gate.std(axis=0), model.params.n_experts)
    slopes = _gate_slopes(theta, spreads, owners, skip)
    name, slope = max(slopes.items(), key=lambda item: item[1], default=("", 0.0))
    if slope <= _SEPARATING_SLOPE:
        return []
    return [
        f"the gate separates ({name} changes the log-odds by {slope:.3g} per "
        "standard deviation of its covariate)"
    ]


def _generic_cause(information, affected, names):
    """A flat coordinate, negative curvature, or a near-singular direction."""
    scaled, scale = _scaled(information)
    flat = [n for n, s, a in zip(names, scale, affected, strict=True) if a and s == 0]
    if flat:
        return f"the log-likelihood does not curve in {flat[:8]}"
    values, _ = _singular_directions(scaled, scale > 0, 0.0)
    smallest = values.min() if values.size else 0.0
    if smallest < -_NEGATIVE_CURVATURE:
        return (
            f"the scaled information has a negative eigenvalue ({smallest:.3g}): "
            "the estimate is not a maximum of the likelihood"
        )
    return (
        "a near-singular direction of the scaled information (smallest "
        f"eigenvalue {smallest:.3g}); more experts than the data support can "
        "cause it"
    )


def _singularity_causes(
    model, design, y, theta, information, affected, names, sample_weight=None
):
    """Readable causes of the singular directions, most specific first."""
    if not np.all(np.isfinite(information)):
        return ["the log-likelihood's gradient is not finite near the estimate"]
    owners = _owners(names)
    resp, _ = responsibilities_from_log_joint(
        log_joint(model.gate, model.expert, model.params, design, y)
    )
    if sample_weight is not None:
        resp = resp * sample_weight[:, None]
    totals = resp.sum(axis=0)
    nobs = _n_observations(y, sample_weight)
    nobs = nobs if isinstance(nobs, int) else f"{nobs:.6g}"
    empty = _empty_experts(totals, owners, affected)
    causes = [
        f"empty expert {k} (total responsibility {totals[k - 1]:.3g} of "
        f"{nobs} observations)"
        for k in empty
    ]
    pairs = _duplicate_pairs(theta, np.diag(information), owners, affected, empty)
    causes += [f"experts {a} and {b} duplicate each other" for a, b in pairs]
    causes += _separation_cause(model, design, theta, owners, affected, empty)
    return causes or [_generic_cause(information, affected, names)]


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
    nobs : int or float
        Number of observations (the sum of the weights of a weighted fit).
    df_model : int
        Number of free parameters.
    converged : bool
        Whether the fit met its stopping rule.
    n_iter : int
        Iterations of the fit.
    info : dict
        Model description shown at the top of the summary.
    alpha : float, default=0.0
        Strength of the penalty of a penalised fit (0: maximum likelihood).
        When positive the summary shows it and notes that the standard
        errors come from the penalised information. Not to be confused with
        the ``alpha`` argument of the interval methods (one minus coverage).
    cov_type : {"oim", "robust", "bootstrap"}, default="oim"
        Where the covariance comes from (:func:`infer`).
    use_t : bool, default=False
        Refer statistics to Student's t and F with ``df_resid`` degrees of
        freedom (p-values, intervals, :meth:`t_test`, :meth:`wald_test`)
        instead of the normal and chi-squared.
    bootstrap_draws : pandas.DataFrame, optional
        The aligned bootstrap estimates of ``cov_type="bootstrap"``, one row
        per refit, columns named like ``params``.
    """

    params: pd.Series
    bse: pd.Series
    covariance: pd.DataFrame
    llf: float
    nobs: float
    df_model: int
    converged: bool
    n_iter: int
    info: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.0
    cov_type: str = "oim"
    use_t: bool = False
    bootstrap_draws: pd.DataFrame | None = None

    @property
    def df_resid(self) -> float:
        """Residual degrees of freedom ``nobs - df_model`` (of t and F)."""
        return self.nobs - self.df_model

    @property
    def tvalues(self) -> pd.Series:
        """Wald statistics ``params / bse``."""
        return self.params / self.bse

    def _reference(self):
        """The distribution of a Wald statistic: t(df_resid) or the normal."""
        return stats.t(self.df_resid) if self.use_t else stats.norm()

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided p-values of the Wald statistics (t when ``use_t``, else normal)."""
        return pd.Series(
            2 * self._reference().sf(np.abs(self.tvalues)), index=self.params.index
        )

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
        z = self._reference().ppf(1 - alpha / 2)
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

    def _restrictions(self, r_matrix, q):
        """``(R, q)`` of linear restrictions ``R params = q``, given any way."""
        names = list(self.params.index)
        if isinstance(r_matrix, str) or (
            isinstance(r_matrix, (list, tuple))
            and r_matrix
            and all(isinstance(item, str) for item in r_matrix)
        ):
            if q is not None:
                raise ValueError("q is read from the string; leave q=None.")
            r_matrix, q = linear_constraint(r_matrix, names)
        elif isinstance(r_matrix, tuple):
            r_matrix, q = r_matrix
        R = np.atleast_2d(np.asarray(r_matrix, dtype=np.float64))
        if R.ndim != 2 or R.shape[1] != len(names):
            raise ValueError(
                f"r_matrix must have {len(names)} columns, one per parameter; got "
                f"shape {R.shape}."
            )
        q = np.zeros(R.shape[0]) if q is None else np.asarray(q, dtype=np.float64)
        if q.size not in (1, R.shape[0]):
            raise ValueError("r_matrix and q must have the same number of rows.")
        return R, np.broadcast_to(q.ravel(), (R.shape[0],)).copy()

    def _restricted(self, R):
        """``R params`` and ``R cov R^T``, reading only the parameters R uses."""
        used = np.flatnonzero(np.any(R != 0, axis=0))
        part = R[:, used]
        covariance = self.covariance.to_numpy()[np.ix_(used, used)]
        return part @ self.params.to_numpy()[used], part @ covariance @ part.T

    def t_test(self, r_matrix, q=None, use_t: bool | None = None):
        """One Wald (t or z) test per linear restriction ``R params = q``.

        Parameters
        ----------
        r_matrix : str, list of str, array-like or (array-like, array-like)
            Restrictions as statsmodels reads them: a string such as
            ``"gate2[x0] = 0, expert1[x0] = expert2[x0]"`` in the names of
            ``params`` (parsed by patsy's ``linear_constraint``), a matrix
            ``R`` with one column per parameter, or a pair ``(R, q)``.
        q : array-like, optional
            Right-hand sides for a matrix ``R`` (default zeros).
        use_t : bool, optional
            Student's t with ``df_resid`` degrees of freedom, or the normal;
            by default the results' ``use_t``.

        Returns
        -------
        statsmodels.stats.contrast.ContrastResults
            ``effect``, ``sd``, ``tvalue`` (or ``statistic``), ``pvalue``,
            ``conf_int()`` and ``summary()``, as statsmodels' ``t_test``.
        """
        from statsmodels.stats.contrast import ContrastResults

        R, q = self._restrictions(r_matrix, q)
        effect, covariance = self._restricted(R)
        sd = np.sqrt(np.diag(covariance))
        statistic = (effect - q) / sd
        if self.use_t if use_t is None else use_t:
            return ContrastResults(
                effect=effect, t=statistic, sd=sd, df_denom=self.df_resid
            )
        return ContrastResults(
            effect=effect,
            statistic=statistic,
            sd=sd,
            df_denom=self.df_resid,
            distribution="norm",
        )

    def wald_test(
        self, r_matrix, q=None, use_f: bool | None = None, scalar: bool = True
    ):
        """Joint Wald test of the linear restrictions ``R params = q``.

        ``W = (R b - q)^T (R C R^T)^+ (R b - q)``, ``C`` the covariance of
        the estimates, referred to chi-squared with ``J`` degrees of freedom
        (the rank of ``R C R^T``), or ``W / J`` to F with ``J`` and
        ``df_resid`` degrees of freedom.

        Parameters
        ----------
        r_matrix : str, list of str, array-like or (array-like, array-like)
            As for :meth:`t_test`.
        q : array-like, optional
            Right-hand sides for a matrix ``R`` (default zeros).
        use_f : bool, optional
            The F reference; by default the results' ``use_t``.
        scalar : bool, default=True
            Return the statistic as a float (statsmodels' convention).

        Returns
        -------
        statsmodels.stats.contrast.ContrastResults
            ``statistic``, ``pvalue``, ``df_num``/``df_denom`` (F) or
            ``df_denom`` (chi-squared), as statsmodels' ``wald_test``.

        Raises
        ------
        ValueError
            When a restricted parameter has no standard error (a singular
            direction of the information).
        """
        from statsmodels.stats.contrast import ContrastResults

        R, q = self._restrictions(r_matrix, q)
        effect, covariance = self._restricted(R)
        if not np.all(np.isfinite(covariance)):
            raise ValueError(
                "The restrictions involve parameters without standard errors "
                "(NaN covariance): they cannot be tested."
            )
        difference = (effect - q)[:, None]
        statistic = difference.T @ np.linalg.pinv(covariance) @ difference
        if scalar and statistic.size == 1:
            statistic = float(np.squeeze(statistic))
        rank = int(np.linalg.matrix_rank(covariance))
        if self.use_t if use_f is None else use_f:
            return ContrastResults(
                F=statistic / rank, df_denom=self.df_resid, df_num=rank
            )
        return ContrastResults(
            chi2=statistic,
            df_denom=rank,
            statistic=statistic,
            distribution="chi2",
            distargs=(rank,),
        )

    def f_test(self, r_matrix, q=None):
        """:meth:`wald_test` with the F reference.

        Parameters
        ----------
        r_matrix : str, list of str, array-like or (array-like, array-like)
            As for :meth:`t_test`.
        q : array-like, optional
            Right-hand sides for a matrix ``R``.

        Returns
        -------
        statsmodels.stats.contrast.ContrastResults
        """
        return self.wald_test(r_matrix, q, use_f=True)

    def to_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        """The summary's numbers as one table, one row per parameter.

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the coverage of the intervals.

        Returns
        -------
        pandas.DataFrame
            Columns ``coef``, ``std err``, ``z``, ``P>|z|`` (``t`` and
            ``P>|t|`` when ``use_t``) and the interval bounds, named by their
            levels (``[0.025`` and ``0.975]`` for the default ``alpha``).
        """
        ci = self.conf_int(alpha)
        letter = "t" if self.use_t else "z"
        return pd.DataFrame(
            {
                "coef": self.params,
                "std err": self.bse,
                letter: self.tvalues,
                f"P>|{letter}|": self.pvalues,
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
            ("Covariance type", self.cov_type),
        ]
        if self.bootstrap_draws is not None:
            facts.append(("Bootstrap fits", len(self.bootstrap_draws)))
        if self.alpha > 0:
            facts.append(("Penalty (alpha)", f"{self.alpha:g}"))
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
            stubs = [_term(name, block) for name in part.index]
            data = [
                [_fmt(v) for v in row]
                for row in part.itertuples(index=False, name=None)
            ]
            summary.tables.append(
                SimpleTable(data, headers=list(part.columns), stubs=stubs, title=block)
            )
        if self.alpha > 0:
            summary.add_extra_txt(
                [
                    "Standard errors are from the penalised information "
                    f"(alpha = {self.alpha:g})."
                ]
            )
        return summary

    def __repr__(self) -> str:
        return (
            f"<MoEInferenceResults: {len(self.params)} parameters, llf={self.llf:.4f}>"
        )


def linear_constraint(
    constraints: str | list[str], names: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(R, q)`` of restrictions written in parameter names, as statsmodels reads them.

    Parameters
    ----------
    constraints : str or list of str
        Such as ``"gate2[x0] = 0, expert1[x0] = expert2[x0]"``; a term
        without ``=`` is compared with zero.
    names : list of str
        The parameters' names, in order.

    Returns
    -------
    R : ndarray of shape (J, k)
    q : ndarray of shape (J,)
    """
    try:
        from patsy import DesignInfo
    except ImportError:  # statsmodels >= 0.15 without patsy
        from statsmodels.formula._manager import FormulaManager

        found = FormulaManager().get_linear_constraints(constraints, names)
        R, q = found.constraint_matrix, found.constraint_values
    else:
        found = DesignInfo(names).linear_constraint(constraints)
        R, q = found.coefs, found.constants
    return np.asarray(R, dtype=np.float64), np.asarray(q, dtype=np.float64).ravel()


def _term(name: str, block: str) -> str:
    """The term of ``block[term]`` (brackets inside the term kept), or ``name``.

    Examples
    --------
    >>> _term("expert1[C(group)[T.b]]", "expert1"), _term("sigma", "sigma")
    ('C(group)[T.b]', 'sigma')
    """
    rest = name[len(block) :]
    if rest.startswith("[") and rest.endswith("]"):
        return rest[1:-1] or name
    return rest or name


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "nan"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def _n_observations(
    y: NDArray[np.float64], sample_weight: NDArray[np.float64] | None
) -> float:
    """The number of observations: the rows, or the sum of their weights."""
    if sample_weight is None:
        return len(y)
    total = float(np.sum(sample_weight))
    return int(total) if total == int(total) else total


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
    alpha: float = 0.0,
    sample_weight: NDArray[np.float64] | None = None,
    cov_type: str = "oim",
    use_t: bool = False,
    bootstrap_options: dict[str, Any] | None = None,
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
    alpha : float, default=0.0
        Penalty strength of the fit, carried to the results and shown in
        the summary when positive.
    sample_weight : ndarray of shape (n,), optional
        Weights of the fit: the information, the log-likelihood and
        ``nobs`` (the sum of the weights) are those of the weighted
        log-likelihood, so integer weights give the standard errors of the
        data with each row repeated ``w_t`` times (frequency weights).
    cov_type : {"oim", "robust", "bootstrap"}, default="oim"
        ``"oim"``: the inverse observed information; ``"robust"``: the
        sandwich ``H^-1 (sum_t s_t s_t^T) H^-1`` of the observed
        information ``H`` and the per-sample scores ``s_t``
        (:func:`sample_scores`; with weights ``w_t s_t``, as for sampling
        weights); ``"bootstrap"``: the sample covariance of refitted
        estimates (:func:`bootstrap_estimates`).
    use_t : bool, default=False
        Refer the Wald statistics to Student's t and F with ``nobs -
        df_model`` degrees of freedom instead of the normal and chi-squared.
    bootstrap_options : dict, optional
        Keyword arguments of :func:`bootstrap_estimates` (``n_boot``,
        ``kind``, ``fit_options``, ``random_state``, ``progress``).

    Returns
    -------
    MoEInferenceResults

    Warns
    -----
    SingularInformationWarning
        When the information is singular in scaled coordinates; the message
        lists the parameters with NaN standard errors and the cause where it
        can be told (an empty expert, duplicated experts, a separating gate,
        an estimate that is not a maximum).
    """
    if cov_type not in COV_TYPES:
        raise ValueError(f"cov_type must be one of {COV_TYPES}; got {cov_type!r}.")
    names = parameter_names(model, design_names)
    gate_columns = design.gate.shape[1]
    draws = None
    if cov_type == "bootstrap":
        draws = bootstrap_estimates(
            model,
            design,
            y,
            var_floor=var_floor,
            sample_weight=sample_weight,
            **(bootstrap_options or {}),
        )
        values, _ = _natural(model, pack(model, var_floor), var_floor, gate_columns)
        covariance = np.cov(draws, rowvar=False).reshape(len(values), len(values))
    else:
        theta, information, steps = _information_and_steps(
            model,
            design,
            y,
            var_floor,
            scaled_step=1e-2,
            sample_weight=sample_weight,
        )
        covariance, affected = covariance_from_information(information)
        if affected.any():
            _warn_singular(
                model, design, y, theta, information, affected, names, sample_weight
            )
        if cov_type == "robust":
            scores = sample_scores(
                model, design, y, var_floor, steps, sample_weight=sample_weight
            )
            covariance = sandwich_covariance(covariance, scores)
        values, jacobian = _natural(model, theta, var_floor, gate_columns)
        covariance = covariance * jacobian[:, None] * jacobian[None, :]
    index = pd.Index(names, name="parameter")
    bse = np.sqrt(np.where(np.diag(covariance) >= 0, np.diag(covariance), np.nan))
    # the log-likelihood itself, not the penalised objective
    ll = log_likelihood_and_gradient(model, design, y, var_floor, sample_weight)[
        0
    ] + penalty(model, model.params, design)
    return MoEInferenceResults(
        params=pd.Series(values, index=index, name="coef"),
        bse=pd.Series(bse, index=index, name="std err"),
        covariance=pd.DataFrame(covariance, index=index, columns=index),
        llf=ll,
        nobs=_n_observations(y, sample_weight),
        df_model=df_model,
        converged=converged,
        n_iter=n_iter,
        info=dict(info or {}),
        alpha=float(alpha),
        cov_type=cov_type,
        use_t=bool(use_t),
        bootstrap_draws=(None if draws is None else pd.DataFrame(draws, columns=index)),
    )


def _warn_singular(model, design, y, theta, information, affected, names, weight):
    """The SingularInformationWarning naming the parameters and the cause."""
    listed = np.array(names)[affected].tolist()
    causes = _singularity_causes(
        model, design, y, theta, information, affected, names, weight
    )
    warnings.warn(
        "The observed information is singular in the direction of "
        f"{listed[:8]}{' ...' if len(listed) > 8 else ''}: their standard "
        f"errors are NaN. Cause: {'; '.join(causes)}.",
        SingularInformationWarning,
        stacklevel=4,
    )
