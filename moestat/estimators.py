"""scikit-learn estimators for mixtures of experts.

:class:`MixtureOfExpertsRegressor` and :class:`MixtureOfExpertsClassifier`
fit any gate with any expert family (any objects that satisfy
:class:`~moestat.protocols.Gate` and :class:`~moestat.protocols.ExpertFamily`).
They own validation, restarts, the warnings and the final E-step. The
presets ``GaussianMoE`` and ``PolynomialMoE`` (regression, Gaussian or GLM
experts) and ``MultinomialLogisticMoE`` (classification) are subclasses that
translate their parameters into an expert family.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from dataclasses import replace
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from moestat._threads import limit_blas_threads
from moestat._validation import (
    NONE,
    RANDOM_STATE,
    InstanceOf,
    Interval,
    Options,
    Satisfies,
    as_generator,
    check_response_entries,
    check_scale,
    validate_params,
)
from moestat.boundary import boundary_message, diverging_parameters
from moestat.exceptions import ConvergenceWarning, DegenerateFitWarning
from moestat.experts import GaussianExpert, GLMExpert, MultinomialLogisticExpert
from moestat.experts.glm import GLM_FAMILIES
from moestat.fit import INIT_METHODS, fit_restarts, penalty, warn_on_degeneracy
from moestat.gates import GATE_NAMES, resolve_gate, with_shared_experts
from moestat.inference import MoEInferenceResults, infer
from moestat.model import MixtureOfExperts, MoEParams
from moestat.predictive import predictive_moments, predictive_quantile
from moestat.protocols import (
    ExpertFamily,
    Gate,
    GLMFamily,
    HasClassProbabilities,
    MultinomialFamily,
    Penalised,
    missing_members,
)

__all__ = [
    "MixtureOfExpertsRegressor",
    "MixtureOfExpertsClassifier",
    "GaussianMoE",
    "PolynomialMoE",
    "MultinomialLogisticMoE",
]

# Every estimator's constraints, in the order fit checks them; each class
# takes the entries of its own parameters.
_CONSTRAINTS: dict[str, tuple] = {
    "n_experts": (Interval("int", 1, None),),
    "gate": (
        Options(tuple(GATE_NAMES)),
        InstanceOf(Gate, "a gate object"),
    ),
    "expert": (NONE, InstanceOf(ExpertFamily, "an expert family object")),
    "n_shared_experts": (Interval("int", 0, None),),
    "shared_weight": (Options(("fixed_half", "learned")),),
    "solver": (Options(("em", "mle")),),
    "n_init": (Interval("int", 1, None),),
    "init": (
        Options(INIT_METHODS),
        InstanceOf(MoEParams, "a MoEParams start"),
    ),
    "tol": (Interval("real", 0, None),),
    "max_iter": (Interval("int", 1, None),),
    "reg_var": (Interval("real", 0, None),),
    "alpha": (Interval("real", 0, None),),
    "shared_variance": (InstanceOf(bool, "a bool"),),
    "polish": (InstanceOf(bool, "a bool"),),
    "backend": (Options(("numpy", "torch")),),
    "device": (
        Satisfies(
            lambda v: v is None or isinstance(v, str) or type(v).__name__ == "device",
            "None, a device name such as 'cuda', or a torch.device",
        ),
    ),
    "random_state": RANDOM_STATE,
    "degree": (Interval("int", 0, None),),
    "family": (Options(("gaussian", *GLM_FAMILIES)),),
    "gate_features": (
        NONE,
        Satisfies(lambda v: _is_feature_list(v), "a list of column indices or names"),
    ),
    "expert_features": (
        NONE,
        Satisfies(lambda v: _is_feature_list(v), "a list of column indices or names"),
    ),
    "verbose": (Interval("int", 0, None), InstanceOf(bool, "a bool")),
    "warm_start": (InstanceOf(bool, "a bool"),),
    "sweep_dtype": (Options(("float64", "float32")),),
}


def _constraints(*names: str) -> dict[str, tuple]:
    """The constraints of the parameters ``names``, in the order of checking."""
    return {key: value for key, value in _CONSTRAINTS.items() if key in names}


_FITTING_PARAMETERS = (
    "n_experts",
    "gate",
    "n_shared_experts",
    "shared_weight",
    "solver",
    "n_init",
    "init",
    "tol",
    "max_iter",
    "alpha",
    "polish",
    "backend",
    "device",
    "random_state",
    "gate_features",
    "expert_features",
    "verbose",
    "warm_start",
)

#: The pieces' protocols, by the parameter that takes them.
_PIECE_PROTOCOLS: dict[str, type] = {"gate": Gate, "expert": ExpertFamily}


def _is_column(entry: Any) -> bool:
    """Whether ``entry`` can name a column: a string or an integer index."""
    return isinstance(entry, str | numbers.Integral) and not isinstance(entry, bool)


def _is_feature_list(value: Any) -> bool:
    """Whether ``value`` is one column or a sequence of columns."""
    if _is_column(value):
        return True
    if isinstance(value, list | tuple | np.ndarray | pd.Index):
        return all(_is_column(entry) for entry in _entries(value))
    return False


def _entries(value: Any) -> list:
    """The items of a sequence, numpy scalars as Python ones."""
    return [v.item() if isinstance(v, np.generic) else v for v in value]


def _feature_indices(
    option: str,
    value: Any,
    n_features: int,
    names: list[str] | None = None,
) -> tuple[int, ...] | None:
    """The column indices that ``value`` selects among ``n_features`` columns.

    Parameters
    ----------
    option : str
        The parameter's name, for the messages (``"gate_features"``).
    value : None, int, str or sequence of int or str
        Column indices (negative ones count from the end) or names.
    n_features : int
        Number of columns of ``X``.
    names : list of str, optional
        Column names of ``X`` (a DataFrame's), needed for names.

    Returns
    -------
    tuple of int or None
        The indices in the order given; None (every column) for None.

    Raises
    ------
    ValueError
        For an empty selection, an index out of range, a name that ``X``
        does not have (or a name when ``X`` has no names), or a column
        selected twice; the message names the parameter and the column.
    """
    if value is None:
        return None
    entries = [value] if _is_column(value) else _entries(value)
    if not entries:
        raise ValueError(
            f"{option} is empty: give at least one column (index or name), or "
            "None for every column."
        )
    indices = []
    for entry in entries:
        if isinstance(entry, str):
            if names is None:
                raise ValueError(
                    f"{option} names the column {entry!r}, but X has no column "
                    "names: pass X as a pandas DataFrame, or give column indices."
                )
            if entry not in names:
                raise ValueError(
                    f"{option} names an unknown column {entry!r}; the columns of "
                    f"X are {names}."
                )
            indices.append(names.index(entry))
        else:
            if not -n_features <= entry < n_features:
                raise ValueError(
                    f"{option} holds the column index {entry}, out of range for X "
                    f"with {n_features} column{'s' if n_features != 1 else ''}."
                )
            indices.append(int(entry) % n_features)
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise ValueError(f"{option} selects column(s) {repeated} more than once.")
    return tuple(indices)


def _selected_names(names: list[str], features: tuple[int, ...] | None) -> list[str]:
    """The names of the columns ``features`` (every name for None)."""
    return list(names) if features is None else [names[j] for j in features]


def _start_columns(X: NDArray[np.float64], model: MixtureOfExperts) -> NDArray:
    """The columns of ``X`` that either design reads, for the starting partitions."""
    if model.gate_features is None or model.expert_features is None:
        return X
    return X[:, sorted({*model.gate_features, *model.expert_features})]


def _check_pieces(owner: str, params: dict[str, Any], constraints: dict) -> None:
    """Refuse a gate or expert object that lacks hooks, naming the hooks.

    Names (strings) and None are left to :func:`validate_params`.
    """
    for name, protocol in _PIECE_PROTOCOLS.items():
        value = params.get(name)
        if name not in constraints or value is None or isinstance(value, str):
            continue
        missing = missing_members(value, protocol)
        if not missing:
            continue
        choices = " or ".join(str(c) for c in constraints[name])
        raise ValueError(
            f"The {name!r} parameter of {owner} must be {choices}; got "
            f"{value!r}, which lacks {', '.join(missing)} "
            f"(hooks of moestat.protocols.{protocol.__name__})."
        )


def _with_alpha(gate: Gate, alpha: float) -> Gate:
    """The gate with ridge penalty ``alpha``, or a ValueError naming the gate."""
    if not isinstance(gate, Penalised):
        raise ValueError(
            f"alpha={alpha!r} needs a gate with a ridge penalty (an 'alpha' "
            f"field, moestat.protocols.Penalised); {type(gate).__name__} has none. "
            "Use alpha=0."
        )
    return replace(gate, alpha=alpha)


def _validated_weight(sample_weight: ArrayLike | None, X: NDArray) -> NDArray | None:
    """The sample weights as a float array (None stays None), or a ValueError."""
    if sample_weight is None:
        return None
    weight = _check_sample_weight(
        sample_weight, X, dtype=np.float64, ensure_non_negative=True, copy=True
    )
    if not weight.sum() > 0:
        raise ValueError(
            "sample_weight sums to zero: no sample would count. Give at least "
            "one positive weight."
        )
    return weight


def _variance_floor(
    expert: ExpertFamily, y: NDArray, reg_var: float, weight: NDArray | None
) -> float:
    """The expert family's floor, from the weighted variance of ``y``.

    The families' floors are ``reg_var`` times ``Var(y)`` (or zero), so the
    weighted floor is the family's floor at ``reg_var`` rescaled by the
    ratio of the weighted to the plain variance. Equal weights leave the
    plain floor.
    """
    plain = np.var(y)
    if weight is None or np.all(weight == weight[0]) or not plain > 0:
        return expert.variance_floor(y, reg_var)
    weighted = np.average((y - np.average(y, weights=weight)) ** 2, weights=weight)
    return expert.variance_floor(y, reg_var * float(weighted / plain))


class _BaseMixtureOfExperts(BaseEstimator):
    """Shared machinery of the regressor and the classifier (not public)."""

    _parameter_constraints: dict[str, tuple] = _constraints(*_FITTING_PARAMETERS)

    # -- hooks for subclasses -------------------------------------------------
    def _expert_family(self) -> ExpertFamily:
        """The expert family the fit uses (before the penalty ``alpha``)."""
        raise NotImplementedError

    def _reg_var(self) -> float:
        """The variance floor relative to ``Var(y)`` (0 without ``reg_var``)."""
        return 0.0

    def _sweep_dtype(self) -> np.dtype:
        """Arithmetic of a chunk of the chunked EM (float64 without ``sweep_dtype``)."""
        return np.dtype(np.float64)

    def _summary_extras(self) -> dict[str, Any]:
        """Rows a preset adds to the summary's header."""
        return {}

    def _validate_xy(self, X: ArrayLike, y: ArrayLike) -> tuple[NDArray, NDArray]:
        """Check (X, y) at fit time; return y as the float codes the model uses.

        ``y`` goes through :meth:`_encode_y`, as at scoring, so fit and
        ``score_samples`` refuse the same responses.
        """
        check_response_entries(y, type(self).__name__, numeric=True)
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        check_scale(X, "X")
        check_scale(y, "y")
        return X, self._encode_y(y)

    def _keep_rows(
        self, X: NDArray, y: NDArray, keep: NDArray[np.bool_]
    ) -> tuple[NDArray, NDArray]:
        """The rows ``keep`` of the validated data."""
        return X[keep], y[keep]

    def _check_target(self, y: NDArray[np.float64]) -> None:
        """Refuse a constant response (the support is checked by _encode_y)."""
        if np.ptp(y) == 0:
            raise ValueError(
                f"y is constant (every value is {float(y[0])!r}): a mixture of "
                "experts cannot be fitted to data with no spread."
            )

    def _model_spec(self) -> MixtureOfExperts:
        gate = resolve_gate(self.gate)
        if self.alpha:
            gate = _with_alpha(gate, self.alpha)
        gate = with_shared_experts(gate, self.n_shared_experts, self.shared_weight)
        expert = self._expert_family()
        if self.alpha and isinstance(expert, Penalised):
            expert = replace(expert, alpha=self.alpha)
        gate_features, expert_features = self._selected_features()
        return MixtureOfExperts(
            gate, expert, gate_features=gate_features, expert_features=expert_features
        )

    def _selected_features(self) -> tuple[tuple[int, ...] | None, ...]:
        """The columns of the gate and of the experts, as indices (None: all)."""
        names = None
        if hasattr(self, "feature_names_in_"):
            names = [str(c) for c in self.feature_names_in_]
        return tuple(
            _feature_indices(option, getattr(self, option), self.n_features_in_, names)
            for option in ("gate_features", "expert_features")
        )

    def _log(self, message: str, level: int = 1) -> None:
        """Print ``message`` on stderr when ``verbose >= level``."""
        if self.verbose >= level:
            print(f"[{type(self).__name__}] {message}", file=sys.stderr, flush=True)

    @property
    def _n_total_experts(self) -> int:
        return self.n_experts + self.n_shared_experts

    # -- fitting ---------------------------------------------------------------
    def fit(
        self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
    ) -> _BaseMixtureOfExperts:
        """Fit the mixture of experts by maximum likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Covariates (numpy array, list or pandas DataFrame).
        y : array-like of shape (n_samples,)
            Responses.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights: the fit maximises
            ``sum_t w_t log p(y_t | x_t)``. Integer weights give the
            likelihood of the data with row ``t`` repeated ``w_t`` times:
            from the same start (``init=`` parameters) the two fits agree
            to round-off, while random starts, drawn over the rows as
            given, may differ. ``inference()`` reads the weights as
            frequency weights. The variance floor is ``reg_var`` times the weighted
            variance of ``y``. None: every weight one. Rows of weight zero
            are dropped before the fit, so the fit is exactly the fit to
            the other rows, starts included.

        Returns
        -------
        self
            The fitted estimator.

        Raises
        ------
        ValueError
            For weights that are negative, not finite, of the wrong length
            or all zero.
        """
        params = self.get_params(deep=False)
        owner = type(self).__name__
        _check_pieces(owner, params, self._parameter_constraints)
        validate_params(owner, params, self._parameter_constraints)
        for stale in ("_formulas", "formula_", "gate_formula_"):
            self.__dict__.pop(stale, None)
        name = getattr(y, "name", None)
        X, y = self._validate_xy(X, y)
        self.response_name_ = "y" if name is None else str(name)
        weight = _validated_weight(sample_weight, X)
        if weight is not None:
            # rows of weight zero do not count: the fit is the fit without them
            X, y = self._keep_rows(X, y, weight > 0)
            weight = weight[weight > 0]
            weight = None if np.all(weight == 1.0) else weight
        self._check_enough_data(X, y)
        self._check_target(y)
        with limit_blas_threads():
            best, design, var_floor = self._fit_restarts(X, y, weight)
        if best.boundary:
            findings = diverging_parameters(
                best.model,
                design,
                (self.gate_feature_names_, self.expert_feature_names_),
            )
            warnings.warn(
                f"{owner}: " + boundary_message(findings),
                DegenerateFitWarning,
                stacklevel=2,
            )
        elif not best.converged:
            warnings.warn(
                f"{owner} did not converge (best of {self.n_init} "
                f"restarts): {best.stop_reason or 'the stopping rule did not fire'}"
                + (
                    ". Increase max_iter, raise tol, or try more restarts (n_init)."
                    if best.capped
                    else ". The likelihood is flat or not smooth there: try "
                    "solver='em' or more restarts (n_init)."
                ),
                ConvergenceWarning,
                stacklevel=2,
            )
        warn_on_degeneracy(best, var_floor, min_weight=design.expert.shape[1] + 1.0)
        return self

    def _fit_restarts(
        self, X: NDArray, y: NDArray, weight: NDArray | None = None
    ) -> tuple[Any, Any, float]:
        """Fit every restart and store the best; return it, the design, the floor."""
        model = self._model_spec()
        model.gate.check_n_experts(self._n_total_experts)
        design = model.design(X)
        var_floor = _variance_floor(model.expert, y, self._reg_var(), weight)
        init, n_init = self.init, self.n_init
        warm = self._warm_start_params(model, design)
        if warm is not None:
            init, n_init = warm, 1
        elif isinstance(init, MoEParams):
            self._check_start(model, init, design)
        how = "init=" + (init if isinstance(init, str) else "given parameters")
        if warm is not None:
            how = "one run from the previous fit (warm_start)"
        elif n_init > 1:
            how = f"{n_init} restarts, {how}"
        self._log(
            f"fitting {self._n_total_experts} experts to {len(y)} samples, "
            f"solver={self.solver!r}: {how}"
        )
        with np.errstate(over="ignore", under="ignore"):
            best, results = fit_restarts(
                model,
                design,
                _start_columns(X, model),
                y,
                n_experts=self._n_total_experts,
                solver=self.solver,
                init=init,
                n_init=n_init,
                rng=as_generator(self.random_state),
                tol=self.tol,
                max_iter=self.max_iter,
                var_floor=var_floor,
                polish=self.polish,
                batch_engine=self._batch_engine(),
                sample_weight=weight,
                report=self._log if self.verbose else None,
                sweep_dtype=self._sweep_dtype(),
            )
        self._log(
            f"best log-likelihood {best.log_likelihood:.6f} after {best.n_iter} "
            f"iterations ({'converged' if best.converged else 'not converged'})"
        )
        self._store(best, results, design, var_floor)
        # kept for inference(): the information is evaluated on these data
        self._fit_design, self._fit_y, self._fit_weight = design, y, weight
        return best, design, var_floor

    def _warm_start_params(self, model: MixtureOfExperts, design) -> MoEParams | None:
        """The previous fit's parameters when ``warm_start`` can use them.

        They start the one run of a warm refit when the number of experts
        and the designs' columns are those of the previous fit; otherwise
        the fit starts cold (None).
        """
        previous = getattr(self, "params_", None)
        if not self.warm_start or previous is None:
            return None
        if previous.n_experts != self._n_total_experts:
            return None
        try:
            self._check_start(model, previous, design)
        except ValueError:
            return None
        return previous

    def _batch_engine(self) -> Any:
        """The torch backend's batched engine, or None for numpy."""
        if self.backend == "numpy":
            return None
        if self.alpha:
            raise ValueError(
                f"{type(self).__name__}(alpha={self.alpha!r}) is fitted by the numpy "
                "backend only: use backend='numpy', or alpha=0 with backend='torch'."
            )
        try:
            from moestat.torch.fit import batch_engine
        except ImportError as error:
            raise ImportError(
                f"{type(self).__name__}(backend='torch') needs PyTorch: "
                "`pip install 'moestat[torch]'`, or use backend='numpy'."
            ) from error
        return batch_engine(device=self.device)

    def _check_enough_data(self, X: NDArray, y: NDArray) -> None:
        n_samples = X.shape[0]
        needed = max(2 * self._n_total_experts, 2)
        if n_samples < needed:
            shared = (
                f" and n_shared_experts={self.n_shared_experts}"
                if self.n_shared_experts
                else ""
            )
            raise ValueError(
                f"{type(self).__name__} with n_experts={self.n_experts}{shared} "
                f"needs at least {needed} samples (two per expert); got "
                f"n_samples = {n_samples}."
            )

    def _check_start(self, model: MixtureOfExperts, start: MoEParams, design) -> None:
        m = self._n_total_experts
        model.gate.check_params(start.gate, m, design.gate.shape[1])
        model.expert.check_params(start.expert, m, design.expert.shape[1])

    def _store(self, best, results, design, var_floor) -> None:
        self._set_model(best.model)
        # the penalised fit maximises log L - penalty; report both
        self.penalized_log_likelihood_ = best.log_likelihood
        self.log_likelihood_ = best.log_likelihood + penalty(
            best.model, best.model.params, design
        )
        self.log_likelihood_trace_ = best.trace
        self.n_iter_ = best.n_iter
        self.n_iter_polish_ = best.n_iter_polish
        self.converged_ = best.converged
        self.restart_log_likelihoods_ = np.array([r.log_likelihood for r in results])
        self.restart_converged_ = np.array([r.converged for r in results])
        self.var_floor_ = var_floor
        self.n_parameters_ = self.model_.n_free_parameters(self.n_features_in_)
        names = [f"x{j}" for j in range(self.n_features_in_)]
        if hasattr(self, "feature_names_in_"):
            names = [str(c) for c in self.feature_names_in_]
        self.gate_feature_names_ = self.model_.gate.design_names(
            _selected_names(names, self.model_.gate_features)
        )
        self.expert_feature_names_ = self.model_.expert.design_names(
            _selected_names(names, self.model_.expert_features)
        )

    def _set_model(self, model: MixtureOfExperts) -> None:
        self.model_ = model
        params = model.params
        self.params_ = params
        if self.n_shared_experts:
            self.shared_weights_ = params.gate.shared_weights
            self.shared_share_ = params.gate.shared_share
        # the arrays of the pieces' parameters that have them (the engines
        # never look inside parameters: a piece of one's own may hold others)
        for attribute, part, field in (
            ("gate_coef_", params.gate, "coef"),
            ("expert_coef_", params.expert, "coef"),
            ("expert_var_", params.expert, "var"),
        ):
            if hasattr(part, field):
                setattr(self, attribute, getattr(part, field))

    def align_to(self, reference: Any) -> _BaseMixtureOfExperts:
        """Relabel the fitted experts to match a reference's order.

        Hungarian matching on the experts' parameters (never across shared
        and routed experts); every per-expert quantity moves together.

        Parameters
        ----------
        reference : fitted estimator or MixtureOfExperts
            Another fit or a true model with the same number of experts.

        Returns
        -------
        self
        """
        check_is_fitted(self, "model_")
        reference = getattr(reference, "model_", reference)
        self._set_model(self.model_.align_to(reference))
        return self

    # -- formulas -------------------------------------------------------------
    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        gate_formula: str | None = None,
        *,
        sample_weight: ArrayLike | None = None,
        **params: Any,
    ) -> _BaseMixtureOfExperts:
        """Fit the estimator to the terms of a formula, as statsmodels does.

        Parameters
        ----------
        formula : str
            ``"response ~ terms"`` (formulaic's grammar, that of R and
            patsy: ``np.log(x)``, ``C(group)``, ``x1:x2``, ``center(x)``):
            the response and the experts' covariates.
        data : pandas.DataFrame
            The data the formulas read; rows with a missing value in a
            formula are dropped.
        gate_formula : str, optional
            ``"~ terms"``: the gate's covariates (flexmix's concomitant
            model). None: the gate sees the experts' terms.
        sample_weight : array-like of shape (n_samples,), optional
            As for :meth:`fit`, one weight per row of ``data``.
        **params
            The estimator's parameters (``n_experts``, ``random_state``,
            ...), but not ``gate_features`` and ``expert_features``: the
            formulas give them.

        Returns
        -------
        estimator
            Fitted. ``formula_`` and ``gate_formula_`` hold the formulas,
            the parameters are named by the terms, and ``predict``,
            ``score_samples`` and the other methods given a DataFrame of
            the original columns evaluate the formulas on it (with the
            transforms' state of the fit).

        Raises
        ------
        ValueError
            For a formula without a response, a gate formula with one, a
            right-hand side without an intercept (the designs always hold
            one), or ``gate_features``/``expert_features`` in ``params``.

        Examples
        --------
        >>> from statsmodels.datasets import engel
        >>> from moestat import GaussianMoE
        >>> data = engel.load_pandas().data
        >>> est = GaussianMoE.from_formula(
        ...     "foodexp ~ income", data, gate_formula="~ np.log(income)",
        ...     n_experts=2, random_state=0,
        ... )
        >>> est.gate_feature_names_, est.expert_feature_names_
        (['const', 'np.log(income)'], ['const', 'income'])
        >>> est.predict(data.head(2)).shape
        (2,)
        """
        from moestat._formula import formula_data

        given = [
            name for name in ("gate_features", "expert_features") if name in params
        ]
        if given:
            raise ValueError(
                f"from_formula takes the covariates from the formulas; leave out "
                f"{' and '.join(given)} (use gate_formula= for the gate's)."
            )
        X, y, design = formula_data(formula, data, gate_formula)
        if gate_formula is not None:
            params["expert_features"] = design.expert_columns
            params["gate_features"] = design.gate_columns
        if sample_weight is not None:
            sample_weight = pd.Series(np.asarray(sample_weight), index=data.index)
            sample_weight = sample_weight.loc[X.index].to_numpy()
        estimator = cls(**params).fit(X, y, sample_weight=sample_weight)
        estimator._formulas = design
        estimator.formula_, estimator.gate_formula_ = formula, gate_formula
        return estimator

    def _covariates(self, X: ArrayLike) -> ArrayLike:
        """``X`` itself, or its covariates through the formulas of the fit.

        A DataFrame given to an estimator made by :meth:`from_formula` goes
        through its formulas unless it already holds the fitted columns.
        """
        formulas = self.__dict__.get("_formulas")
        if formulas is None or not isinstance(X, pd.DataFrame):
            return X
        if set(formulas.columns) <= set(map(str, X.columns)):
            return X[formulas.columns]
        from moestat._formula import formula_covariates

        return formula_covariates(formulas, X)

    # -- prediction -----------------------------------------------------------
    def _validated(self, X: ArrayLike) -> NDArray:
        check_is_fitted(self, "model_")
        X = self._covariates(X)
        return validate_data(self, X, reset=False, dtype=np.float64)

    def _validated_xy(self, X: ArrayLike, y: ArrayLike) -> tuple[NDArray, NDArray]:
        check_is_fitted(self, "model_")
        X = validate_data(self, self._covariates(X), reset=False, dtype=np.float64)
        y = self._encode_y(np.asarray(y))
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(
                f"y must be 1-D with one value per row of X ({len(X)}); got shape "
                f"{y.shape}."
            )
        return X, y

    def _encode_y(self, y: NDArray) -> NDArray[np.float64]:
        """Map a response to the model's float codes (booleans read as 0/1).

        The expert family's ``check_response`` refuses values outside its
        support, with the one rule used at fit and at scoring.
        """
        y = y.astype(np.float64, copy=False) if y.dtype.kind in "biuf" else y
        if y.dtype.kind != "f" or not np.all(np.isfinite(y)):
            raise ValueError("Input y contains NaN, infinity or non-numbers.")
        self._expert_family().check_response(y)
        return y

    def predict_gate(self, X: ArrayLike) -> NDArray[np.float64]:
        """Gate weights ``g_i(x)``: the probability of each expert given x alone.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
            Rows sum to one.
        """
        X = self._validated(X)
        return self.model_.gate_weights(X)

    def predict_expert_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Alias of :meth:`predict_gate`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
        """
        return self.predict_gate(X)

    def predict_posterior(self, X: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Posterior responsibilities ``P(expert i | x, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
        """
        X, y = self._validated_xy(X, y)
        return self.model_.responsibilities(X, y)

    def score_samples(self, X: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Conditional log-density ``log p(y | x)`` of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X, y = self._validated_xy(X, y)
        return self.model_.log_pdf(X, y)

    # -- inference ------------------------------------------------------------
    def inference(
        self,
        cov_type: str = "oim",
        *,
        use_t: bool = False,
        n_boot: int = 200,
        bootstrap: str = "nonparametric",
        random_state: Any = None,
        verbose: bool = False,
    ) -> MoEInferenceResults:
        """Standard errors, tests and intervals for the fitted parameters.

        The observed information (negative Hessian of the log-likelihood on
        the training data, by central differences of the analytic
        gradient) is inverted where it is positive definite; see
        :mod:`moestat.inference`.

        Parameters
        ----------
        cov_type : {"oim", "robust", "bootstrap"}, default="oim"
            ``"oim"``: the inverse observed information; ``"robust"``: the
            sandwich (Huber-White) covariance of the information and the
            per-sample scores; ``"bootstrap"``: the covariance of ``n_boot``
            refits from the fitted parameters, experts aligned to the fit.
        use_t : bool, default=False
            Student's t and F with ``nobs - n_parameters_`` degrees of
            freedom for p-values, intervals and tests, instead of the
            normal and chi-squared.
        n_boot : int, default=200
            Bootstrap data sets (``cov_type="bootstrap"``).
        bootstrap : {"nonparametric", "parametric"}, default="nonparametric"
            Rows drawn with replacement, or responses drawn from the fit.
        random_state : None, int or numpy Generator, default=None
            Seeds the bootstrap.
        verbose : bool, default=False
            Show the bootstrap's progress bar.

        Returns
        -------
        MoEInferenceResults
            ``params``, ``bse``, ``tvalues``, ``pvalues``, ``conf_int()``,
            ``cov_params()``, ``t_test()``, ``wald_test()``, ``summary()``,
            ``to_frame()``.
        """
        check_is_fitted(self, "model_")
        refit = {"solver": self.solver, "tol": self.tol, "max_iter": self.max_iter}
        with limit_blas_threads(), np.errstate(over="ignore", under="ignore"):
            return infer(
                self.model_,
                self._fit_design,
                self._fit_y,
                (self.gate_feature_names_, self.expert_feature_names_),
                var_floor=self.var_floor_,
                df_model=self.n_parameters_,
                converged=self.converged_,
                n_iter=self.n_iter_,
                info=self._summary_info(),
                alpha=self.alpha,
                sample_weight=getattr(self, "_fit_weight", None),
                cov_type=cov_type,
                use_t=use_t,
                bootstrap_options={
                    "n_boot": n_boot,
                    "kind": bootstrap,
                    "random_state": random_state,
                    "progress": verbose,
                    "fit_options": {**refit, "polish": self.polish},
                },
            )

    def summary(self, alpha: float = 0.05):
        """Shortcut for ``self.inference().summary(alpha)``.

        Parameters
        ----------
        alpha : float, default=0.05
            One minus the coverage of the intervals.

        Returns
        -------
        statsmodels.iolib.summary.Summary
        """
        return self.inference().summary(alpha)

    def _summary_info(self) -> dict[str, Any]:
        info = {
            "Model": type(self).__name__,
            "Response": getattr(self, "response_name_", "y"),
            "Experts": type(self.model_.expert).__name__,
            "Gate": self.model_.gate.describe(),
            "Routed experts (m)": self.n_experts,
        }
        if self.n_shared_experts:
            info["Shared experts"] = self.n_shared_experts
        info.update(self._summary_extras())
        info["Solver"] = self.solver
        return info

    # -- information criteria ----------------------------------------------
    def bic(self, X: ArrayLike, y: ArrayLike) -> float:
        """Bayesian information criterion on (X, y); lower is better.

        ``-2 log L + p log n`` with ``p`` the number of free parameters
        (``n_parameters_``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        float
        """
        log_lik = self.score_samples(X, y)
        return float(-2.0 * log_lik.sum() + self.n_parameters_ * np.log(len(log_lik)))

    def aic(self, X: ArrayLike, y: ArrayLike) -> float:
        """Akaike information criterion on (X, y); lower is better.

        ``-2 log L + 2 p`` with ``p`` the number of free parameters.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        float
        """
        log_lik = self.score_samples(X, y)
        return float(-2.0 * log_lik.sum() + 2.0 * self.n_parameters_)


_FITTED_ATTRIBUTES_DOC = """
    Attributes
    ----------
    model_ : MixtureOfExperts
        The fitted conditional density (gate, experts and parameters).
    params_ : MoEParams
        The fitted parameters (``model_.params``); usable as ``init``.
    gate_coef_ : ndarray of shape (n_experts, 1 + n_gate_features)
        Gate intercept and slopes per routed expert; the first row is the
        reference (zero) for the softmax gates.
    expert_coef_ : ndarray of shape (n_shared_experts + n_experts, n_basis)
        Expert coefficients on the basis named by ``expert_feature_names_``
        (shared experts first).
    expert_var_ : ndarray of shape (n_shared_experts + n_experts,)
        Expert noise variances.
    shared_weights_ : ndarray of shape (n_shared_experts,)
        Weights ``omega`` of the shared experts (only with shared experts).
    shared_share_ : float
        The weight ``lambda`` of the shared block (only with shared experts).
    log_likelihood_ : float
        Total log-likelihood of the training data at the fitted parameters.
    penalized_log_likelihood_ : float
        ``log_likelihood_`` minus the ridge penalty: the objective that was
        maximised (equal to ``log_likelihood_`` when ``alpha=0``).
    log_likelihood_trace_ : ndarray
        Log-likelihood after each iteration of the best restart.
    n_iter_ : int
        EM (or, with ``solver="mle"``, L-BFGS-B) iterations of the best
        restart; at most ``max_iter``.
    n_iter_polish_ : int
        L-BFGS-B iterations of the polish (0 without it); at most
        ``max_iter``.
    converged_ : bool
        True only when the stopping rule fired in every engine that ran on
        the best restart (EM and the polish); a cap reached anywhere gives
        False and a ``ConvergenceWarning`` naming it.
    restart_log_likelihoods_ : ndarray of shape (n_init,)
        Final log-likelihood of every restart, before the split-and-merge
        moves and the polish (``log_likelihood_`` may exceed them all); one
        entry after a warm start.
    restart_converged_ : ndarray of shape (n_init,)
        Converged flag of every restart.
    n_parameters_ : int
        Number of free parameters (used by ``bic`` and ``aic``).
    var_floor_ : float
        The variance floor ``reg_var * Var(y)`` in force.
    gate_feature_names_, expert_feature_names_ : list of str
        Names of the gate's and the experts' design columns.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Feature names, when X had string column names.
    response_name_ : str
        The name of ``y`` (a pandas Series' name; ``"y"`` otherwise), shown
        in the summary and on plots.
"""

_GATE_PARAMETERS_DOC = """
    gate : {"softmax", "modified_softmax", "normalized_sigmoid"} or gate \
object, default="softmax"
        The gate over the routed experts: a name (``"modified_softmax"``
        uses the ``tanh`` transform) or an object such as
        ``moestat.NormalizedSigmoidGate(top_k=2)`` or
        ``moestat.ModifiedSoftmaxGate(transform="sigmoid")``."""

_EXPERT_PARAMETER_DOC = """
    expert : expert family object or None, default=None
        The experts' family: any object with the hooks of
        :class:`moestat.protocols.ExpertFamily`, such as
        ``moestat.GaussianExpert(degree=2)``, ``moestat.GLMExpert("poisson")``
        or ``moestat.ReLUExpert()``. None: {default}."""

_FITTING_PARAMETERS_DOC = """
    n_shared_experts : int, default=0
        Always-active shared experts added to the ``n_experts`` routed ones
        (DeepSeekMoE): ``p(y|x) = lambda sum_i omega_i f_i + (1 - lambda)
        sum_j g_j(x) f_j``. They come first in ``expert_coef_``.
    shared_weight : {"fixed_half", "learned"}, default="fixed_half"
        The split ``lambda`` between shared and routed experts: 1/2 as in
        DeepSeekMoE, or estimated.
    solver : {"em", "mle"}, default="em"
        ``"em"``: the EM algorithm; ``"mle"``: direct maximisation of the
        log-likelihood by L-BFGS-B with analytic gradients.
    n_init : int, default=3
        Number of restarts; the best regular one is kept and, with
        ``init="auto"``, improved by split-and-merge moves (three restarts
        with the moves reach the maximum more often, and sooner, than ten
        without them; see the user guide's "Starting values").
    init : {"auto", "kmeans", "random"} or MoEParams, default="auto"
        How restarts start. ``"kmeans"``: a k-means partition of the
        standardised (x, y); ``"random"``: the best of 5 random partitions
        (each sample to the nearest of m random data points) after 10 EM
        iterations; ``"auto"``: k-means for the first restart, ``"random"``
        for the others, then split-and-merge moves on the best restart
        (merge the two experts with the most alike responsibilities, split
        the expert that fits its samples worst, keep the move only if the
        likelihood rises; :func:`moestat.starts.split_merge`). Starting
        parameters (a ``MoEParams``, e.g. another fit's ``params_``) are
        used for the first restart.
    tol : float, default=1e-6
        Stopping tolerance: a fit stops when the gain still to come, as
        Aitken's acceleration predicts it from the last three
        log-likelihoods, is at most ``tol`` per sample (``tol * n`` in
        total) and the increments shrink; see :mod:`moestat.fit`. The
        polish runs to round-off (``tol=1e-12``).
    max_iter : int, default=1000
        Maximum iterations per restart, for EM and for the polish each."""

_REG_VAR_DOC = """
    reg_var : float, default=1e-6
        Variance floor, relative to ``Var(y)``: every expert variance is
        kept at or above ``reg_var * Var(y)`` (the Gaussian likelihood is
        unbounded as an expert collapses onto a point)."""

_SWEEP_DTYPE_DOC = """
    sweep_dtype : {"float64", "float32"}, default="float64"
        Arithmetic within a chunk where EM sweeps the data in chunks (large
        n, pieces that declare sweep kernels: :func:`moestat.fit.em`); the
        sums across chunks, the full path and the torch backend stay
        float64. ``"float32"`` moves half the bytes: about twice as fast
        per EM iteration at n = 10^6, the log-likelihood at the maximum
        within about ``1e-7`` per sample of float64's."""

_SHARED_VARIANCE_DOC = """
    shared_variance : bool, default=False
        If True all experts share one noise variance."""

_ENGINE_PARAMETERS_DOC = """
    polish : bool, default=True
        Finish the best restart with L-BFGS-B on the log-likelihood (the
        EM-then-MLE hybrid): EM converges linearly and its stopping rule can
        leave the last digits of the maximum unreached. The polish is kept
        only if it does not lower the likelihood.
    alpha : float, default=0.0
        Ridge penalty on the standardised slopes of the gate (and of GLM and
        multinomial experts; intercepts and Gaussian experts are free): the
        fit maximises ``log L - (alpha / 2) sum (sd_j beta_ij)^2``, with
        ``sd_j`` the spread of design column ``j``, so the penalty does not
        depend on units. It keeps the estimate finite where the data
        separate (the likelihood then has no maximum); ``inference()``
        then says its standard errors are from the penalised information.
        numpy backend only.
    backend : {"numpy", "torch"}, default="numpy"
        ``"torch"`` fits every restart at once, batched, with the engines of
        :mod:`moestat.torch.fit` (float64; PyTorch needed). Starts, stopping
        rule and result are the numpy backend's: from the same start the
        log-likelihoods agree to about 1e-8 relative.
    device : str, torch.device or None, default=None
        Where the torch backend computes (``"cpu"``, ``"cuda"``); None is
        the CPU. Ignored by the numpy backend.
    random_state : int, numpy Generator or None, default=None
        Seeds the one random stream that every restart draws from.
    gate_features : list of int or str, or None, default=None
        The columns of ``X`` the gate sees (flexmix's concomitant
        variables): indices, or column names when ``X`` is a DataFrame.
        None: every column. The fitted parameters' names say which
        covariate each slope belongs to.
    expert_features : list of int or str, or None, default=None
        The columns of ``X`` the experts' basis is built from, as for
        ``gate_features``.
    verbose : int, default=0
        0: silent. 1 or more: the fit's progress on stderr (the plan, the
        log-likelihood of every restart, of the moves and of the polish).
    warm_start : bool, default=False
        Refit from the previous fit's parameters (one run, neither
        restarts nor moves) when the number of experts and the designs'
        columns are unchanged; otherwise, or on the first fit, start as
        ``init`` says.
"""

# The parameters of GaussianMoE and PolynomialMoE after their own.
_COMMON_PARAMETERS_DOC = (
    _GATE_PARAMETERS_DOC
    + _FITTING_PARAMETERS_DOC
    + _REG_VAR_DOC
    + _SHARED_VARIANCE_DOC
    + _ENGINE_PARAMETERS_DOC
    + _SWEEP_DTYPE_DOC
)


class MixtureOfExpertsRegressor(RegressorMixin, _BaseMixtureOfExperts):  # noqa: D101
    __doc__ = (
        """Mixture of experts for regression: any gate with any expert family.

    ``p(y | x) = sum_i g_i(x) f(y | x; theta_i)``, the gate ``g`` and the
    expert family ``f`` given as objects (as the ``model=`` and
    ``concomitant=`` drivers of R's flexmix). Every piece of
    :mod:`moestat.gates` and :mod:`moestat.experts` can be combined, and so
    can pieces written outside moestat that have the hooks of
    :class:`moestat.protocols.Gate` and :class:`moestat.protocols.ExpertFamily`
    (:func:`moestat.utils.check_gate` and
    :func:`moestat.utils.check_expert_family` test them).
    :class:`GaussianMoE` and :class:`PolynomialMoE` are this estimator with
    the expert family built from their parameters.

    Parameters
    ----------
    n_experts : int, default=2
        Number of routed experts ``m``."""
        + _GATE_PARAMETERS_DOC
        + _EXPERT_PARAMETER_DOC.format(
            default="linear Gaussian experts, ``moestat.GaussianExpert()``"
        )
        + _FITTING_PARAMETERS_DOC
        + _REG_VAR_DOC.replace(
            "point).", "point). Ignored by families without variances."
        )
        + _ENGINE_PARAMETERS_DOC
        + _SWEEP_DTYPE_DOC
        + _FITTED_ATTRIBUTES_DOC.replace(
            "        Expert noise variances.\n",
            "        Expert noise variances.\n"
            "        ``gate_coef_``, ``expert_coef_`` and ``expert_var_`` are the\n"
            "        ``coef`` and ``var`` arrays of the pieces' parameters, set where\n"
            "        the parameters have them (every built-in piece but\n"
            "        ``StackedExperts``, whose parameters are ``params_.expert``).\n",
        )
        + """
    See Also
    --------
    MixtureOfExpertsClassifier : The same for expert families over classes.
    GaussianMoE : Linear Gaussian experts.
    PolynomialMoE : Gaussian, Poisson or Bernoulli experts on a polynomial basis.

    Notes
    -----
    ``backend="torch"`` fits the pieces with batched kernels
    (:class:`moestat.protocols.BatchedGate` and
    :class:`~moestat.protocols.BatchedExpertFamily`: every gate and expert
    family of moestat without a ridge, and user-written pieces with the
    hooks) and refuses others by name. ``alpha > 0`` needs a gate with a ridge penalty
    (:class:`moestat.protocols.Penalised`); expert families with one get the
    same ``alpha``, others are fitted without a penalty.

    Examples
    --------
    ReLU experts, ``N(y | eta_2 max(0, eta_1^T x + eta_0), nu)``, under a
    normalized sigmoid gate:

    >>> import numpy as np
    >>> from moestat import MixtureOfExpertsRegressor, NormalizedSigmoidGate
    >>> from moestat import ReLUExpert
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-2, 2, size=(1000, 1))
    >>> y = np.where(X[:, 0] > 0, 2 * X[:, 0], -X[:, 0]) + rng.normal(0, 0.2, 1000)
    >>> est = MixtureOfExpertsRegressor(
    ...     2, gate=NormalizedSigmoidGate(), expert=ReLUExpert(), random_state=0
    ... ).fit(X, y)
    >>> est.predict(np.array([[1.0], [-1.0]])).round(1)
    array([2., 1.])
    """
    )

    _parameter_constraints = _constraints(
        *_FITTING_PARAMETERS, "expert", "reg_var", "sweep_dtype"
    )

    def __init__(
        self,
        n_experts: int = 2,
        *,
        gate: str | Gate = "softmax",
        expert: ExpertFamily | None = None,
        n_shared_experts: int = 0,
        shared_weight: str = "fixed_half",
        solver: str = "em",
        n_init: int = 3,
        init: Any = "auto",
        tol: float = 1e-6,
        max_iter: int = 1000,
        reg_var: float = 1e-6,
        polish: bool = True,
        alpha: float = 0.0,
        backend: str = "numpy",
        device: Any = None,
        random_state: Any = None,
        gate_features: Any = None,
        expert_features: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
        sweep_dtype: str = "float64",
    ) -> None:
        self.n_experts = n_experts
        self.gate = gate
        self.expert = expert
        self.n_shared_experts = n_shared_experts
        self.shared_weight = shared_weight
        self.solver = solver
        self.n_init = n_init
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.reg_var = reg_var
        self.polish = polish
        self.alpha = alpha
        self.backend = backend
        self.device = device
        self.random_state = random_state
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.verbose = verbose
        self.warm_start = warm_start
        self.sweep_dtype = sweep_dtype

    def _expert_family(self) -> ExpertFamily:
        return GaussianExpert() if self.expert is None else self.expert

    def _sweep_dtype(self) -> np.dtype:
        return np.dtype(self.sweep_dtype)

    def _reg_var(self) -> float:
        return self.reg_var

    def _positive_only(self) -> bool:
        """Whether the responses must be non-negative (Poisson experts)."""
        expert = self._expert_family()
        return isinstance(expert, GLMFamily) and expert.family == "poisson"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = self._positive_only()
        return tags

    def predict(
        self, X: ArrayLike, return_std: bool = False
    ) -> NDArray[np.float64] | tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Predict the conditional mean ``E[y | x]``, and its spread.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        return_std : bool, default=False
            Also return the standard deviation of the predictive
            distribution, ``sd(y | x)``, by the law of total variance:
            ``Var(y | x) = sum_i g_i(x) (v_i(x) + mu_i(x)^2) - E[y | x]^2``
            with ``v_i`` expert ``i``'s variance (``nu_i`` for Gaussian
            experts, ``mu_i`` for Poisson, ``mu_i (1 - mu_i)`` for
            Bernoulli; :func:`moestat.predictive.predictive_moments`).

        Returns
        -------
        mean : ndarray of shape (n_samples,)
            ``sum_i g_i(x) mu_i(x)``: the expert means mixed by the gate.
        std : ndarray of shape (n_samples,)
            Only with ``return_std=True``.

        Examples
        --------
        >>> from moestat import GaussianMoE
        >>> from moestat.datasets import make_moe_regression
        >>> X, y, truth = make_moe_regression(n_samples=500, random_state=0)
        >>> est = GaussianMoE(2, random_state=0).fit(X, y)
        >>> mean, std = est.predict(X[:3], return_std=True)
        >>> bool((std > 0).all())
        True
        """
        X = self._validated(X)
        if not return_std:
            return self.model_.predict(X)
        _, variance = predictive_moments(self.model_, X)
        return self.model_.predict(X), np.sqrt(variance)

    def predict_quantile(self, X: ArrayLike, q: ArrayLike) -> NDArray[np.float64]:
        """Quantiles of the predictive distribution ``p(y | x)``.

        The inverse at ``q`` of ``F(y | x) = sum_i g_i(x) F_i(y | x)``: for
        Gaussian experts the root of ``F(y | x) = q``, found row by row by
        Newton's method kept inside the bracket of the experts' own
        quantiles; for Poisson and Bernoulli experts the smallest integer
        with ``F(y | x) >= q`` (see :mod:`moestat.predictive`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        q : float or array-like of shape (n_levels,)
            Levels strictly between 0 and 1.

        Returns
        -------
        ndarray of shape (n_samples,) for a scalar ``q``, else (n_samples, n_levels)

        Raises
        ------
        ValueError
            For levels outside (0, 1), or an expert family whose
            distribution moestat does not know (one written outside
            moestat without ``response_family = "gaussian"`` and variances).

        Examples
        --------
        >>> from moestat import GaussianMoE
        >>> from moestat.datasets import make_moe_regression
        >>> X, y, truth = make_moe_regression(n_samples=500, random_state=0)
        >>> est = GaussianMoE(2, random_state=0).fit(X, y)
        >>> est.predict_quantile(X[:4], [0.1, 0.5, 0.9]).shape
        (4, 3)
        """
        X = self._validated(X)
        return predictive_quantile(self.model_, X, q)

    def predict_interval(self, X: ArrayLike, alpha: float = 0.1) -> NDArray[np.float64]:
        """Equal-tailed prediction intervals of coverage ``1 - alpha``.

        The quantiles at ``alpha / 2`` and ``1 - alpha / 2`` of the
        predictive distribution (:meth:`predict_quantile`). They are
        intervals for a new response at ``x`` under the fitted model; the
        uncertainty of the estimate itself is not in them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        alpha : float, default=0.1
            Probability outside the interval, between 0 and 1.

        Returns
        -------
        ndarray of shape (n_samples, 2)
            Lower and upper ends.

        Examples
        --------
        >>> from moestat import GaussianMoE
        >>> from moestat.datasets import make_moe_regression
        >>> X, y, truth = make_moe_regression(n_samples=500, random_state=0)
        >>> est = GaussianMoE(2, random_state=0).fit(X, y)
        >>> est.predict_interval(X[:2], alpha=0.1).shape
        (2, 2)
        """
        if isinstance(alpha, bool) or not (isinstance(alpha, Real) and 0 < alpha < 1):
            raise ValueError(f"alpha must be between 0 and 1; got {alpha!r}.")
        return self.predict_quantile(X, [alpha / 2, 1 - alpha / 2])

    def predict_experts(self, X: ArrayLike) -> NDArray[np.float64]:
        """Each expert's own conditional mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
        """
        X = self._validated(X)
        return self.model_.expert_means(X)

    def sample(self, X: ArrayLike, random_state: Any = None) -> NDArray[np.float64]:
        """Draw responses ``y ~ p(y | x)`` from the fitted model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        random_state : None, int or numpy Generator, default=None

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X = self._validated(X)
        return self.model_.sample(X, random_state)[0]


_CLASSIFIER_ATTRIBUTES_DOC = """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels (any sortable labels: ints, strings).
    expert_coef_ : ndarray of shape (n_experts, n_classes - 1, n_basis)
        Each expert's coefficients of classes ``classes_[1:]`` (the first
        class is the reference).
    model_, params_, gate_coef_, log_likelihood_, penalized_log_likelihood_, \
log_likelihood_trace_, \
n_iter_, n_iter_polish_, converged_, restart_log_likelihoods_, \
restart_converged_, \
n_parameters_, gate_feature_names_, expert_feature_names_, n_features_in_, \
feature_names_in_, response_name_
        As for :class:`GaussianMoE`.
"""


class MixtureOfExpertsClassifier(ClassifierMixin, _BaseMixtureOfExperts):  # noqa: D101
    __doc__ = (
        """Mixture of experts for classification: any gate, experts over classes.

    ``P(y = c | x) = sum_i g_i(x) p_i(c | x)``, the gate and the expert
    family given as objects, as for :class:`MixtureOfExpertsRegressor`. The
    labels are coded ``0 .. K-1`` in the order of ``classes_``; the expert
    family gives class probabilities
    (:class:`moestat.protocols.HasClassProbabilities`), and one with an
    ``n_classes`` field (:class:`moestat.protocols.MultinomialFamily`) is
    given the number of classes of ``y`` at fit.
    :class:`MultinomialLogisticMoE` is this estimator with multinomial
    logistic experts on a polynomial basis.

    Parameters
    ----------
    n_experts : int, default=2
        Number of routed experts ``m``."""
        + _GATE_PARAMETERS_DOC
        + _EXPERT_PARAMETER_DOC.format(
            default="multinomial logistic experts, "
            "``moestat.MultinomialLogisticExpert()``"
        )
        + _FITTING_PARAMETERS_DOC
        + _ENGINE_PARAMETERS_DOC
        + _CLASSIFIER_ATTRIBUTES_DOC
        + """
    See Also
    --------
    MultinomialLogisticMoE : Multinomial logistic experts of a given degree.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from moestat import MixtureOfExpertsClassifier, MultinomialLogisticExpert
    >>> from moestat import NormalizedSigmoidGate
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = MixtureOfExpertsClassifier(
    ...     2,
    ...     gate=NormalizedSigmoidGate(),
    ...     expert=MultinomialLogisticExpert(degree=1),
    ...     alpha=1.0,
    ...     n_init=2,
    ...     random_state=0,
    ... ).fit(X[:, 2:], y)
    >>> clf.predict_proba(X[:2, 2:]).shape
    (2, 3)
    """
    )

    _parameter_constraints = _constraints(*_FITTING_PARAMETERS, "expert")

    def __init__(
        self,
        n_experts: int = 2,
        *,
        gate: str | Gate = "softmax",
        expert: ExpertFamily | None = None,
        n_shared_experts: int = 0,
        shared_weight: str = "fixed_half",
        solver: str = "em",
        n_init: int = 3,
        init: Any = "auto",
        tol: float = 1e-6,
        max_iter: int = 1000,
        polish: bool = True,
        alpha: float = 0.0,
        backend: str = "numpy",
        device: Any = None,
        random_state: Any = None,
        gate_features: Any = None,
        expert_features: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
    ) -> None:
        self.n_experts = n_experts
        self.gate = gate
        self.expert = expert
        self.n_shared_experts = n_shared_experts
        self.shared_weight = shared_weight
        self.solver = solver
        self.n_init = n_init
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.polish = polish
        self.alpha = alpha
        self.backend = backend
        self.device = device
        self.random_state = random_state
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.verbose = verbose
        self.warm_start = warm_start

    def _expert_family(self) -> ExpertFamily:
        n_classes = len(self.classes_)
        expert = self.expert
        if expert is None:
            return MultinomialLogisticExpert(n_classes)
        if not isinstance(expert, HasClassProbabilities):
            raise ValueError(
                f"{type(self).__name__} needs an expert family over classes (one "
                "with class_probabilities, moestat.protocols.HasClassProbabilities); "
                f"got {type(expert).__name__}. Use MixtureOfExpertsRegressor."
            )
        if isinstance(expert, MultinomialFamily) and expert.n_classes != n_classes:
            expert = replace(expert, n_classes=n_classes)
        return expert

    def _validate_xy(self, X: ArrayLike, y: ArrayLike) -> tuple[NDArray, NDArray]:
        check_response_entries(y, type(self).__name__, numeric=False)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_scale(X, "X")
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        return X, codes.astype(np.float64)

    def _keep_rows(
        self, X: NDArray, y: NDArray, keep: NDArray[np.bool_]
    ) -> tuple[NDArray, NDArray]:
        """The rows ``keep``, and the classes that occur in them."""
        present = np.unique(y[keep])
        self.classes_ = self.classes_[present.astype(np.intp)]
        return X[keep], np.searchsorted(present, y[keep]).astype(np.float64)

    def _check_target(self, y: NDArray[np.float64]) -> None:
        # the labels were coded 0 .. K-1 by _validate_xy
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes in y; got 1 class "
                f"({self.classes_.tolist()[0]!r})."
            )

    def _encode_y(self, y: NDArray) -> NDArray[np.float64]:
        codes = np.searchsorted(self.classes_, y)
        codes = np.clip(codes, 0, len(self.classes_) - 1)
        unknown = self.classes_[codes] != y
        if np.any(unknown):
            unseen = np.unique(y[unknown])[:5].tolist()
            raise ValueError(
                f"y contains labels not seen in fit: {unseen}; the classes are "
                f"{self.classes_.tolist()}."
            )
        return codes.astype(np.float64)

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Class probabilities ``sum_i g_i(x) p_i(c | x)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        X = self._validated(X)
        return self.model_.predict_proba(X)

    def predict_log_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: ArrayLike) -> NDArray:
        """The most probable class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def sample(self, X: ArrayLike, random_state: Any = None) -> NDArray:
        """Draw labels ``y ~ P(y | x)`` from the fitted model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        random_state : None, int or numpy Generator, default=None

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        X = self._validated(X)
        codes = self.model_.sample(X, random_state)[0].astype(np.intp)
        return self.classes_[codes]


