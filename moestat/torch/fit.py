"""Batched EM and direct MLE: B independent data sets fitted in one call.

The engines mirror :func:`moestat.fit.em` and :func:`moestat.fit.mle` and
share their stopping rule (:func:`moestat.fit.aitken_converged`: the gain
still to come that Aitken's acceleration predicts from the last three
log-likelihoods of data set ``b`` is at most ``tol`` per sample); a data set
that has converged stops changing while the others go on, and keeps its
own iteration count and convergence flag. The batched EM takes plain EM
steps (no SQUAREM acceleration: compare it with ``em(...,
accelerate=False)``). Data sets of different sizes are padded with rows of
weight zero.

EM: the E-step is a log-sum-exp over ``log g + log f``; then the pieces'
own batched M-steps (:class:`~moestat.protocols.BatchedGate`,
:class:`~moestat.protocols.BatchedExpertFamily`), the numpy pieces' steps
written once over the array API and run on tensors: closed-form weighted
least squares for Gaussian experts, damped IRLS or Fisher steps per expert
for GLM and multinomial experts, and one Fisher-scoring gate step halved
until ``Q = sum r log g`` does not decrease (generalised EM; for a top-K
gate the observed log-likelihood decides, an ECME step as in numpy). Data
sets that have converged leave the batch.

MLE: L-BFGS with per-data-set curvature pairs and Armijo backtracking, on
the mean negative log-likelihood in the numpy engine's scaled packed
parameters; gradients by autograd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from moestat._batched_em import e_step as _e_step
from moestat._batched_em import em as shared_em
from moestat._stopping import aitken_converged as _converged
from moestat.fit import (
    LINE_SEARCH_RESOLUTION,
    BatchEngine,
    FitResult,
    batched_fit_results,
    parameter_scales,
)
from moestat.model import Design, MixtureOfExperts, MoEParams
from moestat.torch._batch import (
    BatchedData,
    BatchedFit,
    BatchedModel,
    stack_data,
)
from moestat.torch._device import resolve_device
from moestat.torch.fused import em_chunked

__all__ = [
    "BatchedData",
    "BatchedModel",
    "BatchedFit",
    "stack_data",
    "em",
    "mle",
    "fit_batched",
    "batch_engine",
]


# -- EM ------------------------------------------------------------------------
def em(
    model: BatchedModel,
    data: BatchedData,
    theta_gate: Tensor,
    theta_expert: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    fused: bool = False,
    chunk_size: int | None = None,
) -> BatchedFit:
    """Batched EM from packed starting parameters.

    Parameters
    ----------
    model : BatchedModel
    data : BatchedData
    theta_gate, theta_expert : Tensor of shape (B, P)
        Starting parameters in the numpy pieces' packed layout.
    tol : float, default=1e-6
        Stopping tolerance (module docstring).
    max_iter : int, default=1000
    fused : bool, default=False
        One chunked pass over the data per iteration
        (:func:`moestat.torch.fused.em_chunked`), for large n: every model
        of the chunked path (a softmax gate, plain or modified, or a dense
        normalized sigmoid gate, without a ridge, with Gaussian experts).
        It reaches the same maximum; its gate steps are judged by the
        observed log-likelihood rather than by ``Q``, so its path can
        differ from this engine's where a step is halved.
    chunk_size : int, optional
        Rows per chunk of the fused pass (default: from the sizes).

    Returns
    -------
    BatchedFit
    """
    if fused:
        return em_chunked(
            model,
            data,
            theta_gate,
            theta_expert,
            tol=tol,
            max_iter=max_iter,
            chunk_size=chunk_size,
        )
    return shared_em(
        model.gate,
        model.expert,
        data,
        theta_gate,
        theta_expert,
        tol=tol,
        max_iter=max_iter,
    )


# -- MLE -----------------------------------------------------------------------
def mle(
    model: BatchedModel,
    data: BatchedData,
    theta_gate: Tensor,
    theta_expert: Tensor,
    *,
    scale: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    memory: int = 20,
) -> BatchedFit:
    """Batched direct maximum likelihood by L-BFGS (autograd gradients).

    Parameters
    ----------
    model, data, theta_gate, theta_expert, tol, max_iter
        As for :func:`em`; ``max_iter`` counts L-BFGS iterations.
    scale : Tensor of shape (B, P), optional
        Typical size of each packed parameter; the optimiser works on
        ``theta / scale`` (numpy's :func:`moestat.fit.parameter_scales`).
    memory : int, default=20
        Curvature pairs kept per data set.

    Returns
    -------
    BatchedFit
    """
    k = theta_gate.shape[1]
    theta = torch.cat([theta_gate, theta_expert], dim=1)
    if scale is None:
        scale = torch.ones_like(theta)
    n = data.n_samples

    def loss_and_grad(phi):
        with torch.enable_grad():
            point = phi.detach().requires_grad_(True)
            t = point * scale
            t = torch.cat([model.project_gate(t[:, :k]), t[:, k:]], dim=1)
            ll = model.log_likelihood(t[:, :k], t[:, k:], data)
            loss = -ll / n
            (grad,) = torch.autograd.grad(loss.sum(), point)
        loss, grad = loss.detach(), grad.detach()
        bad = ~torch.isfinite(loss) | ~torch.isfinite(grad).all(dim=-1)
        loss = torch.where(bad, torch.full_like(loss, float("inf")), loss)
        return loss, torch.where(bad.unsqueeze(-1), torch.zeros_like(grad), grad)

    phi, history, n_iter, converged = _lbfgs(
        loss_and_grad, theta / scale, n, tol=tol, max_iter=max_iter, memory=memory
    )
    theta = phi * scale
    theta = torch.cat([model.project_gate(theta[:, :k]), theta[:, k:]], dim=1)
    log_g = model.log_weights(theta[:, :k], data)
    log_f = model.log_density(theta[:, k:], data)
    resp, ll = _e_step(log_g + log_f, data.weight)
    return BatchedFit(
        theta_gate=theta[:, :k],
        theta_expert=theta[:, k:],
        log_likelihood=ll,
        trace=torch.stack(history),
        n_iter=n_iter,
        converged=converged,
        monotone=torch.ones_like(converged),
        expert_weight=resp.sum(dim=1),
    )


def _two_loop(grad, S, Y, rho, newest, count):
    """L-BFGS two-loop recursion, batched: ``-H g`` for each row."""
    memory = S.shape[1]
    rows = torch.arange(grad.shape[0], device=grad.device)
    q = grad.clone()
    alphas = []
    for back in range(memory):
        idx = (newest - back) % memory
        used = (back < count).to(grad.dtype) * rho[rows, idx]
        alpha = used * (S[rows, idx] * q).sum(-1)
        q = q - alpha.unsqueeze(-1) * Y[rows, idx]
        alphas.append((idx, alpha, used))
    s_new, y_new = S[rows, newest % memory], Y[rows, newest % memory]
    yy = (y_new * y_new).sum(-1)
    gamma = torch.where(
        (count > 0) & (yy > 0), (s_new * y_new).sum(-1) / yy.clamp(min=1e-300), 1.0
    )
    r = gamma.unsqueeze(-1) * q
    for idx, alpha, used in reversed(alphas):
        beta = used * (Y[rows, idx] * r).sum(-1)
        r = r + (alpha - beta).unsqueeze(-1) * S[rows, idx]
    return -r


def _lbfgs(loss_and_grad, x, n, *, tol, max_iter, memory, max_backtracks=30):
    batch, size = x.shape
    f, g = loss_and_grad(x)
    S = torch.zeros(batch, memory, size, dtype=x.dtype, device=x.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(batch, memory, dtype=x.dtype, device=x.device)
    count = torch.zeros(batch, dtype=torch.long, device=x.device)
    newest = torch.full((batch,), -1, dtype=torch.long, device=x.device)
    active = torch.isfinite(f)
    converged = torch.zeros_like(active)
    last_small = torch.zeros_like(active)
    n_iter = torch.zeros(batch, dtype=torch.long, device=x.device)
    history = [-f * n]
    f_before = torch.full_like(f, float("inf"))
    rows = torch.arange(batch, device=x.device)
    for iteration in range(1, max_iter + 1):
        d = _two_loop(g, S, Y, rho, newest.clamp(min=0), count)
        slope = (g * d).sum(-1)
        uphill = slope >= 0
        d = torch.where(uphill.unsqueeze(-1), -g, d)
        slope = torch.where(uphill, -(g * g).sum(-1), slope)
        first = count == 0
        step = torch.where(
            first, 1.0 / g.abs().amax(-1).clamp(min=1.0), torch.ones_like(f)
        )
        todo = active.clone()
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        for _ in range(max_backtracks):
            trial = x + step.unsqueeze(-1) * d
            f_try, g_try = loss_and_grad(trial)
            ok = todo & (f_try <= f + 1e-4 * step * slope)
            x_new = torch.where(ok.unsqueeze(-1), trial, x_new)
            f_new = torch.where(ok, f_try, f_new)
            g_new = torch.where(ok.unsqueeze(-1), g_try, g_new)
            todo = todo & ~ok
            if not bool(todo.any()):
                break
            step = torch.where(todo, 0.5 * step, step)
        # no acceptable step: drop the curvature pairs and retry along the
        # gradient; a failure from the gradient itself is the optimum
        stalled = todo & (count == 0)
        count = torch.where(todo, torch.zeros_like(count), count)
        s, yv = x_new - x, g_new - g
        sy = (s * yv).sum(-1)
        store = (
            active & ~stalled & (sy > 1e-10 * (yv * yv).sum(-1).sqrt() * s.norm(dim=-1))
        )
        slot = (newest + 1) % memory
        S[rows[store], slot[store]] = s[store]
        Y[rows[store], slot[store]] = yv[store]
        rho[rows[store], slot[store]] = 1.0 / sy[store]
        newest = torch.where(store, newest + 1, newest)
        count = torch.where(store, (count + 1).clamp(max=memory), count)
        settled = ~todo & _converged(-f_before * n, -f * n, -f_new * n, n, tol)
        done = active & (settled | stalled)
        # a failed line search right after a step within tolerance is the
        # optimum to round-off (numpy's rule for L-BFGS-B's status 2)
        converged |= active & (settled | (stalled & last_small))
        resolvable = torch.maximum(
            tol * n, LINE_SEARCH_RESOLUTION * (f_new.abs() * n + n)
        )
        last_small = torch.where(todo, last_small, (f - f_new).abs() * n <= resolvable)
        f_before = torch.where(active & ~todo, f, f_before)
        x = torch.where(active.unsqueeze(-1), x_new, x)
        f = torch.where(active, f_new, f)
        g = torch.where(active.unsqueeze(-1), g_new, g)
        n_iter = torch.where(active, iteration, n_iter)
        history.append(torch.where(active, -f * n, torch.full_like(f, float("nan"))))
        active = active & ~done
        if not bool(active.any()):
            break
    return x, history, n_iter, converged


# -- numpy in, numpy out -------------------------------------------------------
def fit_batched(
    model: MixtureOfExperts,
    designs: Sequence[Design],
    ys: Sequence[NDArray[np.float64]],
    starts: Sequence[MoEParams],
    *,
    solver: str = "em",
    tol: float = 1e-6,
    max_iter: int = 1000,
    var_floor: float | Sequence[float] = 0.0,
    sample_weight: Sequence[NDArray[np.float64] | None] | None = None,
    device: Any = None,
    dtype: Any = None,
    fused: bool = False,
) -> list[FitResult]:
    """Fit one model specification to B data sets from B starts, in one batch.

    Parameters
    ----------
    model : MixtureOfExperts
        The gate and expert family (its parameters are not used).
    designs : sequence of Design
        ``model.design(X_b)`` per data set (the same columns for all).
    ys : sequence of ndarray
        Responses per data set (sizes may differ: padded).
    starts : sequence of MoEParams
        Starting parameters per data set (the same number of experts).
    solver : {"em", "mle"}, default="em"
    tol, max_iter
        As for :func:`moestat.fit.em`.
    var_floor : float or sequence of float, default=0.0
    sample_weight : sequence of (ndarray or None), optional
    device : str or torch.device, optional
        Default CPU.
    dtype : {"float64", "float32"}, optional
        Default float64.
    fused : bool, default=False
        EM in one chunked pass per iteration, for every model of the
        chunked path (see :func:`em`); for large n.

    Returns
    -------
    list of FitResult
        One numpy :class:`~moestat.fit.FitResult` per data set, as the numpy
        engines return.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import GaussianMoE
    >>> from moestat.torch.fit import fit_batched
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, (200, 1))
    >>> y = np.where(X[:, 0] > 0, 2 * X[:, 0], -X[:, 0]) + 0.1 * rng.normal(size=200)
    >>> est = GaussianMoE(n_experts=2, random_state=0).fit(X, y)
    >>> spec = est.model_
    >>> results = fit_batched(spec, [spec.design(X)] * 2, [y, y], [spec.params] * 2)
    >>> bool(np.isclose(results[0].log_likelihood, results[1].log_likelihood))
    True
    """
    if solver not in ("em", "mle"):
        raise ValueError(f"solver must be 'em' or 'mle'; got {solver!r}.")
    if len(starts) != len(designs):
        raise ValueError(
            f"Need one start per data set; got {len(starts)} starts for "
            f"{len(designs)} data sets."
        )
    m = starts[0].n_experts
    p_gate, p_expert = designs[0].gate.shape[1], designs[0].expert.shape[1]
    batched = BatchedModel(model, m, p_gate, p_expert)
    data = stack_data(
        designs,
        ys,
        var_floor=var_floor,
        sample_weight=sample_weight,
        device=device,
        dtype=dtype,
    )
    floors = data.var_floor.cpu().numpy()

    def put(rows):
        return torch.as_tensor(np.stack(rows), dtype=data.y.dtype, device=data.y.device)

    theta_gate = put([model.gate.pack(start.gate) for start in starts])
    theta_expert = put(
        [
            model.expert.pack(start.expert, float(floor))
            for start, floor in zip(starts, floors, strict=True)
        ]
    )
    if solver == "em":
        fit = em(
            batched,
            data,
            theta_gate,
            theta_expert,
            tol=tol,
            max_iter=max_iter,
            fused=fused,
        )
    else:
        scale = put(
            [
                parameter_scales(model.with_params(start), design)
                for start, design in zip(starts, designs, strict=True)
            ]
        )
        fit = mle(
            batched,
            data,
            theta_gate,
            theta_expert,
            scale=scale,
            tol=tol,
            max_iter=max_iter,
        )
    return to_fit_results(
        model, fit, (m, p_gate, p_expert), floors, designs, max_iter=max_iter
    )


def to_fit_results(
    model: MixtureOfExperts,
    fit: BatchedFit,
    shapes: tuple[int, int, int],
    var_floor: NDArray[np.float64],
    designs: Sequence[Design] | None = None,
    max_iter: int | None = None,
) -> list[FitResult]:
    """One numpy :class:`~moestat.fit.FitResult` per row of a batched torch fit.

    The tensors are brought to the host (float64) and read as numpy's
    :func:`moestat.fit.batched_fit_results` reads a numpy batch.
    """

    def host(t):
        t = t.detach().cpu()
        return (t.double() if t.is_floating_point() else t).numpy()

    on_host = BatchedFit(
        *(host(getattr(fit, field.name)) for field in dataclasses.fields(fit))
    )
    return batched_fit_results(model, on_host, shapes, var_floor, designs, max_iter)


def batch_engine(device: Any = None, dtype: Any = None) -> BatchEngine:
    """The ``batch_engine`` of :func:`moestat.fit.fit_restarts` on ``device``.

    Every start is fitted to the same data set, all in one batch.

    Parameters
    ----------
    device : str or torch.device, optional
        Default CPU.
    dtype : {"float64", "float32"}, optional
        Default float64.

    Returns
    -------
    BatchEngine
        A :class:`moestat.fit.BatchEngine`.
    """
    device = resolve_device(device)

    def engine(
        model,
        design,
        y,
        starts,
        *,
        solver,
        tol,
        max_iter,
        var_floor,
        sample_weight=None,
    ):
        batch = len(starts)
        return fit_batched(
            model,
            [design] * batch,
            [y] * batch,
            starts,
            solver=solver,
            tol=tol,
            max_iter=max_iter,
            var_floor=var_floor,
            sample_weight=[sample_weight] * batch,
            device=device,
            dtype=dtype,
        )

    return engine
