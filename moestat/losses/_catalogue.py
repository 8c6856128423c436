"""The Voronoi loss catalogue (theory.md section 5.2.2) and its anchoring.

Each loss of the catalogue is a rule per group of experts: which blocks
enter the over-specified cells with which exponent, whether the terms are
weighted by the masses, and which cells pay a mass term. ``kind="auto"``
chooses the loss from the Voronoi signatures the model's pieces declare;
the optimal anchoring of a translation-invariant gate minimises a group's
loss over the gate's translation (section 5.2.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from moestat.losses._common import _declaration, _expert_parts, _routed_gate
from moestat.losses._mixing import _Group
from moestat.model import MixtureOfExperts

# Voronoi losses of the catalogue (moestat.losses.VORONOI_KINDS).
VORONOI_KINDS = (
    "auto",
    "softmax_gaussian",
    "ds_strong",
    "ds_linear",
    "ds_sigmoid_sparse",
    "ds_sigmoid_dense",
    "multinomial",
)
# Exponents r(|A_j|) of the over-specified cells (theory.md section 5.2.5).
_DEFAULT_EXPONENTS = {2: 4.0, 3: 6.0}


def _cells_from_distances(dist: Sequence[NDArray[np.float64]], metric: str):
    """Cells from per-block distance matrices (n_fitted, n_true)."""
    if metric == "euclid":
        cost = sum(d * d for d in dist)
    else:
        cost = sum(dist)
    return np.argmin(cost, axis=1)


# -- the loss catalogue (theory.md section 5.2.2) --------------------------------
@dataclass(frozen=True)
class _Rule:
    """How one group of experts enters a loss.

    ``over`` gives the exponent of each atom block in over-specified cells:
    one number for every block, or a mapping ``block -> exponent`` whose
    entries ``("r", c)`` mean ``c r(|A_j|)`` (section 5.2.5). ``extra``
    blocks (``gate_intercept``) enter exact cells with exponent one.
    """

    weighted: bool = True
    mass: str = "all"
    over: float | Mapping[str, Any] = 2.0
    extra: tuple[str, ...] = ()
    all_exact: bool = False


_SG_OVER = {
    "gate_slope": ("r", 1.0),
    "intercept": ("r", 1.0),
    "slope": ("r", 0.5),
    "var": ("r", 0.5),
}
_DS_SHARED_LINEAR_OVER = {"slope": 2.0, "intercept": ("r", 1.0), "var": ("r", 0.5)}
_STRONG = _Rule()
_KINDS: dict[str, dict[str, _Rule]] = {
    "softmax_gaussian": {"experts": _Rule(over=_SG_OVER)},
    "ds_strong": {"shared": _STRONG, "routed": _STRONG},
    "ds_linear": {
        "shared": _Rule(over=_DS_SHARED_LINEAR_OVER),
        "routed": _Rule(over=_SG_OVER),
    },
    "ds_sigmoid_sparse": {
        "shared": _STRONG,
        "routed": _Rule(weighted=False, mass="over", extra=("gate_intercept",)),
    },
    "ds_sigmoid_dense": {
        "shared": _STRONG,
        "routed": _Rule(
            weighted=False, mass="none", extra=("gate_intercept",), all_exact=True
        ),
    },
    "multinomial": {"experts": _STRONG},
}


def _rule_for(kind: str, group: _Group) -> _Rule:
    rules = _KINDS[kind]
    name = "routed" if group.name == "experts" and "routed" in rules else group.name
    if name not in rules:
        raise ValueError(
            f"kind={kind!r} is for models without shared experts; for shared "
            "and routed experts use one of 'ds_strong', 'ds_linear', "
            "'ds_sigmoid_sparse', 'ds_sigmoid_dense'."
        )
    rule = rules[name]
    if isinstance(rule.over, Mapping):
        missing = [b for b in group.atom if b not in rule.over]
        if missing:
            raise ValueError(
                f"kind={kind!r} has no exponent for the atom blocks {missing} of "
                f"the {group.name} experts (it covers {list(rule.over)}: linear "
                "Gaussian experts). Use 'ds_strong' for strongly identifiable "
                "(ReLU) experts."
            )
    return rule


class _UnknownExponent(Exception):
    """A cell size with no exponent (r >= 7 for four atoms, unknown)."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__(sizes)
        self.sizes = sorted(set(int(s) for s in sizes))


