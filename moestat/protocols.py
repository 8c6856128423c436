"""The contract between the fitting engines and the pieces of a model.

A mixture of experts is a gate times an expert family
(:mod:`moestat.gates`, :mod:`moestat.experts`). The engines (:mod:`moestat.fit`,
:mod:`moestat.model`, :mod:`moestat.inference`, :mod:`moestat.starts`) call
only the hooks declared here, so any object that has them, a gate or an
expert family written outside moestat included, can be fitted, given
standard errors and simulated from. The protocols are runtime checkable:
``isinstance(piece, Gate)`` tells whether every required hook is there
(names only; :func:`moestat.utils.check_gate` and
:func:`moestat.utils.check_expert_family` check what the hooks compute).

Shapes use ``n`` samples, ``m`` experts, ``p`` columns of a piece's design
and ``k`` packed free parameters. Arrays of shape ``(n, m)`` are best stored
experts-major (Fortran order): the E-step sums over the experts of each
sample.

Required hooks, by role
-----------------------
- gates: :class:`GateKernel` (design, ``log g``, M-step, gradient),
  :class:`GateParametrisation` (packing, counts, relabelling),
  :class:`GateNaming`; :class:`Gate` is all three.
- expert families: :class:`ExpertKernel`, :class:`ExpertParametrisation`,
  :class:`ExpertNaming`; :class:`ExpertFamily` is all three.

Optional capabilities
---------------------
Each is a protocol of its own; the engines test ``isinstance`` and fall
back to a documented default without it.

- :class:`GateAtoms`, :class:`AffineGate`, :class:`GateDeclarations`: the
  mixing measure of the Voronoi losses and the boundary diagnostics.
- :class:`ExpertAtoms`, :class:`ExpertDeclarations`: the experts' atoms.
- :class:`HasLogMean`, :class:`HasClassProbabilities`,
  :class:`CountsDegreesOfFreedom`, :class:`Penalised`,
  :class:`CompositeGate`, :class:`CompositeExpertFamily`,
  :class:`GLMFamily`, :class:`MultinomialFamily`.
- :class:`BatchedGate`, :class:`BatchedExpertFamily`: kernels on batches of
  data sets, in numpy or torch (the torch engine runs the pieces that have
  them).
- :class:`SweepGate`, :class:`SweepExpertFamily`: the sweep kernels
  (:mod:`moestat.kernels.sweep`) a piece declares; a model whose gate and
  experts both declare one is fitted on the chunked path of
  :func:`moestat.fit.em`, and a piece without the declaration on the full
  path.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "missing_members",
    "GateKernel",
    "GateParametrisation",
    "GateNaming",
    "Gate",
    "GateAtoms",
    "AffineGate",
    "GateDeclarations",
    "CompositeGate",
    "ExpertKernel",
    "ExpertParametrisation",
    "ExpertNaming",
    "ExpertFamily",
    "ExpertAtoms",
    "ExpertDeclarations",
    "CompositeExpertFamily",
    "BatchedExpertFamily",
    "BatchedGate",
    "SweepGate",
    "SweepExpertFamily",
    "HasLogMean",
    "HasClassProbabilities",
    "CountsDegreesOfFreedom",
    "Penalised",
    "GLMFamily",
    "MultinomialFamily",
    "protocol_members",
]


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The hooks and attributes an object needs to satisfy ``protocol``.

    Parameters
    ----------
    protocol : type
        One of the protocols of this module.

    Returns
    -------
    tuple of str
        The public methods and annotated attributes of ``protocol`` and of
        the protocols it extends, sorted.

    Examples
    --------
    >>> from moestat.protocols import Penalised, protocol_members
    >>> protocol_members(Penalised)
    ('alpha',)
    """
    names = set()
    for klass in protocol.__mro__:
        if klass.__module__ != __name__:
            continue
        names.update(vars(klass).get("__annotations__", {}))
        names.update(vars(klass))
    return tuple(sorted(name for name in names if not name.startswith("_")))


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks, sorted.

    Parameters
    ----------
    obj : object
        A gate, an expert family or any candidate.
    protocol : type
        One of the protocols of this module.

    Returns
    -------
    list of str
        Empty when ``obj`` satisfies ``protocol``.

    Examples
    --------
    >>> from moestat.protocols import Penalised, missing_members
    >>> missing_members(object(), Penalised)
    ['alpha']
    """
    return [name for name in protocol_members(protocol) if not hasattr(obj, name)]


_MEMBERS: dict[type, tuple[str, ...]] = {}


class _ProtocolMembers(type(Protocol)):
    """Runtime protocol checks that list a protocol's members once.

    ``isinstance(obj, protocol)`` is ``hasattr(obj, name)`` for every member
    (the rule of ``typing`` since Python 3.12); the members are listed at the
    first check rather than at every one, so that the engines can ask for a
    capability inside their loops.
    """

    def __instancecheck__(cls, instance: object) -> bool:
        members = _MEMBERS.get(cls)
        if members is None:
            members = _MEMBERS[cls] = protocol_members(cls)
        return all(hasattr(instance, name) for name in members)


# -- gates ---------------------------------------------------------------------
@runtime_checkable
class GateKernel(Protocol, metaclass=_ProtocolMembers):
    """What EM and direct maximum likelihood compute with a gate.

    Parameters are an immutable container of the gate's own (for example
    :class:`~moestat.gates.GateParams`); the engines never look inside it.
    """

    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The gate's design ``Z`` built from the covariates.

        Parameters
        ----------
        X : ndarray of shape (n, d)
            Covariates.

        Returns
        -------
        ndarray of shape (n, p)
            Built once per data set; every other hook receives it.
        """
        ...

    def log_weights(self, params: Any, Z: NDArray[np.float64]) -> NDArray[np.float64]:
        """Log gate weights ``log g_i(x_t)``.

        Parameters
        ----------
        params : gate parameters
        Z : ndarray of shape (n, p)
            The gate's design.

        Returns
        -------
        ndarray of shape (n, m)
            Every row's weights sum to one (``-inf`` for an expert a sparse
            gate leaves out).
        """
        ...

    def sufficient_features(self, Z: NDArray[np.float64]) -> Any:
        """Per-sample quantities every M-step reuses, computed once per fit.

        Parameters
        ----------
        Z : ndarray of shape (n, p)
            The gate's design.

        Returns
        -------
        object
            Passed back unchanged as ``features`` to :meth:`m_step` (None
            when the gate has nothing to precompute).
        """
        ...

    def init_params(self, Z: NDArray[np.float64], resp: NDArray[np.float64]) -> Any:
        """Parameters fitted to soft labels from a neutral start.

        Parameters
        ----------
        Z : ndarray of shape (n, p)
            The gate's design.
        resp : ndarray of shape (n, m)
            Soft labels of a starting partition (rows sum to one).

        Returns
        -------
        gate parameters
            The starting gate of a fit.
        """
        ...

    def m_step(
        self,
        params: Any,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64] | None = None,
        features: Any = None,
        log_f: NDArray[np.float64] | None = None,
        log_background: NDArray[np.float64] | None = None,
    ) -> tuple[Any, NDArray[np.float64]]:
        """The gate's step of (generalised) EM.

        Parameters
        ----------
        params : gate parameters
            The current parameters.
        Z : ndarray of shape (n, p)
            The gate's design.
        resp : ndarray of shape (n, m)
            Responsibilities ``r`` (rows may sum to less than one when a
            composite gate passes on part of them).
        log_weights : ndarray of shape (n, m), optional
            ``log g`` at ``params`` when already known.
        features : object, optional
            :meth:`sufficient_features` of ``Z``.
        log_f : ndarray of shape (n, m), optional
            The experts' log densities at their new parameters (an ECME step
            may judge its candidates by the observed likelihood).
        log_background : ndarray of shape (n,), optional
            Log density of components outside this gate, used with ``log_f``.

        Returns
        -------
        params : gate parameters
            Parameters whose objective ``sum r log g`` (minus
            :meth:`penalty`) is not below the start's, so that EM never
            decreases the likelihood.
        log_weights : ndarray of shape (n, m)
            ``log g`` at the returned parameters.
        """
        ...

    def gradient(
        self,
        params: Any,
        Z: NDArray[np.float64],
        resp: NDArray[np.float64],
        log_weights: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """Gradient of ``sum_t sum_i r_ti log g_i(x_t)`` minus :meth:`penalty`.

        By Fisher's identity, with the posterior responsibilities this is the
        gradient of the observed log-likelihood in the gate's parameters,
        which direct MLE follows and whose finite differences give the
        observed information of :mod:`moestat.inference`.

        Parameters
        ----------
        params : gate parameters
        Z : ndarray of shape (n, p)
            The gate's design.
        resp : ndarray of shape (n, m)
            Soft labels.
        log_weights : ndarray of shape (n, m)
            ``log g`` at ``params``.

        Returns
        -------
        ndarray of shape (k,)
            In the order of :meth:`GateParametrisation.pack`.
        """
        ...

    def penalty(self, params: Any, Z: NDArray[np.float64]) -> float:
        """The penalty every fitting step subtracts from the objective.

        Parameters
        ----------
        params : gate parameters
        Z : ndarray of shape (n, p)
            The gate's design.

        Returns
        -------
        float
            0.0 for an unpenalised gate.
        """
        ...


@runtime_checkable
class GateParametrisation(Protocol, metaclass=_ProtocolMembers):
    """The gate's free parameters as the optimiser and the inference see them."""

    def pack(self, params: Any) -> NDArray[np.float64]:
        """The free parameters as a flat vector.

        Parameters
        ----------
        params : gate parameters

        Returns
        -------
        ndarray of shape (k,)
        """
        ...

    def unpack(self, theta: NDArray[np.float64], n_experts: int, n_design: int) -> Any:
        """Inverse of :meth:`pack`.

        Parameters
        ----------
        theta : ndarray of shape (k,)
        n_experts : int
            ``m``.
        n_design : int
            ``p``, the gate design's width.

        Returns
        -------
        gate parameters
        """
        ...

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Typical size of each packed parameter (the optimiser's units).

        Parameters
        ----------
        column_scales : ndarray of shape (p,)
            ``1 / spread`` of each design column (1 for a constant one).
        n_experts : int

        Returns
        -------
        ndarray of shape (k,)
        """
        ...

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Lower and upper bounds of the packed parameters.

        Parameters
        ----------
        n_experts, n_design : int

        Returns
        -------
        lower, upper : ndarray of shape (k,)
            ``-inf`` and ``inf`` where unbounded.
        """
        ...

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Length ``k`` of the packed vector.

        Parameters
        ----------
        n_experts, n_design : int

        Returns
        -------
        int
        """
        ...

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """Free parameters counted by the information criteria (BIC, AIC).

        Parameters
        ----------
        n_experts, n_design : int

        Returns
        -------
        int
            Usually :meth:`n_free_parameters`; less where some are not
            identified (a constant gate over one expert).
        """
        ...

    def random_params(
        self, n_experts: int, n_design: int, scale: float, rng: np.random.Generator
    ) -> Any:
        """Random parameters, e.g. a true model of simulated data.

        Parameters
        ----------
        n_experts, n_design : int
        scale : float
            Typical size of a coefficient.
        rng : numpy Generator

        Returns
        -------
        gate parameters
        """
        ...

    def permute(self, params: Any, perm: ArrayLike) -> Any:
        """The same gate with its experts reordered.

        Parameters
        ----------
        params : gate parameters
        perm : array-like of shape (m,)
            Expert ``i`` of the result is expert ``perm[i]`` of ``params``.

        Returns
        -------
        gate parameters
            Weights ``g[:, perm]`` (re-anchored where the parametrisation
            fixes a reference expert).
        """
        ...

    def expert_groups(self, n_experts: int) -> NDArray[np.intp]:
        """Group of each expert; relabelling and matching never mix groups.

        Parameters
        ----------
        n_experts : int

        Returns
        -------
        ndarray of shape (m,)
            All zeros for a gate whose experts are exchangeable.
        """
        ...

    def check_n_experts(self, n_experts: int, for_fit: bool = True) -> None:
        """Raise ``ValueError`` if the gate cannot route to ``n_experts``.

        Parameters
        ----------
        n_experts : int
        for_fit : bool, default=True
            False when the gate only generates data.
        """
        ...

    def check_params(self, params: Any, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this gate (a user's start).

        Parameters
        ----------
        params : object
        n_experts, n_design : int
        """
        ...


@runtime_checkable
class GateNaming(Protocol, metaclass=_ProtocolMembers):
    """How a gate and its parameters are labelled in tables and records."""

    name: str

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the design's columns.

        Parameters
        ----------
        feature_names : list of str
            Names of the ``d`` covariates.

        Returns
        -------
        list of str
            One per column of :meth:`GateKernel.design`.
        """
        ...

    def describe(self) -> str:
        """A short label for summaries, e.g. ``normalized_sigmoid (top 2)``.

        Returns
        -------
        str
        """
        ...

    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Names of the packed parameters, e.g. ``gate2[const]``.

        Parameters
        ----------
        n_experts : int
        design_names : list of str
            :meth:`design_names` of the covariates.
        offset : int, default=0
            Number the experts from ``offset + 1``.

        Returns
        -------
        list of str
            One per packed parameter, in :meth:`GateParametrisation.pack`
            order.
        """
        ...


@runtime_checkable
class Gate(GateKernel, GateParametrisation, GateNaming, Protocol):
    """A gate: every hook the fitting engines call.

    ``isinstance(obj, Gate)`` is what :func:`moestat.gates.resolve_gate`,
    the data generators and the estimators ask of a gate object.
    """


@runtime_checkable
class GateAtoms(Protocol, metaclass=_ProtocolMembers):
    """A gate that gives the masses of the mixing measure (Voronoi losses).

    The mixing measure is ``G = sum_i w_i delta_{zeta_i}``; the gate gives
    each expert's mass ``w_i`` and copies of its experts for an
    over-specified start (theory.md sections 1 and 4.5).
    """

    def voronoi_masses(self, params: Any) -> NDArray[np.float64]:
        """Mass ``w_i`` of each expert's atom.

        Parameters
        ----------
        params : gate parameters

        Returns
        -------
        ndarray of shape (m,)
        """
        ...

    def split_atoms(self, params: Any, index: ArrayLike) -> Any:
        """Parameters whose expert ``i`` copies expert ``index[i]``.

        Copies share the mass of the expert they copy, so with the experts
        copied alike the density is unchanged.

        Parameters
        ----------
        params : gate parameters
        index : array-like of shape (m_new,)
            Indices may repeat.

        Returns
        -------
        gate parameters
            For ``m_new`` experts.
        """
        ...


@runtime_checkable
class AffineGate(Gate, Protocol):
    """A gate whose scores are affine in its design: one ``coef`` row each.

    Its parameters carry ``coef`` of shape ``(m, p)``; the boundary
    diagnostics (:mod:`moestat.boundary`) read the rows' slopes.

    Attributes
    ----------
    translation_invariant : bool
        True when adding one vector to every row of ``coef`` leaves the
        weights unchanged (softmax): only differences of rows are then
        identified, and the diagnostics look at pairs of rows. False when
        each row counts on its own (normalized sigmoid).
    """

    translation_invariant: bool

    def free_rows(self, n_experts: int) -> NDArray[np.intp]:
        """Indices of the estimated rows of ``coef`` (the others are fixed).

        Parameters
        ----------
        n_experts : int

        Returns
        -------
        ndarray of int
        """
        ...

    def voronoi_slopes(self, params: Any) -> NDArray[np.float64]:
        """The gate's part of each expert's atom: its slopes.

        Parameters
        ----------
        params : gate parameters

        Returns
        -------
        ndarray of shape (m, p - 1)
        """
        ...


@runtime_checkable
class GateDeclarations(Protocol, metaclass=_ProtocolMembers):
    """What a gate declares about itself for the losses and diagnostics.

    Attributes
    ----------
    voronoi_signature : str
        The Voronoi loss catalogue's name for the gate's parametrisation:
        ``"softmax"``, ``"modified_softmax"`` or ``"normalized_sigmoid"`` (a
        composite gate: its routed gate's).
    translation_invariant : bool
        True when adding one vector to every row of the coefficients leaves
        the weights unchanged (softmax), so only differences of rows are
        identified; False otherwise (normalized sigmoid).
    """

    voronoi_signature: str
    translation_invariant: bool


@runtime_checkable
class CompositeGate(Gate, Protocol):
    """Always-active shared experts beside the experts of a routed gate.

    The shared experts come first; the routed gate's hooks apply to the
    others.

    Attributes
    ----------
    routed : Gate
        The gate over the routed experts.
    n_shared : int
        Number of shared experts.
    """

    routed: Any
    n_shared: int


# -- expert families -----------------------------------------------------------
@runtime_checkable
class ExpertKernel(Protocol, metaclass=_ProtocolMembers):
    """What EM and direct maximum likelihood compute with an expert family.

    A family works on all ``m`` experts at once; its parameters are an
    immutable container with a property ``n_experts``.
    """

    def design(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """The experts' design (basis) ``Phi`` built from the covariates.

        Parameters
        ----------
        X : ndarray of shape (n, d)

        Returns
        -------
        ndarray of shape (n, p)
        """
        ...

    def log_density(
        self, params: Any, Phi: NDArray[np.float64], y: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """``log f(y_t | x_t; theta_i)`` for every sample and expert.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)
        y : ndarray of shape (n,)

        Returns
        -------
        ndarray of shape (n, m)
        """
        ...

    def mean(self, params: Any, Phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each expert's conditional mean ``E_i[y | x]``.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)

        Returns
        -------
        ndarray of shape (n, m)
        """
        ...

    def sample(
        self,
        params: Any,
        Phi: NDArray[np.float64],
        labels: NDArray[np.intp],
        rng: np.random.Generator,
    ) -> NDArray[np.float64]:
        """Draw ``y_t`` from expert ``labels[t]`` at each design row.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)
        labels : ndarray of shape (n,)
        rng : numpy Generator

        Returns
        -------
        ndarray of shape (n,)
        """
        ...

    def sufficient_features(
        self, Phi: NDArray[np.float64], y: NDArray[np.float64]
    ) -> Any:
        """Per-sample quantities every M-step reuses, computed once per fit.

        Parameters
        ----------
        Phi : ndarray of shape (n, p)
        y : ndarray of shape (n,)

        Returns
        -------
        object
            Passed back as ``features`` to :meth:`m_step` (None for none).
        """
        ...

    def m_step(
        self,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
        previous: Any = None,
        features: Any = None,
    ) -> Any:
        """The experts' step of EM: maximise ``sum r log f`` (minus the penalty).

        Parameters
        ----------
        Phi : ndarray of shape (n, p)
        y : ndarray of shape (n,)
        resp : ndarray of shape (n, m)
            Responsibilities.
        var_floor : float
            Lower bound on variance parameters (ignored by families without).
        previous : expert parameters, optional
            The current parameters: a start for iterative steps, and what an
            expert without responsibility keeps. Without them the step
            starts afresh (a fit's starting values).
        features : object, optional
            :meth:`sufficient_features` of ``(Phi, y)``.

        Returns
        -------
        expert parameters
            Not below ``previous`` in ``sum r log f`` minus :meth:`penalty`.
        """
        ...

    def gradient(
        self,
        params: Any,
        Phi: NDArray[np.float64],
        y: NDArray[np.float64],
        resp: NDArray[np.float64],
        var_floor: float,
    ) -> NDArray[np.float64]:
        """Gradient of ``sum_t sum_i r_ti log f_i(y_t | x_t)`` minus the penalty.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)
        y : ndarray of shape (n,)
        resp : ndarray of shape (n, m)
        var_floor : float
            As in :meth:`ExpertParametrisation.pack`.

        Returns
        -------
        ndarray of shape (k,)
            In the packed parameters' order.
        """
        ...

    def penalty(self, params: Any, Phi: NDArray[np.float64]) -> float:
        """The penalty every fitting step subtracts from the objective.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)

        Returns
        -------
        float
            0.0 for an unpenalised family.
        """
        ...

    def check_response(self, y: NDArray[np.float64]) -> None:
        """Raise ``ValueError`` for responses outside the family's support.

        Parameters
        ----------
        y : ndarray of shape (n,)
        """
        ...


@runtime_checkable
class ExpertParametrisation(Protocol, metaclass=_ProtocolMembers):
    """The experts' free parameters as the optimiser and the inference see them.

    Variance parameters are packed as ``log(nu - nu_min)``: ``var_floor`` is
    ``nu_min`` (families without variances ignore it).
    """

    def pack(self, params: Any, var_floor: float) -> NDArray[np.float64]:
        """The free parameters as a flat unconstrained vector.

        Parameters
        ----------
        params : expert parameters
        var_floor : float

        Returns
        -------
        ndarray of shape (k,)
        """
        ...

    def unpack(
        self,
        theta: NDArray[np.float64],
        n_experts: int,
        n_design: int,
        var_floor: float,
    ) -> Any:
        """Inverse of :meth:`pack`.

        Parameters
        ----------
        theta : ndarray of shape (k,)
        n_experts, n_design : int
        var_floor : float

        Returns
        -------
        expert parameters
        """
        ...

    def pack_scales(
        self, column_scales: NDArray[np.float64], n_experts: int
    ) -> NDArray[np.float64]:
        """Typical size of each packed parameter.

        Parameters
        ----------
        column_scales : ndarray of shape (p,)
            ``1 / spread`` of each design column.
        n_experts : int

        Returns
        -------
        ndarray of shape (k,)
        """
        ...

    def pack_bounds(
        self, n_experts: int, n_design: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Lower and upper bounds of the packed parameters.

        Parameters
        ----------
        n_experts, n_design : int

        Returns
        -------
        lower, upper : ndarray of shape (k,)
        """
        ...

    def n_free_parameters(self, n_experts: int, n_design: int) -> int:
        """Length ``k`` of the packed vector.

        Parameters
        ----------
        n_experts, n_design : int

        Returns
        -------
        int
        """
        ...

    def variance_floor(self, y: NDArray[np.float64], reg_var: float) -> float:
        """The floor ``nu_min`` on the variances for responses ``y``.

        Parameters
        ----------
        y : ndarray of shape (n,)
        reg_var : float
            The floor as a fraction of ``Var(y)``.

        Returns
        -------
        float
            0.0 for a family without variances.
        """
        ...

    def at_variance_floor(self, params: Any, var_floor: float) -> NDArray[np.intp]:
        """Experts whose variance sits at the floor (collapsing experts).

        Parameters
        ----------
        params : expert parameters
        var_floor : float

        Returns
        -------
        ndarray of int
            Empty for a family without variances.
        """
        ...

    def natural(
        self, theta: NDArray[np.float64], n_experts: int, var_floor: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Reported values of the packed parameters and their derivatives.

        Parameters
        ----------
        theta : ndarray of shape (k,)
        n_experts : int
        var_floor : float

        Returns
        -------
        values, jacobian : ndarray of shape (k,)
            The values in the summary table (variances, not their logs) and
            ``d value / d theta`` (the delta method's diagonal).
        """
        ...

    def permute(self, params: Any, perm: ArrayLike) -> Any:
        """The same experts reordered.

        Parameters
        ----------
        params : expert parameters
        perm : array-like of shape (m,)
            Expert ``i`` of the result is expert ``perm[i]`` of ``params``.

        Returns
        -------
        expert parameters
            Log densities ``log_f[:, perm]``.
        """
        ...

    def check_params(self, params: Any, n_experts: int, n_design: int) -> None:
        """Raise ``ValueError`` unless ``params`` fit this family.

        Parameters
        ----------
        params : object
        n_experts, n_design : int
        """
        ...


@runtime_checkable
class ExpertNaming(Protocol, metaclass=_ProtocolMembers):
    """How an expert family and its parameters are labelled."""

    name: str

    def design_names(self, feature_names: list[str]) -> list[str]:
        """Names of the design's columns.

        Parameters
        ----------
        feature_names : list of str

        Returns
        -------
        list of str
        """
        ...

    def parameter_names(
        self, n_experts: int, design_names: list[str], offset: int = 0
    ) -> list[str]:
        """Names of the packed parameters, e.g. ``expert1[x0]``.

        Parameters
        ----------
        n_experts : int
        design_names : list of str
        offset : int, default=0
            Number the experts from ``offset + 1``.

        Returns
        -------
        list of str
            One per packed parameter.
        """
        ...


@runtime_checkable
class ExpertFamily(ExpertKernel, ExpertParametrisation, ExpertNaming, Protocol):
    """An expert family: every hook the fitting engines call."""


@runtime_checkable
class ExpertAtoms(Protocol, metaclass=_ProtocolMembers):
    """An expert family whose experts are atoms of the mixing measure."""

    def atoms(self, params: Any) -> NDArray[np.float64]:
        """One parameter vector per expert (for matching experts).

        Parameters
        ----------
        params : expert parameters

        Returns
        -------
        ndarray of shape (m, q)
        """
        ...

    def atom_blocks(self, params: Any) -> list[dict[str, NDArray[np.float64]]]:
        """Each expert's atom split into the Voronoi losses' named blocks.

        Parameters
        ----------
        params : expert parameters

        Returns
        -------
        list of dict
            One dict per expert, e.g. ``{"intercept": ..., "slope": ...}``.
        """
        ...

    def split_atoms(self, params: Any, index: ArrayLike) -> Any:
        """Parameters whose expert ``i`` copies expert ``index[i]``.

        Parameters
        ----------
        params : expert parameters
        index : array-like of shape (m_new,)

        Returns
        -------
        expert parameters
        """
        ...


@runtime_checkable
class ExpertDeclarations(Protocol, metaclass=_ProtocolMembers):
    """What an expert family declares about itself for the losses.

    Attributes
    ----------
    response_family : str or None
        The response's distribution: ``"gaussian"``, ``"poisson"``,
        ``"bernoulli"``, ``"categorical"``; None when not one of them.
    voronoi_signature : str or None
        The Voronoi loss catalogue's name for the atoms' parametrisation
        (``"linear"``, ``"relu"``, ``"multinomial"``); None without one.
    """

    response_family: str | None
    voronoi_signature: str | None


@runtime_checkable
class CompositeExpertFamily(ExpertFamily, Protocol):
    """Shared experts of one family beside routed experts of another.

    Attributes
    ----------
    shared : ExpertFamily
        Family of the first ``n_shared`` experts.
    routed : ExpertFamily
        Family of the others.
    n_shared : int
    """

    shared: Any
    routed: Any
    n_shared: int


@runtime_checkable
class BatchedExpertFamily(Protocol, metaclass=_ProtocolMembers):
    """An expert family whose kernel runs on batches, in numpy or torch.

    Written over the Python array API standard (``array_api_compat``), the
    two hooks take packed parameters with leading batch axes, in the layout
    of the family's ``pack``, and arrays of any namespace: the numpy
    engines call them on numpy arrays, the torch engine
    (:mod:`moestat.torch`) on torch tensors of a batch of data sets (the
    family then runs there with no torch code of its own).

    Attributes
    ----------
    runs_batched : bool
        Whether this configuration of the family has batched kernels (a
        GLM family with a ridge, whose weights come from one data set's
        design, has not).
    """

    runs_batched: bool

    def batch_log_density(
        self, theta: Any, Phi: Any, y: Any, var_floor: Any, n_experts: int
    ) -> Any:
        """``log f(y_t | x_t; theta_i)`` of every data set of the batch.

        Parameters
        ----------
        theta : array of shape (..., P)
            Packed parameters.
        Phi : array of shape (..., n, p)
            Expert designs.
        y : array of shape (..., n)
            Responses.
        var_floor : array of shape (...)
            Each data set's variance floor.
        n_experts : int

        Returns
        -------
        array of shape (..., n, m)
        """
        ...

    def batch_m_step(
        self,
        theta: Any,
        Phi: Any,
        y: Any,
        resp: Any,
        var_floor: Any,
        n_experts: int,
    ) -> Any:
        """The M-step from the current packed parameters, packed.

        Parameters
        ----------
        theta : array of shape (..., P)
            Current packed parameters (experts with no responsibility keep
            theirs).
        Phi : array of shape (..., n, p)
        y : array of shape (..., n)
        resp : array of shape (..., n, m)
            Responsibilities (zero on padding rows).
        var_floor : array of shape (...)
        n_experts : int

        Returns
        -------
        array of shape (..., P)
        """
        ...


@runtime_checkable
class BatchedGate(Protocol, metaclass=_ProtocolMembers):
    """A gate whose kernel runs on batches, in numpy or torch.

    Written over the Python array API standard (``array_api_compat``), the
    hooks take packed parameters with a leading batch axis, in the layout
    of the gate's ``pack``, and arrays of any namespace: the torch engine
    (:mod:`moestat.torch`) calls them on torch tensors of a batch of data
    sets, so the gate runs there with no torch code of its own.

    Attributes
    ----------
    runs_batched : bool
        Whether this configuration of the gate has batched kernels (a gate
        with a ridge, ``alpha > 0``, whose weights come from one data set's
        design, has not).
    """

    runs_batched: bool

    def batch_log_weights(self, theta: Any, Z: Any, n_experts: int) -> Any:
        """``log g(x_t)`` of every data set of the batch.

        Parameters
        ----------
        theta : array of shape (B, P)
            Packed parameters (the gate's ``pack``).
        Z : array of shape (B, n, p)
            Gate designs.
        n_experts : int

        Returns
        -------
        array of shape (B, n, m)
        """
        ...

    def batch_m_step(
        self,
        theta: Any,
        Z: Any,
        weight: Any,
        resp: Any,
        log_weights: Any,
        log_f: Any,
        n_experts: int,
        log_background: Any = None,
    ) -> tuple[Any, Any]:
        """The gate's M-step from the current packed parameters, packed.

        Parameters
        ----------
        theta : array of shape (B, P)
            Current packed parameters.
        Z : array of shape (B, n, p)
        weight : array of shape (B, n)
            Sample weights, zero on padding rows.
        resp : array of shape (B, n, m)
            Responsibilities (zero on padding rows).
        log_weights : array of shape (B, n, m)
            ``log g`` at ``theta``.
        log_f : array of shape (B, n, m)
            The experts' log densities at their new parameters (a top-K
            gate judges its step by the observed log-likelihood).
        n_experts : int
        log_background : array of shape (B, n), optional
            Log density of components outside this gate (shared experts).

        Returns
        -------
        theta : array of shape (B, P)
            Parameters whose objective is not below the start's.
        log_weights : array of shape (B, n, m)
            ``log g`` at them.
        """
        ...

    def batch_project(self, theta: Any) -> Any:
        """Packed parameters moved into the parameter space (a box clip).

        Parameters
        ----------
        theta : array of shape (B, P)

        Returns
        -------
        array of shape (B, P)
        """
        ...


@runtime_checkable
class SweepGate(Protocol, metaclass=_ProtocolMembers):
    """A gate that declares the sweep kernel computing its weights.

    The chunked path of :func:`moestat.fit.em` (and the fused torch EM,
    :mod:`moestat.torch.fused`) never calls the gate's hooks: it computes
    ``log g`` and the Fisher-scoring sums of the gate's M-step with the
    kernel the gate names. A gate is fitted there only when it declares one
    (and its expert family too, :class:`SweepExpertFamily`); a gate without
    the attribute, or with None, is fitted on the full path.

    Attributes
    ----------
    sweep_kernel : str or None
        A name of :data:`moestat.kernels.sweep.GATES` whose weights are the
        gate's at its current settings, or None where no kernel computes
        them (a ridge ``alpha > 0``, a top-K selection):

        ``"softmax"``
            ``g = softmax(beta z)`` with ``z`` the gate's ``design``, the
            first row of ``beta`` the reference (zero) and the others free
            (:class:`~moestat.gates.SoftmaxGate`, and
            :class:`~moestat.gates.ModifiedSoftmaxGate`, whose design is
            ``[1, M(x)]``).
        ``"normalized_sigmoid"``
            ``g_i = sigma(beta_i z) / sum_j sigma(beta_j z)``, every row free
            (the dense :class:`~moestat.gates.NormalizedSigmoidGate`).

    Notes
    -----
    A gate declaring a kernel takes :class:`~moestat.gates.GateParams`
    whose ``coef`` (m, p) is ``beta``, packs the free rows row by row, and
    its ``m_step`` takes ``newton_steps`` (1 by default) Fisher-scoring
    steps of the kernel's gradient and information, each halved until
    ``sum r log g`` does not fall (at most ``max_halvings`` tries, 12 by
    default) and clipped into the box ``|beta| <= bound`` where the gate has
    a ``bound``. The chunked path reads ``bound`` and ``max_halvings`` from
    the gate where it has them. :func:`moestat.utils.check_gate` verifies
    the declaration (rule ``"sweep"``): at random parameters, the sweep's
    log-likelihood is the one from the gate's ``log_weights``, and the
    M-step from the sweep's sums is the gate's ``m_step``. A subclass that
    changes the weights must therefore declare another kernel or None.
    """

    sweep_kernel: str | None


@runtime_checkable
class SweepExpertFamily(Protocol, metaclass=_ProtocolMembers):
    """An expert family that declares the sweep kernel computing its M-step.

    Attributes
    ----------
    sweep_kernel : str or None
        A name of :data:`moestat.kernels.sweep.EXPERTS`, or None where no
        kernel serves the family's current settings:

        ``"gaussian"``
            ``f_i(y | x) = N(y | a_i^T phi(x), nu_i)`` with ``phi`` the
            family's ``design`` (any basis or degree) and parameters
            :class:`~moestat.experts.GaussianExpertParams`; its M-step is
            weighted least squares and the weighted residual variance, the
            variances as its ``variance_kind`` says: ``"per_expert"`` (the
            default), ``"shared"`` or ``"known"`` (then ``variance`` holds
            the known value).

    Notes
    -----
    :func:`moestat.utils.check_expert_family` verifies the declaration
    (rule ``"sweep"``) with a softmax gate: the sweep's log-likelihood is
    the one from the family's ``log_density``, and the M-step from the
    sweep's sums is the family's ``m_step``.
    """

    sweep_kernel: str | None


# -- optional capabilities -----------------------------------------------------
@runtime_checkable
class HasLogMean(Protocol, metaclass=_ProtocolMembers):
    """An expert family that gives ``log E_i[y | x]`` directly.

    Predictions then mix the experts in log space, so an expert whose mean
    overflows where its weight underflows adds nothing (no ``0 * inf``).
    """

    def log_mean(self, params: Any, Phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """Log conditional mean of each expert.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)

        Returns
        -------
        ndarray of shape (n, m)
        """
        ...


@runtime_checkable
class HasClassProbabilities(Protocol, metaclass=_ProtocolMembers):
    """An expert family over classes (``predict_proba``)."""

    def class_probabilities(
        self, params: Any, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Each expert's probability of each class.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)

        Returns
        -------
        ndarray of shape (n, m, n_classes)
            Summing to one over the classes.
        """
        ...


@runtime_checkable
class CountsDegreesOfFreedom(Protocol, metaclass=_ProtocolMembers):
    """An expert family whose identified parameters are fewer than its free ones.

    Without this hook the information criteria count
    ``n_free_parameters``.
    """

    def degrees_of_freedom(self, n_experts: int, n_design: int) -> int:
        """Free parameters counted by the information criteria.

        Parameters
        ----------
        n_experts, n_design : int

        Returns
        -------
        int
        """
        ...


@runtime_checkable
class Penalised(Protocol, metaclass=_ProtocolMembers):
    """A piece with a ridge penalty of strength ``alpha`` (see :mod:`moestat.boundary`).

    Attributes
    ----------
    alpha : float
        The penalty's strength; 0 for none. A penalised piece keeps its
        coefficients finite, so fits do not look for diverging ones.
    """

    alpha: float


@runtime_checkable
class GLMFamily(Protocol, metaclass=_ProtocolMembers):
    """Experts of a generalised linear model (the boundary diagnostics).

    Attributes
    ----------
    family : str
        ``"poisson"`` or ``"bernoulli"``.
    """

    family: str

    def linear_predictor(
        self, params: Any, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Each expert's linear predictor ``eta = Phi coef_i``.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)

        Returns
        -------
        ndarray of shape (n, m)
        """
        ...


@runtime_checkable
class MultinomialFamily(Protocol, metaclass=_ProtocolMembers):
    """Multinomial logistic experts over ``n_classes`` classes.

    Attributes
    ----------
    n_classes : int
    """

    n_classes: int

    def class_log_probabilities(
        self, params: Any, Phi: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Each expert's log probability of each class.

        Parameters
        ----------
        params : expert parameters
        Phi : ndarray of shape (n, p)

        Returns
        -------
        ndarray of shape (n, m, n_classes)
        """
        ...
