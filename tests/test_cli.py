"""The ``moestat`` command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from moestat.cli import build_parser, main
from moestat.datasets import make_moe_regression
from moestat.simulation import SCENARIOS, load_results

COMMANDS = ["scenarios", "simulate", "rates", "plot", "fit", "demo"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: moestat" in capsys.readouterr().out


def test_the_installed_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "moestat", "scenarios"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SG-E" in done.stdout


def test_scenarios_lists_every_id_with_a_description(capsys):
    assert main(["scenarios", "--verbose"]) == 0
    out = capsys.readouterr().out
    for sid, scenario in SCENARIOS.items():
        assert sid in out and scenario.title in out


def test_simulate_rates_and_plot_write_their_files(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["simulate", "SG-E", "--n-grid", "150,300,600", "--reps", "2"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert "6 cells" in capsys.readouterr().out
    assert len(load_results(out)) == 6
    assert main(["rates", str(out), "--loss", "kl", "--boot", "100"]) == 0
    rates = pd.read_csv(out / "rates.csv")
    assert list(rates["loss"]) == ["kl"] and rates["theory"].iloc[0] == -1.0
    figure = tmp_path / "kl.png"
    assert main(["plot", str(out), "-o", str(figure), "--loss", "kl"]) == 0
    assert figure.stat().st_size > 10_000


def test_simulate_reports_an_unknown_scenario(tmp_path, capsys):
    assert main(["simulate", "NOPE", "--out", str(tmp_path), "--quiet"]) == 2
    assert "Unknown scenario 'NOPE'" in capsys.readouterr().err


def test_a_bad_n_grid_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "SG-E", "--n-grid", "10,abc"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_fit_reads_a_csv_and_prints_the_summary(tmp_path, capsys):
    X, y, _ = make_moe_regression(600, 2, random_state=0)[:3]
    path = tmp_path / "data.csv"
    pd.DataFrame({"income": X[:, 0], "spend": y}).to_csv(path, index=False)
    table = tmp_path / "params.csv"
    argv = ["fit", str(path), "--target", "spend", "--experts", "2"]
    assert main([*argv, "--n-init", "2", "-o", str(table)]) == 0
    out = capsys.readouterr().out
    assert "income" in out and "Log-likelihood" in out
    assert len(pd.read_csv(table)) > 0


def test_fit_names_a_missing_target_column(tmp_path, capsys):
    path = tmp_path / "data.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]}).to_csv(path, index=False)
    assert main(["fit", str(path), "--target", "z", "--experts", "2"]) == 2
    assert "no column 'z'" in capsys.readouterr().err


def test_demo_writes_the_rate_table_and_plot(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--n-grid", "300,600,1200"]
    assert main([*argv, "--reps", "2", "--jobs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Estimated convergence rates" in out and "cells/s" in out
    rates = pd.read_csv(tmp_path / "study_rates.csv")
    assert {"SG-E", "SG-O"} == set(rates["scenario"])
    assert {"kl", "voronoi"} <= set(rates["loss"])
    assert (tmp_path / "study_rates.txt").read_text().startswith(" ")
    assert (tmp_path / "study_rates.png").stat().st_size > 10_000
    assert len(pd.read_csv(tmp_path / "study_cells.csv")) == 12


# -- every mistake or fault answered in one line, never a traceback ----------------
def _one_error_line(capsys, command: str) -> str:
    """The error output of a command: exactly one line, starting with its name."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"moestat {command}: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def data_csv(tmp_path):
    X, y, _ = make_moe_regression(300, 2, random_state=0)[:3]
    path = tmp_path / "data.csv"
    pd.DataFrame({"income": X[:, 0], "spend": y}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sweep"
    argv = ["simulate", "SG-E", "--n-grid", "150,300,600", "--reps", "2"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    return out


def test_simulate_refuses_an_out_that_is_a_file_before_any_work(tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("not a directory\n")
    argv = ["simulate", "SG-E", "--n-grid", "150,300", "--reps", "1", "--quiet"]
    assert main([*argv, "--out", str(target)]) == 2
    assert "is a file, not a directory" in _one_error_line(capsys, "simulate")
    assert target.read_text() == "not a directory\n"


def test_rates_refuses_an_output_in_a_missing_directory(sweep_dir, tmp_path, capsys):
    output = tmp_path / "nonexistent" / "r.csv"
    assert main(["rates", str(sweep_dir), "-o", str(output)]) == 2
    line = _one_error_line(capsys, "rates")
    assert "does not exist" in line and "nonexistent" in line


def test_rates_in_a_directory_it_cannot_write_asks_for_o(
    sweep_dir, tmp_path, capsys, monkeypatch
):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("moestat.cli.tempfile.NamedTemporaryFile", read_only)
    assert main(["rates", str(sweep_dir)]) == 1
    line = _one_error_line(capsys, "rates")
    assert "Permission denied" in line and "-o FILE" in line


def test_rates_writes_its_table_where_o_says(sweep_dir, tmp_path, capsys):
    output = tmp_path / "rates.csv"
    assert main(["rates", str(sweep_dir), "--loss", "kl", "-o", str(output)]) == 0
    assert pd.read_csv(output)["loss"].tolist() == ["kl"]


@pytest.mark.parametrize("where", ["missing", "read-only"])
def test_fit_checks_its_output_before_fitting(
    data_csv, tmp_path, capsys, monkeypatch, where
):
    output = tmp_path / "missing" / "params.csv"
    if where == "read-only":
        output = tmp_path / "params.csv"

        def read_only(*args, **kwargs):
            raise OSError(30, "Read-only file system")

        monkeypatch.setattr("moestat.cli.tempfile.NamedTemporaryFile", read_only)

    def never(*args, **kwargs):  # the fit must not start
        raise AssertionError("the fit ran before the output was checked")

    monkeypatch.setattr("moestat.GaussianMoE.fit", never)
    argv = ["fit", str(data_csv), "--target", "spend", "--experts", "2"]
    assert main([*argv, "-o", str(output)]) == (2 if where == "missing" else 1)
    line = _one_error_line(capsys, "fit")
    assert "params.csv" in line
    assert "Log-likelihood" not in capsys.readouterr().out


def test_plot_names_an_unknown_loss_and_the_known_ones(sweep_dir, tmp_path, capsys):
    argv = ["plot", str(sweep_dir), "-o", str(tmp_path / "f.png"), "--loss", "foo"]
    assert main(argv) == 2
    line = _one_error_line(capsys, "plot")
    assert "'foo'" in line and "kl" in line and "voronoi" in line
    assert not (tmp_path / "f.png").exists()


def test_plot_refuses_an_image_format_it_cannot_write(sweep_dir, tmp_path, capsys):
    assert main(["plot", str(sweep_dir), "-o", str(tmp_path / "f.docx")]) == 2
    assert ".png" in _one_error_line(capsys, "plot")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["rates", "DIR", "--boot", "0"], "must be a positive integer"),
        (["simulate", "SG-E", "--n-grid", "100.9,1000,10000"], "'100.9'"),
        (["simulate", "SG-E", "--parallel", "dask", "--scheduler", ""], "address"),
        (["simulate", "SG-E", "--reps", "0"], "must be a positive integer"),
        (["simulate", "SG-E", "--jobs", "0"], "-1 for all cores"),
        (["fit", "d.csv", "--target", "y", "--experts", "2.5"], "'2.5'"),
    ],
)
def test_the_parser_refuses_values_it_would_otherwise_truncate_or_misread(
    argv, expected, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_an_integral_grid_in_scientific_notation_is_read_exactly():
    args = build_parser().parse_args(["simulate", "SG-E", "--n-grid", "1e3,1_000.0"])
    assert args.n_grid == [1000, 1000]


def test_an_unreachable_scheduler_is_named_within_the_timeout(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("moestat.cli.SCHEDULER_TIMEOUT", "1s")
    argv = ["simulate", "SG-E", "--n-grid", "150,300", "--reps", "1", "--quiet"]
    argv += ["--parallel", "dask", "--scheduler", "tcp://127.0.0.1:9"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    line = _one_error_line(capsys, "simulate")
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in line


def test_a_scheduler_without_the_dask_backend_is_a_usage_error(tmp_path, capsys):
    argv = ["simulate", "SG-E", "--scheduler", "tcp://127.0.0.1:9"]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    assert "--parallel dask" in _one_error_line(capsys, "simulate")


def test_data_at_an_extreme_scale_is_reported_not_raised(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = np.where(x > 0, 2 * x, -x) + 0.1 * rng.normal(size=200)
    path = tmp_path / "huge.csv"
    pd.DataFrame({"x": x * 1e200, "y": y * 1e200}).to_csv(path, index=False)
    argv = ["fit", str(path), "--target", "y", "--experts", "2", "--n-init", "1"]
    assert main(argv) == 2
    assert "scale" in _one_error_line(capsys, "fit")


def test_fit_prints_each_warning_once_without_source_lines(tmp_path, capsys):
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True).frame
    path = tmp_path / "iris.csv"
    iris.to_csv(path, index=False)
    argv = ["fit", str(path), "--target", "target", "--experts", "2"]
    assert main([*argv, "--family", "multinomial", "--n-init", "2"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines, "the separable iris fit must warn about its boundary"
    assert all(line.startswith("moestat fit: warning: ") for line in lines), err
    assert len(set(lines)) == len(lines)
    assert "warnings.warn" not in err and ".py:" not in err


def test_fit_refuses_the_target_among_the_features(data_csv, capsys):
    argv = ["fit", str(data_csv), "--target", "spend", "--experts", "2"]
    assert main([*argv, "--features", "income,spend"]) == 2
    assert "includes the target 'spend'" in _one_error_line(capsys, "fit")


def test_a_text_target_suggests_the_multinomial_family(tmp_path, capsys):
    path = tmp_path / "labels.csv"
    x = np.linspace(-1, 1, 40)
    pd.DataFrame({"x": x, "kind": np.where(x > 0, "a", "b")}).to_csv(path, index=False)
    assert main(["fit", str(path), "--target", "kind", "--experts", "2"]) == 2
    assert "--family multinomial" in _one_error_line(capsys, "fit")


def test_fit_names_a_missing_data_file(tmp_path, capsys):
    argv = ["fit", str(tmp_path / "nope.csv"), "--target", "y", "--experts", "2"]
    assert main(argv) == 2
    assert "nope.csv" in _one_error_line(capsys, "fit")


def test_ctrl_c_during_a_sweep_says_how_many_cells_are_stored(
    tmp_path, capsys, monkeypatch
):
    from moestat.exceptions import SweepInterrupted

    def interrupted(scenario, out_dir, **kwargs):
        raise SweepInterrupted(3, 8, str(out_dir))

    monkeypatch.setattr("moestat.simulation.simulate", interrupted)
    argv = ["simulate", "SG-E", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 130
    line = _one_error_line(capsys, "simulate")
    assert "interrupted; 3 of 8 cells stored" in line
    assert "run the same command to resume" in line


def test_an_unexpected_error_is_one_line_that_points_to_debug(
    sweep_dir, capsys, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("something internal")

    monkeypatch.setattr("moestat.simulation.estimate_rate", broken)
    assert main(["rates", str(sweep_dir), "-o", str(sweep_dir / "r.csv")]) == 1
    line = _one_error_line(capsys, "rates")
    assert "RuntimeError: something internal" in line and "--debug" in line
    with pytest.raises(RuntimeError):
        main(["--debug", "rates", str(sweep_dir), "-o", str(sweep_dir / "r.csv")])


def test_simulate_rates_and_the_plot_give_one_interval_for_one_store(
    sweep_dir, tmp_path, capsys
):
    import matplotlib

    matplotlib.use("Agg")
    from moestat.plotting import plot_rates

    argv = ["simulate", "SG-E", "--n-grid", "150,300,600", "--reps", "2"]
    assert main([*argv, "--out", str(sweep_dir), "--quiet"]) == 0  # nothing to do
    printed = capsys.readouterr().out
    assert main(["rates", str(sweep_dir), "-o", str(tmp_path / "r.csv")]) == 0
    rates = pd.read_csv(tmp_path / "r.csv").set_index("loss")
    low, high = rates.loc["kl", ["ci_low", "ci_high"]]
    assert f"{low:.3f}" in printed and f"{high:.3f}" in printed
    ax = plot_rates(load_results(sweep_dir), "kl")
    legend = " ".join(text.get_text() for text in ax.get_legend().get_texts())
    matplotlib.pyplot.close(ax.figure)
    assert f"[{low:.3f}, {high:.3f}]" in legend


def test_a_failed_dask_run_leaves_dask_configured_for_the_next_one(tmp_path):
    """The connection timeout is set without dropping distributed's defaults.

    Run in a fresh interpreter: distributed must not be imported before the
    command, as in a notebook that calls ``main`` and then starts a cluster.
    """
    code = (
        "import dask, sys; import moestat.cli as cli; cli.SCHEDULER_TIMEOUT = '1s'; "
        "argv = ['simulate', 'SG-E', '--n-grid', '150,300', '--reps', '1', "
        "'--quiet', '--backend', 'dask', '--scheduler', 'tcp://127.0.0.1:9', "
        f"'--out', {str(tmp_path / 'out')!r}]; "
        "assert cli.main(argv) == 1; "
        "print(dask.config.get('distributed.comm.require-encryption'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
