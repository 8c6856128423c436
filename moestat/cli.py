"""The ``moestat`` command line: a thin layer over the library.

Commands
--------
``moestat scenarios``
    List the registered scenarios.
``moestat simulate SCENARIO [--n-grid ...] [--reps R] [--jobs J] ...``
    Run or resume a sweep into ``--out`` (``--backend torch --device cuda``
    fits the cells in batches on a GPU).
``moestat rates DIR``
    Estimate the convergence rates of a sweep; print them, write CSV.
``moestat plot DIR -o FILE.png``
    Draw a loss against n with fitted and theoretical slopes.
``moestat fit DATA.csv --target y --experts m``
    Fit a mixture of experts to a CSV file and print its summary.
``moestat demo [--out DIR]``
    The default study: exact against over-specified softmax-gated Gaussian
    MoE, its rate table and plot.

Each command is a function of this module (``main(["rates", DIR])``), so
scripts and notebooks can call it too.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["main", "build_parser", "DEFAULT_STUDY"]

#: Sweeps of ``moestat demo``: ``(scenario id, fit labels)`` pairs.
#:
#: The softmax-gated Gaussian MoE of Nguyen, Nguyen & Ho (NeurIPS 2023),
#: fitted with the true number of experts and with one more. The density
#: converges at the parametric rate either way (KL slope -1); the
#: parameters of the over-specified cell do not (slopes -1/8 and -1/4).
DEFAULT_STUDY = (
    ("SG-E", ("m=2",)),
    ("SG-O", ("m=3",)),
)
DEFAULT_STUDY_GRID = (1000, 1778, 3162, 5623, 10000, 17783, 31623, 56234, 100000)
DEFAULT_STUDY_REPS = 40
_DEVICE_HELP = "where --backend torch computes: cpu, cuda, cuda:N (default cpu)"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(float(part)) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 100,1000,10000; got {text!r}"
        ) from error
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"sample sizes must be >= 2; got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(";" if ";" in text else "|") if part]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``moestat`` command.

    Returns
    -------
    argparse.ArgumentParser
        One subcommand per command of this module; the parsed namespace's
        ``run`` attribute is the function that executes it.
    """
    parser = argparse.ArgumentParser(
        prog="moestat",
        description="Mixture-of-experts estimation and convergence-rate studies.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("scenarios", help="list the registered scenarios")
    listing.add_argument("-v", "--verbose", action="store_true", help="show details")
    listing.set_defaults(run=cmd_scenarios)

    sim = commands.add_parser(
        "simulate",
        help="run or resume a sweep",
        description=(
            "Run a sweep of SCENARIO over the n grid and replications, storing "
            "every finished cell in --out. Running it again with the same "
            "arguments resumes: finished cells are skipped."
        ),
    )
    sim.add_argument("scenario", help="scenario id (see `moestat scenarios`)")
    sim.add_argument("--n-grid", type=_int_list, help="e.g. 100,1000,10000")
    sim.add_argument("--reps", type=int, help="replications per n")
    sim.add_argument("--fits", type=_str_list, help="fit labels, '|'-separated")
    sim.add_argument("--jobs", type=int, default=1, help="parallel workers (-1: all)")
    sim.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    sim.add_argument(
        "--backend",
        default="numpy",
        choices=["numpy", "torch", "loky", "threading", "sequential", "dask"],
        help=(
            "engine: 'numpy' fits one cell at a time in parallel (joblib's loky; "
            "'threading', 'sequential' or 'dask' pick another joblib backend); "
            "'torch' fits many cells of a fit in one batch on --device, from the "
            "same samples and starts (needs PyTorch; not for scenarios with ReLU "
            "or stacked experts). Default: numpy"
        ),
    )
    sim.add_argument("--scheduler", help="dask scheduler address (--backend dask)")
    sim.add_argument("--device", help=_DEVICE_HELP)
    sim.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        help="precision of --backend torch (default float64)",
    )
    sim.add_argument(
        "--batch-cells",
        type=int,
        help=(
            "most cells in one torch batch (default: cells of similar n up to "
            "about 4 million padded rows)"
        ),
    )
    sim.add_argument("--out", default="results", help="results directory")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(run=cmd_simulate)

    rates = commands.add_parser("rates", help="estimate the rates of a sweep")
    rates.add_argument("directory")
    rates.add_argument("--loss", action="append", help="loss column (repeatable)")
    rates.add_argument(
        "--form", default="mean", choices=["mean", "median", "log_n_over_n"]
    )
    rates.add_argument("--boot", type=int, default=2000, help="bootstrap draws")
    rates.add_argument("--n-min", type=float, help="use only n >= N_MIN")
    rates.add_argument("-o", "--output", help="CSV file (default DIR/rates.csv)")
    rates.set_defaults(run=cmd_rates)

    plot = commands.add_parser("plot", help="plot a loss against n")
    plot.add_argument("directory")
    plot.add_argument("-o", "--output", required=True, help="image file (.png, .pdf)")
    plot.add_argument("--loss", action="append", help="loss column (repeatable)")
    plot.add_argument(
        "--form", default="mean", choices=["mean", "median", "log_n_over_n"]
    )
    plot.set_defaults(run=cmd_plot)

    fit = commands.add_parser("fit", help="fit a mixture of experts to a CSV file")
    fit.add_argument("data", help="CSV file with a header row")
    fit.add_argument("--target", required=True, help="response column")
    fit.add_argument(
        "--features", help="covariate columns, comma-separated (default: all others)"
    )
    fit.add_argument("--experts", type=int, required=True, help="number of experts m")
    fit.add_argument(
        "--gate",
        default="softmax",
        choices=["softmax", "modified_softmax", "normalized_sigmoid"],
    )
    fit.add_argument(
        "--family",
        default="gaussian",
        choices=["gaussian", "poisson", "bernoulli", "multinomial"],
    )
    fit.add_argument("--degree", type=int, default=1, help="polynomial order k")
    fit.add_argument("--solver", default="em", choices=["em", "mle"])
    fit.add_argument("--n-init", type=int, default=10, help="restarts")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("-o", "--output", help="write the parameter table to this CSV")
    fit.set_defaults(run=cmd_fit)

    demo = commands.add_parser("demo", help="run the default convergence-rate study")
    demo.add_argument("--out", default="results", help="results directory")
    demo.add_argument("--jobs", type=int, default=-1, help="parallel workers")
    demo.add_argument("--n-grid", type=_int_list, help="override the n grid")
    demo.add_argument("--reps", type=int, help="override the replications")
    demo.add_argument(
        "--backend",
        default="numpy",
        choices=["numpy", "torch"],
        help="engine of the sweeps (see `moestat simulate --help`); default numpy",
    )
    demo.add_argument("--device", help=_DEVICE_HELP)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=cmd_demo)
    return parser


