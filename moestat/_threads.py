"""How many threads BLAS uses while moestat fits.

The products of a fit are thin: ``(n, p)`` designs with a few columns, an
``(n, m)`` array of responsibilities, the ``(p, p)`` blocks of L-BFGS-B. A
multi-threaded BLAS spends more time waking and joining its threads on them
than it saves, so the fitting entry points (the estimators' ``fit``,
``inference`` and ``summary``, :func:`moestat.select_model` and its workers,
the simulation workers) run with BLAS at one thread.

The setting is read from the environment variable ``MOESTAT_BLAS_THREADS``
each time an entry point is entered:

- unset or empty: one thread (:data:`DEFAULT_BLAS_THREADS`);
- a positive integer: that many threads;
- ``none``: BLAS is left as it is (its own default, or whatever
  ``threadpoolctl`` or ``OMP_NUM_THREADS`` set).

Inside an entry point that already limits BLAS, another one changes nothing
and costs nothing, so entry points may call one another freely. The scan of
the loaded libraries that ``threadpoolctl`` needs (milliseconds) is kept and
made again only after new modules were imported, so entering an entry
point costs some 30 microseconds.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "BLAS_THREADS_ENV",
    "DEFAULT_BLAS_THREADS",
    "blas_threads",
    "limit_blas_threads",
]

#: Environment variable that sets the BLAS threads of a fit: an integer, or
#: ``none`` to leave BLAS alone.
BLAS_THREADS_ENV = "MOESTAT_BLAS_THREADS"

#: BLAS threads of a fit when ``MOESTAT_BLAS_THREADS`` is not set.
DEFAULT_BLAS_THREADS = 1

_P = ParamSpec("_P")
_R = TypeVar("_R")

_active = threading.local()
_scan_lock = threading.Lock()
_scan: tuple[int, Any] | None = None


def _controller() -> Any:
    """``threadpoolctl``'s controller of the loaded libraries.

    Scanned again when ``sys.modules`` has grown or shrunk since the last
    scan: a BLAS is loaded only by importing the extension that links it.
    """
    global _scan
    n_modules = len(sys.modules)
    with _scan_lock:
        if _scan is None or _scan[0] != n_modules:
            from threadpoolctl import ThreadpoolController

            _scan = (n_modules, ThreadpoolController())
        return _scan[1]


def blas_threads() -> int | None:
    """The number of BLAS threads a fit uses, from ``MOESTAT_BLAS_THREADS``.

    Returns
    -------
    int or None
        :data:`DEFAULT_BLAS_THREADS` when the variable is unset or empty,
        its value when it is a positive integer, None when it is ``none``
        (BLAS left alone).

    Raises
    ------
    ValueError
        When the variable holds anything else.
    """
    raw = os.environ.get(BLAS_THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_BLAS_THREADS
    if raw.lower() == "none":
        return None
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(
            f"{BLAS_THREADS_ENV}={raw!r}: expected a positive integer, or 'none' "
            "to leave the BLAS threads alone."
        )
    return threads


@contextmanager
def _limited() -> Iterator[None]:
    if getattr(_active, "depth", 0):
        _active.depth += 1
        try:
            yield
        finally:
            _active.depth -= 1
        return
    threads = blas_threads()
    _active.depth = 1
    try:
        if threads is None:
            yield
        else:
            with _controller().limit(limits=threads, user_api="blas"):
                yield
    finally:
        _active.depth = 0


class _BlasLimit:
    """Context manager and decorator made by :func:`limit_blas_threads`."""

    def __init__(self) -> None:
        self._contexts: list = []

    def __enter__(self) -> None:
        context = _limited()
        context.__enter__()
        self._contexts.append(context)

    def __exit__(self, *exc_info: object) -> bool | None:
        return self._contexts.pop().__exit__(*exc_info)

    def __call__(self, function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def limited(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with _limited():
                return function(*args, **kwargs)

        return limited


def limit_blas_threads() -> _BlasLimit:
    """Run a block, or every call of a function, with BLAS at the fit's threads.

    The number of threads is :func:`blas_threads` (one unless
    ``MOESTAT_BLAS_THREADS`` says otherwise), applied as
    ``threadpoolctl.threadpool_limits(limits=..., user_api="blas")`` does
    and restored on exit. Inside another ``limit_blas_threads`` block of the
    same thread it does nothing.

    Returns
    -------
    context manager and decorator
        ``with limit_blas_threads(): ...`` or ``@limit_blas_threads()``.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat._threads import limit_blas_threads
    >>> with limit_blas_threads():
    ...     gram = np.ones((1000, 3)).T @ np.ones((1000, 3))
    >>> float(gram[0, 0])
    1000.0
    """
    return _BlasLimit()
