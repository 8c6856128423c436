"""numpy and torch run the same EM: from one start, the same likelihoods to 1e-10.

Every gate and expert family, top-K and shared experts included, takes the
same plain EM iterations on both engines (float64, CPU): the two traces of
log-likelihoods agree to 1e-10 relative at every iteration. Measured, they
agree to 1e-16 to 3e-15, and to 6e-12 with ReLU experts (unidentified along
a unit's scale, where round-off moves the Gauss-Newton steps): both engines
solve the same systems with the same kernels (every expert family runs its
own array-API code on torch tensors).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moestat import ReLUExpert, StackedExperts  # noqa: E402
from moestat.experts import (  # noqa: E402
    GaussianExpert,
    GaussianExpertParams,
    ReLUExpertParams,
    StackedExpertParams,
)
from moestat.fit import em as numpy_em  # noqa: E402
from moestat.gates import (  # noqa: E402
    GateParams,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SoftmaxGate,
)
from moestat.gates.shared import SharedGateParams  # noqa: E402
from moestat.model import MixtureOfExperts, MoEParams  # noqa: E402
from moestat.protocols import BatchedExpertFamily  # noqa: E402
from moestat.torch.fit import fit_batched  # noqa: E402
from tests.test_torch_backend import CASES, _start  # noqa: E402

PARITY_RTOL = 1e-10
ITERATIONS = 20


def _traces(model, design, y, var_floor, iterations=ITERATIONS):
    """The likelihood traces of ``iterations`` plain EM steps on both engines."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = numpy_em(
            model,
            design,
            y,
            tol=0.0,
            max_iter=iterations,
            var_floor=var_floor,
            accelerate=False,
            stop_on_ridge=False,
        )
        (result,) = fit_batched(
            model,
            [design],
            [y],
            [model.params],
            tol=0.0,
            max_iter=iterations,
            var_floor=var_floor,
        )
    return np.asarray(reference.trace), np.asarray(result.trace)


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_engines_take_the_same_em_steps_for_every_gate_and_family(case):
    estimator, make_data = CASES[case]
    X, y = make_data(np.random.default_rng(0))
    est = _start(estimator, X, y)
    y_codes = est._encode_y(np.asarray(y))
    numpy_trace, torch_trace = _traces(
        est.model_, est.model_.design(X), y_codes, est.var_floor_
    )
    assert len(numpy_trace) == len(torch_trace) > 1
    np.testing.assert_allclose(torch_trace, numpy_trace, rtol=PARITY_RTOL, atol=0.0)


# -- ReLU experts and stacks of shared and routed experts -----------------------------
def _relu_params(coef, var):
    return ReLUExpertParams(np.asarray(coef, float), np.asarray(var, float))


def _relu_model():
    """Softmax-gated ReLU experts (DeepSeekMoE's routed experts, with bias)."""
    params = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.5, 3.0]])),
        _relu_params([(0.2, 2.0, 1.5), (-0.3, -1.5, 2.0)], [0.1, 0.2]),
    )
    return MixtureOfExperts(SoftmaxGate(), ReLUExpert(bias=True), params)


def _stacked_model(routed, routed_params, gate):
    """One shared ReLU expert beside two routed experts (DS-1 and DS-4's layout)."""
    shared_params = _relu_params([(0.0, 2.0, -1.5)], [0.25])
    params = MoEParams(
        SharedGateParams(
            GateParams(np.array([[0.0, 0.0], [-0.5, 3.0]])), np.array([1.0]), 0.5
        ),
        StackedExpertParams(shared_params, routed_params),
    )
    experts = StackedExperts(ReLUExpert(bias=True), routed, 1)
    return MixtureOfExperts(SharedExpertsGate(gate, 1), experts, params)


MODELS = {
    "relu": _relu_model,
    "stacked_relu": lambda: _stacked_model(
        ReLUExpert(bias=False),
        _relu_params([(-3.0, 2.0), (3.0, 2.0)], [0.2, 0.2]),
        SoftmaxGate(),
    ),
    "stacked_relu_linear_sigmoid": lambda: _stacked_model(
        GaussianExpert(degree=1),
        GaussianExpertParams(np.array([[1.0, -2.0], [-1.0, 2.0]]), np.full(2, 0.2)),
        NormalizedSigmoidGate(),
    ),
}


def _perturbed_fit(model, rng, n=300):
    """A sample of ``model`` and a start near, not at, its parameters."""
    X = rng.uniform(-1.5, 1.5, (n, 1))
    y = model.sample(X, rng)[0]
    design = model.design(X)
    var_floor = model.expert.variance_floor(y, 1e-6)
    theta = model.expert.pack(model.params.expert, var_floor)
    theta = theta + 0.05 * rng.standard_normal(theta.shape)
    m, p = model.params.expert.n_experts, design.expert.shape[1]
    expert = model.expert.unpack(theta, m, p, var_floor)
    start = model.with_params(MoEParams(model.params.gate, expert))
    return start, design, y, var_floor


