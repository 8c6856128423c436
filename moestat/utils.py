"""Conformance checks for gates and expert families written by users.

:func:`check_gate` and :func:`check_expert_family` run a piece through the
rules the fitting engines rely on, on small simulated data, in the spirit
of scikit-learn's ``check_estimator``: a piece that passes them can be
fitted by EM and direct maximum likelihood, given standard errors and
simulated from (:mod:`moestat.protocols` lists the hooks). Each rule that
fails raises a :class:`ConformanceError` naming the rule.

Rules for a gate
----------------
``protocol``
    It has every hook of :class:`~moestat.protocols.Gate`.
``design``
    ``design(X)`` is a finite ``(n, p)`` array, ``design_names`` gives ``p``
    names, ``describe`` a string.
``random_params``
    ``random_params`` and ``init_params`` give parameters that
    ``check_params`` accepts and whose packed length is
    ``n_free_parameters``; ``0 <= degrees_of_freedom <= n_free_parameters``;
    ``expert_groups`` has one integer per expert.
``log_weights``
    ``log_weights`` is ``(n, m)``, never NaN or ``+inf`` (``-inf`` marks an
    expert the gate leaves out), and every row of weights sums to one. This
    holds for every gate of moestat: the softmax gates, the normalized
    sigmoid (dense, and top-K, whose weights are zero outside the ``K``
    selected experts and sum to one over them), and shared experts
    (``lambda omega_i`` beside ``(1 - lambda) g_j``).
``pack``
    ``pack(unpack(theta))`` is ``theta``, and the round trip
    ``unpack(pack(params))`` leaves the weights unchanged.
``pack_scales``, ``pack_bounds``
    One positive finite scale and one ``lower <= theta <= upper`` pair per
    packed parameter; ``parameter_names`` gives one name per parameter.
``gradient``
    ``gradient`` matches central finite differences of the soft-label
    objective ``sum r log g - penalty`` to a relative ``1e-5``.
``m_step``
    ``m_step`` does not decrease the soft-label objective; given the
    experts' log densities it does not decrease the observed
    log-likelihood; the ``log g`` it returns is that of its parameters.
``permute``
    ``log_weights(permute(params, perm))`` is ``log_weights(params)[:,
    perm]`` for a permutation within the gate's ``expert_groups``.
``atoms``
    (Gates with :class:`~moestat.protocols.GateAtoms`.) One finite positive
    mass per expert; ``split_atoms`` with every expert kept once leaves the
    weights unchanged.
``batch``
    (Gates with batched kernels, :class:`~moestat.protocols.BatchedGate`,
    where ``runs_batched``.) On a batch of two copies of the data,
    ``batch_log_weights`` is ``log_weights``; given the same soft labels and
    experts' log densities, ``batch_m_step`` returns the ``log g`` of its
    parameters and reaches the soft-label objective and the observed
    log-likelihood of ``m_step`` from the same parameters (not below
    either).
``sweep``
    (Gates that declare a sweep kernel, :class:`~moestat.protocols.SweepGate`.)
    The kernel is one of :data:`moestat.kernels.sweep.GATES`; the gate's
    parameters are :class:`~moestat.gates.GateParams` packed as the kernel
    reads them; with Gaussian experts, the sweep's sums
    (:class:`~moestat.kernels.sweep_numpy.NumpySweep`, over chunks) give
    the log-likelihood of ``log_weights``, the gradient of ``gradient`` and,
    by Fisher scoring on them, the parameters of ``m_step``, each to a
    relative ``1e-8``. A subclass that changes the weights but inherits the
    declaration breaks this rule: it must declare ``sweep_kernel = None``
    (the full path) or the kernel that computes its weights.

Rules for an expert family
--------------------------
``protocol``, ``design``, ``random_params`` (the family's M-step on
random soft labels gives parameters ``check_params`` accepts), ``sample``
(responses of the right shape in the family's support), ``log_density``
(``(n, m)``, never NaN or ``+inf``; ``mean`` ``(n, m)``), ``pack``,
``pack_scales``, ``pack_bounds``, ``gradient`` (of ``sum r log f -
penalty``), ``m_step`` (does not decrease that objective from
``previous``), ``permute``, ``atoms``, and the optional capabilities
``log_mean`` (its exponential is ``mean``), ``class_probabilities``
(probabilities summing to one), ``degrees_of_freedom``, and ``batch``
for a family with batched kernels
(:class:`~moestat.protocols.BatchedExpertFamily`, where ``runs_batched``):
on a batch of two copies of the data, ``batch_log_density`` is ``log_density`` and
``batch_m_step`` reaches the ``sum r log f`` of ``m_step`` from the same
parameters, and ``sweep`` for a family that declares a sweep kernel
(:class:`~moestat.protocols.SweepExpertFamily`): with a softmax gate, the
sweep's sums give the log-likelihood of ``log_density`` and, by the
closed-form M-step on them, the parameters of ``m_step`` (its
``variance_kind``), to a relative ``1e-8``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from moestat._math import hold_at_box, solve_spd
from moestat._sweep_em import (
    _sweep_experts,
    _sweep_gate,
    clip_to_box,
    gate_bound,
    gate_halvings,
    kernel_rows,
    variance_kind,
)
from moestat._validation import as_generator
from moestat.experts.gaussian import GaussianExpert, GaussianExpertParams
from moestat.gates._base import GateParams
from moestat.gates.softmax import SoftmaxGate
from moestat.kernels.sweep import (
    gaussian_expert_step,
    soft_label_statistics,
    unflatten_soft_label,
)
from moestat.kernels.sweep_numpy import NumpySweep
from moestat.protocols import (
    BatchedExpertFamily,
    BatchedGate,
    CompositeExpertFamily,
    CompositeGate,
    CountsDegreesOfFreedom,
    ExpertAtoms,
    ExpertDeclarations,
    ExpertFamily,
    Gate,
    GateAtoms,
    HasClassProbabilities,
    HasLogMean,
    MultinomialFamily,
    missing_members,
)

__all__ = ["ConformanceError", "check_gate", "check_expert_family"]

_COMPOSITES = (CompositeGate, CompositeExpertFamily)

#: Relative tolerance of the gradient against central finite differences.
GRADIENT_RTOL = 1e-5

# Tolerances of identities that hold up to round-off.
_ROUND_TRIP = {"rtol": 1e-9, "atol": 1e-10}

#: Relative tolerance of a sweep's sums against the pieces' own hooks.
SWEEP_RTOL = 1e-8


class ConformanceError(AssertionError):
    """A gate or an expert family breaks a rule the fitting engines rely on.

    Parameters
    ----------
    piece : object
        The gate or expert family checked.
    rule : str
        The rule it breaks (see :mod:`moestat.utils`).
    detail : str
        What was found.

    Attributes
    ----------
    rule : str
        The rule broken, e.g. ``"gradient"``.
    """

    def __init__(self, piece: object, rule: str, detail: str) -> None:
        self.rule = rule
        super().__init__(f"{type(piece).__name__} breaks rule {rule!r}: {detail}")


def _require(condition: Any, piece: object, rule: str, detail: str) -> None:
    if not condition:
        raise ConformanceError(piece, rule, detail)


def _check_protocol(piece: object, protocol: type) -> None:
    missing = missing_members(piece, protocol)
    _require(
        not missing and isinstance(piece, protocol),
        piece,
        "protocol",
        f"it does not satisfy moestat.protocols.{protocol.__name__}; "
        f"missing: {', '.join(missing)}.",
    )


def _call(piece: object, rule: str, hook: str, *args: Any) -> Any:
    """``piece.hook(*args)``, an exception reported as a broken ``rule``."""
    try:
        return getattr(piece, hook)(*args)
    except Exception as error:  # any failure of a user's hook is the finding
        raise ConformanceError(
            piece, rule, f"{hook} raised {type(error).__name__}: {error}"
        ) from error


def _check_array(
    piece: object, rule: str, what: str, values: Any, shape: tuple[int, ...]
) -> NDArray[np.float64]:
    values = np.asarray(values, dtype=float)
    _require(
        values.shape == shape,
        piece,
        rule,
        f"{what} has shape {values.shape}, expected {shape}.",
    )
    return values


def _check_log_values(piece: object, rule: str, what: str, values: NDArray) -> None:
    _require(
        not np.any(np.isnan(values)) and not np.any(values == np.inf),
        piece,
        rule,
        f"{what} has NaN or +inf entries.",
    )


def _same_logs(a: NDArray, b: NDArray, rtol: float, atol: float) -> bool:
    """Equal log values, ``-inf`` entries in the same places."""
    if a.shape != b.shape or not np.array_equal(np.isneginf(a), np.isneginf(b)):
        return False
    finite = ~np.isneginf(a)
    return bool(np.allclose(a[finite], b[finite], rtol=rtol, atol=atol))


def _check_packing(
    piece: object,
    theta: NDArray[np.float64],
    k: int,
    scales: Any,
    bounds: Any,
    names: Any,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The lengths and values of the scales, bounds and names of ``theta``."""
    _require(
        theta.shape == (k,),
        piece,
        "pack",
        f"pack gives shape {theta.shape}; n_free_parameters says {k}.",
    )
    _require(np.all(np.isfinite(theta)), piece, "pack", "pack gives non-finite values.")
    scales = np.asarray(scales, dtype=float)
    _require(
        scales.shape == (k,) and np.all(np.isfinite(scales)) and np.all(scales > 0),
        piece,
        "pack_scales",
        f"pack_scales gives shape {scales.shape}; expected {k} positive finite scales.",
    )
    try:
        lower, upper = (np.asarray(b, dtype=float) for b in bounds)
    except (TypeError, ValueError) as error:
        raise ConformanceError(
            piece, "pack_bounds", "pack_bounds must return (lower, upper)."
        ) from error
    _require(
        lower.shape == (k,) and upper.shape == (k,),
        piece,
        "pack_bounds",
        f"pack_bounds gives shapes {lower.shape} and {upper.shape}; expected "
        f"({k},) each.",
    )
    _require(
        np.all(lower <= theta) and np.all(theta <= upper),
        piece,
        "pack_bounds",
        "the packed parameters lie outside pack_bounds.",
    )
    _require(
        len(list(names)) == k,
        piece,
        "pack",
        f"parameter_names gives {len(list(names))} names for {k} parameters.",
    )
    return lower, upper


