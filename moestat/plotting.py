"""Plots of fitted and true mixtures of experts (matplotlib).

Every function takes ``ax=None``, draws on it (making a figure only when none
is given) and returns the axes. matplotlib is imported only when a plot is
asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from moestat.model import MixtureOfExperts
from moestat.simulation.rates import N_BOOT

__all__ = [
    "plot_fit",
    "plot_gate",
    "plot_partial",
    "typical_values",
    "plot_selection",
    "plot_rates",
    "plot_expert_utilization",
    "plot_router_saturation",
    "plot_router_change_rate",
    "plot_training_curves",
    "plot_router_comparison",
]


def _pyplot(function: str):
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ImportError(f"moestat.plotting.{function} needs matplotlib.") from exc
    return plt


def _as_model(model: Any) -> MixtureOfExperts:
    """Accept a MixtureOfExperts or a fitted estimator (its ``model_``)."""
    fitted = getattr(model, "model_", model)
    if not isinstance(fitted, MixtureOfExperts) or fitted.params is None:
        raise TypeError(
            "Expected a fitted estimator or a MixtureOfExperts with parameters; "
            f"got {type(model).__name__}."
        )
    return fitted


def _grid(X: np.ndarray, n_points: int = 300) -> np.ndarray:
    if X.ndim != 2 or X.shape[1] != 1:
        raise ValueError(
            f"These plots show one covariate; X has shape {X.shape}. For a "
            "model with several covariates draw one at a time, the others held "
            "at typical values: moestat.plotting.plot_partial(estimator, X, "
            "feature)."
        )
    return np.linspace(X.min(), X.max(), n_points)[:, None]


def _feature_names(model: Any, X: Any) -> list[str] | None:
    """The covariates' names: a DataFrame's columns, else the estimator's."""
    if hasattr(X, "columns"):
        return [str(c) for c in X.columns]
    names = getattr(model, "feature_names_in_", None)
    return None if names is None else [str(c) for c in names]


def _response_name(model: Any, y: Any = None) -> str:
    """The response's name: a Series' name, else the estimator's, else ``y``."""
    name = getattr(y, "name", None)
    if name is not None:
        return str(name)
    return str(getattr(model, "response_name_", "y"))


def _covariates(model: Any, X: Any) -> Any:
    """``X`` through the formulas of an estimator made by ``from_formula``."""
    through = getattr(model, "_covariates", None)
    return X if through is None else through(X)


