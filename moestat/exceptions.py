"""Warnings raised by moestat."""

from __future__ import annotations

from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "ConvergenceWarning",
    "DegenerateFitWarning",
    "SingularInformationWarning",
    "StoreError",
    "NotAStoreError",
    "StoreLockedError",
    "StoreWriteError",
    "StoreIntegrityWarning",
    "SweepInterrupted",
]


class DegenerateFitWarning(UserWarning):
    """The fit reached a degenerate point of the parameter space.

    Raised when an expert has too little responsibility for its parameters,
    when its variance reached the floor that guards the Gaussian likelihood
    against degeneracy, or when coefficients diverge because the likelihood
    has no interior maximum (a gate or an expert separates the data; see
    :mod:`moestat.boundary`, and ``alpha`` for a ridge penalty that keeps
    them finite). :func:`moestat.select_model` passes such fits over.
    """


class SingularInformationWarning(UserWarning):
    """The observed information is singular: some standard errors are NaN."""


class StoreError(Exception):
    """A sweep's results store cannot be used as asked.

    The base of the store's errors; each subclass says what to do.
    """


class NotAStoreError(StoreError, ValueError):
    """The results file is not a moestat store (another file of that name).

    A sweep appends only to a file that starts with the store's format line
    (or, for stores of earlier versions, with a valid record).
    """


class StoreLockedError(StoreError, RuntimeError):
    """Another process is writing to the same sweep directory."""


class StoreWriteError(StoreError, OSError):
    """Writing to the store failed (full disk, read-only directory, ...).

    Every record written before the failure is kept; the same sweep run
    again once the cause is removed stores the rest.
    """


class StoreIntegrityWarning(UserWarning):
    """Lines of a results store were skipped: unreadable, invalid or duplicated."""


class SweepInterrupted(KeyboardInterrupt):
    """A sweep was interrupted (Ctrl-C); every finished cell is stored.

    Parameters
    ----------
    n_stored : int
        Cells of the sweep on disk.
    n_cells : int
        Cells the sweep plans.
    out_dir : str
        The sweep directory.
    """

    def __init__(self, n_stored: int, n_cells: int, out_dir: str) -> None:
        super().__init__(
            f"interrupted; {n_stored} of {n_cells} cells stored in {out_dir}; "
            "run the same command to resume"
        )
        self.n_stored = n_stored
        self.n_cells = n_cells
        self.out_dir = out_dir
