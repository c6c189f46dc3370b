"""The table `benchmarks/paper_gpu.sh` prints last: every run directory under RUNS, side by side
with the paper's numbers (Bricken et al. 2023, A/1 = 4,096 features).

    python benchmarks/paper_summary.py RUNS [--weights-to DIR]

``--weights-to`` also writes float16 copies of the LMs and 4,096-feature SAEs into DIR/weights.tgz,
split into 15 MB pieces (weights.tgz.aa, .ab, …), small enough to bring back from a lent GPU and
analyse on a CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
from pathlib import Path

from safetensors.torch import load_file, save

PAPER = {
    "loss_recovered": 0.79,
    "dead_frac": 0.041,
    "ultralow_frac": 0.071,
    "median_feature_corr": 0.72,
    "median_neuron_corr": 0.46,
}


def fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def summary(runs: Path) -> str:
    lines = []
    manifests = {p.parent.name: json.loads(p.read_text()) for p in sorted(runs.glob("*/run.json"))}
    for name, m in manifests.items():
        timings = ", ".join(f"{stage} {seconds:.0f}s" for stage, seconds in m.get("timings", {}).items())
        lines.append(f"[{name}] stage seconds: {timings or 'none finished'}")
    lm = next((m["lm"] for m in manifests.values() if "lm" in m), None)
    if lm:
        rate = lm["train_tokens"] / lm["train_seconds"] if lm.get("train_seconds") else None
        lines.append(
            f"LM A: {lm['train_tokens']:,} tokens, train loss {fmt(lm['train_loss'])}, val loss "
            f"{fmt(lm['val_loss'])} (unigram {fmt(lm['unigram_loss'])}, bigram {fmt(lm['bigram_loss'])}), "
            f"{fmt(rate, ',.0f')} tokens/s"
        )
    lines.append("")
    lines.append(
        f"{'SAE':<22}{'L0':>7}{'FVU':>7}{'loss rec':>9}{'mean-abl':>9}{'dead':>7}{'ultralow':>9}"
        f"{'density over':>14}{'samples':>13}{'samples/s':>11}"
    )
    for name, m in manifests.items():
        for e in m.get("sae", {}).get("saes", []):
            d = e.get("density", {})
            lines.append(
                f"{name + '/' + e['name']:<22}{e['l0']:>7.1f}{e['fvu']:>7.3f}{e['loss_recovered']:>9.1%}"
                f"{e['loss_recovered_mean_ablation']:>9.1%}{fmt(d.get('dead_frac'), '.1%'):>7}"
                f"{fmt(d.get('ultralow_frac'), '.1%'):>9}{d.get('n_tokens', 0):>14,}{e['samples']:>13,}"
                f"{e['samples'] / max(e['train_seconds'], 1e-9):>11,.0f}"
            )
    lines.append(
        f"{'paper A/1':<22}{'':>7}{'':>7}{PAPER['loss_recovered']:>9.1%}{'':>9}{PAPER['dead_frac']:>7.1%}"
        f"{PAPER['ultralow_frac']:>9.1%}{'':>14}{8_000_000_000:>13,}"
    )
    lines.append("")
    lines.append(f"{'universality':<22}{'A→B':>7}{'dense':>7}{'same':>7}{'neurons':>9}{'tokens':>13}  seconds by step")
    for name, m in manifests.items():
        u = m.get("universality")
        if u:
            lines.append(
                f"{name + '/' + u['sae']:<22}{u['median_feature_corr']:>7.3f}"
                f"{fmt(u.get('median_feature_corr_dense')):>7}{fmt(u['median_feature_corr_same_model']):>7}"
                f"{u['median_neuron_corr']:>9.3f}{u['n_tokens']:>13,}  {u.get('seconds_by_step')}"
            )
            lines.append(
                f"{'':<22}model B: val loss {fmt(u.get('lm_b_val_loss'))}, train loss {fmt(u.get('lm_b_train_loss'))}"
            )
    lines.append(
        f"{'paper A/1 → B/1':<22}{PAPER['median_feature_corr']:>7.3f}{'':>7}{'':>7}"
        f"{PAPER['median_neuron_corr']:>9.3f}{40_960_000:>13,}"
    )
    return "\n".join(lines)


def pack_weights(runs: Path, out: Path) -> None:
    """float16 copies of models A and B (from the ``standard`` run, which trains both) and of every
    4,096-feature SAE under RUNS, as DIR/weights.tgz.* pieces."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        models = ("standard/lm/model.safetensors", "standard/model_b/lm/model.safetensors")
        paths = [runs / m for m in models if (runs / m).exists()] + sorted(runs.glob("*/saes/*-4096/*.safetensors"))
        for path in paths:
            data = save({k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()})
            info = tarfile.TarInfo(str(path.relative_to(runs)))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for sibling in path.parent.glob("*.json"):
                tar.add(sibling, str(sibling.relative_to(runs)))
    (out / "weights.tgz").write_bytes(buffer.getvalue())
    subprocess.run(["split", "-b", "15M", str(out / "weights.tgz"), str(out / "weights.tgz.")], check=True)
    (out / "weights.tgz").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--weights-to", type=Path)
    args = parser.parse_args()
    print(summary(args.runs))
    if args.weights_to:
        pack_weights(args.runs, args.weights_to)


if __name__ == "__main__":
    main()
