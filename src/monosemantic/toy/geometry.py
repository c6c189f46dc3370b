"""Feature dimensionality and geometry of trained toy models (Elhage et al. 2022, *Toy Models of
Superposition*, sections "Superposition and Learning Dynamics" → "Feature Dimensionality" and
"Uniform Superposition").

Measures, for one model's feature directions W_NM (row W_i ∈ Rᵐ):

- dimensions per feature  D* = m / ‖W‖_F²  (1 when each represented feature owns a dimension,
  1/2 for antipodal pairs, …);
- feature dimensionality  D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²  — the fraction of a dimension feature i
  gets; features in a uniform polytope share the value k/p (p features in k dimensions);
- interference  Σ_{j≠i} (Ŵ_i · W_j)², how much the other features leak onto feature i.

Structures: the paper finds the represented features split into *tegum factors* — groups lying in
mutually orthogonal subspaces, each a uniform polytope. We recover the factors as connected
components of the graph joining features whose directions have |cos| above a threshold, and name a
factor when its size and its members' D_i match one of the polytopes below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# name → (features in the factor, their dimensionality D_i = dimensions / features)
POLYTOPES: dict[str, tuple[int, float]] = {
    "dense": (1, 1.0),
    "tetrahedron": (4, 3 / 4),
    "triangle": (3, 2 / 3),
    "digon": (2, 1 / 2),
    "pentagon": (5, 2 / 5),
    "square_antiprism": (8, 3 / 8),
}
STRUCTURE_NAMES: tuple[str, ...] = (*POLYTOPES, "other", "partial", "not_learned")


def dimensions_per_feature(W_NM: torch.Tensor) -> float:
    """D* = m / ‖W‖_F²."""
    return W_NM.shape[1] / float((W_NM.double() ** 2).sum())


def feature_norms(W_NM: torch.Tensor) -> torch.Tensor:
    """‖W_i‖ for each feature, shape N."""
    return W_NM.double().norm(dim=1)


def _unit_rows(W_NM: torch.Tensor) -> torch.Tensor:
    return W_NM / W_NM.norm(dim=1, keepdim=True).clamp_min(1e-6)


def feature_dimensionality(W_NM: torch.Tensor) -> torch.Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)², shape N (≈0 for features the model does not represent)."""
    W_NM = W_NM.double()
    overlap_NN = _unit_rows(W_NM) @ W_NM.T
    return W_NM.norm(dim=1) ** 2 / (overlap_NN**2).sum(dim=1).clamp_min(1e-12)


def interference(W_NM: torch.Tensor) -> torch.Tensor:
    """Σ_{j≠i} (Ŵ_i · W_j)² for each feature, shape N: what the other features project onto i."""
    W_NM = W_NM.double()
    overlap_NN = _unit_rows(W_NM) @ W_NM.T
    return (overlap_NN**2).sum(dim=1) - W_NM.norm(dim=1) ** 2


@dataclass(frozen=True)
class Geometry:
    """One model's measured geometry.

    ``label_N`` names each feature's structure (a key of POLYTOPES, "other", "partial" or
    "not_learned"); ``factor_N`` numbers its tegum factor (-1 when it is in none); ``counts`` holds,
    per structure, the number of factors of that shape — except ``partial`` and ``not_learned``,
    which count features.
    """

    dims_per_feature: float
    dimensionality_N: torch.Tensor
    norm_N: torch.Tensor
    interference_N: torch.Tensor
    label_N: list[str]
    factor_N: list[int]
    counts: dict[str, int]

    @property
    def n_represented(self) -> int:
        """Features the model reads back at full strength (in a tegum factor)."""
        return sum(factor >= 0 for factor in self.factor_N)


def tegum_factors(W_NM: torch.Tensor, learned_N: torch.Tensor, min_cosine: float) -> list[list[int]]:
    """Connected components of the learned features under |cos(W_i, W_j)| > min_cosine."""
    cosine_NN = (_unit_rows(W_NM.double()) @ _unit_rows(W_NM.double()).T).abs()
    linked_NN = (cosine_NN > min_cosine) & learned_N[:, None] & learned_N[None, :]
    unvisited = set(torch.nonzero(learned_N).flatten().tolist())
    factors = []
    while unvisited:
        stack = [min(unvisited)]
        unvisited.discard(stack[0])
        factor = []
        while stack:
            i = stack.pop()
            factor.append(i)
            for j in torch.nonzero(linked_NN[i]).flatten().tolist():
                if j in unvisited:
                    unvisited.discard(j)
                    stack.append(j)
        factors.append(sorted(factor))
    return sorted(factors, key=lambda f: (len(f), f[0]))


def classify(
    W_NM: torch.Tensor,
    *,
    represented_norm: float = 0.5,
    learned_norm: float = 0.1,
    min_cosine: float = 0.25,
    tolerance: float = 0.06,
) -> Geometry:
    """Measure W_NM and name the structure each feature belongs to.

    Features are U[0, 1], so one the model reads back has ‖W_i‖ ≈ 1: it is *represented* when
    ‖W_i‖ ≥ represented_norm, *partial* when learned_norm ≤ ‖W_i‖ < represented_norm (kept at
    reduced strength — the dense uniform-importance regime, where the m dimensions are shared out
    over all features, or a feature being dropped), else *not learned*. The represented features are
    grouped into tegum factors (|cos| > min_cosine; the weakest link inside an ideal polytope is 1/3,
    in the tetrahedron and the square antiprism). A factor of p features is the polytope with p
    vertices when every member's D_i lies within ``tolerance`` of that polytope's k/p, else "other".

    The dense end of a uniform-importance sweep is *spread*, not one feature per dimension: at S = 0
    a rank-m projection WᵀW in a random direction has the loss of the axis-aligned one (0.0771 vs
    0.0770 per feature, n = 400, m = 30, measured), and training from the axis-aligned one drifts
    into it, so the sweep lands on a projection shared by many features. Then D* = 1 while each feature
    is partial with D_i = ‖W_i‖² ≈ m/n, and a feature that grew to full norm inside the spread is a
    size-1 "other" whose D_i the spread pulls below 1.
    """
    norm_N = feature_norms(W_NM)
    dimensionality_N = feature_dimensionality(W_NM)
    represented_N = norm_N >= represented_norm
    label_N = ["not_learned" if float(norm) < learned_norm else "partial" for norm in norm_N]
    factor_N = [-1] * W_NM.shape[0]
    counts = dict.fromkeys(STRUCTURE_NAMES, 0)
    for index, factor in enumerate(tegum_factors(W_NM, represented_N, min_cosine)):
        name = "other"
        for polytope, (size, fraction) in POLYTOPES.items():
            if len(factor) == size and all(abs(float(dimensionality_N[i]) - fraction) <= tolerance for i in factor):
                name = polytope
        counts[name] += 1
        for i in factor:
            label_N[i] = name
            factor_N[i] = index
    counts["partial"] = label_N.count("partial")
    counts["not_learned"] = label_N.count("not_learned")
    return Geometry(
        dims_per_feature=dimensions_per_feature(W_NM),
        dimensionality_N=dimensionality_N,
        norm_N=norm_N,
        interference_N=interference(W_NM),
        label_N=label_N,
        factor_N=factor_N,
        counts=counts,
    )
