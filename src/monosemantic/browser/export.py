"""``monosemantic export-html``: the browser's pages as a static site that opens from disk.

The site is the same front end as ``serve`` with ``window.MONOSEMANTIC_EXPORT`` set: instead of
calling the API it loads ``data/<api path>.js`` scripts (a ``<script>`` loads from ``file://``,
where ``fetch`` of a local file is refused), each holding the JSON the API would have answered.
The feature list is one file per dictionary, sorted and filtered in the page; token search reads
a second file per dictionary (each vocabulary text → its units' F1), so it matches and ranks as
``serve`` does. Live text and steering need the model, so they are left out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from monosemantic.atomic import atomic_path
from monosemantic.browser.app import STATIC_DIR
from monosemantic.browser.run_view import MAX_PAGE, NEURONS, RunView
from monosemantic.errors import UserError
from monosemantic.progress import progress

EXPORT_MARKER = "<!--export-config-->"


def _write_data(root: Path, api_path: str, obj: Any) -> None:
    path = root / "data" / f"{api_path}.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    path.write_text(
        f"(window.MONOSEMANTIC_DATA = window.MONOSEMANTIC_DATA || {{}})[{json.dumps(api_path)}] = {payload};\n",
        encoding="utf-8",
    )


def export_site(run_dir: str | Path, out: str | Path, max_units: int | None = None) -> dict[str, int]:
    """Write the static site for ``run_dir`` into ``out`` (replaced atomically; an existing folder
    must be empty or an earlier export). ``max_units`` caps the unit pages per dictionary (the
    lowest ids); returns counts of what was written."""
    view, out = RunView(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "data" / "overview.js").is_file())):
        raise UserError(f"{out}: exists and is not an earlier export (choose an empty or new folder)")
    counts = {"pages": 0, "pictures": 0}
    try:
        _write_site(view, out, max_units, counts)
    except OSError as err:  # a read-only or full disk: atomic_path has removed the partial copy
        raise UserError(f"{out}: cannot write the export there ({err.strerror or err})") from None
    return counts


def _write_site(view: RunView, out: Path, max_units: int | None, counts: dict[str, int]) -> None:
    with atomic_path(out) as tmp:
        shutil.copytree(STATIC_DIR, tmp / "static")
        index = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        (tmp / "index.html").write_text(
            index.replace(EXPORT_MARKER, "<script>window.MONOSEMANTIC_EXPORT = true;</script>"), encoding="utf-8"
        )
        _write_data(tmp, "overview", view.overview())
        for rel in (f for files in view.pictures().values() for f in files):
            (tmp / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(view.picture(rel), tmp / "files" / rel)
            counts["pictures"] += 1
        n_pages = sum(d["n_units"] if max_units is None else min(max_units, d["n_units"]) for d in view.dicts.values())
        with progress("export pages", n_pages, "pages") as advance:
            for name, d in view.dicts.items():
                _export_dictionary(view, tmp, name, d, max_units, advance)
        counts["pages"] = n_pages


def _export_dictionary(view: RunView, root: Path, name: str, d: dict, max_units: int | None, advance) -> None:
    """One dictionary's unit list (all rows) and its unit pages (up to ``max_units``)."""
    rows: list[dict] = []
    while len(rows) < d["n_units"]:
        page = view.unit_list(name, sort="unit", descending=False, offset=len(rows), limit=MAX_PAGE)
        if not page["rows"]:
            break
        rows += page["rows"]
    _write_data(root, f"units/{name}", {"dict": name, "rows": rows})
    _write_data(root, f"tokens/{name}", view.token_index(name))
    for unit in range(d["n_units"] if max_units is None else min(max_units, d["n_units"])):
        api_path = f"neurons/{unit}" if name == NEURONS else f"saes/{name}/features/{unit}"
        _write_data(root, api_path, view.unit_page(name, unit))
        advance()
