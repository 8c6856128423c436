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
experts, one BLAS thread) against the time to stream, once, the bytes an EM
iteration cannot avoid touching: ``X``, ``y`` and the ``(n, m)``
responsibilities, at this machine's measured read bandwidth.

Run:  python benchmarks/bench_large_n.py [--n 1000000] [--iters 10]
      [--cases d2m4 d2m16 d2m32 d64m4] [--what em fit]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

#: name -> (d, m, rows as a fraction of --n)
CASES = {
    "d2m4": (2, 4, 1.0),
    "d2m16": (2, 16, 1.0),
    "d2m32": (2, 32, 1.0),
    "d64m4": (64, 4, 0.1),
}

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

    n, d, m, iters, what = json.loads(sys.argv[1])
    baseline = rss("VmRSS")
    with threadpool_limits(1, user_api="blas"):
        X, y, truth = make_moe_regression(
            n_samples=n, n_features=d, n_experts=m, random_state=0
        )
        spec = MixtureOfExperts(truth.gate, truth.expert)
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
            path = "chunks" if fit_module._chunked(model, design, None) else "full"
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
                em(model, design, y, tol=0.0, max_iter=iters)
            else:
                moestat.GaussianMoE(
                    n_experts=m, n_init=1, max_iter=iters, random_state=0
                ).fit(X, y)
            seconds = time.perf_counter() - t0
    print(json.dumps({
        "bytes_per_row": (max(before_peak, rss("VmHWM")) - baseline) / n,
        "run_bytes_per_row": (rss("VmHWM") - baseline) / n,
        "path": path,
        "data_per_row": (X.nbytes + y.nbytes) / n,
        "ms_per_iter": 1e3 * seconds / iters,
    }))
    """
)


def run_case(n: int, d: int, m: int, iters: int, what: str) -> dict:
    """Run one case in a fresh interpreter and read its JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([n, d, m, iters, what])],
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
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument(
        "--what",
        nargs="+",
        default=["em", "fit"],
        choices=["em", "fit"],
        help="em: the EM loop alone; fit: GaussianMoE(n_init=1).fit",
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
    for name in args.cases:
        d, m, fraction = CASES[name]
        n = max(1000, int(args.n * fraction))
        bound_ms = 1e3 * n * 8 * (d + 1 + m) / bandwidth
        for what in args.what:
            row = run_case(n, d, m, args.iters, what)
            ratio = row["ms_per_iter"] / bound_ms if what == "em" else float("nan")
            print(
                f"{name:>7} {n:>9} {what:>4} {row['path']:>6} "
                f"{row['bytes_per_row']:>8.0f} {row['run_bytes_per_row']:>9.0f} "
                f"{row['data_per_row']:>10.0f} {row['ms_per_iter']:>9.1f} "
                f"{bound_ms:>9.2f} {ratio:>6.1f}"
            )


if __name__ == "__main__":
    main()
