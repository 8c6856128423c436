"""The engines of a sweep: from cells to records, with numpy or with torch.

An engine (:class:`SweepEngine`) turns cells into records. Both engines
draw each cell's sample and starts with
:func:`~moestat.simulation.prepare.prepare_cell` and measure its fit with
:func:`~moestat.simulation.prepare.finish_cell`; they differ in how they
fit the starts:

- :class:`NumpyEngine` fits one cell at a time with :func:`moestat.fit.em`
  or :func:`moestat.fit.mle`, the whole cell in one task (run in parallel
  by the sweep's workers);
- :class:`TorchEngine` fits many cells of one fit at once through
  :func:`moestat.torch.fit.fit_batched` (batches of
  :func:`~moestat.simulation.plan_batches`), on a CPU or a GPU; the
  workers draw the samples and starts and measure the losses.

Both are also batch engines of :func:`moestat.fit.fit_restarts`
(:class:`moestat.fit.BatchEngine`): called on one data set, they fit every
start on it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from moestat._batched import batched_expert, batched_gate
from moestat.fit import (
    POLISH_ITER,
    POLISH_TOL,
    BatchEngine,
    FitResult,
    best_restart,
    em,
    keep_polished,
    mle,
    polish_fit,
)
from moestat.model import Design, MixtureOfExperts, MoEParams
from moestat.simulation.plan import Cell, plan_batches
from moestat.simulation.prepare import PreparedCell, finish_cell, prepare_cell
from moestat.simulation.scenarios import FitSpec, Scenario

__all__ = [
    "ENGINES",
    "SweepEngine",
    "CellWorkers",
    "NumpyEngine",
    "TorchEngine",
    "make_engine",
]

#: Engines of :func:`~moestat.simulation.simulate` (``engine=``).
ENGINES = ("numpy", "torch")


@runtime_checkable
class CellWorkers(Protocol):
    """Where an engine runs the work of single cells: in parallel, or here."""

    def map(
        self,
        function: Callable[..., Any],
        arguments: Iterable[tuple[Any, ...]],
        *,
        ordered: bool = True,
    ) -> Iterator[Any]:
        """``function(*args)`` for each tuple of ``arguments``.

        Parameters
        ----------
        function : callable
            A picklable function.
        arguments : iterable of tuple
            The positional arguments of each call.
        ordered : bool, default=True
            Give the results in the order of ``arguments``; False gives
            each as soon as it is done.

        Returns
        -------
        iterator
            The results.
        """
        ...


class _InProcess:
    """Every task here, one after the other."""

    def map(
        self,
        function: Callable[..., Any],
        arguments: Iterable[tuple[Any, ...]],
        *,
        ordered: bool = True,
    ) -> Iterator[Any]:
        return (function(*args) for args in arguments)


_IN_PROCESS = _InProcess()


@runtime_checkable
class SweepEngine(BatchEngine, Protocol):
    """An engine of a sweep: fits cells and gives their records.

    An engine is also a :class:`~moestat.fit.BatchEngine`: called on one data
    set, it fits every start on it, as
    :func:`~moestat.fit.fit_restarts` asks of its ``batch_engine``.

    Attributes
    ----------
    name : str
        The engine's name, written in each record's ``backend`` column.
    """

    name: str

    def check(self, scenario: Scenario, specs: Sequence[FitSpec]) -> None:
        """Refuse, before any work, fits this engine cannot run.

        Parameters
        ----------
        scenario : Scenario
            The scenario.
        specs : sequence of FitSpec
            The fits to run.

        Raises
        ------
        ValueError, ImportError
            Naming what cannot run and what to use instead.
        """
        ...

    def records(
        self,
        scenario: Scenario,
        cells: Sequence[Cell],
        references: Mapping[str, MixtureOfExperts],
        workers: CellWorkers | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Fit the cells and give their records as they are finished.

        Parameters
        ----------
        scenario : Scenario
            The cells' scenario.
        cells : sequence of Cell
            The cells to run.
        references : mapping of str to MixtureOfExperts
            The best approximation of each misspecified fit, by fit label.
        workers : CellWorkers, optional
            Where single cells' work runs; default here, one after the other.

        Yields
        ------
        list of dict
            The records of a cell, or of a batch of cells fitted together,
            to be stored in one write.
        """
        ...


