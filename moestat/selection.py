"""Choosing the number of experts (and the polynomial order) from data.

``select_model`` fits an estimator over a grid of ``n_experts`` (and
``degree``), in parallel with joblib, scores every fit by BIC, AIC or the
held-out log-likelihood, and refits the best on all the data. A fit that
reported a degeneracy (a collapsed expert, diverging coefficients) is
passed over: its likelihood is that of a degenerate point, not of a model
the data support.

``bootstrap_lrt`` tests ``m`` experts against ``m + 1`` by the parametric
bootstrap of the likelihood-ratio statistic (McLachlan 1987; mixtools'
``boot.comp``), whose null distribution is not chi-squared: under ``m``
experts the extra expert's parameters are not identified.
``select_model(criterion="bootstrap_lrt")`` runs these tests upwards from
the smallest ``m``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from numpy.typing import ArrayLike, NDArray
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from moestat._progress import progress_bar
from moestat._threads import limit_blas_threads
from moestat._validation import Options, as_generator, validate_params
from moestat.exceptions import ConvergenceWarning, DegenerateFitWarning

__all__ = ["select_model", "bootstrap_lrt", "bootstrap_pvalue", "BootstrapLRTResult"]

CRITERIA = ("bic", "aic", "heldout", "bootstrap_lrt")


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


# -- the bootstrap likelihood-ratio test --------------------------------------------
@dataclass(frozen=True)
class BootstrapLRTResult:
    """A bootstrap likelihood-ratio test of ``m`` experts against ``m + 1``.

    Parameters
    ----------
    n_experts : int
        ``m``, the number of experts of the null hypothesis.
    statistic : float
        ``2 (log L_{m+1} - log L_m)`` on the data.
    null_distribution : ndarray of shape (n_boot,)
        The statistic on each data set simulated from the fitted null.
    pvalue : float
        ``(1 + #{T_b >= T}) / (n_boot + 1)``.
    null, alternative : estimator
        The fits with ``m`` and ``m + 1`` experts on the data.
    """

    n_experts: int
    statistic: float
    null_distribution: NDArray[np.float64]
    pvalue: float
    null: Any
    alternative: Any


def bootstrap_pvalue(statistic: float, null_distribution: ArrayLike) -> float:
    """``(1 + #{T_b >= T}) / (B + 1)``: the Monte Carlo p-value.

    Counting the observed statistic among the simulated ones makes the test
    exact at every level that is a multiple of ``1 / (B + 1)``.

    Parameters
    ----------
    statistic : float
        The observed statistic ``T``.
    null_distribution : array-like of shape (B,)
        The statistics ``T_b`` simulated under the null.

    Returns
    -------
    float
    """
    draws = np.asarray(null_distribution, dtype=np.float64)
    return float((1 + np.sum(draws >= statistic)) / (draws.size + 1))


def _quiet_fit(estimator, X, y, **params):
    """A clone with ``params``, fitted with its warnings recorded, not shown."""
    est = clone(estimator).set_params(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _lr_statistic(null, alternative) -> float:
    return float(2 * (alternative.log_likelihood_ - null.log_likelihood_))


@limit_blas_threads()
def _bootstrap_statistic(estimator, null, X, seed):
    """The statistic on one data set drawn from the fitted null."""
    rng = np.random.default_rng(seed)
    y = null.sample(X, random_state=rng)
    m = null.n_experts
    state = int(rng.integers(2**31))
    fits = [
        _quiet_fit(estimator, X, y, n_experts=k, random_state=state) for k in (m, m + 1)
    ]
    return _lr_statistic(*fits)


def bootstrap_lrt(
    estimator: Any,
    X: ArrayLike,
    y: ArrayLike,
    *,
    n_boot: int = 99,
    random_state: Any = None,
    n_jobs: int | None = None,
    progress: bool = False,
) -> BootstrapLRTResult:
    """Parametric bootstrap likelihood-ratio test of ``m`` against ``m + 1`` experts.

    The statistic ``T = 2 (log L_{m+1} - log L_m)`` is computed on the data;
    then ``n_boot`` data sets are drawn from the fitted ``m``-expert model at
    the same covariates, and both models are fitted to each (the
    estimator's restarts and starts, as configured), giving ``T_b``. The
    p-value is ``(1 + #{T_b >= T}) / (n_boot + 1)``. Under the null the
    parameters of the extra expert are not identified and ``T`` is not
    chi-squared; the bootstrap calibrates it (McLachlan 1987; mixtools'
    ``boot.comp``).

    Parameters
    ----------
    estimator : moestat estimator
        A template with ``n_experts = m`` (cloned; fitted or not).
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
    n_boot : int, default=99
        Bootstrap data sets ``B``; ``B + 1`` a multiple of 1 / level (99,
        199, ...) makes the test exact at that level.
    random_state : None, int or numpy Generator, default=None
        Seeds the simulated data and their fits' starts.
    n_jobs : int, optional
        Parallel bootstrap fits (joblib; ``-1`` for every core).
    progress : bool, default=False
        Show a tqdm progress bar.

    Returns
    -------
    BootstrapLRTResult
        ``statistic``, ``null_distribution``, ``pvalue`` and the two fits.
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be a positive int; got {n_boot!r}.")
    m = int(estimator.get_params()["n_experts"])
    null = _quiet_fit(estimator, X, y)
    alternative = _quiet_fit(estimator, X, y, n_experts=m + 1)
    statistic = _lr_statistic(null, alternative)
    seeds = as_generator(random_state).integers(2**63, size=int(n_boot))
    jobs = (delayed(_bootstrap_statistic)(estimator, null, X, seed) for seed in seeds)
    runner = Parallel(n_jobs=n_jobs, return_as="generator")
    with limit_blas_threads():
        draws = np.fromiter(
            progress_bar(
                runner(jobs), total=len(seeds), disable=not progress, desc="bootstrap"
            ),
            dtype=np.float64,
            count=len(seeds),
        )
    _warn_negative_statistics(statistic, draws, m)
    # the m-expert fit is a point of the (m + 1)-expert model: its likelihood
    # bounds the larger model's maximum from below
    statistic, draws = max(statistic, 0.0), np.maximum(draws, 0.0)
    return BootstrapLRTResult(
        n_experts=m,
        statistic=statistic,
        null_distribution=draws,
        pvalue=bootstrap_pvalue(statistic, draws),
        null=null,
        alternative=alternative,
    )


def _warn_negative_statistics(statistic: float, draws: NDArray, m: int) -> None:
    """Warn when a fit with ``m + 1`` experts fell below the fit with ``m``.

    The ``m``-expert model is nested in the ``(m + 1)``-expert one, so at the
    maxima the statistic is never negative: a negative one says that the
    larger model's restarts missed its maximum. Such a statistic is taken
    as 0 (the smaller fit's likelihood bounds the larger maximum from
    below), which still leaves it short of the statistic at the maxima.
    """
    short = int(np.sum(draws < 0)) + int(statistic < 0)
    if short:
        warnings.warn(
            f"{short} of the {draws.size + 1} fits with {m + 1} experts (the data's "
            f"and the bootstrap's) reached a lower log-likelihood than the fit "
            f"with {m} on the same data: their restarts missed the maximum, "
            "and their statistics are taken as 0. Raise n_init.",
            ConvergenceWarning,
            stacklevel=3,
        )


def _bootstrap_lrt_table(
    estimator, X, y, table, *, n_boot, alpha, random_state, n_jobs, progress
):
    """The grid's rows with the p-values of the tests upwards; the chosen row."""
    table = table.sort_values("n_experts", kind="stable").reset_index(drop=True)
    table["bootstrap_lrt"] = np.nan
    rng = as_generator(random_state)
    fixed = {"degree": int(table.loc[0, "degree"])} if "degree" in table else {}
    for row, m in enumerate(table["n_experts"]):
        template = clone(estimator).set_params(n_experts=int(m), **fixed)
        test = bootstrap_lrt(
            template,
            X,
            y,
            n_boot=n_boot,
            random_state=rng,
            n_jobs=n_jobs,
            progress=progress,
        )
        table.loc[row, "bootstrap_lrt"] = test.pvalue
        if test.pvalue > alpha:
            return table, row
    warnings.warn(
        f"The bootstrap likelihood-ratio test rejects every number of experts "
        f"of the grid at level {alpha:g}; keeping the largest, "
        f"n_experts={table['n_experts'].iloc[-1]}. Extend the grid.",
        UserWarning,
        stacklevel=3,
    )
    return table, len(table) - 1


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
    n_boot: int = 99,
    alpha: float = 0.05,
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
    criterion : {"bic", "aic", "heldout", "bootstrap_lrt"}, default="bic"
        Lower is better. ``"heldout"``: minus the mean log-likelihood of a
        held-out part (``test_size``) of the data, the fits made on the rest.
        ``"bootstrap_lrt"``: going up the grid of ``n_experts``, the
        :func:`bootstrap_lrt` of ``m`` against ``m + 1`` experts, keeping
        the first ``m`` it does not reject at level ``alpha`` (one degree
        only).
    test_size : float, default=0.25
        Held-out share for ``criterion="heldout"``.
    n_jobs : int, optional
        Parallel fits (joblib; ``-1`` for every core).
    progress : bool, default=True
        Show a tqdm progress bar.
    random_state : int, optional
        Seeds the held-out split, or the bootstrap of ``"bootstrap_lrt"``.
    n_boot : int, default=99
        Bootstrap data sets of each test (``"bootstrap_lrt"``).
    alpha : float, default=0.05
        Level of the tests (``"bootstrap_lrt"``).

    Returns
    -------
    table : pandas.DataFrame
        One row per fit: the grid values, ``log_likelihood``,
        ``n_parameters``, ``aic``, ``bic`` (``heldout``), ``converged``,
        ``degenerate`` (the fit raised :class:`DegenerateFitWarning`: a
        collapsed expert or diverging coefficients) and ``passed_over``
        (why the row cannot be chosen, ``""`` if it can), sorted by the
        criterion; ``table.attrs["criterion"]`` names it and
        ``table.attrs["best"]`` is the index of the chosen row. With
        ``"bootstrap_lrt"`` the rows are in increasing ``n_experts`` and the
        column ``bootstrap_lrt`` holds the p-value of each ``m`` against
        ``m + 1`` (NaN above the chosen ``m``, where no test was run).
    best : estimator
        The best grid point not passed over, refitted on all of ``X, y``.
        If every fit was degenerate the best by the criterion is kept and
        a :class:`DegenerateFitWarning` says so. With ``"bootstrap_lrt"``,
        the first ``m`` not rejected (the largest of the grid, with a
        warning, if every one is rejected).

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
    if criterion == "bootstrap_lrt" and len(grid_degree) > 1:
        raise ValueError(
            "criterion='bootstrap_lrt' tests numbers of experts at one degree; "
            f"got degree={grid_degree!r}."
        )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}.")
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
    if criterion == "bootstrap_lrt":
        table, chosen = _bootstrap_lrt_table(
            estimator,
            X,
            y,
            pd.DataFrame(rows),
            n_boot=n_boot,
            alpha=alpha,
            random_state=random_state,
            n_jobs=n_jobs,
            progress=progress,
        )
    else:
        table = pd.DataFrame(rows).sort_values(criterion, kind="stable")
        table = table.reset_index(drop=True)
        chosen = _chosen_row(table, criterion)
    table.attrs["criterion"] = criterion
    table.attrs["best"] = chosen
    best_params = {k: table.loc[chosen, k] for k in grid[0]}
    best_params = {k: int(v) for k, v in best_params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        best = clone(estimator).set_params(**best_params).fit(X, y)
    return table, best
