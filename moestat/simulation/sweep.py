"""Sweeps: (scenario, fit) x n grid x replications, resumable and parallel.

A *cell* is one fit of one model to one sample: scenario, fit label, sample
size ``n`` and replicate number. Its seed is derived from the cell itself
(the root seed, the scenario id, ``n`` and the replicate), never from the
worker that runs it, so every backend gives the same numbers; all fits of a
scenario see the same sample at a given ``(n, replicate)``.

Finished cells go to a :class:`~moestat.simulation.store.ResultStore` as
they arrive; a sweep run again with the same arguments and directory skips
them and runs the rest.

Two engines fit the cells. The numpy engine fits one cell at a time (in
parallel through joblib). The torch engine (``backend="torch"``) fits many
cells of one fit at once through :func:`moestat.torch.fit.fit_batched`:
samples, starts and losses are the numpy engine's, computed from the same
seeds, so the two give comparable records cell by cell.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed, parallel_config
from numpy.typing import NDArray

from moestat._progress import progress_bar
from moestat._validation import as_generator
from moestat.exceptions import SweepInterrupted
from moestat.fit import (
    POLISH_ITER,
    POLISH_TOL,
    FitResult,
    best_restart,
    em,
    fit_restarts,
    initial_params,
    keep_polished,
    mle,
    pack,
    polish_fit,
    restart_starts,
    unpack,
)
from moestat.losses import (
    density_losses,
    kl_divergence,
    response_quadrature,
    voronoi_loss,
)
from moestat.model import Design, MixtureOfExperts, MoEParams
from moestat.simulation._cells import _stable_hash, cell_key, cell_seed
from moestat.simulation.scenarios import FitSpec, Scenario, get_scenario
from moestat.simulation.store import ResultStore

__all__ = [
    "Cell",
    "plan_cells",
    "plan_batches",
    "cell_seed",
    "oracle_params",
    "oracle_start",
    "population_fit",
    "pseudo_sample",
    "run_cell",
    "simulate",
    "BACKENDS",
    "TORCH_BATCH_ROWS",
]

# joblib backends of the numpy engine; "numpy" is the numpy engine on loky.
_JOBLIB_BACKENDS = ("loky", "threading", "sequential", "dask")
#: Engines of :func:`simulate`: ``"numpy"``, ``"torch"`` and the joblib
#: backends of the numpy engine.
BACKENDS = ("numpy", "torch", *_JOBLIB_BACKENDS)
#: Default limit on the padded rows (cells x restarts x largest sample) of
#: one torch batch (:func:`plan_batches`).
TORCH_BATCH_ROWS = 2**22
# Response nodes of the pseudo-sample of an approximation cell.
_POPULATION_Y_NODES = 40
# Perturbation of the near-truth start: sd = oracle_scale * n ** _ORACLE_POWER
# (CRPE-SGaME code, theory.md §4.5).
_ORACLE_POWER = -0.083
# reg_var of the variance floor, as in the estimators.
_REG_VAR = 1e-6


@dataclass(frozen=True)
class Cell:
    """One fit of one model to one sample.

    Parameters
    ----------
    scenario : str
        Scenario id.
    fit : str
        Fit label.
    n : int
        Sample size.
    replicate : int
        Replicate number (0-based).
    root_seed : int
        The sweep's seed.
    """

    scenario: str
    fit: str
    n: int
    replicate: int
    root_seed: int

    @property
    def key(self) -> str:
        """Identifier of the cell in the results store."""
        return cell_key(self.scenario, self.fit, self.n, self.replicate, self.root_seed)

    @property
    def seed(self) -> int:
        """Seed of the sample (shared by every fit at this n and replicate)."""
        return cell_seed(self.root_seed, self.scenario, self.n, self.replicate)


def plan_cells(
    scenario: Scenario,
    n_grid: Sequence[int],
    n_reps: int,
    seed: int = 0,
    fits: Sequence[str] | None = None,
) -> list[Cell]:
    """Every cell of a sweep, in a fixed order (n, then replicate, then fit).

    Parameters
    ----------
    scenario : Scenario
        The scenario.
    n_grid : sequence of int
        Sample sizes; ignored by approximation scenarios, whose cells all
        have ``n = 0`` (no sample).
    n_reps : int
        Replications per sample size (restarts for approximation
        scenarios).
    seed : int, default=0
        The sweep's root seed.
    fits : sequence of str, optional
        Labels of the fits; default all of the scenario's.

    Returns
    -------
    list of Cell
        ``len(n_grid) * n_reps * len(fits)`` cells.

    Raises
    ------
    ValueError
        For a fit label the scenario does not have.
    """
    labels = [spec.label for spec in scenario.fits] if fits is None else list(fits)
    for label in labels:
        scenario.fit(label)  # raises for an unknown label
    if scenario.kind == "approximation":
        n_grid = (0,)  # no sample: each replicate is a restart on the population
    return [
        Cell(scenario.id, label, int(n), replicate, int(seed))
        for n in n_grid
        for replicate in range(n_reps)
        for label in labels
    ]


# -- the near-truth start ---------------------------------------------------
def oracle_params(
    truth: MixtureOfExperts, spec: MixtureOfExperts, assignment: Sequence[int]
) -> MoEParams:
    """The truth's parameters laid out for the fitted specification.

    Fitted expert ``i`` is true expert ``assignment[i]``; copies of one true
    expert share its mass, so the density is the truth's.

    Parameters
    ----------
    truth : MixtureOfExperts
        The true model.
    spec : MixtureOfExperts
        The fitted specification (``len(assignment)`` experts).
    assignment : sequence of int
        True expert of each fitted expert; shared experts map to shared
        ones, routed to routed.

    Returns
    -------
    MoEParams
    """
    if not isinstance(truth, MixtureOfExperts):
        raise TypeError(
            "the near-truth start lays out the truth's own experts, so the truth "
            f"must be a MixtureOfExperts, not {type(truth).__name__}; a truth "
            "outside the model (such as MJ-2's regression function) is fitted "
            "from random starts by simulate() with its scenario"
        )
    index = np.asarray(assignment, dtype=np.intp)
    true_params = truth._require_params()
    k_true, m = truth.n_experts, len(index)
    if index.min() < 0 or index.max() >= k_true or np.unique(index).size < k_true:
        raise ValueError(
            f"assignment {index.tolist()} must use every true expert 0..{k_true - 1}."
        )
    true_groups = truth.gate.expert_groups(k_true)[index]
    if not np.array_equal(true_groups, spec.gate.expert_groups(m)):
        raise ValueError(
            f"assignment {index.tolist()} maps shared experts to routed ones."
        )
    return MoEParams(
        spec.gate.split_atoms(true_params.gate, index),
        spec.expert.split_atoms(true_params.expert, index),
    )


def oracle_start(
    truth: MixtureOfExperts,
    spec: MixtureOfExperts,
    assignment: Sequence[int],
    X: NDArray[np.float64],
    *,
    scale: float,
    rng: np.random.Generator,
    var_floor: float = 0.0,
) -> MoEParams:
    """Near-truth start: :func:`oracle_params` perturbed by ``scale * n^-0.083``.

    The papers' oracle initialisation (theory.md §4.5), which keeps
    optimisation failure out of rate experiments. [P] The Gaussian noise is
    added to the packed free parameters (variances on the log scale, the
    softmax reference row fixed), so the start is always valid.

    Parameters
    ----------
    truth : MixtureOfExperts
        The true model.
    spec : MixtureOfExperts
        The fitted specification (``len(assignment)`` experts).
    assignment : sequence of int
        True expert of each fitted expert (see :func:`oracle_params`).
    X : ndarray of shape (n, d)
        The sample's covariates; ``n = len(X)`` sets the noise level.
    scale : float
        ``c`` of the noise's standard deviation ``c n^-0.083``.
    rng : numpy Generator
        Source of the noise.
    var_floor : float, default=0.0
        Variance floor of the packed parametrisation.

    Returns
    -------
    MoEParams
        The perturbed parameters.
    """
    params = oracle_params(truth, spec, assignment)
    model = spec.with_params(params)
    design = model.design(X[:1])
    shapes = (len(assignment), design.gate.shape[1], design.expert.shape[1])
    theta = pack(model, var_floor)
    sd = scale * len(X) ** _ORACLE_POWER
    theta = theta + rng.normal(0.0, sd, size=theta.shape)
    return unpack(model, theta, shapes, var_floor)


def pseudo_sample(
    truth: Any, covariates: Any, x_nodes: int = 400, y_nodes: int = 40
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """A weighted pseudo-sample that integrates like the true law of (X, Y).

    Covariate Gauss–Legendre nodes times response quadrature nodes under
    the true conditional density; the weights average one.

    Parameters
    ----------
    truth : MixtureOfExperts or object
        The true conditional density (see
        :func:`~moestat.losses.response_quadrature`).
    covariates : UniformCovariates
        The law of X; its ``quadrature(x_nodes)`` gives the covariate nodes.
    x_nodes : int, default=400
        Covariate nodes per coordinate.
    y_nodes : int, default=40
        Response nodes per component (Gaussian-type experts).

    Returns
    -------
    X : ndarray of shape (n_x * q, d)
        Each of the ``n_x`` covariate nodes repeated ``q`` times, ``q`` the
        number of response nodes per covariate node.
    y : ndarray of shape (n_x * q,)
        The response nodes.
    weight : ndarray of shape (n_x * q,)
        Products of covariate and response weights, scaled to average one.
    """
    Xq, wq = covariates.quadrature(x_nodes)
    Y, W = response_quadrature(truth, Xq, y_nodes)
    X = np.repeat(Xq, Y.shape[1], axis=0)
    weight = (wq[:, None] * W).ravel()
    return X, Y.ravel(), weight * (len(weight) / weight.sum())


def population_fit(
    truth: MixtureOfExperts,
    spec: MixtureOfExperts,
    assignment: Sequence[int],
    covariates: Any,
    *,
    x_nodes: int = 400,
    y_nodes: int = 24,
    perturbation: float = 0.1,
    random_state: Any = 0,
    tol: float = 1e-10,
    max_iter: int = 10_000,
) -> MixtureOfExperts:
    """The best approximation of ``truth`` within ``spec``, by population EM.

    EM with the weights of a quadrature rule on a pseudo-sample
    (:func:`pseudo_sample`; theory.md §5.2.3, [P]) maximises
    ``E log p_G(Y | X)``, i.e. minimises ``KL(p* || p_G)`` over ``spec``.
    It starts from :func:`oracle_params` with ``N(0, perturbation^2)`` added
    to the packed parameters: copies of one true expert must be pulled
    apart, since EM keeps exact copies together (a saddle point).

    Parameters
    ----------
    truth : MixtureOfExperts
        The true model.
    spec : MixtureOfExperts
        The fitted specification (``len(assignment)`` experts).
    assignment : sequence of int
        True expert of each fitted expert at the start (see
        :func:`oracle_params`).
    covariates : UniformCovariates
        The law of X.
    x_nodes : int, default=400
        Covariate nodes per coordinate of the pseudo-sample.
    y_nodes : int, default=24
        Response nodes per component of the pseudo-sample.
    perturbation : float, default=0.1
        Standard deviation of the noise added to the start.
    random_state : None, int or numpy Generator, default=0
        Source of the noise.
    tol : float, default=1e-10
        Stopping tolerance of EM.
    max_iter : int, default=10000
        Maximum number of EM iterations.

    Returns
    -------
    MixtureOfExperts
        ``spec`` with the population-optimal parameters.
    """
    X, y, weight = pseudo_sample(truth, covariates, x_nodes, y_nodes)
    start = oracle_start(
        truth,
        spec,
        assignment,
        X[:1],
        scale=perturbation,
        rng=as_generator(random_state),
    )
    model = spec.with_params(start)
    result = em(
        model,
        model.design(X),
        y,
        tol=tol,
        max_iter=max_iter,
        sample_weight=weight,
        accelerate=False,
        stop_on_ridge=False,
    )
    return result.model


def _cached_reference(
    scenario: Scenario, spec: FitSpec, out_dir: Path
) -> MixtureOfExperts:
    """:func:`population_fit` of a fit's reference, computed once per directory."""
    path = out_dir / f"reference-{_stable_hash(scenario.id + spec.label):08x}.pkl"
    if path.exists():
        with path.open("rb") as handle:
            return pickle.load(handle)
    reference = population_fit(
        scenario.truth, spec.reference, spec.reference_assignment, scenario.covariates
    )
    partial = path.with_suffix(".tmp")
    with partial.open("wb") as handle:
        pickle.dump(reference, handle)
    os.replace(partial, path)  # atomic: a killed run leaves no half file
    return reference