def plot_fit(
    model: Any,
    X: ArrayLike,
    y: ArrayLike,
    *,
    truth: MixtureOfExperts | None = None,
    ax: Any = None,
    **scatter_kwargs: Any,
):
    """Data, each expert's mean and the mixed conditional mean, for one covariate.

    Parameters
    ----------
    model : fitted estimator or MixtureOfExperts
        The model to draw.
    X : array-like of shape (n_samples, 1)
        Covariates (one column).
    y : array-like of shape (n_samples,)
        Responses.
    truth : MixtureOfExperts, optional
        A true model whose expert means are drawn dashed for comparison.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    **scatter_kwargs
        Passed to ``ax.scatter`` for the data points.

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot("plot_fit")
    fitted = _as_model(model)
    X = _covariates(model, X)
    names = _feature_names(model, X)
    response = _response_name(model, y)
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    grid = _grid(X)
    if ax is None:
        _, ax = plt.subplots()
    style = {"s": 6, "alpha": 0.3, "color": "0.5", "label": "data"}
    ax.scatter(X[:, 0], y, **{**style, **scatter_kwargs})
    means = fitted.expert_means(grid)
    weights = fitted.gate_weights(grid)
    for i in range(fitted.n_experts):
        # Draw each expert where the gate gives it weight; faint elsewhere.
        line = ax.plot(grid[:, 0], means[:, i], lw=1, alpha=0.3)[0]
        active = np.where(weights[:, i] > 0.1, means[:, i], np.nan)
        ax.plot(
            grid[:, 0], active, lw=2, color=line.get_color(), label=f"expert {i + 1}"
        )
    ax.plot(grid[:, 0], fitted.predict(grid), "k-", lw=1.2, label="E[y | x]")
    if truth is not None:
        true_means = truth.expert_means(grid)
        for i in range(truth.n_experts):
            ax.plot(
                grid[:, 0],
                true_means[:, i],
                "k--",
                lw=1,
                label="truth" if i == 0 else None,
            )
    ax.set_xlabel(names[0] if names else "x")
    ax.set_ylabel(response)
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_gate(
    model: Any,
    X: ArrayLike,
    *,
    truth: MixtureOfExperts | None = None,
    ax: Any = None,
    **line_kwargs: Any,
):
    """Gate weights ``g_i(x)`` over the range of one covariate.

    Parameters
    ----------
    model : fitted estimator or MixtureOfExperts
        The model to draw.
    X : array-like of shape (n_samples, 1)
        Covariates whose range is drawn.
    truth : MixtureOfExperts, optional
        A true model whose gate weights are drawn dashed.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    **line_kwargs
        Passed to ``ax.plot``.

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot("plot_gate")
    fitted = _as_model(model)
    X = _covariates(model, X)
    names = _feature_names(model, X)
    grid = _grid(np.asarray(X, dtype=float))
    if ax is None:
        _, ax = plt.subplots()
    weights = fitted.gate_weights(grid)
    for i in range(fitted.n_experts):
        ax.plot(
            grid[:, 0], weights[:, i], label=f"g_{i + 1}(x)", **{"lw": 2, **line_kwargs}
        )
    if truth is not None:
        true_weights = truth.gate_weights(grid)
        for i in range(truth.n_experts):
            ax.plot(
                grid[:, 0],
                true_weights[:, i],
                "k--",
                lw=1,
                label="truth" if i == 0 else None,
            )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(names[0] if names else "x")
    ax.set_ylabel("gate weight")
    ax.legend(loc="best", fontsize="small")
    return ax


def _is_integer_like(column: np.ndarray) -> bool:
    """Whether a column holds whole numbers only (counts, codes, booleans)."""
    finite = column[np.isfinite(column)]
    return finite.size > 0 and bool(np.all(finite == np.round(finite)))


def typical_values(X: ArrayLike) -> np.ndarray:
    """A typical row: each column's median, or its mode for whole numbers.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Covariates (booleans count as whole numbers).

    Returns
    -------
    ndarray of shape (n_features,)
        The median of each column of real numbers; the most frequent value
        (the smallest of a tie) of each column of whole numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat.plotting import typical_values
    >>> typical_values(np.array([[0.5, 1], [1.5, 1], [9.0, 0]]))
    array([1.5, 1. ])
    """
    X = np.asarray(X, dtype=float)
    values = np.empty(X.shape[1])
    for j, column in enumerate(X.T):
        if _is_integer_like(column):
            levels, counts = np.unique(column[np.isfinite(column)], return_counts=True)
            values[j] = levels[np.argmax(counts)]
        else:
            values[j] = np.nanmedian(column)
    return values


def _feature_index(feature: int | str, names: list[str] | None, n: int) -> int:
    """The column of ``feature`` (an index or a name), or a ValueError."""
    if isinstance(feature, str):
        if names is None:
            raise ValueError(
                f"feature {feature!r} is a name, but X has no column names: pass "
                "a DataFrame (or a fitted estimator's own data) or an index."
            )
        if feature not in names:
            raise ValueError(f"X has no column {feature!r}; its columns are {names}.")
        return names.index(feature)
    if isinstance(feature, bool) or not isinstance(feature, int | np.integer):
        raise ValueError(f"feature must be a column index or name; got {feature!r}.")
    if not -n <= feature < n:
        raise ValueError(f"feature {feature} is out of range for X with {n} columns.")
    return int(feature) % n