def _perturbed(
    theta: NDArray[np.float64],
    bounds: tuple[NDArray[np.float64], NDArray[np.float64]],
    rng: np.random.Generator,
    size: float = 0.3,
) -> NDArray[np.float64]:
    """``theta`` moved at random, kept strictly inside its bounds."""
    lower, upper = bounds
    moved = theta + size * rng.standard_normal(theta.shape)
    boxed = np.isfinite(lower) & np.isfinite(upper)
    margin = 1e-3 * np.where(boxed, upper - lower, 1.0)
    low = np.where(np.isfinite(lower), lower + margin, -np.inf)
    high = np.where(np.isfinite(upper), upper - margin, np.inf)
    return np.clip(moved, low, high)


def _finite_difference_gradient(
    objective: Any, theta: NDArray[np.float64], step: float = 1e-6
) -> NDArray[np.float64]:
    grad = np.empty_like(theta)
    for j in range(len(theta)):
        h = step * max(1.0, abs(theta[j]))
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        grad[j] = (objective(up) - objective(down)) / (2 * h)
    return grad


def _check_gradient(
    piece: object, analytic: Any, objective: Any, theta: NDArray[np.float64]
) -> None:
    analytic = np.asarray(analytic, dtype=float)
    _require(
        analytic.shape == theta.shape and np.all(np.isfinite(analytic)),
        piece,
        "gradient",
        f"gradient gives shape {analytic.shape} (finite values expected) for "
        f"{theta.shape[0]} packed parameters.",
    )
    numeric = _finite_difference_gradient(objective, theta)
    error = np.max(np.abs(analytic - numeric), initial=0.0)
    size = max(np.max(np.abs(numeric), initial=0.0), 1.0)
    worst = int(np.argmax(np.abs(analytic - numeric))) if theta.size else 0
    _require(
        error <= GRADIENT_RTOL * size,
        piece,
        "gradient",
        f"the analytic gradient differs from central finite differences of "
        f"the objective by {error:.3g} (relative {error / size:.3g} > "
        f"{GRADIENT_RTOL:g}); worst at packed parameter {worst}: "
        f"{analytic[worst]:.6g} against {numeric[worst]:.6g}.",
    )


