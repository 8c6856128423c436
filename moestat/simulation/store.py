"""A results store that never loses finished work, and never trusts a bad line.

Format
------
A store is the file ``<out_dir>/cells.jsonl``: a format line
``{"format": "moestat-cells", "version": 1}``, then one JSON object per
finished cell, each on its own line. Stores written before the format line
existed (their first line is a record) are read and appended to as they
are.

Writing
-------
Each finished cell is appended and flushed to disk (``fsync``) before the
next is written, so a writer killed at any moment leaves every finished
cell on disk and at most one half-written last line (no newline). That
line is skipped silently when the store is read, and cut off just before
the next append (never when the store is only opened or read). A sweep
appends only to a missing or empty file, a file that starts with the
format line, or a headerless file whose first line is a valid record;
anything else (a CSV file under that name, say) is refused with
:class:`~moestat.exceptions.NotAStoreError` and left untouched.

One writer at a time: :meth:`ResultStore.writing`, which
:func:`~moestat.simulation.simulate` holds while it runs the missing cells,
takes the lock file ``<out_dir>/.cells.lock`` (a second sweep on the same
directory stops at once with :class:`~moestat.exceptions.StoreLockedError`)
and reads the file again under the lock, so no cell is run twice. A sweep
with nothing left to run writes nothing, so a finished store in a read-only
directory can be read and "resumed". A failed write (full disk, read-only
file system, ...) raises :class:`~moestat.exceptions.StoreWriteError`: the
cells stored before it are kept, and the same sweep run again once the
cause is removed stores the rest.

Reading
-------
The file is read in binary, line by line; each line is decoded as UTF-8
and parsed as JSON on its own, so one bad line costs only that line. A line
is a record only if it passes :func:`record_problem`: a JSON object whose
``key`` is the one its ``scenario``, ``fit``, ``n``, ``replicate`` and
``root_seed`` give (:class:`~moestat.simulation.Cell`), whose ``seed`` is
:func:`~moestat.simulation.cell_seed` of them, whose losses (``kl``,
``hellinger``, ``tv``, ``voronoi``, ``kl_truth`` and ``err_*``) are null or
finite numbers >= 0, and whose other fields have their JSON types.

**The first valid record of a key wins**: later valid records of the same
key are duplicates, skipped and reported. A line that fails the check is
skipped before its key is looked at, so it never shadows a valid record
that follows it (an edited seed or a negative loss on an earlier copy of a
cell leaves the real record in force). :func:`scan_store` says what was
skipped and why; :func:`load_results` warns once
(:class:`~moestat.exceptions.StoreIntegrityWarning`) and keeps the same
one-line report in ``frame.attrs["store_report"]``. Bad lines are never
fatal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from moestat.exceptions import (
    NotAStoreError,
    StoreIntegrityWarning,
    StoreLockedError,
    StoreWriteError,
)
from moestat.simulation._cells import cell_key, cell_seed

__all__ = [
    "ResultStore",
    "StoreScan",
    "scan_store",
    "record_problem",
    "cell_identity",
    "read_records",
    "load_results",
    "export_results",
    "CELLS_FILE",
    "LOCK_FILE",
    "FORMAT",
    "FORMAT_VERSION",
]

#: Name of the JSON-lines file of a store, inside its directory.
CELLS_FILE = "cells.jsonl"
#: Name of the lock file a sweep holds while it writes, inside the directory.
LOCK_FILE = ".cells.lock"
#: ``format`` of the store's first line.
FORMAT = "moestat-cells"
#: ``version`` of the store's first line written by this moestat.
FORMAT_VERSION = 1

# The pid of the process holding the lock, beside it (best effort).
_PID_FILE = ".cells.lock.pid"
_HEADER = (json.dumps({"format": FORMAT, "version": FORMAT_VERSION}) + "\n").encode()
# How every record line this module writes starts (``key`` comes first).
_RECORD_START = b'{"key": '
# Columns that are losses: null or a finite number >= 0.
_LOSSES = frozenset({"kl", "hellinger", "tv", "voronoi", "kl_truth"})
_ERROR_PREFIX = "err_"
# The other typed fields of a record (see sweep._record); all may be null.
_NUMBERS = frozenset({"log_likelihood", "log_likelihood_true", "fit_time", "kl_floor"})
_COUNTS = frozenset({"n_experts", "degree", "n_iter", "n_warnings"})
_FLAGS = frozenset({"opt_failure", "monotone", "converged"})
_TEXTS = frozenset(
    {
        "gate",
        "expert",
        "solver",
        "init",
        "first_warning",
        "backend",
        "voronoi_error",
        "cell_sizes",
    }
)
# Problems listed by name in a report before "and N more".
_SHOWN = 5


def _to_json(value: Any) -> Any:
    """Plain JSON values from numpy scalars; NaN and inf as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- the record check ------------------------------------------------------------
