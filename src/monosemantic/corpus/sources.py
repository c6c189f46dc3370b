"""Where documents come from: the bundled corpus, the user's own files, or a Hugging Face dataset.

Every source yields plain ``str`` documents in a fixed order, so the same inputs always give the
same token shards; ``iter_labelled_documents`` yields the same documents with where each came from
(``DocumentSources.from_documents`` turns that into a per-document table the analysis reads). Local inputs are
checked up front: a missing path, an empty corpus or bytes that are not UTF-8 are a ``UserError``
naming the file, never a traceback half-way through.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from monosemantic.errors import UserError
from monosemantic.integrity import input_fingerprint

LOCAL_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
# Long plain-text files are cut at paragraph breaks into documents of about this many characters,
# so one huge file does not become one document (documents are the unit of the train/val split).
DOC_CHARS = 8_000


UNKNOWN_LANGUAGE = "?"
# The bundled corpus tags translated documents' titles: "fortunes [ru]: …", "Debian Handbook [zh-CN]: …"
LANGUAGE_TAG = re.compile(r"\[([a-z]{2})(?:-[A-Z]{2})?\]")


@dataclass(frozen=True)
class Document:
    """A document's text, its source (the bundled corpus's part, a file name, or a jsonl field's
    value) and its language (a two-letter code, or ``UNKNOWN_LANGUAGE``)."""

    text: str
    source: str
    language: str = UNKNOWN_LANGUAGE


def iter_documents(
    corpus: str | None = None,
    dataset: str | None = None,
    dataset_split: str = "train",
    text_field: str = "text",
    max_docs: int | None = None,
) -> Iterator[str]:
    """Documents from ``dataset`` (HF hub), else ``corpus`` (a local path), else the bundled mix."""
    for doc in iter_labelled_documents(corpus, dataset, dataset_split, text_field, max_docs):
        yield doc.text


def iter_labelled_documents(
    corpus: str | None = None,
    dataset: str | None = None,
    dataset_split: str = "train",
    text_field: str = "text",
    max_docs: int | None = None,
    source_field: str | None = None,
) -> Iterator[Document]:
    """The documents of ``iter_documents``, in the same order, each with its source and language.

    The source is the bundled corpus's part; for local files the value of the jsonl field
    ``source_field`` when given, else the file's path relative to ``corpus``; for a dataset the
    field ``source_field`` when given, else the dataset's name."""
    if dataset is not None:
        docs = _iter_hf_dataset(dataset, dataset_split, text_field, source_field)
    elif corpus is not None:
        docs = _iter_local(Path(corpus), text_field, source_field)
    else:
        from monosemantic.corpus.bundled import iter_bundled_documents

        docs = (Document(d["text"], d["source"], _bundled_language(d["title"])) for d in iter_bundled_documents())
    n = 0
    for doc in docs:
        if max_docs is not None and n >= max_docs:
            return
        if doc.text.strip():
            n += 1
            yield doc
    if n == 0:
        raise UserError(f"corpus {dataset or corpus or 'bundled'}: contains no non-empty documents")


def corpus_fingerprint(corpus: str | None = None, dataset: str | None = None) -> dict[str, str] | None:
    """What the corpus's files hold (``integrity.input_fingerprint`` of each, by name), so that a
    corpus edited in place makes the corpus stage stale; ``None`` for a Hugging Face dataset."""
    if dataset is not None:
        return None
    if corpus is None:
        from monosemantic.corpus.bundled import BUNDLED_CORPUS_PATH

        return {"bundled": input_fingerprint(BUNDLED_CORPUS_PATH)}
    path = Path(corpus)
    return {
        file.relative_to(path).as_posix() if path.is_dir() else file.name: input_fingerprint(file)
        for file in _local_files(path)
    }


def _bundled_language(title: str) -> str:
    """The bundled corpus is English except the documents whose title carries a language tag."""
    tag = LANGUAGE_TAG.search(title)
    return tag.group(1) if tag else "en"


