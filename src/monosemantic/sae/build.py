"""Variant name → class, and ``build_sae``."""

from __future__ import annotations

from monosemantic.sae.base import SparseAutoencoder
from monosemantic.sae.batchtopk import BatchTopKSAE
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.jumprelu import JumpReLUSAE
from monosemantic.sae.standard import StandardSAE
from monosemantic.sae.standard2024 import Standard2024SAE
from monosemantic.sae.topk import TopKSAE

SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {
    cls.variant: cls for cls in (StandardSAE, Standard2024SAE, TopKSAE, BatchTopKSAE, JumpReLUSAE)
}


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.variant`` (seeded by ``cfg.seed``), on CPU."""
    return SAE_CLASSES[cfg.variant](cfg)