def cell_identity(
    scenario: str, fit: str, n: int, replicate: int, root_seed: int = 0
) -> dict[str, Any]:
    """The fields that identify a cell in its record: key, cell and seed.

    Every record holds them; :func:`record_problem` checks that they agree.

    Parameters
    ----------
    scenario : str
        Scenario id.
    fit : str
        Fit label.
    n : int
        Sample size (0 for a population fit).
    replicate : int
        Replicate number (0-based).
    root_seed : int, default=0
        The sweep's seed.

    Returns
    -------
    dict
        ``key``, ``scenario``, ``fit``, ``n``, ``replicate``, ``root_seed``
        and ``seed``.

    Examples
    --------
    >>> cell_identity("SG-E", "m=2", 150, 0)["key"]
    'SG-E/m=2/n=150/rep=0/seed=0'
    """
    return {
        "key": cell_key(scenario, fit, n, replicate, root_seed),
        "scenario": scenario,
        "fit": fit,
        "n": n,
        "replicate": replicate,
        "root_seed": root_seed,
        "seed": cell_seed(root_seed, scenario, n, replicate),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _a(name: str) -> str:
    """The article of a field name read aloud: "an n", "a kl"."""
    return "an" if name[0] in "aeiou" or name == "n" or name.startswith("n_") else "a"


def _field_problem(name: str, value: Any) -> str | None:
    """Why one field of a record has the wrong type or value, or None."""
    if value is None:
        return None
    is_loss = name in _LOSSES or name.startswith(_ERROR_PREFIX)
    if is_loss or name in _NUMBERS:
        if not _is_number(value):
            return f"has {_a(name)} {name} that is not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"has a non-finite {name}"
        if is_loss and value < 0:
            return f"has a negative {name}"
    elif name in _COUNTS:
        if not _is_int(value) or value < 0:
            return f"has {_a(name)} {name} that is not an integer >= 0"
    elif name in _FLAGS:
        if not isinstance(value, bool):
            return f"has {_a(name)} {name} that is not true or false"
    elif name in _TEXTS and not isinstance(value, str):
        return f"has {_a(name)} {name} that is not a string"
    return None


def record_problem(record: Any) -> str | None:
    """Why a parsed line is not a valid cell record, or None if it is one.

    A record is a JSON object with a string ``key``, ``scenario`` and
    ``fit``; integers ``n``, ``replicate``, ``root_seed`` and ``seed``, all
    >= 0 (not booleans or strings); a ``key`` equal to
    ``"{scenario}/{fit}/n={n}/rep={replicate}/seed={root_seed}"`` and a
    ``seed`` equal to ``cell_seed(root_seed, scenario, n, replicate)``. Its
    losses (``kl``, ``hellinger``, ``tv``, ``voronoi``, ``kl_truth``, and
    names starting ``err_``) are null or finite numbers >= 0; its other
    known fields are null or of their JSON type (numbers finite, counts
    integers >= 0, flags booleans, texts strings). Unknown fields are kept.

    Parameters
    ----------
    record : object
        A line of the store parsed as JSON.

    Returns
    -------
    str or None
        The reason, worded to follow "line 7" (``"has a negative kl"``).

    Examples
    --------
    >>> record = {**cell_identity("SG-E", "m=2", 150, 0), "kl": 0.01}
    >>> record_problem(record) is None
    True
    >>> record_problem({**record, "kl": -0.5})
    'has a negative kl'
    >>> record_problem({**record, "seed": record["seed"] + 1})
    'has a seed that does not match its cell'
    >>> record_problem({**record, "n": "150"})
    'has an n that is not an integer >= 0'
    """
    if not isinstance(record, dict):
        return "is not a JSON object"
    for name in ("key", "scenario", "fit"):
        if name not in record:
            return f"has no {name}"
        if not isinstance(record[name], str):
            return f"has {_a(name)} {name} that is not a string"
    for name in ("n", "replicate", "root_seed", "seed"):
        if name not in record:
            return f"has no {name}"
        if not _is_int(record[name]) or record[name] < 0:
            return f"has {_a(name)} {name} that is not an integer >= 0"
    cell = [record[name] for name in ("scenario", "fit", "n", "replicate")]
    if record["key"] != cell_key(*cell, record["root_seed"]):
        return (
            "has a key that does not match its scenario, fit, n, replicate "
            "and root_seed"
        )
    scenario, _, n, replicate = cell
    if record["seed"] != cell_seed(record["root_seed"], scenario, n, replicate):
        return "has a seed that does not match its cell"
    for name, value in record.items():
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
    return None


# -- reading -----------------------------------------------------------------------
def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown if len(items) <= _SHOWN else f"{shown} and {len(items) - _SHOWN} more"


@dataclass(frozen=True)
class StoreScan:
    """What a read of a store's file found.

    Parameters
    ----------
    path : pathlib.Path
        The ``cells.jsonl`` file.
    kind : {"missing", "empty", "store", "legacy", "foreign"}
        No file; a file with no complete line (empty, or only a half-written
        first line); a store with the format line; a store of an earlier
        version (its first line a valid record); or a file that is not a
        store.
    records : list of dict
        The valid records, the first of each key, in file order.
    invalid : list of (int, str)
        Skipped lines: line number (1-based) and reason.
    duplicates : list of (int, str)
        Valid records of a key read before: line number and key.
    partial_last_line : bool
        Whether the file ends in a line without its newline (the trace of a
        killed writer; not a fault).
    version : int or None
        The ``version`` of the format line; None without one.
    complete_size : int
        Bytes up to the end of the last complete line.
    """

    path: Path
    kind: str = "missing"
    records: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)
    partial_last_line: bool = False
    version: int | None = None
    complete_size: int = 0

    @property
    def keys(self) -> set[str]:
        """Keys of the valid records."""
        return {record["key"] for record in self.records}

    def report(self) -> str:
        """One line on what was skipped; ``""`` when nothing was.

        A half-written last line is not reported: it is the normal trace of
        a killed writer.

        Returns
        -------
        str
        """
        parts = []
        if self.invalid:
            reasons = [f"line {number} {reason}" for number, reason in self.invalid]
            parts.append(
                f"skipped {_plural(len(self.invalid), 'line')} of {self.path}: "
                + _listed(reasons)
            )
        if self.duplicates:
            count = len(self.duplicates)
            lines = _listed([str(number) for number, _ in self.duplicates])
            text = (
                f"1 duplicate record of a stored cell (line {lines})"
                if count == 1
                else f"{count} duplicate records of stored cells (lines {lines})"
            ) + " ignored, the first record of each cell is kept"
            parts.append(text if self.invalid else f"{self.path}: {text}")
        return "; ".join(parts)


