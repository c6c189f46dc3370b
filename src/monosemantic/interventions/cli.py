"""The intervention command, as a plain function the CLI registers: ``steer``."""

from __future__ import annotations

import math
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from monosemantic.activations import ActivationStore
from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.corpus.tokenizer import eos_id, load_tokenizer
from monosemantic.errors import UserError
from monosemantic.integrity import verify_run
from monosemantic.interventions.steer import (
    MAX_NEW_TOKENS,
    MAX_STEER_VALUE,
    ablation_loss_change,
    next_token_change,
    sample_continuation,
    steering_hook,
)
from monosemantic.lm.model import load_lm
from monosemantic.sae.io import load_sae, saved_hook_name


def steer(
    run_dir: Path,
    sae: str,
    feature: int | None,
    prompt: str,
    value: float | None = None,
    mode: str = "clamp",
    n_tokens: int = 20,
    top: int = 10,
    seed: int = 0,
    console: Console | None = None,
    feature_token: str | None = None,
) -> dict:
    """Print how steering (clamp/add) or ablating one feature changes the LM's next-token predictions
    and a sampled continuation; with ablation, also the loss change on the feature's top contexts.

    The feature is ``feature`` (an id), or with ``feature_token`` the best match of
    ``search --token`` (ids differ between runs and torch builds; a token does not)."""
    if (feature is None) == (feature_token is None):
        raise UserError("steer: give exactly one of --feature or --feature-token")
    run_dir = Path(run_dir)
    if value is not None and not (math.isfinite(value) and abs(value) <= MAX_STEER_VALUE):
        raise UserError(f"--value {value}: must be a finite number within ±{MAX_STEER_VALUE:g}")
    if not 0 <= n_tokens <= MAX_NEW_TOKENS:
        raise UserError(f"--n-tokens {n_tokens}: must be 0…{MAX_NEW_TOKENS}")
    folder = run_dir / "saes" / sae
    if not folder.is_dir():
        have = sorted(p.name for p in (run_dir / "saes").iterdir()) if (run_dir / "saes").is_dir() else []
        raise UserError(f"--sae {sae}: no such SAE in {run_dir / 'saes'} (have: {', '.join(have) or 'none'})")
    verify_run(run_dir)
    with ExitStack() as cleanup:
        store = (
            cleanup.enter_context(closing(FeatureStore(run_dir / FILENAME))) if (run_dir / FILENAME).is_file() else None
        )
        if feature_token is not None:
            feature = _feature_for_token(store, run_dir, sae, feature_token)
        return _steer(run_dir, store, sae, feature, prompt, value, mode, n_tokens, top, seed, console or Console())


def _feature_for_token(store: FeatureStore | None, run_dir: Path, sae: str, token: str) -> int:
    """The feature of ``sae`` that ``search --token`` ranks first for ``token``."""
    if store is None:
        raise UserError(f"--feature-token needs {run_dir / FILENAME} (run the analysis stage first)")
    hits = store.search_token(token, sae, top=1)
    if not hits:
        raise UserError(f"--feature-token {token!r}: no feature of {sae} fires on it")
    return hits[0]["unit"]


def _steer(
    run_dir: Path,
    store: FeatureStore | None,
    sae: str,
    feature: int,
    prompt: str,
    value: float | None,
    mode: str,
    n_tokens: int,
    top: int,
    seed: int,
    out: Console,
) -> dict:
    model, tokenizer = load_lm(run_dir / "lm"), load_tokenizer(run_dir / "tokenizer.json")
    dictionary = load_sae(run_dir / "saes" / sae)
    if not 0 <= feature < dictionary.cfg.d_sae:
        raise UserError(f"--feature {feature}: {sae} has features 0…{dictionary.cfg.d_sae - 1}")
    # the hook point the SAE reads (a dictionary trained elsewhere may read another than the run's)
    hook_name = saved_hook_name(run_dir / "saes" / sae) or ActivationStore(run_dir / "activations" / "val").hook_name
    if value is None:
        max_act = store.unit(sae, feature)["max_act"] if store is not None else 0.0
        value = 2 * max_act if max_act > 0 else 10.0
    hook = steering_hook(dictionary, feature, mode, value)
    tokens_T = torch.tensor([eos_id(tokenizer), *tokenizer.encode(prompt).ids][-model.cfg.n_ctx :])

    def show(t: int) -> str:
        return repr(tokenizer.decode([t]))

    change = next_token_change(model, hook_name, tokens_T, hook, top)
    what = {"clamp": f"clamped to {value:.3g}", "add": f"+{value:.3g}·W_dec", "ablate": "ablated"}[mode]
    table = Table(title=f"{sae} feature {feature} {what}: next token after {prompt!r}")
    for column in ("before", "p", "after", "p", "largest gains", "p before → after"):
        table.add_column(column)
    for (b, pb, _), (a, _, pa), (g, gb, ga) in zip(change["before"], change["after"], change["gains"]):
        table.add_row(show(b), f"{pb:.3f}", show(a), f"{pa:.3f}", show(g), f"{gb:.4f} → {ga:.4f}")
    out.print(table)
    plain = sample_continuation(model, hook_name, tokens_T, n_tokens, None, seed)
    steered = sample_continuation(model, hook_name, tokens_T, n_tokens, hook, seed)
    out.print(f"[bold]continuation[/bold] (seed {seed}): {prompt}[dim]{tokenizer.decode(plain)}[/dim]")
    out.print(f"[bold]steered[/bold]      (seed {seed}): {prompt}[green]{tokenizer.decode(steered)}[/green]")
    result = {
        "feature": feature,
        "value": value,
        "next_token": change,
        "continuation": plain,
        "steered_continuation": steered,
    }
    if mode == "ablate" and store is not None:
        result["ablation"] = _ablation_on_top_contexts(
            run_dir, store, model, hook_name, dictionary, sae, feature, out, show
        )
    return result


def _ablation_on_top_contexts(run_dir, store, model, hook_name, dictionary, sae, feature, out, show) -> dict:
    """Δloss of the next token at each top example, re-run in its full harvest window."""
    acts = ActivationStore(run_dir / "activations" / "val")
    ctx = int(acts.meta.get("ctx") or model.cfg.n_ctx)
    rows = [e["row"] for e in store.examples(sae, feature, "top") if (e["row"] % ctx) < ctx - 1]
    if not rows:
        out.print("no top examples with a next token to ablate on")
        return {}
    starts = np.array(rows) // ctx * ctx
    windows_BT = torch.from_numpy(
        acts.origin((starts[:, None] + np.arange(ctx)).ravel())["token"].reshape(len(rows), ctx)
    )
    positions_B = torch.from_numpy(np.array(rows) - starts)
    activation_B, delta_B = ablation_loss_change(model, hook_name, dictionary, feature, windows_BT, positions_B)
    table = Table(title=f"ablating {sae} feature {feature}: next-token loss change at its top activations")
    for column in ("token", "next", "activation", "Δloss (nats)"):
        table.add_column(column)
    for b in range(len(rows)):
        p = int(positions_B[b])
        table.add_row(
            show(int(windows_BT[b, p])), show(int(windows_BT[b, p + 1])), f"{activation_B[b]:.3f}", f"{delta_B[b]:+.4f}"
        )
    out.print(table)
    out.print(f"mean Δloss {delta_B.mean():+.4f} nats over {len(rows)} top contexts")
    return {"mean_delta_loss": float(delta_B.mean()), "n_contexts": len(rows)}
