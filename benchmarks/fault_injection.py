"""kill -9 a tiny run in each stage at a random moment, resume it, and check it against an uninterrupted run.

    python benchmarks/fault_injection.py [--kills 10] [--seed 0] [--upto analysis] [--work DIR]

Runs ``monosemantic run --preset tiny`` on 400 documents of the bundled corpus once without
interruption (the reference), then ``--kills`` times in a fresh run directory: start it, wait
until the target stage starts (the stages in turn: corpus, lm, harvest, …), SIGKILL it a uniformly
random fraction (0–90 %) of the reference's time for that stage later, and run the same command
again to the end. Per kill it prints the stage in progress, the temporaries on disk right after the
kill and after the resume (goal: 0), the work lost — seconds spent in the stage before the kill
plus the resumed stage's seconds, less the reference's seconds for it (what a checkpoint saved is
not lost) — and whether every artifact matches the reference's digest in ``run.json`` (the SAEs'
``cfg.json`` excepted: it records training seconds). Wall times vary with the machine's load.
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
    return [
        sys.executable,
        "-m",
        "monosemantic",
        "-q",
        "run",
        "--preset",
        "tiny",
        "--out",
        str(run),
        "--upto",
        upto,
        "--set",
        "corpus.max_docs=400",
        "--set",
        "corpus.val_fraction=0.2",
    ]


def timed_run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and exit status of ``args``."""
    start = time.perf_counter()
    status = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - start, status


def recorded(run: Path) -> dict:
    """The run's manifest (written atomically, so always whole), or {} before the first stage ends."""
    path = run / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def kill_in_stage(args: list[str], run: Path, stage: str, delay: float) -> float | None:
    """Start ``args``; ``delay`` seconds after ``stage`` starts (the stage before it is recorded; for the
    first, the run takes its lock), SIGKILL it. Returns the seconds from the stage's start to the kill,
    or None if the run ended first."""
    before = STAGES[STAGES.index(stage) - 1] if stage != STAGES[0] else None
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = None
    while process.poll() is None:
        if started is None and (
            (run / ".lock").exists() if before is None else before in recorded(run).get("stages", {})
        ):
            started = time.perf_counter()
        if started is not None and time.perf_counter() - started >= delay:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return time.perf_counter() - started
        time.sleep(0.01)
    return None


def temporaries(run: Path) -> int:
    return sum(1 for p in run.rglob(".*.tmp") if TEMPORARY_NAME.match(p.name)) if run.is_dir() else 0


def stage_in_progress(run: Path, upto: str) -> str:
    """The first stage ``run.json`` does not record as finished (the one the kill interrupted)."""
    done = recorded(run).get("stages", {})
    return next((s for s in STAGES[: STAGES.index(upto) + 1] if s not in done), "(all done)")


def digests(run: Path) -> dict[str, str]:
    stages = json.loads((run / "run.json").read_text())["stages"]
    return {rel: d["blake2b"] for s in stages.values() for rel, d in s["artifacts"].items() if not rel.endswith(TIMED)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upto", default="analysis", choices=STAGES)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the runs (default: a temporary one).")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent.parent / "src"), os.environ.get("PYTHONPATH", "")]
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="fault-injection-"))
    rng = random.Random(args.seed)
    stages = STAGES[: STAGES.index(args.upto) + 1]

    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    total, status = timed_run(command(reference, args.upto))
    if status != 0:
        sys.exit(f"the uninterrupted run failed (exit {status})")
    expected, seconds = digests(reference), recorded(reference)["timings"]
    print(
        f"uninterrupted run: {total:.1f} s wall; stage seconds: "
        + ", ".join(f"{s} {seconds[s]:.1f}" for s in stages)
        + f"; {len(expected)} artifact files compared"
    )

    rows = []
    for i in range(args.kills):
        run, target = work / f"kill-{i}", stages[i % len(stages)]
        shutil.rmtree(run, ignore_errors=True)
        in_stage = kill_in_stage(command(run, args.upto), run, target, rng.uniform(0, 0.9) * seconds[target])
        stage, temps_at_kill = stage_in_progress(run, args.upto), temporaries(run)
        _, status = timed_run(command(run, args.upto))
        matched = status == 0 and digests(run) == expected
        lost = (
            in_stage + recorded(run)["timings"][stage] - seconds[stage]
            if in_stage is not None and stage == target
            else None
        )
        rows.append(
            (
                i,
                target,
                stage if in_stage is not None else "(ended first)",
                temps_at_kill,
                temporaries(run),
                lost,
                seconds[target],
                matched,
            )
        )
        shutil.rmtree(run, ignore_errors=True)

    print(
        "| kill | target stage | in progress at kill | temporaries at kill | temporaries after resume | "
        "work lost s | stage s (reference) | matches |"
    )
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for i, target, stage, temps_at, temps_after, lost, stage_seconds, matched in rows:
        print(
            f"| {i} | {target} | {stage} | {temps_at} | {temps_after} | "
            f"{'—' if lost is None else f'{lost:.1f}'} | {stage_seconds:.1f} | {'yes' if matched else 'NO'} |"
        )
    print(
        f"\n{sum(r[-1] for r in rows)}/{len(rows)} resumed runs match the uninterrupted one; "
        f"temporaries left after resume: {sum(r[4] for r in rows)}"
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
