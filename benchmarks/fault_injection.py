"""kill -9 a tiny run at random moments, resume it each time, and check the result against an uninterrupted run.

    python benchmarks/fault_injection.py [--kills 8] [--seed 0] [--upto analysis] [--work DIR]

Runs ``monosemantic run --preset tiny`` on 400 documents of the bundled corpus once without
interruption (the reference, wall time T), then ``--kills`` times in a fresh run directory: start
it, SIGKILL it at a uniformly random moment in (0.05 T, 0.95 T), and run the same command again to
the end. Per kill it prints the stage in progress, the temporaries on disk right after the kill
and after the resume (goal: 0), the work lost (the interrupted and the resumed wall time together,
less T and less one process start measured on a finished run) and whether every artifact matches
the reference's digest in ``run.json`` (the SAEs' ``cfg.json`` excepted: it records training
seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from monosemantic.atomic import TEMPORARY_NAME

TIMED = "cfg.json"  # saes/*/cfg.json: holds each SAE's training seconds
STAGES = ("corpus", "lm", "harvest", "sae", "analysis", "splitting", "toy", "universality")


def command(run: Path, upto: str) -> list[str]:
    return [sys.executable, "-m", "monosemantic", "-q", "run", "--preset", "tiny", "--out", str(run), "--upto", upto,
            "--set", "corpus.max_docs=400", "--set", "corpus.val_fraction=0.2"]


def timed_run(args: list[str], kill_after: float | None = None) -> tuple[float, int]:
    """Wall seconds and exit status of ``args``; SIGKILLed after ``kill_after`` seconds if given."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return time.perf_counter() - start, process.returncode


def temporaries(run: Path) -> int:
    return sum(1 for p in run.rglob(".*.tmp") if TEMPORARY_NAME.match(p.name)) if run.is_dir() else 0


def stage_in_progress(run: Path, upto: str) -> str:
    """The first stage ``run.json`` does not record as finished (the one the kill interrupted)."""
    path = run / "run.json"
    done = json.loads(path.read_text())["stages"] if path.is_file() else {}
    return next((s for s in STAGES[: STAGES.index(upto) + 1] if s not in done), "(all done)")


def digests(run: Path) -> dict[str, str]:
    stages = json.loads((run / "run.json").read_text())["stages"]
    return {rel: d["blake2b"] for s in stages.values() for rel, d in s["artifacts"].items() if not rel.endswith(TIMED)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upto", default="analysis", choices=STAGES)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the runs (default: a temporary one).")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent / "src"),
                                                os.environ.get("PYTHONPATH", "")])
    work = args.work or Path(tempfile.mkdtemp(prefix="fault-injection-"))
    rng = random.Random(args.seed)

    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    total, status = timed_run(command(reference, args.upto))
    if status != 0:
        sys.exit(f"the uninterrupted run failed (exit {status})")
    startup, _ = timed_run(command(reference, args.upto))  # every stage current: one process start + checks
    expected = digests(reference)
    print(f"uninterrupted run: {total:.1f} s; a run with every stage current: {startup:.1f} s; "
          f"{len(expected)} artifact files compared")

    rows = []
    for i in range(args.kills):
        run = work / f"kill-{i}"
        shutil.rmtree(run, ignore_errors=True)
        kill_at = rng.uniform(0.05, 0.95) * total
        first, status = timed_run(command(run, args.upto), kill_after=kill_at)
        killed = status == -signal.SIGKILL
        stage, temps_at_kill = stage_in_progress(run, args.upto), temporaries(run)
        resumed, status = timed_run(command(run, args.upto))
        matched = status == 0 and digests(run) == expected
        lost = first + resumed - total - startup
        rows.append((i, kill_at, stage if killed else "(finished first)", temps_at_kill, temporaries(run), resumed,
                     lost, matched))
        shutil.rmtree(run, ignore_errors=True)

    print("| kill | at s | stage in progress | temporaries at kill | temporaries after resume | resume s | lost s | "
          "matches |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for i, at, stage, temps_at, temps_after, resumed, lost, matched in rows:
        print(f"| {i} | {at:.1f} | {stage} | {temps_at} | {temps_after} | {resumed:.1f} | {lost:+.1f} | "
              f"{'yes' if matched else 'NO'} |")
    n_matched = sum(r[-1] for r in rows)
    print(f"\n{n_matched}/{len(rows)} resumed runs match the uninterrupted one; temporaries left after resume: "
          f"{sum(r[4] for r in rows)}; work lost per kill: median {sorted(r[6] for r in rows)[len(rows) // 2]:+.1f} s, "
          f"max {max(r[6] for r in rows):+.1f} s")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
