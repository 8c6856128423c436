"""Losses between a true and a fitted mixture of experts (theory.md section 5).

Two families of losses measure how far an estimate is from the truth:

- **density discrepancies** averaged over the covariate law (section 5.1):
  the Kullback-Leibler divergence, the Hellinger distance and the total
  variation, computed by quadrature in both the covariates and the
  response, never by Monte Carlo on the response;
- **Voronoi losses** between the mixing measures (section 5.2), which
  compare parameters through the Voronoi cells of the true atoms and so
  stay meaningful when the fit has more experts than the truth, and the
  per-parameter errors of section 5.3.

The covariate integral is a weighted sum over points ``X`` with weights
``w`` (Gauss-Legendre nodes from :func:`uniform_quadrature`, or a fixed
Monte-Carlo sample with equal weights). The response integral is an exact
sum for discrete responses and a dense trapezoid rule for continuous ones
(:func:`density_losses`); :func:`response_quadrature` gives a compact rule
under one model's density (Gauss-Hermite), e.g. for population EM.

The losses read what the model's pieces declare about themselves, never
their classes: an expert family's ``response_family`` (the response space
of the density losses) and ``voronoi_signature`` (its atoms in the Voronoi
catalogue), a gate's ``voronoi_signature`` and ``translation_invariant``
(whether its masses need an anchoring). A family of one's own that declares
``response_family = "gaussian"`` and gives a ``mean`` works with the
density losses as it is.
"""

from __future__ import annotations

from moestat.losses import _catalogue, _density, _voronoi
from moestat.losses._density import (
    density_losses,
    hellinger_distance,
    kl_divergence,
    total_variation,
)
from moestat.losses._quadrature import response_quadrature, uniform_quadrature
from moestat.losses._voronoi import (
    VoronoiLoss,
    per_parameter_errors,
    voronoi_cells,
    voronoi_loss,
)

__all__ = [
    "uniform_quadrature",
    "response_quadrature",
    "kl_divergence",
    "hellinger_distance",
    "total_variation",
    "density_losses",
    "VoronoiLoss",
    "voronoi_cells",
    "voronoi_loss",
    "per_parameter_errors",
    "DENSITY_LOSSES",
    "VORONOI_KINDS",
    "ANCHORS",
    "CELL_METRICS",
]

#: Names of the losses :func:`density_losses` computes.
DENSITY_LOSSES = _density.DENSITY_LOSSES
#: Voronoi losses of the catalogue, the ``kind`` of :func:`voronoi_loss`.
VORONOI_KINDS = _catalogue.VORONOI_KINDS
#: Anchorings of the softmax gate's translation, the ``anchor`` of
#: :func:`voronoi_loss`.
ANCHORS = _voronoi.ANCHORS
#: Distances that assign fitted atoms to Voronoi cells
#: (:func:`voronoi_cells`).
CELL_METRICS = _voronoi.CELL_METRICS
