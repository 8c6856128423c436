"""MoE layer throughput: sort-based dispatch against the dense one-hot einsum.

Configuration of routing.md section 4.3: n = 16,384 tokens in one group,
d_model = 1024, expert MLP 1024 -> 2048 -> 1024 (ReLU), m = 64 experts,
top-2 softmax routing renormalized over the two choices, capacity factor
1.25 (C = 640), position priority, bf16. The routing is decided once
(float32 gate, ``torch.topk``, ``keep_within_capacity``, ``dense_from_slots``)
and both compute paths apply the same experts to it:

- ``sorted``: stable sort of the dispatched pairs by expert, experts on
  contiguous row blocks (``torch._grouped_mm`` on Hopper in bf16, a padded
  batched matmul elsewhere on CUDA, a loop over experts on the CPU),
  ``index_add_`` back in float32;
- ``einsum``: GShard's (n, m, C) one-hot dispatch and combine einsums.

Both are timed in the same run, forward and forward+backward (gradients to
x, the expert weights and the combine weights), as the mean of ``--repeats``
runs after ``--warmup`` runs; the script prints milliseconds, tokens per
second, peak CUDA memory and the einsum/sorted ratio, and checks that the
two outputs agree.

Run:  python benchmarks/bench_routing.py [--device cuda] [--small]
      [--repeats 10] [--warmup 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from moestat.routing._base import (
    Routing,
    capacity_for,
    dense_from_slots,
    keep_within_capacity,
)
from moestat.routing.layer import ExpertMLP, combine_einsum, combine_sorted

FULL = {"n": 16_384, "d_model": 1024, "d_hidden": 2048, "m": 64, "k": 2, "cf": 1.25}
SMALL = {"n": 1024, "d_model": 64, "d_hidden": 128, "m": 16, "k": 2, "cf": 1.25}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_routing(x, m, k, cf, seed=0):
    """Top-k softmax routing of ``x`` (1, n, d), float32, position priority."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    d = x.shape[-1]
    gate = torch.randn(d, m, generator=generator) / d**0.5
    logits = x.float() @ gate.to(x.device)
    probs = logits.softmax(dim=-1)
    weight, idx = torch.topk(probs, k, dim=-1)
    weight = weight / weight.sum(dim=-1, keepdim=True)
    capacity = capacity_for(x.shape[1], m, k, cf)
    keep = keep_within_capacity(idx, capacity, m, priority="position")
    idx = torch.where(keep, idx, -1)
    weight = torch.where(keep, weight, torch.zeros_like(weight))
    dispatch, combine = dense_from_slots(idx, weight, m)
    # a leaf, so that every backward pass reaches the combine weights afresh
    combine = combine.detach().requires_grad_(True)
    return Routing(logits, probs, dispatch, combine, idx, weight, capacity)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, repeats, warmup):
    """Mean milliseconds of ``fn`` after ``warmup`` calls, and peak CUDA bytes."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    ms = 1e3 * (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return ms, peak


def run(config, device, dtype, repeats, warmup, method):
    generator = torch.Generator(device="cpu").manual_seed(1)
    n, d = config["n"], config["d_model"]
    x = torch.randn(1, n, d, generator=generator).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    experts = ExpertMLP(config["m"], d, config["d_hidden"], dtype=dtype, random_state=2)
    experts = experts.to(device)
    routing = make_routing(x.detach(), config["m"], config["k"], config["cf"])
    grad_out = torch.randn(1, n, d, generator=generator).to(device=device, dtype=dtype)
    paths = {
        "sorted": lambda: combine_sorted(experts, x, routing, method=method).to(dtype),
        "einsum": lambda: combine_einsum(experts, x, routing),
    }
    with torch.no_grad():
        outputs = {name: path().float() for name, path in paths.items()}
    results = {}
    for name, path in paths.items():

        def forward(path=path):
            with torch.no_grad():
                path()

        def forward_backward(path=path):
            x.grad = None
            routing.combine.grad = None
            experts.zero_grad(set_to_none=True)
            path().backward(grad_out)

        for pass_name, fn in (
            ("forward", forward),
            ("forward+backward", forward_backward),
        ):
            ms, peak = measure(fn, device, repeats, warmup)
            results[(name, pass_name)] = {
                "ms": ms,
                "tokens_per_s": n / (ms / 1e3),
                "peak_memory_bytes": peak,
            }
            # free the cached blocks of one path before measuring the next
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if method == "auto":
        if experts.grouped_mm_applicable(x):
            method = "grouped_mm"
        else:
            method = "padded" if device.type == "cuda" else "loop"
    results["method"] = method
    difference = (outputs["sorted"] - outputs["einsum"]).abs().max().item()
    scale = outputs["einsum"].abs().max().item()
    return results, routing, difference, scale


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument(
        "--small", action="store_true", help="a CPU-sized configuration (seconds)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--n", type=int, default=None, help="tokens (overrides)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--method",
        choices=["auto", "grouped_mm", "padded", "loop"],
        default="auto",
        help="how the sorted path runs the experts",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results here")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    config = dict(SMALL if args.small else FULL)
    if args.n is not None:
        config["n"] = args.n
    results, routing, difference, scale = run(
        config, device, dtype, args.repeats, args.warmup, args.method
    )
    method = results.pop("method")
    dropped = int((routing.topk_idx < 0).sum())
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"

    print(
        f"MoE layer, n={config['n']} tokens, d={config['d_model']}, "
        f"MLP {config['d_model']}->{config['d_hidden']}->{config['d_model']} (ReLU), "
        f"m={config['m']}, top-{config['k']} renormalized, cf={config['cf']} "
        f"(C={routing.capacity}), position priority, {args.dtype}"
    )
    print(
        f"device: {name}, torch {torch.__version__}; mean of {args.repeats} after "
        f"{args.warmup} warm-ups; sorted path experts by {method!r}; "
        f"{dropped} of {routing.topk_idx.numel()} assignments dropped"
    )
    for pass_name in ("forward", "forward+backward"):
        for path in ("sorted", "einsum"):
            row = results[(path, pass_name)]
            peak = row["peak_memory_bytes"]
            memory = "n/a" if peak is None else f"{peak / 2**30:.2f} GiB"
            print(
                f"  {pass_name:16s} {path:6s}: {row['ms']:9.2f} ms  "
                f"{row['tokens_per_s'] / 1e6:7.3f} M tokens/s  peak {memory}"
            )
        ratio = (
            results[("einsum", pass_name)]["ms"] / results[("sorted", pass_name)]["ms"]
        )
        print(f"  {pass_name:16s} ratio einsum/sorted: {ratio:6.2f}x")
    tolerance = {torch.float32: 1e-4}.get(dtype, 3e-2) * max(scale, 1.0)
    agree = difference <= tolerance
    print(
        f"  outputs agree: max |sorted - einsum| = {difference:.3g} "
        f"(max |y| {scale:.3g}, tolerance {tolerance:.3g})"
    )

    if args.json:
        report = {
            "config": {**config, "dtype": args.dtype, "capacity": routing.capacity},
            "device": name,
            "torch": torch.__version__,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "sorted_method": method,
            "dropped_assignments": dropped,
            "max_abs_difference": difference,
            "outputs_agree": agree,
            "results": [
                {"path": path, "pass": pass_name, **row}
                for (path, pass_name), row in results.items()
            ],
            "ratio_einsum_over_sorted": {
                pass_name: results[("einsum", pass_name)]["ms"]
                / results[("sorted", pass_name)]["ms"]
                for pass_name in ("forward", "forward+backward")
            },
        }
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    if not agree:
        raise SystemExit("The sorted and einsum outputs disagree.")


if __name__ == "__main__":
    main()
