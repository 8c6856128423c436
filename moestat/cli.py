"""The ``moestat`` command line: a thin layer over the library.

Commands
--------
``moestat scenarios``
    List the registered scenarios.
``moestat simulate SCENARIO [--n-grid ...] [--reps R] [--jobs J] ...``
    Run or resume a sweep into ``--out`` (``--engine torch --device cuda``
    fits the cells in batches on a GPU; ``--parallel`` says where the cells'
    work runs).
``moestat rates DIR``
    Estimate the convergence rates of a sweep; print them, write CSV.
``moestat plot DIR -o FILE.png``
    Draw a loss against n with fitted and theoretical slopes.
``moestat fit DATA.csv --target y --experts m [--gate-features A B] ...``
    Fit a mixture of experts to a CSV file and print its summary
    (``--gate-features`` and ``--expert-features`` give each part its
    own covariate columns).
``moestat demo [--out DIR]``
    The default study: exact against over-specified softmax-gated Gaussian
    MoE, its rate table and plot.

Each command is a function of this module (``main(["rates", DIR])``), so
scripts and notebooks can call it too.

A mistake or a fault never ends in a Python traceback: the command prints
one line naming the problem and the fix and exits with 2 (a mistake in the
command: arguments, paths, data), 1 (a fault of the machine: full disk,
read-only or locked directory, unreachable scheduler, missing package) or
130 (Ctrl-C; a sweep keeps every finished cell and the same command
resumes it). Outputs are checked before any work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from moestat.exceptions import StoreIntegrityWarning, SweepInterrupted

__all__ = [
    "main",
    "build_parser",
    "CommandError",
    "DEFAULT_STUDY",
    "EXIT_ENVIRONMENT",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
]

#: Exit status of a mistake in the command (arguments, files named, data).
EXIT_USAGE = 2
#: Exit status of a fault of the machine: disk, permissions, network, a
#: missing package, another sweep writing to the directory.
EXIT_ENVIRONMENT = 1
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: How long ``--parallel dask`` tries to reach ``--scheduler`` before saying so.
SCHEDULER_TIMEOUT = "10s"

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
_DEVICE_HELP = "where --engine torch computes: cpu, cuda, cuda:N (default cpu)"
# The words of the deprecated --backend (engine and parallel backend in one).
_BACKEND_WORDS = ["numpy", "torch", "loky", "threading", "sequential", "dask"]


class CommandError(Exception):
    """A mistake or a fault the command reports in one line, with its exit code.

    Parameters
    ----------
    message : str
        What went wrong and how to fix it.
    code : int, default=EXIT_USAGE
        :data:`EXIT_USAGE` for a mistake in the command,
        :data:`EXIT_ENVIRONMENT` for a fault of the machine (disk, network,
        permissions, a missing package).
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _integer(text: str) -> int:
    """An integer written as ``1000``, ``1_000`` or ``1e3``; never truncated."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    return int(value)


def _int_list(text: str) -> list[int]:
    try:
        values = [_integer(part.strip()) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 100,1000,10000; {error} "
            f"(in {text!r})"
        ) from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"sample sizes must be >= 2; got {text!r}")
    return values


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _jobs(text: str) -> int:
    value = _integer(text)
    if value == 0:
        raise argparse.ArgumentTypeError(
            "must be a positive number of workers, or -1 for all cores; got 0"
        )
    return value


def _scheduler(text: str) -> str:
    address = text.strip()
    if not address or address.endswith("://") or any(c.isspace() for c in address):
        raise argparse.ArgumentTypeError(
            f"expected a Dask scheduler address such as tcp://10.0.0.1:8786; "
            f"got {text!r}"
        )
    return address


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32); got {text!r}")
    return value


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
    from moestat.simulation.rates import N_BOOT

    parser = argparse.ArgumentParser(
        prog="moestat",
        description="Mixture-of-experts estimation and convergence-rate studies.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error (for reports)",
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
    sim.add_argument("--reps", type=_positive_int, help="replications per n")
    sim.add_argument("--fits", type=_str_list, help="fit labels, '|'-separated")
    sim.add_argument("--jobs", type=_jobs, default=1, help="parallel workers (-1: all)")
    sim.add_argument("--seed", type=_seed, default=0, help="root seed (default 0)")
    sim.add_argument(
        "--engine",
        choices=["numpy", "torch"],
        help=(
            "what fits the cells: 'numpy' one cell at a time, each in one task of "
            "--parallel; 'torch' many cells of a fit in one batch on --device, "
            "from the same samples and starts (needs PyTorch). Default: numpy"
        ),
    )
    sim.add_argument(
        "--parallel",
        choices=["loky", "threading", "sequential", "dask"],
        help=(
            "where the cells' tasks run: joblib's 'loky' worker processes "
            "(--jobs of them), 'threading', 'sequential' (this process), or "
            "'dask' on a cluster (with --scheduler; --engine numpy only). "
            "Default: loky"
        ),
    )
    sim.add_argument(
        "--backend",
        choices=_BACKEND_WORDS,
        help=(
            "deprecated: --engine and --parallel in one word ('numpy' and "
            "'torch' on loky; a joblib backend with --engine numpy)"
        ),
    )
    sim.add_argument(
        "--scheduler",
        type=_scheduler,
        help="dask scheduler address such as tcp://10.0.0.1:8786 (--parallel dask)",
    )
    sim.add_argument("--device", help=_DEVICE_HELP)
    sim.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        help="precision of --engine torch (default float64)",
    )
    sim.add_argument(
        "--batch-cells",
        type=_positive_int,
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
    rates.add_argument(
        "--boot",
        type=_positive_int,
        default=N_BOOT,
        help=f"bootstrap draws of the intervals (default {N_BOOT}, as everywhere)",
    )
    rates.add_argument(
        "--seed", type=_seed, default=0, help="seed of the bootstrap (default 0)"
    )
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
    fit.add_argument(
        "--gate-features",
        nargs="+",
        metavar="COLUMN",
        help="covariate columns of the gate (default: every covariate)",
    )
    fit.add_argument(
        "--expert-features",
        nargs="+",
        metavar="COLUMN",
        help="covariate columns of the experts (default: every covariate)",
    )
    fit.add_argument(
        "--experts", type=_positive_int, required=True, help="number of experts m"
    )
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
    fit.add_argument(
        "--degree", type=_positive_int, default=1, help="polynomial order k"
    )
    fit.add_argument("--solver", default="em", choices=["em", "mle"])
    fit.add_argument(
        "--n-init", type=_positive_int, help="restarts (default: the estimator's)"
    )
    fit.add_argument("--seed", type=_seed, default=0, help="random seed")
    fit.add_argument("-o", "--output", help="write the parameter table to this CSV")
    fit.set_defaults(run=cmd_fit)

    demo = commands.add_parser("demo", help="run the default convergence-rate study")
    demo.add_argument("--out", default="results", help="results directory")
    demo.add_argument("--jobs", type=_jobs, default=-1, help="parallel workers")
    demo.add_argument("--n-grid", type=_int_list, help="override the n grid")
    demo.add_argument("--reps", type=_positive_int, help="override the replications")
    demo.add_argument(
        "--engine",
        choices=["numpy", "torch"],
        help="engine of the sweeps (see `moestat simulate --help`); default numpy",
    )
    demo.add_argument(
        "--backend", choices=["numpy", "torch"], help="deprecated: --engine"
    )
    demo.add_argument("--device", help=_DEVICE_HELP)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=cmd_demo)
    return parser


# -- checks made before any work ---------------------------------------------------
def _probe_writable(directory: Path) -> str | None:
    """Why files cannot be created in ``directory``, or None if they can."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".moestat-probe-"):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def _check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Refuse, before any work, an output file that cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise CommandError(f"{option} {target} is a directory; name a file in it.")
    if not parent.is_dir():
        raise CommandError(
            f"cannot write {option} {target}: the directory {parent} does not "
            "exist; create it or choose another path."
        )
    reason = _probe_writable(parent)
    if reason is None and target.exists() and not os.access(target, os.W_OK):
        reason = "the file is read-only"
    if reason is not None:
        raise CommandError(
            f"cannot write {option} {target} ({reason}); choose another path.",
            EXIT_ENVIRONMENT,
        )
    return target


