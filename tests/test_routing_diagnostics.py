"""Router diagnostics, the routing recorder and their plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import nn  # noqa: E402

from moestat.plotting import (  # noqa: E402
    plot_expert_utilization,
    plot_router_change_rate,
    plot_router_saturation,
)
from moestat.routing._base import Routing, dense_from_slots  # noqa: E402
from moestat.routing.diagnostics import (  # noqa: E402
    RoutingRecorder,
    coactivation,
    expert_utilization,
    jain_index,
    load_balance_statistic,
    max_violation,
    relative_perplexity,
    router_change_rate,
    router_entropy,
    router_saturation,
    selected_experts,
    selection_mask,
    utilization_summary,
)
from moestat.routing.layer import LinearExperts, MoELayer  # noqa: E402


def random_selections(rng, n_checkpoints, n_layers, n_probe, m, k):
    scores = rng.standard_normal((n_checkpoints, n_layers, n_probe, m))
    return selected_experts(scores, k)


def test_selected_experts_ties_go_to_the_lower_index():
    logits = np.array([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert selected_experts(logits, 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    tensor = selected_experts(torch.tensor(logits), 3)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.tolist() == [[1, 2, 3], [0, 1, 2]]
    with pytest.raises(ValueError, match="k must be between 1 and m=4"):
        selected_experts(logits, 5)


def test_saturation_is_100_percent_at_the_final_checkpoint(rng):
    selections = random_selections(rng, 5, 3, 50, 8, 2)
    saturation = router_saturation(selections)
    assert saturation.shape == (5,)
    assert saturation[-1] == 100.0
    assert np.all((saturation >= 0) & (saturation <= 100))
    per_layer = router_saturation(selections, per_layer=True)
    assert per_layer.shape == (5, 3)
    np.testing.assert_allclose(per_layer.mean(axis=1), saturation)
    # an explicit final checkpoint equal to the last one changes nothing
    np.testing.assert_allclose(
        router_saturation(list(selections), final=selections[-1]), saturation
    )


def test_saturation_hand_example():
    # one layer, K=2: checkpoint 0 shares 1 of 2 experts on input 0 and
    # 2 of 2 on input 1 with the final checkpoint -> 3/4
    selections = np.array([[[0, 1], [2, 3]], [[0, 4], [3, 2]]])
    np.testing.assert_allclose(router_saturation(selections), [75.0, 100.0])


def test_change_rate_is_zero_for_identical_and_100_for_disjoint(rng):
    same = np.repeat(random_selections(rng, 1, 2, 30, 8, 2), 3, axis=0)
    np.testing.assert_array_equal(router_change_rate(same), [0.0, 0.0])
    np.testing.assert_array_equal(router_change_rate(same, ordered=True), [0.0, 0.0])
    disjoint = np.stack([np.zeros((2, 30, 1)), np.ones((2, 30, 1))]).astype(int)
    np.testing.assert_array_equal(router_change_rate(disjoint), [100.0])
    # a swap of the two slots is no change as a set, a full change by position
    swapped = np.array([[[[0, 1]]], [[[1, 0]]]])
    assert router_change_rate(swapped)[0] == 0.0
    assert router_change_rate(swapped, ordered=True)[0] == 100.0
    with pytest.raises(ValueError, match="two checkpoints"):
        router_change_rate(same[:1])


def test_masks_serve_variable_k_selections():
    ids = np.array([[[0, 1], [2, -1]], [[0, 2], [2, -1]]])
    masks = selection_mask(ids, 3)
    assert masks[0].tolist() == [[True, True, False], [False, False, True]]
    np.testing.assert_allclose(router_saturation(masks), router_saturation(ids))
    np.testing.assert_allclose(router_change_rate(masks), router_change_rate(ids))
    # final sets hold 3 experts, checkpoint 0 shares 2 of them
    np.testing.assert_allclose(router_saturation(ids), [200 / 3, 100.0])


def test_utilization_jain_and_perplexity_by_hand():
    selection = np.array([[0, 1], [0, 1], [0, 2], [0, 2]])  # N=4, K=2, m=4
    u = expert_utilization(selection, 4)
    np.testing.assert_allclose(u, [0.5, 0.25, 0.25, 0.0])
    # Jain: (sum u)^2 / (m sum u^2) = 1 / (4 * 0.375)
    assert math.isclose(jain_index(u), 1 / 1.5)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert math.isclose(relative_perplexity(u), math.exp(entropy) / 4)
    assert math.isclose(relative_perplexity(np.full(5, 0.2)), 1.0)
    assert math.isclose(jain_index(np.full(5, 0.2)), 1.0)
    # dropped slots belong to no expert
    np.testing.assert_allclose(expert_utilization([[0, -1]], 2), [0.5, 0.0])


def test_utilization_summary_by_hand():
    # every probe picks expert 0 with probability ~1: one live expert of 3
    logits = np.array([[20.0, 0.0, 0.0]] * 4)
    table = utilization_summary(logits, 1)
    row = table.iloc[0]
    assert list(table.columns) == [
        "layer",
        "load_balance",
        "rel_perplexity",
        "jain",
        "dead_experts",
        "cv",
    ]
    assert math.isclose(row["load_balance"], 3.0, rel_tol=1e-6)
    assert math.isclose(row["rel_perplexity"], 1 / 3)
    assert math.isclose(row["jain"], 1 / 3)
    assert row["dead_experts"] == 2
    assert math.isclose(row["cv"], math.sqrt(2))
    # balanced: a different expert per probe, equal scores on average
    balanced = utilization_summary(np.stack([np.eye(3), np.eye(3)]), 1)
    assert balanced["layer"].tolist() == [0, 1]
    np.testing.assert_allclose(balanced["load_balance"], 1.0)
    np.testing.assert_allclose(balanced[["rel_perplexity", "jain"]], 1.0)
    np.testing.assert_array_equal(balanced["dead_experts"], 0)
    assert math.isclose(float(load_balance_statistic(np.eye(3), 1)), 1.0)


def test_max_violation():
    assert max_violation([3, 3, 3]) == 0.0
    assert max_violation(torch.tensor([6, 0, 0])) == 2.0
    np.testing.assert_allclose(max_violation([[4, 2, 0, 2], [1, 1, 1, 1]]), [1, 0])


def test_router_entropy_by_hand():
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    combine = np.array([[0.25, 0.25, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = router_entropy(torch.tensor(probs), torch.tensor(combine), q=2.0)
    assert math.isclose(out["full"], math.log(4) / 2)
    # the token with no weight is left out; the other splits evenly over 2
    assert math.isclose(out["selected"], math.log(2))
    # S_2 = 1 - sum p^2: 0.75 (uniform, the maximum) and 0 -> mean 0.5
    assert math.isclose(out["tsallis"], 0.5)
    assert set(router_entropy(probs)) == {"full"}
    with pytest.raises(ValueError, match="q must be positive and not 1"):
        router_entropy(probs, q=1.0)


def test_coactivation_by_hand():
    selection = np.array([[0, 1], [0, 2], [1, 2], [0, 1]])
    counts = coactivation(selection, 3)
    expected = np.array([[3, 2, 1], [2, 3, 1], [1, 1, 2]], dtype=float)
    np.testing.assert_array_equal(counts, expected)
    normalized = coactivation(selection, 4, normalize=True)
    np.testing.assert_allclose(normalized[0, :3], [1, 2 / 3, 1 / 3])
    np.testing.assert_array_equal(normalized[3], 0.0)  # an unused expert
    per_layer = coactivation(np.stack([selection, selection]), 3)
    assert per_layer.shape == (2, 3, 3)


class Gate(nn.Module):
    """A router stand-in with a float32 projection and ``logits``."""

    def __init__(self, d, m, seed):
        super().__init__()
        self.n_experts = m
        self.proj = nn.Linear(d, m)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            self.proj.weight.copy_(torch.randn(m, d, generator=g))
            self.proj.bias.zero_()

    def logits(self, x):
        return self.proj(x.float())

    def forward(self, x):
        logits = self.logits(x)
        if logits.dim() == 2:
            logits = logits.unsqueeze(0)
        probs = logits.softmax(-1)
        weight, idx = probs.topk(2, dim=-1)
        dispatch, combine = dense_from_slots(idx, weight, self.n_experts)
        return Routing(logits, probs, dispatch, combine, idx, weight)


@pytest.fixture
def trained_recorders():
    generator = torch.Generator().manual_seed(1)
    probe = torch.randn(40, 4, generator=generator)
    gates = [Gate(4, 6, seed) for seed in range(3)]
    experts = LinearExperts(6, 4, 4, random_state=0)
    layers = [gates[0], MoELayer(gates[1], experts), gates[2]]
    recorders = {
        "logits": RoutingRecorder(probe, record_every=2),
        "selections": RoutingRecorder(probe, record_every=2, store="selections", k=2),
    }
    for step in range(7):
        for recorder in recorders.values():
            recorder.record(step, layers)
        with torch.no_grad():
            for gate in gates:
                noise = torch.randn(6, 4, generator=generator)
                gate.proj.weight.add_(0.3 * noise)
    return recorders


def test_recorder_stores_the_right_dtype_and_shapes(trained_recorders):
    logits_rec = trained_recorders["logits"]
    selections_rec = trained_recorders["selections"]
    assert logits_rec.steps == [0, 2, 4, 6]
    assert logits_rec.records[0].dtype == np.float16
    assert logits_rec.records[0].shape == (3, 40, 6)
    assert logits_rec.logits().shape == (4, 3, 40, 6)
    assert selections_rec.records[0].dtype == np.uint8
    assert selections_rec.records[0].shape == (3, 40, 2)
    np.testing.assert_array_equal(
        logits_rec.selections(2), selections_rec.selections(2)
    )
    with pytest.raises(ValueError, match="Only the top-2 ids were stored"):
        selections_rec.saturation(3)
    with pytest.raises(ValueError, match="Only selections were stored"):
        selections_rec.logits()


def test_recorder_tables(trained_recorders):
    recorder = trained_recorders["logits"]
    saturation = recorder.saturation(2)
    assert list(saturation.columns) == ["step", "layer", "k", "saturation"]
    assert len(saturation) == 4 * 3
    last = saturation[saturation["step"] == 6]
    np.testing.assert_array_equal(last["saturation"], 100.0)
    means = saturation.groupby("step")["saturation"].mean().to_numpy()
    np.testing.assert_allclose(means, router_saturation(recorder.selections(2)))
    change = recorder.change_rate(1)
    assert list(change.columns) == ["step", "layer", "k", "change_rate"]
    assert change["step"].unique().tolist() == [2, 4, 6]
    utilization = recorder.utilization(2)
    assert list(utilization.columns) == ["step", "layer", "expert", "utilization"]
    assert len(utilization) == 4 * 3 * 6
    sums = utilization.groupby(["step", "layer"])["utilization"].sum()
    np.testing.assert_allclose(sums, 1.0)
    summary = recorder.utilization_summary(2)
    assert list(summary.columns[:3]) == ["step", "layer", "load_balance"]
    other = trained_recorders["selections"].utilization_summary()
    assert "load_balance" not in other
    pd.testing.assert_series_equal(summary["jain"], other["jain"])


def test_recorder_refuses_bad_use():
    probe = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="store='selections' needs k"):
        RoutingRecorder(probe, store="selections")
    with pytest.raises(ValueError, match="store must be"):
        RoutingRecorder(probe, store="ids")
    recorder = RoutingRecorder(probe)
    recorder.record_logits(5, [np.zeros((3, 4))])
    with pytest.raises(ValueError, match="Steps must increase"):
        recorder.record_logits(5, [np.zeros((3, 4))])
    with pytest.raises(ValueError, match="Give k"):
        recorder.saturation()
    with pytest.raises(ValueError, match="at least 2"):
        recorder.change_rate(1)


def test_recorder_keeps_training_mode_and_per_layer_probes():
    gates = [Gate(4, 5, 0), Gate(3, 5, 1)]
    probes = [torch.ones(6, 4), torch.ones(6, 3)]
    recorder = RoutingRecorder(probes, k=1)
    assert recorder.record(0, gates)
    assert all(gate.training for gate in gates)
    assert recorder.records[0].shape == (2, 6, 5)
    assert recorder.record(1, gates)
    assert recorder.steps == [0, 1]


def test_log_stats(trained_recorders):
    recorder = trained_recorders["logits"]
    gate = Gate(4, 6, 0)
    routing = gate(torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(2)))
    routing.stats["tokens_per_expert"] = routing.dispatch.sum(dim=1)
    routing.aux["lb"] = torch.tensor(1.5)
    recorder.log_stats(3, routing, layer=1)
    table = recorder.stats_table()
    assert list(table.columns) == ["step", "layer", "name", "value"]
    values = dict(zip(table["name"], table["value"], strict=True))
    assert values["experts_per_token"] == 2.0
    assert values["tokens_left_behind"] == 0.0
    assert values["empty_slot_fraction"] == 0.0
    assert values["aux_lb"] == 1.5
    assert values["tokens_per_expert"] == pytest.approx(20 * 2 / 6)
    counts = routing.dispatch.sum(dim=1)[0].numpy()
    assert values["max_violation"] == pytest.approx(counts.max() / counts.mean() - 1)
    assert table["step"].unique().tolist() == [3]


def test_plots_return_their_axes(trained_recorders):
    recorder = trained_recorders["logits"]
    ax = plot_expert_utilization(recorder.utilization(2))
    assert ax.get_xlabel() == "expert"
    assert ax.images[0].get_array().shape == (3, 6)
    plt.close(ax.figure)
    fig, ax = plt.subplots()
    assert plot_expert_utilization(np.full((2, 4), 0.25), ax=ax, cmap="magma") is ax
    plt.close(fig)
    table = pd.concat([recorder.saturation(1), recorder.saturation(2)])
    ax = plot_router_saturation(table)
    assert len(ax.lines) == 2 * (1 + 3)  # per k: the layer mean and 3 layers
    np.testing.assert_allclose(ax.lines[0].get_ydata()[-1], 100.0)
    plt.close(ax.figure)
    ax = plot_router_change_rate(recorder.change_rate(2), color="k")
    assert ax.get_ylabel() == "router change rate (%)"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="no column 'saturation'"):
        plot_router_saturation(recorder.change_rate(2))


def test_saturation_and_change_plots_take_a_label():
    import matplotlib.pyplot as plt
    import pandas as pd

    from moestat.plotting import plot_router_change_rate, plot_router_saturation

    table = pd.DataFrame(
        {
            "step": [0, 1, 2],
            "layer": [0, 0, 0],
            "k": [1, 1, 1],
            "saturation": [50.0, 80.0, 100.0],
            "change_rate": [0.0, 30.0, 10.0],
        }
    )
    for plot in (plot_router_saturation, plot_router_change_rate):
        ax = plot(table, label="top-k router")
        assert ax.get_lines()[0].get_label().startswith("top-k router")
        plt.close(ax.figure)


def test_the_recorder_sees_the_choices_the_balancing_bias_makes():
    from moestat.routing import NormalizedSigmoidRouter

    router = NormalizedSigmoidRouter(4, 8, top_k=2, random_state=0)
    router.expert_bias[3] = 10.0  # every token now takes expert 3
    probe = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    chosen = router.eval()(probe).topk_idx.reshape(-1, 2)
    assert (chosen == 3).any(dim=-1).all()

    ids = RoutingRecorder(probe, store="selections", k=2)
    assert ids.record(0, [router])
    recorded = ids.selections(2)[0, 0]
    assert (recorded == 3).any(axis=-1).all()
    np.testing.assert_array_equal(
        np.sort(recorded, axis=-1), np.sort(chosen.numpy(), axis=-1)
    )

    scores = RoutingRecorder(probe, k=2)
    assert scores.record(0, [router])
    assert not scores.scores_are_logits
    assert scores.utilization_summary()["load_balance"].isna().all()


def test_prototype_selection_scores_rank_each_prototypes_winners_first():
    from moestat.routing import PrototypeRouter

    router = PrototypeRouter(4, 8, n_prototypes=2, k=1, random_state=0).eval()
    routing = router(torch.randn(1, 30, 4, generator=torch.Generator().manual_seed(1)))
    top = router.selection_scores(routing).topk(2, dim=-1).indices
    dispatched = routing.dispatch[0].nonzero()  # (token, expert) pairs
    for token in range(30):
        experts = dispatched[dispatched[:, 0] == token, 1]
        assert set(experts.tolist()) <= set(top[0, token].tolist())
