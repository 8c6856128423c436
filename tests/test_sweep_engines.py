"""A sweep's engine and its parallel backend: two choices, one set of cells.

``engine=`` says what fits the cells (numpy, torch), ``parallel=`` where the
cells' work runs (sequential, loky, threading, dask). The cells do not depend
on the second; the deprecated ``backend=`` maps onto both with a
FutureWarning; combinations that do not go together are refused before any
work. The torch engine's side is in ``test_torch_simulation.py``.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import moestat.simulation.sweep as sweep_module
from moestat.cli import main
from moestat.fit import BatchEngine, fit_restarts
from moestat.simulation import (
    BACKENDS,
    ENGINES,
    PARALLEL_BACKENDS,
    Cell,
    get_scenario,
    load_results,
    run_cell,
    simulate,
)
from moestat.simulation.engines import NumpyEngine, SweepEngine, TorchEngine
from moestat.simulation.runners import _task

GRID = dict(n_grid=[200, 400], n_reps=2, progress=False)  # SG-O: 8 cells
VOLATILE = ["fit_time"]


def _cells(directory) -> pd.DataFrame:
    frame = load_results(directory).drop(columns=VOLATILE)
    return frame.sort_values("key").reset_index(drop=True)


def _blas_threads() -> list[int]:
    return [
        pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"
    ]


# -- one set of cells, whichever way they run --------------------------------------
def test_numpy_cells_are_identical_run_sequentially_on_loky_and_on_threads(tmp_path):
    simulate("SG-O", tmp_path / "sequential", parallel="sequential", **GRID)
    simulate("SG-O", tmp_path / "loky", parallel="loky", n_jobs=2, **GRID)
    simulate("SG-O", tmp_path / "threading", parallel="threading", n_jobs=2, **GRID)
    sequential = _cells(tmp_path / "sequential")
    assert len(sequential) == 8 and set(sequential["backend"]) == {"numpy"}
    for other in ("loky", "threading"):
        pd.testing.assert_frame_equal(sequential, _cells(tmp_path / other))


def test_a_store_written_on_one_parallel_backend_is_resumed_by_another(tmp_path):
    small = dict(n_reps=1, progress=False)
    simulate("SG-E", tmp_path / "resumed", parallel="sequential", n_grid=[150], **small)
    simulate(
        "SG-E", tmp_path / "resumed", parallel="threading", n_grid=[150, 300], **small
    )
    simulate("SG-E", tmp_path / "once", parallel="loky", n_grid=[150, 300], **small)
    resumed = _cells(tmp_path / "resumed")
    assert len(resumed) == 2
    pd.testing.assert_frame_equal(resumed, _cells(tmp_path / "once"))


def _spy_on_the_runner(monkeypatch) -> dict:
    """What simulate hands to the runner, instead of running it."""
    ran = {}

    def run_sweep(scenario, out_dir, planned, fitter, **options):
        ran.update(engine=fitter.name, parallel=options["parallel"])

    monkeypatch.setattr(sweep_module, "run_sweep", run_sweep)
    monkeypatch.setattr(TorchEngine, "check", lambda self, scenario, specs: None)
    return ran


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_both_engines_run_their_cells_on_loky_by_default(engine, tmp_path, monkeypatch):
    ran = _spy_on_the_runner(monkeypatch)
    simulate("SG-E", tmp_path, engine=engine, **GRID)
    assert ran == {"engine": engine, "parallel": "loky"}


# -- the deprecated backend= ---------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "engine", "parallel"),
    [
        ("numpy", "numpy", "loky"),
        ("torch", "torch", "loky"),
        ("loky", "numpy", "loky"),
        ("threading", "numpy", "threading"),
        ("sequential", "numpy", "sequential"),
        ("dask", "numpy", "dask"),
    ],
)
def test_each_backend_word_means_one_engine_and_one_parallel_backend(
    backend, engine, parallel, tmp_path, monkeypatch
):
    ran = _spy_on_the_runner(monkeypatch)
    scheduler = "tcp://10.0.0.1:8786" if parallel == "dask" else None
    advice = f"use simulate\\(engine='{engine}', parallel='{parallel}'\\)"
    with pytest.warns(FutureWarning, match=f"backend='{backend}'.*{advice}"):
        simulate("SG-E", tmp_path, backend=backend, scheduler=scheduler, **GRID)
    assert ran == {"engine": engine, "parallel": parallel}


def test_the_old_spelling_still_runs_the_same_sweep_with_a_future_warning(tmp_path):
    with pytest.warns(FutureWarning, match="deprecated"):
        simulate("SG-E", tmp_path / "old", backend="sequential", **GRID)
    simulate("SG-E", tmp_path / "new", parallel="sequential", **GRID)
    pd.testing.assert_frame_equal(_cells(tmp_path / "old"), _cells(tmp_path / "new"))
    cell = Cell("SG-E", "m=2", 400, 1, 0)
    with pytest.warns(FutureWarning, match=r"use run_cell\(engine='numpy'\)"):
        record = run_cell("SG-E", cell, backend="loky")
    record.pop("fit_time")
    new = _cells(tmp_path / "new").set_index("key").loc[cell.key].to_dict()
    assert record["backend"] == "numpy"
    assert record["log_likelihood"] == new["log_likelihood"]
    assert record["kl"] == new["kl"]


# -- combinations refused before any work --------------------------------------------
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"engine": "numpy", "backend": "loky"}, "give engine= and parallel= only"),
        ({"parallel": "threading", "backend": "numpy"}, "deprecated spelling"),
        ({"backend": "spark"}, "Unknown backend 'spark'"),
        ({"engine": "jax"}, r"Unknown engine 'jax'; choose one of \('numpy'"),
        ({"parallel": "spark"}, "Unknown parallel backend 'spark'"),
        (
            {"engine": "torch", "parallel": "dask", "scheduler": "tcp://10.0.0.1:8786"},
            "engine='torch' .* not 'dask'",
        ),
        ({"parallel": "dask"}, "needs a scheduler"),
        ({"parallel": "loky", "scheduler": "tcp://10.0.0.1:8786"}, "is for parallel"),
        ({"scheduler": "tcp://10.0.0.1:8786"}, "not parallel='loky'"),
    ],
)
def test_combinations_that_do_not_go_together_are_refused_up_front(
    arguments, message, tmp_path
):
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=message):
        simulate("SG-E", out, **arguments, **GRID)
    assert not out.exists()


def test_run_cell_refuses_backend_beside_engine():
    with pytest.raises(ValueError, match="deprecated spelling"):
        run_cell(
            "SG-E", Cell("SG-E", "m=2", 150, 0, 0), engine="numpy", backend="numpy"
        )


def test_the_names_of_the_choices():
    assert ENGINES == ("numpy", "torch")
    assert set(PARALLEL_BACKENDS) == {"sequential", "loky", "threading", "dask"}
    assert set(BACKENDS) == set(ENGINES) | set(PARALLEL_BACKENDS)


# -- the command line ----------------------------------------------------------------
def test_the_command_takes_engine_and_parallel(tmp_path, capsys):
    argv = ["simulate", "SG-E", "--n-grid", "150,300", "--reps", "1", "--quiet"]
    argv += ["--engine", "numpy", "--parallel", "threading", "--jobs", "2"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "2 cells" in captured.out and captured.err == ""
    assert set(load_results(tmp_path)["backend"]) == {"numpy"}


def test_the_command_maps_the_old_backend_and_warns_once(tmp_path, capsys):
    argv = ["simulate", "SG-E", "--n-grid", "150,300", "--reps", "1", "--quiet"]
    assert main([*argv, "--backend", "sequential", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "moestat simulate: warning: --backend sequential is deprecated and will be "
        "removed in the next release; use --engine numpy --parallel sequential."
    ]
    assert len(load_results(tmp_path)) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "loky", "--engine", "numpy"], "give --engine and --parallel"),
        (["--backend", "numpy", "--parallel", "loky"], "give --engine and --parallel"),
        (
            ["--engine", "torch", "--parallel", "dask", "--scheduler", "tcp://h:1"],
            "--engine torch .* --parallel dask",
        ),
        (["--parallel", "dask"], "--parallel dask needs --scheduler"),
        (["--parallel", "loky", "--scheduler", "tcp://h:1"], "--scheduler is for"),
    ],
)
def test_the_command_refuses_combinations_that_do_not_go_together(
    extra, message, tmp_path, capsys
):
    out = tmp_path / "sweep"
    assert main(["simulate", "SG-E", *extra, "--out", str(out), "--quiet"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("moestat simulate: ")
    assert re.search(message, lines[0])
    assert not out.exists()


# -- the engines and BLAS ------------------------------------------------------------
def test_both_engines_are_sweep_engines_and_batch_engines_of_fit_restarts():
    for engine in (NumpyEngine(), TorchEngine(device="cpu")):
        assert isinstance(engine, SweepEngine) and isinstance(engine, BatchEngine)
        assert engine.name in ENGINES
    scenario = get_scenario("SG-E")
    spec = scenario.fit("m=2")
    rng = np.random.default_rng(0)
    X = scenario.covariates.sample(300, rng)
    y, _ = scenario.truth.sample(X, rng)
    design = spec.model.design(X)
    options = dict(n_experts=2, n_init=3, rng=np.random.default_rng(1), polish=True)
    batched, _ = fit_restarts(
        spec.model, design, X, y, batch_engine=NumpyEngine(), **options
    )
    options["rng"] = np.random.default_rng(1)
    direct, _ = fit_restarts(
        spec.model, design, X, y, accelerate=False, stop_on_ridge=False, **options
    )
    assert batched.log_likelihood == direct.log_likelihood
    np.testing.assert_array_equal(
        batched.model.params.gate.coef, direct.model.params.gate.coef
    )


@pytest.mark.parametrize("parallel", ["sequential", "threading"])
def test_each_cell_is_fitted_with_one_blas_thread_and_blas_is_restored_after(
    parallel, tmp_path, monkeypatch
):
    seen = []
    fit = NumpyEngine.fit

    def watched(self, *args):
        seen.extend(_blas_threads())
        return fit(self, *args)

    monkeypatch.setattr(NumpyEngine, "fit", watched)
    monkeypatch.delenv("MOESTAT_BLAS_THREADS", raising=False)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and max(before) == 2
        simulate("SG-E", tmp_path, parallel=parallel, n_jobs=2, **GRID)
        assert _blas_threads() == before
    assert len(seen) >= 4 and set(seen) == {1}


def test_a_task_in_a_worker_process_limits_blas_itself(monkeypatch):
    monkeypatch.delenv("MOESTAT_BLAS_THREADS", raising=False)
    with threadpool_limits(limits=2, user_api="blas"):
        # a parent other than this process: the task runs as in a worker
        assert set(_task(os.getpid() + 1, False, _blas_threads)) == {1}
        # in the sweep's own process the sweep has limited BLAS already
        assert max(_task(os.getpid(), False, _blas_threads)) == 2


def test_the_demo_takes_engine_and_refuses_it_beside_the_old_backend(tmp_path, capsys):
    argv = ["demo", "--engine", "numpy", "--backend", "numpy", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "demo")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines == [
        "moestat demo: --backend is the deprecated spelling of --engine and "
        "--parallel; give --engine and --parallel only."
    ]
    assert not (tmp_path / "demo").exists()