# -- one cell ------------------------------------------------------------------
def _population_data(
    scenario: Scenario,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The weighted pseudo-sample every cell of an approximation study fits."""
    return pseudo_sample(
        scenario.truth, scenario.covariates, scenario.x_nodes, _POPULATION_Y_NODES
    )


def _population_cell(scenario: Scenario, spec: FitSpec, rng: np.random.Generator):
    """Population EM of one fit from one random start (approximation studies)."""
    X, y, weight = _population_data(scenario)
    model = spec.model
    design = model.design(X)
    start = initial_params(model, design, X, y, spec.n_experts, "random", rng)
    return em(
        model.with_params(start),
        design,
        y,
        tol=scenario.tol,
        max_iter=scenario.max_iter,
        sample_weight=weight,
        accelerate=False,
        stop_on_ridge=False,
    )


def _restart_options(
    scenario: Scenario, spec: FitSpec, var_floor: float
) -> dict[str, Any]:
    """Keyword arguments of :func:`fit_restarts` for a fit with random starts."""
    return {
        "n_experts": spec.n_experts,
        "solver": spec.solver,
        "init": "auto",
        "n_init": spec.n_init,
        "tol": scenario.tol,
        "max_iter": scenario.max_iter,
        "var_floor": var_floor,
        "polish": spec.polish,
        # plain EM that walks ridges on, as the batched torch engine does:
        # both backends give the same cells (a boundary is still reported)
        "accelerate": False,
        "stop_on_ridge": False,
        # restarts only: a split-and-merge move is chosen among near-ties,
        # which the two backends' round-off can order differently
        "n_moves": 0,
    }


def _fit_cell(
    scenario: Scenario,
    spec: FitSpec,
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    rng: np.random.Generator,
    reference: MixtureOfExperts | None = None,
):
    model = spec.model
    design = model.design(X)
    var_floor = model.expert.variance_floor(y, _REG_VAR)
    if spec.init == "oracle":
        # A misspecified fit starts near what it converges to: G-check.
        start = oracle_start(
            scenario.truth if reference is None else reference,
            model,
            spec.assignment,
            X,
            scale=scenario.oracle_scale,
            rng=rng,
            var_floor=var_floor,
        )
        engine = {"em": partial(em, accelerate=False, stop_on_ridge=False), "mle": mle}[
            spec.solver
        ]
        result = engine(
            model.with_params(start),
            design,
            y,
            tol=scenario.tol,
            max_iter=scenario.max_iter,
            var_floor=var_floor,
        )
        if spec.polish:
            result = polish_fit(result, design, y, var_floor=var_floor)
        return result
    best, _ = fit_restarts(
        model, design, X, y, rng=rng, **_restart_options(scenario, spec, var_floor)
    )
    return best


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
    backend: str,
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
        "backend": backend,
    }


def run_cell(
    scenario: Scenario | str,
    cell: Cell,
    reference: MixtureOfExperts | None = None,
    *,
    backend: str = "numpy",
    device: Any = None,
    dtype: Any = None,
) -> dict[str, Any]:
    """Draw the cell's sample, fit, and measure the losses.

    Parameters
    ----------
    scenario : Scenario or str
        The scenario (or its id).
    cell : Cell
        Which fit, n and replicate.
    reference : MixtureOfExperts, optional
        The best approximation the losses are measured against, for a
        misspecified fit (see :func:`population_fit`).
    backend : {"numpy", "torch"}, default="numpy"
        The engine (a joblib backend name means ``"numpy"``). ``"torch"``
        fits the cell as a batch of one through
        :func:`moestat.torch.fit.fit_batched`, from the same sample and
        start.
    device : str or torch.device, optional
        Where the torch engine computes (default the CPU).
    dtype : {"float64", "float32"}, optional
        The torch engine's precision (default float64).

    Returns
    -------
    dict
        One record: the cell's identity and seed, the fit's log-likelihood
        and that of the truth, iterations, convergence, the optimisation
        failure flag of theory.md §4.7, the fit time, the losses, the count
        and first text of warnings raised inside the cell, and the engine
        (``backend``).
    """
    scenario = get_scenario(scenario)
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
    spec = scenario.fit(cell.fit)
    if backend == "torch":
        _check_torch(scenario, [spec], device, dtype)
        return _run_torch_batch(scenario, spec, [cell], reference, device, dtype)[0]
    seed = cell.seed
    fit_rng = np.random.default_rng([seed, _stable_hash(cell.fit)])
    population = scenario.kind == "approximation"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        if population:
            result = _population_cell(scenario, spec, fit_rng)
        else:
            data_rng = np.random.default_rng(seed)
            X = scenario.covariates.sample(cell.n, data_rng)
            y, _ = scenario.truth.sample(X, data_rng)
            result = _fit_cell(scenario, spec, X, y, fit_rng, reference)
        fit_time = time.perf_counter() - start
        losses = _loss_columns(scenario, spec, result.model, reference)
    ll_true = np.nan if population else float(scenario.truth.log_pdf(X, y).sum())
    messages = [str(warning.message) for warning in caught]
    return _record(
        scenario, spec, cell, result, ll_true, fit_time, losses, messages, "numpy"
    )


# -- the torch engine: many cells of one fit in one batch ------------------------
@dataclass
class _Prepared:
    """A cell's sample, design and starts, ready to join a batch."""

    cell: Cell
    design: Design
    y: NDArray[np.float64]
    weight: NDArray[np.float64] | None
    var_floor: float
    starts: list[MoEParams]
    options: dict[str, Any]  # solver, tol and max_iter of the engine
    restarts: bool  # keep the best start, as fit_restarts does
    ll_true: float
    seconds: float
    messages: list[str]


def _prepare_cell(
    scenario: Scenario,
    spec: FitSpec,
    cell: Cell,
    reference: MixtureOfExperts | None,
) -> _Prepared:
    """Sample and starts of a cell, from the numpy engine's seeds and code."""
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
            else:
                restart = _restart_options(scenario, spec, var_floor)
                starts = restart_starts(
                    model,
                    design,
                    X,
                    y,
                    n_experts=restart["n_experts"],
                    init=restart["init"],
                    n_init=restart["n_init"],
                    rng=fit_rng,
                    var_floor=var_floor,
                )
                restarts = True
                options = {k: restart[k] for k in ("solver", "tol", "max_iter")}
        seconds = time.perf_counter() - start
    ll_true = np.nan if population else float(scenario.truth.log_pdf(X, y).sum())
    return _Prepared(
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


def _fit_starts(
    model: MixtureOfExperts,
    prepared: Sequence[_Prepared],
    starts: Sequence[Sequence[MoEParams]],
    options: dict[str, Any],
    device: Any,
    dtype: Any,
    weighted: bool,
) -> list[list[FitResult]]:
    """Every start of every cell in one :func:`fit_batched` call, per cell."""
    from moestat.torch.fit import fit_batched

    designs, ys, flat, floors, weights, owners = [], [], [], [], [], []
    for index, (cell, cell_starts) in enumerate(zip(prepared, starts, strict=True)):
        for start in cell_starts:
            designs.append(cell.design)
            ys.append(cell.y)
            flat.append(start)
            floors.append(cell.var_floor)
            weights.append(cell.weight)
            owners.append(index)
    results = fit_batched(
        model,
        designs,
        ys,
        flat,
        solver=options["solver"],
        tol=options["tol"],
        max_iter=options["max_iter"],
        var_floor=floors,
        sample_weight=weights if weighted else None,
        device=device,
        dtype=dtype,
    )
    grouped: list[list[FitResult]] = [[] for _ in prepared]
    for owner, result in zip(owners, results, strict=True):
        grouped[owner].append(result)
    return grouped


def _fit_prepared(
    scenario: Scenario,
    spec: FitSpec,
    prepared: Sequence[_Prepared],
    device: Any,
    dtype: Any,
) -> tuple[list[FitResult], float, list[str]]:
    """Fit the prepared cells in one batch (and polish them in a second).

    Returns the fit of each cell, the seconds taken and the warnings raised.
    """
    population = scenario.kind == "approximation"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        grouped = _fit_starts(
            spec.model,
            prepared,
            [cell.starts for cell in prepared],
            prepared[0].options,
            device,
            dtype,
            weighted=population,
        )
        results = [
            best_restart(fits) if cell.restarts else fits[0]
            for cell, fits in zip(prepared, grouped, strict=True)
        ]
        if spec.polish and not population:
            results = _polish_batch(scenario, spec, prepared, results, device, dtype)
        seconds = time.perf_counter() - start
    return results, seconds, [str(warning.message) for warning in caught]


def _polish_batch(
    scenario: Scenario,
    spec: FitSpec,
    prepared: Sequence[_Prepared],
    results: Sequence[FitResult],
    device: Any,
    dtype: Any,
) -> list[FitResult]:
    """:func:`polish_fit` of every cell, its L-BFGS runs in one batch."""
    # fit_restarts polishes a restarted fit with the fit's own max_iter
    capped = scenario.max_iter
    polished = _fit_starts(
        spec.model,
        prepared,
        [[result.model.params] for result in results],
        {
            "solver": "mle",
            "tol": POLISH_TOL,
            "max_iter": capped if prepared[0].restarts else POLISH_ITER,
        },
        device,
        dtype,
        weighted=False,
    )
    return [
        keep_polished(result, fits[0])
        for result, fits in zip(results, polished, strict=True)
    ]


def _finish_cell(
    scenario: Scenario,
    spec: FitSpec,
    cell: Cell,
    result: FitResult,
    reference: MixtureOfExperts | None,
    ll_true: float,
    fit_time: float,
    messages: Sequence[str],
) -> dict[str, Any]:
    """Losses and record of a cell fitted in a batch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _loss_columns(scenario, spec, result.model, reference)
    messages = [*messages, *(str(warning.message) for warning in caught)]
    return _record(
        scenario, spec, cell, result, ll_true, fit_time, losses, messages, "torch"
    )


def _in_process(tasks: Any) -> list[Any]:
    """Run joblib ``delayed`` tasks one after the other, here."""
    return [function(*args, **kwargs) for function, args, kwargs in tasks]


# -- worker processes end with the sweep -------------------------------------------
# Seconds between two looks of a worker at its parent process.
_PARENT_POLL = 0.5
# The parent a worker process watches (set once per process).
_watched_parent: int | None = None


def _exit_with_parent(parent: int) -> None:
    """Make this worker process exit as soon as the sweep's process ``parent`` is gone.

    For joblib's loky workers, which are children of the sweep's process
    and would otherwise live on, idle, for minutes after it is killed
    (SIGKILL leaves it no time to stop them). Once per process, a daemon
    thread looks at the parent pid every half second and ends the process
    (``os._exit(1)``) when it has changed, i.e. when the worker was adopted
    by another process; a worker that finds itself adopted already (the
    sweep was killed while it started) exits at once. A no-op in the
    sweep's own process (threads, sequential runs). Not for Dask's workers,
    which are not the sweep's children.
    """
    global _watched_parent
    if _watched_parent == parent or os.getpid() == parent:
        return
    if os.getppid() != parent:
        os._exit(1)
    _watched_parent = parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL)
        os._exit(1)

    threading.Thread(target=watch, name="moestat-exit-with-parent", daemon=True).start()


def _task(parent: int | None, function: Any, *args: Any) -> Any:
    """``function(*args)`` in a worker that exits with ``parent`` (if given)."""
    if parent is not None:
        _exit_with_parent(parent)
    return function(*args)


def _run_torch_batch(
    scenario: Scenario,
    spec: FitSpec,
    cells: Sequence[Cell],
    reference: MixtureOfExperts | None,
    device: Any,
    dtype: Any,
    parallel: Any = None,
    parent: int | None = None,
) -> list[dict[str, Any]]:
    """Records of cells of one fit, fitted together in one torch batch.

    Samples, starts and losses are computed per cell (by ``parallel``, a
    joblib ``Parallel``, when given; its worker processes exit with the
    process ``parent`` when it is given, see :func:`_task`); the fits in one
    batch. Each record's ``fit_time`` is its own sampling and starts plus an
    equal share of the batch; warnings raised by the batched fit are counted
    in every cell.
    """
    run = _in_process if parallel is None else parallel
    prepared = run(
        delayed(_task)(parent, _prepare_cell, scenario, spec, cell, reference)
        for cell in cells
    )
    results, seconds, messages = _fit_prepared(scenario, spec, prepared, device, dtype)
    share = seconds / len(prepared)
    return run(
        delayed(_task)(
            parent,
            _finish_cell,
            scenario,
            spec,
            cell.cell,
            result,
            reference,
            cell.ll_true,
            cell.seconds + share,
            [*cell.messages, *messages],
        )
        for cell, result in zip(prepared, results, strict=True)
    )


def _check_torch(
    scenario: Scenario, specs: Sequence[FitSpec], device: Any, dtype: Any
) -> None:
    """Refuse, before any work, what the torch engine cannot run."""
    try:
        from moestat.torch._device import resolve_device, resolve_dtype
        from moestat.torch.pieces import (
            SUPPORTED_EXPERTS,
            SUPPORTED_GATES,
            torch_expert,
            torch_gate,
        )
    except ImportError as error:
        raise ImportError(
            "backend='torch' needs PyTorch: `pip install 'moestat[torch]'`, or "
            "use backend='numpy'."
        ) from error
    resolve_device(device)
    resolve_dtype(dtype)
    X = scenario.covariates.sample(2, np.random.default_rng(0))
    for spec in specs:
        model = spec.model
        design = model.design(X)
        try:
            torch_gate(model.gate, spec.n_experts, design.gate.shape[1])
            torch_expert(model.expert, spec.n_experts, design.expert.shape[1])
        except ValueError as error:
            raise ValueError(
                f"Scenario {scenario.id} (fit {spec.label!r}) cannot run with "
                f"backend='torch': its model has a {model.gate.describe()} gate "
                f"and {type(model.expert).__name__} experts. The torch backend "
                f"supports the gates {', '.join(SUPPORTED_GATES)} and the experts "
                f"{', '.join(SUPPORTED_EXPERTS)}; use backend='numpy' for "
                f"{scenario.id}."
            ) from error


def _cell_rows(scenario: Scenario, spec: FitSpec, cell: Cell) -> int:
    """Rows a cell adds to a batch: its sample size times its starts."""
    if scenario.kind == "approximation":
        return scenario.x_nodes * _POPULATION_Y_NODES
    return cell.n * (spec.n_init if spec.init != "oracle" else 1)


def plan_batches(
    scenario: Scenario,
    cells: Sequence[Cell],
    batch_cells: int | None = None,
    max_rows: int = TORCH_BATCH_ROWS,
) -> list[tuple[FitSpec, list[Cell]]]:
    """Group cells into the torch engine's batches.

    A batch holds cells of one fit in increasing n (then replicate). It is
    closed before a cell that would make it hold more than ``batch_cells``
    cells, more than ``max_rows`` padded rows (cells times starts times the
    largest sample), or a sample more than twice its smallest (padding
    rows then cost at most as much as the data).

    Parameters
    ----------
    scenario : Scenario
        The scenario of the cells.
    cells : sequence of Cell
        The cells to run.
    batch_cells : int, optional
        Most cells in one batch; None for no limit but ``max_rows``.
    max_rows : int, default=TORCH_BATCH_ROWS
        Most padded rows in one batch (a single larger cell is a batch).

    Returns
    -------
    list of (FitSpec, list of Cell)
    """
    by_fit: dict[str, list[Cell]] = {}
    for cell in cells:
        by_fit.setdefault(cell.fit, []).append(cell)
    batches = []
    for label, group in by_fit.items():
        spec = scenario.fit(label)
        current: list[Cell] = []
        for cell in sorted(group, key=lambda c: (c.n, c.replicate)):
            rows = _cell_rows(scenario, spec, cell)
            if current and (
                (batch_cells is not None and len(current) >= batch_cells)
                or (len(current) + 1) * rows > max_rows
                or rows > 2 * _cell_rows(scenario, spec, current[0])
            ):
                batches.append((spec, current))
                current = []
            current.append(cell)
        if current:
            batches.append((spec, current))
    return batches


# -- the sweep -------------------------------------------------------------------
@contextlib.contextmanager
def _backend(backend: str, scheduler: Any, n_jobs: int) -> Iterator[None]:
    """The joblib backend of a sweep, for the ``Parallel`` calls inside.

    loky's worker processes start by watching this process, and exit when
    it is gone (:func:`_exit_with_parent`), idle ones included.
    """
    if backend == "numpy":
        backend = "loky"
    if backend not in _JOBLIB_BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
    if backend != "dask":
        workers = {}
        if backend == "loky":
            workers = {"initializer": _exit_with_parent, "initargs": (os.getpid(),)}
        with parallel_config(backend=backend, n_jobs=n_jobs, **workers):
            yield
        return
    try:
        from dask.distributed import Client
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "backend='dask' needs dask.distributed: pip install 'moestat[dask]'."
        ) from error
    if isinstance(scheduler, Client):
        client, own = scheduler, False
    elif scheduler is None:
        raise ValueError(
            "backend='dask' needs a scheduler: an address such as "
            "'tcp://10.0.0.1:8786' or a dask.distributed.Client."
        )
    else:
        client, own = Client(scheduler), True
    try:
        with parallel_config(
            backend="dask", n_jobs=n_jobs, wait_for_workers_timeout=60
        ):
            yield
    finally:
        if own:
            client.close()


def simulate(
    scenario: Scenario | str,
    out_dir: str | os.PathLike,
    *,
    n_grid: Sequence[int] | None = None,
    n_reps: int | None = None,
    fits: Sequence[str] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    backend: str = "numpy",
    scheduler: Any = None,
    progress: bool = True,
    device: Any = None,
    dtype: Any = None,
    batch_cells: int | None = None,
) -> ResultStore:
    """Run (or resume) a sweep and store every finished cell in ``out_dir``.

    Parameters
    ----------
    scenario : Scenario or str
        A scenario or its id (``moestat.simulation.SCENARIOS``).
    out_dir : path-like
        Directory of the results store; a sweep run again with the same
        arguments and directory runs only the cells not yet stored. A sweep
        with cells to run holds the directory's lock while it writes, and
        decides which cells to run once it has it; one with nothing left to
        run writes nothing (a finished store may be read-only).
    n_grid : sequence of int, optional
        Sample sizes; default the scenario's.
    n_reps : int, optional
        Replications per sample size; default the scenario's.
    fits : sequence of str, optional
        Labels of the fits to run; default all of the scenario's.
    seed : int, default=0
        Root seed; cell seeds are derived from it and the cell.
    n_jobs : int, default=1
        Parallel workers (joblib; -1 for all cores). With
        ``backend="torch"`` they draw the samples and starts and compute
        the losses of a batch's cells; the batch itself is one torch call.
    backend : {"numpy", "torch", "loky", "threading", "sequential", "dask"}, \
default="numpy"
        The engine. ``"numpy"`` fits one cell at a time, in parallel
        through joblib's ``loky`` backend; ``"loky"``, ``"threading"``,
        ``"sequential"`` and ``"dask"`` do the same through that joblib
        backend (``"dask"`` on a dask.distributed cluster). ``"torch"``
        fits many cells of one fit in one batch
        (:func:`moestat.torch.fit.fit_batched`, see :func:`plan_batches`),
        from the same samples and starts as the numpy engine; scenarios with
        pieces the torch backend lacks (ReLU or stacked experts: DS-1, DS-3,
        DS-4) are refused with a ValueError.
    scheduler : str or dask.distributed.Client, optional
        Scheduler address (or client) for ``backend="dask"``.
    progress : bool, default=True
        Show a tqdm progress bar.
    device : str or torch.device, optional
        Where the torch engine computes (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``); default the CPU. Ignored by the numpy engine.
    dtype : {"float64", "float32"}, optional
        The torch engine's precision; default float64.
    batch_cells : int, optional
        Most cells in one torch batch; default no limit other than about
        four million padded rows (:data:`TORCH_BATCH_ROWS`).

    Returns
    -------
    ResultStore
        The store; ``moestat.simulation.load_results(out_dir)`` reads it as
        a DataFrame. Each record's ``backend`` column names its engine
        (``"numpy"`` or ``"torch"``).

    Raises
    ------
    ValueError
        For an unknown backend, bad grid or replications, or
        ``backend="torch"`` with a scenario, device or dtype the torch
        backend cannot run.
    NotAStoreError
        If ``out_dir`` is a file, or its ``cells.jsonl`` is not a results
        store (nothing is written).
    StoreLockedError
        If another sweep is writing to ``out_dir``.
    StoreWriteError
        If ``out_dir`` cannot be written (read-only, disk full, ...); every
        cell stored before is kept.
    SweepInterrupted
        On Ctrl-C (a ``KeyboardInterrupt``), with the number of cells
        stored; every finished cell is kept.

    Examples
    --------
    >>> import tempfile
    >>> from moestat.simulation import simulate, load_results
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = simulate("SG-E", tmp, n_grid=[200, 400], n_reps=2, progress=False)
    ...     table = load_results(tmp)
    >>> len(table), sorted(table["n"].unique().tolist())
    (4, [200, 400])
    """
    scenario = get_scenario(scenario)
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
    if n_reps is not None and (isinstance(n_reps, bool) or int(n_reps) < 1):
        raise ValueError(f"n_reps must be a positive integer; got {n_reps!r}.")
    if batch_cells is not None and (
        isinstance(batch_cells, bool) or int(batch_cells) < 1
    ):
        raise ValueError(
            f"batch_cells must be a positive integer; got {batch_cells!r}."
        )
    if scenario.kind == "approximation" and n_grid is not None:
        raise ValueError(
            f"Scenario {scenario.id} fits the population, not samples: it takes "
            "no n_grid (its replications are restarts)."
        )
    grid = scenario.n_grid if n_grid is None else tuple(int(n) for n in n_grid)
    if scenario.kind == "rate" and (not grid or min(grid) < 2):
        raise ValueError(f"n_grid must hold sample sizes >= 2; got {list(grid)}.")
    reps = scenario.n_reps if n_reps is None else int(n_reps)
    planned = plan_cells(scenario, grid, reps, seed, fits)
    if backend == "torch":
        labels = {cell.fit for cell in planned}
        specs = [spec for spec in scenario.fits if spec.label in labels]
        _check_torch(scenario, specs, device, dtype)
    store = ResultStore(out_dir)  # reads; writes nothing
    missing = [cell for cell in planned if cell.key not in store]
    if not missing:
        return store  # nothing to do: no lock, directory or file is created
    store.check_appendable()
    try:
        with store.writing(len(missing), len(planned)):
            # decided under the lock: another sweep may have stored cells since
            cells = [cell for cell in planned if cell.key not in store]
            _run_cells(
                scenario,
                store,
                cells,
                n_jobs=n_jobs,
                backend=backend,
                scheduler=scheduler,
                progress=progress,
                device=device,
                dtype=dtype,
                batch_cells=batch_cells,
            )
    except KeyboardInterrupt:
        stored = sum(cell.key in store for cell in planned)
        raise SweepInterrupted(stored, len(planned), str(store.out_dir)) from None
    return store


def _run_cells(
    scenario: Scenario,
    store: ResultStore,
    cells: Sequence[Cell],
    *,
    n_jobs: int,
    backend: str,
    scheduler: Any,
    progress: bool,
    device: Any,
    dtype: Any,
    batch_cells: int | None,
) -> None:
    """Run ``cells`` and append each record to ``store`` as it arrives."""
    references = {
        spec.label: population_fit(
            scenario.truth,
            spec.reference,
            spec.reference_assignment,
            scenario.covariates,
        )
        for spec in scenario.fits
        if spec.reference is not None and any(c.fit == spec.label for c in cells)
    }
    bar = progress_bar(
        total=len(cells),
        desc=f"{scenario.id}",
        unit="cell",
        disable=not progress,
    )
    # loky's worker processes exit with this one (see _exit_with_parent):
    # _backend starts each with the watch, and each task checks it is on;
    # threads and sequential runs are this process, Dask's workers are not
    # its children
    parent = os.getpid()
    if backend == "torch":
        batch = None if batch_cells is None else int(batch_cells)
        with bar, _backend("loky", None, n_jobs), Parallel() as parallel:
            for spec, group in plan_batches(scenario, cells, batch):
                records = _run_torch_batch(
                    scenario,
                    spec,
                    group,
                    references.get(spec.label),
                    device,
                    dtype,
                    parallel,
                    parent,
                )
                store.extend(records)  # stored as soon as the batch is done
                bar.update(len(records))
        return
    guard = parent if backend in ("numpy", "loky") else None
    with bar, _backend(backend, scheduler, n_jobs):
        tasks = (
            delayed(_task)(guard, run_cell, scenario, cell, references.get(cell.fit))
            for cell in cells
        )
        for record in Parallel(return_as="generator_unordered")(tasks):
            store.append(record)
            bar.update()
