"""Feature splitting: how one feature of a small dictionary becomes several in a larger one.

Bricken et al. 2023 match features across a sweep of dictionary sizes by the *masked cosine
similarity* of their activations (the cosine on the tokens where one of the two fires, the larger
of both directions; see ``correlation.py``), with a threshold near 0.4. Here, for each pair of
consecutive sizes (small S, large L) and over the same held-out tokens:

- every feature c of L gets a **parent** p(c) = argmax_p s(p, c) over the features of S, kept when
  s ≥ ``threshold`` (each feature has at most one parent, so the links form a forest); a side of
  s counts only when its masking feature fired on ≥ ``min_fires`` tokens, since the cosine of two
  nonnegative vectors of a few entries is high by chance;
- the **children** of p are the features that chose it; p has *split* when it has ≥ 2;
- ``coverage`` of p = min(1, Σ_c Σ_{n: c_n≠0} p_n² / Σ_n p_n²): the share of p's (squared)
  activation on tokens where one of its children fires — exact when the children never fire
  together, an upper bound otherwise;
- for each link we also record the children's Pearson correlation with their parent and the
  cosine of their decoder directions, and how often the activation-based parent is also the
  decoder-direction nearest neighbour.

Family trees are rooted at the smallest size. Each node carries its density and a label: the
most frequent tokens among the ``top_k`` tokens where the feature fires most.
``feature_families`` writes ``RUN/splitting/families.json`` and a picture per selected family.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from monosemantic.activations.store import ActivationStore
from monosemantic.analysis.config import SplittingConfig
from monosemantic.analysis.correlation import CrossStats, best_matches
from monosemantic.atomic import write_json
from monosemantic.corpus.tokenizer import load_tokenizer
from monosemantic.device import resolve_device
from monosemantic.errors import UserError
from monosemantic.figures import new_figure, save_figure
from monosemantic.sae.io import load_sae


@dataclass
class SizeLink:
    """How the features of a larger dictionary L descend from those of the next smaller one S."""

    parent_L: np.ndarray  # [L] int64 parent in S, −1 when below threshold or dead
    similarity_L: np.ndarray  # [L] masked cosine with the best S-feature (NaN: dead)
    pearson_L: np.ndarray  # [L] Pearson correlation with the parent (NaN: no parent)
    decoder_cos_L: np.ndarray  # [L] decoder cosine with the parent (NaN: no parent)
    decoder_nearest_L: np.ndarray  # [L] the S-feature whose decoder direction is nearest
    coverage_S: np.ndarray  # [S] coverage of each S-feature by its children (NaN: dead)

    def children(self, parent: int) -> np.ndarray:
        return np.flatnonzero(self.parent_L == parent)

    def n_children_S(self) -> np.ndarray:
        return np.bincount(self.parent_L[self.parent_L >= 0], minlength=len(self.coverage_S))


@dataclass
class SplitAnalysis:
    """Per-size firing densities, top activating rows, and the links between consecutive sizes."""

    density: list[np.ndarray]  # per size: [F] fraction of tokens the feature fires on
    top_rows: list[np.ndarray]  # per size: [top_k, F] rows of its largest activations (−1: none)
    links: list[SizeLink]  # links[i]: size i → size i + 1
    n_tokens: int


def analyse_splitting(chunks: Iterable[torch.Tensor], encoders: list[Callable[[torch.Tensor], torch.Tensor]],
                      decoders: list[torch.Tensor], threshold: float, top_k: int = 12,
                      device: torch.device | str = "cpu", min_fires: int = 1) -> SplitAnalysis:
    """Stream ``chunks`` ([N, D] inputs, the same tokens for every size) through ``encoders``
    (sizes in increasing order, each [N, D] → [N, F_i]) and link consecutive sizes.
    ``decoders[i]`` is [F_i, D], one dictionary direction per feature."""
    if len(encoders) < 2 or len(encoders) != len(decoders):
        raise UserError("splitting needs at least two dictionaries, each with its decoder")
    stats: list[CrossStats] = []
    tops: list[_TopActivations] = []
    n_seen = 0
    with torch.no_grad():
        for x_ND in chunks:
            x_ND = x_ND.to(device)
            latents = [encode(x_ND) for encode in encoders]
            if not stats:
                stats = [CrossStats(a.shape[1], b.shape[1], masked=True, device=device)
                         for a, b in zip(latents, latents[1:])]
                tops = [_TopActivations(z.shape[1], top_k, device) for z in latents]
            for pair, small, large in zip(stats, latents, latents[1:]):
                pair.update(small, large)
            for top, z in zip(tops, latents):
                top.update(z, n_seen)
            n_seen += x_ND.shape[0]
    if n_seen == 0:
        raise UserError("splitting: no tokens to compare the dictionaries on")
    links = [
        _link(pair, dec_S, dec_L, threshold, min_fires) for pair, dec_S, dec_L in zip(stats, decoders, decoders[1:])
    ]
    density = [(s.fires_A / s.n).cpu().numpy() for s in stats] + [(stats[-1].fires_B / stats[-1].n).cpu().numpy()]
    return SplitAnalysis(density, [t.rows() for t in tops], links, n_seen)


def _link(stats: CrossStats, dec_SD: torch.Tensor, dec_LD: torch.Tensor, threshold: float, min_fires: int) -> SizeLink:
    matches = best_matches(stats, "masked_cosine", min_fires).b_to_a
    parent = np.where(matches.value >= threshold, matches.index, -1)
    has = parent >= 0
    child_idx = torch.from_numpy(np.flatnonzero(has)).to(stats.device)
    parent_idx = torch.from_numpy(parent[has]).to(stats.device)
    pearson, decoder_cos = np.full(len(parent), np.nan), np.full(len(parent), np.nan)
    pearson[has] = stats.pearson_at(parent_idx, child_idx).cpu().numpy()
    dec_SD = dec_SD.to(stats.device, torch.float64)
    dec_LD = dec_LD.to(stats.device, torch.float64)
    dec_SD = dec_SD / dec_SD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dec_LD = dec_LD / dec_LD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    decoder_cos[has] = (dec_SD[parent_idx] * dec_LD[child_idx]).sum(dim=1).cpu().numpy()
    nearest = torch.cat([(dec_LD[i:i + 1024] @ dec_SD.T).argmax(dim=1) for i in range(0, len(dec_LD), 1024)])
    # coverage: Σ over each parent's children of Σ_{n: c≠0} p_n², over Σ_n p_n²
    covered = torch.zeros(stats.shape[0], dtype=torch.float64, device=stats.device)
    covered.index_add_(0, parent_idx, stats.masked_a_sq_AB[parent_idx, child_idx])
    live_S = stats.sumsq_A > 0
    coverage = torch.where(live_S, (covered / stats.sumsq_A.clamp_min(1e-300)).clamp(max=1.0), torch.nan)
    return SizeLink(parent, matches.value, pearson, decoder_cos, nearest.cpu().numpy(), coverage.cpu().numpy())


class _TopActivations:
    """Running top-k activations of every feature over the rows streamed so far."""

    def __init__(self, n_features: int, k: int, device: torch.device | str):
        self.values_KF = torch.zeros(k, n_features, device=device)
        self.rows_KF = torch.full((k, n_features), -1, dtype=torch.int64, device=device)

    def update(self, latents_NF: torch.Tensor, first_row: int) -> None:
        k = min(self.values_KF.shape[0], latents_NF.shape[0])
        values, index = latents_NF.topk(k, dim=0)
        merged_values = torch.cat([self.values_KF, values])
        merged_rows = torch.cat([self.rows_KF, index + first_row])
        best = merged_values.topk(self.values_KF.shape[0], dim=0).indices
        self.values_KF = merged_values.gather(0, best)
        self.rows_KF = torch.where(self.values_KF > 0, merged_rows.gather(0, best), -1)

    def rows(self) -> np.ndarray:
        return self.rows_KF.cpu().numpy()


def feature_families(run_dir: str | Path, sae_names_by_size: list[str],
                     cfg: SplittingConfig | None = None) -> dict:
    """Link the run's SAEs ``sae_names_by_size`` (under ``RUN/saes/``, smallest first) on the
    held-out activations; write ``RUN/splitting/families.json`` and ``RUN/splitting/family_*.png``.

    Returns the figures for ``run.json``: ``split_families`` (features with ≥ 2 children at the
    next size, summed over consecutive pairs), ``split_families_by_size``, per-pair ``summary``,
    ``highlights`` (the families of ``cfg.highlight`` tokens) and the artifact paths.
    """
    cfg = cfg or SplittingConfig()
    run = Path(run_dir)
    device = resolve_device(cfg.device)
    saes = [load_sae(run / "saes" / name, device) for name in sae_names_by_size]
    sizes = [sae.cfg.d_sae for sae in saes]
    if sizes != sorted(sizes) or len(set(sizes)) != len(sizes):
        raise UserError(f"splitting: SAEs must be given smallest first with distinct sizes, "
                        f"got {dict(zip(sae_names_by_size, sizes))}")
    store = ActivationStore(run / "activations/val")
    n_rows = min(cfg.max_tokens or store.n_rows, store.n_rows)
    chunks = (torch.from_numpy(store.read_range(start, min(start + cfg.chunk_rows, n_rows))).float()
              for start in range(0, n_rows, cfg.chunk_rows))
    analysis = analyse_splitting(chunks, [sae.encode for sae in saes], [sae.W_dec.detach() for sae in saes],
                                 cfg.threshold, cfg.top_k, device, cfg.min_fires)

    tokenizer = load_tokenizer(run / "tokenizer.json")
    labels, top_tokens = [], []
    for rows_KF in analysis.top_rows:
        valid = np.unique(rows_KF[rows_KF >= 0])
        token_of = dict(zip(valid.tolist(), store.origin(valid)["token"].tolist())) if valid.size else {}
        feature_tokens = [
            [tokenizer.decode([token_of[r]]) for r in rows_KF[:, f] if r >= 0] for f in range(rows_KF.shape[1])
        ]
        top_tokens.append(feature_tokens)
        labels.append([_label(tokens) for tokens in feature_tokens])

    out = run / "splitting"
    families = _families(analysis, sae_names_by_size, sizes, labels)
    summary = [
        _pair_summary(link, analysis.density[i], sizes[i], sizes[i + 1]) for i, link in enumerate(analysis.links)
    ]
    highlights = {word: _find_family(families, top_tokens[0], word) for word in cfg.highlight}
    drawn = _pick_pictures(families, highlights, cfg.n_pictures)
    for stale in out.glob("family_*.png"):  # pictures of an earlier selection
        stale.unlink()
    pictures = []
    for family in drawn:
        path = out / f"family_{sae_names_by_size[0]}_{family['feature']}.png"
        draw_family(family, path, cfg.max_children_drawn, sizes)
        pictures.append(str(path.relative_to(run)))

    write_json(out / "families.json", {
        "saes": sae_names_by_size, "sizes": sizes, "threshold": cfg.threshold, "n_tokens": analysis.n_tokens,
        "measure": "masked cosine of activations (max of both directions)",
        "summary": summary,
        "features": {name: {"density": [round(float(d), 8) for d in analysis.density[i]], "label": labels[i]}
                     for i, name in enumerate(sae_names_by_size)},
        "links": [{"from": sae_names_by_size[i], "to": sae_names_by_size[i + 1],
                   "parent": link.parent_L.tolist(), "similarity": _rounded(link.similarity_L),
                   "pearson": _rounded(link.pearson_L), "decoder_cos": _rounded(link.decoder_cos_L),
                   "coverage": _rounded(link.coverage_S)} for i, link in enumerate(analysis.links)],
        "families": families,
        "highlights": {w: (f["feature"] if f else None) for w, f in highlights.items()},
    })
    by_size = {str(s["size"]): s["split_2plus"] for s in summary}
    return {
        "split_families": int(sum(by_size.values())),
        "split_families_by_size": by_size,
        "summary": summary,
        "highlights": {word: _describe(f) for word, f in highlights.items()},
        "n_tokens": analysis.n_tokens,
        "artifacts": {"families": "splitting/families.json", "pictures": pictures},
    }


def _label(tokens: list[str], n: int = 3) -> str:
    """The ``n`` most frequent of a feature's top tokens, e.g. "' the' · ' The'"; "" when dead."""
    return " · ".join(repr(t) for t, _ in Counter(tokens).most_common(n))


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def _families(analysis: SplitAnalysis, names: list[str], sizes: list[int], labels: list[list[str]]) -> list[dict]:
    """Nested trees rooted at the smallest size, for every root with at least one descendant."""

    def node(level: int, feature: int, similarity: float | None) -> dict:
        children = []
        if level < len(analysis.links):
            link = analysis.links[level]
            kids = link.children(feature)
            kids = kids[np.argsort(-analysis.density[level + 1][kids], kind="stable")]
            children = [node(level + 1, int(c), round(float(link.similarity_L[c]), 4)) for c in kids]
        coverage = analysis.links[level].coverage_S[feature] if level < len(analysis.links) else np.nan
        return {"sae": names[level], "size": sizes[level], "feature": feature,
                "density": float(analysis.density[level][feature]), "label": labels[level][feature],
                "similarity": similarity, "coverage": None if np.isnan(coverage) else round(float(coverage), 4),
                "leaves": sum(c["leaves"] for c in children) or 1, "children": children}

    roots = [node(0, f, None) for f in range(len(analysis.density[0]))]
    return sorted((r for r in roots if r["children"]), key=lambda r: -r["leaves"])


