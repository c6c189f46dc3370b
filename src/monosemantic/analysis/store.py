"""The feature store: one SQLite file in the run directory (``RUN/features.sqlite``) holding every
analysed unit — neurons and the features of each SAE alike — for the browser and the CLI.

This module owns it: the schema, every write (``StoreWriter.add`` of the row types below, one per
table, fields in column order) and every query the CLI and the browser run (``FeatureStore``), which
return dicts and named records, never tuples to be read by position.

Schema (``unit_kind`` is "neuron" or "feature"; neurons are the dictionary named ``neurons``)::

    meta(key, value)                         JSON values: format, analysis config, n_tokens, …
    dictionaries(name, unit_kind, n_units, d_in, variant, n_tokens, scored_backend)
    vocab(token, text, count)                decoded token strings; count in the analysed tokens
    units(dict, unit, unit_kind, fire_count, density, mean_act, max_act, hist, hist_max,
          explanation, simulation_score, detection_score, fuzzing_score, score_backend, in_score_sample)
              (the explanation and scores of the run's primary backend: the LLM if used, else offline-context)
    explanations(dict, unit, backend, explanation, simulation_score, detection_score, fuzzing_score)
              every backend's explanation and scores, so backends are compared, never mixed
    unit_contexts(dict, unit, kind, rank, label, share)
              kind: source | language | preceding (previous token): the share of the unit's activation mass
    contexts(row, doc, center, tokens)       a context window of the activation store's row `row`
    examples(dict, unit, kind, bucket, rank, row, activation, acts, split)
              kind: top | interval (bucket = interval index) | random;  split: explain | score
    logits(dict, unit, rank, token, value)   rank 0,1,… promoted; −1,−2,… suppressed
    neighbours(dict, unit, kind, rank, other, value)      kind: decoder (cosine) | cofiring (Jaccard)
    constituents(dict, unit, rank, neuron, weight)        feature → its largest neurons
    neuron_users(dict, neuron, rank, unit, weight)        neuron → features using it most
    unit_tokens(dict, unit, token, fires, mean_act)       tokens a unit fires on (its top ones, and
                                                          for every token the units firing most on it)

Blobs are little-endian arrays: ``hist`` int64 [H] over (0, hist_max]; ``tokens`` int32 [L];
``acts`` float32 [L] (the unit's activation on each context token). The file is written under a
temporary name and renamed into place; readers open it read-only.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np

from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError

FORMAT = "monosemantic.feature-store/2"
FILENAME = "features.sqlite"
NEURONS = "neurons"  # the dictionary name under which the store keeps the neuron basis
UNIT_LIST_COLUMNS = (
    "unit",
    "density",
    "fire_count",
    "max_act",
    "mean_act",
    "simulation_score",
    "detection_score",
    "f1",
)

# How well a unit picks out a token, over the columns of unit_tokens t, units u and vocab v:
# precision = the unit's activation mass on the token / its whole activation mass (weighting by
# activation, so the faint firings a TopK dictionary spreads everywhere count for little), and
# recall = the token's occurrences the unit fires on / all its occurrences.
TOKEN_PRECISION_SQL = "(t.fires * t.mean_act / max(u.fire_count * u.mean_act, 1e-12))"
TOKEN_RECALL_SQL = "(1.0 * t.fires / max(v.count, 1))"
TOKEN_F1_SQL = (
    f"(2.0 * {TOKEN_PRECISION_SQL} * {TOKEN_RECALL_SQL} / max({TOKEN_PRECISION_SQL} + {TOKEN_RECALL_SQL}, 1e-12))"
)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE dictionaries (name TEXT PRIMARY KEY, unit_kind TEXT NOT NULL, n_units INTEGER NOT NULL,
    d_in INTEGER NOT NULL, variant TEXT, n_tokens INTEGER NOT NULL, scored_backend TEXT);
CREATE TABLE vocab (token INTEGER PRIMARY KEY, text TEXT NOT NULL, count INTEGER NOT NULL);
CREATE TABLE units (dict TEXT NOT NULL, unit INTEGER NOT NULL, unit_kind TEXT NOT NULL,
    fire_count INTEGER NOT NULL, density REAL NOT NULL, mean_act REAL NOT NULL, max_act REAL NOT NULL,
    hist BLOB NOT NULL, hist_max REAL NOT NULL, explanation TEXT, simulation_score REAL,
    detection_score REAL, fuzzing_score REAL, score_backend TEXT, in_score_sample INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dict, unit));
CREATE TABLE explanations (dict TEXT NOT NULL, unit INTEGER NOT NULL, backend TEXT NOT NULL, explanation TEXT,
    simulation_score REAL, detection_score REAL, fuzzing_score REAL, PRIMARY KEY (dict, unit, backend));
CREATE TABLE unit_contexts (dict TEXT NOT NULL, unit INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL,
    label TEXT NOT NULL, share REAL NOT NULL, PRIMARY KEY (dict, unit, kind, rank));
CREATE TABLE contexts (row INTEGER PRIMARY KEY, doc INTEGER NOT NULL, center INTEGER NOT NULL,
    tokens BLOB NOT NULL);
CREATE TABLE examples (dict TEXT NOT NULL, unit INTEGER NOT NULL, kind TEXT NOT NULL,
    bucket INTEGER NOT NULL, rank INTEGER NOT NULL, row INTEGER NOT NULL, activation REAL NOT NULL,
    acts BLOB NOT NULL, split TEXT NOT NULL);
CREATE TABLE logits (dict TEXT NOT NULL, unit INTEGER NOT NULL, rank INTEGER NOT NULL,
    token INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (dict, unit, rank));
CREATE TABLE neighbours (dict TEXT NOT NULL, unit INTEGER NOT NULL, kind TEXT NOT NULL,
    rank INTEGER NOT NULL, other INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (dict, unit, kind, rank));
CREATE TABLE constituents (dict TEXT NOT NULL, unit INTEGER NOT NULL, rank INTEGER NOT NULL,
    neuron INTEGER NOT NULL, weight REAL NOT NULL, PRIMARY KEY (dict, unit, rank));
CREATE TABLE neuron_users (dict TEXT NOT NULL, neuron INTEGER NOT NULL, rank INTEGER NOT NULL,
    unit INTEGER NOT NULL, weight REAL NOT NULL, PRIMARY KEY (dict, neuron, rank));
CREATE TABLE unit_tokens (dict TEXT NOT NULL, unit INTEGER NOT NULL, token INTEGER NOT NULL,
    fires INTEGER NOT NULL, mean_act REAL NOT NULL, PRIMARY KEY (dict, unit, token));
CREATE INDEX examples_unit ON examples (dict, unit, kind);
CREATE INDEX unit_tokens_token ON unit_tokens (dict, token);
"""