def _group_permutation(
    groups: NDArray[np.intp], rng: np.random.Generator
) -> NDArray[np.intp]:
    """A random permutation that keeps each expert within its group."""
    perm = np.arange(len(groups))
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        perm[members] = rng.permutation(members)
    if len(groups) > 1 and np.array_equal(perm, np.arange(len(groups))):
        members = np.flatnonzero(groups == groups[np.argmax(np.bincount(groups))])
        if len(members) > 1:
            perm[members] = np.roll(members, 1)
    return perm


def _soft_labels(
    log_g: NDArray[np.float64], rng: np.random.Generator
) -> NDArray[np.float64]:
    """Posterior-like soft labels: ``g`` times random densities, normalised.

    Zero exactly where a weight is zero (an expert a sparse gate leaves out).
    """
    weights = np.exp(log_g) * rng.uniform(0.1, 1.0, size=log_g.shape)
    return weights / weights.sum(axis=1, keepdims=True)


def _soft_label_objective(resp: NDArray, log_values: NDArray) -> float:
    """``sum r log v`` over the entries with ``r > 0`` (``0 log 0 = 0``)."""
    used = resp > 0
    return float(np.sum(resp[used] * log_values[used]))


def _observed(log_g: NDArray, log_f: NDArray) -> float:
    joint = log_g + log_f
    top = np.max(joint, axis=1)
    return float(np.sum(top + np.log(np.sum(np.exp(joint - top[:, None]), axis=1))))


def _check_sizes(piece: object, n_experts: int, n_samples: int, n_features: int):
    """Raise ``ValueError`` for sizes at which the rules say nothing."""
    least = 2 + (piece.n_shared if isinstance(piece, _COMPOSITES) else 0)
    if n_experts < least:
        raise ValueError(
            f"n_experts must be at least {least} to check {type(piece).__name__} "
            f"(two routed experts); got {n_experts}."
        )
    if n_samples < 10 or n_features < 1:
        raise ValueError(
            "n_samples must be at least 10 and n_features at least 1; got "
            f"{n_samples} and {n_features}."
        )


# -- gates ---------------------------------------------------------------------
def check_gate(
    gate: Any,
    n_experts: int = 3,
    random_state: Any = 0,
    *,
    n_samples: int = 200,
    n_features: int = 2,
) -> None:
    """Check that a gate keeps every rule the fitting engines rely on.

    Runs the rules listed in :mod:`moestat.utils` on covariates drawn
    uniformly on ``[-1, 1]^n_features``, at random parameters.

    Parameters
    ----------
    gate : object
        The gate to check (any object; one written by the user included).
    n_experts : int, default=3
        Number of experts ``m`` it routes to (shared ones included).
    random_state : None, int or numpy Generator, default=0
        Source of the covariates and parameters.
    n_samples : int, default=200
        Number of simulated covariate rows.
    n_features : int, default=2
        Number of covariates.

    Raises
    ------
    ConformanceError
        An ``AssertionError`` naming the first rule the gate breaks.
    ValueError
        If the gate cannot route to ``n_experts`` (its ``check_n_experts``
        says why), or the sizes are too small to check anything.

    Examples
    --------
    >>> from moestat import NormalizedSigmoidGate
    >>> from moestat.utils import check_gate
    >>> check_gate(NormalizedSigmoidGate(top_k=2))
    """
    _check_protocol(gate, Gate)
    rng = as_generator(random_state)
    m = n_experts
    _check_sizes(gate, m, n_samples, n_features)
    gate.check_n_experts(m, True)
    X = rng.uniform(-1.0, 1.0, size=(n_samples, n_features))
    Z = np.asarray(_call(gate, "design", "design", X), dtype=float)
    _require(
        Z.ndim == 2 and Z.shape[0] == n_samples and np.all(np.isfinite(Z)),
        gate,
        "design",
        f"design(X) must be a finite ({n_samples}, p) array; got shape {Z.shape}.",
    )
    p = Z.shape[1]
    names = _call(gate, "design", "design_names", [f"x{j}" for j in range(n_features)])
    _require(
        len(names) == p, gate, "design", f"design_names gives {len(names)} for {p}."
    )
    _require(
        isinstance(_call(gate, "design", "describe"), str),
        gate,
        "design",
        "describe must return a string.",
    )

    params, k = _check_gate_parameters(gate, m, p, Z, rng)
    log_g = _check_gate_weights(gate, params, Z, m)
    theta, bounds = _check_gate_packing(gate, params, m, p, Z, k, log_g, rng)

    params = gate.unpack(_perturbed(theta, bounds, rng), m, p)
    log_g = np.asarray(gate.log_weights(params, Z), dtype=float)
    resp = _soft_labels(log_g, rng)
    _check_gate_gradient(gate, params, Z, resp, log_g, m, p)
    _check_gate_m_step(gate, params, Z, resp, log_g, rng)
    _check_gate_permute(gate, params, Z, log_g, m, rng)
    if isinstance(gate, GateAtoms):
        _check_gate_atoms(gate, params, Z, log_g, m)
    _check_gate_sweep(gate, params, Z, m, rng)
    if isinstance(gate, BatchedGate) and gate.runs_batched:
        _check_gate_batches(gate, params, Z, log_g, m, rng)