@pytest.mark.parametrize("name", sorted(MODELS))
def test_relu_and_stacked_experts_take_the_same_em_steps_on_both_engines(name):
    start, design, y, var_floor = _perturbed_fit(
        MODELS[name](), np.random.default_rng(1)
    )
    numpy_trace, torch_trace = _traces(start, design, y, var_floor)
    assert len(numpy_trace) == len(torch_trace) == ITERATIONS + 1
    assert np.all(np.diff(numpy_trace) > -1e-9 * np.abs(numpy_trace[1:]))
    np.testing.assert_allclose(torch_trace, numpy_trace, rtol=PARITY_RTOL, atol=0.0)


def test_relu_experts_declare_batched_kernels_and_a_stack_needs_none_of_its_own():
    assert isinstance(ReLUExpert(), BatchedExpertFamily)
    stack = StackedExperts(ReLUExpert(bias=True), GaussianExpert(), 1)
    assert not isinstance(stack, BatchedExpertFamily)  # its parts run on torch


@pytest.mark.parametrize("bias", [True, False])
def test_the_batched_relu_kernels_on_numpy_are_the_familys_own_on_each_data_set(bias):
    """A batch of B data sets gives, row by row, what the family gives on one."""
    rng = np.random.default_rng(2)
    expert, m, batch, n = ReLUExpert(bias=bias), 3, 4, 200
    Phi = np.stack([expert.design(rng.normal(size=(n, 2))) for _ in range(batch)])
    resp = rng.dirichlet(np.ones(m), size=(batch, n))
    floors = np.array([0.0, 1e-3, 1e-2, 1e-6])
    rows, width = expert.coef_shape(m, Phi.shape[-1])
    coef = rng.normal(size=(batch, rows, width))
    coef[..., -1] = rng.choice([-2.0, 2.0], size=(batch, rows))  # outer weights
    var = np.full((batch, m), 0.1)
    theta = np.concatenate([coef.reshape(batch, -1), np.log(var)], axis=1)
    # responses from the experts' own means: every unit sees signal
    y = np.stack(
        [
            expert.mean(ReLUExpertParams(coef[b], var[b]), Phi[b]).mean(axis=1)
            for b in range(batch)
        ]
    )
    y += 0.3 * rng.standard_normal(y.shape)
    log_f = expert.batch_log_density(theta, Phi, y, floors, m)
    stepped = expert.batch_m_step(theta, Phi, y, resp, floors, m)
    for b in range(batch):
        params = expert.unpack(theta[b], m, Phi.shape[-1], floors[b])
        np.testing.assert_allclose(
            log_f[b], expert.log_density(params, Phi[b], y[b]), rtol=1e-13
        )
        own = expert.m_step(Phi[b], y[b], resp[b], floors[b], previous=params)
        np.testing.assert_allclose(
            stepped[b], expert.pack(own, floors[b]), rtol=1e-12, atol=1e-12
        )
    # on torch: a step as good. A ReLU unit's scale (eta_1, eta_2) -> (c eta_1,
    # eta_2 / c) leaves its mean unchanged, so the Gauss-Newton system is
    # singular along it and round-off (amplified by the 1e-9 ridge) moves the
    # coefficients along it by about 1e-7; the objective the step raises,
    # sum r log f, is flat there to first order: after five steps from a
    # start (not yet at its maximum) it agrees to 1e-8 (measured 6e-10).
    tensors = [torch.from_numpy(a) for a in (theta, Phi, y, resp, floors)]
    on_torch = expert.batch_m_step(*tensors, m)
    torch_log_f = expert.batch_log_density(on_torch, *tensors[1:3], tensors[4], m)
    numpy_log_f = expert.batch_log_density(stepped, Phi, y, floors, m)
    np.testing.assert_allclose(
        np.sum(resp * torch_log_f.numpy(), axis=(1, 2)),
        np.sum(resp * numpy_log_f, axis=(1, 2)),
        rtol=1e-8,
    )


def test_an_empty_relu_expert_keeps_its_parameters_on_both_engines():
    rng = np.random.default_rng(3)
    expert, m, n = ReLUExpert(), 2, 40
    Phi = expert.design(rng.normal(size=(n, 1)))
    y = rng.normal(size=n)
    resp = np.column_stack([np.ones(n), np.zeros(n)])
    theta = rng.standard_normal(expert.n_free_parameters(m, 2))
    for xp_theta, args in [
        (theta[None], (Phi[None], y[None], resp[None], np.zeros(1))),
        (
            torch.from_numpy(theta[None]),
            tuple(torch.from_numpy(a) for a in (Phi[None], y[None], resp[None])),
        ),
    ]:
        if isinstance(xp_theta, torch.Tensor):
            args = (*args, torch.zeros(1, dtype=torch.float64))
        new = np.asarray(expert.batch_m_step(xp_theta, *args, m))[0]
        kept = [3, 4, 5, 7]  # the second expert's coefficients and variance
        np.testing.assert_array_equal(new[kept], theta[kept])
        assert not np.allclose(new[:3], theta[:3])
