"""The bundled corpus ships, streams, and holds the varied, clean text the demo model needs."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from monosemantic.corpus.bundled import BUNDLED_CORPUS_PATH, iter_bundled_documents

EXPECTED_SOURCES = {
    "kjv-bible",
    "shakespeare",
    "milton",
    "devils-dictionary",
    "jargon-file",
    "foldoc",
    "python-docs",
    "python-docs-html",
    "python-stdlib",
    "fortunes",
    "debian-handbook",
}
SCRIPTS = {  # Unicode blocks of the non-Latin scripts the corpus is meant to contain
    "Cyrillic": (0x0400, 0x04FF),
    "Arabic": (0x0600, 0x06FF),
    "CJK": (0x4E00, 0x9FFF),
    "Kana": (0x3040, 0x30FF),
}
BOILERPLATE = re.compile(
    r"\*\*\* ?START OF|\*\*\* ?END OF|Project Gutenberg-tm|PROJECT GUTENBERG "
    r"LICENSE|START: FULL LICENSE"
)


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return list(iter_bundled_documents())


def test_file_is_shipped_and_small_enough():
    assert BUNDLED_CORPUS_PATH.exists()
    assert 4_000_000 < BUNDLED_CORPUS_PATH.stat().st_size <= 15_000_000


def test_documents_have_the_schema_and_a_sensible_size(docs):
    assert len(docs) > 2000
    sizes = []
    for doc in docs:
        assert set(doc) == {"text", "source", "title"}
        assert doc["title"].strip()
        size = len(doc["text"].encode("utf-8"))
        assert 200 <= size <= 16_000, (doc["title"], size)
        assert doc["text"] == doc["text"].strip("\n") and "\r" not in doc["text"]
        sizes.append(size)
    assert 1_000 <= sorted(sizes)[len(sizes) // 2] <= 16_000


def test_every_source_is_present_with_real_volume(docs):
    volume = Counter()
    for doc in docs:
        volume[doc["source"]] += len(doc["text"].encode("utf-8"))
    assert set(volume) == EXPECTED_SOURCES
    assert sum(volume.values()) > 25_000_000
    assert volume["kjv-bible"] > 4_000_000
    assert volume["shakespeare"] > 5_000_000
    assert min(volume.values()) > 300_000


def test_non_latin_scripts_are_present(docs):
    counts = Counter()
    for doc in docs:
        if doc["source"] in ("fortunes", "debian-handbook"):
            for ch in doc["text"]:
                for script, (lo, hi) in SCRIPTS.items():
                    if lo <= ord(ch) <= hi:
                        counts[script] += 1
    for script in SCRIPTS:
        assert counts[script] > 50_000, (script, counts)


def test_no_gutenberg_boilerplate_and_no_duplicates(docs):
    assert not [d["title"] for d in docs if BOILERPLATE.search(d["text"])]
    assert len({d["text"] for d in docs}) == len(docs)


def test_god_occurs_for_the_essays_feature(docs):
    god = sum(len(re.findall(r"\bGod\b", d["text"])) for d in docs)
    bible_god = sum(len(re.findall(r"\bGod\b", d["text"])) for d in docs if d["source"] == "kjv-bible")
    assert bible_god > 4000  # 4,116 in this KJV text
    assert god > bible_god


def test_document_sources_know_each_part_and_language(docs):
    from monosemantic.corpus.sources import DocumentSources, iter_labelled_documents

    sources = DocumentSources.from_documents(iter_labelled_documents())
    assert len(sources.source_D) == len(docs)
    assert [sources.sources[s] for s in sources.source_D[:50]] == [d["source"] for d in docs[:50]]
    language = {d["title"]: sources.languages[sources.language_D[i]] for i, d in enumerate(docs)}
    assert language["The Bible (KJV): 2 John"] == "en"
    assert {"ru", "zh", "ja", "ar", "fa", "de"} <= set(sources.languages)
    handbook_zh = next(t for t in language if t.startswith("Debian Handbook [zh-CN]"))
    assert language[handbook_zh] == "zh"
