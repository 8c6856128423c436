"""Convergence rates: log-log slopes of the losses against n, with CIs.

For each group (by default scenario and fit) and each loss, the per-n
summary (the mean or the median over replications) is regressed on ``log n``
by OLS (theory.md §8.2):

- ``form="mean"``: the paper convention, ``log mean_r L = c + s log n``;
- ``form="median"``: the same with medians (robust to a few failed fits);
- ``form="log_n_over_n"``: DeepSeekMoE's convention,
  ``log mean_r L = c - gamma log(n / log n)``, reported as ``slope = -gamma``
  so that it compares with the same theoretical slope.

The confidence interval is a replicate bootstrap: within each n the
replications are resampled with replacement, the per-n summaries and the
slope recomputed, ``n_boot`` times; the percentile interval is reported.
statsmodels' OLS interval (which treats the per-n summaries as the data) is
given beside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.iolib.table import SimpleTable

from moestat._validation import as_generator
from moestat.simulation.scenarios import SCENARIOS
from moestat.simulation.store import load_results

__all__ = [
    "estimate_rate",
    "summarize_losses",
    "format_rates",
    "loss_columns",
    "best_of_restarts",
    "approximation_rates",
    "tradeoff_summary",
    "RATE_FORMS",
]

#: Values of ``form`` of :func:`estimate_rate`: the summary over
#: replications and the regressor.
RATE_FORMS = ("mean", "median", "log_n_over_n")
# The loss columns a sweep records: the density losses, the Voronoi loss,
# the KL to the truth of a misspecified fit, and the per-parameter errors.
LOSSES = ("kl", "hellinger", "tv", "voronoi", "kl_truth")
ERROR_PREFIX = "err_"


def loss_columns(results: pd.DataFrame) -> list[str]:
    """The loss columns present in a results table, in table order.

    ``kl``, ``hellinger``, ``tv``, ``voronoi``, ``kl_truth`` and the
    per-parameter errors ``err_*``, where any value is present. Other
    columns can still be given to :func:`estimate_rate` by name.

    Parameters
    ----------
    results : pandas.DataFrame
        One row per cell (:func:`moestat.simulation.load_results`).

    Returns
    -------
    list of str
        Names of the loss columns with at least one non-missing value.
    """
    return [
        name
        for name in results.columns
        if (name in LOSSES or name.startswith(ERROR_PREFIX))
        and results[name].notna().any()
    ]


def _as_frame(results: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    if isinstance(results, pd.DataFrame):
        return results
    return load_results(results)


def _theory(scenario: str, fit: str, loss: str) -> tuple[float, bool]:
    spec = SCENARIOS.get(scenario)
    if spec is None:
        return np.nan, False
    for fitted in spec.fits:
        if fitted.label == fit:
            return fitted.theory.get(loss, np.nan), loss in fitted.diagnostic
    return np.nan, False


def _group_summaries(
    frame: pd.DataFrame, x: str, loss: str, form: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """X values and, for each, the positive finite losses of its replicates."""
    xs, samples = [], []
    for value, group in frame.groupby(x, sort=True):
        losses = group[loss].to_numpy(dtype=float)
        losses = losses[np.isfinite(losses) & (losses > 0)]
        if losses.size:
            xs.append(float(value))
            samples.append(losses)
    return np.asarray(xs), samples


def _summary(values: np.ndarray, form: str, axis: int = -1) -> np.ndarray:
    if form == "median":
        return np.median(values, axis=axis)
    return np.mean(values, axis=axis)


def _regressor(xs: np.ndarray, form: str) -> np.ndarray:
    if form == "log_n_over_n":
        return np.log(xs / np.log(xs))
    return np.log(xs)


def _bootstrap_slopes(
    t: np.ndarray,
    samples: list[np.ndarray],
    form: str,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Slopes of ``n_boot`` replicate-bootstrap draws (vectorised)."""
    logs = np.empty((n_boot, len(samples)))
    for k, values in enumerate(samples):
        draws = values[rng.integers(0, values.size, size=(n_boot, values.size))]
        logs[:, k] = np.log(_summary(draws, form, axis=1))
    centred = t - t.mean()
    return (logs - logs.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)


