"""moestat: estimation and convergence rates for mixture-of-experts models.

A model is a gate times an expert family::

    p(y | x) = sum_i g_i(x) f(y | x; theta_i)

fitted by EM or direct maximum likelihood, with scikit-learn estimators on
top.
"""

from moestat.estimators import (
    GaussianMoE,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    MultinomialLogisticMoE,
    PolynomialMoE,
)
from moestat.exceptions import (
    ConvergenceWarning,
    DegenerateFitWarning,
    SingularInformationWarning,
)
from moestat.experts import (
    GaussianExpert,
    GaussianExpertParams,
    GLMExpert,
    GLMExpertParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
    ReLUExpert,
    ReLUExpertParams,
    StackedExpertParams,
    StackedExperts,
)
from moestat.gates import (
    GateParams,
    ModifiedSoftmaxGate,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SharedGateParams,
    SoftmaxGate,
)
from moestat.inference import MoEInferenceResults
from moestat.model import Design, MixtureOfExperts, MoEParams
from moestat.selection import bootstrap_lrt, select_model

__version__ = "0.1.0"

__all__ = [
    "MixtureOfExpertsRegressor",
    "MixtureOfExpertsClassifier",
    "GaussianMoE",
    "PolynomialMoE",
    "MultinomialLogisticMoE",
    "MixtureOfExperts",
    "select_model",
    "bootstrap_lrt",
    "MoEParams",
    "Design",
    "SoftmaxGate",
    "ModifiedSoftmaxGate",
    "NormalizedSigmoidGate",
    "SharedExpertsGate",
    "GateParams",
    "SharedGateParams",
    "GaussianExpert",
    "GaussianExpertParams",
    "GLMExpert",
    "GLMExpertParams",
    "MultinomialLogisticExpert",
    "MultinomialExpertParams",
    "ReLUExpert",
    "ReLUExpertParams",
    "StackedExperts",
    "StackedExpertParams",
    "ConvergenceWarning",
    "DegenerateFitWarning",
    "SingularInformationWarning",
    "MoEInferenceResults",
]
