"""The feature store: one SQLite file in the run directory (``RUN/features.sqlite``) holding every
analysed unit — neurons and the features of each SAE alike — for the browser and the CLI.

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
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError

FORMAT = "monosemantic.feature-store/2"
FILENAME = "features.sqlite"
NEURONS = "neurons"  # the dictionary name under which the store keeps the neuron basis

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


@contextmanager
def create_store(path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh store at a temporary name, renamed to ``path`` when the block exits cleanly."""
    with atomic_path(path) as tmp:
        db = sqlite3.connect(tmp)
        try:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
            db.execute("INSERT INTO meta VALUES ('format', ?)", (json.dumps(FORMAT),))
            yield db
            db.commit()
        finally:
            db.close()


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

    def token_text(self, token: int) -> str:
        row = self.db.execute("SELECT text FROM vocab WHERE token=?", (token,)).fetchone()
        return row[0] if row else f"<{token}>"

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

    def units(
        self,
        dict_name: str,
        order_by: str = "simulation_score",
        descending: bool = True,
        limit: int = 100,
        offset: int = 0,
        min_density: float = 0.0,
    ) -> list[dict[str, Any]]:
        """A page of units of one dictionary, sorted by a column (list/sort/filter for the browser)."""
        columns = {"unit", "density", "mean_act", "max_act", "simulation_score", "detection_score", "fire_count"}
        if order_by not in columns:
            raise UserError(f"sort by {order_by!r}: choose from {', '.join(sorted(columns))}")
        sql = (
            f"SELECT dict, unit, unit_kind, fire_count, density, mean_act, max_act, explanation, "
            f"simulation_score, detection_score, score_backend FROM units WHERE dict=? AND density>=? "
            f"ORDER BY {order_by} IS NULL, {order_by} {'DESC' if descending else 'ASC'}, unit LIMIT ? OFFSET ?"
        )
        return [dict(r) for r in self.db.execute(sql, (dict_name, min_density, limit, offset))]

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

    def logits(self, dict_name: str, unit: int) -> dict[str, list[tuple[str, float]]]:
        rows = self.db.execute(
            "SELECT rank, token, value FROM logits WHERE dict=? AND unit=? ORDER BY rank", (dict_name, unit)
        ).fetchall()
        top = sorted((r for r in rows if r[0] >= 0), key=lambda r: r[0])
        bottom = sorted((r for r in rows if r[0] < 0), key=lambda r: -r[0])
        return {
            "top": [(self.token_text(t), v) for _, t, v in top],
            "bottom": [(self.token_text(t), v) for _, t, v in bottom],
        }

    def neighbours(self, dict_name: str, unit: int, kind: str) -> list[tuple[int, float]]:
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT other, value FROM neighbours WHERE dict=? AND unit=? AND kind=? ORDER BY rank",
                (dict_name, unit, kind),
            )
        ]

    def constituents(self, dict_name: str, unit: int) -> list[tuple[int, float]]:
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT neuron, weight FROM constituents WHERE dict=? AND unit=? ORDER BY rank", (dict_name, unit)
            )
        ]

    def neuron_users(self, dict_name: str, neuron: int) -> list[tuple[int, float]]:
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT unit, weight FROM neuron_users WHERE dict=? AND neuron=? ORDER BY rank", (dict_name, neuron)
            )
        ]

    def top_tokens(self, dict_name: str, unit: int, n: int = 5) -> list[tuple[str, int, float]]:
        """(token text, fires, mean activation) of the tokens the unit fires on most often."""
        return [
            (self.token_text(r[0]), r[1], r[2])
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

    def contexts(self, dict_name: str, unit: int) -> dict[str, list[tuple[str, float]]]:
        """Where the unit's activation mass comes from: (label, share) by source, language and previous token."""
        out: dict[str, list[tuple[str, float]]] = {"source": [], "language": [], "preceding": []}
        for kind, label, share in self.db.execute(
            "SELECT kind, label, share FROM unit_contexts WHERE dict=? AND unit=? ORDER BY kind, rank",
            (dict_name, unit),
        ):
            out[kind].append((label, share))
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
