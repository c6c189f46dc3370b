"""Same-model agreement against training budget: how far does training length move the ceiling
on universality?

For each budget (activations per SAE), train two SAEs of the run's recipe that differ only in
their seed (initialisation and data order) on model A's activations, streamed from the LM (so a
budget is never limited by the harvested store), and report the first SAE's held-out FVU, L0, loss
recovered (the sae stage's, against zero-ablating the hook), dead fraction and "rare" fraction
(live, but firing on at most 10 held-out tokens, as in ``universality_settings.py``), and the
median over its live features of the best Pearson correlation with the other seed's features, over
the run's held-out store, next to the same median over features firing on ≥ 1e-5 of tokens and
over those that are not rare. With ``--cross``, a
third SAE (the first seed) on model B's streamed activations (``RUN/model_b``, which
``monosemantic universality`` leaves) gives the A → B median too, beside the neurons' A → B median.

    python benchmarks/agreement_budget.py --run runs/demo --budgets 500000 2000000 8000000 \
        [--set d_sae=1024 --set lr=0.002] [--cross] [--plot docs/agreement-budget.png]

Each SAE is a second run of the sae stage under RUN/benchmarks/agreement/, in a folder named by
variant, size, budget, seed and ``--tag``; current ones are skipped, so an interrupted run
continues. Settings that differ in more than the variant and size need a ``--tag`` of their own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from universality_settings import RARE_FIRINGS, rare_fraction

from monosemantic.activations.store import ActivationStore
from monosemantic.compare.universality import DENSE_MIN_DENSITY, compare_units
from monosemantic.config import RunConfig
from monosemantic.pipeline import RunDir
from monosemantic.progress import set_quiet
from monosemantic.sae.base import SparseAutoencoder
from monosemantic.sae.io import load_sae
from monosemantic.sae.metrics import evaluate_sae
from monosemantic.stages import MODEL_B, sae_second_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--budgets", type=int, nargs="+", required=True, help="activations per SAE")
    parser.add_argument("--set", action="append", default=[], help="SAEConfig field=value (JSON, or a string)")
    parser.add_argument("--plot", type=Path, help="write the curve as a PNG here")
    parser.add_argument("--tag", default="", help="suffix of this setting's SAE folders (e.g. -l1_0.005)")
    parser.add_argument(
        "--cross", action="store_true", help="also train SAE B on LM B (RUN/model_b) and report the A → B median"
    )
    args = parser.parse_args()
    if args.cross and not (args.run / MODEL_B / "run.json").exists():
        parser.error(f"--cross needs {args.run / MODEL_B}: run `monosemantic universality` on {args.run} first")
    set_quiet(True)

    runs = {"a": RunDir(args.run), "b": RunDir(args.run / MODEL_B)}
    cfg = RunConfig(**runs["a"].manifest["config"])
    overrides = {k: _value(v) for k, _, v in (item.partition("=") for item in args.set)}
    size = max(cfg.sae.sizes)
    sources, seeds = ("a", "a", "b")[: 2 + args.cross], (cfg.sae.seed, cfg.sae.seed + 1, cfg.sae.seed)

    rows = []
    for budget in args.budgets:
        fields = {**overrides, "n_samples": budget}
        trained = [
            train(runs[s], size, {**fields, "seed": seed}, args.tag) for s, seed in zip(sources, seeds, strict=True)
        ]
        sae_a, sae_a2, *sae_b = (sae for sae, _, _ in trained)
        units = {"same": (sae_a.encode, sae_a2.encode, "a")}
        if args.cross:
            units |= {"a_to_b": (sae_a.encode, sae_b[0].encode, "b"), "neurons": (_rows, _rows, "b")}
        val = {s: ActivationStore(runs[s].path / "activations/val") for s in set(sources)}
        held_out = evaluate_sae(sae_a, (c for _, c in val["a"].iter_chunks(65_536)))
        chunks = zip(*((c for _, c in val[s].iter_chunks(16_384)) for s in ("a", "b" if args.cross else "a")))
        matches = compare_units(chunks, units)
        same = matches["same"].a_to_b
        rows.append(
            {
                "budget": budget,
                "fvu": held_out["fvu"],
                "l0": held_out["l0"],
                "loss_recovered": trained[0][1]["loss_recovered"],
                "dead": held_out["dead_frac"],
                "rare": rare_fraction(held_out),
                "median": same.median(),
                "median_dense": same.median(DENSE_MIN_DENSITY),
                "median_not_rare": same.median((RARE_FIRINGS + 1) / held_out["n_tokens"]),
                **({k: matches[k].a_to_b.median() for k in ("a_to_b", "neurons")} if args.cross else {}),
                "seconds": sum(seconds for _, _, seconds in trained),
            }
        )
        r = rows[-1]
        cross = f", A→B {r['a_to_b']:.3f}, neurons A→B {r['neurons']:.3f}" if args.cross else ""
        print(
            f"{budget:>12,} samples: FVU {r['fvu']:.3f}  L0 {r['l0']:.1f}  loss recovered {r['loss_recovered']:.1%}"
            f"  dead {r['dead']:.1%}  rare {r['rare']:.1%}"
            f"  same-model median {r['median']:.3f} (dense {r['median_dense']:.3f}, not rare"
            f" {r['median_not_rare']:.3f}){cross}  trained in {r['seconds']:.0f}s",
            flush=True,
        )

    name = f"{sae_a.cfg.variant}-{sae_a.cfg.d_sae}"
    cross = " | A → B | neurons A → B" if args.cross else ""
    print(
        f"\n| {name}: activations per SAE | held-out FVU | L0 | loss recovered | dead | rare | same-model median"
        f" | density ≥ 1e-5 | not rare{cross} |"
    )
    print("| ---: " * (9 + 2 * args.cross) + "|")
    for r in rows:
        cross = f" | {r['a_to_b']:.3f} | {r['neurons']:.3f}" if args.cross else ""
        print(
            f"| {r['budget']:,} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['loss_recovered']:.1%} | {r['dead']:.1%}"
            f" | {r['rare']:.1%}"
            f" | {r['median']:.3f} | {r['median_dense']:.3f} | {r['median_not_rare']:.3f}{cross} |"
        )
    if args.plot:
        plot(rows, name, args.plot)


def train(rd: RunDir, size: int, fields: dict, tag: str) -> tuple[SparseAutoencoder, dict, float]:
    """One SAE of the run's recipe with ``fields`` changed, trained (or found trained) on the run
    LM's streamed activations; with the sae stage's figures for it (FVU, loss recovered, …, on
    the held-out store) and the seconds its training took now. An SAE of other settings in its
    folder is an error, not retrained over."""
    own = RunConfig(**rd.manifest["config"])
    streamed = own.model_copy(update={"harvest": own.harvest.model_copy(update={"stream_train": True})})
    sweep = own.sae.one_sae(size, **fields)
    rel = f"benchmarks/agreement/{sweep.variant}-{sweep.sizes[0]}-{sweep.n_samples}-seed{sweep.seed}{tag}"
    manifest = rd.path / rel / "run.json"
    if manifest.exists() and json.loads(manifest.read_text())["config"]["sae"] != sweep.model_dump(mode="json"):
        print(f"{rd.path / rel} holds an SAE of other settings: give these settings their own --tag", file=sys.stderr)
        sys.exit(2)
    result = sae_second_run(rd, rel, streamed.model_copy(update={"sae": sweep}))
    (entry,) = result.stages[0].figures["saes"]
    seconds = sum(s.figures["seconds"] for s in result.stages if not s.skipped)
    return load_sae(rd.path / rel / entry["path"]), entry, seconds


def _rows(x_ND: torch.Tensor) -> torch.Tensor:
    """The neurons as units: activations unchanged."""
    return x_ND


def _value(text: str):
    """A --set value: JSON (numbers, null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def plot(rows: list[dict], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    budgets, cross = [r["budget"] for r in rows], "a_to_b" in rows[0]
    same = "same model, " if cross else ""
    ax.plot(budgets, [r["median"] for r in rows], "o-", label=f"{same}all live features")
    ax.plot(budgets, [r["median_dense"] for r in rows], "s--", label=f"{same}density ≥ 1e-5")
    ax.plot(budgets, [r["median_not_rare"] for r in rows], "^:", label=f"{same}more than {RARE_FIRINGS} firings")
    if cross:
        ax.plot(budgets, [r["a_to_b"] for r in rows], "D-", label="model A → model B, all live features")
        ax.plot(budgets, [r["neurons"] for r in rows], "x:", color="grey", label="neurons, A → B")
    ax.axhline(0.72, color="black", linewidth=0.8, linestyle=(0, (1, 3)), label="paper, A/1 → B/1 (8B samples)")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b / 1e6:g}M" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("activations per SAE")
    ax.set_ylabel("median best correlation" if cross else "median best correlation, two seeds")
    ax.set_title(f"{'Agreement' if cross else 'Same-model agreement'} vs budget ({name})")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
