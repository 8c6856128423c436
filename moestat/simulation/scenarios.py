"""Named scenarios: the true models and settings of the papers' simulations.

A :class:`Scenario` is a true conditional density, a covariate law, the
models fitted to samples from it (:class:`FitSpec`), the default n grid and
number of replications, and the slopes theory predicts for each loss.
``SCENARIOS`` holds the experiments of theory.md §8.3 under their ids;
:func:`get_scenario` looks one up, :func:`list_scenarios` lists them.

Conventions
-----------
moestat fixes the *first* softmax gate row at zero and uses class 0 as the
reference of multinomial experts; the papers fix the last. The truths below
are the papers' values re-expressed in moestat's convention (the density is
unchanged); each builder says which values it started from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from moestat.experts import (
    GaussianExpert,
    GaussianExpertParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
    ReLUExpert,
    ReLUExpertParams,
    StackedExpertParams,
    StackedExperts,
)
from moestat.gates import (
    GateParams,
    ModifiedSoftmaxGate,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SharedGateParams,
    SoftmaxGate,
)
from moestat.losses import uniform_quadrature
from moestat.model import MixtureOfExperts, MoEParams

__all__ = [
    "UniformCovariates",
    "GaussianRegressionTruth",
    "FitSpec",
    "Scenario",
    "SCENARIOS",
    "get_scenario",
    "list_scenarios",
    "log_grid",
]


def log_grid(low: float, high: float, num: int) -> tuple[int, ...]:
    """``num`` log-spaced integer sample sizes from ``low`` to ``high``.

    Parameters
    ----------
    low, high : float
        The first and last sample sizes.
    num : int
        Number of sample sizes.

    Returns
    -------
    tuple of int
        ``np.geomspace(low, high, num)`` rounded to the nearest integers.
    """
    return tuple(int(round(v)) for v in np.geomspace(low, high, num))


@dataclass(frozen=True)
class UniformCovariates:
    """Covariates uniform on ``[low, high]^d``, drawn or on a grid.

    Parameters
    ----------
    low, high : float
        The interval.
    n_features : int, default=1
        Dimension ``d``.
    grid : bool, default=False
        Use the deterministic equispaced design of ``n`` points (``d = 1``),
        as in the NeurIPS 2023 softmax-gating code, instead of random draws.
        Integrals over x use the uniform law either way (theory.md §5.1).
    """

    low: float
    high: float
    n_features: int = 1
    grid: bool = False

    def sample(self, n: int, rng: np.random.Generator) -> NDArray[np.float64]:
        """Covariates of ``n`` samples, shape (n, d)."""
        if self.grid:
            return np.linspace(self.low, self.high, n)[:, None]
        return rng.uniform(self.low, self.high, size=(n, self.n_features))

    def quadrature(
        self, n_nodes: int = 200
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Gauss–Legendre nodes and weights of the uniform law."""
        return uniform_quadrature(self.low, self.high, n_nodes, self.n_features)

    def describe(self) -> str:
        """For example ``U[0, 1]``."""
        law = f"U[{self.low:g}, {self.high:g}]"
        if self.n_features > 1:
            law += f"^{self.n_features}"
        return law + (" (grid)" if self.grid else "")


def sine_mean(X: NDArray[np.float64]) -> NDArray[np.float64]:
    """``h(x) = sin(2 pi x) + x / 2`` (Mendes–Jiang approximation study)."""
    x = X[:, 0]
    return np.sin(2.0 * np.pi * x) + 0.5 * x