def blob(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def unblob(data: bytes, dtype: str) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))


class MetaRow(NamedTuple):
    key: str
    value: str  # JSON
    TABLE = "meta"


class DictionaryRow(NamedTuple):
    name: str
    unit_kind: str
    n_units: int
    d_in: int
    variant: str | None
    n_tokens: int
    scored_backend: str | None
    TABLE = "dictionaries"


class VocabRow(NamedTuple):
    token: int
    text: str
    count: int
    TABLE = "vocab"


class UnitRow(NamedTuple):
    dict: str
    unit: int
    unit_kind: str
    fire_count: int
    density: float
    mean_act: float
    max_act: float
    hist: bytes
    hist_max: float
    explanation: str | None
    simulation_score: float | None
    detection_score: float | None
    fuzzing_score: float | None
    score_backend: str | None
    in_score_sample: int
    TABLE = "units"


class ExplanationRow(NamedTuple):
    dict: str
    unit: int
    backend: str
    explanation: str | None
    simulation_score: float | None
    detection_score: float | None
    fuzzing_score: float | None
    TABLE = "explanations"


class UnitContextRow(NamedTuple):
    dict: str
    unit: int
    kind: str
    rank: int
    label: str
    share: float
    TABLE = "unit_contexts"


class ContextRow(NamedTuple):
    row: int
    doc: int
    center: int
    tokens: bytes
    TABLE = "contexts"


class ExampleRow(NamedTuple):
    dict: str
    unit: int
    kind: str
    bucket: int
    rank: int
    row: int
    activation: float
    acts: bytes
    split: str
    TABLE = "examples"


class LogitRow(NamedTuple):
    dict: str
    unit: int
    rank: int
    token: int
    value: float
    TABLE = "logits"


class NeighbourRow(NamedTuple):
    dict: str
    unit: int
    kind: str
    rank: int
    other: int
    value: float
    TABLE = "neighbours"