def plot_partial(
    model: Any,
    X: ArrayLike,
    feature: int | str,
    *,
    n_points: int = 200,
    max_levels: int = 20,
    axes: Any = None,
):
    """Each expert's mean and the gate's weights along one covariate.

    The covariate ``feature`` runs over its range in ``X`` while every other
    covariate is held at a typical value (:func:`typical_values`: the median,
    or the mode of whole numbers), so a model with many covariates is drawn
    one covariate at a time.

    Parameters
    ----------
    model : fitted estimator or MixtureOfExperts
        The model to draw. An estimator made by ``from_formula`` takes the
        data of its formulas.
    X : array-like or DataFrame of shape (n_samples, n_features)
        The covariates whose range and typical values are used.
    feature : int or str
        The covariate drawn: an index, or a name (a DataFrame's column or
        the estimator's ``feature_names_in_``).
    n_points : int, default=200
        Points of the grid over a covariate of real numbers.
    max_levels : int, default=20
        A covariate of whole numbers with at most this many distinct values
        is drawn at those values, with markers and integer ticks.
    axes : pair of matplotlib Axes, optional
        Where to draw the means (first) and the gate weights (second); a new
        figure with two rows sharing the horizontal axis when omitted.

    Returns
    -------
    ndarray of 2 matplotlib.axes.Axes
        The means' axes (one line per expert and the mixed mean
        ``E[y | x]``) and the gate's (one line per expert).

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from moestat import GaussianMoE
    >>> from moestat.datasets import make_moe_regression
    >>> from moestat.plotting import plot_partial
    >>> X, y, _ = make_moe_regression(n_samples=500, n_features=3, random_state=0)
    >>> est = GaussianMoE(2, n_init=1, random_state=0).fit(X, y)
    >>> means, gate = plot_partial(est, X, 1)
    >>> len(means.lines), len(gate.lines)
    (3, 2)
    >>> plt.close(means.figure)
    """
    plt = _pyplot("plot_partial")
    from matplotlib.ticker import MaxNLocator

    fitted = _as_model(model)
    X = _covariates(model, X)
    names = _feature_names(model, X)
    values = np.asarray(X, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, covariates); got {values.shape}.")
    j = _feature_index(feature, names, values.shape[1])
    column = values[:, j]
    levels = np.unique(column[np.isfinite(column)])
    counts = _is_integer_like(column) and len(levels) <= max_levels
    grid = levels if counts else np.linspace(levels[0], levels[-1], n_points)
    rows = np.tile(typical_values(values), (len(grid), 1))
    rows[:, j] = grid
    if axes is None:
        _, axes = plt.subplots(2, 1, sharex=True, figsize=(6, 6))
    top, bottom = axes
    style = {"marker": "o", "ms": 4} if counts else {}
    means = fitted.expert_means(rows)
    weights = fitted.gate_weights(rows)
    for i in range(fitted.n_experts):
        line = top.plot(grid, means[:, i], lw=1.5, label=f"expert {i + 1}", **style)
        bottom.plot(
            grid,
            weights[:, i],
            lw=2,
            color=line[0].get_color(),
            label=f"g_{i + 1}(x)",
            **style,
        )
    top.plot(grid, fitted.predict(rows), "k-", lw=1.2, label="E[y | x]", **style)
    name = names[j] if names else f"x{j}"
    top.set_ylabel(_response_name(model))
    top.set_title(f"along {name}, the other covariates at their median or mode")
    top.legend(loc="best", fontsize="small")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("gate weight")
    bottom.set_xlabel(name)
    bottom.legend(loc="best", fontsize="small")
    if counts:
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return np.array([top, bottom], dtype=object)


