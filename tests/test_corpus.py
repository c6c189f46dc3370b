import json

import numpy as np
import pytest
from conftest import make_corpus_text

from monosemantic.corpus.shards import TokenShards, is_val_document, write_token_shards
from monosemantic.corpus.sources import DocumentSources, iter_documents, iter_labelled_documents, split_paragraphs
from monosemantic.corpus.tokenizer import EOS, load_tokenizer, save_tokenizer, train_tokenizer
from monosemantic.errors import UserError
from monosemantic.progress import set_quiet

set_quiet(True)


def test_local_sources_txt_jsonl_and_directory(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond para")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "json doc"}) + "\n\n" + json.dumps({"text": "another"}) + "\n"
    )
    (tmp_path / "ignored.bin").write_bytes(b"\xff\xfe")
    assert list(iter_documents(str(tmp_path))) == ["first doc\n\nsecond para", "json doc", "another"]
    assert list(iter_documents(str(tmp_path / "b.jsonl"), max_docs=1)) == ["json doc"]


def test_split_paragraphs_bounds_document_size():
    text = "\n\n".join(f"paragraph {i} " + "x" * 90 for i in range(100))
    pieces = list(split_paragraphs(text, 1000))
    assert "\n\n".join(pieces) == text
    assert all(len(p) <= 1000 for p in pieces) and len(pieces) >= 10


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "no non-empty documents"),
        (b"caf\xe9 latin-1", "not UTF-8"),
    ],
)
def test_bad_local_corpus_is_a_user_error(tmp_path, content, message):
    path = tmp_path / "c.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        list(iter_documents(str(path)))


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(UserError, match=r"c.jsonl:2"):
        list(iter_documents(str(path)))


def test_tokenizer_round_trip_and_determinism(tmp_path):
    docs = make_corpus_text().split("\n\n\n")
    tok = train_tokenizer(iter(docs), 400)
    tok2 = train_tokenizer(iter(docs), 400)
    assert tok.to_str() == tok2.to_str()
    assert 257 < tok.get_vocab_size() <= 400 and tok.token_to_id(EOS) == 0  # few merges exist here
    text = "God blesses Rome. Слово и دنيا 世界 — unseen: ☃ Zürich\n\tcode()"
    assert tok.decode(tok.encode(text).ids) == text
    save_tokenizer(tok, tmp_path / "t.json")
    assert load_tokenizer(tmp_path / "t.json").encode(text).ids == tok.encode(text).ids
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_token_shards_round_trip(tmp_path):
    docs = make_corpus_text(n_docs=80).split("\n\n\n")
    tok = train_tokenizer(iter(docs), 400)
    figures = write_token_shards(iter(docs), tok, tmp_path / "tokens", val_fraction=0.2, shard_tokens=2000)
    n_val = sum(is_val_document(d, 0.2) for d in docs)
    assert figures["val_docs"] == n_val and figures["train_docs"] == len(docs) - n_val
    train = TokenShards(tmp_path / "tokens", "train")
    assert len(train.tokens) > 1  # small shard size forced several shards
    # Decoding each shard's documents gives back the train documents, in order.
    train_docs = [d for d in docs if not is_val_document(d, 0.2)]
    decoded = []
    for s, tokens_T in enumerate(train.tokens):
        starts = np.load(tmp_path / "tokens" / f"{train.shard_info[s]['name']}.docs.npy")[:, 0]
        for a, b in zip(starts, [*starts[1:], len(tokens_T)]):
            assert tokens_T[a] == train.eos_id
            decoded.append(tok.decode(tokens_T[a + 1 : b].tolist()))
    assert decoded == train_docs
    assert train.n_tokens == figures["train_tokens"] == sum(len(tok.encode(d).ids) + 1 for d in train_docs)
    # Random windows are reproducible from the seed; document_of maps offsets back to documents.
    w1 = train.random_windows(4, 16, np.random.default_rng(3))
    w2 = train.random_windows(4, 16, np.random.default_rng(3))
    assert w1.shape == (4, 16) and (w1 == w2).all()
    doc_idx = train.document_of(0, np.array([0, 1]))
    assert doc_idx[0] == doc_idx[1] == [i for i, d in enumerate(docs) if d == train_docs[0]][0]


def test_truncated_token_shard_is_detected(tmp_path):
    docs = make_corpus_text(n_docs=30).split("\n\n\n")
    tok = train_tokenizer(iter(docs), 400)
    write_token_shards(iter(docs), tok, tmp_path / "tokens", val_fraction=0.2)
    shard = tmp_path / "tokens" / "train_000.npy"
    arr = np.load(shard)
    np.save(shard, arr[: len(arr) // 2])
    with pytest.raises(UserError, match="truncated"):
        TokenShards(tmp_path / "tokens", "train")


def test_document_sources_name_each_document_in_corpus_order(tmp_path):
    (tmp_path / "bible.txt").write_text("In the beginning.\n\nAnd God said.")
    sub = tmp_path / "code"
    sub.mkdir()
    (sub / "notes.jsonl").write_text(
        '{"text": "x = 1", "genre": "python"}\n{"text": "  "}\n{"text": "y", "genre": "doc"}\n'
    )
    docs = list(iter_labelled_documents(str(tmp_path)))
    assert [d.text for d in docs] == list(iter_documents(str(tmp_path)))  # same documents, same order
    assert [d.source for d in docs] == ["bible.txt", "code/notes.jsonl", "code/notes.jsonl"]
    with pytest.raises(UserError, match=r"notes.jsonl:2: expected a string 'genre' field \(analysis.source_field\)"):
        DocumentSources.from_documents(iter_labelled_documents(str(sub), source_field="genre"))
    (sub / "notes.jsonl").write_text(
        '{"text": "x = 1", "genre": "python"}\n{"text": "y", "genre": "doc"}\n{"text": "z", "genre": "python"}\n'
    )
    by_field = DocumentSources.from_documents(iter_labelled_documents(str(sub), source_field="genre"))
    assert by_field.sources == ["python", "doc"] and by_field.source_D.tolist() == [0, 1, 0]
    assert by_field.languages == ["?"] and by_field.language_D.tolist() == [0, 0, 0]
    capped = DocumentSources.from_documents(iter_labelled_documents(str(tmp_path), max_docs=1))
    assert capped.sources == ["bible.txt"] and len(capped.source_D) == 1


def test_parquet_corpus_reads_its_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"document {i} about the light." for i in range(25)]
    table = pa.table({"text": texts, "origin": ["bible" if i % 2 else "python" for i in range(25)]})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=10)  # three row groups
    assert list(iter_documents(str(tmp_path / "docs.parquet"))) == texts
    labelled = list(iter_labelled_documents(str(tmp_path), source_field="origin"))
    assert [d.source for d in labelled[:2]] == ["python", "bible"]
    with pytest.raises(UserError, match="no column 'body' \\(columns: text, origin\\)"):
        list(iter_documents(str(tmp_path / "docs.parquet"), text_field="body"))
    (tmp_path / "docs.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        list(iter_documents(str(tmp_path / "docs.parquet")))
