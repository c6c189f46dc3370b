"""Universality under other SAE settings, on a finished run's activations and second LM.

For each setting, trains three SAEs with the run's SAE config and the given fields changed — SAE A
(A's activations, the run's SAE seed), a reseeded A (seed + 1) and SAE B (B's activations, the
run's seed) — then prints the median best Pearson correlation A → B, A → reseeded A, and neurons
A → B over the run's val tokens (as ``monosemantic universality`` does). Needs a run directory in
which ``monosemantic universality`` has finished (``activations_b/`` and ``lm_b/`` exist).

    python benchmarks/universality_settings.py --run runs/demo --set d_sae=1024 --set d_sae=1024,n_samples=4000000
    python benchmarks/universality_settings.py --run runs/demo --set variant=batchtopk --set d_sae=1024,k=64

Each ``--set`` is one setting: comma-separated SAEConfig fields (values parsed as JSON, else
strings). The SAEs go to ``--work`` (default: a temporary directory) and a setting whose folder is
there already is reused.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from monosemantic.activations.store import ActivationStore
from monosemantic.compare.universality import _identity, _largest_sae, _train_sae_on, compare_units
from monosemantic.config import SAESweepConfig
from monosemantic.progress import set_quiet
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.io import load_sae


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
    base = load_sae(run / "saes" / _largest_sae(run), "cpu").cfg
    sweep = SAESweepConfig(**json.loads((run / "run.json").read_text())["config"]["sae"])
    stores = {"a": ActivationStore(run / "activations/train"), "b": ActivationStore(run / "activations_b/train")}
    seconds = 0.0
    for name, source, seed in (("a", "a", base.seed), ("a_reseed", "a", base.seed + 1), ("b", "b", base.seed)):
        if (folder / name / "cfg.json").exists():
            continue
        cfg = SAEConfig.model_validate(
            {**base.model_dump(mode="json"), "seed": seed, "checkpoint_every": None, "device": "cpu", **fields}
        )
        start = time.perf_counter()
        _train_sae_on(stores[source], cfg, sweep, folder / name, "lm" if source == "a" else "lm_b")
        seconds += time.perf_counter() - start
    encode = {name: load_sae(folder / name, "cpu").encode for name in ("a", "a_reseed", "b")}
    units = {
        "features A→B": (encode["a"], encode["b"], "b"),
        "same model": (encode["a"], encode["a_reseed"], "a"),
        "neurons A→B": (_identity, _identity, "b"),
    }
    chunks = zip(
        *(
            (c for _, c in ActivationStore(run / f"{store}/val").iter_chunks(16_384))
            for store in ("activations", "activations_b")
        )
    )
    matches = compare_units(chunks, units, "cpu")
    return {name: m.a_to_b.median() for name, m in matches.items()}, seconds


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
