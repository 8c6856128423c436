"""The convergence-rate laboratory: scenarios, resumable sweeps and rates.

- :data:`SCENARIOS`: the papers' true models and settings under their ids
  (theory.md §8.3); :func:`list_scenarios` describes them.
- :func:`simulate`: a sweep over (fit, n, replicate) cells, fitted one at a
  time (``engine="numpy"``) or in batches on a GPU (``engine="torch"``),
  run in parallel (``parallel=``: joblib's loky, threads, or Dask for a
  cluster), every finished cell stored durably; running it again resumes.
- :func:`load_results`: the cells as a pandas DataFrame; :func:`scan_store`
  says which lines of a store were skipped, and why.
- :func:`estimate_rate`: log-log slopes with bootstrap confidence intervals
  beside the rates theory predicts.

Examples
--------
>>> import tempfile
>>> from moestat.simulation import simulate, load_results, estimate_rate
>>> with tempfile.TemporaryDirectory() as tmp:
...     _ = simulate("SG-E", tmp, n_grid=[200, 800, 3200], n_reps=3,
...                  progress=False)
...     rates = estimate_rate(load_results(tmp), "kl", n_boot=100)
>>> rates[["scenario", "fit", "loss"]].values.tolist()
[['SG-E', 'm=2', 'kl']]
"""

from moestat.simulation.rates import (
    N_BOOT,
    RATE_FORMS,
    approximation_rates,
    best_of_restarts,
    estimate_rate,
    format_rates,
    loss_columns,
    summarize_losses,
    tradeoff_summary,
)
from moestat.simulation.scenarios import (
    SCENARIOS,
    FitSpec,
    GaussianRegressionTruth,
    Scenario,
    UniformCovariates,
    get_scenario,
    list_scenarios,
    log_grid,
)
from moestat.simulation.store import (
    ResultStore,
    StoreScan,
    cell_identity,
    export_results,
    load_results,
    read_records,
    scan_store,
)
from moestat.simulation.sweep import (
    BACKENDS,
    ENGINES,
    PARALLEL_BACKENDS,
    TORCH_BATCH_ROWS,
    Cell,
    cell_seed,
    oracle_params,
    oracle_start,
    plan_batches,
    plan_cells,
    population_fit,
    pseudo_sample,
    run_cell,
    simulate,
)

__all__ = [
    "SCENARIOS",
    "Scenario",
    "FitSpec",
    "UniformCovariates",
    "GaussianRegressionTruth",
    "get_scenario",
    "list_scenarios",
    "log_grid",
    "simulate",
    "run_cell",
    "plan_cells",
    "plan_batches",
    "Cell",
    "cell_seed",
    "oracle_params",
    "oracle_start",
    "population_fit",
    "pseudo_sample",
    "ENGINES",
    "PARALLEL_BACKENDS",
    "BACKENDS",
    "TORCH_BATCH_ROWS",
    "ResultStore",
    "load_results",
    "export_results",
    "read_records",
    "scan_store",
    "StoreScan",
    "cell_identity",
    "estimate_rate",
    "summarize_losses",
    "format_rates",
    "loss_columns",
    "best_of_restarts",
    "approximation_rates",
    "tradeoff_summary",
    "RATE_FORMS",
    "N_BOOT",
]
