"""The ``monosemantic`` command line: one typer app, one subcommand per stage, ``run`` chains them.

Bad input is a ``UserError``: one line on stderr and exit code 2 (a traceback only with
``--debug``). Re-running a command skips every stage whose artifacts are current and resumes a
stage that was interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from monosemantic.config import RunConfig, load_config, preset_names
from monosemantic.errors import UserError
from monosemantic.pipeline import RunDir
from monosemantic.progress import set_quiet
from monosemantic.toy.cli import toy_app

app = typer.Typer(
    help="Dictionary learning on neural networks: train a 1-layer transformer, learn sparse "
         "autoencoders on its MLP, analyse and browse the features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
_debug = False


@app.callback()
def _global_options(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    global _debug
    _debug = debug or bool(os.environ.get("MONOSEMANTIC_DEBUG"))
    set_quiet(quiet)


OutOption = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory.")
PresetOption = typer.Option("demo", "--preset", "-p", help=f"Preset: {', '.join(preset_names())}.")
ConfigOption = typer.Option(None, "--config", "-c", help="YAML file merged over the preset.")
SetOption = typer.Option(None, "--set", help="Override a value, e.g. --set lm.n_steps=500 (repeatable).")
CorpusOption = typer.Option(None, "--corpus", help="Your own text: a .txt/.jsonl file or a directory.")
DatasetOption = typer.Option(None, "--dataset", help="A Hugging Face dataset name (streamed; needs network).")
SeedOption = typer.Option(None, "--seed", help="Seed for every random choice of every stage.")
DeviceOption = typer.Option(None, "--device", help="cpu, cuda or auto.")
ForceOption = typer.Option(False, "--force", help="Re-run the stages even if their artifacts are current.")


def _config(preset: str, config: Optional[Path], set_: Optional[list[str]], corpus: Optional[str],
            dataset: Optional[str], seed: Optional[int], device: Optional[str]) -> RunConfig:
    overrides = list(set_ or [])
    if corpus is not None:
        overrides.append(f"corpus.corpus={corpus}")
    if dataset is not None:
        overrides.append(f"corpus.dataset={dataset}")
    if device is not None:
        overrides.append(f"device={device}")
    if seed is not None:
        overrides += [f"{section}.seed={seed}" for section in _SEEDED_SECTIONS]
    return load_config(preset, config, overrides)


_SEEDED_SECTIONS = ("lm", "sae", "toy")


def _run_stages(cfg: RunConfig, out: Path, upto: Optional[str], force: bool) -> RunDir:
    from monosemantic.stages import all_stages

    stages = all_stages(cfg)
    names = [s.name for s in stages]
    if upto is not None and upto not in names:
        raise UserError(f"unknown stage {upto} (stages: {', '.join(names)})")
    rd = RunDir(out)
    rd.manifest["config"] = cfg.model_dump()
    rows = []
    for stage in stages:
        figures, skipped = rd.run_stage(stage, force=force and (upto is None or stage.name == upto))
        rows.append((stage.name, "current (skipped)" if skipped else "ran", figures))
        if stage.name == upto:
            break
    rd.save()
    _print_summary(rd, rows)
    return rd


def _print_summary(rd: RunDir, rows: list[tuple[str, str, dict]]) -> None:
    out = Console(width=max(Console().width, 110))
    table = Table(title=f"monosemantic run — {rd.path}")
    for col in ("stage", "status", "seconds", "figures"):
        table.add_column(col)
    for name, status, figures in rows:
        table.add_row(name, status, f"{figures.get('seconds', 0):.1f}", _headline(name, figures))
    out.print(table)
    lm = rd.manifest.get("lm")
    if lm:
        beats = lm["val_loss"] < min(lm["unigram_loss"], lm["bigram_loss"])
        out.print(f"LM validation loss {lm['val_loss']:.3f} nats/token vs unigram "
                  f"{lm['unigram_loss']:.3f} and bigram {lm['bigram_loss']:.3f}: "
                  + ("[green]beats both[/green]" if beats else "[red]does NOT beat both[/red]"))
    saes = rd.manifest.get("sae", {}).get("saes", [])
    if saes:
        t = Table(title="Sparse autoencoders (held-out activations)")
        for col in ("SAE", "L0", "FVU", "loss rec.", "vs mean-abl.", "dead", "dense", "train s"):
            t.add_column(col, justify="right")
        for e in saes:
            t.add_row(e["name"], f"{e['l0']:.1f}", f"{e['fvu']:.3f}",
                      f"{e['loss_recovered']:.1%}", f"{e['loss_recovered_mean_ablation']:.1%}",
                      f"{e['dead_frac']:.1%}", f"{e['dense_frac']:.1%}", f"{e['train_seconds']:.0f}")
        out.print(t)
    out.print(f"Manifest: {rd.manifest_path}")


def _headline(stage: str, f: dict) -> str:
    if stage == "corpus":
        return (f"{f['n_docs']:,} docs, {f['chars'] / 1e6:.1f}M chars, {f['train_tokens']:,} train + "
                f"{f['val_tokens']:,} val tokens, vocab {f['vocab_size']:,}")
    if stage == "lm":
        trained = (f"external {f['external']}" if "external" in f
                   else f"{f['steps']:,} steps, {f['train_tokens']:,} tokens")
        return (f"{trained}, val loss {f['val_loss']:.3f} "
                f"(unigram {f['unigram_loss']:.3f}, bigram {f['bigram_loss']:.3f})")
    if stage == "sae":
        return f"{len(f['saes'])} {f['variant']} SAEs: " + ", ".join(str(e["d_sae"]) for e in f["saes"])
    if stage == "analysis":
        from monosemantic.analysis.analyze import analysis_headline

        return analysis_headline(f)
    if stage == "splitting":
        family = f.get("context_family")
        context = (f"; context family {family['sae']}/{family['feature']} (JS {family['js_divergence_bits']:.2f} bits)"
                   if family else "")
        return (f"{f['split_families']:,} features split into ≥ 2 children at the next size; "
                f"map by {f['feature_map']['method']}{context}")
    if stage == "universality":
        return (f"median max-correlation A→B: features {f['median_feature_corr']:.2f} vs neurons "
                f"{f['median_neuron_corr']:.2f} (paper 0.72 vs 0.46)")
    if stage == "toy":
        dims = [p["dims_per_feature"] for p in f["points"]]
        return (f"{len(f['points'])} sparsities, D* from {dims[0]:.2f} to {dims[-1]:.2f}; "
                f"plots in toy/")
    if stage == "harvest":
        return f"{f['train']['rows']:,} train + {f['val']['rows']:,} val rows at {f['train']['hook_name']}"
    return ""


@app.command()
def run(
    out: Path = OutOption, preset: str = PresetOption, config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption, corpus: Optional[str] = CorpusOption,
    dataset: Optional[str] = DatasetOption, seed: Optional[int] = SeedOption,
    device: Optional[str] = DeviceOption, force: bool = ForceOption,
    upto: Optional[str] = typer.Option(None, "--upto", help="Stop after this stage."),
) -> None:
    """Run the whole pipeline (skipping stages whose artifacts are current) and print a summary."""
    cfg = _config(preset, config, set_, corpus, dataset, seed, device)
    rd = _run_stages(cfg, out, upto, force)
    if (rd / "features.sqlite").is_file():
        Console().print(f"Browse the features: [bold]monosemantic serve {rd.path}[/bold], then open http://127.0.0.1:8000/")


def _stage_command(stage: str, doc: str, target: typer.Typer = app, name: str | None = None):
    def command(
        out: Path = OutOption, preset: str = PresetOption, config: Optional[Path] = ConfigOption,
        set_: Optional[list[str]] = SetOption, corpus: Optional[str] = CorpusOption,
        dataset: Optional[str] = DatasetOption, seed: Optional[int] = SeedOption,
        device: Optional[str] = DeviceOption, force: bool = ForceOption,
    ) -> None:
        cfg = _config(preset, config, set_, corpus, dataset, seed, device)
        _run_stages(cfg, out, stage, force)

    command.__doc__ = doc + " (Runs the stages before it first if they are not current.)"
    target.command(name=name or stage)(command)


_stage_command("corpus", "Build the tokenizer and the token shards from the corpus.")
_stage_command("lm", "Train the 1-layer transformer and compare it with unigram/bigram baselines.")
_stage_command("harvest", "Record the LM's activations at the hook point into the activation store.")
app.add_typer(toy_app, name="toy")
_stage_command("analysis", "Analyse every feature and neuron (dashboards, logit effects, autointerp) "
               "into the feature store.")
_stage_command("splitting", "Feature splitting across dictionary sizes, family trees and the feature map.")
_stage_command("universality", "Train a second LM and SAE with other seeds; match features A→B.")


@app.command()
def search(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    token: Optional[str] = typer.Option(None, "--token", help='A token, e.g. " God" (leading space matters).'),
    text: Optional[str] = typer.Option(None, "--text", help="Words to find in explanations."),
    sae: Optional[str] = typer.Option(None, "--sae", help="SAE name (default: the largest)."),
    top: int = typer.Option(10, "--top", min=1, help="How many units to list."),
) -> None:
    """Which features fire on a token (ranked by precision/recall), or match an explanation."""
    from monosemantic.analysis.cli import search as search_units

    search_units(run_dir, token, text, sae, top)


@app.command()
def steer(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    sae: str = typer.Option(..., "--sae", help="SAE name, e.g. topk-4096."),
    feature: int = typer.Option(..., "--feature", help="Feature id."),
    prompt: str = typer.Option(..., "--prompt", help="Text to continue."),
    value: Optional[float] = typer.Option(None, "--value", help="Clamp/add value (default: twice the feature's max activation)."),
    mode: str = typer.Option("clamp", "--mode", help="clamp, add or ablate."),
    n_tokens: int = typer.Option(20, "--n-tokens", min=0, help="Tokens to sample."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Clamp, add or ablate one feature in the forward pass: next-token change and a continuation."""
    from monosemantic.analysis.cli import steer as steer_feature

    steer_feature(run_dir, sae, feature, prompt, value, mode, n_tokens, seed=seed)


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1: this machine only)."),
) -> None:
    """The feature browser: a local web app over the run (JSON API under /api/)."""
    from monosemantic.browser.serve import serve as serve_browser

    serve_browser(run_dir, host, port)


@app.command("export-html")
def export_html(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    out: Path = typer.Argument(..., help="Folder to write the static site into (created or replaced)."),
    max_units: Optional[int] = typer.Option(None, "--max-units", min=1, help="Unit pages per dictionary (default: all)."),
) -> None:
    """A static, self-contained copy of the browser's pages (no live text or steering) to share a run."""
    from monosemantic.browser.export import export_site

    counts = export_site(run_dir, out, max_units)
    console.print(f"wrote {counts['pages']:,} unit pages and {counts['pictures']} pictures: open {out / 'index.html'}")


sae_app = typer.Typer(help="Sparse autoencoders on the run's activations.", no_args_is_help=True)
app.add_typer(sae_app, name="sae")
_stage_command("sae", "Train a family of SAEs of growing size (sae.sizes) on the same activations "
               "and measure each.", sae_app, "sweep")


def main() -> None:
    try:
        app()
    except UserError as err:
        if _debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
