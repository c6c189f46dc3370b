"""The ``monosemantic`` command line: one typer app, one subcommand per stage, ``run`` chains them.

Bad input is a ``UserError``: one line on stderr and exit code 2 (a traceback only with
``--debug``; under torchrun, rank 0 alone prints it). Re-running a command skips every stage whose
artifacts are current and resumes a stage that was interrupted.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from monosemantic import distributed, pipeline
from monosemantic.config import RunConfig, load_config, preset_names
from monosemantic.errors import UserError
from monosemantic.pipeline import RunResult
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
CorpusOption = typer.Option(None, "--corpus", help="Your own text: a .txt/.jsonl/.parquet file or a directory.")
DatasetOption = typer.Option(None, "--dataset", help="A Hugging Face dataset name (streamed; needs network).")
SeedOption = typer.Option(None, "--seed", help="Seed for every random choice of every stage.")
DeviceOption = typer.Option(None, "--device", help="cpu, cuda or auto.")
ForceOption = typer.Option(False, "--force", help="Re-run the stages even if their artifacts are current.")
VerifyOption = typer.Option(
    False,
    "--verify",
    help="Compare the digest of every artifact, large ones too (by default files over 256 MiB are compared by size).",
)


def _config(
    preset: str,
    config: Path | None,
    set_: list[str] | None,
    corpus: str | None,
    dataset: str | None,
    seed: int | None,
    device: str | None,
) -> RunConfig:
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


def _print_summary(result: RunResult) -> None:
    rd = result.run_dir
    if not rd.world.is_main:  # under torchrun, rank 0 alone reports
        return
    out = Console(width=max(Console().width, 110))
    table = Table(title=f"monosemantic run — {rd.path}")
    for col in ("stage", "status", "seconds", "figures"):
        table.add_column(col)
    for stage in result.stages:
        table.add_row(
            stage.name,
            "current (skipped)" if stage.skipped else "ran",
            f"{stage.figures.get('seconds', 0):.1f}",
            stage.summary,
        )
    out.print(table)
    lm = rd.manifest.get("lm")
    if lm:
        beats = lm["val_loss"] < min(lm["unigram_loss"], lm["bigram_loss"])
        out.print(
            f"LM validation loss {lm['val_loss']:.3f} nats/token vs unigram "
            f"{lm['unigram_loss']:.3f} and bigram {lm['bigram_loss']:.3f}: "
            + ("[green]beats both[/green]" if beats else "[red]does NOT beat both[/red]")
        )
    saes = rd.manifest.get("sae", {}).get("saes", [])
    if saes:
        t = Table(title="Sparse autoencoders (held-out activations)")
        for col in ("SAE", "L0", "FVU", "loss rec.", "vs mean-abl.", "dead", "dense", "train s"):
            t.add_column(col, justify="right")
        for e in saes:
            t.add_row(
                e["name"],
                f"{e['l0']:.1f}",
                f"{e['fvu']:.3f}",
                f"{e['loss_recovered']:.1%}",
                f"{e['loss_recovered_mean_ablation']:.1%}",
                f"{e['dead_frac']:.1%}",
                f"{e['dense_frac']:.1%}",
                f"{e['train_seconds']:.0f}" if "train_seconds" in e else "elsewhere",
            )
        out.print(t)
    out.print(f"Manifest: {rd.manifest_path}")


@app.command()
def run(
    out: Path = OutOption,
    preset: str = PresetOption,
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    corpus: str | None = CorpusOption,
    dataset: str | None = DatasetOption,
    seed: int | None = SeedOption,
    device: str | None = DeviceOption,
    force: bool = ForceOption,
    verify: bool = VerifyOption,
    upto: str | None = typer.Option(None, "--upto", help="Run only this stage and the stages it needs."),
) -> None:
    """Run the whole pipeline (skipping stages whose artifacts are current) and print a summary."""
    cfg = _config(preset, config, set_, corpus, dataset, seed, device)
    result = pipeline.run(cfg, out, upto, force, verify)
    _print_summary(result)
    if (result.run_dir / "features.sqlite").is_file() and result.run_dir.world.is_main:
        Console().print(
            f"Browse the features: [bold]monosemantic serve {result.run_dir.path}[/bold], "
            "then open http://127.0.0.1:8000/"
        )


def _stage_command(stage: str, doc: str, target: typer.Typer = app, name: str | None = None):
    def command(**options) -> None:
        cfg = _config(*(options[k] for k in ("preset", "config", "set_", "corpus", "dataset", "seed", "device")))
        _print_summary(pipeline.run(cfg, options["out"], stage, options["force"], options["verify"]))

    # the options of `run` but --upto: Typer reads a command's options from its signature
    options = [p for p in inspect.signature(run, eval_str=True).parameters.values() if p.name != "upto"]
    command.__signature__ = inspect.Signature(options, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in options}
    command.__doc__ = doc + " (Runs the stages it needs first if they are not current.)"
    target.command(name=name or stage)(command)


_stage_command("corpus", "Build the tokenizer and the token shards from the corpus.")
_stage_command("lm", "Train the 1-layer transformer and compare it with unigram/bigram baselines.")
_stage_command("harvest", "Record the LM's activations at the hook point into the activation store.")
app.add_typer(toy_app, name="toy")
_stage_command(
    "analysis", "Analyse every feature and neuron (dashboards, logit effects, autointerp) into the feature store."
)
_stage_command("splitting", "Feature splitting across dictionary sizes, family trees and the feature map.")
_stage_command("universality", "Train a second LM and SAE with other seeds; match features A→B.")


@app.command()
def search(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    token: str | None = typer.Option(None, "--token", help='A token, e.g. " God" (leading space matters).'),
    text: str | None = typer.Option(None, "--text", help="Words to find in explanations."),
    sae: str | None = typer.Option(None, "--sae", help="SAE name (default: the largest)."),
    top: int = typer.Option(10, "--top", min=1, help="How many units to list."),
) -> None:
    """Which features fire on a token (ranked by precision/recall), or match an explanation."""
    from monosemantic.analysis.cli import search as search_units

    search_units(run_dir, token, text, sae, top)


@app.command()
def steer(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    sae: str = typer.Option(..., "--sae", help="SAE name, e.g. topk-4096."),
    feature: int | None = typer.Option(None, "--feature", help="Feature id."),
    feature_token: str | None = typer.Option(
        None,
        "--feature-token",
        help='Steer the feature `search --token` ranks first, e.g. " God" (ids vary across runs).',
    ),
    prompt: str = typer.Option(..., "--prompt", help="Text to continue."),
    value: float | None = typer.Option(
        None, "--value", help="Clamp/add value (default: twice the feature's max activation)."
    ),
    mode: str = typer.Option("clamp", "--mode", help="clamp, add or ablate."),
    n_tokens: int = typer.Option(20, "--n-tokens", min=0, help="Tokens to sample."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Clamp, add or ablate one feature in the forward pass: next-token change and a continuation."""
    from monosemantic.interventions.cli import steer as steer_feature

    steer_feature(run_dir, sae, feature, prompt, value, mode, n_tokens, seed=seed, feature_token=feature_token)


