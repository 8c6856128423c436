"""Split-and-merge moves and the default start reach the maximum likelihood."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

from moestat import GaussianExpert, GaussianMoE, SoftmaxGate
from moestat import _sweep_em as sweep_em
from moestat.datasets import (
    make_moe_classification,
    make_moe_glm,
    make_moe_regression,
)
from moestat.fit import (
    em,
    fit_restarts,
    initial_params,
    is_degenerate,
    pack,
    polish_fit,
)
from moestat.model import MixtureOfExperts
from moestat.starts import (
    params_from_responsibilities,
    split_merge,
    split_merge_candidates,
    split_merge_responsibilities,
    split_merge_starts,
)
from tests.helpers import GATES, random_model, three_quadratic_truth


def _numpy_runner(model, design, y):
    def run(starts, max_iter):
        options = {} if max_iter is None else {"tol": 0.0, "max_iter": max_iter}
        return [em(model.with_params(s), design, y, **options) for s in starts]

    return run


def _kmeans_fit(X, y, truth, n_experts, seed=0):
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design = spec.design(X)
    rng = np.random.default_rng(seed)
    start = initial_params(spec, design, X, y, n_experts, "kmeans", rng)
    return spec, design, em(spec.with_params(start), design, y)


# -- the ranking of moves -------------------------------------------------------
def test_candidates_merge_the_most_alike_pair_and_split_the_worst_fit():
    # experts 0 and 2 claim the same samples; expert 1 fits its samples worst
    resp = np.array([[0.5, 0.0, 0.5], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    log_f = np.array([[-1.0, -9.0, -1.0], [-1.0, -9.0, -1.0], [-1.0, -5.0, -2.0]])
    moves = split_merge_candidates(resp, log_f)
    assert moves[0] == (0, 2, 1)
    assert all(k != j and i < k for i, k, j in moves)


def test_candidates_never_mix_groups():
    rng = np.random.default_rng(0)
    resp = rng.dirichlet(np.ones(4), size=50)
    log_f = rng.normal(size=(50, 4))
    groups = np.array([0, 1, 1, 1])
    moves = split_merge_candidates(resp, log_f, groups)
    assert moves
    assert all(groups[i] == groups[k] == groups[j] for i, k, j in moves)


def test_a_single_expert_has_no_moves():
    assert split_merge_candidates(np.ones((5, 1)), np.zeros((5, 1))) == []


def test_move_merges_k_into_i_and_splits_j_by_side():
    resp = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    upper = np.array([[True] * 3, [False] * 3])
    new = split_merge_responsibilities(resp, upper, (0, 1, 2), eps=0.0)
    np.testing.assert_allclose(new, [[0.5, 0.0, 0.5], [0.2, 0.8, 0.0]])


def test_moved_responsibilities_are_smoothed_rows_summing_to_one():
    rng = np.random.default_rng(1)
    resp = rng.dirichlet(np.ones(3), size=20)
    upper = rng.random((20, 3)) > 0.5
    new = split_merge_responsibilities(resp, upper, (1, 2, 0))
    np.testing.assert_allclose(new.sum(axis=1), 1.0)
    assert new.min() > 0


# -- the starts and the moves on small data ---------------------------------------
CASES = {
    "gaussian": lambda: make_moe_regression(400, 3, 1, random_state=0),
    "poisson": lambda: make_moe_glm(400, 3, 1, family="poisson", random_state=0),
    "bernoulli": lambda: make_moe_glm(400, 3, 1, family="bernoulli", random_state=0),
    "multinomial": lambda: make_moe_classification(400, 3, 3, 1, random_state=0),
}


@pytest.mark.parametrize("family", list(CASES))
def test_starts_are_valid_parameters_of_every_family(family):
    X, y, truth = CASES[family]()
    spec, design, fit = _kmeans_fit(X, y, truth, 3)
    starts = split_merge_starts(fit.model, design, y, n_moves=4)
    assert len(starts) == 4
    for start in starts:
        truth.expert.check_params(start.expert, 3, design.expert.shape[1])
        truth.gate.check_params(start.gate, 3, design.gate.shape[1])
        log_lik = em(spec.with_params(start), design, y, max_iter=1).log_likelihood
        assert np.isfinite(log_lik)


@pytest.mark.parametrize("family", list(CASES))
def test_moves_never_lower_the_likelihood(family):
    X, y, truth = CASES[family]()
    spec, design, fit = _kmeans_fit(X, y, truth, 3)
    moved = split_merge(fit, design, y, run=_numpy_runner(spec, design, y))
    assert moved.log_likelihood >= fit.log_likelihood


def test_moves_are_deterministic():
    X, y, truth = CASES["poisson"]()
    spec, design, fit = _kmeans_fit(X, y, truth, 3)
    first, second = (
        split_merge(fit, design, y, run=_numpy_runner(spec, design, y))
        for _ in range(2)
    )
    assert first.log_likelihood == second.log_likelihood
    np.testing.assert_array_equal(
        first.model.params.expert.coef, second.model.params.expert.coef
    )


def test_params_from_responsibilities_fit_the_labels():
    X, y, truth = CASES["gaussian"]()
    design = truth.design(X)
    labels = np.argsort(X[:, 0]) % 3
    resp = np.eye(3)[labels]
    params = params_from_responsibilities(truth, design, y, resp)
    for i in range(3):
        rows = labels == i
        coef, *_ = np.linalg.lstsq(design.expert[rows], y[rows], rcond=None)
        np.testing.assert_allclose(params.expert.coef[i], coef, atol=1e-8)


@pytest.mark.parametrize(
    "gate_name", ["normalized_sigmoid_top2", "shared_softmax", "shared_top2_learned"]
)
def test_auto_with_moves_runs_for_shared_and_top_k_gates(gate_name):
    gate = GATES[gate_name]
    X, y, truth = make_moe_regression(300, 3, 1, random_state=2)
    spec = MixtureOfExperts(gate, truth.expert)
    m = 3 + getattr(gate, "n_shared", 0)
    design = spec.design(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, results = fit_restarts(
            spec, design, X, y, n_experts=m, n_init=2, rng=np.random.default_rng(0)
        )
    # the moves start from the best regular restart (a degenerate one never
    # wins, whatever its likelihood)
    regular = [r for r in results if not is_degenerate(r)] or results
    assert best.log_likelihood >= max(r.log_likelihood for r in regular)


# -- the default reaches the maximum where restarts alone do not --------------------
@pytest.mark.slow
def test_default_fit_reaches_the_maximum_on_the_bench_em_data():
    # bench_em.py's generator: d = 2, m = 4, softmax gate, linear Gaussian
    # experts. From k-means and screened random starts alone every restart
    # ends with two experts on one true line and one broad expert (about
    # 390 log-likelihood units below the fit from the true parameters).
    X, y, truth = make_moe_regression(
        n_samples=20_000, n_experts=4, n_features=2, random_state=0
    )
    design = truth.design(X)
    reference = polish_fit(em(truth, design, y), design, y).log_likelihood
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = GaussianMoE(4, random_state=0).fit(X, y)
    assert est.log_likelihood_ >= reference - 0.5


# -- moves at large n: sums over chunks ------------------------------------------
CHUNKED_EXPERTS = {
    "per_expert": GaussianExpert(),
    "shared": GaussianExpert(shared_variance=True),
    "known": GaussianExpert(variance=0.16),
    "quadratic": GaussianExpert(degree=2),
}


@pytest.mark.parametrize("expert_name", sorted(CHUNKED_EXPERTS))
@pytest.mark.parametrize("gate_name", ["softmax", "modified_tanh"])
def test_the_moves_from_sums_over_chunks_are_the_moves_from_whole_arrays(
    monkeypatch, gate_name, expert_name
):
    """From CHUNKED_ENTRIES on, the moves store no (n, m) array: same starts."""
    rng = np.random.default_rng(3)
    spec = MixtureOfExperts(GATES[gate_name], CHUNKED_EXPERTS[expert_name])
    X = rng.uniform(-1, 1, size=(2500, 1))
    y, _ = three_quadratic_truth().sample(X, rng)
    design = spec.design(X)
    start = initial_params(spec, design, X, y, 3, "kmeans", rng, var_floor=1e-3)
    fitted = em(spec.with_params(start), design, y, max_iter=5, var_floor=1e-3).model
    monkeypatch.setattr(sweep_em, "CHUNK_BYTES", 1)  # chunks of 1024 rows

    def starts(entries):
        monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", entries)
        found = split_merge_starts(fitted, design, y, n_moves=3, var_floor=1e-3)
        return [pack(spec.with_params(s), 1e-3) for s in found]

    whole, chunked = starts(10**9), starts(1)
    assert len(chunked) == len(whole) == 3
    for a, b in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_the_moves_at_large_n_store_nothing_of_size_n_times_m():
    """Peak allocations of the moves at n = 400,000, m = 4: below one (n, m) array."""
    rng = np.random.default_rng(0)
    n = 400_000
    truth = random_model(rng, 4, 2, gate=SoftmaxGate())
    X = rng.uniform(-1, 1, size=(n, 2))
    y, _ = truth.sample(X, rng)
    design = truth.design(X)
    tracemalloc.start()
    try:
        starts = split_merge_starts(truth, design, y, n_moves=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(starts) == 2
    assert peak < n * 4 * 8, peak
