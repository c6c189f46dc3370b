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
most frequent tokens among the ``top_k`` tokens where the feature fires most; and its context
(``context.py``): the shares of its activation mass by document source and by previous token, and
for a child its ``parent_coverage`` Σ_{n: c_n≠0} p_n² / Σ_n p_n², the share of the parent's (squared)
activation on the tokens where that child fires.

**The context family** shows a split by context rather than by token, the essay's " the" story.
A child *keeps its parent's token* when the most frequent of its top-activation tokens is the
parent's. Among parents with ≥ ``CONTEXT_FAMILY_MIN_CHILDREN`` such children at the next size, it
is the one whose token-keeping children's source distributions P_c differ most: the largest
generalised Jensen–Shannon divergence H(Σ_c w_c P_c) − Σ_c w_c H(P_c) (bits), with w_c the
children's shares of their total activation mass, so a child that barely fires cannot decide it.
``feature_families`` writes ``RUN/splitting/families.json``, a picture per selected family, and
``RUN/splitting/context_family.png``, over the held-out activations at the hook point the SAEs read;
at another hook point than the run's main one, each name carries ``@<hook>`` (``hook_tag``):
``families@blocks.0.hook_resid_post.json`` and so on.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from monosemantic.activations.store import ActivationStore, hook_store_dir, hook_tag
from monosemantic.analysis.context import TokenSources, describe_sources, js_divergence
from monosemantic.atomic import write_json
from monosemantic.compare.config import SplittingConfig
from monosemantic.compare.correlation import CrossStats, best_matches
from monosemantic.corpus.sources import DocumentSources
from monosemantic.corpus.tokenizer import load_tokenizer
from monosemantic.device import resolve_device
from monosemantic.errors import UserError
from monosemantic.figures import new_figure, save_figure
from monosemantic.sae.io import load_sae, saved_hook_name

CONTEXT_FAMILY_MIN_CHILDREN = 3
N_CONTEXTS = 3  # sources and previous tokens listed per feature


@dataclass
class SizeLink:
    """How the features of a larger dictionary L descend from those of the next smaller one S."""

    parent_L: np.ndarray  # [L] int64 parent in S, −1 when below threshold or dead
    similarity_L: np.ndarray  # [L] masked cosine with the best S-feature (NaN: dead)
    pearson_L: np.ndarray  # [L] Pearson correlation with the parent (NaN: no parent)
    decoder_cos_L: np.ndarray  # [L] decoder cosine with the parent (NaN: no parent)
    decoder_nearest_L: np.ndarray  # [L] the S-feature whose decoder direction is nearest
    coverage_S: np.ndarray  # [S] coverage of each S-feature by its children (NaN: dead)
    parent_coverage_L: np.ndarray  # [L] share of its parent's squared activation this child covers (NaN: no parent)

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
    source_mass: list[np.ndarray] | None = None  # per size: [F, S] activation mass by document source
    prev_mass: list[np.ndarray] | None = None  # per size: [F, V] activation mass by previous token


