"""The ReLU-output toy model of Elhage et al. 2022, *Toy Models of Superposition*, section 2.

n sparse features are squeezed through m < n hidden dimensions and read back out:

    h = W x,        x' = ReLU(Wᵀ h + b) = ReLU(Wᵀ W x + b),        loss = Σ_i I_i (x_i − x'_i)²

with W an m×n matrix (column W_i is feature i's direction in the hidden space), b ∈ Rⁿ, and
per-feature importance I_i. Each feature is 0 with probability S (the sparsity), else U[0, 1].

Like the paper's notebook, many independent models ("instances", one per sparsity) are trained
at once: every tensor carries a leading instance axis, the loss is the sum of the instances'
losses, and because Adam updates each weight on its own, no instance influences another. A whole
sparsity sweep is then one vectorised training run.

Shapes: I instances, B batch, N features (n), M hidden dimensions (m).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


class ToyModel(nn.Module):
    """I independent toy models x'_IBN = ReLU(x_IBN W_INM W_INMᵀ + b_IN).

    ``W_INM[k, i]`` is feature i's direction W_i ∈ Rᵐ in instance k (the paper's column W_i of
    the m×n matrix W). W is initialised normal with std = √(2 / (m (n + I))): what the paper's
    notebook gets from ``xavier_normal_`` on its [I, n, m] tensor, whose fans torch takes as n·m and
    I·m. That is 0.0126 for the 400→30 sweep of 20 instances, 0.185× a per-instance Xavier
    √(2 / (n + m)); at S = 0 the larger init left 53–57 of the 400 outputs dead (loss 0.110–0.113
    per feature against 0.0771 with the notebook's std, measured).
    """

    def __init__(
        self,
        n_instances: int,
        n_features: int,
        n_hidden: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        std = math.sqrt(2.0 / (n_hidden * (n_features + n_instances)))
        W_INM = torch.randn(n_instances, n_features, n_hidden, generator=generator, device=device) * std
        self.W_INM = nn.Parameter(W_INM)
        self.b_IN = nn.Parameter(torch.zeros(n_instances, n_features, device=device))

    def forward(self, x_IBN: torch.Tensor) -> torch.Tensor:
        """Reconstruct x_IBN (instances × batch × features) through the m hidden dimensions."""
        h_IBM = torch.bmm(x_IBN, self.W_INM)
        return torch.relu(torch.bmm(h_IBM, self.W_INM.transpose(1, 2)) + self.b_IN[:, None, :])


def sample_features(
    density_I: torch.Tensor, batch_size: int, n_features: int, generator: torch.Generator
) -> torch.Tensor:
    """x_IBN: each feature U[0, 1] with probability density_I = 1 − S of its instance, else 0.

    One uniform draw u per entry does both jobs: u < p with probability p, and then 1 − u/p is
    U[0, 1]; max(0, 1 − u/p) is therefore the feature (half the random numbers of two draws).
    """
    shape = (density_I.shape[0], batch_size, n_features)
    u_IBN = torch.rand(shape, generator=generator, device=density_I.device)
    return u_IBN.mul_(-1.0 / density_I[:, None, None]).add_(1.0).clamp_(min=0.0)


def reconstruction_loss_I(model: ToyModel, x_IBN: torch.Tensor, importance_N: torch.Tensor) -> torch.Tensor:
    """Per-instance loss: mean over batch and features of I_i (x_i − x'_i)²."""
    squared_error_IBN = (x_IBN - model(x_IBN)).square_()
    return (squared_error_IBN @ importance_N).mean(dim=1) / importance_N.shape[0]


def learning_rate_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    """Multiplier on the base learning rate: linear warm-up, then ``constant`` or ``cosine`` decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_toy_model(
    model: ToyModel,
    density_I: torch.Tensor,
    importance_N: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    schedule: str,
    warmup: int,
    weight_decay: float,
    generator: torch.Generator,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Train every instance with AdamW on fresh batches; return the last step's per-instance loss.

    ``on_step(step, loss_I)`` is called after every step (for progress bars); ``loss_I`` is
    detached.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_features = importance_N.shape[0]
    loss_I = torch.zeros(density_I.shape[0])
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * learning_rate_factor(schedule, step, steps, warmup)
        x_IBN = sample_features(density_I, batch_size, n_features, generator)
        loss_I = reconstruction_loss_I(model, x_IBN, importance_N)
        optimizer.zero_grad(set_to_none=True)
        loss_I.sum().backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, loss_I.detach())
    return loss_I.detach()
