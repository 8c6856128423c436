"""Large n: peak memory per row and EM speed against the memory-bandwidth bound.

Each case runs in a fresh Python process, so its peak resident set size
(``VmHWM``) belongs to that case alone. Memory is reported in bytes per row
above the process's size after ``import moestat`` (the data themselves
included), beside the bytes per row of the data (``X`` and ``y``): ``B/row``
is the peak of the whole case (simulating the data, the designs, the start
and the fit), ``run B/row`` the peak while the EM loop or the estimator's
fit runs (the peak is reset once the data, designs and start are made;
what they hold is counted; a ``fit`` case holds only ``X`` and ``y``
beside the estimator's fit; the heap the simulation freed is handed back
to the system first, with glibc's ``malloc_trim``, so that it does not
hide the run's own growth). ``path`` says whether :func:`moestat.fit.em`
sweeps the data in chunks or keeps the (n, m) arrays whole.

Speed: milliseconds per EM iteration (softmax gate, linear Gaussian
experts, one BLAS thread; the faster of two runs of ``--iters``
iterations, so that imports, first calls and the first touch of fresh
buffers are not counted; the memory is the first run's) against the time
to stream, once, the bytes an EM iteration cannot avoid touching: ``X``,
``y`` and the ``(n, m)`` responsibilities, at this machine's measured read
bandwidth. Cases ending
in ``f32`` run the chunked sweep in float32 (``em(sweep_dtype=np.float32)``;
EM only); cases ending in ``sig`` fit a dense normalized sigmoid gate
(default box) instead of the softmax gate (EM only). ``--path full`` runs
the EM cases on the full path (``em(chunk_size=0)``), for comparison with
the chunked one. ``--slope`` adds, per dtype, the log-log slope of ms/iter against
m over the ``d2m*`` cases run (1: linear in m).

Run:  python benchmarks/bench_large_n.py [--n 1000000] [--iters 10]
      [--cases d2m4 d2m16 d2m32 d64m4 d2m4f32] [--what em fit] [--slope]
      [--path auto|full]
      python benchmarks/bench_large_n.py --what em --slope
      --cases d2m4 d2m8 d2m16 d2m32 d2m4f32 d2m8f32 d2m16f32 d2m32f32
      python benchmarks/bench_large_n.py --what em --cases d2m4sig [--path full]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

#: name -> (d, m, rows as a fraction of --n, dtype of the sweep); a
#: ``sig`` case fits a dense normalized sigmoid gate (:data:`SIGMOID_CASES`)
CASES = {
    "d2m4": (2, 4, 1.0, "float64"),
    "d2m8": (2, 8, 1.0, "float64"),
    "d2m16": (2, 16, 1.0, "float64"),
    "d2m32": (2, 32, 1.0, "float64"),
    "d64m4": (64, 4, 0.1, "float64"),
    "d2m4f32": (2, 4, 1.0, "float32"),
    "d2m8f32": (2, 8, 1.0, "float32"),
    "d2m16f32": (2, 16, 1.0, "float32"),
    "d2m32f32": (2, 32, 1.0, "float32"),
    "d2m4sig": (2, 4, 1.0, "float64"),
}
SIGMOID_CASES = {"d2m4sig"}
DEFAULT_CASES = ["d2m4", "d2m16", "d2m32", "d64m4", "d2m4f32"]

CHILD = textwrap.dedent(
    """
    import ctypes, json, sys, time, warnings

    def rss(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return 1024 * int(line.split()[1])
        raise RuntimeError(field)

    import numpy as np
    import moestat
    from threadpoolctl import threadpool_limits
    from moestat.datasets import make_moe_regression
    from moestat.fit import em, initial_params
    from moestat.model import MixtureOfExperts

    n, d, m, iters, what, dtype, sigmoid, full = json.loads(sys.argv[1])
    options = {} if dtype == "float64" else {"sweep_dtype": np.dtype(dtype)}
    if full:
        options["chunk_size"] = 0
    baseline = rss("VmRSS")
    with threadpool_limits(1, user_api="blas"):
        X, y, truth = make_moe_regression(
            n_samples=n, n_features=d, n_experts=m, random_state=0
        )
        gate = moestat.NormalizedSigmoidGate() if sigmoid else truth.gate
        spec = MixtureOfExperts(gate, truth.expert)
        design = spec.design(X)
        if what == "em":
            start = initial_params(
                spec, design, X, y, m, "random", np.random.default_rng(1)
            )
            model = spec.with_params(start)
        else:
            model = truth
        try:
            import moestat.fit as fit_module
            chunked = fit_module._chunked(model, design, options.get("chunk_size"))
            path = "chunks" if chunked else "full"
        except AttributeError:
            path = "full"
        if what == "fit":
            del design  # the estimator builds its own: only X and y are held
        before_peak = rss("VmHWM")
        try:  # hand the simulation's freed heap back: the run's peak is its own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM: the peak of the run alone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            if what == "em":
                em(model, design, y, tol=0.0, max_iter=iters, **options)
            else:
                moestat.GaussianMoE(
                    n_experts=m, n_init=1, max_iter=iters, random_state=0
                ).fit(X, y)
            seconds = time.perf_counter() - t0
            if what == "em":  # again, warm: imports, first calls and the
                # first touch of fresh buffers are not an iteration's cost
                t0 = time.perf_counter()
                em(model, design, y, tol=0.0, max_iter=iters, **options)
                seconds = min(seconds, time.perf_counter() - t0)
    print(json.dumps({
        "bytes_per_row": (max(before_peak, rss("VmHWM")) - baseline) / n,
        "run_bytes_per_row": (rss("VmHWM") - baseline) / n,
        "path": path,
        "data_per_row": (X.nbytes + y.nbytes) / n,
        "ms_per_iter": 1e3 * seconds / iters,
    }))
    """
)


def run_case(
    n: int,
    d: int,
    m: int,
    iters: int,
    what: str,
    dtype: str,
    sigmoid: bool = False,
    full: bool = False,
) -> dict:
    """Run one case in a fresh interpreter and read its JSON line."""
    case = [n, d, m, iters, what, dtype, sigmoid, full]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(case)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_bandwidth(n_bytes: int = 400_000_000, repeats: int = 5) -> float:
    """Bytes per second of one streaming read (the best of ``repeats`` sums)."""
    import time

    import numpy as np

    data = np.ones(n_bytes // 8)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - t0)
    return data.nbytes / best


def main() -> None:
    """Print the memory and speed table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="(unused)")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=CASES)
    parser.add_argument(
        "--what",
        nargs="+",
        default=["em", "fit"],
        choices=["em", "fit"],
        help="em: the EM loop alone; fit: GaussianMoE(n_init=1).fit",
    )
    parser.add_argument(
        "--slope",
        action="store_true",
        help="the log-log slope of ms/iter against m over the d2m* cases",
    )
    parser.add_argument(
        "--path",
        default="auto",
        choices=["auto", "full"],
        help="auto: em's default path; full: the EM cases on the full path",
    )
    args = parser.parse_args()

    bandwidth = read_bandwidth(min(400_000_000, 64 * args.n))
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s (one thread)")
    header = (
        f"{'case':>7} {'n':>9} {'what':>4} {'path':>6} {'B/row':>8} "
        f"{'run B/row':>9} {'data B/row':>10} {'ms/iter':>9} {'bound ms':>9} "
        f"{'ratio':>6}"
    )
    print(header)
    by_m: dict[str, dict[int, float]] = {}
    for name in args.cases:
        d, m, fraction, dtype = CASES[name]
        n = max(1000, int(args.n * fraction))
        bound_ms = 1e3 * n * 8 * (d + 1 + m) / bandwidth
        for what in args.what:
            sigmoid = name in SIGMOID_CASES
            if what == "fit" and (dtype != "float64" or sigmoid):
                continue
            full = what == "em" and args.path == "full"
            row = run_case(n, d, m, args.iters, what, dtype, sigmoid, full)
            if what == "em" and d == 2 and not sigmoid:
                by_m.setdefault(dtype, {})[m] = row["ms_per_iter"]
            ratio = row["ms_per_iter"] / bound_ms if what == "em" else float("nan")
            print(
                f"{name:>7} {n:>9} {what:>4} {row['path']:>6} "
                f"{row['bytes_per_row']:>8.0f} {row['run_bytes_per_row']:>9.0f} "
                f"{row['data_per_row']:>10.0f} {row['ms_per_iter']:>9.1f} "
                f"{bound_ms:>9.2f} {ratio:>6.1f}"
            )
    if args.slope:
        for dtype, times in by_m.items():
            print(f"{dtype}: log-log slope of ms/iter in m = {log_slope(times):.2f}")


def log_slope(times: dict[int, float]) -> float:
    """Least-squares slope of log(ms/iter) against log(m) (nan below two m)."""
    import numpy as np

    if len(times) < 2:
        return float("nan")
    m = np.log(np.array(sorted(times), dtype=float))
    t = np.log(np.array([times[k] for k in sorted(times)]))
    return float(np.polyfit(m, t, 1)[0])


if __name__ == "__main__":
    main()