def _check_gate_batches(gate, params, Z, log_g, m, rng):
    """The batch hooks, on a batch of two copies, are the gate's own hooks."""
    rule = "batch"
    n, p = Z.shape
    theta = np.asarray(gate.pack(params), dtype=float)
    thetas, Zs = np.stack([theta, theta]), np.stack([Z, Z])
    batched_log_g = _call(gate, rule, "batch_log_weights", thetas, Zs, m)
    _require(
        np.shape(batched_log_g) == (2, n, m)
        and _same_logs(np.asarray(batched_log_g[1], dtype=float), log_g, 1e-10, 1e-10),
        gate,
        rule,
        "batch_log_weights on a batch of copies differs from log_weights.",
    )
    log_f = np.log(rng.uniform(0.1, 1.0, size=log_g.shape))
    joint = log_g + log_f
    resp = np.exp(joint - np.max(joint, axis=1, keepdims=True))
    resp /= resp.sum(axis=1, keepdims=True)
    own, _ = _call(gate, rule, "m_step", params, Z, resp, log_g, None, log_f)
    stepped = _call(
        gate,
        rule,
        "batch_m_step",
        thetas,
        Zs,
        np.ones((2, n)),
        np.stack([resp, resp]),
        np.stack([log_g, log_g]),
        np.stack([log_f, log_f]),
        m,
    )
    _require(
        len(stepped) == 2
        and np.shape(stepped[0]) == thetas.shape
        and np.shape(stepped[1]) == (2, n, m),
        gate,
        rule,
        "batch_m_step must return packed parameters (B, P) and log g (B, n, m).",
    )
    batched = gate.unpack(np.asarray(stepped[0][1], dtype=float), m, p)
    batched_log_g = np.asarray(gate.log_weights(batched, Z), dtype=float)
    _require(
        _same_logs(np.asarray(stepped[1][1], dtype=float), batched_log_g, 1e-9, 1e-9),
        gate,
        rule,
        "the log weights batch_m_step returns are not those of its parameters.",
    )
    own_log_g = np.asarray(gate.log_weights(own, Z), dtype=float)
    slack = 1e-9 * (abs(_observed(log_g, log_f)) + n)
    for name, objective in (
        ("soft-label objective", lambda lg: _soft_label_objective(resp, lg)),
        ("observed log-likelihood", lambda lg: _observed(lg, log_f)),
    ):
        reached, target = objective(batched_log_g), objective(own_log_g)
        _require(
            reached >= target - slack,
            gate,
            rule,
            f"batch_m_step reaches the {name} {reached:.10g}; m_step from the "
            f"same parameters reaches {target:.10g}.",
        )


def _check_gate_parameters(gate, m, p, Z, rng):
    rule = "random_params"
    params = _call(gate, rule, "random_params", m, p, 1.0, rng)
    _call(gate, rule, "check_params", params, m, p)
    k = int(_call(gate, rule, "n_free_parameters", m, p))
    theta = np.asarray(_call(gate, rule, "pack", params), dtype=float)
    _require(
        theta.shape == (k,),
        gate,
        rule,
        f"random parameters pack to shape {theta.shape}; n_free_parameters says {k}.",
    )
    dof = int(_call(gate, rule, "degrees_of_freedom", m, p))
    _require(
        0 <= dof <= k,
        gate,
        rule,
        f"degrees_of_freedom is {dof}, outside [0, {k}].",
    )
    groups = np.asarray(_call(gate, rule, "expert_groups", m))
    _require(
        groups.shape == (m,) and np.issubdtype(groups.dtype, np.integer),
        gate,
        rule,
        f"expert_groups gives {groups!r}; expected {m} integers.",
    )
    resp = rng.dirichlet(np.ones(m), size=Z.shape[0])
    start = _call(gate, rule, "init_params", Z, resp)
    _call(gate, rule, "check_params", start, m, p)
    return params, k


def _check_gate_weights(gate, params, Z, m):
    rule = "log_weights"
    log_g = _call(gate, rule, "log_weights", params, Z)
    log_g = _check_array(gate, rule, "log_weights", log_g, (Z.shape[0], m))
    _check_log_values(gate, rule, "log_weights", log_g)
    totals = np.exp(log_g).sum(axis=1)
    worst = float(np.max(np.abs(totals - 1.0)))
    _require(
        worst <= 1e-10,
        gate,
        rule,
        f"the weights of a row sum to {totals[np.argmax(np.abs(totals - 1))]:.12g}, "
        "not one.",
    )
    return log_g


def _check_gate_packing(gate, params, m, p, Z, k, log_g, rng):
    theta = np.asarray(gate.pack(params), dtype=float)
    bounds = _check_packing(
        gate,
        theta,
        k,
        _call(gate, "pack_scales", "pack_scales", np.ones(p), m),
        _call(gate, "pack_bounds", "pack_bounds", m, p),
        _call(gate, "pack", "parameter_names", m, [f"z{j}" for j in range(p)]),
    )
    again = _call(gate, "pack", "unpack", theta, m, p)
    round_trip = np.asarray(gate.pack(again), dtype=float)
    _require(
        round_trip.shape == theta.shape
        and np.allclose(round_trip, theta, **_ROUND_TRIP),
        gate,
        "pack",
        "pack(unpack(theta)) is not theta.",
    )
    _require(
        _same_logs(np.asarray(gate.log_weights(again, Z)), log_g, **_ROUND_TRIP),
        gate,
        "pack",
        "unpack(pack(params)) has other weights than params: pack loses a parameter.",
    )
    moved = _perturbed(theta, bounds, rng)
    round_trip = np.asarray(gate.pack(gate.unpack(moved, m, p)), dtype=float)
    _require(
        np.allclose(round_trip, moved, **_ROUND_TRIP),
        gate,
        "pack",
        "pack(unpack(theta)) is not theta at other parameter values: unpack "
        "loses a parameter.",
    )
    return theta, bounds


def _check_gate_gradient(gate, params, Z, resp, log_g, m, p):
    theta = np.asarray(gate.pack(params), dtype=float)

    def objective(point):
        candidate = gate.unpack(point, m, p)
        values = np.asarray(gate.log_weights(candidate, Z), dtype=float)
        return _soft_label_objective(resp, values) - gate.penalty(candidate, Z)

    analytic = _call(gate, "gradient", "gradient", params, Z, resp, log_g)
    _check_gradient(gate, analytic, objective, theta)


