"""Atomic writes: nothing half-written is ever visible under its final name.

Every artifact is written to a temporary sibling and renamed into place only once complete, so a
crash or Ctrl-C leaves either the old artifact or none, never a truncated one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what ``atomic_path`` names its temporaries


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    Works for files and directories alike: write whatever you like at the yielded path. On an
    exception the temporary is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_temporaries(root: str | Path) -> list[Path]:
    """Delete every temporary ``atomic_path`` left under ``root`` (a killed process cannot clean up).

    Only call this while holding the lock on ``root``: a live writer's temporary looks the same.
    Returns what was removed.
    """
    found = [p for p in Path(root).rglob(".*.tmp") if TEMPORARY_NAME.match(p.name)]
    removed = []
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():
            continue  # inside a temporary folder removed just before
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
