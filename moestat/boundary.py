"""Boundaries of the parameter space: separation, divergence and the ridge.

On some data the likelihood of a mixture of experts has no interior
maximum. When a gate can split the samples cleanly between two experts, or
an expert's classes (or its zero counts) are separated by its predictor,
scaling the slopes up always fits better: the supremum is at infinity and
the coefficients walk out along a ray while the likelihood creeps towards
its limit. This module finds such coefficients at a fitted model, tells
whether a fit is still walking out, and holds the ridge penalty that keeps
the estimates finite.

**The ridge penalty.** With ``alpha > 0`` a piece's slopes pay
``(alpha / 2) sum_ij (sd_j beta_ij)^2``, ``sd_j`` the standard deviation of
design column ``j`` (intercepts, whose column is constant, are free). A
slope times its column's spread is the change of the score over one spread
of the covariate, so the penalty does not depend on the covariates' units.
The fit then maximises ``sum_t log p(y_t | x_t)`` minus the penalties of the
gate and of the experts: a maximum a posteriori estimate under independent
``N(0, 1 / alpha)`` priors on the standardised slopes.

**The threshold.** A coefficient is flagged when its effect over one spread
of its column, ``|sd_j beta_ij|`` (or the difference of two rows' for a
softmax contrast), exceeds :data:`SEPARATION_THRESHOLD` on the log-odds or
log-mean scale. At 30 a one-spread move of the covariate multiplies the odds
(or the Poisson mean) by ``e^30 ~ 1e13``: probabilities go from ``1e-13``
to ``1 - 1e-13``, so the fitted gate or expert is a step at the resolution
of the data, and separated fits reach hundreds or thousands. Ordinary fits
stay in single digits. A finite maximum this sharp needs many samples
inside the narrow band where the step is not yet 0 or 1 (its width is
``~6 / 30`` of a spread), i.e. a very large sample from a truly step-like
gate; raise ``threshold`` for such data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moestat.protocols import (
    AffineGate,
    CompositeExpertFamily,
    CompositeGate,
    GLMFamily,
    MultinomialFamily,
    Penalised,
)

__all__ = [
    "SEPARATION_THRESHOLD",
    "BoundaryFinding",
    "boundary_message",
    "check_alpha",
    "column_spreads",
    "diverging_parameters",
    "is_penalised",
    "ridge_penalty",
    "ridge_weights",
    "walking_the_ridge",
]

#: Effect over one spread of a column (log-odds or log-mean scale) beyond
#: which a coefficient is reported as diverging (module docstring).
SEPARATION_THRESHOLD = 30.0

#: Cosine between a fit's last step and its position beyond which the
#: diverging coefficients are said to move along a ray.
RIDGE_ALIGNMENT = 0.99


# -- the ridge penalty --------------------------------------------------------
def check_alpha(alpha: Any) -> None:
    """Raise ``ValueError`` unless ``alpha`` is a finite number ``>= 0``.

    Parameters
    ----------
    alpha : object
        The ridge strength of a gate or an expert family.
    """
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float | np.integer | np.floating)
        or not np.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(
            f"alpha must be a finite number >= 0 (0 for no penalty); got {alpha!r}."
        )


def column_spreads(
    design: NDArray[np.float64], sample_weight: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Standard deviation of each design column, 0 for constant columns.

    A column counts as constant when its spread is below ``1e-12`` times
    its largest absolute value (the intercept's ones, exactly 0).

    Parameters
    ----------
    design : ndarray of shape (n, p)
    sample_weight : ndarray of shape (n,), optional
        Weights of the rows: the weighted standard deviation (that of the
        rows repeated ``w_t`` times, for integer weights).

    Returns
    -------
    ndarray of shape (p,)
    """
    if sample_weight is None:
        sd = design.std(axis=0)
    else:
        mean = np.average(design, axis=0, weights=sample_weight)
        sd = np.sqrt(np.average((design - mean) ** 2, axis=0, weights=sample_weight))
    size = np.maximum(np.abs(design).max(axis=0, initial=0.0), 1.0)
    return np.where(sd > 1e-12 * size, sd, 0.0)


def ridge_weights(design: NDArray[np.float64], alpha: float) -> NDArray[np.float64]:
    """Curvature of the ridge penalty per column, ``alpha sd_j^2``, shape (p,).

    Parameters
    ----------
    design : ndarray of shape (n, p)
        The piece's design.
    alpha : float
        Ridge strength.

    Returns
    -------
    ndarray of shape (p,)
        Zero for constant columns (intercepts are not penalised).
    """
    return alpha * column_spreads(design) ** 2


