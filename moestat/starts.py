"""Split-and-merge moves: leaving the local maxima that restarts settle in.

EM from a partition of the data often ends with several experts sharing one
true component while a single broad expert covers two others. No small step
leaves such a fit, and more random restarts rarely avoid it. The moves of
Ueda, Nakano, Ghahramani and Hinton (2000) repair it directly: merge the two
experts whose responsibilities are most alike, split an expert that fits its
data badly, run a few EM iterations from the new configuration, and keep it
only if the likelihood rises.

A move is made on the responsibilities, and the start is rebuilt from them by
the pieces' own hooks (the expert family's M-step and the gate's
``init_params``), so the moves work for every gate and expert family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moestat._sweep_em import (
    default_chunk_size,
    start_from_soft_labels,
    sweeps_by_default,
)
from moestat.model import (
    Design,
    MixtureOfExperts,
    MoEParams,
    log_joint,
    responsibilities_from_log_joint,
)

__all__ = [
    "params_from_responsibilities",
    "split_merge_candidates",
    "rank_moves",
    "split_merge_responsibilities",
    "split_merge_starts",
    "split_merge",
]

Move = tuple[int, int, int]

#: Share of each sample's responsibility spread over the experts after a
#: move (in proportion to their masses), so that no expert starts empty.
MOVE_SMOOTHING = 0.02
# ``run(starts, max_iter)`` fits each start and returns one FitResult per start.
Runner = Callable[[Sequence[MoEParams], int], list]


def params_from_responsibilities(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    resp: NDArray[np.float64],
    var_floor: float = 0.0,
) -> MoEParams:
    """Parameters fitted to soft labels: one M-step of each piece.

    Parameters
    ----------
    model : MixtureOfExperts
        The model specification (its gate and expert family).
    design : Design
        The designs built by ``model.design(X)``.
    y : ndarray of shape (n,)
        Responses.
    resp : ndarray of shape (n, n_experts)
        Non-negative soft labels, rows summing to one.
    var_floor : float, default=0.0
        Lower bound on expert variances.

    Returns
    -------
    MoEParams
        The experts from the family's M-step, the gate from ``init_params``.
    """
    expert = model.expert.m_step(design.expert, y, resp, var_floor)
    gate = model.gate.init_params(design.gate, resp)
    return MoEParams(gate, expert)


def split_merge_candidates(
    resp: NDArray[np.float64],
    log_f: NDArray[np.float64],
    groups: NDArray[np.intp] | None = None,
) -> list[Move]:
    """Moves ``(i, k, j)`` ranked from the most to the least promising.

    A move merges expert ``k`` into expert ``i`` and splits expert ``j``
    into ``j`` and the freed ``k`` (``j == i`` splits the merged expert
    again). Merges are ranked by the cosine similarity of the two experts'
    responsibilities (Ueda et al.'s merge criterion: experts that claim the
    same samples), splits by the responsibility-weighted mean log density
    of the expert on its samples, lowest first (the expert whose samples
    it fits worst).

    Parameters
    ----------
    resp : ndarray of shape (n, m)
        Responsibilities of a fit.
    log_f : ndarray of shape (n, m)
        Each expert's log density at each sample.
    groups : ndarray of shape (m,), optional
        Group of each expert (the gate's ``expert_groups``); a move never
        involves experts of different groups.

    Returns
    -------
    list of tuple of int
        Every move ``(i, k, j)``, ``i < k``, ``j != k``, in order.
    """
    return rank_moves(
        resp.sum(axis=0),
        (resp**2).sum(axis=0),
        resp.T @ resp,
        (resp * log_f).sum(axis=0),
        groups,
    )


def rank_moves(
    mass: NDArray[np.float64],
    squares: NDArray[np.float64],
    cross: NDArray[np.float64],
    fit: NDArray[np.float64],
    groups: NDArray[np.intp] | None = None,
) -> list[Move]:
    """The moves of :func:`split_merge_candidates` from sums over the samples.

    Parameters
    ----------
    mass : ndarray of shape (m,)
        ``sum_t r_ti``.
    squares : ndarray of shape (m,)
        ``sum_t r_ti^2``.
    cross : ndarray of shape (m, m)
        ``sum_t r_ti r_tk``.
    fit : ndarray of shape (m,)
        ``sum_t r_ti log f_i(y_t | x_t)``.
    groups : ndarray of shape (m,), optional
        Group of each expert.

    Returns
    -------
    list of tuple of int
        Every move ``(i, k, j)``, ``i < k``, ``j != k``, in order.
    """
    m = mass.shape[0]
    groups = np.zeros(m, dtype=np.intp) if groups is None else np.asarray(groups)
    norm = np.sqrt(squares)
    similarity = cross / np.maximum(np.outer(norm, norm), 1e-300)
    local_fit = fit / np.maximum(mass, 1e-300)
    split_order = np.argsort(local_fit, kind="stable")
    pairs = sorted(
        (
            (-similarity[i, k], i, k)
            for i in range(m)
            for k in range(i + 1, m)
            if groups[i] == groups[k]
        ),
    )
    return [
        (i, k, int(j))
        for _, i, k in pairs
        for j in split_order
        if j != k and groups[j] == groups[i]
    ]


def split_merge_responsibilities(
    resp: NDArray[np.float64],
    upper: NDArray[np.bool_],
    move: Move,
    eps: float = MOVE_SMOOTHING,
) -> NDArray[np.float64]:
    """Responsibilities after one move.

    Expert ``k``'s responsibilities join expert ``i``'s; then expert ``j``'s
    are divided between ``j`` (the samples where ``upper[:, j]``) and
    ``k`` (the others). A share ``eps`` of every row is spread in
    proportion to the experts' masses, so that no expert starts empty.

    Parameters
    ----------
    resp : ndarray of shape (n, m)
        Responsibilities before the move.
    upper : ndarray of bool, shape (n, m)
        The side of each sample for each expert; for the moves of
        :func:`split_merge`, whether the response exceeds the expert's mean
        (the sign of its residual).
    move : tuple of int
        ``(i, k, j)`` as in :func:`split_merge_candidates`.
    eps : float, default=0.02
        Smoothing share.

    Returns
    -------
    ndarray of shape (n, m)
        Rows summing to one.
    """
    return _moved(resp, upper, move, resp.sum(axis=0) / resp.sum(), eps)


def _moved(resp, upper, move, prior, eps):
    """:func:`split_merge_responsibilities` with the experts' shares given."""
    i, k, j = move
    new = resp.copy()
    new[:, i] += new[:, k]
    share = new[:, j].copy()
    side = upper[:, j]
    new[:, j] = np.where(side, share, 0.0)
    new[:, k] = np.where(side, 0.0, share)
    new = (1.0 - eps) * new + eps * prior[None, :]
    return new / new.sum(axis=1, keepdims=True)


def split_merge_starts(
    model: MixtureOfExperts,
    design: Design,
    y: NDArray[np.float64],
    *,
    n_moves: int = 5,
    var_floor: float = 0.0,
) -> list[MoEParams]:
    """Starts after the ``n_moves`` most promising moves from ``model.params``.

    Parameters
    ----------
    model : MixtureOfExperts
        A fitted model.
    design : Design
        The designs built by ``model.design(X)``.
    y : ndarray of shape (n,)
        Responses.
    n_moves : int, default=5
        Number of moves (fewer when the model has fewer experts).
    var_floor : float, default=0.0
        Lower bound on expert variances.

    Returns
    -------
    list of MoEParams
        One start per move, in the order of :func:`split_merge_candidates`;
        empty for a single expert.

    Notes
    -----
    Where :func:`moestat.fit.em` sweeps the data in chunks (a softmax gate
    with Gaussian experts on data of at least
    :data:`moestat._sweep_em.CHUNKED_ENTRIES` numbers), the moves are ranked from
    sums over chunks of rows and each start is fitted to its moved
    responsibilities chunk by chunk
    (:func:`moestat._sweep_em.start_from_soft_labels`), so no (n, m) array
    is stored.
    """
    params = model.params
    m = params.n_experts
    if sweeps_by_default(model, design, m):
        return _split_merge_starts_in_chunks(model, design, y, n_moves, var_floor)
    log_f = model.expert.log_density(params.expert, design.expert, y)
    values = log_joint(model.gate, model.expert, params, design, y)
    resp, _ = responsibilities_from_log_joint(values)
    moves = split_merge_candidates(resp, log_f, model.gate.expert_groups(m))
    upper = y[:, None] > model.expert.mean(params.expert, design.expert)
    return [
        params_from_responsibilities(
            model,
            design,
            y,
            split_merge_responsibilities(resp, upper, move),
            var_floor,
        )
        for move in moves[:n_moves]
    ]


def _split_merge_starts_in_chunks(model, design, y, n_moves, var_floor):
    """:func:`split_merge_starts` from sums over chunks of rows."""
    gate, expert, params = model.gate, model.expert, model.params
    m, n = params.n_experts, design.n_samples
    chunk = default_chunk_size(n, m, design.gate.shape[1], design.expert.shape[1])

    def evaluate(rows):
        Phi, y_part = design.expert[rows], y[rows]
        log_f = expert.log_density(params.expert, Phi, y_part)
        log_g = gate.log_weights(params.gate, design.gate[rows])
        resp, _ = responsibilities_from_log_joint(log_g + log_f)
        return resp, log_f, Phi

    mass, squares, fit = np.zeros(m), np.zeros(m), np.zeros(m)
    cross = np.zeros((m, m))
    for start in range(0, n, chunk):
        resp, log_f, _ = evaluate(slice(start, start + chunk))
        mass += resp.sum(axis=0)
        squares += (resp**2).sum(axis=0)
        cross += resp.T @ resp
        fit += (resp * log_f).sum(axis=0)
    moves = rank_moves(mass, squares, cross, fit, gate.expert_groups(m))
    prior = mass / mass.sum()

    def labels_after(move):
        def soft_labels(rows):
            resp, _, Phi = evaluate(rows)
            upper = y[rows, None] > expert.mean(params.expert, Phi)
            return _moved(resp, upper, move, prior, MOVE_SMOOTHING).T

        return soft_labels

    return [
        start_from_soft_labels(
            model, design, y, labels_after(move), m, var_floor, chunk
        )
        for move in moves[:n_moves]
    ]


def split_merge(
    result: Any,
    design: Design,
    y: NDArray[np.float64],
    *,
    run: Runner,
    n_moves: int = 5,
    short_iter: int = 20,
    max_rounds: int = 10,
    var_floor: float = 0.0,
) -> Any:
    """Improve a converged fit by split-and-merge moves.

    Each round builds the starts of :func:`split_merge_starts`, runs
    ``short_iter`` iterations from each and continues the best to
    convergence; the round's fit replaces the current one when its
    log-likelihood is higher by more than round-off. Rounds stop when
    none does, or after ``max_rounds``.

    Parameters
    ----------
    result : FitResult
        A fit (its ``model`` and ``log_likelihood`` are read).
    design : Design
        Its designs.
    y : ndarray of shape (n,)
        Responses.
    run : callable
        ``run(starts, max_iter)``: one FitResult per start, from
        ``max_iter`` iterations at most (``None``: the engine's own limit
        and stopping rule; otherwise exactly ``max_iter`` iterations).
    n_moves : int, default=5
        Moves tried per round.
    short_iter : int, default=20
        Iterations that screen each move.
    max_rounds : int, default=10
        Maximum number of accepted moves.
    var_floor : float, default=0.0
        Lower bound on expert variances.

    Returns
    -------
    FitResult
        ``result`` itself when no move raised the likelihood; otherwise
        the fit continued from the last accepted move.
    """
    current = result
    for _ in range(max_rounds):
        starts = split_merge_starts(
            current.model, design, y, n_moves=n_moves, var_floor=var_floor
        )
        if not starts:
            break
        short = [r for r in run(starts, short_iter) if np.isfinite(r.log_likelihood)]
        if not short:
            break
        best_short = max(short, key=lambda r: r.log_likelihood)
        (candidate,) = run([best_short.model.params], None)
        gain = candidate.log_likelihood - current.log_likelihood
        if not gain > 1e-9 * max(abs(current.log_likelihood), 1.0):
            break
        current = candidate
    return current
