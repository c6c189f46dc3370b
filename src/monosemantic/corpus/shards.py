"""Token shards: the tokenized corpus as memory-mapped ``uint16``/``uint32`` arrays on disk.

Layout of a tokens directory::

    index.json                  vocab_size, eos_id, dtype, and per split the list of shards
    {split}_{i:03d}.npy         1-D token ids: each document is ``<eos> t_1 … t_n``, concatenated
    {split}_{i:03d}.docs.npy    int64 [n_docs, 2]: (start offset in the shard, corpus document index)

Documents go to ``val`` when a hash of their text falls below ``val_fraction`` — a split that does
not depend on document order or on how many documents there are. Nothing needs the whole corpus
in RAM: documents are encoded in batches and shards are flushed every ``shard_tokens`` tokens.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer

from monosemantic.atomic import atomic_path
from monosemantic.corpus.tokenizer import eos_id
from monosemantic.errors import UserError
from monosemantic.progress import progress

SPLITS = ("train", "val")


def is_val_document(text: str, val_fraction: float) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def write_token_shards(
    docs: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: Path,
    val_fraction: float,
    eos: int | None = None,
    shard_tokens: int = 1 << 24,
    encode_batch: int = 512,
) -> dict:
    """Tokenize ``docs`` into train/val shards under ``out_dir`` (atomically); return counts.

    ``eos`` separates documents; by default the tokenizer's ``<|endoftext|>``.
    """
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    eos = eos_id(tokenizer) if eos is None else eos
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        writers = {split: _ShardWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
        batch: list[str] = []
        n_docs = 0

        def flush_batch() -> None:
            nonlocal n_docs
            for text, enc in zip(batch, tokenizer.encode_batch(batch, add_special_tokens=False)):
                split = "val" if is_val_document(text, val_fraction) else "train"
                writers[split].add([eos, *enc.ids], n_docs)
                n_docs += 1
            batch.clear()

        with progress("tokenize", None, unit="docs") as advance:
            for doc in docs:
                batch.append(doc)
                if len(batch) == encode_batch:
                    flush_batch()
                    advance(encode_batch)
            n_last = len(batch)
            flush_batch()
            advance(n_last)
        index = {
            "vocab_size": vocab_size,
            "eos_id": eos,
            "dtype": np.dtype(dtype).name,
            "n_docs": n_docs,
            "splits": {s: w.close() for s, w in writers.items()},
        }
        for split in SPLITS:
            if not index["splits"][split]:
                raise UserError(
                    f"corpus too small: the {split} split got no documents "
                    f"({n_docs} documents, val_fraction={val_fraction})"
                )
        (tmp / "index.json").write_text(json.dumps(index, indent=2))
    return {
        "n_docs": n_docs,
        "vocab_size": vocab_size,
        **{f"{s}_tokens": sum(sh["n_tokens"] for sh in index["splits"][s]) for s in SPLITS},
        **{f"{s}_docs": sum(sh["n_docs"] for sh in index["splits"][s]) for s in SPLITS},
    }


class _ShardWriter:
    """Accumulates one split's documents and writes a shard every ``shard_tokens`` tokens."""

    def __init__(self, out_dir: Path, split: str, dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.tokens: list[list[int]] = []
        self.doc_rows: list[tuple[int, int]] = []
        self.size = 0
        self.shards: list[dict] = []

    def add(self, ids: list[int], doc_index: int) -> None:
        self.doc_rows.append((self.size, doc_index))
        self.tokens.append(ids)
        self.size += len(ids)
        if self.size >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self.tokens:
            return
        name = f"{self.split}_{len(self.shards):03d}"
        tokens_T = np.concatenate([np.asarray(ids, dtype=self.dtype) for ids in self.tokens])
        np.save(self.out_dir / f"{name}.npy", tokens_T)
        np.save(self.out_dir / f"{name}.docs.npy", np.asarray(self.doc_rows, dtype=np.int64))
        self.shards.append({"name": name, "n_tokens": self.size, "n_docs": len(self.doc_rows)})
        self.tokens, self.doc_rows, self.size = [], [], 0

    def close(self) -> list[dict]:
        self._flush()
        return self.shards


class TokenShards:
    """Read access to one split of a tokens directory (memory-mapped, nothing loaded up front)."""

    def __init__(self, tokens_dir: Path, split: str):
        index_path = Path(tokens_dir) / "index.json"
        if not index_path.is_file():
            raise UserError(f"token shards {tokens_dir}: no index.json (run the corpus stage first)")
        index = json.loads(index_path.read_text())
        if split not in index["splits"]:
            raise UserError(f"token shards {tokens_dir}: no split '{split}'")
        self.dir = Path(tokens_dir)
        self.split = split
        self.vocab_size: int = index["vocab_size"]
        self.eos_id: int = index["eos_id"]
        self.shard_info: list[dict] = index["splits"][split]
        self.tokens = [self._load(s) for s in self.shard_info]
        self._docs: dict[int, np.ndarray] = {}
        self.n_tokens = sum(len(t) for t in self.tokens)

    def _load(self, shard: dict) -> np.ndarray:
        path = self.dir / f"{shard['name']}.npy"
        try:
            tokens_T = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise UserError(f"token shard {path}: unreadable ({err})") from None
        if len(tokens_T) != shard["n_tokens"]:
            raise UserError(
                f"token shard {path}: has {len(tokens_T)} tokens, index says {shard['n_tokens']} (truncated?)"
            )
        return tokens_T

    def random_windows(self, batch_size: int, ctx: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` windows of ``ctx`` tokens at uniformly random offsets → int64 [B, T]."""
        sizes = np.array([max(len(t) - ctx, 0) for t in self.tokens], dtype=np.float64)
        if sizes.sum() == 0:
            raise UserError(
                f"{self.split} split has fewer than {ctx + 1} tokens per shard; "
                f"use a larger corpus or a shorter context"
            )
        shard_B = rng.choice(len(self.tokens), size=batch_size, p=sizes / sizes.sum())
        windows = np.empty((batch_size, ctx), dtype=np.int64)
        for b, s in enumerate(shard_B):
            start = rng.integers(0, sizes[s] + 1)
            windows[b] = self.tokens[s][start : start + ctx]
        return windows

    def sequential_windows(self, ctx: int, max_windows: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Non-overlapping windows in order: yields (shard index, start offset, tokens [T])."""
        n = 0
        for s, tokens_T in enumerate(self.tokens):
            for start in range(0, len(tokens_T) - ctx + 1, ctx):
                if max_windows is not None and n >= max_windows:
                    return
                yield s, start, np.asarray(tokens_T[start : start + ctx], dtype=np.int64)
                n += 1

    def n_windows(self, ctx: int) -> int:
        return sum(len(t) // ctx for t in self.tokens)

    def document_of(self, shard: int, offsets_N: np.ndarray) -> np.ndarray:
        """Corpus document index of each token offset in ``shard``."""
        if shard not in self._docs:
            self._docs[shard] = np.load(self.dir / f"{self.shard_info[shard]['name']}.docs.npy")
        docs = self._docs[shard]
        row_N = np.searchsorted(docs[:, 0], offsets_N, side="right") - 1
        return docs[row_N, 1]