def ridge_penalty(coef: NDArray[np.float64], weights: NDArray[np.float64]) -> float:
    """``(1 / 2) sum w_j coef_..j^2``: the penalty of the rows ``coef``.

    Parameters
    ----------
    coef : ndarray of shape (..., p)
        The penalised rows (free rows only).
    weights : ndarray of shape (p,)
        :func:`ridge_weights` of the design.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> Z = np.column_stack([np.ones(4), [0.0, 1.0, 2.0, 3.0]])
    >>> rescaled = Z * [1.0, 10.0]
    >>> coef = np.array([[0.5, 2.0]])
    >>> a = ridge_penalty(coef, ridge_weights(Z, 1.0))
    >>> b = ridge_penalty(coef / [1.0, 10.0], ridge_weights(rescaled, 1.0))
    >>> bool(np.isclose(a, b))
    True
    """
    return 0.5 * float(np.sum(weights * np.square(coef)))


def is_penalised(piece: object) -> bool:
    """Whether a gate or an expert family fits with a ridge penalty.

    Parameters
    ----------
    piece : gate or expert family
        A piece that is :class:`~moestat.protocols.Penalised` (has an
        ``alpha``) or not.

    Returns
    -------
    bool
        True when the piece declares ``alpha > 0``.
    """
    return isinstance(piece, Penalised) and bool(piece.alpha)


# -- contrasts: what a coefficient does on the log-odds or log-mean scale -----
@dataclass(frozen=True)
class _Contrast:
    """A score difference of one piece and its effect per column spread."""

    piece: str
    parameters: tuple[str, ...]  # templates with {column}
    cause: str  # template with {column}
    effects: NDArray[np.float64]  # (p,): sd_j * slope difference


def _names(template: str, rows: list[int], offset: int) -> tuple[str, ...]:
    return tuple(template.format(i=i + 1 + offset) for i in rows)


def _gate_contrasts(
    gate: Any, params: Any, sd: NDArray[np.float64], offset: int = 0
) -> list[_Contrast]:
    """Contrasts of a gate: pairs of rows, or each row where rows are absolute.

    A translation-invariant gate (softmax) identifies differences of rows
    only; any other affine gate (normalized sigmoid) each row on its own.
    """
    if isinstance(gate, CompositeGate):  # shared experts beside a routed gate
        return _gate_contrasts(gate.routed, params.routed, sd, offset + gate.n_shared)
    if not isinstance(gate, AffineGate) or is_penalised(gate):
        return []
    coef = params.coef
    m = coef.shape[0]
    free = set(np.asarray(gate.free_rows(m)).tolist())
    out = []
    if not gate.translation_invariant:
        for i in range(m):
            out.append(
                _Contrast(
                    "gate",
                    _names("gate{i}[{{column}}]", [i], offset),
                    f"expert {i + 1 + offset}'s gate affinity is a step along "
                    "{column}",
                    sd * coef[i],
                )
            )
        return out
    for i in range(m):
        for j in range(i + 1, m):
            rows = [r for r in (i, j) if r in free]
            out.append(
                _Contrast(
                    "gate",
                    _names("gate{i}[{{column}}]", rows, offset),
                    f"the gate separates the data between experts {i + 1 + offset} "
                    f"and {j + 1 + offset} along {{column}}",
                    sd * (coef[j] - coef[i]),
                )
            )
    return out


def _expert_contrasts(
    expert: Any, params: Any, sd: NDArray[np.float64], offset: int = 0
) -> list[_Contrast]:
    """Contrasts of GLM experts (each row) and multinomial experts (class pairs)."""
    if isinstance(expert, CompositeExpertFamily):
        return _expert_contrasts(
            expert.shared, params.shared, sd, offset
        ) + _expert_contrasts(
            expert.routed, params.routed, sd, offset + expert.n_shared
        )
    out = []
    if is_penalised(expert):
        return out
    if isinstance(expert, GLMFamily):
        for i, row in enumerate(params.coef):
            label = i + 1 + offset
            cause = (
                f"expert {label}'s Poisson mean diverges along {{column}} (its "
                "log-mean is a step across the data)"
                if expert.family == "poisson"
                else f"expert {label}'s responses are separated along {{column}} "
                "(complete or quasi-complete separation)"
            )
            parameters = _names("expert{i}[{{column}}]", [i], offset)
            out.append(_Contrast("expert", parameters, cause, sd * row))
    elif isinstance(expert, MultinomialFamily):
        for i, free in enumerate(params.coef):
            label = i + 1 + offset
            full = np.vstack([np.zeros((1, free.shape[1])), free])
            for a in range(len(full)):
                for b in range(a + 1, len(full)):
                    parameters = tuple(
                        f"expert{label}[class{c}:{{column}}]" for c in (a, b) if c > 0
                    )
                    cause = (
                        f"expert {label}'s classes {a} and {b} are separated along "
                        "{column} (complete or quasi-complete separation)"
                    )
                    effects = sd * (full[b] - full[a])
                    out.append(_Contrast("expert", parameters, cause, effects))
    return out


