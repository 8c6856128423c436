"""compare_routers: every router trains, tables are tidy, runs repeat, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from moestat.plotting import (  # noqa: E402
    plot_router_comparison,
    plot_training_curves,
)
from moestat.routing import (  # noqa: E402
    NormalizedSigmoidRouter,
    TopKSoftmaxRouter,
)
from moestat.routing.experiment import (  # noqa: E402
    RouterComparison,
    RouterSpec,
    compare_routers,
    default_routers,
)

TINY = dict(
    n_train=256,
    n_probe=64,
    d_model=8,
    n_experts=4,
    k=2,
    d_hidden=8,
    steps=20,
    batch_size=64,
    groups=2,
    record_every=5,
    progress=False,
)
ALL_ROUTERS = list(default_routers(4, 2, 20))


@pytest.fixture(scope="module")
def regression():
    return compare_routers("regression", **TINY)


@pytest.fixture(scope="module")
def classification():
    return compare_routers("classification", ["dense softmax", "expert choice"], **TINY)


def test_every_default_router_runs(regression):
    assert ALL_ROUTERS == [
        "dense softmax",
        "top-k softmax",
        "noisy top-k",
        "prototype",
        "expert choice",
        "dense-to-sparse",
        "tsallis hybrid",
        "sigmoid + shared",
    ]
    assert isinstance(regression, RouterComparison)
    assert regression.routers == ALL_ROUTERS
    assert regression.metric == "mse"
    assert regression.k == 2
    assert 0 < regression.truth_metric < 0.05  # the noise variance, 0.01
    assert np.isfinite(regression.history[["loss", "aux_loss", "mse"]]).all().all()


def test_tables_have_the_expected_columns(regression):
    r = regression
    expected = {
        "history": ["router", "step", "loss", "aux_loss", "mse"],
        "saturation": ["router", "step", "layer", "k", "saturation"],
        "change_rate": ["router", "step", "layer", "k", "change_rate"],
        "utilization": ["router", "step", "layer", "expert", "utilization"],
        "utilization_summary": [
            "router",
            "step",
            "layer",
            "load_balance",
            "rel_perplexity",
            "jain",
            "dead_experts",
            "cv",
        ],
        "routing_stats": [
            "router",
            "step",
            "experts_per_token",
            "dropped_fraction",
            "tokens_left_behind",
            "max_violation",
        ],
    }
    for name, columns in expected.items():
        table = getattr(r, name)
        assert isinstance(table, pd.DataFrame)
        assert list(table.columns) == columns, name
        assert table["router"].unique().tolist() == ALL_ROUTERS, name
    assert list(r.final.columns) == [
        "mse",
        "loss",
        "experts_per_token",
        "dropped_fraction",
        "tokens_left_behind",
        "jain",
        "rel_perplexity",
        "dead_experts",
        "saturation_half",
        "change_rate_last",
        "n_parameters",
        "seconds",
    ]
    # one history row per step; records at 0, 5, ..., 20; k = 1 and k = 2
    assert (r.history.groupby("router").size() == 20).all()
    assert sorted(r.saturation["step"].unique()) == [0, 5, 10, 15, 20]
    assert sorted(r.saturation["k"].unique()) == [1, 2]
    assert sorted(r.change_rate["step"].unique()) == [5, 10, 15, 20]
    assert (r.utilization.groupby(["router", "step"]).size() == 4).all()
    last = r.saturation[r.saturation["step"] == 20]["saturation"]
    assert np.allclose(last, 100.0)


def test_routing_statistics_follow_each_router(regression):
    stats = regression.routing_stats.groupby("router")
    epk = stats["experts_per_token"]
    assert np.allclose(epk.get_group("dense softmax"), 4.0)
    assert np.allclose(epk.get_group("noisy top-k"), 2.0)
    # expert choice: capacity factor k, so k experts per token on average
    assert np.allclose(epk.get_group("expert choice"), 2.0)
    dts = epk.get_group("dense-to-sparse").to_numpy()
    assert dts[0] > 3.0 > 1.6 > dts[-1]  # advance() anneals the temperature
    dropless = ["dense softmax", "noisy top-k", "tsallis hybrid", "sigmoid + shared"]
    for name in dropless:
        assert (stats["dropped_fraction"].get_group(name) == 0).all()
    summary = regression.utilization_summary.groupby("router")["load_balance"]
    for name in ("prototype", "sigmoid + shared"):
        assert summary.get_group(name).isna().all()
    assert summary.get_group("top-k softmax").notna().all()
    final = regression.final
    assert (
        final.loc["sigmoid + shared", "n_parameters"]
        > final.loc["top-k softmax", "n_parameters"]
    )


def test_loss_decreases_for_dense_and_topk():
    result = compare_routers(
        "regression", ["dense softmax", "top-k softmax"], **{**TINY, "steps": 60}
    )
    for name in result.routers:
        loss = result.history.loc[result.history["router"] == name, "loss"]
        assert loss.tail(10).mean() < 0.5 * loss.head(5).mean(), name
    mse = result.final["mse"]
    assert (mse < result.history.groupby("router")["mse"].first()).all()


def test_classification_reports_accuracy(classification):
    r = classification
    assert r.metric == "accuracy"
    assert list(r.history.columns) == ["router", "step", "loss", "aux_loss", "accuracy"]
    assert r.final.columns[0] == "accuracy"
    assert r.history["accuracy"].between(0, 1).all()
    assert 0.5 < r.truth_metric <= 1.0


def test_same_random_state_repeats_exactly():
    names = ["top-k softmax", "noisy top-k", "dense-to-sparse"]
    config = {**TINY, "steps": 10}
    first = compare_routers("regression", names, random_state=3, **config)
    second = compare_routers("regression", names, random_state=3, **config)
    other = compare_routers("regression", names, random_state=4, **config)
    for name in (
        "history",
        "saturation",
        "change_rate",
        "utilization",
        "utilization_summary",
        "routing_stats",
    ):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    pd.testing.assert_frame_equal(
        first.final.drop(columns="seconds"), second.final.drop(columns="seconds")
    )
    assert not np.allclose(first.history["loss"], other.history["loss"])


def test_the_callers_torch_generator_is_untouched():
    state = torch.random.get_rng_state()
    compare_routers("regression", ["dense softmax"], **{**TINY, "steps": 2})
    assert torch.equal(state, torch.random.get_rng_state())


def test_custom_router_specs_and_hooks():
    built = []

    class CountingSigmoid(NormalizedSigmoidRouter):
        calls = 0

        def update_bias(self, routing, rate=None):
            type(self).calls += 1
            return super().update_bias(routing, rate)

    def sigmoid(d, m, k, seed):
        built.append(CountingSigmoid(d, m, top_k=k, random_state=seed))
        return built[-1]

    routers = {
        "switch": lambda d, m, k, seed: TopKSoftmaxRouter.switch(
            d, m, random_state=seed
        ),
        "sigmoid": RouterSpec(sigmoid, n_shared_experts=2),
        "reference": "dense softmax",
    }
    result = compare_routers("regression", routers, **{**TINY, "steps": 6})
    assert result.routers == ["switch", "sigmoid", "reference"]
    assert CountingSigmoid.calls == 6
    assert built[0].expert_bias.abs().sum() > 0
    stats = result.routing_stats.groupby("router")["experts_per_token"]
    assert stats.get_group("switch").max() <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "ranking"}, "task must be one of"),
        ({"routers": ["top-k softmax", "nope"]}, "Unknown router 'nope'"),
        ({"routers": []}, "routers is empty"),
        ({"routers": {"x": 3}}, r"routers\['x'\] must be a RouterSpec"),
        ({"routers": 3}, "routers must be None"),
        ({"batch_size": 30, "groups": 4}, "must be a multiple of groups=4"),
        ({"k": 5}, "k must be <= n_experts=4"),
        ({"steps": 0}, "steps must be an int >= 1"),
        ({"lr": -1.0}, "lr must be a positive finite float"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"device": "tpu9"}, "device must be"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    config = {**TINY, **kwargs}
    task = config.pop("task", "regression")
    with pytest.raises(ValueError, match=message):
        compare_routers(task, **config)


def test_plot_training_curves_returns_its_axes(regression):
    fig, ax = plt.subplots()
    assert plot_training_curves(regression.history, "mse", ax) is ax
    assert [line.get_label() for line in ax.lines] == ALL_ROUTERS
    plt.close(fig)
    ax = plot_training_curves(regression.history, window=5)
    assert len(ax.lines) == len(ALL_ROUTERS)
    assert "rolling mean of 5" in ax.get_ylabel()
    plt.close(ax.figure)
    # a table with several k draws one line per router and k
    ax = plot_training_curves(regression.saturation, "saturation")
    assert len(ax.lines) == 2 * len(ALL_ROUTERS)
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="no column 'accuracy'"):
        plot_training_curves(regression.history, "accuracy")
    with pytest.raises(ValueError, match="window must be a positive int"):
        plot_training_curves(regression.history, window=0)
    plt.close("all")


@pytest.mark.parametrize(
    "what", ["loss", "aux_loss", "mse", "saturation", "change_rate", "utilization"]
)
def test_comparison_plots(regression, what):
    ax = plot_router_comparison(regression, what)
    assert ax.figure is not None
    plt.close(ax.figure)


def test_comparison_plot_errors(regression):
    with pytest.raises(ValueError, match="Unknown plot 'pie'"):
        plot_router_comparison(regression, "pie")
    with pytest.raises(ValueError, match="No saturation was recorded for k=3"):
        plot_router_comparison(regression, "saturation", k=3)
    plt.close("all")
