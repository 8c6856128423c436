"""Warnings raised by moestat."""

from __future__ import annotations

from sklearn.exceptions import ConvergenceWarning

__all__ = ["ConvergenceWarning", "DegenerateFitWarning", "SingularInformationWarning"]


class DegenerateFitWarning(UserWarning):
    """A fitted expert collapsed.

    Raised when an expert has too little responsibility for its parameters,
    or its variance reached the floor that guards the Gaussian likelihood
    against degeneracy.
    """


class SingularInformationWarning(UserWarning):
    """The observed information is singular: some standard errors are NaN."""
