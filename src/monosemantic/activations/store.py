"""The sharded on-disk activation store: one row per token, with where that token came from.

A store is a directory::

    store.json             format, d_in, hook_name, dtype, n_rows, shards, meta
    acts_00000.bin         activations, raw little-endian float32/float16, C order, [rows, d_in]
    origin_00000.bin       origin of each row, raw little-endian int64, C order, [rows, 4]
    acts_00001.bin ...

The origin columns are ``(token, doc, pos, source_shard)``: the token id, the document index, the
token's offset within its corpus token shard (harvest writes the absolute offset, so a row's
context is ``tokens[source_shard][pos - k : pos + k + 1]``), and that token shard's index. Shards are raw
arrays (read through ``np.memmap``) so that a store can be far larger than RAM; ``store.json``
records each shard's row count and byte sizes, against which every shard is checked on open.

``ActivationWriter`` builds a store under a temporary name and renames it into place on success;
``join_stores`` makes one store of several (a distributed harvest's per-rank parts) without copying;
``ActivationStore`` opens one for random access, sequential chunks, the per-dimension mean and
shuffled training batches (see ``reader.py``).
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

from monosemantic.activations.reader import shuffled_batches
from monosemantic.atomic import atomic_path
from monosemantic.errors import UserError

FORMAT = "monosemantic.activation-store/1"
ORIGIN_COLUMNS = ("token", "doc", "pos", "source_shard")
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_ORIGIN_DTYPE = np.dtype("<i8")


def hook_tag(hook_name: str, main_hook: str) -> str:
    """What a run appends to the name of anything of ``hook_name`` (a store, an SAE, a splitting
    output): nothing for its main hook point (``lm.hook_name``), ``@<hook_name>`` for any other."""
    return "" if hook_name == main_hook else f"@{hook_name}"


def hook_store_dir(run_dir: str | Path, split: str, hook_name: str, main_hook: str) -> Path:
    """Where a run keeps ``split``'s activations at ``hook_name``: ``activations/<split>`` for its main
    hook point (``lm.hook_name``), ``activations/<split>@<hook_name>`` for any other."""
    return Path(run_dir) / "activations" / f"{split}{hook_tag(hook_name, main_hook)}"


def _acts_name(shard: int) -> str:
    return f"acts_{shard:05d}.bin"


def _origin_name(shard: int) -> str:
    return f"origin_{shard:05d}.bin"


class ActivationWriter:
    """Append activations with their origins; on a clean exit, a complete store appears at ``out_dir``.

    Use as a context manager. Rows go straight to disk (memory is bounded by the caller's chunk),
    a new shard starts every ``rows_per_shard`` rows. On an exception nothing new appears at
    ``out_dir`` (an existing store there is left untouched); on success it is replaced.
    """

    def __init__(
        self,
        out_dir: str | Path,
        d_in: int,
        hook_name: str,
        dtype: str = "float32",
        rows_per_shard: int = 262_144,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise UserError(f"activation dtype {dtype!r}: must be one of {', '.join(DTYPES)}")
        if d_in < 1:
            raise UserError(f"activation width d_in={d_in}: must be at least 1")
        if rows_per_shard < 1:
            raise UserError(f"rows_per_shard={rows_per_shard}: must be at least 1")
        self.out_dir = Path(out_dir)
        self.d_in = d_in
        self.hook_name = hook_name
        self.dtype = dtype
        self.rows_per_shard = rows_per_shard
        self.meta = dict(meta or {})
        json.dumps(self.meta)  # fail now, not after hours of harvesting, if meta is not JSON
        self.n_rows = 0
        self._shards: list[dict[str, Any]] = []
        self._dir: Path | None = None
        self._acts_file: BinaryIO | None = None
        self._origin_file: BinaryIO | None = None
        self._stack = ExitStack()

    def __enter__(self) -> ActivationWriter:
        self._dir = self._stack.enter_context(atomic_path(self.out_dir))
        self._dir.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._close_shard()
            if exc_type is None:
                if self.n_rows == 0:
                    raise UserError(f"activation store {self.out_dir}: no activations were recorded")
                (self._dir / "store.json").write_text(json.dumps(self._manifest(), indent=2) + "\n")
        except BaseException as error:
            if not self._stack.__exit__(type(error), error, error.__traceback__):
                raise
            return False
        return bool(self._stack.__exit__(exc_type, exc, tb))

    def append(
        self,
        acts_ND: torch.Tensor | np.ndarray,
        token_N: np.ndarray,
        doc_N: np.ndarray,
        pos_N: np.ndarray,
        source_shard_N: np.ndarray,
    ) -> None:
        """Append N rows of activations ``acts_ND`` [N, d_in] and their origin columns (each [N]).

        Raises ``UserError`` when the width is not ``d_in``, an origin column's length is not N, or
        an activation is NaN/inf (also after rounding to float16).
        """
        if self._dir is None:
            raise RuntimeError("ActivationWriter.append outside its `with` block")
        if isinstance(acts_ND, torch.Tensor):
            acts_ND = acts_ND.detach().to("cpu", torch.float32).numpy()
        acts_ND = np.asarray(acts_ND)
        if acts_ND.ndim != 2 or acts_ND.shape[1] != self.d_in:
            raise UserError(
                f"activations at {self.hook_name}: shape {tuple(acts_ND.shape)}, expected [N, {self.d_in}]"
                " (wrong hook point or model width?)"
            )
        n = acts_ND.shape[0]
        origin_N4 = np.empty((n, len(ORIGIN_COLUMNS)), dtype=_ORIGIN_DTYPE)
        for col, (name, values) in enumerate(zip(ORIGIN_COLUMNS, (token_N, doc_N, pos_N, source_shard_N))):
            values = np.asarray(values)
            if values.shape != (n,):
                raise UserError(f"activation origin {name!r}: shape {values.shape}, expected ({n},)")
            origin_N4[:, col] = values
        with np.errstate(over="ignore"):  # float16 overflow becomes inf, reported just below
            stored_ND = np.ascontiguousarray(acts_ND, dtype=DTYPES[self.dtype])
        if not np.isfinite(stored_ND).all():
            bad = int((~np.isfinite(stored_ND)).any(axis=1).sum())
            raise UserError(
                f"activations at {self.hook_name}: {bad} of {n} rows hold NaN/inf"
                + (" (after rounding to float16; use dtype float32)" if np.isfinite(acts_ND).all() else "")
            )
        start = 0
        while start < n:
            if self._acts_file is None:
                self._open_shard()
            shard = self._shards[-1]
            stop = min(n, start + self.rows_per_shard - shard["rows"])
            self._acts_file.write(memoryview(stored_ND[start:stop]).cast("B"))
            self._origin_file.write(memoryview(origin_N4[start:stop]).cast("B"))
            shard["rows"] += stop - start
            self.n_rows += stop - start
            start = stop
            if shard["rows"] == self.rows_per_shard:
                self._close_shard()

    def _open_shard(self) -> None:
        index = len(self._shards)
        self._shards.append({"acts": _acts_name(index), "origin": _origin_name(index), "rows": 0})
        self._acts_file = open(self._dir / _acts_name(index), "wb")
        self._origin_file = open(self._dir / _origin_name(index), "wb")

    def _close_shard(self) -> None:
        if self._acts_file is None:
            return
        self._acts_file.close()
        self._origin_file.close()
        self._acts_file = self._origin_file = None
        shard = self._shards[-1]
        shard["acts_bytes"] = shard["rows"] * self.d_in * DTYPES[self.dtype].itemsize
        shard["origin_bytes"] = shard["rows"] * len(ORIGIN_COLUMNS) * _ORIGIN_DTYPE.itemsize

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "d_in": self.d_in,
            "hook_name": self.hook_name,
            "dtype": self.dtype,
            "n_rows": self.n_rows,
            "origin_columns": list(ORIGIN_COLUMNS),
            "shards": self._shards,
            "meta": self.meta,
        }


def join_stores(parts: list[Path], out_dir: Path) -> dict[str, Any]:
    """Turn the existing directory ``out_dir`` into one store holding the rows of the stores
    ``parts`` (same width, dtype, hook and meta), in that order, by moving their shard files in
    under the joined numbering: no row is copied. The parts' directories are removed. Returns the
    joined manifest."""
    stores = [ActivationStore(part) for part in parts]
    first = stores[0]
    for store in stores[1:]:
        if (store.d_in, store.dtype, store.hook_name, store.meta) != (
            first.d_in,
            first.dtype,
            first.hook_name,
            first.meta,
        ):
            raise UserError(f"activation store {store.path}: does not match {first.path}; cannot join them")
    shards = []
    for store in stores:
        for shard in json.loads((store.path / "store.json").read_text())["shards"]:
            index = len(shards)
            (store.path / shard["acts"]).rename(out_dir / _acts_name(index))
            (store.path / shard["origin"]).rename(out_dir / _origin_name(index))
            shards.append({**shard, "acts": _acts_name(index), "origin": _origin_name(index)})
    manifest = {
        "format": FORMAT,
        "d_in": first.d_in,
        "hook_name": first.hook_name,
        "dtype": first.dtype,
        "n_rows": sum(store.n_rows for store in stores),
        "origin_columns": list(ORIGIN_COLUMNS),
        "shards": shards,
        "meta": first.meta,
    }
    (out_dir / "store.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for store in stores:
        shutil.rmtree(store.path)
    return manifest


class ActivationStore:
    """A store written by ``ActivationWriter``, opened read-only.

    Opening checks ``store.json`` and every shard's byte size, so a missing, foreign or truncated
    store raises ``UserError`` here rather than half-way through training.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self._read_manifest()
        self.d_in: int = manifest["d_in"]
        self.hook_name: str = manifest["hook_name"]
        self.dtype: str = manifest["dtype"]
        self.stored_dtype: np.dtype = DTYPES[self.dtype]
        self.n_rows: int = manifest["n_rows"]
        self.meta: dict[str, Any] = manifest["meta"]
        self.shard_rows = np.array([s["rows"] for s in manifest["shards"]], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(self.shard_rows)])
        itemsize = DTYPES[self.dtype].itemsize
        for shard in manifest["shards"]:
            rows = shard["rows"]
            self._check_size(shard["acts"], rows * self.d_in * itemsize)
            self._check_size(shard["origin"], rows * len(ORIGIN_COLUMNS) * _ORIGIN_DTYPE.itemsize)
        self._acts = [
            np.memmap(self.path / s["acts"], DTYPES[self.dtype], "r", shape=(s["rows"], self.d_in))
            for s in manifest["shards"]
        ]
        self._origins = [
            np.memmap(self.path / s["origin"], _ORIGIN_DTYPE, "r", shape=(s["rows"], len(ORIGIN_COLUMNS)))
            for s in manifest["shards"]
        ]

    def _read_manifest(self) -> dict[str, Any]:
        where = f"activation store {self.path}"
        if not self.path.is_dir():
            raise UserError(f"{where}: no such directory (run the harvest stage first)")
        try:
            manifest = json.loads((self.path / "store.json").read_text())
        except FileNotFoundError:
            raise UserError(f"{where}: not an activation store (no store.json)") from None
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: store.json is not valid JSON ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise UserError(f"{where}: store.json has format {found!r}, expected {FORMAT!r}")
        try:
            rows = [int(s["rows"]) for s in manifest["shards"]]
            ok = (
                int(manifest["d_in"]) >= 1
                and manifest["dtype"] in DTYPES
                and isinstance(manifest["hook_name"], str)
                and isinstance(manifest["meta"], dict)
                and manifest["origin_columns"] == list(ORIGIN_COLUMNS)
                and all(r >= 1 for r in rows)
                and sum(rows) == int(manifest["n_rows"]) >= 1
                and all(isinstance(s["acts"], str) and isinstance(s["origin"], str) for s in manifest["shards"])
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"{where}: store.json is malformed (re-run the harvest stage)")
        return manifest

    def _check_size(self, name: str, expected: int) -> None:
        file = self.path / name
        if not file.is_file():
            raise UserError(f"activation store {self.path}: shard {name} is missing (re-run the harvest stage)")
        size = file.stat().st_size
        if size != expected:
            raise UserError(
                f"activation store {self.path}: shard {name} has {size:,} bytes, expected {expected:,}"
                " (truncated or corrupt; re-run the harvest stage)"
            )

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_shards(self) -> int:
        return len(self._acts)

    def _locate(self, idx_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global row indices → (shard index, row within shard), both [N]."""
        idx_N = np.asarray(idx_N, dtype=np.int64)
        if idx_N.ndim != 1:
            raise IndexError(f"row indices must be 1-D, got shape {idx_N.shape}")
        if idx_N.size and (idx_N.min() < 0 or idx_N.max() >= self.n_rows):
            raise IndexError(f"row index out of range [0, {self.n_rows})")
        shard_N = np.searchsorted(self.shard_starts, idx_N, side="right") - 1
        return shard_N, idx_N - self.shard_starts[shard_N]

    def _gather(self, arrays: list[np.memmap], idx_N: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        shard_N, local_N = self._locate(idx_N)
        if out is None:
            out = np.empty((len(local_N), arrays[0].shape[1]), dtype=arrays[0].dtype)
        for shard in np.unique(shard_N):
            mask = shard_N == shard
            out[mask] = arrays[shard][local_N[mask]]
        return out

    def rows(self, idx_N: np.ndarray) -> torch.Tensor:
        """Activations of the given rows, float32 [N, d_in], in the order of ``idx_N``."""
        return torch.from_numpy(self._gather(self._acts, idx_N)).float()

    def read_rows(self, idx_N: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``idx_N`` in the stored dtype, [N, d_in], in the order of ``idx_N``; into ``out`` when given."""
        return self._gather(self._acts, idx_N, out)

    def origin(self, idx_N: np.ndarray) -> dict[str, np.ndarray]:
        """Origin of the given rows: ``{"token", "doc", "pos", "source_shard"}`` → int64 [N]."""
        origin_N4 = self._gather(self._origins, idx_N)
        return {name: origin_N4[:, col].copy() for col, name in enumerate(ORIGIN_COLUMNS)}

    def read_range(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` in the stored dtype, [stop − start, d_in], read contiguously across shards.

        Writes into ``out`` (a [stop − start, d_in] array of the stored dtype) when given.
        """
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"row range {start}:{stop} outside [0, {self.n_rows}]")
        if out is None:
            out = np.empty((stop - start, self.d_in), dtype=DTYPES[self.dtype])
        first = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        at = start
        for shard in range(first, self.n_shards):
            if at >= stop:
                break
            base = int(self.shard_starts[shard])
            end = min(stop, int(self.shard_starts[shard + 1]))
            out[at - start : end - start] = self._acts[shard][at - base : end - base]
            at = end
        return out

    def iter_chunks(self, chunk_rows: int, part: tuple[int, int] = (0, 1)) -> Iterator[tuple[int, torch.Tensor]]:
        """Sequential ``(start_row, acts)`` with acts float32 [≤ chunk_rows, d_in]; only the last is short.
        With ``part=(r, N)``, only rank r's contiguous share of the rows, [r·n/N, (r+1)·n/N) (rounded down)."""
        if chunk_rows < 1:
            raise UserError(f"chunk_rows={chunk_rows}: must be at least 1")
        rank, size = part
        first, last = self.n_rows * rank // size, self.n_rows * (rank + 1) // size
        for start in range(first, last, chunk_rows):
            stop = min(last, start + chunk_rows)
            yield start, torch.from_numpy(self.read_range(start, stop)).float()

    def sample_rows(self, n_rows: int, seed: int) -> torch.Tensor:
        """``min(n_rows, self.n_rows)`` distinct random rows, in store order, float32 [N, d_in]."""
        rng = np.random.default_rng(seed)
        return self.rows(np.sort(rng.choice(self.n_rows, size=min(n_rows, self.n_rows), replace=False)))

    def mean(self, chunk_rows: int = 65_536) -> torch.Tensor:
        """Per-dimension mean over every row, float32 [d_in], accumulated in float64 (for mean-ablation)."""
        total_D = np.zeros(self.d_in, dtype=np.float64)
        for _, acts_ND in self.iter_chunks(chunk_rows):
            total_D += acts_ND.double().sum(dim=0).numpy()
        return torch.from_numpy(total_D / self.n_rows).float()

    # shuffled float32 [batch_size, d_in] batches streamed from disk: ``reader.shuffled_batches``
    shuffled_batches = shuffled_batches

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, n_rows={self.n_rows:,}, d_in={self.d_in}, "
            f"dtype={self.dtype}, hook_name={self.hook_name!r}, shards={self.n_shards})"
        )