def _fit_one(
    t: np.ndarray,
    samples: list[np.ndarray],
    form: str,
    n_boot: int,
    level: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    log_summary = np.log([_summary(values, form) for values in samples])
    ols = sm.OLS(log_summary, sm.add_constant(t)).fit()
    alpha = 1.0 - level
    ols_low, ols_high = ols.conf_int(alpha)[1]
    boot = _bootstrap_slopes(t, samples, form, n_boot, rng)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {
        "slope": float(ols.params[1]),
        "ci_low": float(low),
        "ci_high": float(high),
        "ols_ci_low": float(ols_low),
        "ols_ci_high": float(ols_high),
        "intercept": float(ols.params[0]),
        "r_squared": float(ols.rsquared),
    }


def _verdict(
    theory: float, slope: float, low: float, high: float, diagnostic: bool, tol: float
) -> str:
    if np.isnan(theory):
        return ""
    if diagnostic:
        return "diagnostic"
    if low <= theory <= high:
        return "pass"
    return "close" if abs(slope - theory) <= tol else "fail"


def estimate_rate(
    results: pd.DataFrame | str | os.PathLike,
    loss: str | Sequence[str] | None = None,
    *,
    by: Sequence[str] = ("scenario", "fit"),
    x: str = "n",
    form: str = "mean",
    n_boot: int = 2000,
    level: float = 0.95,
    theory: Mapping[str, float] | None = None,
    x_min: float | None = None,
    x_max: float | None = None,
    tolerance: float = 0.1,
    random_state: Any = 0,
) -> pd.DataFrame:
    """Estimate convergence rates: slopes of log(loss) against log(n).

    Parameters
    ----------
    results : DataFrame or path-like
        One row per cell (:func:`moestat.simulation.load_results`), or the
        sweep directory.
    loss : str or sequence of str, optional
        Loss column(s); default every loss column in ``results``.
    by : sequence of str, default=("scenario", "fit")
        Columns that define a group; one slope per group and loss.
    x : str, default="n"
        The column the rate is in (``"n_experts"`` for an approximation
        rate in m).
    form : {"mean", "median", "log_n_over_n"}, default="mean"
        Summary over replications and regressor (module docstring).
    n_boot : int, default=2000
        Bootstrap draws for the confidence interval.
    level : float, default=0.95
        Confidence level.
    theory : mapping of str to float, optional
        Theoretical slopes by loss name; default the registered scenario's
        (theory.md §6, §8.2).
    x_min, x_max : float, optional
        Use only the rows with ``x_min <= x <= x_max``: rates are
        asymptotic, and at small n over-specified fits are often far from
        that regime (the slope over the whole grid is then steeper).
    tolerance : float, default=0.1
        theory.md §8.2's tolerance on ``|slope - theory|``: a slope whose
        interval misses the theory by less is reported as ``"close"``.
    random_state : None, int or Generator, default=0
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per (group, loss): the group columns, ``loss``, ``slope``,
        ``ci_low``, ``ci_high`` (bootstrap percentile interval),
        ``ols_ci_low``, ``ols_ci_high``, ``intercept``, ``r_squared``,
        ``theory`` (NaN where none is stated), ``abs_error``
        (``|slope - theory|``), ``verdict`` (``"pass"`` when the theory lies
        in the interval; ``"close"`` when it does not but
        ``|slope - theory| <= tolerance``; ``"fail"``; ``"diagnostic"`` for
        slopes theory.md reports without a pass/fail rule; empty without a
        theory),
        ``n_points`` (sample sizes used), ``n_min``, ``n_max``, ``min_reps``
        and ``dropped`` (non-positive or missing losses left out).

    Raises
    ------
    ValueError
        For an unknown form or loss, or a group with fewer than three
        sample sizes.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> n = np.repeat([100, 1000, 10000], 20)
    >>> table = pd.DataFrame({"scenario": "demo", "fit": "m=2", "n": n,
    ...                       "kl": 3.0 / n * rng.chisquare(6, n.size) / 6})
    >>> rates = estimate_rate(table, "kl", n_boot=200)
    >>> round(float(rates["slope"].iloc[0]), 1)
    -1.0
    """
    frame = _as_frame(results)
    if form not in RATE_FORMS:
        raise ValueError(f"Unknown form {form!r}; choose one of {RATE_FORMS}.")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level!r}.")
    losses = (
        loss_columns(frame)
        if loss is None
        else [loss]
        if isinstance(loss, str)
        else list(loss)
    )
    missing = [name for name in losses if name not in frame.columns]
    if missing or x not in frame.columns:
        raise ValueError(
            f"Column(s) {missing or [x]} not in the results; they have "
            f"{sorted(frame.columns)}."
        )
    if x_min is not None:
        frame = frame[frame[x] >= x_min]
    if x_max is not None:
        frame = frame[frame[x] <= x_max]
    by = [column for column in by if column in frame.columns]
    rng = as_generator(random_state)
    rows = []
    groups = frame.groupby(by, sort=True) if by else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        labels = dict(zip(by, key, strict=True))
        for name in losses:
            xs, samples = _group_summaries(group, x, name, form)
            if len(xs) < 3:
                continue
            t = _regressor(xs, form)
            row = {
                **labels,
                "loss": name,
                **_fit_one(t, samples, form, n_boot, level, rng),
            }
            if theory is not None:
                target, diagnostic = theory.get(name, np.nan), False
            else:
                target, diagnostic = _theory(
                    str(labels.get("scenario")), str(labels.get("fit")), name
                )
            row["theory"] = target
            row["abs_error"] = abs(row["slope"] - target)
            row["verdict"] = _verdict(
                target,
                row["slope"],
                row["ci_low"],
                row["ci_high"],
                diagnostic,
                tolerance,
            )
            row["n_points"] = len(xs)
            row["n_min"], row["n_max"] = float(xs.min()), float(xs.max())
            row["min_reps"] = min(values.size for values in samples)
            row["dropped"] = int(group[name].size - sum(v.size for v in samples))
            rows.append(row)
    if not rows:
        raise ValueError(
            f"No group has losses at three or more distinct {x!r} values; "
            "a rate needs a grid of sample sizes."
        )
    return pd.DataFrame(rows)