def _parse_line(raw: bytes) -> tuple[Any, str | None]:
    """A complete line as JSON, or the reason it cannot be read."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is not valid UTF-8"
    if not text.strip():
        return None, "is blank"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return None, "is not valid JSON"


def _is_format_line(value: Any) -> bool:
    return isinstance(value, dict) and value.get("format") == FORMAT


def _may_start_a_store(partial: bytes) -> bool:
    """Whether a file's only, half-written line is a killed store writer's."""
    return (
        _HEADER.startswith(partial)
        or _RECORD_START.startswith(partial)
        or partial.startswith(_RECORD_START)
    )


def scan_store(path: str | os.PathLike) -> StoreScan:
    r"""Read a store's file line by line and say what is in it.

    Never raises for the content of the file: each line is decoded and
    checked on its own (:func:`record_problem`), and the first valid record
    of a key wins (see the module's docstring).

    Parameters
    ----------
    path : path-like
        The ``cells.jsonl`` file (it need not exist).

    Returns
    -------
    StoreScan

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> good = json.dumps({**cell_identity("SG-E", "m=2", 150, 0), "kl": 0.01})
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / CELLS_FILE
    ...     _ = path.write_bytes(_HEADER + b"\xff oops\n" + good.encode() + b"\n")
    ...     scan = scan_store(path)
    >>> scan.kind, len(scan.records), scan.invalid
    ('store', 1, [(2, 'is not valid UTF-8')])
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except (FileNotFoundError, NotADirectoryError):
        return StoreScan(path)
    records: dict[str, dict[str, Any]] = {}
    invalid: list[tuple[int, str]] = []
    duplicates: list[tuple[int, str]] = []
    kind, version, size, partial = "empty", None, 0, b""
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                partial = raw  # only the last line can lack its newline
                break
            size += len(raw)
            value, problem = _parse_line(raw)
            if problem is None and _is_format_line(value):
                if number == 1:
                    kind, version = "store", value.get("version")
                    continue
                problem = "repeats the format line"
            if problem is None:
                problem = record_problem(value)
            if number == 1:
                kind = "legacy" if problem is None else "foreign"
            if problem is not None:
                invalid.append((number, problem))
            elif value["key"] in records:
                duplicates.append((number, value["key"]))
            else:
                records[value["key"]] = value
    if kind == "empty" and partial and not _may_start_a_store(partial):
        kind = "foreign"
    return StoreScan(
        path=path,
        kind=kind,
        records=list(records.values()),
        invalid=invalid,
        duplicates=duplicates,
        partial_last_line=bool(partial),
        version=version if _is_int(version) else None,
        complete_size=size,
    )


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The valid records of a cells file, the first of each key.

    Invalid lines, later duplicates of a key and a half-written last line
    are skipped (:func:`scan_store` says which).

    Parameters
    ----------
    path : path-like
        The ``cells.jsonl`` file (it need not exist).

    Returns
    -------
    list of dict
    """
    return scan_store(path).records


def _not_a_store(path: Path) -> str:
    return (
        f"{path} is not a moestat results store (its first line is neither the "
        "store's format line nor a cell record: a CSV or another program's "
        "file?), so no sweep will write to it; move it away or use another "
        "--out directory"
    )


# -- writing -----------------------------------------------------------------------
def _append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing) and ``fsync`` it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes, durably."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _write_error(message: str, error: OSError) -> StoreWriteError:
    """A StoreWriteError with ``message`` and the errno of ``error``."""
    failure = StoreWriteError(message)
    failure.errno = error.errno  # str() stays the message
    return failure


# What to do about a failed write, by errno.
_FIXES = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space under your disk quota",
    errno.EROFS: "make the file system writable",
    errno.EACCES: "make the file writable",
    errno.EPERM: "make the file writable",
}


class ResultStore:
    """Append-only, durable store of finished sweep cells in a directory.

    Constructing a store reads its file and writes nothing (a read-only
    directory is fine); the directory, the format line and the lock file
    are created when the first record is written. Records are checked
    (:func:`record_problem`) before they are written.

    Parameters
    ----------
    out_dir : path-like
        Directory of the sweep (it need not exist).

    Raises
    ------
    NotAStoreError
        If ``out_dir`` is a file.

    Examples
    --------
    >>> import tempfile
    >>> record = {**cell_identity("SG-E", "m=2", 100, 0), "kl": 0.01}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     store = ResultStore(tmp)
    ...     first = store.append(record)
    ...     again = store.append({**record, "kl": 0.02})  # its key is stored
    ...     first, again, len(store.keys()), ResultStore(tmp).records()[0]["kl"]
    (True, False, 1, 0.01)
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotAStoreError(
                f"--out {self.out_dir} is a file, not a directory; give a directory "
                "for the sweep's results (it is created if missing)"
            )
        self.path = self.out_dir / CELLS_FILE
        self.lock_path = self.out_dir / LOCK_FILE
        self._lock: Any = None
        self._ready = False  # the file was checked and is ready to append to
        self._read()

    def _read(self) -> None:
        self._scan = scan_store(self.path)
        self._keys = self._scan.keys

    @property
    def scan(self) -> StoreScan:
        """What the last read of the file found (:func:`scan_store`)."""
        return self._scan

    def keys(self) -> set[str]:
        """Keys of the cells stored (as of the last read, plus those written)."""
        return set(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def records(self) -> list[dict[str, Any]]:
        """Every valid record on disk, the first of each key."""
        return read_records(self.path)

    def check_appendable(self) -> None:
        """Refuse, before any write, a file that is not a store of this format.

        Raises
        ------
        NotAStoreError
            If the file is not a moestat store, or one of a later format
            version.
        """
        if self._scan.kind == "foreign":
            raise NotAStoreError(_not_a_store(self.path))
        version = self._scan.version
        if self._scan.kind == "store" and version != FORMAT_VERSION:
            raise NotAStoreError(
                f"{self.path} is a moestat results store of format version "
                f"{version}, which this moestat (format version {FORMAT_VERSION}) "
                "cannot append to; upgrade moestat or use another --out directory"
            )

    def _write_failed(self, error: OSError) -> str:
        fix = _FIXES.get(error.errno, "remove the cause")
        return (
            f"could not write to {self.path} ({_reason(error)}); every cell "
            f"finished before is stored: {fix} and run the same command again "
            "to resume"
        )

    def _not_writable(
        self, error: OSError, remaining: int | None, total: int | None
    ) -> str:
        left = ""
        if remaining is not None:
            of = "" if total is None else f" of {total}"
            left = f", and {remaining}{of} cells of the sweep are not stored yet"
        return (
            f"cannot write to {self.out_dir} ({_reason(error)}): the directory is "
            f"not writable{left}; make it writable or use another --out directory"
        )

    def _locked(self) -> str:
        try:
            pid = int((self.out_dir / _PID_FILE).read_text().strip())
        except (OSError, ValueError):
            pid = None
        who = "another moestat sweep" + ("" if pid is None else f" (pid {pid})")
        return (
            f"{who} is writing to {self.out_dir} (it holds the lock "
            f"{self.lock_path}); wait for it to finish or use another --out "
            "directory"
        )

    @contextlib.contextmanager
    def writing(
        self, remaining: int | None = None, total: int | None = None
    ) -> Iterator[ResultStore]:
        """Hold the store's lock, read the file again under it, get it ready.

        Creates the directory and the lock file, takes the lock without
        waiting, re-reads the file (another sweep may have written since
        this store was read), checks that it is a store, cuts off a
        half-written last line and writes the format line to a new file.

        Parameters
        ----------
        remaining, total : int, optional
            Cells the caller has left to store, and in all (for the message
            when the directory is not writable).

        Yields
        ------
        ResultStore
            This store.

        Raises
        ------
        StoreLockedError
            If another process holds the lock.
        StoreWriteError
            If the directory or the file cannot be written.
        NotAStoreError
            If the file is not a store (:meth:`check_appendable`).
        """
        if self._lock is not None:  # held already
            yield self
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as error:
            raise _write_error(
                self._not_writable(error, remaining, total), error
            ) from error
        lock = FileLock(self.lock_path, timeout=0)
        try:
            lock.acquire()
        except Timeout:  # a TimeoutError, so before OSError
            raise StoreLockedError(self._locked()) from None
        except OSError as error:
            raise _write_error(
                self._not_writable(error, remaining, total), error
            ) from error
        pid_file = self.out_dir / _PID_FILE
        try:
            self._lock = lock
            with contextlib.suppress(OSError):
                pid_file.write_text(f"{os.getpid()}\n")
            self._read()
            self._prepare()
            yield self
        finally:
            self._lock = None
            self._ready = False
            with contextlib.suppress(OSError):
                pid_file.unlink()
            lock.release()

    def _prepare(self) -> None:
        """Check the file (as last read) and make it ready to append to."""
        self.check_appendable()
        try:
            if self._scan.partial_last_line:
                _truncate(self.path, self._scan.complete_size)
            if self._scan.kind in ("missing", "empty"):
                self.out_dir.mkdir(parents=True, exist_ok=True)
                _append_bytes(self.path, _HEADER)
            else:  # a read-only file fails now, not after the first cell
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND))
        except OSError as error:
            raise _write_error(self._write_failed(error), error) from error
        self._ready = True

    def append(self, record: Mapping[str, Any]) -> bool:
        """Write one finished cell durably; return False if its key is stored.

        Parameters
        ----------
        record : mapping
            JSON-serialisable values that pass :func:`record_problem`.

        Returns
        -------
        bool

        Raises
        ------
        ValueError
            If the record is not valid.
        StoreWriteError
            If the write fails; the records written before are kept.
        """
        return self.extend([record]) == 1

    def extend(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Append several records durably, with one ``fsync``; return how many were new.

        Records whose key is stored (or repeated among ``records``) are
        skipped. A writer killed during the call leaves complete lines and
        at most one half-written last line, as :meth:`append` does. The
        first write of a store not held by :meth:`writing` reads the file
        again and readies it as :meth:`writing` does (without the lock).

        Raises
        ------
        ValueError
            If a record is not valid (nothing is written).
        StoreWriteError
            If the write fails; the records written before are kept.
        """
        lines: dict[str, str] = {}
        for record in records:
            row = {name: _to_json(value) for name, value in record.items()}
            problem = record_problem(row)
            if problem is not None:
                raise ValueError(
                    f"refusing to store the record {row.get('key')!r}: it {problem}"
                )
            key = row["key"]
            if key not in self._keys and key not in lines:
                lines[key] = json.dumps(row, allow_nan=False)
        if not lines:
            return 0
        if not self._ready:
            self._read()
            self._prepare()
            lines = {key: line for key, line in lines.items() if key not in self._keys}
            if not lines:
                return 0
        data = "".join(line + "\n" for line in lines.values()).encode("utf-8")
        try:
            _append_bytes(self.path, data)
        except OSError as error:
            self._ready = False  # the next write reads the file again first
            raise _write_error(self._write_failed(error), error) from error
        self._keys.update(lines)
        return len(lines)


def load_results(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The finished cells of a sweep directory as a DataFrame, one row per cell.

    Lines of the store that are not valid records, and later duplicates of
    a cell, are skipped: one :class:`~moestat.exceptions.StoreIntegrityWarning`
    says which, and ``frame.attrs["store_report"]`` holds the same line
    (``""`` when nothing was skipped).

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
    NotAStoreError
        If its ``cells.jsonl`` is not a moestat store and holds no record.
    """
    path = Path(out_dir) / CELLS_FILE
    scan = scan_store(path)
    if scan.kind == "missing":
        raise FileNotFoundError(
            f"No sweep results in {str(out_dir)!r} (no {CELLS_FILE}); run "
            "`moestat simulate SCENARIO --out DIR` first."
        )
    if scan.kind == "foreign" and not scan.records:
        raise NotAStoreError(_not_a_store(path))
    report = scan.report()
    if report:
        warnings.warn(report, StoreIntegrityWarning, stacklevel=2)
    frame = pd.DataFrame.from_records(scan.records)
    if not frame.empty:
        order = ["scenario", "fit", "n", "replicate"]
        frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
    frame.attrs["store_report"] = report
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
