"""Corpus stage: documents (bundled, local or Hugging Face), BPE tokenizer, token shards."""