def _check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Refuse an output directory that is a file, or whose parent is missing."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CommandError(
            f"{option} {directory} is a file, not a directory; name a directory "
            "for the results (it is created if missing)."
        )
    return directory


def _check_image_file(path: str | os.PathLike) -> Path:
    """An image path whose format matplotlib can write."""
    from matplotlib.backend_bases import FigureCanvasBase

    target = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if target.suffix.lower().lstrip(".") not in formats:
        raise CommandError(
            f"cannot tell the image format of -o {target}: end the name with one "
            f"of {', '.join('.' + name for name in sorted(formats))}."
        )
    return _check_output_file(target, "-o")


def _check_losses(results: pd.DataFrame, losses: Sequence[str], where: str) -> None:
    from moestat.simulation import loss_columns

    known = loss_columns(results)
    unknown = [name for name in losses if name not in results.columns]
    if unknown:
        raise CommandError(
            f"no loss column {', '.join(map(repr, unknown))} in {where}; it has "
            f"{', '.join(known) or 'none'}."
        )


def _load(directory: str) -> pd.DataFrame:
    """The cells of a sweep directory; skipped lines are reported by the caller."""
    from moestat.simulation import load_results

    path = Path(directory)
    if not path.is_dir():
        raise CommandError(
            f"no sweep directory {directory}"
            + (" (it is a file)" if path.exists() else "")
            + "; give the --out directory of `moestat simulate`."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreIntegrityWarning)
        results = load_results(path)
    if results.empty:
        raise CommandError(f"the sweep directory {directory} holds no finished cell.")
    return results


