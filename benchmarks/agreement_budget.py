"""Same-model agreement against training budget: how far does training length move the ceiling
on universality?

For each budget (activations per SAE), train two SAEs of the run's recipe that differ only in
their seed (initialisation and data order) on model A's activations, streamed from the LM (so a
budget is never limited by the harvested store), and report each SAE's held-out FVU and L0 and the
median over A's live features of the best Pearson correlation with the other seed's features, over
the run's held-out store, next to the same median over features firing on ≥ 1e-5 of tokens.

    python benchmarks/agreement_budget.py --run runs/demo --budgets 500000 2000000 8000000 \
        [--set d_sae=1024 --set lr=0.002] [--plot docs/agreement-budget.png]

Each SAE is a second run of the sae stage under RUN/benchmarks/agreement/, current ones are
skipped, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monosemantic.activations.store import ActivationStore
from monosemantic.compare.universality import DENSE_MIN_DENSITY, compare_units
from monosemantic.config import RunConfig
from monosemantic.pipeline import RunDir
from monosemantic.progress import set_quiet
from monosemantic.sae.io import load_sae
from monosemantic.sae.metrics import evaluate_sae
from monosemantic.stages import sae_second_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--budgets", type=int, nargs="+", required=True, help="activations per SAE")
    parser.add_argument("--set", action="append", default=[], help="SAEConfig field=value (JSON, or a string)")
    parser.add_argument("--plot", type=Path, help="write the curve as a PNG here")
    args = parser.parse_args()
    set_quiet(True)

    rd = RunDir(args.run)
    cfg = RunConfig(**rd.manifest["config"])
    streamed = cfg.model_copy(update={"harvest": cfg.harvest.model_copy(update={"stream_train": True})})
    overrides = {k: _value(v) for k, _, v in (item.partition("=") for item in args.set)}
    val = ActivationStore(args.run / "activations/val")

    rows = []
    for budget in args.budgets:
        saes, seconds = [], 0.0
        for seed in (cfg.sae.seed, cfg.sae.seed + 1):
            sweep = cfg.sae.one_sae(max(cfg.sae.sizes), **{**overrides, "n_samples": budget, "seed": seed})
            rel = f"benchmarks/agreement/{sweep.variant}-{sweep.sizes[0]}-{budget}-seed{seed}"
            result = sae_second_run(rd, rel, streamed.model_copy(update={"sae": sweep}))
            seconds += sum(s.figures["seconds"] for s in result.stages if not s.skipped)
            (entry,) = result.stages[0].figures["saes"]
            saes.append(load_sae(args.run / rel / entry["path"]))
        held_out = evaluate_sae(saes[0], (c for _, c in val.iter_chunks(65_536)))
        chunks = ((c, c) for _, c in val.iter_chunks(16_384))
        same = compare_units(chunks, {"same": (saes[0].encode, saes[1].encode, "a")})["same"].a_to_b
        rows.append(
            {
                "budget": budget,
                "fvu": held_out["fvu"],
                "l0": held_out["l0"],
                "median": same.median(),
                "median_dense": same.median(DENSE_MIN_DENSITY),
                "seconds": seconds,
            }
        )
        r = rows[-1]
        print(
            f"{budget:>12,} samples: FVU {r['fvu']:.3f}  L0 {r['l0']:.1f}  same-model median {r['median']:.3f} "
            f"(dense {r['median_dense']:.3f})  trained in {r['seconds']:.0f}s",
            flush=True,
        )

    name = f"{saes[0].cfg.variant}-{saes[0].cfg.d_sae}"
    print(f"\n| {name}: activations per SAE | held-out FVU | L0 | same-model median | density ≥ 1e-5 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['budget']:,} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['median']:.3f} | {r['median_dense']:.3f} |")
    if args.plot:
        plot(rows, name, args.plot)


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

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    budgets = [r["budget"] for r in rows]
    ax.plot(budgets, [r["median"] for r in rows], "o-", label="all live features")
    ax.plot(budgets, [r["median_dense"] for r in rows], "s--", label="density ≥ 1e-5")
    ax.axhline(0.72, color="grey", linestyle=":", label="paper, A/1 → B/1 (8B samples)")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b / 1e6:g}M" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("activations per SAE")
    ax.set_ylabel("median best correlation, two seeds")
    ax.set_title(f"Same-model agreement vs budget ({name})")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
