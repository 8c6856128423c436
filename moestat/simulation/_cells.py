"""What identifies a sweep's cell: its key and its seed.

The results store checks each record against these (a record's ``key`` and
``seed`` must be those of its scenario, fit, n, replicate and root seed), and
the sweep derives them, so both import them from here.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["cell_key", "cell_seed"]


def _stable_hash(text: str) -> int:
    """CRC-32 of a string: the same in every process and Python version."""
    return zlib.crc32(text.encode("utf-8"))


def cell_key(scenario: str, fit: str, n: int, replicate: int, root_seed: int) -> str:
    """Identifier of a cell in the results store.

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
    root_seed : int
        The sweep's seed.

    Returns
    -------
    str

    Examples
    --------
    >>> cell_key("SG-E", "m=2", 150, 0, 0)
    'SG-E/m=2/n=150/rep=0/seed=0'
    """
    return f"{scenario}/{fit}/n={n}/rep={replicate}/seed={root_seed}"


def cell_seed(root_seed: int, scenario: str, n: int, replicate: int) -> int:
    """Seed of a sample, derived from the cell (never from the worker).

    ``SeedSequence([root_seed, crc32(scenario), n, replicate])`` reduced to
    one 32-bit integer, recorded with each cell so that any cell can be
    re-run alone.

    Parameters
    ----------
    root_seed : int
        The sweep's seed.
    scenario : str
        Scenario id.
    n : int
        Sample size.
    replicate : int
        Replicate number (0-based).

    Returns
    -------
    int
        The seed, in ``[0, 2**32)``.
    """
    sequence = np.random.SeedSequence([root_seed, _stable_hash(scenario), n, replicate])
    return int(sequence.generate_state(1)[0])