def _check_gate_m_step(gate, params, Z, resp, log_g, rng):
    rule = "m_step"
    features = _call(gate, rule, "sufficient_features", Z)
    before = _soft_label_objective(resp, log_g) - gate.penalty(params, Z)
    new, new_log_g = _call(gate, rule, "m_step", params, Z, resp, log_g, features)
    new_log_g = np.asarray(new_log_g, dtype=float)
    _require(
        _same_logs(new_log_g, np.asarray(gate.log_weights(new, Z)), **_ROUND_TRIP),
        gate,
        rule,
        "the log weights m_step returns are not those of its parameters.",
    )
    after = _soft_label_objective(resp, new_log_g) - gate.penalty(new, Z)
    slack = 1e-9 * (abs(before) + Z.shape[0])
    _require(
        after >= before - slack,
        gate,
        rule,
        f"m_step decreases the soft-label objective from {before:.10g} to "
        f"{after:.10g}.",
    )
    # The experts' log densities in, the observed likelihood must not fall.
    log_f = np.log(rng.uniform(0.1, 1.0, size=log_g.shape))
    joint = log_g + log_f
    resp = np.exp(joint - np.max(joint, axis=1, keepdims=True))
    resp /= resp.sum(axis=1, keepdims=True)
    before = _observed(log_g, log_f) - gate.penalty(params, Z)
    new, new_log_g = _call(
        gate, rule, "m_step", params, Z, resp, log_g, features, log_f
    )
    after = _observed(np.asarray(new_log_g, dtype=float), log_f) - gate.penalty(new, Z)
    _require(
        after >= before - slack,
        gate,
        rule,
        f"m_step with the experts' log densities decreases the observed "
        f"log-likelihood from {before:.10g} to {after:.10g}.",
    )


def _check_gate_permute(gate, params, Z, log_g, m, rng):
    perm = _group_permutation(np.asarray(gate.expert_groups(m)), rng)
    moved = _call(gate, "permute", "permute", params, perm)
    _call(gate, "permute", "check_params", moved, m, Z.shape[1])
    _require(
        _same_logs(np.asarray(gate.log_weights(moved, Z)), log_g[:, perm], 1e-9, 1e-9),
        gate,
        "permute",
        f"log_weights(permute(params, {perm.tolist()})) is not "
        "log_weights(params)[:, perm].",
    )


def _check_gate_atoms(gate, params, Z, log_g, m):
    rule = "atoms"
    masses = _check_array(
        gate, rule, "voronoi_masses", _call(gate, rule, "voronoi_masses", params), (m,)
    )
    _require(
        np.all(np.isfinite(masses)) and np.all(masses > 0),
        gate,
        rule,
        "voronoi_masses must be finite and positive.",
    )
    kept = _call(gate, rule, "split_atoms", params, np.arange(m))
    _require(
        _same_logs(np.asarray(gate.log_weights(kept, Z)), log_g, 1e-9, 1e-9),
        gate,
        rule,
        "split_atoms keeping every expert once changes the weights.",
    )


# -- expert families -----------------------------------------------------------
def _candidate_responses(
    expert: Any, n: int, rng: np.random.Generator
) -> list[NDArray[np.float64]]:
    """Responses to start from: the declared family's first, then common ones."""
    family = expert.response_family if isinstance(expert, ExpertDeclarations) else None
    real = rng.normal(0.0, 1.0, size=n)
    counts = rng.poisson(2.0, size=n).astype(float)
    binary = rng.integers(0, 2, size=n).astype(float)
    candidates = {"gaussian": real, "poisson": counts, "bernoulli": binary}
    if isinstance(expert, MultinomialFamily):
        candidates["categorical"] = rng.integers(0, expert.n_classes, n).astype(float)
    first = [candidates.pop(family)] if family in candidates else []
    return first + list(candidates.values())


def _first_valid_response(expert: Any, n: int, rng: np.random.Generator) -> NDArray:
    for y in _candidate_responses(expert, n, rng):
        try:
            expert.check_response(y)
        except ValueError:
            continue
        return y
    raise ConformanceError(
        expert,
        "sample",
        "check_response refuses real, count and binary responses alike; "
        "declare response_family so the check can draw responses.",
    )


def check_expert_family(
    expert: Any,
    n_experts: int = 3,
    random_state: Any = 0,
    *,
    n_samples: int = 300,
    n_features: int = 2,
) -> None:
    """Check that an expert family keeps every rule the fitting engines rely on.

    Parameters come from the family's own M-step on random soft labels:
    first of simple responses in its support (those of its declared
    ``response_family``, else the first of real, count and binary responses
    that ``check_response`` accepts), then of responses the family samples
    from those parameters. The rules listed in :mod:`moestat.utils` are run
    on the sampled data.

    Parameters
    ----------
    expert : object
        The expert family to check (one written by the user included).
    n_experts : int, default=3
        Number of experts ``m`` (shared ones included).
    random_state : None, int or numpy Generator, default=0
        Source of the data and the soft labels.
    n_samples : int, default=300
        Number of simulated samples.
    n_features : int, default=2
        Number of covariates.

    Raises
    ------
    ConformanceError
        An ``AssertionError`` naming the first rule the family breaks.
    ValueError
        If the sizes are too small to check anything.

    Examples
    --------
    >>> from moestat import GLMExpert
    >>> from moestat.utils import check_expert_family
    >>> check_expert_family(GLMExpert("poisson"))
    """
    _check_protocol(expert, ExpertFamily)
    rng = as_generator(random_state)
    m, n = n_experts, n_samples
    _check_sizes(expert, m, n_samples, n_features)
    X = rng.uniform(-1.0, 1.0, size=(n, n_features))
    Phi = np.asarray(_call(expert, "design", "design", X), dtype=float)
    _require(
        Phi.ndim == 2 and Phi.shape[0] == n and np.all(np.isfinite(Phi)),
        expert,
        "design",
        f"design(X) must be a finite ({n}, p) array; got shape {Phi.shape}.",
    )
    p = Phi.shape[1]
    names = _call(
        expert, "design", "design_names", [f"x{j}" for j in range(n_features)]
    )
    _require(
        len(names) == p, expert, "design", f"design_names gives {len(names)} for {p}."
    )

    y, params, var_floor = _expert_data(expert, Phi, m, rng)
    log_f = _check_expert_density(expert, params, Phi, y, m)
    theta, bounds = _check_expert_packing(expert, params, Phi, y, m, var_floor, log_f)
    params = expert.unpack(_perturbed(theta, bounds, rng, 0.1), m, p, var_floor)
    log_f = np.asarray(expert.log_density(params, Phi, y), dtype=float)
    resp = rng.dirichlet(np.ones(m), size=n)
    _check_expert_gradient(expert, params, Phi, y, resp, m, var_floor)
    _check_expert_m_step(expert, params, Phi, y, resp, var_floor)
    _check_expert_permute(expert, params, Phi, y, log_f, m, rng)
    _check_expert_capabilities(expert, params, Phi, y, log_f, m)
    _check_expert_sweep(expert, params, Phi, y, m, var_floor, rng)
    if isinstance(expert, BatchedExpertFamily) and expert.runs_batched:
        _check_expert_batches(expert, params, Phi, y, resp, m, var_floor)


