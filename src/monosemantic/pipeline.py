"""The public pipeline API (``run``) and the run directory with its manifest: which stages ran,
with what config, and what they measured.

``run(cfg, out, upto)`` runs the stage ``upto`` (all stages when None) after the stages it needs,
worked out from each stage's declared ``needs``, and nothing else: ``upto="universality"`` runs
corpus, lm, harvest, sae and universality, not analysis or toy.

``runs/<name>/run.json`` holds, per stage, the hash of the config that produced its artifacts
(chained with the hashes of the stages it reads from) and the figures it measured, plus
``timings``. A stage whose hash matches and whose artifacts exist is skipped; any change upstream
changes every downstream hash, so stale artifacts are never reused. Each stage writes its
artifacts atomically and the manifest is rewritten atomically after each stage, so a killed run
leaves a consistent directory and simply continues on the next invocation.

Each stage's record also holds the size and digest of every file it wrote (``integrity.py``): a
stage is current only if its files still match, and a downstream hash chains those digests, so a
recomputed artifact that came out different invalidates what was built on it. A stage runs while
holding an exclusive lock on ``RUN/.lock``; holding it proves no other process is writing, so the
temporaries a killed run left behind are removed then.

An experiment that repeats stages (universality's model B: the lm, harvest and sae stages again,
with other seeds, on the same tokens) is a second run in a subdirectory, ``RunDir.second_run``:
its own manifest, hashes and skipping, reading the stages it borrows from the first run.

Under torchrun (``distributed.py``) every rank calls ``run`` with the same config. Rank 0 owns the
run directory: it takes the lock, decides whether a stage is current, writes ``run.json`` and hands
its manifest to the others after each stage. A stage marked ``distributed`` runs on every rank, each
doing its share; any other stage runs on rank 0 while the others wait. ``run.json`` records, per
stage, the ``world_size`` that ran it. A second run belongs to a distributed stage (universality)
and runs in its world: every rank enters it, rank 0 owns its manifest (``RUN/rel/run.json``) and
its distributed stages (lm, harvest, sae) are split over the ranks as the first run's are.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from monosemantic import __version__, distributed, integrity
from monosemantic.atomic import remove_temporaries, write_json
from monosemantic.device import resolve_device
from monosemantic.errors import UserError
from monosemantic.progress import notice

if TYPE_CHECKING:
    from monosemantic.config import RunConfig


def config_hash(config: Any, upstream: list[str] = ()) -> str:
    blob = json.dumps({"config": config, "upstream": list(upstream)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Stage:
    """One step of the pipeline: ``run(run_dir)`` writes ``artifacts`` and returns its figures;
    ``summary(figures)`` says in one line what they were; ``needs`` names the stages it reads from.
    ``distributed``: every rank of a torchrun world runs it (each its share; rank 0's figures are
    recorded), else rank 0 alone does."""

    name: str
    config: Any
    run: Callable[[RunDir], dict]
    artifacts: list[str]
    summary: Callable[[dict], str]
    needs: list[str] = field(default_factory=list)
    distributed: bool = False


@dataclass
class StageRun:
    """What one stage did in a ``run``: ran, or was current and skipped; its figures and summary."""

    name: str
    skipped: bool
    figures: dict
    summary: str


@dataclass
class RunResult:
    """The run directory after ``run``, and what each stage it took part in did, in order."""

    run_dir: RunDir
    stages: list[StageRun]


def prerequisites(stages: list[Stage], target: str | None) -> list[Stage]:
    """``target`` and every stage it needs, directly or not, in the order of ``stages`` (all of
    them when ``target`` is None)."""
    by_name = {s.name: s for s in stages}
    if target is None:
        return list(stages)
    if target not in by_name:
        raise UserError(f"unknown stage {target} (stages: {', '.join(by_name)})")
    wanted, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += by_name[name].needs
    return [s for s in stages if s.name in wanted]


def run(
    cfg: RunConfig, out: str | Path, upto: str | None = None, force: bool = False, verify: bool = False
) -> RunResult:
    """Run stage ``upto`` (None: every stage) in run directory ``out``, after the stages it needs;
    a stage whose artifacts are current is skipped. ``force`` re-runs ``upto`` (None: every stage)
    even when current; ``verify`` compares the digests of large artifacts too (``RunDir``)."""
    from monosemantic.stages import all_stages  # stages build on Stage and RunDir, defined here

    stages = prerequisites(all_stages(cfg), upto)
    forced = {s.name for s in stages if force and upto in (None, s.name)}
    with distributed.session(resolve_device(cfg.device)) as world:
        return RunDir(Path(out), verify, world).run_stages(cfg, stages, forced)


class RunDir:
    """A run directory and its manifest. ``verify``: judge a stage current only after comparing the
    digest of every artifact file, large ones included (else those are compared by size).
    ``world``: the torchrun world running the stages (rank 0 writes the manifest)."""

    def __init__(self, path: Path, verify: bool = False, world: distributed.World = distributed.SINGLE):
        self.path = Path(path)
        self.verify = verify
        self.world = world
        self.manifest_path = self.path / "run.json"
        self.manifest: dict = {}
        if self.manifest_path.exists():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{self.manifest_path}: not valid JSON ({err.msg}); delete it to start the run over"
                ) from None
            except UnicodeDecodeError:
                raise UserError(f"{self.manifest_path}: not UTF-8 text; delete it to start the run over") from None
            if not isinstance(self.manifest, dict):
                raise UserError(
                    f"{self.manifest_path}: not a run manifest (a JSON object); delete it to start the run over"
                )
        self.manifest.setdefault("stages", {})
        self.manifest.setdefault("timings", {})
        self.borrowed: dict[str, Path] = {}  # top-level names read from another run directory
        for record in self.manifest["stages"].values():
            if "borrowed_from" in record:
                home = Path(os.path.normpath(self.path / record["borrowed_from"]))
                self.borrowed.update({rel.split("/", 1)[0]: home for rel in record.get("artifacts", {})})

    def __truediv__(self, rel: str) -> Path:
        return self.borrowed.get(rel.split("/", 1)[0], self.path) / rel

    def second_run(self, rel: str, borrow: list[str]) -> RunDir:
        """The run directory ``RUN/rel`` of a second run of some stages (another seed, another
        model) that reads the outputs of the stages named in ``borrow``, run here, from where they
        are: their records are copied into its manifest with ``borrowed_from``, so its own stages
        chain their fingerprints as they would here (a re-run here makes them stale there). It runs
        in this run's world: called by every rank, its distributed stages are split as here."""
        sub = RunDir(self.path / rel, self.verify, self.world)
        for name in borrow:
            record = self.manifest["stages"][name]
            home = self.borrowed.get(next(iter(record["artifacts"])).split("/", 1)[0], self.path)
            sub.manifest["stages"][name] = {**record, "borrowed_from": os.path.relpath(home, sub.path)}
            sub.manifest[name] = self.manifest[name]
            sub.borrowed.update({a.split("/", 1)[0]: home for a in record["artifacts"]})
        return sub

    def run_stages(self, cfg: RunConfig, stages: list[Stage], force: set[str] = frozenset()) -> RunResult:
        """Run ``stages`` in order under ``cfg``, each skipped when current unless named in ``force``."""
        self.manifest["config"] = cfg.model_dump()
        done = []
        for stage in stages:
            figures, skipped = self.run_stage(stage, force=stage.name in force)
            done.append(StageRun(stage.name, skipped, figures, stage.summary(figures)))
        if self.world.is_main:
            self.save()
        return RunResult(self, done)

    def fingerprint(self, name: str) -> str:
        """What stage ``name``'s output is: its config hash and the digest of its recorded files."""
        entry = self.manifest["stages"][name]
        blob = json.dumps(entry.get("artifacts", {}), sort_keys=True)
        return f"{entry['config_hash']}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def stage_hash(self, stage: Stage) -> str:
        return config_hash(stage.config, [self.fingerprint(n) for n in stage.needs])

    def is_current(self, stage: Stage) -> bool:
        recorded = self.manifest["stages"].get(stage.name)
        if not recorded or any(n not in self.manifest["stages"] for n in stage.needs):
            return False
        return (
            recorded["config_hash"] == self.stage_hash(stage)
            and "artifacts" in recorded
            and all((self.path / a).exists() for a in stage.artifacts)
            and not self._changed_artifacts(stage)
        )

    def _changed_artifacts(self, stage: Stage) -> dict[str, str]:
        """Recorded files of ``stage`` that no longer match their digest: {file: why}."""
        return integrity.mismatches(
            self.path,
            self.manifest["stages"][stage.name].get("artifacts", {}),
            digest_max_bytes=None if self.verify else integrity.LARGE_FILE_BYTES,
        )

    def run_stage(self, stage: Stage, force: bool = False) -> tuple[dict, bool]:
        """Run ``stage`` unless current; returns (its figures, whether it was skipped)."""
        missing = [n for n in stage.needs if n not in self.manifest["stages"]]
        if missing:
            raise UserError(
                f"stage {stage.name} needs {', '.join(missing)} first (run `monosemantic run --out {self.path}`)"
            )
        main = self.world.is_main
        self.world.barrier()  # every rank done with the last stage before rank 0 clears temporaries
        with self.locked() if main else nullcontext():
            current = self.world.broadcast_object(main and not force and self.is_current(stage))
            if current:
                return self.manifest[stage.name], True
            if main and stage.name in self.manifest["stages"]:
                self._discard_changed(stage)
            start = time.perf_counter()
            figures = stage.run(self) if stage.distributed or main else {}
            if main:
                seconds = round(time.perf_counter() - start, 2)
                figures["seconds"] = seconds
                figures["world_size"] = self.world.size if stage.distributed else 1
                self.manifest["stages"][stage.name] = {
                    "config_hash": self.stage_hash(stage),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "artifacts": integrity.record(self.path, stage.artifacts),
                }
                self.manifest[stage.name] = figures
                self.manifest["timings"][stage.name] = seconds
                self.manifest["monosemantic_version"] = __version__
                self.save()
            self.manifest = self.world.broadcast_object(self.manifest)  # the other ranks wait for rank 0 here
        return self.manifest[stage.name], False

    def _discard_changed(self, stage: Stage) -> None:
        """Delete the units holding files that no longer match their digest, so none is reused."""
        changed = self._changed_artifacts(stage)
        if not changed:
            return
        rel, why = next(iter(changed.items()))
        notice(f"{stage.name}: {self.path / rel} does not match run.json ({why}); recomputing the stage")
        for unit in integrity.artifact_units(list(changed)):
            path = self.path / unit
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``RUN/.lock`` exclusively (one writer per run directory); on taking it, remove the
        temporaries of killed runs (no other process can be writing them)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path}: is a file, not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / ".lock", "a")
        except OSError as err:
            raise UserError(f"--out {self.path}: cannot write there ({err.strerror or err})") from None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"--out {self.path}: another monosemantic process is writing this run "
                    f"directory; wait for it to finish"
                ) from None
            removed = remove_temporaries(self.path)
            if removed:
                notice(f"removed {len(removed)} temporary file(s) left by an interrupted run in {self.path}")
            yield

    def save(self) -> None:
        write_json(self.manifest_path, self.manifest)
