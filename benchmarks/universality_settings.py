"""Universality under other SAE settings, on a finished run's activations and second LM.

For each setting, trains three SAEs by the sae stage's recipe with the compared SAE's config and
the given fields changed — SAE A (A's activations, the run's SAE seed), a reseeded A (seed + 1)
and SAE B (B's activations, the run's seed), each a second run of the sae stage — then prints the
median best Pearson correlation A → B, A → reseeded A, and neurons A → B over the run's val tokens
(as ``monosemantic universality`` does). Needs a run directory in which ``monosemantic
universality`` has finished (``RUN/model_b/`` exists).

    python benchmarks/universality_settings.py --run runs/demo --set d_sae=1024 --set d_sae=1024,n_samples=4000000
    python benchmarks/universality_settings.py --run runs/demo --set variant=batchtopk --set d_sae=1024,k=64

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


def measure(run: Path, fields: dict, folder: Path) -> tuple[dict[str, float], float]:
    """Train (or reuse) the three SAEs of one setting; return the medians and the training seconds."""
    runs = {"a": RunDir(run), "b": RunDir(run / MODEL_B)}
    cfg = RunConfig(**runs["a"].manifest["config"])
    size = universality_size(cfg)
    seconds, encode = 0.0, {}
    for name, source, seed in (("a", "a", cfg.sae.seed), ("a_reseed", "a", cfg.sae.seed + 1), ("b", "b", cfg.sae.seed)):
        own = RunConfig(**runs[source].manifest["config"])
        sweep = own.sae.one_sae(size, **{"seed": seed, **fields})
        result = sae_second_run(runs[source], str(folder / name), own.model_copy(update={"sae": sweep}))
        seconds += sum(s.figures["seconds"] for s in result.stages if not s.skipped)
        (entry,) = result.stages[0].figures["saes"]
        encode[name] = load_sae(folder / name / entry["path"], "cpu").encode
    units = {
        "features A→B": (encode["a"], encode["b"], "b"),
        "same model": (encode["a"], encode["a_reseed"], "a"),
        "neurons A→B": (_neurons, _neurons, "b"),
    }
    chunks = zip(*((c for _, c in ActivationStore(rd / "activations/val").iter_chunks(16_384)) for rd in runs.values()))
    matches = compare_units(chunks, units, "cpu")
    return {name: m.a_to_b.median() for name, m in matches.items()}, seconds


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
        medians, seconds = measure(args.run, parse_setting(text), work / f"setting-{index}")
        rows.append((text or "(run's recipe)", medians, seconds))
        print(f"{rows[-1][0]}: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()), flush=True)
    print(f"\nrun {args.run}, {args.threads} threads, SAEs in {work}")
    print(f"{'setting':<40} {'features A→B':>13} {'same model':>11} {'neurons A→B':>12} {'train s':>8}")
    for text, medians, seconds in rows:
        print(
            f"{text:<40} {medians['features A→B']:>13.3f} {medians['same model']:>11.3f} "
            f"{medians['neurons A→B']:>12.3f} {seconds:>8.0f}"
        )


if __name__ == "__main__":
    main()
