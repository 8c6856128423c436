"""The gate kernels on numpy: the softmax and normalized sigmoid gates' log weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.special import expit, log_softmax

from moestat import (
    GateParams,
    ModifiedSoftmaxGate,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SoftmaxGate,
)
from moestat._math import logsumexp_rows
from moestat.kernels import (
    affine_scores,
    log_sigmoid,
    log_sum_exp,
    normalized_sigmoid_log_weights,
    softmax_log_weights,
    top_k_mask,
)
from moestat.kernels.gates import block_fisher_information


def stable_top_k(scores, k):
    """Reference mask: the first k of a stable descending sort of each row."""
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def test_affine_scores_are_z_times_coef_transposed_with_batch_axes(rng):
    Z = rng.normal(size=(2, 3, 50, 4))
    coef = rng.normal(size=(3, 5, 4))  # broadcasts over the first batch axis
    np.testing.assert_allclose(
        affine_scores(Z, coef), Z @ np.swapaxes(coef, -1, -2), rtol=1e-14, atol=1e-14
    )


def test_affine_scores_and_gate_weights_are_stored_experts_major(rng):
    Z = np.column_stack([np.ones(40), rng.normal(size=(40, 2))])
    params = GateParams(rng.normal(size=(5, 3)))
    assert affine_scores(Z, params.coef).flags.f_contiguous
    for gate in (SoftmaxGate(), NormalizedSigmoidGate(), NormalizedSigmoidGate(3)):
        assert gate.log_weights(params, Z).flags.f_contiguous, gate.describe()


@pytest.mark.parametrize("order", ["C", "F"])
def test_log_sum_exp_is_the_e_steps_logsumexp_bit_for_bit(rng, order):
    a = np.asarray(rng.normal(0.0, 30.0, size=(300, 9)), order=order)
    a[::7, 3] = -np.inf  # experts outside a top-K selection
    assert np.array_equal(log_sum_exp(a)[:, 0], logsumexp_rows(a))


def test_log_sum_exp_does_not_overflow():
    a = np.array([[1000.0, 1000.0], [-1000.0, -np.inf]])
    np.testing.assert_allclose(
        log_sum_exp(a)[:, 0], [1000.0 + np.log(2.0), -1000.0], rtol=1e-15
    )


def test_softmax_log_weights_are_log_softmax_over_the_last_axis(rng):
    scores = rng.normal(0.0, 50.0, size=(2, 3, 40, 6))
    np.testing.assert_allclose(
        softmax_log_weights(scores), log_softmax(scores, axis=-1), atol=1e-12
    )


def test_log_sigmoid_is_finite_and_exact_far_in_the_tails():
    s = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    np.testing.assert_allclose(
        log_sigmoid(s), [-800.0, -40.0 - np.log1p(np.exp(-40.0)), -np.log(2.0),
                         -np.log1p(np.exp(-40.0)), 0.0],
        rtol=1e-15,
    )  # fmt: skip


def test_dense_normalized_sigmoid_weights_are_sigma_over_its_sum(rng):
    scores = rng.normal(0.0, 3.0, size=(2, 50, 5))
    sigma = expit(scores)
    expected = sigma / sigma.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(
        np.exp(normalized_sigmoid_log_weights(scores)), expected, rtol=1e-13
    )


def test_normalized_sigmoid_weights_become_the_softmax_where_sigma_underflows():
    # sigma(s) ~ exp(s) for very negative scores: the gate's softmax-like limit
    scores = np.array([[-900.0, -901.0, -903.0]])
    np.testing.assert_allclose(
        normalized_sigmoid_log_weights(scores), log_softmax(scores, axis=-1), rtol=1e-14
    )


@pytest.mark.parametrize("m", [5, 12, 16, 17, 40])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_mask_keeps_k_experts_and_breaks_ties_by_lower_index(rng, m, k):
    # integer scores: many ties, also at the k-th place (both code paths: m <= 16
    # compares columns, m > 16 sorts)
    scores = rng.integers(0, 4, size=(3, 200, m)).astype(float)
    mask = top_k_mask(scores, k)
    assert np.array_equal(mask, stable_top_k(scores, k))
    assert np.all(mask.sum(axis=-1) == k)


def test_top_k_mask_keeps_every_expert_when_k_is_at_least_m(rng):
    assert top_k_mask(rng.normal(size=(4, 3)), 3).all()


def test_top_k_weights_are_sigma_renormalized_over_the_selection(rng):
    scores = rng.normal(0.0, 2.0, size=(100, 6))
    mask = top_k_mask(scores, 2)
    weights = np.exp(normalized_sigmoid_log_weights(scores, mask))
    sigma = np.where(mask, expit(scores), 0.0)
    np.testing.assert_allclose(
        weights, sigma / sigma.sum(axis=1, keepdims=True), rtol=1e-13
    )
    assert np.all(weights[~mask] == 0.0)


def test_the_gates_log_weights_are_the_kernels_at_the_affine_scores(rng):
    Z = np.column_stack([np.ones(60), rng.normal(size=(60, 2))])
    params = GateParams(rng.normal(size=(4, 3)))
    scores = Z @ params.coef.T
    np.testing.assert_allclose(
        SoftmaxGate().log_weights(params, Z), softmax_log_weights(scores), atol=1e-14
    )
    np.testing.assert_allclose(
        NormalizedSigmoidGate(top_k=2).log_weights(params, Z),
        normalized_sigmoid_log_weights(scores, stable_top_k(scores, 2)),
        atol=1e-14,
    )


def test_importing_the_routers_without_torch_says_how_to_install_it():
    code = """