class GaussianMoE(MixtureOfExpertsRegressor):  # noqa: D101 (__doc__ below)
    __doc__ = (
        """Mixture of linear Gaussian experts with a gate on x.

    ``p(y | x) = sum_i g_i(x) N(y | b_i + a_i^T x, nu_i)``.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts ``m``."""
        + _COMMON_PARAMETERS_DOC
        + _FITTED_ATTRIBUTES_DOC
        + """
    See Also
    --------
    PolynomialMoE : Experts whose mean is a polynomial of order k.
    MixtureOfExpertsRegressor : Any gate with any expert family.

    Examples
    --------
    >>> from moestat import GaussianMoE
    >>> from moestat.datasets import make_moe_regression
    >>> X, y, truth = make_moe_regression(n_samples=2000, random_state=0)
    >>> est = GaussianMoE(n_experts=2, random_state=0).fit(X, y)
    >>> est.predict_gate(X[:3]).shape
    (3, 2)

    The gate on the first covariate, the experts on the second:

    >>> X, y, truth = make_moe_regression(n_samples=1000, n_features=2, random_state=0)
    >>> est = GaussianMoE(2, gate_features=[0], expert_features=[1], random_state=0)
    >>> est = est.fit(X, y)
    >>> est.gate_feature_names_, est.expert_feature_names_
    (['const', 'x0'], ['const', 'x1'])
    """
    )

    _parameter_constraints = _constraints(
        *_FITTING_PARAMETERS, "reg_var", "shared_variance", "sweep_dtype"
    )

    def __init__(
        self,
        n_experts: int = 2,
        *,
        gate: Any = "softmax",
        n_shared_experts: int = 0,
        shared_weight: str = "fixed_half",
        solver: str = "em",
        n_init: int = 3,
        init: Any = "auto",
        tol: float = 1e-6,
        max_iter: int = 1000,
        reg_var: float = 1e-6,
        shared_variance: bool = False,
        polish: bool = True,
        alpha: float = 0.0,
        backend: str = "numpy",
        device: Any = None,
        random_state: Any = None,
        gate_features: Any = None,
        expert_features: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
        sweep_dtype: str = "float64",
    ) -> None:
        self.n_experts = n_experts
        self.gate = gate
        self.n_shared_experts = n_shared_experts
        self.shared_weight = shared_weight
        self.solver = solver
        self.n_init = n_init
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.reg_var = reg_var
        self.shared_variance = shared_variance
        self.polish = polish
        self.alpha = alpha
        self.backend = backend
        self.device = device
        self.random_state = random_state
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.verbose = verbose
        self.warm_start = warm_start
        self.sweep_dtype = sweep_dtype

    def _expert_family(self) -> GaussianExpert:
        return GaussianExpert(degree=1, shared_variance=self.shared_variance)