@dataclass
class DocumentSources:
    """Per corpus document (its index in corpus order): its source and language, as indices into
    ``sources`` and ``languages``."""

    sources: list[str]
    languages: list[str]
    source_D: np.ndarray  # int32 [n_docs]
    language_D: np.ndarray  # int32 [n_docs]

    @classmethod
    def from_documents(cls, docs: Iterator[Document]) -> DocumentSources:
        sources: dict[str, int] = {}
        languages: dict[str, int] = {}
        source_D, language_D = [], []
        for doc in docs:
            source_D.append(sources.setdefault(doc.source, len(sources)))
            language_D.append(languages.setdefault(doc.language, len(languages)))
        return cls(
            list(sources), list(languages), np.asarray(source_D, dtype=np.int32), np.asarray(language_D, dtype=np.int32)
        )

    @classmethod
    def single(cls, name: str, n_docs: int) -> DocumentSources:
        """Every document from one source, of unknown language."""
        zeros = np.zeros(n_docs, dtype=np.int32)
        return cls([name], [UNKNOWN_LANGUAGE], zeros, zeros.copy())


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"--corpus {path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise UserError(f"--corpus {path}: directory has no {'/'.join(LOCAL_SUFFIXES)} files")
        return files
    return [path]


def _iter_local(path: Path, text_field: str, source_field: str | None) -> Iterator[Document]:
    files = _local_files(path)
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        yield from _iter_file(file, name, text_field, source_field)


def _read_utf8(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"--corpus {file}: not UTF-8 text (bad byte at offset {err.start})") from None


def _iter_parquet(file: Path, name: str, text_field: str, source_field: str | None) -> Iterator[Document]:
    """A Parquet file's rows, read a row group at a time (its ``text_field`` column is the text)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"--corpus {file}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.ParquetFile(file)
        columns = [text_field] + ([source_field] if source_field else [])
        missing = [c for c in columns if c not in table.schema_arrow.names]
        if missing:
            raise UserError(
                f"--corpus {file}: no column '{missing[0]}' (columns: {', '.join(table.schema_arrow.names)})"
            )
        for batch in table.iter_batches(columns=columns):
            rows = batch.to_pydict()
            for i, text in enumerate(rows[text_field]):
                source = rows[source_field][i] if source_field else name
                if not isinstance(text, str) or not isinstance(source, str):
                    raise UserError(f"--corpus {file}: column '{text_field}' (or the source column) holds a non-string")
                yield Document(text, source)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid (a corrupt file) is a ValueError
        raise UserError(f"--corpus {file}: not a readable Parquet file ({err})") from None


def _iter_file(file: Path, name: str, text_field: str, source_field: str | None) -> Iterator[Document]:
    if file.suffix == ".parquet":
        yield from _iter_parquet(file, name, text_field, source_field)
        return
    text = _read_utf8(file)
    if file.suffix == ".jsonl":
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"--corpus {file}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UserError(f"--corpus {file}:{line_no}: expected an object with a string '{text_field}' field")
            source = name
            if source_field is not None:
                if not isinstance(record.get(source_field), str):
                    raise UserError(
                        f"--corpus {file}:{line_no}: expected a string '{source_field}' field (analysis.source_field)"
                    )
                source = record[source_field]
            yield Document(record[text_field], source)
    else:
        for piece in split_paragraphs(text, DOC_CHARS):
            yield Document(piece, name)


def split_paragraphs(text: str, max_chars: int) -> Iterator[str]:
    """Cut ``text`` at blank lines into pieces of at most about ``max_chars`` characters."""
    piece: list[str] = []
    size = 0
    for para in text.replace("\r\n", "\n").split("\n\n"):
        if piece and size + len(para) > max_chars:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(para)
        size += len(para) + 2
    if piece:
        yield "\n\n".join(piece)


def _iter_hf_dataset(name: str, split: str, text_field: str, source_field: str | None) -> Iterator[Document]:
    """Stream a Hugging Face dataset (needs the network; never used by default)."""
    try:
        import datasets
    except ImportError:
        raise UserError("--dataset needs the `datasets` package: pip install datasets") from None
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except (OSError, ValueError) as err:  # hub/network errors are OSError; a bad name or split, ValueError
        raise UserError(f"--dataset {name}: could not open it ({type(err).__name__}: {err})") from None
    for record in stream:
        text = record.get(text_field)
        if not isinstance(text, str):
            raise UserError(
                f"--dataset {name}: records have no string field '{text_field}' (fields: {', '.join(record)})"
            )
        source = record.get(source_field) if source_field is not None else name
        if not isinstance(source, str):
            raise UserError(f"--dataset {name}: records have no string field '{source_field}' (analysis.source_field)")
        yield Document(text, source)