def plot_selection(table: Any, *, criterion: str | None = None, ax: Any = None):
    """A criterion against the number of experts, one line per degree.

    Parameters
    ----------
    table : pandas.DataFrame
        The table of :func:`moestat.selection.select_model`.
    criterion : str, optional
        Column to draw; by default the one the table was sorted by.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot("plot_selection")
    from matplotlib.ticker import MaxNLocator

    criterion = criterion or table.attrs.get("criterion", "bic")
    if criterion not in table:
        raise ValueError(f"The table has no column {criterion!r}.")
    if ax is None:
        _, ax = plt.subplots()
    groups = table.groupby("degree") if "degree" in table else [(None, table)]
    for key, part in groups:
        part = part.sort_values("n_experts")
        label = criterion if key is None else f"degree {key}"
        ax.plot(part["n_experts"], part[criterion], "o-", label=label)
    # the row select_model chose (degenerate fits are passed over)
    best = table.loc[table.attrs.get("best", table[criterion].idxmin())]
    ax.plot(best["n_experts"], best[criterion], "k*", ms=14, label="best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of experts m")
    ax.set_ylabel(criterion)
    ax.legend(loc="best", fontsize="small")
    return ax


def _group_label(key: tuple, by: list[str]) -> str:
    return ", ".join(str(value) for value in key) if by else ""


def plot_rates(
    results: Any,
    loss: str = "kl",
    *,
    by: tuple[str, ...] = ("scenario", "fit"),
    x: str = "n",
    form: str = "mean",
    theory: bool = True,
    n_boot: int = N_BOOT,
    random_state: Any = 0,
    ax: Any = None,
    **line_kwargs: Any,
):
    """A loss against n on log-log axes: spread, fitted slope and theory.

    For each group (by default scenario and fit) the per-n mean (or median)
    over replications is drawn with the band between the 2.5% and 97.5%
    replication quantiles, the fitted line ``c n^s`` (labelled with ``s`` and
    its bootstrap interval, :func:`moestat.simulation.estimate_rate`) and,
    dashed, a line of the theoretical slope through the middle of the fit.

    The interval in the legend is the one :func:`estimate_rate` gives for
    the same results, ``form``, ``n_boot`` and ``random_state`` (each row
    has its own bootstrap stream), so it matches the printed rate table and
    its CSV. A group whose loss is zero up to round-off (``"round-off"`` in
    the table) has no rate: its points are drawn without a fitted or a
    theory line, and the legend says "constant at round-off". Losses that
    are exactly 0 cannot be shown on the log axis and are left out.

    Parameters
    ----------
    results : DataFrame or path-like
        Cells of a sweep (:func:`moestat.simulation.load_results`) or its
        directory.
    loss : str, default="kl"
        The loss column.
    by : tuple of str, default=("scenario", "fit")
        Columns that define the groups drawn on the axes (gates, m, ...).
    x : str, default="n"
        The column on the horizontal axis.
    form : {"mean", "median", "log_n_over_n"}, default="mean"
        As in :func:`moestat.simulation.estimate_rate`.
    theory : bool, default=True
        Draw the theoretical slope where one is known.
    n_boot : int, default=N_BOOT (2000)
        Bootstrap draws of the slope's interval in the legend; the default
        of :func:`moestat.simulation.estimate_rate` too.
    random_state : None, int or Generator, default=0
        Seed of the bootstrap, as in :func:`moestat.simulation.estimate_rate`.
    ax : matplotlib Axes, optional
        Where to draw; a new figure if None.
    **line_kwargs
        Passed to the fitted line's ``ax.plot``.

    Returns
    -------
    matplotlib Axes
    """
    plt = _pyplot("plot_rates")
    from moestat.simulation import estimate_rate, summarize_losses

    summary = summarize_losses(results, loss, by=by, x=x)
    rates = estimate_rate(
        results,
        loss,
        by=by,
        x=x,
        form=form,
        n_boot=n_boot,
        random_state=random_state,
    )
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    by = [column for column in by if column in summary.columns]
    groups = summary.groupby(by, sort=True) if by else [((), summary)]
    centre = "median" if form == "median" else "mean"
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        match = rates
        for column, value in zip(by, key, strict=True):
            match = match[match[column] == value]
        row = None if match.empty else match.iloc[0]
        round_off = row is not None and row["verdict"] == "round-off"
        xs = group[x].to_numpy(float)
        summaries = group[centre].to_numpy(float)
        low = group["q025"].to_numpy(float)
        high = group["q975"].to_numpy(float)
        # A log axis shows positive values only: zeros are left out (a band
        # floored at the smallest float would stretch the axis to 1e-308).
        shown = summaries > 0
        label = None
        if round_off:
            label = f"{_group_label(key, by)}: constant at round-off"
            if not shown.any():
                label += " (exactly 0, not drawn)"
        points = ax.plot(xs[shown], summaries[shown], "o", ms=4, label=label)[0]
        color = points.get_color()
        ax.fill_between(xs, low, high, where=low > 0, color=color, alpha=0.15, lw=0)
        if row is None or round_off:
            continue
        grid = np.geomspace(xs.min(), xs.max(), 50)
        t = np.log(grid / np.log(grid)) if form == "log_n_over_n" else np.log(grid)
        fitted = np.exp(row["intercept"] + row["slope"] * t)
        label = (
            f"{_group_label(key, by)}: slope {row['slope']:.3f} "
            f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        )
        ax.plot(grid, fitted, color=color, label=label, **line_kwargs)
        if theory and np.isfinite(row["theory"]):
            middle = t.mean()
            level = row["intercept"] + row["slope"] * middle
            reference = np.exp(level + row["theory"] * (t - middle))
            ax.plot(
                grid,
                reference,
                "--",
                color=color,
                alpha=0.7,
                label=f"theory: slope {row['theory']:.3g}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _label_sample_sizes(ax, summary[x].to_numpy(float))
    ax.set_xlabel(x)
    ax.set_ylabel(f"{loss} ({centre} over replications)")
    ax.legend(fontsize="small")
    return ax


def _label_sample_sizes(ax: Any, sizes: np.ndarray, max_ticks: int = 10) -> None:
    """Label a short grid of n at its own sizes on a log axis.

    Over less than two decades matplotlib labels the minor ticks of a log
    axis, whose labels then overlap; a grid of a few sizes reads better
    labelled where its points are.
    """
    from matplotlib.ticker import NullFormatter

    sizes = np.unique(sizes[np.isfinite(sizes) & (sizes > 0)])
    if sizes.size == 0 or sizes.size > max_ticks:
        return
    if np.log10(sizes.max() / sizes.min()) >= 2.0:
        return
    ax.set_xticks(sizes, [f"{size:,.0f}" for size in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_expert_utilization(
    utilization: Any,
    *,
    step: int | None = None,
    ax: Any = None,
    **imshow_kwargs: Any,
):
    """Expert utilization as a layer x expert heatmap.

    Parameters
    ----------
    utilization : DataFrame or array-like of shape (n_layers, n_experts)
        Either the table of
        :meth:`moestat.routing.diagnostics.RoutingRecorder.utilization`
        (columns ``layer``, ``expert``, ``utilization`` and optionally
        ``step``) or the values ``u[layer, expert]`` themselves.
    step : int, optional
        The step drawn from a table with several; by default the last.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    **imshow_kwargs
        Passed to ``ax.imshow`` (``cmap``, ``vmin``, ``vmax``, ...).

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot("plot_expert_utilization")
    from matplotlib.ticker import MaxNLocator

    if hasattr(utilization, "columns"):
        table = utilization
        if "step" in table:
            step = table["step"].max() if step is None else step
            table = table[table["step"] == step]
            if table.empty:
                raise ValueError(f"The table has no rows for step {step!r}.")
        values = table.pivot_table(
            index="layer", columns="expert", values="utilization", aggfunc="mean"
        ).to_numpy(float)
    else:
        values = np.asarray(utilization, dtype=float)
        if values.ndim == 1:
            values = values[None, :]
        if values.ndim != 2:
            raise ValueError(
                "utilization must be a table or a (layers, experts) array; got "
                f"shape {values.shape}."
            )
    if ax is None:
        _, ax = plt.subplots()
    style = {"aspect": "auto", "interpolation": "nearest", "cmap": "viridis"}
    image = ax.imshow(values, **{**style, **imshow_kwargs})
    ax.figure.colorbar(image, ax=ax, label="share of routing slots")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    title = "expert utilization"
    ax.set_title(title if step is None else f"{title}, step {step}")
    return ax


