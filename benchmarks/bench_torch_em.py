"""Large-n torch EM: a plain EM, moestat.torch.fit.em and the fused EM, per iteration.

Problem (the default): n = 10,000,000 samples, d = 4 covariates, m = 8
experts, softmax gate, linear Gaussian experts, float32, one data set,
simulated on ``--device`` from a fixed truth; every EM starts from the truth
perturbed, so that no gate step needs halving and all three take the same
iterations.

- ``plain``: a straightforward torch EM iteration written here: dense
  (n, p, m) products for the experts' weighted least squares and for the
  gate's gradient and Hessian, one Newton step of the gate;
- ``em``: :func:`moestat.torch.fit.em`;
- ``fused``: :func:`moestat.torch.fused.em_chunked`, eager and
  (``--compile``, the default on CUDA) through ``torch.compile``.

Each is timed in milliseconds per iteration, best of ``--repeats``, after a
warm-up run (``torch.cuda.synchronize`` around every timed call on CUDA):
the plain loop over ``--iters`` iterations, the library calls as the
difference between ``--iters`` iterations and one, over ``--iters - 1``
(which removes their initial E-step). The memory-traffic bound reads the
design ``[1, x]`` and y once and writes and reads the (n, m)
responsibilities once: ``bytes = n (d + 2) s + 2 n m s`` for ``s`` bytes per
number (0.88 GB for the default problem), over
``--bandwidth`` (default 3.0e12 B/s, an H100's measured bandwidth; pass the
machine's own to judge a CPU). The script prints each time, the bound and
each time's ratio to it, and checks that the three log-likelihoods after
``--iters`` iterations agree (float32: loosely).

Run:  python benchmarks/bench_torch_em.py [--device cuda] [--n 10000000]
      [--iters 20] [--repeats 3] [--small] [--compile | --no-compile]
      [--bandwidth 3.0e12] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from moestat.experts import GaussianExpert
from moestat.gates import SoftmaxGate
from moestat.model import MixtureOfExperts
from moestat.torch.fit import BatchedData, BatchedModel, em
from moestat.torch.fused import default_chunk_size, em_chunked

FULL = {"n": 10_000_000, "d": 4, "m": 8, "iters": 20, "repeats": 3}
SMALL = {"n": 20_000, "d": 4, "m": 8, "iters": 5, "repeats": 2}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# the three log-likelihoods must agree to this (relative) after the same
# iterations; float32 sums over 10^7 samples allow about this much
LL_RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}


# -- problem -------------------------------------------------------------------
def simulate(n, d, m, device, dtype, seed=0):
    """Covariates, responses, the truth and a perturbed start, on ``device``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    p = d + 1
    gate_coef = torch.randn(m, p, generator=gen, dtype=torch.float64)
    gate_coef[0] = 0.0  # the reference expert
    coef = 2.0 * torch.randn(m, p, generator=gen, dtype=torch.float64)
    var = torch.full((m,), 0.1, dtype=torch.float64)
    start_gate = gate_coef + 0.1 * torch.randn(m, p, generator=gen, dtype=torch.float64)
    start_gate[0] = 0.0
    start_coef = coef + 0.1 * torch.randn(m, p, generator=gen, dtype=torch.float64)
    start_var = 1.2 * var

    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    X1 = torch.empty(n, p, device=device, dtype=dtype)
    X1[:, 0] = 1.0
    X1[:, 1:].uniform_(-1.0, 1.0, generator=dev_gen)
    scores = X1 @ gate_coef.to(device, dtype).T
    gumbel = -torch.log(-torch.log(torch.rand(n, m, device=device, generator=dev_gen)))
    label = torch.argmax(scores + gumbel.to(dtype), dim=1)
    mean = (X1 * coef.to(device, dtype)[label]).sum(dim=1)
    noise = torch.randn(n, device=device, dtype=dtype, generator=dev_gen)
    y = mean + var.sqrt().to(device, dtype)[label] * noise
    del scores, gumbel, label, mean, noise
    start = (start_gate.to(device, dtype), start_coef.to(device, dtype))
    return X1, y, start + (start_var.to(device, dtype),)


