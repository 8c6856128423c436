"""A results store that never loses finished work.

Each finished cell of a sweep is one JSON line appended to
``<out_dir>/cells.jsonl`` and flushed to disk (``fsync``) before the next
cell is written. The file is only ever appended to, by one writer (the
process that runs the sweep), so

- a sweep killed at any moment leaves every finished cell on disk, and at
  most one half-written last line, which :func:`read_records` detects (no
  terminating newline, or not valid JSON) and ignores;
- a restarted sweep reads the keys already present and runs only the
  missing cells, so no cell is run or stored twice; a key that somehow
  appears twice (two sweeps writing to one directory) is read once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ResultStore",
    "read_records",
    "load_results",
    "export_results",
    "CELLS_FILE",
]

#: Name of the JSON-lines file of a store, inside its directory.
CELLS_FILE = "cells.jsonl"


def _to_json(value: Any) -> Any:
    """Plain JSON values from numpy scalars; NaN and inf as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the complete records of a cells file, first occurrence of a key.

    A last line without its newline, or any line that is not a JSON object
    with a ``key``, is the trace of a killed writer and is skipped.

    Parameters
    ----------
    path : path-like
        The ``cells.jsonl`` file (it need not exist).

    Returns
    -------
    list of dict
    """
    path = Path(path)
    if not path.exists():
        return []
    records: dict[str, dict[str, Any]] = {}
    with path.open("r", encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # half-written by a killed process
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "key" in record:
                records.setdefault(record["key"], record)
    return list(records.values())


class ResultStore:
    """Append-only, durable store of finished sweep cells in a directory.

    Parameters
    ----------
    out_dir : path-like
        Directory of the sweep; created if missing.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     store = ResultStore(tmp)
    ...     first = store.append({"key": "a", "n": 100, "kl": 0.01})
    ...     again = store.append({"key": "a", "n": 100, "kl": 0.02})  # ignored
    ...     first, again, sorted(store.keys()), len(store.records())
    (True, False, ['a'], 1)
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / CELLS_FILE
        self._keys = {record["key"] for record in read_records(self.path)}
        self._truncate_partial_line()

    def _truncate_partial_line(self) -> None:
        """Drop a half-written last line so that appends start on a new line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                handle.truncate(end)

    def keys(self) -> set[str]:
        """Keys of the cells already stored."""
        return set(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def append(self, record: Mapping[str, Any]) -> bool:
        """Write one finished cell durably; return False if its key is stored.

        Parameters
        ----------
        record : mapping
            JSON-serialisable values with a ``"key"`` entry.
        """
        key = record["key"]
        if key in self._keys:
            return False
        line = json.dumps({k: _to_json(v) for k, v in record.items()})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._keys.add(key)
        return True

    def extend(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Append several records durably, with one ``fsync``; return how many were new.

        Records whose key is stored (or repeated among ``records``) are
        skipped. A writer killed during the call leaves complete lines and
        at most one half-written last line, as :meth:`append` does.
        """
        lines: dict[str, str] = {}
        for record in records:
            key = record["key"]
            if key not in self._keys and key not in lines:
                lines[key] = json.dumps({k: _to_json(v) for k, v in record.items()})
        if not lines:
            return 0
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines.values()))
            handle.flush()
            os.fsync(handle.fileno())
        self._keys.update(lines)
        return len(lines)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record on disk."""
        return read_records(self.path)


def load_results(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The finished cells of a sweep directory as a DataFrame, one row per cell.

    Parameters
    ----------
    out_dir : path-like
        A directory written by :func:`moestat.simulation.simulate`.

    Returns
    -------
    pandas.DataFrame
        Columns include ``scenario``, ``fit``, ``n``, ``replicate``, ``seed``,
        one column per loss (``kl``, ``hellinger``, ``tv``, ``voronoi``, and
        the per-parameter errors ``err_*``), the log-likelihoods, ``n_iter``,
        ``converged``, ``opt_failure`` and ``fit_time``. Missing values
        (NaN, or a loss that does not apply) are NaN.

    Raises
    ------
    FileNotFoundError
        If ``out_dir`` holds no results.
    """
    path = Path(out_dir) / CELLS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"No sweep results in {str(out_dir)!r} (no {CELLS_FILE}); run "
            "`moestat simulate SCENARIO --out DIR` first."
        )
    frame = pd.DataFrame.from_records(read_records(path))
    if frame.empty:
        return frame
    order = ["scenario", "fit", "n", "replicate"]
    frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
    return frame


def export_results(
    out_dir: str | os.PathLike, path: str | os.PathLike | None = None
) -> Path:
    """Write the finished cells of a sweep to Parquet or CSV.

    The store itself stays the append-only JSON-lines file (the durable,
    resumable record); this writes a snapshot for other tools.

    Parameters
    ----------
    out_dir : path-like
        The sweep directory.
    path : path-like, optional
        ``*.parquet`` (pyarrow) or ``*.csv``; default ``out_dir/cells.parquet``.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        For another file extension.
    """
    target = Path(out_dir) / "cells.parquet" if path is None else Path(path)
    frame = load_results(out_dir)
    if target.suffix == ".parquet":
        frame.to_parquet(target, index=False)
    elif target.suffix == ".csv":
        frame.to_csv(target, index=False)
    else:
        raise ValueError(
            f"Cannot export to {str(target)!r}: use a .parquet or .csv file name."
        )
    return target
