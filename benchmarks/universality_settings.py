"""Universality under other SAE settings, on a finished run's activations and second LM.

For each setting, trains three SAEs by the sae stage's recipe with the compared SAE's config and
the given fields changed — SAE A (A's activations, the run's SAE seed), a reseeded A (seed + 1)
and SAE B (B's activations, the run's seed), each a second run of the sae stage — then prints the
median best Pearson correlation A → B, A → reseeded A, and neurons A → B over the run's val tokens
(as ``monosemantic universality`` does), with SAE A's own figures from the sae stage: FVU, L0,
loss recovered, the dead fraction and the "rare" one (live but firing on at most 10 of the held-out
tokens: too few to explain or score). Needs a run directory in which ``monosemantic universality``
has finished (``RUN/model_b/`` exists).

    python benchmarks/universality_settings.py --run runs/demo --set d_sae=1024 --set d_sae=1024,n_samples=4000000
    python benchmarks/universality_settings.py --run runs/demo --set variant=batchtopk --set variant=topk,k=64
    python benchmarks/universality_settings.py --run runs/demo --set encoder_init_scale=1 --set l1_coeff=0.005

Each ``--set`` is one setting: comma-separated SAEConfig fields (values parsed as JSON, else
strings). The SAEs go to ``--work`` (default: a temporary directory) and a setting whose SAEs are
there already is reused.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from monosemantic.activations.store import ActivationStore
from monosemantic.compare.universality import compare_units
from monosemantic.config import RunConfig
from monosemantic.pipeline import RunDir
from monosemantic.progress import set_quiet
from monosemantic.sae.io import load_sae
from monosemantic.sae.metrics import evaluate_sae
from monosemantic.stages import MODEL_B, sae_second_run, universality_size


def parse_setting(text: str) -> dict:
    """'d_sae=1024,k=64' → {'d_sae': 1024, 'k': 64}."""
    fields = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fields[key.strip()] = value.strip()
    return fields


RARE_FIRINGS = 10  # "rare": fired on at most this many held-out tokens


def rare_fraction(held_out: dict) -> float:
    """The fraction of an SAE's features that fired, but on at most ``RARE_FIRINGS`` of the tokens
    ``evaluate_sae`` measured."""
    firings_F = held_out["density"] * held_out["n_tokens"]
    return float(((firings_F > 0) & (firings_F <= RARE_FIRINGS + 0.5)).mean())


def measure(run: Path, fields: dict, folder: Path) -> tuple[dict[str, float], float, dict[str, float]]:
    """Train (or reuse) the three SAEs of one setting; return the medians, the training seconds and
    SAE A's figures."""
    runs = {"a": RunDir(run), "b": RunDir(run / MODEL_B)}
    cfg = RunConfig(**runs["a"].manifest["config"])
    size = universality_size(cfg)
    seconds, encode, quality = 0.0, {}, {}
    for name, source, seed in (("a", "a", cfg.sae.seed), ("a_reseed", "a", cfg.sae.seed + 1), ("b", "b", cfg.sae.seed)):
        own = RunConfig(**runs[source].manifest["config"])
        sweep = own.sae.one_sae(size, **{"seed": seed, **fields})
        result = sae_second_run(runs[source], str(folder / name), own.model_copy(update={"sae": sweep}))
        seconds += sum(s.figures["seconds"] for s in result.stages if not s.skipped)
        (entry,) = result.stages[0].figures["saes"]
        sae = load_sae(folder / name / entry["path"], "cpu")
        encode[name] = sae.encode
        if name == "a":
            quality = {key: entry[key] for key in ("fvu", "l0", "loss_recovered", "dead_frac")}
            held_out = evaluate_sae(sae, (c for _, c in ActivationStore(run / "activations/val").iter_chunks(16_384)))
            quality["rare_frac"] = rare_fraction(held_out)
    units = {
        "features A→B": (encode["a"], encode["b"], "b"),
        "same model": (encode["a"], encode["a_reseed"], "a"),
        "neurons A→B": (_neurons, _neurons, "b"),
    }
    chunks = zip(*((c for _, c in ActivationStore(rd / "activations/val").iter_chunks(16_384)) for rd in runs.values()))
    matches = compare_units(chunks, units, "cpu")
    medians = {name: m.a_to_b.median() for name, m in matches.items()}
    for name in ("features A→B", "same model"):  # over A's features that are not rare
        medians[f"{name}, not rare"] = matches[name].a_to_b.median((RARE_FIRINGS + 1) / matches[name].n_tokens)
    return medians, seconds, quality


def _neurons(x_ND: torch.Tensor) -> torch.Tensor:
    return x_ND


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        help="comma-separated SAEConfig fields of one setting (repeatable; none: the run's own recipe)",
    )
    parser.add_argument("--work", type=Path, default=None, help="where the SAEs go (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    work = args.work or Path(tempfile.mkdtemp(prefix="universality-settings-"))
    rows = []
    for index, text in enumerate(args.settings or [""]):
        medians, seconds, quality = measure(args.run, parse_setting(text), work / f"setting-{index}")
        rows.append((text or "(run's recipe)", medians, seconds, quality))
        print(f"{rows[-1][0]}: " + ", ".join(f"{k} {v:.3f}" for k, v in {**medians, **quality}.items()), flush=True)
    print(f"\nrun {args.run}, {args.threads} threads, SAEs in {work}")
    print(
        f"{'setting':<40} {'features A→B':>13} {'same model':>11} {'neurons A→B':>12} {'train s':>8}"
        f" │ not rare: {'A→B':>5} {'same':>5} │ A: {'FVU':>6} {'L0':>6} {'loss rec.':>9} {'dead':>6} {'rare':>6}"
    )
    for text, medians, seconds, q in rows:
        print(
            f"{text:<40} {medians['features A→B']:>13.3f} {medians['same model']:>11.3f} "
            f"{medians['neurons A→B']:>12.3f} {seconds:>8.0f}"
            f" │           {medians['features A→B, not rare']:>5.3f} {medians['same model, not rare']:>5.3f}"
            f" │    {q['fvu']:>6.3f} {q['l0']:>6.1f} {q['loss_recovered']:>9.1%}"
            f" {q['dead_frac']:>6.1%} {q['rare_frac']:>6.1%}"
        )


if __name__ == "__main__":
    main()
