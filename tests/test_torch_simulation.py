"""Sweeps with the torch engine: the numpy engine's cells, fitted in batches."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from moestat.cli import main  # noqa: E402
from moestat.simulation import (  # noqa: E402
    SCENARIOS,
    Cell,
    ResultStore,
    cell_identity,
    get_scenario,
    load_results,
    plan_batches,
    plan_cells,
    population_fit,
    run_cell,
    simulate,
)
from moestat.simulation import engines as engines_module  # noqa: E402
from moestat.simulation import runners as runners_module  # noqa: E402
from moestat.simulation.store import CELLS_FILE  # noqa: E402

# The torch engine runs the numpy engine's closed-form Gaussian M-step and
# Fisher-scoring gate step in float64 from the same start, so the two differ
# by round-off only: measured, log-likelihoods agree to 1e-15 and losses to
# 1e-10 relative (losses of order 1e-4 are differences of near-equal
# densities, which amplifies round-off). A different algorithm stopped at the
# same tolerance 1e-6 moves the losses by 1e-4 to 1e-2 relative, so these
# tolerances would catch it.
# Per-parameter errors that are zero by construction (the anchored gate
# slope) are round-off of parameters of size 10 to 25: compared absolutely.
LL_RTOL = 1e-12
LOSS_RTOL = 1e-7
ERROR_ATOL = 1e-8
# the columns that may differ between the engines
ENGINE_COLUMNS = ["fit_time", "backend"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # the suite runs one process per core (xdist): one intra-op thread each
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sweep(path, engine, **kwargs):
    simulate(engine=engine, out_dir=path, progress=False, **kwargs)
    return load_results(path).set_index("key").sort_index()


def _assert_same_cells(numpy_cells, torch_cells, loss_rtol=LOSS_RTOL, ll_rtol=LL_RTOL):
    assert list(numpy_cells.index) == list(torch_cells.index)
    assert set(numpy_cells.columns) == set(torch_cells.columns)
    assert set(numpy_cells["backend"]) == {"numpy"}
    assert set(torch_cells["backend"]) == {"torch"}
    exact = ["seed", "n", "replicate", "fit", "n_experts", "converged", "opt_failure"]
    pd.testing.assert_frame_equal(numpy_cells[exact], torch_cells[exact])
    for column in ("log_likelihood", "log_likelihood_true"):
        if numpy_cells[column].isna().all():  # a population fit has no sample
            assert torch_cells[column].isna().all()
            continue
        np.testing.assert_allclose(
            torch_cells[column], numpy_cells[column], rtol=ll_rtol
        )
    losses = [
        c
        for c in numpy_cells.columns
        if c in ("kl", "hellinger", "tv", "voronoi") or c.startswith("err_")
    ]
    assert "kl" in losses
    for column in losses:
        np.testing.assert_allclose(
            torch_cells[column].to_numpy(float),
            numpy_cells[column].to_numpy(float),
            rtol=loss_rtol,
            atol=ERROR_ATOL if column.startswith("err_") else 0.0,
            err_msg=column,
        )


# -- the same cells as the numpy engine ----------------------------------------
@pytest.mark.parametrize(
    ("scenario", "grid", "fits"),
    [
        ("SG-E", [150, 400, 1200], None),  # near-truth starts
        ("SG-O", [1000], ["m=3"]),  # over-specified
        ("MJ-3", [300], ["m=2,k=1"]),  # k-means and random restarts, best kept
    ],
)
def test_a_torch_sweep_gives_the_numpy_sweeps_cells(tmp_path, scenario, grid, fits):
    common = dict(scenario=scenario, n_grid=grid, n_reps=2, fits=fits)
    numpy_cells = _sweep(tmp_path / "numpy", "numpy", **common)
    torch_cells = _sweep(tmp_path / "torch", "torch", batch_cells=3, **common)
    assert len(numpy_cells) == 2 * len(grid)
    _assert_same_cells(numpy_cells, torch_cells)
    np.testing.assert_array_equal(torch_cells["n_iter"], numpy_cells["n_iter"])


def test_a_polished_fit_is_polished_in_a_batch(tmp_path):
    # ML-R1 m=2 ends with L-BFGS: scipy's L-BFGS-B for numpy, the batched
    # L-BFGS for torch. Both run to tol 1e-12 from the same EM fit and stop
    # at the same maximum up to their different line searches: measured
    # 5e-12 relative in log-likelihood and 7e-6 in KL.
    common = dict(scenario="ML-R1", n_grid=[300], n_reps=2, fits=["m=2"])
    numpy_cells = _sweep(tmp_path / "numpy", "numpy", **common)
    torch_cells = _sweep(tmp_path / "torch", "torch", **common)
    assert (torch_cells["n_iter"] > 0).all()
    np.testing.assert_allclose(
        torch_cells["log_likelihood"], numpy_cells["log_likelihood"], rtol=1e-9
    )
    np.testing.assert_allclose(torch_cells["kl"], numpy_cells["kl"], rtol=1e-3)


def test_a_population_fit_runs_its_restarts_in_one_batch(tmp_path):
    cells = plan_cells(get_scenario("MJ-2"), (0,), 2, fits=["m=2,k=0"])
    numpy_record, torch_record = (
        run_cell("MJ-2", cells[1], engine=engine) for engine in ("numpy", "torch")
    )
    assert torch_record["backend"] == "torch" and torch_record["n"] == 0
    assert torch_record["n_iter"] == numpy_record["n_iter"]
    assert torch_record["kl"] == pytest.approx(numpy_record["kl"], rel=LOSS_RTOL)


def test_run_cell_with_torch_reproduces_a_cell_of_a_torch_sweep(tmp_path):
    cells = _sweep(tmp_path, "torch", scenario="SG-E", n_grid=[200, 300], n_reps=2)
    record = run_cell("SG-E", Cell("SG-E", "m=2", 300, 1, 0), engine="torch")
    stored = cells.loc[record["key"]]
    assert record["seed"] == stored["seed"] and record["n_iter"] == stored["n_iter"]
    assert record["kl"] == pytest.approx(stored["kl"], rel=LOSS_RTOL)


def test_the_torch_engine_gives_the_same_cells_on_each_parallel_backend_it_takes(
    tmp_path,
):
    common = dict(scenario="SG-E", n_grid=[150, 300], n_reps=2, batch_cells=3)
    loky = _sweep(tmp_path / "loky", "torch", n_jobs=2, **common)  # the default
    for parallel in ("sequential", "threading"):
        other = _sweep(
            tmp_path / parallel, "torch", parallel=parallel, n_jobs=2, **common
        )
        pd.testing.assert_frame_equal(
            other.drop(columns=["fit_time"]), loky.drop(columns=["fit_time"])
        )
    assert set(loky["backend"]) == {"torch"}


def test_the_old_torch_backend_runs_the_torch_engine_with_a_future_warning(tmp_path):
    with pytest.warns(FutureWarning, match="engine='torch', parallel='loky'"):
        simulate(
            "SG-E", tmp_path, n_grid=[150], n_reps=1, backend="torch", progress=False
        )
    assert set(load_results(tmp_path)["backend"]) == {"torch"}


# -- batches -------------------------------------------------------------------
def test_batches_hold_one_fit_and_samples_within_a_factor_two():
    scenario = get_scenario("SG-O")
    cells = plan_cells(scenario, [1000, 1500, 2500, 4000], 3)
    batches = plan_batches(scenario, cells)
    assert sum(len(group) for _, group in batches) == len(cells)
    for spec, group in batches:
        assert {cell.fit for cell in group} == {spec.label}
        sizes = [cell.n for cell in group]
        assert sizes == sorted(sizes) and max(sizes) <= 2 * min(sizes)
    limited = [len(g) for _, g in plan_batches(scenario, cells, batch_cells=4)]
    assert max(limited) == 4 and sum(limited) == len(cells)
    small = plan_batches(scenario, cells, max_rows=5000)
    assert all(len(g) * max(c.n for c in g) <= 5000 or len(g) == 1 for _, g in small)


# -- resuming --------------------------------------------------------------------
def test_a_batch_of_records_is_stored_at_once_and_each_key_once(tmp_path):
    a, b, c = (cell_identity("SG-E", "m=2", n, 0) for n in (100, 200, 300))
    store = ResultStore(tmp_path)
    with store.writing():
        assert store.extend([{**a, "kl": 0.5}, b, a]) == 2
        assert store.extend([b, {**c, "kl": np.nan}]) == 1
        assert store.extend([]) == 0
    records = ResultStore(tmp_path).records()
    assert [r["key"] for r in records] == [a["key"], b["key"], c["key"]]
    assert records[0]["kl"] == 0.5 and records[2]["kl"] is None


def test_an_interrupted_torch_sweep_resumes_without_storing_a_cell_twice(
    tmp_path, monkeypatch
):
    common = dict(scenario="SG-E", n_grid=[150, 300, 600], n_reps=2, batch_cells=2)
    complete = _sweep(tmp_path / "complete", "torch", **common)
    fit_prepared = engines_module._fit_prepared
    calls = []

    def dies_in_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fit_prepared(*args, **kwargs)

    monkeypatch.setattr(engines_module, "_fit_prepared", dies_in_the_third_batch)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        simulate(out_dir=killed, engine="torch", progress=False, **common)
    assert len(load_results(killed)) == 4  # the two finished batches
    monkeypatch.setattr(engines_module, "_fit_prepared", fit_prepared)
    resumed = _sweep(killed, "torch", **common)
    lines = (killed / CELLS_FILE).read_text().splitlines()[1:]  # after the format
    assert len(lines) == 6 == len({json.loads(line)["key"] for line in lines})
    volatile = ["fit_time"]
    pd.testing.assert_frame_equal(
        resumed.drop(columns=volatile), complete.drop(columns=volatile)
    )
    # a numpy sweep over the same directory finds nothing left to run
    _sweep(killed, "numpy", **{k: v for k, v in common.items() if k != "batch_cells"})
    assert len((killed / CELLS_FILE).read_text().splitlines()) == 1 + 6


# -- every scenario ------------------------------------------------------------------
# Log-likelihoods agree to 1e-10 relative. Parameters the likelihood hardly
# determines follow round-off: a ReLU unit's scale (eta_1, eta_2) ->
# (c eta_1, eta_2 / c), along which Gauss-Newton steps move by about 1e-7
# relative (losses then differ by up to 1e-6), and the multinomial experts of
# ML-R1 at n = 120, whose coefficients grow along a flat ridge (KL 0.6% and
# the Voronoi loss 2.4% apart after 25 iterations, likelihoods 1.3e-12).
# The losses are therefore compared at 3%, the iteration counts exactly.
PARITY_LL_RTOL = 1e-10
PARITY_LOSS_RTOL = 3e-2


@pytest.mark.parametrize("sid", sorted(SCENARIOS))
def test_every_scenario_runs_on_the_torch_engine_with_the_numpy_engines_cells(
    tmp_path, monkeypatch, sid
):
    """ReLU experts, stacks of shared and routed experts, every gate: all run.

    A tiny grid (one n, one replication, at most two fits, 25 EM iterations,
    a coarse population fit where a fit starts near one) keeps it quick;
    the cells are the numpy engine's.
    """
    coarse = functools.partial(population_fit, x_nodes=40, y_nodes=8, max_iter=25)
    monkeypatch.setattr(runners_module, "population_fit", coarse)
    scenario = dataclasses.replace(get_scenario(sid), max_iter=25)
    common = dict(
        scenario=scenario, n_reps=1, fits=[fit.label for fit in scenario.fits[:2]]
    )
    if scenario.kind == "rate":
        common["n_grid"] = [120]
    numpy_cells = _sweep(tmp_path / "numpy", "numpy", **common)
    torch_cells = _sweep(tmp_path / "torch", "torch", **common)
    assert len(torch_cells) == len(numpy_cells) > 0
    _assert_same_cells(
        numpy_cells,
        torch_cells,
        loss_rtol=PARITY_LOSS_RTOL,
        ll_rtol=PARITY_LL_RTOL,
    )
    np.testing.assert_array_equal(torch_cells["n_iter"], numpy_cells["n_iter"])


def test_bad_torch_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_cells"):
        simulate("SG-E", tmp_path, n_grid=[100], n_reps=1, batch_cells=0)
    with pytest.raises(ValueError, match="dtype"):
        simulate("SG-E", tmp_path, n_grid=[100], n_reps=1, engine="torch", dtype="int8")
    with pytest.raises(ValueError, match="engine"):
        run_cell("SG-E", Cell("SG-E", "m=2", 100, 0, 0), engine="jax")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            simulate(
                "SG-E", tmp_path, n_grid=[100], n_reps=1, engine="torch", device="cuda"
            )


# -- the command line --------------------------------------------------------------
def test_the_simulate_command_runs_the_torch_engine(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["simulate", "SG-E", "--n-grid", "150,300,600", "--reps", "1"]
    torch_args = ["--engine", "torch", "--device", "cpu", "--batch-cells", "2"]
    assert main([*argv, *torch_args, "--out", str(out), "--quiet"]) == 0
    assert "3 cells" in capsys.readouterr().out
    assert set(load_results(out)["backend"]) == {"torch"}


def test_the_simulate_command_runs_relu_scenarios_on_the_torch_engine(tmp_path, capsys):
    argv = ["simulate", "DS-1", "--n-grid", "100", "--reps", "1"]
    torch_args = ["--engine", "torch", "--device", "cpu"]
    assert main([*argv, *torch_args, "--out", str(tmp_path), "--quiet"]) == 0
    assert "1 cells" in capsys.readouterr().out
    assert set(load_results(tmp_path)["backend"]) == {"torch"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses cuda only without it")
def test_the_simulate_command_reports_a_device_torch_cannot_use(tmp_path, capsys):
    argv = ["simulate", "SG-E", "--engine", "torch", "--device", "cuda"]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_the_help_describes_the_engines(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--engine" in out and "--device" in out and "torch" in out