def summarize_losses(
    results: pd.DataFrame | str | os.PathLike,
    loss: str,
    *,
    by: Sequence[str] = ("scenario", "fit"),
    x: str = "n",
) -> pd.DataFrame:
    """Per-n summary of one loss: mean, median, sd, 2.5/97.5% quantiles.

    Also the number of replications and of optimisation failures
    (theory.md §8.2).

    Parameters
    ----------
    results : DataFrame or path-like
        One row per cell (:func:`moestat.simulation.load_results`), or the
        sweep directory.
    loss : str
        The loss column.
    by : sequence of str, default=("scenario", "fit")
        Columns that define a group (those absent from ``results`` are
        skipped).
    x : str, default="n"
        The column summarised over.

    Returns
    -------
    pandas.DataFrame
        One row per group and ``x`` value: the group columns, ``x``,
        ``mean``, ``median``, ``sd``, ``q025``, ``q975`` and ``reps`` (the
        non-missing losses), and ``failures`` (the sum of ``opt_failure``)
        where ``results`` records it.
    """
    frame = _as_frame(results)
    keys = [column for column in by if column in frame.columns] + [x]
    grouped = frame.groupby(keys, sort=True)
    summary = grouped[loss].agg(
        mean="mean",
        median="median",
        sd="std",
        q025=lambda v: v.quantile(0.025),
        q975=lambda v: v.quantile(0.975),
        reps="count",
    )
    if "opt_failure" in frame.columns:
        summary["failures"] = grouped["opt_failure"].sum().astype(int)
    return summary.reset_index()


def format_rates(rates: pd.DataFrame, digits: int = 3) -> str:
    """The rate table as plain text for the console (statsmodels SimpleTable).

    Parameters
    ----------
    rates : pandas.DataFrame
        A table of :func:`estimate_rate`.
    digits : int, default=3
        Decimals of the numbers (NaN is shown blank).

    Returns
    -------
    str
        The columns ``scenario``, ``fit``, ``loss``, ``slope``, ``ci_low``,
        ``ci_high``, ``theory`` and ``verdict`` that ``rates`` has, under the
        title "Estimated convergence rates".
    """
    columns = [
        c
        for c in (
            "scenario",
            "fit",
            "loss",
            "slope",
            "ci_low",
            "ci_high",
            "theory",
            "verdict",
        )
        if c in rates.columns
    ]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    data = [[cell(row[c]) for c in columns] for _, row in rates.iterrows()]
    return str(SimpleTable(data, headers=columns, title="Estimated convergence rates"))


