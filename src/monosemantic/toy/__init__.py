"""Toy models of superposition (Elhage et al. 2022): train many tiny ReLU-output models at once,
measure feature dimensionality and geometry across sparsity, plot."""

from monosemantic.toy.geometry import Geometry, classify, dimensions_per_feature, feature_dimensionality
from monosemantic.toy.model import ToyModel, train_toy_model
from monosemantic.toy.sweep import ToyConfig, run_toy_sweep

__all__ = ["Geometry", "ToyConfig", "ToyModel", "classify", "dimensions_per_feature", "feature_dimensionality",
           "run_toy_sweep", "train_toy_model"]
