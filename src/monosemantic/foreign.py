"""``monosemantic analyze-sae``: analyse and browse dictionaries trained elsewhere, on their own model.

The stages of ``monosemantic run`` with other inputs, not a second pipeline: ``corpus`` tokenises
the corpus with the model's own tokenizer and ``lm`` loads the model (``lm.hf_model_dir``);
``harvest`` records the held-out activations at the first SAE's hook point and, in the same
forward passes, at each other one (``harvest.extra_hooks``); ``sae``, instead of training, reads each SAE folder (any
layout ``sae/formats.py`` reads), measures it like a trained one (L0, FVU, loss recovered) and
saves it into ``RUN/saes/<name>`` with where it came from; ``analysis`` is the usual stage over
those names. ``serve`` and ``export-html`` then read the run like any other, and the browser
labels each foreign dictionary with its source.

Every input is checked before any work: each SAE's hook point must be one of the model's (the
nearest names are suggested), carry one vector per token, and be as wide as the SAE's ``d_in``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from monosemantic import integrity
from monosemantic.activations import ActivationStore
from monosemantic.activations.store import hook_store_dir
from monosemantic.analysis.analyze import analysis_headline, analyze_run
from monosemantic.analysis.store import FILENAME as FEATURE_STORE_FILE
from monosemantic.config import RunConfig, load_config
from monosemantic.corpus.shards import TokenShards
from monosemantic.device import resolve_device
from monosemantic.errors import UserError
from monosemantic.lm.model import load_external_lm, load_lm
from monosemantic.pipeline import RunDir, RunResult, Stage, StageRun, prerequisites
from monosemantic.sae.formats import Dictionary, open_dictionary
from monosemantic.sae.io import save_sae
from monosemantic.sae.metrics import evaluate_sae, loss_recovered

LAYOUT_LABEL = {"saelens": "SAELens", "sparsify": "sparsify", "monosemantic": "monosemantic"}


def dictionary_names(dicts: list[Dictionary]) -> list[str]:
    """A run-unique, URL-safe name per dictionary: its folder's name (``-2``, ``-3``… on a clash)."""
    names: list[str] = []
    for d in dicts:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", d.path.resolve().name).strip("-.") or "sae"
        name, n = base, 1
        while name in names or name == "neurons":
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def hook_points(dicts: list[Dictionary], hook: str | None) -> list[str]:
    """Each dictionary's hook point: ``hook`` when given, else what its config says."""
    hooks = []
    for d in dicts:
        chosen = hook or d.hook_name
        if chosen is None:
            raise UserError(f"SAE folder {d.path}: its config names no hook point; pass --hook")
        hooks.append(chosen)
    return hooks


def check_hooks(model, dicts: list[Dictionary], hooks: list[str]) -> None:
    """``UserError`` unless every hook is one of ``model``'s, carries one vector per token, and is
    as wide as its SAE's ``d_in`` (widths measured on a two-token forward pass)."""
    valid = list(model.hook_dict)
    for d, hook in zip(dicts, hooks):
        if hook not in model.hook_dict:
            near = difflib.get_close_matches(hook, valid, n=4, cutoff=0.5) or valid[:4]
            raise UserError(
                f"SAE folder {d.path}: hook point {hook!r} is not in the model (did you mean: {', '.join(near)})"
            )
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names_filter=lambda n: n in set(hooks))
    for d, hook in zip(dicts, hooks):
        shape = list(cache[hook].shape[2:])
        if len(shape) != 1:
            raise UserError(f"SAE folder {d.path}: hook point {hook} carries {shape} per token, not one vector")
        if shape[0] != d.sae.cfg.d_in:
            raise UserError(f"SAE folder {d.path}: d_in {d.sae.cfg.d_in} does not match {hook}'s width {shape[0]}")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def import_stage(cfg: RunConfig, dicts: list[Dictionary], names: list[str], hooks: list[str]) -> Stage:
    """The sae stage for dictionaries trained elsewhere: measure each and save it into ``RUN/saes``."""
    device = resolve_device(cfg.device)

    def run(rd: RunDir) -> dict:
        model = load_lm(rd / "lm", device)
        val_tokens = TokenShards(rd / "tokens", "val")
        windows = [w for _, _, w in val_tokens.sequential_windows(cfg.lm.n_ctx, cfg.sae.loss_windows)]
        tokens_BT = torch.from_numpy(np.stack(windows)).to(device)
        entries = []
        for d, name, hook in zip(dicts, names, hooks):
            val = ActivationStore(hook_store_dir(rd.path, "val", hook, cfg.lm.hook_name))
            sae = d.sae.to(device)
            metrics = evaluate_sae(sae, (chunk for _, chunk in val.iter_chunks(65_536)))
            del metrics["density"]  # per feature: the analysis stage keeps it
            source = f"{LAYOUT_LABEL[d.layout]} {d.architecture}"
            figures = {
                "name": name,
                "variant": sae.cfg.variant,
                "d_sae": sae.cfg.d_sae,
                **metrics,
                **loss_recovered(model, sae, tokens_BT, hook, val.mean().to(device)),
                "path": f"saes/{name}",
                "hook_name": hook,
                "foreign": {"source": source, "layout": d.layout, "architecture": d.architecture, "from": str(d.path)},
            }
            save_sae(sae, sae.cfg, rd / "saes" / name, extra={"hook_name": hook, "foreign": figures["foreign"]})
            entries.append(figures)
        return {"variant": "foreign", "saes": entries, "train_source": "trained elsewhere"}

    def summary(f: dict) -> str:
        return f"{len(f['saes'])} foreign SAE(s): " + ", ".join(
            f"{e['name']} ({e['foreign']['source']} at {e['hook_name']}, L0 {e['l0']:.1f}, FVU {e['fvu']:.3f})"
            for e in f["saes"]
        )

    config = {
        "saes": [
            {"name": n, "hook": h, "from": str(d.path.resolve()), "digest": _digest(d.path)}
            for d, n, h in zip(dicts, names, hooks)
        ],
        "loss_windows": cfg.sae.loss_windows,
    }
    return Stage("sae", config, run, [f"saes/{n}/cfg.json" for n in names], summary, needs=["harvest"])


