"""Large-n EM for a softmax-gated Gaussian MoE: one fused sweep per iteration.

:func:`moestat.torch.fit.em` keeps the (B, n, m) responsibilities and builds
per-sample (B, n, m, p) products for every M-step. For a softmax gate with
Gaussian experts both M-steps need only a few hundred weighted sums per data
set, so :func:`em_softmax_gaussian` makes *one* pass over the data per
iteration, chunk by chunk, and never stores the responsibilities:

sweep
    At the current parameters each chunk computes ``log g``, ``log f``, the
    responsibilities ``r`` and the log-likelihood, and adds its share of the
    statistics: per expert ``sum_t r_ti``, ``sum_t r_ti phi_t phi_t^T``,
    ``sum_t r_ti e_ti phi_t`` and ``sum_t r_ti e_ti^2``, with ``e_ti`` the
    residual at the expert's current coefficients; for the gate the
    Fisher-scoring gradient ``sum_t (r_t - rho_t g_t) kron z_t`` and the
    information ``sum_t rho_t [diag(g_t) - g_t g_t^T] kron z_t z_t^T`` over
    the free rows, ``rho_t = sum_i r_ti``. Each sum with a design factor is
    one matrix product over the chunk's rows (per-sample weights times
    per-sample pair products of the design columns), so GPUs run them as
    GEMMs.
M-step
    On the host, in ``accumulate_dtype``, from the (B, S) statistics: the
    experts' weighted least squares (the closed form of
    ``TorchGaussianExpert.m_step`` in :mod:`moestat.torch.pieces`, with its
    empty-expert hold, shared or known variance and variance floor)
    and one Fisher-scoring step of the gate, solved as
    :func:`moestat.torch.fit.em` solves it.

The expert sums are the usual ``sum r phi y`` and ``sum r y^2`` taken about
the current coefficients ``a`` (``sum r phi y = S_e + G a``,
``sum r y^2 = s_e + 2 a^T S_e + a^T G a`` with ``G`` the weighted Gram
matrix, ``S_e`` and ``s_e`` the residual sums). This avoids the cancellation
of ``sum r y^2 - b^T G^{-1} b`` when ``y`` is large against its noise (fatal
in float32): the update is ``a + d`` with ``d = G^{-1} S_e`` and the new
residual sum of squares ``s_e - 2 d^T S_e + d^T G d``.

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
both climb to the same maximum along different paths.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from moestat.torch._batch import BatchedData, BatchedFit, BatchedModel, _converged
from moestat.torch.pieces import TorchGaussianExpert, TorchSoftmaxGate, _solve_spd

__all__ = [
    "SweepStatistics",
    "sufficient_statistics",
    "em_softmax_gaussian",
    "default_chunk_size",
]

_LOG_2PI = math.log(2.0 * math.pi)
# Bytes of per-chunk intermediates a default chunk may hold: small enough to
# stay in a CPU's cache, large enough that a GPU launches few kernels per
# sweep (n = 10^7, m = 8: six chunks).
_CHUNK_BYTES = {"cpu": 2**22, "cuda": 2**30}
_MIN_CHUNK = 1024


@dataclass(frozen=True)
class SweepStatistics:
    """The weighted sums of one sweep, one entry per data set.

    The expert sums are taken with the residuals ``e_ti = y_t - phi_t^T a_i``
    at the coefficients ``a_i`` the sweep ran at; the gate's are over its
    free rows ``1..m-1``, flattened row by row as its packed parameters.

    Parameters
    ----------
    log_likelihood : Tensor of shape (B,)
        ``sum_t w_t log p(y_t | x_t)``.
    expert_weight : Tensor of shape (B, m)
        ``sum_t r_ti`` (responsibilities include the sample weights).
    expert_gram : Tensor of shape (B, m, p_expert, p_expert)
        ``sum_t r_ti phi_t phi_t^T``.
    expert_score : Tensor of shape (B, m, p_expert)
        ``sum_t r_ti e_ti phi_t``.
    expert_ss : Tensor of shape (B, m)
        ``sum_t r_ti e_ti^2``.
    gate_gradient : Tensor of shape (B, (m - 1) p_gate)
        ``sum_t (r_ti - rho_t g_ti) z_t``.
    gate_information : Tensor of shape (B, (m - 1) p_gate, (m - 1) p_gate)
        ``sum_t rho_t g_ti (delta_ij - g_tj) z_t z_t^T``.
    """

    log_likelihood: Tensor
    expert_weight: Tensor
    expert_gram: Tensor
    expert_score: Tensor
    expert_ss: Tensor
    gate_gradient: Tensor
    gate_information: Tensor


# -- the per-chunk work ------------------------------------------------------
def _chunk_statistics(
    Z: Tensor,
    Phi: Tensor,
    y: Tensor,
    w: Tensor,
    gate_coef: Tensor,
    expert_coef: Tensor,
    inv_var: Tensor,
    log_norm: Tensor,
    pairs_gate: Tensor,
    pairs_expert: Tensor,
    pairs_free: Tensor,
    diag_free: Tensor,
    shared: bool,
    accumulate_dtype: torch.dtype,
) -> Tensor:
    """The statistics of one chunk, flattened to (B, S) in ``accumulate_dtype``.

    Pure tensor code (no Python branches on values), so that ``torch.compile``
    can fuse it. ``pairs_*`` are (2, q) column indices of upper triangles;
    ``diag_free`` marks the diagonal pairs of the free gate rows.
    """
    # experts-major (B, m, c): reductions over experts run along contiguous
    # rows, and each statistic is a (B, ., c) @ (B, c, .) product
    Zt = Z.transpose(1, 2).contiguous()
    Pt = Zt if shared else Phi.transpose(1, 2).contiguous()
    # softmax and log-softmax with one exp (scores are finite)
    scores = torch.bmm(gate_coef, Zt)
    scores = scores - scores.amax(dim=1, keepdim=True)
    gate_exp = scores.exp()
    gate_sum = gate_exp.sum(dim=1, keepdim=True)
    log_g = scores - gate_sum.log()
    resid = y.unsqueeze(1) - torch.bmm(expert_coef, Pt)
    joint = log_g + (
        log_norm.unsqueeze(-1) - 0.5 * inv_var.unsqueeze(-1) * resid * resid
    )
    # the E-step of moestat.torch.fit._e_step with one exp: r = e / sum(e) for
    # e = exp(joint - max); rows without a finite density get r = 0
    top = joint.amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    joint_exp = (joint - top).exp()
    joint_sum = joint_exp.sum(dim=1, keepdim=True)
    per_sample = (top + joint_sum.log()).squeeze(1)
    resp = torch.nan_to_num(joint_exp / joint_sum * w.unsqueeze(1), nan=0.0)
    counted = torch.where(w > 0, w * per_sample, torch.zeros_like(per_sample))
    log_lik = counted.to(accumulate_dtype).sum(dim=1, keepdim=True)

    # gate: soft-label gradient and Fisher pair weights rho g_i (delta_ij - g_j)
    g = (gate_exp / gate_sum)[:, 1:]
    rho = resp.sum(dim=1, keepdim=True)
    rho_g = rho * g
    score = resp[:, 1:] - rho_g
    gate_weights = rho_g.index_select(1, pairs_free[0]) * (
        diag_free.unsqueeze(-1) - g.index_select(1, pairs_free[1])
    )
    z_pairs = Zt.index_select(1, pairs_gate[0]) * Zt.index_select(1, pairs_gate[1])
    phi_pairs = (
        z_pairs
        if shared
        else Pt.index_select(1, pairs_expert[0]) * Pt.index_select(1, pairs_expert[1])
    )
    weighted_resid = resp * resid
    parts = (
        log_lik,
        resp.sum(dim=-1),
        torch.bmm(resp, phi_pairs.transpose(1, 2)),
        torch.bmm(weighted_resid, Pt.transpose(1, 2)),
        (weighted_resid * resid).sum(dim=-1),
        torch.bmm(score, Zt.transpose(1, 2)),
        torch.bmm(gate_weights, z_pairs.transpose(1, 2)),
    )
    batch = Z.shape[0]
    return torch.cat([t.reshape(batch, -1).to(accumulate_dtype) for t in parts], 1)


_COMPILED: dict[str, Any] = {}


def _compiled_chunk_statistics() -> Any:
    """``torch.compile`` of :func:`_chunk_statistics`, made once per process."""
    if "fn" not in _COMPILED:
        # fullgraph: a graph break raises instead of silently running eager
        # pieces; static shapes: one graph for full chunks, one for the last
        _COMPILED["fn"] = torch.compile(
            _chunk_statistics, fullgraph=True, dynamic=False
        )
    return _COMPILED["fn"]


# -- layout of the flattened statistics ---------------------------------------
def _pair_index(p: int, device: torch.device) -> Tensor:
    """(2, p(p+1)/2) indices of the upper triangle, row by row."""
    return torch.triu_indices(p, p, device=device)


def _symmetric_from_pairs(packed: Tensor, p: int) -> Tensor:
    """(..., p, p) symmetric matrices from (..., p(p+1)/2) upper triangles."""
    lookup = torch.zeros(p, p, dtype=torch.long)
    rows, cols = _pair_index(p, torch.device("cpu"))
    lookup[rows, cols] = torch.arange(rows.numel())
    lookup[cols, rows] = torch.arange(rows.numel())
    return packed[..., lookup.to(packed.device)]


def _unflatten(flat: Tensor, m: int, p_gate: int, p_expert: int) -> SweepStatistics:
    """Split (B, S) flattened statistics into a :class:`SweepStatistics`."""
    k = m - 1
    q_gate, q_expert, q_free = (
        p_gate * (p_gate + 1) // 2,
        p_expert * (p_expert + 1) // 2,
        k * (k + 1) // 2,
    )
    sizes = [1, m, m * q_expert, m * p_expert, m, k * p_gate, q_free * q_gate]
    batch = flat.shape[0]
    ll, weight, gram, score, ss, grad, info = torch.split(flat, sizes, dim=1)
    gram = _symmetric_from_pairs(gram.reshape(batch, m, q_expert), p_expert)
    # information[(i, a), (j, b)] = sum rho g_i (delta_ij - g_j) z_a z_b
    info = _symmetric_from_pairs(info.reshape(batch, q_free, q_gate), p_gate)
    info = _symmetric_from_pairs(info.transpose(1, -1), k)  # (B, p, p, k, k)
    info = info.permute(0, 3, 1, 4, 2).reshape(batch, k * p_gate, k * p_gate)
    return SweepStatistics(
        log_likelihood=ll[:, 0],
        expert_weight=weight,
        expert_gram=gram,
        expert_score=score.reshape(batch, m, p_expert),
        expert_ss=ss,
        gate_gradient=grad,
        gate_information=info,
    )


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
        device = data.y.device
        self.shared = data.gate is data.expert
        k = self.m - 1
        pairs_free = _pair_index(k, device)
        self.index = (
            _pair_index(self.p_gate, device),
            _pair_index(self.p_expert, device),
            pairs_free,
            (pairs_free[0] == pairs_free[1]).to(data.y.dtype),
        )
        self.chunk = chunk_size or default_chunk_size(
            data.y.shape[0],
            data.y.shape[1],
            self.m,
            self.p_gate,
            self.p_expert,
            data.y.dtype,
            device,
        )
        self.floor = data.var_floor.detach().to("cpu", accumulate_dtype)
        self.compile = compile
        self.fn = _compiled_chunk_statistics() if compile else _chunk_statistics
        self.accumulate_dtype = accumulate_dtype

    def __call__(self, theta_gate: Tensor, theta_expert: Tensor) -> SweepStatistics:
        """Statistics at packed parameters given in ``accumulate_dtype`` on the host."""
        model, data = self.model, self.data
        dtype, device = data.y.dtype, data.y.device
        coef, var = model.expert.unpack(theta_expert, self.floor)
        to_device = {"dtype": dtype, "device": device}
        # the reference row 0 and the free rows (written out: m = 1 has none)
        free = theta_gate.reshape(theta_gate.shape[0], self.m - 1, self.p_gate)
        gate_coef = torch.cat([free.new_zeros(free.shape[0], 1, self.p_gate), free], 1)
        args = (
            gate_coef.to(**to_device),
            coef.to(**to_device),
            (1.0 / var).to(**to_device),
            (-0.5 * (var.log() + _LOG_2PI)).to(**to_device),
            *self.index,
            self.shared,
            self.accumulate_dtype,
        )
        n = data.y.shape[1]
        total = None
        for start in range(0, n, self.chunk):
            rows = slice(start, start + self.chunk)
            part = self._call(
                data.gate[:, rows],
                data.expert[:, rows],
                data.y[:, rows],
                data.weight[:, rows],
                *args,
            )
            total = part if total is None else total + part
        return _unflatten(total.cpu(), self.m, self.p_gate, self.p_expert)

    def _call(self, *args: Any) -> Tensor:
        if not self.compile:
            return self.fn(*args)
        try:
            with warnings.catch_warnings():
                # torch's own modules, loaded while compiling, warn about
                # each other's deprecations; they are not this call's
                warnings.filterwarnings(
                    "ignore", category=DeprecationWarning, module=r"torch(\.|$)"
                )
                return self.fn(*args)
        except Exception as error:
            raise RuntimeError(
                "em_softmax_gaussian(compile=True): torch.compile could not "
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
    k = m - 1
    width = (
        12 * m
        + k * (k + 1) // 2
        + p_gate * (p_gate + 1) // 2
        + p_expert * (p_expert + 1) // 2
    )
    row_bytes = batch * width * torch.finfo(dtype).bits // 8
    budget = _CHUNK_BYTES.get(torch.device(device).type, _CHUNK_BYTES["cuda"])
    rows = max(_MIN_CHUNK, budget // row_bytes)
    n_chunks = max(1, -(-n // rows))
    rows = -(-n // n_chunks)
    # whole multiples of 128 rows keep every chunk's start aligned
    return min(n, -(-rows // 128) * 128) if n > 0 else 1


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
        With a softmax gate and Gaussian experts.
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
def _expert_step(
    expert: TorchGaussianExpert,
    stats: SweepStatistics,
    theta: Tensor,
    var_floor: Tensor,
) -> Tensor:
    """Closed-form expert M-step from the sweep's statistics (packed)."""
    weight = stats.expert_weight
    total = weight.sum(dim=1).clamp(min=1.0)
    empty = weight <= 1e-10 * total[:, None]
    delta = _solve_spd(stats.expert_gram, stats.expert_score, refine=True)
    delta = torch.where(empty[..., None], torch.zeros_like(delta), delta)
    old_coef, old_var = expert.unpack(theta, var_floor)
    coef = old_coef + delta
    quad = torch.einsum("bmp,bmpq,bmq->bm", delta, stats.expert_gram, delta)
    ss = stats.expert_ss - 2.0 * (delta * stats.expert_score).sum(-1) + quad
    ss = ss.clamp(min=0.0)
    return expert.pack_fit(coef, ss, weight, empty, old_var, var_floor)


