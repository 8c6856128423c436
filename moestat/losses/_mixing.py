"""The models' mixing measures: atoms and masses by group (theory.md 5.2.1).

A model's experts form one group, or two (the shared and the routed
experts) when shared experts sit beside a routed gate; cells never mix
groups. Two models are compared only when their pieces declare the same
Voronoi signatures and their atoms have the same blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from moestat.gates import GateParams
from moestat.losses._common import (
    _declaration,
    _expert_parts,
    _params,
    _routed_gate,
)
from moestat.model import MixtureOfExperts


@dataclass(frozen=True)
class _Group:
    """One block of experts of a model: all of them, the shared or the routed.

    ``blocks`` maps every block name to a (n_experts, dim) array: the atom
    blocks (``atom``, in order) and, for gated experts, ``gate_intercept``
    (in some losses' terms, never in the atom). ``translation_invariant``:
    the group's gate identifies differences of rows only (softmax), so its
    masses depend on an anchoring (section 5.2.4).
    """

    name: str
    index: NDArray[np.intp]
    blocks: dict[str, NDArray[np.float64]]
    atom: tuple[str, ...]
    masses: NDArray[np.float64]
    translation_invariant: bool


def _stack_blocks(atoms: list[dict[str, NDArray]], owner: str) -> dict[str, NDArray]:
    names = list(atoms[0])
    if any(list(a) != names for a in atoms):
        raise ValueError(f"The {owner} experts do not all have the same atom blocks.")
    return {
        name: np.array([np.ravel(a[name]) for a in atoms], dtype=float)
        for name in names
    }


def _gated_group(name, gate, gate_params, atoms, offset, anchor) -> _Group:
    coef = np.asarray(gate_params.coef, dtype=float)
    invariant = bool(_declaration(gate, "translation_invariant", "gate"))
    if invariant:
        # only differences of rows are identified: re-express on a reference
        # row (5.2.4)
        coef = coef - coef[-1 if anchor == "paper" else 0]
    params = GateParams(coef)
    expert_blocks = _stack_blocks(atoms, name)
    slopes = gate.voronoi_slopes(params)
    blocks = {"gate_slope": slopes} if slopes.shape[1] else {}
    blocks.update(expert_blocks)
    blocks["gate_intercept"] = coef[:, :1]
    atom = tuple(b for b in blocks if b != "gate_intercept")
    index = offset + np.arange(coef.shape[0])
    masses = np.asarray(gate.voronoi_masses(params), dtype=float)
    return _Group(name, index, blocks, atom, masses, invariant)


def _groups(model: MixtureOfExperts, anchor: str, role: str) -> list[_Group]:
    if not isinstance(model, MixtureOfExperts):
        raise ValueError(
            f"Voronoi losses compare mixing measures: the {role} model must be a "
            f"MixtureOfExperts; got {type(model).__name__}."
        )
    params = _params(model)
    atoms = model.expert.atom_blocks(params.expert)
    gate = model.gate
    routed = _routed_gate(gate)
    if routed is None:
        return [_gated_group("experts", gate, params.gate, atoms, 0, anchor)]
    k1 = gate.n_shared
    masses = np.asarray(gate.voronoi_masses(params.gate), dtype=float)
    shared_blocks = _stack_blocks(atoms[:k1], "shared")
    shared = _Group(
        "shared",
        np.arange(k1),
        shared_blocks,
        tuple(shared_blocks),
        masses[:k1],
        False,
    )
    routed_group = _gated_group(
        "routed", routed, params.gate.routed, atoms[k1:], k1, anchor
    )
    return [shared, routed_group]


def _structure(model: MixtureOfExperts) -> tuple[tuple, str]:
    """The Voronoi signatures a model's pieces declare, and their description.

    The signatures: the gate's (``"shared"`` then the routed gate's for
    shared experts beside a routed gate), then each expert family's
    (shared then routed for a composite family).
    """
    gate = model.gate
    routed = _routed_gate(gate)
    if routed is None:
        gate_signature = _declaration(gate, "voronoi_signature", "gate")
        gates = (gate_signature,)
        gate_text = f"{type(gate).__name__} ({gate_signature!r})"
    else:
        gate_signature = _declaration(routed, "voronoi_signature", "routed gate")
        gates = ("shared", gate_signature)
        gate_text = (
            f"{type(gate).__name__} over {type(routed).__name__} ({gate_signature!r})"
        )
    parts = _expert_parts(model.expert)
    experts = tuple(
        _declaration(part, "voronoi_signature", "expert family") for part in parts
    )
    texts = [
        f"{type(part).__name__} ({signature!r})"
        for part, signature in zip(parts, experts, strict=True)
    ]
    if len(parts) == 2:
        texts = [f"{texts[0]} shared", f"{texts[1]} routed"]
    description = f"gate {gate_text} and experts {' / '.join(texts)}"
    return (gates, experts), description


def _check_compatible(
    true: MixtureOfExperts,
    fitted: MixtureOfExperts,
    true_groups: list[_Group],
    fit_groups: list[_Group],
) -> None:
    """Refuse models whose declared signatures or atom blocks differ."""
    (true_signatures, true_text), (fit_signatures, fit_text) = (
        _structure(true),
        _structure(fitted),
    )
    if true_signatures != fit_signatures:
        raise ValueError(
            f"Mismatched model families: the true model has {true_text}, the "
            f"fitted one {fit_text} (declared voronoi_signature in brackets). "
            "Voronoi losses compare models of one family."
        )
    for t, f in zip(true_groups, fit_groups, strict=True):
        t_shapes = {b: v.shape[1] for b, v in t.blocks.items()}
        f_shapes = {b: v.shape[1] for b, v in f.blocks.items()}
        if t_shapes != f_shapes:
            raise ValueError(
                f"Mismatched model families: the {t.name} experts' atom blocks "
                f"differ (true {t_shapes}, fitted {f_shapes}); check the number "
                "of covariates, the degree and whether the variance is known."
            )