def analyse_splitting(
    chunks: Iterable[torch.Tensor],
    encoders: list[Callable[[torch.Tensor], torch.Tensor]],
    decoders: list[torch.Tensor],
    threshold: float,
    top_k: int = 12,
    device: torch.device | str = "cpu",
    min_fires: int = 1,
    sources: TokenSources | None = None,
) -> SplitAnalysis:
    """Stream ``chunks`` ([N, D] inputs, the same tokens for every size) through ``encoders``
    (sizes in increasing order, each [N, D] → [N, F_i]) and link consecutive sizes.
    ``decoders[i]`` is [F_i, D], one dictionary direction per feature. With ``sources`` (the
    streamed rows' contexts, row for row) it also sums each feature's activation by source and by
    previous token."""
    if len(encoders) < 2 or len(encoders) != len(decoders):
        raise UserError("splitting needs at least two dictionaries, each with its decoder")
    stats: list[CrossStats] = []
    tops: list[_TopActivations] = []
    masses: list[_ContextMass] = []
    n_seen = 0
    with torch.no_grad():
        for x_ND in chunks:
            x_ND = x_ND.to(device)
            latents = [encode(x_ND) for encode in encoders]
            if not stats:
                stats = [
                    CrossStats(a.shape[1], b.shape[1], masked=True, device=device) for a, b in zip(latents, latents[1:])
                ]
                tops = [_TopActivations(z.shape[1], top_k, device) for z in latents]
                if sources is not None:
                    masses = [_ContextMass(z.shape[1], sources, device) for z in latents]
            for pair, small, large in zip(stats, latents, latents[1:]):
                pair.update(small, large)
            for top, z in zip(tops, latents):
                top.update(z, n_seen)
            for mass, z in zip(masses, latents):
                mass.update(z, n_seen)
            n_seen += x_ND.shape[0]
    if n_seen == 0:
        raise UserError("splitting: no tokens to compare the dictionaries on")
    links = [
        _link(pair, dec_S, dec_L, threshold, min_fires) for pair, dec_S, dec_L in zip(stats, decoders, decoders[1:])
    ]
    density = [(s.fires_A / s.n).cpu().numpy() for s in stats] + [(stats[-1].fires_B / stats[-1].n).cpu().numpy()]
    return SplitAnalysis(
        density,
        [t.rows() for t in tops],
        links,
        n_seen,
        [m.source_FS.cpu().numpy() for m in masses] if masses else None,
        [m.prev_FV.cpu().numpy() for m in masses] if masses else None,
    )


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
    nearest = torch.cat([(dec_LD[i : i + 1024] @ dec_SD.T).argmax(dim=1) for i in range(0, len(dec_LD), 1024)])
    # coverage: Σ over each parent's children of Σ_{n: c≠0} p_n², over Σ_n p_n²
    covered = torch.zeros(stats.shape[0], dtype=torch.float64, device=stats.device)
    covered.index_add_(0, parent_idx, stats.masked_a_sq_AB[parent_idx, child_idx])
    live_S = stats.sumsq_A > 0
    coverage = torch.where(live_S, (covered / stats.sumsq_A.clamp_min(1e-300)).clamp(max=1.0), torch.nan)
    parent_coverage = np.full(len(parent), np.nan)
    parent_coverage[has] = (
        (stats.masked_a_sq_AB[parent_idx, child_idx] / stats.sumsq_A[parent_idx].clamp_min(1e-300))
        .clamp(max=1.0)
        .cpu()
        .numpy()
    )
    return SizeLink(
        parent, matches.value, pearson, decoder_cos, nearest.cpu().numpy(), coverage.cpu().numpy(), parent_coverage
    )


class _ContextMass:
    """Running Σ activation of every feature by document source [F, S] and by previous token [F, V]."""

    def __init__(self, n_features: int, sources: TokenSources, device: torch.device | str):
        self.source_N = torch.from_numpy(sources.source_N).to(device)
        self.prev_N = torch.from_numpy(sources.prev_N).to(device)
        self.S, self.V = sources.n_sources, sources.token_source_VS.shape[0]
        self.source_FS = torch.zeros(n_features, self.S, dtype=torch.float64, device=device)
        self.prev_FV = torch.zeros(n_features, self.V, dtype=torch.float32, device=device)

    def update(self, latents_NF: torch.Tensor, first_row: int) -> None:
        n_E, f_E = torch.nonzero(latents_NF > 0, as_tuple=True)
        value_E = latents_NF[n_E, f_E]
        rows_E = n_E + first_row
        self.source_FS.view(-1).index_add_(0, f_E * self.S + self.source_N[rows_E], value_E.double())
        prev_E = self.prev_N[rows_E]
        has = prev_E >= 0
        self.prev_FV.view(-1).index_add_(0, f_E[has] * self.V + prev_E[has], value_E[has].float())


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


