"""MoELayer: the compute paths agree, gradients flow, shared experts add."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from moestat.routing._base import (  # noqa: E402
    Routing,
    as_groups,
    capacity_for,
    dense_from_slots,
    keep_within_capacity,
)
from moestat.routing.layer import (  # noqa: E402
    ExpertMLP,
    LinearExperts,
    MoELayer,
    SharedExperts,
    choose_impl,
    combine_einsum,
    combine_sorted,
)

D_MODEL, N_EXPERTS = 8, 6


def topk_routing(logits, k, capacity_factor=1.0, min_capacity=1):
    """Top-k softmax routing, renormalized over the k choices, with capacity."""
    _, n, m = logits.shape
    probs = logits.softmax(dim=-1)
    weight, idx = torch.topk(probs, k, dim=-1)
    weight = weight / weight.sum(dim=-1, keepdim=True)
    capacity = capacity_for(n, m, k, capacity_factor, min_capacity=min_capacity)
    keep = keep_within_capacity(idx, capacity, m)
    idx = torch.where(keep, idx, -1)
    weight = torch.where(keep, weight, torch.zeros_like(weight))
    dispatch, combine = dense_from_slots(idx, weight, m)
    return Routing(logits, probs, dispatch, combine, idx, weight, capacity)


def threshold_routing(logits):
    """A variable-K routing: every expert scoring above 1/m, weights p."""
    probs = logits.softmax(dim=-1)
    dispatch = probs > 1.0 / probs.shape[-1]
    combine = torch.where(dispatch, probs, torch.zeros_like(probs))
    return Routing(logits, probs, dispatch, combine)


class TinyRouter(nn.Module):
    """A float32 gate followed by one of the routings above."""

    def __init__(self, d, m, k=2, capacity_factor=1.0, variable=False, seed=0):
        super().__init__()
        self.n_experts = m
        self.gate = nn.Linear(d, m, dtype=torch.float32)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            self.gate.weight.copy_(torch.randn(m, d, generator=generator))
            self.gate.bias.zero_()
        self.k, self.capacity_factor, self.variable = k, capacity_factor, variable

    def forward(self, x):
        logits = self.gate(as_groups(x).float())
        if self.variable:
            return threshold_routing(logits)
        return topk_routing(logits, self.k, self.capacity_factor)


def make_experts(kind, dtype=torch.float32):
    if kind == "mlp":
        return ExpertMLP(N_EXPERTS, D_MODEL, 16, activation="gelu", random_state=1)
    return LinearExperts(N_EXPERTS, D_MODEL, 3, random_state=1)


def tokens(shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_impls_agree_for_fixed_k_with_drops(dtype, kind):
    experts = make_experts(kind).to(dtype)
    layer = MoELayer(TinyRouter(D_MODEL, N_EXPERTS, k=2, capacity_factor=0.5), experts)
    x = tokens((3, 40, D_MODEL), dtype)
    outputs = {impl: layer(x, impl=impl)[0] for impl in ("all", "sorted", "einsum")}
    routing = layer(x)[1]
    assert (routing.topk_idx < 0).any(), "the test needs dropped slots"
    assert ((routing.topk_idx < 0).all(dim=-1)).any(), "and a fully dropped token"
    for impl in ("sorted", "einsum"):
        assert outputs[impl].dtype == dtype
        torch.testing.assert_close(
            outputs[impl], outputs["all"], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_impls_agree_for_a_variable_k_routing(dtype):
    router = TinyRouter(D_MODEL, N_EXPERTS, variable=True)
    layer = MoELayer(router, make_experts("mlp").to(dtype))
    x = tokens((2, 30, D_MODEL), dtype)
    routing = layer(x)[1]
    per_token = routing.dispatch.sum(dim=-1)
    assert routing.topk_idx is None
    assert per_token.min() < per_token.max(), "the test needs several K"
    reference = layer(x, impl="all")[0]
    for impl in ("sorted", "einsum"):
        torch.testing.assert_close(
            layer(x, impl=impl)[0],
            reference,
            rtol=TOLERANCE[dtype],
            atol=TOLERANCE[dtype],
        )


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_grouped_methods_agree(kind):
    experts = LinearExperts(N_EXPERTS, D_MODEL, 4) if kind == "linear" else None
    experts = experts or make_experts("mlp")
    x = tokens((2, 50, D_MODEL))
    routing = TinyRouter(D_MODEL, N_EXPERTS, capacity_factor=1.0)(x)
    methods = ["loop", "padded"]
    if hasattr(torch, "_grouped_mm"):
        methods.append("grouped_mm")
    results = [combine_sorted(experts, x, routing, method=m) for m in methods]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-5, atol=1e-5)


def test_forward_grouped_matches_forward_expert():
    experts = make_experts("mlp")
    counts = [3, 0, 5, 1, 0, 2]
    x = tokens((sum(counts), D_MODEL))
    out = experts.forward_grouped(x, torch.tensor(counts), method="padded")
    start = 0
    for i, count in enumerate(counts):
        block = experts.forward_expert(i, x[start : start + count])
        torch.testing.assert_close(out[start : start + count], block)
        start += count


def test_forward_all_batched_and_expert_agree():
    for kind in ("mlp", "linear"):
        experts = make_experts(kind)
        x = tokens((5, D_MODEL))
        every = experts.forward_all(x)
        slabs = experts.forward_batched(x.expand(N_EXPERTS, -1, -1))
        for i in range(N_EXPERTS):
            torch.testing.assert_close(every[:, i], experts.forward_expert(i, x))
            torch.testing.assert_close(slabs[i], experts.forward_expert(i, x))


def test_sorted_gradients_reach_experts_and_router_logits():
    grads = {}
    for impl in ("all", "sorted"):
        router = TinyRouter(D_MODEL, N_EXPERTS, k=2, capacity_factor=0.8)
        layer = MoELayer(router, make_experts("mlp"), impl=impl)
        x = tokens((2, 30, D_MODEL)).requires_grad_(True)
        y, routing = layer(x)
        routing.logits.retain_grad()
        (y * tokens(y.shape, seed=3)).sum().backward()
        grads[impl] = {
            "w1": layer.experts.w1.grad,
            "b2": layer.experts.b2.grad,
            "gate": router.gate.weight.grad,
            "logits": routing.logits.grad,
            "x": x.grad,
        }
    for name, grad in grads["sorted"].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads["all"][name], rtol=1e-4, atol=1e-5)


def test_a_fully_dropped_token_outputs_zero_plus_shared():
    x = tokens((1, 4, D_MODEL))
    logits = tokens((1, 4, N_EXPERTS), seed=1)
    routing = topk_routing(logits, 2, capacity_factor=None)
    idx = routing.topk_idx.clone()
    weight = routing.topk_weight.clone()
    idx[0, 2] = -1
    weight[0, 2] = 0.0
    dispatch, combine = dense_from_slots(idx, weight, N_EXPERTS)
    dropped = Routing(logits, routing.probs, dispatch, combine, idx, weight, None)
    shared = SharedExperts(D_MODEL, 8, n_shared=2, random_state=4)
    experts = make_experts("mlp")
    for impl in ("all", "sorted", "einsum"):
        bare = MoELayer(lambda _x: dropped, experts, impl=impl)
        with_shared = MoELayer(lambda _x: dropped, experts, shared, impl=impl)
        assert torch.equal(bare(x)[0][0, 2], torch.zeros(D_MODEL))
        torch.testing.assert_close(with_shared(x)[0][0, 2], shared(x)[0, 2])


def test_shared_experts_are_added_unweighted():
    router = TinyRouter(D_MODEL, N_EXPERTS)
    experts = make_experts("mlp")
    shared = SharedExperts(D_MODEL, 8, n_shared=3, random_state=5)
    x = tokens((2, 10, D_MODEL))
    with_shared = MoELayer(router, experts, shared)(x)[0]
    without = MoELayer(router, experts)(x)[0]
    each = sum(shared.forward_expert(s, x) for s in range(3))
    torch.testing.assert_close(with_shared - without, each, rtol=1e-5, atol=1e-5)
    assert shared.n_shared == 3


def test_bf16_input_on_the_cpu_sorted_path():
    router = TinyRouter(D_MODEL, N_EXPERTS, k=2, capacity_factor=1.25)
    layer = MoELayer(router, make_experts("mlp"), impl="sorted")
    x = tokens((2, 64, D_MODEL), torch.bfloat16)
    y, routing = layer(x)
    assert y.dtype == torch.bfloat16
    assert routing.logits.dtype == torch.float32
    reference = MoELayer(router, make_experts("mlp").double(), impl="all")
    expected = reference(x.double())[0]
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2)


def test_einsum_reference_matches_sorted_at_n_4096():
    router = TinyRouter(D_MODEL, 8, k=2, capacity_factor=1.25, seed=2)
    experts = ExpertMLP(8, D_MODEL, 8, random_state=3)
    layer = MoELayer(router, experts)
    x = tokens((1, 4096, D_MODEL))
    torch.testing.assert_close(
        layer(x, impl="sorted")[0], layer(x, impl="einsum")[0], rtol=1e-5, atol=1e-5
    )


def test_two_dimensional_input_keeps_its_shape():
    layer = MoELayer(TinyRouter(D_MODEL, N_EXPERTS), make_experts("linear"))
    y, routing = layer(tokens((7, D_MODEL)))
    assert y.shape == (7, 3)
    assert routing.combine.shape == (1, 7, N_EXPERTS)


def test_auto_rule():
    assert choose_impl(LinearExperts(4, 3, 1), 10**6) == "all"
    assert choose_impl(ExpertMLP(64, 8, 2048), 16_384) == "sorted"
    assert choose_impl(ExpertMLP(64, 8, 2048), 8) == "all"
    layer = MoELayer(TinyRouter(D_MODEL, N_EXPERTS), make_experts("mlp"))
    assert layer.resolve_impl(tokens((2, 5, D_MODEL))) == "all"


def test_bad_arguments_are_refused():
    router = TinyRouter(D_MODEL, N_EXPERTS)
    with pytest.raises(ValueError, match="Unknown impl 'fast'"):
        MoELayer(router, make_experts("mlp"), impl="fast")
    layer = MoELayer(router, make_experts("mlp"))
    with pytest.raises(ValueError, match="Unknown impl"):
        layer(tokens((1, 3, D_MODEL)), impl="dense")
    with pytest.raises(ValueError, match="router routes to 6 experts"):
        MoELayer(router, ExpertMLP(5, D_MODEL, 4))
    with pytest.raises(ValueError, match="Unknown activation"):
        ExpertMLP(2, 4, 4, activation="swish")
    with pytest.raises(ValueError, match="Unknown method"):
        make_experts("mlp").forward_grouped(
            tokens((2, D_MODEL)), [2] + [0] * 5, method="fast"
        )
    with pytest.raises(ValueError, match="one entry per expert"):
        make_experts("mlp").forward_grouped(tokens((2, D_MODEL)), [2])
    with pytest.raises(ValueError, match="features"):
        make_experts("mlp").forward_all(tokens((2, 3)))


def test_einsum_refuses_a_load_above_capacity():
    x = tokens((1, 6, D_MODEL))
    routing = topk_routing(tokens((1, 6, N_EXPERTS), seed=2), 1, None)
    routing.capacity = 0
    with pytest.raises(ValueError, match="more than the routing's capacity"):
        combine_einsum(make_experts("mlp"), x, routing)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="no torch._grouped_mm")
def test_grouped_mm_refuses_misaligned_sizes():
    experts = LinearExperts(2, 3, 3)
    with pytest.raises(ValueError, match="multiples of 16 bytes"):
        experts.forward_grouped(tokens((4, 3)), [2, 2], method="grouped_mm")
