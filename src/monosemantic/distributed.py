"""Several processes, one run: rank and world from torchrun, collectives with timeouts, rank-0 output.

``torchrun --nproc_per_node N -m monosemantic run …`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. ``world()``
reads them; ``session(device)`` joins the process group (NCCL for CUDA, Gloo otherwise) with a
timeout on every collective, and quiets progress bars on every rank but 0. Without those variables
the process is a world of one: nothing here touches ``torch.distributed``, every collective of
``World`` is the identity, and the run is exactly the one-process run.

Two variables of ours tune it: ``MONOSEMANTIC_DIST_TIMEOUT`` (seconds a collective may wait for the
other ranks before the run stops with one error line; default 600) and ``MONOSEMANTIC_DIST_BACKEND``
(``gloo`` or ``nccl``, to override the choice by device). A rank-0-only stage may take longer than a
collective should ever wait, so the other ranks wait for it on a second, Gloo group whose timeout is
``MONOSEMANTIC_DIST_WAIT`` (seconds; default one day).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monosemantic.errors import UserError
from monosemantic.progress import set_quiet

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
REPORT_GRACE_S = 2.0  # how long a failing rank other than 0 waits before it exits
_groups: dict[str, Any] = {}  # "wait": the Gloo group that rank-0-only stages are waited for on


class RankFailure(UserError):
    """A collective failed: another rank died, or did not answer within the timeout."""


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r}: not an integer") from None


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of a run. Collectives act over all of them
    (identities when ``size`` is 1); a failure or timeout raises ``RankFailure`` (one line)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where the backend takes tensors (NCCL: this rank's GPU)

    @property
    def is_main(self) -> bool:
        """Rank 0: owns run.json, the progress bars, the summary and the saved artifacts."""
        return self.rank == 0

    def _call(self, name: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ValueError) as err:  # DistBackendError is a RuntimeError; Gloo's peer errors too
            detail = " ".join(str(err).split())[:200]
            raise RankFailure(
                f"rank {self.rank} of {self.size}: {name} failed: another rank died or did not answer within "
                f"{timeout_seconds()} s (MONOSEMANTIC_DIST_TIMEOUT) ({detail})"
            ) from None

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced in place over every rank (``op``: sum, max or min); returns it."""
        if self.size > 1:
            reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
            moved = tensor.to(self.comm_device)
            self._call(f"all_reduce({op})", dist.all_reduce, moved, reduce_op)
            tensor.copy_(moved)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on all) concatenated along dim 0, rank 0's first."""
        if self.size == 1:
            return tensor
        moved = tensor.to(self.comm_device).contiguous()
        parts = [torch.empty_like(moved) for _ in range(self.size)]
        self._call("all_gather", dist.all_gather, parts, moved)
        return torch.cat(parts).to(tensor.device)

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` overwritten with rank 0's, in place; returns it."""
        if self.size > 1:
            moved = tensor.to(self.comm_device)
            self._call("broadcast", dist.broadcast, moved, 0)
            tensor.copy_(moved)
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable value) on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        self._call("broadcast_object_list", dist.broadcast_object_list, box, 0, group=_groups.get("wait"))
        return box[0]

    def gather_objects(self, obj: Any) -> list:
        """Every rank's ``obj`` (any picklable value), in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        gathered: list = [None] * self.size
        self._call("all_gather_object", dist.all_gather_object, gathered, obj, group=_groups.get("wait"))
        return gathered

    def gather_to_main(self, obj: Any) -> list | None:
        """Every rank's ``obj`` (any picklable value), in rank order, on rank 0; None on the others
        (what only rank 0 needs, without a copy on every rank)."""
        if self.size == 1:
            return [obj]
        gathered: list | None = [None] * self.size if self.is_main else None
        self._call("gather_object", dist.gather_object, obj, gathered, 0, group=_groups.get("wait"))
        return gathered

    def barrier(self) -> None:
        """Block until every rank gets here (on the waiting group: rank 0 may be working alone)."""
        if self.size > 1:
            self._call("barrier", dist.barrier, group=_groups.get("wait"))

    def local_part(self, batch_BD: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: rows [r·B/N, (r+1)·B/N) (B divisible by N)."""
        if self.size == 1:
            return batch_BD
        B = batch_BD.shape[0]
        if B % self.size:
            raise UserError(f"a batch of {B} rows cannot be split evenly over a world of {self.size} processes")
        n = B // self.size
        return batch_BD[self.rank * n : (self.rank + 1) * n]

    def check_divides(self, value: int, what: str) -> None:
        """UserError unless the world size divides ``value`` (``what`` names the option)."""
        if value % self.size:
            raise UserError(f"{what}={value}: not divisible by the world size {self.size} (torchrun --nproc_per_node)")


SINGLE = World()


def timeout_seconds() -> int:
    return _int_env("MONOSEMANTIC_DIST_TIMEOUT", 600)


def world() -> World:
    """This process's ``World`` from torchrun's environment (a world of one without it)."""
    size = _int_env("WORLD_SIZE", 1)
    if size < 1:
        raise UserError(f"environment variable WORLD_SIZE={size}: must be at least 1")
    if size == 1:
        return SINGLE
    missing = [name for name in (*_ENV, "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserError(
            f"WORLD_SIZE={size} but {', '.join(missing)} not set: start the run with torchrun "
            "(torchrun --nproc_per_node N -m monosemantic run …)"
        )
    rank = _int_env("RANK", 0)
    if not 0 <= rank < size:
        raise UserError(f"environment variable RANK={rank}: must be in [0, {size})")
    return World(rank, size, _int_env("LOCAL_RANK", 0))


def report_error(line: str) -> None:
    """Print a failed command's one error line on stderr, on rank 0 alone under torchrun: every rank
    checks the same input, so the others would print the same line. Each rank also leaves its line
    in torchrun's error file (``TORCHELASTIC_ERROR_FILE``), which torchrun's failure report shows
    under that rank, so a cause that only another rank met is not lost."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
    else:  # torchrun stops every rank once one exits: let rank 0 print the same line (and be the root cause) first
        time.sleep(REPORT_GRACE_S)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:  # the format of torch.distributed.elastic's ErrorHandler; the report prints py_callstack
        info = {"py_callstack": line, "timestamp": str(int(time.time()))}
        Path(error_file).write_text(json.dumps({"message": {"message": line, "extraInfo": info}}))


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA, Gloo otherwise; ``MONOSEMANTIC_DIST_BACKEND`` overrides (checked here)."""
    backend = os.environ.get("MONOSEMANTIC_DIST_BACKEND", "nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise UserError(f"MONOSEMANTIC_DIST_BACKEND={backend}: must be gloo or nccl")
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise UserError("MONOSEMANTIC_DIST_BACKEND=nccl: NCCL needs CUDA, which this machine does not have (use gloo)")
    if backend == "nccl" and device.type != "cuda":
        raise UserError(f"MONOSEMANTIC_DIST_BACKEND=nccl: the run's device is {device}, NCCL needs --device cuda")
    return backend


def end_with_launcher() -> None:
    """Have Linux send this process SIGTERM when the process that started it (torchrun) dies, so
    ranks do not outlive a launcher killed with SIGKILL, holding the run's lock (``prctl``'s
    PR_SET_PDEATHSIG; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def session(device: torch.device) -> Iterator[World]:
    """Join torchrun's process group for the duration (nothing to join in a world of one); every
    rank but 0 runs without progress bars, and every rank ends when its launcher dies
    (``end_with_launcher``). Yields this process's ``World``."""
    here = world()
    if here.size == 1 or dist.is_initialized():
        yield here
        return
    backend = backend_for(device)
    end_with_launcher()
    if device.type == "cuda":
        torch.cuda.set_device(here.local_rank)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
        _groups["wait"] = dist.new_group(
            backend="gloo", timeout=timedelta(seconds=_int_env("MONOSEMANTIC_DIST_WAIT", 86_400))
        )
    except (RuntimeError, ValueError) as err:
        detail = " ".join(str(err).split())[:200]
        raise RankFailure(f"rank {here.rank} of {here.size}: could not join the process group ({detail})") from None
    if backend == "nccl":
        here = replace(here, comm_device=f"cuda:{here.local_rank}")
    if not here.is_main:
        set_quiet(True)
    try:
        yield here
    finally:
        _groups.clear()
        dist.destroy_process_group()


def _local_rank_main(rank: int, size: int, port: int, out: Path, fn: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)  # one core per rank
    try:
        with session(torch.device("cpu")) as here:
            result = fn(here, *args)
    except UserError as err:  # what the CLI would print as its one line
        result = {"error": str(err)}
    torch.save(result, out / f"rank{rank}.pt")


def run_local_world(fn: Callable, args: tuple = (), size: int = 2, timeout_s: float = 120) -> list:
    """Run ``fn(world, *args)`` in ``size`` fresh processes forming a Gloo world on 127.0.0.1 (a free
    port), one CPU thread each, as torchrun would; for tests and benchmarks. Returns each rank's
    result: its return value, ``{"error": message}`` if it raised a UserError, None if it died.
    ``fn`` must be importable by name. Raises TimeoutError (having killed them) if the processes
    have not all ended within ``timeout_s``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        ranks = [spawn.Process(target=_local_rank_main, args=(r, size, port, out, fn, args)) for r in range(size)]
        for process in ranks:
            process.start()
        deadline = time.monotonic() + timeout_s
        try:
            for process in ranks:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
            if any(process.is_alive() for process in ranks):
                raise TimeoutError(f"a local world of {size} did not finish within {timeout_s} s")
        finally:
            for process in ranks:
                if process.is_alive():
                    process.kill()
        files = [out / f"rank{r}.pt" for r in range(size)]
        return [torch.load(f, weights_only=True) if f.exists() else None for f in files]
