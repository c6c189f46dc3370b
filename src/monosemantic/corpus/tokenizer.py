"""Byte-level BPE tokenizer trained on the corpus with Hugging Face ``tokenizers``.

Byte-level means every string is encodable (no unknown token) and decoding round-trips exactly.
Id 0 is ``<|endoftext|>``, which also separates documents in the token shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError

EOS = "<|endoftext|>"


def train_tokenizer(docs: Iterable[str], vocab_size: int) -> Tokenizer:
    """Learn a byte-level BPE vocabulary of ``vocab_size`` entries (256 bytes + merges + EOS)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    with atomic_path(path) as tmp:
        tokenizer.save(str(tmp))


def load_tokenizer(path: Path) -> Tokenizer:
    if not Path(path).is_file():
        raise UserError(f"tokenizer {path}: file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:
        if type(err) is not Exception:  # tokenizers reports a malformed file as a bare Exception; others are bugs
            raise
        raise UserError(f"tokenizer {path}: not a tokenizers JSON file ({err})") from None


def eos_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id(EOS)
    if token_id is None:
        raise UserError(f"tokenizer has no {EOS} token")
    return token_id