def _contrasts(model: Any, params: Any, design: Any) -> list[_Contrast]:
    # a Design computes its columns' spreads once (EM checks every few steps)
    gate_sd = getattr(design, "gate_spreads", None)
    expert_sd = getattr(design, "expert_spreads", None)
    if gate_sd is None or expert_sd is None:
        gate_sd, expert_sd = column_spreads(design.gate), column_spreads(design.expert)
    return _gate_contrasts(model.gate, params.gate, gate_sd) + _expert_contrasts(
        model.expert, params.expert, expert_sd
    )


def _effects(model: Any, params: Any, design: Any) -> NDArray[np.float64]:
    """Every contrast's effects, flattened (in a fixed order)."""
    parts = [c.effects for c in _contrasts(model, params, design)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _default_names(model: Any, design: Any) -> tuple[list[str], list[str]]:
    """Design column names as the estimators make them, or ``z0``, ``phi0``."""
    width = design.gate.shape[1]
    features = [f"x{j}" for j in range(width - 1)]
    names = []
    for piece, columns, fallback in (
        (model.gate, width, "z"),
        (model.expert, design.expert.shape[1], "phi"),
    ):
        try:
            guess = list(piece.design_names(features))
        except (AttributeError, ValueError, TypeError):
            guess = []
        if len(guess) != columns:
            guess = [f"{fallback}{j}" for j in range(columns)]
        names.append(guess)
    return names[0], names[1]


# -- findings -----------------------------------------------------------------
@dataclass(frozen=True)
class BoundaryFinding:
    """A coefficient (or contrast of two) walking to infinity.

    Parameters
    ----------
    piece : {"gate", "expert"}
        Where the coefficient is.
    parameters : tuple of str
        Names of the packed parameters involved, as in
        :func:`moestat.inference.parameter_names` (one name, or two for a
        contrast of two free rows, e.g. ``("gate2[x0]", "gate3[x0]")``).
    column : str
        The design column.
    effect : float
        The change of the score difference over one spread of the column,
        ``sd_j (beta_bj - beta_aj)``, on the log-odds or log-mean scale.
    cause : str
        What the data do there, e.g. "the gate separates the data between
        experts 1 and 2 along x0".
    """

    piece: str
    parameters: tuple[str, ...]
    column: str
    effect: float
    cause: str


def diverging_parameters(
    model: Any,
    design: Any,
    names: tuple[list[str], list[str]] | None = None,
    *,
    threshold: float = SEPARATION_THRESHOLD,
) -> list[BoundaryFinding]:
    """Coefficients of a fitted model whose effect says the fit is at infinity.

    Gates: each pair of softmax rows (the log-odds between two experts) or
    each normalized-sigmoid row. GLM experts: each expert's row (log-odds
    or log-mean). Multinomial experts: each pair of classes of each expert.
    Gaussian and ReLU experts have no such boundary and are not examined,
    nor are pieces with a ridge penalty (``alpha > 0``): their penalised
    objective has a finite maximum.

    Parameters
    ----------
    model : MixtureOfExperts
        A model with parameters (e.g. ``FitResult.model`` or an estimator's
        ``model_``).
    design : Design
        Its designs on the fitted data.
    names : (list of str, list of str), optional
        The gate's and the experts' design column names (an estimator's
        ``gate_feature_names_`` and ``expert_feature_names_``); by default
        those of covariates named ``x0, x1, ...``.
    threshold : float, default=SEPARATION_THRESHOLD
        Flag effects with ``|sd_j beta_j| > threshold`` (module docstring).

    Returns
    -------
    list of BoundaryFinding
        Largest ``|effect|`` first; empty for a fit with an interior maximum.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GateParams, GaussianExpert, GaussianExpertParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> params = MoEParams(
    ...     GateParams(np.array([[0.0, 0.0], [0.0, 900.0]])),
    ...     GaussianExpertParams(np.zeros((2, 2)), np.ones(2)))
    >>> model = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> design = model.design(np.linspace(-1, 1, 50)[:, None])
    >>> [f.cause for f in diverging_parameters(model, design)]
    ['the gate separates the data between experts 1 and 2 along x0']
    """
    gate_names, expert_names = names or _default_names(model, design)
    columns = {"gate": list(gate_names), "expert": list(expert_names)}
    found = []
    for contrast in _contrasts(model, model.params, design):
        for j in np.flatnonzero(np.abs(contrast.effects) > threshold):
            column = columns[contrast.piece][j]
            found.append(
                BoundaryFinding(
                    contrast.piece,
                    tuple(p.format(column=column) for p in contrast.parameters),
                    column,
                    float(contrast.effects[j]),
                    contrast.cause.format(column=column),
                )
            )
    return sorted(found, key=lambda f: -abs(f.effect))


def walking_the_ridge(
    model: Any,
    previous: Any,
    current: Any,
    design: Any,
    *,
    threshold: float = SEPARATION_THRESHOLD,
    alignment: float = RIDGE_ALIGNMENT,
) -> bool:
    """Whether a fit's coefficients are still walking out along a ray.

    True when some effect (as in :func:`diverging_parameters`) exceeds
    ``threshold`` at ``current`` and, on those effects, the last step
    ``current - previous`` points outwards along ``current`` (cosine at
    least ``alignment``) and lengthens it. A fit converging to a finite
    maximum moves ever less and in no fixed direction; a fit at a boundary
    keeps stepping outwards while its likelihood barely changes.

    Parameters
    ----------
    model : MixtureOfExperts
        Supplies the gate and the expert family (its parameters are not used).
    previous, current : MoEParams
        Parameters after two consecutive iterations.
    design : Design
        The designs of the fitted data.
    threshold : float, default=SEPARATION_THRESHOLD
        As for :func:`diverging_parameters`.
    alignment : float, default=RIDGE_ALIGNMENT
        Least cosine between the step and the position.

    Returns
    -------
    bool

    Examples
    --------
    In an EM loop, stop once the fit walks out and report what diverges:

    >>> import numpy as np
    >>> from moestat import GateParams, GaussianExpert, GaussianExpertParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> def params(slope):
    ...     return MoEParams(GateParams(np.array([[0.0, 0.0], [0.0, slope]])),
    ...                      GaussianExpertParams(np.zeros((2, 2)), np.ones(2)))
    >>> model = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params(0.0))
    >>> design = model.design(np.linspace(-1, 1, 50)[:, None])
    >>> walking_the_ridge(model, params(80.0), params(90.0), design)
    True
    >>> walking_the_ridge(model, params(4.0), params(4.5), design)
    False
    """
    before = _effects(model, previous, design)
    after = _effects(model, current, design)
    large = np.abs(after) > threshold
    if not large.any():
        return False
    before, after = before[large], after[large]
    step = after - before
    size = np.linalg.norm(step) * np.linalg.norm(after)
    if not size > 0:
        return False
    cosine = float(step @ after) / size
    return bool(cosine >= alignment and np.linalg.norm(after) > np.linalg.norm(before))


def boundary_message(findings: list[BoundaryFinding], limit: int = 3) -> str:
    """A warning text naming the diverging parameters, their causes and a cure.

    Parameters
    ----------
    findings : list of BoundaryFinding
        From :func:`diverging_parameters` (non-empty).
    limit : int, default=3
        Findings spelled out; the rest are counted.

    Returns
    -------
    str

    Examples
    --------
    >>> finding = BoundaryFinding("gate", ("gate2[x0]",), "x0", 812.0,
    ...     "the gate separates the data between experts 1 and 2 along x0")
    >>> print(boundary_message([finding]))  # doctest: +NORMALIZE_WHITESPACE
    The likelihood has no interior maximum: gate2[x0] diverges (812 on the
    log-odds scale per spread of x0; the gate separates the data between
    experts 1 and 2 along x0). Its estimate and standard error are not
    meaningful; pass alpha > 0 (a ridge penalty on the slopes, e.g. alpha=1)
    for finite estimates.
    """
    parts = []
    for f in findings[:limit]:
        verb = "diverges" if len(f.parameters) == 1 else "diverge"
        scale = "log-mean" if "Poisson" in f.cause else "log-odds"
        parts.append(
            f"{' and '.join(f.parameters)} {verb} ({abs(f.effect):.3g} on the "
            f"{scale} scale per spread of {f.column}; {f.cause})"
        )
    more = len(findings) - limit
    tail = f"; and {more} more" if more > 0 else ""
    plural = (
        "Their estimates and standard errors are"
        if len(findings) > 1
        else ("Its estimate and standard error are")
    )
    return (
        f"The likelihood has no interior maximum: {'; '.join(parts)}{tail}. "
        f"{plural} not meaningful; pass alpha > 0 (a ridge penalty on the "
        "slopes, e.g. alpha=1) for finite estimates."
    )