@dataclass(frozen=True)
class GaussianRegressionTruth:
    """A true density outside every MoE: ``Y | X ~ N(h(X), variance)``.

    For studies of the approximation error (Mendes–Jiang): fitted mixtures
    of polynomial experts approach it as m and k grow, but never reach it.

    Parameters
    ----------
    mean_function : callable
        ``h``: (n, d) covariates to (n,) means (a module-level function, so
        that sweeps can send it to worker processes).
    variance : float
        The noise variance.
    """

    mean_function: Callable[[NDArray[np.float64]], NDArray[np.float64]]
    variance: float

    def log_pdf(self, X: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray:
        """``log p(y_t | x_t)`` for each sample."""
        mean = self.mean_function(np.asarray(X, float))
        return norm.logpdf(np.asarray(y, float), mean, np.sqrt(self.variance))

    def sample(self, X: NDArray[np.float64], random_state: Any = None):
        """Draw ``y`` at each row of ``X``; the labels are all 0."""
        rng = np.random.default_rng(random_state)
        mean = self.mean_function(np.asarray(X, float))
        y = mean + np.sqrt(self.variance) * rng.standard_normal(mean.shape)
        return y, np.zeros(mean.shape, dtype=np.intp)

    def response_quadrature(
        self, X: NDArray[np.float64], n_nodes: int = 64
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Gauss–Hermite nodes and weights of ``y`` under ``p(y | x)``."""
        z, w = np.polynomial.hermite.hermgauss(n_nodes)
        mean = self.mean_function(np.asarray(X, float))
        Y = mean[:, None] + np.sqrt(2.0 * self.variance) * z[None, :]
        W = np.broadcast_to(w / np.sqrt(np.pi), Y.shape).copy()
        return Y, W


@dataclass(frozen=True)
class FitSpec:
    """One model fitted to every sample of a scenario.

    Parameters
    ----------
    label : str
        Short name, unique within the scenario (``"m=3"``).
    model : MixtureOfExperts
        The fitted specification (gate and expert family, no parameters).
    n_experts : int
        Number of fitted experts ``m`` (shared ones included).
    assignment : tuple of int
        Oracle initialisation: the true expert each fitted expert starts
        from (theory.md §4.5). Experts sharing a true expert split its mass.
        With a ``reference``, the fit starts near the reference instead
        (what a misspecified fit converges to), and ``assignment`` refers to
        the reference's experts.
    init : {"oracle", "random"}, default="oracle"
        ``"oracle"``: start near the truth, perturbed by
        ``oracle_scale * n**-0.083`` (the papers' near-truth start);
        ``"random"``: ``n_init`` restarts of moestat's default
        initialisation (a robustness arm).
    n_init : int, default=1
        Restarts for ``init="random"``.
    solver : {"em", "mle"}, default="em"
        The engine.
    polish : bool, default=False
        Finish with L-BFGS-B on the log-likelihood.
    voronoi : str or None, default="auto"
        Kind of Voronoi loss (:func:`moestat.losses.voronoi_loss`); None
        for none.
    theory : mapping of str to float
        Slope of each loss against n that theory predicts (theory.md §6,
        §8.2); losses without an entry have no stated rate.
    diagnostic : tuple of str
        Losses whose slopes are diagnostics, not pass/fail (per-parameter
        errors in over-specified cells, theory.md §8.2).
    reference : MixtureOfExperts or None, default=None
        For misspecified fits (the dense normalized-sigmoid regime): the
        specification of the best approximation ``G-check`` whose atoms the
        losses are measured against, computed once per sweep by population
        EM on a quadrature pseudo-sample (theory.md §5.2.3).
    reference_assignment : tuple of int
        Oracle start of that population fit.
    """

    label: str
    model: MixtureOfExperts
    n_experts: int
    assignment: tuple[int, ...]
    init: str = "oracle"
    n_init: int = 1
    solver: str = "em"
    polish: bool = False
    voronoi: str | None = "auto"
    theory: Mapping[str, float] = field(default_factory=dict)
    diagnostic: tuple[str, ...] = ()
    reference: MixtureOfExperts | None = None
    reference_assignment: tuple[int, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """A true model, its covariate law, the fits, and the expected rates.

    Parameters
    ----------
    id : str
        Identifier as in theory.md §8.3 (``"SG-E"``).
    title : str
        One line for ``moestat scenarios``.
    truth : MixtureOfExperts
        The true conditional density (with parameters).
    covariates : UniformCovariates
        The law of X.
    fits : tuple of FitSpec
        The models fitted to each sample.
    n_grid : tuple of int
        Default sample sizes.
    n_reps : int
        Default replications per sample size.
    source : str
        Where the setting comes from.
    density_losses : tuple of str, default=("kl", "hellinger", "tv")
        Density discrepancies computed for every cell.
    tol, max_iter : float, int
        Stopping rule of the fits (the papers: 1e-6 and 1000 or 2000).
    oracle_scale : float, default=0.005
        ``c`` of the near-truth start's perturbation ``c n^-0.083``.
    x_nodes : int, default=200
        Gauss–Legendre nodes of the covariate integrals.
    notes : str
        What a user should know (deviations from the paper, caveats).
    kind : {"rate", "approximation"}, default="rate"
        ``"rate"``: cells are samples of size n (the n grid) and
        replications; ``"approximation"``: there is no sample; each cell
        fits one model to the population (a quadrature pseudo-sample) from
        one random start (the replications are restarts), measuring the
        approximation error of the fitted family.
    """

    id: str
    title: str
    truth: MixtureOfExperts
    covariates: UniformCovariates
    fits: tuple[FitSpec, ...]
    n_grid: tuple[int, ...]
    n_reps: int
    source: str
    density_losses: tuple[str, ...] = ("kl", "hellinger", "tv")
    tol: float = 1e-6
    max_iter: int = 1000
    oracle_scale: float = 0.005
    x_nodes: int = 200
    notes: str = ""
    kind: str = "rate"

    def fit(self, label: str) -> FitSpec:
        """The fit called ``label``."""
        for spec in self.fits:
            if spec.label == label:
                return spec
        raise ValueError(
            f"Scenario {self.id} has no fit {label!r}; its fits are "
            f"{[spec.label for spec in self.fits]}."
        )


# -- true models ---------------------------------------------------------------
def _softmax_rows(rows: list[tuple[float, ...]]) -> GateParams:
    """Softmax gate rows given with the papers' last-row reference, re-anchored."""
    coef = np.asarray(rows, dtype=float)
    return GateParams(coef - coef[0])


def _gaussian(coef: list[tuple[float, ...]], var: list[float]) -> GaussianExpertParams:
    return GaussianExpertParams(np.asarray(coef, float), np.asarray(var, float))


_EXACT = {"kl": -1.0, "hellinger": -0.5, "tv": -0.5, "voronoi": -0.5}


def _exact_parameters(
    blocks: tuple[str, ...], truth_gate: GateParams
) -> dict[str, float]:
    """Per-parameter errors of an exact-specified fit: slope -1/2.

    Softmax gate slopes are identified only up to a common translation; the
    optimal anchoring of the Voronoi loss matches the heaviest true atom's
    slope exactly, so its error is zero by construction and has no rate.
    """
    heaviest = int(np.argmax(truth_gate.coef[:, 0]))
    return {
        f"err_{block}[{j}]": -0.5
        for block in blocks
        for j in range(truth_gate.n_experts)
        if not (block == "gate_slope" and j == heaviest)
    }


_SG_BLOCKS = ("gate_slope", "intercept", "slope", "var")


def _sg_truth() -> MixtureOfExperts:
    # NeurIPS 2023 code: gate (beta_0, beta_1) = (-8, 25) and (0, 0) (the
    # reference); experts (b, a) = (15, -20), (-5, 20); sd 0.3 and 0.4.
    params = MoEParams(
        _softmax_rows([(-8.0, 25.0), (0.0, 0.0)]),
        _gaussian([(15.0, -20.0), (-5.0, 20.0)], [0.09, 0.16]),
    )
    return MixtureOfExperts(SoftmaxGate(), GaussianExpert(degree=1), params)


def _sg_fit(m: int, **kwargs: Any) -> FitSpec:
    spec = MixtureOfExperts(SoftmaxGate(), GaussianExpert(degree=1))
    assignment = tuple(i % 2 for i in range(m))
    return FitSpec(f"m={m}", spec, m, assignment, **kwargs)


def _sg_exact() -> Scenario:
    return Scenario(
        id="SG-E",
        title="Softmax-gated Gaussian MoE, exact fit (m = k* = 2): D1 and KL",
        truth=_sg_truth(),
        covariates=UniformCovariates(0.0, 1.0, grid=True),
        fits=(
            _sg_fit(
                2,
                voronoi="softmax_gaussian",
                theory=_EXACT | _exact_parameters(_SG_BLOCKS, _sg_truth().params.gate),
            ),
        ),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen, Nguyen & Ho (NeurIPS 2023), authors' code",
        max_iter=2000,
    )


def _sg_over() -> Scenario:
    # With assignment (0, 1, 0) the cell of true expert 0 has two atoms.
    over_cell = {
        "err_gate_slope[0]": -1 / 8,
        "err_intercept[0]": -1 / 8,
        "err_slope[0]": -1 / 4,
        "err_var[0]": -1 / 4,
    }
    fits = tuple(
        _sg_fit(
            m,
            voronoi="softmax_gaussian",
            theory=_EXACT | (over_cell if m == 3 else {}),
            diagnostic=tuple(over_cell) if m == 3 else (),
        )
        for m in (3, 4)
    )
    return Scenario(
        id="SG-O",
        title="Softmax-gated Gaussian MoE, over-specified fits (m = 3, 4): D2, KL",
        truth=_sg_truth(),
        covariates=UniformCovariates(0.0, 1.0, grid=True),
        fits=fits,
        n_grid=log_grid(1_000, 100_000, 20),
        n_reps=40,
        source="Nguyen, Nguyen & Ho (NeurIPS 2023), authors' code",
        max_iter=2000,
        notes=(
            "Per-parameter slopes of the two-atom cell are diagnostics: "
            "n <= 1e5 and log factors make them unreliable (theory.md §6.C)."
        ),
    )


# DeepSeekMoE (arXiv 2505.10860, App. G.1): X ~ U[-3, 3], one shared and two
# routed true experts, fitted with k_1 = 2 shared and k_2 = 3 routed.
_DS_COVARIATES = UniformCovariates(-3.0, 3.0)
_DS_ASSIGNMENT = (0, 0, 1, 2, 1)
_DS_SOFTMAX_ROUTED = [(-1.0, 5.0), (0.0, 0.0)]  # ds_literal=False (theory §6.F)


def _shared_gate_params(
    routed: GateParams, omega: list[float] | None = None
) -> SharedGateParams:
    weights = np.asarray(omega if omega is not None else [1.0])
    return SharedGateParams(routed, weights, 0.5)


def _relu(coef: list[tuple[float, ...]], var: list[float]) -> ReLUExpertParams:
    return ReLUExpertParams(np.asarray(coef, float), np.asarray(var, float))


def _ds_relu_experts(n_shared: int) -> StackedExperts:
    return StackedExperts(ReLUExpert(bias=True), ReLUExpert(bias=False), n_shared)


def _ds_relu_params() -> StackedExpertParams:
    # shared -8 ReLU(6x), tau = 0.25; routed 4 ReLU(-12x), 4 ReLU(12x), nu = 0.4
    return StackedExpertParams(
        _relu([(0.0, 6.0, -8.0)], [0.25]),
        _relu([(-12.0, 4.0), (12.0, 4.0)], [0.4, 0.4]),
    )


_DS_THEORY = {"voronoi": -0.5, "tv": -0.5, "hellinger": -0.5, "kl": -1.0}


def _ds_fit(
    gate: Any, experts: Any, voronoi: str, label: str = "k1=2,k2=3", **kwargs: Any
) -> FitSpec:
    spec = MixtureOfExperts(SharedExpertsGate(gate, 2), experts)
    return FitSpec(
        label,
        spec,
        5,
        _DS_ASSIGNMENT,
        voronoi=voronoi,
        theory=kwargs.pop("theory", _DS_THEORY),
        **kwargs,
    )


def _ds_routed_gate(literal: bool) -> GateParams:
    # The printed routed gate (-0.5, 5), (0.5, 5) has equal slopes, so the
    # softmax gate is constant in x (theory.md §6.F); the default keeps the
    # printed intercept difference and gives the slopes a difference of 5.
    rows = [(-0.5, 5.0), (0.5, 5.0)] if literal else _DS_SOFTMAX_ROUTED
    return _softmax_rows(rows)


_DS_DENSITY = {"tv": -0.5, "hellinger": -0.5, "kl": -1.0}


def _ds_literal_fields(literal: bool, sid: str, title: str) -> dict[str, Any]:
    """Id, title, notes and theory of a DS softmax scenario (printed or not)."""
    if not literal:
        return {
            "id": sid,
            "title": title,
            "notes": (
                "Routed gate (beta_0, beta_1) = (-1, 5) and (0, 0) instead of "
                "the printed equal slopes, which make the softmax gate constant "
                "in x (theory.md §6.F, ds_literal=False); DS-1L and DS-2L use "
                "the printed values."
            ),
            "theory": _DS_THEORY,
        }
    return {
        "id": sid + "L",
        "title": title + ", printed gate",
        "notes": (
            "The printed routed gate (-0.5, 5), (0.5, 5) (ds_literal=True): its "
            "slopes are equal, so the softmax gate does not depend on x and "
            "assumption (A.2) fails. The density rates still hold (the truth is "
            "in the model); the Voronoi loss has no stated rate here."
        ),
        "theory": _DS_DENSITY,
    }


def _ds1(literal: bool = False) -> Scenario:
    truth = MixtureOfExperts(
        SharedExpertsGate(SoftmaxGate(), 1),
        _ds_relu_experts(1),
        MoEParams(_shared_gate_params(_ds_routed_gate(literal)), _ds_relu_params()),
    )
    fields = _ds_literal_fields(
        literal,
        "DS-1",
        "DeepSeekMoE Thm 1: softmax routing, ReLU experts, shared expert (D1)",
    )
    theory = fields.pop("theory")
    return Scenario(
        truth=truth,
        covariates=_DS_COVARIATES,
        fits=(_ds_fit(SoftmaxGate(), _ds_relu_experts(2), "ds_strong", theory=theory),),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen et al. (2025), DeepSeekMoE, App. G.1",
        **fields,
    )


def _ds_linear_truth(literal: bool = False) -> MixtureOfExperts:
    # shared 2x, tau = 0.2; routed 8x + 2 and -6x + 1, nu = 0.4
    params = MoEParams(
        _shared_gate_params(_ds_routed_gate(literal)),
        _gaussian([(0.0, 2.0), (2.0, 8.0), (1.0, -6.0)], [0.2, 0.4, 0.4]),
    )
    return MixtureOfExperts(
        SharedExpertsGate(SoftmaxGate(), 1), GaussianExpert(degree=1), params
    )


def _ds2(literal: bool = False) -> Scenario:
    fields = _ds_literal_fields(
        literal,
        "DS-2",
        "DeepSeekMoE Thm 2: softmax routing, linear experts, shared expert (D2)",
    )
    theory = fields.pop("theory")
    return Scenario(
        truth=_ds_linear_truth(literal),
        covariates=_DS_COVARIATES,
        fits=(
            _ds_fit(
                SoftmaxGate(), GaussianExpert(degree=1), "ds_linear", theory=theory
            ),
        ),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen et al. (2025), DeepSeekMoE, App. G.1",
        **fields,
    )


def _ds3() -> Scenario:
    routed = GateParams(np.array([[-0.5, 0.0], [0.5, 0.0]]))
    truth = MixtureOfExperts(
        SharedExpertsGate(NormalizedSigmoidGate(), 1),
        _ds_relu_experts(1),
        MoEParams(_shared_gate_params(routed), _ds_relu_params()),
    )
    return Scenario(
        id="DS-3",
        title="DeepSeekMoE Thm 3: normalized sigmoid, sparse regime, ReLU (D3)",
        truth=truth,
        covariates=_DS_COVARIATES,
        fits=(
            _ds_fit(NormalizedSigmoidGate(), _ds_relu_experts(2), "ds_sigmoid_sparse"),
        ),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen et al. (2025), DeepSeekMoE, App. G.1",
    )


def _ds4() -> Scenario:
    experts = StackedExperts(ReLUExpert(bias=True), GaussianExpert(degree=1), 1)
    routed = GateParams(np.array([[-0.5, 5.0], [0.5, 5.0]]))
    expert_params = StackedExpertParams(
        _relu([(0.0, 6.0, -8.0)], [0.25]),
        _gaussian([(2.0, 8.0), (1.0, -6.0)], [0.4, 0.4]),
    )
    truth = MixtureOfExperts(
        SharedExpertsGate(NormalizedSigmoidGate(), 1),
        experts,
        MoEParams(_shared_gate_params(routed), expert_params),
    )
    fitted_experts = StackedExperts(ReLUExpert(bias=True), GaussianExpert(degree=1), 2)
    reference = MixtureOfExperts(SharedExpertsGate(NormalizedSigmoidGate(), 1), experts)
    fit = FitSpec(
        "k1=2,k2=3",
        MixtureOfExperts(SharedExpertsGate(NormalizedSigmoidGate(), 2), fitted_experts),
        5,
        (0, 0, 1, 2, 3),  # experts of the reference G-check (1 shared, 3 routed)
        voronoi="ds_sigmoid_dense",
        theory=_DS_THEORY,
        reference=reference,
        reference_assignment=(0, 1, 2, 1),
    )
    return Scenario(
        id="DS-4",
        title="DeepSeekMoE Thm 4: normalized sigmoid, dense regime, D4 against G-check",
        truth=truth,
        covariates=_DS_COVARIATES,
        fits=(fit,),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen et al. (2025), DeepSeekMoE, App. G.1",
        notes=(
            "The fitted model is misspecified: losses are measured against the "
            "best approximation G-check (population EM on a quadrature "
            "pseudo-sample, theory.md §5.2.3), and the KL to the truth "
            "plateaus at the floor KL(p* || p_G-check), reported as kl_floor."
        ),
    )


def _ds_shared_benefit() -> Scenario:
    spec = MixtureOfExperts(
        SharedExpertsGate(SoftmaxGate(), 3), GaussianExpert(degree=1)
    )
    # three fitted shared atoms on the shared expert; three routed atoms on
    # routed expert 1 and one on routed expert 2 (cells of size 3).
    diagnostic = {"err_shared_slope[0]": -1 / 4, "err_routed_slope[1]": -1 / 6}
    fit = FitSpec(
        "k1=3,k2=4",
        spec,
        7,
        (0, 0, 0, 1, 1, 1, 2),
        voronoi="ds_linear",
        theory=_DS_THEORY | diagnostic,
        diagnostic=tuple(diagnostic),
    )
    return Scenario(
        id="DS-S",
        title="Shared vs routed experts: per-parameter rates in 3-atom cells [P]",
        truth=_ds_linear_truth(),
        covariates=_DS_COVARIATES,
        fits=(fit,),
        n_grid=log_grid(1_000, 100_000, 12),
        n_reps=40,
        source="theory.md §8.3 (our design, derived from DeepSeekMoE Thm 2)",
        notes=(
            "With 2-atom cells shared and routed linear experts have equal "
            "rates; the shared-expert advantage (kappa_1 at n^-1/4 against "
            "eta_1 at n^-1/6) needs cells of size 3."
        ),
    )


# Multinomial logistic MoE (theory.md §8.3, our design): d = 1, K = 3,
# X ~ U[-2, 2], gate (0.5, 3) and (0, 0) (reference); class 3 is the papers'
# reference, moestat's class 0. The likelihood is flat enough that EM with
# the papers' tolerance stops near the near-truth start (n E[KL] about 3
# where p / 2 = 5): exact fits are finished by L-BFGS (polish=True).
_ML_COVARIATES = UniformCovariates(-2.0, 2.0)


def _ml_truth(regime: int, gate: Any = None) -> MixtureOfExperts:
    expert1 = [(0.5, 2.0), (0.0, -1.5)]  # (intercept, slope) of classes 1, 2
    expert2 = [(-0.5, -2.0), (0.3, 1.5)]
    if regime == 2:
        expert2 = [(-0.5, 0.0), (0.3, 0.0)]
    params = MoEParams(
        _softmax_rows([(0.5, 3.0), (0.0, 0.0)]),
        MultinomialExpertParams(np.array([expert1, expert2], dtype=float)),
    )
    gate = SoftmaxGate() if gate is None else gate
    return MixtureOfExperts(gate, MultinomialLogisticExpert(n_classes=3), params)


def _ml_fit(m: int, gate: Any = None, **kwargs: Any) -> FitSpec:
    gate = SoftmaxGate() if gate is None else gate
    spec = MixtureOfExperts(gate, MultinomialLogisticExpert(n_classes=3))
    assignment = kwargs.pop("assignment", tuple(i % 2 for i in range(m)))
    # Exact fits are finished by L-BFGS; over-specified ones are not: an
    # extra atom can separate classes locally, where the likelihood grows
    # without bound, and a quasi-Newton polish runs after it (KL of order 1
    # at n = 3000); EM's damped steps stop first, as in the papers.
    return FitSpec(
        f"m={m}", spec, m, assignment, voronoi="multinomial", polish=m == 2, **kwargs
    )


_ML_DENSITY = {"kl": -1.0, "hellinger": -0.5, "tv": -0.5}


def _ml_r1() -> Scenario:
    return Scenario(
        id="ML-R1",
        title="Softmax-gated multinomial logistic MoE, regime 1 (D_ML) [P design]",
        truth=_ml_truth(1),
        covariates=_ML_COVARIATES,
        fits=(
            _ml_fit(
                2,
                theory=_ML_DENSITY
                | {"voronoi": -0.5}
                | _exact_parameters(
                    ("gate_slope", "intercept", "slope"), _ml_truth(1).params.gate
                ),
            ),
            _ml_fit(3, theory=_ML_DENSITY | {"voronoi": -0.5}),
        ),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen, Akbarian, Nguyen & Ho (ICML 2024); setting theory.md §8.3",
        notes="The D_ML loss is reconstructed from memory of the paper [M].",
    )


def _ml_regime2_fit(gate: Any, voronoi_theory: dict[str, float]) -> FitSpec:
    """Three experts, two on the input-free expert 2 (its slopes diagnosed)."""
    over_cell = {"err_slope[1]": -0.25}
    return _ml_fit(
        3,
        gate,
        assignment=(0, 1, 1),
        theory=_ML_DENSITY | voronoi_theory | over_cell,
        diagnostic=tuple(over_cell),
    )


def _ml_r2() -> Scenario:
    return Scenario(
        id="ML-R2",
        title="Multinomial logistic MoE, regime 2 (an input-free expert) [P design]",
        truth=_ml_truth(2),
        covariates=_ML_COVARIATES,
        fits=(_ml_regime2_fit(SoftmaxGate(), {}),),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen, Akbarian, Nguyen & Ho (ICML 2024); setting theory.md §8.3",
        notes=(
            "Expert 2's slopes are 0: no polynomial rate for the parameters "
            "of its two-atom cell; the slope of err_slope[1] should be clearly "
            "shallower than the -1/4 of regime 1 (a diagnostic)."
        ),
    )


def _ml_mod() -> Scenario:
    gate = ModifiedSoftmaxGate(transform="tanh")
    return Scenario(
        id="ML-MOD",
        title="Modified softmax gate on tanh(x), regime-2 truth (D_ML) [P design]",
        truth=_ml_truth(2, gate),
        covariates=_ML_COVARIATES,
        fits=(_ml_regime2_fit(gate, {"voronoi": -0.5}),),
        n_grid=log_grid(100, 100_000, 20),
        n_reps=40,
        source="Nguyen, Akbarian, Nguyen & Ho (ICML 2024); setting theory.md §8.3",
    )


# Mendes & Jiang (theory.md §7.2, our design): s = 1, X ~ U[0, 1], Gaussian
# experts with the known sd 0.25.
_MJ_SIGMA2 = 0.0625


def _mj1() -> Scenario:
    # gate (6, -18), (-12, 18), (0, 0) (reference last); means 1 + 2x,
    # 3 - 4x, -x.
    params = MoEParams(
        _softmax_rows([(6.0, -18.0), (-12.0, 18.0), (0.0, 0.0)]),
        _gaussian([(1.0, 2.0), (3.0, -4.0), (0.0, -1.0)], [_MJ_SIGMA2] * 3),
    )
    expert = GaussianExpert(degree=1, variance=_MJ_SIGMA2)
    truth = MixtureOfExperts(SoftmaxGate(), expert, params)
    fit = FitSpec(
        "m=3,k=1",
        MixtureOfExperts(SoftmaxGate(), expert),
        3,
        (0, 1, 2),
        voronoi=None,
        theory={"kl": -1.0, "hellinger": -0.5, "tv": -0.5},
    )
    return Scenario(
        id="MJ-1",
        title="Mendes-Jiang estimation term: n E[KL] -> (m J_k + v_m)/2 = 5",
        truth=truth,
        covariates=UniformCovariates(0.0, 1.0),
        fits=(fit,),
        n_grid=log_grid(500, 100_000, 20),
        n_reps=100,
        source="Mendes & Jiang (arXiv 1110.2058); setting theory.md §7.2 [P]",
    )


_SINE_TRUTH = GaussianRegressionTruth(sine_mean, _MJ_SIGMA2)


def _mj_fit(m: int, k: int) -> FitSpec:
    expert = GaussianExpert(degree=k, variance=_MJ_SIGMA2)
    spec = MixtureOfExperts(SoftmaxGate(), expert)
    return FitSpec(f"m={m},k={k}", spec, m, (), init="random", n_init=3, voronoi=None)


def _mj2() -> Scenario:
    fits = tuple(_mj_fit(m, k) for k in (0, 1, 2) for m in (1, 2, 3, 4, 6, 8, 12, 16))
    return Scenario(
        id="MJ-2",
        title="Mendes-Jiang approximation term: population KL against m, k = 0, 1, 2",
        truth=_SINE_TRUTH,
        covariates=UniformCovariates(0.0, 1.0),
        fits=fits,
        n_grid=(0,),
        n_reps=20,
        source="Mendes & Jiang (arXiv 1110.2058); setting theory.md §7.2 [P]",
        density_losses=("kl",),
        tol=1e-10,
        max_iter=3000,
        x_nodes=400,
        kind="approximation",
        notes=(
            "h(x) = sin(2 pi x) + x/2 is analytic: expect log-log slopes of "
            "-2(k+1) in m until the gate's sharpness limits the fit; the "
            "replications are random restarts and the best is kept "
            "(moestat.simulation.approximation_rates)."
        ),
    )


def _mj3() -> Scenario:
    fits = tuple(_mj_fit(m, k) for k in (0, 1, 2, 3) for m in range(1, 17))
    return Scenario(
        id="MJ-3",
        title="Mendes-Jiang trade-off: E[KL] over the (m, k) grid as n grows",
        truth=_SINE_TRUTH,
        covariates=UniformCovariates(0.0, 1.0),
        fits=fits,
        n_grid=(500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000),
        n_reps=20,
        source="Mendes & Jiang (arXiv 1110.2058); setting theory.md §7.2 [P]",
        density_losses=("kl",),
        notes=(
            "Summarised by moestat.simulation.tradeoff_summary: the best "
            "(m, k) per n, and the slopes of min_m E[KL] and of the best m "
            "against n for each k (theory.md §7.1)."
        ),
    )


#: The registered scenarios under their ids (theory.md §8.3).
SCENARIOS: dict[str, Scenario] = {
    scenario.id: scenario
    for scenario in (
        _sg_exact(),
        _sg_over(),
        _ds1(),
        _ds2(),
        _ds1(literal=True),
        _ds2(literal=True),
        _ds3(),
        _ds4(),
        _ds_shared_benefit(),
        _ml_r1(),
        _ml_r2(),
        _ml_mod(),
        _mj1(),
        _mj2(),
        _mj3(),
    )
}


def get_scenario(scenario: str | Scenario) -> Scenario:
    """Return a scenario by id (case-insensitive) or the scenario itself.

    Parameters
    ----------
    scenario : str or Scenario
        An id of :data:`SCENARIOS` (``"SG-E"``, ``"sg-e"``) or a scenario.

    Returns
    -------
    Scenario
        The registered scenario, or ``scenario`` itself if it is one.

    Raises
    ------
    ValueError
        For an unknown id, listing the known ones.
    """
    if isinstance(scenario, Scenario):
        return scenario
    key = str(scenario).upper()
    if key not in SCENARIOS:
        raise ValueError(
            f"Unknown scenario {scenario!r}; choose one of {list(SCENARIOS)} "
            "(`moestat scenarios` describes them)."
        )
    return SCENARIOS[key]


def list_scenarios() -> list[tuple[str, str]]:
    """``(id, one-line description)`` of every registered scenario.

    Returns
    -------
    list of (str, str)
        The id and title of each scenario of :data:`SCENARIOS`, in
        registration order.
    """
    return [(sid, scenario.title) for sid, scenario in SCENARIOS.items()]