def _check_expert_batches(expert, params, Phi, y, resp, m, floor):
    """The batch hooks, on a batch of two copies, are the family's own hooks."""
    rule = "batch"
    theta = np.asarray(expert.pack(params, floor), dtype=float)
    thetas, Phis, ys = np.stack([theta, theta]), np.stack([Phi, Phi]), np.stack([y, y])
    floors = np.full(2, floor)
    log_f = _call(expert, rule, "batch_log_density", thetas, Phis, ys, floors, m)
    own = np.asarray(expert.log_density(params, Phi, y), dtype=float)
    _require(
        np.shape(log_f) == (2, *own.shape)
        and _same_logs(np.asarray(log_f[1]), own, 1e-10, 1e-10),
        expert,
        rule,
        "batch_log_density on a batch of copies differs from log_density.",
    )
    stepped = _call(
        expert,
        rule,
        "batch_m_step",
        thetas,
        Phis,
        ys,
        np.stack([resp, resp]),
        floors,
        m,
    )
    new = expert.m_step(Phi, y, resp, floor, previous=params)
    objective = float(np.sum(resp * expert.log_density(new, Phi, y)))
    p = Phi.shape[1]
    batched = expert.unpack(np.asarray(stepped[1]), m, p, floor)
    batched_objective = float(np.sum(resp * expert.log_density(batched, Phi, y)))
    _require(
        np.shape(stepped) == thetas.shape
        and np.isclose(batched_objective, objective, rtol=1e-8, atol=1e-10),
        expert,
        rule,
        f"batch_m_step reaches sum r log f = {batched_objective!r}; m_step from "
        f"the same parameters reaches {objective!r}.",
    )


def _expert_data(expert, Phi, m, rng):
    rule = "random_params"
    n, p = Phi.shape
    start = _first_valid_response(expert, n, rng)
    floor = float(_call(expert, rule, "variance_floor", start, 1e-3))
    resp = rng.dirichlet(np.ones(m), size=n)
    params = _call(expert, rule, "m_step", Phi, start, resp, floor)
    _call(expert, rule, "check_params", params, m, p)
    labels = rng.integers(0, m, size=n)
    y = _call(expert, "sample", "sample", params, Phi, labels, rng)
    y = _check_array(expert, "sample", "sample", y, (n,))
    _call(expert, "sample", "check_response", y)
    floor = float(_call(expert, rule, "variance_floor", y, 1e-3))
    resp = rng.dirichlet(np.ones(m), size=n)
    params = _call(expert, rule, "m_step", Phi, y, resp, floor)
    _call(expert, rule, "check_params", params, m, p)
    at_floor = np.asarray(_call(expert, rule, "at_variance_floor", params, floor))
    _require(
        at_floor.ndim == 1 and np.all((at_floor >= 0) & (at_floor < m)),
        expert,
        rule,
        f"at_variance_floor gives {at_floor!r}; expected expert indices.",
    )
    return y, params, floor


def _check_expert_density(expert, params, Phi, y, m):
    rule = "log_density"
    n = Phi.shape[0]
    log_f = _check_array(
        expert,
        rule,
        "log_density",
        _call(expert, rule, "log_density", params, Phi, y),
        (n, m),
    )
    _check_log_values(expert, rule, "log_density", log_f)
    means = _check_array(
        expert, rule, "mean", _call(expert, rule, "mean", params, Phi), (n, m)
    )
    _require(not np.any(np.isnan(means)), expert, rule, "mean has NaN entries.")
    return log_f


def _check_expert_packing(expert, params, Phi, y, m, floor, log_f):
    p = Phi.shape[1]
    k = int(_call(expert, "pack", "n_free_parameters", m, p))
    theta = np.asarray(_call(expert, "pack", "pack", params, floor), dtype=float)
    bounds = _check_packing(
        expert,
        theta,
        k,
        _call(expert, "pack_scales", "pack_scales", np.ones(p), m),
        _call(expert, "pack_bounds", "pack_bounds", m, p),
        _call(expert, "pack", "parameter_names", m, [f"z{j}" for j in range(p)]),
    )
    values, jacobian = _call(expert, "pack", "natural", theta, m, floor)
    _require(
        np.shape(values) == (k,) and np.shape(jacobian) == (k,),
        expert,
        "pack",
        f"natural gives shapes {np.shape(values)} and {np.shape(jacobian)}; "
        f"expected ({k},) each.",
    )
    again = _call(expert, "pack", "unpack", theta, m, p, floor)
    round_trip = np.asarray(expert.pack(again, floor), dtype=float)
    _require(
        round_trip.shape == theta.shape
        and np.allclose(round_trip, theta, **_ROUND_TRIP),
        expert,
        "pack",
        "pack(unpack(theta)) is not theta.",
    )
    _require(
        _same_logs(np.asarray(expert.log_density(again, Phi, y)), log_f, **_ROUND_TRIP),
        expert,
        "pack",
        "unpack(pack(params)) has other densities than params: pack loses a parameter.",
    )
    moved = _perturbed(theta, bounds, np.random.default_rng(1))
    round_trip = np.asarray(expert.pack(expert.unpack(moved, m, p, floor), floor))
    _require(
        np.allclose(round_trip, moved, **_ROUND_TRIP),
        expert,
        "pack",
        "pack(unpack(theta)) is not theta at other parameter values: unpack "
        "loses a parameter.",
    )
    return theta, bounds