def _store_footer(results: pd.DataFrame) -> None:
    report = results.attrs.get("store_report", "")
    if report:
        print(f"Note: {report}")


# -- commands ----------------------------------------------------------------------
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


@contextlib.contextmanager
def _dask_connect_timeout(parallel: str | None) -> Iterator[None]:
    """A short connection timeout for ``--parallel dask``; the address is named."""
    if parallel != "dask":
        yield
        return
    import dask

    try:
        # distributed's defaults enter dask's config when it is imported; an
        # import inside ``set`` would see them dropped again on its exit
        import distributed  # noqa: F401
    except ImportError:
        pass  # simulate names the missing extra
    with dask.config.set({"distributed.comm.timeouts.connect": SCHEDULER_TIMEOUT}):
        yield


def _engine_and_parallel(
    args: argparse.Namespace, parallel: str | None = None
) -> tuple[str | None, str | None]:
    """``--engine`` and ``--parallel``, or what the deprecated ``--backend`` says.

    ``--backend`` is mapped onto the two with a FutureWarning (printed once
    by :func:`main`); given beside either of them, it is a usage error.
    """
    if args.backend is None:
        return args.engine, parallel
    if args.engine is not None or parallel is not None:
        raise CommandError(
            "--backend is the deprecated spelling of --engine and --parallel; "
            "give --engine and --parallel only."
        )
    from moestat.simulation.sweep import _BACKEND_MEANING

    engine, mapped = _BACKEND_MEANING[args.backend]
    instead = f"--engine {engine}"
    if args.command == "simulate":
        instead += f" --parallel {mapped}"
    warnings.warn(
        f"--backend {args.backend} is deprecated and will be removed in the next "
        f"release; use {instead}.",
        FutureWarning,
        stacklevel=2,
    )
    return engine, mapped


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run or resume a sweep, then print its rates when the grid allows."""
    from moestat.simulation import estimate_rate, format_rates, simulate

    engine, parallel = _engine_and_parallel(args, args.parallel)
    if args.scheduler is not None and parallel != "dask":
        raise CommandError("--scheduler is for --parallel dask; add --parallel dask.")
    if parallel == "dask" and args.scheduler is None:
        raise CommandError(
            "--parallel dask needs --scheduler ADDRESS, such as tcp://10.0.0.1:8786."
        )
    if engine == "torch" and parallel == "dask":
        raise CommandError(
            "--engine torch fits its batches on this machine and cannot use "
            "--parallel dask; use --parallel loky (or threading, sequential), or "
            "--engine numpy on the cluster."
        )
    _check_output_dir(args.out, "--out")
    start = time.perf_counter()
    try:
        with _dask_connect_timeout(parallel):
            simulate(
                args.scenario,
                args.out,
                n_grid=args.n_grid,
                n_reps=args.reps,
                fits=args.fits,
                seed=args.seed,
                n_jobs=args.jobs,
                engine=engine,
                parallel=parallel,
                scheduler=args.scheduler,
                progress=not args.quiet,
                device=args.device,
                dtype=args.dtype,
                batch_cells=args.batch_cells,
            )
    except OSError as error:
        if parallel == "dask" and "connect" in str(error).lower():
            raise CommandError(
                f"cannot reach the Dask scheduler at {args.scheduler} ({error}); "
                "check the address and that `dask scheduler` runs there.",
                EXIT_ENVIRONMENT,
            ) from error
        raise
    results = _load(args.out)
    print(f"{len(results)} cells in {args.out} ({time.perf_counter() - start:.1f} s).")
    if results["n"].nunique() >= 3:
        print(format_rates(estimate_rate(results)))
    _store_footer(results)
    return 0


def cmd_rates(args: argparse.Namespace) -> int:
    """Print and save the rate table of a sweep directory."""
    from moestat.simulation import estimate_rate, format_rates

    results = _load(args.directory)
    if args.output is None:
        output = Path(args.directory) / "rates.csv"
        reason = _probe_writable(output.parent)
        if reason is not None:
            raise CommandError(
                f"cannot write {output} ({reason}); give -o FILE to write the rate "
                "table elsewhere.",
                EXIT_ENVIRONMENT,
            )
    else:
        output = _check_output_file(args.output, "-o")
    if args.loss:
        _check_losses(results, args.loss, args.directory)
    rates = estimate_rate(
        results,
        args.loss,
        form=args.form,
        n_boot=args.boot,
        x_min=args.n_min,
        random_state=args.seed,
    )
    rates.to_csv(output, index=False)
    print(format_rates(rates))
    print(f"Rate table written to {output}.")
    _store_footer(results)
    return 0


def _plot_losses(results, losses: Sequence[str], output: Path, form: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moestat.plotting import plot_rates

    fig, axes = plt.subplots(
        1, len(losses), figsize=(6 * len(losses), 4.5), squeeze=False
    )
    try:
        for ax, loss in zip(axes[0], losses, strict=True):
            plot_rates(results, loss, form=form, ax=ax)
            ax.set_title(loss)
        fig.tight_layout()
        fig.savefig(output, dpi=120)
    finally:
        plt.close(fig)


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw one panel per loss and save the figure."""
    output = _check_image_file(args.output)
    results = _load(args.directory)
    losses = args.loss or [name for name in ("kl", "voronoi") if name in results]
    if not losses:
        raise CommandError(f"no kl or voronoi column in {args.directory}; use --loss.")
    _check_losses(results, losses, args.directory)
    _plot_losses(results, losses, output, args.form)
    print(f"Figure written to {output}.")
    _store_footer(results)
    return 0


