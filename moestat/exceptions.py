"""Warnings raised by moestat."""

from __future__ import annotations

from sklearn.exceptions import ConvergenceWarning

__all__ = ["ConvergenceWarning", "DegenerateFitWarning"]


class DegenerateFitWarning(UserWarning):
    """A fitted expert collapsed: too little responsibility, or its variance
    reached the floor that guards the Gaussian likelihood's degeneracy.
    """
