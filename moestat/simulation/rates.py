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
slope recomputed, ``n_boot`` times (:data:`N_BOOT` by default, everywhere an
interval is shown: :func:`estimate_rate`, :func:`moestat.plotting.plot_rates`
and the command line); the percentile interval is reported. statsmodels' OLS
interval (which treats the per-n summaries as the data) is given beside it.

Each (group, loss) draws its bootstrap from its own random stream, derived
from the seed and a stable hash of the group's labels and the loss name, so
a row's interval does not depend on which other groups or losses are
computed with it: the printed table, the CSV and the plot legend agree for
the same results and seed.

A row's ``verdict`` compares the slope with the theory: ``"pass"`` needs the
theory inside an interval no wider than ``max_width`` (a wider one is
``"inconclusive"``); a loss that is zero up to round-off everywhere (such as
the error of a parameter the parametrisation fixes) has no rate and is
reported as ``"round-off"``.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.iolib.table import SimpleTable

from moestat.simulation.scenarios import SCENARIOS
from moestat.simulation.store import load_results

__all__ = [
    "N_BOOT",
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
#: Bootstrap draws of a slope's interval: the default of
#: :func:`estimate_rate` and :func:`moestat.plotting.plot_rates` (and of the
#: command line), so that every place a rate is shown gives the same
#: interval. The bootstrap is vectorised: 2000 draws cost milliseconds.
N_BOOT = 2000
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


def _group_losses(frame: pd.DataFrame, x: str, loss: str) -> tuple[np.ndarray, list]:
    """X values with a finite loss and, for each, its replicates' finite losses."""
    xs, samples = [], []
    for value, group in frame.groupby(x, sort=True):
        losses = group[loss].to_numpy(dtype=float)
        losses = losses[np.isfinite(losses)]
        if losses.size:
            xs.append(float(value))
            samples.append(losses)
    return np.asarray(xs), samples


def _positive(xs: np.ndarray, samples: list) -> tuple[np.ndarray, list]:
    """The X values and losses left when the non-positive losses are dropped."""
    pairs = zip(xs, samples, strict=True)
    kept = [(value, losses[losses > 0]) for value, losses in pairs]
    kept = [(value, losses) for value, losses in kept if losses.size]
    return np.asarray([value for value, _ in kept]), [losses for _, losses in kept]


def _summary(values: np.ndarray, form: str, axis: int = -1) -> np.ndarray:
    if form == "median":
        return np.median(values, axis=axis)
    return np.mean(values, axis=axis)


def _regressor(xs: np.ndarray, form: str) -> np.ndarray:
    if form == "log_n_over_n":
        return np.log(xs / np.log(xs))
    return np.log(xs)


def _root_seed(random_state: Any) -> int:
    """One integer seed from ``random_state`` (drawn once from a generator)."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, numbers.Integral) and not isinstance(
        random_state, bool
    ):
        if random_state < 0:
            raise ValueError(f"random_state must be >= 0; got {random_state}.")
        return int(random_state)
    raise TypeError(
        "random_state must be None, an int or a numpy Generator; got "
        f"{type(random_state).__name__}."
    )


def _row_generator(
    seed: int, labels: Mapping[str, Any], loss: str
) -> np.random.Generator:
    """The bootstrap stream of one (group, loss): the seed and a stable hash.

    The hash is of the group's ``column=value`` labels (sorted by column) and
    the loss name, so the stream, and the row's interval, is the same
    whichever other rows are computed with it, in any process.
    """
    text = "\x1f".join(
        [*(f"{column}={value}" for column, value in sorted(labels.items())), loss]
    )
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return np.random.default_rng(
        np.random.SeedSequence([seed, int.from_bytes(digest, "little")])
    )


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


_FIT_COLUMNS = (
    "slope",
    "ci_low",
    "ci_high",
    "ci_width",
    "ols_ci_low",
    "ols_ci_high",
    "intercept",
    "r_squared",
)


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
        "ci_width": float(high - low),
        "ols_ci_low": float(ols_low),
        "ols_ci_high": float(ols_high),
        "intercept": float(ols.params[0]),
        "r_squared": float(ols.rsquared),
    }


def _verdict(
    theory: float,
    slope: float,
    low: float,
    high: float,
    diagnostic: bool,
    tol: float,
    max_width: float,
) -> str:
    if np.isnan(theory):
        return ""
    if diagnostic:
        return "diagnostic"
    if not high - low <= max_width:
        return "inconclusive"
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
    n_boot: int = N_BOOT,
    level: float = 0.95,
    theory: Mapping[str, float] | None = None,
    x_min: float | None = None,
    x_max: float | None = None,
    tolerance: float = 0.1,
    max_width: float = 0.5,
    round_off: float = 1e-8,
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
    n_boot : int, default=N_BOOT (2000)
        Bootstrap draws for the confidence interval;
        :func:`moestat.plotting.plot_rates` has the same default, so its
        legend shows the interval of this table.
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
    max_width : float, default=0.5
        The widest bootstrap interval (``ci_high - ci_low``, in slope units)
        that can give a ``"pass"``, ``"close"`` or ``"fail"``; a wider one is
        ``"inconclusive"``. An interval wider than 0.5 can hold at once
        rates that theory tells apart by 0.5, such as a parameter's -1/2
        and no convergence at all (0), or the KL's -1 and the Hellinger
        distance's -1/2, so the theory lying inside it is no evidence for
        the theory. Lower it (say to 0.25) to ask that -1/2 and -1/4 be
        told apart; ``numpy.inf`` restores the verdicts without the check.
    round_off : float, default=1e-8
        A (group, loss) whose finite losses are all at most ``round_off`` in
        absolute value is zero up to floating-point error (such as the error
        of a parameter the parametrisation fixes, like an anchored gate's
        slope): it has no rate, and its row has NaN ``slope``,
        intervals, ``intercept`` and ``r_squared`` and the verdict
        ``"round-off"``. ``0`` recognises only losses that are exactly
        zero.
    random_state : None, int or Generator, default=0
        Seed of the bootstrap: an int seeds it, ``None`` draws fresh
        entropy, and a numpy Generator gives one integer seed (drawn once,
        advancing it). Each (group, loss) draws from its own stream, derived
        from that seed and a stable hash of the group's labels and the loss
        name, so a row's interval is the same whether it is computed alone
        (as :func:`moestat.plotting.plot_rates` does) or with other losses
        and groups.

    Returns
    -------
    pandas.DataFrame
        One row per (group, loss) with losses at three or more distinct
        ``x``: the group columns, ``loss``, ``slope``, ``ci_low``,
        ``ci_high`` (bootstrap percentile interval), ``ci_width``
        (``ci_high - ci_low``), ``ols_ci_low``, ``ols_ci_high``,
        ``intercept``, ``r_squared``, ``theory`` (NaN where none is
        stated), ``abs_error`` (``|slope - theory|``), ``verdict``,
        ``n_points`` (sample sizes used), ``n_min``, ``n_max``, ``min_reps``
        and ``dropped`` (losses left out: missing ones, and non-positive
        ones except in a ``"round-off"`` row).

        ``verdict`` is the first that applies of: ``"round-off"`` for a
        loss that is zero up to ``round_off`` (no slope); ``""`` without a
        theory; ``"diagnostic"`` for slopes theory.md reports without a
        pass/fail rule; ``"inconclusive"`` when ``ci_width > max_width``;
        ``"pass"`` when the theory lies in the interval; ``"close"`` when it
        does not but ``|slope - theory| <= tolerance``; else ``"fail"``.

    Raises
    ------
    ValueError
        For an unknown form or loss, a bad ``n_boot``, ``level``,
        ``max_width``, ``round_off`` or ``random_state``, or when no group
        has losses at three or more distinct ``x`` values.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> n = np.repeat([100, 1000, 10000], 20)
    >>> table = pd.DataFrame({"scenario": "demo", "fit": "m=2", "n": n,
    ...                       "kl": 3.0 / n * rng.chisquare(6, n.size) / 6,
    ...                       "err_fixed": 1e-12})
    >>> rates = estimate_rate(table, ["kl", "err_fixed"], theory={"kl": -1.0})
    >>> rates[["loss", "verdict"]].values.tolist()
    [['kl', 'pass'], ['err_fixed', 'round-off']]
    >>> round(float(rates["slope"].iloc[0]), 1)
    -1.0
    """
    frame = _as_frame(results)
    if form not in RATE_FORMS:
        raise ValueError(f"Unknown form {form!r}; choose one of {RATE_FORMS}.")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level!r}.")
    if not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}.")
    if not max_width > 0:
        raise ValueError(f"max_width must be positive; got {max_width!r}.")
    if not round_off >= 0:
        raise ValueError(f"round_off must be >= 0; got {round_off!r}.")
    seed = _root_seed(random_state)
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
    rows = []
    groups = frame.groupby(by, sort=True) if by else [((), frame)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        labels = dict(zip(by, key, strict=True))
        for name in losses:
            xs, samples = _group_losses(group, x, name)
            if len(xs) < 3:
                continue
            if theory is not None:
                target, diagnostic = theory.get(name, np.nan), False
            else:
                target, diagnostic = _theory(
                    str(labels.get("scenario")), str(labels.get("fit")), name
                )
            row: dict[str, Any] = {**labels, "loss": name}
            if all(np.all(np.abs(values) <= round_off) for values in samples):
                row |= dict.fromkeys(_FIT_COLUMNS, np.nan)
                row |= {"theory": target, "abs_error": np.nan, "verdict": "round-off"}
            else:
                xs, samples = _positive(xs, samples)
                if len(xs) < 3:
                    continue
                rng = _row_generator(seed, labels, name)
                row |= _fit_one(_regressor(xs, form), samples, form, n_boot, level, rng)
                row["theory"] = target
                row["abs_error"] = abs(row["slope"] - target)
                row["verdict"] = _verdict(
                    target,
                    row["slope"],
                    row["ci_low"],
                    row["ci_high"],
                    diagnostic,
                    tolerance,
                    max_width,
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
