"""The ``moestat`` command line."""

from __future__ import annotations

import subprocess
import sys

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


def test_fit_names_a_missing_target_column(tmp_path):
    path = tmp_path / "data.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]}).to_csv(path, index=False)
    with pytest.raises(SystemExit, match="no column 'z'"):
        main(["fit", str(path), "--target", "z", "--experts", "2"])


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