def _gate_direction(stats: SweepStatistics, n: Tensor) -> Tensor:
    """Fisher-scoring direction of the gate; zero where no ascent is predicted."""
    grad = stats.gate_gradient
    direction = _solve_spd(stats.gate_information, grad, ridge=1e-9)
    gain = (grad * direction).sum(dim=-1)
    move = gain > 1e-14 * n
    return torch.where(move[:, None], direction, torch.zeros_like(direction))


# -- EM -----------------------------------------------------------------------
def em_softmax_gaussian(
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
    """Batched EM of a softmax-gated Gaussian MoE, one sweep over the data per step.

    Parameters
    ----------
    model : BatchedModel
        Its gate must be a softmax gate (plain or modified) and its experts
        Gaussian (per-expert, shared or known variance).
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
        For another gate or expert family, parameters of the wrong shape, or
        a bad ``chunk_size`` or ``accumulate_dtype``.
    RuntimeError
        If ``compile=True`` and ``torch.compile`` fails.

    Notes
    -----
    The module docstring gives the sweep, the M-step and the lazy check that
    keeps the log-likelihood from decreasing.

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
    >>> fit = em_softmax_gaussian(model, data, theta_gate, theta_expert)
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


def _em_loop(model, data, sweep, theta_gate, theta_expert, *, tol, max_iter):
    """The iterations, on the host: accept, halve or fall back, per data set."""
    dtype = theta_gate.dtype
    floor = data.var_floor.detach().to("cpu", dtype)
    n = data.n_samples.detach().to("cpu", dtype)
    round_off = max(1e-10, torch.finfo(data.y.dtype).eps)
    max_halvings = model.gate.max_halvings

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

    def propose(stats, theta_expert):
        """The M-step from the statistics at (the gate, ``theta_expert``)."""
        return (
            _expert_step(model.expert, stats, theta_expert, floor),
            _gate_direction(stats, n),
        )

    cand_expert, direction = propose(stats, theta_expert)
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
        new_expert, new_direction = propose(stats, theta_expert)
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
    if not isinstance(model.gate, TorchSoftmaxGate) or not isinstance(
        model.expert, TorchGaussianExpert
    ):
        raise ValueError(
            "em_softmax_gaussian needs a softmax gate and Gaussian experts; got "
            f"{type(model.spec.gate).__name__} and "
            f"{type(model.spec.expert).__name__}. Use moestat.torch.fit.em."
        )


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
