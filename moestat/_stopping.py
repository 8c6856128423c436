"""The EM stopping rule every engine shares (numpy, batched, torch).

Written with arithmetic and comparisons only, so that it applies elementwise
to floats, numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ROUNDOFF", "aitken_converged"]

#: Relative size of round-off in a total log-likelihood: a change below
#: ``ROUNDOFF * (|L| + n)`` is no change (an exact fixed point).
ROUNDOFF = 1e-12


def aitken_converged(
    l0: Any, l1: Any, l2: Any, n: Any, tol: float, roundoff: float = ROUNDOFF
) -> Any:
    """The stopping rule on three consecutive total log-likelihoods.

    Aitken's acceleration predicts the gain still to come from the last
    three values; the rule fires when that gain is at most ``tol`` per
    sample, or when the last step changed nothing beyond round-off.

    Parameters
    ----------
    l0, l1, l2 : float, ndarray or Tensor
        ``L_{t-2}``, ``L_{t-1}`` and ``L_t``; ``l0 = -inf`` when there is no
        earlier value (only an exact fixed point then counts).
    n : float, ndarray or Tensor
        Number of samples (the sum of the weights for weighted fits).
    tol : float
        Largest predicted gain per sample.
    roundoff : float, default=ROUNDOFF
        A change below ``roundoff * (|L| + n)`` is an exact fixed point
        (larger for arithmetic coarser than float64).

    Returns
    -------
    bool or boolean array
        Whether the rule fired.

    Examples
    --------
    >>> aitken_converged(-100.0, -99.0, -98.5, 10, 1e-6)  # gain ~0.5 to come
    False
    >>> aitken_converged(-98.001, -98.0, -98.0 + 1e-8, 10, 1e-6)
    True
    """
    # with no earlier value d1 is infinite: tol * n * inf is NaN for tol = 0,
    # a comparison that is False, and ``geometric`` excludes that case anyway
    with np.errstate(invalid="ignore"):
        d1, d2 = l1 - l0, l2 - l1
        fixed_point = abs(d2) <= roundoff * (abs(l2) + n)
        geometric = (d2 >= 0) & (d2 < d1) & (d1 < float("inf"))
        # d2 / (1 - d2/d1) <= eps  <=>  d2 * d1 <= eps * (d1 - d2)  when d1 > d2
        small_gain = d2 * d1 <= tol * n * (d1 - d2)
    return fixed_point | (geometric & small_gain)