def _exponent_table(exponents: Mapping[int, float] | None) -> dict[int, float]:
    table = dict(_DEFAULT_EXPONENTS)
    if exponents is None:
        return table
    if not isinstance(exponents, Mapping):
        raise ValueError(
            f"exponents must be a mapping {{cell size: r}}; got {exponents!r}."
        )
    for size, r in exponents.items():
        ok_size = isinstance(size, int | np.integer) and not isinstance(size, bool)
        if not ok_size or size < 2 or not (np.isfinite(r) and r > 0):
            raise ValueError(
                "exponents maps cell sizes >= 2 to positive exponents r, e.g. "
                f"{{4: 8.0}}; got {{{size!r}: {r!r}}}."
            )
        table[int(size)] = float(r)
    return table


def _over_exponents(rule, block, size_i, exact, table) -> NDArray[np.float64]:
    """Exponent of ``block`` for each fitted atom, given its cell's size."""
    spec = rule.over if not isinstance(rule.over, Mapping) else rule.over[block]
    if not isinstance(spec, tuple):
        return np.where(exact, 1.0, float(spec))
    unknown = [s for s in size_i[~exact] if int(s) not in table]
    if unknown:
        raise _UnknownExponent(unknown)
    r = np.array([table.get(int(s), 1.0) for s in size_i])
    return np.where(exact, 1.0, spec[1] * r)


@dataclass(frozen=True)
class _Terms:
    """One group's loss as a function of the mass scale ``a = exp(-t_0)``.

    ``value(a) = fixed + a scaled + sum_{j in mask} |a cell_mass_j - w*_j|``.
    """

    fixed: float
    scaled: float
    cell_mass: NDArray[np.float64]
    true_mass: NDArray[np.float64]
    mask: NDArray[np.bool_]
    cells: NDArray[np.intp]
    sizes: NDArray[np.intp]

    def value(self, a: float | NDArray[np.float64] = 1.0) -> Any:
        a = np.asarray(a, dtype=float)
        gap = np.abs(
            a[..., None] * self.cell_mass[self.mask] - self.true_mass[self.mask]
        )
        return self.fixed + a * self.scaled + gap.sum(axis=-1)


def _block_distances(fit: _Group, true: _Group) -> dict[str, NDArray[np.float64]]:
    """``|theta_i - theta*_j|`` for every block, shape (n_fitted, n_true)."""
    return {
        b: np.linalg.norm(fit.blocks[b][:, None, :] - true.blocks[b][None], axis=2)
        for b in fit.blocks
    }


def _group_terms(fit, true, rule, dist, metric, table) -> _Terms:
    cells = _cells_from_distances([dist[b] for b in true.atom], metric)
    k = len(true.index)
    sizes = np.bincount(cells, minlength=k)
    size_i = sizes[cells]
    exact = np.ones(len(cells), bool) if rule.all_exact else size_i == 1
    rows = np.arange(len(cells))
    per_atom = np.zeros(len(cells))
    for b in true.atom:
        e = _over_exponents(rule, b, size_i, exact, table)
        per_atom += dist[b][rows, cells] ** e
    for b in rule.extra:
        per_atom += np.where(exact, dist[b][rows, cells], 0.0)
    cell_mass = np.bincount(cells, weights=fit.masses, minlength=k)
    if rule.mass == "all":
        mask = np.ones(k, bool)
    elif rule.mass == "over":
        mask = sizes > 1
    else:
        mask = np.zeros(k, bool)
    if rule.weighted:
        fixed, scaled = 0.0, float(fit.masses @ per_atom)
    else:
        fixed, scaled = float(per_atom.sum()), 0.0
    return _Terms(fixed, scaled, cell_mass, true.masses, mask, cells, sizes)


@dataclass
class _Pair:
    """A fitted group against the matching true group, with its rule."""

    fit: _Group
    true: _Group
    rule: _Rule
    dist: dict[str, NDArray[np.float64]]

    def terms(self, metric, table, t1=None) -> _Terms:
        dist = self.dist
        if t1 is not None and "gate_slope" in dist:
            moved = self.fit.blocks["gate_slope"] - t1
            gs = np.linalg.norm(
                moved[:, None, :] - self.true.blocks["gate_slope"], axis=2
            )
            dist = {**dist, "gate_slope": gs}
        return _group_terms(self.fit, self.true, self.rule, dist, metric, table)