def _check_expert_gradient(expert, params, Phi, y, resp, m, floor):
    p = Phi.shape[1]
    theta = np.asarray(expert.pack(params, floor), dtype=float)

    def objective(point):
        candidate = expert.unpack(point, m, p, floor)
        values = np.asarray(expert.log_density(candidate, Phi, y), dtype=float)
        return _soft_label_objective(resp, values) - expert.penalty(candidate, Phi)

    analytic = _call(expert, "gradient", "gradient", params, Phi, y, resp, floor)
    _check_gradient(expert, analytic, objective, theta)


def _check_expert_m_step(expert, params, Phi, y, resp, floor):
    rule = "m_step"

    def objective(values):
        log_f = np.asarray(expert.log_density(values, Phi, y), dtype=float)
        return _soft_label_objective(resp, log_f) - expert.penalty(values, Phi)

    features = _call(expert, rule, "sufficient_features", Phi, y)
    before = objective(params)
    new = _call(expert, rule, "m_step", Phi, y, resp, floor, params, features)
    after = objective(new)
    _require(
        after >= before - 1e-9 * (abs(before) + Phi.shape[0]),
        expert,
        rule,
        f"m_step decreases the soft-label objective from {before:.10g} to "
        f"{after:.10g}.",
    )


def _check_expert_permute(expert, params, Phi, y, log_f, m, rng):
    groups = np.zeros(m, dtype=np.intp)
    if isinstance(expert, CompositeExpertFamily):
        groups[expert.n_shared :] = 1
    perm = _group_permutation(groups, rng)
    moved = _call(expert, "permute", "permute", params, perm)
    _call(expert, "permute", "check_params", moved, m, Phi.shape[1])
    _require(
        _same_logs(
            np.asarray(expert.log_density(moved, Phi, y)), log_f[:, perm], 1e-9, 1e-9
        )
        and np.allclose(
            expert.mean(moved, Phi), expert.mean(params, Phi)[:, perm], 1e-9, 1e-9
        ),
        expert,
        "permute",
        f"log_density(permute(params, {perm.tolist()})) is not "
        "log_density(params)[:, perm].",
    )


def _check_expert_capabilities(expert, params, Phi, y, log_f, m):
    n, p = Phi.shape
    if isinstance(expert, ExpertAtoms):
        atoms = np.asarray(_call(expert, "atoms", "atoms", params))
        _require(
            atoms.ndim == 2 and atoms.shape[0] == m,
            expert,
            "atoms",
            f"atoms gives shape {atoms.shape}; expected ({m}, q).",
        )
        kept = _call(expert, "atoms", "split_atoms", params, np.arange(m))
        _require(
            _same_logs(np.asarray(expert.log_density(kept, Phi, y)), log_f, 1e-9, 1e-9),
            expert,
            "atoms",
            "split_atoms keeping every expert once changes the densities.",
        )
        blocks = _call(expert, "atoms", "atom_blocks", params)
        _require(
            len(blocks) == m,
            expert,
            "atoms",
            f"atom_blocks gives {len(blocks)} blocks for {m} experts.",
        )
    if isinstance(expert, HasLogMean):
        log_mean = np.asarray(_call(expert, "log_mean", "log_mean", params, Phi))
        _require(
            log_mean.shape == (n, m)
            and np.allclose(np.exp(log_mean), expert.mean(params, Phi), 1e-9, 1e-12),
            expert,
            "log_mean",
            "exp(log_mean) is not mean.",
        )
    if isinstance(expert, HasClassProbabilities):
        probs = np.asarray(
            _call(expert, "class_probabilities", "class_probabilities", params, Phi)
        )
        _require(
            probs.ndim == 3
            and probs.shape[:2] == (n, m)
            and np.all(probs >= 0)
            and np.allclose(probs.sum(axis=2), 1.0, rtol=0, atol=1e-10),
            expert,
            "class_probabilities",
            f"class_probabilities gives shape {probs.shape}; expected (n, m, K) "
            "probabilities summing to one over the classes.",
        )
    if isinstance(expert, CountsDegreesOfFreedom):
        dof = int(_call(expert, "degrees_of_freedom", "degrees_of_freedom", m, p))
        k = int(expert.n_free_parameters(m, p))
        _require(
            0 <= dof <= k,
            expert,
            "degrees_of_freedom",
            f"degrees_of_freedom is {dof}, outside [0, {k}].",
        )


# -- the sweep kernels -------------------------------------------------------------
def _declared_kernel(piece: Any, read: Any) -> str | None:
    """The sweep kernel ``piece`` declares; an unknown name breaks rule ``sweep``."""
    try:
        return read(piece)
    except ValueError as error:
        raise ConformanceError(piece, "sweep", str(error)) from None


