"""Starting values: how often each start strategy reaches the maximum.

For each strategy the script fits every case from 10 seeds and reports the
fraction of seeds whose fit (restarts, moves, then the L-BFGS-B polish, as
the estimators run it) ends within ``--within`` log-likelihood units of the
reference, and the mean wall and CPU time per fit.

Cases
-----
* ``bench_em_<n>``: the generator of ``bench_em.py`` (d = 2, m = 4, softmax
  gate, linear Gaussian experts) with data seed = ``random_state`` = seed.
  The reference is the highest log-likelihood found by any fit of that data
  set, EM plus polish from the true parameters included.
* real data (``tests/data/``, Engel from statsmodels, diabetes from
  scikit-learn): the reference is the highest log-likelihood of any fit,
  ``--n-ref-init`` restarts of ``"auto"`` included.

Run:  python benchmarks/bench_starts.py [--cases bench_em_20000 mcycle]
      [--strategies auto kmeans] [--seeds 3] [--out results.json]
Set OMP_NUM_THREADS=1 for times comparable across machines.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moestat.datasets import make_moe_regression
from moestat.experts import GaussianExpert, GLMExpert
from moestat.fit import em, fit_restarts, polish_fit
from moestat.gates import resolve_gate
from moestat.model import MixtureOfExperts

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
REG_VAR = 1e-6  # the estimators' default

# name -> fit_restarts options; "auto" is the estimators' default
STRATEGIES: dict[str, dict[str, Any]] = {
    "auto": {"init": "auto", "n_init": 10},
    "auto (no moves)": {"init": "auto", "n_init": 10, "n_moves": 0},
    "kmeans": {"init": "kmeans", "n_init": 10},
    "random": {"init": "random", "n_init": 10},
    "random x 25": {"init": "random", "n_init": 10, "n_candidates": 25},
    "kmeans x 1 + moves": {"init": "kmeans", "n_init": 1, "n_moves": 3},
    "auto x 3": {"init": "auto", "n_init": 3},
}


@dataclass
class Case:
    """A data set, the model fitted to it and, if known, its true model."""

    name: str
    X: np.ndarray
    y: np.ndarray
    spec: MixtureOfExperts
    n_experts: int
    truth: MixtureOfExperts | None = None


def generator_case(n: int, seed: int) -> Case:
    """The data of bench_em.py at size ``n`` from ``seed``."""
    X, y, truth = make_moe_regression(
        n_samples=n, n_experts=4, n_features=2, random_state=seed
    )
    spec = MixtureOfExperts(truth.gate, truth.expert)
    return Case(f"bench_em_{n}", X, y, spec, 4, truth)


def _spec(family: str, degree: int = 1) -> MixtureOfExperts:
    expert = (
        GaussianExpert(degree=degree)
        if family == "gaussian"
        else GLMExpert(family, degree=degree)
    )
    return MixtureOfExperts(resolve_gate("softmax"), expert)


def _csv(name: str) -> pd.DataFrame:
    return pd.read_csv(DATA / f"{name}.csv")


def real_cases() -> dict[str, Case]:
    """The real data sets, each with the model of its usual analysis."""
    cases = {}

    def add(name, X, y, family, m, degree=1):
        X = np.asarray(X, dtype=float).reshape(len(y), -1)
        y = np.asarray(y, dtype=float)
        cases[name] = Case(name, X, y, _spec(family, degree), m)

    mcycle = _csv("mcycle")
    add("mcycle", mcycle[["times"]], mcycle["accel"], "gaussian", 4)
    faithful = _csv("faithful")
    add("faithful", faithful[["eruptions"]], faithful["waiting"], "gaussian", 2)
    co2 = _csv("CO2data")
    add("CO2data", co2[["GNP"]], co2["CO2"], "gaussian", 2)
    patent = _csv("patent")
    add("patent", patent[["lgRD"]], patent["Patents"], "poisson", 3)
    bio = _csv("bioChemists")
    X_bio = np.column_stack(
        [bio["fem"] == "Women", bio["mar"] == "Married", bio[["kid5", "phd", "ment"]]]
    )
    add("bioChemists", X_bio, bio["art"], "poisson", 2)
    salmonella = _csv("salmonellaTA98")
    add(
        "salmonellaTA98",
        np.log(salmonella["x"] + 10.0),
        salmonella["y"],
        "poisson",
        2,
    )
    dmft = _csv("dmft")
    add("dmft", dmft[["Begin"]], dmft["End"], "poisson", 2)
    try:
        from statsmodels.datasets import engel

        data = engel.load_pandas().data
        add("engel", data[["income"]] / 1000.0, data["foodexp"] / 1000.0, "gaussian", 2)
    except ImportError:
        pass
    from sklearn.datasets import load_diabetes

    X_diab, y_diab = load_diabetes(return_X_y=True)
    add("diabetes", X_diab, y_diab / 100.0, "gaussian", 2)
    return cases


def fit(case: Case, seed: int, options: dict[str, Any]) -> dict[str, float]:
    """One fit as the estimators run it; its log-likelihood and times."""
    design = case.spec.design(case.X)
    var_floor = case.spec.expert.variance_floor(case.y, REG_VAR)
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        best, _ = fit_restarts(
            case.spec,
            design,
            case.X,
            case.y,
            n_experts=case.n_experts,
            rng=np.random.default_rng(seed),
            var_floor=var_floor,
            polish=True,
            **options,
        )
    return {
        "log_likelihood": best.log_likelihood,
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
    }


def from_truth(case: Case) -> float:
    """EM then polish from the true parameters (``-inf`` without a truth)."""
    if case.truth is None:
        return -np.inf
    design = case.spec.design(case.X)
    var_floor = case.spec.expert.variance_floor(case.y, REG_VAR)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = polish_fit(
            em(case.truth, design, case.y, var_floor=var_floor),
            design,
            case.y,
            var_floor=var_floor,
        )
    ll = result.log_likelihood
    return ll if np.isfinite(ll) else -np.inf


def run_case(make, seeds, strategies, reference, log) -> list[dict[str, Any]]:
    """Every strategy on every seed of one case.

    ``make(seed)`` builds the case; ``reference(case)`` is a log-likelihood
    known to be reachable (from the truth, or from many restarts).
    """
    rows = []
    for seed in seeds:
        case = make(seed)
        for name in strategies:
            row = {"case": case.name, "seed": seed, "strategy": name}
            row.update(fit(case, seed, STRATEGIES[name]))
            row["data"] = f"{case.name}/{seed}" if case.truth else case.name
            row["known"] = reference(case)
            rows.append(row)
            log(row)
    return rows


def summarise(rows: list[dict[str, Any]], within: float) -> pd.DataFrame:
    """Fraction of seeds within ``within`` of the reference; mean times.

    The reference of a data set is the highest log-likelihood any fit of it
    reached, the known one included.
    """
    frame = pd.DataFrame(rows)
    best = frame[["log_likelihood", "known"]].max(axis=1)
    reference = best.groupby(frame["data"]).transform("max")
    frame["success"] = frame["log_likelihood"] >= reference - within
    table = frame.groupby(["case", "strategy"], sort=False).agg(
        reached=("success", "mean"), wall=("wall", "mean"), cpu=("cpu", "mean")
    )
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        nargs="*",
        default=None,
        help="bench_em_<n> and/or real data names (default: all)",
    )
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--within", type=float, default=0.5)
    parser.add_argument("--n-ref-init", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="rows as JSON lines")
    args = parser.parse_args()

    real = real_cases()
    names = args.cases or ["bench_em_20000", "bench_em_100000", *real]
    rows = []

    def log(row):
        print(json.dumps(row), flush=True)
        if args.out is not None:
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    for name in names:
        if name.startswith("bench_em_"):
            n = int(name.removeprefix("bench_em_"))
            rows += run_case(
                lambda seed, n=n: generator_case(n, seed),
                range(args.first_seed, args.first_seed + args.seeds),
                args.strategies,
                from_truth,
                log,
            )
        else:
            known = fit(real[name], 0, {"init": "auto", "n_init": args.n_ref_init})
            rows += run_case(
                lambda seed, name=name: real[name],
                range(args.first_seed, args.first_seed + args.seeds),
                args.strategies,
                lambda case, ll=known["log_likelihood"]: ll,
                log,
            )
    print(summarise(rows, args.within).to_string(index=False, float_format="%.2f"))
    cpu = np.mean([row["cpu"] for row in rows])
    print(f"mean CPU time per fit over all rows: {1e3 * cpu:.0f} ms")


if __name__ == "__main__":
    main()
