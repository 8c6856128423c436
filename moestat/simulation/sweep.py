"""Sweeps: (scenario, fit) x n grid x replications, resumable and parallel.

A sweep plans its cells (:mod:`moestat.simulation.plan`: one fit of one
model to one sample, seeded by the cell itself), fits them with an engine
(:mod:`moestat.simulation.engines`, ``engine=``) and runs the work of single
cells here or on workers (:mod:`moestat.simulation.runners`,
``parallel=``). Finished cells go to a
:class:`~moestat.simulation.store.ResultStore` as they arrive; a sweep run
again with the same arguments and directory skips them and runs the rest.

The two choices are independent. The numpy engine (``engine="numpy"``)
fits one cell at a time, each cell in one task; the torch engine
(``engine="torch"``) fits many cells of one fit at once through
:func:`moestat.torch.fit.fit_batched`, from the samples and starts the
numpy engine draws from the same seeds, so the two give comparable records
cell by cell. ``parallel=`` says where the tasks run: ``"loky"`` (worker
processes, the default), ``"threading"``, ``"sequential"`` or ``"dask"``
(a dask.distributed cluster). A cell's key and seed depend on neither, so
a store written one way is resumed by any other; each record's
``backend`` column names the engine that fitted it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from moestat._threads import limit_blas_threads
from moestat.model import MixtureOfExperts
from moestat.simulation.engines import ENGINES, make_engine
from moestat.simulation.plan import (
    TORCH_BATCH_ROWS,
    Cell,
    cell_seed,
    plan_batches,
    plan_cells,
)
from moestat.simulation.runners import PARALLEL_BACKENDS, run_sweep
from moestat.simulation.scenarios import Scenario, get_scenario
from moestat.simulation.store import ResultStore
from moestat.simulation.truth import (
    oracle_params,
    oracle_start,
    population_fit,
    pseudo_sample,
)

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
    "ENGINES",
    "PARALLEL_BACKENDS",
    "BACKENDS",
    "TORCH_BATCH_ROWS",
]

#: The words of the deprecated ``backend=`` of :func:`simulate` and
#: :func:`run_cell`: the engines and the joblib backends of the numpy
#: engine (``engine=`` and ``parallel=`` in one word).
BACKENDS = ("numpy", "torch", "loky", "threading", "sequential", "dask")
# (engine, parallel) of each backend= word.
_BACKEND_MEANING = {
    "numpy": ("numpy", "loky"),
    "torch": ("torch", "loky"),
    "loky": ("numpy", "loky"),
    "threading": ("numpy", "threading"),
    "sequential": ("numpy", "sequential"),
    "dask": ("numpy", "dask"),
}


def _from_backend(
    function: str, backend: str, engine: str | None, parallel: str | None
) -> tuple[str, str]:
    """``(engine, parallel)`` of a deprecated ``backend=``, with its FutureWarning."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}.")
    if engine is not None or parallel is not None:
        raise ValueError(
            f"backend={backend!r} is the deprecated spelling of engine= and "
            "parallel=; give engine= and parallel= only."
        )
    engine, parallel = _BACKEND_MEANING[backend]
    instead = f"engine={engine!r}"
    if function == "simulate":
        instead += f", parallel={parallel!r}"
    warnings.warn(
        f"{function}(backend={backend!r}) is deprecated and will be removed in "
        f"the next release; use {function}({instead}).",
        FutureWarning,
        stacklevel=3,
    )
    return engine, parallel


def _engine_and_parallel(
    engine: str | None, parallel: str | None, scheduler: Any
) -> tuple[str, str]:
    """The engine and the parallel backend of a sweep, checked together."""
    engine = "numpy" if engine is None else engine
    parallel = "loky" if parallel is None else parallel
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; choose one of {ENGINES}.")
    if parallel not in PARALLEL_BACKENDS:
        raise ValueError(
            f"Unknown parallel backend {parallel!r}; choose one of {PARALLEL_BACKENDS}."
        )
    if engine == "torch" and parallel == "dask":
        raise ValueError(
            "engine='torch' fits its batches in this process, on its device; "
            "it draws the samples and measures the losses with parallel='loky', "
            "'threading' or 'sequential', not 'dask'. Use engine='numpy' on a "
            "Dask cluster."
        )
    if parallel == "dask" and scheduler is None:
        raise ValueError(
            "parallel='dask' needs a scheduler: an address such as "
            "'tcp://10.0.0.1:8786' or a dask.distributed.Client."
        )
    if parallel != "dask" and scheduler is not None:
        raise ValueError(
            f"scheduler= is for parallel='dask', not parallel={parallel!r}."
        )
    return engine, parallel


