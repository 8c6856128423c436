"""A cell from its seed to its record: the steps every engine shares.

:func:`prepare_cell` draws the cell's sample from its seed and its starts
(near the truth, random, or restarts as :func:`~moestat.fit.fit_restarts`
draws them); an engine fits the starts; :func:`finish_cell` measures the
losses of the fit and writes the record. Both engines run these same
steps, so they fit the same samples from the same starts and measure their
fits with the same code, cell by cell.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moestat.fit import FitResult, initial_params, restart_starts
from moestat.losses import density_losses, kl_divergence, voronoi_loss
from moestat.model import Design, MixtureOfExperts, MoEParams
from moestat.simulation._cells import _stable_hash
from moestat.simulation.plan import _POPULATION_Y_NODES, Cell
from moestat.simulation.scenarios import FitSpec, Scenario
from moestat.simulation.truth import oracle_start, pseudo_sample

__all__ = ["PreparedCell", "prepare_cell", "finish_cell"]

# reg_var of the variance floor, as in the estimators.
_REG_VAR = 1e-6


@dataclass
class PreparedCell:
    """A cell's sample, design and starts, ready for an engine to fit.

    Parameters
    ----------
    cell : Cell
        The cell.
    design : Design
        The fitted model's designs on the sample.
    y : ndarray of shape (n,)
        The responses.
    weight : ndarray of shape (n,) or None
        Quadrature weights of a population fit's pseudo-sample; None for a
        sample.
    var_floor : float
        The variance floor of the fit.
    starts : list of MoEParams
        The starts to fit: one, or ``n_init`` restarts.
    options : dict
        ``solver``, ``tol`` and ``max_iter`` of the fit.
    restarts : bool
        Keep the best of the starts' fits, as
        :func:`~moestat.fit.fit_restarts` does.
    ll_true : float
        Log-likelihood of the truth on the sample (NaN for a population
        fit).
    seconds : float
        Time taken to draw the sample and the starts.
    messages : list of str
        Warnings raised meanwhile.
    """

    cell: Cell
    design: Design
    y: NDArray[np.float64]
    weight: NDArray[np.float64] | None
    var_floor: float
    starts: list[MoEParams]
    options: dict[str, Any]
    restarts: bool
    ll_true: float
    seconds: float
    messages: list[str]


def _population_data(
    scenario: Scenario,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The weighted pseudo-sample every cell of an approximation study fits."""
    return pseudo_sample(
        scenario.truth, scenario.covariates, scenario.x_nodes, _POPULATION_Y_NODES
    )