def _check_column(table: Any, value: str) -> None:
    if not hasattr(table, "columns") or value not in table:
        raise ValueError(f"The table has no column {value!r}.")


def _per_layer_lines(
    table: Any, value: str, ax: Any, ylabel: str, line_kwargs: dict
) -> Any:
    """Each layer faint, the layer mean bold, one colour per ``k``."""
    groups = table.groupby("k") if "k" in table else [(None, table)]
    line_kwargs = dict(line_kwargs)
    prefix = line_kwargs.pop("label", None)  # a caller's label names the lines
    for k, part in groups:
        label = "layer mean" if k is None else f"top-{k}, layer mean"
        if prefix is not None:
            label = f"{prefix}: {label}"
        mean = part.groupby("step")[value].mean()
        line = ax.plot(mean.index, mean.to_numpy(), lw=2, label=label, **line_kwargs)[0]
        if "layer" in part and part["layer"].nunique() > 1:
            for _, layer in part.groupby("layer"):
                layer = layer.sort_values("step")
                ax.plot(
                    layer["step"],
                    layer[value],
                    lw=0.8,
                    alpha=0.35,
                    color=line.get_color(),
                )
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_router_saturation(table: Any, *, ax: Any = None, **line_kwargs: Any):
    """Router saturation (%) against the training step.

    The layer mean is drawn bold and each layer faint, one colour per ``k``.

    Parameters
    ----------
    table : pandas.DataFrame
        The table of
        :meth:`moestat.routing.diagnostics.RoutingRecorder.saturation`
        (columns ``step``, ``saturation`` and optionally ``layer``, ``k``).
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    **line_kwargs
        Passed to ``ax.plot`` for the layer-mean lines.

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot("plot_router_saturation")
    _check_column(table, "saturation")
    if ax is None:
        _, ax = plt.subplots()
    return _per_layer_lines(
        table, "saturation", ax, "router saturation (%)", line_kwargs
    )


def plot_router_change_rate(table: Any, *, ax: Any = None, **line_kwargs: Any):
    """Router change rate (%) between consecutive checkpoints, against the step.

    The layer mean is drawn bold and each layer faint, one colour per ``k``.

    Parameters
    ----------
    table : pandas.DataFrame
        The table of
        :meth:`moestat.routing.diagnostics.RoutingRecorder.change_rate`
        (columns ``step``, ``change_rate`` and optionally ``layer``, ``k``).
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    **line_kwargs
        Passed to ``ax.plot`` for the layer-mean lines.

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot("plot_router_change_rate")
    _check_column(table, "change_rate")
    if ax is None:
        _, ax = plt.subplots()
    return _per_layer_lines(
        table, "change_rate", ax, "router change rate (%)", line_kwargs
    )


