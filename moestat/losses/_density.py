"""Density discrepancies: KL, Hellinger and total variation (theory.md 5.1).

Averaged over the covariate law (points ``X`` with weights ``w``) and
integrated over the response by one rule shared by every loss: a dense
trapezoid rule for continuous responses and exact sums for discrete ones
(:func:`density_losses`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat.losses._common import _common_family, _covariates, _positive_int
from moestat.losses._quadrature import (
    _discrete_grid,
    _gaussian_parts,
    _is_gaussian_moe,
    _log_pdf_grid,
    _mixture_log_pdf,
    _response_nodes,
)

# Names of the losses density_losses computes (moestat.losses.DENSITY_LOSSES).
DENSITY_LOSSES = ("kl", "hellinger", "tv", "mass_defect")
# Continuous responses: a grid this many standard deviations beyond the extreme
# means (theory.md section 5.1); components whose gate weight is below
# _NEGLIGIBLE_WEIGHT do not widen it. Its step is at most the finest
# component's sd over _GRID_STEP_SD (KL, Hellinger: the trapezoid rule is then
# exact to rounding) or over _TV_STEP_SD (TV: kink error ~ 1e-7 relative),
# and it has at most _MAX_GRID points.
_SPAN_SD = 10.0
_NEGLIGIBLE_WEIGHT = 1e-14
_GRID_STEP_SD = 4.0
_TV_STEP_SD = 16.0
_MAX_GRID = 100_000
# Elements per chunk of the dense grid (keeps the arrays in cache).
_GRID_CHUNK = 1 << 15
# Above this error of the response rule on int p_hat = 1, the KL and the
# Hellinger integrands subtract it (see density_losses, Notes).
_DEFECT_TOL = 1e-13


def _expm1mx(u: NDArray[np.float64]) -> NDArray[np.float64]:
    """``exp(u) - 1 - u`` without cancellation, for ``|u| <= 1``."""
    small = np.abs(u) < 0.05
    # Taylor series u^2/2! + ... + u^9/9! (truncation below 1e-15 relative)
    us = np.where(small, u, 0.0)
    series = 1.0 + us / 9.0
    for k in (8, 7, 6, 5, 4, 3):
        series = 1.0 + us / k * series
    series *= 0.5 * us * us
    return np.where(small, series, np.expm1(u) - u)


def _node_losses(
    W: NDArray[np.float64],
    log_wr: NDArray[np.float64],
    u: NDArray[np.float64],
    which: Iterable[str],
) -> dict[str, NDArray[np.float64]]:
    """Per-covariate losses from the quadrature under the truth.

    ``W`` are the nodes' weights under ``p*``, ``u = log(p_hat / p*)`` at
    the nodes and ``log_wr = log(W p_hat / p*)`` (computed by the caller
    where ``p*`` may vanish). Each integrand is non-negative node by node
    and free of cancellation: ``W phi(u)`` with a series or ``expm1`` where
    ``|u| <= 1``, the plain difference of the two densities elsewhere (then
    nothing cancels). Both the KL and the Hellinger integrands use
    ``int p_hat = 1``; where the rule's own ``sum W r`` misses 1 by more
    than ``_DEFECT_TOL`` that known defect is subtracted (see
    :func:`density_losses`).
    """
    out = {}
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        small = np.abs(u) <= 1.0
        us = np.where(small, u, 0.0)
        wr = np.exp(log_wr)
        # W (r - 1) node by node, and D = sum W r - 1: the rule's error on
        # int p_hat (the sum of W is 1 up to rounding and the Poisson tail)
        excess = np.where(small, W * np.expm1(us), wr - W)
        defect = excess.sum(axis=1) + (W.sum(axis=1) - 1.0)
        corrected = np.abs(defect) > _DEFECT_TOL
        if "kl" in which:
            # W (r - 1 - log r): integrates to KL because int p_hat = 1.
            w_u = np.where(W > 0, W * u, 0.0)
            terms = np.where(small, W * _expm1mx(us), wr - W - w_u)
            kl = terms.sum(axis=1)
            out["kl"] = np.where(corrected, np.maximum(kl - defect, 0.0), kl)
        if "hellinger" in which:
            # W (sqrt(r) - 1)^2 integrates to 2 h^2 because int p_hat = 1.
            diff = np.where(
                small, np.sqrt(W) * np.expm1(0.5 * us), np.sqrt(wr) - np.sqrt(W)
            )
            h2 = 0.5 * np.einsum("ij,ij->i", diff, diff)
            h2 = np.where(corrected, np.maximum(h2 - 0.5 * defect, 0.0), h2)
            out["hellinger"] = np.sqrt(h2)
        if "tv" in which:
            out["tv"] = 0.5 * np.abs(excess).sum(axis=1)
        if "mass_defect" in which:
            out["mass_defect"] = np.abs(defect)
    return out


def _response_windows(model: Any, X: NDArray[np.float64], n_nodes: int):
    """Intervals holding the model's response mass at each row.

    Gaussian-response mixtures: ``mu_j -/+ 10 sd_max`` for every component whose
    gate weight exceeds ``1e-14`` at the row (``sd_max`` over those; the
    others get an empty window at the first relevant mean), and the smallest
    of their standard deviations. Other models: the span of their own
    response rule's nodes, and the finest spacing of those nodes as scale.

    Returns
    -------
    low, high : ndarray of shape (n, c)
        Window ends.
    sd_min : ndarray of shape (n,)
    """
    if _is_gaussian_moe(model):
        log_g, mu, var = _gaussian_parts(model, X)
        relevant = log_g > np.log(_NEGLIGIBLE_WEIGHT)
        sd = np.sqrt(var)
        sd_max = np.max(np.where(relevant, sd, 0.0), axis=1, keepdims=True)
        sd_min = np.min(np.where(relevant, sd, np.inf), axis=1)
        anchor = np.take_along_axis(mu, np.argmax(relevant, axis=1)[:, None], 1)
        center = np.where(relevant, mu, anchor)
        half = np.where(relevant, _SPAN_SD * sd_max, 0.0)
        return center - half, center + half, sd_min
    Y, _, _ = _response_nodes(model, X, n_nodes)
    low, high = Y.min(axis=1, keepdims=True), Y.max(axis=1, keepdims=True)
    # its scale: the finest spacing of its own nodes (for Gauss-Hermite,
    # ~pi sd / sqrt(n_nodes) near the centre: a conservative stand-in)
    gaps = np.diff(np.sort(Y, axis=1), axis=1)
    gaps = np.where(gaps > 0, gaps, np.inf)
    return low, high, gaps.min(axis=1) if gaps.shape[1] else np.full(len(Y), np.inf)


@dataclass(frozen=True)
class _GridPlan:
    """Where each row's response grid lies: the union of the windows.

    A grid uniform in the covered length ``t in [0, length]`` maps to
    ``y = start + t + sum_j gap_j [t >= cut_j]``: the empty gaps between
    windows (where both densities are below ``exp(-50)`` of their peaks)
    are skipped, so the points go where the mass is.
    """

    start: NDArray[np.float64]
    length: NDArray[np.float64]
    gaps: NDArray[np.float64]
    cuts: NDArray[np.float64]
    sd_min: NDArray[np.float64]

    def responses(self, rows: slice, size: int):
        """Grid ``Y`` (rows, size) and the step ``h`` of each row."""
        t = self.length[rows, None] * np.linspace(0.0, 1.0, size)
        Y = self.start[rows, None] + t
        gaps, cuts = self.gaps[rows], self.cuts[rows]
        for j in np.flatnonzero(np.any(gaps > 0, axis=0)):
            Y += gaps[:, j : j + 1] * (t >= cuts[:, j : j + 1])
        return Y, self.length[rows] / (size - 1)


def _grid_plan(true: Any, fitted: Any, X: NDArray[np.float64], n_nodes: int):
    lo_t, hi_t, sd_t = _response_windows(true, X, n_nodes)
    lo_f, hi_f, sd_f = _response_windows(fitted, X, n_nodes)
    low, high = np.hstack([lo_t, lo_f]), np.hstack([hi_t, hi_f])
    order = np.argsort(low, axis=1)
    low = np.take_along_axis(low, order, 1)
    reach = np.maximum.accumulate(np.take_along_axis(high, order, 1), axis=1)
    gaps = np.zeros_like(low)
    gaps[:, 1:] = np.maximum(low[:, 1:] - reach[:, :-1], 0.0)
    cuts = low - low[:, :1] - np.cumsum(gaps, axis=1)
    length = reach[:, -1] - low[:, 0] - gaps.sum(axis=1)
    return _GridPlan(low[:, 0], length, gaps, cuts, np.minimum(sd_t, sd_f))


def _log_pdf_on(model: Any, X: NDArray[np.float64]) -> Callable:
    """``f(rows, Y)``: the model's log density on a grid for a slice of rows."""
    if _is_gaussian_moe(model):
        log_g, mu, var = _gaussian_parts(model, X)
        return lambda rows, Y: _mixture_log_pdf(log_g[rows], mu[rows], var, Y)
    return lambda rows, Y: _log_pdf_grid(model, X[rows], Y)


