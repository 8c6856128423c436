"""Sweeps: (scenario, fit) x n grid x replications, resumable and parallel.

A *cell* is one fit of one model to one sample: scenario, fit label, sample
size ``n`` and replicate number. Its seed is derived from the cell itself
(the root seed, the scenario id, ``n`` and the replicate), never from the
worker that runs it, so every backend gives the same numbers; all fits of a
scenario see the same sample at a given ``(n, replicate)``.

Finished cells go to a :class:`~moestat.simulation.store.ResultStore` as
they arrive; a sweep run again with the same arguments and directory skips
them and runs the rest.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed, parallel_config
from numpy.typing import NDArray
from tqdm.auto import tqdm

from moestat._validation import as_generator
from moestat.fit import (
    em,
    fit_restarts,
    initial_params,
    mle,
    pack,
    polish_fit,
    unpack,
)
from moestat.losses import (
    density_losses,
    kl_divergence,
    response_quadrature,
    voronoi_loss,
)
from moestat.model import MixtureOfExperts, MoEParams
from moestat.simulation.scenarios import FitSpec, Scenario, get_scenario
from moestat.simulation.store import ResultStore

__all__ = [
    "Cell",
    "plan_cells",
    "cell_seed",
    "oracle_params",
    "oracle_start",
    "population_fit",
    "pseudo_sample",
    "run_cell",
    "simulate",
    "BACKENDS",
]

BACKENDS = ("loky", "threading", "sequential", "dask")
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
        return (
            f"{self.scenario}/{self.fit}/n={self.n}/rep={self.replicate}"
            f"/seed={self.root_seed}"
        )

    @property
    def seed(self) -> int:
        """Seed of the sample (shared by every fit at this n and replicate)."""
        return cell_seed(self.root_seed, self.scenario, self.n, self.replicate)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def cell_seed(root_seed: int, scenario: str, n: int, replicate: int) -> int:
    """Seed of a sample, derived from the cell (never from the worker).

    ``SeedSequence([root_seed, crc32(scenario), n, replicate])`` reduced to
    one 32-bit integer, recorded with each cell so that any cell can be
    re-run alone.
    """
    sequence = np.random.SeedSequence([root_seed, _stable_hash(scenario), n, replicate])
    return int(sequence.generate_state(1)[0])


def plan_cells(
    scenario: Scenario,
    n_grid: Sequence[int],
    n_reps: int,
    seed: int = 0,
    fits: Sequence[str] | None = None,
) -> list[Cell]:
    """Every cell of a sweep, in a fixed order (n, then replicate, then fit)."""
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

    Returns
    -------
    X : ndarray of shape (x_nodes * q, d)
    y : ndarray of shape (x_nodes * q,)
    weight : ndarray of shape (x_nodes * q,)
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
        model, model.design(X), y, tol=tol, max_iter=max_iter, sample_weight=weight
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
def _population_cell(scenario: Scenario, spec: FitSpec, rng: np.random.Generator):
    """Population EM of one fit from one random start (approximation studies)."""
    X, y, weight = pseudo_sample(scenario.truth, scenario.covariates, scenario.x_nodes)
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
    )


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
        engine = {"em": em, "mle": mle}[spec.solver]
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
        model,
        design,
        X,
        y,
        n_experts=spec.n_experts,
        solver=spec.solver,
        init="auto",
        n_init=spec.n_init,
        rng=rng,
        tol=scenario.tol,
        max_iter=scenario.max_iter,
        var_floor=var_floor,
        polish=spec.polish,
    )
    return best


def _loss_columns(
    scenario: Scenario,
    spec: FitSpec,
    fitted: MixtureOfExperts,
    reference: MixtureOfExperts | None,
) -> dict[str, Any]:
    target = scenario.truth if reference is None else reference
    Xq, wq = scenario.covariates.quadrature(scenario.x_nodes)
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


def run_cell(
    scenario: Scenario | str,
    cell: Cell,
    reference: MixtureOfExperts | None = None,
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

    Returns
    -------
    dict
        One record: the cell's identity and seed, the fit's log-likelihood
        and that of the truth, iterations, convergence, the optimisation
        failure flag of theory.md §4.7, the fit time, the losses, and the
        count and first text of warnings raised inside the cell.
    """
    scenario = get_scenario(scenario)
    spec = scenario.fit(cell.fit)
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
    record = {
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
        "seed": seed,
        "log_likelihood": result.log_likelihood,
        "log_likelihood_true": ll_true,
        "opt_failure": bool(result.log_likelihood < ll_true - 1e-6 * cell.n),
        "monotone": bool(result.monotone),
        "n_iter": result.n_iter,
        "converged": bool(result.converged),
        "fit_time": fit_time,
        **losses,
        "n_warnings": len(caught),
        "first_warning": str(caught[0].message)[:200] if caught else "",
    }
    return record


