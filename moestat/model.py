"""A mixture of experts: a gate times an expert family, with parameters.

``MixtureOfExperts(gate, expert, params)`` is a complete conditional density

    p(y | x) = sum_i g_i(x; gate) f(y | x; expert_i).

The same object is the true model of a simulation and the result of a fit,
so the truth and the estimate share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from moestat._math import logsumexp_rows
from moestat._validation import as_generator
from moestat.boundary import column_spreads
from moestat.experts import GaussianExpertParams
from moestat.experts._base import expert_degrees_of_freedom
from moestat.gates import GateParams, SharedGateParams
from moestat.protocols import ExpertFamily, Gate, HasClassProbabilities, HasLogMean

__all__ = ["MoEParams", "Design", "MixtureOfExperts"]


@dataclass(frozen=True)
class MoEParams:
    """Parameters of a mixture of experts: the gate's and the experts'.

    Parameters
    ----------
    gate : GateParams or SharedGateParams
        Gate parameters.
    expert : GaussianExpertParams, GLMExpertParams or MultinomialExpertParams
        Expert parameters, one row per expert.
    """

    gate: GateParams | SharedGateParams
    expert: GaussianExpertParams | Any

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return self.gate.n_experts


@dataclass(frozen=True)
class Design:
    """The two design matrices a model works on, built once per data set.

    Parameters
    ----------
    gate : ndarray of shape (n, p_gate)
        The gate's design (``[1, x]`` for an affine gate).
    expert : ndarray of shape (n, p_expert)
        The experts' basis (``[1, x, x^2, ...]`` for polynomial experts).
    """

    gate: NDArray[np.float64]
    expert: NDArray[np.float64]

    @property
    def n_samples(self) -> int:
        """Number of rows."""
        return self.gate.shape[0]

    @cached_property
    def gate_spreads(self) -> NDArray[np.float64]:
        """Standard deviation of each gate design column (0 if constant).

        Computed once per design: the parameter scales, the boundary checks
        inside EM's loop and the ridge penalty all read it.
        """
        return column_spreads(self.gate)

    @cached_property
    def expert_spreads(self) -> NDArray[np.float64]:
        """Standard deviation of each expert design column (0 if constant)."""
        return column_spreads(self.expert)


def shared_design(gate: NDArray[np.float64], expert: NDArray[np.float64]) -> Design:
    """The designs, held once when they are the same numbers.

    An affine gate ``[1, x]`` with linear experts ``[1, x]`` has two equal
    designs; the Design then holds one array for both, so the data's
    design costs its memory once.

    Parameters
    ----------
    gate, expert : ndarray
        The gate's and the experts' designs.

    Returns
    -------
    Design
        ``Design(gate, gate)`` when the two are equal, else ``Design(gate, expert)``.
    """
    if gate.shape == expert.shape and np.array_equal(gate, expert):
        return Design(gate, gate)
    return Design(gate, expert)


def _columns(X: NDArray[np.float64], features: tuple[int, ...] | None) -> NDArray:
    """The columns ``features`` of ``X`` (every column for None)."""
    return X if features is None else X[:, list(features)]


# -- pure functions on designs (the fitting engines' hot path) ---------------
def log_joint(
    gate: Gate, expert: ExpertFamily, params: MoEParams, design: Design, y: NDArray
) -> NDArray[np.float64]:
    """``log g_i(x_t) + log f(y_t | x_t; theta_i)`` of shape (n, m)."""
    return gate.log_weights(params.gate, design.gate) + expert.log_density(
        params.expert, design.expert, y
    )


def _mean_from_logs(
    log_weights: NDArray[np.float64], log_means: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``sum_i g_i mu_i`` from ``log g_i`` and ``log mu_i``, shape (n,).

    Summed in log space, so that an expert whose mean overflows where its
    weight underflows adds nothing (never ``0 * inf``); an expert of zero
    weight is left out whatever its mean. The result is ``+inf`` only where
    its logarithm exceeds the float range (about 709.78).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        terms = np.where(np.isneginf(log_weights), -np.inf, log_weights + log_means)
        return np.exp(logsumexp(terms, axis=1))


def responsibilities_from_log_joint(
    log_joint_values: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """E-step: posterior responsibilities and per-sample log-likelihoods."""
    log_lik = logsumexp_rows(log_joint_values)
    shifted = log_joint_values - log_lik[:, None]
    # exp() of values that underflow takes a slow path in numpy: below e^-700
    # a responsibility is kept at ~1e-304 instead of an exact or subnormal 0.
    np.maximum(shifted, -700.0, out=shifted)
    return np.exp(shifted, out=shifted), log_lik


@dataclass(frozen=True)
class MixtureOfExperts:
    """A gate times an expert family, optionally with parameter values.

    Parameters
    ----------
    gate : gate object
        For example :class:`moestat.SoftmaxGate`.
    expert : expert family
        For example :class:`moestat.GaussianExpert`.
    params : MoEParams, optional
        Parameter values; without them the object is a model *specification*
        (what the fitting engines start from).
    gate_features, expert_features : tuple of int, optional
        The columns of ``X`` the gate's design and the experts' basis are
        built from (the gate's *concomitant* variables and the experts'
        covariates, as in flexmix); None: every column.

    Examples
    --------
    >>> import numpy as np
    >>> from moestat import MixtureOfExperts, SoftmaxGate, GaussianExpert
    >>> from moestat import MoEParams, GateParams, GaussianExpertParams
    >>> params = MoEParams(
    ...     GateParams(np.array([[0.0, 0.0], [0.0, 4.0]])),
    ...     GaussianExpertParams(np.array([[1.0, 2.0], [-1.0, -2.0]]),
    ...                          np.array([0.1, 0.1])))
    >>> model = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    >>> X = np.linspace(-1, 1, 5)[:, None]
    >>> model.gate_weights(X).sum(axis=1)
    array([1., 1., 1., 1., 1.])
    """

    gate: Gate
    expert: ExpertFamily
    params: MoEParams | None = None
    gate_features: tuple[int, ...] | None = None
    expert_features: tuple[int, ...] | None = None

    # -- structure ---------------------------------------------------------
    @property
    def n_experts(self) -> int:
        """Number of experts ``m``."""
        return self._require_params().n_experts

    def design(self, X: ArrayLike) -> Design:
        """Build the gate's and the experts' design matrices from ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.

        Returns
        -------
        Design
            The gate's design (from the columns ``gate_features``) and the
            experts' basis (from ``expert_features``), one row per sample.
        """
        X = np.asarray(X, dtype=float)
        return shared_design(
            self.gate.design(_columns(X, self.gate_features)),
            self.expert.design(_columns(X, self.expert_features)),
        )

    def n_free_parameters(self, n_features: int, n_experts: int | None = None) -> int:
        """Number of free parameters (the identifiable parametrisation).

        Parameters
        ----------
        n_features : int
            Number of covariates ``d``.
        n_experts : int, optional
            Defaults to the number of experts in ``params``.

        Returns
        -------
        int
            The gate's degrees of freedom plus the experts'.
        """
        m = self.n_experts if n_experts is None else n_experts
        design = self.design(np.zeros((1, n_features)))
        return self.gate.degrees_of_freedom(
            m, design.gate.shape[1]
        ) + expert_degrees_of_freedom(self.expert, m, design.expert.shape[1])

    def with_params(self, params: MoEParams) -> MixtureOfExperts:
        """Return the same model with other parameter values.

        Parameters
        ----------
        params : MoEParams
            The new parameter values.

        Returns
        -------
        MixtureOfExperts
            A copy with the same gate and expert family.
        """
        return replace(self, params=params)

    def _require_params(self) -> MoEParams:
        if self.params is None:
            raise ValueError(
                "This MixtureOfExperts has no parameter values; pass params= "
                "or use a fitted model."
            )
        return self.params

    # -- the conditional density ------------------------------------------
    def gate_weights(self, X: ArrayLike) -> NDArray[np.float64]:
        """Gate weights ``g_i(x)``: the prior of each expert.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
            Each row sums to one.
        """
        params = self._require_params()
        return np.exp(self.gate.log_weights(params.gate, self.design(X).gate))

    def expert_means(self, X: ArrayLike) -> NDArray[np.float64]:
        """Each expert's conditional mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
            ``E_i[y | x]`` for each expert ``i`` (the expected class code
            for multinomial logistic experts).
        """
        params = self._require_params()
        return self.expert.mean(params.expert, self.design(X).expert)

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """Conditional mean ``E[y | x] = sum_i g_i(x) E_i[y | x]``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.

        Returns
        -------
        ndarray of shape (n_samples,)
            The mixture's conditional mean at each row of ``X``.

        Notes
        -----
        Experts with a ``log_mean`` (Poisson and Bernoulli) are mixed in log
        space, ``exp(logsumexp_i(log g_i + log mu_i))``: far from the data an
        expert the gate switches off cannot turn the mean into NaN through
        ``0 * inf``. A Poisson mean is ``+inf`` only where it exceeds the
        largest float (about 1.8e308).
        """
        params = self._require_params()
        design = self.design(X)
        log_weights = self.gate.log_weights(params.gate, design.gate)
        if isinstance(self.expert, HasLogMean):
            log_means = self.expert.log_mean(params.expert, design.expert)
            return _mean_from_logs(log_weights, log_means)
        means = self.expert.mean(params.expert, design.expert)
        return np.sum(np.exp(log_weights) * means, axis=1)

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Class probabilities ``sum_i g_i(x) p_i(c | x)``.

        For expert families over classes (multinomial logistic experts).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Each row sums to one.

        Raises
        ------
        ValueError
            If the expert family has no classes.
        """
        params = self._require_params()
        if not isinstance(self.expert, HasClassProbabilities):
            raise ValueError(
                f"{type(self.expert).__name__} has no classes; predict_proba "
                "needs multinomial logistic experts."
            )
        design = self.design(X)
        weights = np.exp(self.gate.log_weights(params.gate, design.gate))
        probs = self.expert.class_probabilities(params.expert, design.expert)
        return np.einsum("ti,tic->tc", weights, probs)

    def log_pdf(self, X: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Log conditional density ``log p(y_t | x_t)`` of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.
        y : array-like of shape (n_samples,)
            Responses (class codes for multinomial logistic experts).

        Returns
        -------
        ndarray of shape (n_samples,)
            ``log sum_i g_i(x_t) f(y_t | x_t; theta_i)``.
        """
        design = self.design(X)
        y = np.asarray(y, dtype=float)
        values = log_joint(self.gate, self.expert, self._require_params(), design, y)
        return logsumexp_rows(values)

    def responsibilities(self, X: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Posterior probability of each expert given ``(x, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.
        y : array-like of shape (n_samples,)
            Responses.

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
            The responsibilities ``r_ti``, proportional to
            ``g_i(x_t) f(y_t | x_t; theta_i)``; each row sums to one.
        """
        design = self.design(X)
        y = np.asarray(y, dtype=float)
        values = log_joint(self.gate, self.expert, self._require_params(), design, y)
        return responsibilities_from_log_joint(values)[0]

    def sample(
        self, X: ArrayLike, random_state: Any = None
    ) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
        """Draw ``y ~ p(y | x)`` at each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates.
        random_state : None, int or numpy Generator, default=None
            Source of randomness.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            The responses.
        labels : ndarray of shape (n_samples,)
            The expert that generated each response.
        """
        rng = as_generator(random_state)
        params = self._require_params()
        design = self.design(X)
        weights = np.exp(self.gate.log_weights(params.gate, design.gate))
        cumulative = np.cumsum(weights, axis=1)
        u = rng.random(design.n_samples) * cumulative[:, -1]
        labels = np.minimum((cumulative < u[:, None]).sum(axis=1), weights.shape[1] - 1)
        y = self.expert.sample(params.expert, design.expert, labels, rng)
        return y, labels

    # -- relabelling ---------------------------------------------------------
    def permute(self, perm: ArrayLike) -> MixtureOfExperts:
        """Return the model with its experts reordered by ``perm``.

        Every per-expert quantity moves together; the gate re-anchors its
        reference expert where its identifiability rule requires it.

        Parameters
        ----------
        perm : array-like of shape (n_experts,)
            Expert ``i`` of the result is expert ``perm[i]`` of this model.

        Returns
        -------
        MixtureOfExperts
            The same density with relabelled experts.
        """
        params = self._require_params()
        return self.with_params(
            MoEParams(
                self.gate.permute(params.gate, perm),
                self.expert.permute(params.expert, perm),
            )
        )

    def match_experts(self, reference: MixtureOfExperts) -> NDArray[np.intp]:
        """Permutation that best aligns these experts with ``reference``'s.

        Hungarian matching on the experts' parameter vectors (coefficients
        and variance), never across the gate's groups (shared experts match
        shared experts). ``self.permute(perm)`` then lists the experts in the
        reference's order.

        Parameters
        ----------
        reference : MixtureOfExperts
            A model with the same number of experts.

        Returns
        -------
        ndarray of shape (n_experts,)
            ``perm`` such that expert ``perm[i]`` of this model matches
            expert ``i`` of ``reference``.
        """
        if reference.n_experts != self.n_experts:
            raise ValueError(
                f"Cannot match {self.n_experts} experts to {reference.n_experts}."
            )
        ours = self.expert.atoms(self._require_params().expert)
        theirs = reference.expert.atoms(reference._require_params().expert)
        cost = np.linalg.norm(theirs[:, None, :] - ours[None, :, :], axis=2)
        groups = self.gate.expert_groups(self.n_experts)
        ref_groups = reference.gate.expert_groups(reference.n_experts)
        cost = np.where(ref_groups[:, None] == groups[None, :], cost, 1e300)
        rows, cols = linear_sum_assignment(cost)
        return cols[np.argsort(rows)]

    def align_to(self, reference: MixtureOfExperts) -> MixtureOfExperts:
        """Return the model with its experts in the reference's order.

        Parameters
        ----------
        reference : MixtureOfExperts
            A model with the same number of experts.

        Returns
        -------
        MixtureOfExperts
            ``self.permute(self.match_experts(reference))``.
        """
        return self.permute(self.match_experts(reference))