def _abs_trapezoid(f: NDArray[np.float64], h: NDArray[np.float64]):
    """``int |f|`` row by row from a uniform grid of step ``h``.

    The trapezoid rule, except in cells where ``f`` changes sign: there the
    exact integral of ``|L|``, ``L`` the linear interpolant, replaces the
    trapezoid (which would miss the kink by ``O(h |f'|)`` per cell), and
    the Euler-Maclaurin term of the kink is added back. For ``f`` smooth
    and flat at both ends, ``int |L| - int |f| = -(h^2/12) int sign(f) f''
    + O(h^3) = -(h^2/6) sum_c |f'(c)|`` over the roots ``c``; ``f'(c)`` is
    taken as the crossing cell's slope. The error is then ``O(h^3)``.
    """
    a = np.abs(f)
    total = a.sum(axis=1) - 0.5 * (a[:, 0] + a[:, -1])
    rows, cols = np.nonzero(f[:, :-1] * f[:, 1:] < 0)  # the few sign changes
    left, right = f[rows, cols], f[rows, cols + 1]
    # trapezoid -> exact |L| in the cell, then + the kink's h^2/6 |f'(c)|
    correction = np.abs(right - left) / 6.0 - np.abs(left * right) / (
        np.abs(left) + np.abs(right)
    )
    total += np.bincount(rows, weights=correction, minlength=f.shape[0])
    return h * total