def prepare_cell(
    scenario: Scenario,
    spec: FitSpec,
    cell: Cell,
    reference: MixtureOfExperts | None = None,
) -> PreparedCell:
    """Draw a cell's sample and starts from its seed.

    Parameters
    ----------
    scenario : Scenario
        The cell's scenario.
    spec : FitSpec
        The cell's fit.
    cell : Cell
        Which fit, n and replicate.
    reference : MixtureOfExperts, optional
        The best approximation a misspecified fit starts near (see
        :func:`~moestat.simulation.population_fit`); default the truth.

    Returns
    -------
    PreparedCell
        The sample, its designs and the starts: the near-truth start of
        ``init="oracle"``, the ``n_init`` restarts of
        :func:`~moestat.fit.restart_starts` of ``init="random"``, or one
        random start on the population's pseudo-sample.
    """
    seed = cell.seed
    fit_rng = np.random.default_rng([seed, _stable_hash(cell.fit)])
    model = spec.model
    population = scenario.kind == "approximation"
    weight, var_floor, restarts = None, 0.0, False
    options = {
        "solver": spec.solver,
        "tol": scenario.tol,
        "max_iter": scenario.max_iter,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        if population:
            X, y, weight = _population_data(scenario)
            design = model.design(X)
            starts = [
                initial_params(model, design, X, y, spec.n_experts, "random", fit_rng)
            ]
            options["solver"] = "em"
        else:
            data_rng = np.random.default_rng(seed)
            X = scenario.covariates.sample(cell.n, data_rng)
            y, _ = scenario.truth.sample(X, data_rng)
            design = model.design(X)
            var_floor = model.expert.variance_floor(y, _REG_VAR)
            if spec.init == "oracle":
                starts = [
                    oracle_start(
                        scenario.truth if reference is None else reference,
                        model,
                        spec.assignment,
                        X,
                        scale=scenario.oracle_scale,
                        rng=fit_rng,
                        var_floor=var_floor,
                    )
                ]
            else:  # the restarts of fit_restarts(init="auto"), without moves
                starts = restart_starts(
                    model,
                    design,
                    X,
                    y,
                    n_experts=spec.n_experts,
                    init="auto",
                    n_init=spec.n_init,
                    rng=fit_rng,
                    var_floor=var_floor,
                )
                restarts = True
        seconds = time.perf_counter() - start
    ll_true = np.nan if population else float(scenario.truth.log_pdf(X, y).sum())
    return PreparedCell(
        cell=cell,
        design=design,
        y=np.asarray(y, dtype=float),
        weight=weight,
        var_floor=float(var_floor),
        starts=starts,
        options=options,
        restarts=restarts,
        ll_true=ll_true,
        seconds=seconds,
        messages=[str(warning.message) for warning in caught],
    )


@functools.lru_cache(maxsize=16)
def _cached_quadrature(covariates: Any, n_nodes: int) -> tuple[NDArray, NDArray]:
    return covariates.quadrature(n_nodes)


def _quadrature(
    covariates: Any, n_nodes: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The covariate quadrature of the losses, computed once per process."""
    try:
        Xq, wq = _cached_quadrature(covariates, n_nodes)
    except TypeError:  # a covariate law that cannot be hashed
        return covariates.quadrature(n_nodes)
    return Xq.copy(), wq.copy()


def _loss_columns(
    scenario: Scenario,
    spec: FitSpec,
    fitted: MixtureOfExperts,
    reference: MixtureOfExperts | None,
) -> dict[str, Any]:
    target = scenario.truth if reference is None else reference
    Xq, wq = _quadrature(scenario.covariates, scenario.x_nodes)
    columns: dict[str, Any] = dict(
        density_losses(target, fitted, Xq, wq, which=scenario.density_losses)
    )
    if reference is not None:
        columns["kl_truth"] = kl_divergence(scenario.truth, fitted, Xq, wq)
        columns["kl_floor"] = kl_divergence(scenario.truth, reference, Xq, wq)
    if spec.voronoi is not None:
        try:
            loss = voronoi_loss(target, fitted, kind=spec.voronoi)
        except ValueError as error:
            # A fit that piles four atoms into one cell has no known exponent
            # (theory.md §5.2.5): the cell is kept, its Voronoi loss is NaN.
            columns["voronoi"] = np.nan
            columns["voronoi_error"] = str(error)[:200]
            return columns
        columns["voronoi"] = loss.value
        columns["cell_sizes"] = " ".join(str(int(s)) for s in np.ravel(loss.cell_sizes))
        for name, value in loss.errors.items():
            columns[f"err_{name}"] = value
    return columns


def _record(
    scenario: Scenario,
    spec: FitSpec,
    cell: Cell,
    result: FitResult,
    ll_true: float,
    fit_time: float,
    losses: dict[str, Any],
    messages: Sequence[str],
    engine: str,
) -> dict[str, Any]:
    """One cell's record: the same columns for every engine."""
    return {
        "key": cell.key,
        "scenario": scenario.id,
        "fit": cell.fit,
        "n_experts": spec.n_experts,
        "degree": getattr(spec.model.expert, "degree", None),
        "gate": spec.model.gate.describe(),
        "expert": type(spec.model.expert).__name__,
        "solver": spec.solver,
        "init": spec.init,
        "n": cell.n,
        "replicate": cell.replicate,
        "root_seed": cell.root_seed,
        "seed": cell.seed,
        "log_likelihood": result.log_likelihood,
        "log_likelihood_true": ll_true,
        "opt_failure": bool(result.log_likelihood < ll_true - 1e-6 * cell.n),
        "monotone": bool(result.monotone),
        "n_iter": result.n_iter,
        "converged": bool(result.converged),
        "fit_time": fit_time,
        **losses,
        "n_warnings": len(messages),
        "first_warning": messages[0][:200] if messages else "",
        "backend": engine,
    }


def finish_cell(
    scenario: Scenario,
    spec: FitSpec,
    cell: Cell,
    result: FitResult,
    reference: MixtureOfExperts | None,
    ll_true: float,
    fit_time: float,
    messages: Sequence[str],
    engine: str,
) -> dict[str, Any]:
    """Measure the losses of a cell's fit and write its record.

    Parameters
    ----------
    scenario : Scenario
        The cell's scenario.
    spec : FitSpec
        The cell's fit.
    cell : Cell
        The cell.
    result : FitResult
        The fit kept for the cell.
    reference : MixtureOfExperts or None
        The best approximation the losses of a misspecified fit are
        measured against; None measures them against the truth.
    ll_true : float
        Log-likelihood of the truth on the sample.
    fit_time : float
        Seconds the cell took: its sample, starts and fit.
    messages : sequence of str
        Warnings raised so far; those the losses raise are added.
    engine : str
        Name of the engine that fitted the cell (the ``backend`` column).

    Returns
    -------
    dict
        One record: the cell's identity and seed, the fit's log-likelihood
        and that of the truth, iterations, convergence, the optimisation
        failure flag of theory.md §4.7, the fit time, the losses, the count
        and first text of the warnings and the engine (``backend``).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _loss_columns(scenario, spec, result.model, reference)
    messages = [*messages, *(str(warning.message) for warning in caught)]
    return _record(
        scenario, spec, cell, result, ll_true, fit_time, losses, messages, engine
    )