# -- the numpy engine: one cell at a time --------------------------------------
class NumpyEngine:
    """Fits one cell at a time with :func:`~moestat.fit.em` or :func:`~moestat.fit.mle`.

    EM takes plain steps and walks ridges on, as the batched torch engine
    does, so both engines give the same cells (a boundary is still
    reported); restarts are fitted without split-and-merge moves, which are
    chosen among near-ties that the two engines' round-off can order
    differently.
    """

    name = "numpy"

    def __call__(
        self,
        model: MixtureOfExperts,
        design: Design,
        y: NDArray[np.float64],
        starts: list[MoEParams],
        *,
        solver: str,
        tol: float,
        max_iter: int,
        var_floor: float,
        sample_weight: NDArray[np.float64] | None = None,
    ) -> list[FitResult]:
        """Fit ``model`` to ``(design, y)`` from each start, one after the other.

        As :class:`~moestat.fit.BatchEngine`; ``sample_weight`` weights the
        samples (population EM, ``solver="em"`` only).
        """
        options: dict[str, Any] = {
            "tol": tol,
            "max_iter": max_iter,
            "var_floor": var_floor,
        }
        if solver == "em":
            options.update(accelerate=False, stop_on_ridge=False)
            if sample_weight is not None:
                options["sample_weight"] = sample_weight
            fit = em
        elif solver == "mle" and sample_weight is None:
            fit = mle
        else:
            raise ValueError(
                f"solver must be 'em', or 'mle' without sample weights; got {solver!r}."
            )
        return [fit(model.with_params(start), design, y, **options) for start in starts]

    def check(self, scenario: Scenario, specs: Sequence[FitSpec]) -> None:
        """Accept every fit: the numpy engine runs every gate and expert family."""

    def fit(self, scenario: Scenario, spec: FitSpec, cell: PreparedCell) -> FitResult:
        """The fit of a prepared cell: its best start, polished if the fit asks.

        The best restart is :func:`~moestat.fit.best_restart`'s; restarts
        are polished with the fit's own ``max_iter``, as
        :func:`~moestat.fit.fit_restarts` does, a single start as
        :func:`~moestat.fit.polish_fit` does.
        """
        options = cell.options
        results = self(
            spec.model,
            cell.design,
            cell.y,
            cell.starts,
            solver=options["solver"],
            tol=options["tol"],
            max_iter=options["max_iter"],
            var_floor=cell.var_floor,
            sample_weight=cell.weight,
        )
        result = best_restart(results, cell.var_floor) if cell.restarts else results[0]
        if spec.polish and scenario.kind != "approximation":
            result = polish_fit(
                result,
                cell.design,
                cell.y,
                tol=POLISH_TOL,
                max_iter=scenario.max_iter if cell.restarts else POLISH_ITER,
                var_floor=cell.var_floor,
            )
        return result

    def record(
        self, scenario: Scenario, cell: Cell, reference: MixtureOfExperts | None
    ) -> dict[str, Any]:
        """One cell's record: its sample and starts, fit, and losses.

        Its ``fit_time`` counts the sample, the starts and the fit.
        """
        spec = scenario.fit(cell.fit)
        prepared = prepare_cell(scenario, spec, cell, reference)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            result = self.fit(scenario, spec, prepared)
            seconds = time.perf_counter() - start
        return finish_cell(
            scenario,
            spec,
            cell,
            result,
            reference,
            prepared.ll_true,
            prepared.seconds + seconds,
            [*prepared.messages, *(str(warning.message) for warning in caught)],
            self.name,
        )

    def records(
        self,
        scenario: Scenario,
        cells: Sequence[Cell],
        references: Mapping[str, MixtureOfExperts],
        workers: CellWorkers | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Each cell in one task of ``workers``; its record as soon as it is done.

        As :meth:`SweepEngine.records`, one record at a time.
        """
        workers = _IN_PROCESS if workers is None else workers
        tasks = ((scenario, cell, references.get(cell.fit)) for cell in cells)
        for record in workers.map(self.record, tasks, ordered=False):
            yield [record]


# -- the torch engine: many cells of one fit in one batch --------------------------
class TorchEngine:
    """Fits many cells of one fit at once with :func:`~moestat.torch.fit.fit_batched`.

    Samples, starts and losses are the numpy engine's, computed from the
    same seeds by the same code, so the two engines give comparable records
    cell by cell. PyTorch is imported when the engine first fits.

    Parameters
    ----------
    device : str or torch.device, optional
        Where the batches are fitted (``"cpu"``, ``"cuda"``, ``"cuda:1"``);
        default the CPU.
    dtype : {"float64", "float32"}, optional
        The precision of the batches; default float64.
    batch_cells : int, optional
        Most cells in one batch; default no limit other than
        :data:`~moestat.simulation.TORCH_BATCH_ROWS` padded rows.
    """

    name = "torch"

    def __init__(
        self, device: Any = None, dtype: Any = None, batch_cells: int | None = None
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.batch_cells = batch_cells

    def __call__(
        self,
        model: MixtureOfExperts,
        design: Design,
        y: NDArray[np.float64],
        starts: list[MoEParams],
        *,
        solver: str,
        tol: float,
        max_iter: int,
        var_floor: float,
    ) -> list[FitResult]:
        """Fit ``model`` to ``(design, y)`` from every start in one batch.

        As :class:`~moestat.fit.BatchEngine`
        (:func:`moestat.torch.fit.batch_engine`).
        """
        from moestat.torch.fit import batch_engine

        engine = batch_engine(self.device, self.dtype)
        return engine(
            model,
            design,
            y,
            starts,
            solver=solver,
            tol=tol,
            max_iter=max_iter,
            var_floor=var_floor,
        )

    def check(self, scenario: Scenario, specs: Sequence[FitSpec]) -> None:
        """Refuse, before any work, what the torch engine cannot run.

        As :meth:`SweepEngine.check`: without PyTorch (ImportError), for a
        device or dtype torch cannot use, or for a fit whose gate or expert
        family without batched kernels (a user-written piece without the
        hooks; ValueError, naming the piece and what it lacks).
        """
        _check_torch(scenario, specs, self.device, self.dtype)

    def records(
        self,
        scenario: Scenario,
        cells: Sequence[Cell],
        references: Mapping[str, MixtureOfExperts],
        workers: CellWorkers | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Fit the cells batch by batch; each batch's records when it is done.

        The samples and starts of a batch's cells are drawn, and their
        losses measured, by ``workers``; the batch is fitted here, in one
        torch call (and its polish in a second). Each record's ``fit_time``
        is its own sample and starts plus an equal share of the batch;
        warnings raised by the batched fit are counted in every cell.

        As :meth:`SweepEngine.records`, for the batches of
        :func:`~moestat.simulation.plan_batches`.
        """
        workers = _IN_PROCESS if workers is None else workers
        for spec, group in plan_batches(scenario, cells, self.batch_cells):
            reference = references.get(spec.label)
            prepared = list(
                workers.map(
                    prepare_cell, ((scenario, spec, cell, reference) for cell in group)
                )
            )
            results, seconds, messages = _fit_prepared(
                scenario, spec, prepared, self.device, self.dtype
            )
            share = seconds / len(prepared)
            finished = (
                (
                    scenario,
                    spec,
                    cell.cell,
                    result,
                    reference,
                    cell.ll_true,
                    cell.seconds + share,
                    [*cell.messages, *messages],
                    self.name,
                )
                for cell, result in zip(prepared, results, strict=True)
            )
            yield list(workers.map(finish_cell, finished))


def _fit_starts(
    model: MixtureOfExperts,
    prepared: Sequence[PreparedCell],
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
    prepared: Sequence[PreparedCell],
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
    prepared: Sequence[PreparedCell],
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


def _check_torch(
    scenario: Scenario, specs: Sequence[FitSpec], device: Any, dtype: Any
) -> None:
    """Refuse, before any work, what the torch engine cannot run."""
    try:
        from moestat.torch._device import resolve_device, resolve_dtype
    except ImportError as error:
        raise ImportError(
            "engine='torch' needs PyTorch: `pip install 'moestat[torch]'`, or "
            "use engine='numpy'."
        ) from error
    resolve_device(device)
    resolve_dtype(dtype)
    X = scenario.covariates.sample(2, np.random.default_rng(0))
    for spec in specs:
        model = spec.model
        design = model.design(X)
        try:
            batched_gate(model.gate, spec.n_experts, design.gate.shape[1])
            batched_expert(model.expert, spec.n_experts, design.expert.shape[1])
        except ValueError as error:
            raise ValueError(
                f"Scenario {scenario.id} (fit {spec.label!r}) cannot run with "
                f"engine='torch': its model has a {model.gate.describe()} gate "
                f"and {type(model.expert).__name__} experts. {error} Run "
                f"{scenario.id} with engine='numpy'."
            ) from error


def make_engine(
    engine: str,
    *,
    device: Any = None,
    dtype: Any = None,
    batch_cells: int | None = None,
) -> SweepEngine:
    """The engine of a name.

    Parameters
    ----------
    engine : {"numpy", "torch"}
        The engine's name.
    device, dtype, batch_cells
        The torch engine's options (:class:`TorchEngine`); ignored by the
        numpy engine.

    Returns
    -------
    SweepEngine

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if engine == "numpy":
        return NumpyEngine()
    if engine == "torch":
        return TorchEngine(device, dtype, batch_cells)
    raise ValueError(f"Unknown engine {engine!r}; choose one of {ENGINES}.")