def run_cell(
    scenario: Scenario | str,
    cell: Cell,
    reference: MixtureOfExperts | None = None,
    *,
    engine: str | None = None,
    device: Any = None,
    dtype: Any = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Draw the cell's sample, fit, and measure the losses, in this process.

    Parameters
    ----------
    scenario : Scenario or str
        The scenario (or its id).
    cell : Cell
        Which fit, n and replicate.
    reference : MixtureOfExperts, optional
        The best approximation the losses are measured against, for a
        misspecified fit (see :func:`population_fit`).
    engine : {"numpy", "torch"}, default="numpy"
        The engine. ``"torch"`` fits the cell as a batch of one through
        :func:`moestat.torch.fit.fit_batched`, from the same sample and
        start.
    device : str or torch.device, optional
        Where the torch engine computes (default the CPU).
    dtype : {"float64", "float32"}, optional
        The torch engine's precision (default float64).
    backend : str, optional
        Deprecated spelling of ``engine`` (a word of :data:`BACKENDS`; a
        joblib backend means ``"numpy"``), with a FutureWarning.

    Returns
    -------
    dict
        One record: the cell's identity and seed, the fit's log-likelihood
        and that of the truth, iterations, convergence, the optimisation
        failure flag of theory.md §4.7, the fit time, the losses, the count
        and first text of warnings raised inside the cell, and the engine
        (``backend``).

    Raises
    ------
    ValueError
        For an unknown engine, or ``backend`` with ``engine``.
    """
    scenario = get_scenario(scenario)
    if backend is not None:
        engine, _ = _from_backend("run_cell", backend, engine, None)
    fitter = make_engine(
        "numpy" if engine is None else engine, device=device, dtype=dtype
    )
    fitter.check(scenario, [scenario.fit(cell.fit)])
    references = {} if reference is None else {cell.fit: reference}
    with limit_blas_threads():
        (records,) = fitter.records(scenario, [cell], references)
    return records[0]


def simulate(
    scenario: Scenario | str,
    out_dir: str | os.PathLike,
    *,
    n_grid: Sequence[int] | None = None,
    n_reps: int | None = None,
    fits: Sequence[str] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    engine: str | None = None,
    parallel: str | None = None,
    scheduler: Any = None,
    progress: bool = True,
    device: Any = None,
    dtype: Any = None,
    batch_cells: int | None = None,
    backend: str | None = None,
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
        Parallel workers (-1 for all cores). With ``engine="torch"`` they
        draw the samples and starts and compute the losses of a batch's
        cells; the batch itself is one torch call.
    engine : {"numpy", "torch"}, default="numpy"
        What fits the cells. ``"numpy"`` fits one cell at a time, each cell
        in one task of ``parallel``. ``"torch"`` fits many cells of one
        fit in one batch (:func:`moestat.torch.fit.fit_batched`, see
        :func:`plan_batches`) on ``device``, from the same samples and
        starts as the numpy engine; it runs every built-in scenario, and
        refuses with a ValueError a scenario whose pieces the torch backend
        lacks (a user-written family without batched kernels).
    parallel : {"loky", "threading", "sequential", "dask"}, default="loky"
        Where the tasks run, through joblib: ``"loky"`` worker processes,
        ``"threading"`` threads, ``"sequential"`` this process one after
        the other, ``"dask"`` a dask.distributed cluster (numpy engine
        only; needs ``scheduler``). The cells are the same whichever runs
        them.
    scheduler : str or dask.distributed.Client, optional
        Scheduler address (or client) for ``parallel="dask"``.
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
    backend : str, optional
        Deprecated: one word of :data:`BACKENDS` for ``engine`` and
        ``parallel`` together (``"numpy"`` and ``"torch"``: that engine on
        ``"loky"``; a joblib backend: the numpy engine on it), with a
        FutureWarning. It will be removed in the next release.

    Returns
    -------
    ResultStore
        The store; ``moestat.simulation.load_results(out_dir)`` reads it as
        a DataFrame. Each record's ``backend`` column names its engine
        (``"numpy"`` or ``"torch"``).

    Raises
    ------
    ValueError
        For an unknown engine or parallel backend, a combination that does
        not go together (``engine="torch"`` with ``parallel="dask"``,
        ``scheduler`` without ``parallel="dask"`` or the other way round,
        ``backend`` with ``engine`` or ``parallel``), bad grid or
        replications, or ``engine="torch"`` with a scenario, device or
        dtype the torch backend cannot run.
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
    if backend is not None:
        engine, parallel = _from_backend("simulate", backend, engine, parallel)
    engine, parallel = _engine_and_parallel(engine, parallel, scheduler)
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
    fitter = make_engine(
        engine,
        device=device,
        dtype=dtype,
        batch_cells=None if batch_cells is None else int(batch_cells),
    )
    labels = {cell.fit for cell in planned}
    fitter.check(scenario, [spec for spec in scenario.fits if spec.label in labels])
    return run_sweep(
        scenario,
        out_dir,
        planned,
        fitter,
        parallel=parallel,
        scheduler=scheduler,
        n_jobs=n_jobs,
        progress=progress,
    )
