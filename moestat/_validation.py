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
            f"got {value!r} instead."
        )


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
