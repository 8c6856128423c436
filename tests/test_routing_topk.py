"""Top-K, noisy top-K, prototype and expert-choice routers (routing.md 2.1-2.4)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from moestat.routing._base import (  # noqa: E402
    cv_squared,
    load_balance_loss,
    router_z_loss,
)
from moestat.routing.expert_choice import (  # noqa: E402
    ExpertChoiceRouter,
    expert_choice_capacity,
)
from moestat.routing.prototype import PrototypeRouter  # noqa: E402
from moestat.routing.topk import (  # noqa: E402
    NoisyTopKRouter,
    TopKSoftmaxRouter,
    prob_in_top_k,
)

D, M = 6, 4


def tokens(seed, *shape):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


def twin(make, **kw):
    """Two routers built alike, with identical gate weights."""
    first = make(**kw)
    second = make(**kw)
    second.load_state_dict(first.state_dict())
    return first, second


# --------------------------------------------------------------------------
# references


def brute_force_keep(idx, capacity, priority, scores=None):
    """Python loop over claims: slot-major, then token order (or by score)."""
    batch, n, k = idx.shape
    keep = torch.zeros(batch, n, k, dtype=torch.bool)
    for b in range(batch):
        if priority == "score":
            order = sorted(range(n), key=lambda t: (-float(scores[b, t]), t))
        else:
            order = list(range(n))
        used = {}
        for j in range(k):
            for t in order:
                e = int(idx[b, t, j])
                if e < 0:
                    continue
                if used.get(e, 0) < capacity:
                    keep[b, t, j] = True
                    used[e] = used.get(e, 0) + 1
    return keep


def check_invariants(routing, k=None):
    combine, dispatch = routing.combine, routing.dispatch
    assert combine.shape == dispatch.shape
    assert dispatch.dtype == torch.bool
    assert (combine >= 0).all()
    assert (combine[~dispatch] == 0).all()
    assert routing.logits.dtype == torch.float32
    assert routing.probs.dtype == torch.float32
    if routing.capacity is not None:
        assert (dispatch.sum(dim=1) <= routing.capacity).all()
    if k is not None:
        idx, w = routing.topk_idx, routing.topk_weight
        assert idx.shape == (*dispatch.shape[:2], k)
        assert (w[idx < 0] == 0).all()
        assert ((idx >= 0).sum(-1) == dispatch.sum(-1)).all()
        rebuilt = torch.zeros_like(combine).scatter_add(
            -1, idx.clamp(min=0), torch.where(idx >= 0, w, 0.0)
        )
        torch.testing.assert_close(rebuilt, combine)


ROUTERS = {
    "switch": lambda **kw: TopKSoftmaxRouter.switch(D, M, **kw),
    "gshard": lambda **kw: TopKSoftmaxRouter.gshard(D, M, **kw),
    "st_moe": lambda **kw: TopKSoftmaxRouter.st_moe(D, M, **kw),
    "top3_gumbel": lambda **kw: TopKSoftmaxRouter(
        D, M, 3, second_policy="gumbel", **kw
    ),
    "noisy": lambda **kw: NoisyTopKRouter(D, M, 2, zero_init=False, **kw),
    "prototype": lambda **kw: PrototypeRouter(D, 2 * M, 2, k=2, **kw),
    "expert_choice": lambda **kw: ExpertChoiceRouter(D, M, **kw),
}
SLOTS = {
    "switch": 1,
    "gshard": 2,
    "st_moe": 2,
    "top3_gumbel": 3,
    "noisy": 2,
    "prototype": 4,
}


# --------------------------------------------------------------------------
# section 0 invariants, every router


@pytest.mark.parametrize("name", list(ROUTERS))
@pytest.mark.parametrize("training", [True, False])
def test_invariants(name, training):
    router = ROUTERS[name](random_state=0)
    router.train(training)
    routing = router(tokens(1, 3, 24, D))
    check_invariants(routing, SLOTS.get(name))
    assert routing.loss_weights == router.loss_weights
    assert routing.total_aux().dim() == 0


@pytest.mark.parametrize("name", [n for n in ROUTERS if n != "expert_choice"])
def test_exactly_k_per_token_without_drops(name):
    router = ROUTERS[name](random_state=0, capacity_factor=None)
    router.eval()  # no random second choice for st_moe / gshard below
    if hasattr(router, "eval_second_policy"):
        router.eval_second_policy = "all"
    routing = router(tokens(2, 2, 20, D))
    k = SLOTS[name]
    assert routing.capacity is None
    assert (routing.dispatch.sum(-1) == k).all()
    assert (routing.topk_idx >= 0).all()
    assert (routing.topk_idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct


@pytest.mark.parametrize("name", list(ROUTERS))
def test_gradient_reaches_gate_through_combine(name):
    router = ROUTERS[name](random_state=0)
    routing = router(tokens(3, 2, 16, D))
    (routing.combine * tokens(4, *routing.combine.shape)).sum().backward()
    assert router.gate.weight.grad is not None
    assert router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(ROUTERS))
def test_two_dimensional_input_is_one_group(name):
    router = ROUTERS[name](random_state=0).eval()
    x = tokens(5, 16, D)
    one = router(x)
    assert one.dispatch.shape[0] == 1
    router._generators.clear()  # restart the seeded stream (random 2nd choices)
    torch.testing.assert_close(one.combine, router(x.unsqueeze(0)).combine)
    router._generators.clear()
    torch.testing.assert_close(router.route(one.logits[0]).combine, one.combine)


@pytest.mark.parametrize("name", list(ROUTERS))
def test_same_seed_same_randomness(name):
    kw = {"random_state": 7}
    if name not in ("expert_choice",):
        kw["priority"] = "random"
    a, b = twin(ROUTERS[name], **kw)
    x = tokens(6, 2, 40, D)
    for _ in range(2):  # the generators advance alike
        ra, rb = a(x), b(x)
        assert torch.equal(ra.dispatch, rb.dispatch)
        assert torch.equal(ra.combine, rb.combine)


def test_different_seeds_differ():
    a, b = twin(ROUTERS["top3_gumbel"], random_state=1, capacity_factor=None)
    b._generators.clear()
    b.random_state = 2
    x = tokens(7, 1, 200, D)
    assert not torch.equal(a(x).topk_idx, b(x).topk_idx)


# --------------------------------------------------------------------------
# TopKSoftmaxRouter


def test_switch_weight_is_the_chosen_probability():
    router = TopKSoftmaxRouter.switch(D, M, capacity_factor=None).eval()
    routing = router(tokens(8, 2, 30, D))
    p_max, arg = routing.probs.max(-1)
    assert torch.equal(routing.topk_idx[..., 0], arg)
    torch.testing.assert_close(routing.topk_weight[..., 0], p_max)
    torch.testing.assert_close(routing.combine.sum(-1), p_max)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_normalized_weights_sum_to_one_without_drops(k):
    router = TopKSoftmaxRouter(D, M, k, capacity_factor=None)
    routing = router(tokens(9, 2, 30, D))
    assert router.normalize
    torch.testing.assert_close(routing.combine.sum(-1), torch.ones(2, 30))
    chosen = routing.probs.gather(-1, routing.topk_idx)
    torch.testing.assert_close(
        routing.topk_weight, chosen / chosen.sum(-1, keepdim=True)
    )
    # the K largest scores, ties to the lower index
    assert torch.equal(
        routing.topk_idx,
        routing.probs.sort(dim=-1, descending=True, stable=True).indices[..., :k],
    )


def test_ties_go_to_the_lower_index():
    router = TopKSoftmaxRouter(D, M, 2, capacity_factor=None)
    routing = router.route(torch.zeros(5, M))
    assert routing.topk_idx[0].tolist() == [[0, 1]] * 5


def test_priority_position_keeps_first_choices_first():
    # tokens 0, 1: expert 1 then 0; tokens 2, 3: expert 0 then 2
    logits = torch.tensor(
        [[0.0, 2.0, -1, -1], [0.0, 2.0, -1, -1], [2.0, -1, 0.0, -1], [2.0, -1, 0, -1]]
    )
    router = TopKSoftmaxRouter(D, M, 2, capacity=2)
    routing = router.route(logits)
    assert routing.capacity == 2
    assert routing.topk_idx[0].tolist() == [[1, -1], [1, -1], [0, 2], [0, 2]]
    assert routing.stats["dropped_assignments"].tolist() == [2]
    assert routing.stats["tokens_with_dropped_slot"].tolist() == [2]
    assert routing.stats["tokens_all_dropped"].tolist() == [0]
    assert routing.stats["tokens_per_expert_before_capacity"].tolist() == [[4, 2, 2, 0]]
    assert routing.stats["tokens_per_expert"].tolist() == [[2, 2, 2, 0]]
    # normalized before capacity: the drop lowers the token's total weight
    assert (routing.combine.sum(-1)[0, :2] < 1).all()
    torch.testing.assert_close(routing.combine.sum(-1)[0, 2:], torch.ones(2))


def test_renormalize_after_drop():
    logits = tokens(10, 2, 24, M) * 2
    kw = {"capacity_factor": 0.5, "min_capacity": 1}
    before = TopKSoftmaxRouter(D, M, 2, **kw).route(logits)
    after = TopKSoftmaxRouter(D, M, 2, renormalize_after_drop=True, **kw).route(logits)
    assert torch.equal(before.dispatch, after.dispatch)
    partly = (before.topk_idx < 0).any(-1) & (before.topk_idx >= 0).any(-1)
    assert partly.any()
    assert (before.combine.sum(-1)[partly] < 1 - 1e-6).all()
    kept_any = after.dispatch.any(-1)
    torch.testing.assert_close(
        after.combine.sum(-1)[kept_any], torch.ones(int(kept_any.sum()))
    )
    assert (after.combine.sum(-1)[~kept_any] == 0).all()


def test_priority_score_keeps_the_most_confident_tokens():
    logits = torch.tensor([[1.0, 0], [3.0, 0], [2.0, 0], [0.5, 0]])
    position = TopKSoftmaxRouter(D, 2, capacity=2).route(logits)
    score = TopKSoftmaxRouter(D, 2, capacity=2, priority="score").route(logits)
    assert position.dispatch[0, :, 0].tolist() == [True, True, False, False]
    assert score.dispatch[0, :, 0].tolist() == [False, True, True, False]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("priority", ["position", "score"])
def test_capacity_dropping_matches_brute_force(k, priority):
    logits = tokens(11 + k, 3, 40, 5) * 1.5
    router = TopKSoftmaxRouter(
        D, 5, k, capacity_factor=0.6, min_capacity=1, priority=priority
    )
    routing = router.route(logits)
    c = math.ceil(0.6 * k * 40 / 5)
    assert routing.capacity == c
    chosen = (
        logits.softmax(-1).sort(dim=-1, descending=True, stable=True).indices[..., :k]
    )
    scores = logits.softmax(-1).amax(-1)
    keep = brute_force_keep(chosen, c, priority, scores)
    assert keep.sum() < keep.numel()  # some drops happen
    assert torch.equal(routing.topk_idx, torch.where(keep, chosen, -1))
    dropped = (~keep).sum(dim=(1, 2))
    assert torch.equal(routing.stats["dropped_assignments"], dropped)


def test_priority_random_keeps_capacity_and_differs_from_position():
    logits = tokens(12, 1, 60, M)
    rand = TopKSoftmaxRouter(D, M, 1, capacity=5, priority="random", random_state=0)
    pos = TopKSoftmaxRouter(D, M, 1, capacity=5)
    r1, r2 = rand.route(logits), pos.route(logits)
    assert torch.equal(r1.dispatch.sum(1), r2.dispatch.sum(1))
    assert not torch.equal(r1.dispatch, r2.dispatch)


def test_capacity_modes():
    x = tokens(13, 1, 64, D)
    router = TopKSoftmaxRouter(D, M, 1)
    assert router(x).capacity == math.ceil(1.25 * 64 / M)  # 20
    assert router.eval()(x).capacity == math.ceil(2.0 * 64 / M)  # 32
    assert TopKSoftmaxRouter(D, M, 2, capacity=7)(x).capacity == 7
    assert TopKSoftmaxRouter(D, M, 2, capacity=700)(x).capacity == 64  # clamp to n
    assert TopKSoftmaxRouter(D, M, 1, capacity_factor=0.01)(x).capacity == 4  # min
    dropless = TopKSoftmaxRouter(D, M, 1, capacity_factor=None).eval()
    assert dropless(x).capacity is None
    eval_dropless = TopKSoftmaxRouter(D, M, 1, eval_capacity_factor=None).eval()
    assert eval_dropless(x).capacity is None


def test_negative_capacity_factor_is_capped_dropless():
    logits = torch.zeros(1, 40, M)
    logits[0, :30, 0] = 5.0  # expert 0 gets 30 first choices, expert 1 ten
    logits[0, 30:, 1] = 5.0
    capped = TopKSoftmaxRouter(D, M, 1, capacity_factor=-2.0).route(logits)
    assert capped.capacity == 2 * math.ceil(40 / M)  # 20 < 30
    assert capped.stats["dropped_assignments"].item() == 10
    loose = TopKSoftmaxRouter(D, M, 1, capacity_factor=-4.0).route(logits)
    assert loose.capacity == 30  # the largest load: nothing dropped
    assert loose.stats["dropped_assignments"].item() == 0


def test_random_second_policy_keeps_with_probability_w_over_theta():
    # normalized second weight 0.25, theta 0.5: kept with probability 0.5
    logits = torch.tensor([math.log(3.0), 0.0, -30.0, -30.0]).expand(1, 4000, M)
    router = TopKSoftmaxRouter(
        D, M, 2, second_policy="random", threshold=0.5, capacity_factor=None
    )
    routing = router.route(logits)
    assert (routing.topk_idx[..., 0] == 0).all()
    kept = (routing.topk_idx[..., 1] >= 0).float().mean()
    assert 0.45 < kept < 0.55
    assert routing.stats["slots_skipped"].item() == int((1 - kept) * 4000 + 0.5)
    # w_2 / theta >= 1: always kept
    sure = TopKSoftmaxRouter(
        D, M, 2, second_policy="random", threshold=0.25, capacity_factor=None
    )
    assert (sure.route(logits).topk_idx >= 0).all()
    # eval_second_policy switches it off in evaluation
    router.eval_second_policy = "all"
    assert (router.eval().route(logits).topk_idx >= 0).all()


def test_gumbel_second_policy():
    router = TopKSoftmaxRouter(
        D, M, 2, second_policy="gumbel", capacity_factor=None, random_state=0
    )
    logits = tokens(14, 1, 300, M)
    routing = router.route(logits)
    p = logits.softmax(-1)
    assert torch.equal(routing.topk_idx[..., 0], p.argmax(-1))
    assert (routing.topk_idx[..., 1] != routing.topk_idx[..., 0]).all()
    runner_up = p.sort(dim=-1, descending=True, stable=True).indices[..., 1]
    assert not torch.equal(routing.topk_idx[..., 1], runner_up)  # sampled


def test_jitter_in_training_only():
    router = TopKSoftmaxRouter.switch(D, M, random_state=0)
    x = tokens(15, 1, 10, D)
    clean = router.gate(x)
    torch.testing.assert_close(router.eval()(x).logits, clean)
    jittered = router.train()(x).logits
    assert not torch.allclose(jittered, clean)
    torch.testing.assert_close(jittered, clean, atol=0.05, rtol=0.05)


def test_presets():
    switch = TopKSoftmaxRouter.switch(D, M)
    assert (switch.k, switch.normalize, switch.capacity_factor) == (1, False, 1.25)
    assert switch.loss_weights == {"load_balance": 1e-2, "z_loss": 0.0}
    gshard = TopKSoftmaxRouter.gshard(D, M, capacity_factor=1.0)
    assert (gshard.k, gshard.normalize, gshard.second_policy) == (2, True, "random")
    assert (gshard.threshold, gshard.capacity_factor) == (0.5, 1.0)
    st = TopKSoftmaxRouter.st_moe(D, M, loss_weights={"load_balance": 1e-3})
    assert st.threshold == 0.2
    assert st.loss_weights == {"load_balance": 1e-3, "z_loss": 1e-3}
    assert st.eval_capacity_factor == 2.0


def test_aux_losses_values_and_gradients():
    router = TopKSoftmaxRouter(D, M, 2, capacity_factor=None)
    routing = router(tokens(16, 2, 30, D))
    p, z = routing.probs, routing.logits
    first = torch.nn.functional.one_hot(routing.topk_idx[..., 0], M)
    f = first.float().mean(1)
    expected = (M * (f * p.mean(1)).sum(-1)).mean()
    torch.testing.assert_close(routing.aux["load_balance"], expected)
    torch.testing.assert_close(routing.aux["z_loss"], router_z_loss(z))
    for name in ("load_balance", "z_loss"):
        router.zero_grad()
        router(tokens(16, 2, 30, D)).aux[name].backward()
        assert router.gate.weight.grad.abs().sum() > 0
    both = TopKSoftmaxRouter(D, M, 2, capacity_factor=None, lb_on="all_slots")
    both.load_state_dict(router.state_dict())
    r2 = both(tokens(16, 2, 30, D))
    slots = torch.nn.functional.one_hot(r2.topk_idx, M).sum(-2)
    torch.testing.assert_close(r2.aux["load_balance"], load_balance_loss(p, slots))
    # perfect balance gives 1
    flat = TopKSoftmaxRouter(D, M, 1).route(torch.zeros(8, M))
    torch.testing.assert_close(flat.aux["load_balance"], torch.tensor(1.0))


def test_constant_weight_warning():
    with pytest.warns(UserWarning, match="constant 1"):
        TopKSoftmaxRouter(D, M, 1, normalize=True)
    with pytest.warns(UserWarning, match="constant 1"):
        TopKSoftmaxRouter(D, M, 1, renormalize_after_drop=True)
    with pytest.warns(UserWarning, match="constant 1"):
        NoisyTopKRouter(D, M, 1)
    with pytest.warns(UserWarning, match="constant 1"):
        PrototypeRouter(D, M, n_prototypes=M)
    with pytest.warns(UserWarning, match="constant 1"):
        router = TopKSoftmaxRouter(D, M, 1, normalize=True, capacity_factor=None)
    routing = router(tokens(17, 8, D))
    assert (routing.combine.sum(-1) == 1).all()


# --------------------------------------------------------------------------
# NoisyTopKRouter


def test_noisy_starts_at_zero_and_noise_is_training_only():
    router = NoisyTopKRouter(D, M, 2, random_state=0)
    assert (router.gate.weight == 0).all() and (router.w_noise.weight == 0).all()
    router = NoisyTopKRouter(D, M, 2, random_state=0, zero_init=False)
    x = tokens(18, 2, 20, D)
    clean = router.eval()(x)
    z = router.gate(x)
    top = z.sort(dim=-1, descending=True, stable=True)
    assert torch.equal(clean.topk_idx, top.indices[..., :2])
    torch.testing.assert_close(clean.topk_weight, top.values[..., :2].softmax(-1))
    torch.testing.assert_close(clean.combine.sum(-1), torch.ones(2, 20))
    noisy = router.train()(x)
    torch.testing.assert_close(noisy.logits, z)  # the noise is not in z
    assert not torch.equal(noisy.topk_weight, clean.topk_weight)
    torch.testing.assert_close(noisy.combine.sum(-1), torch.ones(2, 20))


def test_prob_in_top_k_matches_its_definition():
    gen = torch.Generator().manual_seed(3)
    clean = torch.randn(2, 5, 6, generator=gen)
    std = torch.rand(2, 5, 6, generator=gen) + 0.2
    noisy = clean + std * torch.randn(2, 5, 6, generator=gen)
    k = 2
    idx = noisy.topk(k, dim=-1).indices
    selected = torch.zeros_like(clean, dtype=torch.bool).scatter(-1, idx, True)
    got = prob_in_top_k(clean, noisy, std, selected, k)
    normal = torch.distributions.Normal(0.0, 1.0)
    for b in range(2):
        for t in range(5):
            for i in range(6):
                others = [float(noisy[b, t, j]) for j in range(6) if j != i]
                theta = sorted(others, reverse=True)[k - 1]
                want = normal.cdf((clean[b, t, i] - theta) / std[b, t, i])
                assert abs(float(got[b, t, i]) - float(want)) < 1e-5


def test_noisy_losses():
    router = NoisyTopKRouter(D, M, 2, zero_init=False, random_state=0)
    x = tokens(19, 2, 30, D)
    routing = router(x)
    gates = torch.zeros(2, 30, M).scatter(-1, routing.topk_idx, routing.topk_weight)
    torch.testing.assert_close(routing.aux["importance"], cv_squared(gates.sum(1)))
    router.zero_grad()
    routing.aux["load"].backward()
    assert router.gate.weight.grad.abs().sum() > 0
    assert router.w_noise.weight.grad.abs().sum() > 0
    router.zero_grad()
    router(x).aux["importance"].backward()
    assert router.gate.weight.grad.abs().sum() > 0
    assert router.loss_weights == {"importance": 0.1, "load": 0.1}
    with pytest.raises(ValueError, match="noise_std must have the shape"):
        router.route(routing.logits, noise_std=torch.ones(2, 30, M + 1))
    # without noise the load is the count of assignments
    quiet = router.eval()(x)
    counts = quiet.dispatch.sum(1).float()
    torch.testing.assert_close(quiet.aux["load"], cv_squared(counts))


def test_noisy_capacity_matches_brute_force():
    router = NoisyTopKRouter(
        D, M, 2, capacity_factor=0.5, min_capacity=1, zero_init=False
    ).eval()
    logits = tokens(20, 2, 24, M)
    routing = router.route(logits)
    chosen = logits.sort(dim=-1, descending=True, stable=True).indices[..., :2]
    keep = brute_force_keep(chosen, routing.capacity, "position")
    assert torch.equal(routing.topk_idx, torch.where(keep, chosen, -1))
    check_invariants(routing, 2)


# --------------------------------------------------------------------------
# PrototypeRouter


def test_prototype_blocks_weights_and_ids():
    router = PrototypeRouter(D, 6, n_prototypes=3, k=1, capacity_factor=None)
    routing = router(tokens(21, 2, 20, D))
    assert routing.topk_idx.shape == (2, 20, 3)
    blocks = routing.dispatch.view(2, 20, 3, 2)
    assert (blocks.sum(-1) == 1).all()  # exactly k' per prototype
    zz = routing.logits.view(2, 20, 3, 2)
    p = zz.softmax(-1)
    assert torch.equal(routing.topk_idx, p.argmax(-1) + torch.tensor([0, 2, 4]))
    torch.testing.assert_close(routing.topk_weight, p.amax(-1))
    torch.testing.assert_close(routing.probs, p.reshape(2, 20, 6))
    # balance within each prototype, averaged
    per = [
        load_balance_loss(
            p[:, :, z], torch.nn.functional.one_hot(p[:, :, z].argmax(-1), 2)
        )
        for z in range(3)
    ]
    torch.testing.assert_close(routing.aux["load_balance"], torch.stack(per).mean())


def test_prototype_capacity():
    router = PrototypeRouter(D, 8, n_prototypes=2, k=2, min_capacity=1)
    logits = tokens(22, 2, 30, 8) * 2
    routing = router.route(logits)
    c = math.ceil(1.25 * 2 * 30 / 4)
    assert routing.capacity == c
    check_invariants(routing, 4)
    p = logits.view(2, 30, 2, 4).softmax(-1)
    local = p.sort(dim=-1, descending=True, stable=True).indices[..., :2]
    for z in range(2):
        keep = brute_force_keep(local[:, :, z], c, "position")
        want = torch.where(keep, local[:, :, z] + 4 * z, -1)
        assert torch.equal(routing.topk_idx[..., 2 * z : 2 * z + 2], want)
    assert router.eval().route(logits).capacity == math.ceil(2.0 * 2 * 30 / 4)


# --------------------------------------------------------------------------
# ExpertChoiceRouter


def test_expert_choice_capacity_formula():
    assert expert_choice_capacity(64, 8, 2.0) == 16
    assert expert_choice_capacity(20, 8, 1.0) == 4  # round(2.5) = 2 -> min 4
    assert expert_choice_capacity(36, 8, 1.0) == 4  # round(4.5) = 4 (to even)
    assert expert_choice_capacity(44, 8, 1.0) == 6  # round(5.5) = 6
    assert expert_choice_capacity(3, 8, 2.0) == 3  # clamped to n
    assert expert_choice_capacity(64, 8, 2.0, capacity=5) == 5


def test_expert_choice_picks_top_tokens_per_expert():
    router = ExpertChoiceRouter(D, M)
    logits = tokens(23, 2, 20, M)
    routing = router.route(logits)
    c = 10
    assert routing.capacity == c
    assert (routing.dispatch.sum(1) == c).all()  # exactly C when n >= C
    s = logits.softmax(-1)
    for b in range(2):
        for i in range(M):
            best = sorted(range(20), key=lambda t: (-float(s[b, t, i]), t))[:c]
            assert set(routing.dispatch[b, :, i].nonzero().flatten().tolist()) == set(
                best
            )
    torch.testing.assert_close(routing.combine, torch.where(routing.dispatch, s, 0.0))
    assert routing.topk_idx is None and routing.topk_weight is None
    stats = routing.stats
    per_token = routing.dispatch.sum(-1)
    assert torch.equal(stats["experts_per_token"], per_token)
    assert (stats["experts_per_token_hist"].sum(-1) == 20).all()
    torch.testing.assert_close(
        stats["tokens_left_behind"], (per_token == 0).float().mean(1)
    )
    torch.testing.assert_close(
        stats["mean_confidence"], routing.combine.sum((1, 2)) / (M * c)
    )
    assert set(routing.aux) == {"z_loss"}


def test_expert_choice_small_group_and_z_loss_gradient():
    router = ExpertChoiceRouter(D, M, loss_weights={"z_loss": 1e-3})
    routing = router(tokens(24, 3, D))
    assert routing.capacity == 3
    assert routing.dispatch.all()
    routing.total_aux().backward()
    assert router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("b", [1, 2])
def test_expert_choice_max_experts_per_token(b):
    router = ExpertChoiceRouter(D, M, max_experts_per_token=b)
    logits = tokens(25, 2, 24, M) * 2
    routing = router.route(logits)
    check_invariants(routing)
    assert (routing.dispatch.sum(-1) <= b).all()
    uncapped = ExpertChoiceRouter(D, M).route(logits)
    # freed places are offered again: at least as many dispatches as keeping
    # each token's best b of the uncapped choices, and the result is maximal
    s = logits.softmax(-1)
    best = torch.where(uncapped.dispatch, s, -1.0).argsort(-1, descending=True)
    rank = best.argsort(-1)
    naive = uncapped.dispatch & (rank < b)
    assert routing.dispatch.sum() >= naive.sum()
    expert_room = routing.dispatch.sum(1, keepdim=True) < routing.capacity
    token_room = routing.dispatch.sum(2, keepdim=True) < b
    assert (routing.dispatch | ~(expert_room & token_room)).all()
    assert (uncapped.dispatch.sum(-1) > b).any()
    full = ExpertChoiceRouter(D, M, max_experts_per_token=M).route(logits)
    assert torch.equal(full.dispatch, uncapped.dispatch)


# --------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TopKSoftmaxRouter(D, M, 0), "k must be an int >= 1"),
        (lambda: TopKSoftmaxRouter(D, M, 5), "k must be <= n_experts=4"),
        (lambda: TopKSoftmaxRouter(D, M, 2, normalize=1), "normalize must be"),
        (
            lambda: TopKSoftmaxRouter(D, M, 2, second_policy="top"),
            r"second_policy must be one of \('all', 'random', 'gumbel'\)",
        ),
        (
            lambda: TopKSoftmaxRouter(D, M, 2, eval_second_policy="x"),
            "eval_second_policy must be one of",
        ),
        (lambda: TopKSoftmaxRouter(D, M, 2, threshold=0), r"threshold must be in"),
        (lambda: TopKSoftmaxRouter(D, M, capacity_factor=0), "capacity_factor must"),
        (
            lambda: TopKSoftmaxRouter(D, M, eval_capacity_factor=float("nan")),
            "eval_capacity_factor must",
        ),
        (lambda: TopKSoftmaxRouter(D, M, capacity=0), "capacity must be an int >= 1"),
        (lambda: TopKSoftmaxRouter(D, M, min_capacity=-1), "min_capacity must be"),
        (
            lambda: TopKSoftmaxRouter(D, M, priority="fifo"),
            r"priority must be one of \('position', 'score', 'random'\)",
        ),
        (lambda: TopKSoftmaxRouter(D, M, jitter=1.5), r"jitter must be in \[0, 1\)"),
        (lambda: TopKSoftmaxRouter(D, M, lb_on="last"), "lb_on must be one of"),
        (
            lambda: TopKSoftmaxRouter(D, M, loss_weights={"importance": 1}),
            "Unknown auxiliary loss",
        ),
        (lambda: NoisyTopKRouter(D, M, 2, noise_epsilon=-1), "noise_epsilon must"),
        (lambda: NoisyTopKRouter(D, M, 9), "k must be <= n_experts"),
        (lambda: PrototypeRouter(D, 6, 4), "must be divisible by n_prototypes"),
        (lambda: PrototypeRouter(D, 6, 0), "n_prototypes must be an int >= 1"),
        (lambda: PrototypeRouter(D, 6, 3, k=3), r"k must be <= n_experts / n_proto"),
        (lambda: ExpertChoiceRouter(D, M, capacity_factor=None), "no dropless"),
        (lambda: ExpertChoiceRouter(D, M, capacity_factor=-1), "capacity_factor"),
        (
            lambda: ExpertChoiceRouter(D, M, max_experts_per_token=0),
            "max_experts_per_token must be an int >= 1",
        ),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", list(ROUTERS))
def test_bad_logits_shape(name):
    router = ROUTERS[name]()
    with pytest.raises(ValueError, match="logits must have shape"):
        router.route(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="logits must have shape"):
        router.route(torch.zeros(3, router.n_experts + 1))
