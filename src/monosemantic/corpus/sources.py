"""Where documents come from: the bundled corpus, the user's own files, or a Hugging Face dataset.

Every source yields plain ``str`` documents in a fixed order, so the same inputs always give the
same token shards. Local inputs are checked up front: a missing path, an empty corpus or bytes
that are not UTF-8 are a ``UserError`` naming the file, never a traceback half-way through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from monosemantic.errors import UserError
from monosemantic.integrity import input_fingerprint

LOCAL_SUFFIXES = (".txt", ".md", ".jsonl")
# Long plain-text files are cut at paragraph breaks into documents of about this many characters,
# so one huge file does not become one document (documents are the unit of the train/val split).
DOC_CHARS = 8_000


def iter_documents(corpus: str | None = None, dataset: str | None = None,
                   dataset_split: str = "train", text_field: str = "text",
                   max_docs: int | None = None) -> Iterator[str]:
    """Documents from ``dataset`` (HF hub), else ``corpus`` (a local path), else the bundled mix."""
    if dataset is not None:
        docs = _iter_hf_dataset(dataset, dataset_split, text_field)
    elif corpus is not None:
        docs = _iter_local(Path(corpus), text_field)
    else:
        from monosemantic.corpus.bundled import iter_bundled_documents

        docs = (d["text"] for d in iter_bundled_documents())
    n = 0
    for doc in docs:
        if max_docs is not None and n >= max_docs:
            return
        if doc.strip():
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
    return {file.relative_to(path).as_posix() if path.is_dir() else file.name: input_fingerprint(file)
            for file in _local_files(path)}


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"--corpus {path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise UserError(f"--corpus {path}: directory has no {'/'.join(LOCAL_SUFFIXES)} files")
        return files
    return [path]


def _iter_local(path: Path, text_field: str) -> Iterator[str]:
    for file in _local_files(path):
        yield from _iter_file(file, text_field)


def _read_utf8(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"--corpus {file}: not UTF-8 text (bad byte at offset {err.start})") from None


def _iter_file(file: Path, text_field: str) -> Iterator[str]:
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
                raise UserError(f"--corpus {file}:{line_no}: expected an object with a string "
                                f"'{text_field}' field")
            yield record[text_field]
    else:
        yield from split_paragraphs(text, DOC_CHARS)


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


def _iter_hf_dataset(name: str, split: str, text_field: str) -> Iterator[str]:
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
            raise UserError(f"--dataset {name}: records have no string field '{text_field}' "
                            f"(fields: {', '.join(record)})")
        yield text
