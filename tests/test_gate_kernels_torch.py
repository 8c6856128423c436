"""The gates' batched kernels give the same numbers on numpy and on torch.

Each kernel of :mod:`moestat.kernels.gates` and each gate's batch hooks
(:class:`moestat.protocols.BatchedGate`), written once over the array API,
run on numpy arrays and on float64 torch tensors of the same batch and agree
to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moestat import (  # noqa: E402
    ModifiedSoftmaxGate,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SoftmaxGate,
)
from moestat.kernels.gates import (  # noqa: E402
    block_fisher_information,
    normalized_sigmoid_fisher_weights,
    observed_log_likelihood,
    q_objective,
    shared_expert_weights,
    shared_gate_log_weights,
    softmax_fisher_weights,
)

GATES = {
    "softmax": SoftmaxGate(),
    "modified_softmax": ModifiedSoftmaxGate(),
    "normalized_sigmoid": NormalizedSigmoidGate(),
    "normalized_sigmoid_top2": NormalizedSigmoidGate(top_k=2),
    "shared_softmax": SharedExpertsGate(SoftmaxGate(), 1),
    "shared_sigmoid_top2_learned": SharedExpertsGate(
        NormalizedSigmoidGate(top_k=2), 2, "learned"
    ),
}
B, N, M = 3, 80, 5


def on_torch(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def assert_same(numpy_value, torch_value, rtol=1e-12):
    torch_value = torch_value.numpy()
    assert np.array_equal(np.isneginf(numpy_value), np.isneginf(torch_value))
    finite = ~np.isneginf(numpy_value)
    np.testing.assert_allclose(
        torch_value[finite], numpy_value[finite], rtol=rtol, atol=rtol
    )


def batch(gate, rng):
    """Packed parameters, designs, weights, soft labels, log g and log f of B sets."""
    Z = np.stack([gate.design(rng.uniform(-1, 1, size=(N, 2))) for _ in range(B)])
    theta = np.stack(
        [gate.pack(gate.random_params(M, Z.shape[-1], 1.0, rng)) for _ in range(B)]
    )
    log_g = gate.batch_log_weights(theta, Z, M)
    log_f = np.log(rng.uniform(0.1, 1.0, size=log_g.shape))
    weight = np.ones((B, N))
    weight[1, N // 2 :] = 0.0  # a data set padded with rows of weight zero
    joint = log_g + log_f
    resp = np.exp(joint - np.max(joint, axis=-1, keepdims=True))
    resp *= weight[..., None] / resp.sum(axis=-1, keepdims=True)
    return theta, Z, weight, resp, log_g, log_f


def weights_and_labels(rng):
    scores = rng.normal(0.0, 3.0, size=(B, N, M))
    log_g = scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
    log_g[0, :, 2] = -np.inf  # an expert outside a selection
    resp = rng.dirichlet(np.ones(M), size=(B, N)) * rng.uniform(0.5, 1.0, (B, N, 1))
    resp[0, :, 2] = 0.0
    return scores, log_g, resp


def test_the_fisher_weights_agree(rng):
    scores, log_g, resp = weights_and_labels(rng)
    finite_log_g = np.where(np.isfinite(log_g), log_g, -50.0)
    for numpy_value, torch_value in zip(
        softmax_fisher_weights(resp, finite_log_g),
        softmax_fisher_weights(*on_torch(resp, finite_log_g)),
        strict=True,
    ):
        assert_same(numpy_value, torch_value)
    for numpy_value, torch_value in zip(
        normalized_sigmoid_fisher_weights(scores, resp, log_g),
        normalized_sigmoid_fisher_weights(*on_torch(scores, resp, log_g)),
        strict=True,
    ):
        assert_same(numpy_value, torch_value)


@pytest.mark.parametrize("rows", [slice(1, M), slice(0, M)])
def test_the_block_information_agrees(rng, rows):
    Z = np.concatenate([np.ones((B, N, 1)), rng.normal(size=(B, N, 2))], axis=-1)
    weights = [rng.normal(size=(B, N, M)) for _ in range(3)]
    numpy_values = block_fisher_information(Z, *weights, rows)
    torch_values = block_fisher_information(*on_torch(Z, *weights), rows)
    for numpy_value, torch_value in zip(numpy_values, torch_values, strict=True):
        assert_same(numpy_value, torch_value)


def test_the_objectives_agree(rng):
    _, log_g, resp = weights_and_labels(rng)
    log_f = np.log(rng.uniform(0.1, 1.0, size=log_g.shape))
    weight = rng.uniform(0.5, 2.0, size=(B, N))
    weight[2, :10] = 0.0
    background = rng.normal(size=(B, N))
    assert_same(q_objective(resp, log_g), q_objective(*on_torch(resp, log_g)))
    for extra in ([], [background]):
        assert_same(
            observed_log_likelihood(log_g, log_f, weight, *extra),
            observed_log_likelihood(*on_torch(log_g, log_f, weight, *extra)),
        )


@pytest.mark.parametrize("learned", [False, True])
def test_the_shared_experts_closed_form_agrees(rng, learned):
    shared_resp = rng.uniform(0.0, 0.5, size=(B, N, 2))
    n_samples = np.full(B, float(N))
    numpy_values = shared_expert_weights(shared_resp, n_samples, learned)
    torch_values = shared_expert_weights(*on_torch(shared_resp, n_samples), learned)
    for numpy_value, torch_value in zip(numpy_values, torch_values, strict=True):
        assert_same(numpy_value, torch_value)
    omega, share = numpy_values
    routed = rng.normal(size=(B, N, 3))
    args = (routed, np.log(omega), np.log(share), np.log1p(-share))
    assert_same(
        shared_gate_log_weights(*args), shared_gate_log_weights(*on_torch(*args))
    )


@pytest.mark.parametrize("name", GATES)
def test_a_gates_batch_hooks_agree_on_numpy_and_torch(rng, name):
    gate = GATES[name]
    theta, Z, weight, resp, log_g, log_f = batch(gate, rng)
    assert_same(log_g, gate.batch_log_weights(*on_torch(theta, Z), M))
    numpy_step = gate.batch_m_step(theta, Z, weight, resp, log_g, log_f, M)
    torch_step = gate.batch_m_step(*on_torch(theta, Z, weight, resp, log_g, log_f), M)
    # the information of an expert a top-K gate seldom selects is nearly
    # singular: the two linear solvers' round-off shows in its direction
    rtol = 1e-6 if "top2" in name else 1e-12
    for numpy_value, torch_value in zip(numpy_step, torch_step, strict=True):
        assert_same(numpy_value, torch_value, rtol)
    wide = 30.0 * theta
    assert_same(gate.batch_project(wide), gate.batch_project(*on_torch(wide)))
