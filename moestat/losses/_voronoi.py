"""Voronoi losses between the mixing measures (theory.md sections 5.2-5.3).

:func:`voronoi_loss` compares the fitted and the true parameters through
the Voronoi cells of the true atoms, so it stays meaningful when the fit
has more experts than the truth; :func:`per_parameter_errors` gives the
worst error of each parameter block within each cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from moestat.losses._catalogue import (
    _STRONG,
    VORONOI_KINDS,
    _auto_kind,
    _block_distances,
    _cells_from_distances,
    _exponent_table,
    _optimal_anchor,
    _Pair,
    _rule_for,
    _UnknownExponent,
)
from moestat.losses._common import _check_option, _positive_int
from moestat.losses._mixing import _check_compatible, _groups
from moestat.model import MixtureOfExperts

# Anchorings of a softmax gate's translation (moestat.losses.ANCHORS).
ANCHORS = ("none", "paper", "optimal")
# Distances that assign fitted atoms to cells (moestat.losses.CELL_METRICS).
CELL_METRICS = ("euclid", "block_l1")


@dataclass(frozen=True)
class VoronoiLoss:
    """A Voronoi loss value with the cells it was computed on.

    Parameters
    ----------
    value : float
        The loss.
    kind : str
        The loss of the catalogue that was computed (``"auto"`` resolved).
    cells : ndarray of shape (n_fitted_experts,)
        For each fitted expert, the index (in the true model's numbering,
        0-based) of the true expert whose Voronoi cell it falls in. Shared
        and routed experts are never mixed: a fitted shared expert's cell is
        a true shared expert.
    cell_sizes : ndarray of shape (n_true_experts,)
        ``|A_j|`` for each true expert ``j`` (0: an empty cell).
    anchor : str
        The softmax anchoring used (``"none"`` where it does not apply).
    shift : ndarray of shape (1 + n_gate_inputs,) or None
        For softmax routing: the translation ``(t_0, t_1)`` subtracted from
        the fitted gate rows, after re-expressing them with the reference
        row at zero (first row for ``"none"`` and ``"optimal"``, last row
        for ``"paper"``); zero except for ``"optimal"`` (where a perfect fit
        gives ``t_0 = log sum_j exp(beta*_0j)``, the truth's masses being
        normalised). None for other gates.
    errors : dict of str to float
        The per-parameter errors at these cells and this translation (see
        :func:`per_parameter_errors`).
    """

    value: float
    kind: str
    cells: NDArray[np.intp]
    cell_sizes: NDArray[np.intp]
    anchor: str = "none"
    shift: NDArray[np.float64] | None = None
    errors: dict[str, float] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)


def voronoi_cells(
    fitted_atoms: ArrayLike,
    true_atoms: ArrayLike,
    metric: str = "euclid",
    blocks: Sequence[int] | None = None,
) -> NDArray[np.intp]:
    """Voronoi cell of each fitted atom: the index of its nearest true atom.

    Parameters
    ----------
    fitted_atoms : array-like of shape (n_fitted, p)
        Fitted atoms, one per row (masses excluded).
    true_atoms : array-like of shape (n_true, p)
        True atoms.
    metric : {"euclid", "block_l1"}, default="euclid"
        ``"euclid"``: Euclidean distance on the stacked vector (the papers'
        definition); ``"block_l1"``: the sum of the blocks' Euclidean norms
        (the authors' code, e.g. ``|d beta_1| + |d b| + |d a| + |d nu|``).
    blocks : sequence of int, optional
        Lengths of the consecutive blocks of the atom (summing to ``p``),
        for ``"block_l1"``; default: every coordinate its own block (the
        L1 distance). Ignored by ``"euclid"``.

    Returns
    -------
    ndarray of shape (n_fitted,)
        ``j`` such that fitted atom ``i`` lies in the cell ``A_j``; ties go
        to the lowest ``j``, so the cells partition the fitted atoms.

    Notes
    -----
    theory.md section 5.2.1:
    ``A_j = {i : |zeta_i - zeta*_j| <= |zeta_i - zeta*_l| for all l}``.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat.losses import voronoi_cells
    >>> voronoi_cells(np.array([[0.1], [2.0], [-0.2], [1.0]]), np.array([[0.0], [2.0]]))
    array([0, 1, 0, 0])
    """
    F = np.asarray(fitted_atoms, dtype=float)
    T = np.asarray(true_atoms, dtype=float)
    if F.ndim != 2 or T.ndim != 2 or F.shape[1] != T.shape[1] or T.shape[0] == 0:
        raise ValueError(
            "fitted_atoms and true_atoms must be 2-D arrays with the same number "
            f"of columns and at least one true atom; got {F.shape} and {T.shape}."
        )
    _check_option(metric, CELL_METRICS, "metric")
    if blocks is None:
        sizes = [1] * F.shape[1]
    else:
        sizes = [_positive_int(int(b), "blocks entries") for b in blocks]
        if sum(sizes) != F.shape[1]:
            raise ValueError(
                f"blocks must sum to the atom length {F.shape[1]}; got {list(blocks)}."
            )
    edges = np.cumsum([0, *sizes])
    dist = [
        np.linalg.norm(F[:, None, a:b] - T[None, :, a:b], axis=2)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    return _cells_from_distances(dist, metric)


def _evaluate(true, fitted, kind, anchor, cell_metric, exponents):
    """Every piece of a Voronoi loss: value, pairs, per-group terms, shift."""
    _check_option(kind, VORONOI_KINDS, "kind")
    _check_option(anchor, ANCHORS, "anchor")
    _check_option(cell_metric, CELL_METRICS, "cell_metric")
    table = _exponent_table(exponents)
    form = "paper" if anchor == "paper" else "none"
    true_groups = _groups(true, form, "true")
    fit_groups = _groups(fitted, form, "fitted")
    _check_compatible(true, fitted, true_groups, fit_groups)
    pairs = [
        _Pair(f, t, _STRONG, _block_distances(f, t))
        for f, t in zip(fit_groups, true_groups, strict=True)
    ]
    if kind == "auto":
        kind = _auto_kind(fitted, pairs, cell_metric)
    for pair in pairs:
        pair.rule = _rule_for(kind, pair.fit)
    total, shift, shifts = 0.0, None, {}
    all_terms = []
    try:
        for pair in pairs:
            if (
                pair.fit.translation_invariant
                and anchor == "optimal"
                and pair.rule.weighted
            ):
                value, a, t1 = _optimal_anchor(pair, cell_metric, table)
                terms = pair.terms(cell_metric, table, t1)
                # the truth's masses scaled to sum to one: every term of the
                # group scales with them (the minimiser does not move)
                total_mass = float(pair.true.masses.sum())
                value /= total_mass
                shift = np.concatenate([[np.log(total_mass / a)], t1])
                shifts[pair.fit.name] = t1
            else:
                terms = pair.terms(cell_metric, table)
                value = terms.value(1.0)
                if pair.fit.translation_invariant:
                    width = sum(
                        pair.fit.blocks[b].shape[1]
                        for b in ("gate_intercept", "gate_slope")
                        if b in pair.fit.blocks
                    )
                    shift = np.zeros(width)
            total += float(value)
            all_terms.append(terms)
    except _UnknownExponent as error:
        raise ValueError(
            f"Over-specified Voronoi cells of sizes {error.sizes} have no known "
            f"exponent for kind={kind!r}: r(|A_j|) is known for 2 and 3 atoms "
            "(4 and 6) and only bounded below (r >= 7) beyond (theory.md section "
            "5.2.5). Fit at most k* + 2 atoms, or pass exponents={4: r, ...} "
            "explicitly."
        ) from None
    return kind, total, pairs, all_terms, shift, shifts


def _global_cells(true, fitted, pairs, all_terms):
    cells = np.empty(fitted.n_experts, dtype=np.intp)
    sizes = np.zeros(true.n_experts, dtype=np.intp)
    for pair, terms in zip(pairs, all_terms, strict=True):
        cells[pair.fit.index] = pair.true.index[terms.cells]
        sizes[pair.true.index] = terms.sizes
    return cells, sizes


def voronoi_loss(
    true: MixtureOfExperts,
    fitted: MixtureOfExperts,
    kind: str = "auto",
    anchor: str = "optimal",
    cell_metric: str = "euclid",
    exponents: Mapping[int, float] | None = None,
) -> VoronoiLoss:
    """Voronoi loss between the fitted and the true mixing measures.

    Parameters
    ----------
    true : MixtureOfExperts
        The truth ``G*`` (for ``"ds_sigmoid_dense"``: the best approximation
        ``G-check`` of the truth within the fitted family, section 5.2.3).
    fitted : MixtureOfExperts
        The estimate, of the same family (the same Voronoi signatures
        declared by the gate and the expert families, the same atom
        blocks); it may have more (or fewer) experts.
    kind : str, default="auto"
        The loss (theory.md section 5.2.2); every kind uses exponent one on
        every block of exact-specified cells (``|A_j| = 1``):

        - ``"softmax_gaussian"``: SG's ``D_1``/``D_2`` (linear Gaussian
          experts, any gate without shared experts). Weighted by the masses;
          over-specified cells
          ``|d beta_1|^r + |d slope|^(r/2) + |d intercept|^r + |d var|^(r/2)``
          with ``r = r(|A_j|)`` (4 for two atoms, 6 for three); mass term
          ``sum_j |sum_{i in A_j} w_i - w*_j|``.
        - ``"ds_strong"``: DeepSeekMoE ``D_1`` (strongly identifiable, e.g.
          ReLU, experts): exponent 2 on every block of over-specified cells,
          mass terms in ``omega`` and in ``exp(beta_0)``.
        - ``"ds_linear"``: DeepSeekMoE ``D_2`` (linear experts): shared
          over-specified cells ``|d kappa_1|^2 + |d kappa_0|^r1 +
          |d tau|^(r1/2)``; routed ones as ``"softmax_gaussian"`` with
          ``r2``; ``r1 = r2 = r(|A_j|)``.
        - ``"ds_sigmoid_sparse"``: ``D_3``: shared terms as ``D_1``; routed
          terms unweighted, exact cells
          ``|d beta_1| + |d beta_0| + |d eta| + |d nu|``, over-specified
          cells exponent 2 without ``beta_0``; routed mass term over the
          over-specified cells only.
        - ``"ds_sigmoid_dense"``: ``D_4``: shared terms as ``D_1``; routed
          terms unweighted with exponent one on every block and on
          ``beta_0``, for every routed atom, against the atoms of ``true``
          (pass ``G-check``); no routed mass term.
        - ``"multinomial"``: ``D_ML`` [M]: exponent 2 on ``beta_1``, slopes
          and intercepts of over-specified cells, mass ``exp(beta_0)``.
        - ``"auto"``: chosen from the ``voronoi_signature`` the fitted
          model's pieces declare. Multinomial experts (``"multinomial"``)
          give ``"multinomial"``; a normalized sigmoid routing
          (``"normalized_sigmoid"``) with shared or ReLU experts gives
          ``"ds_sigmoid_sparse"`` if every over-specified true routed atom
          has ``beta*_1 = 0`` (or none is over-specified), else
          ``"ds_sigmoid_dense"``; linear Gaussian experts (``"linear"``)
          without shared experts give ``"softmax_gaussian"`` (any gate);
          otherwise ReLU experts (``"relu"``) give ``"ds_strong"`` and
          linear Gaussian ones ``"ds_linear"``. Other expert families need
          an explicit kind.
    anchor : {"optimal", "none", "paper"}, default="optimal"
        Softmax anchoring of the masses ``exp(beta_0)`` (section 5.2.4;
        applied to the gates that declare ``translation_invariant``,
        ignored by the others):

        - ``"none"``: both models with their first gate row at zero
          (moestat's stored form);
        - ``"paper"``: both re-expressed with their last gate row at zero
          (the authors' EM);
        - ``"optimal"`` [P]: the truth's masses ``exp(beta*_0)`` scaled to
          sum to one, and the loss minimised over a translation
          ``(t_0, t_1)`` of the fitted gate rows, the cells recomputed at
          each shift (``beta_1`` is in the atom). See Notes.
    cell_metric : {"euclid", "block_l1"}, default="euclid"
        Distance defining the cells (:func:`voronoi_cells`).
    exponents : mapping of int to float, optional
        ``{cell size: r}`` added to (or overriding) ``{2: 4, 3: 6}`` for the
        kinds whose over-specified exponents depend on the cell size
        (``"softmax_gaussian"``, ``"ds_linear"``).

    Returns
    -------
    VoronoiLoss
        The value with the cells, their sizes, the kind and the shift.

    Raises
    ------
    ValueError
        For an unknown kind, anchor or metric; models of different families
        (the message names both models' declared signatures); a gate or an
        expert family that does not declare ``voronoi_signature`` (or a gate
        ``translation_invariant``); a kind that does not fit the experts'
        blocks; cells of four or more atoms for a kind whose exponent there
        is unknown (section 5.2.5: fit at most ``k* + 2`` atoms, or pass
        ``exponents``).

    Notes
    -----
    Atoms exclude the mass (section 5.2.1): expert ``i``'s atom is its gate
    slopes ``beta_1i`` (none for shared experts) followed by the blocks of
    its expert family's ``atom_blocks`` (:class:`~moestat.ReLUExpert`:
    the scale-free ``inner_bias``, ``inner_slope``, ``outer``, ``var``).
    Masses come from the gate's ``voronoi_masses``: ``exp(beta_0)``
    (softmax), ``sigma(beta_0)`` (normalized sigmoid), ``omega`` (shared
    experts). Cells never mix shared and routed experts. Every block enters
    through its Euclidean norm. Cells of size ``>= 4`` have unknown
    exponents ``r >= 7`` except for the kinds with exponent 2.

    **Optimal anchoring** [P]. Translating every fitted gate row by
    ``(t_0, t_1)`` leaves the density unchanged but scales every mass by
    ``a = exp(-t_0)`` and moves every ``beta_1`` (and so the cells). For
    fixed ``t_1`` the loss is convex and piecewise linear in ``a``, and is
    minimised exactly over the kinks where a cell's fitted mass equals its
    true mass (``a = 1``, no shift, always a candidate; the degenerate
    ``a -> 0`` is excluded). ``t_1`` is found by Nelder-Mead started from
    the shift that matches the reference cell (the cell of the true first
    expert: mass-weighted mean of its fitted ``beta_1`` equal to the
    truth's) and polished once; the start and ``t_1 = 0`` stay candidates.
    Translating the *truth* by ``(s_0, s_1)`` only multiplies this minimum
    by ``exp(-s_0)``, so the truth is taken with its masses summing to one:
    the value then depends on neither model's stored translation nor on
    the experts' order, and never exceeds ``anchor="none"`` (where the
    truth's first mass is 1, so its masses sum to at least 1). Kinds whose
    routed terms are not mass-weighted (``"ds_sigmoid_*"``) are not
    anchored. With moestat's first-row convention the SG truth of theory.md
    section 6.C has masses ``(1, e^8)``: ``"none"`` weighs its second
    expert ~3000 times more than ``"optimal"`` does.

    References
    ----------
    .. [1] Nguyen, H., Nguyen, T. and Ho, N. (2023). Demystifying softmax
       gating function in Gaussian mixture of experts. NeurIPS 2023,
       arXiv:2305.03288.
    .. [2] Nguyen, H., Doan, T. T., Pham, Q., Bui, N. D. Q., Ho, N. and
       Rinaldo, A. (2025). On DeepSeekMoE: statistical benefits of shared
       experts and normalized sigmoid gating. arXiv:2505.10860.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import voronoi_loss
    >>> truth = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), MoEParams(
    ...     GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
    ...     GaussianExpertParams(np.array([[1.0, 2.0], [-1.0, -1.5]]),
    ...                          np.array([0.09, 0.25]))))
    >>> loss = voronoi_loss(truth, truth)
    >>> loss.value, loss.kind, loss.cell_sizes
    (0.0, 'softmax_gaussian', array([1, 1]))
    """
    kind, total, pairs, all_terms, shift, shifts = _evaluate(
        true, fitted, kind, anchor, cell_metric, exponents
    )
    cells, sizes = _global_cells(true, fitted, pairs, all_terms)
    used_anchor = anchor if any(p.fit.translation_invariant for p in pairs) else "none"
    errors = _block_errors(pairs, all_terms, shifts)
    return VoronoiLoss(float(total), kind, cells, sizes, used_anchor, shift, errors)


def _block_errors(pairs, all_terms, shifts) -> dict[str, float]:
    """``max_{i in A_j} |theta_i - theta*_j|`` per block and true atom."""
    prefixed = len(pairs) > 1
    errors: dict[str, float] = {}
    for pair, terms in zip(pairs, all_terms, strict=True):
        prefix = f"{pair.true.name}_" if prefixed else ""
        for block in pair.true.atom:
            values = pair.fit.blocks[block]
            if block == "gate_slope" and pair.fit.name in shifts:
                values = values - shifts[pair.fit.name]
            for j, label in enumerate(pair.true.index):
                members = terms.cells == j
                if not members.any():
                    errors[f"{prefix}{block}[{label}]"] = float("nan")
                    continue
                gaps = values[members] - pair.true.blocks[block][j]
                errors[f"{prefix}{block}[{label}]"] = float(
                    np.max(np.linalg.norm(gaps, axis=1))
                )
    return errors


def per_parameter_errors(
    true: MixtureOfExperts,
    fitted: MixtureOfExperts,
    kind: str = "auto",
    anchor: str = "optimal",
    cell_metric: str = "euclid",
    exponents: Mapping[int, float] | None = None,
) -> dict[str, float]:
    """Worst error of each parameter block within each Voronoi cell.

    Parameters
    ----------
    true, fitted, kind, anchor, cell_metric, exponents
        As for :func:`voronoi_loss`, which fixes the cells and (for softmax
        gates) the gate's translation the errors are measured at.

    Returns
    -------
    dict of str to float
        ``e_theta(j) = max_{i in A_j} |theta_i - theta*_j|`` for every atom
        block ``theta`` and true expert ``j``, keyed ``"slope[1]"`` (block
        ``slope`` of true expert 1, 0-based in the true model's numbering);
        with shared experts the keys carry the group, ``"shared_slope[0]"``,
        ``"routed_gate_slope[1]"``. ``NaN`` for an empty cell (no fitted
        atom near that true expert). Blocks: ``gate_slope`` (``beta_1``)
        and the expert family's atom blocks; the masses are not included.

    Notes
    -----
    theory.md section 5.3 [P]: the different rates of the blocks in
    over-specified cells (e.g. ``b`` at ``n^(-1/8)`` against ``a`` at
    ``n^(-1/4)`` for two atoms, SG) show directly in these errors.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianExpert, GaussianExpertParams, GateParams
    >>> from moestat import MixtureOfExperts, MoEParams, SoftmaxGate
    >>> from moestat.losses import per_parameter_errors
    >>> def model(b):
    ...     return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), MoEParams(
    ...         GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
    ...         GaussianExpertParams(np.array([[b, 2.0], [-1.0, -1.5]]),
    ...                              np.array([0.09, 0.25]))))
    >>> errors = per_parameter_errors(model(1.0), model(1.25), anchor="none")
    >>> errors["intercept[0]"], errors["intercept[1]"]
    (0.25, 0.0)
    """
    return voronoi_loss(true, fitted, kind, anchor, cell_metric, exponents).errors
