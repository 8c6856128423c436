"""Formulas for the experts and the gate (formulaic's model specs).

``"foodexp ~ income"`` names the response and the experts' covariates,
``"~ income + age"`` the gate's. Each right-hand side becomes a model
matrix without its intercept column (the gate's and the experts' designs
add their own); the covariates of an estimator are the union of the two
matrices' columns, and each part selects its own by name. The model specs
are kept, so new data go through the same transforms (stateful ones such
as ``center(x)`` included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

#: The intercept column of a formulaic model matrix.
INTERCEPT = "Intercept"


@dataclass(frozen=True)
class FormulaDesign:
    """The formulas of a fit and the model specs that rebuild its covariates.

    Parameters
    ----------
    formula, gate_formula : str or None
        As given to ``from_formula``.
    response : str
        The response's name (the left-hand side).
    expert_spec, gate_spec : formulaic ModelSpec or None
        The specs of the experts' and the gate's right-hand sides.
    expert_columns, gate_columns : list of str
        Each part's covariate columns (the intercept dropped).
    """

    formula: str
    gate_formula: str | None
    response: str
    expert_spec: Any
    gate_spec: Any
    expert_columns: list[str]
    gate_columns: list[str]

    @property
    def columns(self) -> list[str]:
        """The covariates' columns: the experts', then the gate's others."""
        extra = [c for c in self.gate_columns if c not in self.expert_columns]
        return [*self.expert_columns, *extra]


def _formulaic():
    try:
        import formulaic
    except ImportError as error:  # pragma: no cover - a dependency
        raise ImportError(
            "Formulas need formulaic: `pip install formulaic`."
        ) from error
    return formulaic


def _without_intercept(matrix: pd.DataFrame, formula: str, part: str) -> pd.DataFrame:
    """The model matrix without its intercept, or a ValueError if it has none."""
    if INTERCEPT not in matrix.columns:
        raise ValueError(
            f"The {part} formula {formula!r} has no intercept, but the {part}'s "
            "design always has one: leave out '- 1' and '0 +'."
        )
    columns = [str(c) for c in matrix.columns if c != INTERCEPT]
    if not columns:
        raise ValueError(
            f"The {part} formula {formula!r} has no covariate: name at least one "
            "column on its right-hand side."
        )
    frame = pd.DataFrame(matrix).drop(columns=INTERCEPT)
    frame.columns = columns
    return frame


def formula_data(
    formula: str, data: pd.DataFrame, gate_formula: str | None = None
) -> tuple[pd.DataFrame, pd.Series, FormulaDesign]:
    """Covariates, response and specs of ``formula`` (and ``gate_formula``).

    Parameters
    ----------
    formula : str
        ``"response ~ terms"``: the response and the experts' covariates.
    data : pandas.DataFrame
        The data the terms are evaluated on.
    gate_formula : str, optional
        ``"~ terms"``: the gate's covariates; None: the experts' terms.

    Returns
    -------
    X : pandas.DataFrame
        The covariates (:attr:`FormulaDesign.columns`); rows with a missing
        value in either formula are dropped.
    y : pandas.Series
        The response, named by the left-hand side (the column itself when
        it is one, so class labels stay labels).
    design : FormulaDesign
        What :func:`formula_covariates` needs to rebuild ``X`` from new data.

    Raises
    ------
    ValueError
        For a formula without a response, a gate formula with one, or a
        right-hand side without an intercept or without covariates.
    """
    formulaic = _formulaic()
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame; got {type(data).__name__}.")
    parsed = formulaic.Formula(formula)
    if not hasattr(parsed, "lhs") or not len(parsed.lhs):
        raise ValueError(
            f"The formula {formula!r} has no response: write 'y ~ x1 + x2'."
        )
    matrices = formulaic.model_matrix(formula, data)
    experts = matrices.rhs
    lhs = matrices.lhs
    response = str(parsed.lhs).strip()
    gate = None
    if gate_formula is not None:
        parsed_gate = formulaic.Formula(gate_formula)
        if hasattr(parsed_gate, "lhs"):
            raise ValueError(
                f"The gate formula {gate_formula!r} has a response; write its "
                "right-hand side only, such as '~ income + age'."
            )
        gate = formulaic.model_matrix(gate_formula, data)
    index = experts.index if gate is None else experts.index.intersection(gate.index)
    expert_frame = _without_intercept(experts, formula, "experts'")
    gate_frame = (
        expert_frame
        if gate is None
        else _without_intercept(gate, gate_formula, "gate's")
    )
    design = FormulaDesign(
        formula=formula,
        gate_formula=gate_formula,
        response=response,
        expert_spec=experts.model_spec,
        gate_spec=None if gate is None else gate.model_spec,
        expert_columns=list(expert_frame.columns),
        gate_columns=list(gate_frame.columns),
    )
    X = pd.concat([expert_frame, gate_frame], axis=1).loc[index]
    X = X.loc[:, ~X.columns.duplicated()][design.columns]
    if response in data.columns:
        y = data.loc[index, response]
    elif lhs.shape[1] == 1:
        y = pd.Series(lhs.iloc[:, 0].loc[index], name=response)
    else:
        raise ValueError(
            f"The response {response!r} of {formula!r} gives {lhs.shape[1]} "
            "columns; it must give one."
        )
    return X, y.rename(response), design


def formula_covariates(design: FormulaDesign, data: pd.DataFrame) -> pd.DataFrame:
    """The covariates of new ``data`` through a fit's formulas.

    Parameters
    ----------
    design : FormulaDesign
        From :func:`formula_data`.
    data : pandas.DataFrame
        New data with the columns the formulas read (the response is not
        needed).

    Returns
    -------
    pandas.DataFrame
        One row per row of ``data`` (missing values stay, and are refused
        by the estimator's checks), with the columns of the fit.
    """
    parts = [design.expert_spec.get_model_matrix(data, na_action="ignore")]
    if design.gate_spec is not None:
        parts.append(design.gate_spec.get_model_matrix(data, na_action="ignore"))
    frames = []
    for matrix in parts:
        frame = pd.DataFrame(matrix).drop(columns=INTERCEPT)
        frame.columns = [str(c) for c in frame.columns]
        frames.append(frame)
    X = pd.concat(frames, axis=1)
    return X.loc[:, ~X.columns.duplicated()][design.columns]
