"""Warnings raised by moestat."""

from __future__ import annotations

from sklearn.exceptions import ConvergenceWarning

__all__ = ["ConvergenceWarning", "DegenerateFitWarning", "SingularInformationWarning"]


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
