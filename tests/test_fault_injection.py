"""kill -9 at every stage of a tiny run, resuming each time: the result is the uninterrupted run's,
bit for bit, and no temporary survives (``benchmarks/fault_injection.py`` does this at random points)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from monosemantic.atomic import TEMPORARY_NAME

SRC = str(Path(__file__).parent.parent / "src")
TIMED = "cfg.json"  # saes/*/cfg.json holds each SAE's training seconds, which differ between any two runs


def _temporaries(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob(".*.tmp") if TEMPORARY_NAME.match(p.name))


# When to kill: the moment each stage's work in progress shows on disk.
KILL_POINTS: list[tuple[str, Callable[[Path], bool]]] = [
    ("corpus", lambda run: any(TEMPORARY_NAME.match(p.name) for p in run.glob(".*.tmp"))),
    ("lm", lambda run: (run / "lm_checkpoint.pt").exists()),
    ("harvest", lambda run: any((run / "activations").glob(".*.tmp")) if (run / "activations").is_dir() else False),
    ("sae", lambda run: any((run / "saes").glob(".checkpoint-*/checkpoint.pt")) if (run / "saes").is_dir() else False),
    ("analysis", lambda run: any(run.glob(".features.sqlite.*.tmp"))),
]


def _run_until(args: list[str], trigger: Callable[[Path], bool] | None, run: Path) -> int:
    """Run the CLI; SIGKILL it as soon as ``trigger(run)`` holds. Returns its exit status."""
    process = subprocess.Popen(
        [sys.executable, "-m", "monosemantic", "-q", *args],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 600
    while process.poll() is None and time.time() < deadline:
        if trigger is not None and run.is_dir() and trigger(run):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait(timeout=60)
    return process.returncode


def test_kill_9_at_every_stage_then_resume_gives_the_uninterrupted_run(analysed_run, tmp_path):
    reference, cfg = analysed_run
    run = tmp_path / "run"
    args = [
        "run",
        "--preset",
        "tiny",
        "--corpus",
        cfg.corpus.corpus,
        "--out",
        str(run),
        "--upto",
        "analysis",
        "--set",
        "corpus.val_fraction=0.2",
    ]
    killed = []
    for stage, trigger in KILL_POINTS:
        if _run_until(args, trigger, run) == -signal.SIGKILL:
            killed.append(stage)
    assert len(killed) >= 4, killed  # a stage can finish between two polls; most kills land in their stage
    assert _run_until(args, None, run) == 0
    assert _temporaries(run) == []
    ours = json.loads((run / "run.json").read_text())["stages"]
    theirs = json.loads((reference / "run.json").read_text())["stages"]
    assert list(ours) == list(theirs)
    for stage in theirs:
        for rel, digest in theirs[stage]["artifacts"].items():
            if not rel.endswith(TIMED):
                assert ours[stage]["artifacts"][rel] == digest, rel
    assert not (run / "lm_checkpoint.pt").exists() and not list((run / "saes").glob(".checkpoint-*"))