def feature_families(
    run_dir: str | Path,
    sae_names_by_size: list[str],
    cfg: SplittingConfig | None = None,
    doc_sources: DocumentSources | None = None,
) -> dict:
    """Link the run's SAEs ``sae_names_by_size`` (under ``RUN/saes/``, smallest first) on the
    held-out activations; write ``RUN/splitting/families.json`` and ``RUN/splitting/family_*.png``.
    ``doc_sources`` names each corpus document's source (default: one source for all).

    Returns the figures for ``run.json``: ``split_families`` (features with ≥ 2 children at the
    next size, summed over consecutive pairs), ``split_families_by_size``, per-pair ``summary``,
    ``highlights`` (the families of ``cfg.highlight`` tokens), ``context_family`` (see the module
    docstring) and the artifact paths.
    """
    cfg = cfg or SplittingConfig()
    run = Path(run_dir)
    device = resolve_device(cfg.device)
    saes = [load_sae(run / "saes" / name, device) for name in sae_names_by_size]
    sizes = [sae.cfg.d_sae for sae in saes]
    if sizes != sorted(sizes) or len(set(sizes)) != len(sizes):
        raise UserError(
            f"splitting: SAEs must be given smallest first with distinct sizes, "
            f"got {dict(zip(sae_names_by_size, sizes))}"
        )
    hook, main = sae_hook_point(run, sae_names_by_size)
    tag = hook_tag(hook, main)
    store = ActivationStore(hook_store_dir(run, "val", hook, main))
    n_rows = min(cfg.max_tokens or store.n_rows, store.n_rows)
    chunks = (
        torch.from_numpy(store.read_range(start, min(start + cfg.chunk_rows, n_rows))).float()
        for start in range(0, n_rows, cfg.chunk_rows)
    )
    tokenizer = load_tokenizer(run / "tokenizer.json")
    origin = store.origin(np.arange(n_rows))
    ctx, vocab_size = int(store.meta.get("ctx") or n_rows), tokenizer.get_vocab_size()
    if doc_sources is None:
        sources = TokenSources.single_source(origin["token"], origin["doc"], ctx, vocab_size)
    else:
        sources = TokenSources.build(origin["token"], origin["doc"], ctx, doc_sources, vocab_size)
    analysis = analyse_splitting(
        chunks,
        [sae.encode for sae in saes],
        [sae.W_dec.detach() for sae in saes],
        cfg.threshold,
        cfg.top_k,
        device,
        cfg.min_fires,
        sources,
    )

    labels, top_tokens = [], []
    for rows_KF in analysis.top_rows:
        valid = np.unique(rows_KF[rows_KF >= 0])
        token_of = dict(zip(valid.tolist(), store.origin(valid)["token"].tolist())) if valid.size else {}
        feature_tokens = [
            [tokenizer.decode([token_of[r]]) for r in rows_KF[:, f] if r >= 0] for f in range(rows_KF.shape[1])
        ]
        top_tokens.append(feature_tokens)
        labels.append([_label(tokens) for tokens in feature_tokens])

    token_text = [tokenizer.decode([t]) for t in range(vocab_size)]
    contexts = [
        _feature_contexts(analysis.source_mass[i], analysis.prev_mass[i], sources.sources, token_text)
        for i in range(len(sizes))
    ]
    out = run / "splitting"
    families = _families(analysis, sae_names_by_size, sizes, labels, contexts)
    context_family = choose_context_family(
        analysis,
        sae_names_by_size,
        sizes,
        labels,
        contexts,
        sources.sources,
        [[_main_token(tokens) for tokens in level] for level in top_tokens],
    )
    summary = [
        _pair_summary(link, analysis.density[i], sizes[i], sizes[i + 1]) for i, link in enumerate(analysis.links)
    ]
    highlights = {word: _find_family(families, top_tokens[0], word) for word in cfg.highlight}
    drawn = _pick_pictures(families, highlights, cfg.n_pictures)
    for stale in out.glob(f"family{tag}_*.png"):  # pictures of an earlier selection at this hook point
        stale.unlink()
    pictures = []
    for family in drawn:
        path = out / f"family{tag}_{sae_names_by_size[0]}_{family['feature']}.png"
        draw_family(family, path, cfg.max_children_drawn, sizes)
        pictures.append(str(path.relative_to(run)))

    if context_family is not None:
        context_family["picture"] = str(
            draw_context_family(context_family, sources.sources, out / f"context_family{tag}.png").relative_to(run)
        )
    else:
        (out / f"context_family{tag}.png").unlink(missing_ok=True)
    write_json(
        out / f"families{tag}.json",
        {
            "saes": sae_names_by_size,
            "hook_name": hook,
            "sizes": sizes,
            "threshold": cfg.threshold,
            "n_tokens": analysis.n_tokens,
            "measure": "masked cosine of activations (max of both directions)",
            "summary": summary,
            "sources": sources.sources,
            "features": {
                name: {
                    "density": [round(float(d), 8) for d in analysis.density[i]],
                    "label": labels[i],
                    "sources": [c["sources"] for c in contexts[i]],
                    "after": [c["after"] for c in contexts[i]],
                }
                for i, name in enumerate(sae_names_by_size)
            },
            "links": [
                {
                    "from": sae_names_by_size[i],
                    "to": sae_names_by_size[i + 1],
                    "parent": link.parent_L.tolist(),
                    "similarity": _rounded(link.similarity_L),
                    "pearson": _rounded(link.pearson_L),
                    "decoder_cos": _rounded(link.decoder_cos_L),
                    "coverage": _rounded(link.coverage_S),
                    "parent_coverage": _rounded(link.parent_coverage_L),
                }
                for i, link in enumerate(analysis.links)
            ],
            "families": families,
            "context_family": context_family,
            "highlights": {w: (f["feature"] if f else None) for w, f in highlights.items()},
        },
    )
    by_size = {str(s["size"]): s["split_2plus"] for s in summary}
    return {
        "split_families": int(sum(by_size.values())),
        "split_families_by_size": by_size,
        "summary": summary,
        "highlights": {word: _describe(f) for word, f in highlights.items()},
        "context_family": _summarise_context_family(context_family),
        "n_tokens": analysis.n_tokens,
        "artifacts": {"families": f"splitting/families{tag}.json", "pictures": pictures},
    }


