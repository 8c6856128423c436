"""The torch backend fits the numpy backend's models, batched, with the same result."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import array_api_compat
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moestat import (  # noqa: E402
    GaussianMoE,
)
from moestat.experts import (  # noqa: E402
    GaussianExpert,
    GaussianExpertParams,
    ReLUExpert,
    ReLUExpertParams,
)
from moestat.fit import em as numpy_em  # noqa: E402
from moestat.fit import initial_params  # noqa: E402
from moestat.fit import mle as numpy_mle  # noqa: E402
from moestat.gates import GateParams, NormalizedSigmoidGate, SoftmaxGate  # noqa: E402
from moestat.model import MixtureOfExperts, MoEParams  # noqa: E402
from moestat.torch._device import resolve_device, resolve_dtype  # noqa: E402
from moestat.torch.fit import fit_batched, stack_data  # noqa: E402
from tests.custom_pieces import (  # noqa: E402
    ConstantGate,
    LocationParams,
    ProportionParams,
    UnitGaussianExpert,
)
from tests.helpers import BATCH_CASES as CASES  # noqa: E402
from tests.helpers import fitted_start as _start  # noqa: E402
from tests.helpers import regression_data as _regression  # noqa: E402


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_em_reaches_the_numpy_em_likelihood_from_the_same_start(case, rng):
    estimator, make_data = CASES[case]
    X, y = make_data(rng)
    est = _start(estimator, X, y)
    model, design = est.model_, est.model_.design(X)
    y_codes = est._encode_y(np.asarray(y))
    reference = numpy_em(
        model,
        design,
        y_codes,
        tol=1e-10,
        max_iter=3000,
        var_floor=est.var_floor_,
        accelerate=False,
    )
    (result,) = fit_batched(
        model,
        [design],
        [y_codes],
        [model.params],
        tol=1e-10,
        max_iter=3000,
        var_floor=est.var_floor_,
    )
    assert result.monotone and result.converged == reference.converged
    if reference.boundary:
        # coefficients walking to infinity: numpy's EM stops on the ridge,
        # the batched one walks on; both report the boundary
        assert result.boundary
        assert result.log_likelihood >= reference.log_likelihood - 1e-6
    else:
        assert result.log_likelihood == pytest.approx(
            reference.log_likelihood, rel=1e-6
        )
    assert np.all(np.diff(result.trace) >= -1e-9 * np.abs(result.trace[1:]))


@pytest.mark.parametrize("case", sorted(set(CASES) - {"sigmoid_top2"}))
def test_torch_mle_reaches_the_numpy_mle_likelihood_from_the_same_start(case, rng):
    # (a top-K gate's likelihood is discontinuous: the two quasi-Newton
    # methods may stop at different jumps, so it is left out here)
    estimator, make_data = CASES[case]
    X, y = make_data(rng)
    est = _start(estimator, X, y)
    design = est.model_.design(X)
    y_codes = est._encode_y(np.asarray(y))
    # Two quasi-Newton methods may climb to different maxima from a rough
    # start; from the top of one basin (EM run to 1e-8) both must agree.
    model = numpy_em(
        est.model_, design, y_codes, tol=1e-8, max_iter=3000, var_floor=est.var_floor_
    ).model
    reference = numpy_mle(
        model, design, y_codes, tol=1e-12, max_iter=3000, var_floor=est.var_floor_
    )
    (result,) = fit_batched(
        model,
        [design],
        [y_codes],
        [model.params],
        solver="mle",
        tol=1e-12,
        max_iter=3000,
        var_floor=est.var_floor_,
    )
    assert result.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-6)


def test_a_batch_of_data_sets_fits_as_each_set_alone(rng):
    sizes = [150, 400, 275]
    data = [_regression(rng, n) for n in sizes]
    starts, designs, ys, floors = [], [], [], []
    for X, y in data:
        est = _start(GaussianMoE(2), X, y)
        starts.append(est.params_)
        designs.append(est.model_.design(X))
        ys.append(y)
        floors.append(est.var_floor_)
    model = est.model_
    together = fit_batched(model, designs, ys, starts, tol=1e-9, var_floor=floors)
    for b in range(len(sizes)):
        (alone,) = fit_batched(
            model, [designs[b]], [ys[b]], [starts[b]], tol=1e-9, var_floor=floors[b]
        )
        assert together[b].n_iter == alone.n_iter
        assert together[b].converged == alone.converged
        assert together[b].log_likelihood == pytest.approx(
            alone.log_likelihood, rel=1e-10
        )
        np.testing.assert_allclose(
            together[b].model.params.expert.coef,
            alone.model.params.expert.coef,
            rtol=1e-7,
            atol=1e-9,
        )


def test_each_data_set_keeps_its_own_convergence_flag(rng):
    X, y = _regression(rng)
    est = _start(GaussianMoE(2), X, y)
    design = est.model_.design(X)
    good = est.params_
    results = fit_batched(
        est.model_, [design, design], [y, y], [good, good], max_iter=2, tol=1e-12
    )
    assert [r.n_iter for r in results] == [2, 2]
    assert not any(r.converged for r in results)
    results = fit_batched(est.model_, [design], [y], [good], tol=1e-4, max_iter=2000)
    assert results[0].converged and results[0].n_iter < 2000


@pytest.mark.parametrize(
    "case", ["softmax", "normalized_sigmoid", "poisson", "multinomial"]
)
def test_estimators_give_the_same_fit_on_both_backends(case, rng):
    estimator, make_data = CASES[case]
    X, y = make_data(rng, 300)
    fits = {}
    for backend in ("numpy", "torch"):
        est = estimator.set_params(
            n_init=2, tol=1e-10, max_iter=2000, random_state=3, backend=backend
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[backend] = (
                est.fit(X, y).log_likelihood_,
                est.restart_log_likelihoods_.copy(),
                est.predict(X[:5]),
            )
    assert fits["torch"][0] == pytest.approx(fits["numpy"][0], rel=1e-6)
    np.testing.assert_allclose(fits["torch"][1], fits["numpy"][1], rtol=1e-6)


def test_float32_fits_close_to_float64(rng):
    X, y = _regression(rng, 2000)
    est = _start(GaussianMoE(2), X, y)
    design = est.model_.design(X)
    args = (est.model_, [design], [y], [est.params_])
    (wide,) = fit_batched(*args, tol=1e-8, var_floor=est.var_floor_)
    (narrow,) = fit_batched(*args, tol=1e-6, var_floor=est.var_floor_, dtype="float32")
    assert narrow.log_likelihood == pytest.approx(wide.log_likelihood, rel=1e-3)


def test_padding_rows_do_not_count(rng):
    X, y = _regression(rng, 100)
    est = _start(GaussianMoE(2), X, y)
    design = est.model_.design(X)
    data = stack_data([design, est.model_.design(X[:60])], [y, y[:60]])
    assert data.n_samples.tolist() == [100.0, 60.0]
    assert data.weight[1, 60:].abs().sum() == 0


def test_unknown_devices_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("abacus")
    with pytest.raises(ValueError, match="dtype must be float64 or float32"):
        resolve_dtype("int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="no CUDA device"):
            GaussianMoE(backend="torch", device="cuda").fit(
                *_regression(np.random.default_rng(0))
            )


def test_unknown_backend_is_refused(rng):
    with pytest.raises(ValueError, match="backend"):
        GaussianMoE(backend="jax").fit(*_regression(rng))


def test_a_family_without_batched_kernels_is_refused_naming_what_would_run(rng):
    """A user-written family runs on torch once it has batched kernels."""
    X, y = _regression(rng)
    model = MixtureOfExperts(SoftmaxGate(), UnitGaussianExpert())
    design = model.design(X)
    start = MoEParams(
        GateParams(np.zeros((2, 2))), LocationParams(np.array([-1.0, 1.0]))
    )
    with pytest.raises(
        ValueError, match="UnitGaussianExpert experts have no batched"
    ) as error:
        fit_batched(model, [design], [y], [start])
    assert "BatchedExpertFamily" in str(error.value)
    assert "ReLUExpert" in str(error.value) and "StackedExperts" in str(error.value)


def test_relu_experts_fit_on_the_torch_backend(rng):
    X, y = _regression(rng)
    model = MixtureOfExperts(SoftmaxGate(), ReLUExpert())
    design = model.design(X)
    start = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.0, 2.0]])),
        ReLUExpertParams(np.array([[0.5, 1.0, 1.0], [-0.5, -1.0, 1.0]]), np.ones(2)),
    )
    floor = ReLUExpert().variance_floor(y, 1e-6)
    (result,) = fit_batched(model, [design], [y], [start], var_floor=floor)
    reference = numpy_em(
        model.with_params(start), design, y, var_floor=floor, accelerate=False
    )
    assert result.converged and result.monotone
    assert result.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-10)


def test_one_start_per_data_set_is_required(rng):
    X, y = _regression(rng)
    model = MixtureOfExperts(SoftmaxGate(), GaussianExpert())
    design = model.design(X)
    with pytest.raises(ValueError, match="one start per data set"):
        fit_batched(model, [design, design], [y, y], [None])


def test_importing_moestat_does_not_import_torch():
    code = "import moestat, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_moestat_works_without_torch_and_says_what_is_missing():
    code = """
