"""Gate covariates apart from expert covariates (gate_features, expert_features)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moestat import GaussianMoE, MultinomialLogisticMoE
from moestat.cli import main

#: The truth: the gate on x1, the experts on x2 (x3 is noise).
GATE = np.array([0.5, 3.0])  # intercept and slope of expert 2's score on x1
EXPERTS = np.array([[1.0, 2.0], [-1.0, -1.5]])  # intercept and slope on x2
SD = 0.3


def concomitant_data(rng, n=3000):
    """A DataFrame (x1, x2, x3) and y: the gate reads x1, the experts x2."""
    X = pd.DataFrame(rng.uniform(-2, 2, size=(n, 3)), columns=["x1", "x2", "x3"])
    second = rng.random(n) < 1 / (1 + np.exp(-(GATE[0] + GATE[1] * X["x1"])))
    coef = EXPERTS[second.astype(int)]
    y = coef[:, 0] + coef[:, 1] * X["x2"] + rng.normal(0, SD, n)
    return X, pd.Series(y, name="spend")


def test_a_gate_on_x1_and_experts_on_x2_recover_the_truth(rng):
    X, y = concomitant_data(rng)
    est = GaussianMoE(
        2, gate_features=["x1"], expert_features=["x2"], random_state=0
    ).fit(X, y)
    order = np.argsort(est.expert_coef_[:, 0])[::-1]  # expert 1 has intercept +1
    np.testing.assert_allclose(est.expert_coef_[order], EXPERTS, atol=0.05)
    np.testing.assert_allclose(np.sqrt(est.expert_var_), SD, rtol=0.1)
    slope = est.gate_coef_[1] - est.gate_coef_[0]
    sign = 1.0 if order[0] == 0 else -1.0
    np.testing.assert_allclose(sign * slope, GATE, atol=0.3)
    params = est.inference().params.index.tolist()
    assert sorted(params) == sorted(
        [
            "gate2[const]",
            "gate2[x1]",
            "expert1[const]",
            "expert1[x2]",
            "expert1[variance]",
            "expert2[const]",
            "expert2[x2]",
            "expert2[variance]",
        ]
    )
    assert est.gate_feature_names_ == ["const", "x1"]
    assert est.expert_feature_names_ == ["const", "x2"]
    # 2 gate + 2 * 3 expert parameters
    assert est.n_parameters_ == 8


def test_selecting_every_column_equals_the_default_fit_exactly(rng):
    X, y = concomitant_data(rng, n=800)
    default = GaussianMoE(2, n_init=2, random_state=0).fit(X, y)
    chosen = GaussianMoE(
        2,
        gate_features=["x1", "x2", "x3"],
        expert_features=[0, 1, 2],
        n_init=2,
        random_state=0,
    ).fit(X, y)
    np.testing.assert_array_equal(chosen.gate_coef_, default.gate_coef_)
    np.testing.assert_array_equal(chosen.expert_coef_, default.expert_coef_)
    np.testing.assert_array_equal(chosen.expert_var_, default.expert_var_)
    assert chosen.log_likelihood_ == default.log_likelihood_
    np.testing.assert_array_equal(chosen.predict(X), default.predict(X))


def test_prediction_and_scoring_read_the_selected_columns(rng):
    X, y = concomitant_data(rng, n=600)
    est = GaussianMoE(
        2, gate_features=["x1"], expert_features=["x2"], n_init=1, random_state=0
    )
    est.fit(X, y)
    moved = X.assign(x3=X["x3"] + 100.0)  # a column neither part reads
    np.testing.assert_array_equal(est.predict(moved), est.predict(X))
    np.testing.assert_array_equal(est.score_samples(moved, y), est.score_samples(X, y))
    np.testing.assert_array_equal(est.predict_gate(moved), est.predict_gate(X))
    by_index = GaussianMoE(
        2, gate_features=[0], expert_features=[1], n_init=1, random_state=0
    )
    by_index.fit(X.to_numpy(), y.to_numpy())
    np.testing.assert_array_equal(by_index.predict(X.to_numpy()), est.predict(X))
    assert by_index.gate_feature_names_ == ["const", "x0"]


def test_a_classifier_takes_its_own_gate_covariates(rng):
    X, y = concomitant_data(rng, n=600)
    labels = np.where(y > 0, "high", "low")
    clf = MultinomialLogisticMoE(
        2, gate_features=["x1"], expert_features=["x2", "x3"], n_init=1, alpha=1.0
    ).fit(X, labels)
    assert clf.gate_feature_names_ == ["const", "x1"]
    assert clf.expert_feature_names_ == ["const", "x2", "x3"]
    assert clf.predict_proba(X).shape == (600, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gate_features": ["x9"]}, "gate_features names an unknown column 'x9'"),
        ({"expert_features": [3]}, "expert_features holds the column index 3"),
        ({"gate_features": []}, "gate_features is empty"),
        ({"expert_features": ["x1", 0]}, r"selects column\(s\) \[0\] more than once"),
        ({"gate_features": 1.5}, "'gate_features' parameter of GaussianMoE"),
    ],
)
def test_a_bad_selection_is_refused_by_name(rng, options, message):
    X, y = concomitant_data(rng, n=100)
    with pytest.raises(ValueError, match=message):
        GaussianMoE(2, n_init=1, **options).fit(X, y)


def test_a_name_needs_a_data_frame(rng):
    X, y = concomitant_data(rng, n=100)
    with pytest.raises(ValueError, match="X has no column names"):
        GaussianMoE(2, gate_features=["x1"], n_init=1).fit(X.to_numpy(), y)


def test_the_command_line_gives_each_part_its_columns(tmp_path, rng, capsys):
    X, y = concomitant_data(rng, n=600)
    path = tmp_path / "data.csv"
    X.assign(spend=y).to_csv(path, index=False)
    argv = ["fit", str(path), "--target", "spend", "--experts", "2", "--n-init", "1"]
    assert main([*argv, "--gate-features", "x1", "--expert-features", "x2"]) == 0
    out = capsys.readouterr().out
    assert "gate2" in out and "x1" in out and "x2" in out
    assert "x3" not in out
    assert "spend" in out  # the response's name
    assert main([*argv, "--gate-features", "x1", "spend"]) == 2
    err = capsys.readouterr().err
    assert "--gate-features names 'spend', not among the covariates" in err


def test_the_torch_backend_fits_the_same_selection(rng):
    pytest.importorskip("torch")
    X, y = concomitant_data(rng, n=800)
    options = dict(gate_features=["x1"], expert_features=["x2"], n_init=2)
    numpy_fit = GaussianMoE(2, random_state=0, **options).fit(X, y)
    torch_fit = GaussianMoE(2, random_state=0, backend="torch", **options).fit(X, y)
    assert torch_fit.gate_feature_names_ == ["const", "x1"]
    np.testing.assert_allclose(
        torch_fit.log_likelihood_, numpy_fit.log_likelihood_, rtol=1e-8
    )


def test_draws_from_the_fit_read_only_the_selected_columns(rng):
    """sample() simulates from the fitted model through its own columns."""
    X, y = concomitant_data(rng, n=800)
    est = GaussianMoE(
        2, gate_features=["x1"], expert_features=["x2"], n_init=1, random_state=0
    ).fit(X, y)
    noise_moved = X.assign(x3=X["x3"] + 10.0)
    gate_moved = X.assign(x1=X["x1"] + 1.0)
    draws = est.sample(X, random_state=1)
    np.testing.assert_array_equal(est.sample(noise_moved, random_state=1), draws)
    assert not np.array_equal(est.sample(gate_moved, random_state=1), draws)