def _read_table(path: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise CommandError(f"no data file {path}.")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CommandError(
            f"cannot read {path} as a CSV file with a header row: {_one_line(e)}"
        ) from None


def _fit_columns(
    data: pd.DataFrame, args: argparse.Namespace
) -> tuple[pd.DataFrame, pd.Series]:
    """Covariates and response named by --features and --target, checked."""
    if args.target not in data.columns:
        raise CommandError(
            f"no column {args.target!r} in {args.data}; its columns are "
            f"{', '.join(map(str, data.columns))}."
        )
    if args.features:
        features = [name.strip() for name in args.features.split(",") if name.strip()]
    else:
        features = [c for c in data.columns if c != args.target]
    unknown = [name for name in features if name not in data.columns]
    if unknown:
        raise CommandError(
            f"unknown feature column(s) {', '.join(map(repr, unknown))} in "
            f"{args.data}; its columns are {', '.join(map(str, data.columns))}."
        )
    if args.target in features:
        raise CommandError(
            f"--features includes the target {args.target!r}; a response cannot "
            "be its own covariate."
        )
    if not features:
        raise CommandError(f"{args.data} has no column besides the target.")
    text = [c for c in features if not pd.api.types.is_numeric_dtype(data[c])]
    if text:
        raise CommandError(
            f"feature column(s) {', '.join(map(repr, text))} are not numeric; "
            "encode them as numbers or leave them out with --features."
        )
    for option in ("gate_features", "expert_features"):
        outside = [c for c in getattr(args, option) or [] if c not in features]
        if outside:
            flag = "--" + option.replace("_", "-")
            raise CommandError(
                f"{flag} names {', '.join(map(repr, outside))}, not among the "
                f"covariates {', '.join(map(str, features))}."
            )
    y = data[args.target]
    if args.family != "multinomial" and not pd.api.types.is_numeric_dtype(y):
        sample = next((v for v in y if isinstance(v, str)), None)
        raise CommandError(
            f"the target {args.target!r} holds text (such as {sample!r}), not "
            f"numbers; for class labels use --family multinomial."
        )
    return data[features], y


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit an estimator to a CSV file and print its summary."""
    from moestat import GaussianMoE, MultinomialLogisticMoE, PolynomialMoE

    output = None if args.output is None else _check_output_file(args.output, "-o")
    data = _read_table(args.data)
    X, y = _fit_columns(data, args)
    common = dict(
        n_experts=args.experts,
        gate=args.gate,
        solver=args.solver,
        random_state=args.seed,
        gate_features=args.gate_features,
        expert_features=args.expert_features,
    )
    if args.n_init is not None:
        common["n_init"] = args.n_init
    if args.family == "multinomial":
        estimator = MultinomialLogisticMoE(degree=args.degree, **common)
    elif args.family == "gaussian" and args.degree == 1:
        estimator = GaussianMoE(**common)
    else:
        estimator = PolynomialMoE(degree=args.degree, family=args.family, **common)
    estimator.fit(X, y)
    print(estimator.summary())
    if output is not None:
        estimator.inference().to_frame().to_csv(output)
        print(f"Parameter table written to {output}.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The default study: sweeps, rate table and plot in ``--out``."""
    from moestat.simulation import estimate_rate, format_rates, simulate

    engine, _ = _engine_and_parallel(args)
    out = _check_output_dir(args.out, "--out")
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
            engine=engine,
            device=args.device,
        )
        frames.append(_load(str(directory)))
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
    for frame in frames:
        _store_footer(frame)
    return 0