import sys
import importlib.abc
class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
sys.meta_path.insert(0, NoTorch())
import array_api_compat
import numpy as np
from moestat import GaussianMoE
rng = np.random.default_rng(0)
X = rng.uniform(-1, 1, (200, 1)); y = X[:, 0] + rng.normal(size=200)
GaussianMoE(n_init=1).fit(X, y)
try:
    GaussianMoE(n_init=1, backend='torch').fit(X, y)
except ImportError as error:
    assert "needs PyTorch" in str(error), error
else:
    raise AssertionError("backend='torch' fitted without torch")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
def test_cuda_fit_matches_the_cpu_fit(rng):
    X, y = _regression(rng, 5000)
    est = _start(GaussianMoE(3), X, y)
    design = est.model_.design(X)
    args = (est.model_, [design] * 4, [y] * 4, [est.params_] * 4)
    cpu = fit_batched(*args, tol=1e-10, var_floor=est.var_floor_)
    gpu = fit_batched(*args, tol=1e-10, var_floor=est.var_floor_, device="cuda")
    for a, b in zip(cpu, gpu, strict=True):
        assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-8)


def test_the_fused_pass_reaches_the_same_fit(rng):
    X, y = _regression(rng, 3000)
    est = _start(GaussianMoE(2), X, y)
    args = (est.model_, [est.model_.design(X)], [y], [est.params_])
    (plain,) = fit_batched(*args, tol=1e-10, var_floor=est.var_floor_)
    (fused,) = fit_batched(*args, tol=1e-10, var_floor=est.var_floor_, fused=True)
    assert fused.log_likelihood == pytest.approx(plain.log_likelihood, rel=1e-8)