@app.command("analyze-sae")
def analyze_sae(
    saes: list[Path] = typer.Argument(..., help="SAE folders: SAELens's layout, or sparsify's (one per hook point)."),
    model: Path = typer.Option(..., "--model", "-m", help="The model's local Hugging Face folder."),
    hook: str | None = typer.Option(
        None, "--hook", help="Hook point for every SAE (a TransformerLens name), overriding their configs."
    ),
    out: Path = OutOption,
    preset: str = PresetOption,
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    corpus: str | None = CorpusOption,
    dataset: str | None = DatasetOption,
    device: str | None = DeviceOption,
) -> None:
    """Analyse SAEs trained elsewhere on their model, into a run directory that serve and export-html read.

    --model is a local Hugging Face folder, or a run directory whose own LM the SAEs read (the
    run's corpus and LM are reused; the run itself is not changed)."""
    from monosemantic.foreign import analyze_saes, run_lm_config

    if (model / "run.json").is_file():
        if corpus is not None or dataset is not None or config is not None:
            raise UserError(f"--model {model}: a run's LM reads its own corpus and config; use --set for the rest")
        cfg = run_lm_config(model, [*(set_ or []), *([f"device={device}"] if device else [])])
        result = analyze_saes(cfg, saes, out, hook, lm_run=model)
    else:
        cfg = _config(preset, config, [f"lm.hf_model_dir={model}", *(set_ or [])], corpus, dataset, None, device)
        result = analyze_saes(cfg, saes, out, hook)
    _print_summary(result)
    Console().print(
        f"Browse the features: [bold]monosemantic serve {result.run_dir.path}[/bold], then open http://127.0.0.1:8000/"
    )


