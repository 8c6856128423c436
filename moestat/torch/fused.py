"""Large-n EM of the chunked path on torch: one fused sweep per iteration.

:func:`moestat.torch.fit.em` keeps the (B, n, m) responsibilities and builds
per-sample (B, n, m, p) products for every M-step. For the models of the
chunked path of :func:`moestat.fit.em` (:func:`moestat._sweep_em.supports`:
a softmax gate, plain or modified, or a dense normalized sigmoid gate, any
``bound``, without a ridge penalty, with Gaussian experts) both M-steps
need only a few hundred weighted sums per data set, so :func:`em_chunked`
makes *one* pass over the data per iteration, chunk by chunk, and never
stores the responsibilities.

The sweep and the M-step are those of :mod:`moestat.kernels.sweep`, written
once over the Python array API, which the numpy EM (:func:`moestat.fit.em`
at large ``n``) runs too:

sweep
    At the current parameters each chunk computes ``log g``, ``log f``, the
    responsibilities ``r`` and the log-likelihood, and adds its share of the
    statistics (:class:`SweepStatistics`): per expert ``sum_t r_ti``,
    ``sum_t r_ti phi_t phi_t^T``, ``sum_t r_ti e_ti phi_t`` and
    ``sum_t r_ti e_ti^2``, with ``e_ti`` the residual at the expert's
    current coefficients; for the gate the Fisher-scoring gradient and
    information over the free rows. Each sum with a design factor is one
    matrix product over the chunk's rows, so GPUs run them as GEMMs.
M-step
    On the host, in ``accumulate_dtype``, from the (B, ...) statistics:
    :func:`moestat.kernels.sweep.em_proposal`, the numpy EM's M-step run
    on the batch: the experts' weighted least squares about the current
    coefficients (with the empty-expert hold, shared or known variance and
    variance floor) and one Fisher-scoring step of the gate; a gate with a
    box ``|beta| <= bound`` holds the coefficients at the box that the
    gradient pushes out of it, and its step is clipped into the box.

Monotonicity (generalised EM, checked lazily)
    The expert step maximises ``Q`` in the experts, so only the gate step can
    lower the likelihood. Instead of evaluating ``Q`` at trial gates (one
    more pass over the data per trial), the gate step is judged by the next
    sweep, which evaluates the observed log-likelihood at the new parameters
    anyway: if a data set's log-likelihood fell by more than round-off
    (``max(1e-10, eps)`` relative, ``eps`` the data's machine epsilon), that
    data set is swept again with its gate step halved, up to the gate's
    ``max_halvings`` (12) times, and then with its old gate, which cannot
    lower the likelihood. Other data sets go on meanwhile. The recorded
    log-likelihood trace therefore never decreases beyond round-off, as
    for :func:`moestat.torch.fit.em`; ``monotone`` flags a decrease that
    survived all of this. A step of the gate is one Fisher step per
    iteration whatever the gate's ``newton_steps`` (each extra step would
    cost a sweep).

Precision
    Within a chunk the work is in the data's dtype; the chunk's statistics
    and the log-likelihood are added up across chunks, and the M-step solved,
    in ``accumulate_dtype`` (float64 by default, also for float32 data: the
    statistics are a few hundred numbers per data set, so this costs
    nothing measurable).

The stopping rule, per-data-set flags, iteration counts and the returned
:class:`~moestat.torch.fit.BatchedFit` are those of
:func:`moestat.torch.fit.em`. Iterations and results agree with it whenever
no gate step needs halving (both take the same full Fisher step); otherwise
both climb to the same maximum along different paths. From the same start,
the iterates are those of the numpy chunked path (:func:`moestat.fit.em`
with ``chunk_size``, ``accelerate=False``), whose M-step and lazy halving
they share.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import array_api_compat.torch
import torch
from torch import Tensor

from moestat import _sweep_em
from moestat._stopping import aitken_converged as _converged
from moestat.kernels.sweep import (
    SweepStatistics,
    chunk_rows,
    chunk_statistics,
    em_proposal,
    sweep,
)
from moestat.torch._batch import BatchedData, BatchedFit, BatchedModel

__all__ = [
    "SweepStatistics",
    "sufficient_statistics",
    "em_chunked",
    "em_softmax_gaussian",
    "default_chunk_size",
]

# Bytes of per-chunk intermediates a default chunk may hold: small enough to
# stay in a CPU's cache, large enough that a GPU launches few kernels per
# sweep (n = 10^7, m = 8: six chunks).
_CHUNK_BYTES = {"cpu": 2**22, "cuda": 2**30}
_MIN_CHUNK = 1024


_COMPILED: dict[str, Any] = {}


def _compiled_chunk_statistics() -> Any:
    """``torch.compile`` of the shared per-chunk statistics, made once per process."""
    if "fn" not in _COMPILED:
        # fullgraph: a graph break raises instead of silently running eager
        # pieces; static shapes: one graph for full chunks, one for the last
        _COMPILED["fn"] = torch.compile(
            functools.partial(chunk_statistics, xp=array_api_compat.torch),
            fullgraph=True,
            dynamic=False,
        )
    return _COMPILED["fn"]


# -- one sweep ----------------------------------------------------------------
class _Sweeper:
    """One pass over the data at given parameters, chunk by chunk."""

    def __init__(
        self,
        model: BatchedModel,
        data: BatchedData,
        chunk_size: int | None,
        compile: bool,
        accumulate_dtype: torch.dtype,
    ) -> None:
        self.model, self.data = model, data
        self.m, self.p_gate, self.p_expert = model.shapes
        self.gate = _sweep_em._sweep_gate(model.spec.gate)
        self.rows = torch.as_tensor(model.spec.gate.free_rows(self.m))
        self.chunk = chunk_size or default_chunk_size(
            data.y.shape[0],
            data.y.shape[1],
            self.m,
            self.p_gate,
            self.p_expert,
            data.y.dtype,
            data.y.device,
        )
        self.floor = data.var_floor.detach().to("cpu", accumulate_dtype)
        self.compile = compile
        self.fn = _compiled_chunk_statistics() if compile else chunk_statistics
        self.accumulate_dtype = accumulate_dtype

    def __call__(self, theta_gate: Tensor, theta_expert: Tensor) -> SweepStatistics:
        """Statistics at packed parameters given in ``accumulate_dtype`` on the host."""
        model, data = self.model, self.data
        dtype, device = data.y.dtype, data.y.device
        m, _, p_expert = model.shapes
        coef, var = model.spec.expert.batch_unpack(
            theta_expert, m, p_expert, self.floor
        )
        to_device = {"dtype": dtype, "device": device}
        # every gate row: the free rows, zeros elsewhere (a softmax gate's
        # reference row)
        batch = theta_gate.shape[0]
        gate_coef = theta_gate.new_zeros(batch, self.m, self.p_gate)
        gate_coef[:, self.rows] = theta_gate.reshape(batch, -1, self.p_gate)
        stats = sweep(
            data.gate,
            data.expert,
            data.y,
            data.weight,
            gate_coef.to(**to_device),
            coef.to(**to_device),
            var.to(**to_device),
            self.chunk,
            self.accumulate_dtype,
            kernel=self._call,
            gate=self.gate,
        )
        return SweepStatistics(
            **{name: value.cpu() for name, value in vars(stats).items()}
        )

    def _call(self, *args: Any, **kwargs: Any) -> Tensor:
        if not self.compile:
            return self.fn(*args, **kwargs)
        try:
            with warnings.catch_warnings():
                # torch's own modules, loaded while compiling, warn about
                # each other's deprecations; they are not this call's
                warnings.filterwarnings(
                    "ignore", category=DeprecationWarning, module=r"torch(\.|$)"
                )
                return self.fn(*args, **kwargs)
        except Exception as error:
            raise RuntimeError(
                "em_chunked(compile=True): torch.compile could not "
                f"compile or run the per-chunk statistics ({type(error).__name__}: "
                f"{error}). Use compile=False (eager torch, the same results)."
            ) from error


def default_chunk_size(
    batch: int,
    n: int,
    m: int,
    p_gate: int,
    p_expert: int,
    dtype: torch.dtype,
    device: torch.device,
) -> int:
    """Rows per chunk so that a chunk's intermediates stay within a budget.

    The budget is 4 MiB on a CPU (cache sized) and 1 GiB on a GPU (few
    kernel launches per sweep); the chunks of a sweep are made about equal,
    each a whole multiple of 128 rows (aligned starts for compiled kernels).

    Parameters
    ----------
    batch, n, m, p_gate, p_expert : int
        Data sets, rows, experts and design widths.
    dtype : torch.dtype
    device : torch.device

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> default_chunk_size(1, 10_000_000, 8, 5, 5, torch.float32,
    ...                    torch.device("cuda"))
    1666688
    """
    budget = _CHUNK_BYTES.get(torch.device(device).type, _CHUNK_BYTES["cuda"])
    itemsize = torch.finfo(dtype).bits // 8
    return chunk_rows(
        n, m, p_gate, p_expert, itemsize, budget, batch=batch, min_rows=_MIN_CHUNK
    )


def sufficient_statistics(
    model: BatchedModel,
    data: BatchedData,
    theta_gate: Tensor,
    theta_expert: Tensor,
    *,
    chunk_size: int | None = None,
    compile: bool = False,
    accumulate_dtype: torch.dtype = torch.float64,
) -> SweepStatistics:
    """The weighted sums of one sweep at packed parameters.

    Parameters
    ----------
    model : BatchedModel
        A model of the chunked path (:func:`em_chunked`).
    data : BatchedData
    theta_gate, theta_expert : Tensor of shape (B, P)
        Packed parameters (the numpy pieces' layout).
    chunk_size : int, optional
        Rows per chunk; default :func:`default_chunk_size`.
    compile : bool, default=False
        Run the per-chunk work through ``torch.compile``.
    accumulate_dtype : torch.dtype, default=torch.float64
        Dtype of the sums across chunks.

    Returns
    -------
    SweepStatistics
        On the CPU, in ``accumulate_dtype``.
    """
    _check_model(model)
    accumulate_dtype = _check_accumulate_dtype(accumulate_dtype)
    _check_shapes(model, data, theta_gate, theta_expert)
    sweeper = _Sweeper(
        model, data, _check_chunk(chunk_size), bool(compile), accumulate_dtype
    )
    with torch.no_grad():
        return sweeper(
            theta_gate.detach().to("cpu", accumulate_dtype),
            theta_expert.detach().to("cpu", accumulate_dtype),
        )


# -- the M-step from the statistics ------------------------------------------
def _proposal(
    model: BatchedModel,
    stats: SweepStatistics,
    theta_gate: Tensor,
    theta_expert: Tensor,
    var_floor: Tensor,
    n: Tensor,
) -> tuple[Tensor, Tensor]:
    """The chunked EM's M-step (:func:`moestat.kernels.sweep.em_proposal`), packed.

    The experts' new packed parameters and the gate's direction from the
    sweep's statistics at (``theta_gate``, ``theta_expert``).
    """
    family, gate = model.spec.expert, model.spec.gate
    m, _, p_expert = model.shapes
    coef, var = family.batch_unpack(theta_expert, m, p_expert, var_floor)
    coef, var, direction = em_proposal(
        stats,
        coef,
        var,
        theta_gate,
        var_floor,
        n,
        _sweep_em.variance_kind(family),
        _sweep_em.gate_bound(gate),
    )
    return family.batch_pack(coef, var, var_floor), direction


# -- EM -----------------------------------------------------------------------
def em_chunked(
    model: BatchedModel,
    data: BatchedData,
    theta_gate: Tensor,
    theta_expert: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    chunk_size: int | None = None,
    compile: bool = False,
    accumulate_dtype: torch.dtype = torch.float64,
) -> BatchedFit:
    """Batched EM of the chunked path, one sweep over the data per step.

    Serves every model the chunked path of :func:`moestat.fit.em` serves
    (:func:`moestat._sweep_em.supports`): a softmax gate (plain or
    modified) or a dense normalized sigmoid gate (``top_k=None``, any
    ``bound``), without a ridge penalty, with Gaussian experts.

    Parameters
    ----------
    model : BatchedModel
        A model the chunked path serves: a softmax gate (plain or modified)
        or a dense normalized sigmoid gate, ``alpha=0``, and Gaussian
        experts (per-expert, shared or known variance).
    data : BatchedData
        Pass the same tensor as ``gate`` and ``expert`` when both designs are
        equal (``[1, x]`` for linear experts): its pair products are then
        formed once per chunk.
    theta_gate, theta_expert : Tensor of shape (B, P)
        Starting parameters in the numpy pieces' packed layout.
    tol : float, default=1e-6
        Stopping tolerance (the rule of :mod:`moestat.torch.fit`).
    max_iter : int, default=1000
        Accepted iterations at most; a halved gate step is not an iteration.
    chunk_size : int, optional
        Rows per chunk of the sweep; default :func:`default_chunk_size`.
    compile : bool, default=False
        Run the per-chunk work through ``torch.compile`` (fused kernels:
        Triton on a GPU, C++ on a CPU). The first call compiles (tens of
        seconds); a failure raises ``RuntimeError``.
    accumulate_dtype : torch.dtype, default=torch.float64
        Dtype of the sums across chunks and of the M-step.

    Returns
    -------
    BatchedFit
        As :func:`moestat.torch.fit.em` returns, on the data's device and
        dtype.

    Raises
    ------
    ValueError
        For a model the chunked path does not serve (a top-K gate, say),
        parameters of the wrong shape, or a bad ``chunk_size`` or
        ``accumulate_dtype``.
    RuntimeError
        If ``compile=True`` and ``torch.compile`` fails.

    Notes
    -----
    The module docstring gives the sweep, the M-step and the lazy check that
    keeps the log-likelihood from decreasing. The M-step is numpy's
    (:func:`moestat.kernels.sweep.em_proposal`), batched; a gate with a box
    ``|beta| <= bound`` holds the coefficients at the box that the
    gradient pushes out of it, and its step is clipped into the box.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from moestat.gates import SoftmaxGate
    >>> from moestat.experts import GaussianExpert
    >>> from moestat.model import MixtureOfExperts
    >>> from moestat.torch.fit import BatchedModel, stack_data
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, (300, 1))
    >>> y = np.abs(X[:, 0]) + 0.1 * rng.normal(size=300)
    >>> spec = MixtureOfExperts(SoftmaxGate(), GaussianExpert())
    >>> model = BatchedModel(spec, 2, 2, 2)
    >>> data = stack_data([spec.design(X)], [y])
    >>> theta_gate = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    >>> theta_expert = torch.tensor([[0.0, -1.0, 0.0, 1.0, -4.0, -4.0]],
    ...                             dtype=torch.float64)
    >>> fit = em_chunked(model, data, theta_gate, theta_expert)
    >>> bool(fit.converged[0]), bool(fit.monotone[0])
    (True, True)
    """
    _check_model(model)
    accumulate_dtype = _check_accumulate_dtype(accumulate_dtype)
    _check_shapes(model, data, theta_gate, theta_expert)
    sweep = _Sweeper(
        model, data, _check_chunk(chunk_size), bool(compile), accumulate_dtype
    )
    with torch.no_grad():
        host = _em_loop(
            model,
            data,
            sweep,
            theta_gate.detach().to("cpu", accumulate_dtype),
            theta_expert.detach().to("cpu", accumulate_dtype),
            tol=float(tol),
            max_iter=int(max_iter),
        )
    device, dtype = data.y.device, data.y.dtype
    return BatchedFit(
        theta_gate=host["theta_gate"].to(device, dtype),
        theta_expert=host["theta_expert"].to(device, dtype),
        log_likelihood=host["log_likelihood"].to(device, dtype),
        trace=host["trace"].to(device, dtype),
        n_iter=host["n_iter"].to(device),
        converged=host["converged"].to(device),
        monotone=host["monotone"].to(device),
        expert_weight=host["expert_weight"].to(device, dtype),
    )


def em_softmax_gaussian(
    model: BatchedModel,
    data: BatchedData,
    theta_gate: Tensor,
    theta_expert: Tensor,
    **options: Any,
) -> BatchedFit:
    """:func:`em_chunked` under another name: every model of the chunked path.

    Not only a softmax gate: a dense normalized sigmoid gate too, and the
    rest of what :func:`em_chunked` serves.

    Parameters
    ----------
    model, data, theta_gate, theta_expert
        As for :func:`em_chunked`.
    **options
        Its keyword arguments (``tol``, ``max_iter``, ``chunk_size``,
        ``compile``, ``accumulate_dtype``).

    Returns
    -------
    BatchedFit
    """
    return em_chunked(model, data, theta_gate, theta_expert, **options)


def _em_loop(model, data, sweep, theta_gate, theta_expert, *, tol, max_iter):
    """The iterations, on the host: accept, halve or fall back, per data set."""
    dtype = theta_gate.dtype
    floor = data.var_floor.detach().to("cpu", dtype)
    n = data.n_samples.detach().to("cpu", dtype)
    round_off = max(1e-10, torch.finfo(data.y.dtype).eps)
    max_halvings = _sweep_em.gate_halvings(model.spec.gate)

    stats = sweep(theta_gate, theta_expert)
    ll, weight = stats.log_likelihood, stats.expert_weight
    batch = ll.shape[0]
    trace = torch.full((max_iter + 1, batch), math.nan, dtype=dtype)
    trace[0] = ll
    ll_before = torch.full_like(ll, float("-inf"))
    rows = torch.arange(batch)
    n_iter = torch.zeros(batch, dtype=torch.long)
    active = torch.ones(batch, dtype=torch.bool)
    converged = torch.zeros_like(active)
    decreased = torch.zeros_like(active)
    halvings = torch.zeros(batch, dtype=torch.long)
    step = torch.ones(batch, dtype=dtype)

    def propose(stats, theta_gate, theta_expert):
        """The M-step from the statistics at (``theta_gate``, ``theta_expert``)."""
        return _proposal(model, stats, theta_gate, theta_expert, floor, n)

    cand_expert, direction = propose(stats, theta_gate, theta_expert)
    active &= n_iter < max_iter
    while bool(active.any()):
        cand_gate = model.project_gate(theta_gate + step[:, None] * direction)
        stats = sweep(cand_gate, cand_expert)
        new_ll = stats.log_likelihood
        # compare per-sample means, with the stopping rule's scale
        prev, curr = ll / n, new_ll / n
        scale = torch.maximum(torch.maximum(prev.abs(), curr.abs()), torch.ones_like(n))
        fell = active & ~(curr >= prev - round_off * scale)
        moved = (step > 0) & (direction != 0).any(dim=1)
        retry = fell & moved & (halvings < max_halvings)
        fall_back = fell & moved & (halvings >= max_halvings)
        accept = active & ~retry & ~fall_back
        # accepted: the candidate becomes the current point
        decreased |= accept & fell
        done = accept & _converged(ll_before, ll, new_ll, n, tol)
        ll_before = torch.where(accept, ll, ll_before)
        theta_gate = torch.where(accept[:, None], cand_gate, theta_gate)
        theta_expert = torch.where(accept[:, None], cand_expert, theta_expert)
        ll = torch.where(accept, new_ll, ll)
        weight = torch.where(accept[:, None], stats.expert_weight, weight)
        n_iter = n_iter + accept.long()
        trace[n_iter[accept], rows[accept]] = ll[accept]
        converged |= done
        active &= ~done & (n_iter < max_iter)
        # the next candidates: a new M-step where accepted, a shorter step
        # (or none) where the likelihood fell
        new_expert, new_direction = propose(stats, theta_gate, theta_expert)
        cand_expert = torch.where(accept[:, None], new_expert, cand_expert)
        direction = torch.where(accept[:, None], new_direction, direction)
        halvings = torch.where(accept, 0, halvings + retry.long())
        step = torch.where(
            accept,
            1.0,
            torch.where(retry, 0.5 * step, torch.where(fall_back, 0.0, step)),
        )
    return {
        "theta_gate": theta_gate,
        "theta_expert": theta_expert,
        "log_likelihood": ll,
        "trace": trace[: int(n_iter.max()) + 1],
        "n_iter": n_iter,
        "converged": converged,
        "monotone": ~decreased,
        "expert_weight": weight,
    }


# -- argument checks ----------------------------------------------------------
def _check_model(model: BatchedModel) -> None:
    """Raise ``ValueError`` unless the pieces declare sweep kernels.

    The declarations of :class:`moestat.protocols.SweepGate` and
    :class:`moestat.protocols.SweepExpertFamily`, read by
    :func:`moestat._sweep_em.supports`.
    """
    spec = model.spec
    if _sweep_em.supports(spec):
        return
    raise ValueError(
        "em_chunked serves the models of the chunked path: a softmax gate "
        "(plain or modified) or a dense normalized sigmoid gate (top_k=None), "
        f"without a ridge penalty, with Gaussian experts; got {_describe(spec.gate)} "
        f"and {type(spec.expert).__name__}. Use moestat.torch.fit.em."
    )


def _describe(gate: Any) -> str:
    """The gate's class with what keeps it off the chunked path (top_k, alpha)."""
    details = [
        f"{name}={getattr(gate, name)!r}"
        for name in ("top_k", "alpha")
        if getattr(gate, name, None)
    ]
    name = type(gate).__name__
    return f"{name}({', '.join(details)})" if details else name