# -- (a) the plain EM ------------------------------------------------------------
def plain_e_step(X1, y, gate_coef, coef, var):
    """Responsibilities (n, m), log g (n, m) and the log-likelihood."""
    log_g = torch.log_softmax(X1 @ gate_coef.T, dim=1)
    resid = y[:, None] - X1 @ coef.T
    log_f = -0.5 * (resid * resid / var + torch.log(2.0 * math.pi * var))
    joint = log_g + log_f
    per_sample = torch.logsumexp(joint, dim=1)
    return torch.exp(joint - per_sample[:, None]), log_g, per_sample.sum()


def plain_iteration(X1, y, gate_coef, coef, var):
    """One EM iteration from the parameters, in place; returns nothing."""
    n, p = X1.shape
    m = coef.shape[0]
    resp, log_g, _ = plain_e_step(X1, y, gate_coef, coef, var)
    # experts: weighted least squares from dense (n, p, m) products
    rX = X1[:, :, None] * resp[:, None, :]
    gram = torch.einsum("npm,nq->mpq", rX, X1)
    rhs = torch.einsum("npm,n->mp", rX, y)
    coef.copy_(torch.linalg.solve(gram, rhs))
    resid = y[:, None] - X1 @ coef.T
    var.copy_((resp * resid * resid).sum(dim=0) / resp.sum(dim=0))
    # gate: gradient and Hessian on the free rows 1..m-1, one Newton step
    g = log_g.exp()
    k = m - 1
    grad = (X1[:, :, None] * (resp - g)[:, None, 1:]).sum(dim=0)  # (p, k)
    gX = X1[:, :, None] * g[:, None, 1:]  # (n, p, k)
    information = -torch.einsum("npi,nqj->ipjq", gX, gX)
    blocks = torch.einsum("npi,nq->ipq", gX, X1)
    index = torch.arange(k, device=X1.device)
    information[index, :, index, :] += blocks
    information = information.reshape(k * p, k * p)
    eye = torch.eye(k * p, device=X1.device, dtype=X1.dtype)
    step = torch.linalg.solve(information + 1e-9 * eye, grad.T.reshape(k * p))
    gate_coef[1:] += step.reshape(k, p)


def run_plain(X1, y, start, iters):
    gate_coef, coef, var = (t.clone() for t in start)
    for _ in range(iters):
        plain_iteration(X1, y, gate_coef, coef, var)
    return float(plain_e_step(X1, y, gate_coef, coef, var)[2])


# -- (b), (c) the library's ----------------------------------------------------
def batched(X1, y, start, spec):
    """The problem as one batched data set and packed parameters."""
    m, p = start[1].shape
    model = BatchedModel(spec, m, p, p)
    data = BatchedData(  # one design tensor for the gate and the experts
        gate=X1[None],
        expert=X1[None],
        y=y[None],
        weight=torch.ones_like(y)[None],
        var_floor=torch.zeros(1, device=y.device, dtype=y.dtype),
    )
    gate_coef, coef, var = start
    theta_gate = gate_coef[1:].reshape(1, -1)
    theta_expert = torch.cat([coef.reshape(1, -1), var.log()[None]], dim=1)
    return model, data, theta_gate, theta_expert


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats, device):
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def per_iteration(call, iters, repeats, device):
    """ms per iteration of ``call(k)`` (k iterations) without its fixed cost."""
    call(2)  # warm-up (and compilation)
    t_many = best_time(lambda: call(iters), repeats, device)
    if iters < 3:
        return 1e3 * t_many / iters
    t_one = best_time(lambda: call(1), repeats, device)
    return 1e3 * max(t_many - t_one, 0.0) / (iters - 1)