def plot_training_curves(
    table: Any,
    metric: str = "loss",
    ax: Any = None,
    *,
    window: int = 1,
    **line_kwargs: Any,
):
    """A quantity against the training step, one line per router.

    Parameters
    ----------
    table : pandas.DataFrame
        A tidy table with columns ``step``, ``metric`` and optionally
        ``router`` (one line each, in order of appearance), ``layer`` (the
        lines are layer means) and ``k`` (one line per router and ``k``):
        for instance ``history``, ``saturation`` or ``change_rate`` of
        :class:`moestat.routing.experiment.RouterComparison`. Missing values
        are skipped.
    metric : str, default="loss"
        The column drawn.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    window : int, default=1
        Draw the rolling mean over this many consecutive rows of each line
        (smooths noisy per-step losses; 1 draws the values).
    **line_kwargs
        Passed to ``ax.plot``.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import pandas as pd
    >>> from moestat.plotting import plot_training_curves
    >>> table = pd.DataFrame({"router": ["a", "a", "b", "b"], "step": [1, 2, 1, 2],
    ...                       "loss": [1.0, 0.5, 1.0, 0.8]})
    >>> ax = plot_training_curves(table)
    >>> [line.get_label() for line in ax.lines]
    ['a', 'b']
    >>> import matplotlib.pyplot as plt; plt.close(ax.figure)
    """
    plt = _pyplot("plot_training_curves")
    _check_column(table, metric)
    if "step" not in table:
        raise ValueError("The table has no column 'step'.")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int; got {window!r}.")
    keys = [column for column in ("router", "k") if column in table]
    several_k = "k" in table and table["k"].nunique() > 1
    if ax is None:
        _, ax = plt.subplots()
    groups = table.groupby(keys, sort=False) if keys else [((), table)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        named = dict(zip(keys, key, strict=True))
        curve = part.groupby("step")[metric].mean().dropna()
        if window > 1:
            curve = curve.rolling(window, min_periods=1).mean()
        label = str(named.get("router", metric))
        if several_k:
            label = f"{label}, top-{named['k']}"
        ax.plot(curve.index, curve.to_numpy(float), label=label, **line_kwargs)
    ax.set_xlabel("step")
    ax.set_ylabel(metric if window == 1 else f"{metric} (rolling mean of {window})")
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_router_comparison(
    comparison: Any,
    what: str = "loss",
    *,
    k: int | None = None,
    step: int | None = None,
    window: int = 1,
    ax: Any = None,
) -> Any:
    """Draw one result of :func:`moestat.routing.experiment.compare_routers`.

    Parameters
    ----------
    comparison : RouterComparison
        The comparison's tables (pandas; no torch is needed to draw them).
    what : str, default="loss"
        ``"loss"``, ``"aux_loss"`` or the metric (curves over steps, by
        :func:`~moestat.plotting.plot_training_curves`);
        ``"saturation"`` or ``"change_rate"`` (one line per router);
        ``"utilization"`` (a router x expert heatmap by
        :func:`~moestat.plotting.plot_expert_utilization`).
    k : int, optional
        Experts per token of the diagnostics (default: the comparison's).
    step : int, optional
        Step of the utilization heatmap (default: the last).
    window : int, default=1
        Rolling mean over this many steps for the training curves.
    ax : matplotlib Axes, optional
        Where to draw.

    Returns
    -------
    matplotlib.axes.Axes
    """
    k = comparison.k if k is None else int(k)
    if what in ("loss", "aux_loss", comparison.metric):
        return plot_training_curves(comparison.history, what, window=window, ax=ax)
    if what in ("saturation", "change_rate"):
        table = getattr(comparison, what)
        table = table[table["k"] == k]
        if table.empty:
            raise ValueError(
                f"No {what} was recorded for k={k}; use k=1 or k={comparison.k}."
            )
        ax = plot_training_curves(table, what, ax=ax)
        label = "router saturation" if what == "saturation" else "change rate"
        ax.set_ylabel(f"{label} (%), top-{k}")
        return ax
    if what == "utilization":
        table = comparison.utilization
        step = int(table["step"].max()) if step is None else int(step)
        table = table[table["step"] == step]
        if table.empty:
            raise ValueError(f"No utilization was recorded at step {step}.")
        rows = {name: i for i, name in enumerate(comparison.routers)}
        grid = table.groupby(["router", "expert"], sort=False)["utilization"]
        grid = grid.mean().reset_index()
        grid["layer"] = grid["router"].map(rows)
        ax = plot_expert_utilization(grid, ax=ax)
        ax.set_yticks(range(len(rows)), list(rows))
        ax.set_ylabel("")
        ax.set_title(f"expert utilization (top-{comparison.k}), step {step}")
        return ax
    raise ValueError(
        f"Unknown plot {what!r}; use 'loss', 'aux_loss', {comparison.metric!r}, "
        "'saturation', 'change_rate' or 'utilization'."
    )
