"""The feature-store command, as a plain function the CLI registers: ``search``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from monosemantic.analysis.store import FILENAME, FeatureStore
from monosemantic.errors import UserError
from monosemantic.integrity import verify_run

MAX_TOP = 10_000


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def search(
    run_dir: Path,
    token: str | None = None,
    text: str | None = None,
    sae: str | None = None,
    top: int = 10,
    console: Console | None = None,
) -> list[dict]:
    """Print the units that best match a token (by precision/recall) or an explanation text."""
    if (token is None) == (text is None):
        raise UserError("search: give exactly one of --token or --text")
    if not 1 <= top <= MAX_TOP:
        raise UserError(f"--top {top}: must be 1…{MAX_TOP:,}")
    verify_run(run_dir, only=(FILENAME,))
    store = FeatureStore(Path(run_dir) / FILENAME)
    try:
        results = store.search_token(token, sae, top) if token is not None else store.search_text(text, sae, top)
        dict_name = store.dictionary(sae)["name"]
    finally:
        store.close()
    query = f"token {token!r}" if token is not None else f"explanation text {text!r}"
    table = Table(title=f"{dict_name}: units matching {query}")
    for column in ("unit", "precision", "recall", "top tokens (fires)", "score", "explanation"):
        table.add_column(column, overflow="fold")
    if token is None:
        table.columns[1].header, table.columns[2].header = "", ""
    for r in results:
        tokens = ", ".join(f"{t.token!r} ({t.fires})" for t in r["top_tokens"])
        table.add_row(
            str(r["unit"]),
            f"{r['precision']:.2f}" if "precision" in r else "",
            f"{r['recall']:.2f}" if "recall" in r else "",
            tokens,
            f"{_score(r['simulation_score'])} [dim]{r['score_backend'] or ''}[/dim]",
            r["explanation"] or "",
        )
    (console or Console()).print(table)
    return results