def _over_cell(results: pd.DataFrame) -> list[str]:
    """Per-parameter errors of true expert 0 (the over-specified cell)."""
    return [c for c in results.columns if c.startswith("err_") and c.endswith("[0]")]


# -- errors and warnings -----------------------------------------------------------
def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _os_error_message(error: OSError) -> str:
    """An OSError as one sentence: the file, the reason, no errno tuple."""
    if error.filename is not None and error.strerror:
        return f"cannot use {error.filename}: {error.strerror}"
    return _one_line(error)


def _exit_status(command: str, error: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message of an error in ``command``."""
    from moestat.exceptions import StoreError

    if isinstance(error, CommandError):
        return error.code, _one_line(error)
    if isinstance(error, KeyboardInterrupt):
        if isinstance(error, SweepInterrupted):
            return EXIT_INTERRUPTED, _one_line(error)
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(error, StoreError):
        code = EXIT_USAGE if isinstance(error, ValueError) else EXIT_ENVIRONMENT
        return code, _one_line(error)
    if isinstance(error, FileNotFoundError):
        return EXIT_USAGE, _os_error_message(error)
    if isinstance(error, OSError):
        return EXIT_ENVIRONMENT, _os_error_message(error)
    if isinstance(error, ImportError):
        return EXIT_ENVIRONMENT, _one_line(error)
    if isinstance(error, MemoryError):
        return EXIT_ENVIRONMENT, (
            "out of memory; use a smaller --n-grid, fewer --jobs or --batch-cells."
        )
    if isinstance(error, ValueError | TypeError | ArithmeticError):
        return EXIT_USAGE, _one_line(error)
    return EXIT_ENVIRONMENT, (
        f"unexpected {type(error).__name__}: {_one_line(error)} (run "
        f"`moestat --debug {command} ...` for the traceback, and report it)"
    )


@contextlib.contextmanager
def _warnings_once(command: str) -> Iterator[None]:
    """Print each distinct warning once, as one line without source lines."""
    from moestat.exceptions import (
        ConvergenceWarning,
        DegenerateFitWarning,
        SingularInformationWarning,
    )

    seen: set[tuple[type, str]] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if (category, text) in seen:
            return
        seen.add((category, text))
        print(f"moestat {command}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        # the command's own filters, whatever the caller's (a test's "error")
        warnings.simplefilter("default")
        for category in (
            DeprecationWarning,
            PendingDeprecationWarning,
            ResourceWarning,
        ):
            warnings.simplefilter("ignore", category)
        for category in (
            ConvergenceWarning,
            DegenerateFitWarning,
            SingularInformationWarning,
            StoreIntegrityWarning,
        ):
            warnings.simplefilter("always", category)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``moestat`` command line with ``argv`` (default ``sys.argv``).

    A mistake or a fault never shows a Python traceback: the command prints
    one line, ``moestat COMMAND: what went wrong; how to fix it``, to
    standard error and returns its exit status. Warnings are printed once
    each, as one line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name, e.g. ``["rates", "results"]``;
        by default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success; :data:`EXIT_USAGE` (2) for a mistake in
        the command (arguments, missing files, unreadable data, a file that
        is not a results store); :data:`EXIT_ENVIRONMENT` (1) for a fault
        of the machine (disk full, read-only or locked directory,
        unreachable scheduler, missing package); :data:`EXIT_INTERRUPTED`
        (130) after Ctrl-C, every finished cell of a sweep being stored.
        ``moestat --debug COMMAND`` shows the traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _warnings_once(args.command):
            return args.run(args)
    except (Exception, KeyboardInterrupt) as error:
        if args.debug:
            raise
        code, message = _exit_status(args.command, error)
        print(f"moestat {args.command}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