def _pair_summary(link: SizeLink, density_S: np.ndarray, size_S: int, size_L: int) -> dict:
    n_children = link.n_children_S()
    live = density_S > 0
    has = link.parent_L >= 0
    return {
        "size": size_S, "next_size": size_L,
        "live": int(live.sum()),
        "split_2plus": int((n_children >= 2).sum()),
        "one_child": int((n_children == 1).sum()),
        "no_child": int(((n_children == 0) & live).sum()),
        "max_children": int(n_children.max(initial=0)),
        "linked_children": int(has.sum()),
        "unlinked_next": int((~has).sum()),
        "median_similarity": _median(link.similarity_L[has]),
        "median_child_pearson": _median(link.pearson_L[has]),
        "median_decoder_cos": _median(link.decoder_cos_L[has]),
        "decoder_agrees": float((link.decoder_nearest_L[has] == link.parent_L[has]).mean()) if has.any() else None,
        "median_coverage_of_splits": _median(link.coverage_S[n_children >= 2]),
    }


def _median(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return round(float(np.median(values)), 4) if values.size else None


def _find_family(families: list[dict], top_tokens_0: list[list[str]], word: str) -> dict | None:
    """The family whose root's top tokens are most often ``word`` (any case, spacing ignored)."""
    def share(feature: int) -> float:
        tokens = top_tokens_0[feature]
        return sum(t.strip().lower() == word.lower() for t in tokens) / max(len(tokens), 1)

    scored = [(share(f["feature"]), f["leaves"], f) for f in families]
    best = max(scored, key=lambda s: s[:2], default=None)
    return best[2] if best is not None and best[0] >= 0.5 else None


def _describe(family: dict | None) -> dict | None:
    """Per size, the features of a family and their labels (for run.json)."""
    if family is None:
        return None
    levels: dict[int, list[str]] = {}
    stack = [family]
    while stack:
        node = stack.pop()
        levels.setdefault(node["size"], []).append(f"{node['feature']}: {node['label']}")
        stack.extend(node["children"])
    return {
        "root": family["feature"],
        "label": family["label"],
        "by_size": {str(k): v for k, v in sorted(levels.items())},
    }


def _pick_pictures(families: list[dict], highlights: dict[str, dict | None], n: int) -> list[dict]:
    """The highlighted families, then the ``n`` largest others."""
    picked: list[dict] = []
    for family in [f for f in highlights.values() if f is not None] + families[:n]:
        if all(family is not p for p in picked):
            picked.append(family)
    return picked


def draw_family(family: dict, path: Path, max_children: int, sizes: list[int]) -> Path:
    """A family tree: one column per dictionary size, each node labelled with its feature
    number, top tokens and density; at most ``max_children`` children per node are drawn."""
    placed: list[tuple[dict, float, float]] = []
    edges: list[tuple[float, float, float, float, float | None]] = []
    next_leaf = [0.0]

    def place(node: dict, level: int) -> float:
        shown = node["children"][:max_children]
        ys = [place(child, level + 1) for child in shown]
        if len(node["children"]) > max_children:
            ys.append(next_leaf[0])
            placed.append(({"more": len(node["children"]) - max_children}, level + 1, next_leaf[0]))
            next_leaf[0] += 1
        y = float(np.mean(ys)) if ys else next_leaf[0]
        if not ys:
            next_leaf[0] += 1
        placed.append((node, level, y))
        for child, child_y in zip(shown, ys):
            edges.append((level, y, level + 1, child_y, child["similarity"]))
        return y

    place(family, 0)
    n_rows = max(next_leaf[0], 1)
    fig, ax = new_figure((3.6 * len(sizes), 0.55 * n_rows + 1.2))
    for x0, y0, x1, y1, sim in edges:
        ax.plot([x0 + 0.32, x1 - 0.02], [y0, y1], color="0.6", linewidth=0.8 + 2 * (sim or 0))
    for node, level, y in placed:
        if "more" in node:
            text = f"(+{node['more']} more)"
        else:
            label = re.sub(r"\s+", " ", node["label"])[:38]
            text = f"#{node['feature']}  {label}\ndensity {node['density']:.1e}"
        ax.text(level, y, text, fontsize=7, va="center", ha="left", family="monospace",
                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.5", "lw": 0.6})
    ax.set_xticks(range(len(sizes)), [f"{s} features" for s in sizes])
    ax.set_xlim(-0.1, len(sizes) - 0.1)
    ax.set_ylim(n_rows - 0.4, -0.6)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Family of {family['sae']} feature {family['feature']} ({family['label'][:40]})", fontsize=9)
    return save_figure(fig, path, dpi=110)
