"""The feature store module owns the schema, the writes and the browser's queries: its row types
match the tables, and what goes in comes back as named records, ranked as the browser ranks."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from monosemantic.analysis import store as fs
from monosemantic.errors import UserError


def test_each_row_type_has_its_tables_columns_in_order(tmp_path):
    db = sqlite3.connect(":memory:")
    db.executescript(fs.SCHEMA)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {row.TABLE for row in fs.ROW_TYPES} == tables
    for row in fs.ROW_TYPES:
        assert row._fields == tuple(r[1] for r in db.execute(f"PRAGMA table_info({row.TABLE})")), row.TABLE


@pytest.fixture
def store(tmp_path):
    path = tmp_path / fs.FILENAME
    with fs.create_store(path) as db:
        db.add(fs.VocabRow(t, text, count) for t, text, count in [(0, " God", 10), (1, "the", 40), (2, "God", 5)])
        db.add([fs.DictionaryRow("f", "feature", 3, 4, "topk", 100, "offline-context")])
        db.add(
            fs.UnitRow(
                "f",
                u,
                "feature",
                fires,
                fires / 100,
                1.0,
                2.0,
                fs.blob(np.arange(3), "i8"),
                2.0,
                None,
                s,
                None,
                None,
                None,
                0,
            )
            for u, fires, s in [(0, 10, 0.5), (1, 40, None), (2, 5, 0.9)]
        )
        # unit 0 fires on every " God"; unit 1 on "the" and once on " God"; unit 2 on every "God"
        db.add(fs.UnitTokenRow("f", u, t, fires, 1.0) for u, t, fires in [(0, 0, 10), (1, 1, 39), (1, 0, 1), (2, 2, 5)])
        db.add(fs.LogitRow("f", 0, rank, rank + 3, float(rank)) for rank in (1, -2, 0, -1))
        db.add(
            fs.NeighbourRow("f", 0, "decoder", rank, other, value) for rank, other, value in [(1, 2, 0.1), (0, 1, 0.7)]
        )
        db.add([fs.UnitContextRow("f", 0, "source", 0, "bible", 0.9)])
    opened = fs.FeatureStore(path)
    yield opened
    opened.close()


def test_queries_return_named_records(store):
    logits = store.logits("f", 0)
    assert [(t.token, t.value) for t in logits["top"]] == [("<3>", 0.0), ("<4>", 1.0)]
    assert [t.value for t in logits["bottom"]] == [-1.0, -2.0]  # strongest suppression first
    assert [(n.unit, n.value) for n in store.neighbours("f", 0, "decoder")] == [(1, 0.7), (2, 0.1)]
    (top,) = store.top_tokens("f", 0)
    assert (top.token, top.fires, top.mean_act) == (" God", 10, 1.0)
    assert store.contexts("f", 0)["source"][0].share == 0.9
    assert store.labels("f", [1, 2], n=1) == {1: ["the"], 2: ["God"]}
    assert store.score_summary("f") == {"n_scored": 2, "score_mean": pytest.approx(0.7), "detection_mean": None}


def test_unit_list_ranks_by_token_f1_like_search(store):
    ids = store.tokens_matching(" God")
    rows, total = store.unit_list("f", "f1", True, 0, 10, None, ids, 0.0, 1.0, None)
    assert total == 2 and [r["unit"] for r in rows] == [0, 1]
    # unit 0: precision 1, recall 1; unit 1: precision 1/40, recall 1/10
    assert rows[0]["f1"] == pytest.approx(1.0) and rows[1]["f1"] == pytest.approx(2 * 0.025 * 0.1 / 0.125)
    assert [u for u, _ in store.token_index("f")[" God"]] == [0, 1]
    assert [h["unit"] for h in store.search_token(" God", "f")] == [0, 1]
    rows, total = store.unit_list("f", "simulation_score", True, 0, 1, None, None, 0.0, 1.0, None)
    assert total == 3 and rows[0]["unit"] == 2  # 0.9 first; a page of one
    with pytest.raises(UserError, match="sort=f1"):
        store.unit_list("f", "f1", True, 0, 10, None, None, 0.0, 1.0, None)


def test_rows_given_by_column_equal_rows_given_one_by_one(tmp_path):
    """``add_columns`` (numpy columns, one value for every row) writes what ``add`` of row objects writes."""
    value_N = np.array([0.5, 0.25, 1 / 3], dtype=np.float32)
    rows = [fs.NeighbourRow("f", u, "decoder", 0, u + 1, float(value_N[u])) for u in range(3)]
    stored = []
    for by_column in (False, True):
        with fs.create_store(tmp_path / f"{by_column}.sqlite") as db:
            if by_column:
                db.add_columns(
                    fs.NeighbourRow, dict="f", unit=np.arange(3), kind="decoder", rank=0, other=[1, 2, 3], value=value_N
                )
            else:
                db.add(rows)
        stored.append(sqlite3.connect(tmp_path / f"{by_column}.sqlite").execute("SELECT * FROM neighbours").fetchall())
    assert stored[0] == stored[1] == [tuple(r) for r in rows]
    with fs.create_store(tmp_path / "bad.sqlite") as db:
        with pytest.raises(ValueError, match="lengths"):
            db.add_columns(fs.NeighbourRow, dict="f", unit=[0, 1], kind="decoder", rank=0, other=[1], value=[0.5, 0.5])
        with pytest.raises(ValueError, match="columns"):
            db.add_columns(fs.NeighbourRow, dict="f", unit=[0], kind="decoder", rank=0, other=[1])