class ConstituentRow(NamedTuple):
    dict: str
    unit: int
    rank: int
    neuron: int
    weight: float
    TABLE = "constituents"


class NeuronUserRow(NamedTuple):
    dict: str
    neuron: int
    rank: int
    unit: int
    weight: float
    TABLE = "neuron_users"


class UnitTokenRow(NamedTuple):
    dict: str
    unit: int
    token: int
    fires: int
    mean_act: float
    TABLE = "unit_tokens"


ROW_TYPES = (
    MetaRow,
    DictionaryRow,
    VocabRow,
    UnitRow,
    ExplanationRow,
    UnitContextRow,
    ContextRow,
    ExampleRow,
    LogitRow,
    NeighbourRow,
    ConstituentRow,
    NeuronUserRow,
    UnitTokenRow,
)


class StoreWriter:
    """The one writer of a feature store being built: rows go into their type's table."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def add(self, rows: Iterable[NamedTuple]) -> None:
        """Insert ``rows``, all of one row type (``UnitRow``, ``ExampleRow``, …)."""
        rows = list(rows)
        if rows:
            self._insert(type(rows[0]), rows)

    def add_columns(self, row_type: type, /, **columns: Any) -> None:
        """Insert rows of ``row_type`` given by column, no row object per row: every field named once, as
        a sequence (a 1-d numpy array becomes Python values) or as one value for every row."""
        if set(columns) != set(row_type._fields):
            raise ValueError(f"{row_type.__name__}: columns {sorted(columns)}, expected {list(row_type._fields)}")
        if any(isinstance(v, np.ndarray) and v.ndim != 1 for v in columns.values()):
            raise ValueError(f"{row_type.__name__}: array columns must be 1-d")
        sequences = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in columns.items()}
        lengths = {len(v) for v in sequences.values() if isinstance(v, (list, tuple))}
        if len(lengths) != 1:
            raise ValueError(f"{row_type.__name__}: columns of lengths {sorted(lengths)}, expected one length")
        n = lengths.pop()
        values = [v if isinstance(v, (list, tuple)) else repeat(v, n) for v in (sequences[f] for f in row_type._fields)]
        self._insert(row_type, zip(*values))

    def _insert(self, row_type: type, rows: Iterable[tuple]) -> None:
        self.db.executemany(f"INSERT INTO {row_type.TABLE} VALUES ({', '.join('?' * len(row_type._fields))})", rows)


@contextmanager
def create_store(path: Path) -> Iterator[StoreWriter]:
    """A fresh store at a temporary name, renamed to ``path`` when the block exits cleanly."""
    with atomic_path(path) as tmp:
        db = sqlite3.connect(tmp)
        try:
            # a file nobody reads until it is renamed into place: no journal, no syncs, one writer, big cache
            db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE; "
                "PRAGMA temp_store=MEMORY; PRAGMA cache_size=-262144;" + SCHEMA
            )
            writer = StoreWriter(db)
            writer.add([MetaRow("format", json.dumps(FORMAT))])
            yield writer
            db.commit()
        finally:
            db.close()


class TokenValue(NamedTuple):
    """A token and a value: a logit effect."""

    token: str
    value: float


class UnitValue(NamedTuple):
    """Another unit and a value: a neighbour (cosine, Jaccard), a constituent neuron or a feature using a neuron."""

    unit: int
    value: float


class TokenFires(NamedTuple):
    """A token a unit fires on: how often, and its mean activation there."""

    token: str
    fires: int
    mean_act: float


class Share(NamedTuple):
    """A share of a unit's activation mass: by source, language or previous token."""

    label: str
    share: float