def _close(a: Any, b: Any) -> bool:
    """Equal to :data:`SWEEP_RTOL`, relative to the larger entry of ``b``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    return a.shape == b.shape and np.allclose(a, b, rtol=0.0, atol=SWEEP_RTOL * scale)


def _full_path(log_g: NDArray, log_f: NDArray) -> tuple[float, NDArray]:
    """The log-likelihood and the responsibilities from whole (n, m) arrays."""
    joint = log_g + log_f
    top = np.max(joint, axis=1, keepdims=True)
    per_sample = top[:, 0] + np.log(np.sum(np.exp(joint - top), axis=1))
    return float(per_sample.sum()), np.exp(joint - per_sample[:, None])


def _sweep(Z, Phi, y, m, kernel, gate_coef, expert_params):
    """The sums of a sweep over three or four chunks (the information at every row)."""
    sweep = NumpySweep(
        Z, Phi, y, None, m, max(1, Z.shape[0] // 3), stride=1, gate=kernel
    )
    return sweep(gate_coef, expert_params.coef, expert_params.var)


def _check_gate_sweep(gate, params, Z, m, rng):
    """A declared sweep kernel gives the gate's log-likelihood, gradient and M-step."""
    rule = "sweep"
    kernel = _declared_kernel(gate, _sweep_gate)
    if kernel is None:
        return
    n, p = Z.shape
    coef = getattr(params, "coef", None)
    _require(
        coef is not None and np.shape(coef) == (m, p),
        gate,
        rule,
        f"a gate declaring sweep_kernel={kernel!r} takes GateParams whose coef "
        f"is ({m}, {p}); its parameters are {type(params).__name__}.",
    )
    coef = np.array(coef, dtype=float)
    rows = kernel_rows(kernel, m)
    _require(
        _close(_call(gate, rule, "pack", params), coef[rows].ravel()),
        gate,
        rule,
        f"pack must give the rows {rows.tolist()} of coef row by row, as the "
        f"{kernel!r} kernel reads them.",
    )
    log_g = np.asarray(_call(gate, rule, "log_weights", GateParams(coef), Z), float)
    # Gaussian experts on data drawn from the model
    Phi = np.column_stack([np.ones(n), rng.uniform(-1.0, 1.0, n)])
    expert = GaussianExpert()
    experts = GaussianExpertParams(rng.normal(0.0, 1.0, (m, 2)), rng.uniform(0.2, 1, m))
    cumulative = np.cumsum(np.exp(log_g), axis=1)
    labels = np.minimum((rng.uniform(size=(n, 1)) > cumulative).sum(axis=1), m - 1)
    y = expert.sample(experts, Phi, labels, rng)
    log_likelihood, resp = _full_path(log_g, expert.log_density(experts, Phi, y))
    stats = _sweep(Z, Phi, y, m, kernel, coef, experts)
    swept = float(stats.log_likelihood)
    _require(
        _close(swept, log_likelihood),
        gate,
        rule,
        f"the {kernel!r} sweep gives the log-likelihood {swept:.12g}; log_weights "
        f"gives {log_likelihood:.12g}. The gate's weights are not the kernel's: "
        "declare the kernel that computes them, or sweep_kernel = None.",
    )
    grad = _call(gate, rule, "gradient", GateParams(coef), Z, resp, log_g)
    _require(
        _close(stats.gate_gradient, grad),
        gate,
        rule,
        f"the {kernel!r} sweep's gate gradient is not the gate's gradient.",
    )
    features = _call(gate, rule, "sufficient_features", Z)
    own, _ = _call(gate, rule, "m_step", GateParams(coef), Z, resp, log_g, features)
    stepped = _gate_step_from_sums(gate, kernel, coef, Z, resp, stats)
    _require(
        _close(getattr(own, "coef", np.nan), stepped),
        gate,
        rule,
        f"Fisher scoring on the {kernel!r} sweep's sums moves the gate to a "
        "point other than m_step's.",
    )


def _gate_step_from_sums(gate, kernel, coef, Z, resp, stats):
    """The gate's M-step, its Fisher steps taken from a sweep's sums.

    The first step from the sweep's gradient and information at ``resp``;
    further ones (the gate's ``newton_steps``) from the soft-label sums at
    the new point; each halved until ``sum r log g`` does not fall and
    clipped into the gate's box, as :class:`moestat.protocols.SweepGate`
    describes the M-step.
    """
    n, m = resp.shape
    rows, bound = kernel_rows(kernel, m), gate_bound(gate)
    labels = np.ascontiguousarray(resp.T)

    def sums(point):
        flat = soft_label_statistics(Z, labels, point, kernel)
        return unflatten_soft_label(flat, m, Z.shape[1], kernel)

    objective = sums(coef)[0]
    grad, information = stats.gate_gradient, stats.gate_information
    for index in range(int(getattr(gate, "newton_steps", 1))):
        if index:
            _, grad, information = sums(coef)
        grad, information = hold_at_box(grad, information, coef[rows].ravel(), bound)
        free = solve_spd(information, grad, ridge=1e-9)
        if not float(grad @ free) > 1e-14 * n:
            break
        direction = np.zeros_like(coef)
        direction[rows] = free.reshape(len(rows), -1)
        step = 1.0
        for _ in range(gate_halvings(gate)):
            candidate = clip_to_box(coef + step * direction, bound)
            value = sums(candidate)[0]
            if value >= objective:
                coef, objective = candidate, value
                break
            step *= 0.5
        else:
            break
    return coef


def _check_expert_sweep(expert, params, Phi, y, m, floor, rng):
    """A declared sweep kernel gives the family's log-likelihood and M-step."""
    rule = "sweep"
    kernel = _declared_kernel(expert, _sweep_experts)
    if kernel is None:
        return
    n, p = Phi.shape
    coef, var = getattr(params, "coef", None), getattr(params, "var", None)
    _require(
        np.shape(coef) == (m, p) and np.shape(var) == (m,),
        expert,
        rule,
        f"a family declaring sweep_kernel={kernel!r} takes GaussianExpertParams "
        f"with coef ({m}, {p}) and var ({m},); its parameters are "
        f"{type(params).__name__}.",
    )
    experts = GaussianExpertParams(np.array(coef, float), np.array(var, float))
    Z = np.column_stack([np.ones(n), rng.uniform(-1.0, 1.0, n)])
    gate_coef = rng.normal(0.0, 1.0, (m, 2))
    gate_coef[0] = 0.0
    log_g = SoftmaxGate().log_weights(GateParams(gate_coef), Z)
    log_f = np.asarray(_call(expert, rule, "log_density", experts, Phi, y), float)
    log_likelihood, resp = _full_path(log_g, log_f)
    stats = _sweep(Z, Phi, y, m, "softmax", gate_coef, experts)
    swept = float(stats.log_likelihood)
    _require(
        _close(swept, log_likelihood),
        expert,
        rule,
        f"the {kernel!r} sweep gives the log-likelihood {swept:.12g}; log_density "
        f"gives {log_likelihood:.12g}. The family's densities are not the "
        "kernel's: declare the kernel that computes them, or sweep_kernel = None.",
    )
    kind = variance_kind(expert)
    _require(
        kind in ("per_expert", "shared", "known"),
        expert,
        rule,
        f"variance_kind must be 'per_expert', 'shared' or 'known'; got {kind!r}.",
    )
    features = _call(expert, rule, "sufficient_features", Phi, y)
    own = _call(expert, rule, "m_step", Phi, y, resp, floor, experts, features)
    stepped = gaussian_expert_step(stats, experts.coef, experts.var, floor, n, kind)
    for name, value in zip(("coef", "var"), stepped, strict=True):
        _require(
            _close(getattr(own, name, np.nan), value),
            expert,
            rule,
            f"the M-step from the {kernel!r} sweep's sums gives other {name} than "
            f"m_step ({kind} variances).",
        )
