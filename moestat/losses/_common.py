"""Checks shared by the losses, and the pieces' declarations they read.

The losses never ask which class a gate or an expert family is: they read
what the piece declares about itself (``response_family``,
``voronoi_signature``, ``translation_invariant``) and, for a composite
piece, its ``shared`` and ``routed`` parts. A piece without a declaration
a loss needs gets a ``ValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat.model import MixtureOfExperts
from moestat.protocols import CompositeExpertFamily, CompositeGate

# Response families the density losses integrate over.
_FAMILIES = ("gaussian", "poisson", "bernoulli", "categorical")

# What each declaration says, for the error naming a missing one.
_DECLARATIONS = {
    "response_family": (
        f"the response's distribution, one of {_FAMILIES} or None for another one"
    ),
    "voronoi_signature": (
        "the Voronoi catalogue's name for its parametrisation: 'linear', "
        "'relu' or 'multinomial' for an expert family (None for one outside "
        "the catalogue), 'softmax' or 'normalized_sigmoid' for a gate"
    ),
    "translation_invariant": (
        "True when adding one vector to every row of the gate's coefficients "
        "leaves its weights unchanged (softmax), False otherwise"
    ),
}
_MISSING = object()


# -- arguments -------------------------------------------------------------------
def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}.")
    return int(value)


def _check_option(value: Any, allowed: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {list(allowed)}.")
    return value


def _covariates(
    X: ArrayLike, weights: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Check the covariate points and weights; weights normalised to sum 1."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(
            "X must be a non-empty 2-D array (n_points, n_features); got shape "
            f"{X.shape}. Use X[:, None] for one covariate."
        )
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values.")
    if weights is None:
        return X, np.full(X.shape[0], 1.0 / X.shape[0])
    w = np.asarray(weights, dtype=float)
    if w.shape != (X.shape[0],):
        raise ValueError(
            f"weights must have shape ({X.shape[0]},), one per row of X; got {w.shape}."
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(
            "weights must be finite, non-negative and not all zero (they are "
            "normalised to sum to one)."
        )
    return X, w / w.sum()


def _params(model: MixtureOfExperts) -> Any:
    if model.params is None:
        raise ValueError(
            "The model has no parameter values; losses need a true model and "
            "a fitted model with params."
        )
    return model.params


# -- what the pieces declare -------------------------------------------------------
def _declaration(piece: Any, name: str, role: str) -> Any:
    """``piece.<name>``, or a ValueError naming the missing declaration."""
    value = getattr(piece, name, _MISSING)
    if value is _MISSING:
        raise ValueError(
            f"The {role} {type(piece).__name__} does not declare {name!r}, which "
            f"this loss needs: give its class a {name} attribute "
            f"({_DECLARATIONS[name]})."
        )
    return value


def _expert_parts(expert: Any) -> tuple[Any, ...]:
    """The families of a model's experts: ``(shared, routed)`` or ``(expert,)``.

    A composite family (shared experts of one family beside routed experts
    of another) holds its parts as ``shared`` and ``routed``.
    """
    if isinstance(expert, CompositeExpertFamily):
        return (expert.shared, expert.routed)
    return (expert,)


def _routed_gate(gate: Any) -> Any | None:
    """The routed gate of a gate with shared experts beside it; else None."""
    return gate.routed if isinstance(gate, CompositeGate) else None


def _expert_family(expert: Any) -> str | None:
    """The response family an expert family declares (None: another one)."""
    family = _declaration(expert, "response_family", "expert family")
    if family is not None and family not in _FAMILIES:
        raise ValueError(
            f"{type(expert).__name__} declares response_family={family!r}; the "
            f"density losses integrate over {_FAMILIES} responses (None: "
            "another distribution)."
        )
    return family


def _family(model: Any) -> str | None:
    if isinstance(model, MixtureOfExperts):
        return _expert_family(model.expert)
    family = getattr(model, "response_family", None)
    return family if family in _FAMILIES else None


def _n_classes(model: Any) -> int | None:
    """Classes of a model's categorical experts (None for a custom model)."""
    if not isinstance(model, MixtureOfExperts):
        return None
    n_classes = getattr(model.expert, "n_classes", None)
    if n_classes is None:
        raise ValueError(
            f"{type(model.expert).__name__} declares categorical responses but "
            "has no n_classes attribute giving the number of classes."
        )
    return int(n_classes)


def _common_family(true: Any, fitted: Any) -> str:
    """The response family both models share (ValueError if they differ)."""
    ft, ff = _family(true), _family(fitted)
    if ft is not None and ff is not None and ft != ff:
        raise ValueError(
            f"Mismatched model families: the true model has {ft!r} responses "
            f"and the fitted one {ff!r}; both densities must live on the same "
            "response space."
        )
    family = ft or ff
    if family is None:
        raise ValueError(
            "Cannot tell the response family of the models: use a "
            "MixtureOfExperts whose expert family declares a response_family "
            f"in {_FAMILIES} (Gaussian, ReLU, GLM and multinomial experts do), "
            "or give a custom model a response_family attribute."
        )
    if family == "categorical":
        classes = {_n_classes(m) for m in (true, fitted)} - {None}
        if len(classes) > 1:
            raise ValueError(
                f"Mismatched model families: multinomial experts over "
                f"{sorted(classes)} classes."
            )
    return family
