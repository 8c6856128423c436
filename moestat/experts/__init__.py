"""Expert families: the component densities f(y | x; theta_i).

An expert family is a small stateless piece that works on all m experts at
once: the per-expert log density as an (n, m) array, the weighted M-step
(responsibilities in, new parameters out), the conditional means, sampling,
and the gradient of the weighted complete-data log-likelihood in its packed
free parameters (used by direct MLE, by Fisher's identity). The hooks are
declared by :class:`moestat.protocols.ExpertFamily`; any object that has them
is an expert family (:func:`moestat.utils.check_expert_family` tests one).

- :class:`GaussianExpert`: Gaussian regression, polynomial mean.
- :class:`GLMExpert`: Poisson or Bernoulli regression (canonical link),
  polynomial linear predictor.
- :class:`MultinomialLogisticExpert`: multinomial logit over K classes.
- :class:`ReLUExpert`: Gaussian regression on one ReLU unit (DeepSeekMoE).
- :class:`StackedExperts`: shared experts of one family beside routed
  experts of another (for :class:`~moestat.gates.SharedExpertsGate`).
"""

from moestat.experts.gaussian import GaussianExpert, GaussianExpertParams
from moestat.experts.glm import GLMExpert, GLMExpertParams
from moestat.experts.multinomial import (
    MultinomialExpertParams,
    MultinomialLogisticExpert,
)
from moestat.experts.relu import ReLUExpert, ReLUExpertParams
from moestat.experts.stacked import StackedExpertParams, StackedExperts

__all__ = [
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
]