def _check_shapes(model, data, theta_gate, theta_expert) -> None:
    m, p_gate, p_expert = model.shapes
    batch = data.y.shape[0]
    expected = {
        "theta_gate": (batch, model.gate.n_params),
        "theta_expert": (batch, model.expert.n_params),
    }
    for name, value in (("theta_gate", theta_gate), ("theta_expert", theta_expert)):
        if tuple(value.shape) != expected[name]:
            raise ValueError(
                f"{name} must have shape {expected[name]} for B={batch} data sets, "
                f"m={m} experts and designs of width ({p_gate}, {p_expert}); got "
                f"{tuple(value.shape)}."
            )
    if data.gate.shape[-1] != p_gate or data.expert.shape[-1] != p_expert:
        raise ValueError(
            f"The model expects designs of width ({p_gate}, {p_expert}); the data "
            f"have ({data.gate.shape[-1]}, {data.expert.shape[-1]})."
        )


def _check_chunk(chunk_size: int | None) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise ValueError(
            f"chunk_size must be a positive int or None; got {chunk_size!r}."
        )
    if chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive int or None; got {chunk_size}."
        )
    return chunk_size


def _check_accumulate_dtype(dtype: Any) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"accumulate_dtype must be torch.float64 or torch.float32; got {dtype!r}."
        )
    return dtype
