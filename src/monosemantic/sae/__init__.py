"""Sparse autoencoders: four variants behind one interface, one trainer, metrics, SAELens-layout io."""

from monosemantic.sae.base import SparseAutoencoder, StepOutput
from monosemantic.sae.build import SAE_CLASSES, build_sae
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.trainer import TrainResult, train_sae

__all__ = ["SAEConfig", "SparseAutoencoder", "StepOutput", "SAE_CLASSES", "build_sae", "TrainResult", "train_sae"]