# -- the sweep -------------------------------------------------------------------
@contextlib.contextmanager
def _backend(backend: str, scheduler: Any, n_jobs: int) -> Iterator[None]:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
    if backend != "dask":
        with parallel_config(backend=backend, n_jobs=n_jobs):
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
    backend: str = "loky",
    scheduler: Any = None,
    progress: bool = True,
) -> ResultStore:
    """Run (or resume) a sweep and store every finished cell in ``out_dir``.

    Parameters
    ----------
    scenario : Scenario or str
        A scenario or its id (``moestat.simulation.SCENARIOS``).
    out_dir : path-like
        Directory of the results store; a sweep run again with the same
        arguments and directory runs only the cells not yet stored.
    n_grid : sequence of int, optional
        Sample sizes; default the scenario's.
    n_reps : int, optional
        Replications per sample size; default the scenario's.
    fits : sequence of str, optional
        Labels of the fits to run; default all of the scenario's.
    seed : int, default=0
        Root seed; cell seeds are derived from it and the cell.
    n_jobs : int, default=1
        Parallel workers (joblib; -1 for all cores).
    backend : {"loky", "threading", "sequential", "dask"}, default="loky"
        joblib backend. ``"dask"`` runs the cells on a dask.distributed
        cluster through joblib's Dask backend.
    scheduler : str or dask.distributed.Client, optional
        Scheduler address (or client) for ``backend="dask"``.
    progress : bool, default=True
        Show a tqdm progress bar.

    Returns
    -------
    ResultStore
        The store; ``moestat.simulation.load_results(out_dir)`` reads it as
        a DataFrame.

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
    if n_reps is not None and (isinstance(n_reps, bool) or int(n_reps) < 1):
        raise ValueError(f"n_reps must be a positive integer; got {n_reps!r}.")
    if scenario.kind == "approximation" and n_grid is not None:
        raise ValueError(
            f"Scenario {scenario.id} fits the population, not samples: it takes "
            "no n_grid (its replications are restarts)."
        )
    grid = scenario.n_grid if n_grid is None else tuple(int(n) for n in n_grid)
    if scenario.kind == "rate" and (not grid or min(grid) < 2):
        raise ValueError(f"n_grid must hold sample sizes >= 2; got {list(grid)}.")
    reps = scenario.n_reps if n_reps is None else int(n_reps)
    store = ResultStore(out_dir)
    cells = [
        cell
        for cell in plan_cells(scenario, grid, reps, seed, fits)
        if cell.key not in store
    ]
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
    bar = tqdm(
        total=len(cells),
        desc=f"{scenario.id}",
        unit="cell",
        disable=not progress,
    )
    with bar, _backend(backend, scheduler, n_jobs):
        tasks = (
            delayed(run_cell)(scenario, cell, references.get(cell.fit))
            for cell in cells
        )
        for record in Parallel(return_as="generator_unordered")(tasks):
            store.append(record)
            bar.update()
    return store