def sae_hook_point(run: Path, sae_names: list[str]) -> tuple[str | None, str | None]:
    """The one hook point that run ``run``'s SAEs ``sae_names`` read (their saved configs'; an SAE
    that names none reads the main one) and the run's main hook point (None without a held-out store).
    ``UserError`` when they read several: sizes are linked within one hook point only."""
    val = run / "activations" / "val"
    main = ActivationStore(val).hook_name if (val / "store.json").is_file() else None
    hooks = {saved_hook_name(run / "saes" / name) or main for name in sae_names}
    if len(hooks) > 1:
        raise UserError(
            f"splitting: the SAEs {', '.join(sae_names)} read several hook points "
            f"({', '.join(sorted(map(str, hooks)))}); give the SAEs of one hook point"
        )
    return hooks.pop(), main


def _label(tokens: list[str], n: int = 3) -> str:
    """The ``n`` most frequent of a feature's top tokens, e.g. "' the' · ' The'"; "" when dead."""
    return " · ".join(repr(t) for t, _ in Counter(tokens).most_common(n))


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def _feature_contexts(
    source_FS: np.ndarray, prev_FV: np.ndarray, source_names: list[str], token_text: list[str]
) -> list[dict]:
    """Per feature: its ``N_CONTEXTS`` largest source shares and previous-token shares, rounded."""
    total_F = np.maximum(source_FS.sum(axis=1), 1e-30)
    shares_FS = source_FS / total_F[:, None]
    k = min(N_CONTEXTS, prev_FV.shape[1])
    top_prev_FK = np.argpartition(-prev_FV, k - 1, axis=1)[:, :k]
    top_prev_FK = np.take_along_axis(
        top_prev_FK, np.argsort(-np.take_along_axis(prev_FV, top_prev_FK, axis=1), axis=1, kind="stable"), axis=1
    )
    out = []
    for f in range(len(source_FS)):
        after = [
            [token_text[p], round(float(prev_FV[f, p] / total_F[f]), 4)] for p in top_prev_FK[f] if prev_FV[f, p] > 0
        ]
        shares = describe_sources(shares_FS[f], source_names, N_CONTEXTS, 0.01)
        out.append({"sources": [[n, round(v, 4)] for n, v in shares], "after": after})
    return out


