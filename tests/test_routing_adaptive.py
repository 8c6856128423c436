"""Variable-K and biased routers: dense-to-sparse, Tsallis hybrid, sigmoid."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from moestat.routing._base import Routing  # noqa: E402
from moestat.routing.dense_to_sparse import (  # noqa: E402
    DenseToSparseRouter,
    spawn_experts,
    temperature_schedule,
)
from moestat.routing.sigmoid import NormalizedSigmoidRouter  # noqa: E402
from moestat.routing.tsallis import (  # noqa: E402
    TsallisHybridRouter,
    tsallis_entropy,
)

D, M = 6, 8

ROUTERS = {
    "dts": lambda **kw: DenseToSparseRouter(D, M, **kw),
    "dts_gumbel_gates": lambda **kw: DenseToSparseRouter(
        D, M, use_gumbel_gates=True, **kw
    ),
    "dts_batch_k": lambda **kw: DenseToSparseRouter(D, M, mode="batch_k", **kw),
    "tsallis": lambda **kw: TsallisHybridRouter(D, M, **kw),
    "sigmoid": lambda **kw: NormalizedSigmoidRouter(D, M, top_k=2, **kw),
    "sigmoid_groups": lambda **kw: NormalizedSigmoidRouter(
        D, M, top_k=3, n_groups=4, topk_groups=2, **kw
    ),
    "softmax": lambda **kw: NormalizedSigmoidRouter(
        D, M, top_k=2, score="softmax", **kw
    ),
    "sigmoid_capacity": lambda **kw: NormalizedSigmoidRouter(
        D, M, top_k=2, capacity_factor=1.0, min_capacity=1, **kw
    ),
}


def make_router(name, seed=0, **kwargs):
    router = ROUTERS[name](random_state=seed, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a seeded gate, without torch's global RNG
        router.gate.weight.copy_(torch.randn(M, D, generator=gen))
    return router


def inputs(seed, shape=(3, 20, D), scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=gen)


def logits_from(seed, shape=(2, 16, M), scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=gen)


# --------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", sorted(ROUTERS))
@pytest.mark.parametrize("training", [True, False])
def test_routing_invariants(name, training, seed):
    router = make_router(name, seed).train(training)
    routing = router(inputs(seed, scale=3.0))
    assert isinstance(routing, Routing)
    batch, n, m = 3, 20, M
    for field in ("logits", "probs", "combine"):
        tensor = getattr(routing, field)
        assert tensor.shape == (batch, n, m)
        assert tensor.dtype == torch.float32
    assert routing.dispatch.dtype == torch.bool
    assert (routing.combine >= 0).all()
    assert (routing.combine[~routing.dispatch] == 0).all()
    assert set(routing.aux) <= set(routing.loss_weights)
    for value in routing.aux.values():
        assert value.dim() == 0 and torch.isfinite(value)
    counts = routing.stats["tokens_per_expert"]
    assert counts.shape == (batch, m)
    assert torch.equal(counts, routing.dispatch.sum(dim=1))
    if routing.topk_idx is None:
        assert name.startswith(("dts", "tsallis"))
        assert routing.capacity is None
        # every token goes somewhere (variable K, dropless)
        assert (routing.dispatch.sum(-1) >= 1).all()
    else:
        assert routing.topk_idx.shape == (batch, n, router.top_k)
        dropped = routing.topk_idx < 0
        assert (routing.topk_weight[dropped] == 0).all()


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_two_dimensional_logits_are_one_group(name, seed):
    router = make_router(name, seed)
    z = logits_from(seed, shape=(10, M))
    routing = router.route(z.double())
    assert routing.logits.shape == (1, 10, M)
    assert routing.logits.dtype == torch.float32
    with pytest.raises(ValueError, match="logits must have shape"):
        router.route(torch.zeros(10, M + 1))


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_gradients_reach_the_gate_through_combine_and_each_aux(name, seed):
    router = make_router(name, seed)
    x = inputs(seed)
    probe = torch.rand(3, 20, M, generator=torch.Generator().manual_seed(seed + 1))
    routing = router(x)
    (routing.combine * probe).sum().backward()
    grad = router.gate.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    for aux in routing.aux:
        router.zero_grad()
        router(x).aux[aux].backward()
        grad = router.gate.weight.grad
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0, aux


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_total_aux_weights_the_losses(name, seed):
    routing = make_router(name, seed)(inputs(seed))
    expected = sum(routing.loss_weights[k] * v for k, v in routing.aux.items())
    assert torch.allclose(routing.total_aux(), torch.as_tensor(expected))


@pytest.mark.parametrize("name", ["dts", "dts_batch_k", "sigmoid_capacity"])
def test_same_random_state_repeats(name, seed):
    kwargs = {"priority": "random"} if name == "sigmoid_capacity" else {}
    x = inputs(seed)
    first = make_router(name, seed, **kwargs)
    second = make_router(name, seed, **kwargs)
    a, b = first(x), second(x)
    assert torch.equal(a.dispatch, b.dispatch)
    assert torch.equal(a.combine, b.combine)
    # the generator advances: the next batch draws fresh noise
    assert torch.equal(first(x).dispatch, second(x).dispatch)


def test_dts_seeds_give_different_noise(seed):
    x = inputs(seed, shape=(1, 200, D))
    router_a = make_router("dts", seed)
    router_b = make_router("dts", seed)
    router_b.random_state = seed + 1
    assert not torch.equal(router_a(x).dispatch, router_b(x).dispatch)


# ----------------------------------------------------------- dense to sparse


def test_schedule_endpoints_and_monotone():
    for kind in ("exponential", "linear"):
        taus = [
            temperature_schedule(s, 2.0, 0.25, decay_steps=50, kind=kind)
            for s in range(0, 120)
        ]
        assert taus[0] == 2.0
        assert taus[50] == pytest.approx(0.25)
        assert all(t == 0.25 for t in taus[51:])
        assert all(a >= b for a, b in zip(taus, taus[1:], strict=False))
        assert all(isinstance(t, float) for t in taus)
    assert temperature_schedule(25, 1.0, 0.25, 50) == pytest.approx(0.5)
    assert temperature_schedule(25, 1.0, 0.25, 50, "linear") == pytest.approx(0.625)


def test_router_temperature_follows_its_step():
    router = DenseToSparseRouter(D, M, tau_max=1.0, tau_min=0.5, decay_steps=10)
    assert router.temperature == 1.0
    router.advance(5)
    assert router.current_step == 5
    assert router.temperature == pytest.approx(math.sqrt(0.5))
    router.set_step(100)
    assert router.temperature == 0.5
    assert isinstance(router.temperature, float)
    assert all("tau" not in name for name, _ in router.named_parameters())
    routing = router.route(torch.zeros(4, M))
    assert routing.stats["temperature"].item() == 0.5


def test_dts_large_temperature_selects_nearly_all_small_temperature_few(seed):
    z = logits_from(seed, shape=(1, 400, M), scale=1.0)
    hot = DenseToSparseRouter(D, M, tau_max=100.0, tau_min=100.0, random_state=seed)
    cold = DenseToSparseRouter(D, M, tau_max=0.01, tau_min=0.01, random_state=seed)
    hot_routing, cold_routing = hot.route(z), cold.route(z)
    assert hot_routing.stats["experts_per_token_mean"].item() > 0.95 * M
    assert hot_routing.stats["dense_fraction"].item() > 0.8
    assert cold_routing.stats["experts_per_token_mean"].item() < 1.2
    # weights are softmax(z) on the selection (not renormalized)
    probs = torch.softmax(z, dim=-1)
    assert torch.equal(
        cold_routing.combine, torch.where(cold_routing.dispatch, probs, 0.0)
    )
    hist = hot_routing.stats["experts_per_token_hist"]
    assert hist.shape == (1, M + 1) and hist.sum().item() == 400


def test_dts_gumbel_gates_weights(seed):
    z = torch.zeros(1, 50, M)
    plain = DenseToSparseRouter(D, M, tau_max=0.01, tau_min=0.01, random_state=seed)
    gumbel = DenseToSparseRouter(
        D, M, tau_max=0.01, tau_min=0.01, use_gumbel_gates=True, random_state=seed
    )
    routing = plain.route(z)
    assert (routing.combine[routing.dispatch] == 1 / M).all()
    # a cold Gumbel-softmax is nearly one-hot: its selected weights sum to ~1
    weights = gumbel.route(z).combine.sum(-1)
    assert ((weights > 0.99) & (weights <= 1.0 + 1e-6)).all()


def test_dts_evaluation_modes(seed):
    z = logits_from(seed)
    router = DenseToSparseRouter(D, M, random_state=seed).eval()
    routing = router.route(z)
    assert (routing.dispatch.sum(-1) == 1).all()
    assert torch.equal(routing.dispatch.float().argmax(-1), z.argmax(-1))
    probs = torch.softmax(z, dim=-1)
    assert torch.allclose(routing.combine.sum(-1), probs.amax(-1))
    dense = DenseToSparseRouter(D, M, eval_mode="dense").eval().route(z)
    assert dense.dispatch.all()
    assert torch.allclose(dense.combine, probs)
    assert math.isnan(routing.stats["temperature"].item())


def test_dts_hard_after_gives_one_expert(seed):
    z = logits_from(seed)
    router = DenseToSparseRouter(D, M, tau_max=50.0, hard_after=3, random_state=seed)
    assert router.route(z).dispatch.sum(-1).float().mean() > 2
    router.set_step(3)
    assert router.hard
    assert (router.route(z).dispatch.sum(-1) == 1).all()


def test_dts_batch_k_is_one_k_per_group(seed):
    z = logits_from(seed, shape=(4, 30, M), scale=1.0)
    router = DenseToSparseRouter(
        D, M, mode="batch_k", k_min=2, tau_max=0.3, tau_min=0.3, random_state=seed
    )
    per_token = router.route(z).dispatch.sum(-1)
    assert (per_token == per_token[:, :1]).all()
    assert (per_token >= 2).all()


def test_dts_balance_formula(seed):
    router = DenseToSparseRouter(D, M, random_state=seed)
    routing = router.route(logits_from(seed))
    me = routing.combine.mean(dim=1)
    ce = routing.dispatch.float().mean(dim=1)
    expected = (M * (me * ce).sum(-1)).mean()
    assert torch.allclose(routing.aux["dts_balance"], expected)
    assert routing.loss_weights == {"dts_balance": 1e-2}


def test_spawn_experts_mask_ratio_and_determinism(seed):
    base = torch.ones(40, 50)
    for ratio in (0.0, 0.3, 0.5, 1.0):
        gen = torch.Generator().manual_seed(seed)
        experts = spawn_experts(base, 4, ratio, init=torch.zeros(()), generator=gen)
        assert experts.shape == (4, 40, 50)
        kept = (experts == 1).float().mean().item()
        assert kept == pytest.approx(1 - ratio, abs=0.03)
    base = torch.randn(40, 50, generator=torch.Generator().manual_seed(seed))
    first = spawn_experts(base, 3, generator=torch.Generator().manual_seed(seed))
    again = spawn_experts(base, 3, generator=torch.Generator().manual_seed(seed))
    other = spawn_experts(base, 3, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # experts differ from each other
    assert not torch.equal(first[0], first[1])


def test_spawn_experts_default_init_uses_base_statistics(seed):
    gen = torch.Generator().manual_seed(seed)
    base = 3.0 + 0.5 * torch.randn(100, 100, generator=gen)
    base.requires_grad_(True)
    experts = spawn_experts(base, 2, mask_ratio=1.0, generator=gen)
    assert experts.requires_grad is False
    assert experts.mean().item() == pytest.approx(3.0, abs=0.05)
    assert experts.std().item() == pytest.approx(0.5, abs=0.05)
    assert experts.dtype == base.dtype


# ---------------------------------------------------------------- Tsallis


def test_tsallis_entropy_extremes_and_shannon_limit(seed):
    for m in (2, 5, 16):
        uniform = torch.full((m,), 1.0 / m)
        for q in (0.5, 1.0, 1.1, 2.0, 3.0):
            assert tsallis_entropy(uniform, q).item() == pytest.approx(1.0, abs=1e-5)
            one_hot = torch.zeros(m)
            one_hot[m // 2] = 1.0
            assert tsallis_entropy(one_hot, q).item() == 0.0
        top = (1 - m ** (1 - 2.0)) / (2.0 - 1)
        raw = tsallis_entropy(uniform, 2.0, normalized=False).item()
        assert raw == pytest.approx(top, rel=1e-5)
    p = torch.softmax(logits_from(seed, shape=(5, M)), dim=-1).double()
    shannon = -(p * p.log()).sum(-1)
    assert torch.allclose(tsallis_entropy(p, 1.0, normalized=False), shannon)
    for q in (1 + 1e-3, 1 - 1e-3, 1 + 1e-6):
        near = tsallis_entropy(p, q, normalized=False)
        assert torch.allclose(near, shannon, rtol=5e-3)
        assert torch.allclose(tsallis_entropy(p, q), shannon / math.log(M), rtol=5e-3)
    # float32 keeps the limit too (no cancellation)
    near32 = tsallis_entropy(p.float(), 1 + 1e-5, normalized=False)
    assert torch.allclose(near32.double(), shannon, rtol=1e-3)
    with pytest.raises(ValueError, match="q must be a positive"):
        tsallis_entropy(p, 0.0)


def test_tsallis_router_rule(seed):
    router = TsallisHybridRouter(D, M, random_state=seed)
    z = logits_from(seed, shape=(2, 200, M), scale=1.0)
    routing = router.route(z)
    probs = torch.softmax(z, dim=-1)
    entropy = tsallis_entropy(probs, 1.1)
    dense = entropy > 0.9
    assert dense.any() and (~dense).any()
    per_token = routing.dispatch.sum(-1)
    assert (per_token[dense] == M).all()
    assert (per_token[~dense] >= 2).all()
    assert torch.equal(routing.combine, torch.where(routing.dispatch, probs, 0.0))
    # top-p tokens: the kept experts are the most probable ones
    kept_min = torch.where(routing.dispatch, probs, 2.0).amin(-1)
    dropped_max = torch.where(routing.dispatch, -1.0, probs).amax(-1)
    assert (kept_min[~dense] >= dropped_max[~dense]).all()
    stats = routing.stats
    assert torch.allclose(stats["dense_fraction"], dense.float().mean(1))
    assert torch.equal(stats["experts_per_token_max"], per_token.amax(1))
    assert torch.equal(stats["experts_per_token_min"], per_token.amin(1))
    assert torch.allclose(stats["tsallis_entropy_mean"], entropy.mean(1))


def test_tsallis_strict_and_inclusive_top_p():
    # p = (0.6, 0.3, 0.05, 0.05): low entropy, the cumulative sum crosses 0.75
    # at the second expert
    z = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    strict = TsallisHybridRouter(D, 4, k_min=1).route(z)
    inclusive = TsallisHybridRouter(D, 4, k_min=1, inclusive_top_p=True).route(z)
    assert strict.dispatch.long().tolist() == [[[1, 0, 0, 0]]]
    assert inclusive.dispatch.long().tolist() == [[[1, 1, 0, 0]]]
    assert TsallisHybridRouter(D, 4).route(z).dispatch.sum().item() == 2


def test_tsallis_losses_formula(seed):
    router = TsallisHybridRouter(D, M)
    z = logits_from(seed)
    routing = router.route(z)
    probs = torch.softmax(z, dim=-1)
    assert torch.allclose(routing.aux["tsallis"], tsallis_entropy(probs, 1.1).mean())
    f = (probs * routing.dispatch).mean(1)
    expected = (M * (f * probs.mean(1)).sum(-1)).mean()
    assert torch.allclose(routing.aux["load_balance"], expected)
    assert routing.loss_weights == {"tsallis": 0.01, "load_balance": 1e-3}


# ------------------------------------------------------ normalized sigmoid


@pytest.mark.parametrize("top_k", [2, 3, M])
@pytest.mark.parametrize("route_scale", [1.0, 2.5])
def test_sigmoid_weights_sum_to_route_scale_and_k_per_token(top_k, route_scale, seed):
    router = NormalizedSigmoidRouter(D, M, top_k=top_k, route_scale=route_scale)
    z = logits_from(seed)
    routing = router.route(z)
    assert (routing.dispatch.sum(-1) == top_k).all()
    assert torch.allclose(routing.combine.sum(-1), torch.full((2, 16), route_scale))
    s = torch.sigmoid(z)
    chosen = torch.where(routing.dispatch, s, 0.0)
    expected = route_scale * chosen / chosen.sum(-1, keepdim=True)
    assert torch.allclose(routing.combine, expected)
    if top_k == M:  # the dense normalized sigmoid gate
        assert torch.allclose(routing.combine, route_scale * s / s.sum(-1, True))


def test_sigmoid_top1_warns_constant_weight():
    with pytest.warns(UserWarning, match="constant"):
        NormalizedSigmoidRouter(D, M, top_k=1)


def test_softmax_score_keeps_unnormalized_probabilities(seed):
    router = NormalizedSigmoidRouter(D, M, top_k=3, score="softmax")
    z = logits_from(seed)
    routing = router.route(z)
    probs = torch.softmax(z, dim=-1)
    assert (routing.dispatch.sum(-1) == 3).all()
    assert torch.equal(
        routing.dispatch, probs.topk(3, -1).values.amin(-1, True) <= probs
    )
    assert torch.allclose(routing.combine, torch.where(routing.dispatch, probs, 0.0))
    assert torch.allclose(routing.aux["load_balance"], routing.aux["sequence_balance"])
    assert routing.loss_weights == {"sequence_balance": 0.0, "load_balance": 1e-2}


def test_bias_changes_the_choice_never_the_weights(seed):
    z = logits_from(seed)
    router = NormalizedSigmoidRouter(D, M, top_k=2)
    before = router.route(z)
    with torch.no_grad():
        router.expert_bias[M - 1] = 10.0
    after = router.route(z)
    assert after.dispatch[..., M - 1].all()
    assert not torch.equal(before.dispatch, after.dispatch)
    s = torch.sigmoid(z)
    chosen = torch.where(after.dispatch, s, 0.0)
    assert torch.allclose(after.combine, chosen / chosen.sum(-1, keepdim=True))
    assert after.stats["expert_bias_max"].item() == 10.0
    assert after.stats["expert_bias_norm"].item() == pytest.approx(10.0)
    # a bias equal on every expert changes nothing
    with torch.no_grad():
        router.expert_bias.fill_(3.0)
    assert torch.equal(router.route(z).combine, before.combine)


def test_update_bias_moves_towards_balance(seed):
    router = NormalizedSigmoidRouter(D, 4, top_k=1, score="softmax")
    z = torch.tensor([[3.0, 0.0, 0.0, -1.0]]).expand(2, 10, 4)
    routing = router.route(z)
    assert torch.equal(router.expert_bias, torch.zeros(4))  # route leaves it
    router(inputs(seed, shape=(2, 10, D)))  # so does forward
    assert torch.equal(router.expert_bias, torch.zeros(4))
    step = router.update_bias(routing)
    assert step.tolist() == [-1.0, 1.0, 1.0, 1.0]
    assert router.expert_bias.tolist() == pytest.approx([-1e-3, 1e-3, 1e-3, 1e-3])
    # a large enough step moves the tokens off the overloaded expert
    router.update_bias(router.route(z), rate=1.0)
    assert router.route(z).stats["tokens_per_expert"][:, 0].sum() == 0
    router.eval()
    with pytest.raises(RuntimeError, match="evaluation"):
        router.update_bias(routing)


def test_update_bias_reduces_max_violation(seed):
    router = NormalizedSigmoidRouter(D, M, top_k=2)
    skew = torch.linspace(2.0, -2.0, M)
    z = logits_from(seed, shape=(4, 64, M), scale=1.0) + skew
    start = router.route(z).stats["max_violation"].mean().item()
    for _ in range(200):
        router.update_bias(router.route(z), rate=0.02)
    end = router.route(z).stats["max_violation"].mean().item()
    assert start > 1.0
    assert end < 0.5 * start
    # the favoured experts were pushed down, the neglected ones up
    assert router.expert_bias[0] < 0 < router.expert_bias[-1]


def test_group_limited_routing(seed):
    router = NormalizedSigmoidRouter(D, 8, top_k=3, n_groups=4, topk_groups=2)
    z = logits_from(seed, shape=(2, 40, 8))
    routing = router.route(z)
    groups_used = routing.dispatch.view(2, 40, 4, 2).any(-1).sum(-1)
    assert (groups_used <= 2).all()
    # reference: group score = sum of the top-2 of s (+ b = 0) in each group
    s = torch.sigmoid(z)
    best = s.view(2, 40, 4, 2).sum(-1).topk(2, -1).indices
    allowed = torch.zeros(2, 40, 4, dtype=torch.bool).scatter(-1, best, True)
    masked = s.masked_fill(~allowed.repeat_interleave(2, -1), -1.0)
    expected = torch.zeros_like(s, dtype=torch.bool).scatter(
        -1, masked.topk(3, -1).indices, True
    )
    assert torch.equal(routing.dispatch, expected)
    assert torch.allclose(routing.combine.sum(-1), torch.ones(2, 40))


def test_sigmoid_router_reports_the_dropped_share_as_the_top_k_routers_do(seed):
    router = NormalizedSigmoidRouter(D, 4, top_k=2, capacity=3)
    z = torch.tensor([[4.0, 3.0, 0.0, 0.0]]).repeat(1, 6, 1)
    routing = router.route(z + 0.01 * logits_from(seed, shape=(1, 6, 4)))
    # 6 of the 12 selected slots overflow the two favoured experts
    assert routing.stats["dropped_fraction"].tolist() == [0.5]


def test_sigmoid_capacity_and_stats(seed):
    router = NormalizedSigmoidRouter(D, 4, top_k=2, capacity=3)
    z = torch.tensor([[4.0, 3.0, 0.0, 0.0]]).repeat(1, 6, 1)
    z = z + 0.01 * logits_from(seed, shape=(1, 6, 4))
    routing = router.route(z)
    assert routing.capacity == 3
    tokens = routing.stats["tokens_per_expert"]
    assert (tokens <= 3).all()
    assert routing.stats["dropped"].item() == 6
    assert routing.stats["selected_per_expert"].tolist() == [[6, 6, 0, 0]]
    assert (routing.topk_idx[:, 3:] == -1).all()
    assert (routing.topk_weight[:, 3:] == 0).all()
    c = tokens.float()
    assert torch.allclose(routing.stats["max_violation"], c.amax(-1) / c.mean(-1) - 1.0)


def test_sequence_balance_formula(seed):
    router = NormalizedSigmoidRouter(D, M, top_k=2)
    z = logits_from(seed)
    routing = router.route(z)
    s = torch.sigmoid(z)
    s_norm = s / s.sum(-1, keepdim=True)
    f = M / (2 * 16) * routing.dispatch.float().sum(1)
    expected = (f * s_norm.mean(1)).sum(-1).mean()
    assert torch.allclose(routing.aux["sequence_balance"], expected)
    assert routing.loss_weights == {"sequence_balance": 1e-4}


# ------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DenseToSparseRouter(D, M, tau_max=0.0), "tau_max"),
        (lambda: DenseToSparseRouter(D, M, tau_min=2.0), "tau_min must not"),
        (lambda: DenseToSparseRouter(D, M, decay_steps=0), "decay_steps"),
        (lambda: DenseToSparseRouter(D, M, schedule="cosine"), "schedule must"),
        (lambda: DenseToSparseRouter(D, M, threshold=1.5), "threshold"),
        (lambda: DenseToSparseRouter(D, M, hard_after=-1), "hard_after"),
        (lambda: DenseToSparseRouter(D, M, eval_mode="top2"), "eval_mode"),
        (lambda: DenseToSparseRouter(D, M, mode="topk"), "mode must"),
        (lambda: DenseToSparseRouter(D, M, k_min=M + 1), "k_min"),
        (lambda: DenseToSparseRouter(D, M, loss_weights={"x": 1.0}), "Unknown"),
        (lambda: DenseToSparseRouter(D, M).set_step(-2), "step must"),
        (lambda: temperature_schedule(1, kind="step"), "kind must"),
        (lambda: temperature_schedule(-1), "step must"),
        (lambda: spawn_experts(torch.ones(3), 0), "n_experts"),
        (lambda: spawn_experts(torch.ones(3), 2, mask_ratio=1.5), "mask_ratio"),
        (lambda: spawn_experts([1.0, 2.0], 2), "base_weight"),
        (lambda: spawn_experts(torch.ones(3), 2, init=torch.ones(4)), "init must"),
        (lambda: TsallisHybridRouter(D, M, q=0.0), "q must"),
        (lambda: TsallisHybridRouter(D, M, entropy_threshold=1.2), "entropy_thr"),
        (lambda: TsallisHybridRouter(D, M, top_p=0.0), "top_p"),
        (lambda: TsallisHybridRouter(D, M, k_min=0), "k_min"),
        (lambda: TsallisHybridRouter(D, 1), "k_min"),
        (lambda: NormalizedSigmoidRouter(D, M, top_k=M + 1), "top_k"),
        (lambda: NormalizedSigmoidRouter(D, M, score="relu"), "score must"),
        (lambda: NormalizedSigmoidRouter(D, M, route_scale=0.0), "route_scale"),
        (lambda: NormalizedSigmoidRouter(D, M, n_groups=3, topk_groups=1), "n_gr"),
        (lambda: NormalizedSigmoidRouter(D, M, n_groups=4), "topk_groups"),
        (lambda: NormalizedSigmoidRouter(D, M, topk_groups=2), "needs n_groups"),
        (
            lambda: NormalizedSigmoidRouter(D, M, top_k=5, n_groups=4, topk_groups=2),
            "exceeds",
        ),
        (lambda: NormalizedSigmoidRouter(D, M, bias_update_rate=-1), "bias_update"),
        (lambda: NormalizedSigmoidRouter(D, M, priority="lifo"), "priority"),
        (lambda: NormalizedSigmoidRouter(D, M, capacity_factor=-1.0), "capacity_f"),
        (lambda: NormalizedSigmoidRouter(D, M, capacity=0), "capacity must"),
        (lambda: NormalizedSigmoidRouter(D, M, n_shared_experts=-1), "n_shared"),
        (
            lambda: NormalizedSigmoidRouter(D, M, loss_weights={"load_balance": 1.0}),
            "score='softmax'",
        ),
    ],
)
def test_bad_arguments_raise(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_update_bias_rejects_another_router_routing(seed):
    small = NormalizedSigmoidRouter(D, 4, top_k=2)
    routing = NormalizedSigmoidRouter(D, M, top_k=2).route(logits_from(seed))
    with pytest.raises(ValueError, match="experts"):
        small.update_bias(routing)
    with pytest.raises(ValueError, match="rate"):
        small.update_bias(small.route(torch.zeros(3, 4)), rate=-1.0)