def best_of_restarts(results: pd.DataFrame, loss: str = "kl") -> pd.DataFrame:
    """Keep, per (scenario, fit, n), the replicate with the smallest loss.

    For approximation studies, whose replications are restarts of one
    population fit.

    Parameters
    ----------
    results : DataFrame or path-like
        One row per cell (:func:`moestat.simulation.load_results`), or the
        sweep directory.
    loss : str, default="kl"
        The loss column to minimise.

    Returns
    -------
    pandas.DataFrame
        One row of ``results`` per (scenario, fit, n).
    """
    frame = _as_frame(results)
    best = frame.loc[frame.groupby(["scenario", "fit", "n"])[loss].idxmin()]
    return best.reset_index(drop=True)


def approximation_rates(
    results: pd.DataFrame | str | os.PathLike, loss: str = "kl"
) -> pd.DataFrame:
    """Slopes of the population loss against m, one per expert degree k.

    Mendes–Jiang (theory.md §7.2, MJ-2): for an analytic truth the
    approximation term of the KL falls like ``m^(-2(k+1))`` (s = 1), so the
    ``theory`` column is ``-2(k+1)``. The best of the restarts is used for
    each (m, k); the interval is statsmodels' OLS interval (there are no
    replications to resample).

    Parameters
    ----------
    results : DataFrame or path-like
        Cells of an approximation sweep (with ``n_experts`` and ``degree``
        columns), or the sweep directory.
    loss : str, default="kl"
        The loss column.

    Returns
    -------
    pandas.DataFrame
        One row per degree k with losses at three or more distinct m:
        ``degree``, ``loss``, ``slope``, ``ci_low``, ``ci_high`` (95% OLS
        interval), ``theory``, ``m_min`` and ``m_max``.
    """
    best = best_of_restarts(results, loss)
    rows = []
    for degree, group in best.groupby("degree", sort=True):
        group = group[(group[loss] > 0) & np.isfinite(group[loss])]
        if group["n_experts"].nunique() < 3:
            continue
        t = np.log(group["n_experts"].to_numpy(float))
        ols = sm.OLS(np.log(group[loss].to_numpy(float)), sm.add_constant(t)).fit()
        low, high = ols.conf_int(0.05)[1]
        rows.append(
            {
                "degree": int(degree),
                "loss": loss,
                "slope": float(ols.params[1]),
                "ci_low": float(low),
                "ci_high": float(high),
                "theory": -2.0 * (degree + 1),
                "m_min": int(group["n_experts"].min()),
                "m_max": int(group["n_experts"].max()),
            }
        )
    return pd.DataFrame(rows)


def tradeoff_summary(
    results: pd.DataFrame | str | os.PathLike, loss: str = "kl"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Mendes–Jiang trade-off between m and k as n grows (MJ-3).

    Parameters
    ----------
    results : DataFrame or path-like
        Cells of a sweep over an (m, k) grid of fits and an n grid.
    loss : str, default="kl"

    Returns
    -------
    best : pandas.DataFrame
        One row per (n, degree): the m minimising the mean loss
        (``best_m``), that minimum (``min_loss``), and ``overall`` marking
        the best (m, k) at each n.
    slopes : pandas.DataFrame
        One row per degree k: the slope of ``log min_m E[loss]`` against
        ``log n`` beside the theory ``-2 lambda / (2 lambda + 1)``, and the
        slope of ``log best_m`` beside ``1 / (2 lambda + 1)``, with
        ``lambda = k + 1`` (an analytic truth in one covariate, theory.md
        §7.1).
    """
    frame = _as_frame(results)
    means = frame.groupby(["n", "degree", "n_experts"])[loss].mean().reset_index()
    idx = means.groupby(["n", "degree"])[loss].idxmin()
    best = means.loc[idx].rename(columns={"n_experts": "best_m", loss: "min_loss"})
    best = best.reset_index(drop=True)
    overall = best.groupby("n")["min_loss"].transform("min")
    best["overall"] = best["min_loss"] == overall
    rows = []
    for degree, group in best.groupby("degree", sort=True):
        if group["n"].nunique() < 3:
            continue
        t = sm.add_constant(np.log(group["n"].to_numpy(float)))
        lam = degree + 1.0
        loss_fit = sm.OLS(np.log(group["min_loss"].to_numpy(float)), t).fit()
        m_fit = sm.OLS(np.log(group["best_m"].to_numpy(float)), t).fit()
        rows.append(
            {
                "degree": int(degree),
                "loss_slope": float(loss_fit.params[1]),
                "loss_theory": -2 * lam / (2 * lam + 1),
                "m_slope": float(m_fit.params[1]),
                "m_theory": 1 / (2 * lam + 1),
            }
        )
    return best, pd.DataFrame(rows)