def test_one_expert_fits_on_the_torch_backend(rng):
    X, y = _regression(rng)
    torch_fit = GaussianMoE(1, n_init=1, backend="torch").fit(X, y)
    numpy_fit = GaussianMoE(1, n_init=1).fit(X, y)
    assert torch_fit.log_likelihood_ == pytest.approx(numpy_fit.log_likelihood_)


class BatchedUnitGaussianExpert(UnitGaussianExpert):
    """The user-written unit-variance family with its kernel on batches."""

    runs_batched = True

    def batch_log_density(self, theta, Phi, y, var_floor, n_experts):
        resid = y[..., None] - theta[..., None, :]
        return -0.5 * (math.log(2 * math.pi) + resid * resid)

    def batch_m_step(self, theta, Phi, y, resp, var_floor, n_experts):
        xp = array_api_compat.array_namespace(theta, y, resp)
        weight = xp.sum(resp, axis=-2)
        loc = xp.sum(resp * y[..., None], axis=-2) / xp.where(
            weight > 1e-10, weight, xp.ones_like(weight)
        )
        return xp.where(weight > 1e-10, loc, theta)


def test_a_user_written_family_with_batched_kernels_runs_on_the_torch_engine(rng):
    """No torch code in the family, no change to moestat: the two hooks suffice."""
    from moestat.utils import check_expert_family

    expert = BatchedUnitGaussianExpert()
    check_expert_family(expert)
    X, y = _regression(rng)
    model = MixtureOfExperts(SoftmaxGate(), expert)
    design = model.design(X)
    start = MoEParams(
        GateParams(np.zeros((2, 2))), LocationParams(np.array([-1.0, 1.0]))
    )
    (result,) = fit_batched(model, [design], [y], [start], tol=1e-10)
    reference = numpy_em(
        model.with_params(start), design, y, tol=1e-10, accelerate=False
    )
    assert result.converged and reference.converged
    assert result.n_iter == reference.n_iter
    assert result.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-10)


