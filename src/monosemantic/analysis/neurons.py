"""Features in terms of neurons, and neurons in terms of features.

An SAE trained on the MLP's neuron activations writes feature f as the neuron-space vector
W_dec[f] (unit norm, [d_mlp]): its largest-magnitude components are the neurons it is built from
(the essay's "407, 182, 259" for the God feature). Read the other way, column W_dec[:, n] says how
strongly each feature uses neuron n; its largest entries are the features that use n most.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def constituent_neurons(W_dec_FD: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(signed weights, neuron ids) [F, n]: each feature's n largest-|weight| neurons, largest first."""
    top = W_dec_FD.float().abs().topk(min(n, W_dec_FD.shape[1]), dim=1)
    return W_dec_FD.float().gather(1, top.indices).numpy(), top.indices.numpy()


@torch.no_grad()
def neuron_users(W_dec_FD: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(signed weights, feature ids) [D, n]: for each neuron, the n features with the largest |weight| on it."""
    W_DF = W_dec_FD.float().T
    top = W_DF.abs().topk(min(n, W_DF.shape[1]), dim=1)
    return W_DF.gather(1, top.indices).numpy(), top.indices.numpy()