class PolynomialMoE(MixtureOfExpertsRegressor):  # noqa: D101 (__doc__ below)
    __doc__ = (
        """Mixture of experts whose predictors are polynomials of order k.

    ``p(y | x) = sum_i g_i(x) f(y | x; c_i)`` with ``f`` Gaussian
    (``N(y | c_i^T phi_k(x), nu_i)``), Poisson (log link) or Bernoulli (logit
    link) and ``phi_k`` every monomial of total degree at most ``k``
    (scikit-learn's ``PolynomialFeatures``). As in the polynomial-expert
    papers the gate sees x itself (affine scores) while the experts see the
    polynomial basis.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts ``m``.
    degree : int, default=2
        Order ``k`` of the experts' polynomial predictor (0: constant).
    family : {"gaussian", "poisson", "bernoulli"}, default="gaussian"
        The experts' distribution, with its canonical link. Poisson needs
        ``y >= 0`` (non-integers give the quasi-Poisson fit); Bernoulli needs
        ``y`` in ``[0, 1]`` (proportions give the quasi-binomial fit).
        ``predict`` returns the conditional mean, ``E[y | x]``."""
        + _COMMON_PARAMETERS_DOC
        + _FITTED_ATTRIBUTES_DOC
        + """
    See Also
    --------
    GaussianMoE : The linear case (``degree=1``).
    MixtureOfExpertsRegressor : Any gate with any expert family.

    References
    ----------
    .. [1] Mendes, E. F. and Jiang, W. (2012). On convergence rates of
       mixtures of polynomial experts. Neural Computation 24(11).

    Examples
    --------
    >>> from moestat import PolynomialMoE
    >>> from moestat.datasets import make_moe_regression
    >>> X, y, truth = make_moe_regression(n_samples=2000, degree=2, random_state=0)
    >>> est = PolynomialMoE(n_experts=2, degree=2, random_state=0).fit(X, y)
    >>> est.expert_coef_.shape
    (2, 3)
    """
    )

    _parameter_constraints = _constraints(
        *_FITTING_PARAMETERS,
        "reg_var",
        "shared_variance",
        "degree",
        "family",
        "sweep_dtype",
    )

    def __init__(
        self,
        n_experts: int = 2,
        degree: int = 2,
        *,
        family: str = "gaussian",
        gate: Any = "softmax",
        n_shared_experts: int = 0,
        shared_weight: str = "fixed_half",
        solver: str = "em",
        n_init: int = 3,
        init: Any = "auto",
        tol: float = 1e-6,
        max_iter: int = 1000,
        reg_var: float = 1e-6,
        shared_variance: bool = False,
        polish: bool = True,
        alpha: float = 0.0,
        backend: str = "numpy",
        device: Any = None,
        random_state: Any = None,
        gate_features: Any = None,
        expert_features: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
        sweep_dtype: str = "float64",
    ) -> None:
        self.n_experts = n_experts
        self.degree = degree
        self.family = family
        self.gate = gate
        self.n_shared_experts = n_shared_experts
        self.shared_weight = shared_weight
        self.solver = solver
        self.n_init = n_init
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.reg_var = reg_var
        self.shared_variance = shared_variance
        self.polish = polish
        self.alpha = alpha
        self.backend = backend
        self.device = device
        self.random_state = random_state
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.verbose = verbose
        self.warm_start = warm_start
        self.sweep_dtype = sweep_dtype

    def _expert_family(self) -> GaussianExpert | GLMExpert:
        if self.family == "gaussian":
            return GaussianExpert(
                degree=self.degree, shared_variance=self.shared_variance
            )
        return GLMExpert(self.family, degree=self.degree)

    def _positive_only(self) -> bool:
        return self.family == "poisson"

    def _summary_extras(self) -> dict[str, Any]:
        return {"Degree (k)": self.degree}


