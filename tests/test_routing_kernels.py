"""The routers and the statistical gates compute the same weights (float64).

One kernel (:mod:`moestat.kernels`) maps scores to gate weights for numpy
and torch; the routers' weights equal the gates' at the same coefficients,
and autograd differentiates the kernels under torch.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moestat import GateParams, NormalizedSigmoidGate, SoftmaxGate  # noqa: E402
from moestat.kernels import (  # noqa: E402
    affine_scores,
    log_sum_exp,
    normalized_sigmoid_log_weights,
    softmax_log_weights,
    top_k_mask,
)
from moestat.routing import NormalizedSigmoidRouter, TopKSoftmaxRouter  # noqa: E402

D, M = 3, 5


def gate_coef(router):
    """The gate's ``coef`` rows ``(beta_0i, beta_1i)``: the router's bias, weight."""
    weight = router.gate.weight.detach().numpy()
    bias = router.gate.bias.detach().numpy()
    return np.column_stack([bias, weight])


def routed(router, X):
    """The float64 router's routing of the tokens ``X`` (n, d), one group."""
    with torch.no_grad():
        return router.double()(torch.as_tensor(X))


@pytest.fixture
def tokens(rng):
    return rng.normal(0.0, 1.5, size=(200, D))


@pytest.mark.parametrize("top_k", [M, 2, 3], ids=["dense", "top2", "top3"])
def test_normalized_sigmoid_router_weights_are_the_gates(tokens, top_k):
    torch.manual_seed(0)
    router = NormalizedSigmoidRouter(D, M, top_k=top_k, bias=True)
    routing = routed(router, tokens)
    gate = NormalizedSigmoidGate(top_k=None if top_k == M else top_k)
    expected = np.exp(
        gate.log_weights(GateParams(gate_coef(router)), gate.design(tokens))
    )
    assert routing.combine.dtype == torch.float64
    np.testing.assert_allclose(routing.combine[0].numpy(), expected, rtol=0, atol=1e-12)


def test_top_k_softmax_router_probabilities_are_the_softmax_gates(tokens):
    torch.manual_seed(1)
    router = TopKSoftmaxRouter(D, M, k=2, bias=True, capacity_factor=None)
    routing = routed(router, tokens)
    coef = gate_coef(router)
    params = GateParams(coef - coef[0])  # the softmax gate's reference expert
    expected = np.exp(SoftmaxGate().log_weights(params, SoftmaxGate().design(tokens)))
    np.testing.assert_allclose(routing.probs[0].numpy(), expected, rtol=0, atol=1e-12)


def test_routers_compute_in_float32_as_built_and_float64_converted(tokens):
    router = NormalizedSigmoidRouter(D, M, top_k=2)
    x = torch.as_tensor(tokens)  # float64 input
    assert router.dtype == torch.float32
    assert router(x).combine.dtype == torch.float32
    assert router.double().dtype == torch.float64
    assert router(x).combine.dtype == torch.float64


@pytest.fixture
def batched_scores(rng):
    return rng.normal(0.0, 4.0, size=(2, 3, 40, 7))


@pytest.mark.parametrize(
    "kernel",
    [
        softmax_log_weights,
        log_sum_exp,
        normalized_sigmoid_log_weights,
        lambda s: normalized_sigmoid_log_weights(s, top_k_mask(s, 3)),
    ],
    ids=["softmax", "log_sum_exp", "sigmoid_dense", "sigmoid_top3"],
)
def test_kernels_agree_on_numpy_and_torch(batched_scores, kernel):
    on_numpy = kernel(batched_scores)
    on_torch = kernel(torch.as_tensor(batched_scores))
    assert isinstance(on_torch, torch.Tensor)
    np.testing.assert_allclose(on_torch.numpy(), on_numpy, rtol=0, atol=1e-14)


@pytest.mark.parametrize("m", [7, 20])
def test_top_k_mask_agrees_on_numpy_and_torch_with_ties(rng, m):
    scores = rng.integers(0, 3, size=(2, 60, m)).astype(float)
    on_torch = top_k_mask(torch.as_tensor(scores), 3)
    assert np.array_equal(on_torch.numpy(), top_k_mask(scores, 3))


def test_affine_scores_agree_on_numpy_and_torch(rng):
    Z, coef = rng.normal(size=(2, 30, 4)), rng.normal(size=(2, 6, 4))
    on_torch = affine_scores(torch.as_tensor(Z), torch.as_tensor(coef))
    np.testing.assert_allclose(
        on_torch.numpy(), affine_scores(Z, coef), rtol=0, atol=1e-14
    )


def test_kernel_gradients_match_finite_differences(rng):
    scores = torch.tensor(rng.normal(size=(2, 4, 5)), requires_grad=True)
    selected = top_k_mask(scores.detach(), 2)
    Z = torch.tensor(rng.normal(size=(6, 3)), requires_grad=True)
    coef = torch.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(softmax_log_weights, (scores,))
    assert torch.autograd.gradcheck(normalized_sigmoid_log_weights, (scores,))
    # the selected experts' weights (the others are the constant 0)
    assert torch.autograd.gradcheck(
        lambda s: normalized_sigmoid_log_weights(s, selected).exp(), (scores,)
    )
    assert torch.autograd.gradcheck(affine_scores, (Z, coef))


@pytest.mark.parametrize(
    "router",
    [
        NormalizedSigmoidRouter(D, M, top_k=2),
        NormalizedSigmoidRouter(D, M, top_k=M),
        TopKSoftmaxRouter(D, M, k=2, capacity_factor=None),
    ],
    ids=["sigmoid_top2", "sigmoid_dense", "softmax_top2"],
)
def test_gradients_flow_through_the_routers_weights(rng, router):
    router = router.double()
    logits = torch.tensor(rng.normal(size=(1, 6, M)), requires_grad=True)

    def weights(z):
        routing = router.route(z)
        return routing.combine, routing.probs

    assert torch.autograd.gradcheck(weights, (logits,))
