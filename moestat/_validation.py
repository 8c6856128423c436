"""Argument constraints declared as data, and random-state handling.

scikit-learn's own constraint machinery is private, so this module holds a
small equivalent: each estimator declares its allowed argument values once
(:class:`Interval`, :class:`Options`, :class:`InstanceOf`) and
:func:`validate_params` checks them at the start of ``fit`` with an error
message that names the argument, the bad value and what is allowed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Interval:
    """A real or integer interval ``[low, high]`` (either end may be open).

    Parameters
    ----------
    kind : {"int", "real"}
        Whether the value must be an integer.
    low, high : float or None
        The bounds; ``None`` means unbounded.
    closed : {"both", "left", "right", "neither"}, default="both"
        Which bounds are included.
    """

    kind: str
    low: float | None
    high: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        """Return whether ``value`` lies in the interval."""
        if isinstance(value, bool):
            return False
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return False
        if not isinstance(value, numbers.Real) or not np.isfinite(value):
            return False
        lo_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        hi_ok = self.high is None or (
            value <= self.high
            if self.closed in ("both", "right")
            else value < self.high
        )
        return bool(lo_ok and hi_ok)

    def __str__(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        kind = "an int" if self.kind == "int" else "a float"
        return f"{kind} in the range {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        """Return whether ``value`` is one of the allowed strings."""
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class InstanceOf:
    """An instance of a given type (or of one of several types)."""

    types: type | tuple[type, ...]
    label: str

    def accepts(self, value: Any) -> bool:
        """Return whether ``value`` is an instance of the types."""
        return isinstance(value, self.types)

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Satisfies:
    """A value accepted by a predicate (used for ``None`` and callables)."""

    predicate: Callable[[Any], bool]
    label: str

    def accepts(self, value: Any) -> bool:
        """Return whether the predicate accepts ``value``."""
        return bool(self.predicate(value))

    def __str__(self) -> str:
        return self.label


NONE = Satisfies(lambda v: v is None, "None")
RANDOM_STATE = (
    NONE,
    Interval("int", 0, 2**32 - 1),
    InstanceOf((np.random.Generator, np.random.RandomState), "a numpy Generator"),
)


def validate_params(
    owner: str, params: Mapping[str, Any], constraints: Mapping[str, tuple]
) -> None:
    """Check each argument against its declared constraints.

    Parameters
    ----------
    owner : str
        Name of the class or function, used in the error message.
    params : mapping
        Argument name to value.
    constraints : mapping
        Argument name to a tuple of constraints; a value is valid when any
        of them accepts it.

    Raises
    ------
    ValueError
        Naming the argument, its value and the allowed values.
    """
    for name, allowed in constraints.items():
        value = params[name]
        if any(c.accepts(value) for c in allowed):
            continue
        choices = " or ".join(str(c) for c in allowed)
        raise ValueError(
            f"The {name!r} parameter of {owner} must be {choices}; "
            f"got {plain(value)!r} instead."
        )


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists.

    Messages show ``1.0`` and ``[1, 2]``, not ``np.float64(1.0)`` and
    ``[np.int64(1), np.int64(2)]``.

    Parameters
    ----------
    value : object

    Returns
    -------
    object
        ``value.tolist()`` for numpy scalars and arrays, the same applied
        to the items of lists and tuples; anything else unchanged.
    """
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return type(value)(plain(item) for item in value)
    return value


def as_generator(
    random_state: None | int | np.random.Generator | np.random.RandomState,
) -> np.random.Generator:
    """Turn ``random_state`` into one numpy ``Generator`` stream.

    Parameters
    ----------
    random_state : None, int, Generator or RandomState
        ``None`` draws fresh entropy; an int seeds a new Generator; a
        Generator is used as it is (and so advanced); a legacy RandomState
        seeds a new Generator from one of its draws.

    Returns
    -------
    numpy.random.Generator
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    return np.random.default_rng(random_state)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN
    except TypeError:  # pandas.NA
        return True


def check_response_entries(y: Any, owner: str, *, numeric: bool) -> None:
    """Refuse missing entries and, for a regression, text in an object ``y``.

    Numeric arrays are left to scikit-learn's checks; this names the
    problem of an object array (a column read from a file, a list with
    ``None``) before a numeric conversion turns it into a misleading one.

    Parameters
    ----------
    y : array-like or None
        The response as given to ``fit`` (None is left to the estimator).
    owner : str
        Name of the estimator, used in the message.
    numeric : bool
        Whether the response must be numbers (a regression).

    Raises
    ------
    ValueError
        Naming the missing entries (how many, the first row) or the text.
    """
    if y is None:
        return
    values = np.asarray(y, dtype=object) if not hasattr(y, "dtype") else np.asarray(y)
    if values.dtype != object:
        return
    flat = values.ravel()
    missing = np.flatnonzero([_is_missing(value) for value in flat])
    if missing.size:
        raise ValueError(
            f"y has {missing.size} missing value(s) (None or NaN), the first at "
            f"row {int(missing[0])}; drop or impute those rows before fitting "
            f"{owner}."
        )
    if numeric:
        text = next((value for value in flat if isinstance(value, str)), None)
        if text is not None:
            raise ValueError(
                f"{owner} needs a numeric response y; y holds text such as "
                f"{text!r}. For class labels use MultinomialLogisticMoE."
            )


#: Magnitudes beyond which squares and products of the data leave double
#: precision (1e150 squared is 1e300; 1e-150 squared is 1e-300).
SCALE_LIMIT = 1e150


def check_scale(values: NDArray, name: str) -> None:
    """Refuse data whose squares overflow or whose spread underflows.

    Variances, Gram matrices and Gaussian densities square the data; at
    magnitudes beyond :data:`SCALE_LIMIT` (or spreads below its inverse)
    the fit would end in overflow or in a zero variance. A rescaled copy
    of the data is fitted exactly the same way.

    Parameters
    ----------
    values : ndarray of shape (n,) or (n, d)
        Finite data: the response or the covariates.
    name : str
        ``"y"`` or ``"X"``, used in the message.

    Raises
    ------
    ValueError
        Naming the column, its magnitude and the power of ten to divide or
        multiply it by.
    """
    columns = np.asarray(values, dtype=float).reshape(len(values), -1)
    if columns.size == 0:
        return
    # from the extremes: no temporary the size of the data
    high, low = columns.max(axis=0), columns.min(axis=0)
    size, spread = np.maximum(high, -low), high - low
    for j in range(columns.shape[1]):
        label = (
            name if columns.shape[1] == 1 and name == "y" else f"column {j} of {name}"
        )
        if size[j] > SCALE_LIMIT:
            power = int(np.floor(np.log10(size[j])))
            raise ValueError(
                f"{label} has values up to {size[j]:.3g}, whose squares overflow "
                f"double precision; check the scale of {name}: divide it by "
                f"1e{power} before fitting."
            )
        if 0 < spread[j] < 1 / SCALE_LIMIT:
            power = -int(np.floor(np.log10(spread[j])))
            raise ValueError(
                f"{label} spreads over only {spread[j]:.3g}, whose square "
                f"underflows double precision; check the scale of {name}: "
                f"multiply it by 1e{power} before fitting."
            )