def _families(
    analysis: SplitAnalysis, names: list[str], sizes: list[int], labels: list[list[str]], contexts: list[list[dict]]
) -> list[dict]:
    """Nested trees rooted at the smallest size, for every root with at least one descendant."""

    def node(level: int, feature: int, similarity: float | None, parent_coverage: float | None = None) -> dict:
        children = []
        if level < len(analysis.links):
            link = analysis.links[level]
            kids = link.children(feature)
            kids = kids[np.argsort(-analysis.density[level + 1][kids], kind="stable")]
            children = [
                node(
                    level + 1, int(c), round(float(link.similarity_L[c]), 4), round(float(link.parent_coverage_L[c]), 4)
                )
                for c in kids
            ]
        coverage = analysis.links[level].coverage_S[feature] if level < len(analysis.links) else np.nan
        return {
            "sae": names[level],
            "size": sizes[level],
            "feature": feature,
            "density": float(analysis.density[level][feature]),
            "label": labels[level][feature],
            "similarity": similarity,
            "coverage": None if np.isnan(coverage) else round(float(coverage), 4),
            "parent_coverage": parent_coverage,
            **contexts[level][feature],
            "leaves": sum(c["leaves"] for c in children) or 1,
            "children": children,
        }

    roots = [node(0, f, None) for f in range(len(analysis.density[0]))]
    return sorted((r for r in roots if r["children"]), key=lambda r: -r["leaves"])


def _main_token(tokens: list[str]) -> str | None:
    """The most frequent of a feature's top-activation tokens (None for a dead feature)."""
    return Counter(tokens).most_common(1)[0][0] if tokens else None


def choose_context_family(
    analysis: SplitAnalysis,
    names: list[str],
    sizes: list[int],
    labels: list[list[str]],
    contexts: list[list[dict]],
    source_names: list[str],
    main_tokens: list[list[str | None]],
) -> dict | None:
    """The parent with ≥ ``CONTEXT_FAMILY_MIN_CHILDREN`` children keeping its main token whose source
    mixes differ most (mass-weighted Jensen–Shannon divergence, see the module docstring); None when
    no parent has that many or there is only one source."""
    if analysis.source_mass is None or len(source_names) < 2:
        return None
    best = None
    for level, link in enumerate(analysis.links):
        mass_FS = analysis.source_mass[level + 1]
        for parent in np.flatnonzero(link.n_children_S() >= CONTEXT_FAMILY_MIN_CHILDREN):
            token = main_tokens[level][parent]
            kids = np.array(
                [c for c in link.children(int(parent)) if main_tokens[level + 1][c] == token], dtype=np.int64
            )
            if token is None or len(kids) < CONTEXT_FAMILY_MIN_CHILDREN:
                continue
            weights = mass_FS[kids].sum(axis=1)
            if weights.sum() <= 0:
                continue
            divergence = js_divergence(mass_FS[kids], weights)
            if best is None or divergence > best[0]:
                best = (divergence, level, int(parent), kids, weights)
    if best is None:
        return None
    divergence, level, parent, kids, weights = best
    link = analysis.links[level]

    def member(lvl: int, feature: int, mass_S: np.ndarray) -> dict:
        shares_S = mass_S / max(mass_S.sum(), 1e-30)
        return {
            "sae": names[lvl],
            "size": sizes[lvl],
            "feature": feature,
            "label": labels[lvl][feature],
            "density": float(analysis.density[lvl][feature]),
            "after": contexts[lvl][feature]["after"],
            "source_shares": [round(float(v), 4) for v in shares_S],
            "dominant_source": source_names[int(shares_S.argmax())],
            "dominant_share": round(float(shares_S.max()), 4),
        }

    children = []
    for c, weight in sorted(zip(kids.tolist(), weights.tolist()), key=lambda cw: -cw[1]):
        child = member(level + 1, c, analysis.source_mass[level + 1][c])
        child.update(
            parent_coverage=round(float(link.parent_coverage_L[c]), 4),
            similarity=round(float(link.similarity_L[c]), 4),
            mass_share=round(weight / weights.sum(), 4),
        )
        children.append(child)
    return {
        "criterion": f"largest mass-weighted Jensen-Shannon divergence (bits) between the source distributions "
        f"of the children that keep their parent's main token, among parents with >= "
        f"{CONTEXT_FAMILY_MIN_CHILDREN} such children",
        "token": main_tokens[level][parent],
        "n_children_total": int(len(link.children(parent))),
        "js_divergence_bits": round(divergence, 4),
        "max_bits": round(float(np.log2(len(kids))), 4),
        "parent": member(level, parent, analysis.source_mass[level][parent]),
        "children": children,
    }