class FeatureStore:
    """Read-only queries over a feature store (the CLI's ``search`` and the browser use these)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"feature store {self.path}: not found (run the analysis stage first)")
        try:
            # as_uri() percent-encodes '#', '?' and '%' in the path, which would otherwise end it early
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            found = json.loads(self.db.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0])
        except (sqlite3.DatabaseError, TypeError) as err:
            raise UserError(f"feature store {self.path}: not a feature store ({err})") from None
        if found != FORMAT:
            raise UserError(f"feature store {self.path}: format {found!r}, expected {FORMAT!r}")
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def dictionaries(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM dictionaries ORDER BY unit_kind DESC, n_units")]

    def dictionary(self, name: str | None) -> dict[str, Any]:
        """The named dictionary, or (``None``) the largest SAE (the neurons if there is none)."""
        dicts = self.dictionaries()
        if name is None:
            return max(dicts, key=lambda d: (d["unit_kind"] == "feature", d["n_units"]))
        for d in dicts:
            if d["name"] == name:
                return d
        raise UserError(f"--sae {name}: not in the feature store (have: {', '.join(d['name'] for d in dicts)})")

    @cached_property
    def vocab(self) -> dict[int, str]:
        """Token id → decoded text, read once (a page shows thousands of context tokens)."""
        return dict(self.db.execute("SELECT token, text FROM vocab").fetchall())

    def token_text(self, token: int) -> str:
        return self.vocab.get(token, f"<{token}>")

    def tokens_matching(self, text: str) -> list[int]:
        """Token ids whose decoded text equals ``text`` (exactly, else ignoring case and edge spaces)."""
        exact = [r[0] for r in self.db.execute("SELECT token FROM vocab WHERE text=?", (text,))]
        if exact:
            return exact
        return [
            r[0] for r in self.db.execute("SELECT token FROM vocab WHERE lower(trim(text))=lower(trim(?))", (text,))
        ]

    def unit(self, dict_name: str, unit: int) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM units WHERE dict=? AND unit=?", (dict_name, unit)).fetchone()
        if row is None:
            n = self.dictionary(dict_name)["n_units"]
            raise UserError(f"unit {unit}: not in {dict_name} (ids 0…{n - 1})")
        out = dict(row)
        out["hist"] = unblob(out["hist"], "i8").tolist()
        return out

    def examples(self, dict_name: str, unit: int, kind: str | None = None) -> list[dict[str, Any]]:
        """Examples with their context tokens, token texts and per-token activations."""
        sql = (
            "SELECT e.kind, e.bucket, e.rank, e.row, e.activation, e.acts, e.split, c.doc, c.center, c.tokens "
            "FROM examples e JOIN contexts c ON c.row = e.row WHERE e.dict=? AND e.unit=?"
            + (" AND e.kind=?" if kind else "")
            + " ORDER BY e.kind, e.bucket, e.rank"
        )
        out = []
        for r in self.db.execute(sql, (dict_name, unit, kind) if kind else (dict_name, unit)):
            tokens = unblob(r["tokens"], "i4")
            out.append(
                {
                    "kind": r["kind"],
                    "bucket": r["bucket"],
                    "rank": r["rank"],
                    "row": r["row"],
                    "doc": r["doc"],
                    "activation": r["activation"],
                    "split": r["split"],
                    "center": r["center"],
                    "tokens": tokens.tolist(),
                    "texts": [self.token_text(int(t)) for t in tokens],
                    "acts": unblob(r["acts"], "f4").tolist(),
                }
            )
        return out

    def logits(self, dict_name: str, unit: int) -> dict[str, list[TokenValue]]:
        """The tokens the unit's direction promotes (``top``) and suppresses (``bottom``) most, strongest first."""
        out: dict[str, list[TokenValue]] = {"top": [], "bottom": []}
        for r in self.db.execute(
            "SELECT rank, token, value FROM logits WHERE dict=? AND unit=? ORDER BY rank >= 0 DESC, abs(rank)",
            (dict_name, unit),
        ):
            out["top" if r["rank"] >= 0 else "bottom"].append(TokenValue(self.token_text(r["token"]), r["value"]))
        return out

    def neighbours(self, dict_name: str, unit: int, kind: str) -> list[UnitValue]:
        return self._unit_values(
            "SELECT other, value FROM neighbours WHERE dict=? AND unit=? AND kind=? ORDER BY rank",
            (dict_name, unit, kind),
        )

    def constituents(self, dict_name: str, unit: int) -> list[UnitValue]:
        return self._unit_values(
            "SELECT neuron, weight FROM constituents WHERE dict=? AND unit=? ORDER BY rank", (dict_name, unit)
        )

    def neuron_users(self, dict_name: str, neuron: int) -> list[UnitValue]:
        return self._unit_values(
            "SELECT unit, weight FROM neuron_users WHERE dict=? AND neuron=? ORDER BY rank", (dict_name, neuron)
        )

    def _unit_values(self, sql: str, args: tuple) -> list[UnitValue]:
        return [UnitValue(*r) for r in self.db.execute(sql, args)]

    def top_tokens(self, dict_name: str, unit: int, n: int = 5) -> list[TokenFires]:
        """The tokens the unit fires on most often."""
        return [
            TokenFires(self.token_text(r["token"]), r["fires"], r["mean_act"])
            for r in self.db.execute(
                "SELECT token, fires, mean_act FROM unit_tokens WHERE dict=? AND unit=?"
                " ORDER BY fires DESC, token LIMIT ?",
                (dict_name, unit, n),
            )
        ]

    def explanations(self, dict_name: str, unit: int) -> list[dict[str, Any]]:
        """Every backend's explanation and scores of one unit (the primary backend's first)."""
        order = {b: i for i, b in enumerate(self.meta().get("backends", []))}
        rows = [
            dict(r)
            for r in self.db.execute(
                "SELECT backend, explanation, simulation_score, detection_score, fuzzing_score FROM explanations "
                "WHERE dict=? AND unit=?",
                (dict_name, unit),
            )
        ]
        return sorted(rows, key=lambda r: order.get(r["backend"], len(order)))

    def contexts(self, dict_name: str, unit: int) -> dict[str, list[Share]]:
        """Where the unit's activation mass comes from: shares by source, language and previous token."""
        out: dict[str, list[Share]] = {"source": [], "language": [], "preceding": []}
        for r in self.db.execute(
            "SELECT kind, label, share FROM unit_contexts WHERE dict=? AND unit=? ORDER BY kind, rank",
            (dict_name, unit),
        ):
            out[r["kind"]].append(Share(r["label"], r["share"]))
        return out

    def feature_page(self, dict_name: str, unit: int) -> dict[str, Any]:
        """Everything the browser shows for one unit."""
        page = self.unit(dict_name, unit)
        page.update(
            examples=self.examples(dict_name, unit),
            logits=self.logits(dict_name, unit),
            explanations=self.explanations(dict_name, unit),
            contexts=self.contexts(dict_name, unit),
            decoder_neighbours=self.neighbours(dict_name, unit, "decoder"),
            cofiring_neighbours=self.neighbours(dict_name, unit, "cofiring"),
            top_tokens=self.top_tokens(dict_name, unit, 10),
        )
        if page["unit_kind"] == "feature":
            page["constituents"] = self.constituents(dict_name, unit)
        return page

    def search_token(self, token: str, dict_name: str | None = None, top: int = 10) -> list[dict[str, Any]]:
        """Units that fire on ``token``, best first by F1 of precision and recall, where
        precision = activation on the token / all activation, recall = fires on the token / token count."""
        d = self.dictionary(dict_name)
        ids = self.tokens_matching(token)
        if not ids:
            raise UserError(f"--token {token!r}: not a token of this run's vocabulary")
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT t.unit, t.token, {TOKEN_PRECISION_SQL} AS precision, {TOKEN_RECALL_SQL} AS recall, "
            f"{TOKEN_F1_SQL} AS f1, u.explanation, u.simulation_score, u.score_backend FROM unit_tokens t "
            f"JOIN units u ON u.dict=t.dict AND u.unit=t.unit JOIN vocab v ON v.token=t.token "
            f"WHERE t.dict=? AND t.token IN ({marks}) ORDER BY f1 DESC, t.unit LIMIT ?",
            (d["name"], *ids, top),
        ).fetchall()
        results = [{"dict": d["name"], **dict(r), "token": self.token_text(r["token"])} for r in rows]
        for result in results:
            result["top_tokens"] = self.top_tokens(d["name"], result["unit"])
        return results

    def search_text(self, text: str, dict_name: str | None = None, top: int = 10) -> list[dict[str, Any]]:
        """Units whose explanation contains ``text`` (case-insensitive), best-scored first."""
        d = self.dictionary(dict_name)
        rows = self.db.execute(
            "SELECT unit, explanation, simulation_score, score_backend FROM units WHERE dict=? AND "
            "instr(lower(explanation), lower(?)) > 0 ORDER BY simulation_score IS NULL, simulation_score DESC, "
            "unit LIMIT ?",
            (d["name"], text, top),
        ).fetchall()
        return [{"dict": d["name"], **dict(r), "top_tokens": self.top_tokens(d["name"], r["unit"])} for r in rows]

    def score_summary(self, dict_name: str) -> dict[str, Any]:
        """How many of the dictionary's units have a simulation score, and the mean scores."""
        row = self.db.execute(
            "SELECT count(simulation_score), avg(simulation_score), avg(detection_score) FROM units WHERE dict=?",
            (dict_name,),
        ).fetchone()
        return {"n_scored": row[0], "score_mean": row[1], "detection_mean": row[2]}

    def unit_list(
        self,
        dict_name: str,
        sort: str,
        descending: bool,
        offset: int,
        limit: int,
        text: str | None,
        token_ids: list[int] | None,
        min_density: float,
        max_density: float,
        min_score: float | None,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a dictionary's units (``sort`` is one of ``UNIT_LIST_COLUMNS``), and how many
        match in all. ``text`` keeps units whose explanation contains it; ``token_ids`` keeps units
        that fire on one of those tokens and adds ``f1``, their best F1 on them (as ``search_token``)."""
        if sort not in UNIT_LIST_COLUMNS or (sort == "f1" and token_ids is None):
            raise UserError(
                f"sort={sort}: choose from {', '.join(c for c in UNIT_LIST_COLUMNS if token_ids or c != 'f1')}"
            )
        columns = (
            "u.unit, u.fire_count, u.density, u.mean_act, u.max_act, u.explanation, u.simulation_score, "
            "u.detection_score, u.score_backend"
        )
        where, args = ["u.dict=?", "u.density>=?", "u.density<=?"], [dict_name, min_density, max_density]
        if text:
            where.append("instr(lower(u.explanation), lower(?)) > 0")
            args.append(text)
        if min_score is not None:
            where.append("u.simulation_score>=?")
            args.append(min_score)
        if token_ids is not None:
            inner = (
                f"SELECT {columns}, max({TOKEN_F1_SQL}) AS f1 FROM unit_tokens t "
                f"JOIN units u ON u.dict=t.dict AND u.unit=t.unit JOIN vocab v ON v.token=t.token "
                f"WHERE t.dict=? AND t.token IN ({','.join('?' * len(token_ids))}) AND {' AND '.join(where)} "
                f"GROUP BY u.unit"
            )
            args = [dict_name, *token_ids, *args]
        else:
            inner = f"SELECT {columns} FROM units u WHERE {' AND '.join(where)}"
        order = f"{sort} IS NULL, {sort} {'DESC' if descending else 'ASC'}, unit"
        rows = [
            dict(r)
            for r in self.db.execute(
                f"SELECT *, count(*) OVER () AS total FROM ({inner}) ORDER BY {order} LIMIT ? OFFSET ?",
                (*args, limit, offset),
            )
        ]
        total = rows[0]["total"] if rows else self.db.execute(f"SELECT count(*) FROM ({inner})", args).fetchone()[0]
        for r in rows:
            del r["total"]
        return rows, total

    def token_index(self, dict_name: str) -> dict[str, list[list]]:
        """Every vocabulary text → ``[unit, f1]`` of the units that fire on it (the best over token
        ids sharing the text), best first: what ``unit_list`` matches and ranks by."""
        index: dict[str, list[list]] = {text: [] for text in self.vocab.values()}
        rows = self.db.execute(
            f"SELECT v.text, t.unit, max({TOKEN_F1_SQL}) AS f1 FROM unit_tokens t "
            f"JOIN units u ON u.dict=t.dict AND u.unit=t.unit JOIN vocab v ON v.token=t.token "
            f"WHERE t.dict=? GROUP BY v.text, t.unit ORDER BY v.text, f1 DESC, t.unit",
            (dict_name,),
        )
        for r in rows:
            index[r["text"]].append([r["unit"], r["f1"]])
        return index

    def labels(self, dict_name: str, units: list[int], n: int = 3) -> dict[int, list[str]]:
        """Each unit's ``n`` most-fired-on token texts: a short label for lists and links."""
        if not units:
            return {}
        rows = self.db.execute(
            f"SELECT unit, token FROM (SELECT unit, token, row_number() OVER (PARTITION BY unit ORDER BY fires DESC, "
            f"token) AS k FROM unit_tokens WHERE dict=? AND unit IN ({','.join('?' * len(units))})) WHERE k<=? "
            f"ORDER BY unit, k",
            (dict_name, *units, n),
        )
        out: dict[int, list[str]] = {}
        for r in rows:
            out.setdefault(r["unit"], []).append(self.token_text(r["token"]))
        return out
