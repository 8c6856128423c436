"""Array kernels shared by the numpy and torch code of moestat.

Functions of the Python array API standard (through ``array_api_compat``):
each is written once and runs on numpy arrays and torch tensors alike,
returning arrays of its input's kind. The statistical gates
(:mod:`moestat.gates`) call them on numpy arrays and the sparse routers
(:mod:`moestat.routing`) on torch tensors, so both compute the same gate
weights.

- :func:`affine_scores`: the experts' affine scores ``Z @ coef.T``.
- :func:`softmax_log_weights`: the softmax gate's ``log g``.
- :func:`normalized_sigmoid_log_weights`: the normalized sigmoid gate's
  ``log g``, dense or over a selection such as :func:`top_k_mask`.

:mod:`moestat.kernels.sweep` holds one EM sweep of a Gaussian MoE with a
softmax or dense normalized sigmoid gate (the weighted sums of both
M-steps, chunk by chunk, and the M-step from them,
:func:`~moestat.kernels.sweep.em_proposal`), which the numpy EM at large
``n`` and the fused torch EM share. :mod:`moestat.kernels.experts` holds
the expert families' densities and M-steps (Gaussian noise, GLM,
multinomial and ReLU experts), which the numpy families call on one data
set and the torch engine on a batch.
"""

from __future__ import annotations

from moestat.kernels.gates import (
    UNDERFLOW,
    affine_scores,
    log_sigmoid,
    log_sum_exp,
    normalized_sigmoid_log_weights,
    softmax_log_weights,
    top_k_mask,
)

__all__ = [
    "affine_scores",
    "log_sum_exp",
    "softmax_log_weights",
    "log_sigmoid",
    "top_k_mask",
    "normalized_sigmoid_log_weights",
    "UNDERFLOW",
]
