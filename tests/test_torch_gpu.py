"""The torch backend and the routing layer on a CUDA device (skipped without one)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moestat import GaussianMoE  # noqa: E402
from moestat.datasets import make_moe_regression  # noqa: E402
from moestat.routing import (  # noqa: E402
    ExpertChoiceRouter,
    ExpertMLP,
    MoELayer,
    NormalizedSigmoidRouter,
    PrototypeRouter,
    TopKSoftmaxRouter,
    TsallisHybridRouter,
)
from moestat.routing.layer import combine_einsum, combine_sorted  # noqa: E402
from moestat.simulation import load_results, simulate  # noqa: E402
from moestat.torch.fit import fit_batched  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def problem():
    X, y, _ = make_moe_regression(n_samples=20_000, n_experts=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = GaussianMoE(3, n_init=1, max_iter=3, polish=False, random_state=0)
        est.fit(X, y)
    return est, X, y


@pytest.mark.parametrize("fused", [False, True])
def test_float32_on_cuda_reaches_the_float64_cpu_fit(problem, fused):
    est, X, y = problem
    args = (est.model_, [est.model_.design(X)] * 2, [y, y], [est.params_] * 2)
    (cpu, _) = fit_batched(*args, tol=1e-8, var_floor=est.var_floor_)
    for result in fit_batched(
        *args,
        tol=1e-6,
        var_floor=est.var_floor_,
        device="cuda",
        dtype="float32",
        fused=fused,
    ):
        assert result.log_likelihood == pytest.approx(cpu.log_likelihood, rel=1e-4)


def test_estimator_on_cuda_gives_the_numpy_fit(problem):
    _, X, y = problem
    fits = [
        GaussianMoE(3, n_init=2, tol=1e-10, random_state=0, **kw).fit(X, y)
        for kw in ({}, {"backend": "torch", "device": "cuda"})
    ]
    assert fits[1].log_likelihood_ == pytest.approx(fits[0].log_likelihood_, rel=1e-6)


def test_a_torch_sweep_on_cuda_gives_the_numpy_cells(tmp_path):
    common = dict(n_grid=[200, 2000], n_reps=3, progress=False)
    simulate("SG-E", tmp_path / "numpy", **common)
    simulate("SG-E", tmp_path / "cuda", engine="torch", device="cuda", **common)
    a = load_results(tmp_path / "numpy").set_index("key").sort_index()
    b = load_results(tmp_path / "cuda").set_index("key").sort_index()
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(b["log_likelihood"], a["log_likelihood"], rtol=1e-9)


ROUTERS = {
    "top-2": lambda d, m: TopKSoftmaxRouter(d, m, k=2, random_state=0),
    "prototype": lambda d, m: PrototypeRouter(d, m, n_prototypes=2, random_state=0),
    "expert choice": lambda d, m: ExpertChoiceRouter(d, m, random_state=0),
    "sigmoid": lambda d, m: NormalizedSigmoidRouter(d, m, top_k=2, random_state=0),
    "tsallis": lambda d, m: TsallisHybridRouter(d, m, random_state=0),
}


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_routers_decide_alike_on_cuda_and_cpu(name):
    router = ROUTERS[name](16, 8).eval()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 512, 8, generator=generator)
    on_cpu = router.route(logits)
    on_cuda = router.to("cuda").route(logits.to("cuda"))
    assert torch.equal(on_cuda.dispatch.cpu(), on_cpu.dispatch)
    torch.testing.assert_close(on_cuda.combine.cpu(), on_cpu.combine)


@pytest.mark.parametrize("method", ["padded", "grouped_mm"])
def test_sorted_dispatch_matches_the_einsum_in_bf16(method):
    major, _ = torch.cuda.get_device_capability()
    if method == "grouped_mm" and (major < 9 or not hasattr(torch, "_grouped_mm")):
        pytest.skip("torch._grouped_mm needs a device of compute capability 9.0")
    d, m, n = 64, 16, 2048
    router = TopKSoftmaxRouter(d, m, k=2, random_state=0).to("cuda")
    experts = ExpertMLP(m, d, 128, random_state=0).to("cuda", torch.bfloat16)
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, n, d, device="cuda", generator=generator)
    x = x.to(torch.bfloat16).requires_grad_(True)
    y, routing = MoELayer(router, experts, impl="sorted")(x)
    reference = combine_einsum(experts, x, routing)
    sorted_out = combine_sorted(experts, x, routing, method=method)
    torch.testing.assert_close(
        sorted_out.float(), reference.float(), atol=0.05, rtol=0.05
    )
    y.float().square().sum().backward()
    assert torch.isfinite(x.grad.float()).all()
    assert torch.isfinite(router.gate.weight.grad).all()
