"""The fused large-n EM: the same fit as the batched and numpy EMs, in one sweep."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import moestat.torch.fused as fused  # noqa: E402
from moestat.datasets import make_moe_regression  # noqa: E402
from moestat.experts import GaussianExpert  # noqa: E402
from moestat.fit import em as numpy_em  # noqa: E402
from moestat.fit import initial_params  # noqa: E402
from moestat.gates import (  # noqa: E402
    ModifiedSoftmaxGate,
    NormalizedSigmoidGate,
    SoftmaxGate,
)
from moestat.gates.shared import SharedExpertsGate  # noqa: E402
from moestat.kernels.gates import (  # noqa: E402
    block_fisher_information,
    softmax_fisher_weights,
)
from moestat.model import MixtureOfExperts  # noqa: E402
from moestat.torch.fit import (  # noqa: E402
    BatchedData,
    BatchedModel,
    _e_step,
    em,
    stack_data,
)
from moestat.torch.fused import (  # noqa: E402
    em_chunked,
    sufficient_statistics,
)

SIZES = (2000, 1700, 1500)  # padded to 2000 in one batch
M, D = 3, 2


def _problem(
    seed,
    expert=None,
    sizes=SIZES,
    dtype="float64",
    var_floor=0.0,
    gate=None,
    x_scale=1.0,
):
    """Simulated data sets (``x`` times ``x_scale``), k-means starts, batched."""
    expert = GaussianExpert() if expert is None else expert
    spec = MixtureOfExperts(SoftmaxGate() if gate is None else gate, expert)
    designs, ys, starts = [], [], []
    for b, n in enumerate(sizes):
        X, y, _ = make_moe_regression(n, M, D, gate_scale=1.0, random_state=seed + b)
        X = x_scale * X
        design = spec.design(X)
        rng = np.random.default_rng(seed + b)
        start = initial_params(spec, design, X, y, M, "kmeans", rng, var_floor)
        if expert.known_variance:
            start = start.__class__(
                start.gate,
                start.expert.__class__(start.expert.coef, np.full(M, expert.variance)),
            )
        designs.append(design)
        ys.append(y)
        starts.append(start)
    data = stack_data(designs, ys, var_floor=var_floor, dtype=dtype)
    model = BatchedModel(spec, M, designs[0].gate.shape[1], designs[0].expert.shape[1])

    def put(rows):
        return torch.as_tensor(np.stack(rows), dtype=data.y.dtype)

    theta_gate = put([spec.gate.pack(s.gate) for s in starts])
    theta_expert = put([spec.expert.pack(s.expert, var_floor) for s in starts])
    return spec, designs, ys, starts, model, data, theta_gate, theta_expert


@pytest.fixture(scope="module")
def problem():
    return _problem(11)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # small problems, one process per core (xdist): one intra-op thread each
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _relative(a, b):
    """Largest relative difference; NaNs (stopped data sets) must coincide."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    return np.nanmax(np.abs(a - b) / np.abs(b))


def _assert_monotone(fit, data, round_off=1e-10):
    """Each trace column is finite up to its count, and never falls (per sample)."""
    trace = fit.trace.double().numpy()
    for b, count in enumerate(fit.n_iter.tolist()):
        n = float(data.n_samples[b])
        column = trace[: count + 1, b] / n
        assert np.all(np.isfinite(column))
        assert np.all(np.isnan(trace[count + 1 :, b]))
        floor = -round_off * np.maximum(np.abs(column[1:]), 1.0)
        assert np.all(np.diff(column) >= floor)


