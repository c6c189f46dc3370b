"""Artifact digests: what a stage wrote, recorded in ``run.json`` and checked before anything trusts it.

A stage's artifacts are written atomically, each as a unit: a file at the top of the run directory
(``features.sqlite``, ``tokenizer.json``) or the whole folder holding it (``tokens/``,
``saes/topk-4096/``, ``activations/train/``). When a stage finishes, every file of its units gets
its size and BLAKE2b digest (streamed, 1 MiB at a time) in ``run.json``::

    "stages": {"sae": {"config_hash": …, "artifacts": {"saes/topk-512/sae_weights.safetensors":
                                                       {"bytes": 1052768, "blake2b": "9f…"}, …}}}

``mismatches`` compares the files on disk with that record: sizes always, digests when ``full``.
``run`` recomputes a stage whose artifacts mismatch; it compares the digest of every file up to
``LARGE_FILE_BYTES`` and the size of larger ones (the training activation shards), all digests
with ``--verify``. The readers (``serve``, ``search``, ``steer``, ``export-html``) compare the
digest of every file they read, once when they open the run, and stop with one line naming the
file. (``benchmarks/integrity_cost.py`` measures both: on a demo-sized run about 1 s for a reader
and 6 s for a full check, most of it the 2 GB training activations.) A digest guards against corruption and stale
files, not against someone who rewrites ``run.json`` too; that loading runs no code is what makes
a foreign run safe to open (weights are safetensors, checkpoints load with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from monosemantic.errors import UserError

DIGEST = "blake2b"
CHUNK_BYTES = 1 << 20
LARGE_FILE_BYTES = 256 << 20  # above this, `run` checks sizes only (unless --verify) and inputs are sampled
SAMPLED_CHUNKS = 64
TRAINING_ONLY = ("activations/train/",)  # the readers skip these: only SAE training reads them


def file_digest(path: str | Path) -> str:
    """BLAKE2b (64-byte) hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def input_fingerprint(path: str | Path) -> str:
    """What an input file's content is, for a config hash: its digest, or for a file above
    ``LARGE_FILE_BYTES`` its size, mtime and the digest of 64 evenly spaced 1 MiB chunks
    (an in-place edit changes the mtime; a copy keeps size and chunks)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= LARGE_FILE_BYTES:
        return file_digest(path)
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        for i in range(SAMPLED_CHUNKS):
            f.seek(i * (size - CHUNK_BYTES) // (SAMPLED_CHUNKS - 1))
            digest.update(f.read(CHUNK_BYTES))
    return f"{size}:{path.stat().st_mtime_ns}:{digest.hexdigest()}"


def artifact_units(artifacts: list[str]) -> list[str]:
    """The atomically written units holding ``artifacts`` (run-relative): a top-level file itself,
    else the folder that holds it."""
    units = []
    for rel in artifacts:
        parent = Path(rel).parent
        unit = rel if parent == Path(".") else parent.as_posix()
        if unit not in units:
            units.append(unit)
    return units


def unit_files(root: Path, unit: str) -> list[str]:
    """The files of one unit, run-relative and sorted; temporaries and other hidden names are skipped."""
    path = root / unit
    if path.is_file():
        return [unit]
    if not path.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def record(root: str | Path, artifacts: list[str]) -> dict[str, dict]:
    """Size and digest of every file of the units holding ``artifacts``, for ``run.json``."""
    root = Path(root)
    return {
        rel: {"bytes": (root / rel).stat().st_size, DIGEST: file_digest(root / rel)}
        for unit in artifact_units(artifacts)
        for rel in unit_files(root, unit)
    }


def mismatches(
    root: str | Path, recorded: dict[str, dict], full: bool = True, digest_max_bytes: int | None = None
) -> dict[str, str]:
    """The recorded files that are missing, changed size or changed content: {file: why}. Content
    is compared only when ``full``, and then only for files of at most ``digest_max_bytes`` if given."""
    root = Path(root)
    found = {}
    for rel, expected in recorded.items():
        path = root / rel
        if not path.is_file():
            found[rel] = "missing"
        elif path.stat().st_size != expected["bytes"]:
            found[rel] = f"{path.stat().st_size:,} bytes, {expected['bytes']:,} when written"
        elif (
            full
            and (digest_max_bytes is None or expected["bytes"] <= digest_max_bytes)
            and file_digest(path) != expected[DIGEST]
        ):
            found[rel] = "its content changed since it was written"
    return found


def verify_run(
    root: str | Path,
    manifest: dict | None = None,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = TRAINING_ONLY,
    full: bool = True,
) -> None:
    """Check the artifacts ``manifest`` (default: ``root/run.json``) records, those under the
    ``only`` prefixes if given, less those under ``skip``, against the disk; the first mismatch is
    a ``UserError`` telling how to recompute it. A reader calls this once when it opens a run."""
    root = Path(root)
    if manifest is None:
        manifest = _read_manifest(root / "run.json")
    for stage, entry in manifest.get("stages", {}).items():
        recorded = {
            rel: d
            for rel, d in entry.get("artifacts", {}).items()
            if (only is None or rel.startswith(only)) and not rel.startswith(skip)
        }
        bad = mismatches(root, recorded, full)
        if bad:
            rel, why = next(iter(bad.items()))
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(
                f"{root / rel}: does not match run.json ({why}){more}; the run directory is "
                f"corrupt or was edited: re-run `monosemantic run --out {root}` with its config "
                f"to recompute the {stage} stage"
            )


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); the run directory is corrupt") from None
    return manifest if isinstance(manifest, dict) else {}