class MultinomialLogisticMoE(MixtureOfExpertsClassifier):  # noqa: D101
    __doc__ = (
        """Mixture of multinomial logistic experts: classification with K classes.

    ``P(y = c | x) = sum_i g_i(x) p_i(c | x)``, each expert a multinomial
    logistic regression on ``phi(x)`` (the first class is its reference) and
    the gate on x.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts ``m``.
    degree : int, default=1
        Order of the polynomial basis of the experts' class scores."""
        + _GATE_PARAMETERS_DOC
        + _FITTING_PARAMETERS_DOC
        + _ENGINE_PARAMETERS_DOC
        + _CLASSIFIER_ATTRIBUTES_DOC
        + """
    See Also
    --------
    MixtureOfExpertsClassifier : Any gate with any expert family over classes.

    Notes
    -----
    With ``n_experts=1`` the fit is statsmodels' ``MNLogit``. Classes that
    are (nearly) separable inside an expert have their maximum at infinity:
    the coefficients grow as EM runs while every probability stays finite;
    the fit stops there with ``converged_=False`` and a
    ``DegenerateFitWarning`` naming the coefficients (see
    :mod:`moestat.boundary`), and ``alpha > 0`` gives a finite estimate.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from moestat import MultinomialLogisticMoE
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = MultinomialLogisticMoE(2, n_init=2, alpha=1.0, random_state=0)
    >>> clf = clf.fit(X[:, 2:], y)  # iris separates: alpha keeps it finite
    >>> clf.predict_proba(X[:2, 2:]).shape
    (2, 3)
    """
    )

    _parameter_constraints = _constraints(*_FITTING_PARAMETERS, "degree")

    def __init__(
        self,
        n_experts: int = 2,
        *,
        degree: int = 1,
        gate: Any = "softmax",
        n_shared_experts: int = 0,
        shared_weight: str = "fixed_half",
        solver: str = "em",
        n_init: int = 3,
        init: Any = "auto",
        tol: float = 1e-6,
        max_iter: int = 1000,
        polish: bool = True,
        alpha: float = 0.0,
        backend: str = "numpy",
        device: Any = None,
        random_state: Any = None,
        gate_features: Any = None,
        expert_features: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
    ) -> None:
        self.n_experts = n_experts
        self.degree = degree
        self.gate = gate
        self.n_shared_experts = n_shared_experts
        self.shared_weight = shared_weight
        self.solver = solver
        self.n_init = n_init
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.polish = polish
        self.alpha = alpha
        self.backend = backend
        self.device = device
        self.random_state = random_state
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.verbose = verbose
        self.warm_start = warm_start

    def _expert_family(self) -> MultinomialLogisticExpert:
        return MultinomialLogisticExpert(len(self.classes_), degree=self.degree)

    def _summary_extras(self) -> dict[str, Any]:
        return {"Degree (k)": self.degree}