class BatchedConstantGate(ConstantGate):
    """The user-written constant gate with its kernel on batches."""

    runs_batched = True

    def batch_log_weights(self, theta, Z, n_experts):
        xp = array_api_compat.array_namespace(theta, Z)
        logits = xp.concat([xp.zeros_like(theta[..., :1]), theta], axis=-1)
        top = xp.max(logits, axis=-1, keepdims=True)
        log_pi = logits - top - xp.log(xp.sum(xp.exp(logits - top), axis=-1))[..., None]
        return xp.broadcast_to(log_pi[..., None, :], (*Z.shape[:-1], n_experts))

    def batch_m_step(
        self, theta, Z, weight, resp, log_weights, log_f, n_experts, background=None
    ):
        xp = array_api_compat.array_namespace(theta, resp)
        mass = xp.clip(xp.sum(resp, axis=-2), min=1e-300)
        new = xp.log(mass[..., 1:]) - xp.log(mass[..., :1])
        return new, self.batch_log_weights(new, Z, n_experts)

    def batch_project(self, theta):
        return theta


def test_a_user_written_gate_with_batched_kernels_runs_on_the_torch_engine(rng):
    """No torch code for the gate, no change to moestat: the hooks suffice."""
    from moestat.utils import check_gate

    gate = BatchedConstantGate()
    check_gate(gate)
    X, y = _regression(rng)
    model = MixtureOfExperts(gate, GaussianExpert())
    design = model.design(X)
    start = MoEParams(
        ProportionParams(np.zeros(2)),
        GaussianExpertParams(np.array([[0.5, 1.0], [-0.5, -1.0]]), np.ones(2)),
    )
    (result,) = fit_batched(model, [design], [y], [start], tol=1e-10)
    reference = numpy_em(
        model.with_params(start), design, y, tol=1e-10, accelerate=False
    )
    assert result.converged and reference.converged
    assert result.n_iter == reference.n_iter
    assert result.log_likelihood == pytest.approx(reference.log_likelihood, rel=1e-10)


def test_a_gate_without_batched_kernels_is_refused_naming_what_it_lacks(rng):
    X, y = _regression(rng)
    model = MixtureOfExperts(ConstantGate(), GaussianExpert())
    design = model.design(X)
    start = MoEParams(
        ProportionParams(np.zeros(2)),
        GaussianExpertParams(np.array([[0.5, 1.0], [-0.5, -1.0]]), np.ones(2)),
    )
    with pytest.raises(
        ValueError, match="ConstantGate gate has no batched kernels"
    ) as error:
        fit_batched(model, [design], [y], [start])
    assert "batch_log_weights" in str(error.value)
    assert "BatchedGate" in str(error.value)


def test_a_gate_with_a_ridge_is_refused_saying_it_runs_one_data_set_at_a_time(rng):
    X, y = _regression(rng)
    model = MixtureOfExperts(SoftmaxGate(alpha=1.0), GaussianExpert())
    design = model.design(X)
    start = MoEParams(
        GateParams(np.zeros((2, 2))),
        GaussianExpertParams(np.array([[0.5, 1.0], [-0.5, -1.0]]), np.ones(2)),
    )
    with pytest.raises(
        ValueError, match="SoftmaxGate gate has no batched kernels.*runs_batched"
    ):
        fit_batched(model, [design], [y], [start])


def test_a_top_k_gate_fits_in_float32_with_the_float64_likelihood(rng):
    """The ECME step's float64 objective does not leak into float32 parameters."""
    X, y = _regression(rng)
    model = MixtureOfExperts(NormalizedSigmoidGate(top_k=2), GaussianExpert())
    design = model.design(X)
    start = initial_params(model, design, X, y, 3, "kmeans", np.random.default_rng(1))
    fits = {
        dtype: fit_batched(model, [design], [y], [start], dtype=dtype, max_iter=50)[0]
        for dtype in ("float32", "float64")
    }
    assert fits["float32"].log_likelihood == pytest.approx(
        fits["float64"].log_likelihood, rel=1e-4
    )
