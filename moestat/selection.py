"""Choosing the number of experts (and the polynomial order) from data.

``select_model`` fits an estimator over a grid of ``n_experts`` (and
``degree``), in parallel with joblib, scores every fit by BIC, AIC or the
held-out log-likelihood, and refits the best on all the data. A fit that
reported a degeneracy (a collapsed expert, diverging coefficients) is
passed over: its likelihood is that of a degenerate point, not of a model
the data support.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from moestat._progress import progress_bar
from moestat._threads import limit_blas_threads
from moestat._validation import Options, validate_params
from moestat.exceptions import ConvergenceWarning, DegenerateFitWarning

__all__ = ["select_model"]

CRITERIA = ("bic", "aic", "heldout")


def _first_sentence(message: str) -> str:
    """The text up to the first full stop that ends a sentence."""
    head, stop, _ = message.partition(". ")
    return head + "." if stop else message


def _degeneracy_reasons(caught: list[warnings.WarningMessage]) -> str:
    """The distinct degeneracies among caught warnings, first sentences joined.

    Parameters
    ----------
    caught : list of warnings.WarningMessage
        Warnings recorded while fitting.

    Returns
    -------
    str
        Empty when no :class:`DegenerateFitWarning` was raised.
    """
    reasons = [
        _first_sentence(str(w.message))
        for w in caught
        if issubclass(w.category, DegenerateFitWarning)
    ]
    return "; ".join(dict.fromkeys(reasons))


@limit_blas_threads()
def _fit_one(estimator, X, y, X_test, y_test, params):
    est = clone(estimator).set_params(**params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y)
    reasons = _degeneracy_reasons(caught)
    row = {
        **params,
        "log_likelihood": est.log_likelihood_,
        "n_parameters": est.n_parameters_,
        "aic": est.aic(X, y),
        "bic": est.bic(X, y),
        "converged": est.converged_,
        "degenerate": bool(reasons),
        "passed_over": f"degenerate: {reasons}" if reasons else "",
    }
    if X_test is not None:
        row["heldout"] = -float(np.mean(est.score_samples(X_test, y_test)))
    return row


def _chosen_row(table: pd.DataFrame, criterion: str) -> int:
    """Index of the best row not passed over; the best row if all are.

    Warns with :class:`DegenerateFitWarning` when every fit was degenerate.
    """
    eligible = table.index[table["passed_over"] == ""]
    if len(eligible):
        return int(eligible[0])
    warnings.warn(
        f"Every fit of the grid reported a degeneracy; keeping the best by "
        f"{criterion} (n_experts={table.loc[0, 'n_experts']}) anyway. Its "
        f"estimates are not reliable: {table.loc[0, 'passed_over']}",
        DegenerateFitWarning,
        stacklevel=3,
    )
    return 0


def select_model(
    estimator: Any,
    X: ArrayLike,
    y: ArrayLike,
    *,
    n_experts: Iterable[int] = range(1, 7),
    degree: Iterable[int] | None = None,
    criterion: str = "bic",
    test_size: float = 0.25,
    n_jobs: int | None = None,
    progress: bool = True,
    random_state: Any = None,
) -> tuple[pd.DataFrame, Any]:
    """Fit over a grid of numbers of experts (and orders); keep the best.

    Parameters
    ----------
    estimator : moestat estimator
        A template (e.g. ``GaussianMoE(random_state=0)``); it is cloned.
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    n_experts : iterable of int, default=range(1, 7)
        Numbers of experts to try.
    degree : iterable of int, optional
        Orders to try, for estimators with a ``degree`` (``PolynomialMoE``);
        by default the estimator's own.
    criterion : {"bic", "aic", "heldout"}, default="bic"
        Lower is better. ``"heldout"``: minus the mean log-likelihood of a
        held-out part (``test_size``) of the data, the fits made on the rest.
    test_size : float, default=0.25
        Held-out share for ``criterion="heldout"``.
    n_jobs : int, optional
        Parallel fits (joblib; ``-1`` for every core).
    progress : bool, default=True
        Show a tqdm progress bar.
    random_state : int, optional
        Seeds the held-out split.

    Returns
    -------
    table : pandas.DataFrame
        One row per fit: the grid values, ``log_likelihood``,
        ``n_parameters``, ``aic``, ``bic`` (``heldout``), ``converged``,
        ``degenerate`` (the fit raised :class:`DegenerateFitWarning`: a
        collapsed expert or diverging coefficients) and ``passed_over``
        (why the row cannot be chosen, ``""`` if it can), sorted by the
        criterion; ``table.attrs["criterion"]`` names it and
        ``table.attrs["best"]`` is the index of the chosen row.
    best : estimator
        The best grid point not passed over, refitted on all of ``X, y``.
        If every fit was degenerate the best by the criterion is kept and
        a :class:`DegenerateFitWarning` says so.

    Notes
    -----
    The fits run with BLAS at one thread, in this process and in the
    workers; the environment variable ``MOESTAT_BLAS_THREADS`` changes that
    (the user guide's "Fitting" page).

    Examples
    --------
    >>> from moestat import GaussianMoE
    >>> from moestat.datasets import make_moe_regression
    >>> from moestat.selection import select_model
    >>> X, y, _ = make_moe_regression(1000, n_experts=2, random_state=0)
    >>> table, best = select_model(GaussianMoE(n_init=2, random_state=0), X, y,
    ...                            n_experts=[1, 2, 3], progress=False)
    >>> int(best.n_experts)
    2
    """
    validate_params(
        "select_model", {"criterion": criterion}, {"criterion": (Options(CRITERIA),)}
    )
    grid_experts = [int(m) for m in n_experts]
    if not grid_experts or min(grid_experts) < 1:
        raise ValueError(f"n_experts must list positive ints; got {grid_experts!r}.")
    has_degree = "degree" in estimator.get_params()
    if degree is not None and not has_degree:
        raise ValueError(
            f"{type(estimator).__name__} has no degree; leave degree=None."
        )
    grid_degree = [int(k) for k in degree] if degree is not None else [None]
    grid = [
        {"n_experts": m, **({"degree": k} if k is not None else {})}
        for m, k in itertools.product(grid_experts, grid_degree)
    ]
    X_fit, y_fit, X_test, y_test = X, y, None, None
    if criterion == "heldout":
        X_fit, X_test, y_fit, y_test = train_test_split(
            X, y, test_size=test_size, random_state=random_state
        )
    jobs = (delayed(_fit_one)(estimator, X_fit, y_fit, X_test, y_test, p) for p in grid)
    runner = Parallel(n_jobs=n_jobs, return_as="generator")
    with limit_blas_threads():
        rows = list(
            progress_bar(
                runner(jobs), total=len(grid), disable=not progress, desc="select_model"
            )
        )
    table = pd.DataFrame(rows).sort_values(criterion, kind="stable")
    table = table.reset_index(drop=True)
    table.attrs["criterion"] = criterion
    chosen = _chosen_row(table, criterion)
    table.attrs["best"] = chosen
    best_params = {k: table.loc[chosen, k] for k in grid[0]}
    best_params = {k: int(v) for k, v in best_params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        best = clone(estimator).set_params(**best_params).fit(X, y)
    return table, best