@app.command("eval")
def eval_saes(
    run_dir: Path = typer.Argument(..., help="Run directory (its SAEs trained or imported)."),
    batch_size_prompts: int = typer.Option(16, "--batch-prompts", min=1, help="Windows per evaluation batch."),
    batches: int = typer.Option(10, "--batches", min=1, help="Batches of windows for the CE/KL scores."),
) -> None:
    """SAEBench's core metrics for every SAE of the run, written as SAEBench writes them (RUN/eval/core/)."""
    from monosemantic.evaluation import evaluate_run

    done = evaluate_run(run_dir, batch_size_prompts, batches)
    table = Table(title=f"SAEBench core metrics — {run_dir}" + (" (current, skipped)" if done.skipped else ""))
    columns = ("l0", "explained_variance", "mse", "cossim", "ce_loss_score", "kl_div_score", "frac_alive")
    for col in ("SAE", *columns):
        table.add_column(col, justify="right")
    for name, m in done.figures["saes"].items():
        table.add_row(name, *(f"{m[c]:.4g}" for c in columns))
    Console(width=max(Console().width, 110)).print(table)


@app.command("export-sae")
def export_sae(
    folder: Path = typer.Argument(..., help="An SAE folder in any layout we read (ours, SAELens's, sparsify's)."),
    out: Path = typer.Argument(..., help="Folder to write (created or replaced)."),
    to: str = typer.Option("saelens", "--to", help="saelens (cfg.json + sae_weights.safetensors) or sparsify."),
    hook: str | None = typer.Option(None, "--hook", help="Hook point to record (default: the folder's own)."),
) -> None:
    """Write an SAE in SAELens's or sparsify's layout (the same latents; sparsify holds TopK SAEs)."""
    from monosemantic.sae.formats import open_dictionary
    from monosemantic.sae.io import save_sae
    from monosemantic.sae.sparsify import save_sparsify

    if to not in ("saelens", "sparsify"):
        raise UserError(f"--to {to}: expected saelens or sparsify")
    d = open_dictionary(folder)
    if to == "sparsify":
        save_sparsify(d.sae, out)
    else:
        save_sae(d.sae, d.sae.cfg, out, extra={"hook_name": hook or d.hook_name})
    console.print(f"wrote {d.layout} {d.architecture} SAE {folder} as {to}: {out}")


@app.command("export-dashboard")
def export_dashboard(
    run_dir: Path = typer.Argument(..., help="Run directory (analysed)."),
    sae: str = typer.Argument(..., help="The SAE's name in the run (as the browser lists it)."),
    out: Path = typer.Argument(..., help="Folder to write batch-0.json and explanations.json into."),
    features: str | None = typer.Option(None, "--features", help="Comma-separated feature ids (default: all)."),
) -> None:
    """Feature dashboards in sae-dashboard's Neuronpedia batch shape, with their explanations."""
    from monosemantic.browser.neuronpedia import export_dashboards

    try:
        units = None if features is None else [int(f) for f in features.split(",")]
    except ValueError:
        raise UserError(f"--features {features}: expected comma-separated integers") from None
    export_dashboards(run_dir, sae, units, out)
    console.print(f"wrote {out / 'batch-0.json'} and {out / 'explanations.json'}")


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
    max_units: int | None = typer.Option(None, "--max-units", min=1, help="Unit pages per dictionary (default: all)."),
) -> None:
    """A static, self-contained copy of the browser's pages (no live text or steering) to share a run."""
    from monosemantic.browser.export import export_site

    counts = export_site(run_dir, out, max_units)
    console.print(f"wrote {counts['pages']:,} unit pages and {counts['pictures']} pictures: open {out / 'index.html'}")


sae_app = typer.Typer(help="Sparse autoencoders on the run's activations.", no_args_is_help=True)
app.add_typer(sae_app, name="sae")
_stage_command(
    "sae",
    "Train a family of SAEs of growing size (sae.sizes) on the same activations and measure each; "
    "with harvest.extra_hooks, the family again at each further hook point.",
    sae_app,
    "sweep",
)


def main() -> None:
    try:
        app()
    except UserError as err:
        if _debug:
            raise
        distributed.report_error(f"error: {err}")
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