def test_fused_em_reaches_the_batched_and_numpy_em_likelihood(problem):
    spec, designs, ys, starts, model, data, theta_gate, theta_expert = problem
    fit = em_chunked(model, data, theta_gate, theta_expert, tol=1e-10, max_iter=3000)
    reference = em(model, data, theta_gate, theta_expert, tol=1e-10, max_iter=3000)
    assert fit.converged.all() and fit.monotone.all()
    assert _relative(fit.log_likelihood, reference.log_likelihood) < 1e-8
    numpy_ll = [
        numpy_em(
            spec.with_params(s), d, y, tol=1e-10, max_iter=3000, accelerate=False
        ).log_likelihood
        for s, d, y in zip(starts, designs, ys, strict=True)
    ]
    assert _relative(fit.log_likelihood, numpy_ll) < 1e-8
    # the returned pieces belong together: the likelihood at the parameters
    ll = model.log_likelihood(fit.theta_gate, fit.theta_expert, data)
    assert _relative(fit.log_likelihood, ll) < 1e-12
    np.testing.assert_allclose(fit.theta_expert, reference.theta_expert, atol=1e-5)
    np.testing.assert_allclose(fit.expert_weight, reference.expert_weight, rtol=1e-5)
    assert fit.trace.shape == (int(fit.n_iter.max()) + 1, len(SIZES))
    _assert_monotone(fit, data)


def test_without_halving_the_iterates_are_those_of_the_batched_em(problem):
    *_, model, data, theta_gate, theta_expert = problem
    fit = em_chunked(model, data, theta_gate, theta_expert, tol=0, max_iter=6)
    reference = em(model, data, theta_gate, theta_expert, tol=0, max_iter=6)
    assert fit.n_iter.tolist() == [6, 6, 6] and not fit.converged.any()
    assert _relative(fit.trace, reference.trace) < 1e-8
    np.testing.assert_allclose(fit.theta_gate, reference.theta_gate, atol=1e-8)


def test_chunks_give_the_same_fit_as_one_chunk(problem):
    *_, model, data, theta_gate, theta_expert = problem
    whole = em_chunked(
        model, data, theta_gate, theta_expert, tol=1e-10, chunk_size=data.y.shape[1]
    )
    chunked = em_chunked(
        model, data, theta_gate, theta_expert, tol=1e-10, chunk_size=97
    )
    assert torch.equal(whole.n_iter, chunked.n_iter)
    assert _relative(chunked.trace, whole.trace) < 1e-12
    np.testing.assert_allclose(chunked.theta_gate, whole.theta_gate, atol=1e-9)
    np.testing.assert_allclose(chunked.theta_expert, whole.theta_expert, atol=1e-9)


@pytest.mark.parametrize("iterations", [0, 3])
def test_statistics_match_a_direct_computation(problem, iterations):
    *_, model, data, theta_gate, theta_expert = problem
    if iterations:  # at the parameters of a later iteration
        fit = em_chunked(
            model, data, theta_gate, theta_expert, tol=0, max_iter=iterations
        )
        theta_gate, theta_expert = fit.theta_gate, fit.theta_expert
    stats = sufficient_statistics(model, data, theta_gate, theta_expert, chunk_size=97)
    log_g = model.log_weights(theta_gate, data)
    resp, ll = _e_step(log_g + model.log_density(theta_expert, data), data.weight)
    Phi = data.expert
    coef, _ = model.spec.expert.batch_unpack(
        theta_expert, *model.shapes[::2], data.var_floor
    )
    resid = data.y.unsqueeze(-1) - torch.einsum("bnp,bmp->bnm", Phi, coef)
    weights = softmax_fisher_weights(resp, log_g)
    grad, information = block_fisher_information(data.gate, *weights, slice(1, M))
    expected = {
        "log_likelihood": ll,
        "expert_weight": resp.sum(dim=1),
        "expert_gram": torch.einsum("bnm,bnp,bnq->bmpq", resp, Phi, Phi),
        "expert_score": torch.einsum("bnm,bnm,bnp->bmp", resp, resid, Phi),
        "expert_ss": (resp * resid * resid).sum(dim=1),
        "gate_gradient": grad,
        "gate_information": information,
    }
    for name, value in expected.items():
        got = getattr(stats, name)
        assert got.shape == value.shape, name
        scale = value.abs().max().clamp(min=1.0)
        assert (got - value).abs().max() <= 1e-12 * scale, name