def _summarise_context_family(family: dict | None) -> dict | None:
    """run.json's view of the context family: who, how far apart, and each member's dominant source."""
    if family is None:
        return None

    def line(m: dict) -> str:
        return f"{m['feature']}: {m['label']} — {m['dominant_source']} {m['dominant_share']:.0%}"

    return {
        "sae": family["parent"]["sae"],
        "feature": family["parent"]["feature"],
        "children_sae": family["children"][0]["sae"],
        "n_children": len(family["children"]),
        "token": family["token"],
        "n_children_total": family["n_children_total"],
        "js_divergence_bits": family["js_divergence_bits"],
        "criterion": family["criterion"],
        "parent": line(family["parent"]),
        "children": [line(c) for c in family["children"]],
        "distinct_dominant_sources": len({c["dominant_source"] for c in family["children"]}),
        "picture": family.get("picture"),
    }


def _pair_summary(link: SizeLink, density_S: np.ndarray, size_S: int, size_L: int) -> dict:
    n_children = link.n_children_S()
    live = density_S > 0
    has = link.parent_L >= 0
    return {
        "size": size_S,
        "next_size": size_L,
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
            where = " · ".join(f"{name} {share:.0%}" for name, share in node.get("sources", [])[:2])
            text = f"#{node['feature']}  {label}\n{where}\ndensity {node['density']:.1e}"
        ax.text(
            level,
            y,
            text,
            fontsize=7,
            va="center",
            ha="left",
            family="monospace",
            bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.5", "lw": 0.6},
        )
    ax.set_xticks(range(len(sizes)), [f"{s} features" for s in sizes])
    ax.set_xlim(-0.1, len(sizes) - 0.1)
    ax.set_ylim(n_rows - 0.4, -0.6)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Family of {family['sae']} feature {family['feature']} ({family['label'][:40]})", fontsize=9)
    return save_figure(fig, path, dpi=110)


def context_label(member: dict) -> str:
    """ "' the' — python-docs 91 % · after ' in'": a family member's token label with its context."""
    after = f" · after {member['after'][0][0]!r}" if member["after"] else ""
    return f"{member['label']} — {member['dominant_source']} {member['dominant_share']:.0%}{after}"


def draw_context_family(family: dict, source_names: list[str], path: Path) -> Path:
    """The context family: one bar per member (parent on top, then its children by mass), each the
    member's activation mass split by document source, labelled with its context and, for a
    child, the share of the parent's activation it covers."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    members = [family["parent"], *family["children"]]
    colors = colormaps["tab20"](np.arange(len(source_names)) % 20)
    fig, ax = new_figure((11, 0.55 * len(members) + 1.9))
    for y, m in enumerate(members):
        left = 0.0
        for s, share in enumerate(m["source_shares"]):
            ax.barh(y, share, left=left, color=colors[s], edgecolor="white", linewidth=0.4)
            left += share
        covers = f"covers {m['parent_coverage']:.0%} of parent · " if "parent_coverage" in m else "parent · "
        name = f"{m['sae']} #{m['feature']}"
        ax.text(
            -0.01,
            y,
            f"{name}\n{covers}{' '.join(context_label(m).split())[:70]}",
            ha="right",
            va="center",
            fontsize=7,
            family="monospace",
        )
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(len(members) - 0.5, -0.5)
    ax.set_xlabel("share of the feature's activation mass, by document source")
    used = sorted({s for m in members for s, v in enumerate(m["source_shares"]) if v >= 0.02})
    ax.legend(
        [Rectangle((0, 0), 1, 1, color=colors[s]) for s in used],
        [source_names[s] for s in used],
        fontsize=7,
        ncol=min(len(used), 6),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 / max(len(members), 1) - 0.12),
    )
    ax.set_title(
        f"Why {family['parent']['sae']} #{family['parent']['feature']} split: its children's sources "
        f"(Jensen-Shannon {family['js_divergence_bits']:.2f} bits of {family['max_bits']:.2f})",
        fontsize=9,
    )
    return save_figure(fig, path, dpi=110, bbox_inches="tight")
