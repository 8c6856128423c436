"""The polynomial basis the experts regress on (scikit-learn's PolynomialFeatures)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sklearn.preprocessing import PolynomialFeatures

__all__ = ["polynomial_design", "polynomial_names"]


def polynomial_design(X: NDArray[np.float64], degree: int) -> NDArray[np.float64]:
    """Every monomial of total degree at most ``degree``, intercept first."""
    if degree == 1:
        return np.hstack([np.ones((X.shape[0], 1)), X])
    return PolynomialFeatures(degree, include_bias=True).fit_transform(X)


def polynomial_names(feature_names: list[str], degree: int) -> list[str]:
    """Names of the basis columns (``const``, ``x0``, ``x0^2``, ...)."""
    poly = PolynomialFeatures(degree, include_bias=True)
    poly.fit(np.zeros((1, len(feature_names))))
    return ["const", *list(poly.get_feature_names_out(feature_names))[1:]]