def test_one_design_tensor_for_gate_and_experts_gives_the_same_statistics(problem):
    *_, model, data, theta_gate, theta_expert = problem
    shared = BatchedData(data.gate, data.gate, data.y, data.weight, data.var_floor)
    a = sufficient_statistics(model, data, theta_gate, theta_expert, chunk_size=500)
    b = sufficient_statistics(model, shared, theta_gate, theta_expert, chunk_size=500)
    for name in ("expert_gram", "gate_information", "log_likelihood"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize(
    "expert",
    [
        GaussianExpert(shared_variance=True),
        GaussianExpert(variance=0.1),
        GaussianExpert(degree=2),
    ],
    ids=["shared_variance", "known_variance", "quadratic"],
)
def test_every_gaussian_variant_matches_the_batched_em(expert):
    *_, model, data, theta_gate, theta_expert = _problem(
        3, expert=expert, sizes=(800, 600)
    )
    fit = em_chunked(model, data, theta_gate, theta_expert, tol=1e-10)
    reference = em(model, data, theta_gate, theta_expert, tol=1e-10)
    assert fit.converged.all() and fit.monotone.all()
    assert _relative(fit.log_likelihood, reference.log_likelihood) < 1e-8
    assert fit.theta_expert.shape == theta_expert.shape


def test_a_binding_variance_floor_and_an_empty_expert_are_held():
    *_, model, data, theta_gate, theta_expert = _problem(5, sizes=(600,), var_floor=0.2)
    # expert 2 far from every response with a tiny variance: no responsibility
    theta_expert = theta_expert.clone()
    theta_expert[:, 2 * (D + 1)] = 1e3
    theta_expert[:, -1] = np.log(1e-6)
    fit = em_chunked(model, data, theta_gate, theta_expert, tol=1e-10)
    reference = em(model, data, theta_gate, theta_expert, tol=1e-10)
    assert fit.expert_weight[0, 2] == 0.0
    held = slice(2 * (D + 1), 3 * (D + 1))
    torch.testing.assert_close(fit.theta_expert[:, held], theta_expert[:, held])
    _, var = model.spec.expert.batch_unpack(
        fit.theta_expert, *model.shapes[::2], data.var_floor
    )
    assert (var >= 0.2 - 1e-12).all()
    assert _relative(fit.log_likelihood, reference.log_likelihood) < 1e-8


def _count_sweeps(monkeypatch):
    count = [0]
    call = fused._Sweeper.__call__

    def counted(self, *args):
        count[0] += 1
        return call(self, *args)

    monkeypatch.setattr(fused._Sweeper, "__call__", counted)
    return count


def _scale_gate_steps(monkeypatch, factor):
    """Make every proposed gate direction ``factor`` times the M-step's."""
    proposal = fused._proposal

    def scaled(*args):
        expert, direction = proposal(*args)
        return expert, factor * direction

    monkeypatch.setattr(fused, "_proposal", scaled)


def test_an_overshooting_gate_step_is_halved_and_the_trace_stays_monotone(
    problem, monkeypatch
):
    *_, model, data, theta_gate, theta_expert = _problem(7, sizes=(1000, 700))
    options = {"tol": 1e-8, "max_iter": 5000}
    reference = em_chunked(model, data, theta_gate, theta_expert, **options)
    _scale_gate_steps(monkeypatch, 5.0)
    sweeps = _count_sweeps(monkeypatch)
    fit = em_chunked(model, data, theta_gate, theta_expert, **options)
    assert sweeps[0] > int(fit.n_iter.max()) + 1  # some steps were retried
    assert fit.converged.all() and fit.monotone.all()
    _assert_monotone(fit, data)
    assert _relative(fit.log_likelihood, reference.log_likelihood) < 1e-6


def test_a_gate_step_that_never_helps_falls_back_to_the_old_gate(problem, monkeypatch):
    *_, model, data, theta_gate, theta_expert = problem
    _scale_gate_steps(monkeypatch, -1e6)
    sweeps = _count_sweeps(monkeypatch)
    fit = em_chunked(model, data, theta_gate, theta_expert, max_iter=3)
    # 3 iterations, each: a full step, 12 halvings, then the old gate
    assert fit.n_iter.tolist() == [3, 3, 3]
    assert sweeps[0] == 1 + 3 * (1 + 12 + 1)
    torch.testing.assert_close(fit.theta_gate, theta_gate)
    assert fit.monotone.all()
    _assert_monotone(fit, data)


def test_float32_data_reach_the_float64_fit(problem):
    *_, model, data, theta_gate, theta_expert = problem
    single = BatchedData(
        *(t.float() for t in (data.gate, data.expert, data.y, data.weight)),
        data.var_floor.float(),
    )
    fit = em_chunked(model, single, theta_gate.float(), theta_expert.float(), tol=1e-7)
    reference = em_chunked(model, data, theta_gate, theta_expert, tol=1e-10)
    assert fit.theta_gate.dtype == torch.float32 and fit.monotone.all()
    assert _relative(fit.log_likelihood, reference.log_likelihood) < 1e-5
    _assert_monotone(fit, single, round_off=float(torch.finfo(torch.float32).eps))


@pytest.mark.parametrize(
    ("gate", "name"),
    [
        (NormalizedSigmoidGate(top_k=2), r"NormalizedSigmoidGate\(top_k=2\)"),
        (SharedExpertsGate(routed=SoftmaxGate(), n_shared=1), "SharedExpertsGate"),
    ],
    ids=["top_k_sigmoid_gate", "shared_experts"],
)
def test_gates_off_the_chunked_path_are_refused_by_name(gate, name, problem):
    *_, data, theta_gate, theta_expert = problem
    model = BatchedModel(MixtureOfExperts(gate, GaussianExpert()), M, D + 1, D + 1)
    with pytest.raises(ValueError, match=f"chunked path.*got {name} and Gaussian"):
        em_chunked(model, data, theta_gate, theta_expert)


def test_em_softmax_gaussian_is_em_chunked_for_every_chunked_model():
    *_, model, data, theta_gate, theta_expert = _problem(
        4, sizes=(500,), gate=NormalizedSigmoidGate()
    )
    fit = fused.em_softmax_gaussian(model, data, theta_gate, theta_expert, max_iter=5)
    reference = em_chunked(model, data, theta_gate, theta_expert, max_iter=5)
    assert torch.equal(fit.trace, reference.trace)


# -- every model of the chunked path: the numpy chunked EM's iterates ----------
#: x scaled by 1/20: the gate's slopes at the maximum exceed the default box
#: |beta| <= 20 of the sigmoid gate, which then binds
BOX_SCALE = 0.05

CHUNKED_MODELS = {
    "softmax": (SoftmaxGate(), 1.0),
    "modified_softmax": (ModifiedSoftmaxGate(), 1.0),
    "sigmoid_unbounded": (NormalizedSigmoidGate(bound=None), 1.0),
    "sigmoid_default_box_binding": (NormalizedSigmoidGate(), BOX_SCALE),
}
VARIANCES = {
    "per_expert": GaussianExpert(),
    "shared": GaussianExpert(shared_variance=True),
    "known": GaussianExpert(variance=0.1),
}


@pytest.mark.parametrize("variance", list(VARIANCES))
@pytest.mark.parametrize("case", list(CHUNKED_MODELS))
def test_fused_em_takes_the_numpy_chunked_em_iterates(case, variance):
    gate, x_scale = CHUNKED_MODELS[case]
    spec, designs, ys, starts, model, data, theta_gate, theta_expert = _problem(
        21, expert=VARIANCES[variance], sizes=(900, 700), gate=gate, x_scale=x_scale
    )
    fit = em_chunked(
        model, data, theta_gate, theta_expert, tol=1e-9, max_iter=80, chunk_size=128
    )
    _assert_monotone(fit, data)
    for b, (start, design, y) in enumerate(zip(starts, designs, ys, strict=True)):
        reference = numpy_em(
            spec.with_params(start),
            design,
            y,
            tol=1e-9,
            max_iter=80,
            accelerate=False,
            stop_on_ridge=False,
            chunk_size=100,
        )
        count = int(fit.n_iter[b])
        assert count == reference.n_iter
        trace = fit.trace[: count + 1, b].numpy()
        assert np.max(np.abs(trace / reference.trace - 1.0)) < 1e-10
        theta = spec.gate.pack(reference.model.params.gate)
        np.testing.assert_allclose(fit.theta_gate[b], theta, rtol=1e-7, atol=1e-7)
        if x_scale != 1.0:  # the box binds at the maximum
            assert np.isclose(np.abs(theta).max(), gate.bound)


def test_other_experts_are_refused(problem):
    from moestat.experts import GLMExpert

    *_, data, theta_gate, theta_expert = problem
    model = BatchedModel(
        MixtureOfExperts(SoftmaxGate(), GLMExpert(family="poisson")), M, D + 1, D + 1
    )
    with pytest.raises(ValueError, match="GLMExpert.*moestat.torch.fit.em"):
        em_chunked(model, data, theta_gate, theta_expert)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"chunk_size": 2.5}, "chunk_size must be a positive int"),
        ({"accumulate_dtype": torch.int64}, "accumulate_dtype must be"),
    ],
)
def test_bad_arguments_are_refused(problem, change, match):
    *_, model, data, theta_gate, theta_expert = problem
    with pytest.raises(ValueError, match=match):
        em_chunked(model, data, theta_gate, theta_expert, **change)