def analysis_stage(cfg: RunConfig, names: list[str]) -> Stage:
    """The analysis stage over the imported dictionaries (and the main hook point's neurons)."""

    def run(rd: RunDir) -> dict:
        return analyze_run(rd.path, names, cfg.analysis, str(resolve_device(cfg.device)))

    config = {**cfg.analysis.model_dump(), "saes": names}
    return Stage("analysis", config, run, [FEATURE_STORE_FILE], analysis_headline, needs=["sae"])


def run_lm_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """Run ``run_dir``'s own config (from its ``run.json``), with ``--set`` ``overrides`` on top."""
    recorded = RunDir(run_dir).manifest.get("config")
    if not isinstance(recorded, dict):
        raise UserError(f"--model {run_dir}: run.json holds no config")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "run.yaml"
        base.write_text(yaml.safe_dump({k: v for k, v in recorded.items() if k != "preset"}))
        return load_config(recorded.get("preset", "demo"), base, overrides)


def adopt_run_lm(source: Path, out: Path) -> None:
    """Make run ``source``'s corpus and LM stages those of run directory ``out``: their files (hard
    links where the file system allows) and their records in ``run.json``, so that the pipeline
    finds them current and trains nothing."""
    src = RunDir(source)
    rd = RunDir(out)
    with rd.locked():
        for name in ("corpus", "lm"):
            record = src.manifest["stages"][name]
            if rd.manifest["stages"].get(name) == record:
                continue
            for unit in integrity.artifact_units(list(record["artifacts"])):
                target = rd / unit
                if target.is_dir():
                    shutil.rmtree(target)
                target.unlink(missing_ok=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                if (src / unit).is_dir():
                    shutil.copytree(src / unit, target, copy_function=_link_or_copy)
                else:
                    _link_or_copy(src / unit, target)
            rd.manifest["stages"][name], rd.manifest[name] = record, src.manifest[name]
        rd.save()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def analyze_saes(
    cfg: RunConfig, folders: list[Path], out: Path, hook: str | None = None, lm_run: Path | None = None
) -> RunResult:
    """Analyse the SAEs in ``folders`` on ``cfg.lm``'s model (a local Hugging Face folder), or on
    run ``lm_run``'s own LM (``cfg`` then that run's config), over ``cfg.corpus``, into run
    directory ``out``; ``hook`` overrides every SAE's own hook point."""
    if lm_run is None and cfg.lm.hf_model_dir is None and cfg.lm.pretrained is None:
        raise UserError("--model: give the Hugging Face model folder the SAEs were trained on, or a run directory")
    if not folders:
        raise UserError("give at least one SAE folder")
    if lm_run is not None and "lm" not in RunDir(lm_run).manifest["stages"]:
        raise UserError(f"--model {lm_run}: the run has no LM yet (run `monosemantic run --out {lm_run}` first)")
    if lm_run is not None and Path(out).resolve() == Path(lm_run).resolve():
        raise UserError(f"--out {out}: give a new run directory; the run whose LM is read stays as it is")
    dicts = [open_dictionary(folder) for folder in folders]
    hooks = hook_points(dicts, hook)
    model = load_lm(lm_run / "lm") if lm_run is not None else load_external_lm(cfg.lm)[0]
    check_hooks(model, dicts, hooks)
    del model
    names = dictionary_names(dicts)
    # the first SAE's hook point is the main one (a run's own LM keeps the run's: its stage is done)
    lm = cfg.lm if lm_run is not None else cfg.lm.model_copy(update={"hook_name": hooks[0]})
    extra = sorted(set(hooks) - {lm.hook_name})
    harvest = cfg.harvest.model_copy(update={"stream_train": True, "extra_hooks": extra})  # no SAE trains here
    cfg = cfg.model_copy(update={"lm": lm, "harvest": harvest})
    if lm_run is not None:
        adopt_run_lm(lm_run, out)
    from monosemantic.stages import all_stages  # the run's own stages, up to the harvest

    stages = prerequisites(all_stages(cfg), "harvest") + [
        import_stage(cfg, dicts, names, hooks),
        analysis_stage(cfg, names),
    ]
    rd = RunDir(Path(out))
    rd.manifest["config"] = cfg.model_dump()
    done = []
    for stage in stages:
        figures, skipped = rd.run_stage(stage)
        done.append(StageRun(stage.name, skipped, figures, stage.summary(figures)))
    rd.save()
    return RunResult(rd, done)
