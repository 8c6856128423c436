"""The convergence-rate laboratory: store, cells, sweeps, backends, rates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moestat.simulation import (
    SCENARIOS,
    Cell,
    ResultStore,
    cell_seed,
    estimate_rate,
    format_rates,
    get_scenario,
    list_scenarios,
    load_results,
    oracle_params,
    plan_cells,
    read_records,
    run_cell,
    simulate,
    summarize_losses,
)
from moestat.simulation.store import CELLS_FILE, cell_identity

SMALL_GRID = [150, 300, 600]
VOLATILE = ["fit_time"]  # the only column allowed to differ between runs


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    return (
        frame.drop(columns=VOLATILE)
        .sort_values("key")
        .reset_index(drop=True)
        .reindex(sorted(frame.columns.drop(VOLATILE)), axis=1)
    )


# -- the store ---------------------------------------------------------------
def _record(n: int, **values) -> dict:
    """A minimal valid record of the SG-E cell at ``n``, replicate 0."""
    return {**cell_identity("SG-E", "m=2", n, 0), **values}


def test_store_appends_each_record_once_and_reads_it_back(tmp_path):
    store = ResultStore(tmp_path)
    a, b = _record(100, kl=0.5), _record(200, kl=np.float64(np.nan))
    assert store.append(a)
    assert not store.append({**a, "kl": 0.7})
    assert store.append(b)
    records = ResultStore(tmp_path).records()
    assert [r["key"] for r in records] == [a["key"], b["key"]]
    assert records[0]["kl"] == 0.5 and records[1]["kl"] is None


def test_a_new_store_starts_with_its_format_line(tmp_path):
    ResultStore(tmp_path / "new").append(_record(100, kl=0.5))
    lines = (tmp_path / "new" / CELLS_FILE).read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "moestat-cells", "version": 1}
    assert [json.loads(line)["key"] for line in lines[1:]] == [_record(100)["key"]]


def test_a_half_written_last_line_is_ignored_and_then_overwritten(tmp_path):
    store = ResultStore(tmp_path)
    a, b = _record(100, kl=0.5), _record(200, kl=0.25)
    store.append(a)
    with open(tmp_path / CELLS_FILE, "a") as handle:
        handle.write(json.dumps(b)[:30])  # killed mid-write
    assert [r["key"] for r in read_records(tmp_path / CELLS_FILE)] == [a["key"]]
    reopened = ResultStore(tmp_path)
    assert reopened.keys() == {a["key"]}
    assert not (tmp_path / CELLS_FILE).read_text().endswith("\n")  # read, not cut
    reopened.append(b)
    lines = (tmp_path / CELLS_FILE).read_text().splitlines()
    assert [json.loads(line).get("key") for line in lines] == [None, a["key"], b["key"]]


def test_load_results_names_the_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="moestat simulate"):
        load_results(tmp_path / "nothing")


# -- scenarios and cells -----------------------------------------------------
def test_every_scenario_of_the_experiment_list_is_registered():
    ids = {"SG-E", "SG-O", "DS-1", "DS-2", "DS-3", "DS-4", "DS-S"}
    ids |= {"ML-R1", "ML-R2", "ML-MOD", "MJ-1", "MJ-2", "MJ-3"}
    assert ids <= set(SCENARIOS)
    for sid, title in list_scenarios():
        assert title and sid in SCENARIOS


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(ValueError, match="SG-E"):
        get_scenario("XX-9")
    assert get_scenario("sg-e").id == "SG-E"


def test_cell_seeds_come_from_the_cell_alone():
    assert cell_seed(0, "SG-E", 100, 3) == cell_seed(0, "SG-E", 100, 3)
    seeds = {
        cell_seed(s, sid, n, r)
        for s in (0, 1)
        for sid in ("SG-E", "SG-O")
        for n in (100, 200)
        for r in range(5)
    }
    assert len(seeds) == 40


def test_plan_cells_covers_the_grid_once():
    scenario = get_scenario("SG-O")
    cells = plan_cells(scenario, [100, 200], 3, seed=7)
    assert len(cells) == 2 * 3 * len(scenario.fits)
    assert len({cell.key for cell in cells}) == len(cells)
    with pytest.raises(ValueError, match="has no fit"):
        plan_cells(scenario, [100], 1, fits=["m=9"])


@pytest.mark.parametrize("sid", [sid for sid in SCENARIOS if sid not in ("DS-4",)])
def test_the_oracle_layout_of_an_over_specified_fit_is_the_true_density(sid):
    # Copies of a true expert share its mass, so before the perturbation the
    # fitted model *is* the truth (except in the dense sigmoid regime, where
    # no split of a sigmoid with a slope equals it).
    scenario = SCENARIOS[sid]
    X, _ = scenario.covariates.quadrature(50)
    y, _ = scenario.truth.sample(X, np.random.default_rng(0))
    for spec in scenario.fits:
        if spec.init != "oracle":
            continue
        model = spec.model.with_params(
            oracle_params(scenario.truth, spec.model, spec.assignment)
        )
        np.testing.assert_allclose(
            model.log_pdf(X, y), scenario.truth.log_pdf(X, y), rtol=0, atol=1e-10
        )


def test_an_assignment_that_skips_a_true_expert_is_refused():
    scenario = get_scenario("SG-O")
    spec = scenario.fit("m=3")
    with pytest.raises(ValueError, match="every true expert"):
        oracle_params(scenario.truth, spec.model, (0, 0, 0))


def test_a_cell_is_reproducible_from_its_record():
    cell = Cell("SG-E", "m=2", 300, 2, 11)
    first, second = run_cell("SG-E", cell), run_cell("SG-E", cell)
    first.pop("fit_time"), second.pop("fit_time")
    assert first == second
    assert first["seed"] == cell_seed(11, "SG-E", 300, 2)
    for column in ("kl", "hellinger", "tv", "voronoi", "log_likelihood", "n_iter"):
        assert np.isfinite(first[column])
    assert first["kl"] > 0 and not first["opt_failure"]


# -- sweeps: resume, kill, backends ------------------------------------------
def test_a_restarted_sweep_runs_only_the_missing_cells(tmp_path):
    simulate("SG-E", tmp_path, n_grid=SMALL_GRID, n_reps=1, progress=False)
    first = load_results(tmp_path)
    simulate("SG-E", tmp_path, n_grid=SMALL_GRID, n_reps=2, progress=False)
    both = load_results(tmp_path)
    assert len(first) == 3 and len(both) == 6
    assert both["key"].is_unique
    kept = both.set_index("key").loc[first["key"], "fit_time"].to_numpy()
    np.testing.assert_array_equal(kept, first["fit_time"].to_numpy())
    lines = (tmp_path / CELLS_FILE).read_text().splitlines()
    assert len(lines) == 1 + 6  # the format line and each cell once


def _simulate_command(out: Path, n_grid: str, reps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "moestat",
        "simulate",
        "SG-E",
        "--n-grid",
        n_grid,
        "--reps",
        str(reps),
        "--out",
        str(out),
        "--quiet",
    ]


def test_a_sweep_killed_with_sigkill_and_restarted_has_exactly_the_cells_of_an_uninterrupted_run(  # noqa: E501
    tmp_path,
):
    grid, reps = "200,400,800,1600,3200,6400", 3
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    complete = tmp_path / "complete"
    subprocess.run(
        _simulate_command(complete, grid, reps),
        check=True,
        env=env,
        capture_output=True,
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _simulate_command(killed, grid, reps),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cells_file = killed / CELLS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if cells_file.exists() and len(read_records(cells_file)) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = len(read_records(cells_file))
    assert 3 <= interrupted < 18, "the kill must land mid-sweep"
    subprocess.run(
        _simulate_command(killed, grid, reps), check=True, env=env, capture_output=True
    )
    lines = cells_file.read_text().splitlines()
    assert len(lines) == 1 + 18  # the format line, and nothing stored twice
    pd.testing.assert_frame_equal(
        _cells(load_results(killed)), _cells(load_results(complete))
    )


def test_loky_and_a_dask_local_cluster_give_identical_cells(tmp_path):
    from dask import distributed  # the dask extra is part of the test install

    grid = dict(n_grid=[200, 400], n_reps=2, progress=False)
    simulate("SG-O", tmp_path / "loky", n_jobs=2, parallel="loky", **grid)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        simulate("SG-O", tmp_path / "client", parallel="dask", scheduler=client, **grid)
        # a scheduler address, as `moestat simulate --scheduler ADDR` gives
        simulate(
            "SG-O",
            tmp_path / "address",
            parallel="dask",
            scheduler=cluster.scheduler_address,
            **grid,
        )
    loky = load_results(tmp_path / "loky")
    assert len(loky) == 8
    for other in ("client", "address"):
        pd.testing.assert_frame_equal(
            _cells(loky), _cells(load_results(tmp_path / other))
        )


def test_sweep_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        simulate(
            "SG-E", tmp_path, n_grid=[100], n_reps=1, backend="spark", progress=False
        )
    with pytest.raises(ValueError, match="scheduler"):
        simulate(
            "SG-E", tmp_path, n_grid=[100], n_reps=1, parallel="dask", progress=False
        )
    with pytest.raises(ValueError, match="n_grid"):
        simulate("SG-E", tmp_path, n_grid=[1], n_reps=1, progress=False)
    with pytest.raises(ValueError, match="n_reps"):
        simulate("SG-E", tmp_path, n_grid=[100], n_reps=0, progress=False)


# -- rates -------------------------------------------------------------------
def _synthetic(slope: float, reps: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = np.repeat(np.geomspace(100, 1e5, 8).round(), reps)
    loss = 2.0 * n**slope * rng.lognormal(0.0, 0.3, n.size)
    return pd.DataFrame({"scenario": "toy", "fit": "m=2", "n": n, "kl": loss})


@pytest.mark.parametrize("slope", [-1.0, -0.5, -0.25])
def test_estimate_rate_recovers_a_known_slope_inside_its_interval(slope):
    rates = estimate_rate(_synthetic(slope), "kl", theory={"kl": slope})
    row = rates.iloc[0]
    assert row["ci_low"] < slope < row["ci_high"]
    assert row["ci_high"] - row["ci_low"] < 0.1
    assert row["verdict"] == "pass" and row["n_points"] == 8
    assert row["ols_ci_low"] < row["slope"] < row["ols_ci_high"]


def test_bootstrap_intervals_cover_the_slope_at_about_their_level():
    hits = [
        (lambda r: r["ci_low"] <= -0.5 <= r["ci_high"])(
            estimate_rate(_synthetic(-0.5, reps=10, seed=s), "kl", n_boot=400).iloc[0]
        )
        for s in range(40)
    ]
    assert 0.8 <= np.mean(hits) <= 1.0


def test_the_median_and_log_n_over_n_forms():
    frame = _synthetic(-0.5)
    median = estimate_rate(frame, "kl", form="median").iloc[0]
    assert abs(median["slope"] + 0.5) < 0.05
    ds = estimate_rate(frame, "kl", form="log_n_over_n").iloc[0]
    # log(n / log n) grows more slowly than log n: the slope is steeper.
    assert ds["slope"] < median["slope"]


def test_theory_comes_from_the_registered_scenario():
    frame = _synthetic(-1.0).assign(scenario="SG-E")
    rates = estimate_rate(frame, "kl")
    assert rates["theory"].iloc[0] == -1.0
    assert "SG-E" in format_rates(rates)


def test_estimate_rate_refuses_bad_arguments():
    frame = _synthetic(-1.0)
    with pytest.raises(ValueError, match="form"):
        estimate_rate(frame, "kl", form="mode")
    with pytest.raises(ValueError, match="not in the results"):
        estimate_rate(frame, "hellinger")
    with pytest.raises(ValueError, match="three or more"):
        estimate_rate(frame[frame["n"] < 500], "kl")


def test_a_short_grid_of_n_is_labelled_at_its_own_sizes():
    import matplotlib.pyplot as plt

    from moestat.plotting import plot_rates

    frame = _synthetic(-1.0)
    short = frame[frame["n"] <= frame["n"].min() * 50]
    sizes = np.unique(short["n"])
    assert 2 <= sizes.size <= 10
    fig, ax = plt.subplots()
    plot_rates(short, "kl", ax=ax, n_boot=20)
    np.testing.assert_allclose(ax.get_xticks(), sizes)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{n:,.0f}" for n in sizes]
    assert all(label.get_text() == "" for label in ax.xaxis.get_minorticklabels())
    plt.close(fig)


def test_loss_columns_are_the_recorded_losses():
    from moestat.simulation import loss_columns

    frame = _synthetic(-1.0).assign(
        voronoi=1.0, fit_time=0.1, n_iter=3, err_slope=[0.1] * 240, other=2.0
    )
    assert loss_columns(frame) == ["kl", "voronoi", "err_slope"]


def test_rate_plot_draws_each_group_with_its_fit_and_theory():
    import matplotlib.pyplot as plt

    from moestat.plotting import plot_rates

    frame = pd.concat(
        [_synthetic(-1.0).assign(fit="m=2"), _synthetic(-0.5, seed=1).assign(fit="m=3")]
    )
    fig, ax = plt.subplots()
    assert plot_rates(frame, "kl", ax=ax, n_boot=50) is ax
    labels = [line.get_label() for line in ax.get_lines()]
    fitted = [label for label in labels if "slope -" in label and "theory" not in label]
    assert len(fitted) == 2 and fitted[0].startswith("toy, m=2")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    plt.close(fig)


def test_summarize_losses_gives_the_per_n_spread():
    summary = summarize_losses(_synthetic(-1.0), "kl")
    assert list(summary["reps"].unique()) == [30]
    assert (summary["q025"] <= summary["median"]).all()
    assert (summary["median"] <= summary["q975"]).all()


def test_a_scenario_can_be_changed_and_run_without_registering_it(tmp_path):
    scenario = replace(get_scenario("SG-E"), id="SG-E-short", max_iter=5)
    simulate(scenario, tmp_path, n_grid=[200], n_reps=1, progress=False)
    record = load_results(tmp_path).iloc[0]
    assert record["scenario"] == "SG-E-short" and record["n_iter"] <= 5


# -- population fits and the Mendes-Jiang studies ----------------------------
def test_population_em_recovers_a_truth_inside_the_model():
    from moestat.losses import kl_divergence
    from moestat.simulation import population_fit

    scenario = get_scenario("SG-E")
    fitted = population_fit(
        scenario.truth,
        scenario.fits[0].model,
        (0, 1),
        scenario.covariates,
        x_nodes=100,
        y_nodes=16,
    )
    X, w = scenario.covariates.quadrature(100)
    assert kl_divergence(scenario.truth, fitted, X, w) < 1e-8


def test_population_em_refuses_a_truth_outside_the_model_by_name():
    from moestat.simulation import population_fit

    mj = get_scenario("MJ-2")
    with pytest.raises(TypeError, match="must be a MixtureOfExperts"):
        population_fit(
            mj.truth, mj.fits[0].model, (0,), mj.covariates, x_nodes=10, y_nodes=4
        )


def test_an_approximation_cell_fits_the_population_once_per_restart():
    scenario = replace(get_scenario("MJ-2"), x_nodes=60, max_iter=200)
    cells = plan_cells(scenario, scenario.n_grid, 2, fits=["m=2,k=1"])
    assert [(c.n, c.replicate) for c in cells] == [(0, 0), (0, 1)]
    record = run_cell(scenario, cells[0])
    assert record["n"] == 0 and record["degree"] == 1 and record["n_experts"] == 2
    assert 0 < record["kl"] < 1.6  # better than one linear expert (KL 1.57)
    with pytest.raises(ValueError, match="no n_grid"):
        simulate(scenario, "unused", n_grid=[100], progress=False)


def test_approximation_rates_and_the_tradeoff_summary():
    from moestat.simulation import approximation_rates, tradeoff_summary

    m = np.array([2, 4, 8, 16])
    rows = [
        {
            "scenario": "MJ-2",
            "fit": f"m={mi},k={k}",
            "n": 0,
            "replicate": r,
            "n_experts": mi,
            "degree": k,
            "kl": mi ** (-2.0 * (k + 1)) * (1 + r),
        }
        for k in (0, 1)
        for mi in m
        for r in range(3)
    ]
    approx = approximation_rates(pd.DataFrame(rows))
    np.testing.assert_allclose(approx["slope"], [-2.0, -4.0])
    np.testing.assert_allclose(approx["theory"], [-2.0, -4.0])
    # KL(n, m) = m^-2 + m / n: the best m grows like n^(1/3), min KL like n^(-2/3)
    n_grid = np.array([1e3, 1e4, 1e5, 1e6])
    rows = [
        {"n": n, "degree": 0, "n_experts": mi, "kl": mi**-2.0 + mi / n}
        for n in n_grid
        for mi in range(1, 200)
    ]
    best, slopes = tradeoff_summary(pd.DataFrame(rows))
    assert best["overall"].all() and len(best) == 4
    row = slopes.iloc[0]
    assert abs(row["loss_slope"] - row["loss_theory"]) < 0.03
    assert abs(row["m_slope"] - row["m_theory"]) < 0.03


def test_a_slope_that_misses_its_theory_by_less_than_the_tolerance_is_close():
    frame = _synthetic(-1.05, reps=200)
    row = estimate_rate(frame, "kl", theory={"kl": -1.0}).iloc[0]
    assert not row["ci_low"] <= -1.0 <= row["ci_high"]
    assert row["verdict"] == "close"
    strict = estimate_rate(frame, "kl", theory={"kl": -1.0}, tolerance=0.01)
    assert strict["verdict"].iloc[0] == "fail"


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_results_export_to_parquet_and_csv(tmp_path, suffix):
    from moestat.simulation import export_results

    simulate("SG-E", tmp_path, n_grid=[150], n_reps=2, progress=False)
    path = export_results(tmp_path, tmp_path / f"cells{suffix}")
    read = pd.read_parquet if suffix == ".parquet" else pd.read_csv
    table = read(path)
    assert len(table) == 2 and {"scenario", "n", "seed", "kl"} <= set(table.columns)
    with pytest.raises(ValueError, match=".parquet or .csv"):
        export_results(tmp_path, tmp_path / "cells.xlsx")