# -- commands --------------------------------------------------------------------
def cmd_scenarios(args: argparse.Namespace) -> int:
    """Print the registered scenarios."""
    from moestat.simulation import SCENARIOS

    width = max(len(sid) for sid in SCENARIOS)
    for sid, scenario in SCENARIOS.items():
        print(f"{sid:<{width}}  {scenario.title}")
        if args.verbose:
            fits = ", ".join(spec.label for spec in scenario.fits)
            grid = scenario.n_grid
            print(
                f"{'':<{width}}    X ~ {scenario.covariates.describe()}; fits: {fits}"
            )
            print(
                f"{'':<{width}}    n: {len(grid)} values {grid[0]}..{grid[-1]}, "
                f"{scenario.n_reps} replications; {scenario.source}"
            )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run or resume a sweep, then print its rates when the grid allows."""
    from moestat.simulation import format_rates, load_results, simulate
    from moestat.simulation.rates import estimate_rate

    start = time.perf_counter()
    simulate(
        args.scenario,
        args.out,
        n_grid=args.n_grid,
        n_reps=args.reps,
        fits=args.fits,
        seed=args.seed,
        n_jobs=args.jobs,
        backend=args.backend,
        scheduler=args.scheduler,
        progress=not args.quiet,
        device=args.device,
        dtype=args.dtype,
        batch_cells=args.batch_cells,
    )
    results = load_results(args.out)
    print(f"{len(results)} cells in {args.out} ({time.perf_counter() - start:.1f} s).")
    if results["n"].nunique() >= 3:
        print(format_rates(estimate_rate(results, n_boot=500)))
    return 0


def cmd_rates(args: argparse.Namespace) -> int:
    """Print and save the rate table of a sweep directory."""
    from moestat.simulation import estimate_rate, format_rates

    rates = estimate_rate(
        args.directory, args.loss, form=args.form, n_boot=args.boot, x_min=args.n_min
    )
    output = Path(args.output or Path(args.directory) / "rates.csv")
    rates.to_csv(output, index=False)
    print(format_rates(rates))
    print(f"Rate table written to {output}.")
    return 0


def _plot_losses(results, losses: Sequence[str], output: Path, form: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moestat.plotting import plot_rates

    fig, axes = plt.subplots(
        1, len(losses), figsize=(6 * len(losses), 4.5), squeeze=False
    )
    for ax, loss in zip(axes[0], losses, strict=True):
        plot_rates(results, loss, form=form, ax=ax)
        ax.set_title(loss)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw one panel per loss and save the figure."""
    from moestat.simulation import load_results

    results = load_results(args.directory)
    losses = args.loss or [name for name in ("kl", "voronoi") if name in results]
    _plot_losses(results, losses, Path(args.output), args.form)
    print(f"Figure written to {args.output}.")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit an estimator to a CSV file and print its summary."""
    from moestat import GaussianMoE, MultinomialLogisticMoE, PolynomialMoE

    data = pd.read_csv(args.data)
    if args.target not in data.columns:
        raise SystemExit(
            f"moestat fit: no column {args.target!r} in {args.data}; columns: "
            f"{list(data.columns)}"
        )
    features = (
        [name.strip() for name in args.features.split(",")]
        if args.features
        else [c for c in data.columns if c != args.target]
    )
    unknown = [name for name in features if name not in data.columns]
    if unknown:
        raise SystemExit(f"moestat fit: unknown feature column(s) {unknown}.")
    X = data[features]
    y = data[args.target].to_numpy()
    common = dict(
        n_experts=args.experts,
        gate=args.gate,
        solver=args.solver,
        n_init=args.n_init,
        random_state=args.seed,
    )
    if args.family == "multinomial":
        estimator = MultinomialLogisticMoE(degree=args.degree, **common)
    elif args.family == "gaussian" and args.degree == 1:
        estimator = GaussianMoE(**common)
    else:
        estimator = PolynomialMoE(degree=args.degree, family=args.family, **common)
    estimator.fit(X, y)
    print(estimator.summary())
    if args.output:
        table = estimator.inference().to_frame()
        table.to_csv(args.output)
        print(f"Parameter table written to {args.output}.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The default study: sweeps, rate table and plot in ``--out``."""
    from moestat.simulation import estimate_rate, format_rates, load_results, simulate

    out = Path(args.out)
    grid = args.n_grid or DEFAULT_STUDY_GRID
    reps = args.reps or DEFAULT_STUDY_REPS
    start = time.perf_counter()
    frames = []
    for scenario, fits in DEFAULT_STUDY:
        directory = out / scenario
        simulate(
            scenario,
            directory,
            n_grid=grid,
            n_reps=reps,
            fits=fits,
            n_jobs=args.jobs,
            progress=not args.quiet,
            backend=args.backend,
            device=args.device,
        )
        frames.append(load_results(directory))
    results = pd.concat(frames, ignore_index=True)
    elapsed = time.perf_counter() - start
    results.to_csv(out / "study_cells.csv", index=False)
    rates = estimate_rate(results, ["kl", "hellinger", "voronoi", *_over_cell(results)])
    rates.to_csv(out / "study_rates.csv", index=False)
    text = format_rates(rates)
    (out / "study_rates.txt").write_text(text + "\n")
    _plot_losses(results, ["kl", "voronoi"], out / "study_rates.png", "mean")
    print(text)
    print(
        f"{len(results)} cells ({len(results) / elapsed:.2f} cells/s over "
        f"{elapsed:.1f} s). Wrote {out / 'study_rates.csv'}, "
        f"{out / 'study_rates.txt'} and {out / 'study_rates.png'}."
    )
    return 0


def _over_cell(results: pd.DataFrame) -> list[str]:
    """Per-parameter errors of true expert 0 (the over-specified cell)."""
    return [c for c in results.columns if c.startswith("err_") and c.endswith("[0]")]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``moestat`` command line with ``argv`` (default ``sys.argv``).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name, e.g. ``["rates", "results"]``;
        by default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 when the command fails with a
        ``ValueError``, ``FileNotFoundError`` or ``ImportError`` (its
        message is printed to standard error).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"moestat {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
