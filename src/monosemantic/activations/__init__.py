"""Activations recorded at a hook point: the sharded on-disk store and its shuffled reader."""

from monosemantic.activations.store import ORIGIN_COLUMNS, ActivationStore, ActivationWriter

__all__ = ["ORIGIN_COLUMNS", "ActivationStore", "ActivationWriter"]