def test_parameters_of_the_wrong_shape_are_refused(problem):
    *_, model, data, theta_gate, theta_expert = problem
    with pytest.raises(ValueError, match=r"theta_gate must have shape \(3, 6\)"):
        em_chunked(model, data, theta_gate[:, :-1], theta_expert)
    with pytest.raises(ValueError, match=r"theta_expert must have shape \(3, 12\)"):
        em_chunked(model, data, theta_gate, theta_expert[:2])


def test_a_failing_compilation_is_reported_not_hidden(problem, monkeypatch):
    *_, model, data, theta_gate, theta_expert = problem

    def broken(*args):
        raise RuntimeError("no compiler")

    monkeypatch.setitem(fused._COMPILED, "fn", broken)
    with pytest.raises(RuntimeError, match="compile=False.*same results"):
        em_chunked(model, data, theta_gate, theta_expert, compile=True)


@pytest.mark.slow
def test_compiled_sweeps_give_the_eager_fit(problem):
    # torch.compile works on this CPU (it builds C++ kernels with the system
    # compiler) but takes 15-25 s on a 2-core machine for the one chunk shape
    # used here (less once its on-disk cache is warm), hence the marker.
    *_, model, data, theta_gate, theta_expert = problem
    eager = sufficient_statistics(model, data, theta_gate, theta_expert)
    compiled = sufficient_statistics(
        model, data, theta_gate, theta_expert, compile=True
    )
    for name in ("log_likelihood", "expert_gram", "expert_score", "gate_information"):
        torch.testing.assert_close(
            getattr(compiled, name), getattr(eager, name), rtol=1e-12, atol=1e-9
        )
    fit = em_chunked(model, data, theta_gate, theta_expert, tol=1e-10, compile=True)
    reference = em_chunked(model, data, theta_gate, theta_expert, tol=1e-10)
    assert fit.converged.all() and fit.monotone.all()
    assert _relative(fit.log_likelihood, reference.log_likelihood) < 1e-10
