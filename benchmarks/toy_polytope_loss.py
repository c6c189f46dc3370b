"""Which arrangement of features the uniform toy model should prefer at each sparsity.

For each ideal structure — one feature per dimension, tetrahedron (4 features in 3 dimensions),
triangle (3 in 2), digon (2 in 1), pentagon (5 in 2), square antiprism (8 in 3) — the features'
unit directions U are fixed, and a common squared norm s and bias b are fitted by Adam to minimise

    E ‖ReLU(s · U Uᵀ x + b) − x‖²,   x_i = U[0, 1] with probability 1/(1/(1−S)), else 0,

over Monte Carlo samples (float64, one fresh sample set per structure and sparsity). The table
prints the loss each structure removes per hidden dimension (k/d · (Var x − loss) for k features in
d dimensions), relative to one feature per dimension: a tiling of the m dimensions by the
structure with the largest value has the lowest loss (Elhage et al. 2022, "Uniform
Superposition"). Independent of n and m.

    python benchmarks/toy_polytope_loss.py                        # 200k samples; a few minutes
    python benchmarks/toy_polytope_loss.py --samples 50000 --inverse-density 1.4 2 4
"""

from __future__ import annotations

import argparse
import math

import torch


def polygon(k: int) -> torch.Tensor:
    """k unit vectors evenly spaced in the plane, [k, 2]."""
    angle = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return torch.stack([angle.cos(), angle.sin()], dim=1)


def square_antiprism() -> torch.Tensor:
    """8 unit vectors: two squares at heights ±1/√3, the lower turned by 45°, [8, 3]. The height
    makes them a tight frame (Σ u uᵀ = 8/3 · I), so each has D_i = 3/8 as in the paper."""
    h = 1 / math.sqrt(3)
    r = math.sqrt(1 - h * h)
    top = [(r * math.cos(a), r * math.sin(a), h) for a in (k * math.pi / 2 for k in range(4))]
    bottom = [(r * math.cos(a), r * math.sin(a), -h) for a in (k * math.pi / 2 + math.pi / 4 for k in range(4))]
    return torch.tensor(top + bottom, dtype=torch.float64)


STRUCTURES: dict[str, torch.Tensor] = {
    "one per dim": torch.ones(1, 1, dtype=torch.float64),
    "tetrahedron": torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / math.sqrt(3),
    "triangle": polygon(3),
    "digon": torch.tensor([[1.0], [-1.0]], dtype=torch.float64),
    "pentagon": polygon(5),
    "square antiprism": square_antiprism(),
}


def loss_removed_per_dim(U_KD: torch.Tensor, density: float, samples: int, generator: torch.Generator) -> float:
    """k/d · (Var x − fitted loss) for the structure U_KD at this feature density."""
    k, d = U_KD.shape
    u_SK = torch.rand(samples, k, generator=generator, dtype=torch.float64)
    x_SK = torch.where(torch.rand(samples, k, generator=generator, dtype=torch.float64) < density, u_SK, 0.0)
    gram_KK = U_KD @ U_KD.T
    log_s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([log_s, bias], lr=0.05)
    for _ in range(300):
        loss = (torch.relu(log_s.exp() * x_SK @ gram_KK + bias) - x_SK).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    variance = density / 3 - density**2 / 4  # of one feature: E x² − (E x)²
    return k / d * (variance - float(loss.detach()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--inverse-density",
        type=float,
        nargs="+",
        default=[1.2, 1.4, 1.6, 2.0, 4.0, 5.0, 6.0, 8.0, 10.0],
        help="1/(1−S) values",
    )
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    names = list(STRUCTURES)
    print(f"loss removed per dimension, relative to one feature per dimension ({args.samples:,} samples)")
    print(f"{'1/(1−S)':>8} " + " ".join(f"{name:>16}" for name in names) + "   best")
    for inverse_density in args.inverse_density:
        removed = {
            name: loss_removed_per_dim(U, 1 / inverse_density, args.samples, generator)
            for name, U in STRUCTURES.items()
        }
        base = removed["one per dim"]
        best = max(removed, key=removed.get)
        print(f"{inverse_density:>8.2f} " + " ".join(f"{removed[name] / base:>16.3f}" for name in names) + f"   {best}")


if __name__ == "__main__":
    main()