import sys
import importlib.abc
class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
sys.meta_path.insert(0, NoTorch())
import moestat.kernels  # needs no torch
try:
    import moestat.routing
except ImportError as error:
    assert "pip install 'moestat[torch]'" in str(error), error
else:
    raise AssertionError("moestat.routing imported without torch")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the EM sweep ----------------------------------------------------------------
def numpy_sweep(Z, Phi, y, weight, gate_coef, coef, var, chunk_size, **options):
    """:class:`NumpySweep` called as :func:`moestat.kernels.sweep.sweep` is."""
    from moestat.kernels.sweep_numpy import NumpySweep

    m = gate_coef.shape[0]
    return NumpySweep(Z, Phi, y, weight, m, chunk_size, **options)(gate_coef, coef, var)


def array_api_sweep(*args, **options):
    from moestat.kernels.sweep import sweep

    return sweep(*args, **options)


SWEEPS = {"array_api": array_api_sweep, "numpy": numpy_sweep}


@pytest.mark.parametrize("kernel", sorted(SWEEPS))
@pytest.mark.parametrize(("n_experts", "degree"), [(3, 2), (9, 2), (3, 3), (9, 3)])
@pytest.mark.parametrize("chunk_size", [7, 64, 500])
def test_sweep_sums_are_those_of_the_whole_arrays_for_any_chunk_size(
    rng, chunk_size, n_experts, degree, kernel
):
    """Chunk by chunk, the sums of a sweep equal the (n, m) arrays' sums.

    Narrow and wide expert designs (6 and 10 columns), few and many experts
    (the information's pair and Khatri-Rao forms), for the array-API
    kernel and the numpy one.
    """
    from moestat import GaussianExpert, GaussianExpertParams
    from moestat._math import fisher_information, pair_products

    n, m = 500, n_experts
    X = rng.uniform(-1, 1, size=(n, 2))
    Z = np.column_stack([np.ones(n), X])
    Phi = GaussianExpert(degree=degree).design(X)
    y = rng.normal(size=n)
    weight = rng.uniform(0.5, 2.0, size=n)
    gate_coef = np.vstack([np.zeros(3), rng.normal(size=(m - 1, 3))])
    coef, var = rng.normal(size=(m, Phi.shape[1])), rng.uniform(0.2, 1.0, size=m)
    stats = SWEEPS[kernel](Z, Phi, y, weight, gate_coef, coef, var, chunk_size)

    log_g = log_softmax(Z @ gate_coef.T, axis=1)
    log_f = GaussianExpert(degree=degree).log_density(
        GaussianExpertParams(coef, var), Phi, y
    )
    per_sample = logsumexp_rows(log_g + log_f)
    resp = np.exp(log_g + log_f - per_sample[:, None]) * weight[:, None]
    resid = y[:, None] - Phi @ coef.T
    g = np.exp(log_g)
    rho_g = resp.sum(axis=1)[:, None] * g
    rows = np.arange(1, m)
    root_rho_g = np.sqrt(resp.sum(axis=1))[:, None] * g
    information = fisher_information(Z, pair_products(Z), rho_g, root_rho_g, rows)
    expected = {
        "log_likelihood": weight @ per_sample,
        "expert_weight": resp.sum(axis=0),
        "expert_gram": np.einsum("ti,ta,tb->iab", resp, Phi, Phi),
        "expert_score": (resp * resid).T @ Phi,
        "expert_ss": (resp * resid**2).sum(axis=0),
        "gate_gradient": ((resp - rho_g)[:, 1:].T @ Z).ravel(),
        "gate_information": information,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(stats, name), value, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("gate", ["softmax", "normalized_sigmoid"])
@pytest.mark.parametrize("designs", ["one_array", "equal_copies", "no_intercept"])
@pytest.mark.parametrize("n_experts", [3, 9])
def test_the_numpy_sweep_equals_the_array_api_sweep_whatever_the_designs(
    rng, designs, n_experts, gate
):
    """One design array for gate and experts, equal copies, or no column of ones.

    The numpy sweep reads the total weight and the gate's sums of
    responsibilities times ``z`` off the Gram sums when the designs start
    with a column of ones; without one it sums them itself.
    """
    n, m = 400, n_experts
    X = rng.uniform(-1, 1, size=(n, 2))
    Z = np.column_stack([np.ones(n), X])
    if designs == "no_intercept":
        Z = np.column_stack([X, X[:, 0] * X[:, 1] + 0.5])
    Phi = Z if designs != "equal_copies" else Z.copy()
    y = rng.normal(size=n)
    weight = rng.uniform(0.5, 2.0, size=n)
    gate_coef = rng.normal(size=(m, 3))
    if gate == "softmax":
        gate_coef[0] = 0.0
    coef, var = rng.normal(size=(m, 3)), rng.uniform(0.2, 1.0, size=m)
    args = (Z, Phi, y, weight, gate_coef, coef, var, 64)
    ours = numpy_sweep(*args, gate=gate)
    reference = array_api_sweep(*args, gate=gate)
    for name in ours.__dataclass_fields__:
        np.testing.assert_allclose(
            getattr(ours, name), getattr(reference, name), rtol=1e-10, atol=1e-9
        )


@pytest.mark.parametrize("kernel", sorted(SWEEPS))
@pytest.mark.parametrize(("n_experts", "degree"), [(3, 2), (9, 2), (3, 3), (9, 3)])
@pytest.mark.parametrize("chunk_size", [7, 500])
def test_a_sigmoid_gates_sweep_sums_are_those_of_the_whole_arrays(
    rng, chunk_size, n_experts, degree, kernel
):
    """The dense normalized sigmoid gate: every row free, its Fisher weights.

    The gradient and information over all ``m`` rows from
    :func:`~moestat.kernels.gates.normalized_sigmoid_fisher_weights`, in
    the pair and the Khatri-Rao forms.
    """
    from moestat import GaussianExpert, GaussianExpertParams
    from moestat._math import fisher_information, pair_products
    from moestat.gates._base import GateParams
    from moestat.kernels.gates import normalized_sigmoid_fisher_weights

    n, m = 500, n_experts
    X = rng.uniform(-1, 1, size=(n, 2))
    Z = np.column_stack([np.ones(n), X])
    Phi = GaussianExpert(degree=degree).design(X)
    y = rng.normal(size=n)
    weight = rng.uniform(0.5, 2.0, size=n)
    gate_coef = 2.0 * rng.normal(size=(m, 3))
    coef, var = rng.normal(size=(m, Phi.shape[1])), rng.uniform(0.2, 1.0, size=m)
    stats = SWEEPS[kernel](
        Z, Phi, y, weight, gate_coef, coef, var, chunk_size, gate="normalized_sigmoid"
    )

    log_g = NormalizedSigmoidGate(bound=None).log_weights(GateParams(gate_coef), Z)
    log_f = GaussianExpert(degree=degree).log_density(
        GaussianExpertParams(coef, var), Phi, y
    )
    per_sample = logsumexp_rows(log_g + log_f)
    resp = np.exp(log_g + log_f - per_sample[:, None]) * weight[:, None]
    resid = y[:, None] - Phi @ coef.T
    grad, diag, vec = normalized_sigmoid_fisher_weights(Z @ gate_coef.T, resp, log_g)
    information = fisher_information(Z, pair_products(Z), diag, vec, np.arange(m))
    expected = {
        "log_likelihood": weight @ per_sample,
        "expert_weight": resp.sum(axis=0),
        "expert_gram": np.einsum("ti,ta,tb->iab", resp, Phi, Phi),
        "expert_score": (resp * resid).T @ Phi,
        "expert_ss": (resp * resid**2).sum(axis=0),
        "gate_gradient": (grad.T @ Z).ravel(),
        "gate_information": information,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(stats, name), value, rtol=1e-10, atol=1e-9)


def test_the_chunked_em_step_of_a_batch_is_the_step_of_each_data_set_in_its_box(rng):
    """:func:`em_proposal` on stacked data sets is its step on each one.

    The sigmoid gate starts with coefficients at its box; those the
    gradient pushes out of it are held (zero direction).
    """
    from moestat.kernels.sweep import em_proposal, sweep

    n, m, bound, kind = 300, 3, 0.5, "normalized_sigmoid"
    sets = []
    for _ in range(2):
        X = rng.uniform(-1, 1, size=(n, 1))
        Z = np.column_stack([np.ones(n), X])
        y = np.where(X[:, 0] > 0, 2.0, -1.0) * X[:, 0] + 0.1 * rng.normal(size=n)
        gate_coef = np.clip(2.0 * rng.normal(size=(m, 2)), -bound, bound)
        sets.append((Z, y, gate_coef, rng.normal(size=(m, 2)), rng.uniform(0.1, 1, m)))
    Z, y, gate_coef, coef, var = (np.stack(parts) for parts in zip(*sets, strict=True))
    stats = sweep(Z, Z, y, None, gate_coef, coef, var, 128, gate=kind)
    theta = gate_coef.reshape(2, -1)
    new_coef, new_var, direction = em_proposal(
        stats, coef, var, theta, 0.0, float(n), "per_expert", bound
    )
    for b in range(2):
        one = sweep(
            Z[b], Z[b], y[b], None, gate_coef[b], coef[b], var[b], 128, gate=kind
        )
        expected = em_proposal(
            one, coef[b], var[b], theta[b], 0.0, float(n), "per_expert", bound
        )
        for got, want in zip((new_coef, new_var, direction), expected, strict=True):
            np.testing.assert_allclose(got[b], want, rtol=1e-10, atol=1e-12)
    held = (np.abs(theta) >= bound) & (stats.gate_gradient * theta > 0)
    assert held.any() and (~held).any()
    assert np.all(direction[held] == 0) and np.all(direction[~held] != 0)


def test_a_softmax_sweep_without_a_gate_name_is_the_softmax_sweep(rng):
    """``gate="softmax"`` is the default of both kernels: the same sums."""
    args = (*sweep_case(rng, weighted=True), 64)
    for kernel in SWEEPS.values():
        assert_same_statistics(kernel(*args, gate="softmax"), kernel(*args), rtol=0)


def test_sweeps_refuse_gates_they_do_not_serve():
    from moestat.kernels.sweep import free_rows

    with pytest.raises(ValueError, match="gate must be one of"):
        free_rows(4, "normalized_sigmoid_top2")


# -- the gates' M-step kernels, one data set and a batch ---------------------------
BATCHED_GATES = {
    "softmax": SoftmaxGate(),
    "modified_softmax": ModifiedSoftmaxGate(),
    "normalized_sigmoid": NormalizedSigmoidGate(),
    "normalized_sigmoid_top2": NormalizedSigmoidGate(top_k=2),
    "shared_softmax": SharedExpertsGate(SoftmaxGate(), 1),
    "shared_sigmoid_top2_learned": SharedExpertsGate(
        NormalizedSigmoidGate(top_k=2), 2, "learned"
    ),
}


def gate_problem(gate, rng, n=120, m=5):
    """Design, parameters, log weights, experts' log densities and soft labels."""
    Z = gate.design(rng.uniform(-1, 1, size=(n, 2)))
    params = gate.random_params(m, Z.shape[1], 1.0, rng)
    log_g = np.asarray(gate.log_weights(params, Z))
    log_f = np.log(rng.uniform(0.1, 1.0, size=log_g.shape))
    joint = log_g + log_f
    resp = np.exp(joint - logsumexp_rows(joint)[:, None])
    return Z, params, log_g, log_f, resp


@pytest.mark.parametrize("rows", [slice(1, 4), slice(0, 4)])
def test_block_fisher_information_is_the_one_data_set_information_per_batch_row(
    rng, rows
):
    from moestat._math import fisher_information, pair_products

    Z = np.concatenate([np.ones((3, 60, 1)), rng.normal(size=(3, 60, 2))], axis=-1)
    score_grad, diag, vec = (rng.normal(size=(3, 60, 4)) for _ in range(3))
    grad, information = block_fisher_information(Z, score_grad, diag, vec, rows)
    free = np.arange(4)[rows]
    for b in range(3):
        expected = fisher_information(Z[b], pair_products(Z[b]), diag[b], vec[b], free)
        np.testing.assert_allclose(information[b], expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            grad[b], (score_grad[b][:, free].T @ Z[b]).ravel(), rtol=1e-12
        )


@pytest.mark.parametrize("name", BATCHED_GATES)
def test_a_gates_batch_m_step_is_its_m_step_on_every_data_set(rng, name):
    """Three data sets of one batch, one padded with rows of weight zero."""
    gate = BATCHED_GATES[name]
    # the information of an expert a top-K gate seldom selects is nearly
    # singular: its direction carries the round-off of the two ways of summing
    rtol = 1e-6 if "top2" in name else 1e-10
    problems = [gate_problem(gate, rng, n) for n in (120, 90, 120)]
    n_max, m = 120, 5
    thetas, Zs, weights, resps, log_gs, log_fs = [], [], [], [], [], []
    for Z, params, log_g, log_f, resp in problems:
        pad = n_max - Z.shape[0]
        thetas.append(gate.pack(params))
        Zs.append(np.pad(Z, ((0, pad), (0, 0))))
        weights.append(np.pad(np.ones(Z.shape[0]), (0, pad)))
        resps.append(np.pad(resp, ((0, pad), (0, 0))))
        log_gs.append(np.pad(log_g, ((0, pad), (0, 0))))
        log_fs.append(np.pad(log_f, ((0, pad), (0, 0))))
    Zs = np.stack(Zs)
    np.testing.assert_allclose(
        gate.batch_log_weights(np.stack(thetas), Zs, m)[1, :90], problems[1][2]
    )
    theta, log_g = gate.batch_m_step(
        np.stack(thetas),
        Zs,
        np.stack(weights),
        np.stack(resps),
        np.stack(log_gs),
        np.stack(log_fs),
        m,
    )
    for b, (Z, params, start_log_g, log_f, resp) in enumerate(problems):
        new, new_log_g = gate.m_step(params, Z, resp, start_log_g, None, log_f)
        n = Z.shape[0]
        np.testing.assert_allclose(theta[b], gate.pack(new), rtol=rtol, atol=1e-12)
        finite = np.isfinite(new_log_g)
        assert np.array_equal(np.isfinite(log_g[b, :n]), finite)
        np.testing.assert_allclose(
            log_g[b, :n][finite], new_log_g[finite], rtol=rtol, atol=1e-12
        )


def test_the_batch_hooks_are_refused_with_a_ridge_and_the_box_clips(rng):
    with pytest.raises(ValueError, match="alpha > 0"):
        SoftmaxGate(alpha=1.0).batch_m_step(
            np.zeros((1, 2)),
            np.zeros((1, 3, 2)),
            np.ones((1, 3)),
            *[np.zeros((1, 3, 2))] * 3,
            2,
        )
    assert not SoftmaxGate(alpha=1.0).runs_batched
    clipped = NormalizedSigmoidGate(bound=2.0).batch_project(
        np.array([[-3.0, 1.0, 5.0]])
    )
    assert clipped.tolist() == [[-2.0, 1.0, 2.0]]
    shared = SharedExpertsGate(NormalizedSigmoidGate(bound=2.0), 2, "learned")
    theta = np.array([[-3.0, 1.0, 5.0, 9.0, -9.0]])  # routed (3), omega (1), lambda
    assert shared.batch_project(theta).tolist() == [[-2.0, 1.0, 2.0, 9.0, -9.0]]


def sweep_case(rng, n=600, m=4, shared=True, weighted=False):
    """Designs, responses and parameters of a small sweep."""
    from moestat import GaussianExpert

    X = rng.uniform(-1, 1, size=(n, 2))
    Z = np.column_stack([np.ones(n), X])
    Phi = Z if shared else GaussianExpert(degree=2).design(X)
    y = rng.normal(size=n)
    weight = rng.uniform(0.5, 2.0, size=n) if weighted else None
    gate_coef = np.vstack([np.zeros(3), rng.normal(size=(m - 1, 3))])
    coef, var = rng.normal(size=(m, Phi.shape[1])), rng.uniform(0.2, 1.0, size=m)
    return Z, Phi, y, weight, gate_coef, coef, var


def assert_same_statistics(actual, expected, rtol):
    for name, value in vars(expected).items():
        scale = np.max(np.abs(value))
        np.testing.assert_allclose(
            getattr(actual, name), value, rtol=rtol, atol=rtol * scale, err_msg=name
        )


@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_sweep_keeps_rows_whose_joint_density_underflows(rng, weighted):
    """Residuals of 1000 against variances of 1e-3: the joint is rescaled, not lost."""
    Z, Phi, y, weight, gate_coef, coef, _ = sweep_case(rng, weighted=weighted)
    y[::7] += 1e3
    gate_coef *= 30.0
    var = np.array([1e-3, 0.1, 0.5, 2.0])
    args = (Z, Phi, y, weight, gate_coef, coef, var, 64)
    stats = numpy_sweep(*args)
    assert np.isfinite(stats.log_likelihood)
    assert_same_statistics(stats, array_api_sweep(*args), rtol=1e-10)


def sigmoid_sweep_case(rng, **options):
    """:func:`sweep_case` with a sigmoid gate's coefficients: every row free."""
    Z, Phi, y, weight, gate_coef, coef, var = sweep_case(rng, **options)
    gate_coef = 2.0 * rng.normal(size=gate_coef.shape)
    return Z, Phi, y, weight, gate_coef, coef, var


@pytest.mark.parametrize("m", [4, 9])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_sweep_of_a_sigmoid_gate_is_the_array_api_kernels(
    rng, m, shared, weighted
):
    """NumpySweep = the array-API reference to 1e-10, sigmoid gate."""
    args = (*sigmoid_sweep_case(rng, m=m, shared=shared, weighted=weighted), 64)
    options = {"gate": "normalized_sigmoid"}
    assert_same_statistics(
        numpy_sweep(*args, **options), array_api_sweep(*args, **options), rtol=1e-10
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_sweep_of_a_sigmoid_gate_keeps_rows_whose_joint_underflows(rng, weighted):
    """Scores of +-100 and residuals of 1000: both kernels' sums, finite."""
    Z, Phi, y, weight, gate_coef, coef, _ = sigmoid_sweep_case(rng, weighted=weighted)
    y[::7] += 1e3
    gate_coef *= 30.0
    var = np.array([1e-3, 0.1, 0.5, 2.0])
    args = (Z, Phi, y, weight, gate_coef, coef, var, 64)
    options = {"gate": "normalized_sigmoid"}
    stats = numpy_sweep(*args, **options)
    assert np.isfinite(stats.log_likelihood)
    assert np.all(np.isfinite(stats.gate_information))
    assert_same_statistics(stats, array_api_sweep(*args, **options), rtol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_sweep_of_a_sigmoid_gate_in_float32_agrees_with_float64(rng, weighted):
    args = (*sigmoid_sweep_case(rng, m=9, weighted=weighted), 128)
    options = {"gate": "normalized_sigmoid"}
    single = numpy_sweep(*args, dtype=np.float32, **options)
    assert_same_statistics(single, numpy_sweep(*args, **options), rtol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_sweep_in_float32_agrees_with_float64_to_float32_round_off(
    rng, shared, weighted
):
    args = (*sweep_case(rng, m=9, shared=shared, weighted=weighted), 128)
    single = numpy_sweep(*args, dtype=np.float32)
    assert single.gate_information.dtype == np.float64
    assert_same_statistics(single, numpy_sweep(*args), rtol=1e-5)


@pytest.mark.parametrize("n_experts", [4, 9])
def test_a_strided_information_is_the_sum_over_every_stride_th_row_scaled(
    rng, n_experts
):
    """Stride 3 (chunks of 60 rows): the information of rows 0, 3, 6, ... times n / n_3.

    Everything else is summed over every row.
    """
    Z, Phi, y, weight, gate_coef, coef, var = sweep_case(rng, m=n_experts)
    strided = numpy_sweep(Z, Phi, y, weight, gate_coef, coef, var, 60, stride=3)
    every_row = numpy_sweep(Z, Phi, y, weight, gate_coef, coef, var, 60)
    Z3 = Z[::3]
    thinned = numpy_sweep(Z3, Z3, y[::3], None, gate_coef, coef, var, 60)
    np.testing.assert_allclose(
        strided.gate_information, 3 * thinned.gate_information, rtol=1e-12
    )
    for name in ("log_likelihood", "expert_gram", "gate_gradient"):
        np.testing.assert_array_equal(getattr(strided, name), getattr(every_row, name))


def test_the_information_takes_every_row_below_twice_information_rows():
    from moestat.kernels.sweep_numpy import INFORMATION_ROWS, information_stride

    assert information_stride(2 * INFORMATION_ROWS - 1, 63, 3) == 1
    assert information_stride(10**7, 3, 3) == 1
    assert information_stride(10**7, 31, 3) > 1