# -- main ------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="default 10,000,000")
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--m", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None, help="default 20")
    parser.add_argument("--repeats", type=int, default=None, help="default 3")
    parser.add_argument("--device", default=None, help="default cuda if available")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--bandwidth", type=float, default=3.0e12, help="B/s")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the fused EM through torch.compile (default: on CUDA)",
    )
    parser.add_argument("--skip-em", action="store_true", help="leave (b) out")
    parser.add_argument("--small", action="store_true", help="a CPU smoke size")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    size = dict(SMALL if args.small else FULL)
    for key in ("n", "d", "m", "iters", "repeats"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    n, d, m = size["n"], size["d"], size["m"]
    device = torch.device(
        args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = DTYPES[args.dtype]
    compile_too = device.type == "cuda" if args.compile is None else args.compile
    iters, repeats = max(size["iters"], 1), max(size["repeats"], 1)

    X1, y, start = simulate(n, d, m, device, dtype)
    spec = MixtureOfExperts(SoftmaxGate(), GaussianExpert())
    model, data, theta_gate, theta_expert = batched(X1, y, start, spec)
    chunk = args.chunk_size or default_chunk_size(1, n, m, d + 1, d + 1, dtype, device)
    itemsize = torch.finfo(dtype).bits // 8
    bound_bytes = n * (d + 2) * itemsize + 2 * n * m * itemsize
    bound_ms = 1e3 * bound_bytes / args.bandwidth

    results = {}

    def fused_call(compile):
        def call(k):
            return em_chunked(
                model,
                data,
                theta_gate,
                theta_expert,
                tol=0.0,
                max_iter=k,
                chunk_size=chunk,
                compile=compile,
            )

        return call

    def em_call(k):
        return em(model, data, theta_gate, theta_expert, tol=0.0, max_iter=k)

    run_plain(X1, y, start, 1)  # warm-up
    t_plain = best_time(lambda: run_plain(X1, y, start, iters), repeats, device)
    # the plain timing includes one final E-step for the likelihood
    results["plain"] = (1e3 * t_plain / iters, run_plain(X1, y, start, iters))
    if not args.skip_em:
        results["em"] = (
            per_iteration(em_call, iters, repeats, device),
            float(em_call(iters).log_likelihood[0]),
        )
    results["fused"] = (
        per_iteration(fused_call(False), iters, repeats, device),
        float(fused_call(False)(iters).log_likelihood[0]),
    )
    if compile_too:
        results["fused+compile"] = (
            per_iteration(fused_call(True), iters, repeats, device),
            float(fused_call(True)(iters).log_likelihood[0]),
        )

    print(
        f"torch EM, n={n:,}, d={d}, m={m}, {args.dtype}, softmax gate, linear "
        f"Gaussian experts, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} CPU threads, fused chunk {chunk:,} rows"
    )
    print(
        f"  bound: {bound_bytes / 1e9:.3f} GB ([1, x] and y once; responsibilities "
        f"written and read once) at {args.bandwidth / 1e12:.2f} TB/s = "
        f"{bound_ms:.3f} ms / iteration"
    )
    reference = results["plain"][1]
    rtol = LL_RTOL[dtype]
    agree = True
    for name, (ms, ll) in results.items():
        rel = abs(ll - reference) / abs(reference)
        agree &= rel <= rtol
        print(
            f"  {name:14s}: {ms:10.3f} ms / iteration  ({ms / bound_ms:8.1f}x the "
            f"bound)  log-lik after {iters} iterations {ll:.6e} (rel. diff. "
            f"{rel:.1e})"
        )
    print(
        f"  log-likelihoods {'agree' if agree else 'DIFFER'} "
        f"(relative tolerance {rtol:g})"
    )
    if args.json:
        payload = {
            "n": n,
            "d": d,
            "m": m,
            "dtype": args.dtype,
            "device": str(device),
            "device_name": (
                torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            ),
            "cpu_threads": torch.get_num_threads(),
            "iters": iters,
            "repeats": repeats,
            "chunk_size": chunk,
            "bandwidth": args.bandwidth,
            "bound_bytes": bound_bytes,
            "bound_ms": bound_ms,
            "log_likelihoods_agree": bool(agree),
            "results": {
                name: {
                    "ms_per_iteration": ms,
                    "ratio_to_bound": ms / bound_ms,
                    "log_likelihood": ll,
                }
                for name, (ms, ll) in results.items()
            },
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    if not agree:
        raise SystemExit("the EMs disagree after the same iterations")


if __name__ == "__main__":
    main()
