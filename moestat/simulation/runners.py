"""Running a sweep: where the cells' work runs, and how it reaches the store.

The work of single cells (a whole cell with the numpy engine; a cell's
sample, starts and losses with the torch engine) runs through joblib
(``parallel=``):

- ``"loky"``: worker processes on this machine (``n_jobs`` of them). They
  watch the sweep's process and exit as soon as it is gone, killed
  included, instead of living on idle for minutes;
- ``"threading"``: threads of this process;
- ``"sequential"``: this process, one cell after the other;
- ``"dask"``: the workers of a dask.distributed cluster (``scheduler=``).

Each cell runs with BLAS at one thread (:mod:`moestat._threads`): the
products of a fit are too thin for more. Records are stored as they
arrive, under the store's lock; Ctrl-C keeps every stored cell and raises
:class:`~moestat.exceptions.SweepInterrupted`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from joblib import Parallel, delayed, parallel_config

from moestat._progress import progress_bar
from moestat._threads import limit_blas_threads
from moestat.exceptions import SweepInterrupted
from moestat.simulation.engines import CellWorkers, SweepEngine
from moestat.simulation.plan import Cell
from moestat.simulation.scenarios import Scenario
from moestat.simulation.store import ResultStore
from moestat.simulation.truth import population_fit

__all__ = ["PARALLEL_BACKENDS", "CellWorkers", "run_sweep"]

#: Ways of running the cells of :func:`~moestat.simulation.simulate`
#: (``parallel=``): joblib's backends.
PARALLEL_BACKENDS = ("sequential", "loky", "threading", "dask")


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


def _task(parent: int, guard: bool, function: Any, *args: Any) -> Any:
    """``function(*args)`` for the sweep of process ``parent``, with one BLAS thread.

    In another process the task limits BLAS itself, and with ``guard`` (loky)
    the process exits with ``parent`` (:func:`_exit_with_parent`). In the
    sweep's own process (threads, sequential runs) the sweep has limited
    BLAS already: the limit is process-wide, and threads setting and
    restoring it in turn would undo one another's.
    """
    if os.getpid() == parent:
        return function(*args)
    if guard:
        _exit_with_parent(parent)
    with limit_blas_threads():
        return function(*args)


class _JoblibWorkers:
    """Tasks on the joblib backend in force (:func:`_parallel_backend`)."""

    def __init__(self, parent: int, guard: bool) -> None:
        self.parent = parent
        self.guard = guard

    def map(
        self,
        function: Callable[..., Any],
        arguments: Iterable[tuple[Any, ...]],
        *,
        ordered: bool = True,
    ) -> Iterator[Any]:
        tasks = (
            delayed(_task)(self.parent, self.guard, function, *args)
            for args in arguments
        )
        if ordered:
            return iter(Parallel()(tasks))
        return Parallel(return_as="generator_unordered")(tasks)


@contextlib.contextmanager
def _parallel_backend(parallel: str, scheduler: Any, n_jobs: int) -> Iterator[None]:
    """The joblib backend of a sweep, for the ``Parallel`` calls inside.

    loky's worker processes start by watching this process, and exit when
    it is gone (:func:`_exit_with_parent`), idle ones included.
    """
    if parallel not in PARALLEL_BACKENDS:
        raise ValueError(
            f"Unknown parallel backend {parallel!r}; choose one of {PARALLEL_BACKENDS}."
        )
    if parallel != "dask":
        workers = {}
        if parallel == "loky":
            workers = {"initializer": _exit_with_parent, "initargs": (os.getpid(),)}
        with parallel_config(backend=parallel, n_jobs=n_jobs, **workers):
            yield
        return
    try:
        from dask.distributed import Client
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "parallel='dask' needs dask.distributed: pip install 'moestat[dask]'."
        ) from error
    if isinstance(scheduler, Client):
        client, own = scheduler, False
    elif scheduler is None:
        raise ValueError(
            "parallel='dask' needs a scheduler: an address such as "
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


# -- the sweep and its store -------------------------------------------------------
def run_sweep(
    scenario: Scenario,
    out_dir: str | os.PathLike,
    planned: Sequence[Cell],
    engine: SweepEngine,
    *,
    parallel: str = "loky",
    scheduler: Any = None,
    n_jobs: int = 1,
    progress: bool = True,
) -> ResultStore:
    """Run the planned cells that ``out_dir`` does not hold yet, and store them.

    The cells left to run are decided under the store's lock (another
    sweep may have stored some since the store was read); a sweep with
    nothing left to run takes no lock and writes nothing.

    Parameters
    ----------
    scenario : Scenario
        The cells' scenario.
    out_dir : path-like
        Directory of the results store.
    planned : sequence of Cell
        Every cell of the sweep (:func:`~moestat.simulation.plan_cells`).
    engine : SweepEngine
        The engine that fits them (:mod:`moestat.simulation.engines`).
    parallel : {"sequential", "loky", "threading", "dask"}, default="loky"
        Where the work of single cells runs.
    scheduler : str or dask.distributed.Client, optional
        The Dask scheduler of ``parallel="dask"``.
    n_jobs : int, default=1
        Parallel workers (-1 for all cores).
    progress : bool, default=True
        Show a progress bar.

    Returns
    -------
    ResultStore
        The store.

    Raises
    ------
    SweepInterrupted
        On Ctrl-C, with the number of cells stored; every finished cell is
        kept.
    """
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
                engine,
                parallel=parallel,
                scheduler=scheduler,
                n_jobs=n_jobs,
                progress=progress,
            )
    except KeyboardInterrupt:
        stored = sum(cell.key in store for cell in planned)
        raise SweepInterrupted(stored, len(planned), str(store.out_dir)) from None
    return store


def _run_cells(
    scenario: Scenario,
    store: ResultStore,
    cells: Sequence[Cell],
    engine: SweepEngine,
    *,
    parallel: str,
    scheduler: Any,
    n_jobs: int,
    progress: bool,
) -> None:
    """Run ``cells`` and append each record to ``store`` as it arrives."""
    bar = progress_bar(
        total=len(cells),
        desc=f"{scenario.id}",
        unit="cell",
        disable=not progress,
    )
    # loky's worker processes exit with this one (see _exit_with_parent):
    # _parallel_backend starts each with the watch, and each task checks it
    # is on; threads and sequential runs are this process, Dask's workers
    # are not its children
    workers = _JoblibWorkers(os.getpid(), guard=parallel == "loky")
    with bar, limit_blas_threads(), _parallel_backend(parallel, scheduler, n_jobs):
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
        for records in engine.records(scenario, cells, references, workers):
            if len(records) == 1:
                store.append(records[0])
            else:  # a batch: one write
                store.extend(records)
            bar.update(len(records))
