"""Toy models of superposition (Elhage et al. 2022): train many tiny ReLU-output models at once,
measure feature dimensionality and geometry across sparsity, plot."""

from monosemantic.toy.config import ToyConfig
from monosemantic.toy.geometry import Geometry, classify, dimensions_per_feature, feature_dimensionality
from monosemantic.toy.model import ToyModel, train_toy_model

# run_toy_sweep stays in monosemantic.toy.sweep: it draws figures, and importing the package must not
# pull in matplotlib for the run config
__all__ = [
    "Geometry",
    "ToyConfig",
    "ToyModel",
    "classify",
    "dimensions_per_feature",
    "feature_dimensionality",
    "train_toy_model",
]
