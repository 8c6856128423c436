"""The Fisher information and scoring direction of softmax-like blocks; pair products.

``fisher_information`` is ``sum_t (diag(d_t) - v_t v_t^T) kron z_t z_t^T``
restricted to the free rows, whichever of its two constructions runs; the
Khatri-Rao construction keeps memory O(n k p).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from moestat._math import (
    fisher_direction,
    fisher_information,
    khatri_rao_information,
    pair_products,
    pairwise_information,
    row_kron,
    solve_spd,
    unpack_symmetric,
    upper_triangle,
)

# (experts m, design columns p, free rows): softmax blocks fix row 0; blocks
# with every row free have v_t shrunk so that the information is definite.
CASES = [
    (2, 3, np.arange(1, 2)),
    (4, 1, np.arange(1, 4)),
    (4, 3, np.arange(4)),
    (5, 2, np.arange(1, 5)),
    (7, 3, np.arange(1, 7)),
    (9, 4, np.arange(9)),
    (12, 3, np.arange(1, 12)),
    (6, 8, np.arange(1, 6)),
]


def softmax_block(n, m, p, rows=None, seed=0):
    """Design ``[1, x]``, its pair products, and softmax gradient and weights.

    With every row free, ``v_t`` is shrunk by 0.8 (``diag(g) - g g^T`` is
    singular on all the rows).
    """
    rng = np.random.default_rng(seed)
    Z = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    scores = Z @ rng.normal(size=(p, m))
    g = np.exp(scores - scores.max(axis=1, keepdims=True))
    g /= g.sum(axis=1, keepdims=True)
    resp = rng.dirichlet(np.ones(m), size=n) * rng.uniform(0.5, 1.0, size=(n, 1))
    rho = resp.sum(axis=1)
    score_grad = resp - rho[:, None] * g
    shrink = 0.8 if rows is not None and len(rows) == m else 1.0
    vec = shrink * np.sqrt(rho)[:, None] * g
    return Z, pair_products(Z), score_grad, rho[:, None] * g, vec


def reference_information(Z, diag, vec, rows):
    """The information summed sample by sample and block by block."""
    n, p = Z.shape
    k = len(rows)
    information = np.zeros((k * p, k * p))
    for t in range(n):
        outer = np.outer(Z[t], Z[t])
        for a, ra in enumerate(rows):
            for b, rb in enumerate(rows):
                weight = (diag[t, ra] if a == b else 0.0) - vec[t, ra] * vec[t, rb]
                information[a * p : (a + 1) * p, b * p : (b + 1) * p] += weight * outer
    return information


def relative_difference(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize(("m", "p", "rows"), CASES)
@pytest.mark.parametrize(
    "build", [fisher_information, pairwise_information, khatri_rao_information]
)
def test_information_is_the_sum_over_samples(build, m, p, rows):
    Z, features, _, diag, vec = softmax_block(40, m, p, rows)
    reference = reference_information(Z, diag, vec, rows)
    assert relative_difference(build(Z, features, diag, vec, rows), reference) < 1e-13


@pytest.mark.parametrize("chunk_samples", [1, 7, 40, 1000])
def test_khatri_rao_information_does_not_depend_on_the_chunks(chunk_samples):
    m, p, rows = 6, 3, np.arange(1, 6)
    Z, features, _, diag, vec = softmax_block(40, m, p)
    chunk_bytes = 8 * len(rows) * p * chunk_samples
    chunked = khatri_rao_information(Z, features, diag, vec, rows, chunk_bytes)
    reference = reference_information(Z, diag, vec, rows)
    assert relative_difference(chunked, reference) < 1e-13


@pytest.mark.parametrize(("m", "p", "rows"), CASES)
def test_both_constructions_agree_on_large_samples(m, p, rows):
    Z, features, _, diag, vec = softmax_block(5000, m, p, rows)
    pairwise = pairwise_information(Z, features, diag, vec, rows)
    khatri_rao = khatri_rao_information(Z, features, diag, vec, rows)
    assert relative_difference(khatri_rao, pairwise) < 1e-12


@pytest.mark.parametrize(("m", "p", "rows"), CASES)
def test_direction_solves_the_scoring_equations(m, p, rows):
    Z, features, score_grad, diag, vec = softmax_block(5000, m, p, rows)
    direction, gain = fisher_direction(Z, features, score_grad, diag, vec, rows)
    grad = (score_grad[:, rows].T @ Z).ravel()
    pairwise = pairwise_information(Z, features, diag, vec, rows)
    expected = solve_spd(pairwise, grad, ridge=1e-9)
    fixed = np.setdiff1d(np.arange(m), rows)
    assert direction.shape == (m, p)
    assert np.all(direction[fixed] == 0)
    assert relative_difference(direction[rows].ravel(), expected) < 1e-12
    assert gain == pytest.approx(grad @ expected, rel=1e-12)


def test_gain_is_the_slope_of_the_softmax_log_likelihood_along_the_direction():
    m, p, rows = 20, 3, np.arange(1, 20)
    Z, features, score_grad, diag, _ = softmax_block(3000, m, p, seed=3)
    rng = np.random.default_rng(4)
    resp = score_grad + diag  # the weights that gave score_grad
    coef = np.vstack([np.zeros(p), rng.normal(size=(m - 1, p))])

    def log_likelihood(coef):
        scores = Z @ coef.T
        log_g = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        return float((resp * log_g).sum())

    scores = Z @ coef.T
    g = np.exp(scores - scores.max(axis=1, keepdims=True))
    g /= g.sum(axis=1, keepdims=True)
    rho = resp.sum(axis=1)
    weights = (resp - rho[:, None] * g, rho[:, None] * g, np.sqrt(rho)[:, None] * g)
    direction, gain = fisher_direction(Z, features, *weights, rows)
    assert gain > 0
    eps = 1e-6
    slope = (log_likelihood(coef + eps * direction) - log_likelihood(coef)) / eps
    assert slope == pytest.approx(gain, rel=1e-4)


def test_direction_for_100_experts_allocates_far_less_than_the_pair_weights():
    # the (k(k+1)/2, n) pair weights alone would take 808 MB here
    n, m, p = 20_000, 100, 3
    Z, features, score_grad, diag, vec = softmax_block(n, m, p)
    rows = np.arange(1, m)
    tracemalloc.start()
    try:
        fisher_direction(Z, features, score_grad, diag, vec, rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20


@pytest.mark.parametrize(("k", "p"), [(1, 1), (3, 2), (2, 5), (4, 4)])
def test_row_kron_is_the_kronecker_product_of_each_row(k, p):
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(6, k)), rng.normal(size=(6, p))
    expected = np.array([np.kron(a, b) for a, b in zip(A, B, strict=True)])
    np.testing.assert_array_equal(row_kron(A, B), expected)


def test_solve_spd_solves_an_ill_conditioned_nonsingular_system_exactly():
    """The stabilising ridge leaves no bias: the M-step is the maximiser.

    A quadratic design weighted onto three nearby points (an expert
    collapsing onto them) has a Gram matrix with condition number about
    1e8 after equilibration; the ridge alone moves the solution in its
    third digit, enough for EM to lose likelihood.
    """
    x = np.linspace(0.0, 1.0, 40)
    Phi = np.column_stack([np.ones_like(x), x, x**2])
    weight = np.full(40, 1e-7)
    weight[[20, 21, 22]] = 1.0
    gram = Phi.T @ (weight[:, None] * Phi)
    rhs = Phi.T @ (weight * np.sin(7 * x))
    exact = np.linalg.solve(gram, rhs)
    assert np.linalg.cond(gram) > 1e7
    assert relative_difference(solve_spd(gram, rhs, refine=True), exact) < 1e-8


def test_solve_spd_gives_a_zero_coefficient_for_an_empty_column():
    matrix = np.diag([2.0, 0.0, 3.0])
    solution = solve_spd(matrix, np.array([4.0, 0.0, 6.0]), refine=True)
    np.testing.assert_allclose(solution, [2.0, 0.0, 2.0], rtol=1e-12, atol=0)


# -- pair products of design columns ---------------------------------------------
def test_pair_products_are_the_upper_triangle_of_each_outer_product():
    A = np.random.default_rng(3).normal(size=(7, 4))
    rows, cols = upper_triangle(4)
    expected = np.stack([np.outer(a, a)[rows, cols] for a in A])
    np.testing.assert_array_equal(pair_products(A), expected)
    # and unpack_symmetric is their inverse
    np.testing.assert_array_equal(
        unpack_symmetric(pair_products(A), 4), A[:, :, None] * A[:, None, :]
    )


def test_pair_products_along_another_axis_and_into_a_buffer_are_the_same():
    A = np.random.default_rng(4).normal(size=(2, 5, 3))  # (batch, c, p)
    expected = pair_products(A)  # (2, 5, 6)
    transposed = np.ascontiguousarray(np.swapaxes(A, -1, -2))  # (2, 3, 5)
    along = pair_products(transposed, axis=-2)
    np.testing.assert_array_equal(np.swapaxes(along, -1, -2), expected)
    out = np.empty((2, 6, 5))
    assert pair_products(transposed, axis=1, out=out) is out
    np.testing.assert_array_equal(out, along)


def test_pair_products_of_tensors_are_those_of_numpy():
    torch = pytest.importorskip("torch")
    A = np.random.default_rng(5).normal(size=(6, 3))
    got = pair_products(torch.as_tensor(A.T), axis=-2)
    np.testing.assert_array_equal(got.numpy().T, pair_products(A))
