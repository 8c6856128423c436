"""The cells of a sweep, their seeds, and the torch engine's batches.

A *cell* is one fit of one model to one sample: scenario, fit label, sample
size ``n`` and replicate number. Its seed is derived from the cell itself
(the root seed, the scenario id, ``n`` and the replicate), never from the
worker that runs it, so every engine and every way of running the cells
gives the same numbers; all fits of a scenario see the same sample at a
given ``(n, replicate)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moestat.simulation._cells import cell_key, cell_seed
from moestat.simulation.scenarios import FitSpec, Scenario

__all__ = ["Cell", "plan_cells", "plan_batches", "cell_seed", "TORCH_BATCH_ROWS"]

#: Default limit on the padded rows (cells x restarts x largest sample) of
#: one torch batch (:func:`plan_batches`).
TORCH_BATCH_ROWS = 2**22
# Response nodes of the pseudo-sample of an approximation cell.
_POPULATION_Y_NODES = 40


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