def _grid_sizes(length, sd_min, n_points: int, resolution: float):
    """Points of each row's response grid.

    At least ``n_points``, with a step of at most ``sd_min / resolution``
    (the finest relevant standard deviation at the row), and at most
    ``_MAX_GRID``.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        needed = length * resolution / sd_min
    needed = np.where(np.isfinite(needed), np.ceil(needed) + 1, 0.0)
    return np.clip(needed, n_points, _MAX_GRID).astype(np.intp)


def _row_chunks(sizes: NDArray[np.intp]):
    """Consecutive rows grouped so that rows x points stays near _GRID_CHUNK."""
    start = 0
    while start < len(sizes):
        stop, size = start + 1, int(sizes[start])
        while stop < len(sizes) and (stop - start + 1) * max(
            size, int(sizes[stop])
        ) <= max(_GRID_CHUNK, size):
            size = max(size, int(sizes[stop]))
            stop += 1
        yield slice(start, stop), size
        start = stop


def _row_trapezoid(values: NDArray[np.float64], h: NDArray[np.float64]):
    """Trapezoid rule along the rows of a uniform grid of step ``h``."""
    return h * (values.sum(axis=1) - 0.5 * (values[:, 0] + values[:, -1]))


def _grid_integrals(lp_true, u, h, names) -> dict[str, NDArray[np.float64]]:
    """Per-row losses from log densities on a uniform grid (fast path).

    With ``e = expm1(u)``, ``p* e = p_hat - p*`` exactly and without
    cancellation, so one ``expm1`` gives every integrand: KL
    ``p* (e - u)``, Hellinger ``p* (sqrt(1 + e) - 1)^2`` written as
    ``p* e^2 / (sqrt(1 + e) + 1)^2``, TV ``|p* e|``. Needs finite log
    densities and ``u = log(p_hat / p*) <= 700`` (the caller checks).
    """
    p_true = np.exp(lp_true)
    e = np.expm1(u)
    diff = p_true * e  # p_hat - p*
    out = {}
    mass = _row_trapezoid(diff, h) + (_row_trapezoid(p_true, h) - 1.0)
    if "kl" in names:
        terms = e - u
        np.maximum(terms, 0.0, out=terms)  # exp(u) - 1 - u >= 0 after rounding
        terms *= p_true
        kl = _row_trapezoid(terms, h)
        out["kl"] = np.where(np.abs(mass) > _DEFECT_TOL, np.maximum(kl - mass, 0.0), kl)
    if "hellinger" in names:
        root = np.sqrt(1.0 + e)
        root += 1.0
        terms = e / root
        np.square(terms, out=terms)
        terms *= p_true
        h2 = 0.5 * _row_trapezoid(terms, h)
        h2 = np.where(np.abs(mass) > _DEFECT_TOL, np.maximum(h2 - 0.5 * mass, 0.0), h2)
        out["hellinger"] = np.sqrt(h2)
    if "tv" in names:
        out["tv"] = 0.5 * _abs_trapezoid(diff, h)
    if "mass_defect" in names:
        out["mass_defect"] = np.abs(mass)
    return out


def _continuous_losses(true, fitted, X, names, n_points, n_nodes):
    """Per-row losses of continuous responses on one dense grid per row.

    The trapezoid rule on a uniform grid over both models' mass: spectrally
    accurate for the smooth KL and Hellinger integrands (their tails vanish
    at both ends), and with the kink correction of :func:`_abs_trapezoid`
    for the TV.
    """
    plan = _grid_plan(true, fitted, X, n_nodes)
    resolution = _TV_STEP_SD if "tv" in names else _GRID_STEP_SD
    sizes = _grid_sizes(plan.length, plan.sd_min, n_points, resolution)
    log_true, log_fit = _log_pdf_on(true, X), _log_pdf_on(fitted, X)
    out = {name: np.empty(X.shape[0]) for name in names}
    for rows, size in _row_chunks(sizes):
        Y, h = plan.responses(rows, size)
        lp_true, lp_fit = log_true(rows, Y), log_fit(rows, Y)
        with np.errstate(invalid="ignore"):
            u = lp_fit - lp_true
            fast = np.max(u) <= 700.0 and np.isfinite(np.min(lp_true))
        if fast:
            values = _grid_integrals(lp_true, u, h, names)
        else:
            values = _generic_grid_integrals(lp_true, lp_fit, h, names)
        for name, value in values.items():
            out[name][rows] = value
    return out


def _generic_grid_integrals(lp_true, lp_fit, h, names):
    """:func:`_grid_integrals` where a density vanishes or the ratio is huge."""
    ends = np.ones(lp_true.shape[1])
    ends[[0, -1]] = 0.5
    log_coef = np.log(h[:, None] * ends)
    with np.errstate(invalid="ignore"):
        u = lp_fit - lp_true
    node_names = [name for name in names if name != "tv"]
    out = _node_losses(np.exp(lp_true + log_coef), lp_fit + log_coef, u, node_names)
    if "tv" in names:
        out["tv"] = 0.5 * _abs_trapezoid(np.exp(lp_fit) - np.exp(lp_true), h)
    return out


def _check_which(which: Any) -> tuple[str, ...]:
    names = (which,) if isinstance(which, str) else tuple(which)
    unknown = [name for name in names if name not in DENSITY_LOSSES]
    if unknown or not names:
        raise ValueError(
            f"which must name losses among {DENSITY_LOSSES}; got {which!r}."
        )
    return names


def density_losses(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    which: Sequence[str] = ("kl", "hellinger", "tv"),
    *,
    n_points: int = 1000,
    n_nodes: int = 64,
) -> dict[str, float]:
    """Density discrepancies between two conditional densities, averaged over X.

    Parameters
    ----------
    true : MixtureOfExperts or object
        The truth ``p*``: a model with parameters, or any object with
        ``log_pdf(X, y)`` and ``response_quadrature(X, n_nodes)`` (and, to
        name its response space, a ``response_family`` attribute such as
        ``"gaussian"``; otherwise the fitted model's family is assumed). A
        model's response space is the ``response_family`` its expert
        family declares; with ``"gaussian"`` the family needs a ``mean``
        and parameters carrying the noise variances ``var``.
    fitted : MixtureOfExperts or object
        The estimate ``p_hat``, of the same kind.
    X : array-like of shape (n_x, n_features)
        Covariate points: quadrature nodes (:func:`uniform_quadrature`) or a
        fixed Monte-Carlo sample.
    weights : array-like of shape (n_x,), optional
        Covariate weights (normalised to sum to one); default ``1 / n_x``.
    which : sequence of str, default=("kl", "hellinger", "tv")
        Losses to compute, among:

        - ``"kl"``: ``E_X KL(p*(.|X) || p_hat(.|X))``;
        - ``"hellinger"``: ``E_X h``, ``h^2 = 1/2 int (sqrt p* - sqrt p_hat)^2``
          (the mean of ``h``, not the root of the mean of ``h^2``);
        - ``"tv"``: ``E_X V``, ``V = 1/2 int |p* - p_hat|``;
        - ``"mass_defect"``: ``E_X |int p_hat - 1|`` as the response rule
          computes it: a check of the rule (theory.md asks the harness to
          keep the quadrature error below 1% of the smallest KL plotted).
    n_points : int, default=1000
        Minimum number of points of the response grid of continuous
        responses; more are used where a component is narrow (see Notes).
    n_nodes : int, default=64
        Nodes per component asked of a truth's own ``response_quadrature``
        (used for the span of the grid of a truth that is not a mixture).

    Returns
    -------
    dict
        ``{name: value}`` for each name in ``which``.

    Raises
    ------
    ValueError
        For unknown loss names, bad covariates or weights, models without
        parameters or densities, models whose response spaces differ, or an
        expert family that declares no ``response_family``.

    Notes
    -----
    theory.md section 5.1 [P]. The response integral at each covariate
    point comes from one rule shared by every loss:

    - **continuous responses**: the trapezoid rule on a grid uniform in
      ``y`` over the union of the windows ``mu_j -/+ 10 sd_max`` of both
      models' components whose gate weight exceeds ``1e-14`` at the row
      (theory.md's ``[min mu - 10 sd_max, max mu + 10 sd_max]`` without the
      empty gaps between far-apart components, where both densities are
      below ``exp(-50)`` of their peaks). It has ``n_points`` points or
      more: its step is at most ``sd_min / 16`` with ``"tv"``, ``sd_min /
      4`` without (``sd_min``: the smallest relevant standard deviation),
      with at most ``10**5`` points. For the smooth KL and Hellinger
      integrands, which vanish at the window ends, this rule converges
      faster than any power of the step; for ``|p* - p_hat|``, which has
      kinks, the cells where the difference changes sign are integrated
      exactly for the linear interpolant and their Euler-Maclaurin term
      ``(h^2/6) |f'(c)|`` is added back, leaving an ``O(h^4)`` error. (The
      Gauss-Hermite rule per true component that theory.md suggests was
      measured off by up to ``3e-4`` relative with 64 nodes on near fits of
      the DeepSeekMoE truths: the responsibilities switch sharply between
      separated components, which no low-degree polynomial follows.)
    - **discrete responses**: exact sums over every value either model can
      produce (Poisson counts until both upper tails are below ``1e-14``).

    With ``r = p_hat / p*`` and ``u = log r`` from the log densities, and
    ``e = expm1(u)`` (so that ``p* e = p_hat - p*`` without cancellation):

    - KL integrand ``p* (r - 1 - log r) = p* (e - u) >= 0``. It integrates
      to the KL because ``int p_hat = 1``; it has no cancellation, so
      ``KL(p, p) = 0`` exactly and a KL of ``1e-10`` keeps ~10 digits.
      Where the rule's ``int p_hat`` misses 1 by more than ``1e-13``
      (``"mass_defect"``) that known error is subtracted, which leaves the
      textbook form ``p* log(p* / p_hat)``.
    - Hellinger integrand ``p* (sqrt(r) - 1)^2 / 2 >= 0``, likewise.
    - TV integrand ``|p* - p_hat| / 2 = |p* e| / 2``.

    Accuracy, measured (tests/test_losses.py and the scenario truths):
    KL and Hellinger within ``1e-12`` relative of the closed forms of
    one-expert Gaussian models (variance ratios from 1/50 to 50, KL down
    to ``1e-10``), of adaptive quadrature on two-component mixtures
    (``1e-14``) and of a 40-times finer grid on near fits of the SG,
    DeepSeekMoE and Mendes-Jiang truths (``1e-15``, KL down to
    ``2e-6``); TV within ``2e-9`` of the closed form for equal variances
    and within ``1e-6`` (typically ``1e-7``) on mixtures, improving as
    ``n_points`` grows. Poisson and multinomial losses equal exact sums to
    ``1e-11``. Cost with 200 covariate nodes and three components per
    model: ~8 ms for all three losses (the DeepSeekMoE truths against
    five-expert fits: ~15 ms).

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import density_losses, uniform_quadrature
    >>> def model(mean):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GaussianExpertParams(np.array([[mean, 1.0]]),
    ...                                             np.array([1.0])))
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> X, w = uniform_quadrature(0.0, 1.0, n_nodes=20)
    >>> losses = density_losses(model(0.0), model(0.1), X, w)
    >>> round(losses["kl"], 12)  # 0.1^2 / 2
    0.005
    """
    X, w = _covariates(X, weights)
    names = _check_which(which)
    n_nodes = _positive_int(n_nodes, "n_nodes")
    n_points = _positive_int(n_points, "n_points", 3)
    family = _common_family(true, fitted)
    for role, model in (("true", true), ("fitted", fitted)):
        if not callable(getattr(model, "log_pdf", None)):
            raise ValueError(
                f"Cannot evaluate the {role} density: {type(model).__name__} has no "
                "log_pdf(X, y) method."
            )
    if family == "gaussian":
        per_x = _continuous_losses(true, fitted, X, names, n_points, n_nodes)
    else:
        grid = _discrete_grid(family, (true, fitted), X, n_nodes)
        Y = np.broadcast_to(grid, (X.shape[0], grid.size)).copy()
        lp_true = _log_pdf_grid(true, X, Y)
        lp_fit = _log_pdf_grid(fitted, X, Y)
        with np.errstate(invalid="ignore"):
            u = lp_fit - lp_true
        per_x = _node_losses(np.exp(lp_true), lp_fit, u, names)
    return {name: float(w @ per_x[name]) for name in names}


def kl_divergence(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    n_nodes: int = 64,
    *,
    n_points: int = 1000,
) -> float:
    """``E_X KL(p*(.|X) || p_hat(.|X))``, the Mendes-Jiang loss.

    Parameters
    ----------
    true, fitted, X, weights, n_nodes, n_points
        As for :func:`density_losses`.

    Returns
    -------
    float

    See Also
    --------
    density_losses : every density loss from one quadrature, with the
        accuracy measured.

    Notes
    -----
    theory.md section 5.1: ``E_X int p* log(p* / p_hat) dy``, integrated as
    ``int p* (r - 1 - log r)`` with ``r = p_hat / p*`` (non-negative node by
    node), on a dense response grid (continuous responses) or by exact sums
    (discrete ones).

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GLMExpert, GLMExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import kl_divergence
    >>> def poisson_model(log_rate):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GLMExpertParams(np.array([[log_rate, 0.0]])))
    ...     return MixtureOfExperts(SoftmaxGate(), GLMExpert("poisson"), params)
    >>> kl = kl_divergence(poisson_model(np.log(2.0)), poisson_model(0.0),
    ...                    np.zeros((1, 1)))
    >>> bool(np.isclose(kl, 2 * np.log(2) - 2 + 1))  # l* log(l*/l) - l* + l
    True
    """
    values = density_losses(
        true, fitted, X, weights, ("kl",), n_points=n_points, n_nodes=n_nodes
    )
    return values["kl"]


def hellinger_distance(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    n_nodes: int = 64,
    *,
    n_points: int = 1000,
) -> float:
    """``E_X h(p*(.|X), p_hat(.|X))`` with ``h^2 = 1/2 int (sqrt p* - sqrt p_hat)^2``.

    Parameters
    ----------
    true, fitted, X, weights, n_nodes, n_points
        As for :func:`density_losses`.

    Returns
    -------
    float
        The covariate mean of ``h`` (in ``[0, 1]``), not the root of the
        mean of ``h^2`` (theory.md section 5.1 table).

    See Also
    --------
    density_losses : every density loss from one quadrature.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import hellinger_distance
    >>> def model(mean):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GaussianExpertParams(np.array([[mean, 0.0]]),
    ...                                             np.array([1.0])))
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> h = hellinger_distance(model(0.0), model(1.0), np.zeros((1, 1)))
    >>> bool(np.isclose(h, np.sqrt(1 - np.exp(-1 / 8))))
    True
    """
    values = density_losses(
        true, fitted, X, weights, ("hellinger",), n_points=n_points, n_nodes=n_nodes
    )
    return values["hellinger"]


def total_variation(
    true: Any,
    fitted: Any,
    X: ArrayLike,
    weights: ArrayLike | None = None,
    n_points: int = 1000,
) -> float:
    """``E_X V(p*(.|X), p_hat(.|X))`` with ``V = 1/2 int |p* - p_hat|``.

    Parameters
    ----------
    true, fitted, X, weights
        As for :func:`density_losses`.
    n_points : int, default=1000
        Minimum number of points of the response grid (continuous responses;
        discrete responses are summed exactly).

    Returns
    -------
    float
        The DeepSeekMoE density loss, in ``[0, 1]``.

    See Also
    --------
    density_losses : every density loss from one quadrature, with the
        accuracy measured.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import norm
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import total_variation
    >>> def model(mean):
    ...     params = MoEParams(GateParams(np.zeros((1, 2))),
    ...                        GaussianExpertParams(np.array([[mean, 0.0]]),
    ...                                             np.array([1.0])))
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> tv = total_variation(model(0.0), model(1.0), np.zeros((1, 1)))
    >>> bool(np.isclose(tv, 2 * norm.cdf(0.5) - 1, rtol=1e-9))
    True
    """
    values = density_losses(true, fitted, X, weights, ("tv",), n_points=n_points)
    return values["tv"]