def _best_scale(terms: _Terms) -> tuple[float, float]:
    """Exact minimum over ``a = exp(-t_0)`` of a softmax group's loss.

    ``value(a)`` is convex and piecewise linear in ``a``, so its minimum is
    at a kink ``a = w*_j / S_j`` (a cell's fitted mass matched to its true
    mass) or, when it increases everywhere, as ``a -> 0``; that limit
    (every fitted mass sent to zero) is excluded, and ``a = 1`` (no shift)
    is always a candidate.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        kinks = terms.true_mass / terms.cell_mass
    keep = terms.mask & (terms.cell_mass > 0) & np.isfinite(kinks) & (kinks > 0)
    candidates = np.concatenate([[1.0], kinks[keep]])
    values = terms.value(candidates)
    best = int(np.argmin(values))
    return float(values[best]), float(candidates[best])


def _optimal_anchor(pair: _Pair, metric, table) -> tuple[float, float, NDArray]:
    """Minimise a softmax group's loss over its gate's translation (t_0, t_1).

    Exact in ``t_0`` (:func:`_best_scale`), Nelder-Mead in ``t_1`` from the
    shift that matches the reference cell; the start and ``t_1 = 0`` stay
    candidates, so the result never exceeds the unshifted loss.
    """
    slopes = pair.fit.blocks.get("gate_slope")
    if slopes is None:
        value, a = _best_scale(pair.terms(metric, table))
        return value, a, np.zeros(0)
    start_terms = pair.terms(metric, table, np.zeros(slopes.shape[1]))
    ref = start_terms.cells == 0  # the true reference expert's cell
    if ref.any():
        w = pair.fit.masses[ref]
        t_start = (w @ slopes[ref]) / w.sum() - pair.true.blocks["gate_slope"][0]
    else:
        t_start = np.zeros(slopes.shape[1])

    def objective(t1):
        try:
            return _best_scale(pair.terms(metric, table, t1))[0]
        except _UnknownExponent:
            return np.inf

    scale = 1.0 + float(np.max(np.abs(pair.true.blocks["gate_slope"])))
    candidates = [t_start, np.zeros_like(t_start)]
    x, step = t_start, 0.1 * scale
    for _ in range(2):  # a coarse search, then a polish around its result
        simplex = x + np.vstack([np.zeros_like(x), step * np.eye(x.size)])
        # Stop on the simplex size alone: the loss has kinks (exponent-one
        # terms, cell changes) where its values never agree to a tolerance.
        result = minimize(
            objective,
            x,
            method="Nelder-Mead",
            options={
                "initial_simplex": simplex,
                "xatol": 1e-10 * scale,
                "fatol": np.inf,
                "maxfev": 400 * (x.size + 1),
            },
        )
        x, step = np.asarray(result.x, dtype=float), 1e-3 * step
        candidates.append(x)
    values = [objective(t) for t in candidates]
    t1 = candidates[int(np.argmin(values))]
    terms = pair.terms(metric, table, t1)  # raises for unknown cell sizes
    value, a = _best_scale(terms)
    return value, a, t1


def _auto_kind(fitted: MixtureOfExperts, pairs: list[_Pair], metric: str) -> str:
    """The catalogue's loss for the fitted model's pieces (see voronoi_loss).

    Read from the Voronoi signatures the pieces declare: the expert
    families' (``"linear"``, ``"relu"``, ``"multinomial"``; the shared and
    the routed family of a composite one) and the routing gate's.
    """
    expert, gate = fitted.expert, fitted.gate
    families = _expert_parts(expert)
    signatures = [
        _declaration(f, "voronoi_signature", "expert family") for f in families
    ]
    if signatures == ["multinomial"]:
        return "multinomial"
    routed_gate = _routed_gate(gate)
    shared = routed_gate is not None
    routing = _declaration(routed_gate if shared else gate, "voronoi_signature", "gate")
    relu = all(s == "relu" for s in signatures)
    linear = all(s == "linear" for s in signatures)
    if not (relu or linear):
        if not all(s in ("relu", "linear") for s in signatures):
            raise ValueError(
                f"kind='auto' has no Voronoi loss for {type(expert).__name__} "
                f"experts (voronoi_signature {signatures}) in the catalogue "
                "(theory.md section 5.2.2); pass kind= explicitly (e.g. "
                "'multinomial' for exponent 2 on over-specified cells)."
            )
    if routing == "normalized_sigmoid" and (shared or relu):
        return _sigmoid_regime(pairs[-1], metric)
    if not shared and linear:
        return "softmax_gaussian"
    if relu:
        return "ds_strong"
    if linear:
        return "ds_linear"
    raise ValueError(
        "kind='auto': shared and routed experts of different families under "
        "softmax routing are outside the catalogue (theory.md section 5.2.2); "
        "pass kind= explicitly."
    )


def _sigmoid_regime(pair: _Pair, metric: str) -> str:
    """Sparse if every over-specified true routed atom has zero gate slopes."""
    cells = _cells_from_distances([pair.dist[b] for b in pair.true.atom], metric)
    sizes = np.bincount(cells, minlength=len(pair.true.index))
    slopes = pair.true.blocks.get("gate_slope")
    over = sizes > 1
    if slopes is None or not np.any(slopes[over]):
        return "ds_sigmoid_sparse"
    return "ds_sigmoid_dense"
