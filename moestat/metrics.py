"""Held-out log-likelihood as a scikit-learn scorer.

The conditional log-density ``log p(y | x)`` of new data is the natural
measure of a fitted mixture of experts: it rewards a model for the whole
predictive distribution, not its mean alone. :func:`log_likelihood_scorer`
is a scorer (a callable ``scorer(estimator, X, y)``, greater is better) for
``cross_val_score``, ``GridSearchCV`` and the rest of
:mod:`sklearn.model_selection`.

A ``Pipeline`` has no ``score_samples(X, y)`` (its ``score_samples`` takes
``X`` alone), so the scorer takes a pipeline apart: ``X`` goes through every
step but the last, and the last step, a moestat estimator, scores the
result. Transforming ``x`` by a bijection (a scaler) leaves ``log p(y | x)``
unchanged; a transform of ``y`` would not, and meta-estimators that
transform ``y`` are refused.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.pipeline import Pipeline

__all__ = ["log_likelihood_scorer"]


def _final_estimator_and_input(estimator: Any, X: ArrayLike) -> tuple[Any, Any]:
    """The estimator that scores, and ``X`` through the steps before it."""
    while isinstance(estimator, Pipeline):
        if len(estimator) > 1:
            X = estimator[:-1].transform(X)
        estimator = estimator[-1]
    return estimator, X


def log_likelihood_scorer(
    estimator: Any,
    X: ArrayLike,
    y: ArrayLike,
    sample_weight: ArrayLike | None = None,
) -> float:
    """Mean held-out log-likelihood per sample, ``mean_t log p(y_t | x_t)``.

    A scikit-learn scorer: pass it as ``scoring=`` (greater is better).

    Parameters
    ----------
    estimator : fitted moestat estimator or Pipeline ending in one
        Any estimator with ``score_samples(X, y)`` (every moestat
        estimator), alone or as the last step of a (nested) ``Pipeline``.
    X : array-like of shape (n_samples, n_features)
        Held-out covariates.
    y : array-like of shape (n_samples,)
        Held-out responses (labels for classifiers).
    sample_weight : array-like of shape (n_samples,), optional
        Weights of the held-out samples: the weighted mean.

    Returns
    -------
    float
        The mean of ``log p(y_t | x_t)`` over the samples.

    Raises
    ------
    TypeError
        For an estimator with no ``score_samples(X, y)``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from moestat import GaussianMoE
    >>> from moestat.datasets import make_moe_regression
    >>> from moestat.metrics import log_likelihood_scorer
    >>> X, y, truth = make_moe_regression(n_samples=600, random_state=0)
    >>> pipe = make_pipeline(StandardScaler(), GaussianMoE(2, random_state=0))
    >>> scores = cross_val_score(pipe, X, y, scoring=log_likelihood_scorer, cv=3)
    >>> bool(np.isfinite(scores).all())
    True
    """
    final, X = _final_estimator_and_input(estimator, X)
    if not _scores_with_y(final):
        raise TypeError(
            "log_likelihood_scorer needs an estimator with score_samples(X, y), "
            "a moestat estimator, alone or last in a Pipeline; got "
            f"{type(final).__name__}."
        )
    log_density = np.asarray(final.score_samples(X, y), dtype=float)
    if sample_weight is None:
        return float(np.mean(log_density))
    return float(np.average(log_density, weights=np.asarray(sample_weight)))


def _scores_with_y(estimator: Any) -> bool:
    """Whether ``estimator.score_samples`` takes the responses."""
    method = getattr(estimator, "score_samples", None)
    if method is None:
        return False
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return True
    return "y" in parameters
